//! A shard: one thread, one single-threaded runtime, and everything it owns — its log, its
//! idempotency index, its state table, its scheduler with the timer wheel, and its delivery
//! client. Architecture Invariant: only the owning thread touches a shard's state; other
//! threads talk to it through [`ShardMsg`]s on its bounded inbox.
//!
//! Read first: [`ShardCtx`] (what the HTTP layer calls), [`core::ShardCore`] (the state),
//! `ingest.rs` (the hot path), `attempt.rs` (delivery), `recovery.rs` (start-up).

mod attempt;
pub(crate) mod core;
mod dead_letter;
mod ingest;
pub mod list;
mod metrics;
mod query;
mod recovery;
mod retention;
pub mod scheduler;

use std::cell::RefCell;
use std::rc::Rc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::ids::{parse_delivery_id, shard_of};
use crate::node::Node;
use crate::record::{IngestPayload, Status};

pub use self::core::{ShardCore, endpoint_tag};
pub use list::{DeliverySummary, ListQuery, ShardPage};
pub use metrics::{MetricsError, MetricsRequest};
pub use query::DeliveryDetail;

/// An ingest request that passed the HTTP-level checks (endpoint exists, size, source IP,
/// signature): what the owning shard needs to make it durable.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub endpoint_id: String,
    pub tenant_id: String,
    /// Headers and body, encoded once where the request was read.
    pub payload: IngestPayload,
    pub idempotency_key: String,
    pub received_at_ms: u64,
    pub replay_of: Option<String>,
}

/// A successful ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOk {
    /// Made durable now.
    Accepted { delivery_id: String },
    /// The idempotency key was seen with the same body: the first delivery.
    Duplicate { delivery_id: String, status: Status },
}

/// Why ingest did not ACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the idempotency key was used before with a different body")]
    KeyReused,
    #[error("{0}")]
    Unavailable(String),
}

/// Messages between shards. Every reply travels on a oneshot.
pub enum ShardMsg {
    Ingest(
        IngestRequest,
        oneshot::Sender<Result<IngestOk, IngestError>>,
    ),
    Delivery {
        seq: u64,
        delivery_id: String,
        reply: oneshot::Sender<Option<DeliveryDetail>>,
    },
    Status {
        seq: u64,
        delivery_id: String,
        reply: oneshot::Sender<Option<(String, Status)>>,
    },
    List {
        query: ListQuery,
        from: Option<u64>,
        reply: oneshot::Sender<ShardPage>,
    },
    /// Metrics and usage reads (see `metrics.rs`).
    Metrics(MetricsRequest),
}

/// Where each shard's scan stands in a paginated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanPos {
    Newest,
    From(u64),
    Done,
}

/// Why a list query was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the cursor is not one this node issued")]
    BadCursor,
    #[error("{0}")]
    Unavailable(&'static str),
}

/// A page of deliveries across shards and the opaque cursor of the next one.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    pub data: Vec<DeliverySummary>,
    pub next_cursor: Option<String>,
}

fn encode_cursor(positions: &[ScanPos]) -> Option<String> {
    if positions.iter().all(|p| *p == ScanPos::Done) {
        return None;
    }
    let parts: Vec<String> = positions
        .iter()
        .map(|p| match p {
            ScanPos::Newest => "n".to_string(),
            ScanPos::From(s) => s.to_string(),
            ScanPos::Done => "-".to_string(),
        })
        .collect();
    Some(format!("c1.{}", parts.join(".")))
}

fn decode_cursor(cursor: &str, shards: usize) -> Option<Vec<ScanPos>> {
    let rest = cursor.strip_prefix("c1.")?;
    let positions: Vec<ScanPos> = rest
        .split('.')
        .map(|p| match p {
            "n" => Some(ScanPos::Newest),
            "-" => Some(ScanPos::Done),
            n => n.parse().ok().map(ScanPos::From),
        })
        .collect::<Option<_>>()?;
    (positions.len() == shards).then_some(positions)
}

/// What the HTTP layer of one shard thread holds: the node, and this thread's shard once
/// recovery has finished. Calls on it route to the owning shard.
pub struct ShardCtx {
    pub id: usize,
    pub node: Node,
    core: RefCell<Option<Rc<ShardCore>>>,
}

impl ShardCtx {
    pub fn new(id: usize, node: Node) -> Rc<ShardCtx> {
        Rc::new(ShardCtx {
            id,
            node,
            core: RefCell::new(None),
        })
    }

    pub(crate) fn set_core(&self, core: Rc<ShardCore>) {
        *self.core.borrow_mut() = Some(core);
    }

    fn local(&self) -> Option<Rc<ShardCore>> {
        self.core.borrow().clone()
    }

    /// Makes a delivery durable on the shard that owns its endpoint, or answers why not.
    pub async fn ingest(&self, req: IngestRequest) -> Result<IngestOk, IngestError> {
        if !self.node.replication().is_primary() {
            return Err(IngestError::Unavailable(format!(
                "this node is a replica (epoch {}): send to the primary, or promote this node",
                self.node.replication().epoch()
            )));
        }
        let owner = shard_of(&req.endpoint_id, self.node.shards());
        if owner == self.id {
            let core = self
                .local()
                .ok_or_else(|| IngestError::Unavailable("shard is recovering".into()))?;
            return core.ingest(req).await;
        }
        let (tx, rx) = oneshot::channel();
        self.node
            .inbox(owner)
            .try_send(ShardMsg::Ingest(req, tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    IngestError::Unavailable("shard inbox is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    IngestError::Unavailable("shard is stopped".into())
                }
            })?;
        rx.await
            .unwrap_or_else(|_| Err(IngestError::Unavailable("shard dropped the request".into())))
    }

    /// A delivery's detail from whichever shard owns it: `Ok(None)` when unknown, `Err` when
    /// the owning shard cannot answer now (a replica, or a shard still recovering) — which is
    /// not the same as "no such delivery".
    pub async fn delivery_checked(
        &self,
        delivery_id: &str,
    ) -> Result<Option<DeliveryDetail>, String> {
        let Some(loc) = parse_delivery_id(delivery_id) else {
            return Ok(None);
        };
        if loc.shard >= self.node.shards() {
            return Ok(None);
        }
        let unavailable = || {
            if self.node.replication().is_primary() {
                "the delivery's shard is recovering; retry".to_string()
            } else {
                "this node is a replica: delivery reads are served by the primary (or after \
                 promotion)"
                    .to_string()
            }
        };
        if loc.shard == self.id {
            let core = self.local().ok_or_else(unavailable)?;
            return Ok(core.delivery(loc.seq, delivery_id));
        }
        let (tx, rx) = oneshot::channel();
        self.node
            .inbox(loc.shard)
            .send(ShardMsg::Delivery {
                seq: loc.seq,
                delivery_id: delivery_id.to_string(),
                reply: tx,
            })
            .await
            .map_err(|_| unavailable())?;
        // A shard without a core drops the request unanswered.
        rx.await.map_err(|_| unavailable())
    }

    /// A delivery's detail from whichever shard owns it; `None` when unknown or when its shard
    /// cannot answer now (see [`ShardCtx::delivery_checked`]).
    pub async fn delivery(&self, delivery_id: &str) -> Option<DeliveryDetail> {
        self.delivery_checked(delivery_id).await.ok().flatten()
    }

    /// A delivery's tenant and status only — the state-table slot, checked against the ingest
    /// record's id — without reading its payload or history (replay progress asks for many).
    pub async fn delivery_status(&self, delivery_id: &str) -> Option<(String, Status)> {
        let loc = parse_delivery_id(delivery_id)?;
        if loc.shard >= self.node.shards() {
            return None;
        }
        if loc.shard == self.id {
            return self.local()?.status(loc.seq, delivery_id);
        }
        let (tx, rx) = oneshot::channel();
        self.node
            .inbox(loc.shard)
            .send(ShardMsg::Status {
                seq: loc.seq,
                delivery_id: delivery_id.to_string(),
                reply: tx,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }
}

impl ShardCtx {
    /// `GET /v1/deliveries`: a page newest first across shards.
    pub async fn list_deliveries(
        &self,
        query: ListQuery,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, ListError> {
        let shards = self.node.shards();
        let positions = match cursor {
            None => vec![ScanPos::Newest; shards],
            Some(c) => decode_cursor(c, shards).ok_or(ListError::BadCursor)?,
        };
        let mut pages: Vec<ShardPage> = Vec::with_capacity(shards);
        for (i, pos) in positions.iter().enumerate() {
            let from = match pos {
                ScanPos::Done => {
                    pages.push(ShardPage::default());
                    continue;
                }
                ScanPos::Newest => None,
                ScanPos::From(s) => Some(*s),
            };
            let page = if i == self.id {
                match self.local() {
                    Some(core) => core.list(&query, from),
                    None => return Err(ListError::Unavailable("shard is recovering")),
                }
            } else {
                let (tx, rx) = oneshot::channel();
                self.node
                    .inbox(i)
                    .send(ShardMsg::List {
                        query: query.clone(),
                        from,
                        reply: tx,
                    })
                    .await
                    .map_err(|_| ListError::Unavailable("shard is stopped"))?;
                rx.await
                    .map_err(|_| ListError::Unavailable("shard dropped the request"))?
            };
            pages.push(page);
        }
        let mut all: Vec<(usize, DeliverySummary)> = pages
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.items.iter().cloned().map(move |d| (i, d)))
            .collect();
        all.sort_by(|(_, a), (_, b)| {
            b.created_ms
                .cmp(&a.created_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        let rest = all.split_off(all.len().min(query.limit));
        let mut next = Vec::with_capacity(shards);
        for (i, page) in pages.iter().enumerate() {
            // The shard's first item not on this page is where it resumes.
            let first_left = rest
                .iter()
                .filter(|(s, _)| *s == i)
                .map(|(_, d)| d.seq)
                .max();
            next.push(match (positions[i], first_left, page.next_from) {
                (ScanPos::Done, _, _) => ScanPos::Done,
                (_, Some(seq), _) => ScanPos::From(seq + 1),
                (_, None, Some(from)) => ScanPos::From(from),
                (_, None, None) => ScanPos::Done,
            });
        }
        Ok(DeliveryPage {
            data: all.into_iter().map(|(_, d)| d).collect(),
            next_cursor: encode_cursor(&next),
        })
    }
}

/// Runs shard `ctx.id` on the current thread's runtime until the node shuts down: recovery,
/// then the inbox and the delivery loop. Must run inside `tokio_uring::start` (or a current-
/// thread runtime with a `LocalSet` when the log uses the portable backend).
///
/// A failed write or fsync poisons the shard's log (ARCHITECTURE.md invariant 8): the shard
/// then stops, and reopens its storage from disk — the same recovery as a restart — every
/// [`REOPEN_RETRY`] until it succeeds (e.g. once a full disk has room again). Ingest answers 503
/// meanwhile; nothing ACKed is lost because everything ACKed was fsynced.
pub async fn run(ctx: Rc<ShardCtx>, inbox: mpsc::Receiver<ShardMsg>) -> Result<(), core::Error> {
    tokio::task::spawn_local(serve_inbox(ctx.clone(), inbox));
    let mut conns = ctx
        .node
        .replication()
        .take_conns(ctx.id)
        .expect("replication connections are taken once per shard");
    let mut first = true;
    loop {
        if !ctx.node.replication().is_primary() {
            // A replica keeps a copy of the primary's log until promoted (`replication/`).
            ctx.node.mark_unready(ctx.id);
            match crate::replication::receiver::run_replica(&ctx, &mut conns).await? {
                crate::replication::receiver::ReplicaExit::Shutdown => return Ok(()),
                crate::replication::receiver::ReplicaExit::Promoted => {
                    tracing::info!(
                        shard = ctx.id,
                        "promoted: rebuilding the shard from its log"
                    );
                    continue;
                }
            }
        }
        let core = match ShardCore::open(ctx.id, ctx.node.clone()).await {
            Ok(core) => core,
            // A first start that cannot open its storage is fatal; a reopen retries.
            Err(e) if first => return Err(e),
            Err(e) => {
                tracing::warn!(shard = ctx.id, error = %e, "reopening the shard failed; retrying");
                if wait_or_stop(&ctx, REOPEN_RETRY).await {
                    return Ok(());
                }
                continue;
            }
        };
        first = false;
        ctx.set_core(core.clone());
        ctx.node.mark_ready(ctx.id);
        tokio::task::spawn_local(metrics::upkeep(core.clone()));
        tokio::task::spawn_local(crate::replication::sender::run_shard(core.clone()));
        if ctx.id == 0 {
            tokio::task::spawn_local(crate::replication::sender::run_meta(core.clone()));
        }
        let exit = core.run().await?;
        *ctx.core.borrow_mut() = None;
        core.retired.set(true);
        match exit {
            core::Exit::Shutdown => return Ok(()),
            core::Exit::Demoted => {
                ctx.node.mark_unready(ctx.id);
                tracing::warn!(
                    shard = ctx.id,
                    "fenced by a newer primary: becoming a replica"
                );
                drop(core);
            }
            core::Exit::Poisoned => {
                ctx.node.mark_unready(ctx.id);
                tracing::warn!(
                    shard = ctx.id,
                    "log poisoned; the shard will reopen its storage"
                );
                drop(core);
                if wait_or_stop(&ctx, REOPEN_RETRY).await {
                    return Ok(());
                }
            }
        }
    }
}

/// How long a poisoned shard waits before each attempt to reopen its storage.
pub const REOPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Sleeps `d`; true when the node is shutting down instead.
async fn wait_or_stop(ctx: &ShardCtx, d: std::time::Duration) -> bool {
    let mut shutdown = ctx.node.shutdown_signal();
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

/// Answers the messages other shards send. Handed-over ingests run inside this one task, as a
/// set of futures, not as a task each: a message is taken, deduped and appended in the same
/// poll that receives it, and the fsync wakes this task once for every request of the batch.
/// Spawning a task per request put each one at the back of the shard's run queue a second time
/// before its append; requests handed over then waited one queue round longer than those read
/// by the owning shard itself, so in a closed loop the owner's own connections sent more and the
/// owner did more of the HTTP work (BENCHMARKS.md, "Handed-over ingests in one task").
async fn serve_inbox(ctx: Rc<ShardCtx>, mut inbox: mpsc::Receiver<ShardMsg>) {
    let mut ingests = FuturesUnordered::new();
    loop {
        let msg = tokio::select! {
            biased;
            Some(()) = ingests.next(), if !ingests.is_empty() => continue,
            msg = inbox.recv() => msg,
        };
        let Some(msg) = msg else { break };
        // While the shard (re)opens its storage, requests get "unavailable" answers (or none:
        // a dropped reply reads as unavailable to the sender).
        let Some(core) = ctx.local() else {
            if let ShardMsg::Ingest(_, reply) = msg {
                let _ = reply.send(Err(IngestError::Unavailable("shard is recovering".into())));
            }
            continue;
        };
        match msg {
            ShardMsg::Ingest(req, reply) => {
                ingests.push(async move {
                    let _ = reply.send(core.ingest(req).await);
                });
            }
            ShardMsg::Delivery {
                seq,
                delivery_id,
                reply,
            } => {
                let _ = reply.send(core.delivery(seq, &delivery_id));
            }
            ShardMsg::Status {
                seq,
                delivery_id,
                reply,
            } => {
                let _ = reply.send(core.status(seq, &delivery_id));
            }
            ShardMsg::List { query, from, reply } => {
                let _ = reply.send(core.list(&query, from));
            }
            ShardMsg::Metrics(req) => core.answer_metrics(req),
        }
    }
    // Every sender is gone (shutdown): the ingests already taken still get their answers.
    while ingests.next().await.is_some() {}
}
