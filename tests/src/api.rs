//! The management and ingest calls the tests repeat, each asserting the contract's success
//! shape so a test body can stay about its own concern.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::{HeaderList, Http, Response};

/// How long a delivery may take to reach a state in a test. Generous on purpose: tests assert
/// outcomes, never speed.
pub const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

/// The statuses a delivery never leaves.
pub const FINAL_STATUSES: [&str; 3] = ["success", "failed", "exhausted"];

/// Management and ingest calls against one server.
#[derive(Clone)]
pub struct Api {
    pub http: Http,
    root_key: Option<String>,
}

impl Api {
    pub fn new(http: Http, root_key: Option<String>) -> Self {
        Self { http, root_key }
    }

    /// The operator key the server was started with; panics when it generated its own.
    pub fn root_key(&self) -> &str {
        self.root_key
            .as_deref()
            .expect("this server was started without HOOKRELAY_ROOT_KEY")
    }

    /// `POST /v1/tenants` → 201; returns (tenant id, admin key) after checking their shapes.
    pub async fn create_tenant(&self, root_key: &str, name: &str) -> (String, String) {
        let response = self
            .http
            .post(
                "/v1/tenants",
                &json!({"name": name, "plan": "free"}),
                Some(root_key),
            )
            .await;
        assert_eq!(response.status, 201, "POST /v1/tenants:\n{response:?}");
        let body = response.json();
        let id = str_field(&body, "id");
        assert_id(&id, "tn_");
        let admin_key = str_field(&body, "admin_key");
        assert!(
            admin_key.starts_with("hr_admin_"),
            "admin_key {admin_key:?}"
        );
        (id, admin_key)
    }

    /// A tenant made with the server's own operator key.
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let root_key = self.root_key().to_string();
        self.create_tenant(&root_key, name).await
    }

    /// `POST /v1/endpoints` → 201; returns the endpoint object.
    pub async fn create_endpoint(&self, admin_key: &str, body: &Value) -> Value {
        let response = self.http.post("/v1/endpoints", body, Some(admin_key)).await;
        assert_eq!(
            response.status, 201,
            "POST /v1/endpoints {body}:\n{response:?}"
        );
        let endpoint = response.json();
        assert_id(&str_field(&endpoint, "id"), "ep_");
        endpoint
    }

    /// `GET /v1/endpoints/{id}` → 200.
    pub async fn get_endpoint(&self, key: &str, id: &str) -> Value {
        let response = self
            .http
            .get(&format!("/v1/endpoints/{id}"), Some(key))
            .await;
        assert_eq!(
            response.status, 200,
            "GET /v1/endpoints/{id}:\n{response:?}"
        );
        response.json()
    }

    /// `GET /v1/deliveries/{id}` → 200.
    pub async fn get_delivery(&self, key: &str, id: &str) -> Value {
        let response = self
            .http
            .get(&format!("/v1/deliveries/{id}"), Some(key))
            .await;
        assert_eq!(
            response.status, 200,
            "GET /v1/deliveries/{id}:\n{response:?}"
        );
        response.json()
    }

    /// `POST /v1/endpoints/{id}/pause` → 200.
    pub async fn pause(&self, key: &str, endpoint_id: &str) {
        let response = self
            .http
            .post(
                &format!("/v1/endpoints/{endpoint_id}/pause"),
                &json!({}),
                Some(key),
            )
            .await;
        assert_eq!(response.status, 200, "pause {endpoint_id}:\n{response:?}");
    }

    /// `POST /v1/endpoints/{id}/resume` → 200.
    pub async fn resume(&self, key: &str, endpoint_id: &str) {
        let response = self
            .http
            .post(
                &format!("/v1/endpoints/{endpoint_id}/resume"),
                &json!({}),
                Some(key),
            )
            .await;
        assert_eq!(response.status, 200, "resume {endpoint_id}:\n{response:?}");
    }

    /// `POST /ingest/{endpoint_id}` with exactly these bytes and headers.
    pub async fn ingest(
        &self,
        endpoint_id: &str,
        body: &[u8],
        headers: &[(String, String)],
    ) -> Response {
        self.http
            .post_raw(&format!("/ingest/{endpoint_id}"), body.to_vec(), headers)
            .await
    }

    /// Ingest with `Content-Type: application/json` and no other header.
    pub async fn ingest_json(&self, endpoint_id: &str, body: &[u8]) -> Response {
        self.ingest(endpoint_id, body, &json_content_type()).await
    }

    /// Polls `GET /v1/deliveries/{id}` until `done` holds; panics after `timeout` with the last
    /// state seen.
    pub async fn wait_delivery(
        &self,
        key: &str,
        id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let response = self
                .http
                .get(&format!("/v1/deliveries/{id}"), Some(key))
                .await;
            if response.status == 200 {
                let delivery = response.json();
                if done(&delivery) {
                    return delivery;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "delivery {id} did not reach {what} within {timeout:?}; last seen:\n{delivery:#}"
                    );
                }
            } else if Instant::now() >= deadline {
                panic!(
                    "delivery {id} did not reach {what} within {timeout:?}; last answer:\n{response:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a final status (success, failed, exhausted) and returns the delivery.
    pub async fn wait_final(&self, key: &str, id: &str) -> Value {
        self.wait_delivery(key, id, DELIVERY_DEADLINE, "a final status", |d| {
            d["status"]
                .as_str()
                .is_some_and(|s| FINAL_STATUSES.contains(&s))
        })
        .await
    }
}

/// `Content-Type: application/json`.
pub fn json_content_type() -> HeaderList {
    vec![("Content-Type".into(), "application/json".into())]
}

/// A retry policy fast enough for tests: 50 ms, ×2, capped at 500 ms, no jitter.
pub fn fast_retry(max_attempts: u32) -> Value {
    json!({
        "max_attempts": max_attempts,
        "base_delay_ms": 50,
        "factor": 2.0,
        "max_delay_ms": 500,
        "jitter": 0.0,
    })
}

/// An endpoint body forwarding to `destination_url` with verification `none` and
/// [`fast_retry`]`(4)`, deep-merged with `overrides`.
pub fn endpoint_to(destination_url: &str, overrides: Value) -> Value {
    let mut body = json!({
        "name": "e2e",
        "destination_url": destination_url,
        "verification": {"mode": "none"},
        "retry": fast_retry(4),
    });
    merge(&mut body, overrides);
    body
}

/// Deep-merges `overrides` into `base` (objects merge key by key; anything else replaces).
pub fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overrides) => *base = overrides,
    }
}

/// Asserts the contract's ingest acceptance: 202 `{"delivery_id": "dl_<ULID>", "status":
/// "queued", "duplicate": false}`. Returns the delivery id.
#[track_caller]
pub fn assert_accepted(response: &Response) -> String {
    assert_eq!(
        response.status, 202,
        "ingest should be accepted:\n{response:?}"
    );
    let body = response.json();
    let id = str_field(&body, "delivery_id");
    assert_id(&id, "dl_");
    assert_eq!(body["status"], "queued", "ingest answer:\n{response:?}");
    assert_eq!(body["duplicate"], false, "ingest answer:\n{response:?}");
    id
}

/// Asserts the contract's duplicate answer: 200 with the first delivery's id and
/// `"duplicate": true`.
#[track_caller]
pub fn assert_duplicate(response: &Response, first_id: &str) {
    assert_eq!(
        response.status, 200,
        "a duplicate should answer 200:\n{response:?}"
    );
    let body = response.json();
    assert_eq!(
        body["delivery_id"], first_id,
        "duplicate answer:\n{response:?}"
    );
    assert_eq!(body["duplicate"], true, "duplicate answer:\n{response:?}");
    let status = body["status"].as_str().unwrap_or("");
    assert!(
        ["queued", "success", "failed", "exhausted"].contains(&status),
        "duplicate answer carries the first delivery's status:\n{response:?}"
    );
}

/// A string field, or a panic showing the object.
#[track_caller]
pub fn str_field(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected a string {field:?} in:\n{value:#}"))
        .to_string()
}

/// Asserts `id` is `<prefix><ULID>`.
#[track_caller]
pub fn assert_id(id: &str, prefix: &str) {
    let ulid = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("id {id:?} should start with {prefix:?}"));
    assert!(is_ulid(ulid), "id {id:?}: {ulid:?} is not a ULID");
}

/// Whether `s` is a canonical ULID: 26 Crockford base32 characters, first at most '7'.
pub fn is_ulid(s: &str) -> bool {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    s.len() == 26
        && s.chars().all(|c| ALPHABET.contains(c))
        && s.chars().next().is_some_and(|c| c <= '7')
}

/// Parses an RFC 3339 timestamp or panics naming the field.
#[track_caller]
pub fn parse_time(value: &Value, what: &str) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} should be an RFC 3339 string, got {value}"));
    OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("{what} = {text:?} is not RFC 3339: {e}"))
}

/// A header's value in a JSON headers object, looked up case-insensitively. A value given as an
/// array (several occurrences) yields its elements joined with ", ".
pub fn json_header(headers: &Value, name: &str) -> Option<String> {
    let object = headers.as_object()?;
    let (_, value) = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_deep() {
        let mut base = json!({"a": 1, "retry": {"max_attempts": 4, "jitter": 0.0}});
        merge(&mut base, json!({"retry": {"max_attempts": 2}, "b": [1]}));
        assert_eq!(
            base,
            json!({"a": 1, "b": [1], "retry": {"max_attempts": 2, "jitter": 0.0}})
        );
    }

    #[test]
    fn ulids() {
        assert!(is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FA"));
        assert!(!is_ulid("81ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!is_ulid("01ARZ3NDEKTSV4RRFFQ69G5FAI"));
        assert!(!is_ulid("01arz3ndektsv4rrffq69g5fav"));
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let headers = json!({"X-Custom": "a", "x-multi": ["1", "2"]});
        assert_eq!(json_header(&headers, "x-custom").as_deref(), Some("a"));
        assert_eq!(json_header(&headers, "X-MULTI").as_deref(), Some("1, 2"));
        assert_eq!(json_header(&headers, "x-none"), None);
    }
}
