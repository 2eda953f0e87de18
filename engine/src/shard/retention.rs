//! Retention of deliveries (CONTRACT.md: kept `retention.deliveries_days`): whole sealed log
//! segments are deleted once they are older than [`EngineConfig::deliveries_retention`] and every
//! delivery *ingested* in them is settled — `success`, or `failed`/`exhausted` with its DLQ object
//! stored ([`FLAG_DEAD_LETTERED`]). A delivery still `queued` in such a segment is first ended
//! `failed` with error `retention_expired` through the usual booking path, so it lands in the DLQ
//! like any other final failure; its segment goes on a later pass, once it is dead-lettered.
//! Nothing ACKed is dropped silently (ARCHITECTURE.md invariant 2).
//!
//! Not here: records are never rewritten or carried forward. A delivery's later records
//! (attempts, `DeadLettered`) may sit in newer segments; once the delivery's ingest segment is
//! gone they are garbage that leaves with their own segment. Nothing points into a deleted
//! segment except those records' `prev_offset` chains and stale idempotency entries, and every
//! reader treats an offset below [`hookrelay_log::Log::first_offset`] as unknown.
//!
//! How a pass finds the deliveries of a segment without an index: within a shard, sequence
//! numbers are given out in the order of the ingest records' offsets (ingest takes the next seq
//! and appends in one synchronous step), so the deliveries ingested in segment S are the
//! contiguous run of seqs, from the shard's lowest live seq, whose state-table slot has
//! `ingest_offset` below the next segment's first offset. The lowest live seq ([`Retention`]) is
//! set by recovery (the first `Ingested` record in the log) and raised by every deletion.
//! State-table slots below it are stale: they point at deleted offsets, nothing scans them (list
//! stops at the lowest live seq), and a lookup by id reads a missing record and answers unknown.
//!
//! Age of a segment: the time carried by its **newest** record (`received_at_ms`, `at_ms`),
//! read back from the log — so a segment goes only when every record in it is past retention,
//! and a segment sealed recently but created long ago is kept. (The segment header's creation
//! time would delete records younger than the retention by up to the time the segment took to
//! fill.) Wall-clock steps backwards of less than the retention period do not matter.
//!
//! Bounds: a pass examines at most [`SLOTS_PER_PASS_MAX`] slots (yielding every
//! [`YIELD_EVERY_SLOTS`]) and [`SEGMENTS_PER_PASS_MAX`] segments, and ends at most
//! [`EXPIRE_PER_PASS_MAX`] deliveries; settled prefixes are remembered, so a segment holding more
//! deliveries than one pass examines is finished by later passes. The active segment is never
//! deleted; one that has received nothing for the whole retention period is rolled so it can go.
//!
//! [`EngineConfig::deliveries_retention`]: crate::node::EngineConfig::deliveries_retention

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::record::{
    Attempted, DeadLettered, Ingested, Status, TYPE_ATTEMPTED, TYPE_DEAD_LETTERED, TYPE_INGESTED,
};
use crate::shard::core::{Error, ShardCore};
use crate::shard::dead_letter::FLAG_DEAD_LETTERED;
use crate::shard::scheduler::{Done, Entry};
use crate::state_table::Slot;

/// State-table slots one pass examines.
pub(crate) const SLOTS_PER_PASS_MAX: u64 = 1 << 20;
/// Slots examined between yields, so a pass never holds the shard's thread for long.
const YIELD_EVERY_SLOTS: u64 = 8192;
/// Sealed segments one pass looks at (one record read each) and may delete.
pub(crate) const SEGMENTS_PER_PASS_MAX: usize = 256;
/// Queued deliveries one pass ends (one log append each, group-committed together).
pub(crate) const EXPIRE_PER_PASS_MAX: usize = 1024;
/// The error recorded on a delivery ended because it was still queued past retention.
pub(crate) const RETENTION_EXPIRED: &str = "retention_expired";

/// Per-shard retention progress. Lives in [`ShardCore`]; only the shard's thread touches it.
#[derive(Debug, Default)]
pub(crate) struct Retention {
    /// Lowest sequence number whose ingest record is still in the log.
    first_seq: Cell<u64>,
    /// Every delivery in `first_seq..settled_below` is known settled. Settled is terminal, so a
    /// pass resumes here instead of re-examining them.
    settled_below: Cell<u64>,
    running: Cell<bool>,
}

impl Retention {
    /// Lowest sequence number whose ingest record is still in the log.
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq.get()
    }

    /// Called by recovery with the lowest seq it found an `Ingested` record for.
    pub(crate) fn recovered(&self, first_seq: u64) {
        self.first_seq.set(first_seq);
        self.settled_below.set(first_seq);
    }
}

/// What one retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Pass {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub deliveries_deleted: u64,
    /// Queued deliveries ended `failed` / `retention_expired` by this pass.
    pub expired: usize,
    /// Deliveries in segments past retention that keep their segment for now: queued (being
    /// ended, or with an attempt running), or failed and waiting for their DLQ object.
    pub unsettled: u64,
}

/// Sealed segments a pass may delete: every one whose records are all below `below`.
#[derive(Debug)]
struct Deletion {
    below: u64,
    /// The lowest live seq once they are gone.
    first_seq: u64,
    segments: usize,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Plan {
    deletion: Option<Deletion>,
    expire: Vec<u64>,
    unsettled: u64,
}

/// Where a delivery stands as far as retention is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    /// Final, and dead-lettered if it failed: its records may go.
    Settled,
    /// Failed or exhausted; the DLQ shipper has not stored its object yet.
    AwaitingDlq,
    Queued,
}

fn settlement(slot: &Slot) -> Settlement {
    match slot.status {
        Status::Queued => Settlement::Queued,
        Status::Success => Settlement::Settled,
        Status::Failed | Status::Exhausted if slot.flags & FLAG_DEAD_LETTERED != 0 => {
            Settlement::Settled
        }
        Status::Failed | Status::Exhausted => Settlement::AwaitingDlq,
    }
}

/// Clears the running flag however a pass ends.
struct RunningGuard<'a>(&'a Cell<bool>);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl ShardCore {
    /// Starts a retention pass on its own task (from periodic maintenance), unless one is
    /// running, retention is off, or the shard is stopping or cannot write.
    pub(crate) fn start_retention(self: &Rc<Self>, now_ms: u64) {
        if self.node.config().deliveries_retention.is_zero()
            || self.retention.running.get()
            || self.node.is_stopping()
            || self.is_poisoned()
        {
            return;
        }
        let core = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = core.retain(now_ms).await {
                tracing::warn!(shard = core.id, error = %e, "retention pass failed");
            }
        });
    }

    /// One retention pass as of `now_ms`: deletes the sealed segments it can, and ends queued
    /// deliveries that hold an expired segment. Returns at once (doing nothing) when another
    /// pass is running. Errors are reading or deleting log files; the next pass retries.
    pub(crate) async fn retain(self: &Rc<Self>, now_ms: u64) -> Result<Pass, Error> {
        let retention_ms =
            u64::try_from(self.node.config().deliveries_retention.as_millis()).unwrap_or(u64::MAX);
        if retention_ms == 0 || self.retention.running.replace(true) {
            return Ok(Pass::default());
        }
        let _running = RunningGuard(&self.retention.running);
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        self.roll_if_idle(cutoff_ms).await?;
        let plan = self.plan(cutoff_ms).await?;
        let mut pass = Pass {
            unsettled: plan.unsettled,
            ..Pass::default()
        };
        if let Some(deletion) = plan.deletion {
            self.delete(&deletion).await?;
            pass.segments_deleted = deletion.segments;
            pass.bytes_deleted = deletion.bytes;
            pass.deliveries_deleted =
                deletion.first_seq - self.retention.first_seq.replace(deletion.first_seq);
            tracing::info!(
                shard = self.id,
                segments = pass.segments_deleted,
                bytes = pass.bytes_deleted,
                deliveries = pass.deliveries_deleted,
                first_offset = deletion.below,
                "retention deleted log segments"
            );
        }
        pass.expired = self.expire(&plan.expire).await;
        if pass.expired > 0 {
            tracing::info!(
                shard = self.id,
                deliveries = pass.expired,
                "ended deliveries still queued past retention"
            );
        }
        if pass.unsettled > 0 {
            tracing::debug!(
                shard = self.id,
                deliveries = pass.unsettled,
                "expired segments wait for deliveries to settle"
            );
        }
        Ok(pass)
    }

    /// Seals the active segment when even its newest record is past retention (an idle shard),
    /// so that it can be deleted like any other.
    async fn roll_if_idle(&self, cutoff_ms: u64) -> Result<(), Error> {
        let Some(active) = self.log.segments().pop() else {
            return Ok(());
        };
        if active.next_offset > active.first_offset
            && self.record_time_ms(active.next_offset - 1)? <= cutoff_ms
        {
            self.log.roll().await.map_err(|source| Error::Log {
                shard: self.id,
                source,
            })?;
            tracing::info!(
                shard = self.id,
                first_offset = active.first_offset,
                "rolled an idle segment past retention"
            );
        }
        Ok(())
    }

    /// Walks the sealed segments oldest first while they are past retention, and the
    /// deliveries ingested in each, to find what can go and what must be ended first.
    async fn plan(&self, cutoff_ms: u64) -> Result<Plan, Error> {
        let end = self.next_seq.get();
        let first_seq = self.retention.first_seq.get();
        // End of the settled prefix: deliveries below it are settled.
        let mut settled_below = self.retention.settled_below.get().max(first_seq);
        let mut examined = 0u64;
        let mut plan = Plan::default();
        let sealed = self.log.segments().into_iter().filter(|s| s.sealed);
        for seg in sealed.take(SEGMENTS_PER_PASS_MAX) {
            // A sealed segment holds at least one record.
            if seg.next_offset <= seg.first_offset
                || self.record_time_ms(seg.next_offset - 1)? > cutoff_ms
            {
                break;
            }
            let mut seq = settled_below;
            let mut prefix_settled = true;
            // Reached the first delivery ingested after this segment (or the newest one).
            let mut complete = false;
            while examined < SLOTS_PER_PASS_MAX {
                if seq >= end {
                    complete = true;
                    break;
                }
                examined += 1;
                if examined.is_multiple_of(YIELD_EVERY_SLOTS) {
                    tokio::task::yield_now().await;
                }
                let Some(slot) = self.table.borrow().get(seq) else {
                    // Torn or never written (a failed put): which segment it belongs to is
                    // unknown, so nothing from here on goes until recovery rewrites it.
                    tracing::warn!(
                        shard = self.id,
                        seq,
                        "retention: state-table slot unreadable"
                    );
                    plan.unsettled += 1;
                    break;
                };
                if slot.ingest_offset >= seg.next_offset {
                    complete = true;
                    break;
                }
                debug_assert!(
                    slot.ingest_offset >= self.log.first_offset(),
                    "live seq {seq} below the log"
                );
                match settlement(&slot) {
                    Settlement::Settled if prefix_settled => settled_below = seq + 1,
                    Settlement::Settled => {}
                    Settlement::AwaitingDlq => {
                        prefix_settled = false;
                        plan.unsettled += 1;
                    }
                    Settlement::Queued => {
                        prefix_settled = false;
                        plan.unsettled += 1;
                        if plan.expire.len() < EXPIRE_PER_PASS_MAX {
                            plan.expire.push(seq);
                        }
                    }
                }
                seq += 1;
            }
            if !(complete && prefix_settled) {
                break;
            }
            let d = plan.deletion.get_or_insert(Deletion {
                below: 0,
                first_seq,
                segments: 0,
                bytes: 0,
            });
            d.below = seg.next_offset;
            d.first_seq = settled_below;
            d.segments += 1;
            d.bytes += seg.bytes;
        }
        self.retention.settled_below.set(settled_below);
        Ok(plan)
    }

    /// Deletes the planned segments after checking, once more, every delivery ingested in them.
    async fn delete(&self, d: &Deletion) -> Result<(), Error> {
        // Pair assertion: right before their records go, every delivery they hold is settled.
        // Settled is terminal, so this holds whatever ran since the plan; a failure is a bug.
        for seq in self.retention.first_seq.get()..d.first_seq {
            let slot = self.table.borrow().get(seq);
            let Some(slot) = slot else {
                panic!(
                    "shard {}: retention would delete delivery {seq}, whose slot is unreadable",
                    self.id
                );
            };
            assert!(
                slot.ingest_offset < d.below && settlement(&slot) == Settlement::Settled,
                "shard {}: retention would delete delivery {seq} ({:?}, flags {}, ingested at {}) with segments below {}",
                self.id,
                slot.status,
                slot.flags,
                slot.ingest_offset,
                d.below
            );
            if seq.is_multiple_of(YIELD_EVERY_SLOTS) {
                tokio::task::yield_now().await;
            }
        }
        let next = self.table.borrow().get(d.first_seq);
        if d.first_seq < self.next_seq.get()
            && let Some(next) = next
        {
            assert!(
                next.ingest_offset >= d.below,
                "shard {}: delivery {} would lose its ingest record",
                self.id,
                d.first_seq
            );
        }
        let deleted = self
            .log
            .delete_below(d.below)
            .await
            .map_err(|source| Error::Log {
                shard: self.id,
                source,
            })?;
        assert_eq!(
            deleted, d.segments,
            "shard {}: delete_below({}) removed another number of segments",
            self.id, d.below
        );
        Ok(())
    }

    /// Ends queued deliveries whose segment is past retention: each is booked `failed` with
    /// error `retention_expired` (so the shipper dead-letters it). A delivery with an attempt
    /// running is left for a later pass. Returns how many were ended.
    async fn expire(self: &Rc<Self>, seqs: &[u64]) -> usize {
        // Claim synchronously (no await in this block): a claimed delivery's slot says `failed`
        // at once, so the dispatcher drops any entry of it still in the scheduler
        // (`drop_if_ended`) and no attempt of it can start while its record is written.
        let mut idle: HashMap<String, bool> = HashMap::new();
        let mut claimed: Vec<(String, Entry)> = Vec::new();
        for &seq in seqs {
            let slot = self.table.borrow().get(seq);
            let Some(mut slot) = slot.filter(|s| s.status == Status::Queued) else {
                continue;
            };
            let Some(endpoint) = self.endpoint_of(slot.ingest_offset) else {
                tracing::warn!(
                    shard = self.id,
                    seq,
                    "retention: ingest record of a queued delivery is unreadable"
                );
                continue;
            };
            // Not in flight: its endpoint has no attempt running (as of this block), or it is
            // behind the endpoint's overflow cursor, i.e. not in memory at all.
            let free = {
                let sched = self.sched.borrow();
                let queue = sched.queue(&endpoint);
                let endpoint_idle = *idle
                    .entry(endpoint.clone())
                    .or_insert_with(|| queue.is_none_or(|q| q.in_flight == 0));
                endpoint_idle
                    || queue.is_some_and(|q| q.overflow_from.is_some_and(|from| seq >= from))
            };
            if !free {
                continue;
            }
            slot.status = Status::Failed;
            if let Err(e) = self.table.borrow_mut().put(seq, &slot) {
                tracing::warn!(shard = self.id, seq, error = %e, "retention: state table write failed");
                continue;
            }
            // `book` ends with `Scheduler::done`, which expects an attempt slot (as orphans do).
            self.sched.borrow_mut().count_in_flight(&endpoint);
            let entry = Entry {
                seq,
                ingest_offset: slot.ingest_offset,
                last_offset: slot.last_offset,
                attempts: u32::from(slot.attempts),
            };
            claimed.push((endpoint, entry));
        }
        let ended = claimed.len();
        let tasks: Vec<_> = claimed
            .into_iter()
            .map(|(endpoint, entry)| {
                let core = self.clone();
                tokio::task::spawn_local(async move {
                    core.finish_without_attempt(&endpoint, entry, RETENTION_EXPIRED)
                        .await;
                })
            })
            .collect();
        for task in tasks {
            // The task only panics on a bug, which has been reported by then.
            let _ = task.await;
        }
        ended
    }

    /// True when delivery `entry.seq` is no longer queued though the scheduler still held it
    /// (retention ended it while it waited): the caller must not attempt it. `counted`: the
    /// scheduler counted it in flight when handing it out, so that is undone here.
    pub(crate) fn drop_if_ended(&self, endpoint_id: &str, entry: Entry, counted: bool) -> bool {
        let ended = self
            .table
            .borrow()
            .get(entry.seq)
            .is_some_and(|s| s.status != Status::Queued);
        if ended && counted {
            self.sched.borrow_mut().done(
                endpoint_id,
                entry,
                Done::Final {
                    retryable_failure: false,
                },
                crate::clock::mono_ms(),
            );
        }
        ended
    }

    /// The time a record carries: when a delivery was received, attempted or dead-lettered.
    fn record_time_ms(&self, offset: u64) -> Result<u64, Error> {
        let rec = self.log.read(offset).map_err(|source| Error::Log {
            shard: self.id,
            source,
        })?;
        let at_ms = match rec.record_type {
            TYPE_INGESTED => Ingested::decode(rec.payload).map(|i| i.received_at_ms),
            TYPE_ATTEMPTED => Attempted::decode(rec.payload).map(|a| a.at_ms),
            TYPE_DEAD_LETTERED => DeadLettered::decode(rec.payload).map(|d| d.at_ms),
            other => return Err(self.shard_error(offset, format!("unknown record type {other}"))),
        };
        at_ms.map_err(|e| self.shard_error(offset, e))
    }
}

#[cfg(test)]
mod tests;
