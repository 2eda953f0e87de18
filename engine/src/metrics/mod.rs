//! Delivery metrics and usage, owned by each shard's thread.
//!
//! Architecture Invariant: no locks and no shared counters. Every shard keeps its own
//! [`ShardMetrics`] (inside its `ShardCore`) and its thread's ingest counters
//! ([`ingest::record_ingest`]); a reader asks every shard over its inbox for a snapshot
//! ([`WindowStats`], [`ShardExport`], usage days) and merges them. A shard spends on a scrape
//! only the time to build its own snapshot.
//!
//! What is kept, per shard:
//! - per endpoint ([`EndpointMetrics`]): [`window::Windows`] (per-minute slots for 1 h,
//!   per-hour slots for 7 days: deliveries created / success / failed / exhausted, attempts,
//!   failure classes and a log-linear latency histogram of successful attempts) and totals
//!   since the process started (the Prometheus counters);
//! - one Prometheus histogram of delivery latency;
//! - [`usage::Usage`]: successful deliveries per tenant per UTC day, persisted.
//!
//! Memory bound (Architecture Invariant 5): at most [`ENDPOINTS_TRACKED_MAX`] endpoints per
//! shard (past it, the endpoint idle longest is forgotten, counted in
//! `hookrelay_metrics_endpoints_evicted_total`); an endpoint deleted from the metadata, or
//! without an event for 7 days, is dropped. An endpoint costs ~200 bytes plus 1.8 KB of slot
//! pointers once active, plus ~64 bytes per non-empty slot (at most 60 + 168) plus 8 bytes per
//! non-empty latency bucket per slot: a receiver whose latency spans a factor of 4 (~64
//! buckets) costs at most ~130 KB after a full busy week (`window::tests` measures a busy
//! week at under 64 KB for a factor of 8 spread); the theoretical worst case, every one of
//! the 544 buckets hit in every slot, is ~1.0 MB. Failure classes are interned per shard (at
//! most [`FAILURE_CLASSES_MAX`] names) and kept at most 16 per slot.

pub mod histogram;
pub mod ingest;
pub mod prometheus;
pub mod usage;
pub mod window;

use std::collections::HashMap;

use crate::record::Status;
use histogram::{DELIVERY_BOUNDS_US, Histogram, PromHistogram};
use ingest::IngestStats;
use window::{Counts, Event, OTHER_CLASS, Window, WindowSum, Windows};

/// Most endpoints one shard keeps metrics for.
pub const ENDPOINTS_TRACKED_MAX: usize = 2048;
/// Most distinct failure class names one shard interns; later ones count as `other`.
pub const FAILURE_CLASSES_MAX: usize = 512;
/// Entries of `top_failures`.
pub const TOP_FAILURES_MAX: usize = 10;

/// Totals of one endpoint since the process started (Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub created: u64,
    pub success: u64,
    pub failed: u64,
    pub exhausted: u64,
    pub attempts_success: u64,
    pub attempts_failure: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.created += o.created;
        self.success += o.success;
        self.failed += o.failed;
        self.exhausted += o.exhausted;
        self.attempts_success += o.attempts_success;
        self.attempts_failure += o.attempts_failure;
    }
}

/// One attempt as booked: the fields of an `Attempted` record the metrics need.
#[derive(Debug, Clone, Copy)]
pub struct AttemptEvent<'a> {
    /// Attempt number; 0 marks a delivery ended without an attempt (endpoint deleted).
    pub n: u32,
    pub at_ms: u64,
    pub latency_ms: u64,
    pub error: Option<&'a str>,
    pub status_after: Status,
}

/// Which endpoints a window query covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Endpoint(String),
    /// Every endpoint of the tenant, aggregated.
    Tenant(String),
}

/// A window's numbers, from one shard or merged over several. Crosses threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub counts: Counts,
    pub inflight: u64,
    /// Latency of successful attempts: non-empty log-linear buckets, see [`histogram`].
    pub latency: Vec<(u16, u64)>,
    /// Failed attempts by error class.
    pub failures: Vec<(String, u64)>,
}

impl WindowStats {
    pub fn merge(&mut self, o: &WindowStats) {
        self.counts.add(&o.counts);
        self.inflight += o.inflight;
        let mut h = Histogram::from_sparse_u64(&self.latency);
        h.merge(&Histogram::from_sparse_u64(&o.latency));
        self.latency = h.to_sparse_u64();
        for (class, n) in &o.failures {
            match self.failures.iter_mut().find(|(c, _)| c == class) {
                Some((_, total)) => *total += n,
                None => self.failures.push((class.clone(), *n)),
            }
        }
    }

    /// Latency at quantile `q` in ms; `None` without any successful attempt.
    pub fn latency_ms(&self, q: f64) -> Option<u64> {
        Histogram::from_sparse_u64(&self.latency).quantile(q)
    }

    /// The most frequent failure classes, most frequent first (ties by name), at most `n`.
    pub fn top_failures(&self, n: usize) -> Vec<(String, u64)> {
        let mut all = self.failures.clone();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// success / (success + failed + exhausted); `None` when nothing reached a final status.
    pub fn success_rate(&self) -> Option<f64> {
        let c = &self.counts;
        let finals = c.success + c.failed + c.exhausted;
        (finals > 0).then(|| c.success as f64 / finals as f64)
    }
}

/// One shard's contribution to `/metrics`. Crosses threads.
#[derive(Debug, Clone)]
pub struct ShardExport {
    pub shard: usize,
    pub endpoints: Vec<(String, Totals)>,
    pub delivery_latency: PromHistogram,
    pub ingest: IngestStats,
    pub inflight: u64,
    /// Age of the oldest delivery waiting for a slot, see `ShardCore::queue_oldest_age_ms`.
    pub queue_oldest_age_ms: Option<u64>,
    pub endpoints_tracked: u64,
    pub endpoints_evicted_total: u64,
    /// The shard's log counters since it was opened (`None` before it has recovered).
    pub log: Option<hookrelay_log::Stats>,
}

impl ShardExport {
    /// What a shard that has not recovered yet reports: its thread's ingest counters only.
    pub fn ingest_only(shard: usize, ingest: IngestStats) -> ShardExport {
        ShardExport {
            shard,
            endpoints: Vec::new(),
            delivery_latency: PromHistogram::new(DELIVERY_BOUNDS_US),
            ingest,
            inflight: 0,
            queue_oldest_age_ms: None,
            endpoints_tracked: 0,
            endpoints_evicted_total: 0,
            log: None,
        }
    }
}

/// The metrics of one endpoint on its shard.
#[derive(Debug)]
pub struct EndpointMetrics {
    pub tenant_id: String,
    pub windows: Windows,
    pub totals: Totals,
    pub last_event_ms: u64,
}

/// Failure class names, interned so slots store a `u16`. Id 0 is `other`.
#[derive(Debug)]
struct Classes {
    names: Vec<String>,
    ids: HashMap<String, u16>,
}

impl Classes {
    fn new() -> Classes {
        Classes {
            names: vec!["other".to_string()],
            ids: HashMap::new(),
        }
    }
    fn intern(&mut self, name: &str) -> u16 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        if self.names.len() >= FAILURE_CLASSES_MAX {
            return OTHER_CLASS;
        }
        let id = self.names.len() as u16;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }
    fn name(&self, id: u16) -> &str {
        self.names
            .get(usize::from(id))
            .map_or("other", String::as_str)
    }
}

/// Everything one shard measures. Owned by the shard (a `RefCell` in its core).
#[derive(Debug)]
pub struct ShardMetrics {
    endpoints: HashMap<String, EndpointMetrics>,
    classes: Classes,
    delivery_latency: PromHistogram,
    evicted_total: u64,
    pub usage: usage::Usage,
}

impl ShardMetrics {
    pub fn new(usage: usage::Usage) -> ShardMetrics {
        ShardMetrics {
            endpoints: HashMap::new(),
            classes: Classes::new(),
            delivery_latency: PromHistogram::new(DELIVERY_BOUNDS_US),
            evicted_total: 0,
            usage,
        }
    }

    fn endpoint_mut(
        &mut self,
        endpoint_id: &str,
        tenant_id: &str,
        at_ms: u64,
    ) -> &mut EndpointMetrics {
        if !self.endpoints.contains_key(endpoint_id) {
            if self.endpoints.len() >= ENDPOINTS_TRACKED_MAX {
                self.evict_idlest();
            }
            self.endpoints.insert(
                endpoint_id.to_string(),
                EndpointMetrics {
                    tenant_id: tenant_id.to_string(),
                    windows: Windows::new(),
                    totals: Totals::default(),
                    last_event_ms: at_ms,
                },
            );
        }
        let e = self.endpoints.get_mut(endpoint_id).expect("inserted above");
        e.last_event_ms = e.last_event_ms.max(at_ms);
        e
    }

    /// At the cap: forget the endpoint whose last event is oldest. O(endpoints), only when a
    /// new endpoint arrives at the cap.
    fn evict_idlest(&mut self) {
        let Some(victim) = self
            .endpoints
            .iter()
            .min_by_key(|(_, e)| e.last_event_ms)
            .map(|(id, _)| id.clone())
        else {
            return;
        };
        self.endpoints.remove(&victim);
        if self.evicted_total == 0 {
            tracing::warn!(
                endpoint_id = %victim,
                max = ENDPOINTS_TRACKED_MAX,
                "metrics track too many endpoints on this shard; forgetting the idlest"
            );
        }
        self.evicted_total += 1;
    }

    /// A delivery was ingested at `at_ms`. `live` is false for records replayed at start-up,
    /// which rebuild the windows but not the since-start totals.
    pub fn record_created(
        &mut self,
        endpoint_id: &str,
        tenant_id: &str,
        at_ms: u64,
        now_ms: u64,
        live: bool,
    ) {
        if !live && at_ms + Window::Week.span_ms() <= now_ms {
            return;
        }
        let e = self.endpoint_mut(endpoint_id, tenant_id, at_ms);
        e.windows.record(now_ms, at_ms, Event::Created);
        if live {
            e.totals.created += 1;
        }
    }

    /// An attempt was booked (see [`ShardMetrics::record_created`] for `live`).
    pub fn record_attempt(
        &mut self,
        endpoint_id: &str,
        tenant_id: &str,
        a: &AttemptEvent<'_>,
        now_ms: u64,
        live: bool,
    ) {
        let at = a.at_ms.saturating_add(a.latency_ms);
        if !live && at + Window::Week.span_ms() <= now_ms {
            return;
        }
        let success = a.status_after == Status::Success;
        let class = match a.error {
            Some(err) if a.n > 0 && !success => Some(self.classes.intern(err)),
            _ => None,
        };
        if live && a.n > 0 && success {
            self.delivery_latency
                .record_us(a.latency_ms.saturating_mul(1000));
        }
        let e = self.endpoint_mut(endpoint_id, tenant_id, at);
        if a.n > 0 {
            e.windows.record(
                now_ms,
                at,
                Event::Attempt {
                    success,
                    latency_ms: a.latency_ms,
                },
            );
            if live {
                if success {
                    e.totals.attempts_success += 1;
                } else {
                    e.totals.attempts_failure += 1;
                }
            }
        }
        if let Some(class) = class {
            e.windows.record(now_ms, at, Event::Failure { class });
        }
        let final_event = match a.status_after {
            Status::Queued => None,
            Status::Success => Some(Event::Success),
            Status::Failed => Some(Event::Failed),
            Status::Exhausted => Some(Event::Exhausted),
        };
        if let Some(ev) = final_event {
            e.windows.record(now_ms, at, ev);
            if live {
                match a.status_after {
                    Status::Success => e.totals.success += 1,
                    Status::Failed => e.totals.failed += 1,
                    Status::Exhausted => e.totals.exhausted += 1,
                    Status::Queued => {}
                }
            }
        }
    }

    /// The window ending at `now_ms` over `scope`; `inflight` is filled in by the caller
    /// (the scheduler knows it).
    pub fn window(&self, scope: &Scope, window: Window, now_ms: u64) -> WindowStats {
        let mut sum = WindowSum::default();
        match scope {
            Scope::Endpoint(id) => {
                if let Some(e) = self.endpoints.get(id) {
                    e.windows.sum(window, now_ms, &mut sum);
                }
            }
            Scope::Tenant(t) => {
                for e in self.endpoints.values().filter(|e| &e.tenant_id == t) {
                    e.windows.sum(window, now_ms, &mut sum);
                }
            }
        }
        WindowStats {
            counts: sum.counts,
            inflight: 0,
            latency: sum.latency.to_sparse_u64(),
            failures: sum
                .failures
                .iter()
                .map(|(c, n)| (self.classes.name(*c).to_string(), *n))
                .collect(),
        }
    }

    /// This shard's part of `/metrics`, without the scheduler's gauges.
    pub fn export(&self, shard: usize, ingest: IngestStats) -> ShardExport {
        let mut endpoints: Vec<(String, Totals)> = self
            .endpoints
            .iter()
            .map(|(id, e)| (id.clone(), e.totals))
            .collect();
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        ShardExport {
            shard,
            endpoints,
            delivery_latency: self.delivery_latency.clone(),
            ingest,
            inflight: 0,
            queue_oldest_age_ms: None,
            endpoints_tracked: self.endpoints.len() as u64,
            endpoints_evicted_total: self.evicted_total,
            log: None,
        }
    }

    /// Drops endpoints that no longer exist and those with nothing left in any window.
    pub fn retain(&mut self, now_ms: u64, exists: impl Fn(&str) -> bool) {
        self.endpoints
            .retain(|id, e| exists(id) && !e.windows.trim(now_ms));
    }

    /// The tenant of a tracked endpoint.
    pub fn tenant_of(&self, endpoint_id: &str) -> Option<String> {
        self.endpoints.get(endpoint_id).map(|e| e.tenant_id.clone())
    }

    pub fn tracked(&self) -> usize {
        self.endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000_000;

    fn attempt(n: u32, lat: u64, err: Option<&str>, st: Status) -> AttemptEvent<'_> {
        AttemptEvent {
            n,
            at_ms: T0,
            latency_ms: lat,
            error: err,
            status_after: st,
        }
    }

    fn metrics() -> (tempfile::TempDir, ShardMetrics) {
        let dir = tempfile::tempdir().unwrap();
        let m = ShardMetrics::new(usage::Usage::open(&dir.path().join("usage.json")));
        (dir, m)
    }

    #[test]
    fn counts_a_delivery_story() {
        let (_d, mut m) = metrics();
        for _ in 0..3 {
            m.record_created("ep_a", "tn_1", T0, T0, true);
        }
        m.record_attempt(
            "ep_a",
            "tn_1",
            &attempt(1, 12, None, Status::Success),
            T0,
            true,
        );
        m.record_attempt(
            "ep_a",
            "tn_1",
            &attempt(1, 5, Some("http_503"), Status::Queued),
            T0,
            true,
        );
        m.record_attempt(
            "ep_a",
            "tn_1",
            &attempt(2, 5, Some("http_503"), Status::Exhausted),
            T0,
            true,
        );
        m.record_attempt(
            "ep_a",
            "tn_1",
            &attempt(1, 5, Some("http_404"), Status::Failed),
            T0,
            true,
        );
        m.record_attempt(
            "ep_b",
            "tn_2",
            &attempt(0, 0, Some("endpoint_deleted"), Status::Failed),
            T0,
            true,
        );
        let w = m.window(&Scope::Endpoint("ep_a".into()), Window::Hour, T0 + 1000);
        assert_eq!(
            w.counts,
            Counts {
                created: 3,
                success: 1,
                failed: 1,
                exhausted: 1,
                attempts: 4
            }
        );
        assert_eq!(w.latency_ms(0.5), Some(12));
        assert_eq!(w.success_rate(), Some(1.0 / 3.0));
        assert_eq!(
            w.top_failures(10),
            vec![("http_503".to_string(), 2), ("http_404".to_string(), 1)]
        );
        // A delivery ended without an attempt counts as failed, not as an attempt.
        let b = m.window(&Scope::Endpoint("ep_b".into()), Window::Day, T0);
        assert_eq!((b.counts.failed, b.counts.attempts), (1, 0));
        assert!(b.failures.is_empty());
        // The tenant scope only sums its own endpoints.
        let t = m.window(&Scope::Tenant("tn_1".into()), Window::Week, T0);
        assert_eq!(t.counts, w.counts);
        let export = m.export(0, IngestStats::default());
        assert_eq!(export.endpoints[0].1.attempts_failure, 3);
        assert_eq!(export.delivery_latency.count, 1);
    }

    #[test]
    fn replay_rebuilds_windows_but_not_totals() {
        let (_d, mut m) = metrics();
        m.record_created("ep_a", "tn_1", T0, T0 + 10, false);
        m.record_attempt(
            "ep_a",
            "tn_1",
            &attempt(1, 3, None, Status::Success),
            T0 + 10,
            false,
        );
        m.record_created("ep_a", "tn_1", T0 - 8 * 24 * 3_600_000, T0, false);
        let w = m.window(&Scope::Tenant("tn_1".into()), Window::Day, T0 + 10);
        assert_eq!((w.counts.created, w.counts.success), (1, 1));
        assert_eq!(
            m.export(0, IngestStats::default()).endpoints[0].1,
            Totals::default()
        );
    }

    #[test]
    fn merged_stats_and_empty_rates() {
        let empty = WindowStats::default();
        assert_eq!(empty.success_rate(), None);
        assert_eq!(empty.latency_ms(0.99), None);
        let (_d, mut m) = metrics();
        m.record_attempt(
            "ep_a",
            "t",
            &attempt(1, 100, None, Status::Success),
            T0,
            true,
        );
        let a = m.window(&Scope::Tenant("t".into()), Window::Hour, T0);
        let mut merged = a.clone();
        merged.merge(&a);
        assert_eq!(merged.counts.success, 2);
        assert_eq!(merged.latency, vec![(histogram::bucket_of(100) as u16, 2)]);
    }

    #[test]
    fn endpoints_are_capped_and_dropped() {
        let (_d, mut m) = metrics();
        for i in 0..ENDPOINTS_TRACKED_MAX + 5 {
            m.record_created(&format!("ep_{i}"), "t", T0 + i as u64, T0 + i as u64, true);
        }
        assert_eq!(m.tracked(), ENDPOINTS_TRACKED_MAX);
        assert!(!m.endpoints.contains_key("ep_0"), "the idlest went first");
        assert_eq!(
            m.export(0, IngestStats::default()).endpoints_evicted_total,
            5
        );
        m.retain(T0 + 10_000, |id| id != "ep_100");
        assert_eq!(m.tracked(), ENDPOINTS_TRACKED_MAX - 1);
        m.retain(T0 + 8 * 24 * 3_600_000, |_| true);
        assert_eq!(m.tracked(), 0, "nothing left in any window");
    }
}
