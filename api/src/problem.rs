//! RFC 9457 problem details (CONTRACT "Errors"): the shape of every error response, and the
//! small JSON / empty response builders the handlers use for success.
//!
//! Every error the API answers is a [`Problem`]: a [`Code`] (which fixes the status, the
//! `type` URI and the title) and a human `detail`. Handlers return `Result<_, Problem>` and the
//! router turns the error into a response, so no handler writes an error body by hand.

use std::fmt;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Prefix of every problem's `type` URI; the code follows.
pub const TYPE_BASE: &str = "https://hookrelay.dev/problems/";
/// `Retry-After` of a `rate_limited` problem built without one (the contract requires it).
const RATE_LIMITED_RETRY_AFTER_S: u64 = 1;

/// The error codes of the API, each with a fixed status and snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 401: no or an unknown API key.
    Unauthorized,
    /// 403: the key may not do this (viewer writing, tenant key on a root route).
    Forbidden,
    /// 404: no such object, or it belongs to another tenant.
    NotFound,
    /// 401: an ingest signature is missing or wrong.
    InvalidSignature,
    /// 401: a well-formed ingest signature's timestamp is outside the tolerance.
    SignatureExpired,
    /// 413: the body is over `ingest.max_body_bytes`.
    PayloadTooLarge,
    /// 422: an idempotency key seen before with a different body.
    IdempotencyKeyReused,
    /// 422: a well-formed request with invalid content.
    ValidationFailed,
    /// 429: over a rate limit; always with `Retry-After`.
    RateLimited,
    /// 403: the sender's IP is not in the endpoint's `allowed_source_ips`.
    IpNotAllowed,
    /// 400: a malformed JSON body.
    InvalidJson,
    /// 503: the node cannot take this now (disk full, not primary, recovering).
    Unavailable,
    /// 402: past the free quota and the grace period without a paying subscription.
    PaymentRequired,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the object's current state.
    Conflict,
    /// 500: a bug or an unexpected failure; the detail says what, never secrets.
    Internal,
}

impl Code {
    /// Every code, for tests and documentation.
    pub const ALL: [Code; 16] = [
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::InvalidSignature,
        Code::SignatureExpired,
        Code::PayloadTooLarge,
        Code::IdempotencyKeyReused,
        Code::ValidationFailed,
        Code::RateLimited,
        Code::IpNotAllowed,
        Code::InvalidJson,
        Code::Unavailable,
        Code::PaymentRequired,
        Code::MethodNotAllowed,
        Code::Conflict,
        Code::Internal,
    ];

    /// `(status, code, title)`.
    pub fn parts(self) -> (u16, &'static str, &'static str) {
        match self {
            Code::Unauthorized => (401, "unauthorized", "Unauthorized"),
            Code::Forbidden => (403, "forbidden", "Forbidden"),
            Code::NotFound => (404, "not_found", "Not found"),
            Code::InvalidSignature => (401, "invalid_signature", "Invalid signature"),
            Code::SignatureExpired => (401, "signature_expired", "Signature expired"),
            Code::PayloadTooLarge => (413, "payload_too_large", "Payload too large"),
            Code::IdempotencyKeyReused => (422, "idempotency_key_reused", "Idempotency key reused"),
            Code::ValidationFailed => (422, "validation_failed", "Validation failed"),
            Code::RateLimited => (429, "rate_limited", "Rate limited"),
            Code::IpNotAllowed => (403, "ip_not_allowed", "Source IP not allowed"),
            Code::InvalidJson => (400, "invalid_json", "Invalid JSON"),
            Code::Unavailable => (503, "unavailable", "Service unavailable"),
            Code::PaymentRequired => (402, "payment_required", "Payment required"),
            Code::MethodNotAllowed => (405, "method_not_allowed", "Method not allowed"),
            Code::Conflict => (409, "conflict", "Conflict"),
            Code::Internal => (500, "internal", "Internal error"),
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        self.parts().0
    }

    /// The snake_case code of the body's `code` member.
    pub fn as_str(self) -> &'static str {
        self.parts().1
    }

    /// The short human title of the body's `title` member.
    pub fn title(self) -> &'static str {
        self.parts().2
    }

    /// The body's `type` URI.
    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: code, detail, and optionally `Retry-After` and extension members.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub code: Code,
    /// What went wrong for this request, in a sentence a developer can act on.
    pub detail: String,
    /// Seconds for the `Retry-After` header.
    pub retry_after_s: Option<u64>,
    /// Extension members (RFC 9457 §3.2): a JSON object whose members are added to the body
    /// (never replacing `type`, `title`, `status`, `detail` or `code`); any other value is added
    /// as the member `extra`.
    pub extra: Option<serde_json::Value>,
}

impl Problem {
    /// A problem with `code` and `detail`.
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem {
            code,
            detail: detail.into(),
            retry_after_s: None,
            extra: None,
        }
    }

    /// Sets `Retry-After: <s>`. A `rate_limited` problem without it gets 1 s.
    pub fn retry_after(mut self, s: u64) -> Problem {
        self.retry_after_s = Some(s);
        self
    }

    /// Adds extension members (see [`Problem::extra`]).
    pub fn with_extra(mut self, extra: serde_json::Value) -> Problem {
        self.extra = Some(extra);
        self
    }

    /// The body as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        match &self.extra {
            Some(serde_json::Value::Object(members)) => body.extend(members.clone()),
            Some(other) => {
                body.insert("extra".into(), other.clone());
            }
            None => {}
        }
        // The standard members are inserted last so an extension can never replace them.
        body.insert("type".into(), self.code.type_uri().into());
        body.insert("title".into(), self.code.title().into());
        body.insert("status".into(), self.code.status().into());
        body.insert("detail".into(), self.detail.clone().into());
        body.insert("code".into(), self.code.as_str().into());
        serde_json::Value::Object(body)
    }

    /// The response: the code's status, `content-type: application/problem+json`, the body of
    /// [`Problem::to_json`], and `Retry-After` when set (always for `rate_limited`).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = self.to_json().to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status(self.code.status());
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after_s = match (self.retry_after_s, self.code) {
            (None, Code::RateLimited) => Some(RATE_LIMITED_RETRY_AFTER_S),
            (retry_after_s, _) => retry_after_s,
        };
        if let Some(s) = retry_after_s {
            headers.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

/// A JSON response with `status` and `value` as the body (`content-type: application/json`).
/// A value that cannot be serialized (a bug: a map with non-string keys) answers 500 `internal`.
pub fn json_response(status_code: u16, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status(status_code);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => {
            debug_assert!(false, "response body does not serialize: {e}");
            Problem::new(Code::Internal, "the response could not be encoded").into_response()
        }
    }
}

/// A response without a body (e.g. 204, 202).
pub fn empty_response(status_code: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status(status_code);
    response
}

/// The status for a code our own code chose; an out-of-range one is a bug.
fn status(code: u16) -> StatusCode {
    debug_assert!((100..=599).contains(&code), "status {code} out of range");
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn body_of(response: Response<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let (parts, body) = response.into_parts();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(body.collect()).unwrap().to_bytes();
        (parts.status, parts.headers, bytes)
    }

    #[test]
    fn contract_statuses_and_codes() {
        let expected = [
            (Code::Unauthorized, 401, "unauthorized"),
            (Code::Forbidden, 403, "forbidden"),
            (Code::NotFound, 404, "not_found"),
            (Code::InvalidSignature, 401, "invalid_signature"),
            (Code::SignatureExpired, 401, "signature_expired"),
            (Code::PayloadTooLarge, 413, "payload_too_large"),
            (Code::IdempotencyKeyReused, 422, "idempotency_key_reused"),
            (Code::ValidationFailed, 422, "validation_failed"),
            (Code::RateLimited, 429, "rate_limited"),
            (Code::IpNotAllowed, 403, "ip_not_allowed"),
            (Code::InvalidJson, 400, "invalid_json"),
            (Code::Unavailable, 503, "unavailable"),
            (Code::PaymentRequired, 402, "payment_required"),
            (Code::MethodNotAllowed, 405, "method_not_allowed"),
            (Code::Conflict, 409, "conflict"),
            (Code::Internal, 500, "internal"),
        ];
        assert_eq!(expected.len(), Code::ALL.len());
        for (code, status, name) in expected {
            assert_eq!((code.status(), code.as_str()), (status, name));
            assert!(Code::ALL.contains(&code));
            assert!(!code.title().is_empty());
        }
    }

    #[test]
    fn problem_body_and_headers() {
        let (status, headers, body) =
            body_of(Problem::new(Code::NotFound, "no endpoint ep_1").into_response());
        assert_eq!(status, 404);
        assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
        assert!(headers.get(RETRY_AFTER).is_none());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "https://hookrelay.dev/problems/not_found",
                "title": "Not found",
                "status": 404,
                "detail": "no endpoint ep_1",
                "code": "not_found",
            })
        );
    }

    #[test]
    fn rate_limited_always_has_retry_after() {
        let (status, headers, _) = body_of(
            Problem::new(Code::RateLimited, "slow down")
                .retry_after(7)
                .into_response(),
        );
        assert_eq!(status, 429);
        assert_eq!(headers[RETRY_AFTER], "7");
        let (_, headers, _) = body_of(Problem::new(Code::RateLimited, "slow down").into_response());
        assert_eq!(headers[RETRY_AFTER], "1");
        let (_, headers, _) = body_of(
            Problem::new(Code::Unavailable, "disk full")
                .retry_after(30)
                .into_response(),
        );
        assert_eq!(headers[RETRY_AFTER], "30");
    }

    #[test]
    fn extensions_never_replace_standard_members() {
        let p = Problem::new(Code::ValidationFailed, "bad field").with_extra(
            serde_json::json!({"field": "destination_url", "code": "hijack", "status": 200}),
        );
        let v = p.to_json();
        assert_eq!(v["field"], "destination_url");
        assert_eq!(v["code"], "validation_failed");
        assert_eq!(v["status"], 422);
        let v = Problem::new(Code::Conflict, "x")
            .with_extra(serde_json::json!([1, 2]))
            .to_json();
        assert_eq!(v["extra"], serde_json::json!([1, 2]));
        assert_eq!(v["status"], 409);
    }

    #[test]
    fn json_and_empty_responses() {
        let (status, headers, body) =
            body_of(json_response(201, &serde_json::json!({"id": "ep_1"})));
        assert_eq!(status, 201);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(&body[..], br#"{"id":"ep_1"}"#);
        let (status, headers, body) = body_of(empty_response(204));
        assert_eq!(status, 204);
        assert!(headers.get(CONTENT_TYPE).is_none());
        assert!(body.is_empty());
    }
}
