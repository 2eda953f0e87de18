//! A small HTTP/1.1 client over hyper-util: every call returns status, headers and body, and
//! every call is bounded in time. Pooled connections to a killed server just fail the request
//! in flight; the next request opens a new connection.

use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Responses larger than this are an error: nothing HookRelay answers is that large.
const RESPONSE_BYTES_MAX: usize = 8 << 20;

/// A complete HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {} body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client bound to `http://127.0.0.1:<port>`.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// `idle_per_host` keep-alive connections are pooled (0 = a new connection per request).
    pub fn new(base: impl Into<String>, idle_per_host: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle_per_host)
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        Self {
            base: base.into(),
            client,
            timeout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// One request; an error means no complete response (refused, reset, timed out).
    pub async fn send(
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
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
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
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow!("{method} {url}: no response within {:?}", self.timeout))?
            .with_context(|| format!("{method} {url}"))
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> anyhow::Result<Response> {
        self.send(Method::GET, path, Bytes::new(), &auth(bearer))
            .await
    }

    pub async fn post_json(
        &self,
        path: &str,
        json: &Value,
        bearer: Option<&str>,
    ) -> anyhow::Result<Response> {
        let mut headers = auth(bearer);
        headers.push(("content-type".into(), "application/json".into()));
        self.send(
            Method::POST,
            path,
            Bytes::from(serde_json::to_vec(json)?),
            &headers,
        )
        .await
    }
}

fn auth(bearer: Option<&str>) -> Vec<(String, String)> {
    bearer
        .map(|key| vec![("authorization".to_string(), format!("Bearer {key}"))])
        .unwrap_or_default()
}
