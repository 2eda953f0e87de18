//! `recovery`: fill the log (~1 GiB by default) by ingesting toward a dead receiver, kill -9
//! the server, restart it on the same data dir, and measure the time from the restart to the
//! first 200 on `/readyz`. A sample of deliveries acknowledged before the kill must still be
//! there afterwards. SPEC.md: back to ready in ≤ 5 s with 1 GiB of log.
//!
//! "Written" counts the acknowledged requests' bytes (head and body), which the log holds at
//! least once; the data dir's size is reported too but not used to stop, since segments may
//! be preallocated (an empty data dir can already weigh tens of MiB).

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, Destination, emit, run_load};
use crate::load::{Ack, Pace};
use crate::report::{Row, Verdict};
use crate::server_proc::READY_TIMEOUT;

const READY_S_MAX: f64 = 5.0;
/// Load runs in chunks this long, checking the data dir's size between them.
const CHUNK: Duration = Duration::from_secs(5);
/// Bound on the filling phase.
const FILL_TIME_MAX: Duration = Duration::from_secs(1800);
/// Acknowledged deliveries looked up after the restart.
const SAMPLE: usize = 50;

#[derive(Args, Clone, Debug)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Log to write before the kill [default: 1024; --quick 256; --smoke 16].
    #[arg(long)]
    pub size_mib: Option<u64>,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

pub async fn run(a: RecoveryArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &RecoveryArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let size_mib = a.size_mib.unwrap_or(if c.smoke {
        16
    } else if c.quick {
        256
    } else {
        1024
    });
    let target_bytes = size_mib << 20;
    let opts = BedOptions {
        destination: Destination::Dead,
        // One attempt, then an hour's wait: the deliveries stay queued in the log.
        retry: Some(
            json!({"max_attempts": 10, "base_delay_ms": 3_600_000, "factor": 1.0, "max_delay_ms": 3_600_000, "jitter": 0.0}),
        ),
        ..BedOptions::default()
    };
    let mut bed = Bed::start(c, opts).await?;
    let request_bytes = bed.factory(&bed.endpoints)?.request_bytes() as u64;
    let fill_t0 = Instant::now();
    let mut acked = 0u64;
    let mut sample: Vec<Ack> = Vec::new();
    while acked * request_bytes < target_bytes {
        anyhow::ensure!(
            fill_t0.elapsed() < FILL_TIME_MAX,
            "the log did not reach {size_mib} MiB within {FILL_TIME_MAX:?}"
        );
        let mut cfg = bed.load(c, Pace::Closed, CHUNK, a.connections)?;
        cfg.max_requests = Some((target_bytes - acked * request_bytes).div_ceil(request_bytes));
        let r = run_load(cfg).await?;
        anyhow::ensure!(
            r.ok_total > 0,
            "no ingest succeeded while filling the log: {}",
            r.errors_line()
        );
        acked += r.ok_total;
        // Keep a spread of acks from every chunk, in a bounded sample.
        let step = (r.acks.len() / SAMPLE).max(1);
        sample.extend(r.acks.iter().step_by(step).take(SAMPLE).cloned());
        eprintln!(
            "recovery: {} MiB of {size_mib} MiB written ({acked} deliveries, {:.0}/s; data dir {} MiB)",
            (acked * request_bytes) >> 20,
            r.ok_per_s(),
            bed.server.data_bytes() >> 20
        );
    }
    let fill = fill_t0.elapsed();
    let bytes = bed.server.data_bytes();
    let step = (sample.len() / SAMPLE).max(1);
    let sample: Vec<Ack> = sample.into_iter().step_by(step).take(SAMPLE).collect();

    bed.server.kill9();
    let restart_t0 = Instant::now();
    bed.server.spawn()?;
    let ready = bed.server.wait_ready(READY_TIMEOUT).await;
    let ready = match ready {
        Ok(_) => restart_t0.elapsed(),
        Err(e) => {
            bed.stop().await;
            return Err(e.context("restart after kill -9"));
        }
    };
    let mut missing = Vec::new();
    for ack in &sample {
        match bed
            .server
            .api()
            .delivery(&bed.admin_key, &ack.delivery_id)
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(ack.delivery_id.to_string()),
            Err(e) => missing.push(format!("{}: {e}", ack.delivery_id)),
        }
    }
    bed.stop().await;

    let ready_s = ready.as_secs_f64();
    let verdict = if c.smoke {
        Verdict::from_bool(missing.is_empty())
    } else {
        Verdict::from_bool(missing.is_empty() && ready_s <= READY_S_MAX)
    };
    Ok(Row {
        scenario: if c.smoke {
            "recovery (smoke)".into()
        } else {
            "recovery".into()
        },
        load: format!(
            "{} MiB ingested ({acked} deliveries queued for a dead receiver, in {:.0} s; data dir {} MiB), kill -9, restart; {}",
            (acked * request_bytes) >> 20,
            fill.as_secs_f64(),
            bytes >> 20,
            c.setup_line()
        ),
        result: format!(
            "ready in {ready_s:.2} s; {}/{} sampled ACKed deliveries found after restart",
            sample.len() - missing.len(),
            sample.len()
        ),
        target: "≤ 5 s with 1 GiB".into(),
        verdict,
        metrics: json!({
            "data_bytes": bytes,
            "ingested_bytes": acked * request_bytes,
            "deliveries": acked,
            "fill_s": fill.as_secs_f64(),
            "ready_s": ready_s,
            "sampled": sample.len(),
            "missing": missing,
        }),
    })
}
