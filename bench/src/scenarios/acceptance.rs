//! `acceptance`: 1,000 signed (stripe) req/s for 10 minutes (`--quick`: 60 s), open loop; passes
//! if the ACK p95 is at most 250 ms (SPEC.md's floor), almost nothing failed, and every
//! acknowledged delivery reached the receiver. `--smoke` judges only completion and delivery.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, check_delivered, emit, ms, run_load};
use crate::load::Pace;
use crate::logstats;
use crate::report::{Row, Verdict};

/// How long the receiver may still be waited for after the load.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// Failed requests tolerated, as a fraction of all.
const FAILED_FRACTION_MAX: f64 = 0.001;

#[derive(Args, Clone, Debug)]
pub struct AcceptanceArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Run length [default: 600; --quick 60; --smoke 5].
    #[arg(long)]
    pub duration_s: Option<u64>,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 250.0)]
    pub p95_max_ms: f64,
}

pub async fn run(a: AcceptanceArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &AcceptanceArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let duration = c.duration(a.duration_s, 600, 60);
    let bed = Bed::start(c, BedOptions::default()).await?;
    let cfg = bed.load(c, Pace::Open { rate: a.rate }, duration, a.connections)?;
    // The log's figures (slowest commit, worst shard lag) tell a disk stall from a shard's
    // when the tail is long.
    let (r, log) = logstats::during(Some(bed.server.api()), Duration::ZERO, run_load(cfg)).await?;
    let host = r.hiccups.summary();
    let book = bed.book().expect("the bed has a receiver").clone();
    let d = check_delivered(&book, &r.acks, DELIVERY_WAIT).await;
    bed.stop().await;

    let s = r.ack.summary();
    let sent = r.ok() + r.failed();
    let failed_fraction = r.failed() as f64 / sent.max(1) as f64;
    let delivered_ok = d.all_delivered() && d.acked > 0;
    let verdict = if c.smoke {
        Verdict::from_bool(delivered_ok && r.failed() == 0)
    } else {
        Verdict::from_bool(
            s.p95_ms <= a.p95_max_ms && failed_fraction <= FAILED_FRACTION_MAX && delivered_ok,
        )
    };
    Ok(Row {
        scenario: if c.smoke {
            "acceptance (smoke)".into()
        } else {
            "acceptance".into()
        },
        load: format!(
            "{} req/s open loop, {} s, {}",
            a.rate,
            duration.as_secs(),
            c.setup_line()
        ),
        result: format!(
            "ACK p50 {} / p95 {} / p99 {} / max {} ms; {} ACKed, {} failed ({}); {}/{} delivered; host stalled {:.1} % of the time{}",
            ms(s.p50_ms),
            ms(s.p95_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
            r.ok(),
            r.failed(),
            r.errors_line(),
            d.delivered,
            d.acked,
            host.lost_pct,
            log.map(|l| format!("; {}", l.text())).unwrap_or_default()
        ),
        target: if c.smoke {
            "completes; every ACK delivered".into()
        } else {
            format!("p95 ≤ {} ms", a.p95_max_ms)
        },
        verdict,
        metrics: json!({
            "rate": a.rate,
            "duration_s": duration.as_secs(),
            "ack": s,
            "ok": r.ok(),
            "failed": r.failed(),
            "errors": r.errors_line(),
            "acked": d.acked,
            "delivered": d.delivered,
            "missing_sample": d.missing_sample,
            "e2e": d.latency.summary(),
            "host_stalls": host,
            "log": log,
        }),
    })
}
