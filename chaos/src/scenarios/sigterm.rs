//! sigterm: graceful shutdown under load (with attempts in flight to a slow receiver) loses
//! nothing and exits 0 within 30 s; a restart on the same data dir then delivers the rest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::ledger::Policy;
use crate::load::Load;
use crate::receiver::Action;
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;

pub const SCENARIO: Scenario = Scenario {
    name: "sigterm",
    about: "SIGTERM under load with attempts in flight: exit 0 within 30 s, nothing lost",
    needs_root: false,
    budget_quick: Duration::from_secs(90),
    budget_full: Duration::from_secs(240),
    run: start,
};

/// The contract: SIGTERM → exit 0 within 30 s.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let rounds = ctx.pick(1, 3);
    let slow = Arc::new(|_: &str, _: u32| Action::Respond {
        status: 200,
        delay: Duration::from_millis(300),
        retry_after_s: None,
    });
    let mut rig = Rig::start(
        ctx,
        RigOptions {
            policy: slow,
            ..RigOptions::default()
        },
    )
    .await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    for round in 0..rounds {
        let mut spec = rig.load_spec(&format!("term-{}-{round}", ctx.seed));
        spec.concurrency = 32;
        spec.requests_max = 1_000_000;
        spec.duration_max = Duration::from_secs(60);
        let load = Load::start(spec);
        let after_ms = ctx.rng.range(1_000, 3_000);
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let before = load.snapshot();
        let start_no = rig.server.starts();
        // +5 s over the contract so a late exit is measured rather than cut short.
        let (status, took) = rig
            .server
            .sigterm(EXIT_WITHIN + Duration::from_secs(5))
            .await?;
        let stats = load.stop().await;
        let after_term = stats.sent - before.sent;
        out.note(format!(
            "round {round}: SIGTERM after {after_ms} ms under load, {} receiver requests so far; exit {:?} in {} ms; ingest answers {} ({after_term} requests after SIGTERM)",
            rig.receiver.requests(),
            status.map(|s| s.to_string()),
            took.as_millis(),
            stats.summary()
        ));
        match status {
            None => out.failures.push(format!(
                "round {round}: still running {} s after SIGTERM (killed)",
                took.as_secs()
            )),
            Some(s) if !s.success() => out.failures.push(format!(
                "round {round}: exit status {s} after SIGTERM (expected 0); stderr tail:\n{}",
                rig.server.stderr_tail(15)
            )),
            Some(_) if took > EXIT_WITHIN => out.failures.push(format!(
                "round {round}: exit took {} ms (> 30 s)",
                took.as_millis()
            )),
            Some(_) => {}
        }
        if !rig.server.stderr_of_start(start_no).contains("\"stopped\"") {
            out.note(format!(
                "round {round}: no \"stopped\" line in the server log"
            ));
        }
        acked.extend(stats.acked);
        rig.restart().await?;
    }
    rig.receiver
        .set_policy(Arc::new(|_: &str, _: u32| Action::ok()));
    let tally = rig
        .settle(
            &acked,
            Duration::from_secs(ctx.pick(40, 60)),
            Policy::default(),
        )
        .await;
    for line in problem_lines(&rig.server.stderr()).iter().take(5) {
        out.note(format!("server log: {line}"));
    }
    out.tally = tally;
    Ok(out)
}
