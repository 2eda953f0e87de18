//! Reporting: one markdown table row per scenario on stdout, one JSON line per scenario in the
//! results file, and the context a report needs (machine, commit, date).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

/// The header of the table the rows belong to.
pub const TABLE_HEADER: &str =
    "| Scenario | Load | Result | Target | Verdict |\n|---|---|---|---|---|";

/// Whether a scenario met its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Measured, nothing to pass or fail (or timings not judged, as in smoke runs).
    Info,
}

impl Verdict {
    pub fn from_bool(ok: bool) -> Self {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "**FAIL**",
            Verdict::Info => "info",
        }
    }
}

/// One scenario's outcome.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    /// What load was applied, for the table.
    pub load: String,
    /// What was measured, for the table.
    pub result: String,
    /// The SPEC.md number it is judged against.
    pub target: String,
    pub verdict: Verdict,
    /// Every figure, for the JSON line.
    pub metrics: Value,
}

impl Row {
    pub fn markdown(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} |",
            self.scenario,
            self.load,
            self.result,
            self.target,
            self.verdict.text()
        )
    }

    /// Prints the row (with the header) and appends its JSON line to `results`; `commit` is
    /// the measured server's build ([`build_commit`]).
    pub fn emit(&self, results: &Path, commit: &str) -> anyhow::Result<()> {
        println!("{TABLE_HEADER}\n{}", self.markdown());
        let line = json!({
            "scenario": self.scenario,
            "at": unix_now(),
            "date": date_utc(unix_now()),
            "commit": commit,
            "machine": machine(),
            "load": self.load,
            "result": self.result,
            "target": self.target,
            "verdict": self.verdict,
            "metrics": self.metrics,
        });
        let mut f = OpenOptions::new().create(true).append(true).open(results)?;
        writeln!(f, "{line}")?;
        Ok(())
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DD HH:MM UTC` for unix seconds.
pub fn date_utc(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The commit the hookrelay binary at `bin` was built from, as its `--version` prints it
/// (`1a2b3c4`, or `1a2b3c4-dirty` when built from uncommitted changes), or `unknown`. A report
/// names the measured binary's code, not the checkout's HEAD at the time of the run.
pub fn build_commit(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| parse_build_commit(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit in `hookrelay 0.1.0 (commit 1a2b3c4)`.
fn parse_build_commit(version: &str) -> Option<String> {
    let (_, rest) = version.split_once("(commit ")?;
    let (commit, _) = rest.split_once(')')?;
    let commit = commit.trim();
    (!commit.is_empty()).then(|| commit.to_string())
}

/// Cores and CPU model.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        });
    json!({
        "cores": crate::listen::core_count(),
        "cpu": model,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
    })
}

/// One line describing the machine, for reports.
pub fn machine_line() -> String {
    let m = machine();
    format!(
        "{} cores, {}, {} GiB RAM",
        m["cores"],
        m["cpu"].as_str().unwrap_or("unknown"),
        m["mem_gib"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(date_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(date_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date_utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }

    #[test]
    fn the_build_commit_comes_from_the_version_line() {
        let c = parse_build_commit("hookrelay 0.1.0 (commit 1a2b3c4)\n");
        assert_eq!(c.as_deref(), Some("1a2b3c4"));
        let c = parse_build_commit("hookrelay 0.1.0 (commit 1a2b3c4-dirty)");
        assert_eq!(c.as_deref(), Some("1a2b3c4-dirty"));
        assert_eq!(parse_build_commit("hookrelay 0.1.0"), None);
        assert_eq!(parse_build_commit("hookrelay 0.1.0 (commit )"), None);
        assert_eq!(build_commit(Path::new("/nonexistent/hookrelay")), "unknown");
    }
}
