//! Metrics and usage (contract: "Metrics", "Usage and billing"): `GET /v1/metrics` counts what
//! the receivers saw per endpoint and per tenant, `/metrics` exposes the contract's Prometheus
//! series, `GET /v1/usage` counts successful deliveries per UTC day, and the windows and usage
//! survive kill -9 and a graceful restart without counting anything twice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookrelay_tests::api::{assert_accepted, fast_retry, str_field};
use hookrelay_tests::http::Response;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::{Value, json};

/// How long the receiver of successful deliveries takes to answer: a floor for the latency.
const RECEIVER_DELAY: Duration = Duration::from_millis(30);
const OK_DELIVERIES: usize = 6;
/// Each exhausts after two 503s.
const EXHAUSTED_DELIVERIES: usize = 3;
/// Each fails at once on a 404.
const FAILED_DELIVERIES: usize = 2;

/// Today's UTC day number (days since 1970-01-01).
fn today() -> i64 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    (s / 86_400) as i64
}

/// `YYYY-MM-DD` of a day number.
fn date(day: i64) -> String {
    let d = time::Date::from_calendar_date(1970, time::Month::January, 1)
        .unwrap()
        .checked_add(time::Duration::days(day))
        .unwrap();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[track_caller]
fn assert_sample(text: &str, series: &str, expected: f64) {
    let got =
        sample(text, series).unwrap_or_else(|| panic!("no sample {series} in /metrics:\n{text}"));
    assert_eq!(got, expected, "{series} in /metrics:\n{text}");
}

async fn metrics(s: &Scenario, query: &str) -> Response {
    s.api
        .http
        .get(&format!("/v1/metrics{query}"), Some(&s.admin_key))
        .await
}

#[track_caller]
fn ok_json(response: &Response) -> Value {
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

/// Sends `count` deliveries to `endpoint_id` and waits until each is final.
async fn deliver(s: &Scenario, endpoint_id: &str, count: usize) {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(assert_accepted(
            &s.api
                .ingest_json(endpoint_id, &unique_json("metrics"))
                .await,
        ));
    }
    for id in ids {
        s.api.wait_final(&s.admin_key, &id).await;
    }
}

/// The sum of `successful_deliveries` from yesterday to tomorrow (a run crossing midnight UTC
/// still sees every delivery), checking the shape of the answer.
async fn usage_around_today(s: &Scenario) -> u64 {
    let (from, to) = (date(today() - 1), date(today() + 1));
    let body = ok_json(
        &s.api
            .http
            .get(
                &format!("/v1/usage?from={from}&to={to}"),
                Some(&s.admin_key),
            )
            .await,
    );
    let data = body["data"].as_array().expect("data is an array");
    let dates: Vec<&str> = data.iter().map(|d| d["date"].as_str().unwrap()).collect();
    assert_eq!(
        dates,
        [from.as_str(), date(today()).as_str(), to.as_str()],
        "{body:#}"
    );
    data.iter()
        .map(|d| d["successful_deliveries"].as_u64().expect("a count"))
        .sum()
}

/// Checks the windows of the three endpoints and of the tenant; `attempts_ok` is how many
/// attempts the successful endpoint has in the window.
async fn check_windows(s: &Scenario, ok: &str, bad: &str, gone: &str, window: &str) {
    let m = ok_json(&metrics(s, &format!("?endpoint_id={ok}&window={window}")).await);
    assert_eq!(m["endpoint_id"], ok);
    assert_eq!(m["window"], window);
    assert_eq!(m["deliveries_total"], OK_DELIVERIES, "{m:#}");
    assert_eq!(m["success_total"], OK_DELIVERIES, "{m:#}");
    assert_eq!(m["failed_total"], 0, "{m:#}");
    assert_eq!(m["exhausted_total"], 0, "{m:#}");
    assert_eq!(m["attempts_total"], OK_DELIVERIES, "{m:#}");
    assert_eq!(m["inflight"], 0, "{m:#}");
    assert_eq!(m["success_rate"], 1.0, "{m:#}");
    assert_eq!(m["top_failures"], json!([]), "{m:#}");
    let floor = RECEIVER_DELAY.as_millis() as u64;
    for q in ["p50", "p95", "p99"] {
        let v = m["latency_ms"][q]
            .as_u64()
            .unwrap_or_else(|| panic!("latency_ms.{q}:\n{m:#}"));
        assert!(
            (floor..10_000).contains(&v),
            "latency_ms.{q} = {v}, receiver waits {floor} ms:\n{m:#}"
        );
    }

    let m = ok_json(&metrics(s, &format!("?endpoint_id={bad}&window={window}")).await);
    assert_eq!(m["deliveries_total"], EXHAUSTED_DELIVERIES, "{m:#}");
    assert_eq!(m["exhausted_total"], EXHAUSTED_DELIVERIES, "{m:#}");
    assert_eq!(m["attempts_total"], 2 * EXHAUSTED_DELIVERIES, "{m:#}");
    assert_eq!(m["success_rate"], 0.0, "{m:#}");
    assert!(
        m["latency_ms"]["p50"].is_null(),
        "no successful attempt, no latency:\n{m:#}"
    );
    assert_eq!(
        m["top_failures"],
        json!([{"error": "http_503", "count": 2 * EXHAUSTED_DELIVERIES}]),
        "{m:#}"
    );

    let m = ok_json(&metrics(s, &format!("?endpoint_id={gone}&window={window}")).await);
    assert_eq!(m["failed_total"], FAILED_DELIVERIES, "{m:#}");
    assert_eq!(
        m["top_failures"],
        json!([{"error": "http_404", "count": FAILED_DELIVERIES}])
    );

    // No endpoint_id: the tenant's endpoints together.
    let all = OK_DELIVERIES + EXHAUSTED_DELIVERIES + FAILED_DELIVERIES;
    let m = ok_json(&metrics(s, &format!("?window={window}")).await);
    assert!(m["endpoint_id"].is_null(), "{m:#}");
    assert_eq!(m["deliveries_total"], all, "{m:#}");
    assert_eq!(m["success_total"], OK_DELIVERIES, "{m:#}");
    assert_eq!(m["failed_total"], FAILED_DELIVERIES, "{m:#}");
    assert_eq!(m["exhausted_total"], EXHAUSTED_DELIVERIES, "{m:#}");
    assert_eq!(
        m["attempts_total"],
        OK_DELIVERIES + 2 * EXHAUSTED_DELIVERIES + FAILED_DELIVERIES,
        "{m:#}"
    );
    let rate = m["success_rate"].as_f64().expect("a rate");
    assert!(
        (rate - OK_DELIVERIES as f64 / all as f64).abs() < 1e-9,
        "{m:#}"
    );
    assert_eq!(
        m["top_failures"],
        json!([
            {"error": "http_503", "count": 2 * EXHAUSTED_DELIVERIES},
            {"error": "http_404", "count": FAILED_DELIVERIES},
        ]),
        "{m:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_usage_count_what_receivers_saw_and_survive_restarts() {
    let mut s = Scenario::start().await;
    let ok_rx = Receiver::start(Script::always(Step::ok().delay(RECEIVER_DELAY))).await;
    let bad_rx = Receiver::start(Script::always(Step::status(503))).await;
    let gone_rx = Receiver::start(Script::always(Step::status(404))).await;
    let ok = str_field(&s.endpoint(&ok_rx.url("/ok"), json!({})).await, "id");
    let bad = str_field(
        &s.endpoint(&bad_rx.url("/bad"), json!({"retry": fast_retry(2)}))
            .await,
        "id",
    );
    let gone = str_field(&s.endpoint(&gone_rx.url("/gone"), json!({})).await, "id");

    // Before anything happened: zeros, and nulls where a ratio has no denominator.
    let m = ok_json(&metrics(&s, &format!("?endpoint_id={ok}&window=1h")).await);
    assert_eq!(m["deliveries_total"], 0, "{m:#}");
    assert!(m["success_rate"].is_null(), "{m:#}");
    assert!(m["latency_ms"]["p99"].is_null(), "{m:#}");

    deliver(&s, &ok, OK_DELIVERIES).await;
    deliver(&s, &bad, EXHAUSTED_DELIVERIES).await;
    deliver(&s, &gone, FAILED_DELIVERIES).await;
    assert_eq!(ok_rx.count(), OK_DELIVERIES);
    assert_eq!(bad_rx.count(), 2 * EXHAUSTED_DELIVERIES);
    assert_eq!(gone_rx.count(), FAILED_DELIVERIES);
    let unknown = s
        .api
        .ingest_json("ep_01J00000000000000000000000", b"{}")
        .await;
    assert_eq!(unknown.status, 404);

    for window in ["1h", "24h", "7d"] {
        check_windows(&s, &ok, &bad, &gone, window).await;
    }
    // The default window is 24h.
    assert_eq!(
        ok_json(&metrics(&s, &format!("?endpoint_id={ok}")).await)["window"],
        "24h"
    );

    // Prometheus: no key needed, the contract's series, counts since the process started.
    let response = s.api.http.get("/metrics", None).await;
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text();
    let series = |labels: &str| format!("hookrelay_deliveries_total{{{labels}}}");
    assert_sample(
        &text,
        &series(&format!("endpoint_id=\"{ok}\",status=\"success\"")),
        OK_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        &series(&format!("endpoint_id=\"{bad}\",status=\"exhausted\"")),
        EXHAUSTED_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        &series(&format!("endpoint_id=\"{gone}\",status=\"failed\"")),
        FAILED_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        &format!("hookrelay_attempts_total{{endpoint_id=\"{bad}\",outcome=\"failure\"}}"),
        (2 * EXHAUSTED_DELIVERIES) as f64,
    );
    assert_sample(
        &text,
        &format!("hookrelay_attempts_total{{endpoint_id=\"{ok}\",outcome=\"success\"}}"),
        OK_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        "hookrelay_delivery_latency_seconds_count",
        OK_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        "hookrelay_delivery_latency_seconds_bucket{le=\"+Inf\"}",
        OK_DELIVERIES as f64,
    );
    assert_sample(
        &text,
        "hookrelay_delivery_latency_seconds_bucket{le=\"0.005\"}",
        0.0,
    );
    let sum = sample(&text, "hookrelay_delivery_latency_seconds_sum").expect("latency sum");
    assert!(
        sum >= RECEIVER_DELAY.as_secs_f64() * OK_DELIVERIES as f64,
        "{sum}"
    );
    let all = OK_DELIVERIES + EXHAUSTED_DELIVERIES + FAILED_DELIVERIES;
    assert_sample(
        &text,
        "hookrelay_ingest_requests_total{code=\"202\"}",
        all as f64,
    );
    assert!(
        sample(&text, "hookrelay_ingest_requests_total{code=\"404\"}").is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(&text, "hookrelay_ingest_latency_seconds_count")
            .is_some_and(|n| n >= (all + 1) as f64)
    );
    assert_sample(&text, "hookrelay_inflight", 0.0);
    assert_sample(&text, "hookrelay_queue_oldest_age_seconds", 0.0);
    // No peer: nothing to lag behind, per shard.
    assert_sample(&text, "hookrelay_replication_lag_bytes{shard=\"0\"}", 0.0);
    assert_sample(&text, "hookrelay_replication_lag_bytes{shard=\"1\"}", 0.0);
    // The logs: every ingested delivery is a record, group commits carry them, and each commit
    // is timed once.
    let per_shard = |family: &str| -> f64 {
        (0..2)
            .map(|shard| {
                sample(&text, &format!("{family}{{shard=\"{shard}\"}}"))
                    .unwrap_or_else(|| panic!("{family} of shard {shard} in\n{text}"))
            })
            .sum()
    };
    let appends = per_shard("hookrelay_log_appends_total");
    let commits = per_shard("hookrelay_log_commits_total");
    assert!(
        appends >= all as f64,
        "{appends} records for {all} deliveries"
    );
    assert!((1.0..=appends).contains(&commits), "{commits} commits");
    assert!(per_shard("hookrelay_log_fsyncs_total") >= commits);
    assert!(per_shard("hookrelay_log_written_bytes_total") >= appends);
    assert_sample(&text, "hookrelay_log_commit_seconds_count", commits);
    for family in [
        "hookrelay_delivery_latency_seconds",
        "hookrelay_ingest_latency_seconds",
        "hookrelay_log_commit_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} histogram")),
            "{text}"
        );
    }

    // Usage: the successes, on today's line.
    assert_eq!(usage_around_today(&s).await, OK_DELIVERIES as u64);

    // kill -9: the windows come back from the log, the usage from its rollup plus the log,
    // neither counted twice.
    s.server.kill9();
    s.server.restart().await;
    for window in ["1h", "7d"] {
        check_windows(&s, &ok, &bad, &gone, window).await;
    }
    assert_eq!(usage_around_today(&s).await, OK_DELIVERIES as u64);

    // More successes, then a graceful stop (the rollup is written at shutdown) and a start.
    deliver(&s, &ok, 2).await;
    assert_eq!(usage_around_today(&s).await, OK_DELIVERIES as u64 + 2);
    let status = s.server.sigterm().await;
    assert!(status.success(), "SIGTERM exit: {status}");
    s.server.restart().await;
    assert_eq!(usage_around_today(&s).await, OK_DELIVERIES as u64 + 2);
    let m = ok_json(&metrics(&s, &format!("?endpoint_id={ok}&window=1h")).await);
    assert_eq!(m["success_total"], OK_DELIVERIES + 2, "{m:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_usage_validate_and_isolate_tenants() {
    let s = Scenario::start().await;
    let rx = Receiver::start(Script::always(Step::ok())).await;
    let mine = str_field(&s.endpoint(&rx.url("/a"), json!({})).await, "id");
    let (_, other_key) = s.api.tenant("other").await;
    let other = s
        .api
        .create_endpoint(
            &other_key,
            &hookrelay_tests::api::endpoint_to(&rx.url("/b"), json!({})),
        )
        .await;
    let other = str_field(&other, "id");

    // Another tenant's endpoint is not found, never forbidden; an unknown one neither.
    for id in [other.as_str(), "ep_01J00000000000000000000000"] {
        let r = metrics(&s, &format!("?endpoint_id={id}")).await;
        assert_problem(&r, 404, "not_found");
    }
    assert_problem(&metrics(&s, "?window=2h").await, 422, "validation_failed");
    assert_problem(
        &metrics(&s, &format!("?endpoint_id={mine}&window=30d")).await,
        422,
        "validation_failed",
    );
    assert_problem(
        &s.api.http.get("/v1/metrics", None).await,
        401,
        "unauthorized",
    );
    assert_problem(
        &s.api.http.get("/v1/usage", None).await,
        401,
        "unauthorized",
    );

    // The other tenant's deliveries never show in this tenant's numbers.
    let id = assert_accepted(&s.api.ingest_json(&other, &unique_json("other")).await);
    s.api.wait_final(&other_key, &id).await;
    let m = ok_json(&metrics(&s, "?window=1h").await);
    assert_eq!(m["deliveries_total"], 0, "{m:#}");
    let m = ok_json(
        &s.api
            .http
            .get("/v1/metrics?window=1h", Some(&other_key))
            .await,
    );
    assert_eq!(m["success_total"], 1, "{m:#}");
    assert_eq!(usage_around_today(&s).await, 0);

    // Usage ranges: defaults to the last 30 days; bounded; well-formed dates only.
    let body = ok_json(&s.api.http.get("/v1/usage", Some(&s.admin_key)).await);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 30, "{body:#}");
    assert_eq!(data.last().unwrap()["date"], date(today()), "{body:#}");
    assert!(body["next_cursor"].is_null());
    for query in [
        format!("from={}&to={}", date(today()), date(today() - 1)),
        format!("from={}&to={}", date(today() - 366), date(today())),
        "from=2026-02-30".to_string(),
        "to=yesterday".to_string(),
    ] {
        let r = s
            .api
            .http
            .get(&format!("/v1/usage?{query}"), Some(&s.admin_key))
            .await;
        assert_problem(&r, 422, "validation_failed");
    }
    let year = s
        .api
        .http
        .get(
            &format!(
                "/v1/usage?from={}&to={}",
                date(today() - 365),
                date(today())
            ),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(ok_json(&year)["data"].as_array().unwrap().len(), 366);

    // The operator names the tenant; a tenant key cannot name another.
    let root = s.api.root_key().to_string();
    let r = s.api.http.get("/v1/usage", Some(&root)).await;
    assert_problem(&r, 422, "validation_failed");
    let r = s
        .api
        .http
        .get(&format!("/v1/usage?tenant_id={}", s.tenant_id), Some(&root))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s
        .api
        .http
        .get(
            &format!("/v1/usage?tenant_id={}", s.tenant_id),
            Some(&other_key),
        )
        .await;
    assert_problem(&r, 404, "not_found");
}
