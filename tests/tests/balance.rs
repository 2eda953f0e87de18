//! `server.balance_connections` (config reference, off by default): a busy shard hands
//! keep-alive connections to a less busy one between two requests. With no threshold and no
//! margin, every shard hands
//! connections over all the time, so connections bounce between the shards while senders keep
//! sending on them: each sender must see one connection that never drops, and every request must
//! be answered and stored exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hookrelay_tests::api::str_field;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::raw::{Framing, SlowUpload, slow_upload};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::ServerOptions;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Senders, each on one keep-alive connection of its own.
const SENDERS: usize = 8;
/// How long they send.
const SENDING: Duration = Duration::from_millis(2500);

/// Sends ingest requests on one connection until `until`; returns the delivery ids answered.
/// Panics if the connection drops or a request is not accepted.
async fn send_on_one_connection(
    addr: std::net::SocketAddr,
    endpoint_id: String,
    sender: usize,
    until: Instant,
) -> Vec<String> {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
    let mut ids = Vec::new();
    while Instant::now() < until {
        let n = ids.len();
        let body = json!({"sender": sender, "n": n}).to_string();
        let request = format!(
            "POST /ingest/{endpoint_id} HTTP/1.1\r\nhost: hookrelay\r\n\
             content-type: application/json\r\nidempotency-key: s{sender}-{n}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write");
        let (status, answer) = read_response(&mut conn)
            .await
            .unwrap_or_else(|| panic!("sender {sender}: connection closed after {n} answers"));
        assert_eq!(status, 202, "sender {sender}, request {n}: {answer}");
        ids.push(str_field(&answer, "delivery_id"));
    }
    ids
}

/// Reads one HTTP/1.1 response: its status and JSON body; `None` at end of stream.
async fn read_response(conn: &mut BufReader<TcpStream>) -> Option<(u16, Value)> {
    let mut status_line = String::new();
    if conn.read_line(&mut status_line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.ok()?;
    Some((status, serde_json::from_slice(&body).ok()?))
}

/// A 2-shard server with `env` set, one tenant, and one endpoint, paused (ingest only, nothing
/// to forward); returns the scenario and the endpoint's id.
async fn paused_endpoint(env: &[(&str, &str)]) -> (Scenario, String) {
    let mut opts = ServerOptions::default().shards(2);
    for (key, value) in env {
        opts = opts.env(key, value);
    }
    let s = Scenario::start_with(opts).await;
    let endpoint = s.endpoint("http://127.0.0.1:9/in", json!({})).await;
    let endpoint_id = str_field(&endpoint, "id");
    s.api.pause(&s.admin_key, &endpoint_id).await;
    (s, endpoint_id)
}

/// Thresholds that move connections all the time.
const EAGER: [(&str, &str); 2] = [
    ("HOOKRELAY_SERVER_BALANCE_BUSY_MIN_PERCENT", "0"),
    ("HOOKRELAY_SERVER_BALANCE_MARGIN_PERCENT", "0"),
];
/// Balancing on.
const ON: (&str, &str) = ("HOOKRELAY_SERVER_BALANCE_CONNECTIONS", "true");

/// The sum of a counter's samples over all its label sets in a Prometheus exposition.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_bounce_between_shards_and_nothing_is_lost() {
    let (s, endpoint_id) = paused_endpoint(&[ON, EAGER[0], EAGER[1]]).await;

    let until = Instant::now() + SENDING;
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            tokio::spawn(send_on_one_connection(
                s.server.addr(),
                endpoint_id.clone(),
                i,
                until,
            ))
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut answered = 0;
    for sender in senders {
        let got = sender.await.expect("sender");
        answered += got.len();
        ids.extend(got);
    }
    assert!(answered >= SENDERS, "every sender got answers: {answered}");
    assert_eq!(ids.len(), answered, "one delivery for every request");

    let metrics = s.server.http().get("/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let moved = counter_sum(&text, "hookrelay_connections_moved_total");
    assert!(
        moved >= 4.0,
        "connections moved {moved} times in {SENDING:?}:\n{text}"
    );
    let created = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "hookrelay_deliveries_created_total{{endpoint_id=\"{endpoint_id}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(created, Some(answered as f64), "{text}");
    eprintln!("{answered} requests on {SENDERS} connections; {moved} moves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_connection_moves() {
    // Thresholds that would move connections all the time, were balancing on.
    let (s, endpoint_id) = paused_endpoint(&EAGER).await;
    let until = Instant::now() + Duration::from_millis(800);
    let answered = send_on_one_connection(s.server.addr(), endpoint_id, 0, until)
        .await
        .len();
    let metrics = s.server.http().get("/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(answered > 0);
    assert_eq!(
        counter_sum(&text, "hookrelay_connections_moved_total"),
        0.0,
        "{text}"
    );
    // The busy figures are there with balancing off too.
    for shard in 0..2 {
        assert!(
            text.contains(&format!("hookrelay_shard_busy_ratio{{shard=\"{shard}\"}} ")),
            "{text}"
        );
    }
}

/// An error answer can leave a request's body unread (413 while the sender is still sending):
/// that is no boundary to move at, and the answer must still reach the sender whole, not as a
/// reset, with balancing as eager as it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_is_answered_whole_with_balancing_on() {
    let small_bodies = ("HOOKRELAY_INGEST_MAX_BODY_BYTES", "1024");
    let (s, endpoint_id) = paused_endpoint(&[small_bodies, ON, EAGER[0], EAGER[1]]).await;
    for framing in [Framing::ContentLength, Framing::Chunked] {
        // Its pauses leave the socket empty now and then, where a move could be tried.
        let upload = SlowUpload::json_ingest(&endpoint_id, 2 * 1000 * 1000, framing);
        let response = slow_upload(s.server.addr(), &upload)
            .await
            .unwrap_or_else(|e| panic!("{framing:?}: the client must read a 413, got: {e:#}"));
        assert_problem(&response.to_response(), 413, "payload_too_large");
    }
}
