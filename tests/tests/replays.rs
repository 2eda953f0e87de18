//! Replays (contract: "DLQ and replay"): by delivery ids and by DLQ time range; each replayed
//! delivery is new, carries `replay_of` and `X-HookRelay-Replay-Of`; jobs report progress and
//! complete; a restart in the middle of a job neither loses nor duplicates items.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hookrelay_tests::api::{assert_accepted, fast_retry};
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::problem::assert_problem;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use hookrelay_tests::server::ServerOptions;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

async fn wait_completed(s: &Scenario, id: &str, expect_succeeded: u64) -> Value {
    let http = s.server.http();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(&format!("/v1/replays/{id}"), Some(&s.admin_key))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let job = r.json();
        if job["status"] == "completed"
            && job["counts"]["succeeded"].as_u64() == Some(expect_succeeded)
        {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "replay {id} did not complete: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dead-letters `n` deliveries (the receiver answers 400), then points the endpoint at `ok`.
async fn dead_letter(s: &Scenario, n: usize, ok: &Receiver) -> (String, Vec<String>) {
    let bad = Receiver::start(Script::always(Step::status(400))).await;
    let ep = s
        .endpoint(&bad.url("/x"), json!({"retry": fast_retry(1)}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(assert_accepted(
            &s.api.ingest_json(&ep, &unique_json(&format!("r{i}"))).await,
        ));
    }
    for id in &ids {
        let d = s.api.wait_final(&s.admin_key, id).await;
        assert_eq!(d["status"], "failed");
    }
    let r = s
        .server
        .http()
        .patch(
            &format!("/v1/endpoints/{ep}"),
            &json!({"destination_url": ok.url("/ok")}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    (ep, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_ids_and_by_dlq_range() {
    let s = Scenario::start().await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let from = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let (_, ids) = dead_letter(&s, 4, &ok).await;
    let to = OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let http = s.server.http();

    let r = http
        .post(
            "/v1/replays",
            &json!({"delivery_ids": [ids[0]]}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let job = r.json();
    assert!(job["id"].as_str().unwrap().starts_with("rp_"));
    assert!(job["counts"]["queued"].is_number());
    let done = wait_completed(&s, job["id"].as_str().unwrap(), 1).await;
    assert_eq!(done["counts"]["queued"], 1);

    let range = json!({"dlq_range": {"from": from.format(&Rfc3339).unwrap(), "to": to.format(&Rfc3339).unwrap()}});
    let r = http.post("/v1/replays", &range, Some(&s.admin_key)).await;
    assert_eq!(r.status, 202, "{r:?}");
    let done = wait_completed(&s, r.json()["id"].as_str().unwrap(), 4).await;
    assert_eq!(done["counts"]["failed"], 0);

    // Five replayed deliveries arrived, each new, each naming its original.
    let arrived = ok.wait_for(5, Duration::from_secs(30)).await;
    let originals: Vec<String> = arrived
        .iter()
        .map(|r| {
            r.header("x-hookrelay-replay-of")
                .expect("X-HookRelay-Replay-Of")
                .to_string()
        })
        .collect();
    let set: BTreeSet<&String> = originals.iter().collect();
    assert_eq!(set, ids.iter().collect::<BTreeSet<_>>());
    for r in &arrived {
        let new_id = r.header("x-hookrelay-delivery-id").unwrap();
        assert!(
            !ids.iter().any(|i| i == new_id),
            "a replay is a new delivery"
        );
        let d = s.api.get_delivery(&s.admin_key, new_id).await;
        assert_eq!(d["replay_of"], r.header("x-hookrelay-replay-of").unwrap());
    }

    // Bad requests and isolation.
    for body in [
        json!({}),
        json!({"delivery_ids": []}),
        json!({"delivery_ids": ["nope"]}),
        json!({"dlq_range": {"from": "x", "to": "y"}}),
    ] {
        let r = http.post("/v1/replays", &body, Some(&s.admin_key)).await;
        assert_problem(&r, 422, "validation_failed");
    }
    let (_, other_key) = s.api.tenant("other").await;
    let r = http
        .get(
            &format!("/v1/replays/{}", job["id"].as_str().unwrap()),
            Some(&other_key),
        )
        .await;
    assert_problem(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_job_survives_a_restart_without_duplicates() {
    // A slow replay rate so the kill lands in the middle of the job.
    let mut s =
        Scenario::start_with(ServerOptions::default().env("HOOKRELAY_REPLAY_MAX_PER_S", "20"))
            .await;
    let ok = Receiver::start(Script::always(Step::ok())).await;
    let (_, ids) = dead_letter(&s, 30, &ok).await;
    let http = s.server.http();
    let r = http
        .post(
            "/v1/replays",
            &json!({"delivery_ids": ids}),
            Some(&s.admin_key),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let job_id = r.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.server.kill9();
    s.server.restart().await;
    wait_completed(&s, &job_id, 30).await;
    let arrived = ok.wait_for(30, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let originals: Vec<String> = ok
        .requests()
        .iter()
        .map(|r| r.header("x-hookrelay-replay-of").unwrap().to_string())
        .collect();
    let set: BTreeSet<&String> = originals.iter().collect();
    assert_eq!(set.len(), 30, "every item replayed");
    assert!(arrived.len() >= 30);
}
