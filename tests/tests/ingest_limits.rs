//! The ingest front door's refusals (contract: "Ingest", steps 1-2, and "Errors"): unknown
//! endpoints, oversized bodies (answered while the client is still sending), source IP lists,
//! and malformed JSON on the management API.

use std::time::Duration;

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, str_field};
use hookrelay_tests::http::headers;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::raw::{Framing, SlowUpload, slow_upload};
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::ServerOptions;
use hookrelay_tests::signing::sign_github;
use hyper::Method;
use serde_json::json;

const MAX_BODY_BYTES: usize = 1024;

fn small_body_limit() -> ServerOptions {
    ServerOptions::default().env(
        "HOOKRELAY_INGEST_MAX_BODY_BYTES",
        &MAX_BODY_BYTES.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_is_404() {
    let s = Scenario::start().await;
    for path in ["/ingest/ep_01ARZ3NDEKTSV4RRFFQ69G5FAV", "/ingest/not-an-id"] {
        let response = s.server.http().post_raw(path, unique_json("x"), &[]).await;
        assert_problem(&response, 404, "not_found");
    }
}

/// `max_body_bytes` itself is allowed; one byte more is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_boundary() {
    let s = Scenario::start_with(small_body_limit()).await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");

    let mut at_limit = hookrelay_tests::payload::nonce().into_bytes();
    at_limit.resize(MAX_BODY_BYTES, b'a');
    assert_accepted(&s.api.ingest(&endpoint_id, &at_limit, &[]).await);

    let over = vec![b'b'; MAX_BODY_BYTES + 1];
    assert_problem(
        &s.api.ingest(&endpoint_id, &over, &[]).await,
        413,
        "payload_too_large",
    );

    let got = receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(got[0].body.as_ref(), at_limit.as_slice());
    assert_eq!(
        receiver.arrivals_during(Duration::from_millis(500)).await,
        0
    );
}

/// A 5 MB body sent slowly: the 413 must reach the client while it is still sending, as a
/// complete response, not a connection reset.
async fn oversized_slow_upload(framing: Framing) {
    let s = Scenario::start_with(small_body_limit()).await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    let total_bytes = 5 * 1000 * 1000;
    // 153 chunks 20 ms apart: about 3 s of sending, ample for an early answer.
    let upload = SlowUpload::json_ingest(&endpoint_id, total_bytes, framing);
    let response = slow_upload(s.server.addr(), &upload)
        .await
        .unwrap_or_else(|e| panic!("{framing:?}: the client must read a 413, got: {e:#}"));
    assert_problem(&response.to_response(), 413, "payload_too_large");
    assert!(
        !response.upload_finished,
        "{framing:?}: the 413 must come while the client is still sending, it came after all \
         {total_bytes} bytes"
    );
    assert_eq!(
        receiver.arrivals_during(Duration::from_millis(300)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upload_with_content_length_gets_413_while_sending() {
    oversized_slow_upload(Framing::ContentLength).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_upload_gets_413_while_sending() {
    oversized_slow_upload(Framing::Chunked).await;
}

/// `allowed_source_ips` is checked before the signature (step 2 before step 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_allow_list() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let elsewhere = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"allowed_source_ips": ["203.0.113.0/24"]}),
        )
        .await,
        "id",
    );
    let loopback = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"allowed_source_ips": ["127.0.0.0/8"]}),
        )
        .await,
        "id",
    );
    let single = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"allowed_source_ips": ["198.51.100.7/32", "127.0.0.1/32"]}),
        )
        .await,
        "id",
    );
    let signed_elsewhere = str_field(
        &s.endpoint(
            &receiver.url("/in"),
            json!({"allowed_source_ips": ["203.0.113.0/24"], "verification": {"mode": "github", "secret": "s"}}),
        )
        .await,
        "id",
    );

    assert_problem(
        &s.api.ingest_json(&elsewhere, &unique_json("ip")).await,
        403,
        "ip_not_allowed",
    );
    // Unsigned too: the IP refusal comes first.
    assert_problem(
        &s.api
            .ingest_json(&signed_elsewhere, &unique_json("ip"))
            .await,
        403,
        "ip_not_allowed",
    );
    // Correctly signed, still refused by IP.
    let body = unique_json("ip");
    let response = s
        .api
        .ingest(&signed_elsewhere, &body, &sign_github("s", &body))
        .await;
    assert_problem(&response, 403, "ip_not_allowed");

    assert_accepted(&s.api.ingest_json(&loopback, &unique_json("ip")).await);
    assert_accepted(&s.api.ingest_json(&single, &unique_json("ip")).await);
    receiver.wait_for(2, DELIVERY_DEADLINE).await;
    assert_eq!(
        receiver.arrivals_during(Duration::from_millis(500)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_on_management_routes_is_400() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let malformed = headers(&[("Content-Type", "application/json")]);
    for (path, key) in [
        ("/v1/endpoints", s.admin_key.clone()),
        ("/v1/tenants", s.api.root_key().to_string()),
    ] {
        let mut request_headers = malformed.clone();
        request_headers.push(("Authorization".into(), format!("Bearer {key}")));
        for body in [
            &b"{\"destination_url\": "[..],
            b"{\"name\": 'single quotes'}",
            b"\xff\xfe",
        ] {
            let response = http
                .send(
                    Method::POST,
                    path,
                    bytes::Bytes::from_static(body),
                    &request_headers,
                )
                .await;
            assert_problem(&response, 400, "invalid_json");
        }
    }
}
