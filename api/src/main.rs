//! The `hookrelay` binary.

use std::process::ExitCode;

use clap::Parser;
use hookrelay_api::cli::{Cli, Command, run_check_config};
use hookrelay_api::config::{Config, ConfigError, LogFormat, process_env};

/// mimalloc instead of glibc's malloc: per-thread heaps with no arena lock, for a server whose
/// requests allocate on one shard's thread and free on another's (BENCHMARKS.md §2, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = cli.command.config_args();
    if let Command::CheckConfig(_) = cli.command {
        return run_check_config(
            args,
            process_env(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        );
    }
    let config = match args.load(process_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookrelay: {e}");
            return ExitCode::from(ConfigError::EXIT_CODE as u8);
        }
    };
    match cli.command {
        Command::Promote(args) => hookrelay_api::promote::run(&config, &args),
        _ => {
            init_tracing(&config);
            match hookrelay_api::serve::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "hookrelay stopped");
                    eprintln!("hookrelay: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Structured logs on stderr (stdout carries only the one-time `root key:` line).
fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.observability.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.observability.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
