//! Durability (contract: "Durability" and "Process and configuration"): every delivery that got
//! a 2xx from ingest is delivered at least once after a kill -9 and a restart on the same data
//! dir; SIGTERM exits 0 and keeps pending work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, json_content_type, str_field};
use hookrelay_tests::http::Http;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hyper::Method;
use serde_json::json;

/// Concurrent senders.
const SENDERS: usize = 8;
/// Ingest attempts before the crash; the kill comes when [`KILL_AT_ACKS`] of them are acked.
const PHASE1_SENDS: usize = 2400;
const KILL_AT_ACKS: usize = 1800;
/// Ingest attempts after the restart.
const PHASE2_SENDS: usize = 1200;
/// Time bounds on the two phases, so a slow ingest makes a smaller test, not a stuck one: the kill
/// comes at [`KILL_AT_ACKS`] acks or after [`PHASE1_TIME_MAX`], whichever is first.
const PHASE1_TIME_MAX: Duration = Duration::from_secs(15);
const PHASE2_TIME_MAX: Duration = Duration::from_secs(10);
/// How long everything acked may take to arrive after the restart.
const DRAIN_DEADLINE: Duration = Duration::from_secs(45);

#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<String>>,
    /// Answers that were neither 2xx nor a dropped connection (reported, and a failure).
    unexpected: Mutex<Vec<String>>,
    next: AtomicUsize,
    dead: AtomicBool,
}

/// Up to `count` ingest attempts over [`SENDERS`] tasks until `until`; a sender stops at its
/// first connection error (the server died). Acked delivery ids go to `ledger.acked`.
async fn send_burst(
    http: Http,
    endpoint_id: String,
    count: usize,
    until: Instant,
    ledger: Arc<Ledger>,
) {
    ledger.next.store(0, Ordering::SeqCst);
    ledger.dead.store(false, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let (http, endpoint_id, ledger) = (http.clone(), endpoint_id.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let path = format!("/ingest/{endpoint_id}");
            loop {
                if ledger.dead.load(Ordering::SeqCst)
                    || Instant::now() >= until
                    || ledger.next.fetch_add(1, Ordering::SeqCst) >= count
                {
                    return;
                }
                let body = bytes::Bytes::from(unique_json("crash"));
                match http
                    .try_send(Method::POST, &path, body, &json_content_type())
                    .await
                {
                    Ok(response) if (200..300).contains(&response.status) => {
                        let id = response.json()["delivery_id"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        ledger.acked.lock().unwrap().push(id);
                    }
                    Ok(response) => ledger.unexpected.lock().unwrap().push(format!(
                        "HTTP {} {}",
                        response.status,
                        response.text()
                    )),
                    Err(_) => {
                        ledger.dead.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_deliveries_survive_kill_9() {
    let started = Instant::now();
    let mut s = Scenario::start().await;
    // Slow at first, so most acked work is still pending when the server dies.
    let slow = Arc::new(AtomicBool::new(true));
    let receiver = Receiver::start(Script::func({
        let slow = slow.clone();
        move |_, _| {
            if slow.load(Ordering::SeqCst) {
                Step::ok().delay(Duration::from_millis(100))
            } else {
                Step::ok()
            }
        }
    }))
    .await;
    let endpoint_id = str_field(
        &s.endpoint(&receiver.url("/in"), json!({"max_in_flight": 8}))
            .await,
        "id",
    );
    let ledger = Arc::new(Ledger::default());

    // Phase 1: senders running; kill -9 mid-stream.
    let burst = tokio::spawn(send_burst(
        s.server.http(),
        endpoint_id.clone(),
        PHASE1_SENDS,
        Instant::now() + PHASE1_TIME_MAX * 2,
        ledger.clone(),
    ));
    let kill_at = Instant::now() + PHASE1_TIME_MAX;
    while ledger.acked.lock().unwrap().len() < KILL_AT_ACKS
        && !burst.is_finished()
        && Instant::now() < kill_at
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        !ledger.acked.lock().unwrap().is_empty(),
        "phase 1: no ingest acked within {PHASE1_TIME_MAX:?}"
    );
    s.server.kill9();
    burst.await.expect("phase 1 senders");
    let acked_before_crash = ledger.acked.lock().unwrap().len();
    let forwarded_before_crash = receiver.count();

    // Phase 2: same data dir and port; more traffic, then let the receiver go fast.
    s.server.restart().await;
    send_burst(
        s.server.http(),
        endpoint_id.clone(),
        PHASE2_SENDS,
        Instant::now() + PHASE2_TIME_MAX,
        ledger.clone(),
    )
    .await;
    slow.store(false, Ordering::SeqCst);

    let acked: BTreeSet<String> = ledger.acked.lock().unwrap().iter().cloned().collect();
    let unexpected = ledger.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "ingest answered non-2xx: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert_eq!(
        acked.len(),
        ledger.acked.lock().unwrap().len(),
        "ingest returned a delivery id twice"
    );

    let deadline = Instant::now() + DRAIN_DEADLINE;
    let (seen, missing) = loop {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for request in receiver.requests() {
            let id = request
                .header("x-hookrelay-delivery-id")
                .unwrap_or("")
                .to_string();
            *seen.entry(id).or_default() += 1;
        }
        let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            break (seen, missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = seen.values().filter(|n| **n > 1).count();
    let unacked_delivered = seen.keys().filter(|id| !acked.contains(*id)).count();
    eprintln!(
        "crash test: {} acked ({acked_before_crash} before the kill, {forwarded_before_crash} forwarded by then), \
         {} distinct delivered, {duplicates} delivered more than once, {unacked_delivered} delivered but never acked \
         (in flight at the kill), {:?} total",
        acked.len(),
        seen.len(),
        started.elapsed()
    );
    assert!(
        acked_before_crash > forwarded_before_crash,
        "the crash should leave acked work pending (acked {acked_before_crash}, forwarded {forwarded_before_crash})"
    );
    assert!(
        missing.is_empty(),
        "{} of {} acked deliveries never reached the receiver within {DRAIN_DEADLINE:?} of the restart, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

/// SIGTERM exits 0; deliveries waiting behind a paused endpoint are still there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_pending_work() {
    const SENT: usize = 20;
    let mut s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");
    s.api.pause(&s.admin_key, &endpoint_id).await;
    let mut ids = BTreeSet::new();
    for _ in 0..SENT {
        ids.insert(assert_accepted(
            &s.api.ingest_json(&endpoint_id, &unique_json("term")).await,
        ));
    }
    let status = s.server.sigterm().await;
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}\n{}",
        s.server.log_tail()
    );

    s.server.restart().await;
    assert_eq!(
        s.api.get_endpoint(&s.admin_key, &endpoint_id).await["paused"],
        true,
        "pause survives a restart"
    );
    s.api.resume(&s.admin_key, &endpoint_id).await;
    let got = receiver.wait_for(SENT, DELIVERY_DEADLINE).await;
    let forwarded: BTreeSet<String> = got
        .iter()
        .map(|r| {
            r.header("x-hookrelay-delivery-id")
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(forwarded, ids);
}
