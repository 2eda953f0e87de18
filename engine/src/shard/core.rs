//! The shard's state and its event loop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::{mono_ms, wall_to_mono};
use crate::delivery::client::{ClientOptions, DeliveryClient};
use crate::idempotency::{CheckpointFailed, CheckpointJob, IdempotencyIndex, IndexOptions};
use crate::ids::now_ms;
use crate::node::Node;
use crate::shard::scheduler::{Entry, Limits, Scheduler};
use crate::state_table::StateTable;

/// Most attempts one pass of the event loop starts, so the loop yields regularly.
const DISPATCH_BATCH_MAX: usize = 1024;
/// Longest the event loop sleeps without looking at the clock (clock jumps, refills).
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How often the shard checkpoints its idempotency index, flushes its state table and drops
/// expired idempotency buckets. The flushes run on the blocking pool (see `maintain`).
const MAINTENANCE_EVERY_MS: u64 = 60_000;
/// How often the shard gives back the resident pages of its memory maps (log, state table,
/// index). Resident memory then holds at most this long's worth of touched pages, whatever the
/// history; refaulting the hot pages costs a few milliseconds per interval.
const RELEASE_MEMORY_EVERY_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shard {shard} log: {source}")]
    Log {
        shard: usize,
        source: hookrelay_log::Error,
    },
    #[error("shard {shard} idempotency index: {reason}")]
    Index { shard: usize, reason: String },
    #[error("shard {shard} state table: {reason}")]
    Table { shard: usize, reason: String },
    #[error("shard {shard}: record at offset {offset} is unreadable: {reason}")]
    Record {
        shard: usize,
        offset: u64,
        reason: String,
    },
}

/// Why [`ShardCore::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Shutdown,
    /// The log stopped taking writes; the storage must be reopened.
    Poisoned,
    /// The node stopped being primary (fenced by a newer epoch): the shard becomes a replica.
    Demoted,
}

/// Runs `job` on the blocking pool; a job that panicked counts as the I/O error `failed` makes.
async fn on_blocking_pool<T, E>(
    job: impl FnOnce() -> Result<T, E> + Send + 'static,
    failed: impl FnOnce(std::io::Error) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .unwrap_or_else(|e| Err(failed(std::io::Error::other(e.to_string()))))
}

/// Logs the outcome of deleting expired idempotency buckets.
fn log_expiry(shard: usize, done: Result<usize, crate::idempotency::Error>) {
    match done {
        Ok(0) => {}
        Ok(n) => tracing::info!(shard, buckets = n, "expired idempotency buckets"),
        Err(e) => tracing::warn!(shard, error = %e, "idempotency expiry failed"),
    }
}

/// The shard's directory and the options of its log.
pub(crate) fn log_options(
    cfg: &crate::node::EngineConfig,
    id: usize,
) -> (std::path::PathBuf, hookrelay_log::Options) {
    let dir = cfg.data_dir.join("shards").join(format!("{id:03}"));
    let mut opts = hookrelay_log::Options::new(dir.join("log"));
    opts.io = cfg.log_io.clone();
    opts.segment_bytes_max = cfg.segment_bytes_max;
    opts.segment_age_max = cfg.segment_age_max;
    opts.batch_bytes_max = cfg.batch_bytes_max;
    opts.batch_linger = cfg.batch_linger;
    opts.direct_io = cfg.direct_io;
    opts.frame_bytes_max = cfg.frame_bytes_max;
    (dir, opts)
}

/// Everything one shard owns. Lives in an `Rc` on its thread.
pub struct ShardCore {
    pub(crate) id: usize,
    pub(crate) node: Node,
    pub(crate) log: hookrelay_log::Log,
    pub(crate) idem: RefCell<IdempotencyIndex>,
    pub(crate) table: RefCell<StateTable>,
    pub(crate) sched: RefCell<Scheduler>,
    pub(crate) next_seq: Cell<u64>,
    pub(crate) client: DeliveryClient,
    /// The node's DLQ store (`dlq.backend`), shared with the other shards and the API.
    pub(crate) dlq: crate::dlq::Store,
    pub(crate) wake: Notify,
    /// Final deliveries whose DLQ object is not stored yet (`dead_letter.rs`).
    pub(crate) dead_letters: RefCell<super::dead_letter::Backlog>,
    pub(crate) attempts_running: Cell<usize>,
    /// Set when this incarnation of the shard is replaced (after a poisoned log); its leftover
    /// tasks stop at their next step.
    pub(crate) retired: Cell<bool>,
    /// A checkpoint's flushes are running on the blocking pool ([`ShardCore::maintain`]).
    pub(crate) checkpointing: Cell<bool>,
    /// Delivery metrics and usage (`metrics.rs`, [`crate::metrics`]).
    pub(crate) metrics: RefCell<crate::metrics::ShardMetrics>,
    /// Retention of deliveries: the lowest live seq and pass progress (`retention.rs`).
    pub(crate) retention: super::retention::Retention,
}

impl ShardCore {
    /// Opens the shard's storage and rebuilds its state from the log.
    pub async fn open(id: usize, node: Node) -> Result<Rc<ShardCore>, Error> {
        let cfg = node.config().clone();
        let (dir, opts) = log_options(&cfg, id);
        let (log, recovered) = hookrelay_log::Log::open(opts)
            .await
            .map_err(|source| Error::Log { shard: id, source })?;
        // Frames written from now on carry the node's epoch (raised by a promotion).
        let epoch = node.replication().epoch();
        if epoch > log.epoch() {
            log.set_epoch(epoch);
        }
        tracing::info!(
            shard = id,
            io = ?recovered.io,
            segments = recovered.segments,
            records = recovered.records,
            truncated_bytes = recovered.truncated_bytes,
            "log opened"
        );
        if recovered.truncated_bytes > 0 {
            tracing::warn!(
                shard = id,
                bytes = recovered.truncated_bytes,
                "cut a torn log tail"
            );
        }
        let idem = IdempotencyIndex::open(
            &dir.join("idempotency"),
            IndexOptions {
                ttl_ms: cfg.idempotency_ttl.as_millis() as u64,
                ..IndexOptions::default()
            },
        )
        .map_err(|e| Error::Index {
            shard: id,
            reason: e.to_string(),
        })?;
        let table = StateTable::open(&dir.join("state.tbl")).map_err(|e| Error::Table {
            shard: id,
            reason: e.to_string(),
        })?;
        let dlq = node.dlq().clone();
        let core = Rc::new(ShardCore {
            id,
            log,
            idem: RefCell::new(idem),
            table: RefCell::new(table),
            sched: RefCell::new(Scheduler::new(
                mono_ms(),
                cfg.queue_in_memory_per_endpoint,
                cfg.circuit_failures_to_open,
                cfg.circuit_probe_interval.as_millis() as u64,
            )),
            next_seq: Cell::new(0),
            client: DeliveryClient::new(ClientOptions {
                allow_private_destinations: cfg.allow_private_destinations,
                pool_idle_per_host: cfg.pool_idle_per_host,
                connect_timeout: cfg.connect_timeout,
                extra_roots_pem: cfg.extra_roots_pem.clone(),
                ..ClientOptions::default()
            }),
            dlq: dlq.clone(),
            wake: Notify::new(),
            dead_letters: RefCell::new(super::dead_letter::Backlog::new(id, dlq)),
            attempts_running: Cell::new(0),
            retired: Cell::new(false),
            checkpointing: Cell::new(false),
            metrics: RefCell::new(crate::metrics::ShardMetrics::new(
                crate::metrics::usage::Usage::open(&dir.join("usage.json")),
            )),
            retention: super::retention::Retention::default(),
            node,
        });
        core.recover().await?;
        core.ready_index(now_ms());
        Ok(core)
    }

    /// The idempotency index's current tables made and warmed before the first ingest needs
    /// them ([`IdempotencyIndex::ready_for`]): the table is made here, the warming is left to
    /// the blocking pool. A failure is only logged: the first insert makes its table itself.
    fn ready_index(&self, now: u64) {
        match self.idem.borrow_mut().ready_for(now) {
            Ok(job) => drop(tokio::task::spawn_blocking(move || job.run())),
            Err(e) => {
                tracing::warn!(shard = self.id, error = %e, "making the current idempotency table failed; the first insert makes it")
            }
        }
    }

    pub(crate) fn shard_error(&self, offset: u64, reason: impl ToString) -> Error {
        Error::Record {
            shard: self.id,
            offset,
            reason: reason.to_string(),
        }
    }

    /// The event loop: timers, dispatch, refills, until shutdown or a poisoned log; then drain
    /// and close.
    pub async fn run(self: &Rc<Self>) -> Result<Exit, Error> {
        let mut shutdown = self.node.shutdown_signal();
        let mut meta_changes = self.node.meta().subscribe();
        let mut role = self.node.replication().subscribe();
        let link = self.node.replication().link(self.id);
        let mut out = Vec::new();
        let mut orphans = Vec::new();
        let mut maintained_ms = mono_ms();
        let mut released_ms = mono_ms();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.is_poisoned() {
                self.node.mark_poisoned_once(self.id);
                self.drain().await;
                return Ok(Exit::Poisoned);
            }
            if !self.node.replication().is_primary() {
                self.drain().await;
                return Ok(Exit::Demoted);
            }
            link.set_next(self.log.durable_offset());
            let now = now_ms();
            // The scheduler's clock is monotonic (see `clock::mono_ms`); `now` is wall time.
            let mono = mono_ms();
            if mono.saturating_sub(maintained_ms) >= MAINTENANCE_EVERY_MS {
                maintained_ms = mono;
                self.maintain(now);
            }
            if mono.saturating_sub(released_ms) >= RELEASE_MEMORY_EVERY_MS {
                released_ms = mono;
                self.release_memory();
            }
            self.refill_overflowed(mono);
            let slots = self
                .node
                .config()
                .max_in_flight_per_shard
                .saturating_sub(self.attempts_running.get())
                .min(DISPATCH_BATCH_MAX);
            {
                let snapshot = self.node.meta().load();
                let mut sched = self.sched.borrow_mut();
                sched.advance(mono);
                sched.take_dispatchable(
                    mono,
                    slots,
                    |id| {
                        snapshot.endpoints.get(id).map(|e| Limits {
                            max_in_flight: e.max_in_flight,
                            rate_limit_per_s: e.rate_limit_per_s,
                            paused: e.paused,
                        })
                    },
                    &mut out,
                    &mut orphans,
                );
            }
            for (endpoint, entry) in out.drain(..) {
                if self.drop_if_ended(&endpoint, entry, true) {
                    continue;
                }
                self.attempts_running.set(self.attempts_running.get() + 1);
                tokio::task::spawn_local(super::attempt::run(self.clone(), endpoint, entry));
            }
            for (endpoint, entry) in orphans.drain(..) {
                if self.drop_if_ended(&endpoint, entry, false) {
                    continue;
                }
                self.finish_orphan(&endpoint, entry);
            }
            let sleep_for = match self.sched.borrow().next_wake_ms() {
                Some(at) => Duration::from_millis(at.saturating_sub(mono_ms())).min(IDLE_TICK),
                None => IDLE_TICK,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
                changed = meta_changes.changed() => {
                    if changed.is_ok() {
                        self.sched.borrow_mut().mark_all_dirty();
                    }
                }
                _ = shutdown.changed() => {}
                _ = role.changed() => {}
            }
        }
        self.drain().await;
        Ok(Exit::Shutdown)
    }

    /// Graceful stop: let running attempts finish (their outcome is logged), bounded by the
    /// shutdown timeout; everything else is already durable in the log and resumes on restart.
    async fn drain(self: &Rc<Self>) {
        let deadline = tokio::time::Instant::now() + self.node.config().shutdown_timeout;
        while self.attempts_running.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.persist_usage_blocking();
        if let Err(e) = self.log.close().await {
            tracing::error!(shard = self.id, error = %e, "closing the log failed");
        }
        self.maintain_blocking(now_ms());
        tracing::info!(shard = self.id, "shard stopped");
    }

    /// Periodic upkeep: a recovery after a crash replays the idempotency index only from the
    /// last checkpoint, and expired day buckets are deleted whole; a retention pass deletes
    /// expired log segments (on its own task). The checkpoint's flushes (tens of MiB of dirty
    /// index slots after a busy minute) run on the blocking pool, so ingest never waits for
    /// them; one checkpoint at a time.
    fn maintain(self: &Rc<Self>, now: u64) {
        self.start_retention(now);
        self.tend_files(now);
        let expired = self.idem.borrow_mut().take_expired(now);
        if expired.buckets() > 0 {
            let shard = self.id;
            tokio::task::spawn_blocking(move || log_expiry(shard, expired.remove()));
        }
        if self.checkpointing.replace(true) {
            return;
        }
        let (job, flush_table) = self.prepare_checkpoint(self.log.durable_offset());
        let core = self.clone();
        tokio::task::spawn_local(async move {
            let done = tokio::task::spawn_blocking(move || {
                let table = flush_table();
                (job.map(CheckpointJob::run), table)
            })
            .await;
            match done {
                Ok((index, table)) => core.finish_checkpoint(index, table),
                Err(e) => tracing::warn!(shard = core.id, error = %e, "checkpoint task failed"),
            }
            core.checkpointing.set(false);
        });
    }

    /// Grows the files an ingest writes ahead of need, on the blocking pool, so that the ingest
    /// that needs the room only maps it (ARCHITECTURE.md invariant 6): the idempotency index's
    /// next table ([`ShardCore::tend_spare`]) and the state table's next chunk
    /// ([`StateTable::grow_job`]). Called after every ingest and at each upkeep; cheap when
    /// there is nothing to do.
    pub(crate) fn tend_files(self: &Rc<Self>, now: u64) {
        self.tend_spare(now);
        let Some(job) = self.table.borrow_mut().grow_job() else {
            return;
        };
        let core = self.clone();
        tokio::task::spawn_local(async move {
            let done = on_blocking_pool(
                move || job.run(),
                |source| crate::state_table::Error::Io {
                    path: Default::default(),
                    op: "grow task",
                    source,
                },
            )
            .await;
            let finished = core.table.borrow_mut().finish_grow(done);
            match finished {
                // The old mapping's resident pages are unmapped off this thread.
                Ok(Some(old)) => drop(tokio::task::spawn_blocking(move || drop(old))),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard = core.id, error = %e, "growing the state table ahead failed; the next put grows it")
                }
            }
        });
    }

    /// Makes the idempotency index's next table ahead of need, or removes a spare it will not
    /// take, on the blocking pool ([`IdempotencyIndex::spare_job`]): creating a table (a
    /// fallocate of up to GiBs and two fsyncs) would otherwise stall this thread at the insert
    /// that needs it. One job at a time.
    fn tend_spare(self: &Rc<Self>, now: u64) {
        let Some(job) = self.idem.borrow_mut().spare_job(now) else {
            return;
        };
        let core = self.clone();
        tokio::task::spawn_local(async move {
            let done = on_blocking_pool(
                move || job.run(),
                |source| crate::idempotency::Error::Io {
                    path: Default::default(),
                    op: "spare table task",
                    source,
                },
            )
            .await;
            if let Err(e) = core.idem.borrow_mut().finish_spare(done, now_ms()) {
                tracing::warn!(shard = core.id, error = %e, "making a spare idempotency table failed; inserts make their own");
            }
        });
    }

    /// [`ShardCore::maintain`] on this thread, waiting for the flushes: at shutdown.
    fn maintain_blocking(self: &Rc<Self>, now: u64) {
        log_expiry(self.id, self.idem.borrow_mut().expire(now));
        self.checkpoint_blocking(self.log.durable_offset());
    }

    /// A whole checkpoint through log offset `through`, flushes included, on this thread:
    /// after recovery and at shutdown, where blocking is fine.
    pub(crate) fn checkpoint_blocking(&self, through: u64) {
        let (job, flush_table) = self.prepare_checkpoint(through);
        self.finish_checkpoint(job.map(CheckpointJob::run), flush_table());
    }

    /// The checkpoint's quick half: the index job, if `through` passed the last checkpoint
    /// (every record before it must be indexed: durable records were indexed at append time,
    /// before their fsync), and the state table's flush.
    #[allow(clippy::type_complexity)]
    fn prepare_checkpoint(
        &self,
        through: u64,
    ) -> (
        Option<CheckpointJob>,
        impl FnOnce() -> Result<(), crate::state_table::Error> + Send + use<>,
    ) {
        let mut idem = self.idem.borrow_mut();
        let job = (through > idem.indexed_through()).then(|| idem.prepare_checkpoint(through));
        (job, self.table.borrow().flush_job())
    }

    fn finish_checkpoint(
        &self,
        index: Option<Result<u64, CheckpointFailed>>,
        table: Result<(), crate::state_table::Error>,
    ) {
        if let Some(done) = index
            && let Err(e) = self.idem.borrow_mut().finish_checkpoint(done)
        {
            tracing::warn!(shard = self.id, error = %e, "idempotency checkpoint failed");
        }
        if let Err(e) = table {
            tracing::warn!(shard = self.id, error = %e, "state table flush failed");
        }
        self.release_memory();
    }

    /// Gives back this process's resident pages of the log's sealed segments, the state table
    /// and the idempotency index; they stay in the page cache (ARCHITECTURE.md invariant 5).
    pub(crate) fn release_memory(&self) {
        self.idem.borrow().release_memory();
        self.table.borrow().release_memory();
        self.log.release_memory();
    }

    /// Refills queues that overflowed into the log and have room again.
    fn refill_overflowed(self: &Rc<Self>, now: u64) {
        let wants = self.sched.borrow().wants_refill();
        for (endpoint, from) in wants {
            let room = self.sched.borrow().room(&endpoint);
            let next = self.scan_queued(&endpoint, from, room, now);
            self.sched.borrow_mut().set_overflow(&endpoint, next);
        }
    }

    /// Scans the state table from `from` for queued deliveries of `endpoint`, admitting up to
    /// `room` of them; returns where the next scan should start, or `None` when none are left.
    pub(crate) fn scan_queued(
        &self,
        endpoint: &str,
        from: u64,
        room: usize,
        now: u64,
    ) -> Option<u64> {
        /// Slots examined per refill, so one refill cannot stall the shard.
        const SCAN_SLOTS_MAX: u64 = 1 << 18;
        let end = self.next_seq.get();
        let tag = endpoint_tag(endpoint);
        let mut admitted = 0;
        let mut seq = from;
        while seq < end {
            if admitted >= room || seq - from >= SCAN_SLOTS_MAX {
                return Some(seq);
            }
            let slot = self.table.borrow().get(seq);
            if let Some(slot) = slot
                && slot.status == crate::record::Status::Queued
                && slot.endpoint_tag == tag
                && self.endpoint_of(slot.ingest_offset).as_deref() == Some(endpoint)
            {
                let entry = Entry {
                    seq,
                    ingest_offset: slot.ingest_offset,
                    last_offset: slot.last_offset,
                    attempts: u32::from(slot.attempts),
                };
                let due = (slot.next_due_ms > 0).then(|| wall_to_mono(slot.next_due_ms));
                self.sched
                    .borrow_mut()
                    .admit_refilled(endpoint, entry, due, now);
                admitted += 1;
            }
            seq += 1;
        }
        None
    }

    /// The endpoint id of the delivery ingested at `offset`.
    pub(crate) fn endpoint_of(&self, offset: u64) -> Option<String> {
        self.read_ingested(offset, false)
            .ok()
            .map(|i| i.endpoint_id)
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.log.is_poisoned()
    }
}

/// A 32-bit tag of an endpoint id, kept in state-table slots so a refill scan can skip other
/// endpoints' deliveries without reading the log (a match is confirmed by reading the record).
pub fn endpoint_tag(endpoint_id: &str) -> u32 {
    crc32fast::hash(endpoint_id.as_bytes())
}
