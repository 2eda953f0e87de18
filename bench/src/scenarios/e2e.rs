//! `e2e`: end-to-end through hookrelay to the bench's receiver.
//!
//! 1. Throughput: ingest as fast as the connections allow (closed loop; or open loop at
//!    `--rate`), then wait until every acknowledged delivery has arrived. Deliveries/s =
//!    delivered / (last arrival − first request): the whole pipeline's rate, ingest and
//!    delivery sharing the machine. The rate while the load ran is reported too.
//! 2. Passthrough: 1,000 req/s open loop; latency = first successful arrival at the receiver −
//!    intended send time of the ingest request.
//!
//! SPEC.md: ≥ 10,000 deliveries/s (aim 20,000); passthrough p95 ≤ 10 ms at 1,000 req/s.
//! `--smoke` judges only that every acknowledged delivery arrived.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, check_delivered, emit, ms, run_load};
use crate::load::Pace;
use crate::report::{Row, Verdict};

const DELIVERIES_PER_S_MIN: f64 = 10_000.0;
const PASSTHROUGH_P95_MS_MAX: f64 = 10.0;

#[derive(Args, Clone, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Throughput phase: open loop at this rate instead of closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Throughput phase length [default: 30; --quick 10; --smoke 5].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Passthrough phase rate, req/s.
    #[arg(long, default_value_t = 1000)]
    pub passthrough_rate: u64,
    /// Passthrough phase length [default: 30; --quick 10; --smoke 5].
    #[arg(long)]
    pub passthrough_s: Option<u64>,
    /// How long to wait for the last deliveries after each phase.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_s: u64,
}

pub async fn run(a: E2eArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &E2eArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let duration = c.duration(a.duration_s, 30, 10);
    let passthrough = c.duration(a.passthrough_s, 30, 10);
    let drain = Duration::from_secs(a.drain_timeout_s);
    let bed = Bed::start(c, BedOptions::default()).await?;
    let book = bed.book().expect("the bed has a receiver").clone();

    // 1. Throughput.
    let pace = a.rate.map_or(Pace::Closed, |rate| Pace::Open { rate });
    eprintln!("e2e: throughput, {pace:?}, {} s", duration.as_secs());
    let cfg = bed.load(c, pace, duration, a.connections)?;
    let tp = run_load(cfg).await?;
    eprintln!("{}", tp.describe());
    let load_end = tp.started + duration;
    let tp_check = check_delivered(&book, &tp.acks, drain).await;
    let (per_s, during_load_per_s) = match tp_check.span {
        Some((_, last)) => {
            let total = last
                .saturating_duration_since(tp.started)
                .as_secs_f64()
                .max(1e-9);
            let in_load = tp
                .acks
                .iter()
                .filter_map(|ack| book.get(&ack.delivery_id).and_then(|x| x.success))
                .filter(|&t| t <= load_end)
                .count();
            (
                tp_check.delivered as f64 / total,
                in_load as f64 / duration.as_secs_f64(),
            )
        }
        None => (0.0, 0.0),
    };

    // 2. Passthrough latency.
    book.clear();
    eprintln!(
        "e2e: passthrough, {} req/s, {} s",
        a.passthrough_rate,
        passthrough.as_secs()
    );
    let cfg = bed.load(
        c,
        Pace::Open {
            rate: a.passthrough_rate,
        },
        passthrough,
        a.connections,
    )?;
    let pt = run_load(cfg).await?;
    eprintln!("{}", pt.describe());
    let pt_check = check_delivered(&book, &pt.acks, drain).await;
    bed.stop().await;

    let pts = pt_check.latency.summary();
    let all_delivered = tp_check.all_delivered()
        && pt_check.all_delivered()
        && tp_check.acked > 0
        && pt_check.acked > 0;
    let verdict = if c.smoke {
        Verdict::from_bool(all_delivered)
    } else {
        Verdict::from_bool(
            all_delivered && per_s >= DELIVERIES_PER_S_MIN && pts.p95_ms <= PASSTHROUGH_P95_MS_MAX,
        )
    };
    let missing: Vec<&String> = tp_check
        .missing_sample
        .iter()
        .chain(&pt_check.missing_sample)
        .collect();
    Ok(Row {
        scenario: if c.smoke {
            "e2e (smoke)".into()
        } else {
            "e2e".into()
        },
        load: format!(
            "{} for {} s, then {} req/s for {} s; {} conns, {}",
            match pace {
                Pace::Closed => "closed loop".to_string(),
                Pace::Open { rate } => format!("{rate} req/s"),
            },
            duration.as_secs(),
            a.passthrough_rate,
            passthrough.as_secs(),
            a.connections,
            c.setup_line()
        ),
        result: format!(
            "{:.0} deliveries/s ({:.0}/s while ingesting {:.0} ACKs/s); passthrough p50 {} / p95 {} / p99 {} ms; delivered {}/{} + {}/{}",
            per_s,
            during_load_per_s,
            tp.ok_per_s(),
            ms(pts.p50_ms),
            ms(pts.p95_ms),
            ms(pts.p99_ms),
            tp_check.delivered,
            tp_check.acked,
            pt_check.delivered,
            pt_check.acked
        ),
        target: if c.smoke {
            "every ACK delivered".into()
        } else {
            "≥ 10,000 deliveries/s; passthrough p95 ≤ 10 ms".into()
        },
        verdict,
        metrics: json!({
            "deliveries_per_s": per_s,
            "deliveries_per_s_during_load": during_load_per_s,
            "ingest_ok_per_s": tp.ok_per_s(),
            "ingest_errors": tp.errors_line(),
            "throughput_e2e_latency": tp_check.latency.summary(),
            "passthrough": pts,
            "passthrough_ack": pt.ack.summary(),
            "acked": tp_check.acked + pt_check.acked,
            "delivered": tp_check.delivered + pt_check.delivered,
            "missing_sample": missing,
            "drain_wait_s": tp_check.waited.as_secs_f64() + pt_check.waited.as_secs_f64(),
        }),
    })
}
