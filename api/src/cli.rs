//! The command line: `hookrelay serve | check-config | promote`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::CliOverrides;

const AFTER_HELP: &str = "\
Every configuration key can also be set with an environment variable
HOOKRELAY_<SECTION>_<KEY>, e.g. HOOKRELAY_DELIVERY_ALLOW_PRIVATE_DESTINATIONS=true or
HOOKRELAY_INGEST_MAX_BODY_BYTES=2097152. Precedence: flags > environment > config file >
embedded defaults. HOOKRELAY_ROOT_KEY sets the operator key on first start (otherwise one is
generated and printed once as `root key: hr_root_...`).";

/// HookRelay: a self-hosted webhook front door.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (ingest, delivery, management API).
    Serve(Common),
    /// Load and validate the configuration, then print the effective configuration as TOML.
    CheckConfig(Common),
    /// Turn a replica into the primary (replication is not in this build yet).
    Promote(Common),
}

/// Flags shared by the subcommands.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// TOML configuration file; unknown keys are an error.
    #[arg(long, env = "HOOKRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address [env: HOOKRELAY_SERVER_LISTEN] (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory [env: HOOKRELAY_SERVER_DATA_DIR] (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shard threads, 0 = one per core [env: HOOKRELAY_SERVER_SHARDS].
    #[arg(long)]
    pub shards: Option<usize>,
}

impl Common {
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            shards: self.shards,
        }
    }
}
