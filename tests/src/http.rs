//! A small HTTP/1.1 client for talking to the binary: every call returns the whole response
//! (status, headers, body) so tests can assert on any part of it.
//!
//! Connections are not pooled: tests kill and restart the server, and a pooled connection to a
//! dead process would turn the first request after a restart into a spurious failure.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Upper bound on one request, connect to last body byte. Generous: tests assert outcomes, never
/// speed, but nothing may hang forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Responses larger than this are an error: nothing in the contract answers with megabytes.
pub const RESPONSE_BYTES_MAX: usize = 8 << 20;

/// Header name/value pairs in the order they are sent.
pub type HeaderList = Vec<(String, String)>;

/// Builds a [`HeaderList`] from string pairs.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderList {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A complete HTTP response.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON; panics with the whole response when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{self:?}"))
    }

    /// The first value of a header, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_BYTES_MAX: usize = 2000;
        writeln!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        let text = self.text();
        if text.len() > SHOWN_BYTES_MAX {
            let cut = text.floor_char_boundary(SHOWN_BYTES_MAX);
            write!(f, "\n{}... ({} bytes)", &text[..cut], self.body.len())
        } else {
            write!(f, "\n{text}")
        }
    }
}

/// A client bound to one base URL (`http://127.0.0.1:<port>`).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: impl Into<String>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Self {
            base: base.into(),
            client,
        }
    }

    /// The absolute URL of `path` on this base.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends one request; an error means no complete response arrived (refused, reset, timeout).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> anyhow::Result<Response> {
        let url = self.url(path);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(Full::new(body))
            .with_context(|| format!("building {method} {url}"))?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("header name {name:?}"))?;
            let value =
                HeaderValue::from_str(value).with_context(|| format!("header value {value:?}"))?;
            request.headers_mut().append(name, value);
        }
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the response body: {e}"))?
                .to_bytes();
            anyhow::Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{method} {url}: no response within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {url}"))
    }

    /// Sends one request and panics when no complete response arrives.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Response {
        match self.try_send(method, path, body, headers).await {
            Ok(response) => response,
            Err(e) => panic!("request failed: {e:#}"),
        }
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Response {
        self.send(Method::GET, path, Bytes::new(), &auth(bearer))
            .await
    }

    pub async fn delete(&self, path: &str, bearer: Option<&str>) -> Response {
        self.send(Method::DELETE, path, Bytes::new(), &auth(bearer))
            .await
    }

    pub async fn post(&self, path: &str, json: &Value, bearer: Option<&str>) -> Response {
        self.send_json(Method::POST, path, json, bearer).await
    }

    pub async fn patch(&self, path: &str, json: &Value, bearer: Option<&str>) -> Response {
        self.send_json(Method::PATCH, path, json, bearer).await
    }

    pub async fn put(&self, path: &str, json: &Value, bearer: Option<&str>) -> Response {
        self.send_json(Method::PUT, path, json, bearer).await
    }

    async fn send_json(
        &self,
        method: Method,
        path: &str,
        json: &Value,
        bearer: Option<&str>,
    ) -> Response {
        let mut headers = auth(bearer);
        headers.push((CONTENT_TYPE.to_string(), "application/json".to_string()));
        let body = Bytes::from(serde_json::to_vec(json).expect("serialising a serde_json::Value"));
        self.send(method, path, body, &headers).await
    }

    /// POSTs raw bytes with exactly the given headers (the ingest path: byte-exact bodies).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(String, String)],
    ) -> Response {
        self.send(Method::POST, path, body.into(), headers).await
    }
}

fn auth(bearer: Option<&str>) -> HeaderList {
    bearer
        .map(|key| vec![(AUTHORIZATION.to_string(), format!("Bearer {key}"))])
        .unwrap_or_default()
}
