//! `GET /metrics` (Prometheus text exposition 0.0.4) and `GET /v1/metrics` (a tenant's delivery
//! numbers over 1 h / 24 h / 7 d).
//!
//! `/metrics` needs no API key, like most Prometheus targets: it carries endpoint ids and counts,
//! never payloads, tenants' names or secrets. Operators who expose the listener publicly should
//! keep `/metrics` behind their proxy (README, "Metrics").

use std::rc::Rc;

use bytes::Bytes;
use hookrelay_engine::meta::Snapshot;
use hookrelay_engine::metrics::window::Window;
use hookrelay_engine::metrics::{Scope, TOP_FAILURES_MAX, prometheus};
use hookrelay_engine::shard::MetricsError;
use http_body_util::Full;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};
use crate::query::Query;

/// The window of `GET /v1/metrics` when `window` is absent.
pub const DEFAULT_WINDOW: Window = Window::Day;

/// `GET /metrics`: every shard's counters, merged.
pub async fn prometheus(app: &Rc<App>) -> HttpResponse {
    let exports = app.shard.metrics_export().await;
    let mut body = prometheus::render(&exports, app.shard.node.shards());
    app.shard.node.replication().render_prometheus(&mut body);
    app.balance.shared().render_prometheus(&mut body);
    crate::replay::dlq_store(app)
        .stats()
        .render_prometheus(&mut body, hookrelay_engine::clock::mono_ms());
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus::CONTENT_TYPE),
    );
    response
}

/// `GET /v1/metrics?endpoint_id=&window=1h|24h|7d`. Without `endpoint_id`: every endpoint of
/// the caller's tenant, aggregated (`"endpoint_id": null`). An endpoint of another tenant is
/// 404; the operator key may name any endpoint but has no tenant to aggregate.
pub async fn get(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let query = Query::parse(req.uri().query());
    let window = match query.get("window") {
        None => DEFAULT_WINDOW,
        Some(w) => Window::parse(w).ok_or_else(|| {
            Problem::new(Code::ValidationFailed, "window must be one of 1h, 24h, 7d")
        })?,
    };
    let endpoint_id = query.get("endpoint_id").map(str::to_string);
    let scope = match &endpoint_id {
        Some(id) => {
            match snapshot.endpoints.get(id) {
                Some(e) if caller.can_see(&e.tenant_id) => {}
                _ => return Err(Problem::new(Code::NotFound, format!("no endpoint {id}"))),
            }
            Scope::Endpoint(id.clone())
        }
        None => Scope::Tenant(caller.tenant()?.to_string()),
    };
    let stats = app
        .shard
        .metrics_window(scope, window)
        .await
        .map_err(unavailable)?;
    let c = &stats.counts;
    let top_failures: Vec<Value> = stats
        .top_failures(TOP_FAILURES_MAX)
        .into_iter()
        .map(|(error, count)| json!({"error": error, "count": count}))
        .collect();
    Ok(json_response(
        200,
        &json!({
            "endpoint_id": endpoint_id,
            "window": window.as_str(),
            "deliveries_total": c.created,
            "success_total": c.success,
            "failed_total": c.failed,
            "exhausted_total": c.exhausted,
            "attempts_total": c.attempts,
            "inflight": stats.inflight,
            "success_rate": stats.success_rate(),
            "latency_ms": {
                "p50": stats.latency_ms(0.50),
                "p95": stats.latency_ms(0.95),
                "p99": stats.latency_ms(0.99),
            },
            "top_failures": top_failures,
        }),
    ))
}

/// A shard that did not answer: 503, try again shortly.
pub fn unavailable(e: MetricsError) -> Problem {
    Problem::new(Code::Unavailable, e.to_string()).retry_after(1)
}
