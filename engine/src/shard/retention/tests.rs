//! Retention against a real shard: portable log backend, a current-thread runtime with a
//! `LocalSet` (as a shard runs), local hyper receivers, and a retention of a second or less so
//! that real time makes segments expire.

use crate::clock::now_ms;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::backoff::RetryPolicy;
use crate::ids::parse_delivery_id;
use crate::meta::{Endpoint, EndpointSecrets, MetaOp, Verification};
use crate::node::{EngineConfig, Node};
use crate::record::IngestPayload;
use crate::shard::{IngestOk, IngestRequest, endpoint_tag};

const TENANT: &str = "tn_01JRETENTIONTESTTENANT0000";

/// A receiver answering `status` after `delay`, counting requests.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Receiver {
    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn receiver(status: u16, delay: Duration) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let resp = Response::builder()
                            .status(StatusCode::from_u16(status).expect("status"))
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .expect("response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { addr, requests }
}

fn endpoint(id: &str, url: &str, paused: bool, max_attempts: u32) -> MetaOp {
    MetaOp::PutEndpoint(Box::new(Endpoint {
        id: id.into(),
        tenant_id: TENANT.into(),
        name: None,
        destination_url: url.into(),
        verification: Verification {
            mode: crate::verify::Mode::default(),
            secret: "verify-secret".into(),
            previous_secret: None,
            previous_valid_until_ms: None,
        },
        secrets: EndpointSecrets {
            signing_secret: "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=".into(),
            previous_signing_secret: None,
            previous_signing_valid_until_ms: None,
        },
        retry: RetryPolicy {
            max_attempts,
            base_delay_ms: 0,
            factor: 1.0,
            max_delay_ms: 0,
            jitter: 0.0,
            retry_client_errors_once: false,
        },
        timeout_ms: 10_000,
        max_in_flight: 4,
        rate_limit_per_s: None,
        allowed_source_ips: None,
        ordering: "none".into(),
        paused,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }))
}

fn config(dir: &std::path::Path, retention: Duration) -> EngineConfig {
    let mut c = EngineConfig::new(dir, 1);
    c.log_io = hookrelay_log::IoMode::Portable;
    c.allow_private_destinations = true;
    c.deliveries_retention = retention;
    c
}

/// Opens shard 0 of `node` and runs its event loop on the local set.
async fn start(node: &Node) -> (Rc<ShardCore>, tokio::task::JoinHandle<()>) {
    let core = ShardCore::open(0, node.clone()).await.expect("open shard");
    let runner = core.clone();
    let run = tokio::task::spawn_local(async move {
        runner.run().await.expect("shard run");
    });
    (core, run)
}

async fn ingest(core: &Rc<ShardCore>, endpoint_id: &str, key: &str) -> (String, u64) {
    let ok = core
        .ingest(IngestRequest {
            endpoint_id: endpoint_id.into(),
            tenant_id: TENANT.into(),
            payload: IngestPayload::encode(
                [("content-type", &b"application/json"[..])],
                format!("{{\"key\":\"{key}\"}}").as_bytes(),
            ),
            idempotency_key: key.into(),
            received_at_ms: now_ms(),
            replay_of: None,
        })
        .await
        .expect("ingest");
    let IngestOk::Accepted { delivery_id } = ok else {
        panic!("not a new delivery: {ok:?}");
    };
    let seq = parse_delivery_id(&delivery_id).expect("delivery id").seq;
    (delivery_id, seq)
}

fn slot(core: &ShardCore, seq: u64) -> Slot {
    core.table.borrow().get(seq).expect("slot")
}

/// Polls `check` until it holds (or fails the test after a few seconds).
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn settled(core: &ShardCore, seq: u64) -> bool {
    core.table
        .borrow()
        .get(seq)
        .is_some_and(|s| settlement(&s) == Settlement::Settled)
}

fn local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// One delivery succeeds, one is exhausted (→ DLQ), one waits behind a paused endpoint. Past
/// retention the queued one is ended `failed`/`retention_expired` and dead-lettered before its
/// segment goes; then the segment goes, reads of its deliveries answer unknown, a newer
/// delivery stays, the stale scheduler entry is never attempted, and a reopen recovers.
#[test]
fn expired_segment_goes_only_once_every_delivery_is_settled() {
    local(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Duration::from_millis(800);
        let ok = receiver(200, Duration::ZERO).await;
        let failing = receiver(500, Duration::ZERO).await;
        let held = receiver(200, Duration::ZERO).await;
        let node = Node::open(config(dir.path(), retention)).expect("node");
        node.meta()
            .apply(vec![
                endpoint("ep_ok", &ok.url(), false, 3),
                endpoint("ep_fail", &failing.url(), false, 2),
                endpoint("ep_paused", &held.url(), true, 3),
            ])
            .await
            .expect("endpoints");
        let (core, run) = start(&node).await;

        let (id_ok, seq_ok) = ingest(&core, "ep_ok", "k-ok").await;
        let (id_fail, seq_fail) = ingest(&core, "ep_fail", "k-fail").await;
        let (id_held, seq_held) = ingest(&core, "ep_paused", "k-held").await;
        wait_for("success and a dead-lettered exhaustion", || {
            settled(&core, seq_ok) && settled(&core, seq_fail)
        })
        .await;
        assert_eq!(slot(&core, seq_ok).status, Status::Success);
        assert_eq!(slot(&core, seq_fail).status, Status::Exhausted);
        assert_eq!(slot(&core, seq_held).status, Status::Queued);
        core.log.roll().await.expect("roll");
        let old = core.log.segments().remove(0);
        assert!(old.sealed);

        // Young: nothing happens.
        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(
            pass,
            Pass::default(),
            "a segment younger than retention stays"
        );

        tokio::time::sleep(retention + Duration::from_millis(200)).await;
        let (id_new, seq_new) = ingest(&core, "ep_ok", "k-new").await;
        wait_for("the new delivery", || settled(&core, seq_new)).await;

        // Past retention, but the queued delivery holds the segment: it is ended first.
        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(pass.expired, 1, "{pass:?}");
        assert_eq!(
            pass.segments_deleted, 0,
            "a queued delivery keeps its segment: {pass:?}"
        );
        assert_eq!(core.log.first_offset(), old.first_offset);
        assert_eq!(slot(&core, seq_held).status, Status::Failed);
        wait_for("the expired delivery's DLQ object", || {
            settled(&core, seq_held)
        })
        .await;
        let detail = core
            .delivery(seq_held, &id_held)
            .expect("still readable before deletion");
        assert_eq!(detail.status, "failed");
        assert_eq!(detail.last_error.as_deref(), Some(RETENTION_EXPIRED));
        assert_eq!(detail.attempts, 0, "ending it is not an attempt");
        let dlq_key = detail.dlq_key.expect("dead-lettered");
        let object = core
            .dlq
            .get(&dlq_key)
            .await
            .expect("dlq read")
            .expect("dlq object");
        assert_eq!(object.delivery_id, id_held);
        assert!(
            core.dlq
                .get(&core.delivery(seq_fail, &id_fail).unwrap().dlq_key.unwrap())
                .await
                .unwrap()
                .is_some()
        );

        // The paused endpoint's queue still holds the ended delivery: resumed, it must not be
        // attempted (its record is still readable), and its attempt slot must be given back.
        node.meta()
            .apply(vec![endpoint("ep_paused", &held.url(), false, 3)])
            .await
            .expect("resume");
        wait_for("the stale entry to be dropped", || {
            core.sched
                .borrow()
                .queue("ep_paused")
                .is_some_and(|q| q.in_memory() == 0)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            held.requests(),
            0,
            "a delivery ended by retention is never sent"
        );
        assert_eq!(
            core.delivery(seq_held, &id_held).expect("readable").status,
            "failed"
        );

        // Now every delivery ingested in the old segment is settled: it goes.
        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(pass.segments_deleted, 1, "{pass:?}");
        assert_eq!(pass.deliveries_deleted, 3, "{pass:?}");
        assert_eq!(pass.bytes_deleted, old.bytes);
        assert_eq!(core.log.first_offset(), old.next_offset);
        assert!(!old.path.exists());
        assert_eq!(core.retention.first_seq(), seq_new);
        for (seq, id) in [(seq_ok, &id_ok), (seq_fail, &id_fail), (seq_held, &id_held)] {
            assert!(core.delivery(seq, id).is_none(), "{id} is gone");
        }
        assert_eq!(
            core.delivery(seq_new, &id_new)
                .expect("newer delivery kept")
                .status,
            "success"
        );
        let page = core.list(
            &crate::shard::ListQuery {
                tenant_id: TENANT.into(),
                endpoint_id: None,
                endpoint_tags: ["ep_ok", "ep_fail", "ep_paused"]
                    .iter()
                    .map(|e| endpoint_tag(e))
                    .collect(),
                status: None,
                since_ms: None,
                until_ms: None,
                limit: 50,
            },
            None,
        );
        let listed: Vec<&str> = page.items.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(listed, [id_new.as_str()]);
        // The active segment holds the newest records: nothing more goes.
        assert_eq!(
            core.retain(now_ms()).await.expect("pass").segments_deleted,
            0
        );

        node.shutdown();
        run.await.expect("run");
        drop(core);

        // Recovery starts at the first retained segment and keeps the newer delivery.
        let node = Node::open(config(dir.path(), retention)).expect("reopen node");
        let core = ShardCore::open(0, node.clone())
            .await
            .expect("reopen shard");
        assert_eq!(core.log.first_offset(), old.next_offset);
        assert_eq!(core.retention.first_seq(), seq_new);
        assert_eq!(core.next_seq.get(), seq_new + 1);
        assert_eq!(
            core.delivery(seq_new, &id_new).expect("kept").status,
            "success"
        );
        for (seq, id) in [(seq_ok, &id_ok), (seq_fail, &id_fail), (seq_held, &id_held)] {
            assert!(
                core.delivery(seq, id).is_none(),
                "{id} stays gone after recovery"
            );
        }
        assert!(
            core.sched
                .borrow()
                .queue("ep_paused")
                .is_none_or(|q| q.in_memory() == 0)
        );
        let (_, seq_after) = ingest(&core, "ep_ok", "k-after").await;
        assert_eq!(seq_after, seq_new + 1, "sequence numbers continue");
        node.shutdown();
    });
}

/// A queued delivery with an attempt running is not ended under it: its segment waits for the
/// attempt's outcome, then goes.
#[test]
fn a_delivery_being_attempted_is_not_ended() {
    local(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Duration::from_millis(300);
        let slow = receiver(200, Duration::from_millis(1500)).await;
        let node = Node::open(config(dir.path(), retention)).expect("node");
        node.meta()
            .apply(vec![endpoint("ep_slow", &slow.url(), false, 3)])
            .await
            .expect("endpoint");
        let (core, run) = start(&node).await;
        let (id, seq) = ingest(&core, "ep_slow", "k-slow").await;
        wait_for("the attempt to start", || slow.requests() == 1).await;
        core.log.roll().await.expect("roll");
        tokio::time::sleep(retention + Duration::from_millis(100)).await;

        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(
            (pass.expired, pass.segments_deleted, pass.unsettled),
            (0, 0, 1),
            "{pass:?}"
        );
        assert_eq!(slot(&core, seq).status, Status::Queued);

        wait_for("the slow attempt", || settled(&core, seq)).await;
        assert_eq!(core.delivery(seq, &id).expect("readable").status, "success");
        // The old segment goes now. So does the active one, whose only record is the attempt's:
        // an attempt record carries the time it started, over a retention period ago.
        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(
            (pass.expired, pass.segments_deleted, pass.deliveries_deleted),
            (0, 2, 1),
            "{pass:?}"
        );
        assert!(core.delivery(seq, &id).is_none());
        assert_eq!(slow.requests(), 1);
        node.shutdown();
        run.await.expect("run");
    });
}

/// Settled deliveries spread over several segments go in one pass, the active segment never,
/// and an idle active segment past retention is rolled so it can go on the next pass.
#[test]
fn several_segments_go_and_an_idle_active_segment_is_rolled() {
    local(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Duration::from_millis(300);
        let ok = receiver(200, Duration::ZERO).await;
        let node = Node::open(config(dir.path(), retention)).expect("node");
        node.meta()
            .apply(vec![endpoint("ep_ok", &ok.url(), false, 3)])
            .await
            .expect("endpoint");
        let (core, run) = start(&node).await;
        let mut seqs = Vec::new();
        for i in 0..4 {
            let (_, seq) = ingest(&core, "ep_ok", &format!("k-{i}")).await;
            wait_for("success", || settled(&core, seq)).await;
            seqs.push(seq);
            core.log.roll().await.expect("roll");
        }
        let (_, last) = ingest(&core, "ep_ok", "k-last").await;
        wait_for("success", || settled(&core, last)).await;
        assert_eq!(core.log.segments().len(), 5);
        tokio::time::sleep(retention + Duration::from_millis(100)).await;

        let pass = core.retain(now_ms()).await.expect("pass");
        // The idle active segment was sealed first, so all five sealed segments go.
        assert_eq!(
            (pass.segments_deleted, pass.deliveries_deleted),
            (5, 5),
            "{pass:?}"
        );
        let segments = core.log.segments();
        assert_eq!(segments.len(), 1);
        assert!(!segments[0].sealed);
        assert_eq!(core.retention.first_seq(), last + 1);
        assert_eq!(core.log.first_offset(), segments[0].first_offset);
        node.shutdown();
        run.await.expect("run");

        // Every delivery is gone: a restart finds no ingest record and still works.
        let node = Node::open(config(dir.path(), retention)).expect("reopen node");
        let core = ShardCore::open(0, node.clone())
            .await
            .expect("reopen shard");
        assert_eq!(core.retention.first_seq(), core.next_seq.get());
        node.shutdown();
    });
}

/// Deliveries behind an endpoint's overflow cursor are not in memory, so they are ended even
/// while the endpoint has an attempt running; the refill that follows skips them.
#[test]
fn overflowed_deliveries_are_ended_while_the_endpoint_is_busy() {
    local(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let retention = Duration::from_millis(300);
        let slow = receiver(200, Duration::from_millis(1200)).await;
        let mut cfg = config(dir.path(), retention);
        cfg.queue_in_memory_per_endpoint = 1;
        let node = Node::open(cfg).expect("node");
        node.meta()
            .apply(vec![endpoint("ep_slow", &slow.url(), false, 3)])
            .await
            .expect("endpoint");
        let (core, run) = start(&node).await;
        let (_, first) = ingest(&core, "ep_slow", "k-1").await;
        let (id_2, second) = ingest(&core, "ep_slow", "k-2").await;
        let (_, third) = ingest(&core, "ep_slow", "k-3").await;
        wait_for("the first attempt", || slow.requests() == 1).await;
        assert_eq!(
            core.sched
                .borrow()
                .queue("ep_slow")
                .and_then(|q| q.overflow_from),
            Some(second)
        );
        core.log.roll().await.expect("roll");
        tokio::time::sleep(retention + Duration::from_millis(100)).await;

        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!((pass.expired, pass.segments_deleted), (2, 0), "{pass:?}");
        assert_eq!(
            slot(&core, first).status,
            Status::Queued,
            "in flight: left alone"
        );
        wait_for("the first attempt and the DLQ objects", || {
            settled(&core, first) && settled(&core, second) && settled(&core, third)
        })
        .await;
        assert_eq!(
            core.delivery(second, &id_2)
                .expect("readable")
                .last_error
                .as_deref(),
            Some(RETENTION_EXPIRED)
        );
        wait_for("the overflow cursor to clear", || {
            core.sched
                .borrow()
                .queue("ep_slow")
                .is_none_or(|q| q.overflow_from.is_none() && q.in_memory() == 0)
        })
        .await;
        assert_eq!(
            slow.requests(),
            1,
            "ended deliveries are not refilled and sent"
        );
        let pass = core.retain(now_ms()).await.expect("pass");
        assert_eq!(pass.deliveries_deleted, 3, "{pass:?}");
        node.shutdown();
        run.await.expect("run");
    });
}
