//! The outcome of each attempt and the delivery's final status (contract: "Forwarding to the
//! receiver" outcomes, and "Deliveries"): 2xx → `success`; 400/401/403/404/410/422 → `failed` at
//! once (one more try with `retry_client_errors_once`); 408/429/5xx, timeouts and connection
//! errors → retried, then `exhausted` after `max_attempts`; redirects are not followed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hookrelay_tests::api::{
    assert_accepted, assert_id, fast_retry, json_header, parse_time, str_field,
};
use hookrelay_tests::http::headers;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::free_port;
use serde_json::{Value, json};

/// After a final status, time for a (wrong) extra attempt to show up.
const QUIET: Duration = Duration::from_millis(700);

/// Checks `attempt_history`: `expected` entries numbered 1.., RFC 3339 `at` in order, a
/// `latency_ms` number, and per entry either the receiver's status code or an error.
#[track_caller]
fn check_history(delivery: &Value, expected: &[Option<u16>]) {
    let history = delivery["attempt_history"]
        .as_array()
        .unwrap_or_else(|| panic!("attempt_history is an array:\n{delivery:#}"));
    assert_eq!(
        history.len(),
        expected.len(),
        "attempt_history:\n{delivery:#}"
    );
    assert_eq!(
        delivery["attempts"],
        expected.len(),
        "attempts:\n{delivery:#}"
    );
    let mut previous = None;
    for (i, (entry, code)) in history.iter().zip(expected).enumerate() {
        assert_eq!(entry["n"], i + 1, "attempt n:\n{delivery:#}");
        let at = parse_time(&entry["at"], "attempt_history[].at");
        if let Some(previous) = previous {
            assert!(at >= previous, "attempts are in time order:\n{delivery:#}");
        }
        previous = Some(at);
        assert!(
            entry["latency_ms"].is_number(),
            "latency_ms is a number:\n{delivery:#}"
        );
        match code {
            Some(code) => assert_eq!(entry["status_code"], *code, "status_code:\n{delivery:#}"),
            None => {
                assert!(
                    entry["status_code"].is_null(),
                    "no status_code without a response:\n{delivery:#}"
                );
                assert!(
                    entry["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "an attempt without a response has an error:\n{delivery:#}"
                );
            }
        }
    }
}

/// One endpoint and receiver per case, the receiver answering every attempt with `step`;
/// returns the final delivery and the receiver.
async fn run_to_final(s: &Scenario, step: Step, overrides: Value) -> (Value, Receiver) {
    let receiver = Receiver::start(Script::always(step)).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/out"), overrides).await, "id");
    let delivery_id = assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("outcome"))
            .await,
    );
    let delivery = s.api.wait_final(&s.admin_key, &delivery_id).await;
    (delivery, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_on_2xx() {
    let s = Scenario::start().await;
    for status in [200, 201, 204, 299] {
        let (delivery, receiver) = run_to_final(&s, Step::status(status), json!({})).await;
        assert_eq!(
            delivery["status"], "success",
            "receiver answered {status}:\n{delivery:#}"
        );
        check_history(&delivery, &[Some(status)]);
        assert!(delivery["attempt_history"][0]["error"].is_null());
        assert_eq!(receiver.arrivals_during(QUIET).await, 0);
        assert_eq!(receiver.count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_fail_at_once() {
    let s = Scenario::start().await;
    for status in [400, 401, 403, 404, 410, 422] {
        let (delivery, receiver) = run_to_final(&s, Step::status(status), json!({})).await;
        assert_eq!(
            delivery["status"], "failed",
            "receiver answered {status}:\n{delivery:#}"
        );
        check_history(&delivery, &[Some(status)]);
        assert!(
            !delivery["last_error"].is_null(),
            "last_error is set:\n{delivery:#}"
        );
        assert_eq!(
            receiver.arrivals_during(QUIET).await,
            0,
            "no retry after {status}"
        );
        assert_eq!(receiver.count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_client_errors_once() {
    let s = Scenario::start().await;
    let once = json!({"retry": {"retry_client_errors_once": true}});
    let (delivery, receiver) = run_to_final(&s, Step::status(404), once.clone()).await;
    assert_eq!(delivery["status"], "failed", "{delivery:#}");
    check_history(&delivery, &[Some(404), Some(404)]);
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
    assert_eq!(receiver.count(), 2);

    // The one extra try can succeed.
    let receiver = Receiver::start(Script::queue([Step::status(422)], Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/out"), once).await, "id");
    let id = assert_accepted(&s.api.ingest_json(&endpoint_id, &unique_json("once")).await);
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_eq!(delivery["status"], "success", "{delivery:#}");
    check_history(&delivery, &[Some(422), Some(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_statuses_exhaust() {
    let s = Scenario::start().await;
    for status in [500, 502, 503, 408, 429] {
        let (delivery, receiver) =
            run_to_final(&s, Step::status(status), json!({"retry": fast_retry(4)})).await;
        assert_eq!(
            delivery["status"], "exhausted",
            "receiver answered {status}:\n{delivery:#}"
        );
        check_history(&delivery, &[Some(status); 4]);
        assert!(
            !delivery["last_error"].is_null(),
            "last_error is set:\n{delivery:#}"
        );
        assert_eq!(
            receiver.arrivals_during(QUIET).await,
            0,
            "no attempt after max_attempts"
        );
        assert_eq!(receiver.count(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_success() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(503), Step::status(408)],
        Step::ok(),
    ))
    .await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/out"), json!({})).await, "id");
    let id = assert_accepted(&s.api.ingest_json(&endpoint_id, &unique_json("flaky")).await);
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_eq!(delivery["status"], "success", "{delivery:#}");
    check_history(&delivery, &[Some(503), Some(408), Some(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_exhaust() {
    let s = Scenario::start().await;
    let (delivery, receiver) = run_to_final(
        &s,
        Step::hang(),
        json!({"timeout_ms": 300, "retry": fast_retry(3)}),
    )
    .await;
    assert_eq!(delivery["status"], "exhausted", "{delivery:#}");
    check_history(&delivery, &[None, None, None]);
    assert_eq!(receiver.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_exhausts() {
    let s = Scenario::start().await;
    let closed = format!("http://127.0.0.1:{}/nobody", free_port());
    let endpoint_id = str_field(
        &s.endpoint(&closed, json!({"retry": fast_retry(3)})).await,
        "id",
    );
    let id = assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("refused"))
            .await,
    );
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_eq!(delivery["status"], "exhausted", "{delivery:#}");
    check_history(&delivery, &[None, None, None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::func(|request, _| {
        if request.path == "/followed" {
            Step::ok()
        } else {
            Step::status(302).header("Location", "/followed")
        }
    }))
    .await;
    let endpoint_id = str_field(
        &s.endpoint(&receiver.url("/out"), json!({"retry": fast_retry(2)}))
            .await,
        "id",
    );
    let id = assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("redirect"))
            .await,
    );
    let delivery = s.api.wait_final(&s.admin_key, &id).await;
    assert_ne!(
        delivery["status"], "success",
        "a 302 is not a success:\n{delivery:#}"
    );
    assert!(
        receiver.requests().iter().all(|r| r.path == "/out"),
        "the redirect was followed"
    );
}

/// `GET /v1/deliveries/{id}` has every field of the contract, with the request as received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resource_fields() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/out"), json!({})).await, "id");
    let body = unique_json("fields");
    let sent = headers(&[
        ("Content-Type", "application/json"),
        ("X-Trace", "trace-123"),
        ("Idempotency-Key", "fields-key"),
    ]);
    let id = assert_accepted(&s.api.ingest(&endpoint_id, &body, &sent).await);
    let delivery = s.api.wait_final(&s.admin_key, &id).await;

    for field in [
        "id",
        "endpoint_id",
        "tenant_id",
        "status",
        "attempts",
        "created_at",
        "last_error",
        "replay_of",
        "idempotency_key",
        "attempt_history",
        "request",
    ] {
        assert!(
            delivery.get(field).is_some(),
            "missing {field:?}:\n{delivery:#}"
        );
    }
    assert_eq!(delivery["id"], id.as_str());
    assert_id(&str_field(&delivery, "id"), "dl_");
    assert_eq!(delivery["endpoint_id"], endpoint_id.as_str());
    assert_eq!(delivery["tenant_id"], s.tenant_id.as_str());
    assert_eq!(delivery["status"], "success");
    assert_eq!(delivery["attempts"], 1);
    assert!(delivery["last_error"].is_null(), "{delivery:#}");
    assert!(delivery["replay_of"].is_null(), "{delivery:#}");
    assert_eq!(delivery["idempotency_key"], "fields-key");
    parse_time(&delivery["created_at"], "created_at");
    check_history(&delivery, &[Some(200)]);

    let request = &delivery["request"];
    assert_eq!(
        json_header(&request["headers"], "x-trace").as_deref(),
        Some("trace-123"),
        "request.headers:\n{delivery:#}"
    );
    assert_eq!(
        json_header(&request["headers"], "content-type").as_deref(),
        Some("application/json")
    );
    let stored = B64
        .decode(str_field(request, "body_base64"))
        .expect("body_base64 is base64");
    assert_eq!(stored, body, "request.body_base64 decodes to the body sent");
}
