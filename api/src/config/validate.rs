//! The rules a configuration must meet beyond its types: ranges (every limit has a bound) and
//! keys that need each other. Each rule names the key it is about.

use std::ops::RangeInclusive;

use super::{Ack, Config, DlqBackend, Role};

/// Most shards a node runs (`server.shards`); the engine's limit.
pub const MAX_SHARDS: usize = hookrelay_engine::ids::SHARDS_MAX;
/// `server.shutdown_timeout_ms` ceiling: SIGTERM must end the process within 30 s, and the
/// final fsync and exit need the rest.
const SHUTDOWN_TIMEOUT_MS: RangeInclusive<u64> = 0..=28_000;
const PERCENT: RangeInclusive<u64> = 0..=100;
const MAX_BODY_BYTES: RangeInclusive<u64> = 1024..=64 << 20;
const SIGNATURE_TOLERANCE_S: RangeInclusive<u64> = 1..=86_400;
const MAX_HEADERS: RangeInclusive<u64> = 8..=1_000;
const MAX_HEADER_BYTES: RangeInclusive<u64> = 1024..=1 << 20;
const REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
const CONNECT_TIMEOUT_MS: RangeInclusive<u64> = 10..=120_000;
const POOL_IDLE_PER_HOST: RangeInclusive<u64> = 0..=1_024;
const MAX_IN_FLIGHT_PER_SHARD: RangeInclusive<u64> = 1..=1_000_000;
const QUEUE_IN_MEMORY_PER_ENDPOINT: RangeInclusive<u64> = 1..=1_000_000;
const CIRCUIT_FAILURES_TO_OPEN: RangeInclusive<u64> = 1..=1_000_000;
const CIRCUIT_PROBE_INTERVAL_MS: RangeInclusive<u64> = 100..=86_400_000;
const SEGMENT_BYTES_MAX: RangeInclusive<u64> = 1 << 20..=16 << 30;
const SEGMENT_AGE_MAX_MS: RangeInclusive<u64> = 1_000..=30 * 86_400_000;
const BATCH_BYTES_MAX: RangeInclusive<u64> = 4 << 10..=64 << 20;
const BATCH_LINGER_US: RangeInclusive<u64> = 0..=100_000;
const RETENTION_DAYS: RangeInclusive<u64> = 1..=3_650;
const DLQ_MAX_CONCURRENT_PUTS: RangeInclusive<u64> =
    1..=hookrelay_engine::dlq::store::MAX_CONCURRENT_PUTS_LIMIT as u64;
const DLQ_RETRY_MAX_DELAY_MS: RangeInclusive<u64> = 100..=3_600_000;
const REPLAY_MAX_PER_S: RangeInclusive<u64> = 1..=100_000;
const DEGRADE_AFTER_MS: RangeInclusive<u64> = 1..=3_600_000;
const PEER_TIMEOUT_MS: RangeInclusive<u64> = 10..=600_000;
const GRACE_DAYS: RangeInclusive<u64> = 0..=365;
/// Shortest accepted `replication.secret`.
const REPLICATION_SECRET_CHARS_MIN: usize = 16;

/// The allowed values of an integer key, when it has a range (also listed in `CONFIG.md`).
pub(super) fn range_of(key: &str) -> Option<RangeInclusive<u64>> {
    Some(match key {
        "server.shards" => 0..=MAX_SHARDS as u64,
        "server.shutdown_timeout_ms" => SHUTDOWN_TIMEOUT_MS,
        "server.balance_busy_min_percent" | "server.balance_margin_percent" => PERCENT,
        "ingest.max_body_bytes" => MAX_BODY_BYTES,
        "ingest.signature_tolerance_s" => SIGNATURE_TOLERANCE_S,
        "ingest.max_headers" => MAX_HEADERS,
        "ingest.max_header_bytes" => MAX_HEADER_BYTES,
        "ingest.request_timeout_ms" => REQUEST_TIMEOUT_MS,
        "delivery.connect_timeout_ms" => CONNECT_TIMEOUT_MS,
        "delivery.pool_idle_per_host" => POOL_IDLE_PER_HOST,
        "delivery.max_in_flight_per_shard" => MAX_IN_FLIGHT_PER_SHARD,
        "delivery.queue_in_memory_per_endpoint" => QUEUE_IN_MEMORY_PER_ENDPOINT,
        "delivery.circuit_failures_to_open" => CIRCUIT_FAILURES_TO_OPEN,
        "delivery.circuit_probe_interval_ms" => CIRCUIT_PROBE_INTERVAL_MS,
        "log.segment_bytes_max" => SEGMENT_BYTES_MAX,
        "log.segment_age_max_ms" => SEGMENT_AGE_MAX_MS,
        "log.batch_bytes_max" => BATCH_BYTES_MAX,
        "log.batch_linger_us" => BATCH_LINGER_US,
        "retention.deliveries_days" | "retention.idempotency_days" | "dlq.retention_days" => {
            RETENTION_DAYS
        }
        "dlq.max_concurrent_puts" => DLQ_MAX_CONCURRENT_PUTS,
        "dlq.retry_max_delay_ms" => DLQ_RETRY_MAX_DELAY_MS,
        "replay.max_per_s" => REPLAY_MAX_PER_S,
        "replication.degrade_after_ms" => DEGRADE_AFTER_MS,
        "replication.peer_timeout_ms" => PEER_TIMEOUT_MS,
        "billing.grace_days" => GRACE_DAYS,
        _ => return None,
    })
}

/// Every broken rule as (`section.key`, reason).
pub(super) fn check(c: &Config) -> Vec<(String, String)> {
    let mut v = Rules(Vec::new());

    let s = &c.server;
    v.range("server.shards", u64::try_from(s.shards).unwrap_or(u64::MAX));
    v.range(
        "server.balance_busy_min_percent",
        s.balance_busy_min_percent,
    );
    v.range("server.balance_margin_percent", s.balance_margin_percent);
    if s.data_dir.as_os_str().is_empty() {
        v.fail("server.data_dir", "must not be empty");
    } else if s.data_dir.to_str().is_none() {
        v.fail("server.data_dir", "must be valid UTF-8");
    }
    if let Some(url) = &s.public_url {
        v.url("server.public_url", url);
    }
    v.range("server.shutdown_timeout_ms", s.shutdown_timeout_ms);

    let i = &c.ingest;
    v.range("ingest.max_body_bytes", i.max_body_bytes);
    v.range("ingest.signature_tolerance_s", i.signature_tolerance_s);
    v.range("ingest.max_headers", i.max_headers);
    v.range("ingest.max_header_bytes", i.max_header_bytes);
    v.range("ingest.request_timeout_ms", i.request_timeout_ms);

    let d = &c.delivery;
    v.range("delivery.connect_timeout_ms", d.connect_timeout_ms);
    v.range("delivery.pool_idle_per_host", d.pool_idle_per_host);
    v.range(
        "delivery.max_in_flight_per_shard",
        d.max_in_flight_per_shard,
    );
    v.range(
        "delivery.queue_in_memory_per_endpoint",
        d.queue_in_memory_per_endpoint,
    );
    v.range(
        "delivery.circuit_failures_to_open",
        d.circuit_failures_to_open,
    );
    v.range(
        "delivery.circuit_probe_interval_ms",
        d.circuit_probe_interval_ms,
    );

    let l = &c.log;
    v.range("log.segment_bytes_max", l.segment_bytes_max);
    v.range("log.segment_age_max_ms", l.segment_age_max_ms);
    v.range("log.batch_bytes_max", l.batch_bytes_max);
    v.range("log.batch_linger_us", l.batch_linger_us);

    v.range("retention.deliveries_days", c.retention.deliveries_days);
    v.range("retention.idempotency_days", c.retention.idempotency_days);
    if c.retention.deliveries_days < c.retention.idempotency_days {
        // A duplicate is confirmed against the first delivery's log record: once retention has
        // deleted it, the key would be accepted again inside its idempotency window.
        v.fail(
            "retention.deliveries_days",
            "must be at least retention.idempotency_days (duplicates are checked against kept deliveries)",
        );
    }

    let q = &c.dlq;
    if q.backend == DlqBackend::S3 && q.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
        v.fail("dlq.bucket", "is required when dlq.backend = \"s3\"");
    }
    if q.prefix.starts_with('/') {
        v.fail(
            "dlq.prefix",
            "must not start with '/' (object keys are relative to the bucket)",
        );
    }
    if let Some(url) = &q.endpoint_url {
        v.url("dlq.endpoint_url", url);
    }
    v.range("dlq.retention_days", q.retention_days);
    v.range("dlq.max_concurrent_puts", q.max_concurrent_puts);
    v.range("dlq.retry_max_delay_ms", q.retry_max_delay_ms);

    v.range("replay.max_per_s", c.replay.max_per_s);

    let r = &c.replication;
    if let Some(peer) = &r.peer
        && !is_host_port(peer)
    {
        v.fail(
            "replication.peer",
            format!("must be host:port, got {peer:?}"),
        );
    }
    match r.role {
        Role::Primary if r.ack == Ack::Peer && r.peer.is_none() => {
            v.fail(
                "replication.peer",
                "is required when replication.ack = \"peer\"",
            );
        }
        Role::Replica if r.listen.is_none() => {
            v.fail(
                "replication.listen",
                "is required when replication.role = \"replica\"",
            );
        }
        _ => {}
    }
    if let Some(listen) = r.listen
        && listen == s.listen
    {
        v.fail(
            "replication.listen",
            format!("must differ from server.listen ({listen})"),
        );
    }
    if let Some(ms) = r.degrade_after_ms {
        v.range("replication.degrade_after_ms", ms);
    }
    v.range("replication.peer_timeout_ms", r.peer_timeout_ms);
    let tls_set = [&r.tls_cert_file, &r.tls_key_file, &r.tls_ca_file]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if tls_set != 0 && tls_set != 3 {
        v.fail(
            "replication.tls_cert_file",
            "tls_cert_file, tls_key_file and tls_ca_file are set together (mutual TLS) or not at all",
        );
    }
    if let Some(secret) = &r.secret
        && secret.chars().count() < REPLICATION_SECRET_CHARS_MIN
    {
        v.fail(
            "replication.secret",
            format!("must be at least {REPLICATION_SECRET_CHARS_MIN} characters"),
        );
    }

    let a = &c.alerts;
    if let Some(url) = &a.smtp_url
        && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
    {
        v.fail(
            "alerts.smtp_url",
            format!("must start with smtp:// or smtps://, got {url:?}"),
        );
    }
    if let Some(from) = &a.smtp_from
        && !from.contains('@')
    {
        v.fail(
            "alerts.smtp_from",
            format!("must be an e-mail address, got {from:?}"),
        );
    }
    v.url("alerts.pagerduty_api_base", &a.pagerduty_api_base);
    if let Some(url) = &a.console_base_url {
        v.url("alerts.console_base_url", url);
    }

    let b = &c.billing;
    if b.stripe_api_key
        .as_deref()
        .is_some_and(|k| k.trim().is_empty())
    {
        v.fail(
            "billing.stripe_api_key",
            "must not be blank (leave it unset to turn billing off)",
        );
    }
    v.url("billing.stripe_api_base", &b.stripe_api_base);
    if b.meter_event_name.trim().is_empty() {
        v.fail("billing.meter_event_name", "must not be empty");
    }
    v.range("billing.grace_days", b.grace_days);

    let o = &c.observability;
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&o.log_level) {
        v.fail(
            "observability.log_level",
            format!("is not a valid log filter: {e}"),
        );
    }
    if let Some(url) = &o.otlp_endpoint {
        v.url("observability.otlp_endpoint", url);
    }
    v.0
}

struct Rules(Vec<(String, String)>);

impl Rules {
    fn fail(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push((key.to_string(), reason.into()));
    }

    /// Checks `value` against [`range_of`] `key`.
    fn range(&mut self, key: &str, value: u64) {
        let Some(allowed) = range_of(key) else {
            unreachable!("{key} is checked against a range but has none in range_of");
        };
        if !allowed.contains(&value) {
            self.fail(
                key,
                format!(
                    "must be in {}..={}, got {value}",
                    allowed.start(),
                    allowed.end()
                ),
            );
        }
    }

    /// An absolute `http` or `https` URL with a host.
    fn url(&mut self, key: &str, url: &str) {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            self.fail(
                key,
                format!("must be an absolute http:// or https:// URL, got {url:?}"),
            );
        }
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535 (`[v6]:port` too).
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `check` complains about for the config `edit` makes from the defaults.
    fn failing_keys(edit: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut c = Config::default();
        edit(&mut c);
        check(&c).into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(check(&Config::default()), Vec::new());
    }

    #[test]
    fn ranges_are_enforced_at_both_ends() {
        assert_eq!(
            failing_keys(|c| c.server.shards = MAX_SHARDS),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.server.shards = MAX_SHARDS + 1),
            ["server.shards"]
        );
        assert_eq!(
            failing_keys(|c| c.ingest.max_body_bytes = 1024),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.ingest.max_body_bytes = 1023),
            ["ingest.max_body_bytes"]
        );
        assert_eq!(
            failing_keys(|c| c.ingest.max_body_bytes = 64 << 20),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.ingest.max_body_bytes = (64 << 20) + 1),
            ["ingest.max_body_bytes"]
        );
        assert_eq!(
            failing_keys(|c| c.server.shutdown_timeout_ms = 28_001),
            ["server.shutdown_timeout_ms"]
        );
        assert_eq!(
            failing_keys(|c| c.ingest.signature_tolerance_s = 0),
            ["ingest.signature_tolerance_s"]
        );
        assert_eq!(
            failing_keys(|c| c.delivery.max_in_flight_per_shard = 0),
            ["delivery.max_in_flight_per_shard"]
        );
        assert_eq!(
            failing_keys(|c| c.delivery.circuit_failures_to_open = 0),
            ["delivery.circuit_failures_to_open"]
        );
        assert_eq!(
            failing_keys(|c| c.log.segment_bytes_max = 1000),
            ["log.segment_bytes_max"]
        );
        assert_eq!(
            failing_keys(|c| c.log.batch_linger_us = 1_000_000),
            ["log.batch_linger_us"]
        );
        assert_eq!(
            failing_keys(|c| c.retention.idempotency_days = 0),
            ["retention.idempotency_days"]
        );
        assert_eq!(
            failing_keys(|c| c.replay.max_per_s = 0),
            ["replay.max_per_s"]
        );
    }

    #[test]
    fn deliveries_are_kept_at_least_as_long_as_idempotency_keys() {
        assert_eq!(
            failing_keys(|c| {
                c.retention.deliveries_days = 3;
                c.retention.idempotency_days = 7;
            }),
            ["retention.deliveries_days"]
        );
        assert!(failing_keys(|c| c.retention.deliveries_days = 7).is_empty());
    }

    #[test]
    fn s3_needs_a_bucket() {
        assert_eq!(
            failing_keys(|c| c.dlq.backend = DlqBackend::S3),
            ["dlq.bucket"]
        );
        assert_eq!(
            failing_keys(|c| {
                c.dlq.backend = DlqBackend::S3;
                c.dlq.bucket = Some(" ".into());
            }),
            ["dlq.bucket"]
        );
        assert_eq!(
            failing_keys(|c| {
                c.dlq.backend = DlqBackend::S3;
                c.dlq.bucket = Some("b".into());
            }),
            Vec::<String>::new()
        );
        assert_eq!(failing_keys(|c| c.dlq.prefix = "/x".into()), ["dlq.prefix"]);
        assert_eq!(
            failing_keys(|c| c.dlq.endpoint_url = Some("minio:9000".into())),
            ["dlq.endpoint_url"]
        );
    }

    #[test]
    fn replication_rules() {
        assert_eq!(
            failing_keys(|c| c.replication.ack = Ack::Peer),
            ["replication.peer"]
        );
        assert_eq!(
            failing_keys(|c| {
                c.replication.ack = Ack::Peer;
                c.replication.peer = Some("10.0.0.2:7070".into());
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.replication.peer = Some("10.0.0.2".into())),
            ["replication.peer"]
        );
        assert_eq!(
            failing_keys(|c| c.replication.peer = Some("host:0".into())),
            ["replication.peer"]
        );
        assert_eq!(
            failing_keys(|c| c.replication.peer = Some("[::1]:7070".into())),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.replication.role = Role::Replica),
            ["replication.listen"]
        );
        assert_eq!(
            failing_keys(|c| {
                c.replication.role = Role::Replica;
                c.replication.listen = Some("127.0.0.1:7070".parse().unwrap());
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| {
                c.replication.role = Role::Replica;
                c.replication.listen = Some(c.server.listen);
            }),
            ["replication.listen"]
        );
        assert_eq!(
            failing_keys(|c| c.replication.degrade_after_ms = Some(0)),
            ["replication.degrade_after_ms"]
        );
        assert_eq!(
            failing_keys(|c| c.replication.secret = Some("short".into())),
            ["replication.secret"]
        );
    }

    #[test]
    fn urls_and_addresses() {
        assert_eq!(
            failing_keys(|c| c.server.public_url = Some("hooks.example.com".into())),
            ["server.public_url"]
        );
        assert_eq!(
            failing_keys(|c| c.server.public_url = Some("https://".into())),
            ["server.public_url"]
        );
        assert_eq!(
            failing_keys(|c| c.server.public_url = Some("http://[::1]:80".into())),
            Vec::<String>::new()
        );
        assert_eq!(
            failing_keys(|c| c.alerts.pagerduty_api_base = "ftp://x".into()),
            ["alerts.pagerduty_api_base"]
        );
        assert_eq!(
            failing_keys(|c| c.alerts.smtp_url = Some("mail.example:25".into())),
            ["alerts.smtp_url"]
        );
        assert_eq!(
            failing_keys(|c| c.alerts.smtp_from = Some("nobody".into())),
            ["alerts.smtp_from"]
        );
        assert_eq!(
            failing_keys(|c| c.billing.stripe_api_base = String::new()),
            ["billing.stripe_api_base"]
        );
        assert_eq!(
            failing_keys(|c| c.billing.stripe_api_key = Some(String::new())),
            ["billing.stripe_api_key"]
        );
        assert_eq!(
            failing_keys(|c| c.billing.meter_event_name = " ".into()),
            ["billing.meter_event_name"]
        );
        assert_eq!(
            failing_keys(|c| c.observability.log_level = "info,=[".into()),
            ["observability.log_level"]
        );
        assert_eq!(
            failing_keys(|c| c.server.data_dir = "".into()),
            ["server.data_dir"]
        );
    }

    #[test]
    fn every_violation_is_listed() {
        let keys = failing_keys(|c| {
            c.server.shards = 1000;
            c.ingest.max_body_bytes = 1;
            c.dlq.backend = DlqBackend::S3;
        });
        assert_eq!(
            keys,
            ["server.shards", "ingest.max_body_bytes", "dlq.bucket"]
        );
        let mut c = Config::default();
        c.server.shards = 1000;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), Some("server.shards"));
        assert!(
            e.to_string()
                .contains("server.shards: must be in 0..=256, got 1000"),
            "{e}"
        );
    }
}
