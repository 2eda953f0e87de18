//! The local DLQ (contract: "DLQ and replay"): every delivery that ends `failed` or `exhausted`
//! is written to `<data_dir>/dlq/{tenant_id}/{endpoint_id}/{yyyy}/{mm}/{dd}/{delivery_id}.json`
//! with exactly the contract's fields; a successful one is not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hookrelay_tests::api::{
    DELIVERY_DEADLINE, assert_accepted, fast_retry, json_header, parse_time, str_field,
};
use hookrelay_tests::http::headers;
use hookrelay_tests::payload::unique_json;
use hookrelay_tests::receiver::{Receiver, Script, Step};
use hookrelay_tests::scenario::Scenario;
use serde_json::{Value, json};
use time::OffsetDateTime;

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

fn dlq_path(
    data_dir: &Path,
    tenant: &str,
    endpoint: &str,
    day: OffsetDateTime,
    delivery: &str,
) -> PathBuf {
    data_dir
        .join("dlq")
        .join(tenant)
        .join(endpoint)
        .join(format!("{:04}", day.year()))
        .join(format!("{:02}", u8::from(day.month())))
        .join(format!("{:02}", day.day()))
        .join(format!("{delivery}.json"))
}

/// Waits for the DLQ object of `delivery`, dated the UTC day it became final (`days` holds the
/// candidate days around the test, in case it ran across midnight).
async fn wait_for_object(
    data_dir: &Path,
    tenant: &str,
    endpoint: &str,
    days: &[OffsetDateTime],
    delivery: &str,
) -> Value {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        for day in days {
            let path = dlq_path(data_dir, tenant, endpoint, *day, delivery);
            if let Ok(text) = std::fs::read(&path) {
                // A half-written file is retried until the deadline, then reported.
                if let Ok(value) = serde_json::from_slice::<Value>(&text) {
                    return value;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{} is not JSON: {}",
                        path.display(),
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
        if Instant::now() >= deadline {
            let found = list_files(&data_dir.join("dlq"));
            panic!(
                "no DLQ object for {delivery} at {} within {DELIVERY_DEADLINE:?}; files under dlq/: {found:#?}",
                dlq_path(data_dir, tenant, endpoint, days[0], delivery).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    const FILES_MAX: usize = 10_000;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if out.len() < FILES_MAX {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_exhausted_are_dead_lettered() {
    let day_before = OffsetDateTime::now_utc();
    let s = Scenario::start().await;
    let rejecting = Receiver::start(Script::always(Step::status(400))).await;
    let broken = Receiver::start(Script::always(Step::status(500))).await;
    let fine = Receiver::start(Script::always(Step::ok())).await;
    let failed_ep = str_field(&s.endpoint(&rejecting.url("/in"), json!({})).await, "id");
    let exhausted_ep = str_field(
        &s.endpoint(&broken.url("/in"), json!({"retry": fast_retry(2)}))
            .await,
        "id",
    );
    let success_ep = str_field(&s.endpoint(&fine.url("/in"), json!({})).await, "id");

    let sent_headers = headers(&[("Content-Type", "application/json"), ("X-Dlq-Test", "kept")]);
    let failed_body = unique_json("dlq.failed");
    let exhausted_body = unique_json("dlq.exhausted");
    let failed_id = assert_accepted(&s.api.ingest(&failed_ep, &failed_body, &sent_headers).await);
    let exhausted_id = assert_accepted(
        &s.api
            .ingest(&exhausted_ep, &exhausted_body, &sent_headers)
            .await,
    );
    let success_id = assert_accepted(
        &s.api
            .ingest(&success_ep, &unique_json("dlq.ok"), &sent_headers)
            .await,
    );

    let cases = [
        (&failed_ep, &failed_id, &failed_body, "failed", 1),
        (
            &exhausted_ep,
            &exhausted_id,
            &exhausted_body,
            "exhausted",
            2,
        ),
    ];
    for (endpoint, delivery_id, body, final_status, attempts) in cases {
        let delivery = s.api.wait_final(&s.admin_key, delivery_id).await;
        assert_eq!(delivery["status"], final_status, "{delivery:#}");
        let days = [day_before, OffsetDateTime::now_utc()];
        let object = wait_for_object(
            s.server.data_dir(),
            &s.tenant_id,
            endpoint,
            &days,
            delivery_id,
        )
        .await;

        let keys: BTreeSet<&str> = object
            .as_object()
            .unwrap_or_else(|| panic!("DLQ object is a JSON object: {object}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            FIELDS.into_iter().collect(),
            "DLQ object fields:\n{object:#}"
        );
        assert_eq!(object["delivery_id"], delivery_id.as_str());
        assert_eq!(object["tenant_id"], s.tenant_id.as_str());
        assert_eq!(object["endpoint_id"], endpoint.as_str());
        assert_eq!(object["final_status"], final_status);
        assert_eq!(
            json_header(&object["headers"], "x-dlq-test").as_deref(),
            Some("kept"),
            "headers are those received from the sender:\n{object:#}"
        );
        assert!(
            json_header(&object["headers"], "x-hookrelay-attempt").is_none(),
            "headers are the sender's, not the forwarded ones:\n{object:#}"
        );
        let stored = B64
            .decode(str_field(&object, "body_base64"))
            .expect("body_base64 is base64");
        assert_eq!(&stored, body, "body_base64 decodes to the original bytes");
        let history = object["attempt_history"]
            .as_array()
            .expect("attempt_history is an array");
        assert_eq!(history.len(), attempts, "{object:#}");
        let first_seen = parse_time(&object["first_seen_at"], "first_seen_at");
        let exhausted_at = parse_time(&object["exhausted_at"], "exhausted_at");
        assert!(first_seen <= exhausted_at, "{object:#}");
        // The object sits under the UTC day of exhausted_at.
        let expected = dlq_path(
            s.server.data_dir(),
            &s.tenant_id,
            endpoint,
            exhausted_at.to_offset(time::UtcOffset::UTC),
            delivery_id,
        );
        assert!(
            expected.is_file(),
            "DLQ object not under the day of exhausted_at: {}",
            expected.display()
        );
    }

    let success = s.api.wait_final(&s.admin_key, &success_id).await;
    assert_eq!(success["status"], "success");
    let stray: Vec<PathBuf> = list_files(&s.server.data_dir().join("dlq"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(&success_id))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "a successful delivery was dead-lettered: {stray:?}"
    );
}
