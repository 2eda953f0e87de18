//! Per-endpoint flow control (contract: "Forwarding to the receiver" and "Endpoints"): at most
//! `max_in_flight` attempts at once; pause holds deliveries (ingest still 202), resume releases.

use std::collections::BTreeSet;
use std::time::Duration;

use hookrelay_tests::api::{DELIVERY_DEADLINE, assert_accepted, str_field};
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_is_respected() {
    const SENT: usize = 20;
    let s = Scenario::start().await;
    let receiver =
        Receiver::start(Script::always(Step::ok().delay(Duration::from_millis(300)))).await;
    let endpoint_id = str_field(
        &s.endpoint(&receiver.url("/in"), json!({"max_in_flight": 2}))
            .await,
        "id",
    );
    let mut accepted = BTreeSet::new();
    for _ in 0..SENT {
        accepted.insert(assert_accepted(
            &s.api.ingest_json(&endpoint_id, &unique_json("flow")).await,
        ));
    }
    let got = receiver.wait_for(SENT, Duration::from_secs(60)).await;
    let forwarded: BTreeSet<String> = got
        .iter()
        .map(|r| {
            r.header("x-hookrelay-delivery-id")
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(forwarded, accepted, "every accepted delivery arrives");
    assert!(
        receiver.max_concurrency() <= 2,
        "max_in_flight 2, but the receiver saw {} requests at once",
        receiver.max_concurrency()
    );
    eprintln!("max concurrency seen: {}", receiver.max_concurrency());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_and_resume_releases() {
    const SENT: usize = 5;
    let s = Scenario::start().await;
    let receiver = Receiver::start(Script::always(Step::ok())).await;
    let endpoint_id = str_field(&s.endpoint(&receiver.url("/in"), json!({})).await, "id");

    s.api.pause(&s.admin_key, &endpoint_id).await;
    assert_eq!(
        s.api.get_endpoint(&s.admin_key, &endpoint_id).await["paused"],
        true
    );
    let mut ids = Vec::new();
    for _ in 0..SENT {
        ids.push(assert_accepted(
            &s.api
                .ingest_json(&endpoint_id, &unique_json("paused"))
                .await,
        ));
    }
    assert_eq!(
        receiver.arrivals_during(Duration::from_secs(1)).await,
        0,
        "nothing is forwarded while paused"
    );
    for id in &ids {
        let delivery = s.api.get_delivery(&s.admin_key, id).await;
        assert_eq!(
            delivery["status"], "queued",
            "a held delivery is queued:\n{delivery:#}"
        );
    }

    s.api.resume(&s.admin_key, &endpoint_id).await;
    assert_eq!(
        s.api.get_endpoint(&s.admin_key, &endpoint_id).await["paused"],
        false
    );
    receiver.wait_for(SENT, DELIVERY_DEADLINE).await;
    for id in &ids {
        let delivery = s.api.wait_final(&s.admin_key, id).await;
        assert_eq!(delivery["status"], "success", "{delivery:#}");
    }
}

/// While one endpoint is paused, another of the same tenant keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_is_per_endpoint() {
    let s = Scenario::start().await;
    let held = Receiver::start(Script::always(Step::ok())).await;
    let flowing = Receiver::start(Script::always(Step::ok())).await;
    let held_id = str_field(&s.endpoint(&held.url("/in"), json!({})).await, "id");
    let flowing_id = str_field(&s.endpoint(&flowing.url("/in"), json!({})).await, "id");
    s.api.pause(&s.admin_key, &held_id).await;
    assert_accepted(&s.api.ingest_json(&held_id, &unique_json("held")).await);
    assert_accepted(
        &s.api
            .ingest_json(&flowing_id, &unique_json("flowing"))
            .await,
    );
    flowing.wait_for(1, DELIVERY_DEADLINE).await;
    assert_eq!(held.arrivals_during(Duration::from_millis(500)).await, 0);
    assert_eq!(held.count(), 0);
}
