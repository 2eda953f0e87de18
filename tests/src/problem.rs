//! Checks on RFC 9457 problem responses, as the contract's "Errors" section defines them.

use serde_json::Value;

use crate::http::Response;

/// Asserts that `response` is the contract's error: HTTP `status`, content type
/// `application/problem+json`, and a JSON object with string `type`, `title`, `detail`, a numeric
/// `status` equal to the HTTP status, and `code` equal to `code`. Returns the parsed body.
#[track_caller]
pub fn assert_problem(response: &Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status, status,
        "expected HTTP {status} with code {code:?}, got:\n{response:?}"
    );
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type
            .to_ascii_lowercase()
            .starts_with("application/problem+json"),
        "error content-type must be application/problem+json, got {content_type:?}:\n{response:?}"
    );
    let body = response.json();
    for field in ["type", "title", "detail"] {
        assert!(
            body.get(field).is_some_and(Value::is_string),
            "problem body needs a string {field:?}:\n{response:?}"
        );
    }
    assert_eq!(
        body.get("status").and_then(Value::as_u64),
        Some(u64::from(status)),
        "problem body \"status\" must equal the HTTP status:\n{response:?}"
    );
    assert_eq!(
        body.get("code").and_then(Value::as_str),
        Some(code),
        "problem body \"code\":\n{response:?}"
    );
    body
}
