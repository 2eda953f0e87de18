//! The management API calls the suite needs: a tenant, its endpoints, and one delivery's state.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::http::Http;
use crate::server::ROOT_KEY;

/// One endpoint the load signs for.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: String,
    /// The `generic` verification secret the sender signs with.
    pub secret: String,
    /// The `whsec_` secret HookRelay signs forwarded requests with.
    pub signing_secret: String,
}

/// A tenant's view of the API.
#[derive(Clone)]
pub struct Api {
    pub http: Http,
    pub admin_key: String,
}

/// What `GET /v1/deliveries/{id}` says, reduced to what accounting needs.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryState {
    Queued,
    Success,
    Failed,
    Exhausted,
    /// 404: the server does not know the id.
    NotFound,
    /// Any other answer (or none): try again later.
    Unknown(String),
}

impl DeliveryState {
    pub fn name(&self) -> &str {
        match self {
            Self::Queued => "queued",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Exhausted => "exhausted",
            Self::NotFound => "not_found",
            Self::Unknown(s) => s,
        }
    }
}

/// One delivery's status and attempt count.
#[derive(Clone, Debug)]
pub struct DeliveryView {
    pub state: DeliveryState,
    pub attempts: u64,
}

impl Api {
    /// Creates a tenant with the operator key.
    pub async fn create_tenant(base_url: &str, name: &str) -> anyhow::Result<Self> {
        let http = Http::new(base_url, 8, Duration::from_secs(10));
        let r = http
            .post_json("/v1/tenants", &json!({"name": name}), Some(ROOT_KEY))
            .await?;
        if r.status != 201 {
            bail!("POST /v1/tenants → {}: {}", r.status, r.text());
        }
        let admin_key = r.json()?["admin_key"]
            .as_str()
            .context("admin_key missing")?
            .to_string();
        Ok(Self { http, admin_key })
    }

    /// Creates an endpoint (`generic` verification with a known secret) from `spec`, which must
    /// hold at least `destination_url`.
    pub async fn create_endpoint(&self, mut spec: Value, secret: &str) -> anyhow::Result<Endpoint> {
        spec["verification"] = json!({"mode": "generic", "secret": secret});
        let r = self
            .http
            .post_json("/v1/endpoints", &spec, Some(&self.admin_key))
            .await?;
        if r.status != 201 {
            bail!("POST /v1/endpoints → {}: {}", r.status, r.text());
        }
        let v = r.json()?;
        Ok(Endpoint {
            id: v["id"].as_str().context("endpoint id")?.to_string(),
            secret: secret.to_string(),
            signing_secret: v["signing_secret"]
                .as_str()
                .context("signing_secret")?
                .to_string(),
        })
    }

    pub async fn delivery(&self, id: &str) -> DeliveryView {
        let unknown = |s: String| DeliveryView {
            state: DeliveryState::Unknown(s),
            attempts: 0,
        };
        let r = match self
            .http
            .get(&format!("/v1/deliveries/{id}"), Some(&self.admin_key))
            .await
        {
            Ok(r) => r,
            Err(e) => return unknown(format!("error: {e:#}")),
        };
        if r.status == 404 {
            return DeliveryView {
                state: DeliveryState::NotFound,
                attempts: 0,
            };
        }
        if r.status != 200 {
            return unknown(format!("HTTP {}", r.status));
        }
        let Ok(v) = r.json() else {
            return unknown("not JSON".into());
        };
        if v["id"].as_str() != Some(id) {
            return unknown(format!("answered for another id {:?}", v["id"]));
        }
        let state = match v["status"].as_str().unwrap_or("") {
            "queued" => DeliveryState::Queued,
            "success" => DeliveryState::Success,
            "failed" => DeliveryState::Failed,
            "exhausted" => DeliveryState::Exhausted,
            other => DeliveryState::Unknown(format!("status {other:?}")),
        };
        DeliveryView {
            state,
            attempts: v["attempts"].as_u64().unwrap_or(0),
        }
    }
}
