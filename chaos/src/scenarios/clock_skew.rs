//! clock-skew: the server's wall clock jumps forward an hour and then back two (an LD_PRELOAD
//! shim compiled by the suite shifts CLOCK_REALTIME, gettimeofday and time; CLOCK_MONOTONIC is
//! left alone, as a real NTP step does). Checks, by the server's own clock: signatures outside
//! the 300 s tolerance are refused with `signature_expired` and signatures inside it accepted;
//! retry timers set before a jump neither fire early en masse (forward jump) nor stall (back
//! jump); nothing ACKed is lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::http::Http;
use crate::ledger::Policy;
use crate::load::{Load, LoadStats};
use crate::receiver::{Action, Receiver};
use crate::scenario::{Ctx, Outcome, Rig, RigOptions, Scenario, ScenarioFuture};
use crate::server::problem_lines;
use crate::shim::Shim;

pub const SCENARIO: Scenario = Scenario {
    name: "clock-skew",
    about: "the server's wall clock jumps +1 h then -2 h (LD_PRELOAD shim): signatures by its clock, timers neither early nor stalled",
    needs_root: false,
    budget_quick: Duration::from_secs(90),
    budget_full: Duration::from_secs(180),
    run: start,
};

const HOUR_S: i64 = 3600;
/// The endpoint's retry delay: attempt 2 is due this long (±20%) after attempt 1.
const RETRY_DELAY_MS: u64 = 3000;
/// A retry sooner than this after its first attempt fired early.
const EARLY_MS: u64 = RETRY_DELAY_MS * 6 / 10;
/// A retry not seen this long after its first attempt has stalled.
const STALL_MS: u64 = RETRY_DELAY_MS * 2 + 5000;

fn start(ctx: &mut Ctx) -> ScenarioFuture<'_> {
    Box::pin(run(ctx))
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
    let endpoint = json!({
        "retry": {"max_attempts": 5, "base_delay_ms": RETRY_DELAY_MS, "factor": 1.0,
                  "max_delay_ms": RETRY_DELAY_MS, "jitter": 0.2, "retry_client_errors_once": false},
        "timeout_ms": 2000,
        "max_in_flight": 64
    });
    // Attempt 1 of every delivery fails, so each one has a retry timer set.
    let policy = Arc::new(|_: &str, attempt: u32| {
        if attempt <= 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    });
    let mut env = shim.env();
    // Every first attempt fails on purpose: the circuit breaker must not open and hold the
    // retries, or it, not the timers, would decide when they go.
    env.push((
        "HOOKRELAY_DELIVERY_CIRCUIT_FAILURES_TO_OPEN".into(),
        "1000000".into(),
    ));
    let rig = Rig::start(
        ctx,
        RigOptions {
            env,
            endpoint,
            policy,
            ..RigOptions::default()
        },
    )
    .await?;
    let mut out = Outcome::default();
    let mut acked = BTreeSet::new();
    let seed = ctx.seed;
    let batch = ctx.pick(40, 150);

    // The shim must work, or the scenario proves nothing.
    shim.set_clock_offset_s(HOUR_S)?;
    let skew = server_skew_s(&rig).await;
    if skew.is_none_or(|s| (s - HOUR_S).abs() > 5) {
        return Ok(Outcome::skip(format!(
            "the clock shim did not shift the server's clock (Date header skew {skew:?} s)"
        )));
    }
    shim.set_clock_offset_s(0)?;

    // 1. Timers set at real time, then the clock jumps forward an hour.
    let a = send_batch(&rig, format!("cs-{seed}-a"), batch, 0).await;
    out.note(format!(
        "batch A (clock +0): ingest answers {}",
        a.summary()
    ));
    let a = a.acked;
    wait_attempts(&rig.receiver, &a, 1, Duration::from_secs(15)).await;
    shim.set_clock_offset_s(HOUR_S)?;
    let (early, stalled, median) = retry_gaps(&rig.receiver, &a).await;
    out.note(format!(
        "after +1 h: {} retries, median gap {median} ms (policy {RETRY_DELAY_MS} ms ±20%), {early} early (< {EARLY_MS} ms), {stalled} stalled",
        a.len()
    ));
    if early * 2 > a.len() {
        out.gaps.push(format!(
            "a +1 h wall-clock jump fired {early} of {} pending retries early (median gap {median} ms): retry timers follow the wall clock",
            a.len()
        ));
    }
    acked.extend(a);
    check_signatures(&rig, HOUR_S, &mut out, &mut acked).await;

    // 2. Timers set an hour ahead, then the clock jumps back two hours.
    let b = send_batch(&rig, format!("cs-{seed}-b"), batch, HOUR_S).await;
    out.note(format!(
        "batch B (clock +1 h): ingest answers {}",
        b.summary()
    ));
    let b = b.acked;
    wait_attempts(&rig.receiver, &b, 1, Duration::from_secs(15)).await;
    shim.set_clock_offset_s(-HOUR_S)?;
    let (early, stalled, median) = retry_gaps(&rig.receiver, &b).await;
    out.note(format!(
        "after -2 h: {} retries, median gap {median} ms, {early} early, {stalled} stalled (no retry within {STALL_MS} ms)",
        b.len()
    ));
    if stalled * 2 > b.len() {
        out.gaps.push(format!(
            "a -2 h wall-clock jump stalled {stalled} of {} pending retries (none within {STALL_MS} ms): retry timers follow the wall clock",
            b.len()
        ));
    }
    acked.extend(b);
    check_signatures(&rig, -HOUR_S, &mut out, &mut acked).await;

    // Release anything still waiting on a wall-clock due time, then settle.
    shim.set_clock_offset_s(HOUR_S + 60)?;
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

/// The server's clock minus ours, in seconds, from its `Date` header.
async fn server_skew_s(rig: &Rig) -> Option<i64> {
    let http = Http::new(rig.server.base_url(), 0, Duration::from_secs(3));
    let r = http.get("/healthz", None).await.ok()?;
    let date = httpdate::parse_http_date(r.header("date")?).ok()?;
    let theirs = date.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(theirs - crate::signing::unix_now())
}

/// Sends `n` requests signed at (real now + `ts_offset_s`).
async fn send_batch(rig: &Rig, tag: String, n: u64, ts_offset_s: i64) -> LoadStats {
    let mut spec = rig.load_spec(&tag);
    spec.concurrency = 8;
    spec.requests_max = n;
    spec.ts_offset_s = ts_offset_s;
    spec.duration_max = Duration::from_secs(20);
    Load::start(spec).wait().await
}

/// Waits until the receiver saw attempt `n` of every id (bounded).
async fn wait_attempts(receiver: &Receiver, ids: &BTreeSet<String>, n: u32, timeout: Duration) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let seen = receiver.seen();
        if ids.iter().all(|id| {
            seen.get(id)
                .is_some_and(|s| s.attempts.iter().any(|a| a.n >= n))
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for attempt 2 of every id (up to STALL_MS past the last attempt 1) and classifies
/// the gaps: (early, stalled — missing or later than STALL_MS —, median gap in ms).
async fn retry_gaps(receiver: &Receiver, ids: &BTreeSet<String>) -> (usize, usize, u64) {
    wait_attempts(receiver, ids, 2, Duration::from_millis(STALL_MS)).await;
    let seen: HashMap<_, _> = receiver.seen();
    let mut gaps = Vec::new();
    let mut stalled = 0;
    for id in ids {
        let Some(s) = seen.get(id) else {
            stalled += 1;
            continue;
        };
        let first = s.attempts.iter().find(|a| a.n == 1).map(|a| a.at);
        let second = s.attempts.iter().find(|a| a.n == 2).map(|a| a.at);
        match (first, second) {
            (Some(f), Some(s)) => {
                let gap = s.duration_since(f).as_millis() as u64;
                if gap > STALL_MS {
                    stalled += 1;
                }
                gaps.push(gap);
            }
            _ => stalled += 1,
        }
    }
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or(0);
    let early = gaps.iter().filter(|g| **g < EARLY_MS).count();
    (early, stalled, median)
}

/// With the server's clock at real + `offset_s`: a signature made at real time is outside the
/// tolerance (401 `signature_expired`), one made at the server's time is accepted.
async fn check_signatures(
    rig: &Rig,
    offset_s: i64,
    out: &mut Outcome,
    acked: &mut BTreeSet<String>,
) {
    let n = 10;
    let stale = send_batch(rig, format!("cs-sig-real-{offset_s}"), n, 0).await;
    let fresh = send_batch(rig, format!("cs-sig-server-{offset_s}"), n, offset_s).await;
    let expired = stale.codes.get("signature_expired").copied().unwrap_or(0);
    out.note(format!(
        "clock {offset_s:+} s: signed at real time → {} (signature_expired: {expired}); signed at the server's time → {}",
        stale.summary(),
        fresh.summary()
    ));
    if !stale.acked.is_empty() {
        out.failures.push(format!(
            "with the server's clock at {offset_s:+} s, {} requests signed {} s outside the tolerance were accepted",
            stale.acked.len(),
            offset_s.abs()
        ));
    }
    if expired < n {
        out.failures.push(format!(
            "stale signatures answered {} instead of 401 signature_expired",
            stale.summary()
        ));
    }
    if (fresh.acked.len() as u64) < n {
        out.failures.push(format!(
            "with the server's clock at {offset_s:+} s, requests signed at its time were refused: {}",
            fresh.summary()
        ));
    }
    acked.extend(stale.acked);
    acked.extend(fresh.acked);
}
