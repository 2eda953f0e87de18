//! `flaky`: the receiver fails 30% of attempts at random (503). Every acknowledged delivery
//! must end `success`, `failed` or `exhausted` (nothing unaccounted), and at least 99.5% must
//! succeed within the retry policy (SPEC.md). Successes are read from the receiver; deliveries
//! the receiver never accepted are looked up with `GET /v1/deliveries/{id}`; a sample of the
//! successes is cross-checked there too.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, Destination, emit, run_load};
use crate::load::Pace;
use crate::receiver::Behaviour;
use crate::report::{Row, Verdict};

const SUCCESS_RATE_MIN: f64 = 0.995;
/// Pending deliveries are looked up through the API only when at most this many remain.
const API_LOOKUPS_MAX: usize = 2000;
/// Successful deliveries cross-checked through the API.
const SUCCESS_SAMPLE: usize = 100;

#[derive(Args, Clone, Debug)]
pub struct FlakyArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Load length [default: 60; --quick 20; --smoke 5].
    #[arg(long)]
    pub duration_s: Option<u64>,
    #[arg(long, default_value_t = 0.3)]
    pub fail_rate: f64,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Retry policy of the endpoint (scaled down from the contract's defaults so a run ends
    /// in minutes; the success probability depends only on max_attempts).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    #[arg(long, default_value_t = 100)]
    pub base_delay_ms: u64,
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    #[arg(long, default_value_t = 2000)]
    pub max_delay_ms: u64,
    /// How long to wait for every delivery to end after the load.
    #[arg(long, default_value_t = 180)]
    pub settle_timeout_s: u64,
}

pub async fn run(a: FlakyArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &FlakyArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let duration = c.duration(a.duration_s, 60, 20);
    let opts = BedOptions {
        destination: Destination::Receiver(Behaviour {
            fail_rate: a.fail_rate,
            ..Behaviour::default()
        }),
        retry: Some(json!({
            "max_attempts": a.max_attempts,
            "base_delay_ms": a.base_delay_ms,
            "factor": a.factor,
            "max_delay_ms": a.max_delay_ms,
            "jitter": 0.2,
        })),
        ..BedOptions::default()
    };
    let bed = Bed::start(c, opts).await?;
    let book = bed.book().expect("the bed has a receiver").clone();
    let cfg = bed.load(c, Pace::Open { rate: a.rate }, duration, a.connections)?;
    let r = run_load(cfg).await?;
    eprintln!("{}", r.describe());

    // Wait until every ACKed delivery is accounted for.
    let api = bed.server.api().clone();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.settle_timeout_s);
    let mut pending: Vec<&str> = r.acks.iter().map(|x| &*x.delivery_id).collect();
    let mut ended_failed: HashSet<String> = HashSet::new();
    let mut api_success = 0u64;
    let mut lookup_errors = 0u64;
    loop {
        pending.retain(|id| {
            !ended_failed.contains(*id) && book.get(id).and_then(|x| x.success).is_none()
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        if pending.len() <= API_LOOKUPS_MAX {
            let mut still = Vec::new();
            for id in pending.drain(..) {
                match api.delivery(&bed.admin_key, id).await {
                    Ok(Some(v)) => match v["status"].as_str() {
                        Some("failed" | "exhausted") => {
                            ended_failed.insert(id.to_string());
                        }
                        // The server recorded a success the receiver has not (an answer lost
                        // after the receiver's 2xx): accounted for.
                        Some("success") if book.get(id).and_then(|x| x.success).is_none() => {
                            api_success += 1;
                            ended_failed.insert(id.to_string());
                        }
                        _ => still.push(id),
                    },
                    Ok(None) => still.push(id),
                    Err(_) => {
                        lookup_errors += 1;
                        still.push(id);
                    }
                }
            }
            pending = still;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settle = t0.elapsed();

    // Cross-check a sample of receiver successes with the server's view.
    let mut sample_mismatch = Vec::new();
    for ack in r
        .acks
        .iter()
        .step_by((r.acks.len() / SUCCESS_SAMPLE).max(1))
        .take(SUCCESS_SAMPLE)
    {
        if book.get(&ack.delivery_id).and_then(|x| x.success).is_none() {
            continue;
        }
        let mut status = String::new();
        // The server records the outcome just after the receiver answers: poll briefly.
        for _ in 0..50 {
            status = match api.delivery(&bed.admin_key, &ack.delivery_id).await {
                Ok(Some(v)) => v["status"].as_str().unwrap_or("?").to_string(),
                Ok(None) => "not_found".into(),
                Err(e) => format!("error: {e}"),
            };
            if status == "success" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if status != "success" {
            sample_mismatch.push(format!("{}: {status}", ack.delivery_id));
        }
    }
    let attempts = book.requests.load(std::sync::atomic::Ordering::Relaxed);
    let failed_on_purpose = book
        .failed_on_purpose
        .load(std::sync::atomic::Ordering::Relaxed);
    bed.stop().await;

    let acked = r.acks.len() as u64;
    let unaccounted = pending.len() as u64;
    let failed_final = ended_failed.len() as u64 - api_success;
    let succeeded = acked - unaccounted - failed_final;
    let success_rate = succeeded as f64 / acked.max(1) as f64;
    let ok = acked > 0 && unaccounted == 0 && sample_mismatch.is_empty();
    let verdict = if c.smoke {
        Verdict::from_bool(ok)
    } else {
        Verdict::from_bool(ok && success_rate >= SUCCESS_RATE_MIN)
    };
    Ok(Row {
        scenario: if c.smoke {
            "flaky (smoke)".into()
        } else {
            "flaky".into()
        },
        load: format!(
            "{} req/s for {} s, receiver fails {:.0}% (503); retry {}× from {} ms ×{} ≤ {} ms; {}",
            a.rate,
            duration.as_secs(),
            a.fail_rate * 100.0,
            a.max_attempts,
            a.base_delay_ms,
            a.factor,
            a.max_delay_ms,
            c.setup_line()
        ),
        result: format!(
            "{:.3}% success ({succeeded}/{acked}), {failed_final} failed/exhausted, {unaccounted} unaccounted; {attempts} attempts ({failed_on_purpose} failed on purpose); settled in {:.1} s{}",
            success_rate * 100.0,
            settle.as_secs_f64(),
            if sample_mismatch.is_empty() {
                String::new()
            } else {
                format!("; {} API mismatches", sample_mismatch.len())
            }
        ),
        target: "≥ 99.5% success; 0 unaccounted".into(),
        verdict,
        metrics: json!({
            "acked": acked,
            "succeeded": succeeded,
            "failed_or_exhausted": failed_final,
            "unaccounted": unaccounted,
            "unaccounted_sample": pending.iter().take(10).collect::<Vec<_>>(),
            "success_rate": success_rate,
            "attempts": attempts,
            "failed_on_purpose": failed_on_purpose,
            "settle_s": settle.as_secs_f64(),
            "api_lookup_errors": lookup_errors,
            "api_sample_mismatch": sample_mismatch,
            "ingest_errors": r.errors_line(),
            "ack": r.ack.summary(),
        }),
    })
}
