//! The sections of the configuration file, one struct per `[section]`. Every field's doc comment
//! is its entry in `CONFIG.md`; keep them to what the key promises.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::defaults as d;
use super::schema::{section, word_enum};

section! {
    /// `[server]`: the process, its HTTP listener and its data.
    pub struct Server in "server" {
        /// Address the HTTP API (ingest, management API, console, health, metrics) listens on.
        listen: SocketAddr = d::LISTEN,
        /// Directory holding the logs, metadata and the local DLQ; created if missing.
        data_dir: PathBuf = d::data_dir(),
        /// Number of shards (threads, each with its own log and listener socket); 0 = one per
        /// CPU core. Recorded in the data dir on first start; later starts keep that count
        /// (endpoints are hashed to shards).
        shards: usize = d::SHARDS,
        /// Pin each shard's thread to its own CPU core (thread-per-core). Turn it off where the
        /// cores are shared with other busy processes (a VM, a container, a load generator on the
        /// same machine): a pinned shard then waits for its own core while another is idle.
        /// The threads a shard starts (the log's fsync and zero-fill workers) inherit its core.
        /// BENCHMARKS.md measures both settings.
        pin_shards: bool = true,
        /// Let a busy shard hand keep-alive connections to a less busy one, between two
        /// requests. An endpoint's work stays on its own shard; this spreads the HTTP work
        /// (reading, verifying, answering) when one endpoint takes most of the traffic, at the
        /// cost of handing more requests between shards. Off by default: on the 2-core bench
        /// machine, where the load generator shares the cores, it evened the shards out but did
        /// not raise throughput (BENCHMARKS.md).
        balance_connections: bool = false,
        /// With `balance_connections`: a shard hands connections over only while its thread
        /// uses at least this share of its core.
        balance_busy_min_percent: u64 = d::BALANCE_BUSY_MIN_PERCENT,
        /// With `balance_connections`: a shard hands connections over only to a shard that
        /// uses at least this many points of a core less than itself.
        balance_margin_percent: u64 = d::BALANCE_MARGIN_PERCENT,
        /// Base of the absolute URLs the API hands out (an endpoint's `ingest_url`), e.g.
        /// `https://hooks.example.com`. Unset = `http://` + `server.listen`.
        public_url: Option<String> = None,
        /// On SIGTERM, how long in-flight work may take to finish before it is persisted and the
        /// process exits; bounded so that the process ends within 30 s.
        shutdown_timeout_ms: u64 = d::SHUTDOWN_TIMEOUT_MS,
    }
}

section! {
    /// `[ingest]`: limits of `POST /ingest/{endpoint_id}`.
    pub struct Ingest in "ingest" {
        /// Largest accepted request body; bigger bodies get 413 `payload_too_large`.
        max_body_bytes: u64 = d::MAX_BODY_BYTES,
        /// How far a signature's timestamp may be from now (Stripe, Standard Webhooks, Slack,
        /// generic) before 401 `signature_expired`.
        signature_tolerance_s: u64 = d::SIGNATURE_TOLERANCE_S,
        /// Most request headers accepted on an ingest request.
        max_headers: u64 = d::MAX_HEADERS,
        /// Largest total size of an ingest request's headers.
        max_header_bytes: u64 = d::MAX_HEADER_BYTES,
        /// How long a sender may take to send a whole request.
        request_timeout_ms: u64 = d::REQUEST_TIMEOUT_MS,
    }
}

section! {
    /// `[delivery]`: forwarding to receivers.
    pub struct Delivery in "delivery" {
        /// Allow destinations on loopback, private, link-local, unspecified and metadata
        /// addresses (refused by default, at creation and again at connect time).
        allow_private_destinations: bool = false,
        /// TCP (and TLS) connect timeout of an attempt.
        connect_timeout_ms: u64 = d::CONNECT_TIMEOUT_MS,
        /// Idle keep-alive connections kept per destination host and shard.
        pool_idle_per_host: u64 = d::POOL_IDLE_PER_HOST,
        /// A PEM file of extra CA certificates trusted for HTTPS receivers (receivers behind a
        /// private CA), besides the public webpki roots. Read at start-up.
        ca_file: Option<String> = None,
        /// Most attempts in flight at once on one shard, across all endpoints.
        max_in_flight_per_shard: u64 = d::MAX_IN_FLIGHT_PER_SHARD,
        /// Most due deliveries of one endpoint held in memory; the rest wait in the log.
        queue_in_memory_per_endpoint: u64 = d::QUEUE_IN_MEMORY_PER_ENDPOINT,
        /// Consecutive failed attempts to one endpoint that open its circuit (attempts then wait
        /// for a probe to succeed).
        circuit_failures_to_open: u64 = d::CIRCUIT_FAILURES_TO_OPEN,
        /// While a circuit is open, how often one probe attempt is let through.
        circuit_probe_interval_ms: u64 = d::CIRCUIT_PROBE_INTERVAL_MS,
    }
}

word_enum! {
    /// How the log writes to disk.
    pub enum LogIo {
        /// io_uring when the kernel allows it, else portable.
        Auto = "auto",
        /// io_uring; start-up fails without it.
        Uring = "uring",
        /// pwrite + fdatasync on a blocking pool.
        Portable = "portable",
    }
}

section! {
    /// `[log]`: each shard's write-ahead log.
    pub struct Log in "log" {
        /// Log I/O backend: io_uring when available (`auto`), always (`uring`) or never
        /// (`portable`).
        io: LogIo = LogIo::Auto,
        /// Roll a segment once it would grow past this size.
        segment_bytes_max: u64 = d::SEGMENT_BYTES_MAX,
        /// Roll a segment once it is this old.
        segment_age_max_ms: u64 = d::SEGMENT_AGE_MAX_MS,
        /// Largest group-commit batch (one write and one fsync).
        batch_bytes_max: u64 = d::BATCH_BYTES_MAX,
        /// The least time between the starts of two group commits (write + fdatasync) while
        /// records keep coming, unless a full batch is queued: caps the fsync rate at one per
        /// this many µs; a record after a quiet spell is written at once. 0 = write as soon as
        /// the previous fsync ends. For hosts that charge I/O to the
        /// guest's CPU quota (BENCHMARKS.md §2, "The 5k tail is the host's CPU quota").
        batch_linger_us: u64 = d::BATCH_LINGER_US,
        /// Write the active segment with `O_DIRECT`, around the page cache, where the
        /// filesystem takes it (not on tmpfs): less CPU per record at moderate rates; tail
        /// and saturated rate even with buffered writes (BENCHMARKS.md §2, "Direct I/O").
        direct_io: bool = false,
    }
}

section! {
    /// `[retention]`: how long history is kept.
    pub struct Retention in "retention" {
        /// Days a delivery (its record, attempts and payload) is kept.
        deliveries_days: u64 = d::DELIVERIES_DAYS,
        /// Days an idempotency key is remembered per endpoint.
        idempotency_days: u64 = d::IDEMPOTENCY_DAYS,
    }
}

word_enum! {
    /// Where dead-lettered deliveries go.
    pub enum DlqBackend {
        /// `<data_dir>/dlq/`.
        Local = "local",
        /// An S3 (or S3-compatible) bucket.
        S3 = "s3",
    }
}

section! {
    /// `[dlq]`: the dead-letter queue.
    pub struct Dlq in "dlq" {
        /// Where DLQ objects are written: `local` (under `<data_dir>/dlq/`) or `s3`.
        backend: DlqBackend = DlqBackend::Local,
        /// S3 bucket; required when `backend = "s3"`.
        bucket: Option<String> = None,
        /// Prefix put before every DLQ object key (e.g. `hookrelay/`).
        prefix: String = String::new(),
        /// S3 region; unset = from the standard AWS chain (`AWS_REGION`, profile, EC2
        /// metadata), else `us-east-1` when `endpoint_url` is set.
        region: Option<String> = None,
        /// S3 endpoint URL for S3-compatible stores (MinIO, R2, ...); unset = AWS.
        endpoint_url: Option<String> = None,
        /// KMS key id (or ARN) for SSE-KMS: every PUT then asks for `aws:kms` encryption with
        /// this key. Unset = the bucket's default encryption.
        sse_kms_key_id: Option<String> = None,
        /// Days a DLQ object is kept. With `s3`, a bucket lifecycle rule expires the objects
        /// (README, "DLQ on S3"); start-up warns when the bucket has none with this many days.
        retention_days: u64 = d::DLQ_RETENTION_DAYS,
        /// Use path-style S3 URLs (`endpoint/bucket/key`), which most S3-compatible stores need.
        force_path_style: bool = false,
        /// Most DLQ objects being stored at once, node-wide (all shards); a shipment keeps its
        /// slot while it retries, so an outage holds at most this many requests.
        max_concurrent_puts: u64 = d::DLQ_MAX_CONCURRENT_PUTS,
        /// Longest wait between two tries to store a DLQ object (exponential backoff from
        /// 100 ms with full jitter). An outage delays shipping; nothing is dropped.
        retry_max_delay_ms: u64 = d::DLQ_RETRY_MAX_DELAY_MS,
    }
}

section! {
    /// `[replay]`: replays of dead-lettered or past deliveries.
    pub struct Replay in "replay" {
        /// Most replayed deliveries enqueued per second per tenant.
        max_per_s: u64 = d::REPLAY_MAX_PER_S,
    }
}

word_enum! {
    /// A node's replication role.
    pub enum Role {
        /// Takes ingest, delivers, and streams its logs to `replication.peer` when set.
        Primary = "primary",
        /// Stores the primary's logs; neither ingests nor delivers until promoted.
        Replica = "replica",
    }
}

word_enum! {
    /// When ingest answers 2xx under replication.
    pub enum Ack {
        /// After the local fsync.
        Local = "local",
        /// After the local and the peer's fsync.
        Peer = "peer",
    }
}

section! {
    /// `[replication]`: primary/replica log shipping.
    pub struct Replication in "replication" {
        /// This node's role: `primary` (ingests and delivers) or `replica` (stores the primary's
        /// logs, answers ingest with 503 until promoted).
        role: Role = Role::Primary,
        /// Primary: the replica's replication address, `host:port`. Unset = no replication.
        peer: Option<String> = None,
        /// Replica: the address to accept the primary's stream on; required for a replica.
        listen: Option<SocketAddr> = None,
        /// When ingest answers: after the local fsync (`local`) or after the peer's fsync too
        /// (`peer`, which needs `peer`).
        ack: Ack = Ack::Local,
        /// With `ack = "peer"`: after the peer has been unreachable this long, answer after the
        /// local fsync alone (and say so in `/readyz` and the metrics). Unset = never degrade:
        /// ingest answers 503 while the peer is away.
        degrade_after_ms: Option<u64> = None,
        /// How long the primary waits for the peer's acknowledgement or connection.
        peer_timeout_ms: u64 = d::PEER_TIMEOUT_MS,
        /// Shared secret both nodes present on the replication connection (at least 16
        /// characters). Unset = no authentication (trusted networks only).
        secret: Option<String> = None,
        /// PEM certificate this node presents on replication connections (mutual TLS). Set
        /// together with `tls_key_file` and `tls_ca_file`; unset = plain TCP.
        tls_cert_file: Option<String> = None,
        /// PEM private key of `tls_cert_file`.
        tls_key_file: Option<String> = None,
        /// PEM CA certificate(s) the peer's certificate must chain to.
        tls_ca_file: Option<String> = None,
        /// Name checked in the replica's certificate. Unset = the host of `peer`.
        tls_server_name: Option<String> = None,
    }
}

section! {
    /// `[alerts]`: where alerts are sent (Slack URLs come from each tenant's alert settings).
    pub struct Alerts in "alerts" {
        /// SMTP server for e-mail alerts, `smtp://[user:password@]host[:port]` or `smtps://...`.
        /// Unset = e-mail alerts are not sent.
        smtp_url: Option<String> = None,
        /// Sender address of e-mail alerts. Unset = `hookrelay@localhost`.
        smtp_from: Option<String> = None,
        /// Base URL of the PagerDuty Events API v2.
        pagerduty_api_base: String = d::PAGERDUTY_API_BASE.to_string(),
        /// Base URL of the console used for links in alerts (e.g. replay links). Unset =
        /// `server.public_url`.
        console_base_url: Option<String> = None,
    }
}

section! {
    /// `[billing]`: usage metering to Stripe.
    pub struct Billing in "billing" {
        /// Stripe secret API key. Unset = usage is not reported to Stripe and plans are not
        /// enforced.
        stripe_api_key: Option<String> = None,
        /// Base URL of the Stripe API.
        stripe_api_base: String = d::STRIPE_API_BASE.to_string(),
        /// Event name of the Stripe Billing Meter that receives daily successful deliveries.
        meter_event_name: String = d::METER_EVENT_NAME.to_string(),
        /// Signing secret (`whsec_...`) of Stripe's webhooks to `POST /billing/stripe-webhook`.
        /// Unset = that route refuses every request.
        stripe_webhook_secret: Option<String> = None,
        /// Days a tenant past its free quota without a paying subscription may still ingest
        /// before 402 `payment_required`.
        grace_days: u64 = d::GRACE_DAYS,
    }
}

word_enum! {
    /// Format of the process's own logs.
    pub enum LogFormat {
        /// One JSON object per line.
        Json = "json",
        /// Human-readable lines.
        Text = "text",
    }
}

section! {
    /// `[observability]`: the process's own logs and traces.
    pub struct Observability in "observability" {
        /// Format of log lines on stderr: `json` or `text`.
        log_format: LogFormat = LogFormat::Json,
        /// Log filter in `tracing` directive syntax, e.g. `info` or `info,hookrelay_engine=debug`.
        log_level: String = d::LOG_LEVEL.to_string(),
        /// OTLP endpoint traces are exported to. Unset = no trace export.
        otlp_endpoint: Option<String> = None,
    }
}
