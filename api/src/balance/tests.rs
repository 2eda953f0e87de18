use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::mpsc as std_mpsc;
use std::thread;

use http_body_util::BodyExt as _;
use hyper::Response;
use hyper::service::service_fn;

use super::*;

/// The default policy (`server.balance_*`).
fn policy() -> Policy {
    Policy::from_percent(true, 50, 15)
}

#[test]
fn a_busy_shard_picks_the_least_busy_one_by_a_clear_margin() {
    let p = policy();
    assert_eq!((p.busy_min, p.margin), (500, 150));
    assert_eq!(pick_target(&p, 0, &[900, 300]), Some(1));
    assert_eq!(pick_target(&p, 1, &[300, 900]), Some(0));
    assert_eq!(pick_target(&p, 0, &[900, 700, 400]), Some(2));
    // Too close to the least busy shard, or not busy enough to matter.
    assert_eq!(pick_target(&p, 0, &[800, 651]), None);
    assert_eq!(pick_target(&p, 0, &[800, 650]), Some(1));
    assert_eq!(pick_target(&p, 0, &[499, 0]), None);
    // One shard, or a shard that does not exist.
    assert_eq!(pick_target(&p, 0, &[1000]), None);
    assert_eq!(pick_target(&p, 2, &[1000, 0]), None);
    // Off.
    let off = Policy::from_percent(false, 50, 15);
    assert_eq!(pick_target(&off, 0, &[900, 300]), None);
    // No threshold and no margin: any shard at least as busy as another hands over.
    let eager = Policy::from_percent(true, 0, 0);
    assert_eq!(pick_target(&eager, 0, &[0, 0]), Some(1));
    assert_eq!(pick_target(&eager, 1, &[0, 1]), Some(0));
    assert_eq!(pick_target(&eager, 0, &[0, 1]), None);
}

#[test]
fn moves_stop_when_the_budget_is_spent_or_balancing_is_off() {
    let shared = Balancer::new(2, policy());
    shared.busy[0].store(900, Ordering::Relaxed);
    let shard = ShardBalance::new(0, shared.clone());
    // No sample taken yet: no budget.
    assert_eq!(shard.want_move(), None);
    shard.budget.set(2);
    assert_eq!(shard.want_move(), Some(1));
    assert_eq!(shard.want_move(), Some(1));
    assert_eq!(shard.want_move(), None);

    let off = Balancer::new(2, Policy::from_percent(false, 50, 15));
    off.busy[0].store(900, Ordering::Relaxed);
    let shard = ShardBalance::new(0, off);
    shard.budget.set(2);
    assert_eq!(shard.want_move(), None);
}

#[test]
fn the_exposition_has_each_shards_figures() {
    let shared = Balancer::new(2, policy());
    shared.busy[1].store(625, Ordering::Relaxed);
    shared.moved_out[0].store(7, Ordering::Relaxed);
    let mut out = String::new();
    shared.render_prometheus(&mut out);
    assert!(
        out.contains("hookrelay_shard_busy_ratio{shard=\"1\"} 0.625\n"),
        "{out}"
    );
    assert!(
        out.contains("hookrelay_connections_moved_total{shard=\"0\"} 7\n"),
        "{out}"
    );
    assert!(
        out.contains("hookrelay_connections_moved_total{shard=\"1\"} 0\n"),
        "{out}"
    );
}

#[test]
fn late_ticks_land_in_the_lag_histogram() {
    let shared = Balancer::new(2, policy());
    shared.record_lag(Duration::from_micros(300));
    shared.record_lag(Duration::from_millis(3));
    shared.record_lag(Duration::from_millis(300));
    shared.record_lag(Duration::from_secs(5));
    let mut out = String::new();
    shared.render_prometheus(&mut out);
    for line in [
        "hookrelay_shard_lag_seconds_bucket{le=\"0.001\"} 1\n",
        "hookrelay_shard_lag_seconds_bucket{le=\"0.005\"} 2\n",
        "hookrelay_shard_lag_seconds_bucket{le=\"0.25\"} 2\n",
        "hookrelay_shard_lag_seconds_bucket{le=\"1\"} 3\n",
        "hookrelay_shard_lag_seconds_bucket{le=\"+Inf\"} 4\n",
        "hookrelay_shard_lag_seconds_count 4\n",
        "hookrelay_shard_lag_seconds_sum 5.3033\n",
    ] {
        assert!(out.contains(line), "no {line:?} in {out}");
    }
}

/// Which answers of a connection ask to move it.
#[derive(Clone, Copy, PartialEq)]
enum Asks {
    Never,
    First,
    Every,
}

/// Serves the connections it is handed, one at a time, on a thread of its own: every answer
/// names `name`; the answers `asks` names ask to move the connection to `move_to`.
fn shard_thread(
    name: &'static str,
    inbox: std_mpsc::Receiver<std::net::TcpStream>,
    asks: Asks,
    move_to: Option<std_mpsc::Sender<std::net::TcpStream>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        while let Ok(stream) = inbox.recv() {
            local.block_on(&rt, async {
                let stream = TcpStream::from_std(stream).unwrap();
                let signal = MoveSignal::new();
                let service = {
                    let (signal, first) = (signal.clone(), Cell::new(true));
                    service_fn(move |req: hyper::Request<Incoming>| {
                        signal.on_request();
                        let signal = signal.clone();
                        let moves = asks == Asks::Every || (asks == Asks::First && first.get());
                        first.set(false);
                        async move {
                            // As the ingest handler does: the whole body, then the answer.
                            req.into_body().collect().await.unwrap();
                            if moves {
                                signal.move_after_answer(1);
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        }
                    })
                };
                let moved = serve_movable(&http1::Builder::new(), stream, service, &signal)
                    .await
                    .unwrap();
                match (moved, &move_to) {
                    (Some((1, stream)), Some(tx)) => tx.send(stream.into_std().unwrap()).unwrap(),
                    (None, _) => {}
                    (other, _) => panic!("unexpected end: {:?}", other.map(|(to, _)| to)),
                }
            });
        }
    })
}

type Infallible = std::convert::Infallible;

/// A client connection and the server's end of it (non-blocking, for a runtime to take).
fn connected() -> (BufReader<std::net::TcpStream>, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    accepted.set_nonblocking(true).unwrap();
    (BufReader::new(client), accepted)
}

/// Shard A (asking to move as `asks` says) and shard B (which never moves), B being where A's
/// connections go; returns A's inbox and both threads, which end once A's inbox is dropped.
fn two_shards(
    asks: Asks,
) -> (
    std_mpsc::Sender<std::net::TcpStream>,
    thread::JoinHandle<()>,
    thread::JoinHandle<()>,
) {
    let (to_a, inbox_a) = std_mpsc::channel();
    let (to_b, inbox_b) = std_mpsc::channel();
    let a = shard_thread("A", inbox_a, asks, Some(to_b));
    let b = shard_thread("B", inbox_b, Asks::Never, None);
    (to_a, a, b)
}

/// Sends one keep-alive request on `client` and returns the answer's body.
fn request(client: &mut BufReader<std::net::TcpStream>, body: &str) -> String {
    let req = format!(
        "POST /ingest/ep HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.get_mut().write_all(req.as_bytes()).unwrap();
    answer(client)
}

#[test]
fn a_keep_alive_connection_moves_to_another_thread_between_two_requests() {
    let (mut client, accepted) = connected();
    let (to_a, a, b) = two_shards(Asks::Every);
    to_a.send(accepted).unwrap();

    // A asks to move after every answer. A move happens once A sees the socket empty after an
    // answer; a request sent quicker than that keeps the connection on A for one more answer.
    // On a loaded machine the client, woken by the answer, can send its next request before A's
    // thread runs again every time, so the client waits a little longer after each answer it
    // gets from A (1, 2, 3 ... ms) for A to reach that empty socket.
    // The same client socket goes on without a reconnect, and every request is answered.
    assert_eq!(request(&mut client, "one"), "A");
    let mut on_a = 1;
    loop {
        thread::sleep(Duration::from_millis(on_a));
        if request(&mut client, "next") != "A" {
            break;
        }
        on_a += 1;
        assert!(on_a < 100, "the connection never moved");
    }
    assert_eq!(request(&mut client, "after"), "B");
    assert_eq!(request(&mut client, "after"), "B");

    // B ends the connection when the client closes it.
    drop(client);
    drop(to_a);
    a.join().unwrap();
    b.join().unwrap();
}

/// Reads one answer's body.
fn answer(client: &mut BufReader<std::net::TcpStream>) -> String {
    let mut length = 0;
    loop {
        let mut line = String::new();
        assert!(
            client.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    client.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

#[test]
fn pipelined_requests_are_all_answered_before_the_move() {
    let (mut client, accepted) = connected();
    let (to_a, a, b) = two_shards(Asks::First);
    // Two requests in one write, before A reads anything: A asks to move after the first
    // answer, but the second request is already read ahead, so A gives the move up and answers
    // both, and the connection stays.
    let one = "POST /ingest/ep HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n1";
    client
        .get_mut()
        .write_all(format!("{one}{one}").as_bytes())
        .unwrap();
    to_a.send(accepted).unwrap();
    assert_eq!(answer(&mut client), "A");
    assert_eq!(answer(&mut client), "A");
    assert_eq!(request(&mut client, "three"), "A");

    drop(client);
    drop(to_a);
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn the_sampler_sees_a_busy_thread_and_refills_the_budget() {
    let shared = Balancer::new(2, policy());
    let shard = ShardBalance::new(0, shared.clone());
    let _open: Vec<_> = (0..64).map(|_| shard.connection()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::task::spawn_local(shard.clone().sample());
        // Spin on this thread for 600 ms, letting the sampler run between slices.
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            let slice = Instant::now() + Duration::from_millis(5);
            while Instant::now() < slice {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
    });
    let busy = shared.busy[0].load(Ordering::Relaxed);
    // A spinning thread uses its whole core unless the machine takes it away now and then.
    assert!(busy >= 200, "busy {busy}‰");
    assert_eq!(shared.busy[1].load(Ordering::Relaxed), 0);
    // 64 connections: two moves an interval.
    assert_eq!(shard.budget.get(), 2);
}
