//! RFC 9457 problem details: every error response of the API.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;

/// Error codes of CONTRACT.md ("Errors"), plus the few the router itself needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidSignature,
    SignatureExpired,
    PayloadTooLarge,
    IdempotencyKeyReused,
    ValidationFailed,
    RateLimited,
    IpNotAllowed,
    InvalidJson,
    Unavailable,
    PaymentRequired,
    MethodNotAllowed,
    Conflict,
    Internal,
}

impl Code {
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
            Code::Unavailable => (503, "unavailable", "Unavailable"),
            Code::PaymentRequired => (402, "payment_required", "Payment required"),
            Code::MethodNotAllowed => (405, "method_not_allowed", "Method not allowed"),
            Code::Conflict => (409, "conflict", "Conflict"),
            Code::Internal => (500, "internal", "Internal error"),
        }
    }
}

/// A problem to answer with.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: Code,
    pub detail: String,
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem {
            code,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    /// Adds `Retry-After: <s>` (mandatory with `rate_limited`).
    pub fn retry_after(mut self, s: u64) -> Problem {
        self.retry_after_s = Some(s);
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code, title) = self.code.parts();
        let body = Body {
            kind: format!("https://hookrelay.dev/problems/{code}"),
            title,
            status,
            detail: &self.detail,
            code,
        };
        let json = serde_json::to_vec(&body).expect("problem serialises");
        let mut resp = Response::new(Full::new(Bytes::from(json)));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        let retry = self.retry_after_s.or((self.code == Code::RateLimited).then_some(1));
        if let Some(s) = retry {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A JSON response.
pub fn json_response(status: u16, value: &impl Serialize) -> Response<Full<Bytes>> {
    let json = serde_json::to_vec(value).expect("response serialises");
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response without a body (204).
pub fn empty_response(status: u16) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(flavor = "current_thread")]
    async fn problem_shape_and_headers() {
        let resp = Problem::new(Code::RateLimited, "slow down").into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["status"], 429);
        assert_eq!(v["detail"], "slow down");
        assert_eq!(v["type"], "https://hookrelay.dev/problems/rate_limited");
        assert!(v["title"].is_string());
    }

    #[test]
    fn codes_have_contract_statuses() {
        assert_eq!(Code::InvalidSignature.parts().0, 401);
        assert_eq!(Code::IdempotencyKeyReused.parts(), (422, "idempotency_key_reused", "Idempotency key reused"));
        assert_eq!(Code::IpNotAllowed.parts().0, 403);
        assert_eq!(Code::InvalidJson.parts().0, 400);
        assert_eq!(Code::Unavailable.parts().0, 503);
        assert_eq!(Code::PaymentRequired.parts().0, 402);
        assert!(Problem::new(Code::NotFound, "x").into_response().headers().get(RETRY_AFTER).is_none());
    }
}
