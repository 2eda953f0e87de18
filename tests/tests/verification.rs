//! Ingest signature verification, one test per mode (contract: "Ingest", step 4).
//!
//! For every signed mode: a valid signature is accepted (202, queued) and forwarded; a tampered
//! body, a wrong secret and a missing signature header are 401 `invalid_signature`; for timestamped
//! modes a correctly signed but stale or future timestamp is 401 `signature_expired`, one inside
//! the tolerance is accepted, and a missing timestamp header is `invalid_signature`. Nothing
//! rejected ever reaches the receiver.

use std::time::Duration;

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, json_content_type, str_field};
use hookrelay_tests::http::HeaderList;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::signing::{
    TOLERANCE_S, is_timestamped, new_secret, sign, sign_github, sign_standard, sign_stripe,
    signature_header, timestamp_header, unix_now, with_value, without,
};
use serde_json::json;

/// Time for a request that was rejected to (wrongly) show up at the receiver anyway.
const QUIET: Duration = Duration::from_millis(700);

fn with_json(signature: HeaderList) -> HeaderList {
    let mut headers = json_content_type();
    headers.extend(signature);
    headers
}

/// The same bytes with the amount changed: the signature no longer matches.
fn tamper(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).expect("payloads are UTF-8");
    assert!(text.contains("4200"));
    text.replacen("4200", "4201", 1).into_bytes()
}

async fn check_mode(mode: &str) {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint = s
        .endpoint(
            &receiver.url("/in"),
            json!({"verification": {"mode": mode, "secret": secret}}),
        )
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    let now = unix_now();
    let mut accepted: Vec<Vec<u8>> = Vec::new();

    // A valid signature.
    let body = unique_json(mode);
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(sign(mode, &secret, &body, now)),
        )
        .await;
    assert_accepted(&response);
    accepted.push(body.clone());

    // The signature of other bytes.
    let tampered = tamper(&body);
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &tampered,
            &with_json(sign(mode, &secret, &body, now)),
        )
        .await;
    assert_problem(&response, 401, "invalid_signature");

    // Signed with another secret.
    let body = unique_json(mode);
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(sign(mode, &new_secret(), &body, now)),
        )
        .await;
    assert_problem(&response, 401, "invalid_signature");

    // No signature header at all (the rest of the mode's headers present).
    let signed = sign(mode, &secret, &body, now);
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(without(&signed, signature_header(mode))),
        )
        .await;
    assert_problem(&response, 401, "invalid_signature");

    // A garbage signature value.
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(with_value(&signed, signature_header(mode), "garbage")),
        )
        .await;
    assert_problem(&response, 401, "invalid_signature");

    if is_timestamped(mode) {
        // Stale and future timestamps, each correctly signed.
        for t in [now - 2 * TOLERANCE_S, now + 2 * TOLERANCE_S] {
            let body = unique_json(mode);
            let response = s
                .api
                .ingest(
                    &endpoint_id,
                    &body,
                    &with_json(sign(mode, &secret, &body, t)),
                )
                .await;
            assert_problem(&response, 401, "signature_expired");
        }

        // Well inside the 300 s tolerance.
        let body = unique_json(mode);
        let t = now - TOLERANCE_S * 4 / 5;
        let response = s
            .api
            .ingest(
                &endpoint_id,
                &body,
                &with_json(sign(mode, &secret, &body, t)),
            )
            .await;
        assert_accepted(&response);
        accepted.push(body);

        if let Some(timestamp) = timestamp_header(mode) {
            let body = unique_json(mode);
            let signed = sign(mode, &secret, &body, now);
            let response = s
                .api
                .ingest(&endpoint_id, &body, &with_json(without(&signed, timestamp)))
                .await;
            assert_problem(&response, 401, "invalid_signature");
        }
    }

    let got = receiver.wait_for(accepted.len(), DELIVERY_DEADLINE).await;
    assert_eq!(
        receiver.arrivals_during(QUIET).await,
        0,
        "only accepted requests may be forwarded"
    );
    let mut received: Vec<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
    received.sort();
    accepted.sort();
    assert_eq!(
        received, accepted,
        "the receiver gets exactly the accepted bodies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_mode() {
    check_mode("stripe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_mode() {
    check_mode("github").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_mode() {
    check_mode("standard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_mode() {
    check_mode("shopify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_mode() {
    check_mode("slack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_mode() {
    check_mode("generic").await;
}

/// `none`: no check, whatever the headers and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_accepts_anything() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint = s
        .endpoint(
            &receiver.url("/in"),
            json!({"verification": {"mode": "none"}}),
        )
        .await;
    let endpoint_id = str_field(&endpoint, "id");

    let plain = unique_json("none");
    assert_accepted(&s.api.ingest(&endpoint_id, &plain, &[]).await);

    let mut junk = hookrelay_tests::payload::unique_binary();
    junk.extend_from_slice(b" not json {");
    let bogus_signatures: HeaderList = ["stripe", "github", "shopify", "slack", "generic"]
        .iter()
        .map(|mode| {
            (
                signature_header(mode).to_string(),
                "v1=deadbeef".to_string(),
            )
        })
        .collect();
    assert_accepted(&s.api.ingest(&endpoint_id, &junk, &bogus_signatures).await);

    let got = receiver.wait_for(2, DELIVERY_DEADLINE).await;
    let mut received: Vec<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
    received.sort();
    let mut sent = vec![plain, junk];
    sent.sort();
    assert_eq!(received, sent);
}

/// Stripe: any of several `v1` signatures may match (secret rotation on Stripe's side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_any_v1_may_match() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint = s
        .endpoint(
            &receiver.url("/in"),
            json!({"verification": {"mode": "stripe", "secret": secret}}),
        )
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    let now = unix_now();
    let body = unique_json("stripe");
    let good = &sign_stripe(&secret, &body, now)[0].1;
    let good_v1 = good
        .split(',')
        .find(|p| p.starts_with("v1="))
        .expect("a v1 part");
    let header = format!("t={now},v1={},{good_v1}", "0".repeat(64));
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(vec![("Stripe-Signature".into(), header)]),
        )
        .await;
    assert_accepted(&response);

    let body = unique_json("stripe");
    let header = format!("t={now},v1={},v1={}", "0".repeat(64), "1".repeat(64));
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(vec![("Stripe-Signature".into(), header)]),
        )
        .await;
    assert_problem(&response, 401, "invalid_signature");
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
}

/// Standard Webhooks: any of several space-separated signatures may match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_any_signature_may_match() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint = s
        .endpoint(
            &receiver.url("/in"),
            json!({"verification": {"mode": "standard", "secret": secret}}),
        )
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    let body = unique_json("standard");
    let msg_id = format!("msg_{}", hookrelay_tests::payload::nonce());
    let signed = sign_standard(&secret, &msg_id, &body, unix_now());
    let good = signed[2].1.clone();
    let both = format!("v1,{} {good}", "A".repeat(44));
    let response = s
        .api
        .ingest(
            &endpoint_id,
            &body,
            &with_json(with_value(&signed, "webhook-signature", &both)),
        )
        .await;
    assert_accepted(&response);
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
}

/// A verification secret left out is generated, shown in the create response, verifies, and is
/// not shown in full again by `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secret_is_shown_once_and_verifies() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint = s
        .endpoint(
            &receiver.url("/in"),
            json!({"verification": {"mode": "github"}}),
        )
        .await;
    let endpoint_id = str_field(&endpoint, "id");
    let secret = endpoint["verification"]["secret"]
        .as_str()
        .filter(|secret| !secret.is_empty())
        .unwrap_or_else(|| panic!("the create response shows the generated secret:\n{endpoint:#}"))
        .to_string();

    let body = unique_json("github");
    let response = s
        .api
        .ingest(&endpoint_id, &body, &with_json(sign_github(&secret, &body)))
        .await;
    assert_accepted(&response);
    receiver.wait_for(1, DELIVERY_DEADLINE).await;

    let fetched = s.api.get_endpoint(&s.admin_key, &endpoint_id).await;
    assert!(
        !fetched.to_string().contains(&secret),
        "GET must not show the verification secret in full:\n{fetched:#}"
    );
}
