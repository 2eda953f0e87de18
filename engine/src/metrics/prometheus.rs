//! The Prometheus text exposition (format 0.0.4) of the shards' exports.
//!
//! Counters count since the process started (Prometheus handles the reset at a restart); the
//! windows of `GET /v1/metrics` are what survives restarts. Series with an `endpoint_id` label
//! exist for the endpoints each shard tracks (see [`super::ENDPOINTS_TRACKED_MAX`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::histogram::{DELIVERY_BOUNDS_US, INGEST_BOUNDS_US, PromHistogram};
use super::ingest::IngestStats;
use super::{ShardExport, Totals};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the merged exports; `shards_expected` is how many shards there are (the ones that
/// did not answer are reported in `hookrelay_scrape_shards_missing`).
pub fn render(exports: &[ShardExport], shards_expected: usize) -> String {
    let mut endpoints: BTreeMap<&str, Totals> = BTreeMap::new();
    let mut delivery = PromHistogram::new(DELIVERY_BOUNDS_US);
    let mut ingest = IngestStats::default();
    let (mut inflight, mut oldest_ms, mut tracked, mut evicted) = (0u64, 0u64, 0u64, 0u64);
    for x in exports {
        for (id, t) in &x.endpoints {
            endpoints.entry(id.as_str()).or_default().add(t);
        }
        delivery.merge(&x.delivery_latency);
        ingest.merge(&x.ingest);
        inflight += x.inflight;
        oldest_ms = oldest_ms.max(x.queue_oldest_age_ms.unwrap_or(0));
        tracked += x.endpoints_tracked;
        evicted += x.endpoints_evicted_total;
    }
    debug_assert_eq!(ingest.latency.bounds_us, INGEST_BOUNDS_US);

    let mut out = String::with_capacity(1024 + endpoints.len() * 512);
    head(
        &mut out,
        "hookrelay_deliveries_total",
        "counter",
        "Deliveries that reached a final status since the process started, by endpoint and status.",
    );
    for (id, t) in &endpoints {
        for (status, n) in [
            ("success", t.success),
            ("failed", t.failed),
            ("exhausted", t.exhausted),
        ] {
            let _ = writeln!(
                out,
                "hookrelay_deliveries_total{{endpoint_id=\"{}\",status=\"{status}\"}} {n}",
                escape(id)
            );
        }
    }
    head(
        &mut out,
        "hookrelay_deliveries_created_total",
        "counter",
        "Deliveries ingested (made durable) since the process started, by endpoint.",
    );
    for (id, t) in &endpoints {
        let _ = writeln!(
            out,
            "hookrelay_deliveries_created_total{{endpoint_id=\"{}\"}} {}",
            escape(id),
            t.created
        );
    }
    head(
        &mut out,
        "hookrelay_attempts_total",
        "counter",
        "Delivery attempts since the process started, by endpoint and outcome (success = 2xx, failure = anything else).",
    );
    for (id, t) in &endpoints {
        for (outcome, n) in [
            ("success", t.attempts_success),
            ("failure", t.attempts_failure),
        ] {
            let _ = writeln!(
                out,
                "hookrelay_attempts_total{{endpoint_id=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(id)
            );
        }
    }
    histogram(
        &mut out,
        "hookrelay_delivery_latency_seconds",
        "Receiver response time of successful attempts.",
        &delivery,
    );
    head(
        &mut out,
        "hookrelay_ingest_requests_total",
        "counter",
        "Ingest requests answered since the process started, by HTTP status code.",
    );
    for (code, n) in &ingest.by_code {
        let _ = writeln!(
            out,
            "hookrelay_ingest_requests_total{{code=\"{code}\"}} {n}"
        );
    }
    histogram(
        &mut out,
        "hookrelay_ingest_latency_seconds",
        "Time from an ingest request's arrival to its answer (includes the fsync).",
        &ingest.latency,
    );
    gauge(
        &mut out,
        "hookrelay_inflight",
        "Delivery attempts running now.",
        &inflight.to_string(),
    );
    gauge(
        &mut out,
        "hookrelay_queue_oldest_age_seconds",
        "Age of the oldest delivery that is due and waiting for a slot (0 when none); deliveries waiting out a retry backoff are not counted.",
        &seconds(oldest_ms * 1000),
    );
    gauge(
        &mut out,
        "hookrelay_metrics_endpoints_tracked",
        "Endpoints with per-endpoint metrics in memory.",
        &tracked.to_string(),
    );
    head(
        &mut out,
        "hookrelay_metrics_endpoints_evicted_total",
        "counter",
        "Endpoints whose metrics were forgotten because a shard tracked too many.",
    );
    let _ = writeln!(out, "hookrelay_metrics_endpoints_evicted_total {evicted}");
    render_logs(&mut out, exports);
    gauge(
        &mut out,
        "hookrelay_scrape_shards_missing",
        "Shards that did not answer this scrape in time (their series are missing).",
        &shards_expected.saturating_sub(exports.len()).to_string(),
    );
    out
}

/// The logs' counters, one series per shard (each shard has its own log), and one histogram of
/// commit times over all of them. `commits` against
/// `appends` gives the records per group commit; the rate of `fsyncs` is what
/// `log.batch_linger_us` caps.
fn render_logs(out: &mut String, exports: &[ShardExport]) {
    let mut logs: Vec<(usize, &hookrelay_log::Stats)> = exports
        .iter()
        .filter_map(|x| x.log.as_ref().map(|l| (x.shard, l)))
        .collect();
    logs.sort_by_key(|(shard, _)| *shard);
    type Field = fn(&hookrelay_log::Stats) -> u64;
    let counters: [(&str, &str, Field); 5] = [
        (
            "hookrelay_log_appends_total",
            "Records appended to each shard's log since it was opened.",
            |l| l.appends,
        ),
        (
            "hookrelay_log_commits_total",
            "Group commits (one write and one fdatasync, answering every record in it) of each shard's log since it was opened.",
            |l| l.batches,
        ),
        (
            "hookrelay_log_fsyncs_total",
            "fsync and fdatasync calls of each shard's log since it was opened: its commits, plus those that seal and create segments.",
            |l| l.fsyncs,
        ),
        (
            "hookrelay_log_written_bytes_total",
            "Record bytes each shard's log wrote in its commits since it was opened.",
            |l| l.bytes_written,
        ),
        (
            "hookrelay_log_segments_rolled_total",
            "Segments each shard's log sealed since it was opened.",
            |l| l.rolls,
        ),
    ];
    for (name, help, field) in counters {
        head(out, name, "counter", help);
        for (shard, l) in &logs {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", field(l));
        }
    }
    let mut commits = PromHistogram::new(&hookrelay_log::COMMIT_BOUNDS_US);
    for (_, l) in &logs {
        commits.add_counts(&l.commit_times.counts, l.commit_times.sum_us);
    }
    histogram(
        out,
        "hookrelay_log_commit_seconds",
        "Time of each group commit, from submitting its write to the end of its fdatasync: what the disk makes every ACK wait.",
        &commits,
    );
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: &str) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Writes `h` as a Prometheus histogram (`_bucket` per `le`, `_sum` in seconds, `_count`).
pub fn histogram(out: &mut String, name: &str, help: &str, h: &PromHistogram) {
    head(out, name, "histogram", help);
    for (le, n) in h.cumulative() {
        let le = le.map_or_else(|| "+Inf".to_string(), |s| s.to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum {}", seconds(h.sum_us));
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn seconds(us: u64) -> String {
    (us as f64 / 1e6).to_string()
}

/// Label value escaping of the text format: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_contract_series() {
        let mut a = ShardExport::ingest_only(0, IngestStats::default());
        a.endpoints.push((
            "ep_1".into(),
            Totals {
                success: 2,
                failed: 1,
                attempts_success: 2,
                attempts_failure: 3,
                ..Totals::default()
            },
        ));
        a.delivery_latency.record_us(7_000);
        a.ingest.record(202, std::time::Duration::from_millis(2));
        a.inflight = 3;
        a.queue_oldest_age_ms = Some(1500);
        let mut log = hookrelay_log::Stats {
            appends: 10,
            batches: 4,
            fsyncs: 5,
            bytes_written: 1234,
            rolls: 1,
            ..Default::default()
        };
        log.commit_times.record(300);
        log.commit_times.record(700);
        a.log = Some(log);
        let b = ShardExport::ingest_only(1, IngestStats::default());
        let text = render(&[a, b], 3);
        for line in [
            "hookrelay_deliveries_total{endpoint_id=\"ep_1\",status=\"success\"} 2",
            "hookrelay_deliveries_total{endpoint_id=\"ep_1\",status=\"exhausted\"} 0",
            "hookrelay_attempts_total{endpoint_id=\"ep_1\",outcome=\"failure\"} 3",
            "hookrelay_delivery_latency_seconds_bucket{le=\"0.01\"} 1",
            "hookrelay_delivery_latency_seconds_bucket{le=\"+Inf\"} 1",
            "hookrelay_delivery_latency_seconds_count 1",
            "hookrelay_delivery_latency_seconds_sum 0.007",
            "hookrelay_ingest_requests_total{code=\"202\"} 1",
            "hookrelay_ingest_latency_seconds_count 1",
            "hookrelay_inflight 3",
            "hookrelay_queue_oldest_age_seconds 1.5",
            "hookrelay_scrape_shards_missing 1",
            "hookrelay_log_appends_total{shard=\"0\"} 10",
            "hookrelay_log_commits_total{shard=\"0\"} 4",
            "hookrelay_log_fsyncs_total{shard=\"0\"} 5",
            "hookrelay_log_written_bytes_total{shard=\"0\"} 1234",
            "hookrelay_log_segments_rolled_total{shard=\"0\"} 1",
            "hookrelay_log_commit_seconds_bucket{le=\"0.00025\"} 0",
            "hookrelay_log_commit_seconds_bucket{le=\"0.0005\"} 1",
            "hookrelay_log_commit_seconds_bucket{le=\"0.001\"} 2",
            "hookrelay_log_commit_seconds_bucket{le=\"+Inf\"} 2",
            "hookrelay_log_commit_seconds_count 2",
            "hookrelay_log_commit_seconds_sum 0.001",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a declared metric family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{l}"
            );
        }
        assert!(
            !text.contains("hookrelay_log_appends_total{shard=\"1\"}"),
            "a shard without a log yet has no log series"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
