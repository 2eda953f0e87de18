//! partition: A (primary, ack = peer) streams to B through a TCP proxy the suite controls.
//! Under load the proxy cuts the link for a few seconds (in the full run also a silent
//! "blackhole" round), then heals it; ingest meanwhile answers 503 `unavailable` after
//! `peer_timeout_ms` (not ACKed — fine). After the heal B must catch up (lag 0), and B must hold
//! every delivery A ACKed: A is killed, B promoted, and `GET /v1/deliveries/{id}` on B must
//! answer 200 for every ACKed id (a 404 is a loss). Every ACKed delivery must also reach the
//! receiver.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;

use crate::ledger::{self, Policy};
use crate::load::{Load, LoadStats, percentile_ms};
use crate::pair::{
    Pair, PairOptions, Replication, all_connected, caught_up, free_addr, not_held, operator,
    promote, show_ids, wait_status,
};
use crate::proxy::Proxy;
use crate::receiver::always_ok;
use crate::scenario::{Ctx, Outcome, Scenario, ScenarioFuture};
use crate::server::{READY_TIMEOUT, problem_lines};

pub const SCENARIO: Scenario = Scenario {
    name: "partition",
    about: "cut (and blackhole) the replication link under load with ack = peer, heal; nothing ACKed only on one node",
    needs_root: false,
    budget_quick: Duration::from_secs(120),
    budget_full: Duration::from_secs(300),
    run: start,
};

/// A's `peer_timeout_ms`: ingest during a cut answers 503 after this.
const PEER_TIMEOUT_MS: u64 = 1_000;
/// How long the link may take to come back, and B to catch up, after a heal.
const HEAL_DEADLINE: Duration = Duration::from_secs(30);

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let (la, lb) = (free_addr()?, free_addr()?);
    let proxy = Proxy::start(lb).await?;
    let mut pair = Pair::start(
        ctx,
        PairOptions {
            a: Replication {
                role: "primary",
                listen: la,
                peer: proxy.addr(),
                ack: "peer",
                degrade_after_ms: None,
                peer_timeout_ms: Some(PEER_TIMEOUT_MS),
            },
            b: Replication {
                role: "replica",
                listen: lb,
                peer: la,
                ack: "local",
                degrade_after_ms: None,
                peer_timeout_ms: None,
            },
            endpoints: 4,
            policy: always_ok(),
        },
    )
    .await?;
    let mut out = Outcome::default();
    let http_a = operator(&pair.a);

    let mut spec = pair.load_spec(&pair.a, &format!("part-{}", ctx.seed));
    spec.concurrency = 16;
    spec.requests_max = 1_000_000;
    spec.duration_max = Duration::from_secs(240);
    let load = Load::start(spec);
    tokio::time::sleep(Duration::from_millis(ctx.rng.range(1_000, 2_000))).await;

    // Full runs alternate a cut (connections reset) with a blackhole (nothing crosses).
    let rounds = ctx.pick(1, 3);
    for round in 0..rounds {
        let blackhole = round % 2 == 1;
        let kind = if blackhole { "blackhole" } else { "cut" };
        let cut_ms = ctx.rng.range(2_000, ctx.pick(3_500, 6_000));
        let before = load.snapshot();
        if blackhole {
            proxy.blackhole();
        } else {
            proxy.cut();
        }
        tokio::time::sleep(Duration::from_millis(cut_ms)).await;
        let during = delta(&load.snapshot(), &before);
        proxy.heal();
        out.note(format!(
            "round {round}: {kind} for {cut_ms} ms; ingest answers meanwhile {} codes {:?}",
            during.summary(),
            during.codes
        ));
        if during.count(503) == 0 {
            out.note(format!(
                "round {round}: no 503 during the {kind} (peer_timeout_ms = {PEER_TIMEOUT_MS}) — \
                 the B-holds-everything check below decides whether those ACKs were safe"
            ));
        }
        if let Err(e) = wait_status(
            &http_a,
            &format!("round {round}: A reconnects to B after the heal"),
            HEAL_DEADLINE,
            all_connected,
        )
        .await
        {
            out.failures.push(format!("{e:#}"));
        }
        // Some load after the heal: ACKs must resume.
        let healed = load.snapshot();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let after = delta(&load.snapshot(), &healed);
        if after.acked.is_empty() {
            out.failures.push(format!(
                "round {round}: no ingest ACKed in the 1.5 s after the heal: {} codes {:?} examples {:?}",
                after.summary(),
                after.codes,
                after.examples
            ));
        }
        if !pair.a.is_running() {
            out.failures.push(format!(
                "A died during round {round}; stderr tail:\n{}",
                pair.a.stderr_tail(20)
            ));
            return Ok(out);
        }
    }
    let stats = load.stop().await;
    let (accepted, refused, bytes) = proxy.counts();
    out.note(format!(
        "load on A: {}; {} ACKed; ACK latency p50 {:.1} ms p99 {:.1} ms; proxy: {accepted} connections forwarded, {refused} closed by a cut, {bytes} bytes",
        stats.summary(),
        stats.acked.len(),
        percentile_ms(&stats.ack_latencies_us, 50.0),
        percentile_ms(&stats.ack_latencies_us, 99.0)
    ));
    let unexpected: Vec<String> = stats
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s) && **s != 503)
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    if !unexpected.is_empty() || stats.codes.keys().any(|c| c != "unavailable") {
        out.failures.push(format!(
            "ingest on A answered other than 2xx or 503 unavailable: statuses {unexpected:?} codes {:?} examples {:?}",
            stats.codes, stats.examples
        ));
    }

    match wait_status(
        &http_a,
        "B's lag reaches 0 after the load",
        HEAL_DEADLINE,
        caught_up,
    )
    .await
    {
        Ok(v) => out.note(format!("caught up: {}", v["shards"])),
        Err(e) => out.failures.push(format!("{e:#}")),
    }

    // B must hold every delivery A ACKed.
    pair.a.kill9();
    let epoch = promote(&operator(&pair.b)).await?;
    let api_b = pair.api_b();
    // Right after the promotion, while B rebuilds its shards, a read may answer 503 — never a
    // false 404 for a delivery B holds.
    let early = not_held(&api_b, &stats.acked, 1).await;
    pair.b
        .wait_ready(READY_TIMEOUT)
        .await
        .context("the promoted B becoming ready")?;
    let missing = not_held(&api_b, &stats.acked, 5).await;
    let missing_ids: BTreeSet<&String> = missing.iter().map(|(id, _)| id).collect();
    let false_404: Vec<(String, String)> = early
        .into_iter()
        .filter(|(id, why)| !missing_ids.contains(id) && !why.starts_with("HTTP 503"))
        .collect();
    if !false_404.is_empty() {
        out.failures.push(format!(
            "right after its promotion (before /readyz was 200) B answered GET /v1/deliveries/{{id}} \
             with other than 200/503 for ACKed deliveries it holds (200 once ready): {}",
            show_ids(&false_404)
        ));
    }
    if !missing.is_empty() {
        out.failures.push(format!(
            "ACKed by A (ack = peer) but not held by B after its promotion: {}",
            show_ids(&missing)
        ));
    } else {
        out.note(format!(
            "B promoted (epoch {epoch}) holds all {} ACKed deliveries",
            stats.acked.len()
        ));
    }

    let mut tally = ledger::settle(
        &api_b,
        &stats.acked,
        &pair.receiver,
        pair.b.data_dir(),
        Duration::from_secs(ctx.pick(40, 90)),
        Policy::default(),
    )
    .await;
    // An id B lacks is lost even if A delivered it before its death: the promise was about the
    // copy, and a later failover would have dropped it.
    let seen = pair.receiver.seen();
    let delivered_but_missing = missing_ids
        .iter()
        .filter(|id| seen.get(id.as_str()).is_some_and(|s| s.successes > 0))
        .count() as u64;
    tally.lost += delivered_but_missing;
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

/// What `now` saw beyond `before` (statuses, codes and ACKs).
fn delta(now: &LoadStats, before: &LoadStats) -> LoadStats {
    let mut d = LoadStats {
        acked: now.acked.difference(&before.acked).cloned().collect(),
        errors: now.errors.saturating_sub(before.errors),
        sent: now.sent.saturating_sub(before.sent),
        ..LoadStats::default()
    };
    for (s, n) in &now.statuses {
        let was = before.statuses.get(s).copied().unwrap_or(0);
        if *n > was {
            d.statuses.insert(*s, n - was);
        }
    }
    for (c, n) in &now.codes {
        let was = before.codes.get(c).copied().unwrap_or(0);
        if *n > was {
            d.codes.insert(c.clone(), n - was);
        }
    }
    d.examples = now.examples.clone();
    d
}
