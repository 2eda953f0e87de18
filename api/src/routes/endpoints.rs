//! `/v1/endpoints`: create, list, get, patch, delete, pause/resume, rotate-secret.

use std::rc::Rc;

use hookrelay_engine::backoff::RetryPolicy;
use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::delivery::client::check_destination_url;
use hookrelay_engine::ids::new_id;
use hookrelay_engine::meta::{
    Endpoint, EndpointSecrets, MetaOp, Snapshot, Verification, parse_net,
};
use hookrelay_engine::signing;
use hookrelay_engine::verify::Mode;
use hyper::Request;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::body::{parse_json, read_json};
use crate::problem::{Code, Problem, empty_response, json_response};
use crate::routes::meta_unavailable;

/// How long the previous secret stays valid after a rotation.
pub const ROTATION_WINDOW_MS: u64 = 24 * 3600 * 1000;
const NAME_CHARS_MAX: usize = 200;
const TIMEOUT_MS_MAX: u64 = 300_000;
const MAX_IN_FLIGHT_MAX: u32 = 10_000;
const RATE_LIMIT_PER_S_MAX: u32 = 100_000;
const ALLOWED_SOURCE_IPS_MAX: usize = 256;
const SECRET_BYTES_MAX: usize = 512;
/// Most endpoints one list page returns.
const LIST_LIMIT_MAX: usize = 1000;

/// The request body of create, and (after merging) of patch.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    #[serde(default)]
    name: Option<String>,
    destination_url: String,
    #[serde(default)]
    verification: Option<VerificationSpec>,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_in_flight: Option<u32>,
    #[serde(default)]
    rate_limit_per_s: Option<u32>,
    #[serde(default)]
    allowed_source_ips: Option<Vec<String>>,
    #[serde(default)]
    ordering: Option<String>,
    /// Accepted in a patch so a GET → PATCH round trip works; changed only by pause/resume.
    #[serde(default, rename = "paused", skip_serializing)]
    _paused: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct VerificationSpec {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    secret: Option<String>,
}

/// Every retry field is optional; missing ones take the contract's defaults.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RetrySpec {
    max_attempts: Option<u32>,
    base_delay_ms: Option<u64>,
    factor: Option<f64>,
    max_delay_ms: Option<u64>,
    jitter: Option<f64>,
    retry_client_errors_once: Option<bool>,
}

impl RetrySpec {
    fn into_policy(self) -> RetryPolicy {
        let d = RetryPolicy::default();
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            base_delay_ms: self.base_delay_ms.unwrap_or(d.base_delay_ms),
            factor: self.factor.unwrap_or(d.factor),
            max_delay_ms: self.max_delay_ms.unwrap_or(d.max_delay_ms),
            jitter: self.jitter.unwrap_or(d.jitter),
            retry_client_errors_once: self
                .retry_client_errors_once
                .unwrap_or(d.retry_client_errors_once),
        }
    }
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(Code::ValidationFailed, detail)
}

/// Validates a spec and builds the endpoint; `base` keeps identity, secrets and state on patch.
fn build(
    app: &App,
    tenant_id: &str,
    spec: EndpointSpec,
    base: Option<&Endpoint>,
) -> Result<Endpoint, Problem> {
    if let Some(name) = &spec.name
        && name.chars().count() > NAME_CHARS_MAX
    {
        return Err(invalid(format!(
            "name is limited to {NAME_CHARS_MAX} characters"
        )));
    }
    check_destination_url(
        &spec.destination_url,
        app.config.delivery.allow_private_destinations,
    )
    .map_err(|e| invalid(format!("destination_url: {e}")))?;
    let verification_spec = spec.verification.unwrap_or(VerificationSpec {
        mode: None,
        secret: None,
    });
    let mode = verification_spec
        .mode
        .or(base.map(|b| b.verification.mode))
        .unwrap_or_default();
    let secret = match (verification_spec.secret, base) {
        (Some(s), _) => {
            if s.is_empty() || s.len() > SECRET_BYTES_MAX {
                return Err(invalid(format!(
                    "verification.secret must be 1 to {SECRET_BYTES_MAX} bytes"
                )));
            }
            s
        }
        (None, Some(b)) if b.verification.mode == mode => b.verification.secret.clone(),
        (None, _) => signing::generate_verification_secret(mode),
    };
    let retry = spec.retry.unwrap_or_default().into_policy();
    retry
        .validate()
        .map_err(|e| invalid(format!("retry: {e}")))?;
    let timeout_ms = spec.timeout_ms.unwrap_or(10_000);
    if !(1..=TIMEOUT_MS_MAX).contains(&timeout_ms) {
        return Err(invalid(format!("timeout_ms must be 1..={TIMEOUT_MS_MAX}")));
    }
    let max_in_flight = spec.max_in_flight.unwrap_or(64);
    if !(1..=MAX_IN_FLIGHT_MAX).contains(&max_in_flight) {
        return Err(invalid(format!(
            "max_in_flight must be 1..={MAX_IN_FLIGHT_MAX}"
        )));
    }
    if let Some(r) = spec.rate_limit_per_s
        && !(1..=RATE_LIMIT_PER_S_MAX).contains(&r)
    {
        return Err(invalid(format!(
            "rate_limit_per_s must be null or 1..={RATE_LIMIT_PER_S_MAX}"
        )));
    }
    if let Some(ips) = &spec.allowed_source_ips {
        if ips.len() > ALLOWED_SOURCE_IPS_MAX {
            return Err(invalid(format!(
                "allowed_source_ips is limited to {ALLOWED_SOURCE_IPS_MAX} entries"
            )));
        }
        for ip in ips {
            parse_net(ip).map_err(|e| invalid(format!("allowed_source_ips: {e}")))?;
        }
    }
    let ordering = spec.ordering.unwrap_or_else(|| "none".into());
    if ordering != "none" {
        return Err(invalid("ordering: only \"none\" is supported"));
    }
    let now = now_ms();
    Ok(Endpoint {
        id: base.map_or_else(|| new_id("ep"), |b| b.id.clone()),
        tenant_id: tenant_id.to_string(),
        name: spec.name,
        destination_url: spec.destination_url,
        verification: Verification {
            mode,
            secret,
            previous_secret: base.and_then(|b| b.verification.previous_secret.clone()),
            previous_valid_until_ms: base.and_then(|b| b.verification.previous_valid_until_ms),
        },
        secrets: base.map_or_else(
            || EndpointSecrets {
                signing_secret: signing::generate_secret(),
                previous_signing_secret: None,
                previous_signing_valid_until_ms: None,
            },
            |b| b.secrets.clone(),
        ),
        retry,
        timeout_ms,
        max_in_flight,
        rate_limit_per_s: spec.rate_limit_per_s,
        allowed_source_ips: spec.allowed_source_ips,
        ordering,
        paused: base.is_some_and(|b| b.paused),
        created_at: base.map_or_else(|| rfc3339_ms(now), |b| b.created_at.clone()),
    })
}

/// The endpoint as the API shows it. The verification secret appears only when `with_secret`.
fn view(app: &App, e: &Endpoint, with_secret: bool) -> Value {
    let mut verification = json!({"mode": e.verification.mode});
    if with_secret {
        verification["secret"] = Value::String(e.verification.secret.clone());
    }
    json!({
        "id": e.id,
        "tenant_id": e.tenant_id,
        "name": e.name,
        "destination_url": e.destination_url,
        "verification": verification,
        "retry": e.retry,
        "timeout_ms": e.timeout_ms,
        "max_in_flight": e.max_in_flight,
        "rate_limit_per_s": e.rate_limit_per_s,
        "allowed_source_ips": e.allowed_source_ips,
        "ordering": e.ordering,
        "ingest_url": format!("{}/ingest/{}", app.public_url.trim_end_matches('/'), e.id),
        "signing_secret": e.secrets.signing_secret,
        "paused": e.paused,
        "created_at": e.created_at,
    })
}

/// The caller's endpoint `id`, or 404 (also for other tenants' endpoints).
fn find(snapshot: &Snapshot, caller: &Caller, id: &str) -> Result<Endpoint, Problem> {
    match snapshot.endpoints.get(id) {
        Some(e) if caller.can_see(&e.tenant_id) && caller.key.tenant_id.is_some() => {
            Ok((**e).clone())
        }
        _ => Err(Problem::new(Code::NotFound, format!("no endpoint {id}"))),
    }
}

async fn save(app: &App, e: Endpoint) -> Result<(), Problem> {
    app.shard
        .node
        .meta()
        .apply(vec![MetaOp::PutEndpoint(Box::new(e))])
        .await
        .map_err(meta_unavailable)?;
    Ok(())
}

pub async fn create(
    app: &Rc<App>,
    caller: &Caller,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.require_admin()?.to_string();
    let spec: EndpointSpec = read_json(req.body_mut()).await?;
    let endpoint = build(app, &tenant_id, spec, None)?;
    save(app, endpoint.clone()).await?;
    Ok(json_response(201, &view(app, &endpoint, true)))
}

pub fn list(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.tenant()?;
    let query = crate::query::Query::parse(req.uri().query());
    let limit = query.limit(50, LIST_LIMIT_MAX)?;
    let cursor = query.get("cursor");
    // Newest first: ULIDs sort by creation time.
    let mut mine: Vec<&Endpoint> = snapshot
        .endpoints
        .values()
        .filter(|e| e.tenant_id == tenant_id)
        .map(|e| &**e)
        .filter(|e| cursor.is_none_or(|c| e.id.as_str() < c))
        .collect();
    mine.sort_by(|a, b| b.id.cmp(&a.id));
    let next_cursor = (mine.len() > limit).then(|| mine[limit - 1].id.clone());
    let data: Vec<Value> = mine
        .iter()
        .take(limit)
        .map(|e| view(app, e, false))
        .collect();
    Ok(json_response(
        200,
        &json!({"data": data, "next_cursor": next_cursor}),
    ))
}

pub fn get(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, Problem> {
    let e = find(snapshot, caller, id)?;
    Ok(json_response(200, &view(app, &e, false)))
}

pub async fn patch(
    app: &Rc<App>,
    caller: &Caller,
    id: &str,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.require_admin()?.to_string();
    let current = find(&app.shard.node.meta().load(), caller, id)?;
    let patch: Value = read_json(req.body_mut()).await?;
    if !patch.is_object() {
        return Err(invalid(
            "a PATCH body is a JSON object of the fields to change",
        ));
    }
    // JSON merge patch (RFC 7396) over the current spec, then the same validation as create.
    let mut spec = json!({
        "name": current.name,
        "destination_url": current.destination_url,
        "verification": {"mode": current.verification.mode},
        "retry": current.retry,
        "timeout_ms": current.timeout_ms,
        "max_in_flight": current.max_in_flight,
        "rate_limit_per_s": current.rate_limit_per_s,
        "allowed_source_ips": current.allowed_source_ips,
        "ordering": current.ordering,
    });
    merge(&mut spec, &patch);
    let spec: EndpointSpec = parse_json(spec.to_string().as_bytes())?;
    let updated = build(app, &tenant_id, spec, Some(&current))?;
    save(app, updated.clone()).await?;
    Ok(json_response(200, &view(app, &updated, false)))
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match (t.get_mut(k), v) {
                    (Some(existing), Value::Object(_)) if existing.is_object() => {
                        merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub async fn delete(app: &Rc<App>, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    caller.require_admin()?;
    let e = find(&app.shard.node.meta().load(), caller, id)?;
    app.shard
        .node
        .meta()
        .apply(vec![MetaOp::DeleteEndpoint { id: e.id }])
        .await
        .map_err(meta_unavailable)?;
    Ok(empty_response(204))
}

pub async fn set_paused(
    app: &Rc<App>,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<HttpResponse, Problem> {
    caller.require_admin()?;
    let mut e = find(&app.shard.node.meta().load(), caller, id)?;
    e.paused = paused;
    save(app, e.clone()).await?;
    Ok(json_response(200, &view(app, &e, false)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    target: Option<String>,
    secret: Option<String>,
}

pub async fn rotate(
    app: &Rc<App>,
    caller: &Caller,
    id: &str,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    caller.require_admin()?;
    let mut e = find(&app.shard.node.meta().load(), caller, id)?;
    let body: Rotate = read_json(req.body_mut()).await?;
    if let Some(s) = &body.secret
        && (s.is_empty() || s.len() > SECRET_BYTES_MAX)
    {
        return Err(invalid(format!(
            "secret must be 1 to {SECRET_BYTES_MAX} bytes"
        )));
    }
    let until = now_ms() + ROTATION_WINDOW_MS;
    let secret = match body.target.as_deref().unwrap_or("verification") {
        "verification" => {
            let new = body
                .secret
                .unwrap_or_else(|| signing::generate_verification_secret(e.verification.mode));
            let old = std::mem::replace(&mut e.verification.secret, new.clone());
            e.verification.previous_secret = Some(old);
            e.verification.previous_valid_until_ms = Some(until);
            new
        }
        "signing" => {
            let new = body.secret.unwrap_or_else(signing::generate_secret);
            if !new.starts_with("whsec_") {
                return Err(invalid("a signing secret is whsec_<base64>"));
            }
            let old = std::mem::replace(&mut e.secrets.signing_secret, new.clone());
            e.secrets.previous_signing_secret = Some(old);
            e.secrets.previous_signing_valid_until_ms = Some(until);
            new
        }
        other => {
            return Err(invalid(format!(
                "target must be \"verification\" or \"signing\", not {other:?}"
            )));
        }
    };
    save(app, e).await?;
    Ok(json_response(
        200,
        &json!({"secret": secret, "previous_valid_until": rfc3339_ms(until)}),
    ))
}
