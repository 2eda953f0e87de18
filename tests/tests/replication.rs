//! Replication (contract: "Replication", "Durability", "Errors"; issue #8): two real processes
//! on loopback. Catch-up of a replica that starts late, both ack modes with the peer down,
//! what a replica refuses, promotion (HTTP and CLI), and fencing of a former primary.
//!
//! Each test builds its own pair: A (first start as primary) and B (first start as replica),
//! each with its own replication `listen` address and the other's as `peer`. Waits are
//! deadlines on outcomes ([`REPLICATION_DEADLINE`], [`DELIVERY_DEADLINE`]), never speed checks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use hookrelay_tests::api::{Api, DELIVERY_DEADLINE, assert_accepted, endpoint_to, str_field};
use hookrelay_tests::http::Response;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::proxy::Proxy;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::replication::{
    Node, REPLICATION_DEADLINE, caught_up, check_status_shape, free_addr, metric_value,
    next_offsets, promote, promote_ok, status, wait_get_ok, wait_status,
};
use hookrelay_tests::server::{Server, TEST_ROOT_KEY, binary_path};
use serde_json::json;

/// A tenant and one endpoint (verification `none`) forwarding to `receiver`, created on
/// `primary`. Returns (api on the primary, admin key, endpoint id).
async fn tenant_and_endpoint(primary: &Server, receiver: &Receiver) -> (Api, String, String) {
    let api = primary.api();
    let (_, admin_key) = api.tenant("acme").await;
    let endpoint = api
        .create_endpoint(&admin_key, &endpoint_to(&receiver.url("/in"), json!({})))
        .await;
    (api, admin_key, str_field(&endpoint, "id"))
}

/// Waits until `node` (a replica) serves the endpoint: the metadata has been replicated.
async fn wait_endpoint_on(node: &Server, admin_key: &str, endpoint_id: &str) -> serde_json::Value {
    wait_get_ok(
        &node.http(),
        &format!("/v1/endpoints/{endpoint_id}"),
        admin_key,
        REPLICATION_DEADLINE,
    )
    .await
}

/// `n` ingests, each of which must be accepted; returns the delivery ids.
async fn ingest_accepted(api: &Api, endpoint_id: &str, n: usize, label: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(assert_accepted(
            &api.ingest_json(endpoint_id, &unique_json(label)).await,
        ));
    }
    ids
}

/// One ingest on `node`, whatever it answers.
async fn ingest_on(node: &Server, endpoint_id: &str) -> Response {
    node.api()
        .ingest_json(endpoint_id, &unique_json("repl"))
        .await
}

/// Waits until the receiver has seen every id in `ids` (by `X-HookRelay-Delivery-Id`); panics
/// with the missing ones.
async fn wait_delivered(receiver: &Receiver, ids: &[String], what: &str) {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let seen: BTreeSet<String> = receiver
            .requests()
            .iter()
            .filter_map(|r| r.header("x-hookrelay-delivery-id").map(str::to_string))
            .collect();
        let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(*id)).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: {} of {} deliveries never reached the receiver within {DELIVERY_DEADLINE:?}, e.g. {:?}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Of `ids`, those `GET /v1/deliveries/{id}` on `node` does not answer 200 for, with the
/// answer.
async fn not_held(node: &Server, admin_key: &str, ids: &[String]) -> Vec<String> {
    let http = node.http();
    let mut missing = Vec::new();
    for id in ids {
        let r = http
            .get(&format!("/v1/deliveries/{id}"), Some(admin_key))
            .await;
        if r.status != 200 {
            missing.push(format!("{id}: HTTP {} {}", r.status, r.text()));
        }
    }
    missing
}

/// Of `ids`, those `GET /v1/deliveries/{id}` on `node` answers neither 200 nor 503 for, with
/// the answer.
async fn not_200_or_503(node: &Server, admin_key: &str, ids: &[String]) -> Vec<String> {
    not_held(node, admin_key, ids)
        .await
        .into_iter()
        .filter(|answer| !answer.contains(": HTTP 503 "))
        .collect()
}

/// `GET /readyz` on `node`.
async fn readyz(node: &Server) -> Response {
    node.http().get("/readyz", None).await
}

/// Waits for `/readyz` = 200 on a just-promoted node: promotion answers before the shards are
/// rebuilt from the log, and until then ingest answers 503 `unavailable` ("shard is
/// recovering", with `Retry-After`), as after any restart.
async fn wait_ready_after_promotion(node: &Server) {
    wait_ready(node, "the promoted node").await;
}

/// Polls `/readyz` on `node` until 200; panics after [`REPLICATION_DEADLINE`] with the last
/// answer.
async fn wait_ready(node: &Server, what: &str) {
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    loop {
        let response = readyz(node).await;
        if response.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz not 200 within {REPLICATION_DEADLINE:?}:\n{response:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pair's addresses: A's and B's replication `listen`.
fn addrs() -> (SocketAddr, SocketAddr) {
    (free_addr(), free_addr())
}

/// (a) A replica that starts after the primary has data catches up from scratch (lag 0, same
/// shard ends), and once promoted holds every delivery A ACKed and delivers the pending ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replica_catches_up_and_holds_everything_after_promotion() {
    const SENT: usize = 150;
    let (la, lb) = addrs();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let mut a = Server::start(Node::primary(la, lb).options()).await;
    let (api, admin_key, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;
    // Paused: the deliveries stay pending, so B's promotion must rebuild and deliver them.
    api.pause(&admin_key, &endpoint_id).await;
    let ids = ingest_accepted(&api, &endpoint_id, SENT, "catchup").await;
    let before = status(&a.http()).await;
    assert_eq!(before["role"], "primary", "A before B exists:\n{before:#}");
    assert_eq!(
        before["shards"].as_array().map(Vec::len),
        Some(2),
        "{before:#}"
    );
    assert!(
        before["shards"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["connected"] == false)),
        "no shard can be connected while B is not running:\n{before:#}"
    );

    let b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let a_status = wait_status(
        &a.http(),
        "A's lag to the late replica B reaches 0",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;
    let b_status = status(&b.http()).await;
    assert_eq!(b_status["role"], "replica", "B:\n{b_status:#}");
    assert_eq!(
        next_offsets(&b_status),
        next_offsets(&a_status),
        "B's copy must end where A's log ends (A idle)\nA:\n{a_status:#}\nB:\n{b_status:#}"
    );
    let endpoint = wait_endpoint_on(&b, &admin_key, &endpoint_id).await;
    assert_eq!(
        endpoint["paused"], true,
        "the pause is replicated:\n{endpoint:#}"
    );
    // A replica holds these deliveries: it may serve them or refuse with 503 `unavailable`
    // (not primary), never say they do not exist.
    let wrong = not_200_or_503(&b, &admin_key, &ids).await;
    assert!(
        wrong.is_empty(),
        "{} of {SENT} deliveries the replica B holds answered other than 200/503 on B: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );

    a.kill9();
    let epoch_before = b_status["epoch"].as_u64().unwrap_or(0);
    let epoch = promote_ok(&b.http()).await;
    assert!(
        epoch > epoch_before,
        "promotion must raise the epoch ({epoch_before} → {epoch})"
    );
    // While the promoted node rebuilds its shards it may answer 503, never "no such delivery".
    let wrong = not_200_or_503(&b, &admin_key, &ids).await;
    assert!(
        wrong.is_empty(),
        "right after promotion, {} of {SENT} deliveries B holds answered other than 200/503: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    wait_ready_after_promotion(&b).await;
    let missing = not_held(&b, &admin_key, &ids).await;
    assert!(
        missing.is_empty(),
        "{} of {SENT} deliveries ACKed by A are not on the promoted B: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    b.api().resume(&admin_key, &endpoint_id).await;
    wait_delivered(&receiver, &ids, "after B's promotion and resume").await;
}

/// (b) ack = peer with the peer down and no degrade: ingest answers 503 `unavailable` after
/// about `peer_timeout_ms`, `/readyz` is 503; once the peer is up, ingest is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_peer_without_the_peer_refuses_ingest() {
    const PEER_TIMEOUT_MS: u64 = 500;
    let (la, lb) = addrs();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let a = Server::start_healthy(
        Node::primary(la, lb)
            .ack("peer")
            .peer_timeout_ms(PEER_TIMEOUT_MS)
            .options(),
    )
    .await;
    let (api, _, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;

    let sent_at = Instant::now();
    let response = api.ingest_json(&endpoint_id, &unique_json("nopeer")).await;
    let took = sent_at.elapsed();
    assert_problem(&response, 503, "unavailable");
    eprintln!(
        "ack = peer, peer down: 503 after {} ms (peer_timeout_ms = {PEER_TIMEOUT_MS})",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(10),
        "ingest should give up after about peer_timeout_ms = {PEER_TIMEOUT_MS}, took {took:?}"
    );
    let ready = readyz(&a).await;
    assert_eq!(
        ready.status, 503,
        "/readyz with ack = peer and no peer:\n{ready:?}"
    );
    let v = status(&a.http()).await;
    assert_eq!(v["ack"], "peer", "{v:#}");
    assert_eq!(
        v["degraded"], false,
        "no degrade_after_ms, no degrading:\n{v:#}"
    );

    // The peer arrives: ingest is accepted again.
    let _b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    loop {
        let response = api
            .ingest_json(&endpoint_id, &unique_json("peerback"))
            .await;
        if response.status == 202 {
            break;
        }
        assert_problem(&response, 503, "unavailable");
        assert!(
            Instant::now() < deadline,
            "ingest still refused {REPLICATION_DEADLINE:?} after B started:\n{response:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every shard's stream must be back (the 202 above needed only one shard's).
    wait_ready(&a, "A with ack = peer once its peer is back").await;
}

/// (c) ack = peer with `degrade_after_ms` and the peer down: after that time ingest answers 202
/// (local acks), and the node says it is degraded (`/v1/admin/replication`, `/metrics`); once
/// the peer is back and level, it is no longer degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_peer_degrades_to_local_after_degrade_after_ms() {
    let (la, lb) = addrs();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let a = Server::start_healthy(
        Node::primary(la, lb)
            .ack("peer")
            .degrade_after_ms(300)
            .peer_timeout_ms(500)
            .options(),
    )
    .await;
    let (api, _, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;

    let deadline = Instant::now() + REPLICATION_DEADLINE;
    let mut refused = 0;
    let id = loop {
        let response = api.ingest_json(&endpoint_id, &unique_json("degrade")).await;
        if response.status == 202 {
            break assert_accepted(&response);
        }
        assert_problem(&response, 503, "unavailable");
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "with degrade_after_ms = 300 ingest still refused after {REPLICATION_DEADLINE:?}:\n{response:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("degraded after {refused} refused ingests");
    let v = status(&a.http()).await;
    assert_eq!(
        v["degraded"], true,
        "ingest is acked locally, so degraded:\n{v:#}"
    );
    assert_eq!(v["ack"], "peer", "{v:#}");
    let metrics = a.http().get("/metrics", None).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert_eq!(
        metric_value(&metrics.text(), "hookrelay_replication_degraded"),
        Some(1.0),
        "/metrics must say degraded:\n{}",
        metrics.text()
    );
    wait_delivered(&receiver, std::slice::from_ref(&id), "degraded ingest").await;

    // The peer arrives: catch-up, then peer acks again.
    let _b = Server::start_healthy(Node::replica(lb, la).options()).await;
    wait_status(
        &a.http(),
        "A leaves degraded mode once B is level",
        REPLICATION_DEADLINE,
        |v| v["degraded"] == false && caught_up(v),
    )
    .await;
}

/// (d) A replica refuses ingest (503 `unavailable`), is not ready, refuses management writes
/// and serves reads; promotion makes it take ingest; promoting a primary is a 409 `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refuses_ingest_until_promoted() {
    let (la, lb) = addrs();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let mut a = Server::start(Node::primary(la, lb).options()).await;
    let b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let (_, admin_key, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;
    wait_endpoint_on(&b, &admin_key, &endpoint_id).await;

    // The replication status is root-only.
    let http_b = b.http();
    let anonymous = http_b.get("/v1/admin/replication", None).await;
    assert_problem(&anonymous, 401, "unauthorized");
    let tenant_admin = http_b.get("/v1/admin/replication", Some(&admin_key)).await;
    assert_problem(&tenant_admin, 403, "forbidden");
    let b_status = status(&http_b).await;
    assert_eq!(b_status["role"], "replica", "{b_status:#}");
    assert_eq!(b_status["listen"], lb.to_string(), "{b_status:#}");
    let a_status = status(&a.http()).await;
    assert_eq!(a_status["role"], "primary", "{a_status:#}");
    assert_eq!(a_status["peer"], lb.to_string(), "{a_status:#}");

    // Promoting a primary is a conflict.
    assert_problem(&promote(&a.http()).await, 409, "conflict");

    // What a replica refuses and what it serves.
    assert_problem(&ingest_on(&b, &endpoint_id).await, 503, "unavailable");
    let ready = readyz(&b).await;
    assert_eq!(ready.status, 503, "/readyz on a replica:\n{ready:?}");
    assert!(
        ready.text().to_ascii_lowercase().contains("replica"),
        "/readyz on a replica should say why (\"replica\"):\n{ready:?}"
    );
    let write = http_b
        .post(
            "/v1/tenants",
            &json!({"name": "on-replica", "plan": "free"}),
            Some(TEST_ROOT_KEY),
        )
        .await;
    assert_problem(&write, 503, "unavailable");
    let read = http_b
        .get(&format!("/v1/endpoints/{endpoint_id}"), Some(&admin_key))
        .await;
    assert_eq!(
        read.status, 200,
        "a replica serves management reads:\n{read:?}"
    );

    // The primary dies; B is promoted and takes ingest; promoting it again is a conflict.
    a.kill9();
    let epoch_before = b_status["epoch"].as_u64().unwrap_or(0);
    let epoch = promote_ok(&http_b).await;
    assert!(epoch > epoch_before, "epoch {epoch_before} → {epoch}");
    wait_ready_after_promotion(&b).await;
    let id = assert_accepted(&ingest_on(&b, &endpoint_id).await);
    assert_problem(&promote(&http_b).await, 409, "conflict");
    let after = status(&http_b).await;
    assert_eq!(after["role"], "primary", "{after:#}");
    assert_eq!(after["epoch"].as_u64(), Some(epoch), "{after:#}");
    wait_delivered(&receiver, &[id], "ingest on the promoted B").await;
}

/// (e) Fencing after a failover: A ACKs some deliveries B never got (the link is cut, ack =
/// local), dies; B is promoted and ACKs more; A restarted with its original configuration turns
/// replica of B (ingest 503), its extra suffix is dropped, B's lag reaches 0 and A's copy ends
/// where B's log does; everything B ACKed is delivered, and A, promoted in turn, holds it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn former_primary_rejoins_as_replica_after_failover() {
    let (la, lb) = addrs();
    let proxy = Proxy::start(lb).await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    // A reaches B only through the proxy; B (once primary) reaches A directly.
    let mut a = Server::start(Node::primary(la, proxy.addr()).options()).await;
    let mut b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let (api_a, admin_key, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;
    wait_endpoint_on(&b, &admin_key, &endpoint_id).await;

    let replicated = ingest_accepted(&api_a, &endpoint_id, 20, "before-cut").await;
    wait_status(
        &a.http(),
        "B has A's first deliveries",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;

    // Only A holds these.
    proxy.cut();
    wait_status(
        &a.http(),
        "A notices the cut link",
        REPLICATION_DEADLINE,
        |v| {
            v["shards"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["connected"] == false))
        },
    )
    .await;
    let only_on_a = ingest_accepted(&api_a, &endpoint_id, 10, "only-on-a").await;
    a.kill9();

    let epoch = promote_ok(&b.http()).await;
    wait_ready_after_promotion(&b).await;
    let api_b = b.api();
    let on_b = ingest_accepted(&api_b, &endpoint_id, 20, "on-b").await;

    // A restarts with its original configuration (primary, peer = the cut proxy): B reaches it
    // on its listen address with a higher epoch.
    a.restart_healthy().await;
    let a_status = wait_status(
        &a.http(),
        "the former primary A turns replica",
        REPLICATION_DEADLINE,
        |v| v["role"] == "replica",
    )
    .await;
    check_status_shape(&a_status);
    assert_problem(&ingest_on(&a, &endpoint_id).await, 503, "unavailable");
    let ready = readyz(&a).await;
    assert_eq!(ready.status, 503, "/readyz on the fenced A:\n{ready:?}");
    let b_status = wait_status(
        &b.http(),
        "B's lag to the rejoined A reaches 0",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;
    assert_eq!(b_status["epoch"].as_u64(), Some(epoch), "{b_status:#}");
    let a_status = status(&a.http()).await;
    assert_eq!(
        next_offsets(&a_status),
        next_offsets(&b_status),
        "A's copy must end where B's log ends (its own suffix truncated)\nA:\n{a_status:#}\nB:\n{b_status:#}"
    );

    let mut b_acked = replicated.clone();
    b_acked.extend(on_b.iter().cloned());
    wait_delivered(&receiver, &b_acked, "deliveries B holds or ACKed").await;
    // A's copy is B's: promoted in turn, A holds everything B ACKed.
    b.kill9();
    let epoch_a = promote_ok(&a.http()).await;
    assert!(epoch_a > epoch, "epoch {epoch} → {epoch_a}");
    wait_ready_after_promotion(&a).await;
    let missing = not_held(&a, &admin_key, &b_acked).await;
    assert!(
        missing.is_empty(),
        "A's copy lacks {} deliveries B held: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Not a promise (ack = local), just what happened to A's own suffix.
    let dropped = not_held(&a, &admin_key, &only_on_a).await.len();
    eprintln!(
        "fencing: {dropped} of {} deliveries ACKed only by A (ack = local, link cut) are gone from A's copy",
        only_on_a.len()
    );
    drop(proxy);
}

/// Fencing of a live primary: promoting B while A still runs makes A a replica (the new
/// primary reaches it with a higher epoch); A then refuses ingest and B takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_primary_is_fenced_when_the_replica_is_promoted() {
    let (la, lb) = addrs();
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let a = Server::start(Node::primary(la, lb).options()).await;
    let b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let (api_a, admin_key, endpoint_id) = tenant_and_endpoint(&a, &receiver).await;
    wait_endpoint_on(&b, &admin_key, &endpoint_id).await;
    let before = ingest_accepted(&api_a, &endpoint_id, 5, "before-switch").await;
    wait_status(
        &a.http(),
        "B has A's deliveries",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;

    let epoch = promote_ok(&b.http()).await;
    let a_status = wait_status(
        &a.http(),
        "the live former primary A turns replica",
        REPLICATION_DEADLINE,
        |v| v["role"] == "replica",
    )
    .await;
    assert_eq!(a_status["epoch"].as_u64(), Some(epoch), "{a_status:#}");
    assert_problem(&ingest_on(&a, &endpoint_id).await, 503, "unavailable");
    wait_ready_after_promotion(&b).await;
    let after = ingest_accepted(&b.api(), &endpoint_id, 5, "after-switch").await;
    wait_status(
        &b.http(),
        "B's lag to A reaches 0",
        REPLICATION_DEADLINE,
        caught_up,
    )
    .await;
    let mut all = before;
    all.extend(after);
    wait_delivered(&receiver, &all, "deliveries across the switch-over").await;
}

/// Runs `hookrelay <args>` with `env` (and no other HOOKRELAY_* variable); returns the exit
/// status, stdout and stderr.
async fn run_cli(args: Vec<String>, env: Vec<(String, String)>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(binary_path());
        cmd.args(&args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HOOKRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running hookrelay {args:?}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the CLI task")
}

/// (f) `hookrelay promote --url` promotes a replica (operator key from the environment or
/// `--root-key`), prints the JSON and exits 0; promoting a primary fails with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_cli() {
    let (la, lb) = addrs();
    let b = Server::start_healthy(Node::replica(lb, la).options()).await;
    let url = format!("http://127.0.0.1:{}", b.port());
    let before = status(&b.http()).await;
    assert_eq!(before["role"], "replica", "{before:#}");

    let (code, stdout, stderr) = run_cli(
        vec!["promote".into(), "--url".into(), url.clone()],
        vec![("HOOKRELAY_ROOT_KEY".into(), TEST_ROOT_KEY.into())],
    )
    .await;
    assert_eq!(
        code, 0,
        "hookrelay promote --url {url} should exit 0\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("hookrelay promote should print the JSON answer ({e}):\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert_eq!(printed["role"], "primary", "{printed:#}");
    let epoch = printed["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("printed answer without an integer epoch: {printed:#}"));
    assert!(
        epoch > before["epoch"].as_u64().unwrap_or(0),
        "epoch {} → {epoch}",
        before["epoch"]
    );
    let after = status(&b.http()).await;
    assert_eq!(after["role"], "primary", "{after:#}");
    assert_eq!(after["epoch"].as_u64(), Some(epoch), "{after:#}");

    // Again, with --root-key: now a primary, so the server answers 409 and the CLI fails.
    let (code, stdout, stderr) = run_cli(
        vec![
            "promote".into(),
            "--url".into(),
            url.clone(),
            "--root-key".into(),
            TEST_ROOT_KEY.into(),
        ],
        Vec::new(),
    )
    .await;
    assert_ne!(
        code, 0,
        "promoting a primary must fail (409 conflict)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    wait_ready_after_promotion(&b).await;
}
