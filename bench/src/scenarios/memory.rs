//! `memory`: the server's resident memory (VmRSS from /proc/<pid>/status) with N stored
//! deliveries, with 100×N, after a restart with 100×N, and with a backlog of deliveries
//! queued for a dead receiver. SPEC.md: memory independent of retained history (10M stored
//! deliveries cost no more than 100k, apart from in-flight work). Issue defaults: 100k vs 10M,
//! backlog 5M; `--quick` and `--smoke` scale down, and every size is a flag.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{Bed, BedOptions, Common, Destination, emit, factory_for, load_config, run_load};
use crate::load::Pace;
use crate::mgmt::EndpointInfo;
use crate::receiver::Behaviour;
use crate::report::{Row, Verdict};
use crate::server_proc::{READY_TIMEOUT, Rss};

/// Bound on one ingest phase.
const PHASE_TIME_MAX: Duration = Duration::from_secs(4 * 3600);
/// Bound on waiting for the receiver to catch up after a phase.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(600);
/// Quiet time before the "busy" RSS sample: what a burst leaves resident.
const SETTLE: Duration = Duration::from_secs(3);
/// Quiet time before the "at rest" sample, the one judged: longer than the engine's
/// `RELEASE_MEMORY_EVERY_MS` (10 s), after which the pages a burst touched in the mmap'd
/// segments, state table and index have been handed back. The busy sample holds the last
/// seconds' working set — proportional to the ingest rate, not to the history kept.
const SETTLE_REST: Duration = Duration::from_secs(13);
/// Pass: RSS with 100×N at most this factor of RSS with N, or this much more, whichever is larger.
const GROWTH_FACTOR_MAX: f64 = 1.25;
const GROWTH_MIB_MAX: f64 = 64.0;

#[derive(Args, Clone, Debug)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Stored deliveries of the first measurement [default: 100000; --quick 10000; --smoke 1000].
    #[arg(long)]
    pub small: Option<u64>,
    /// Stored deliveries of the second measurement [default: 100 × small; --smoke 10 × small].
    #[arg(long)]
    pub large: Option<u64>,
    /// Deliveries queued for a dead receiver [default: 50 × small; --smoke 5 × small].
    #[arg(long)]
    pub backlog: Option<u64>,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

pub async fn run(a: MemoryArgs) -> anyhow::Result<Verdict> {
    let row = measure(&a).await?;
    emit(&a.common, &row)
}

pub async fn measure(a: &MemoryArgs) -> anyhow::Result<Row> {
    let c = &a.common;
    let small = a.small.unwrap_or(if c.smoke {
        1000
    } else if c.quick {
        10_000
    } else {
        100_000
    });
    // Smoke only checks that the phases run: 10× instead of 100×.
    let large = a
        .large
        .unwrap_or(small * if c.smoke { 10 } else { 100 })
        .max(small);
    let backlog = a.backlog.unwrap_or(small * if c.smoke { 5 } else { 50 });
    let opts = BedOptions {
        destination: Destination::Receiver(Behaviour {
            record_ids: false,
            ..Behaviour::default()
        }),
        ..BedOptions::default()
    };
    let mut bed = Bed::start(c, opts).await?;
    let rss0 = bed.server.rss()?;
    let endpoints = bed.endpoints.clone();

    let mut stored = ingest(&bed, c, &endpoints, small, a.connections, true).await?;
    let (busy_small, rss_small) = settle_rss(&bed).await?;
    eprintln!(
        "memory: {stored} stored → busy {}, at rest {}",
        busy_small.text(),
        rss_small.text()
    );
    stored += ingest(&bed, c, &endpoints, large - small, a.connections, true).await?;
    let (busy_large, rss_large) = settle_rss(&bed).await?;
    eprintln!(
        "memory: {stored} stored → busy {}, at rest {}",
        busy_large.text(),
        rss_large.text()
    );

    bed.server.kill9();
    bed.server.spawn()?;
    let ready = bed.server.wait_ready(READY_TIMEOUT).await?;
    let (_, rss_restart) = settle_rss(&bed).await?;
    eprintln!(
        "memory: restarted with {stored} stored in {:.2} s → {}",
        ready.as_secs_f64(),
        rss_restart.text()
    );

    let dead = bed
        .add_endpoint(&BedOptions {
            destination: Destination::Dead,
            retry: Some(json!({"max_attempts": 10, "base_delay_ms": 3_600_000, "factor": 1.0, "max_delay_ms": 3_600_000, "jitter": 0.0})),
            ..BedOptions::default()
        })
        .await?;
    let queued = ingest(&bed, c, &[dead], backlog, a.connections, false).await?;
    let (_, rss_backlog) = settle_rss(&bed).await?;
    eprintln!("memory: + backlog of {queued} → {}", rss_backlog.text());
    let data_bytes = bed.server.data_bytes();
    bed.stop().await;

    // Judged on VmRSS, as SPEC.md says "resident memory"; the anonymous part is shown beside
    // it because mmapped log segments count in VmRSS while costing only page cache.
    let mib = |kib: u64| kib as f64 / 1024.0;
    let allowed = (mib(rss_small.total_kib) * GROWTH_FACTOR_MAX)
        .max(mib(rss_small.total_kib) + GROWTH_MIB_MAX);
    let bounded = mib(rss_large.total_kib) <= allowed && mib(rss_restart.total_kib) <= allowed;
    let verdict = if c.smoke {
        Verdict::from_bool(stored > 0)
    } else {
        Verdict::from_bool(bounded)
    };
    // Signed: the RSS with the backlog can be below the RSS right after the restart (pages the
    // recovery touched and the allocator gave back), and a clamped 0 would hide that.
    let per_backlog = (rss_backlog.total_kib as f64 - rss_restart.total_kib as f64) * 1024.0
        / queued.max(1) as f64;
    Ok(Row {
        scenario: if c.smoke {
            "memory (smoke)".into()
        } else {
            "memory".into()
        },
        load: format!(
            "{small} then {large} delivered and stored, restart, then {backlog} queued for a dead receiver; {}",
            c.setup_line()
        ),
        result: format!(
            "RSS at rest (busy 3 s after the burst): idle {}; {small} stored: {} ({}); {large} stored: {} ({}); after restart: {}; + backlog {queued}: {} ({} B/queued delivery vs after restart); data {:.1} GiB",
            rss0.text(),
            rss_small.text(),
            busy_small.text(),
            rss_large.text(),
            busy_large.text(),
            rss_restart.text(),
            rss_backlog.text(),
            signed_whole(per_backlog),
            data_bytes as f64 / (1u64 << 30) as f64
        ),
        target: "RSS(100×N) ≈ RSS(N) (≤ ×1.25 or +64 MiB)".into(),
        verdict,
        metrics: json!({
            "small": small, "large": large, "backlog": queued,
            "rss": {"idle": rss0, "small": rss_small, "large": rss_large, "restart": rss_restart, "backlog": rss_backlog},
            "rss_busy": {"small": busy_small, "large": busy_large},
            "restart_ready_s": ready.as_secs_f64(),
            "backlog_bytes_per_delivery": per_backlog,
            "data_bytes": data_bytes,
        }),
    })
}

/// Ingests `count` deliveries to `endpoints` (closed loop); with `wait_delivered`, waits until
/// the receiver has accepted as many. Answers how many were acknowledged.
async fn ingest(
    bed: &Bed,
    c: &Common,
    endpoints: &[EndpointInfo],
    count: u64,
    connections: usize,
    wait_delivered: bool,
) -> anyhow::Result<u64> {
    if count == 0 {
        return Ok(0);
    }
    let book = bed.book().expect("the bed has a receiver").clone();
    let before = book.succeeded.load(Ordering::Relaxed);
    let factory = factory_for(bed.server.addr(), bed.mode, endpoints, bed.body_bytes)?;
    let mut cfg = load_config(
        bed.server.addr(),
        factory,
        c,
        Pace::Closed,
        PHASE_TIME_MAX,
        connections,
    );
    cfg.max_requests = Some(count);
    cfg.record_acks = false;
    cfg.progress = Some(Duration::from_secs(10));
    let r = run_load(cfg).await?;
    anyhow::ensure!(r.ok_total > 0, "no ingest succeeded: {}", r.errors_line());
    if wait_delivered {
        let t0 = Instant::now();
        while book.succeeded.load(Ordering::Relaxed) - before < r.ok_total {
            anyhow::ensure!(
                t0.elapsed() < DELIVERY_WAIT_MAX,
                "only {} of {} deliveries arrived within {DELIVERY_WAIT_MAX:?}",
                book.succeeded.load(Ordering::Relaxed) - before,
                r.ok_total
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(r.ok_total)
}

/// RSS 3 s after a phase ("busy") and after the engine's memory release ("at rest").
async fn settle_rss(bed: &Bed) -> anyhow::Result<(Rss, Rss)> {
    tokio::time::sleep(SETTLE).await;
    let busy = bed.server.rss()?;
    tokio::time::sleep(SETTLE_REST - SETTLE).await;
    Ok((busy, bed.server.rss()?))
}

/// `x` rounded to a whole number with its sign: "+5", "-2", and "+0" for anything that rounds
/// to zero (a plain `{:+.0}` prints "-0" for -0.3).
fn signed_whole(x: f64) -> String {
    // Adding +0.0 turns a -0.0 into +0.0.
    let rounded = x.round() + 0.0;
    format!("{rounded:+.0}")
}

#[cfg(test)]
mod tests {
    use super::signed_whole;

    #[test]
    fn signed_whole_never_prints_minus_zero() {
        assert_eq!(signed_whole(-0.3), "+0");
        assert_eq!(signed_whole(-0.0), "+0");
        assert_eq!(signed_whole(0.4), "+0");
        assert_eq!(signed_whole(-1.6), "-2");
        assert_eq!(signed_whole(5.2), "+5");
    }
}
