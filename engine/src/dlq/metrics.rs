//! Shipping counters of the DLQ, node-wide, and their Prometheus series:
//! `hookrelay_dlq_shipped_total`, `hookrelay_dlq_ship_failures_total`, `hookrelay_dlq_backlog`
//! and `hookrelay_dlq_backlog_oldest_age_seconds`.
//!
//! Shards update them from their threads (atomics, and one short lock per change of a shard's
//! backlog, which happens per dead letter: the cold path); `/metrics` reads them without
//! asking any shard, so a shard that is still recovering is counted too.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::SHARDS_MAX;

/// A shard's deliveries awaiting shipping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardBacklog {
    /// Final deliveries whose DLQ object is not stored yet (waiting or being shipped).
    pub count: u64,
    /// When the oldest of them was queued for shipping, on the monotonic clock
    /// (`clock::mono_ms`); `None` when `count` is 0.
    pub oldest_queued_mono_ms: Option<u64>,
}

/// The node's shipping counters.
#[derive(Debug, Default)]
pub struct ShipStats {
    shipped_total: AtomicU64,
    failures_total: AtomicU64,
    /// By shard id, with the incarnation of the shard that reported it; at most [`SHARDS_MAX`]
    /// entries.
    backlog: Mutex<Vec<(u64, ShardBacklog)>>,
}

/// What [`ShipStats::snapshot`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipSnapshot {
    pub shipped_total: u64,
    pub failures_total: u64,
    pub backlog: u64,
    pub backlog_oldest_age_ms: u64,
}

impl ShipStats {
    /// An object was stored and its `DeadLettered` record appended.
    pub fn note_shipped(&self) {
        self.shipped_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A store attempt failed (it will be retried).
    pub fn note_failure(&self) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces shard `shard`'s backlog, as reported by its `incarnation` (a shard reopened
    /// after a poisoned log is a new incarnation, numbered higher). A report of an older
    /// incarnation than the last one is ignored: a retired shard's last words never overwrite
    /// its successor's.
    pub fn set_backlog(&self, shard: usize, incarnation: u64, backlog: ShardBacklog) {
        assert!(shard < SHARDS_MAX, "shard {shard} out of range");
        debug_assert_eq!(backlog.count == 0, backlog.oldest_queued_mono_ms.is_none());
        let mut all = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() <= shard {
            all.resize(shard + 1, (0, ShardBacklog::default()));
        }
        if incarnation >= all[shard].0 {
            all[shard] = (incarnation, backlog);
        }
    }

    /// The counters, and the backlog summed over shards with the age of its oldest entry at
    /// `now_mono_ms`.
    pub fn snapshot(&self, now_mono_ms: u64) -> ShipSnapshot {
        let all = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let backlog = all.iter().map(|(_, b)| b.count).sum();
        let oldest = all
            .iter()
            .filter_map(|(_, b)| b.oldest_queued_mono_ms)
            .min();
        ShipSnapshot {
            shipped_total: self.shipped_total.load(Ordering::Relaxed),
            failures_total: self.failures_total.load(Ordering::Relaxed),
            backlog,
            backlog_oldest_age_ms: oldest.map_or(0, |t| now_mono_ms.saturating_sub(t)),
        }
    }

    /// Appends the four DLQ series to a Prometheus text exposition (format 0.0.4).
    pub fn render_prometheus(&self, out: &mut String, now_mono_ms: u64) {
        let s = self.snapshot(now_mono_ms);
        let series = [
            (
                "hookrelay_dlq_shipped_total",
                "counter",
                "DLQ objects stored (and recorded in the log) since the process started.",
                s.shipped_total.to_string(),
            ),
            (
                "hookrelay_dlq_ship_failures_total",
                "counter",
                "Failed attempts to store a DLQ object since the process started (each is retried with backoff).",
                s.failures_total.to_string(),
            ),
            (
                "hookrelay_dlq_backlog",
                "gauge",
                "Final (failed or exhausted) deliveries whose DLQ object is not stored yet.",
                s.backlog.to_string(),
            ),
            (
                "hookrelay_dlq_backlog_oldest_age_seconds",
                "gauge",
                "How long the oldest delivery awaiting shipping has waited (0 when none); keeps growing while the DLQ store is unreachable.",
                format!("{:.3}", s.backlog_oldest_age_ms as f64 / 1000.0),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_sums_shards_and_ages_the_oldest() {
        let stats = ShipStats::default();
        stats.note_shipped();
        stats.note_shipped();
        stats.note_failure();
        stats.set_backlog(
            2,
            1,
            ShardBacklog {
                count: 3,
                oldest_queued_mono_ms: Some(1_000),
            },
        );
        stats.set_backlog(
            0,
            1,
            ShardBacklog {
                count: 1,
                oldest_queued_mono_ms: Some(4_000),
            },
        );
        assert_eq!(
            stats.snapshot(5_500),
            ShipSnapshot {
                shipped_total: 2,
                failures_total: 1,
                backlog: 4,
                backlog_oldest_age_ms: 4_500,
            }
        );
        // Shard 2 reopened (incarnation 2) with nothing to ship; then its retired predecessor
        // reports, too late to count.
        stats.set_backlog(2, 2, ShardBacklog::default());
        stats.set_backlog(
            2,
            1,
            ShardBacklog {
                count: 7,
                oldest_queued_mono_ms: Some(10),
            },
        );
        assert_eq!(stats.snapshot(5_500).backlog, 1);
        assert_eq!(stats.snapshot(5_500).backlog_oldest_age_ms, 1_500);

        let mut text = String::new();
        stats.render_prometheus(&mut text, 5_500);
        for line in [
            "# TYPE hookrelay_dlq_shipped_total counter",
            "hookrelay_dlq_shipped_total 2",
            "hookrelay_dlq_ship_failures_total 1",
            "# TYPE hookrelay_dlq_backlog gauge",
            "hookrelay_dlq_backlog 1",
            "hookrelay_dlq_backlog_oldest_age_seconds 1.500",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        stats.set_backlog(0, 1, ShardBacklog::default());
        assert_eq!(stats.snapshot(9_000).backlog_oldest_age_ms, 0);
    }
}
