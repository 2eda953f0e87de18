//! Configuration: embedded defaults, an optional TOML file, `HOOKRELAY_<SECTION>_<KEY>`
//! environment variables, then the common flags — in that order of precedence. Unknown keys
//! (in the file or in a `HOOKRELAY_<SECTION>_...` variable of a known section) are errors at
//! start-up, never ignored. Every key is documented in the README's configuration table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables that are not `<SECTION>_<KEY>` overrides.
const NON_KEY_ENV: &[&str] = &["HOOKRELAY_ROOT_KEY", "HOOKRELAY_BIN"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub shards: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub ingest: Ingest,
    pub delivery: Delivery,
    pub log: Log,
    pub retention: Retention,
    pub dlq: Dlq,
    pub replay: Replay,
    pub replication: Replication,
    pub alerts: Alerts,
    pub billing: Billing,
    pub observability: Observability,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address every shard listens on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Where logs, indexes, metadata and the local DLQ live.
    pub data_dir: PathBuf,
    /// Shard threads; 0 = one per core. Fixed once the data dir exists.
    pub shards: usize,
    /// Base of absolute URLs handed out (`ingest_url`); default `http://<listen>`.
    pub public_url: Option<String>,
    /// How long SIGTERM waits for running attempts before exiting.
    pub shutdown_timeout_ms: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            shards: 0,
            public_url: None,
            shutdown_timeout_ms: 25_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingest {
    /// Largest accepted body; larger → 413.
    pub max_body_bytes: u64,
    /// Accepted clock difference for timestamped signatures.
    pub signature_tolerance_s: u64,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            max_body_bytes: 1 << 20,
            signature_tolerance_s: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Allow destinations on loopback, private, link-local and metadata addresses.
    pub allow_private_destinations: bool,
    pub connect_timeout_ms: u64,
    /// Idle keep-alive connections kept per destination.
    pub pool_idle_per_host: u64,
    /// Attempts running at once per shard, all endpoints together.
    pub max_in_flight_per_shard: u64,
    /// Deliveries per endpoint held in memory; the rest wait in the log behind a cursor.
    pub queue_in_memory_per_endpoint: u64,
    /// Consecutive retryable failures that open an endpoint's circuit.
    pub circuit_failures_to_open: u64,
    /// While open, one probe attempt per this interval.
    pub circuit_probe_interval_ms: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            allow_private_destinations: false,
            connect_timeout_ms: 5_000,
            pool_idle_per_host: 32,
            max_in_flight_per_shard: 4096,
            queue_in_memory_per_endpoint: 4096,
            circuit_failures_to_open: 20,
            circuit_probe_interval_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogIo {
    Auto,
    Uring,
    Portable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `auto` (io_uring when available), `uring` or `portable` (pwrite + fdatasync).
    pub io: LogIo,
    pub segment_bytes_max: u64,
    pub segment_age_max_ms: u64,
    /// Most bytes one group commit writes.
    pub batch_bytes_max: u64,
    /// How long a group commit waits for more appends (0 = none).
    pub batch_linger_us: u64,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            io: LogIo::Auto,
            segment_bytes_max: 128 << 20,
            segment_age_max_ms: 3_600_000,
            batch_bytes_max: 1 << 20,
            batch_linger_us: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub deliveries_days: u64,
    pub idempotency_days: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            deliveries_days: 30,
            idempotency_days: 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqBackend {
    Local,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dlq {
    pub backend: DlqBackend,
    pub bucket: Option<String>,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub force_path_style: bool,
    pub retention_days: u64,
}

impl Default for Dlq {
    fn default() -> Self {
        Dlq {
            backend: DlqBackend::Local,
            bucket: None,
            prefix: String::new(),
            region: None,
            endpoint_url: None,
            sse_kms_key_id: None,
            force_path_style: false,
            retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replay {
    pub max_per_s: u64,
}

impl Default for Replay {
    fn default() -> Self {
        Replay { max_per_s: 100 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    Local,
    Peer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    pub role: Role,
    pub peer: Option<String>,
    pub listen: Option<String>,
    pub ack: Ack,
    pub degrade_after_ms: Option<u64>,
    pub secret: Option<String>,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            role: Role::Primary,
            peer: None,
            listen: None,
            ack: Ack::Local,
            degrade_after_ms: None,
            secret: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    pub smtp_url: Option<String>,
    pub smtp_from: Option<String>,
    pub pagerduty_api_base: String,
    pub console_base_url: Option<String>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            smtp_url: None,
            smtp_from: None,
            pagerduty_api_base: "https://events.pagerduty.com".into(),
            console_base_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Billing {
    pub stripe_api_key: Option<String>,
    pub stripe_api_base: String,
    pub meter_event_name: String,
    pub stripe_webhook_secret: Option<String>,
    pub grace_days: u64,
}

impl Default for Billing {
    fn default() -> Self {
        Billing {
            stripe_api_key: None,
            stripe_api_base: "https://api.stripe.com".into(),
            meter_event_name: "hookrelay_deliveries".into(),
            stripe_webhook_secret: None,
            grace_days: 7,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Observability {
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `hookrelay_engine=debug`.
    pub log_level: String,
}

impl Default for Observability {
    fn default() -> Self {
        Observability {
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults ← file ← environment ← flags, then validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Value::try_from(Config::default()).expect("defaults serialise");
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            // Check the file on its own first, so an unknown key names the file.
            file.clone()
                .try_into::<Config>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            merge(&mut table, file);
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (var, value) in env {
            apply_env(&mut table, &var, &value)?;
        }
        let mut config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if let Some(listen) = overrides.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.server.data_dir = dir.clone();
        }
        if let Some(shards) = overrides.shards {
            config.server.shards = shards;
        }
        config.validate()?;
        Ok(config)
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.server.shards > hookrelay_engine::ids::SHARDS_MAX {
            return bad(format!("server.shards must be at most {}", hookrelay_engine::ids::SHARDS_MAX));
        }
        if !(1024..=64 << 20).contains(&self.ingest.max_body_bytes) {
            return bad("ingest.max_body_bytes must be 1 KiB..=64 MiB".into());
        }
        if self.ingest.signature_tolerance_s == 0 || self.ingest.signature_tolerance_s > 86_400 {
            return bad("ingest.signature_tolerance_s must be 1..=86400".into());
        }
        if self.log.segment_bytes_max < 1 << 20 {
            return bad("log.segment_bytes_max must be at least 1 MiB".into());
        }
        if self.log.batch_bytes_max < 4096 || self.log.batch_bytes_max > 64 << 20 {
            return bad("log.batch_bytes_max must be 4 KiB..=64 MiB".into());
        }
        if self.log.batch_linger_us > 100_000 {
            return bad("log.batch_linger_us must be at most 100000".into());
        }
        if self.delivery.max_in_flight_per_shard == 0 || self.delivery.queue_in_memory_per_endpoint == 0 {
            return bad("delivery.max_in_flight_per_shard and delivery.queue_in_memory_per_endpoint must be positive".into());
        }
        if self.retention.idempotency_days == 0 || self.retention.deliveries_days == 0 {
            return bad("retention days must be positive".into());
        }
        if self.dlq.backend == DlqBackend::S3 && self.dlq.bucket.is_none() {
            return bad("dlq.bucket is required when dlq.backend = \"s3\"".into());
        }
        if self.server.shutdown_timeout_ms > 28_000 {
            return bad("server.shutdown_timeout_ms must be at most 28000 (SIGTERM exits within 30 s)".into());
        }
        Ok(())
    }

    /// Shard count with 0 resolved to the number of cores.
    pub fn effective_shards(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Applies one `HOOKRELAY_<SECTION>_<KEY>` variable; others are ignored.
fn apply_env(table: &mut toml::Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("HOOKRELAY_") else {
        return Ok(());
    };
    if NON_KEY_ENV.contains(&var) {
        return Ok(());
    }
    let err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let sections = table.as_table_mut().expect("config is a table");
    let lower = rest.to_ascii_lowercase();
    let Some(section) = sections
        .keys()
        .filter(|s| lower.starts_with(&format!("{s}_")))
        .max_by_key(|s| s.len())
        .cloned()
    else {
        return Ok(());
    };
    let key = lower[section.len() + 1..].to_string();
    let section_table = sections
        .get_mut(&section)
        .and_then(toml::Value::as_table_mut)
        .expect("sections are tables");
    let known = known_keys(&section);
    if !known.contains(&key.as_str()) {
        return Err(err(format!("unknown key {key:?} in section [{section}]")));
    }
    let parsed = match section_table.get(&key) {
        Some(toml::Value::Boolean(_)) => value
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| err(format!("{value:?} is not true or false")))?,
        Some(toml::Value::Integer(_)) => value
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| err(format!("{value:?} is not an integer")))?,
        Some(toml::Value::Float(_)) => value
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| err(format!("{value:?} is not a number")))?,
        // Strings and unset optional values: integers stay integers if they look like one
        // and the key is numeric (e.g. degrade_after_ms).
        _ => match value.parse::<i64>() {
            Ok(n) if key.ends_with("_ms") || key.ends_with("_s") => toml::Value::Integer(n),
            _ => toml::Value::String(value.to_string()),
        },
    };
    section_table.insert(key, parsed);
    Ok(())
}

/// Every key of a section, including optional ones absent from the serialised defaults.
fn known_keys(section: &str) -> &'static [&'static str] {
    match section {
        "server" => &["listen", "data_dir", "shards", "public_url", "shutdown_timeout_ms"],
        "ingest" => &["max_body_bytes", "signature_tolerance_s"],
        "delivery" => &[
            "allow_private_destinations",
            "connect_timeout_ms",
            "pool_idle_per_host",
            "max_in_flight_per_shard",
            "queue_in_memory_per_endpoint",
            "circuit_failures_to_open",
            "circuit_probe_interval_ms",
        ],
        "log" => &["io", "segment_bytes_max", "segment_age_max_ms", "batch_bytes_max", "batch_linger_us"],
        "retention" => &["deliveries_days", "idempotency_days"],
        "dlq" => &[
            "backend",
            "bucket",
            "prefix",
            "region",
            "endpoint_url",
            "sse_kms_key_id",
            "force_path_style",
            "retention_days",
        ],
        "replay" => &["max_per_s"],
        "replication" => &["role", "peer", "listen", "ack", "degrade_after_ms", "secret"],
        "alerts" => &["smtp_url", "smtp_from", "pagerduty_api_base", "console_base_url"],
        "billing" => &[
            "stripe_api_key",
            "stripe_api_base",
            "meter_event_name",
            "stripe_webhook_secret",
            "grace_days",
        ],
        "observability" => &["log_format", "log_level"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::load(None, env(&[]), &CliOverrides::default()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
        assert_eq!(c.ingest.max_body_bytes, 1 << 20);
        assert!(!c.delivery.allow_private_destinations);
        assert_eq!(c.dlq.backend, DlqBackend::Local);
        assert_eq!(c.replay.max_per_s, 100);
        assert!(c.effective_shards() >= 1);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9000\"\nshards = 3\n[delivery]\nconnect_timeout_ms = 7\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("HOOKRELAY_SERVER_SHARDS", "5"),
                ("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "true"),
                ("HOOKRELAY_LOG_IO", "portable"),
                ("HOOKRELAY_ROOT_KEY", "hr_root_x"),
                ("HOOKRELAY_REPLICATION_DEGRADE_AFTER_MS", "250"),
                ("PATH", "/bin"),
            ]),
            &CliOverrides { shards: Some(2), ..Default::default() },
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.server.shards, 2, "flag wins over env and file");
        assert_eq!(c.delivery.connect_timeout_ms, 7);
        assert!(c.delivery.allow_private_destinations);
        assert_eq!(c.log.io, LogIo::Portable);
        assert_eq!(c.replication.degrade_after_ms, Some(250));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9000\"\nlsten = 1\n").unwrap();
        let e = Config::load(Some(&path), env(&[]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("lsten"), "{e}");
        std::fs::write(&path, "[nosuch]\nx = 1\n").unwrap();
        assert!(Config::load(Some(&path), env(&[]), &CliOverrides::default()).is_err());
        let e = Config::load(None, env(&[("HOOKRELAY_DELIVERY_ALLOW_PRIVATE", "true")]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("HOOKRELAY_DELIVERY_ALLOW_PRIVATE"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load(None, env(&[("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "yes")]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("ALLOW_PRIVATE_DESTINATIONS"), "{e}");
        let e = Config::load(None, env(&[("HOOKRELAY_INGEST_MAX_BODY_BYTES", "10")]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_body_bytes"), "{e}");
        let e = Config::load(None, env(&[("HOOKRELAY_LOG_IO", "floppy")]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("floppy"), "{e}");
        let e = Config::load(None, env(&[("HOOKRELAY_DLQ_BACKEND", "s3")]), &CliOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("dlq.bucket"), "{e}");
    }
}
