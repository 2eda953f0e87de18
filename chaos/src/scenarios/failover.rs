//! failover: A (primary, ack = peer) replicates to B; under load, SIGKILL A, promote B and keep
//! sending to B with the same endpoint ids. Every delivery ACKed by either node must be
//! delivered at least once, every delivery A ACKed must be on B (ack = peer), and A, restarted
//! with its original configuration, must come back as B's replica and catch up (lag 0).
//!
//! B runs `ack = peer` with `degrade_after_ms`: once promoted, its peer (A) is dead, so it must
//! degrade to local acks to keep taking ingest — which it must, or the load against it ACKs
//! nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ledger::{self, Policy};
use crate::load::{Load, percentile_ms};
use crate::pair::{
    Pair, PairOptions, Replication, caught_up, free_addr, ingest_once, next_offsets, not_held,
    operator, promote, replication_status, show_ids, wait_status,
};
use crate::receiver::always_ok;
use crate::scenario::{Ctx, Outcome, Scenario, ScenarioFuture};
use crate::server::{READY_TIMEOUT, problem_lines};

pub const SCENARIO: Scenario = Scenario {
    name: "failover",
    about: "kill -9 the primary (ack = peer) under load, promote the replica, keep sending; the old primary rejoins as replica",
    needs_root: false,
    budget_quick: Duration::from_secs(120),
    budget_full: Duration::from_secs(300),
    run: start,
};

/// B's `degrade_after_ms`: how long after A's death B keeps answering 503 before local acks.
const B_DEGRADE_AFTER_MS: u64 = 1_000;
/// How long the old primary may take to turn replica, and B to bring it level.
const REJOIN_DEADLINE: Duration = Duration::from_secs(30);

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let (la, lb) = (free_addr()?, free_addr()?);
    let mut pair = Pair::start(
        ctx,
        PairOptions {
            a: Replication {
                role: "primary",
                listen: la,
                peer: lb,
                ack: "peer",
                degrade_after_ms: None,
                peer_timeout_ms: Some(2_000),
            },
            b: Replication {
                role: "replica",
                listen: lb,
                peer: la,
                ack: "peer",
                degrade_after_ms: Some(B_DEGRADE_AFTER_MS),
                peer_timeout_ms: Some(1_000),
            },
            endpoints: 4,
            policy: always_ok(),
        },
    )
    .await?;
    let mut out = Outcome::default();
    let (http_a, http_b) = (operator(&pair.a), operator(&pair.b));
    let before = replication_status(&http_b).await?;
    let epoch_before = before["epoch"].as_u64().unwrap_or(0);
    if before["role"] != "replica" {
        out.failures
            .push(format!("B started as replica but reports {before}"));
    }

    // Phase 1: load on A, then kill -9 A mid-load.
    let mut spec = pair.load_spec(&pair.a, &format!("fo-a-{}", ctx.seed));
    spec.concurrency = 16;
    spec.requests_max = 1_000_000;
    spec.duration_max = Duration::from_secs(120);
    let load = Load::start(spec);
    let kill_after_ms = ctx
        .rng
        .range(ctx.pick(1_500, 3_000), ctx.pick(3_000, 8_000));
    tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
    if !pair.a.is_running() {
        out.failures.push(format!(
            "A died on its own under load; stderr tail:\n{}",
            pair.a.stderr_tail(20)
        ));
        return Ok(out);
    }
    pair.a.kill9();
    let stats_a = load.stop().await;
    out.note(format!(
        "A: SIGKILL after {kill_after_ms} ms of load; ingest answers {}; {} ACKed; ACK latency p50 {:.1} ms p99 {:.1} ms",
        stats_a.summary(),
        stats_a.acked.len(),
        percentile_ms(&stats_a.ack_latencies_us, 50.0),
        percentile_ms(&stats_a.ack_latencies_us, 99.0)
    ));
    if stats_a.acked.is_empty() {
        out.failures.push(format!(
            "A (ack = peer, B up) ACKed nothing in {kill_after_ms} ms: {} {:?} {:?}",
            stats_a.summary(),
            stats_a.codes,
            stats_a.examples
        ));
    }

    // Phase 2: promote B, keep sending to it (same endpoints).
    let epoch = promote(&http_b).await?;
    if epoch <= epoch_before {
        out.failures.push(format!(
            "promotion answered epoch {epoch}, not above B's epoch before it ({epoch_before})"
        ));
    }
    let mut spec = pair.load_spec(&pair.b, &format!("fo-b-{}", ctx.seed));
    spec.concurrency = 16;
    spec.requests_max = 1_000_000;
    spec.duration_max = Duration::from_secs(120);
    let load = Load::start(spec);
    let run_b_ms = ctx.pick(3_000, 8_000) + B_DEGRADE_AFTER_MS;
    tokio::time::sleep(Duration::from_millis(run_b_ms)).await;
    let stats_b = load.stop().await;
    let b_status = replication_status(&http_b).await?;
    out.note(format!(
        "B: promoted to epoch {epoch}, {run_b_ms} ms of load; ingest answers {}; {} ACKed; ACK latency p50 {:.1} ms p99 {:.1} ms; then ack {} degraded {}",
        stats_b.summary(),
        stats_b.acked.len(),
        percentile_ms(&stats_b.ack_latencies_us, 50.0),
        percentile_ms(&stats_b.ack_latencies_us, 99.0),
        b_status["ack"],
        b_status["degraded"]
    ));
    // With ack = peer and its peer dead, B may ACK only after degrading to local acks.
    if !stats_b.acked.is_empty() && b_status["ack"] == "peer" && b_status["degraded"] != true {
        out.failures.push(format!(
            "B ACKed {} deliveries with ack = peer while its peer (A) was dead, yet does not \
             report degraded: {b_status}",
            stats_b.acked.len()
        ));
    }
    if stats_b.acked.is_empty() {
        out.failures.push(format!(
            "the promoted B ACKed nothing in {run_b_ms} ms (ack = peer, degrade_after_ms = \
             {B_DEGRADE_AFTER_MS}, peer dead): {} codes {:?} examples {:?}",
            stats_b.summary(),
            stats_b.codes,
            stats_b.examples
        ));
    }

    // Every delivery A ACKed with ack = peer was on B's disk: B must know it.
    let api_b = pair.api_b();
    let unknown = not_held(&api_b, &stats_a.acked, 5).await;
    if !unknown.is_empty() {
        let seen = pair.receiver.seen();
        let delivered = unknown
            .iter()
            .filter(|(id, _)| seen.get(id).is_some_and(|s| s.successes > 0))
            .count();
        out.failures.push(format!(
            "ACKed by A with ack = peer but unknown to the promoted B: {} ({delivered} of them A had \
             already delivered)",
            show_ids(&unknown)
        ));
    }

    let mut acked: BTreeSet<String> = stats_a.acked.clone();
    acked.extend(stats_b.acked.iter().cloned());
    let tally = ledger::settle(
        &api_b,
        &acked,
        &pair.receiver,
        pair.b.data_dir(),
        Duration::from_secs(ctx.pick(40, 90)),
        Policy::default(),
    )
    .await;

    // Phase 3: A, restarted with its original config, must rejoin as B's replica.
    pair.a.start()?;
    pair.a.wait_healthy(READY_TIMEOUT).await?;
    match wait_status(&http_a, "A turns replica", REJOIN_DEADLINE, |v| {
        v["role"] == "replica"
    })
    .await
    {
        Ok(v) => {
            if v["epoch"].as_u64() != Some(epoch) {
                out.note(format!(
                    "A as replica reports epoch {} (B's is {epoch})",
                    v["epoch"]
                ));
            }
        }
        Err(e) => out.failures.push(format!(
            "the old primary did not rejoin as replica: {e:#}; A stderr tail:\n{}",
            pair.a.stderr_tail(10)
        )),
    }
    match wait_status(
        &http_b,
        "B's lag to A reaches 0",
        REJOIN_DEADLINE,
        caught_up,
    )
    .await
    {
        Ok(b_status) => {
            let a_status = replication_status(&http_a).await?;
            let (b_offsets, a_offsets) = (next_offsets(&b_status), next_offsets(&a_status));
            if a_offsets != b_offsets {
                out.failures.push(format!(
                    "after catch-up A's copy ends at {a_offsets:?}, B's log at {b_offsets:?}"
                ));
            } else {
                out.note(format!(
                    "A rejoined as replica; shard ends {b_offsets:?} on both"
                ));
            }
        }
        Err(e) => out.failures.push(format!("{e:#}")),
    }
    match ingest_once(&pair.a, &pair.endpoints[0], &format!("fo-probe-{}", ctx.seed)).await {
        Ok((503, body)) if body.contains("\"unavailable\"") => {}
        Ok((status, body)) => out.failures.push(format!(
            "ingest on the rejoined A (a replica) answered {status} {body}, expected 503 unavailable"
        )),
        Err(e) => out.failures.push(format!("ingest on the rejoined A: {e:#}")),
    }

    if tally.duplicated > 0 {
        out.note(format!(
            "{} deliveries reached the receiver more than once (at least once, as documented)",
            tally.duplicated
        ));
    }
    for (name, node) in [("A", &pair.a), ("B", &pair.b)] {
        for line in problem_lines(&node.stderr()).iter().take(3) {
            out.note(format!("{name} log: {line}"));
        }
    }
    out.tally = tally;
    Ok(out)
}
