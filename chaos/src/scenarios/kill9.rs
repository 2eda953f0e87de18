//! kill9: SIGKILL the server at random moments under load, restart it on the same data dir,
//! N times in a row. Every ACKed delivery must be delivered at least once; duplicates (an
//! attempt whose outcome was not yet logged is made again) are counted, not failed.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ledger::Policy;
use crate::load::Load;
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;

pub const SCENARIO: Scenario = Scenario {
    name: "kill9",
    about: "SIGKILL the server at random moments under load, restart on the same data dir, N times",
    needs_root: false,
    budget_quick: Duration::from_secs(60),
    budget_full: Duration::from_secs(300),
    run: start,
};

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let kills = ctx.pick(3, 10);
    let mut rig = Rig::start(ctx, RigOptions::default()).await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    let mut recoveries = Vec::new();
    for round in 0..kills {
        let mut spec = rig.load_spec(&format!("k9-{}-{round}", ctx.seed));
        spec.concurrency = 32;
        spec.requests_max = 1_000_000;
        spec.duration_max = Duration::from_secs(60);
        let load = Load::start(spec);
        let after_ms = ctx.rng.range(300, ctx.pick(1_500, 3_000));
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        if !rig.server.is_running() {
            out.failures.push(format!(
                "the server died on its own in round {round}; stderr tail:\n{}",
                rig.server.stderr_tail(20)
            ));
            break;
        }
        rig.server.kill9();
        let stats = load.stop().await;
        out.note(format!(
            "round {round}: SIGKILL after {after_ms} ms under load; ingest answers {}; {} ACKed",
            stats.summary(),
            stats.acked.len()
        ));
        acked.extend(stats.acked);
        recoveries.push(rig.restart().await?);
    }
    let tally = rig
        .settle(
            &acked,
            Duration::from_secs(ctx.pick(40, 90)),
            Policy::default(),
        )
        .await;
    let slowest = recoveries.iter().max().copied().unwrap_or_default();
    out.note(format!(
        "{} restarts, slowest back to ready in {} ms",
        recoveries.len(),
        slowest.as_millis()
    ));
    if tally.duplicated > 0 {
        out.note(format!(
            "{} deliveries reached the receiver more than once (at least once, as documented)",
            tally.duplicated
        ));
    }
    for line in problem_lines(&rig.server.stderr()).iter().take(5) {
        out.note(format!("server log: {line}"));
    }
    out.tally = tally;
    Ok(out)
}
