//! The management API's basics (contract: "Process and configuration" bootstrap,
//! "Authentication", "Tenants and keys", "Endpoints"): the operator key, 401/403/404 rules and
//! tenant isolation, endpoint creation with its defaults, destination URL validation, deletion.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, assert_id, parse_time, str_field};
use hookrelay_tests::http::headers;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::{Server, ServerOptions};
use hyper::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_key_from_environment_manages_tenants() {
    let server = Server::start_default().await;
    let api = server.api();
    let http = server.http();
    let response = http
        .post(
            "/v1/tenants",
            &json!({"name": "acme", "plan": "free"}),
            server.root_key(),
        )
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    let tenant = response.json();
    assert_id(&str_field(&tenant, "id"), "tn_");
    assert_eq!(tenant["name"], "acme");
    assert_eq!(tenant["plan"], "free");
    parse_time(&tenant["created_at"], "created_at");
    assert!(str_field(&tenant, "admin_key").starts_with("hr_admin_"));

    // The root key also reads the tenant.
    let id = str_field(&tenant, "id");
    let fetched = http
        .get(&format!("/v1/tenants/{id}"), Some(api.root_key()))
        .await;
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.json()["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_keys_are_401() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let body = json!({"name": "x", "plan": "free"});
    assert_problem(
        &http.post("/v1/tenants", &body, None).await,
        401,
        "unauthorized",
    );
    assert_problem(
        &http
            .post("/v1/tenants", &body, Some("hr_root_notthekey"))
            .await,
        401,
        "unauthorized",
    );
    let basic = headers(&[
        ("Authorization", "Basic cm9vdDpyb290"),
        ("Content-Type", "application/json"),
    ]);
    let response = http
        .send(
            Method::POST,
            "/v1/tenants",
            bytes::Bytes::from(body.to_string()),
            &basic,
        )
        .await;
    assert_problem(&response, 401, "unauthorized");
    assert_problem(&http.get("/v1/endpoints", None).await, 401, "unauthorized");
    assert_problem(
        &http.get("/v1/endpoints", Some("hr_admin_forged")).await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_keys_cannot_use_root_routes() {
    let s = Scenario::start().await;
    let response = s
        .server
        .http()
        .post(
            "/v1/tenants",
            &json!({"name": "sneaky", "plan": "free"}),
            Some(&s.admin_key),
        )
        .await;
    assert_problem(&response, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_keys_are_read_only() {
    let s = Scenario::start().await;
    let http = s.server.http();
    let created = http
        .post(
            "/v1/api-keys",
            &json!({"name": "ro", "role": "viewer"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let key = str_field(&created.json(), "key");
    assert!(key.starts_with("hr_viewer_"), "viewer key {key:?}");
    assert_eq!(http.get("/v1/endpoints", Some(&key)).await.status, 200);
    let write = http
        .post(
            "/v1/endpoints",
            &json!({"destination_url": "http://127.0.0.1:9/x"}),
            Some(&key),
        )
        .await;
    assert_problem(&write, 403, "forbidden");
}

/// Another tenant's objects are 404, never 403, for reads and writes alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated() {
    let s = Scenario::start().await;
    let (_, other_key) = s.api.tenant("other").await;
    let http = s.server.http();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    let delivery_id = assert_accepted(&s.api.ingest_json(&endpoint_id, &unique_json("mine")).await);

    let ep = format!("/v1/endpoints/{endpoint_id}");
    assert_problem(&http.get(&ep, Some(&other_key)).await, 404, "not_found");
    assert_problem(
        &http
            .patch(&ep, &json!({"name": "hijacked"}), Some(&other_key))
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &http
            .post(&format!("{ep}/pause"), &json!({}), Some(&other_key))
            .await,
        404,
        "not_found",
    );
    assert_problem(&http.delete(&ep, Some(&other_key)).await, 404, "not_found");
    assert_problem(
        &http
            .get(&format!("/v1/deliveries/{delivery_id}"), Some(&other_key))
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &http
            .get(&format!("/v1/tenants/{}", s.tenant_id), Some(&other_key))
            .await,
        404,
        "not_found",
    );
    let listed = http.get("/v1/endpoints", Some(&other_key)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(
        !listed.text().contains(&endpoint_id),
        "another tenant's endpoint is listed:\n{listed:?}"
    );

    // Untouched for its owner.
    let mine = s.api.get_endpoint(&s.admin_key, &endpoint_id).await;
    assert_eq!(mine["name"], "e2e");
    assert_eq!(mine["paused"], false);
    s.api.get_delivery(&s.admin_key, &delivery_id).await;
    receiver.wait_for(1, DELIVERY_DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_defaults_are_filled_in() {
    let s = Scenario::start().await;
    let response = s
        .server
        .http()
        .post(
            "/v1/endpoints",
            &json!({"destination_url": "http://127.0.0.1:9/hook"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    let ep = response.json();
    let id = str_field(&ep, "id");
    assert_id(&id, "ep_");
    assert_eq!(ep["tenant_id"], s.tenant_id.as_str());
    assert_eq!(ep["destination_url"], "http://127.0.0.1:9/hook");
    let ingest_url = str_field(&ep, "ingest_url");
    assert!(
        (ingest_url.starts_with("http://") || ingest_url.starts_with("https://"))
            && ingest_url.ends_with(&format!("/ingest/{id}")),
        "ingest_url {ingest_url:?} is absolute and ends in /ingest/{id}"
    );
    let signing_secret = str_field(&ep, "signing_secret");
    let encoded = signing_secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("signing_secret {signing_secret:?} starts with whsec_"));
    assert!(
        B64.decode(encoded).is_ok_and(|key| !key.is_empty()),
        "signing_secret is whsec_<base64>"
    );
    assert_eq!(ep["paused"], false);
    parse_time(&ep["created_at"], "created_at");
    assert_eq!(ep["verification"]["mode"], "generic");
    assert!(
        ep["verification"]["secret"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "a generated verification secret is shown at creation:\n{ep:#}"
    );
    let retry = &ep["retry"];
    assert_eq!(retry["max_attempts"], 10, "{ep:#}");
    assert_eq!(retry["base_delay_ms"], 5000, "{ep:#}");
    assert_eq!(retry["factor"].as_f64(), Some(3.0), "{ep:#}");
    assert_eq!(retry["max_delay_ms"], 21_600_000u64, "{ep:#}");
    assert_eq!(retry["jitter"].as_f64(), Some(0.2), "{ep:#}");
    assert_eq!(retry["retry_client_errors_once"], false, "{ep:#}");
    assert_eq!(ep["timeout_ms"], 10000, "{ep:#}");
    assert_eq!(ep["max_in_flight"], 64, "{ep:#}");
    assert!(ep["rate_limit_per_s"].is_null(), "{ep:#}");
    assert_eq!(ep["ordering"], "none", "{ep:#}");

    // Lists have the contract's shape and include it.
    let listed = s
        .server
        .http()
        .get("/v1/endpoints", Some(&s.admin_key))
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed = listed.json();
    assert!(listed["data"].is_array(), "{listed:#}");
    assert!(
        listed["next_cursor"].is_null() || listed["next_cursor"].is_string(),
        "{listed:#}"
    );
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == id.as_str()),
        "{listed:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_must_be_http() {
    let s = Scenario::start().await;
    let http = s.server.http();
    for url in [
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "not a url",
    ] {
        let response = http
            .post(
                "/v1/endpoints",
                &json!({"destination_url": url}),
                Some(&s.admin_key),
            )
            .await;
        assert_problem(&response, 422, "validation_failed");
    }
    let response = http
        .post(
            "/v1/endpoints",
            &json!({"name": "no-url"}),
            Some(&s.admin_key),
        )
        .await;
    assert_problem(&response, 422, "validation_failed");
}

/// Without `allow_private_destinations`, internal addresses are refused; a public one is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_by_default() {
    let s = Scenario::start_with(ServerOptions::default().deny_private_destinations()).await;
    let http = s.server.http();
    for url in [
        "http://127.0.0.1:1/x",
        "http://169.254.169.254/",
        "http://10.1.2.3/hook",
        "http://192.168.1.1/hook",
        "http://172.16.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
    ] {
        let response = http
            .post(
                "/v1/endpoints",
                &json!({"destination_url": url}),
                Some(&s.admin_key),
            )
            .await;
        assert_problem(&response, 422, "validation_failed");
    }
    // The control: a public address literal (no DNS needed) is accepted.
    let public = http
        .post(
            "/v1/endpoints",
            &json!({"destination_url": "https://1.1.1.1/hook"}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(
        public.status, 201,
        "a public destination is allowed:\n{public:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_endpoint_is_gone() {
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    assert_accepted(
        &s.api
            .ingest_json(&endpoint_id, &unique_json("before"))
            .await,
    );
    receiver.wait_for(1, DELIVERY_DEADLINE).await;

    let http = s.server.http();
    let deleted = http
        .delete(&format!("/v1/endpoints/{endpoint_id}"), Some(&s.admin_key))
        .await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert!(deleted.body.is_empty(), "204 has no body");
    assert_problem(
        &s.api.ingest_json(&endpoint_id, &unique_json("after")).await,
        404,
        "not_found",
    );
    assert_problem(
        &http
            .get(&format!("/v1/endpoints/{endpoint_id}"), Some(&s.admin_key))
            .await,
        404,
        "not_found",
    );
}

/// No `HOOKRELAY_ROOT_KEY`: one `root key: hr_root_...` line on stdout, the key works, and a
/// restart neither prints another nor changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_root_key_is_printed_once() {
    fn printed_keys(stdout: &str) -> Vec<String> {
        stdout
            .lines()
            .filter_map(|line| line.split("root key: ").nth(1))
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect()
            })
            .collect()
    }
    let mut server = Server::start(ServerOptions::default().without_root_key()).await;
    let keys = printed_keys(&server.stdout());
    assert_eq!(
        keys.len(),
        1,
        "one root key line on stdout, got:\n{}",
        server.stdout()
    );
    let key = keys[0].clone();
    assert!(
        key.starts_with("hr_root_") && key.len() > "hr_root_".len(),
        "root key {key:?}"
    );

    let create = |name: &'static str| json!({"name": name, "plan": "free"});
    let http = server.http();
    assert_eq!(
        http.post("/v1/tenants", &create("a"), Some(&key))
            .await
            .status,
        201
    );

    server.restart().await;
    assert_eq!(
        printed_keys(&server.stdout()).len(),
        1,
        "the key is printed once, not on every start:\n{}",
        server.stdout()
    );
    let response = server
        .http()
        .post("/v1/tenants", &create("b"), Some(&key))
        .await;
    assert_eq!(
        response.status, 201,
        "the printed key still works after a restart:\n{response:?}"
    );
    let value: Value = response.json();
    assert_id(&str_field(&value, "id"), "tn_");
}
