//! slow-disk: every fsync/fdatasync of the server stalls (an LD_PRELOAD shim compiled by the
//! suite; the log runs on its portable pwrite + fdatasync backend because io_uring fsyncs do
//! not go through libc). ACK latency must rise by at least the stall — proof that an ACK waits
//! for its fsync — nothing may be lost, and a flood of large requests must meet back-pressure
//! (503/429) or bounded latency rather than an unbounded queue. Reports latency, answers and RSS.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::ledger::Policy;
use crate::load::{Load, LoadStats, percentile_ms};
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;
use crate::shim::Shim;

pub const SCENARIO: Scenario = Scenario {
    name: "slow-disk",
    about: "fsync stalls (LD_PRELOAD shim, portable log I/O): ACK latency rises, nothing lost, bounded queues",
    needs_root: false,
    budget_quick: Duration::from_secs(90),
    budget_full: Duration::from_secs(240),
    run: start,
};

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

struct Phase {
    stats: LoadStats,
    fsyncs: i64,
    rss_peak_kib: u64,
    secs: f64,
}

impl Phase {
    fn describe(&self) -> String {
        format!(
            "{:.0} ACK/s, ACK p50 {:.1} ms p99 {:.1} ms max {:.1} ms, answers {}, {} fsyncs, RSS peak {} MiB",
            self.stats.acked.len() as f64 / self.secs.max(0.001),
            percentile_ms(&self.stats.ack_latencies_us, 50.0),
            percentile_ms(&self.stats.ack_latencies_us, 99.0),
            percentile_ms(&self.stats.ack_latencies_us, 100.0),
            self.stats.summary(),
            self.fsyncs,
            self.rss_peak_kib >> 10
        )
    }
}

async fn phase(
    rig: &Rig,
    shim: &Shim,
    tag: String,
    concurrency: usize,
    body_bytes: usize,
    secs: u64,
) -> Phase {
    let mut spec = rig.load_spec(&tag);
    spec.concurrency = concurrency;
    spec.body_bytes = body_bytes;
    spec.requests_max = 1_000_000;
    spec.duration_max = Duration::from_secs(secs);
    let fsyncs_before = shim.fsync_calls();
    let started = Instant::now();
    let load = Load::start(spec);
    let mut rss_peak_kib = 0;
    // Bounded: the load ends by its duration; the extra second covers answers in flight.
    while !load.is_done() && started.elapsed() < Duration::from_secs(secs + 15) {
        rss_peak_kib = rss_peak_kib.max(rig.server.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = load.stop().await;
    Phase {
        stats,
        fsyncs: shim.fsync_calls() - fsyncs_before,
        rss_peak_kib,
        secs: started.elapsed().as_secs_f64(),
    }
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let shim = match Shim::build(&ctx.dir) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Outcome::skip(format!(
                "needs a C compiler for the shim: {e:#}"
            )));
        }
    };
    let mut env = shim.env();
    env.push(("HOOKRELAY_LOG_IO".into(), "portable".into()));
    let mut rig = Rig::start(
        ctx,
        RigOptions {
            env,
            ..RigOptions::default()
        },
    )
    .await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    let seed = ctx.seed;
    let secs = ctx.pick(4, 10);

    let base = phase(&rig, &shim, format!("sd-{seed}-base"), 16, 512, secs).await;
    out.note(format!("fsync +0 ms: {}", base.describe()));
    acked.extend(base.stats.acked.iter().cloned());

    let stall_ms: u64 = ctx.pick(50, 100);
    shim.set_fsync_delay_us((stall_ms * 1000) as i64)?;
    let slow = phase(&rig, &shim, format!("sd-{seed}-slow"), 16, 512, secs).await;
    out.note(format!("fsync +{stall_ms} ms: {}", slow.describe()));
    acked.extend(slow.stats.acked.iter().cloned());
    let p50 = percentile_ms(&slow.stats.ack_latencies_us, 50.0);
    if slow.fsyncs == 0 {
        out.note("the shim saw no fsync: the log's fsyncs did not go through libc (io_uring?) — latency check skipped");
    } else if !slow.stats.ack_latencies_us.is_empty() && p50 < stall_ms as f64 * 0.9 {
        out.failures.push(format!(
            "ACK p50 {p50:.1} ms is below the {stall_ms} ms fsync stall: ACKs do not wait for their fsync"
        ));
    }

    let flood_stall_ms: u64 = ctx.pick(200, 500);
    let flood_conc = ctx.pick(128, 256);
    shim.set_fsync_delay_us((flood_stall_ms * 1000) as i64)?;
    let flood = phase(
        &rig,
        &shim,
        format!("sd-{seed}-flood"),
        flood_conc,
        16 * 1024,
        secs,
    )
    .await;
    out.note(format!(
        "flood, fsync +{flood_stall_ms} ms, {flood_conc} senders × 16 KiB: {}",
        flood.describe()
    ));
    acked.extend(flood.stats.acked.iter().cloned());
    let pushed_back = flood.stats.count(503) + flood.stats.count(429);
    let max_ms = percentile_ms(&flood.stats.answer_latencies_us, 100.0);
    if flood.stats.errors > 0 && pushed_back == 0 {
        out.gaps.push(format!(
            "under the flood {} requests got no answer within the client's 10 s and none were refused with 503/429: queueing, not back-pressure",
            flood.stats.errors
        ));
    } else {
        out.note(format!(
            "flood: {pushed_back} answered 503/429, slowest answer {max_ms:.0} ms (group commit: {} ACKs over {} fsyncs)",
            flood.stats.acked.len(),
            flood.fsyncs
        ));
    }
    if !rig.server.is_running() {
        out.failures.push(format!(
            "the server died under slow fsyncs; stderr tail:\n{}",
            rig.server.stderr_tail(20)
        ));
    }
    shim.set_fsync_delay_us(0)?;
    let tally = rig
        .settle(
            &acked,
            Duration::from_secs(ctx.pick(40, 60)),
            Policy::default(),
        )
        .await;
    for line in problem_lines(&rig.server.stderr()).iter().take(5) {
        out.note(format!(
            "server log: {}",
            line.chars().take(300).collect::<String>()
        ));
    }
    out.tally = tally;
    Ok(out)
}
