//! `latency`: ACK p50/p99/p99.9 at fixed open-loop rates (default 1k, 5k and 10k req/s), one
//! server for all rates, run one after the other. SPEC.md: p99 ≤ 5 ms at 5,000 req/s.
//!
//! Then the judged rate once more against the null server (as `max-ingest` does for
//! throughput): the same generator, connections and requests against a server that only
//! answers. Its tail is the machine's own floor (threads waiting for a CPU the generator shares),
//! printed next to HookRelay's so that a figure can be read for what HookRelay adds. The verdict
//! stays the absolute target.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, NullChild, emit, factory_for, load_config, ms, run_load};
use crate::load::Pace;
use crate::logstats;
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
    /// Threads of the null server.
    #[arg(long, default_value_t = 2)]
    pub null_threads: usize,
    /// Skip the null-server run at the judged rate.
    #[arg(long)]
    pub skip_null: bool,
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
        let (r, log) = logstats::during(Some(bed.server.api()), warmup, run_load(cfg)).await?;
        eprintln!("{}", r.describe());
        let s = r.ack.summary();
        let failed = if r.failed() > 0 {
            format!(", {} failed", r.failed())
        } else {
            String::new()
        };
        let host = r.hiccups.summary();
        parts.push(format!(
            "{}k: {} / {} / {} ms{failed} (host stalled {:.1} % of the time{})",
            rate as f64 / 1000.0,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            host.lost_pct,
            log.map(|l| format!("; {}", l.text())).unwrap_or_default()
        ));
        if rate == JUDGED_RATE && !c.smoke {
            verdict = Verdict::from_bool(s.p99_ms <= JUDGED_P99_MS && r.failed() == 0);
        }
        if c.smoke && r.ok() == 0 {
            verdict = Verdict::Fail;
        }
        per_rate.push(json!({"rate": rate, "ok_per_s": r.ok_per_s(), "ack": s, "failed": r.failed(), "errors": r.errors_line(), "host_stalls": host, "log": log}));
    }
    let endpoints = bed.endpoints.clone();
    bed.stop().await;

    let mut null_json = serde_json::Value::Null;
    let mut null_text = String::new();
    if !a.skip_null && !c.smoke && a.rates.contains(&JUDGED_RATE) {
        let null = NullChild::start(a.null_threads).await?;
        let factory = factory_for(null.addr(), c.mode, &endpoints, c.body_bytes)?;
        let pace = Pace::Open { rate: JUDGED_RATE };
        let mut cfg = load_config(null.addr(), factory, c, pace, duration, a.connections);
        cfg.warmup = warmup;
        cfg.record_acks = false;
        eprintln!(
            "latency: null server, {JUDGED_RATE} req/s for {} s",
            duration.as_secs()
        );
        let r = run_load(cfg).await?;
        drop(null);
        eprintln!("{}", r.describe());
        let s = r.ack.summary();
        let host = r.hiccups.summary();
        null_text = format!(
            "; null server {}k: {} / {} / {} ms (host stalled {:.1} %)",
            JUDGED_RATE as f64 / 1000.0,
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            host.lost_pct
        );
        null_json = json!({"rate": JUDGED_RATE, "ok_per_s": r.ok_per_s(), "ack": s, "failed": r.failed(), "threads": a.null_threads, "host_stalls": host});
    }
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
        result: format!("ACK p50 / p99 / p99.9 — {}{null_text}", parts.join("; ")),
        target: format!("p99 ≤ {JUDGED_P99_MS} ms at {JUDGED_RATE} req/s"),
        verdict,
        metrics: json!({"rates": per_rate, "duration_s": duration.as_secs(), "warmup_s": warmup.as_secs(), "null_server": null_json}),
    })
}
