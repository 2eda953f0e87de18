//! Start-up: rebuild the shard's state from its log.
//!
//! Pass 1 reads every record and rewrites the state table slots (status, attempts, chain
//! head) and re-inserts idempotency keys the index had not yet checkpointed. Pass 2 walks the
//! sequence numbers and hands queued deliveries to the scheduler (bounded per endpoint; the
//! rest stays in the log behind a cursor) and final failures without a DLQ object to the
//! shipper. The log is the truth; the state table and the index are caches of it.

use std::collections::HashMap;
use std::rc::Rc;

use crate::clock::now_ms;
use crate::record::{
    Attempted, DeadLettered, Ingested, Status, TYPE_ATTEMPTED, TYPE_DEAD_LETTERED, TYPE_INGESTED,
};
use crate::shard::core::{Error, ShardCore, endpoint_tag};
use crate::shard::dead_letter::FLAG_DEAD_LETTERED;
use crate::shard::scheduler::{Admit, Entry};
use crate::state_table::Slot;

/// Records processed between yields, so a long recovery does not starve the shard's listener.
const YIELD_EVERY_RECORDS: u64 = 8192;

impl ShardCore {
    pub(crate) async fn recover(self: &Rc<Self>) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let now = now_ms();
        let ttl_ms = self.node.config().idempotency_ttl.as_millis() as u64;
        let index_from = self.idem.borrow().indexed_through();
        let mut seqs: Option<(u64, u64)> = None;
        let mut records = 0u64;
        let reader = self.log.reader(self.log.first_offset());
        let mut metrics_replay = self.metrics_replay(now);
        for rec in reader {
            let rec = rec.map_err(|source| Error::Log {
                shard: self.id,
                source,
            })?;
            let offset = rec.offset;
            match rec.record_type {
                TYPE_INGESTED => {
                    let i =
                        Ingested::decode(rec.payload).map_err(|e| self.shard_error(offset, e))?;
                    let slot = Slot {
                        ingest_offset: offset,
                        last_offset: offset,
                        next_due_ms: 0,
                        status: Status::Queued,
                        flags: 0,
                        attempts: 0,
                        endpoint_tag: endpoint_tag(&i.endpoint_id),
                    };
                    self.put_slot(i.seq, &slot)?;
                    metrics_replay.ingested(&i);
                    if offset >= index_from && i.received_at_ms.saturating_add(ttl_ms) > now {
                        self.idem
                            .borrow_mut()
                            .insert(
                                &i.endpoint_id,
                                &i.idempotency_key,
                                i.body_hash,
                                offset,
                                i.received_at_ms,
                            )
                            .map_err(|e| Error::Index {
                                shard: self.id,
                                reason: e.to_string(),
                            })?;
                    }
                    seqs = Some(match seqs {
                        None => (i.seq, i.seq + 1),
                        Some((lo, hi)) => (lo.min(i.seq), hi.max(i.seq + 1)),
                    });
                }
                TYPE_ATTEMPTED => {
                    let a =
                        Attempted::decode(rec.payload).map_err(|e| self.shard_error(offset, e))?;
                    metrics_replay.attempted(offset, &a);
                    let slot = self.table.borrow().get(a.seq);
                    if let Some(mut slot) = slot.filter(|s| s.ingest_offset < offset) {
                        slot.last_offset = offset;
                        slot.status = a.status_after;
                        slot.attempts = slot.attempts.max(u16::try_from(a.n).unwrap_or(u16::MAX));
                        slot.next_due_ms = a.next_due_ms;
                        self.put_slot(a.seq, &slot)?;
                    }
                }
                TYPE_DEAD_LETTERED => {
                    let d = DeadLettered::decode(rec.payload)
                        .map_err(|e| self.shard_error(offset, e))?;
                    let slot = self.table.borrow().get(d.seq);
                    if let Some(mut slot) = slot.filter(|s| s.ingest_offset < offset) {
                        slot.last_offset = offset;
                        slot.flags |= FLAG_DEAD_LETTERED;
                        self.put_slot(d.seq, &slot)?;
                    }
                }
                other => {
                    return Err(self.shard_error(offset, format!("unknown record type {other}")));
                }
            }
            records += 1;
            if records.is_multiple_of(YIELD_EVERY_RECORDS) {
                tokio::task::yield_now().await;
            }
        }
        let (lo, hi) = seqs.unwrap_or((0, 0));
        self.next_seq.set(hi);
        // Retention deletes from the bottom: the first ingest record left is the lowest live seq.
        self.retention.recovered(lo);
        let (queued, dead_letters) = self.requeue(lo, hi).await;
        // A torn tail may have cut records the index had already seen: the checkpoint never
        // moves back. It also gives back the pages recovery touched (every page of the log,
        // the table and the index), so resident memory does not grow with history.
        self.checkpoint_blocking(self.log.next_offset());
        tracing::info!(
            shard = self.id,
            records,
            deliveries = hi - lo,
            queued,
            dead_letters,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered"
        );
        Ok(())
    }

    fn put_slot(&self, seq: u64, slot: &Slot) -> Result<(), Error> {
        self.table
            .borrow_mut()
            .put(seq, slot)
            .map_err(|e| Error::Table {
                shard: self.id,
                reason: e.to_string(),
            })
    }

    /// Pass 2: queued deliveries to the scheduler, unshipped failures to the DLQ shipper.
    async fn requeue(self: &Rc<Self>, lo: u64, hi: u64) -> (u64, u64) {
        // Tags of this node's endpoints that no other endpoint shares: a queued slot with the
        // tag of an endpoint that already overflowed can be left in the log without reading
        // its record to learn the endpoint.
        let snapshot = self.node.meta().load();
        let mut tag_owner: HashMap<u32, Option<&str>> = HashMap::new();
        for id in snapshot.endpoints.keys() {
            tag_owner
                .entry(endpoint_tag(id))
                .and_modify(|o| *o = None)
                .or_insert(Some(id.as_str()));
        }
        let mut overflowed: HashMap<u32, ()> = HashMap::new();
        let (mut queued, mut dead_letters) = (0u64, 0u64);
        for seq in lo..hi {
            let Some(slot) = self.table.borrow().get(seq) else {
                continue;
            };
            match Some(slot.status) {
                Some(Status::Queued) => {
                    queued += 1;
                    let unique = tag_owner.get(&slot.endpoint_tag).copied().flatten();
                    if overflowed.contains_key(&slot.endpoint_tag) && unique.is_some() {
                        continue;
                    }
                    let Some(endpoint) = self.endpoint_of(slot.ingest_offset) else {
                        continue;
                    };
                    let entry = Entry {
                        seq,
                        ingest_offset: slot.ingest_offset,
                        last_offset: slot.last_offset,
                        attempts: u32::from(slot.attempts),
                    };
                    let due = (slot.next_due_ms > 0)
                        .then(|| crate::clock::wall_to_mono(slot.next_due_ms));
                    let admitted = self.sched.borrow_mut().admit(
                        &endpoint,
                        entry,
                        due,
                        crate::clock::mono_ms(),
                    );
                    if admitted == Admit::Overflow && unique == Some(endpoint.as_str()) {
                        overflowed.insert(slot.endpoint_tag, ());
                    }
                }
                Some(Status::Failed | Status::Exhausted)
                    if slot.flags & FLAG_DEAD_LETTERED == 0 =>
                {
                    dead_letters += 1;
                    self.queue_dead_letter(seq);
                }
                _ => {}
            }
            if seq.is_multiple_of(YIELD_EVERY_RECORDS) {
                tokio::task::yield_now().await;
            }
        }
        (queued, dead_letters)
    }
}
