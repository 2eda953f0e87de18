//! Calls and checks for the audit log (contract: "Audit"): management calls sent with a chosen
//! `User-Agent`, reading every page of `GET /v1/audit`, and the shape of an entry.

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::api::{parse_time, str_field};
use crate::http::{Http, Response};

/// Most pages [`read_all`] follows before deciding the cursor loops.
pub const PAGES_MAX: usize = 1000;

/// Sends a management call with `Authorization: Bearer <key>`, `User-Agent: <user_agent>` and,
/// when `body` is given, a JSON body.
pub async fn send_as(
    http: &Http,
    method: Method,
    path: &str,
    body: Option<&Value>,
    key: &str,
    user_agent: &str,
) -> Response {
    let mut headers = vec![
        ("Authorization".to_string(), format!("Bearer {key}")),
        ("User-Agent".to_string(), user_agent.to_string()),
    ];
    let bytes = match body {
        Some(json) => {
            headers.push(("Content-Type".to_string(), "application/json".to_string()));
            Bytes::from(serde_json::to_vec(json).expect("serialising a serde_json::Value"))
        }
        None => Bytes::new(),
    };
    http.send(method, path, bytes, &headers).await
}

/// `GET /v1/audit?<query>` → 200; returns the page after checking the list shape and each
/// entry's shape.
pub async fn read_page(http: &Http, key: &str, query: &str) -> Value {
    let response = http.get(&format!("/v1/audit?{query}"), Some(key)).await;
    assert_eq!(response.status, 200, "GET /v1/audit?{query}:\n{response:?}");
    let page = response.json();
    let data = page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("audit page without a data array:\n{page:#}"));
    for entry in data {
        assert_entry_shape(entry);
    }
    assert!(
        page["next_cursor"].is_null() || page["next_cursor"].is_string(),
        "next_cursor must be a string or null:\n{page:#}"
    );
    page
}

/// Every entry visible to `key`, newest first, following `next_cursor` with pages of `limit`.
pub async fn read_all(http: &Http, key: &str, limit: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut query = format!("limit={limit}");
    for _ in 0..PAGES_MAX {
        let page = read_page(http, key, &query).await;
        let data = page["data"].as_array().expect("checked by read_page");
        assert!(
            data.len() <= limit,
            "a page holds at most limit={limit} entries:\n{page:#}"
        );
        entries.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit={limit}&cursor={cursor}"),
            None => return entries,
        }
    }
    panic!("GET /v1/audit: still a next_cursor after {PAGES_MAX} pages");
}

/// Asserts the contract's entry fields: `at` (RFC 3339), `actor`, `action` strings, `target`,
/// `user_agent` strings or null, `ip` a string.
#[track_caller]
pub fn assert_entry_shape(entry: &Value) {
    parse_time(&entry["at"], "audit entry \"at\"");
    for field in ["actor", "action", "ip"] {
        str_field(entry, field);
    }
    for field in ["target", "user_agent"] {
        assert!(
            entry
                .get(field)
                .is_some_and(|v| v.is_string() || v.is_null()),
            "audit entry {field:?} must be a string or null:\n{entry:#}"
        );
    }
}

/// The `(action, target)` of each entry, in order.
pub fn actions(entries: &[Value]) -> Vec<(String, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            (
                str_field(e, "action"),
                e["target"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The id of the API key `key` of its tenant, found by its prefix in `GET /v1/api-keys`.
pub async fn key_id(http: &Http, admin_key: &str, key: &str) -> String {
    let response = http.get("/v1/api-keys", Some(admin_key)).await;
    assert_eq!(response.status, 200, "GET /v1/api-keys:\n{response:?}");
    let list = response.json();
    let keys = list["data"].as_array().expect("api key list");
    let matching: Vec<&Value> = keys
        .iter()
        .filter(|k| {
            k["prefix"]
                .as_str()
                .is_some_and(|p| !p.is_empty() && key.starts_with(p))
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one key should have a prefix of {key:.14}...:\n{list:#}"
    );
    str_field(matching[0], "id")
}
