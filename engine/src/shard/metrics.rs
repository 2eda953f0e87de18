//! The shard's side of metrics and usage ([`crate::metrics`]): the hooks the hot path calls
//! (`note_ingested`, `usage_pending` + `note_attempt` in `book`), the replay of recent records at
//! recovery ([`MetricsReplay`]), the upkeep task (drop deleted endpoints, trim windows, persist
//! usage), the answers to [`MetricsRequest`]s, and the [`ShardCtx`] fan-out that asks every
//! shard and merges.
//!
//! A reader never touches another shard's state: it sends a [`MetricsRequest`] through the
//! owner's inbox; the owner builds its snapshot synchronously (bounded by what it tracks) and
//! replies. Nothing here blocks the shard except the rollup write at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::ids::shard_of;
use crate::meta::Snapshot;
use crate::metrics::ingest::ingest_stats;
use crate::metrics::usage::{day_of_ms, write_rollup};
use crate::metrics::window::Window;
use crate::metrics::{AttemptEvent, Scope, ShardExport, WindowStats};
use crate::record::{Attempted, Ingested, Status};
use crate::shard::core::{ShardCore, endpoint_tag};
use crate::shard::{ShardCtx, ShardMsg};

/// How often the upkeep runs: forget deleted endpoints, free aged slots, persist usage. Also
/// the most usage a crash makes recovery re-derive from the log.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long a reader waits for another shard's answer. A shard that is still recovering does
/// not serve its inbox yet; `/metrics` then reports it in `hookrelay_scrape_shards_missing`
/// and `/v1/metrics` answers 503.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A question for a shard's metrics, answered on its thread.
pub enum MetricsRequest {
    Window {
        scope: Scope,
        window: Window,
        reply: oneshot::Sender<WindowStats>,
    },
    Export {
        reply: oneshot::Sender<ShardExport>,
    },
    Usage {
        tenant_id: String,
        from_day: u32,
        to_day: u32,
        reply: oneshot::Sender<Vec<(u32, u64)>>,
    },
}

/// Why a metrics read could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("shard {0} did not answer (recovering or overloaded)")]
    Unavailable(usize),
}

/// Marks a success append in flight for usage (see [`crate::metrics::usage`]): created before
/// the append, consumed by [`ShardCore::note_attempt`], or, if the append fails, dropped.
pub(crate) struct UsagePending<'a> {
    core: &'a ShardCore,
    floor: Option<u64>,
}

impl Drop for UsagePending<'_> {
    fn drop(&mut self) {
        if let Some(floor) = self.floor.take() {
            self.core.metrics.borrow_mut().usage.end(floor);
        }
    }
}

impl ShardCore {
    /// Hot path: a delivery became durable.
    pub(crate) fn note_ingested(&self, endpoint_id: &str, tenant_id: &str, received_at_ms: u64) {
        self.metrics.borrow_mut().record_created(
            endpoint_id,
            tenant_id,
            received_at_ms,
            now_ms(),
            true,
        );
    }

    /// Call right before appending `booked`; pass the result to [`ShardCore::note_attempt`].
    pub(crate) fn usage_pending(&self, booked: &Attempted) -> UsagePending<'_> {
        let floor = (booked.status_after == Status::Success).then(|| {
            let floor = self.log.next_offset();
            self.metrics.borrow_mut().usage.begin(floor);
            floor
        });
        UsagePending { core: self, floor }
    }

    /// An attempt record is durable at `offset`: count it (windows, totals, usage).
    pub(crate) fn note_attempt(
        &self,
        endpoint_id: &str,
        booked: &Attempted,
        offset: u64,
        mut pending: UsagePending<'_>,
    ) {
        let floor = pending.floor.take();
        let snapshot = self.node.meta().load();
        let mut m = self.metrics.borrow_mut();
        if let Some(floor) = floor {
            m.usage.end(floor);
        }
        // The endpoint may have been deleted while the attempt ran: its metrics go, but a
        // success still counts for its tenant's usage.
        let tenant = snapshot
            .endpoints
            .get(endpoint_id)
            .map(|e| e.tenant_id.clone())
            .or_else(|| m.tenant_of(endpoint_id));
        let Some(tenant) = tenant else {
            return;
        };
        let event = AttemptEvent {
            n: booked.n,
            at_ms: booked.at_ms,
            latency_ms: booked.latency_ms,
            error: booked.error.as_deref(),
            status_after: booked.status_after,
        };
        if snapshot.endpoints.contains_key(endpoint_id) {
            m.record_attempt(endpoint_id, &tenant, &event, now_ms(), true);
        }
        if booked.status_after == Status::Success {
            m.usage.count_live(offset, day_of_ms(booked.at_ms), &tenant);
        }
    }

    /// Starts replaying records into the metrics at recovery (see [`MetricsReplay`]).
    pub(crate) fn metrics_replay(&self, now_ms: u64) -> MetricsReplay<'_> {
        let snapshot = self.node.meta().load();
        let mut tags: HashMap<u32, Option<(String, String)>> = HashMap::new();
        for e in snapshot.endpoints.values() {
            if shard_of(&e.id, self.node.shards()) == self.id {
                tags.entry(endpoint_tag(&e.id))
                    .and_modify(|o| *o = None)
                    .or_insert_with(|| Some((e.id.clone(), e.tenant_id.clone())));
            }
        }
        MetricsReplay {
            core: self,
            snapshot,
            tags,
            now_ms,
        }
    }

    /// Answers a metrics question on this shard's thread.
    pub(crate) fn answer_metrics(&self, req: MetricsRequest) {
        match req {
            MetricsRequest::Window {
                scope,
                window,
                reply,
            } => {
                let _ = reply.send(self.window_stats(&scope, window, now_ms()));
            }
            MetricsRequest::Export { reply } => {
                let _ = reply.send(self.export_metrics(now_ms()));
            }
            MetricsRequest::Usage {
                tenant_id,
                from_day,
                to_day,
                reply,
            } => {
                let days = self
                    .metrics
                    .borrow()
                    .usage
                    .days_for(&tenant_id, from_day, to_day);
                let _ = reply.send(days);
            }
        }
    }

    fn window_stats(&self, scope: &Scope, window: Window, now: u64) -> WindowStats {
        let mut stats = self.metrics.borrow().window(scope, window, now);
        let sched = self.sched.borrow();
        let in_flight = |id: &str| sched.queue(id).map_or(0, |q| u64::from(q.in_flight));
        stats.inflight = match scope {
            Scope::Endpoint(id) => in_flight(id),
            Scope::Tenant(t) => {
                let snapshot = self.node.meta().load();
                snapshot
                    .endpoints
                    .values()
                    .filter(|e| &e.tenant_id == t)
                    .map(|e| in_flight(&e.id))
                    .sum()
            }
        };
        stats
    }

    fn export_metrics(&self, now: u64) -> ShardExport {
        let mut x = self.metrics.borrow().export(self.id, ingest_stats());
        x.inflight = self.attempts_running.get() as u64;
        x.queue_oldest_age_ms = self.queue_oldest_age_ms(now);
        x.log = Some(self.log.stats());
        x
    }

    /// Age of the oldest delivery that is due and waiting for an attempt slot, or parked in
    /// the log behind an overflow cursor: the lowest sequence number the scheduler holds in its
    /// ready queues (bounded by the in-memory queue cap per endpoint) or as a cursor, aged by
    /// its ingest record's arrival time — one record read per scrape. Deliveries waiting out a
    /// retry backoff are not counted: they are not late, they are scheduled.
    fn queue_oldest_age_ms(&self, now: u64) -> Option<u64> {
        let seq = self.sched.borrow().oldest_waiting_seq()?;
        let slot = self.table.borrow().get(seq)?;
        let rec = self.log.read(slot.ingest_offset).ok()?;
        let ingested = Ingested::decode(rec.payload).ok()?;
        Some(now.saturating_sub(ingested.received_at_ms))
    }

    /// Writes the usage rollup if it changed, on the blocking pool.
    async fn persist_usage(&self) {
        let Some((path, bytes)) = self.take_rollup() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || write_rollup(&path, &bytes)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.rollup_failed(&e.to_string()),
            Err(e) => self.rollup_failed(&e.to_string()),
        }
    }

    /// Writes the usage rollup now, on this thread: only at shutdown, after the attempts ended.
    pub(crate) fn persist_usage_blocking(&self) {
        if let Some((path, bytes)) = self.take_rollup()
            && let Err(e) = write_rollup(&path, &bytes)
        {
            self.rollup_failed(&e.to_string());
        }
    }

    fn take_rollup(&self) -> Option<(std::path::PathBuf, Vec<u8>)> {
        let mut m = self.metrics.borrow_mut();
        if !m.usage.is_dirty() {
            return None;
        }
        // Not `next_offset`: records past the durable end may be cut as a torn tail after a
        // crash, and later records would reuse their offsets below a stale `through_offset`.
        // Every counted success is durable, so nothing counted lies past this.
        Some(m.usage.rollup(self.log.durable_offset()))
    }

    fn rollup_failed(&self, error: &str) {
        tracing::warn!(shard = self.id, %error, "writing the usage rollup failed; will retry");
        self.metrics.borrow_mut().usage.mark_dirty();
    }
}

/// Periodic upkeep of one shard's metrics, until shutdown.
pub(crate) async fn upkeep(core: Rc<ShardCore>) {
    let mut shutdown = core.node.shutdown_signal();
    loop {
        let now = now_ms();
        {
            let snapshot = core.node.meta().load();
            let mut m = core.metrics.borrow_mut();
            m.retain(now, |id| snapshot.endpoints.contains_key(id));
            m.usage.prune(day_of_ms(now));
        }
        core.persist_usage().await;
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() || core.retired.get() {
            return;
        }
    }
}

/// Feeds the records recovery reads into the metrics: deliveries created and attempts of the
/// last 7 days rebuild the windows; successes the usage rollup does not have yet are counted.
/// Records of deleted endpoints rebuild nothing but usage.
pub(crate) struct MetricsReplay<'a> {
    core: &'a ShardCore,
    snapshot: Arc<Snapshot>,
    /// Endpoint tag → (endpoint, tenant) of this shard's endpoints; `None` for shared tags.
    tags: HashMap<u32, Option<(String, String)>>,
    now_ms: u64,
}

impl MetricsReplay<'_> {
    pub(crate) fn ingested(&mut self, i: &Ingested) {
        if self.snapshot.endpoints.contains_key(&i.endpoint_id) {
            self.core.metrics.borrow_mut().record_created(
                &i.endpoint_id,
                &i.tenant_id,
                i.received_at_ms,
                self.now_ms,
                false,
            );
        }
    }

    pub(crate) fn attempted(&mut self, offset: u64, a: &Attempted) {
        let in_windows =
            a.at_ms.saturating_add(a.latency_ms) + Window::Week.span_ms() > self.now_ms;
        let usage = a.status_after == Status::Success
            && self.core.metrics.borrow().usage.needs_replay(offset);
        if !in_windows && !usage {
            return;
        }
        let Some(slot) = self
            .core
            .table
            .borrow()
            .get(a.seq)
            .filter(|s| s.ingest_offset < offset)
        else {
            return;
        };
        let (endpoint_id, tenant_id) = match self.tags.get(&slot.endpoint_tag) {
            Some(Some(pair)) => pair.clone(),
            // A shared tag, or an endpoint that is gone: ask the ingest record.
            _ => match self
                .core
                .log
                .read(slot.ingest_offset)
                .ok()
                .and_then(|r| Ingested::decode(r.payload).ok())
            {
                Some(i) => (i.endpoint_id, i.tenant_id),
                None => return,
            },
        };
        let mut m = self.core.metrics.borrow_mut();
        if in_windows && self.snapshot.endpoints.contains_key(&endpoint_id) {
            let event = AttemptEvent {
                n: a.n,
                at_ms: a.at_ms,
                latency_ms: a.latency_ms,
                error: a.error.as_deref(),
                status_after: a.status_after,
            };
            m.record_attempt(&endpoint_id, &tenant_id, &event, self.now_ms, false);
        }
        if usage {
            m.usage
                .count_replayed(offset, day_of_ms(a.at_ms), &tenant_id);
        }
    }
}

impl Drop for MetricsReplay<'_> {
    fn drop(&mut self) {
        self.core.metrics.borrow_mut().usage.finish_replay();
    }
}

impl ShardCtx {
    /// Asks shard `shard` a metrics question; `None` if it does not answer in time.
    async fn ask_metrics<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> MetricsRequest,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let inbox = self.node.inbox(shard).clone();
        let msg = ShardMsg::Metrics(make(tx));
        tokio::time::timeout(ANSWER_TIMEOUT, async move {
            inbox.send(msg).await.ok()?;
            rx.await.ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// The window's numbers over `scope`, merged over the shards that hold them (the owner of
    /// one endpoint, or every shard for a tenant).
    pub async fn metrics_window(
        &self,
        scope: Scope,
        window: Window,
    ) -> Result<WindowStats, MetricsError> {
        let shards: Vec<usize> = match &scope {
            Scope::Endpoint(id) => vec![shard_of(id, self.node.shards())],
            Scope::Tenant(_) => (0..self.node.shards()).collect(),
        };
        let remote = shards.iter().filter(|s| **s != self.id).map(|s| {
            let (s, scope) = (*s, scope.clone());
            async move {
                self.ask_metrics(s, |reply| MetricsRequest::Window {
                    scope,
                    window,
                    reply,
                })
                .await
                .ok_or(MetricsError::Unavailable(s))
            }
        });
        let remote = futures::future::join_all(remote);
        let mut total = WindowStats::default();
        if shards.contains(&self.id) {
            let core = self.local().ok_or(MetricsError::Unavailable(self.id))?;
            total.merge(&core.window_stats(&scope, window, now_ms()));
        }
        for part in remote.await {
            total.merge(&part?);
        }
        Ok(total)
    }

    /// Every shard's contribution to `/metrics`; shards that do not answer in time are left
    /// out. A shard still recovering on this thread reports its ingest counters only.
    pub async fn metrics_export(&self) -> Vec<ShardExport> {
        let remote = (0..self.node.shards())
            .filter(|s| *s != self.id)
            .map(|s| self.ask_metrics(s, |reply| MetricsRequest::Export { reply }));
        let remote = futures::future::join_all(remote);
        let local = match self.local() {
            Some(core) => core.export_metrics(now_ms()),
            None => ShardExport::ingest_only(self.id, ingest_stats()),
        };
        let mut all = vec![local];
        all.extend(remote.await.into_iter().flatten());
        all.sort_by_key(|x| x.shard);
        all
    }

    /// Successful deliveries of `tenant_id` per UTC day in `from_day..=to_day` (days since the
    /// epoch), days without any left out.
    pub async fn usage(
        &self,
        tenant_id: &str,
        from_day: u32,
        to_day: u32,
    ) -> Result<Vec<(u32, u64)>, MetricsError> {
        let remote = (0..self.node.shards()).filter(|s| *s != self.id).map(|s| {
            let tenant_id = tenant_id.to_string();
            async move {
                self.ask_metrics(s, |reply| MetricsRequest::Usage {
                    tenant_id,
                    from_day,
                    to_day,
                    reply,
                })
                .await
                .ok_or(MetricsError::Unavailable(s))
            }
        });
        let remote = futures::future::join_all(remote);
        let mut days: BTreeMap<u32, u64> = BTreeMap::new();
        let core = self.local().ok_or(MetricsError::Unavailable(self.id))?;
        for (day, n) in core
            .metrics
            .borrow()
            .usage
            .days_for(tenant_id, from_day, to_day)
        {
            *days.entry(day).or_insert(0) += n;
        }
        for part in remote.await {
            for (day, n) in part? {
                *days.entry(day).or_insert(0) += n;
            }
        }
        Ok(days.into_iter().collect())
    }
}
