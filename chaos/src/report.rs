//! The table: one row per scenario, and the notes under it.

use std::fmt::Write;
use std::time::Duration;

use crate::scenario::{Outcome, Verdict};

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub acked: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub verdict: Verdict,
    pub seconds: f64,
}

impl Row {
    pub fn from_outcome(name: &str, o: &Outcome, elapsed: Duration) -> Self {
        Self {
            scenario: name.to_string(),
            acked: o.tally.acked,
            delivered: o.tally.delivered,
            failed: o.tally.failed,
            dead_lettered: o.tally.dead_lettered,
            lost: o.tally.lost,
            duplicated: o.tally.duplicated,
            verdict: o.verdict(),
            seconds: elapsed.as_secs_f64(),
        }
    }
}

const HEADER: &str =
    "scenario          ACKed  delivered  failed  dead-lettered  lost  duplicated  verdict  time";

fn line(r: &Row) -> String {
    format!(
        "{:<16} {:>6} {:>10} {:>7} {:>14} {:>5} {:>11}  {:<7} {:>4.0}s",
        r.scenario,
        r.acked,
        r.delivered,
        r.failed,
        r.dead_lettered,
        r.lost,
        r.duplicated,
        r.verdict.label(),
        r.seconds
    )
}

/// The whole table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER}");
    for r in rows {
        let _ = writeln!(s, "{}", line(r));
    }
    s
}

/// A scenario's row and everything it found, right after it ran.
pub fn print_outcome(row: &Row, o: &Outcome) {
    println!("{HEADER}\n{}", line(row));
    if let Some(why) = &o.skipped {
        println!("   skipped: {why}");
    }
    for f in o.tally.problems.iter().chain(&o.failures) {
        println!("   FAIL: {f}");
    }
    for g in &o.gaps {
        println!("   GAP: {g}");
    }
    for n in o.tally.notes.iter().chain(&o.notes) {
        println!("   - {n}");
    }
}
