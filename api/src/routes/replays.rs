//! `POST /v1/replays` and `GET /v1/replays/{id}`.

use std::collections::HashSet;
use std::rc::Rc;

use futures::StreamExt as _;
use hookrelay_engine::clock::{now_ms, rfc3339_ms};
use hookrelay_engine::dlq::object::{parse_key, parse_rfc3339};
use hookrelay_engine::ids::{is_valid, new_id};
use hookrelay_engine::meta::{MetaOp, ReplayJob, Snapshot};
use hookrelay_engine::record::Status;
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use time::UtcOffset;

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::body::read_json;
use crate::problem::{Code, Problem, json_response};
use crate::replay::{self, ITEMS_MAX, dlq_store};
use crate::routes::meta_unavailable;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReplay {
    delivery_ids: Option<Vec<String>>,
    dlq_range: Option<DlqRange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqRange {
    from: String,
    to: String,
    endpoint_id: Option<String>,
}

/// DLQ objects read at once while resolving a range (those of its first and last day).
const EDGE_READS_CONCURRENT: usize = 8;

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(Code::ValidationFailed, detail)
}

pub async fn create(
    app: &Rc<App>,
    caller: &Caller,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let tenant_id = caller.require_admin()?.to_string();
    let body: CreateReplay = read_json(req.body_mut()).await?;
    let items = match (body.delivery_ids, body.dlq_range) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > ITEMS_MAX {
                return Err(invalid(format!("delivery_ids holds 1 to {ITEMS_MAX} ids")));
            }
            if let Some(bad) = ids.iter().find(|id| !is_valid(id, "dl")) {
                return Err(invalid(format!("{bad:?} is not a delivery id")));
            }
            ids
        }
        (None, Some(range)) => dlq_items(app, &tenant_id, range).await?,
        _ => return Err(invalid("give exactly one of delivery_ids or dlq_range")),
    };
    let job = ReplayJob {
        id: new_id("rp"),
        tenant_id,
        created_at: rfc3339_ms(now_ms()),
        completed: items.is_empty(),
        items,
        created: Vec::new(),
        errors: Vec::new(),
    };
    app.shard
        .node
        .meta()
        .apply(vec![MetaOp::PutReplay(Box::new(job.clone()))])
        .await
        .map_err(meta_unavailable)?;
    if !job.completed {
        replay::spawn(app.clone(), job.id.clone());
    }
    let status = if job.completed {
        "completed"
    } else {
        "running"
    };
    Ok(json_response(
        202,
        &json!({"id": job.id, "status": status, "created_at": job.created_at, "total": job.items.len(),
                "counts": {"queued": 0, "succeeded": 0, "failed": 0}}),
    ))
}

/// The DLQ objects of the tenant dead-lettered in `[from, to]`.
async fn dlq_items(
    app: &Rc<App>,
    tenant_id: &str,
    range: DlqRange,
) -> Result<Vec<String>, Problem> {
    let from =
        parse_rfc3339(&range.from).ok_or_else(|| invalid("dlq_range.from must be RFC 3339"))?;
    let to = parse_rfc3339(&range.to).ok_or_else(|| invalid("dlq_range.to must be RFC 3339"))?;
    if to < from {
        return Err(invalid("dlq_range.to is before dlq_range.from"));
    }
    if let Some(ep) = &range.endpoint_id {
        let snapshot = app.shard.node.meta().load();
        match snapshot.endpoints.get(ep) {
            Some(e) if e.tenant_id == tenant_id => {}
            _ => return Err(Problem::new(Code::NotFound, format!("no endpoint {ep}"))),
        }
    }
    let store = dlq_store(app);
    let keys = store
        .list_range(tenant_id, range.endpoint_id.as_deref(), from, to)
        .await
        .map_err(dlq_problem)?;
    // Keys are by UTC day and the range is exact, on the object's exhausted_at (whose date is
    // the key's): only objects of the first and the last day can fall outside it, so only
    // those are read.
    let (first_day, last_day) = (
        from.to_offset(UtcOffset::UTC).date(),
        to.to_offset(UtcOffset::UTC).date(),
    );
    let on_edge =
        |key: &str| parse_key(key).is_ok_and(|p| p.date == first_day || p.date == last_day);
    let interior = keys.iter().filter(|k| !on_edge(k)).count();
    if interior > ITEMS_MAX {
        return Err(too_many());
    }
    let edge: Vec<&String> = keys.iter().filter(|k| on_edge(k)).collect();
    let read: Vec<_> = futures::stream::iter(edge)
        .map(|key| {
            let store = store.clone();
            async move { (key, store.get(key).await) }
        })
        .buffered(EDGE_READS_CONCURRENT)
        .collect()
        .await;
    let mut outside = HashSet::new();
    for (key, found) in read {
        // Deleted since the listing: not in the range any more.
        let inside = found.map_err(dlq_problem)?.is_some_and(|obj| {
            parse_rfc3339(&obj.exhausted_at).is_some_and(|t| t >= from && t <= to)
        });
        if !inside {
            outside.insert(key.as_str());
        }
    }
    let items: Vec<String> = keys
        .iter()
        .filter(|k| !outside.contains(k.as_str()))
        .map(|k| format!("dlq:{k}"))
        .collect();
    if items.len() > ITEMS_MAX {
        return Err(too_many());
    }
    Ok(items)
}

fn too_many() -> Problem {
    invalid(format!(
        "the range holds more than {ITEMS_MAX} DLQ objects; narrow it"
    ))
}

/// A DLQ store error while resolving a range: an outage is 503 (try again), a listing too large
/// or a corrupt object is 422.
fn dlq_problem(e: hookrelay_engine::dlq::Error) -> Problem {
    use hookrelay_engine::dlq::Error;
    match e {
        Error::TooManyKeys { .. } => too_many(),
        e if e.is_transient() => Problem::new(
            Code::Unavailable,
            format!("the DLQ store is unavailable: {e}"),
        )
        .retry_after(1),
        e => invalid(e.to_string()),
    }
}

pub async fn get(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, Problem> {
    let job = match snapshot.replays.get(id) {
        Some(j) if caller.key.tenant_id.as_deref() == Some(j.tenant_id.as_str()) => j.clone(),
        _ => return Err(Problem::new(Code::NotFound, format!("no replay {id}"))),
    };
    let (mut succeeded, mut failed) = (0u64, 0u64);
    let created: Vec<&String> = job.created.iter().flatten().collect();
    for delivery_id in &created {
        match app.shard.delivery_status(delivery_id).await.map(|(_, s)| s) {
            Some(Status::Success) => succeeded += 1,
            Some(Status::Failed | Status::Exhausted) => failed += 1,
            _ => {}
        }
    }
    let errors: Vec<_> = job
        .errors
        .iter()
        .map(|(i, reason)| json!({"item": job.items.get(*i), "error": reason}))
        .collect();
    Ok(json_response(
        200,
        &json!({
            "id": job.id,
            "status": if job.completed { "completed" } else { "running" },
            "created_at": job.created_at,
            "total": job.items.len(),
            "counts": {"queued": created.len(), "succeeded": succeeded, "failed": failed},
            "skipped": errors.len(),
            "errors": errors,
        }),
    ))
}
