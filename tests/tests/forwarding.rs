//! What the receiver gets (contract: "Forwarding to the receiver"): the original body byte for
//! byte, the original Content-Type and headers minus hop-by-hop ones, `Host` and the sender's own
//! Standard Webhooks headers; exactly one HookRelay `webhook-id` (= delivery id),
//! `webhook-timestamp` and `webhook-signature` that verifies with the endpoint's
//! `signing_secret`; `X-HookRelay-Delivery-Id`; `X-HookRelay-Attempt` counting from 1.

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, str_field};
use hookrelay_tests::http::headers;
use hookrelay_tests::payload::{nonce, unique_binary, unique_json};
use hookrelay_tests::receiver::{Receiver, RecordedRequest, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::signing::{TOLERANCE_S, unix_now, verify_standard};
use serde_json::json;

/// Asserts HookRelay's own headers on one attempt and that the signature verifies.
#[track_caller]
fn assert_hookrelay_headers(
    request: &RecordedRequest,
    delivery_id: &str,
    attempt: u32,
    signing_secret: &str,
) {
    let one = |name: &str| -> String {
        let values = request.header_all(name);
        assert_eq!(values.len(), 1, "exactly one {name} header, got {values:?}");
        values[0].clone()
    };
    assert_eq!(one("webhook-id"), delivery_id);
    assert_eq!(one("x-hookrelay-delivery-id"), delivery_id);
    assert_eq!(one("x-hookrelay-attempt"), attempt.to_string());
    let timestamp = one("webhook-timestamp");
    let t: i64 = timestamp
        .parse()
        .unwrap_or_else(|_| panic!("webhook-timestamp {timestamp:?} is not unix seconds"));
    assert!(
        (unix_now() - t).abs() <= TOLERANCE_S,
        "webhook-timestamp {t} is not current"
    );
    let signature = one("webhook-signature");
    assert!(
        signature.split(' ').all(|s| s.starts_with("v1,")),
        "webhook-signature {signature:?} is not v1,<base64>[ ...]"
    );
    assert!(
        verify_standard(
            signing_secret,
            delivery_id,
            &timestamp,
            &request.body,
            &signature
        ),
        "webhook-signature {signature:?} does not verify with the endpoint's signing_secret"
    );
    assert!(
        request.header("x-hookrelay-replay-of").is_none(),
        "X-HookRelay-Replay-Of is only for replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_body_and_headers_faithfully() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint = s
        .endpoint(&receiver.url("/hooks/in?src=e2e"), json!({}))
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    let signing_secret = str_field(&endpoint, "signing_secret");

    let body = unique_json("forward");
    let sent = headers(&[
        ("Content-Type", "application/vnd.acme+json; charset=utf-8"),
        ("X-Custom-One", "alpha"),
        ("X-Custom-Two", "beta  gamma"),
        // Hop-by-hop: listed in Connection, or hop-by-hop by definition (RFC 9110 7.6.1).
        ("Connection", "keep-alive, X-Hop-Custom"),
        ("X-Hop-Custom", "must-not-pass"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("TE", "trailers"),
        // The sender's own Standard Webhooks headers, which HookRelay replaces.
        ("webhook-id", &format!("msg_sender_{}", nonce())),
        ("webhook-timestamp", "1000000000"),
        ("webhook-signature", "v1,c2VuZGVyJ3Mgb3du"),
    ]);
    let delivery_id = assert_accepted(&s.api.ingest(&endpoint_id, &body, &sent).await);

    let got = receiver.wait_for(1, DELIVERY_DEADLINE).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/in?src=e2e");
    assert_eq!(
        request.body.as_ref(),
        body.as_slice(),
        "the body byte for byte"
    );
    assert_eq!(
        request.header_all("content-type"),
        vec!["application/vnd.acme+json; charset=utf-8"]
    );
    assert_eq!(request.header_all("x-custom-one"), vec!["alpha"]);
    assert_eq!(request.header_all("x-custom-two"), vec!["beta  gamma"]);
    for hop in ["x-hop-custom", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            request.header(hop).is_none(),
            "hop-by-hop header {hop} was forwarded: {:?}",
            request.headers
        );
    }
    assert_eq!(
        request.header_all("host"),
        vec![receiver.addr().to_string()],
        "Host names the receiver, not HookRelay"
    );
    assert_hookrelay_headers(request, &delivery_id, 1, &signing_secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_body_is_forwarded_byte_for_byte() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint = s.endpoint(&receiver.url("/bin"), json!({})).await;
    let endpoint_id = str_field(&endpoint, "id");
    let mut body = unique_binary();
    body.extend((0..=255u8).cycle().take(70_000));
    let sent = headers(&[("Content-Type", "application/octet-stream")]);
    let delivery_id = assert_accepted(&s.api.ingest(&endpoint_id, &body, &sent).await);
    let got = receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(got[0].body.len(), body.len());
    assert!(
        got[0].body.as_ref() == body.as_slice(),
        "binary body altered"
    );
    assert_eq!(
        got[0].header("content-type"),
        Some("application/octet-stream")
    );
    assert_hookrelay_headers(
        &got[0],
        &delivery_id,
        1,
        &str_field(&endpoint, "signing_secret"),
    );
}

/// Retries keep the delivery id (and so `webhook-id`) and count attempts 1, 2, 3; each attempt
/// is signed afresh and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_attempts() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::queue(
        [Step::status(500), Step::status(503)],
        Step::ok(),
    ))
    .await;
    let endpoint = s.endpoint(&receiver.url("/retry"), json!({})).await;
    let endpoint_id = str_field(&endpoint, "id");
    let signing_secret = str_field(&endpoint, "signing_secret");
    let body = unique_json("retry");
    let delivery_id = assert_accepted(&s.api.ingest_json(&endpoint_id, &body).await);

    let got = receiver.wait_for(3, DELIVERY_DEADLINE).await;
    for (i, request) in got.iter().enumerate() {
        assert_eq!(request.body.as_ref(), body.as_slice());
        assert_hookrelay_headers(request, &delivery_id, i as u32 + 1, &signing_secret);
    }
    let delivery = s.api.wait_final(&s.admin_key, &delivery_id).await;
    assert_eq!(delivery["status"], "success");
    assert_eq!(delivery["attempts"], 3);
}
