//! receiver-faults: the receiver fails a random share of attempts (5xx), answers slowly, hangs
//! past the endpoint's timeout, resets connections and answers 429 with `Retry-After`. Some
//! deliveries always fail (→ exhausted after `max_attempts`) and some get a 400 (→ failed at
//! once). Everything must end delivered or dead-lettered exactly as the retry policy says.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::api::DeliveryState;
use crate::ledger::Policy;
use crate::load::Load;
use crate::receiver::Action;
use crate::rng::hash_str;
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;

pub const SCENARIO: Scenario = Scenario {
    name: "receiver-faults",
    about: "flaky, slow, hanging, resetting and rate-limiting receivers; outcomes follow the retry policy",
    needs_root: false,
    budget_quick: Duration::from_secs(75),
    budget_full: Duration::from_secs(240),
    run: start,
};

const MAX_ATTEMPTS: u64 = 6;
const TIMEOUT_MS: u64 = 1_000;
const RETRY_AFTER_S: u32 = 1;

/// A delivery's fate, from a hash of its id: independent of arrival order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// 503 on every attempt → `exhausted` after MAX_ATTEMPTS.
    AlwaysDown,
    /// 400 on the first attempt → `failed` at once.
    ClientError,
    /// Random faults per attempt; usually ends `success`.
    Flaky,
}

fn fate(seed: u64, id: &str) -> Fate {
    match hash_str(seed, id) % 100 {
        0..=3 => Fate::AlwaysDown,
        4..=6 => Fate::ClientError,
        _ => Fate::Flaky,
    }
}

fn decide(seed: u64, id: &str, attempt: u32) -> Action {
    match fate(seed, id) {
        Fate::AlwaysDown => Action::status(503),
        Fate::ClientError => Action::status(400),
        Fate::Flaky => {
            let roll = hash_str(seed ^ u64::from(attempt).wrapping_mul(0x9E37), id) % 100;
            match roll {
                0..=29 => Action::status(500),
                30..=34 => Action::Respond {
                    status: 200,
                    delay: Duration::from_millis(300),
                    retry_after_s: None,
                },
                35..=39 => Action::Hang(Duration::from_millis(TIMEOUT_MS * 3)),
                40..=44 => Action::Reset,
                45..=49 => Action::Respond {
                    status: 429,
                    delay: Duration::ZERO,
                    retry_after_s: Some(RETRY_AFTER_S),
                },
                _ => Action::ok(),
            }
        }
    }
}

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
}

async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome> {
    let seed = ctx.seed;
    let endpoint = json!({
        "retry": {"max_attempts": MAX_ATTEMPTS, "base_delay_ms": 200, "factor": 2.0,
                  "max_delay_ms": 2000, "jitter": 0.2, "retry_client_errors_once": false},
        "timeout_ms": TIMEOUT_MS,
        "max_in_flight": 64
    });
    let rig = Rig::start(
        ctx,
        RigOptions {
            endpoint,
            policy: Arc::new(move |id: &str, attempt: u32| decide(seed, id, attempt)),
            ..RigOptions::default()
        },
    )
    .await?;
    let mut out = Outcome::default();
    let mut spec = rig.load_spec(&format!("rf-{seed}"));
    spec.concurrency = 16;
    spec.requests_max = ctx.pick(1_500, 6_000);
    spec.duration_max = Duration::from_secs(ctx.pick(15, 60));
    let stats = Load::start(spec).wait().await;
    out.note(format!(
        "ingest answers {}; {} ACKed",
        stats.summary(),
        stats.acked.len()
    ));
    if stats.acked.is_empty() {
        out.failures
            .push(format!("nothing was ACKed: {:?}", stats.examples));
    }
    let acked: BTreeSet<String> = stats.acked;
    let tally = rig
        .settle(
            &acked,
            Duration::from_secs(ctx.pick(45, 120)),
            Policy {
                max_attempts: Some(MAX_ATTEMPTS),
            },
        )
        .await;

    // The policy, per fate: AlwaysDown → exhausted, ClientError → failed after one attempt.
    let seen = rig.receiver.seen();
    let mut wrong = Vec::new();
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    let mut retry_after_checked = 0u64;
    let mut retry_after_early = Vec::new();
    for id in &acked {
        let Some(s) = seen.get(id) else { continue };
        for a in &s.attempts {
            *kinds.entry(a.action.kind()).or_default() += 1;
        }
        for pair in s.attempts.windows(2) {
            if pair[0].action.kind() == "429" {
                retry_after_checked += 1;
                let gap = pair[1].at.duration_since(pair[0].at);
                // Jitter may shorten a delay by up to 20%; a Retry-After of 1 s honoured
                // never comes back sooner than that.
                if gap < Duration::from_millis(u64::from(RETRY_AFTER_S) * 1000 * 3 / 4) {
                    retry_after_early.push(format!("{id} after {} ms", gap.as_millis()));
                }
            }
        }
        let view = rig.api.delivery(id).await;
        let expected = match fate(seed, id) {
            Fate::AlwaysDown => Some(DeliveryState::Exhausted),
            Fate::ClientError => Some(DeliveryState::Failed),
            Fate::Flaky => None,
        };
        if let Some(expected) = expected
            && view.state != expected
        {
            wrong.push(format!(
                "{id}: {} after {} attempts, expected {}",
                view.state.name(),
                view.attempts,
                expected.name()
            ));
        }
        if fate(seed, id) == Fate::ClientError && view.attempts != 1 {
            wrong.push(format!(
                "{id}: 400 answered with {} attempts, expected 1",
                view.attempts
            ));
        }
    }
    if !wrong.is_empty() {
        out.failures.push(format!(
            "{} deliveries ended against the retry policy: {}",
            wrong.len(),
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    if !retry_after_early.is_empty() {
        out.failures.push(format!(
            "Retry-After: {RETRY_AFTER_S} not honoured in {} of {retry_after_checked} retries after a 429: {}",
            retry_after_early.len(),
            retry_after_early.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    out.note(format!(
        "receiver answers by kind {}; {retry_after_checked} retries after 429 checked against Retry-After",
        kinds.join(" ")
    ));
    for line in problem_lines(&rig.server.stderr()).iter().take(3) {
        out.note(format!("server log: {line}"));
    }
    out.tally = tally;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_are_stable_and_mixed() {
        let ids: Vec<String> = (0..2000).map(|i| format!("dl_{i:026}")).collect();
        let down = ids
            .iter()
            .filter(|i| fate(3, i) == Fate::AlwaysDown)
            .count();
        let client = ids
            .iter()
            .filter(|i| fate(3, i) == Fate::ClientError)
            .count();
        assert!((40..=130).contains(&down), "{down}");
        assert!((25..=100).contains(&client), "{client}");
        assert_eq!(decide(3, &ids[0], 1), decide(3, &ids[0], 1));
    }
}
