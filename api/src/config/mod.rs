//! HookRelay's configuration (CONTRACT "Process and configuration"): embedded defaults, an
//! optional TOML file, `HOOKRELAY_<SECTION>_<KEY>` environment variables and the `--listen`,
//! `--data-dir` and `--shards` flags, in rising precedence, validated once at start-up.
//!
//! Read [`Config`] first; `sections.rs` holds one struct per `[section]` whose doc comments are
//! the reference (`api/CONFIG.md` is generated from them). This module only parses and checks:
//! it opens no sockets and touches no data.
//!
//! Architecture Invariant: a `Config` that exists has passed validation ([`Config::load`] is the
//! only way the binary builds one), so the rest of the program trusts its ranges.

mod defaults;
mod load;
pub mod schema;
mod sections;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cli::CliOverrides;
pub use load::{ENV_PREFIX, process_env};
use schema::{Key, Section as _};
pub use sections::{
    Ack, Alerts, Billing, Delivery, Dlq, DlqBackend, Ingest, Log, LogFormat, LogIo, Observability,
    Replay, Replication, Retention, Role, Server,
};
pub use validate::MAX_SHARDS;

/// Every section with its keys, in the order the reference lists them.
pub const SECTIONS: &[(&str, &[Key])] = &[
    (Server::NAME, Server::KEYS),
    (Ingest::NAME, Ingest::KEYS),
    (Delivery::NAME, Delivery::KEYS),
    (Log::NAME, Log::KEYS),
    (Retention::NAME, Retention::KEYS),
    (Dlq::NAME, Dlq::KEYS),
    (Replay::NAME, Replay::KEYS),
    (Replication::NAME, Replication::KEYS),
    (Alerts::NAME, Alerts::KEYS),
    (Billing::NAME, Billing::KEYS),
    (Observability::NAME, Observability::KEYS),
];

/// Keys whose values `check-config` never prints.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("replication", "secret"),
    ("billing", "stripe_api_key"),
    ("billing", "stripe_webhook_secret"),
];

/// The whole configuration. `Config::default()` is the embedded defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

impl Config {
    /// Builds the effective configuration: defaults, then the file at `path` (if any), then the
    /// `HOOKRELAY_<SECTION>_<KEY>` variables among `env` (other variables are ignored), then
    /// `overrides`; and validates it. Unknown sections and keys in the file, and unknown keys
    /// of a known section in the environment, are errors. Every error names the key and where
    /// its value came from.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        load::load(path, env, overrides)
    }

    /// Checks every cross-key rule and range; lists every violation, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let violations: Vec<Violation> = validate::check(self)
            .into_iter()
            .map(|(key, reason)| Violation {
                key,
                reason,
                origin: None,
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(violations))
        }
    }

    /// The number of shards to run: `server.shards`, or one per available core when it is 0.
    pub fn effective_shards(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_SHARDS),
            n => n,
        }
    }

    /// Base of absolute URLs handed out by the API, without a trailing `/`:
    /// `server.public_url`, or `http://<server.listen>`.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.server.listen),
        }
    }

    /// The configuration as a TOML table (unset keys absent).
    pub fn to_table(&self) -> toml::Table {
        // Every field is a string, integer, bool, path or address: serialization cannot fail
        // unless `data_dir` is not UTF-8, which `load` refuses.
        toml::Table::try_from(self).unwrap_or_default()
    }

    /// The configuration as a TOML document, keys in reference order, unset keys as comments
    /// and secrets replaced by `"<redacted>"` when `redact` is true. Feeding the output back as
    /// a config file (without secrets) gives the same configuration.
    pub fn to_toml(&self, redact: bool) -> String {
        let table = self.to_table();
        let mut out = String::new();
        for (section, keys) in SECTIONS {
            let values = table.get(*section).and_then(toml::Value::as_table);
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{section}]\n"));
            for key in *keys {
                match values.and_then(|t| t.get(key.name)) {
                    Some(_) if redact && SECRET_KEYS.contains(&(*section, key.name)) => {
                        out.push_str(&format!("{} = \"<redacted>\"\n", key.name));
                    }
                    Some(toml::Value::String(s)) if redact && key.name == "smtp_url" => {
                        out.push_str(&format!(
                            "{} = {}\n",
                            key.name,
                            toml::Value::String(redact_userinfo(s))
                        ));
                    }
                    Some(value) => out.push_str(&format!("{} = {value}\n", key.name)),
                    None => out.push_str(&format!("# {} = (unset)\n", key.name)),
                }
            }
        }
        out
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// `HOOKRELAY_ROOT_KEY`, the operator key to create on first start, when set and not blank.
pub fn root_key_from_env() -> Option<String> {
    std::env::var("HOOKRELAY_ROOT_KEY")
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag (which clap may itself have read from its environment variable).
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("(default)"),
            Origin::File(path) => write!(f, "(in {})", path.display()),
            Origin::Env(name) => write!(f, "(from {name})"),
            Origin::Flag(flag) => write!(f, "(from {flag})"),
        }
    }
}

/// One broken rule of [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `section.key`.
    pub key: String,
    /// What is wrong, e.g. "must be at most 256".
    pub reason: String,
    /// Where the offending value came from, when known.
    pub origin: Option<Origin>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{} {origin}: {}", self.key, self.reason),
            None => write!(f, "{}: {}", self.key, self.reason),
        }
    }
}

/// Why the configuration could not be built. The binary prints it and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("unknown config section [{section}] {origin}")]
    UnknownSection { section: String, origin: Origin },
    #[error("unknown config key `{key}` {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: Origin,
        hint: String,
    },
    #[error("bad value for {key} {origin}: {reason}")]
    BadValue {
        key: String,
        origin: Origin,
        reason: String,
    },
    #[error("invalid configuration:{}", list(.0))]
    Invalid(Vec<Violation>),
}

fn list(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("\n  {v}")).collect()
}

impl ConfigError {
    /// Process exit code for a configuration error.
    pub const EXIT_CODE: i32 = 2;

    /// The `section.key` the error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::BadValue { key, .. } => Some(key),
            ConfigError::Invalid(v) if v.len() == 1 => v.first().map(|v| v.key.as_str()),
            _ => None,
        }
    }
}
