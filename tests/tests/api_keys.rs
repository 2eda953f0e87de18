//! API keys (contract: "Tenants and keys"): created keys are shown once, listed without the key,
//! `last_used_at` follows use, and deleting a key revokes it at once.

use std::time::{Duration, Instant};

use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::scenario::Scenario;
use serde_json::{Value, json};

async fn listed(s: &Scenario, id: &str) -> Option<Value> {
    let r = s
        .server
        .http()
        .get("/v1/api-keys", Some(&s.admin_key))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_track_use_and_revoke() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let r = http
        .post(
            "/v1/api-keys",
            &json!({"name": "ci", "role": "viewer"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let created = r.json();
    let key = created["key"].as_str().expect("key shown once").to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("hr_viewer_"), "{key}");
    assert_eq!(created["role"], "viewer");

    let entry = listed(&s, &id).await.expect("listed");
    assert!(
        entry.get("key").is_none(),
        "the key itself is never listed: {entry}"
    );
    assert!(key.starts_with(entry["prefix"].as_str().unwrap()));
    assert!(entry["last_used_at"].is_null(), "unused yet: {entry}");

    assert_eq!(http.get("/v1/endpoints", Some(&key)).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = listed(&s, &id).await.expect("listed");
        if entry["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {entry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let r = http
        .delete(&format!("/v1/api-keys/{id}"), Some(&s.admin_key))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_problem(
        &http.get("/v1/endpoints", Some(&key)).await,
        401,
        "unauthorized",
    );
    assert!(listed(&s, &id).await.is_none());
    // A viewer cannot create keys; a bad role is refused.
    let r = http
        .post("/v1/api-keys", &json!({"role": "root"}), Some(&s.admin_key))
        .await;
    assert_problem(&r, 422, "validation_failed");
}
