//! One file per resource. [`v1`] authenticates and dispatches the management API, and records
//! every change that succeeded in the audit log ([`audit::record`]).

pub mod admin;
pub mod api_keys;
pub mod audit;
pub mod deliveries;
pub mod endpoints;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod replays;
pub mod tenants;
pub mod usage;

use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::app::{App, HttpResponse};
use crate::auth::authenticate;
use crate::problem::{Code, Problem};

/// `/v1/...`: every route needs an API key.
pub async fn v1(
    app: &Rc<App>,
    peer: SocketAddr,
    method: Method,
    path: &[&str],
    req: Request<Incoming>,
) -> HttpResponse {
    let snapshot = app.shard.node.meta().load();
    let caller = match authenticate(req.headers(), &snapshot) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    let primary = app.shard.node.replication().is_primary();
    if !primary && audit::is_change(&method) && path != ["admin", "promote"] {
        return Problem::new(
            Code::Unavailable,
            "this node is a replica: changes go to the primary (or promote this node first)",
        )
        .into_response();
    }
    if primary {
        touch_key(app, &caller);
    }
    let user_agent = audit::is_change(&method)
        .then(|| audit::user_agent(req.headers()))
        .flatten();
    let result = match (&method, path) {
        (&Method::POST, ["tenants"]) => tenants::create(app, &caller, req).await,
        (&Method::GET, ["tenants", id]) => tenants::get(&snapshot, &caller, id),
        (&Method::DELETE, ["tenants", id, "data"]) => tenants::purge(app, &caller, id).await,
        (&Method::POST, ["endpoints"]) => endpoints::create(app, &caller, req).await,
        (&Method::GET, ["endpoints"]) => endpoints::list(app, &snapshot, &caller, &req),
        (&Method::GET, ["endpoints", id]) => endpoints::get(app, &snapshot, &caller, id),
        (&Method::PATCH, ["endpoints", id]) => endpoints::patch(app, &caller, id, req).await,
        (&Method::DELETE, ["endpoints", id]) => endpoints::delete(app, &caller, id).await,
        (&Method::POST, ["endpoints", id, "pause"]) => {
            endpoints::set_paused(app, &caller, id, true).await
        }
        (&Method::POST, ["endpoints", id, "resume"]) => {
            endpoints::set_paused(app, &caller, id, false).await
        }
        (&Method::POST, ["endpoints", id, "rotate-secret"]) => {
            endpoints::rotate(app, &caller, id, req).await
        }
        (&Method::POST, ["api-keys"]) => api_keys::create(app, &caller, req).await,
        (&Method::GET, ["api-keys"]) => api_keys::list(&snapshot, &caller),
        (&Method::DELETE, ["api-keys", id]) => api_keys::delete(app, &caller, id).await,
        (&Method::POST, ["replays"]) => replays::create(app, &caller, req).await,
        (&Method::GET, ["replays", id]) => replays::get(app, &snapshot, &caller, id).await,
        (&Method::GET, ["deliveries"]) => deliveries::list(app, &snapshot, &caller, &req).await,
        (&Method::GET, ["deliveries", id]) => deliveries::get(app, &caller, id).await,
        (&Method::GET, ["metrics"]) => metrics::get(app, &snapshot, &caller, &req).await,
        (&Method::GET, ["usage"]) => usage::get(app, &snapshot, &caller, &req).await,
        (&Method::GET, ["audit"]) => audit::list(app, &snapshot, &caller, &req).await,
        (&Method::GET, ["admin", "replication"]) => admin::replication(app, &caller),
        (&Method::POST, ["admin", "promote"]) => admin::promote(app, &caller).await,
        _ => Err(Problem::new(
            Code::NotFound,
            format!("no route for {method} /v1/{}", path.join("/")),
        )),
    };
    let response = result.unwrap_or_else(Problem::into_response);
    if audit::is_change(&method) && response.status().is_success() {
        return audit::record(app, &caller, peer, user_agent, &method, path, response).await;
    }
    response
}

/// How stale a key's `last_used_at` may get before a use is written down: at most one metadata
/// write per key per minute, whatever the request rate.
const TOUCH_EVERY_MS: u64 = 60_000;

/// Records a key's use in the background (the request does not wait for it).
fn touch_key(app: &Rc<App>, caller: &crate::auth::Caller) {
    let now = hookrelay_engine::clock::now_ms();
    if caller
        .key
        .last_used_at_ms
        .is_some_and(|t| now.saturating_sub(t) < TOUCH_EVERY_MS)
    {
        return;
    }
    let meta = app.shard.node.meta().clone();
    let id = caller.key.id.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = meta
            .apply(vec![hookrelay_engine::meta::MetaOp::TouchApiKey {
                id,
                at_ms: now,
            }])
            .await
        {
            tracing::warn!(error = %e, "could not record an API key's last use");
        }
    });
}

/// Maps a metadata write failure to 503: the change was not made.
pub fn meta_unavailable(e: hookrelay_engine::meta::MetaError) -> Problem {
    tracing::error!(error = %e, "metadata write failed");
    Problem::new(Code::Unavailable, format!("metadata write failed: {e}"))
}
