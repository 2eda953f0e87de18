//! `latency`: ACK p50/p99/p99.9 at fixed open-loop rates (default 1k, 5k and 10k req/s), one
//! server for all rates, run one after the other. SPEC.md: p99 ≤ 5 ms at 5,000 req/s.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, emit, ms, run_load};
use crate::load::Pace;
use crate::report::{Row, Verdict};

/// The rate the SPEC.md p99 target is stated at, and the target.
const JUDGED_RATE: u64 = 5000;
const JUDGED_P99_MS: f64 = 5.0;

#[derive(Args, Clone, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rates to measure, req/s.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub rates: Vec<u64>,
    /// Length of each rate's run [default: 30; --quick 10; --smoke 3].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Left out of the figures at the start of each rate.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
}

pub async fn run(a: LatencyArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &LatencyArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let duration = c.duration(a.duration_s, 30, 10).min(if c.smoke {
        Duration::from_secs(3)
    } else {
        Duration::MAX
    });
    let warmup = Duration::from_secs(a.warmup_s).min(duration / 3);
    let bed = Bed::start(c, BedOptions::default()).await?;
    let mut parts = Vec::new();
    let mut per_rate = Vec::new();
    let mut verdict = Verdict::Info;
    for &rate in &a.rates {
        let mut cfg = bed.load(c, Pace::Open { rate }, duration, a.connections)?;
        cfg.warmup = warmup;
        cfg.record_acks = false;
        eprintln!("latency: {rate} req/s for {} s", duration.as_secs());
        let r = run_load(cfg).await?;
        eprintln!("{}", r.describe());
        let s = r.ack.summary();
        let failed = if r.failed() > 0 {
            format!(", {} failed", r.failed())
        } else {
            String::new()
        };
        parts.push(format!(
            "{}k: {} / {} / {} ms{failed}",
            rate as f64 / 1000.0,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms)
        ));
        if rate == JUDGED_RATE && !c.smoke {
            verdict = Verdict::from_bool(s.p99_ms <= JUDGED_P99_MS && r.failed() == 0);
        }
        if c.smoke && r.ok() == 0 {
            verdict = Verdict::Fail;
        }
        per_rate.push(json!({"rate": rate, "ok_per_s": r.ok_per_s(), "ack": s, "failed": r.failed(), "errors": r.errors_line()}));
    }
    bed.stop().await;
    Ok(Row {
        scenario: if c.smoke {
            "latency (smoke)".into()
        } else {
            "latency".into()
        },
        load: format!(
            "open loop {} req/s, {} s each (+{} s warm-up), {} conns, {}",
            a.rates
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            (duration - warmup).as_secs(),
            warmup.as_secs(),
            a.connections,
            c.setup_line()
        ),
        result: format!("ACK p50 / p99 / p99.9 — {}", parts.join("; ")),
        target: format!("p99 ≤ {JUDGED_P99_MS} ms at {JUDGED_RATE} req/s"),
        verdict,
        metrics: json!({"rates": per_rate, "duration_s": duration.as_secs(), "warmup_s": warmup.as_secs()}),
    })
}
