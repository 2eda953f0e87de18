//! The audit log (contract: "Audit") and the OpenAPI document ("Process and configuration"):
//! every change made through the management API is recorded with the actor's key id, the
//! action, the target, the client IP and the User-Agent; only changes that succeeded; tenants
//! see only their own log; viewers can read it; it survives kill -9.

use hookrelay_tests::api::{endpoint_to, parse_time, str_field};
use hookrelay_tests::audit::{actions, key_id, read_all, read_page, send_as};
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::scenario::Scenario;
use hyper::Method;
use serde_json::{Value, json};

const UA: &str = "hookrelay-e2e-audit/1.0 (+tests)";
/// A destination nobody listens on: these tests never deliver.
const DESTINATION: &str = "http://127.0.0.1:9/hooks";

/// Creates an endpoint as `key` with the test User-Agent; returns its id.
async fn create_endpoint(s: &Scenario, key: &str) -> String {
    let http = s.server.http();
    let response = send_as(
        &http,
        Method::POST,
        "/v1/endpoints",
        Some(&endpoint_to(DESTINATION, json!({}))),
        key,
        UA,
    )
    .await;
    assert_eq!(response.status, 201, "{response:?}");
    str_field(&response.json(), "id")
}

fn pair(action: &str, target: &str) -> (String, Option<String>) {
    (action.to_string(), Some(target.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_with_actor_action_target_ip_and_user_agent() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let admin = s.admin_key.as_str();
    let admin_id = key_id(&http, admin, admin).await;

    let ep = create_endpoint(&s, admin).await;
    let path = format!("/v1/endpoints/{ep}");
    let ok =
        |r: &hookrelay_tests::http::Response, status: u16| assert_eq!(r.status, status, "{r:?}");
    ok(
        &send_as(
            &http,
            Method::PATCH,
            &path,
            Some(&json!({"timeout_ms": 2000})),
            admin,
            UA,
        )
        .await,
        200,
    );
    ok(
        &send_as(
            &http,
            Method::POST,
            &format!("{path}/pause"),
            Some(&json!({})),
            admin,
            UA,
        )
        .await,
        200,
    );
    ok(
        &send_as(
            &http,
            Method::POST,
            &format!("{path}/resume"),
            Some(&json!({})),
            admin,
            UA,
        )
        .await,
        200,
    );
    ok(
        &send_as(
            &http,
            Method::POST,
            &format!("{path}/rotate-secret"),
            Some(&json!({"target": "signing"})),
            admin,
            UA,
        )
        .await,
        200,
    );
    let created = send_as(
        &http,
        Method::POST,
        "/v1/api-keys",
        Some(&json!({"name": "ci", "role": "viewer"})),
        admin,
        UA,
    )
    .await;
    ok(&created, 201);
    let new_key_id = str_field(&created.json(), "id");
    ok(
        &send_as(
            &http,
            Method::DELETE,
            &format!("/v1/api-keys/{new_key_id}"),
            None,
            admin,
            UA,
        )
        .await,
        204,
    );

    // Neither failed changes nor reads are recorded.
    let bad = send_as(
        &http,
        Method::PATCH,
        &path,
        Some(&json!({"destination_url": "ftp://x"})),
        admin,
        UA,
    )
    .await;
    assert_problem(&bad, 422, "validation_failed");
    let missing = send_as(
        &http,
        Method::DELETE,
        "/v1/endpoints/ep_01J0000000000000000000000Z",
        None,
        admin,
        UA,
    )
    .await;
    assert_problem(&missing, 404, "not_found");
    ok(
        &send_as(&http, Method::GET, &path, None, admin, UA).await,
        200,
    );

    ok(
        &send_as(&http, Method::DELETE, &path, None, admin, UA).await,
        204,
    );

    let entries = read_all(&http, admin, 50).await;
    let expected = vec![
        pair("endpoint.delete", &ep),
        pair("api_key.delete", &new_key_id),
        pair("api_key.create", &new_key_id),
        pair("endpoint.rotate_secret", &ep),
        pair("endpoint.resume", &ep),
        pair("endpoint.pause", &ep),
        pair("endpoint.update", &ep),
        pair("endpoint.create", &ep),
    ];
    assert_eq!(actions(&entries), expected, "newest first:\n{entries:#?}");
    for entry in &entries {
        assert_eq!(entry["actor"], admin_id.as_str(), "{entry:#}");
        assert_eq!(entry["ip"], "127.0.0.1", "{entry:#}");
        assert_eq!(entry["user_agent"], UA, "{entry:#}");
    }
    let times: Vec<_> = entries.iter().map(|e| parse_time(&e["at"], "at")).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first by time: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_log_and_viewers_can_read_it() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let root = s.api.root_key().to_string();
    let ep = create_endpoint(&s, &s.admin_key).await;
    let viewer = send_as(
        &http,
        Method::POST,
        "/v1/api-keys",
        Some(&json!({"name": "ro", "role": "viewer"})),
        &s.admin_key,
        UA,
    )
    .await;
    assert_eq!(viewer.status, 201, "{viewer:?}");
    let viewer_key = str_field(&viewer.json(), "key");

    // A viewer reads the tenant's log; its refused write is not in it.
    let refused = send_as(
        &http,
        Method::DELETE,
        &format!("/v1/endpoints/{ep}"),
        None,
        &viewer_key,
        UA,
    )
    .await;
    assert_problem(&refused, 403, "forbidden");
    let seen_by_viewer = read_all(&http, &viewer_key, 10).await;
    assert_eq!(
        actions(&seen_by_viewer)[1],
        pair("endpoint.create", &ep),
        "{seen_by_viewer:#?}"
    );
    assert_eq!(
        seen_by_viewer.len(),
        2,
        "endpoint.create and api_key.create only:\n{seen_by_viewer:#?}"
    );

    // Another tenant sees none of it, and cannot name the first tenant's log.
    let (other_id, other_admin) = s.api.tenant("globex").await;
    let other_ep = create_endpoint(&s, &other_admin).await;
    let seen_by_other = read_all(&http, &other_admin, 10).await;
    assert_eq!(
        actions(&seen_by_other),
        vec![pair("endpoint.create", &other_ep)]
    );
    let foreign = http
        .get(
            &format!("/v1/audit?tenant_id={}", s.tenant_id),
            Some(&other_admin),
        )
        .await;
    assert_problem(&foreign, 404, "not_found");
    assert_eq!(actions(&read_all(&http, &s.admin_key, 10).await).len(), 2);

    // The operator's own log holds its actions (tenant creation), not the tenants' changes; it
    // can read a tenant's log by naming it.
    let operator = read_all(&http, &root, 10).await;
    let created: Vec<_> = actions(&operator);
    assert!(
        created.contains(&pair("tenant.create", &s.tenant_id)),
        "{operator:#?}"
    );
    assert!(
        created.contains(&pair("tenant.create", &other_id)),
        "{operator:#?}"
    );
    assert!(
        created.iter().all(|(a, _)| a == "tenant.create"),
        "{operator:#?}"
    );
    for entry in &operator {
        assert!(str_field(entry, "actor").starts_with("ak_"), "{entry:#}");
    }
    let named = read_page(&http, &root, &format!("tenant_id={other_id}")).await;
    assert_eq!(
        actions(named["data"].as_array().unwrap()),
        vec![pair("endpoint.create", &other_ep)]
    );

    // Without a key: 401.
    assert_problem(&http.get("/v1/audit", None).await, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_since_and_limits() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(create_endpoint(&s, &s.admin_key).await);
    }
    let expected: Vec<_> = ids
        .iter()
        .rev()
        .map(|id| pair("endpoint.create", id))
        .collect();
    for limit in [1, 3, 7, 1000] {
        assert_eq!(
            actions(&read_all(&http, &s.admin_key, limit).await),
            expected,
            "limit={limit}"
        );
    }
    let page = read_page(&http, &s.admin_key, "limit=3").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert!(page["next_cursor"].is_string());
    let all = read_page(&http, &s.admin_key, "").await;
    assert!(
        all["next_cursor"].is_null(),
        "default limit 50 holds all 7:\n{all:#}"
    );

    // `since`: only entries at or after it.
    let fourth = &all["data"][3];
    let since = fourth["at"].as_str().unwrap();
    let recent = read_page(
        &http,
        &s.admin_key,
        &format!("since={}", since.replace('+', "%2B")),
    )
    .await;
    let recent = recent["data"].as_array().unwrap();
    assert!(recent.len() >= 4 && recent.len() < 7 + 1, "{recent:#?}");
    assert!(
        recent
            .iter()
            .all(|e| parse_time(&e["at"], "at") >= parse_time(&fourth["at"], "at"))
    );
    let future = read_page(&http, &s.admin_key, "since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["data"], json!([]));

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "since=yesterday",
        "cursor=not-a-cursor",
    ] {
        let response = http
            .get(&format!("/v1/audit?{bad}"), Some(&s.admin_key))
            .await;
        assert_problem(&response, 422, "validation_failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_kill_9_and_restart() {
    let mut s = Scenario::start().await;
    let http = s.server.http();
    let first = create_endpoint(&s, &s.admin_key).await;
    let pause = send_as(
        &http,
        Method::POST,
        &format!("/v1/endpoints/{first}/pause"),
        Some(&json!({})),
        &s.admin_key,
        UA,
    )
    .await;
    assert_eq!(pause.status, 200, "{pause:?}");
    let before = read_all(&http, &s.admin_key, 50).await;
    assert_eq!(before.len(), 2);

    s.server.kill9();
    s.server.restart().await;

    let after = read_all(&http, &s.admin_key, 50).await;
    assert_eq!(after, before, "the audit log after kill -9");
    let second = create_endpoint(&s, &s.admin_key).await;
    let entries = read_all(&http, &s.admin_key, 1).await;
    assert_eq!(
        actions(&entries),
        vec![
            pair("endpoint.create", &second),
            pair("endpoint.pause", &first),
            pair("endpoint.create", &first)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_key() {
    let s = Scenario::start().await;
    let response = s.server.http().get("/v1/openapi.json", None).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/json")
    );
    let doc: Value = response.json();
    let version = doc["openapi"].as_str().unwrap_or("");
    assert!(version.starts_with("3.1."), "openapi = {version:?}");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/ingest/{endpoint_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/endpoints",
        "/v1/audit",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    assert!(doc["paths"]["/v1/audit"]["get"]["responses"]["200"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
