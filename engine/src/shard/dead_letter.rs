//! Shipping final failures to the DLQ. A delivery that ends `failed` or `exhausted` is queued
//! here; the shard's ship loop hands each one, in the order they became final, to a shipment
//! task once it holds one of the node's `dlq.max_concurrent_puts` slots ([`Store::put_slot`]).
//! A shipment stores the DLQ object (local: file + directory fsynced; S3: the PUT answered 200)
//! and only then appends the `DeadLettered` record and sets [`FLAG_DEAD_LETTERED`].
//!
//! Errors are retried with exponential backoff and full jitter up to `dlq.retry_max_delay_ms`,
//! forever: an outage of the store delays shipping, it never drops a record. A shipment keeps
//! its slot through its retries, so an outage holds at most `max_concurrent_puts` requests in
//! flight. A crash (or a poisoned log) before the record is written re-ships on recovery
//! (`recovery.rs` queues every final delivery without the flag); a second put of the same key
//! is harmless (it replaces the object with the same bytes).
//!
//! [`Store::put_slot`]: crate::dlq::Store::put_slot

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use tokio::sync::OwnedSemaphorePermit;

use crate::clock::{mono_ms, now_ms, rfc3339_ms};
use crate::dlq::Store;
use crate::dlq::metrics::ShardBacklog;
use crate::dlq::object::{DlqObject, FinalStatus, object_key};
use crate::record::{DeadLettered, Status, TYPE_DEAD_LETTERED};
use crate::shard::core::ShardCore;
use crate::shard::query::{ReadError, header_map};

/// Flag bit in a state-table slot: the delivery's DLQ object is stored.
pub(crate) const FLAG_DEAD_LETTERED: u8 = 1;

/// Numbers shard incarnations, so a retired shard's backlog report never overwrites its
/// successor's (`ShipStats::set_backlog`).
static INCARNATIONS: AtomicU64 = AtomicU64::new(0);

/// A shard's final deliveries whose DLQ object is not stored yet.
///
/// Not bounded by a constant (an exception to "a limit on everything", on purpose): every entry
/// is a final delivery whose record the log keeps until it is shipped (retention skips
/// unshipped failures), so the log bounds it, at 16 bytes an entry. Dropping entries would
/// need a rescan of the state table to find them again.
#[derive(Debug)]
pub(crate) struct Backlog {
    /// Waiting for a shipping slot, oldest first: (seq, when queued on `mono_ms`).
    waiting: VecDeque<(u64, u64)>,
    /// Being shipped (holding a slot): seq → when queued. At most `max_concurrent_puts`.
    shipping: HashMap<u64, u64>,
    /// The ship loop is running.
    running: bool,
    /// Where the backlog is reported: the node's store, this shard, this incarnation of it.
    store: Store,
    shard: usize,
    incarnation: u64,
}

impl Drop for Backlog {
    fn drop(&mut self) {
        // The shard incarnation is gone (demoted to a replica, or replaced): its backlog is
        // its successor's to report, or nobody's.
        self.store
            .stats()
            .set_backlog(self.shard, self.incarnation, ShardBacklog::default());
    }
}

impl Backlog {
    pub(crate) fn new(shard: usize, store: Store) -> Backlog {
        Backlog {
            waiting: VecDeque::new(),
            shipping: HashMap::new(),
            running: false,
            store,
            shard,
            incarnation: INCARNATIONS.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    fn summary(&self) -> ShardBacklog {
        let count = (self.waiting.len() + self.shipping.len()) as u64;
        // Entries are queued in time order, so the front is the oldest waiting one.
        let oldest = self
            .waiting
            .front()
            .map(|(_, t)| *t)
            .into_iter()
            .chain(self.shipping.values().copied())
            .min();
        ShardBacklog {
            count,
            oldest_queued_mono_ms: oldest,
        }
    }
}

/// What one shipment attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shipped {
    /// The object was stored and the `DeadLettered` record appended.
    Stored,
    /// Nothing to do (already shipped, not final, purged or no longer in the log).
    Nothing,
}

impl ShardCore {
    /// Queues delivery `seq` (final, failed or exhausted) for the DLQ.
    pub(crate) fn queue_dead_letter(self: &Rc<Self>, seq: u64) {
        let start = {
            let mut backlog = self.dead_letters.borrow_mut();
            debug_assert!(
                !backlog.shipping.contains_key(&seq),
                "seq {seq} queued while being shipped"
            );
            backlog.waiting.push_back((seq, mono_ms()));
            !std::mem::replace(&mut backlog.running, true)
        };
        self.publish_dlq_backlog();
        if start {
            tokio::task::spawn_local(ship_loop(self.clone()));
        }
    }

    /// Whether shipping on this incarnation of the shard must stop; whatever is left is
    /// re-queued by the next recovery.
    fn shipping_stopped(&self) -> bool {
        self.node.is_stopping() || self.retired.get() || self.is_poisoned()
    }

    /// Reports this shard's backlog to the node's DLQ counters.
    fn publish_dlq_backlog(&self) {
        if self.retired.get() {
            // The shard's next incarnation reports for it (or, if none, the drop of this one).
            return;
        }
        let backlog = self.dead_letters.borrow();
        self.dlq
            .stats()
            .set_backlog(self.id, backlog.incarnation, backlog.summary());
    }

    /// Stores one DLQ object and records it.
    async fn ship(self: &Rc<Self>, seq: u64) -> Result<Shipped, String> {
        let Some(slot) = self.table.borrow().get(seq) else {
            return Ok(Shipped::Nothing);
        };
        if slot.flags & FLAG_DEAD_LETTERED != 0 {
            return Ok(Shipped::Nothing);
        }
        let final_status = match Some(slot.status) {
            Some(Status::Failed) => FinalStatus::Failed,
            Some(Status::Exhausted) => FinalStatus::Exhausted,
            _ => return Ok(Shipped::Nothing),
        };
        if slot.ingest_offset < self.log.first_offset() {
            // Retention deletes only dead-lettered failures, so this is a stale slot; retrying
            // could never read the record, and would hold a shipping slot forever.
            tracing::error!(
                shard = self.id,
                seq,
                "DLQ: ingest record already deleted; nothing to ship"
            );
            return Ok(Shipped::Nothing);
        }
        self.log
            .wait_durable(slot.last_offset)
            .await
            .map_err(|e| e.to_string())?;
        let rec = match self.read_ingested(slot.ingest_offset, true) {
            Ok(rec) => rec,
            Err(ReadError::Purged) => {
                // Its payload was crypto-shredded: there is nothing left to dead-letter.
                let mut table = self.table.borrow_mut();
                if let Some(mut slot) = table.get(seq) {
                    slot.flags |= FLAG_DEAD_LETTERED;
                    table.put(seq, &slot).map_err(|e| e.to_string())?;
                }
                return Ok(Shipped::Nothing);
            }
            Err(ReadError::Unreadable(reason)) => return Err(reason),
        };
        let history = self.history(slot.last_offset, slot.ingest_offset);
        let final_at_ms = history.attempts.last().map_or(now_ms(), |a| a.at_ms);
        let final_at = crate::clock::datetime_ms(final_at_ms);
        let key = object_key(&rec.tenant_id, &rec.endpoint_id, final_at, &rec.delivery_id);
        let object = DlqObject {
            delivery_id: rec.delivery_id.clone(),
            tenant_id: rec.tenant_id.clone(),
            endpoint_id: rec.endpoint_id.clone(),
            final_status,
            headers: header_map(&rec.headers),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&rec.body),
            attempt_history: history.entries(),
            first_seen_at: rfc3339_ms(rec.received_at_ms),
            exhausted_at: rfc3339_ms(final_at_ms),
        };
        self.dlq
            .put(&key, object)
            .await
            .map_err(|e| e.to_string())?;
        // Stored (durably): only now is it recorded as shipped.
        let record = DeadLettered {
            seq,
            key,
            at_ms: now_ms(),
            prev_offset: slot.last_offset,
        };
        let offset = self
            .log
            .append(TYPE_DEAD_LETTERED, record.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut table = self.table.borrow_mut();
        if let Some(mut slot) = table.get(seq) {
            slot.flags |= FLAG_DEAD_LETTERED;
            slot.last_offset = offset;
            table.put(seq, &slot).map_err(|e| e.to_string())?;
        }
        Ok(Shipped::Stored)
    }
}

/// Hands queued deliveries, oldest first, to shipment tasks as shipping slots free up.
async fn ship_loop(core: Rc<ShardCore>) {
    loop {
        if core.shipping_stopped() {
            break;
        }
        // Peek, wait for a slot, then take: the entry is counted in the backlog throughout.
        if core.dead_letters.borrow().waiting.is_empty() {
            break;
        }
        let slot = core.dlq.put_slot().await;
        if core.shipping_stopped() {
            break;
        }
        let next = {
            let mut backlog = core.dead_letters.borrow_mut();
            let next = backlog.waiting.pop_front();
            if let Some((seq, queued)) = next {
                backlog.shipping.insert(seq, queued);
            }
            next
        };
        let Some((seq, _)) = next else {
            break;
        };
        tokio::task::spawn_local(ship_with_retries(core.clone(), seq, slot));
    }
    core.dead_letters.borrow_mut().running = false;
}

/// Ships `seq`, retrying with backoff until it is stored or the shard stops; holds `slot`
/// throughout.
async fn ship_with_retries(core: Rc<ShardCore>, seq: u64, slot: OwnedSemaphorePermit) {
    let store = core.dlq.clone();
    let mut failures = 0u32;
    loop {
        match core.ship(seq).await {
            Ok(Shipped::Stored) => {
                store.stats().note_shipped();
                break;
            }
            Ok(Shipped::Nothing) => break,
            Err(reason) => {
                store.stats().note_failure();
                failures = failures.saturating_add(1);
                let delay = store.retry_delay(failures, rand::random::<f64>());
                tracing::warn!(
                    shard = core.id,
                    seq,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    backend = store.backend_name(),
                    %reason,
                    "DLQ store failed; retrying"
                );
                if core.shipping_stopped() {
                    break;
                }
                tokio::time::sleep(delay).await;
                if core.shipping_stopped() {
                    break;
                }
            }
        }
    }
    core.dead_letters.borrow_mut().shipping.remove(&seq);
    core.publish_dlq_backlog();
    drop(slot);
}
