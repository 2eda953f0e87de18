//! Accounting: where did every ACKed delivery end up?
//!
//! Three independent views are joined per ACKed delivery id: the receiver's record (did it
//! answer a 2xx?), the DLQ files under `<data_dir>/dlq/`, and `GET /v1/deliveries/{id}`. The
//! suite waits (bounded) until every ACKed id is final, then counts:
//!
//! - delivered: the receiver answered at least one attempt with a 2xx;
//! - failed: the API says `failed` or `exhausted`;
//! - dead-lettered: a DLQ object exists for it;
//! - lost: neither delivered nor dead-lettered — the promise broken;
//! - duplicated: the receiver answered 2xx more than once (allowed: at least once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::api::{Api, DeliveryState, DeliveryView};
use crate::receiver::Receiver;

/// Concurrent `GET /v1/deliveries/{id}` while settling.
const QUERY_TASKS: usize = 8;
/// Ids listed per kind of problem.
const IDS_SHOWN_MAX: usize = 5;

/// The loss count and what explains it.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub acked: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Final API state counts of the ACKed ids.
    pub by_state: BTreeMap<String, u64>,
    /// Broken promises and wrong statuses: each makes the scenario fail.
    pub problems: Vec<String>,
    /// Facts worth printing.
    pub notes: Vec<String>,
}

/// What accounting checks beyond loss.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// An `exhausted` delivery must have had exactly this many attempts.
    pub max_attempts: Option<u64>,
}

/// Waits (at most `deadline`) until every ACKed id is final and every failure has its DLQ
/// object, then counts.
pub async fn settle(
    api: &Api,
    acked: &BTreeSet<String>,
    receiver: &Receiver,
    data_dir: &Path,
    deadline: Duration,
    policy: Policy,
) -> Tally {
    let started = Instant::now();
    let mut views: HashMap<String, DeliveryView> = HashMap::new();
    let mut dlq = scan_dlq(&data_dir.join("dlq"));
    loop {
        let seen = receiver.seen();
        let pending: Vec<String> = acked
            .iter()
            .filter(|id| !settled(views.get(*id), dlq.contains_key(*id)))
            .cloned()
            .collect();
        if pending.is_empty() || started.elapsed() >= deadline {
            return count(
                acked,
                &views,
                &dlq,
                &seen,
                receiver,
                policy,
                started.elapsed(),
            );
        }
        for (id, view) in query(api, pending).await {
            views.insert(id, view);
        }
        dlq = scan_dlq(&data_dir.join("dlq"));
        let still = acked
            .iter()
            .filter(|id| !settled(views.get(*id), dlq.contains_key(*id)))
            .count();
        if still > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn settled(view: Option<&DeliveryView>, in_dlq: bool) -> bool {
    match view.map(|v| &v.state) {
        Some(DeliveryState::Success | DeliveryState::NotFound) => true,
        Some(DeliveryState::Failed | DeliveryState::Exhausted) => in_dlq,
        _ => false,
    }
}

async fn query(api: &Api, ids: Vec<String>) -> Vec<(String, DeliveryView)> {
    let chunk = ids.len().div_ceil(QUERY_TASKS).max(1);
    let mut tasks = JoinSet::new();
    for part in ids.chunks(chunk) {
        let part = part.to_vec();
        let api = api.clone();
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(part.len());
            for id in part {
                let view = api.delivery(&id).await;
                out.push((id, view));
            }
            out
        });
    }
    let mut all = Vec::with_capacity(ids.len());
    while let Some(done) = tasks.join_next().await {
        if let Ok(part) = done {
            all.extend(part);
        }
    }
    all
}

/// Delivery id → `final_status` of every DLQ object under `dir`.
pub fn scan_dlq(dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: tenant/endpoint/yyyy/mm/dd is five levels; a few thousand directories at most.
    let mut dirs_left = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if dirs_left > 0 {
                    dirs_left -= 1;
                    stack.push(path);
                }
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json").filter(|s| s.starts_with("dl_")) else {
                continue;
            };
            let status = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["final_status"].as_str().map(str::to_string))
                .unwrap_or_else(|| "unreadable".into());
            out.insert(id.to_string(), status);
        }
    }
    out
}

fn count(
    acked: &BTreeSet<String>,
    views: &HashMap<String, DeliveryView>,
    dlq: &HashMap<String, String>,
    seen: &HashMap<String, crate::receiver::Seen>,
    receiver: &Receiver,
    policy: Policy,
    waited: Duration,
) -> Tally {
    let mut t = Tally {
        acked: acked.len() as u64,
        ..Tally::default()
    };
    let mut lost_ids = Vec::new();
    let mut wrong_success = Vec::new();
    let mut no_dlq = Vec::new();
    let mut wrong_attempts = Vec::new();
    let mut dlq_mismatch = Vec::new();
    for id in acked {
        let successes = seen.get(id).map_or(0, |s| s.successes);
        let state = views
            .get(id)
            .map_or(DeliveryState::Unknown("never queried".into()), |v| {
                v.state.clone()
            });
        *t.by_state.entry(state.name().to_string()).or_default() += 1;
        let delivered = successes > 0;
        let in_dlq = dlq.get(id);
        t.delivered += u64::from(delivered);
        t.duplicated += u64::from(successes > 1);
        t.dead_lettered += u64::from(in_dlq.is_some());
        let failed = matches!(state, DeliveryState::Failed | DeliveryState::Exhausted);
        t.failed += u64::from(failed);
        if !delivered && in_dlq.is_none() {
            t.lost += 1;
            lost_ids.push(format!("{id} (api: {})", state.name()));
        }
        if state == DeliveryState::Success && !delivered {
            wrong_success.push(id.clone());
        }
        if failed && in_dlq.is_none() {
            no_dlq.push(id.clone());
        }
        if let (Some(file_status), true) = (in_dlq, failed)
            && file_status != state.name()
        {
            dlq_mismatch.push(format!("{id} (api {}, dlq {file_status})", state.name()));
        }
        if let (DeliveryState::Exhausted, Some(max), Some(view)) =
            (&state, policy.max_attempts, views.get(id))
            && view.attempts != max
        {
            wrong_attempts.push(format!("{id} ({} attempts)", view.attempts));
        }
    }
    let mut problem = |what: &str, ids: &[String]| {
        if !ids.is_empty() {
            t.problems.push(format!(
                "{} {what}: {}",
                ids.len(),
                ids.iter()
                    .take(IDS_SHOWN_MAX)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    };
    problem("ACKed deliveries lost", &lost_ids);
    problem(
        "reported success but the receiver never answered 2xx",
        &wrong_success,
    );
    problem("failed/exhausted without a DLQ object", &no_dlq);
    problem(
        "exhausted with an attempt count other than max_attempts",
        &wrong_attempts,
    );
    problem("DLQ final_status differs from the API", &dlq_mismatch);
    if receiver.bad_signatures() > 0 {
        t.problems.push(format!(
            "{} forwarded requests with a bad Standard Webhooks signature: {:?}",
            receiver.bad_signatures(),
            receiver.examples()
        ));
    }
    if receiver.without_delivery_id() > 0 {
        t.problems.push(format!(
            "{} forwarded requests without X-HookRelay-Delivery-Id",
            receiver.without_delivery_id()
        ));
    }
    let unacked = seen.keys().filter(|id| !acked.contains(*id)).count();
    let states: Vec<String> = t.by_state.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    t.notes.push(format!(
        "settled in {:.1}s; API states {}; receiver saw {} requests",
        waited.as_secs_f64(),
        states.join(" "),
        receiver.requests()
    ));
    if unacked > 0 {
        t.notes.push(format!(
            "{unacked} delivered ids were never ACKed to the sender (made durable, answer lost in the fault) — allowed"
        ));
    }
    t
}
