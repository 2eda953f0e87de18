//! Layering: defaults, then the file, then the environment, then flags. The file and the
//! environment are merged into one TOML table that is deserialized once, so both share the same
//! type checks; unknown keys are caught against the schema first, for better messages.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::schema::{self, Kind, Section};
use super::{Config, ConfigError, Origin, SECTIONS, Violation, validate};
use crate::cli::CliOverrides;

/// Prefix of the configuration's environment variables.
pub const ENV_PREFIX: &str = "HOOKRELAY_";

/// The process's `HOOKRELAY_*` environment variables (others are not needed). Values that are
/// not UTF-8 are converted lossily and then fail their key's checks.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Where each `section.key` that is not a default came from.
#[derive(Default)]
struct Origins(HashMap<String, Origin>);

impl Origins {
    fn set(&mut self, section: &str, key: &str, origin: Origin) {
        self.0.insert(format!("{section}.{key}"), origin);
    }

    fn of(&self, dotted: &str) -> Origin {
        self.0.get(dotted).cloned().unwrap_or(Origin::Default)
    }
}

pub(super) fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &CliOverrides,
) -> Result<Config, ConfigError> {
    let mut origins = Origins::default();
    let mut root = Config::default().to_table();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        merge_file(&mut root, file, path, &mut origins)?;
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // Sorted, so the error reported among several bad variables does not depend on the order
    // the OS lists them in.
    env.sort();
    for (name, value) in &env {
        apply_env(&mut root, name, value, &mut origins)?;
    }
    let mut config = from_table(root, &origins)?;
    apply_flags(&mut config, overrides, &mut origins);
    normalize(&mut config);
    let violations: Vec<Violation> = validate::check(&config)
        .into_iter()
        .map(|(key, reason)| {
            let origin = Some(origins.of(&key));
            Violation {
                key,
                reason,
                origin,
            }
        })
        .collect();
    if violations.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(violations))
    }
}

fn merge_file(
    root: &mut Table,
    file: Table,
    path: &Path,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let origin = || Origin::File(path.to_path_buf());
    for (section, value) in file {
        if !schema::is_section(&section) {
            return Err(match value {
                Value::Table(_) => ConfigError::UnknownSection {
                    section,
                    origin: origin(),
                },
                _ => ConfigError::UnknownKey {
                    hint: hint_for_file(None, &section),
                    key: section,
                    origin: origin(),
                },
            });
        }
        let Value::Table(keys) = value else {
            return Err(ConfigError::BadValue {
                reason: format!("must be a table: write the keys under a [{section}] header"),
                key: section,
                origin: origin(),
            });
        };
        let target = root
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(target) = target else {
            unreachable!("the defaults serialize every section as a table");
        };
        for (key, value) in keys {
            if schema::find_key(&section, &key).is_none() {
                return Err(ConfigError::UnknownKey {
                    hint: hint_for_file(Some(&section), &key),
                    key: format!("{section}.{key}"),
                    origin: origin(),
                });
            }
            origins.set(&section, &key, origin());
            target.insert(key, value);
        }
    }
    Ok(())
}

/// Applies one `HOOKRELAY_*` variable. Variables that do not name a section
/// (`HOOKRELAY_ROOT_KEY`, `HOOKRELAY_CONFIG`) are not configuration keys and are skipped.
fn apply_env(
    root: &mut Table,
    name: &str,
    value: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let rest = &name[ENV_PREFIX.len()..];
    let Some((section, key)) = rest.split_once('_') else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    if !schema::is_section(&section) {
        return Ok(());
    }
    let origin = Origin::Env(name.to_string());
    let Some(spec) = schema::find_key(&section, &key) else {
        return Err(ConfigError::UnknownKey {
            hint: hint_for_env(rest),
            key: format!("{section}.{key}"),
            origin,
        });
    };
    let Some(Value::Table(target)) = root.get_mut(&section) else {
        unreachable!("the defaults serialize every section as a table");
    };
    if value.is_empty() && spec.optional {
        target.remove(&key);
    } else {
        let parsed = parse_env_value(spec.kind, value).map_err(|reason| ConfigError::BadValue {
            key: format!("{section}.{key}"),
            origin: origin.clone(),
            reason,
        })?;
        target.insert(key.clone(), parsed);
    }
    origins.set(&section, &key, origin);
    Ok(())
}

/// Parses an environment variable's text as a value of `kind`.
fn parse_env_value(kind: Kind, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    match kind {
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        },
        Kind::Integer => trimmed
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|e| format!("expected an integer, got {text:?} ({e})")),
        Kind::Float => trimmed
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float)
            .ok_or_else(|| format!("expected a number, got {text:?}")),
        Kind::String => Ok(Value::String(text.to_string())),
        Kind::Enum(words) => {
            let word = trimmed.to_ascii_lowercase();
            if words.contains(&word.as_str()) {
                Ok(Value::String(word))
            } else {
                Err(format!(
                    "expected one of {}, got {text:?}",
                    words.join(", ")
                ))
            }
        }
    }
}

/// Deserializes every section; on a type error, finds the key that caused it.
fn from_table(mut root: Table, origins: &Origins) -> Result<Config, ConfigError> {
    Ok(Config {
        server: section(&mut root, origins)?,
        ingest: section(&mut root, origins)?,
        delivery: section(&mut root, origins)?,
        log: section(&mut root, origins)?,
        retention: section(&mut root, origins)?,
        dlq: section(&mut root, origins)?,
        replay: section(&mut root, origins)?,
        replication: section(&mut root, origins)?,
        alerts: section(&mut root, origins)?,
        billing: section(&mut root, origins)?,
        observability: section(&mut root, origins)?,
    })
}

fn section<S: Section + DeserializeOwned>(
    root: &mut Table,
    origins: &Origins,
) -> Result<S, ConfigError> {
    let table = match root.remove(S::NAME) {
        Some(Value::Table(table)) => table,
        _ => Table::new(),
    };
    let whole = match Value::Table(table.clone()).try_into::<S>() {
        Ok(section) => return Ok(section),
        Err(e) => e,
    };
    // Every field has a default, so a table with one key fails only if that key is bad.
    for (key, value) in table {
        let dotted = format!("{}.{key}", S::NAME);
        let mut one = Table::new();
        one.insert(key, value);
        if let Err(e) = Value::Table(one).try_into::<S>() {
            return Err(ConfigError::BadValue {
                origin: origins.of(&dotted),
                key: dotted,
                reason: e.message().to_string(),
            });
        }
    }
    Err(ConfigError::BadValue {
        key: S::NAME.to_string(),
        origin: Origin::Default,
        reason: whole.message().to_string(),
    })
}

fn apply_flags(config: &mut Config, overrides: &CliOverrides, origins: &mut Origins) {
    if let Some(listen) = overrides.listen {
        config.server.listen = listen;
        origins.set(
            "server",
            "listen",
            Origin::Flag("--listen or HOOKRELAY_SERVER_LISTEN"),
        );
    }
    if let Some(dir) = &overrides.data_dir {
        config.server.data_dir = dir.clone();
        origins.set(
            "server",
            "data_dir",
            Origin::Flag("--data-dir or HOOKRELAY_SERVER_DATA_DIR"),
        );
    }
    if let Some(shards) = overrides.shards {
        config.server.shards = shards;
        origins.set(
            "server",
            "shards",
            Origin::Flag("--shards or HOOKRELAY_SERVER_SHARDS"),
        );
    }
}

/// Canonical forms the rest of the program may rely on: base URLs without a trailing `/`.
fn normalize(config: &mut Config) {
    let trim = |url: &mut String| {
        while url.ends_with('/') {
            url.pop();
        }
    };
    if let Some(url) = config.server.public_url.as_mut() {
        trim(url);
    }
    if let Some(url) = config.alerts.console_base_url.as_mut() {
        trim(url);
    }
    trim(&mut config.alerts.pagerduty_api_base);
    trim(&mut config.billing.stripe_api_base);
}

/// "; did you mean ...?" for an unknown key of the file (`section` None = top level).
fn hint_for_file(section: Option<&str>, key: &str) -> String {
    let elsewhere: Vec<String> = SECTIONS
        .iter()
        .filter(|(s, keys)| Some(*s) != section && keys.iter().any(|k| k.name == key))
        .map(|(s, _)| format!("{s}.{key}"))
        .collect();
    if let Some(found) = elsewhere.first() {
        return format!(
            "; did you mean {found} (under [{}])?",
            found.split('.').next().unwrap_or_default()
        );
    }
    if let Some(section) = section
        && let Some((_, keys)) = SECTIONS.iter().find(|(s, _)| *s == section)
        && let Some(close) = keys.iter().find(|k| edit_distance(k.name, key) <= 2)
    {
        return format!("; did you mean {section}.{}?", close.name);
    }
    if section.is_none() {
        return "; keys belong under a [section] header".to_string();
    }
    String::new()
}

/// "; did you mean ...?" for an unknown `HOOKRELAY_<rest>` variable.
fn hint_for_env(rest: &str) -> String {
    let mut best: Option<(usize, String)> = None;
    for (section, keys) in SECTIONS {
        for key in *keys {
            let name = schema::env_var(section, key.name);
            let candidate = &name[ENV_PREFIX.len()..];
            let distance = if candidate.ends_with(&format!("_{rest}")) {
                // HOOKRELAY_LOG_LEVEL: HOOKRELAY_OBSERVABILITY_LOG_LEVEL without its section.
                0
            } else if candidate.starts_with(rest) || rest.starts_with(candidate) {
                // Cut short or run on: HOOKRELAY_DELIVERY_ALLOW_PRIVATE.
                1
            } else {
                edit_distance(candidate, rest)
            };
            if distance <= 2 && best.as_ref().is_none_or(|(d, _)| distance < *d) {
                best = Some((distance, name));
            }
        }
    }
    best.map(|(_, name)| format!("; did you mean {name}?"))
        .unwrap_or_default()
}

/// Levenshtein distance, for suggestions (names are short, so quadratic is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Ack, DlqBackend, LogFormat, LogIo, Role};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(pairs), &CliOverrides::default())
    }

    /// Writes `toml` to a temporary file and loads it with `pairs` and `flags`.
    fn load_file(
        toml: &str,
        pairs: &[(&str, &str)],
        flags: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookrelay.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), env(pairs), flags)
    }

    #[track_caller]
    fn assert_err_mentions(result: Result<Config, ConfigError>, needles: &[&str]) -> ConfigError {
        let e = result.expect_err("expected a configuration error");
        let text = e.to_string();
        for needle in needles {
            assert!(
                text.contains(needle),
                "error {text:?} does not mention {needle:?}"
            );
        }
        e
    }

    #[test]
    fn no_file_no_env_no_flags_is_the_contract_defaults() {
        let c = load_env(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
        assert_eq!(c.server.shards, 0);
        assert!(c.effective_shards() >= 1);
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        assert_eq!(c.server.shutdown_timeout_ms, 25_000);
        assert_eq!(c.ingest.max_body_bytes, 1 << 20);
        assert_eq!(c.ingest.signature_tolerance_s, 300);
        assert!(!c.delivery.allow_private_destinations);
        assert_eq!(c.log.io, LogIo::Auto);
        assert_eq!(c.retention.deliveries_days, 30);
        assert_eq!(c.retention.idempotency_days, 7);
        assert_eq!(c.dlq.backend, DlqBackend::Local);
        assert_eq!(c.replay.max_per_s, 100);
        assert_eq!(
            (c.replication.role, c.replication.ack),
            (Role::Primary, Ack::Local)
        );
        assert_eq!(c.alerts.pagerduty_api_base, "https://events.pagerduty.com");
        assert_eq!(c.billing.stripe_api_base, "https://api.stripe.com");
        assert_eq!(c.billing.meter_event_name, "hookrelay_deliveries");
        assert_eq!(c.observability.log_format, LogFormat::Json);
        assert_eq!(c.observability.log_level, "info");
        c.validate().unwrap();
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = "[server]\nlisten = \"127.0.0.1:9000\"\nshards = 3\ndata_dir = \"/from/file\"\n\
                    [delivery]\nconnect_timeout_ms = 700\n[ingest]\nmax_body_bytes = 4096\n";
        let c = load_file(
            file,
            &[
                ("HOOKRELAY_SERVER_SHARDS", "5"),
                ("HOOKRELAY_SERVER_DATA_DIR", "/from/env"),
                ("HOOKRELAY_INGEST_MAX_BODY_BYTES", "8192"),
                ("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "true"),
            ],
            &CliOverrides {
                shards: Some(2),
                ..CliOverrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.server.listen.to_string(),
            "127.0.0.1:9000",
            "file over default"
        );
        assert_eq!(c.server.shards, 2, "flag over env and file");
        assert_eq!(
            c.server.data_dir,
            PathBuf::from("/from/env"),
            "env over file"
        );
        assert_eq!(c.ingest.max_body_bytes, 8192, "env over file");
        assert_eq!(c.delivery.connect_timeout_ms, 700, "file over default");
        assert!(c.delivery.allow_private_destinations, "env over default");

        let flags = CliOverrides {
            listen: Some("0.0.0.0:1234".parse().unwrap()),
            data_dir: Some("/from/flag".into()),
            shards: None,
        };
        let c = load_file(file, &[("HOOKRELAY_SERVER_LISTEN", "127.0.0.1:1")], &flags).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:1234");
        assert_eq!(c.server.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.server.shards, 3);
    }

    #[test]
    fn every_kind_of_value_from_the_environment() {
        let c = load_env(&[
            ("HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS", "1"),
            ("HOOKRELAY_DLQ_FORCE_PATH_STYLE", "TRUE"),
            ("HOOKRELAY_LOG_IO", "Portable"),
            ("HOOKRELAY_LOG_BATCH_LINGER_US", " 250 "),
            ("HOOKRELAY_SERVER_PUBLIC_URL", "https://hooks.example.com/"),
            ("HOOKRELAY_REPLICATION_DEGRADE_AFTER_MS", "250"),
            ("HOOKRELAY_REPLICATION_SECRET", "1234567890123456"),
            ("HOOKRELAY_OBSERVABILITY_LOG_FORMAT", "text"),
            (
                "HOOKRELAY_OBSERVABILITY_LOG_LEVEL",
                "info,hookrelay_engine=debug",
            ),
            ("HOOKRELAY_DLQ_BACKEND", "s3"),
            ("HOOKRELAY_DLQ_BUCKET", "dead-letters"),
        ])
        .unwrap();
        assert!(c.delivery.allow_private_destinations && c.dlq.force_path_style);
        assert_eq!(c.log.io, LogIo::Portable);
        assert_eq!(c.log.batch_linger_us, 250);
        assert_eq!(
            c.public_url(),
            "https://hooks.example.com",
            "trailing / trimmed"
        );
        assert_eq!(c.replication.degrade_after_ms, Some(250));
        assert_eq!(
            c.replication.secret.as_deref(),
            Some("1234567890123456"),
            "digits stay a string"
        );
        assert_eq!(c.observability.log_format, LogFormat::Text);
        assert_eq!(c.observability.log_level, "info,hookrelay_engine=debug");
        assert_eq!(
            (c.dlq.backend, c.dlq.bucket.as_deref()),
            (DlqBackend::S3, Some("dead-letters"))
        );
    }

    #[test]
    fn empty_env_unsets_an_optional_key() {
        let c = load_file(
            "[server]\npublic_url = \"https://x.example\"\n",
            &[("HOOKRELAY_SERVER_PUBLIC_URL", "")],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.public_url, None);
    }

    #[test]
    fn variables_outside_the_schema_are_ignored() {
        let c = load_env(&[
            ("HOOKRELAY_ROOT_KEY", "hr_root_abc"),
            ("HOOKRELAY_CONFIG", "/etc/hookrelay.toml"),
            ("HOOKRELAY_BIN", "/usr/bin/hookrelay"),
            ("HOOKRELAY", "x"),
            ("PATH", "/bin"),
            ("RUST_LOG", "debug"),
        ])
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_in_the_file_is_an_error_naming_it() {
        let e = assert_err_mentions(
            load_file(
                "[server]\nlisten = \"127.0.0.1:9000\"\nlsten = 1\n",
                &[],
                &CliOverrides::default(),
            ),
            &[
                "server.lsten",
                "hookrelay.toml",
                "did you mean server.listen",
            ],
        );
        assert_eq!(e.key(), Some("server.lsten"));
        assert_err_mentions(
            load_file(
                "[server]\nmax_body_bytes = 1\n",
                &[],
                &CliOverrides::default(),
            ),
            &[
                "server.max_body_bytes",
                "did you mean ingest.max_body_bytes",
            ],
        );
        assert_err_mentions(
            load_file(
                "[server.tls]\ncert = \"x\"\n",
                &[],
                &CliOverrides::default(),
            ),
            &["server.tls"],
        );
        assert_err_mentions(
            load_file("[nosuch]\nx = 1\n", &[], &CliOverrides::default()),
            &["[nosuch]"],
        );
        assert_err_mentions(
            load_file("listen = \"127.0.0.1:1\"\n", &[], &CliOverrides::default()),
            &["`listen`", "did you mean server.listen"],
        );
        assert_err_mentions(
            load_file("server = 1\n", &[], &CliOverrides::default()),
            &["server", "table"],
        );
    }

    #[test]
    fn unknown_env_key_in_a_known_section_is_an_error() {
        let e = assert_err_mentions(
            load_env(&[("HOOKRELAY_DELIVERY_ALLOW_PRIVATE", "true")]),
            &[
                "delivery.allow_private",
                "HOOKRELAY_DELIVERY_ALLOW_PRIVATE",
                "HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS",
            ],
        );
        assert!(matches!(e, ConfigError::UnknownKey { .. }));
        assert_err_mentions(
            load_env(&[("HOOKRELAY_LOG_LEVEL", "debug")]),
            &[
                "HOOKRELAY_LOG_LEVEL",
                "did you mean HOOKRELAY_OBSERVABILITY_LOG_LEVEL",
            ],
        );
    }

    #[test]
    fn bad_values_name_the_key_and_their_origin() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS",
                "yes",
                &["delivery.allow_private_destinations", "true or false"],
            ),
            (
                "HOOKRELAY_SERVER_SHARDS",
                "four",
                &["server.shards", "integer"],
            ),
            (
                "HOOKRELAY_INGEST_MAX_BODY_BYTES",
                "-1",
                &["ingest.max_body_bytes"],
            ),
            (
                "HOOKRELAY_LOG_IO",
                "floppy",
                &["log.io", "floppy", "auto, uring, portable"],
            ),
            (
                "HOOKRELAY_SERVER_LISTEN",
                "localhost",
                &["server.listen", "socket address"],
            ),
            (
                "HOOKRELAY_REPLICATION_LISTEN",
                "nope",
                &["replication.listen"],
            ),
        ];
        for (var, value, needles) in cases {
            let e = assert_err_mentions(load_env(&[(var, value)]), needles);
            assert!(e.to_string().contains(var), "{e} lacks {var}");
        }
        let e = assert_err_mentions(
            load_file("[server]\nshards = \"4\"\n", &[], &CliOverrides::default()),
            &["server.shards", "hookrelay.toml"],
        );
        assert_eq!(e.key(), Some("server.shards"));
        assert_err_mentions(
            load_file(
                "[server]\nlisten = \"not an address\"\n",
                &[],
                &CliOverrides::default(),
            ),
            &["server.listen", "hookrelay.toml"],
        );
        assert_err_mentions(
            load_file("[log]\nio = \"fast\"\n", &[], &CliOverrides::default()),
            &["log.io", "fast"],
        );
        assert_err_mentions(
            load_file("[server\n", &[], &CliOverrides::default()),
            &["hookrelay.toml", "not valid TOML"],
        );
    }

    #[test]
    fn validation_errors_name_the_key_and_origin_and_list_all() {
        let e = assert_err_mentions(
            load_env(&[
                ("HOOKRELAY_SERVER_SHARDS", "300"),
                ("HOOKRELAY_INGEST_MAX_BODY_BYTES", "10"),
            ]),
            &[
                "server.shards (from HOOKRELAY_SERVER_SHARDS): must be in 0..=256, got 300",
                "ingest.max_body_bytes (from HOOKRELAY_INGEST_MAX_BODY_BYTES): must be in 1024..=67108864",
            ],
        );
        assert!(matches!(&e, ConfigError::Invalid(v) if v.len() == 2));
        assert_err_mentions(
            Config::load(
                None,
                Vec::new(),
                &CliOverrides {
                    shards: Some(1000),
                    ..CliOverrides::default()
                },
            ),
            &["server.shards (from --shards"],
        );
        assert_err_mentions(
            load_env(&[("HOOKRELAY_DLQ_BACKEND", "s3")]),
            &["dlq.bucket", "required"],
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(
            Some(Path::new("/nonexistent/hookrelay.toml")),
            Vec::new(),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/hookrelay.toml"));
    }

    #[test]
    fn a_full_file_loads() {
        let c = load_file(
            r#"
            [server]
            listen = "[::1]:8443"
            data_dir = "/var/lib/hookrelay"
            shards = 4
            public_url = "https://hooks.example.com"
            shutdown_timeout_ms = 20000
            [ingest]
            max_body_bytes = 2097152
            [delivery]
            allow_private_destinations = true
            [log]
            io = "uring"
            [dlq]
            backend = "s3"
            bucket = "b"
            prefix = "hookrelay/"
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:9000"
            force_path_style = true
            [replication]
            role = "primary"
            peer = "replica.internal:7070"
            ack = "peer"
            degrade_after_ms = 2000
            [alerts]
            smtp_url = "smtp://127.0.0.1:2525"
            smtp_from = "alerts@example.com"
            [billing]
            stripe_api_key = "sk_test_x"
            stripe_api_base = "http://127.0.0.1:12111/"
            [observability]
            log_format = "text"
            "#,
            &[],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.public_url(), "https://hooks.example.com");
        assert_eq!(c.server.listen.to_string(), "[::1]:8443");
        assert_eq!(c.effective_shards(), 4);
        assert_eq!(c.log.io, LogIo::Uring);
        assert_eq!(c.replication.ack, Ack::Peer);
        assert_eq!(c.billing.stripe_api_base, "http://127.0.0.1:12111");
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("listen", "lsten"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("shards", "shards"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
