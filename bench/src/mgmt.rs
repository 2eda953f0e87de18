//! The management API calls the scenarios make (tenants, endpoints, deliveries, readiness),
//! over hyper's HTTP/1.1 client, one connection per call: this is the control plane of a
//! bench run, never on the measured path.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Method;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Bound on one management call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A hookrelay's management API.
#[derive(Clone, Debug)]
pub struct Api {
    addr: SocketAddr,
}

/// A created endpoint, as the bench needs it.
#[derive(Clone, Debug)]
pub struct EndpointInfo {
    pub id: String,
    /// The verification secret the bench signs with.
    pub secret: String,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// One call; answers the status and the JSON body (`Null` when empty, a string when not
    /// JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        tokio::time::timeout(
            CALL_TIMEOUT,
            self.call_inner(method.clone(), path, key, body),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path}: no answer within {CALL_TIMEOUT:?}"))?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        if let Some(key) = key {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(payload))?).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// The status of an unauthenticated GET (`/readyz`, `/healthz`).
    pub async fn status(&self, path: &str) -> anyhow::Result<u16> {
        Ok(self.call(Method::GET, path, None, None).await?.0)
    }

    /// Creates a tenant with the operator key; answers its admin key.
    pub async fn create_tenant(&self, root_key: &str, name: &str) -> anyhow::Result<String> {
        let (status, v) = self
            .call(
                Method::POST,
                "/v1/tenants",
                Some(root_key),
                Some(&json!({"name": name, "plan": "free"})),
            )
            .await?;
        anyhow::ensure!(status == 201, "POST /v1/tenants: {status} {v}");
        v["admin_key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("POST /v1/tenants: no admin_key in {v}"))
    }

    /// Creates an endpoint; `spec` is the contract's endpoint object. The answer's
    /// `verification.secret` (or the one asked for) is kept to sign with.
    pub async fn create_endpoint(
        &self,
        admin_key: &str,
        spec: &Value,
    ) -> anyhow::Result<EndpointInfo> {
        let (status, v) = self
            .call(Method::POST, "/v1/endpoints", Some(admin_key), Some(spec))
            .await?;
        anyhow::ensure!(status == 201, "POST /v1/endpoints: {status} {v}");
        let id = v["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("POST /v1/endpoints: no id in {v}"))?
            .to_string();
        let secret = v["verification"]["secret"]
            .as_str()
            .or_else(|| spec["verification"]["secret"].as_str())
            .unwrap_or_default()
            .to_string();
        Ok(EndpointInfo { id, secret })
    }

    /// `POST /v1/endpoints/{id}/pause`.
    pub async fn pause(&self, admin_key: &str, id: &str) -> anyhow::Result<()> {
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/v1/endpoints/{id}/pause"),
                Some(admin_key),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "pause {id}: {status} {v}");
        Ok(())
    }

    /// `GET /v1/deliveries/{id}`: `None` on 404.
    pub async fn delivery(&self, admin_key: &str, id: &str) -> anyhow::Result<Option<Value>> {
        let (status, v) = self
            .call(
                Method::GET,
                &format!("/v1/deliveries/{id}"),
                Some(admin_key),
                None,
            )
            .await?;
        match status {
            200 => Ok(Some(v)),
            404 => Ok(None),
            _ => anyhow::bail!("GET /v1/deliveries/{id}: {status} {v}"),
        }
    }
}
