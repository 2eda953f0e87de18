//! `GET /v1/deliveries` and `GET /v1/deliveries/{id}`.

use std::collections::HashSet;
use std::rc::Rc;

use hookrelay_engine::dlq::object::parse_rfc3339;
use hookrelay_engine::meta::Snapshot;
use hookrelay_engine::record::Status;
use hookrelay_engine::shard::{ListError, ListQuery, endpoint_tag};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::json;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};
use crate::query::Query;

/// Default and largest page sizes (CONTRACT "Deliveries").
const LIMIT_DEFAULT: usize = 50;
const LIMIT_MAX: usize = 1000;

pub async fn get(app: &Rc<App>, caller: &Caller, id: &str) -> Result<HttpResponse, Problem> {
    let not_found = || Problem::new(Code::NotFound, format!("no delivery {id}"));
    let detail = app
        .shard
        .delivery_checked(id)
        .await
        .map_err(|reason| Problem::new(Code::Unavailable, reason))?
        .ok_or_else(not_found)?;
    if !caller.can_see(&detail.tenant_id) {
        return Err(not_found());
    }
    Ok(json_response(200, &detail))
}

fn time_param(q: &Query, name: &str) -> Result<Option<u64>, Problem> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => parse_rfc3339(v)
            .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
            .map(Some)
            .ok_or_else(|| {
                Problem::new(
                    Code::ValidationFailed,
                    format!("{name} must be an RFC 3339 time"),
                )
            }),
    }
}

pub async fn list(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.tenant()?.to_string();
    let q = Query::parse(req.uri().query());
    let limit = q.limit(LIMIT_DEFAULT, LIMIT_MAX)?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            Problem::new(
                Code::ValidationFailed,
                "status must be queued, success, failed or exhausted",
            )
        })?),
    };
    let endpoint_id = q.get("endpoint_id").map(str::to_string);
    let endpoint_tags: HashSet<u32> = match &endpoint_id {
        Some(id) => match snapshot.endpoints.get(id) {
            Some(e) if e.tenant_id == tenant_id => HashSet::from([endpoint_tag(id)]),
            _ => return Err(Problem::new(Code::NotFound, format!("no endpoint {id}"))),
        },
        None => snapshot
            .endpoints
            .values()
            .filter(|e| e.tenant_id == tenant_id)
            .map(|e| endpoint_tag(&e.id))
            .collect(),
    };
    let query = ListQuery {
        tenant_id,
        endpoint_id,
        endpoint_tags,
        status,
        since_ms: time_param(&q, "since")?,
        until_ms: time_param(&q, "until")?,
        limit,
    };
    let page = app
        .shard
        .list_deliveries(query, q.get("cursor"))
        .await
        .map_err(|e| match e {
            ListError::BadCursor => Problem::new(Code::ValidationFailed, e.to_string()),
            ListError::Unavailable(_) => {
                Problem::new(Code::Unavailable, e.to_string()).retry_after(1)
            }
        })?;
    Ok(json_response(
        200,
        &json!({"data": page.data, "next_cursor": page.next_cursor}),
    ))
}
