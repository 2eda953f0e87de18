//! Retry timing (contract: "Forwarding to the receiver"): attempt n+1 waits
//! `min(max_delay_ms, base_delay_ms * factor^(n-1))`, and a `Retry-After` on 429/503 is honoured,
//! capped by `max_delay_ms`.
//!
//! Only lower bounds on the gaps are asserted (a loaded machine may be late, never early), except
//! where a cap is the point: there the bound is a tenth or less of the uncapped wait.

use std::time::Duration;

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, str_field};
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, RecordedRequest, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::json;

/// Timer slack allowed below a lower bound (a wheel tick, clock reads on two sides).
const EARLY_SLACK: Duration = Duration::from_millis(25);

fn gaps(requests: &[RecordedRequest]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect()
}

async fn retry_after_is_honoured(status: u16) {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(status).header("Retry-After", "1")],
        Step::ok(),
    ))
    .await;
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"retry": {"max_attempts": 3, "base_delay_ms": 50, "factor": 2.0, "max_delay_ms": 5000, "jitter": 0.0}}),
        )
        .await,
        "id",
    );
    let id = assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("retry-after"))
            .await,
    );
    let got = receiver.wait_for(2, DELIVERY_DEADLINE).await;
    let gap = gaps(&got)[0];
    assert!(
        gap >= Duration::from_secs(1) - EARLY_SLACK,
        "{status} with Retry-After: 1 → the second attempt came after {gap:?}, before 1 s"
    );
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_eq!(delivery["status"], "success", "{delivery:#}");
    assert_eq!(delivery["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429() {
    retry_after_is_honoured(429).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_503() {
    retry_after_is_honoured(503).await;
}

/// `Retry-After: 300` with `max_delay_ms: 500`: the retry comes long before 300 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_max_delay() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(429).header("Retry-After", "300")],
        Step::ok(),
    ))
    .await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    let id = assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("capped"))
            .await,
    );
    // Uncapped, the retry would wait 300 s; capped it waits 0.5 s.
    receiver.wait_for(2, Duration::from_secs(30)).await;
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_eq!(delivery["status"], "success", "{delivery:#}");
}

/// base 200 ms, factor 2, no jitter: attempt 2 follows attempt 1 by ≥ 200 ms, attempt 3 follows
/// attempt 2 by ≥ 400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_backoff() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(500), Step::status(500)],
        Step::ok(),
    ))
    .await;
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"retry": {"max_attempts": 5, "base_delay_ms": 200, "factor": 2.0, "max_delay_ms": 10000, "jitter": 0.0}}),
        )
        .await,
        "id",
    );
    assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("backoff"))
            .await,
    );
    let got = receiver.wait_for(3, DELIVERY_DEADLINE).await;
    let gaps = gaps(&got[..3]);
    assert!(
        gaps[0] >= Duration::from_millis(200) - EARLY_SLACK,
        "gap 1 = {:?} < 200 ms",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(400) - EARLY_SLACK,
        "gap 2 = {:?} < 400 ms",
        gaps[1]
    );
}

/// base 200 ms, factor 100, max 300 ms: the second wait is capped at 300 ms instead of 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_is_capped_by_max_delay() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(500), Step::status(500)],
        Step::ok(),
    ))
    .await;
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"retry": {"max_attempts": 5, "base_delay_ms": 200, "factor": 100.0, "max_delay_ms": 300, "jitter": 0.0}}),
        )
        .await,
        "id",
    );
    assert_accepted(&s.api.ingest_json(&endpoint_id, &unique_json("cap")).await);
    let got = receiver.wait_for(3, DELIVERY_DEADLINE).await;
    let gaps = gaps(&got[..3]);
    assert!(
        gaps[0] >= Duration::from_millis(200) - EARLY_SLACK,
        "gap 1 = {:?} < 200 ms",
        gaps[0]
    );
    assert!(
        gaps[1] >= Duration::from_millis(300) - EARLY_SLACK,
        "gap 2 = {:?} < 300 ms",
        gaps[1]
    );
    assert!(
        gaps[1] < Duration::from_secs(10),
        "gap 2 = {:?}: max_delay_ms 300 did not cap a 20 s backoff",
        gaps[1]
    );
}
