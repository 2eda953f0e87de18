//! `GET /v1/deliveries` (contract: "Deliveries"): newest first, filters by endpoint, status and
//! time, opaque cursor pagination that visits every delivery exactly once, tenant isolation,
//! limit bounds.

use std::collections::BTreeSet;

use hookrelay_tests::api::{assert_accepted, fast_retry};
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::{Value, json};

/// Every page of a listing, following `next_cursor`; bounded.
async fn all_pages(s: &Scenario, key: &str, query: &str) -> Vec<Value> {
    let http = s.server.http();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            Some(c) => format!("/v1/deliveries?{query}&cursor={c}"),
            None => format!("/v1/deliveries?{query}"),
        };
        let response = http.get(&path, Some(key)).await;
        assert_eq!(response.status, 200, "{response:?}");
        let page = response.json();
        out.extend(
            page["data"]
                .as_array()
                .expect("data is a list")
                .iter()
                .cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(page["next_cursor"].is_null());
                return out;
            }
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_newest_first_with_filters_and_cursor() {
    let s = Scenario::start().await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let bad = Receiver::start(Script::always(Step::status(400))).await;
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
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(assert_accepted(
            &s.api
                .ingest_json(&good_ep, &unique_json(&format!("g{i}")))
                .await,
        ));
        sent.push(assert_accepted(
            &s.api
                .ingest_json(&bad_ep, &unique_json(&format!("b{i}")))
                .await,
        ));
    }
    for id in &sent {
        s.api.wait_final(&s.admin_key, id).await;
    }

    let all = all_pages(&s, &s.admin_key, "limit=3").await;
    let ids: Vec<String> = all
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a delivery appeared twice across pages"
    );
    assert_eq!(
        unique,
        sent.iter().collect::<BTreeSet<_>>(),
        "pages must visit every delivery"
    );
    let created: Vec<&str> = all
        .iter()
        .map(|d| d["created_at"].as_str().unwrap())
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    for d in &all {
        for field in [
            "id",
            "endpoint_id",
            "tenant_id",
            "status",
            "attempts",
            "created_at",
        ] {
            assert!(d.get(field).is_some(), "missing {field}: {d}");
        }
    }

    let failed = all_pages(&s, &s.admin_key, "status=failed").await;
    assert_eq!(failed.len(), 7);
    assert!(
        failed
            .iter()
            .all(|d| d["endpoint_id"] == bad_ep.as_str() && d["status"] == "failed")
    );
    let good = all_pages(&s, &s.admin_key, &format!("endpoint_id={good_ep}")).await;
    assert_eq!(good.len(), 7);
    assert!(good.iter().all(|d| d["status"] == "success"));
    let future = all_pages(&s, &s.admin_key, "since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let past = all_pages(&s, &s.admin_key, "until=2000-01-01T00:00:00Z").await;
    assert!(past.is_empty());

    // Another tenant sees none of them, and cannot filter on this tenant's endpoint.
    let (_, other_key) = s.api.tenant("other").await;
    assert!(all_pages(&s, &other_key, "limit=50").await.is_empty());
    let http = s.server.http();
    let foreign = http
        .get(
            &format!("/v1/deliveries?endpoint_id={good_ep}"),
            Some(&other_key),
        )
        .await;
    assert_problem(&foreign, 404, "not_found");
    for bad_query in [
        "limit=0",
        "limit=1001",
        "status=nope",
        "since=yesterday",
        "cursor=garbage",
    ] {
        let r = http
            .get(&format!("/v1/deliveries?{bad_query}"), Some(&s.admin_key))
            .await;
        assert_problem(&r, 422, "validation_failed");
    }
}
