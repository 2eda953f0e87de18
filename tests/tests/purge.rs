//! GDPR purge (contract: "Tenants and keys"): `DELETE /v1/tenants/{id}/data` leaves none of the
//! tenant's payloads readable — not through the API, not in the DLQ, not in any file of the data
//! dir — and survives a restart; other tenants are untouched.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hookrelay_tests::api::{assert_accepted, fast_retry};
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::json;

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_no_readable_payload() {
    let mut s = Scenario::start().await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let bad = Receiver::start(Script::always(Step::status(422))).await;
    let good_ep = s.endpoint(&ok.url("/ok"), json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad_ep = s
        .endpoint(&bad.url("/bad"), json!({"retry": fast_retry(1)}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let marker = format!("SECRET-PAYLOAD-{}", std::process::id());
    let body = format!("{{\"ssn\": \"{marker}\"}}");
    let delivered = assert_accepted(&s.api.ingest_json(&good_ep, body.as_bytes()).await);
    let dead = assert_accepted(
        &s.api
            .ingest_json(&bad_ep, format!("{body} ").as_bytes())
            .await,
    );
    assert_eq!(
        s.api.wait_final(&s.admin_key, &delivered).await["status"],
        "success"
    );
    assert_eq!(
        s.api.wait_final(&s.admin_key, &dead).await["status"],
        "failed"
    );
    // Another tenant, same kind of payload, must survive the purge.
    let (other_id, other_key) = s.api.tenant("other").await;
    let other_ep = s
        .api
        .create_endpoint(
            &other_key,
            &json!({"destination_url": ok.url("/o"), "verification": {"mode": "none"}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other_delivery = assert_accepted(&s.api.ingest_json(&other_ep, b"{\"keep\": true}").await);
    assert_eq!(
        s.api.wait_final(&other_key, &other_delivery).await["status"],
        "success"
    );

    // Payloads are sealed at rest: the log never holds the marker in the clear.
    let data_dir = s.server.data_dir().to_path_buf();
    let log_hits: Vec<String> = files_containing(&data_dir, marker.as_bytes())
        .into_iter()
        .filter(|p| p.contains("/shards/"))
        .collect();
    assert!(log_hits.is_empty(), "payload in the clear in {log_hits:?}");

    let http = s.server.http();
    // Viewers and other tenants cannot purge.
    let r = http
        .delete(
            &format!("/v1/tenants/{}/data", s.tenant_id),
            Some(&other_key),
        )
        .await;
    assert_problem(&r, 404, "not_found");
    let r = http
        .delete(
            &format!("/v1/tenants/{}/data", s.tenant_id),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");

    let b64 = B64.encode(body.as_bytes());
    for needle in [marker.as_bytes(), b64.as_bytes()] {
        let hits = files_containing(&data_dir, needle);
        assert!(hits.is_empty(), "payload still readable in {hits:?}");
    }
    assert!(
        !data_dir.join("dlq").join(&s.tenant_id).exists(),
        "the tenant's DLQ objects are gone"
    );
    // Its keys no longer work; the root key still sees nothing of the payloads.
    let r = http
        .get(&format!("/v1/deliveries/{delivered}"), Some(&s.admin_key))
        .await;
    assert_problem(&r, 401, "unauthorized");
    let root = s.api.root_key().to_string();
    for id in [&delivered, &dead] {
        let r = http.get(&format!("/v1/deliveries/{id}"), Some(&root)).await;
        assert_problem(&r, 404, "not_found");
    }
    // After a crash and restart, still gone; the other tenant still there.
    s.server.kill9();
    s.server.restart().await;
    let http = s.server.http();
    for id in [&delivered, &dead] {
        let r = http.get(&format!("/v1/deliveries/{id}"), Some(&root)).await;
        assert_problem(&r, 404, "not_found");
    }
    let d = s.api.get_delivery(&other_key, &other_delivery).await;
    assert_eq!(d["tenant_id"], other_id.as_str());
    assert_eq!(
        B64.decode(d["request"]["body_base64"].as_str().unwrap())
            .unwrap(),
        b"{\"keep\": true}"
    );
}
