//! Endpoints (contract: "Endpoints"): PATCH any subset, list, and secret rotation with the 24 h
//! dual-valid window — both verification secrets accepted on ingest, both signatures sent when
//! forwarding.

use std::time::Duration;

use hookrelay_tests::api::{assert_accepted, parse_time};
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::signing::{sign_github, verify_standard};
use serde_json::json;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_only_what_it_names_and_validates() {
    let s = Scenario::start().await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let created = s
        .endpoint(&ok.url("/a"), json!({"name": "orig", "max_in_flight": 7}))
        .await;
    let id = created["id"].as_str().unwrap();
    let http = s.server.http();
    let r = http
        .patch(
            &format!("/v1/endpoints/{id}"),
            &json!({"timeout_ms": 1234, "retry": {"max_attempts": 3}}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = s.api.get_endpoint(&s.admin_key, id).await;
    assert_eq!(got["timeout_ms"], 1234);
    assert_eq!(got["retry"]["max_attempts"], 3);
    assert_eq!(
        got["retry"]["base_delay_ms"], created["retry"]["base_delay_ms"],
        "other retry fields kept"
    );
    assert_eq!(got["max_in_flight"], 7);
    assert_eq!(got["name"], "orig");
    assert_eq!(got["signing_secret"], created["signing_secret"]);
    let r = http
        .patch(
            &format!("/v1/endpoints/{id}"),
            &json!({"destination_url": "ftp://x/y"}),
            Some(&s.admin_key),
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
    assert_eq!(
        s.api.get_endpoint(&s.admin_key, id).await["destination_url"],
        ok.url("/a")
    );
    let list = http.get("/v1/endpoints", Some(&s.admin_key)).await.json();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == id)
    );
    assert!(list["next_cursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_both_secrets_valid_for_24_hours() {
    let s = Scenario::start().await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let created = s
        .endpoint(
            &ok.url("/r"),
            json!({"verification": {"mode": "github", "secret": "old-secret"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let old_signing = created["signing_secret"].as_str().unwrap().to_string();
    let http = s.server.http();

    let r = http
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            &json!({"target": "verification", "secret": "new-secret"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let rotated = r.json();
    assert_eq!(rotated["secret"], "new-secret");
    let until = parse_time(&rotated["previous_valid_until"], "previous_valid_until");
    let in_24h = OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!(
        (until - in_24h).abs() < time::Duration::minutes(5),
        "{until} vs {in_24h}"
    );
    for secret in ["old-secret", "new-secret"] {
        let body = format!("{{\"with\": \"{secret}\"}}");
        let r = s
            .api
            .ingest(&id, body.as_bytes(), &sign_github(secret, body.as_bytes()))
            .await;
        assert_accepted(&r);
    }
    let body = b"{\"with\": \"other\"}";
    let r = s
        .api
        .ingest(&id, body, &sign_github("wrong-secret", body))
        .await;
    assert_problem(&r, 401, "invalid_signature");

    let r = http
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            &json!({"target": "signing"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_signing = r.json()["secret"].as_str().unwrap().to_string();
    assert!(new_signing.starts_with("whsec_") && new_signing != old_signing);
    let body = b"{\"after\": \"signing rotation\"}";
    assert_accepted(
        &s.api
            .ingest(&id, body, &sign_github("new-secret", body))
            .await,
    );
    let arrived = ok.wait_for(3, Duration::from_secs(30)).await;
    let last = arrived
        .iter()
        .find(|r| r.body.as_ref() == body)
        .expect("the post-rotation delivery arrived");
    let header = last.header("webhook-signature").unwrap();
    assert_eq!(
        header.split(' ').count(),
        2,
        "both signatures during the window: {header}"
    );
    let (msg_id, ts) = (
        last.header("webhook-id").unwrap(),
        last.header("webhook-timestamp").unwrap(),
    );
    assert!(verify_standard(&new_signing, msg_id, ts, body, header));
    assert!(verify_standard(&old_signing, msg_id, ts, body, header));
    let r = http
        .post(
            &format!("/v1/endpoints/{id}/rotate-secret"),
            &json!({"target": "nonsense"}),
            Some(&s.admin_key),
        )
        .await;
    assert_problem(&r, 422, "validation_failed");
}
