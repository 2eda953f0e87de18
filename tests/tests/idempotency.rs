//! Deduplication at ingest (contract: "Ingest", step 5): the `Idempotency-Key` header, else the
//! provider's delivery id, else a content hash; same key and body → 200 duplicate with the first
//! delivery's id; same key, other body → 422 `idempotency_key_reused`; keys are per endpoint and
//! survive a crash.

use std::time::Duration;

use hookrelay_tests::api::{
    DELIVERY_DEADLINE, assert_accepted, assert_duplicate, json_content_type, str_field,
};
use hookrelay_tests::http::HeaderList;
use hookrelay_tests::payload::{nonce, stripe_event, unique_json};
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::signing::{
    new_secret, sign_generic, sign_github, sign_shopify, sign_standard, sign_stripe, unix_now,
};
use serde_json::json;

/// Time for a duplicate that was (wrongly) enqueued to reach the receiver.
const QUIET: Duration = Duration::from_millis(800);

fn keyed(key: &str) -> HeaderList {
    let mut headers = json_content_type();
    headers.push(("Idempotency-Key".into(), key.into()));
    headers
}

fn plus(mut a: HeaderList, b: HeaderList) -> HeaderList {
    a.extend(b);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_header() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    let key = format!("order-{}", nonce());
    let body = unique_json("order.paid");

    let first = assert_accepted(&s.api.ingest(&endpoint_id, &body, &keyed(&key)).await);
    let again = s.api.ingest(&endpoint_id, &body, &keyed(&key)).await;
    assert_duplicate(&again, &first);

    let other_body = unique_json("order.paid");
    let reused = s.api.ingest(&endpoint_id, &other_body, &keyed(&key)).await;
    assert_problem(&reused, 422, "idempotency_key_reused");

    // Same body under another key is another delivery.
    let second = assert_accepted(
        &s.api
            .ingest(&endpoint_id, &body, &keyed(&format!("{key}-b")))
            .await,
    );
    assert_ne!(first, second);

    let got = receiver.wait_for(2, DELIVERY_DEADLINE).await;
    assert_eq!(
        receiver.arrivals_during(QUIET).await,
        0,
        "a duplicate must not be forwarded"
    );
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| {
            r.header("x-hookrelay-delivery-id")
                .unwrap_or("")
                .to_string()
        })
        .collect();
    ids.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ids, expected, "exactly one forward per delivery");
}

/// Keys are scoped to the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_per_endpoint() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let a = str_field(&s.endpoint(&receiver.url("/a"), json!({})).await, "id");
    let b = str_field(&s.endpoint(&receiver.url("/b"), json!({})).await, "id");
    let key = format!("shared-{}", nonce());
    let body = unique_json("x");
    let on_a = assert_accepted(&s.api.ingest(&a, &body, &keyed(&key)).await);
    let on_b = assert_accepted(&s.api.ingest(&b, &body, &keyed(&key)).await);
    assert_ne!(on_a, on_b);
    receiver.wait_for(2, DELIVERY_DEADLINE).await;
}

/// `X-GitHub-Delivery` is the key when there is no `Idempotency-Key`; the header wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_delivery_id() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/gh"),
            json!({"verification": {"mode": "github", "secret": secret}}),
        )
        .await,
        "id",
    );
    let delivery = format!("72d3162e-cc78-11e3-81ab-{}", nonce());
    let gh = |body: &[u8], delivery: &str| {
        plus(
            plus(json_content_type(), sign_github(&secret, body)),
            vec![("X-GitHub-Delivery".into(), delivery.to_string())],
        )
    };
    let body = unique_json("push");
    let first = assert_accepted(
        &s.api
            .ingest(&endpoint_id, &body, &gh(&body, &delivery))
            .await,
    );
    assert_duplicate(
        &s.api
            .ingest(&endpoint_id, &body, &gh(&body, &delivery))
            .await,
        &first,
    );
    let other = unique_json("push");
    assert_problem(
        &s.api
            .ingest(&endpoint_id, &other, &gh(&other, &delivery))
            .await,
        422,
        "idempotency_key_reused",
    );

    // An explicit Idempotency-Key takes precedence over the provider id.
    let mut explicit = gh(&body, &delivery);
    explicit.push(("Idempotency-Key".into(), format!("explicit-{}", nonce())));
    let third = assert_accepted(&s.api.ingest(&endpoint_id, &body, &explicit).await);
    assert_ne!(third, first);

    receiver.wait_for(2, DELIVERY_DEADLINE).await;
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
}

/// `webhook-id` (Standard Webhooks) is the key: a re-send signed at another time is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhook_id() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/std"),
            json!({"verification": {"mode": "standard", "secret": secret}}),
        )
        .await,
        "id",
    );
    let msg_id = format!("msg_{}", nonce());
    let now = unix_now();
    let body = unique_json("std");
    let first = assert_accepted(
        &s.api
            .ingest(
                &endpoint_id,
                &body,
                &plus(
                    json_content_type(),
                    sign_standard(&secret, &msg_id, &body, now),
                ),
            )
            .await,
    );
    let resend = plus(
        json_content_type(),
        sign_standard(&secret, &msg_id, &body, now - 30),
    );
    assert_duplicate(&s.api.ingest(&endpoint_id, &body, &resend).await, &first);
    let other = unique_json("std");
    let reused = plus(
        json_content_type(),
        sign_standard(&secret, &msg_id, &other, now),
    );
    assert_problem(
        &s.api.ingest(&endpoint_id, &other, &reused).await,
        422,
        "idempotency_key_reused",
    );
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
}

/// The Stripe event `id` in the body is the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_event_id() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/stripe"),
            json!({"verification": {"mode": "stripe", "secret": secret}}),
        )
        .await,
        "id",
    );
    let event_id = format!("evt_{}", nonce());
    let body = stripe_event(&event_id, 100);
    let now = unix_now();
    let first = assert_accepted(
        &s.api
            .ingest(
                &endpoint_id,
                &body,
                &plus(json_content_type(), sign_stripe(&secret, &body, now)),
            )
            .await,
    );
    // Stripe re-sends the same event with a fresh signature.
    let resend = plus(json_content_type(), sign_stripe(&secret, &body, now - 60));
    assert_duplicate(&s.api.ingest(&endpoint_id, &body, &resend).await, &first);
    let other = stripe_event(&event_id, 200);
    let reused = plus(json_content_type(), sign_stripe(&secret, &other, now));
    assert_problem(
        &s.api.ingest(&endpoint_id, &other, &reused).await,
        422,
        "idempotency_key_reused",
    );
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
}

/// `X-Shopify-Webhook-Id` is the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_webhook_id() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/shop"),
            json!({"verification": {"mode": "shopify", "secret": secret}}),
        )
        .await,
        "id",
    );
    let webhook_id = format!("b54557e4-{}", nonce());
    let shop = |body: &[u8]| {
        plus(
            plus(json_content_type(), sign_shopify(&secret, body)),
            vec![("X-Shopify-Webhook-Id".into(), webhook_id.clone())],
        )
    };
    let body = unique_json("orders/create");
    let first = assert_accepted(&s.api.ingest(&endpoint_id, &body, &shop(&body)).await);
    assert_duplicate(
        &s.api.ingest(&endpoint_id, &body, &shop(&body)).await,
        &first,
    );
    let other = unique_json("orders/create");
    assert_problem(
        &s.api.ingest(&endpoint_id, &other, &shop(&other)).await,
        422,
        "idempotency_key_reused",
    );
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
}

/// With no key at all, the hash covers the signature timestamp: same body and timestamp is a
/// duplicate, another timestamp is another delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_hash_with_signature_timestamp() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let secret = new_secret();
    let endpoint_id = str_field(
        &s.endpoint(
            &receiver.url("/gen"),
            json!({"verification": {"mode": "generic", "secret": secret}}),
        )
        .await,
        "id",
    );
    let now = unix_now();
    let body = unique_json("generic");
    let signed = plus(json_content_type(), sign_generic(&secret, &body, now));
    let first = assert_accepted(&s.api.ingest(&endpoint_id, &body, &signed).await);
    assert_duplicate(&s.api.ingest(&endpoint_id, &body, &signed).await, &first);
    let later = plus(json_content_type(), sign_generic(&secret, &body, now - 1));
    let second = assert_accepted(&s.api.ingest(&endpoint_id, &body, &later).await);
    assert_ne!(first, second);
    receiver.wait_for(2, DELIVERY_DEADLINE).await;
    assert_eq!(receiver.arrivals_during(QUIET).await, 0);
}

/// With no key and no signature timestamp, the hash covers a 5-minute arrival bucket: the same
/// body sent twice in a row is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_hash_within_arrival_bucket() {
    const BUCKET_S: i64 = 300;
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/none"), json!({})).await, "id");
    // Both sends must fall in one bucket; if a boundary passes between them, try once more
    // (the next pair is then 5 minutes from any boundary).
    for _ in 0..2 {
        let bucket = unix_now() / BUCKET_S;
        let body = unique_json("bucket");
        let first = assert_accepted(&s.api.ingest_json(&endpoint_id, &body).await);
        let again = s.api.ingest_json(&endpoint_id, &body).await;
        if unix_now() / BUCKET_S != bucket {
            continue;
        }
        assert_duplicate(&again, &first);
        return;
    }
    panic!("two bucket boundaries in a row: the clock is jumping");
}

/// Keys survive kill -9: after a restart the same key and body is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_survive_a_crash() {
    let mut s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    let key = format!("crash-{}", nonce());
    let body = unique_json("crash");
    let first = assert_accepted(&s.api.ingest(&endpoint_id, &body, &keyed(&key)).await);

    s.server.kill9();
    s.server.restart().await;

    assert_duplicate(
        &s.api.ingest(&endpoint_id, &body, &keyed(&key)).await,
        &first,
    );
    assert_problem(
        &s.api
            .ingest(&endpoint_id, &unique_json("crash"), &keyed(&key))
            .await,
        422,
        "idempotency_key_reused",
    );
    // The acknowledged delivery itself also survived (at least once).
    let got = receiver.wait_for(1, DELIVERY_DEADLINE).await;
    assert!(
        got.iter()
            .all(|r| r.header("x-hookrelay-delivery-id") == Some(first.as_str())),
        "only the one delivery is forwarded"
    );
}
