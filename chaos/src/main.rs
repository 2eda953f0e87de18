//! `hookrelay-chaos`: fault-injection scenarios against a real `hookrelay` process. Each
//! scenario drives real signed load from 127.0.0.1, injects its fault, waits until every ACKed
//! delivery is final, and prints one table row: ACKed, delivered, failed, dead-lettered, lost,
//! duplicated, verdict. The exit code is non-zero when any scenario FAILs (a loss, a crash, a
//! hang or a wrong status). See chaos/README.md.

mod api;
mod http;
mod ledger;
mod load;
mod pair;
mod proxy;
mod receiver;
mod report;
mod rng;
mod scenario;
mod scenarios;
mod segment;
mod server;
mod shim;
mod signing;
mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;

use crate::report::Row;
use crate::scenario::{Ctx, Outcome, Scenario, Verdict};

/// The scenarios `ci` runs, in their quick form. clock-skew and disk-full are the regression
/// tests of the two engine bugs the suite found (timers on the wall clock; a poisoned log that
/// only a restart cleared): under `ci` a GAP fails like a loss. disk-full skips without root.
const CI_SCENARIOS: &[&str] = &[
    "kill9",
    "torn-write",
    "receiver-faults",
    "clock-skew",
    "disk-full",
    "failover",
    "partition",
    "s3-outage",
];

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay-chaos",
    about = "Fault-injection scenarios against a real hookrelay; each ends in a loss count that must be 0.",
    after_help = "TARGETS: a scenario name (see `list`), `all` (every scenario), `ci` (the quick \
                  form of the CI scenarios — kill9, torn-write, receiver-faults, clock-skew, disk-full, \
                  failover, partition and s3-outage — preferring the debug binary; a GAP fails it), `list`."
)]
struct Cli {
    /// Scenario names, `all`, `ci` or `list`.
    #[arg(required = true)]
    targets: Vec<String>,
    /// The hookrelay binary. Default: target/release/hookrelay, else target/debug/hookrelay
    /// (`ci` prefers debug), looked up from the current directory and the workspace.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Short versions (each scenario ≤ ~30 s), for CI.
    #[arg(long)]
    quick: bool,
    /// Seed of every random choice; printed so a run can be repeated. Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Shards of the server under test.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Where scenario directories are made (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep every scenario directory (by default only failed ones are kept).
    #[arg(long)]
    keep: bool,
    /// Exit non-zero on GAP verdicts too.
    #[arg(long)]
    strict: bool,
    /// Extra environment for every server under test, KEY=VALUE (repeatable), e.g.
    /// `--server-env HOOKRELAY_LOG_DIRECT_IO=true`. A scenario's own settings win.
    #[arg(long = "server-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
}

/// `KEY=VALUE`, with a non-empty key.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookrelay-chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        tokio::select! {
            code = run(cli) => code,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the running scenario tears it down (kills the server, unmounts).
                eprintln!("hookrelay-chaos: interrupted; tearing down");
                ExitCode::from(130)
            }
        }
    })
}

async fn run(cli: Cli) -> ExitCode {
    if cli.targets.iter().any(|t| t == "list") {
        for s in scenarios::ALL {
            let root = if s.needs_root { " (root)" } else { "" };
            println!("{:<16} {}{root}", s.name, s.about);
        }
        return ExitCode::SUCCESS;
    }
    let is_ci = cli.targets.iter().any(|t| t == "ci");
    let chosen = match choose(&cli.targets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookrelay-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let bin = match find_binary(cli.bin.as_deref(), is_ci) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hookrelay-chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let quick = cli.quick || is_ci;
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let work = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let extra: Vec<String> = cli
        .server_env
        .iter()
        .map(|(k, v)| format!(" {k}={v}"))
        .collect();
    println!(
        "hookrelay-chaos: bin={} seed={seed} mode={} shards={} euid={}{}",
        bin.display(),
        if quick { "quick" } else { "full" },
        cli.shards,
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        extra.concat()
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let run = RunOpts {
        bin: &bin,
        quick,
        seed,
        shards: cli.shards,
        work: &work,
        keep: cli.keep,
        server_env: &cli.server_env,
    };
    for scenario in chosen {
        rows.push(run_one(scenario, &run).await);
    }
    println!(
        "\n== hookrelay-chaos summary (seed {seed}, {:.0}s)",
        started.elapsed().as_secs_f64()
    );
    print!("{}", report::table(&rows));
    let failed = rows.iter().any(|r| r.verdict == Verdict::Fail);
    let gap = rows.iter().any(|r| r.verdict == Verdict::Gap);
    if failed || ((cli.strict || is_ci) && gap) {
        println!("repeat with: hookrelay-chaos <scenario> --seed {seed}");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn choose(targets: &[String]) -> anyhow::Result<Vec<&'static Scenario>> {
    let mut out: Vec<&'static Scenario> = Vec::new();
    let mut add = |s: &'static Scenario| {
        if !out.iter().any(|o| o.name == s.name) {
            out.push(s);
        }
    };
    for t in targets {
        match t.as_str() {
            "all" => scenarios::ALL.iter().copied().for_each(&mut add),
            "ci" => {
                for name in CI_SCENARIOS {
                    add(scenarios::find(name).context("ci scenario missing")?);
                }
            }
            name => add(scenarios::find(name).with_context(|| {
                let names: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
                format!(
                    "unknown scenario {name:?}; known: {}, all, ci, list",
                    names.join(", ")
                )
            })?),
        }
    }
    Ok(out)
}

/// What every scenario of one invocation shares.
struct RunOpts<'a> {
    bin: &'a Path,
    quick: bool,
    seed: u64,
    shards: usize,
    work: &'a Path,
    keep: bool,
    server_env: &'a [(String, String)],
}

async fn run_one(scenario: &'static Scenario, run: &RunOpts<'_>) -> Row {
    let RunOpts {
        bin,
        quick,
        seed,
        shards,
        work,
        keep,
        server_env,
    } = *run;
    let scenario_seed = rng::hash_str(seed, scenario.name);
    println!(
        "\n== {} ({}) seed {seed}",
        scenario.name,
        if quick { "quick" } else { "full" }
    );
    let dir = match tempfile::Builder::new()
        .prefix(&format!("hookrelay-chaos-{}-", scenario.name))
        .tempdir_in(work)
    {
        Ok(d) => d,
        Err(e) => {
            return Row::from_outcome(
                scenario.name,
                &failed(format!(
                    "creating a scenario dir in {}: {e}",
                    work.display()
                )),
                Duration::ZERO,
            );
        }
    };
    let mut ctx = Ctx {
        bin: bin.to_path_buf(),
        quick,
        seed: scenario_seed,
        rng: rng::Rng::new(scenario_seed),
        dir: dir.path().to_path_buf(),
        shards,
        server_env: server_env.to_vec(),
    };
    let budget = if quick {
        scenario.budget_quick
    } else {
        scenario.budget_full
    };
    let started = Instant::now();
    // Dropping the scenario's future on timeout runs its teardown (servers, mounts).
    let outcome = match tokio::time::timeout(budget, (scenario.run)(&mut ctx)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => failed(format!("{e:#}")),
        Err(_) => failed(format!(
            "hang: the scenario did not finish within its {budget:?} budget"
        )),
    };
    let elapsed = started.elapsed();
    let row = Row::from_outcome(scenario.name, &outcome, elapsed);
    report::print_outcome(&row, &outcome);
    if keep || row.verdict == Verdict::Fail {
        let kept = dir.keep();
        println!("   scenario dir kept: {}", kept.display());
    }
    row
}

fn failed(why: String) -> Outcome {
    Outcome {
        failures: vec![why],
        ..Outcome::default()
    }
}

/// `--bin`, else target/{release,debug}/hookrelay (debug first for `ci`), from the current
/// directory and then from the workspace this crate was built in.
fn find_binary(bin: Option<&Path>, prefer_debug: bool) -> anyhow::Result<PathBuf> {
    if let Some(b) = bin {
        if !b.is_file() {
            bail!("--bin {}: no such file", b.display());
        }
        return Ok(b.to_path_buf());
    }
    let profiles = if prefer_debug {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut tried = Vec::new();
    for profile in profiles {
        for root in [PathBuf::from("."), workspace.clone()] {
            let p = root.join("target").join(profile).join("hookrelay");
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    bail!(
        "no hookrelay binary found (tried {}); build it with `cargo build --release -p hookrelay-api` or pass --bin",
        tried.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn server_env_takes_key_value_pairs_and_refuses_anything_else() {
        let cli = Cli::try_parse_from([
            "hookrelay-chaos",
            "ci",
            "--server-env",
            "HOOKRELAY_LOG_DIRECT_IO=true",
            "--server-env",
            "A=b=c",
        ])
        .expect("parses");
        assert_eq!(
            cli.server_env,
            [
                ("HOOKRELAY_LOG_DIRECT_IO".to_string(), "true".to_string()),
                ("A".to_string(), "b=c".to_string()),
            ]
        );
        for bad in ["NOVALUE", "=x"] {
            let Err(e) = Cli::try_parse_from(["hookrelay-chaos", "ci", "--server-env", bad]) else {
                panic!("{bad:?} must be refused");
            };
            assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
        }
    }
}
