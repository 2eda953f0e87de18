//! The DLQ on S3 (contract: "DLQ and replay", `dlq.backend = "s3"`) against a real
//! S3-compatible server, s3s-fs (`scripts/s3-server`): failed and exhausted deliveries land as
//! objects with the contract's key and JSON, PUTs carry the SSE-KMS headers when configured, an
//! outage delays shipping and loses nothing (across a HookRelay restart too), and replays read
//! the objects back — by range, exactly once, across a restart, and by delivery id once the
//! delivery is no longer in the local log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hookrelay_tests::api::{assert_accepted, fast_retry, json_header, parse_time, str_field};
use hookrelay_tests::http::{Http, headers};
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::s3::{RecordingProxy, S3Server};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::{Server, ServerOptions};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BUCKET: &str = "hookrelay-dlq";
const PREFIX: &str = "dlq/";
const KMS_KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
/// How long shipping (or a replay) may take once the store is reachable.
const SHIP_DEADLINE: Duration = Duration::from_secs(60);

const FIELDS: [&str; 9] = [
    "delivery_id",
    "tenant_id",
    "endpoint_id",
    "final_status",
    "headers",
    "body_base64",
    "attempt_history",
    "first_seen_at",
    "exhausted_at",
];

/// A server whose DLQ is bucket [`BUCKET`] under [`PREFIX`] at `s3_url`, plus `extra` env.
fn options(s3_url: &str, extra: &[(&str, &str)]) -> ServerOptions {
    let mut opts = ServerOptions::default();
    for (k, v) in S3Server::hookrelay_env(s3_url, BUCKET, PREFIX) {
        opts = opts.env(&k, &v);
    }
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    opts
}

/// The contract's key of a DLQ object, from its JSON, with the store prefix.
fn key_of(object: &Value) -> String {
    let at = parse_time(&object["exhausted_at"], "exhausted_at").to_offset(time::UtcOffset::UTC);
    format!(
        "{PREFIX}{}/{}/{:04}/{:02}/{:02}/{}.json",
        str_field(object, "tenant_id"),
        str_field(object, "endpoint_id"),
        at.year(),
        u8::from(at.month()),
        at.day(),
        str_field(object, "delivery_id")
    )
}

/// Waits until the bucket holds at least `count` objects; returns key → JSON.
async fn wait_objects(s3: &S3Server, count: usize) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + SHIP_DEADLINE;
    loop {
        let objects = s3.objects(BUCKET);
        if objects.len() >= count {
            return objects
                .into_iter()
                .map(|(k, bytes)| {
                    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "object {k} is not JSON ({e}): {}",
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    (k, v)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} objects in the bucket within {SHIP_DEADLINE:?}, found {:?}",
            objects.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of an unlabelled series in `GET /metrics`.
async fn metric(http: &Http, name: &str) -> f64 {
    let r = http.get("/metrics", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Polls `/metrics` until series `name` satisfies `ok`; returns its value.
async fn wait_metric(http: &Http, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + SHIP_DEADLINE;
    loop {
        let v = metric(http, name).await;
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, expected {what} within {SHIP_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An endpoint of the scenario's tenant forwarding to `url`, one attempt per delivery.
async fn endpoint(s: &Scenario, url: &str, max_attempts: u32) -> String {
    str_field(
        &s.endpoint(url, json!({"retry": fast_retry(max_attempts)}))
            .await,
        "id",
    )
}

async fn repoint(s: &Scenario, endpoint_id: &str, url: &str) {
    let r = s
        .server
        .http()
        .patch(
            &format!("/v1/endpoints/{endpoint_id}"),
            &json!({"destination_url": url}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// Ingests `n` unique bodies to `endpoint_id`; returns id → body.
async fn ingest(s: &Scenario, endpoint_id: &str, n: usize, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let mut sent = BTreeMap::new();
    for i in 0..n {
        let body = unique_json(&format!("{tag}.{i}"));
        let id = assert_accepted(&s.api.ingest_json(endpoint_id, &body).await);
        sent.insert(id, body);
    }
    sent
}

async fn wait_all_final(s: &Scenario, ids: impl IntoIterator<Item = &String>, status: &str) {
    for id in ids {
        let d = s.api.wait_final(&s.admin_key, id).await;
        assert_eq!(d["status"], status, "{d:#}");
    }
}

/// Creates a replay job with `body`; returns its id.
async fn replay(s: &Scenario, body: &Value) -> String {
    let r = s
        .server
        .http()
        .post("/v1/replays", body, Some(&s.admin_key))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    str_field(&r.json(), "id")
}

/// Waits for job `id` to be `completed` with `succeeded` deliveries; returns the job.
async fn wait_replayed(s: &Scenario, id: &str, succeeded: u64) -> Value {
    let deadline = Instant::now() + SHIP_DEADLINE;
    loop {
        let r = s
            .server
            .http()
            .get(&format!("/v1/replays/{id}"), Some(&s.admin_key))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let job = r.json();
        if job["status"] == "completed" && job["counts"]["succeeded"].as_u64() == Some(succeeded) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "replay {id} did not complete with {succeeded} successes: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn range(from: OffsetDateTime, to: OffsetDateTime) -> Value {
    json!({"from": from.format(&Rfc3339).expect("format"), "to": to.format(&Rfc3339).expect("format")})
}

/// Original delivery id → how many replayed deliveries of it the receiver got.
fn replays_by_original(ok: &Receiver) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in ok.requests() {
        let original = r
            .header("x-hookrelay-replay-of")
            .expect("a replay names its original")
            .to_owned();
        *out.entry(original).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_exhausted_land_in_s3_with_the_contract_key_json_and_sse_headers() {
    let s3 = S3Server::start(BUCKET).await;
    let proxy = RecordingProxy::start(s3.addr()).await;
    let s = Scenario::start_with(options(
        &proxy.url(),
        &[("HOOKRELAY_DLQ_SSE_KMS_KEY_ID", KMS_KEY)],
    ))
    .await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let broken = Receiver::start(Script::always(Step::status(500))).await;
    let fine = Receiver::start(Script::always(Step::ok())).await;
    let failed_ep = endpoint(&s, &rejecting.url("/in"), 4).await;
    let exhausted_ep = endpoint(&s, &broken.url("/in"), 2).await;
    let success_ep = endpoint(&s, &fine.url("/in"), 4).await;

    let sent_headers = headers(&[("Content-Type", "application/json"), ("X-Dlq-Test", "kept")]);
    let mut cases = Vec::new();
    for (ep, status, attempts) in [(&failed_ep, "failed", 1), (&exhausted_ep, "exhausted", 2)] {
        let body = unique_json(&format!("s3.{status}"));
        let id = assert_accepted(&s.api.ingest(ep, &body, &sent_headers).await);
        cases.push((ep.clone(), id, body, status, attempts));
    }
    let success_id = assert_accepted(
        &s.api
            .ingest(&success_ep, &unique_json("s3.ok"), &sent_headers)
            .await,
    );
    for (_, id, _, status, _) in &cases {
        let d = s.api.wait_final(&s.admin_key, id).await;
        assert_eq!(d["status"], *status, "{d:#}");
    }
    let d = s.api.wait_final(&s.admin_key, &success_id).await;
    assert_eq!(d["status"], "success");

    let objects = wait_objects(&s3, 2).await;
    let http = s.server.http();
    wait_metric(&http, "hookrelay_dlq_shipped_total", "2", |v| v == 2.0).await;
    assert_eq!(metric(&http, "hookrelay_dlq_backlog").await, 0.0);
    assert_eq!(
        objects.len(),
        2,
        "only the failures are dead-lettered: {:?}",
        objects.keys()
    );
    for (ep, id, body, status, attempts) in &cases {
        let (key, object) = objects
            .iter()
            .find(|(_, o)| o["delivery_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no object for {id}: {:?}", objects.keys()));
        assert_eq!(key, &key_of(object), "the contract's key under the prefix");
        let fields: BTreeSet<&str> = object
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, FIELDS.into_iter().collect(), "{object:#}");
        assert_eq!(object["tenant_id"], s.tenant_id.as_str());
        assert_eq!(object["endpoint_id"], ep.as_str());
        assert_eq!(object["final_status"], *status);
        assert_eq!(
            json_header(&object["headers"], "x-dlq-test").as_deref(),
            Some("kept"),
            "{object:#}"
        );
        let stored = B64
            .decode(str_field(object, "body_base64"))
            .expect("base64");
        assert_eq!(&stored, body, "the original bytes");
        assert_eq!(
            object["attempt_history"].as_array().map(Vec::len),
            Some(*attempts),
            "{object:#}"
        );
        assert!(
            parse_time(&object["first_seen_at"], "first_seen_at")
                <= parse_time(&object["exhausted_at"], "exhausted_at")
        );
    }

    // Every PUT carried the SSE-KMS headers, path-style under the prefix.
    let puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "one PUT per object: {puts:#?}");
    for put in &puts {
        assert!(
            put.path
                .starts_with(&format!("/{BUCKET}/{PREFIX}{}/", s.tenant_id)),
            "{}",
            put.path
        );
        assert_eq!(
            put.headers
                .get("x-amz-server-side-encryption")
                .map(String::as_str),
            Some("aws:kms"),
            "{put:#?}"
        );
        assert_eq!(
            put.headers
                .get("x-amz-server-side-encryption-aws-kms-key-id")
                .map(String::as_str),
            Some(KMS_KEY),
            "{put:#?}"
        );
    }
    // Nothing went to the local DLQ.
    assert!(!s.server.data_dir().join("dlq").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_delays_shipping_and_loses_nothing_across_a_restart() {
    let mut s3 = S3Server::start(BUCKET).await;
    let mut s = Scenario::start_with(options(
        &s3.url(),
        &[
            ("HOOKRELAY_DLQ_RETRY_MAX_DELAY_MS", "400"),
            ("HOOKRELAY_DLQ_MAX_CONCURRENT_PUTS", "2"),
        ],
    ))
    .await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let ep = endpoint(&s, &rejecting.url("/in"), 1).await;

    s3.stop();
    const N: usize = 12;
    let sent = ingest(&s, &ep, N, "outage").await;
    wait_all_final(&s, sent.keys(), "failed").await;
    let http = s.server.http();
    // Shipping fails and backs off; every delivery waits in the backlog, aging.
    wait_metric(
        &http,
        "hookrelay_dlq_ship_failures_total",
        "failures",
        |v| v >= 2.0,
    )
    .await;
    wait_metric(&http, "hookrelay_dlq_backlog", "the whole backlog", |v| {
        v == N as f64
    })
    .await;
    wait_metric(
        &http,
        "hookrelay_dlq_backlog_oldest_age_seconds",
        "an aging backlog",
        |v| v > 0.0,
    )
    .await;
    assert_eq!(metric(&http, "hookrelay_dlq_shipped_total").await, 0.0);
    assert!(
        s.server.stderr().contains("DLQ store failed; retrying"),
        "{}",
        s.server.log_tail()
    );

    // A crash while the store is down: recovery queues the unshipped failures again.
    s.server.kill9();
    s.server.restart().await;
    let http = s.server.http();
    wait_metric(
        &http,
        "hookrelay_dlq_backlog",
        "the backlog after recovery",
        |v| v == N as f64,
    )
    .await;
    assert!(s3.objects(BUCKET).is_empty());

    s3.start_again().await;
    let objects = wait_objects(&s3, N).await;
    wait_metric(&http, "hookrelay_dlq_backlog", "an empty backlog", |v| {
        v == 0.0
    })
    .await;
    assert_eq!(metric(&http, "hookrelay_dlq_shipped_total").await, N as f64);
    assert_eq!(
        metric(&http, "hookrelay_dlq_backlog_oldest_age_seconds").await,
        0.0
    );
    let shipped: BTreeSet<&str> = objects
        .values()
        .map(|o| o["delivery_id"].as_str().expect("delivery_id"))
        .collect();
    assert_eq!(
        shipped,
        sent.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        "every failure shipped once the store is back"
    );
    for (key, object) in &objects {
        assert_eq!(key, &key_of(object));
        let body = B64
            .decode(str_field(object, "body_base64"))
            .expect("base64");
        assert_eq!(Some(&body), sent.get(&str_field(object, "delivery_id")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_range_reads_s3_and_redelivers_each_object_once() {
    let s3 = S3Server::start(BUCKET).await;
    let s = Scenario::start_with(options(&s3.url(), &[])).await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let ep_a = endpoint(&s, &rejecting.url("/a"), 1).await;
    let ep_b = endpoint(&s, &rejecting.url("/b"), 1).await;
    let before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let mut sent = ingest(&s, &ep_a, 4, "range.a").await;
    let sent_b = ingest(&s, &ep_b, 2, "range.b").await;
    sent.extend(sent_b.clone());
    wait_all_final(&s, sent.keys(), "failed").await;
    wait_objects(&s3, sent.len()).await;
    repoint(&s, &ep_a, &ok.url("/a")).await;
    repoint(&s, &ep_b, &ok.url("/b")).await;

    // A range of 90 days: the tenant's endpoints, years, months and days are listed.
    let to = OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let job = replay(
        &s,
        &json!({"dlq_range": range(to - time::Duration::days(90), to)}),
    )
    .await;
    let done = wait_replayed(&s, &job, sent.len() as u64).await;
    assert_eq!(done["counts"]["queued"], sent.len());
    assert_eq!(done["counts"]["failed"], 0);
    ok.wait_for(sent.len(), SHIP_DEADLINE).await;
    assert_eq!(ok.arrivals_during(Duration::from_millis(500)).await, 0);
    let by_original = replays_by_original(&ok);
    assert_eq!(
        by_original.keys().collect::<BTreeSet<_>>(),
        sent.keys().collect::<BTreeSet<_>>(),
        "every object in the range replayed"
    );
    assert!(
        by_original.values().all(|n| *n == 1),
        "each exactly once: {by_original:?}"
    );
    for r in ok.requests() {
        let original = r.header("x-hookrelay-replay-of").expect("replay-of");
        assert_eq!(
            Some(&r.body.to_vec()),
            sent.get(original),
            "the original body"
        );
    }

    // One endpoint, over a few days: each of its days' prefixes is listed.
    let job = replay(
        &s,
        &json!({"dlq_range": {"endpoint_id": ep_b, "from": before.format(&Rfc3339).expect("format"), "to": to.format(&Rfc3339).expect("format")}}),
    )
    .await;
    wait_replayed(&s, &job, sent_b.len() as u64).await;
    ok.wait_for(sent.len() + sent_b.len(), SHIP_DEADLINE).await;
    assert_eq!(ok.arrivals_during(Duration::from_millis(500)).await, 0);
    let by_original = replays_by_original(&ok);
    for (id, n) in &by_original {
        let expected = if sent_b.contains_key(id) { 2 } else { 1 };
        assert_eq!(*n, expected, "{id}: {by_original:?}");
    }

    // A range with no objects completes empty.
    let old = OffsetDateTime::now_utc() - time::Duration::days(400);
    let job = replay(
        &s,
        &json!({"dlq_range": range(old, old + time::Duration::days(2))}),
    )
    .await;
    let done = wait_replayed(&s, &job, 0).await;
    assert_eq!(done["total"], 0, "{done:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_s3_survives_a_restart() {
    let s3 = S3Server::start(BUCKET).await;
    // A slow replay rate, so the kill lands in the middle of the job.
    let mut s =
        Scenario::start_with(options(&s3.url(), &[("HOOKRELAY_REPLAY_MAX_PER_S", "10")])).await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let ep = endpoint(&s, &rejecting.url("/in"), 1).await;
    const N: usize = 20;
    let sent = ingest(&s, &ep, N, "restart").await;
    wait_all_final(&s, sent.keys(), "failed").await;
    wait_objects(&s3, N).await;
    repoint(&s, &ep, &ok.url("/in")).await;

    let to = OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let job = replay(
        &s,
        &json!({"dlq_range": range(to - time::Duration::hours(1), to)}),
    )
    .await;
    ok.wait_for(3, SHIP_DEADLINE).await;
    s.server.kill9();
    assert!(
        ok.count() < N,
        "the job was still running at the kill ({} of {N} arrived)",
        ok.count()
    );
    s.server.restart().await;
    let done = wait_replayed(&s, &job, N as u64).await;
    assert_eq!(done["counts"]["queued"], N, "{done:#}");
    ok.wait_for(N, SHIP_DEADLINE).await;
    let by_original = replays_by_original(&ok);
    assert_eq!(
        by_original.keys().collect::<BTreeSet<_>>(),
        sent.keys().collect::<BTreeSet<_>>(),
        "every object replayed once the job resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_id_reads_the_s3_object_when_the_log_no_longer_has_the_delivery() {
    let s3 = S3Server::start(BUCKET).await;
    let mut s = Scenario::start_with(options(&s3.url(), &[])).await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let ep = endpoint(&s, &rejecting.url("/in"), 1).await;
    let sent = ingest(&s, &ep, 1, "by-id").await;
    let (id, body) = sent.iter().next().expect("one delivery");
    wait_all_final(&s, [id], "failed").await;
    wait_objects(&s3, 1).await;
    repoint(&s, &ep, &ok.url("/in")).await;
    s.server.sigterm().await;

    // The same node's metadata (tenant, endpoint, keys) over empty logs: as after retention
    // deleted the delivery, only the DLQ object is left.
    let fresh = tempfile::tempdir().expect("tempdir");
    let data = fresh.path().join("data");
    copy_dir(&s.server.data_dir().join("meta"), &data.join("meta"));
    std::fs::copy(
        s.server.data_dir().join("shard_count"),
        data.join("shard_count"),
    )
    .expect("shard_count");
    let server = Server::start(options(&s3.url(), &[]).data_dir(&data)).await;
    let s2 = Scenario {
        api: server.api(),
        server,
        tenant_id: s.tenant_id.clone(),
        admin_key: s.admin_key.clone(),
    };
    let r = s2
        .server
        .http()
        .get(&format!("/v1/deliveries/{id}"), Some(&s2.admin_key))
        .await;
    assert_eq!(r.status, 404, "the log no longer has it: {r:?}");
    let job = replay(&s2, &json!({"delivery_ids": [id]})).await;
    let done = wait_replayed(&s2, &job, 1).await;
    assert_eq!(done["skipped"], 0, "{done:#}");
    let got = ok.wait_for(1, SHIP_DEADLINE).await;
    assert_eq!(got[0].header("x-hookrelay-replay-of"), Some(id.as_str()));
    assert_eq!(&got[0].body.to_vec(), body, "the body from the DLQ object");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
