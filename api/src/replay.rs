//! Replay jobs: the runner that re-enqueues past deliveries as new ones marked `replay_of`.
//!
//! A job is resolved when it is created (a list of `dl_` ids, or `dlq:<key>` entries for a DLQ
//! time range) and stored in the metadata; the runner works through it in order, paced by a
//! node-wide per-tenant rate limit (`replay.max_per_s`), and persists its progress every
//! [`PROGRESS_BATCH`] items. Each replayed item is ingested with the idempotency key
//! `replay:<job>:<original>`, so a runner that resumes after a crash re-finds the deliveries it
//! had already created instead of creating them twice. Jobs still running at start-up resume.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hookrelay_engine::clock::now_ms;
use hookrelay_engine::dlq::Store;
use hookrelay_engine::dlq::object::DlqObject;
use hookrelay_engine::ids::parse_delivery_id;
use hookrelay_engine::meta::{MetaOp, ReplayJob};
use hookrelay_engine::record::IngestPayload;
use hookrelay_engine::shard::{IngestError, IngestOk, IngestRequest};
use tokio::time::Instant;

use crate::app::App;

/// Items replayed between two progress writes to the metadata.
pub const PROGRESS_BATCH: usize = 100;
/// Most items one job may hold.
pub const ITEMS_MAX: usize = 10_000;
/// Wait before retrying an item the shard could not take (503).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Next free send slot per tenant, shared by every job of the tenant on every thread.
fn limiter() -> &'static Mutex<HashMap<String, Instant>> {
    static LIMITER: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    LIMITER.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Waits for the tenant's next replay slot.
async fn pace(tenant_id: &str, max_per_s: u64) {
    let interval = Duration::from_secs_f64(1.0 / max_per_s.max(1) as f64);
    let slot = {
        let mut map = limiter().lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let next = map.entry(tenant_id.to_string()).or_insert(now);
        let slot = (*next).max(now);
        *next = slot + interval;
        slot
    };
    tokio::time::sleep_until(slot).await;
}

/// The original request of an item.
struct Original {
    delivery_id: String,
    endpoint_id: String,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
}

enum ItemError {
    /// Try the same item again later.
    Retry,
    /// The item cannot be replayed.
    Skip(String),
}

/// Starts (or resumes) the runner of job `job_id` on this thread.
pub fn spawn(app: Rc<App>, job_id: String) {
    tokio::task::spawn_local(async move { run(app, job_id).await });
}

/// Resumes every job that was running when the node stopped; called once, on shard 0.
pub async fn resume_all(app: Rc<App>) {
    while app.shard.node.readiness().is_err() {
        if app.shard.node.is_stopping() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let snapshot = app.shard.node.meta().load();
    for job in snapshot.replays.values().filter(|j| !j.completed) {
        tracing::info!(job = %job.id, done = job.created.len(), total = job.items.len(), "resuming replay job");
        spawn(app.clone(), job.id.clone());
    }
}

async fn run(app: Rc<App>, job_id: String) {
    let node = &app.shard.node;
    loop {
        let Some(job) = node.meta().load().replays.get(&job_id).cloned() else {
            return;
        };
        if job.completed {
            return;
        }
        let mut job = (*job).clone();
        let end = (job.created.len() + PROGRESS_BATCH).min(job.items.len());
        while job.created.len() < end && !node.is_stopping() {
            let index = job.created.len();
            pace(&job.tenant_id, app.config.replay.max_per_s).await;
            match replay_item(&app, &job, index).await {
                Ok(id) => job.created.push(Some(id)),
                Err(ItemError::Skip(reason)) => {
                    job.created.push(None);
                    job.errors.push((index, reason));
                }
                Err(ItemError::Retry) => tokio::time::sleep(RETRY_DELAY).await,
            }
        }
        job.completed = job.created.len() == job.items.len();
        let stopping = node.is_stopping();
        if let Err(e) = node
            .meta()
            .apply(vec![MetaOp::PutReplay(Box::new(job))])
            .await
        {
            // The items are idempotent: the next run re-finds what this batch created.
            tracing::error!(job = %job_id, error = %e, "could not save replay progress");
            tokio::time::sleep(RETRY_DELAY).await;
        }
        if stopping {
            return;
        }
    }
}

async fn replay_item(app: &Rc<App>, job: &ReplayJob, index: usize) -> Result<String, ItemError> {
    let item = &job.items[index];
    let original = match item.strip_prefix("dlq:") {
        Some(key) => from_dlq_key(app, key).await?,
        None => from_delivery(app, &job.tenant_id, item).await?,
    };
    let snapshot = app.shard.node.meta().load();
    match snapshot.endpoints.get(&original.endpoint_id) {
        Some(e) if e.tenant_id == job.tenant_id => {}
        _ => return Err(ItemError::Skip("endpoint_deleted".into())),
    }
    let request = IngestRequest {
        endpoint_id: original.endpoint_id,
        tenant_id: job.tenant_id.clone(),
        payload: IngestPayload::encode(
            original.headers.iter().map(|(n, v)| (n.as_str(), &v[..])),
            &original.body,
        ),
        idempotency_key: format!("replay:{}:{}", job.id, original.delivery_id),
        received_at_ms: now_ms(),
        replay_of: Some(original.delivery_id),
    };
    match app.shard.ingest(request).await {
        Ok(IngestOk::Accepted { delivery_id } | IngestOk::Duplicate { delivery_id, .. }) => {
            Ok(delivery_id)
        }
        Err(IngestError::Unavailable(_)) => Err(ItemError::Retry),
        Err(IngestError::KeyReused) => Err(ItemError::Skip("idempotency_key_reused".into())),
    }
}

fn headers_of(map: impl IntoIterator<Item = (String, String)>) -> Vec<(String, Bytes)> {
    map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect()
}

fn decode_body(b64: &str) -> Result<Bytes, ItemError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Bytes::from)
        .map_err(|_| ItemError::Skip("unreadable_body".into()))
}

fn from_object(obj: DlqObject) -> Result<Original, ItemError> {
    Ok(Original {
        body: decode_body(&obj.body_base64)?,
        delivery_id: obj.delivery_id,
        endpoint_id: obj.endpoint_id,
        headers: headers_of(obj.headers),
    })
}

async fn from_dlq_key(app: &Rc<App>, key: &str) -> Result<Original, ItemError> {
    let found = dlq_store(app).get(key).await.map_err(dlq_error)?;
    from_object(found.ok_or_else(|| ItemError::Skip("not_found".into()))?)
}

/// A DLQ store error of an item: an outage (S3 unreachable, disk trouble) retries the item, so
/// a replay waits the outage out; anything else (a corrupt object) skips it.
fn dlq_error(e: hookrelay_engine::dlq::Error) -> ItemError {
    if e.is_transient() {
        tracing::warn!(error = %e, "replay: DLQ store unavailable; retrying the item");
        ItemError::Retry
    } else {
        ItemError::Skip(format!("dlq_unreadable: {e}"))
    }
}

/// The original of a delivery id: from the log while it is retained, else from the DLQ.
async fn from_delivery(app: &Rc<App>, tenant_id: &str, id: &str) -> Result<Original, ItemError> {
    if let Some(detail) = app.shard.delivery(id).await {
        if detail.tenant_id != tenant_id {
            return Err(ItemError::Skip("not_found".into()));
        }
        return Ok(Original {
            body: decode_body(&detail.request.body_base64)?,
            delivery_id: detail.id,
            endpoint_id: detail.endpoint_id,
            headers: headers_of(detail.request.headers),
        });
    }
    // Gone from the log: look for its DLQ object, dead-lettered at or after its creation.
    let created_ms = parse_delivery_id(id).map_or(0, |l| l.created_ms);
    let from = hookrelay_engine::clock::datetime_ms(created_ms);
    let to = hookrelay_engine::clock::datetime_ms(now_ms());
    let found = dlq_store(app)
        .find_delivery(tenant_id, id, from, to)
        .await
        .map_err(dlq_error)?;
    from_object(found.ok_or_else(|| ItemError::Skip("not_found".into()))?)
}

/// The node's DLQ store (`dlq.backend`, local or S3), the one its shards ship to.
pub fn dlq_store(app: &App) -> Store {
    app.shard.node.dlq().clone()
}
