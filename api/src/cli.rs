//! The `hookrelay` command line: `serve`, `promote`, `check-config` and `--version`.
//!
//! Parsing only, plus `check-config` (which needs nothing but the configuration); what `serve`
//! and `promote` do lives in `serve.rs` and the binary. `hookrelay --help` lists every
//! `HOOKRELAY_<SECTION>_<KEY>` variable, generated from the configuration schema.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, SECTIONS};

const ABOUT: &str =
    "HookRelay: a self-hosted webhook gateway (ingest, verify, persist, deliver, replay).";

/// `-h` footer; `--help` shows [`env_reference`] instead.
const AFTER_HELP: &str = "\
Every configuration key can be set in the --config file, or with an environment variable
HOOKRELAY_<SECTION>_<KEY> (e.g. HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS=true).
Precedence: flags > environment > file > defaults. `--help` lists every variable.";

/// `0.1.0 (commit 1a2b3c4)`: the version and the commit the binary was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HOOKRELAY_BUILD_COMMIT"),
    ")"
);

/// The parsed command line. `Cli::parse()` works as with a derived parser; [`CommandFactory`]
/// is written by hand only so that `--help` can list the environment variables, which are
/// generated from the configuration schema at run time.
#[derive(Debug)]
pub struct Cli {
    pub command: Command,
}

impl CommandFactory for Cli {
    fn command() -> clap::Command {
        let reference = env_reference();
        // The enum's derive sets `about` from its doc comment; ours is set after it.
        Command::augment_subcommands(clap::Command::new("hookrelay"))
            .version(VERSION)
            .about(ABOUT)
            .subcommand_required(true)
            .arg_required_else_help(true)
            .after_help(AFTER_HELP)
            .after_long_help(reference.clone())
            .mut_subcommand("serve", |s| s.after_long_help(reference.clone()))
            .mut_subcommand("check-config", |s| s.after_long_help(reference))
    }

    fn command_for_update() -> clap::Command {
        Self::command()
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Cli {
            command: Command::from_arg_matches(matches)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.command.update_from_arg_matches(matches)
    }
}

impl Parser for Cli {}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: ingest, delivery, the management API and the console.
    Serve(ConfigArgs),
    /// Turn the running replica into the primary, with a higher epoch
    /// (`POST /v1/admin/promote` on its HTTP API).
    Promote(PromoteArgs),
    /// Load and validate the configuration, print the effective configuration as TOML
    /// (secrets redacted), and exit 0 if it is valid, 2 if not.
    CheckConfig(ConfigArgs),
}

/// Where the configuration comes from: the file and the flags for the common keys. Every
/// subcommand takes the same set, so `check-config` shows what `serve` with the same flags runs.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; unknown sections or keys in it are an error.
    #[arg(long, value_name = "FILE", env = "HOOKRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on (server.listen) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "HOOKRELAY_SERVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for logs, metadata and the local DLQ (server.data_dir) [default: ./data].
    #[arg(long, value_name = "DIR", env = "HOOKRELAY_SERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards, 0 = one per core (server.shards) [default: 0].
    #[arg(long, value_name = "N", env = "HOOKRELAY_SERVER_SHARDS")]
    pub shards: Option<usize>,
}

/// `hookrelay promote`: which node, and the operator key.
#[derive(Debug, Clone, Default, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Base URL of the node to promote [default: http://<server.listen>].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The operator key (`hr_root_...`).
    #[arg(
        long,
        value_name = "KEY",
        env = "HOOKRELAY_ROOT_KEY",
        hide_env_values = true
    )]
    pub root_key: Option<String>,
}

impl ConfigArgs {
    /// The flags that override the file and the environment.
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            shards: self.shards,
        }
    }

    /// [`Config::load`] with these arguments and `env`.
    pub fn load(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), env, &self.overrides())
    }
}

impl Command {
    /// The configuration arguments, which every subcommand has.
    pub fn config_args(&self) -> &ConfigArgs {
        match self {
            Command::Serve(a) | Command::CheckConfig(a) => a,
            Command::Promote(p) => &p.config,
        }
    }
}

/// Values given by flags; they win over the environment and the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--listen` → `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` → `server.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--shards` → `server.shards`.
    pub shards: Option<usize>,
}

/// `hookrelay check-config`: loads and validates the configuration from `args` and `env`,
/// writes the effective configuration as TOML (secrets redacted) to `out`, or the error to
/// `err`. Returns the process's exit code: 0, or [`ConfigError::EXIT_CODE`].
pub fn run_check_config(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (String, String)>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    match args.load(env) {
        Ok(config) => {
            let text = format!(
                "# Effective HookRelay configuration (flags > environment > file > defaults).\n\
                 # {} shard(s) at run time.\n\n{}",
                config.effective_shards(),
                config.to_toml(true)
            );
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(err, "hookrelay: cannot write the configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            let _ = writeln!(err, "hookrelay: {e}");
            exit_code(ConfigError::EXIT_CODE)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The `--help` footer: how configuration layers, and every environment variable with its
/// default.
pub fn env_reference() -> String {
    let defaults = Config::default().to_table();
    let mut out = String::from(
        "Configuration:\n  \
         Every key of the --config file can be set with an environment variable\n  \
         HOOKRELAY_<SECTION>_<KEY>, e.g. HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS=true.\n  \
         Precedence: flags > environment > file > defaults. Unknown keys in the file, and unknown\n  \
         HOOKRELAY_<SECTION>_<KEY> variables of a known section, are errors (exit code 2).\n  \
         An empty variable unsets an optional key. `hookrelay check-config` prints the result.\n\n  \
         HOOKRELAY_ROOT_KEY  operator key to create on first start (else one is generated and\n                      \
         printed once as `root key: hr_root_...`)\n\n\
         Environment variables [default]:\n",
    );
    for (section, keys) in SECTIONS {
        for key in *keys {
            let default = defaults
                .get(*section)
                .and_then(|t| t.get(key.name))
                .map_or_else(|| "unset".to_string(), ToString::to_string);
            let _ = writeln!(
                out,
                "  {:<48} {default}",
                config::schema::env_var(section, key.name)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hookrelay").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_with_flags() {
        let cli = parse(&[
            "serve",
            "--listen",
            "0.0.0.0:9000",
            "--data-dir",
            "/tmp/d",
            "--shards",
            "3",
        ])
        .unwrap();
        let Command::Serve(args) = &cli.command else {
            panic!("not serve: {cli:?}")
        };
        assert_eq!(
            args.overrides(),
            CliOverrides {
                listen: Some("0.0.0.0:9000".parse().unwrap()),
                data_dir: Some("/tmp/d".into()),
                shards: Some(3)
            }
        );
        assert_eq!(args.config, None);
    }

    #[test]
    fn promote_and_check_config_parse() {
        let cli = parse(&[
            "promote",
            "--config",
            "c.toml",
            "--data-dir",
            "d",
            "--listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Promote(_)));
        assert_eq!(
            cli.command.config_args().config,
            Some(PathBuf::from("c.toml"))
        );
        let cli = parse(&["check-config", "--config", "c.toml"]).unwrap();
        assert!(matches!(cli.command, Command::CheckConfig(_)));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert_eq!(
            parse(&["serve", "--listen", "nope"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            parse(&["serve", "--shards", "-1"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(parse(&["frobnicate"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn version_and_help() {
        let e = parse(&["--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        let printed = e.to_string();
        assert!(printed.contains(env!("CARGO_PKG_VERSION")), "{printed}");
        let commit = env!("HOOKRELAY_BUILD_COMMIT");
        assert!(printed.contains(&format!("(commit {commit})")), "{printed}");
        assert!(
            commit == "unknown"
                || commit.trim_end_matches("-dirty").len() >= 7
                    && commit
                        .trim_end_matches("-dirty")
                        .chars()
                        .all(|c| c.is_ascii_hexdigit()),
            "{commit}"
        );

        let help = parse(&["--help"]).unwrap_err().to_string();
        for needle in [
            "serve",
            "promote",
            "check-config",
            "HOOKRELAY_<SECTION>_<KEY>",
            "HOOKRELAY_ROOT_KEY",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
        }
        for (section, keys) in SECTIONS {
            for key in *keys {
                let var = config::schema::env_var(section, key.name);
                assert!(help.contains(&var), "--help lacks {var}");
            }
        }
        let serve = parse(&["serve", "--help"]).unwrap_err().to_string();
        for needle in [
            "--listen",
            "HOOKRELAY_SERVER_LISTEN",
            "--data-dir",
            "HOOKRELAY_SERVER_DATA_DIR",
            "--shards",
            "HOOKRELAY_SERVER_SHARDS",
            "--config",
        ] {
            assert!(
                serve.contains(needle),
                "serve --help lacks {needle}:\n{serve}"
            );
        }
    }

    #[test]
    fn check_config_prints_a_config_that_loads_back() {
        let args = ConfigArgs {
            shards: Some(2),
            ..ConfigArgs::default()
        };
        let env = vec![
            (
                "HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS".to_string(),
                "true".to_string(),
            ),
            (
                "HOOKRELAY_SERVER_PUBLIC_URL".to_string(),
                "https://hooks.example.com/".to_string(),
            ),
        ];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_check_config(&args, env.clone(), &mut out, &mut err),
            ExitCode::SUCCESS
        );
        assert!(err.is_empty());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("allow_private_destinations = true"), "{text}");
        assert!(text.contains("# bucket = (unset)"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("effective.toml");
        std::fs::write(&path, &text).unwrap();
        let reloaded = Config::load(Some(&path), Vec::new(), &CliOverrides::default()).unwrap();
        assert_eq!(reloaded, args.load(env).unwrap());
    }

    #[test]
    fn check_config_redacts_secrets() {
        let env = vec![
            (
                "HOOKRELAY_BILLING_STRIPE_API_KEY".to_string(),
                "sk_live_abcdef".to_string(),
            ),
            (
                "HOOKRELAY_ALERTS_SMTP_URL".to_string(),
                "smtp://alerts:hunter2@mail.example:587".to_string(),
            ),
        ];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_check_config(&ConfigArgs::default(), env, &mut out, &mut err),
            ExitCode::SUCCESS
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("sk_live_abcdef") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("stripe_api_key = \"<redacted>\""), "{text}");
        assert!(
            text.contains("smtp://alerts:***@mail.example:587"),
            "{text}"
        );
    }

    #[test]
    fn check_config_reports_errors_with_exit_code_2() {
        let env = vec![("HOOKRELAY_SERVER_SHARDS".to_string(), "999".to_string())];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_check_config(&ConfigArgs::default(), env, &mut out, &mut err),
            ExitCode::from(2)
        );
        assert!(out.is_empty());
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("server.shards") && err.contains("HOOKRELAY_SERVER_SHARDS"),
            "{err}"
        );
    }
}
