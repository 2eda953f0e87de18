//! `suite`: every scenario, one after the other, with durations that fit a working session
//! (the `--quick` ones; `--full` for the issue's), then the table written into BENCHMARKS.md
//! between `<!-- bench:begin -->` and `<!-- bench:end -->` (added at the end when missing;
//! the rest of the file is left alone), with the machine, the commit and the date.

use std::path::{Path, PathBuf};

use clap::Args;

use super::acceptance::{self, AcceptanceArgs};
use super::e2e::{self, E2eArgs};
use super::flaky::{self, FlakyArgs};
use super::latency::{self, LatencyArgs};
use super::max_ingest::{self, MaxIngestArgs};
use super::memory::{self, MemoryArgs};
use super::recovery::{self, RecoveryArgs};
use super::replication::{self, AckMode, ReplicationArgs};
use super::{Common, error_row, workspace_root};
use crate::report::{self, Row, TABLE_HEADER, Verdict};

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

const SCENARIOS: [&str; 8] = [
    "acceptance",
    "max-ingest",
    "latency",
    "e2e",
    "flaky",
    "recovery",
    "memory",
    "replication",
];

#[derive(Args, Clone, Debug)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub common: Common,
    /// The file the table goes into [default: <workspace>/BENCHMARKS.md].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// The full sizes and durations (10 min acceptance, 1 GiB recovery, 100k vs 10M).
    #[arg(long)]
    pub full: bool,
    /// Scenarios to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

pub async fn run(a: SuiteArgs) -> anyhow::Result<Verdict> {
    for s in &a.skip {
        anyhow::ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?} in --skip (one of {SCENARIOS:?})"
        );
    }
    let mut c = a.common.clone();
    c.quick = !a.full;
    // Read once: the binary does not change during the run.
    let commit = report::build_commit(&c.bin());
    let mut rows: Vec<Row> = Vec::new();
    for name in SCENARIOS {
        if a.skip.iter().any(|s| s == name) {
            continue;
        }
        eprintln!("suite: {name}");
        let outcome = match name {
            "acceptance" => {
                acceptance::measure(&AcceptanceArgs {
                    common: c.clone(),
                    rate: 1000,
                    duration_s: None,
                    connections: 64,
                    p95_max_ms: 250.0,
                })
                .await
            }
            "max-ingest" => {
                max_ingest::measure(&MaxIngestArgs {
                    common: c.clone(),
                    connections: vec![64, 256],
                    duration_s: None,
                    warmup_s: 3,
                    null_threads: 2,
                    with_delivery: false,
                    skip_null: false,
                    // At full sizes, twice over: the ratio is the figure most moved by the hour.
                    rounds: if c.quick || c.smoke { 1 } else { 2 },
                })
                .await
            }
            "latency" => {
                latency::measure(&LatencyArgs {
                    common: c.clone(),
                    rates: vec![1000, 5000, 10_000],
                    duration_s: None,
                    warmup_s: 2,
                    connections: 128,
                    null_threads: 2,
                    skip_null: false,
                })
                .await
            }
            "e2e" => {
                e2e::measure(&E2eArgs {
                    common: c.clone(),
                    connections: 64,
                    rate: None,
                    duration_s: None,
                    passthrough_rate: 1000,
                    passthrough_s: None,
                    drain_timeout_s: 120,
                })
                .await
            }
            "flaky" => {
                flaky::measure(&FlakyArgs {
                    common: c.clone(),
                    rate: 500,
                    duration_s: None,
                    fail_rate: 0.3,
                    connections: 64,
                    max_attempts: 10,
                    base_delay_ms: 100,
                    factor: 2.0,
                    max_delay_ms: 2000,
                    settle_timeout_s: 180,
                })
                .await
            }
            "recovery" => {
                recovery::measure(&RecoveryArgs {
                    common: c.clone(),
                    size_mib: None,
                    connections: 64,
                })
                .await
            }
            "memory" => {
                memory::measure(&MemoryArgs {
                    common: c.clone(),
                    small: None,
                    large: None,
                    backlog: None,
                    connections: 64,
                })
                .await
            }
            "replication" => {
                replication::measure(&ReplicationArgs {
                    common: c.clone(),
                    acks: vec![AckMode::Local, AckMode::Peer],
                    rates: vec![1000, 5000],
                    duration_s: None,
                    warmup_s: 2,
                    connections: 128,
                    closed_connections: vec![64, 256],
                    closed_duration_s: None,
                    closed_warmup_s: 3,
                    with_delivery: false,
                    catch_up_timeout_s: 30,
                })
                .await
            }
            _ => unreachable!("SCENARIOS lists every scenario"),
        };
        let row = outcome.unwrap_or_else(|e| {
            eprintln!("suite: {name} failed: {e:#}");
            error_row(name, &e)
        });
        row.emit(&c.results, &commit)?;
        rows.push(row);
    }
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| workspace_root().join("BENCHMARKS.md"));
    let block = table_block(
        &rows,
        if a.full { "full" } else { "quick" },
        c.smoke,
        &commit,
    );
    write_block(&output, &block)?;
    eprintln!("suite: table written to {}", output.display());
    println!("\n{block}");
    Ok(if rows.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else {
        Verdict::Pass
    })
}

/// The text between (and including) the markers.
fn table_block(rows: &[Row], sizes: &str, smoke: bool, commit: &str) -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push('\n');
    out.push_str(&format!(
        "_{} · commit `{}` · {} · `hookrelay-bench suite` ({sizes} sizes{}; the load generator shares the cores with the server)_\n\n",
        report::machine_line(),
        commit,
        report::date_utc(report::unix_now()),
        if smoke { ", smoke" } else { "" }
    ));
    out.push_str(TABLE_HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&r.markdown());
        out.push('\n');
    }
    out.push_str(END);
    out
}

/// Replaces the marked block of `path` with `block` (adding it at the end, or creating the
/// file, when absent), leaving everything else as it was.
pub fn write_block(path: &Path, block: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, splice(&text, block))?;
    Ok(())
}

fn splice(text: &str, block: &str) -> String {
    if let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END))
        && b < e
    {
        return format!("{}{block}{}", &text[..b], &text[e + END.len()..]);
    }
    if text.is_empty() {
        return format!("# Benchmarks\n\n{block}\n");
    }
    let sep = if text.ends_with('\n') { "\n" } else { "\n\n" };
    format!("{text}{sep}{block}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_replaces_only_what_is_between_the_markers() {
        let block = format!("{BEGIN}\nnew\n{END}");
        let text = format!("# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\nafter\n");
        assert_eq!(
            splice(&text, &block),
            format!("# B\n\nintro\n\n{BEGIN}\nnew\n{END}\n\nafter\n")
        );
        assert_eq!(
            splice("# B\nintro\n", &block),
            format!("# B\nintro\n\n{block}\n")
        );
        assert_eq!(splice("", &block), format!("# Benchmarks\n\n{block}\n"));
    }
}
