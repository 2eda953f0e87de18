//! The audit trail of the management API: [`record`] appends one entry for every change that
//! succeeded, and `GET /v1/audit` ([`list`]) reads them back.
//!
//! Every change is recorded by default: [`super::v1`] calls [`record`] after any `POST`, `PUT`,
//! `PATCH` or `DELETE` under `/v1` that answered 2xx, and the action and target are derived from
//! the method and path ([`action_for`]), with the id of a created object taken from the `id` of
//! the response body. A new route needs no audit code; [`ACTION_OVERRIDES`] only renames
//! actions the rule would name poorly.
//!
//! Scopes: a tenant key's changes go to its tenant's log, which every key of that tenant (viewers
//! included) can read; the operator (root) key's changes (`tenant.create`, ...) go to the
//! operator log, which the root key reads, or a tenant's log with `?tenant_id=`.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use bytes::Bytes;
use hookrelay_engine::audit::{self, Entry, READ_LIMIT_MAX, ReadQuery, Scope};
use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::dlq::object::parse_rfc3339;
use hookrelay_engine::meta::Snapshot;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response};
use serde_json::{Value, json};

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};
use crate::query::Query;

/// Default page size of `GET /v1/audit`.
const LIMIT_DEFAULT: usize = 50;
/// Largest response body [`record`] reads to find a created object's `id`.
const CREATED_BODY_BYTES_MAX: usize = 64 << 10;

/// `(method, path under /v1 with {} for ids, action)` for actions the generic rule of
/// [`action_for`] would name poorly.
pub const ACTION_OVERRIDES: &[(&str, &str, &str)] =
    &[("DELETE", "tenants/{}/data", "tenant.purge")];

/// True for the methods that change something.
pub fn is_change(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The action name and the target id (when the path names one) of a change to `path` (the
/// segments after `/v1`). The rule: the first segment is the resource, singular and snake_case
/// (`api-keys` → `api_key`); then
/// - `POST /r` → `r.create`, `PUT|PATCH /r` → `r.update`, `DELETE /r` → `r.delete`;
/// - `PUT|PATCH /r/{id}` → `r.update`, `DELETE /r/{id}` → `r.delete`, target `{id}`;
/// - `POST /r/{id}/verb` → `r.verb` (`rotate-secret` → `rotate_secret`), target `{id}`;
/// - `POST /r/verb` (no id) → `r.verb`;
/// - other methods on sub-resources: `DELETE /r/{id}/sub` → `r.delete_sub`, and so on;
///
/// unless [`ACTION_OVERRIDES`] names it.
pub fn action_for(method: &Method, path: &[&str]) -> Option<(String, Option<String>)> {
    if !is_change(method) || path.is_empty() {
        return None;
    }
    let id = path.get(1).copied().filter(|s| looks_like_id(s));
    let pattern: Vec<&str> = path
        .iter()
        .enumerate()
        .map(|(i, s)| if i == 1 && id.is_some() { "{}" } else { s })
        .collect();
    let pattern = pattern.join("/");
    if let Some((_, _, action)) = ACTION_OVERRIDES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == pattern)
    {
        return Some((action.to_string(), id.map(str::to_string)));
    }
    let resource = singular(path[0]);
    let verb = match (method, id, &path[1..]) {
        (&Method::POST, _, []) => "create".to_string(),
        (&Method::DELETE, _, [] | [_]) => "delete".to_string(),
        (_, _, [] | [_]) if id.is_some() || path.len() == 1 => "update".to_string(),
        (&Method::POST, _, [verb] | [_, verb]) => snake(verb),
        (_, _, rest) => {
            let what = if id.is_some() { &rest[1..] } else { rest };
            let base = match *method {
                Method::DELETE => "delete",
                _ => "update",
            };
            format!("{base}_{}", snake(&what.join("_")))
        }
    };
    Some((format!("{resource}.{verb}"), id.map(str::to_string)))
}

/// `prefix_<26 characters>`: the shape of every id the API hands out (plus the operator key's
/// fixed `ak_root`).
fn looks_like_id(s: &str) -> bool {
    s == "ak_root"
        || s.split_once('_').is_some_and(|(prefix, rest)| {
            (1..=4).contains(&prefix.len())
                && rest.len() == 26
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

fn snake(s: &str) -> String {
    s.replace('-', "_")
}

fn singular(resource: &str) -> String {
    let s = snake(resource);
    if let Some(stem) = s.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = s.strip_suffix('s') {
        stem.to_string()
    } else {
        s
    }
}

/// The `User-Agent` to record (lossy UTF-8; the store bounds its length).
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(hyper::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The audit log a caller's changes go to and, by default, reads.
fn own_scope(caller: &Caller) -> Scope {
    match &caller.key.tenant_id {
        Some(t) => Scope::Tenant(t.clone()),
        None => Scope::Operator,
    }
}

/// The client address as recorded: the TCP peer, IPv4-mapped IPv6 shown as IPv4.
/// `X-Forwarded-For` is not trusted: HookRelay does not know which proxies are its own.
fn client_ip(peer: SocketAddr) -> String {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
    .to_string()
}

/// Appends the audit entry of a change that answered `response` (2xx) and returns the response.
/// A failed append does not undo the change, which is already durable: it is logged as an
/// error with the whole entry, and the client still gets its answer.
pub async fn record(
    app: &Rc<App>,
    caller: &Caller,
    peer: SocketAddr,
    user_agent: Option<String>,
    method: &Method,
    path: &[&str],
    response: HttpResponse,
) -> HttpResponse {
    let Some((action, mut target)) = action_for(method, path) else {
        return response;
    };
    let response = if target.is_none() && *method == Method::POST {
        let (response, created) = created_id(response).await;
        target = created;
        response
    } else {
        response
    };
    let entry = Entry {
        at_ms: now_ms(),
        actor: caller.key_id().to_string(),
        action,
        target,
        ip: client_ip(peer),
        user_agent,
    };
    if let Err(e) = app
        .shard
        .node
        .audit()
        .append(own_scope(caller), entry.clone())
        .await
    {
        tracing::error!(error = %e, ?entry, "audit append failed; the change was made but is not in the audit log");
    }
    response
}

/// The `id` member of a JSON response body, and the response rebuilt around the same bytes.
async fn created_id(response: HttpResponse) -> (HttpResponse, Option<String>) {
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let id = (bytes.len() <= CREATED_BODY_BYTES_MAX)
        .then(|| serde_json::from_slice::<Value>(&bytes).ok())
        .flatten()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
    (Response::from_parts(parts, Full::new(bytes)), id)
}

/// `GET /v1/audit?since=&limit=&cursor=&tenant_id=`: entries newest first.
pub async fn list(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let q = Query::parse(req.uri().query());
    let limit = q.limit(LIMIT_DEFAULT, READ_LIMIT_MAX)?;
    let scope = match (q.get("tenant_id"), &caller.key.tenant_id) {
        (None, _) => own_scope(caller),
        (Some(t), Some(own)) if t == own => own_scope(caller),
        (Some(t), None) if snapshot.tenants.contains_key(t) => Scope::Tenant(t.to_string()),
        (Some(t), _) => return Err(Problem::new(Code::NotFound, format!("no tenant {t}"))),
    };
    let since_ms = match q.get("since") {
        None => None,
        Some(v) => Some(
            parse_rfc3339(v)
                .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
                .ok_or_else(|| {
                    Problem::new(Code::ValidationFailed, "since must be an RFC 3339 time")
                })?,
        ),
    };
    let query = ReadQuery {
        since_ms,
        limit,
        cursor: q.get("cursor").map(str::to_string),
        now_ms: now_ms(),
    };
    let page = app
        .shard
        .node
        .audit()
        .read(scope, query)
        .await
        .map_err(|e| match e {
            audit::Error::BadCursor => Problem::new(Code::ValidationFailed, e.to_string()),
            e => {
                tracing::error!(error = %e, "audit read failed");
                Problem::new(
                    Code::Unavailable,
                    format!("the audit log could not be read: {e}"),
                )
                .retry_after(1)
            }
        })?;
    let data: Vec<Value> = page
        .entries
        .into_iter()
        .map(|e| {
            json!({"at": rfc3339_ms(e.at_ms), "actor": e.actor, "action": e.action,
                   "target": e.target, "ip": e.ip, "user_agent": e.user_agent})
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"data": data, "next_cursor": page.next_cursor}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "ep_01JABCDEFGHJKMNPQRSTVWXYZ0";
    const TN: &str = "tn_01JABCDEFGHJKMNPQRSTVWXYZ0";
    const AK: &str = "ak_01JABCDEFGHJKMNPQRSTVWXYZ0";

    fn action(method: Method, path: &str) -> Option<(String, Option<String>)> {
        let segments: Vec<&str> = path.split('/').collect();
        action_for(&method, &segments)
    }

    fn named(a: &str, target: Option<&str>) -> Option<(String, Option<String>)> {
        Some((a.to_string(), target.map(str::to_string)))
    }

    #[test]
    fn actions_of_the_contract_routes() {
        let cases = [
            (
                Method::POST,
                "tenants".to_string(),
                named("tenant.create", None),
            ),
            (
                Method::DELETE,
                format!("tenants/{TN}/data"),
                named("tenant.purge", Some(TN)),
            ),
            (
                Method::POST,
                "endpoints".into(),
                named("endpoint.create", None),
            ),
            (
                Method::PATCH,
                format!("endpoints/{EP}"),
                named("endpoint.update", Some(EP)),
            ),
            (
                Method::DELETE,
                format!("endpoints/{EP}"),
                named("endpoint.delete", Some(EP)),
            ),
            (
                Method::POST,
                format!("endpoints/{EP}/pause"),
                named("endpoint.pause", Some(EP)),
            ),
            (
                Method::POST,
                format!("endpoints/{EP}/resume"),
                named("endpoint.resume", Some(EP)),
            ),
            (
                Method::POST,
                format!("endpoints/{EP}/rotate-secret"),
                named("endpoint.rotate_secret", Some(EP)),
            ),
            (
                Method::POST,
                "api-keys".into(),
                named("api_key.create", None),
            ),
            (
                Method::DELETE,
                format!("api-keys/{AK}"),
                named("api_key.delete", Some(AK)),
            ),
            (
                Method::DELETE,
                "api-keys/ak_root".into(),
                named("api_key.delete", Some("ak_root")),
            ),
            (Method::POST, "replays".into(), named("replay.create", None)),
            (Method::PUT, "alerts".into(), named("alert.update", None)),
            (
                Method::POST,
                "admin/promote".into(),
                named("admin.promote", None),
            ),
            (
                Method::POST,
                "deliveries".into(),
                named("delivery.create", None),
            ),
            (
                Method::PUT,
                format!("endpoints/{EP}/headers"),
                named("endpoint.update_headers", Some(EP)),
            ),
            (Method::GET, "endpoints".into(), None),
            (Method::GET, format!("endpoints/{EP}"), None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(action(method.clone(), &path), expected, "{method} {path}");
        }
    }

    #[test]
    fn every_change_gets_an_action() {
        // Whatever a future route looks like, a change is never left unrecorded.
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for path in [
                "x",
                "x/y",
                &format!("x/{EP}"),
                &format!("x/{EP}/y"),
                "x/y/z/w",
            ] {
                let (name, _) =
                    action(method.clone(), path).unwrap_or_else(|| panic!("{method} {path}"));
                assert!(
                    name.starts_with("x.") && name.len() > 2,
                    "{method} {path}: {name}"
                );
            }
        }
    }

    #[test]
    fn client_ips_are_plain() {
        assert_eq!(client_ip("127.0.0.1:5".parse().unwrap()), "127.0.0.1");
        assert_eq!(
            client_ip("[::ffff:10.0.0.1]:5".parse().unwrap()),
            "10.0.0.1"
        );
        assert_eq!(client_ip("[::1]:5".parse().unwrap()), "::1");
    }

    #[test]
    fn created_ids_come_from_the_body() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (response, id) =
            rt.block_on(created_id(json_response(201, &json!({"id": EP, "x": 1}))));
        assert_eq!(id.as_deref(), Some(EP));
        let body = rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["x"],
            1,
            "the body is intact"
        );
        let (_, id) = rt.block_on(created_id(crate::problem::empty_response(204)));
        assert_eq!(id, None);
    }
}
