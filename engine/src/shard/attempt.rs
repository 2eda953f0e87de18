//! One delivery attempt: build the forwarded request, send it, classify the outcome, record it,
//! and schedule what comes next.

use std::rc::Rc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::delivery::classify::{Outcome, classify, error_class};
use crate::delivery::client::{AttemptRequest, is_dropped_header};
use crate::meta::Endpoint;
use crate::record::{Attempted, Ingested, Status, TYPE_ATTEMPTED};
use crate::shard::core::ShardCore;
use crate::shard::query::ReadError;
use crate::shard::scheduler::{Done, Entry};
use crate::signing;

/// The sender's headers HookRelay replaces with its own (the sender's Standard Webhooks headers
/// and any `X-HookRelay-*` it made up). Hop-by-hop and framing headers are the client's to drop
/// ([`is_dropped_header`]).
const REPLACED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hookrelay-delivery-id",
    "x-hookrelay-attempt",
    "x-hookrelay-replay-of",
];

/// How long an attempt record may wait for a group commit to ride with ([`ShardCore::book`]).
/// Short: the delivery's status in the state table (and the API) lags by as much at low rates.
const ATTEMPT_RECORD_HOLD: Duration = Duration::from_millis(5);

/// Runs one attempt of `entry` and books its outcome; the attempt slot is released at the end.
pub(crate) async fn run(core: Rc<ShardCore>, endpoint_id: Rc<str>, entry: Entry) {
    attempt(&core, &endpoint_id, entry).await;
    core.attempts_running
        .set(core.attempts_running.get().saturating_sub(1));
    core.wake.notify_one();
}

async fn attempt(core: &Rc<ShardCore>, endpoint_id: &str, mut entry: Entry) {
    let snapshot = core.node.meta().load();
    let Some(endpoint) = snapshot.endpoints.get(endpoint_id).cloned() else {
        core.finish_without_attempt(endpoint_id, entry, "endpoint_deleted")
            .await;
        return;
    };
    let record = match core.read_ingested(entry.ingest_offset, true) {
        Ok(r) => r,
        Err(ReadError::Purged) => {
            core.finish_without_attempt(endpoint_id, entry, "purged")
                .await;
            return;
        }
        Err(ReadError::Unreadable(reason)) => {
            // Corruption under a live delivery: say so loudly; it cannot be forwarded.
            tracing::error!(shard = core.id, offset = entry.ingest_offset, %reason, "ingest record unreadable");
            core.finish_without_attempt(endpoint_id, entry, "record_unreadable")
                .await;
            return;
        }
    };
    let Ok(url) = endpoint.destination_url.parse::<http::Uri>() else {
        // Validated at write time; a URL that no longer parses cannot be delivered to.
        core.finish_without_attempt(endpoint_id, entry, "invalid_url")
            .await;
        return;
    };
    let n = entry.attempts + 1;
    let started_ms = now_ms();
    let request = AttemptRequest {
        url,
        headers: forward_headers(&record, &endpoint, n, started_ms),
        body: record.body.clone(),
        timeout: Duration::from_millis(endpoint.timeout_ms),
    };
    let result = core.client.send(request).await;
    let outcome = classify(result.status, result.error.as_ref(), result.retry_after);
    // One reading of each clock: the record keeps the wall-clock due time, the timer the
    // monotonic one. Deriving the timer from the wall-clock due time read the wall clock a
    // second time, and a wall-clock jump between the two reads (the chaos suite's clock-skew
    // caught one, 1 retry in 100) moved the retry by the size of the jump: 2 hours late.
    let (now, mono_now) = (now_ms(), crate::clock::mono_ms());
    let policy = &endpoint.retry;
    let (status_after, retry_in_ms) = match outcome {
        Outcome::Success => (Status::Success, None),
        Outcome::Failed if policy.retry_client_errors_once && n == 1 && n < policy.max_attempts => {
            (
                Status::Queued,
                Some(policy.next_delay_ms(n, None, rand::random::<f64>())),
            )
        }
        Outcome::Failed => (Status::Failed, None),
        Outcome::Retry { .. } if n >= policy.max_attempts => (Status::Exhausted, None),
        Outcome::Retry { retry_after } => (
            Status::Queued,
            Some(policy.next_delay_ms(n, retry_after, rand::random::<f64>())),
        ),
    };
    let next_due_ms = retry_in_ms.map_or(0, |d| now + d);
    let error = (status_after != Status::Success)
        .then(|| error_class(result.status, result.error.as_ref()));
    let booked = Attempted {
        seq: entry.seq,
        n,
        at_ms: started_ms,
        status_code: result.status,
        error,
        latency_ms: result.latency.as_millis() as u64,
        status_after,
        next_due_ms,
        prev_offset: entry.last_offset,
    };
    let done = match status_after {
        Status::Success => Done::Success,
        Status::Queued => Done::Retry {
            due_ms: mono_now + retry_in_ms.unwrap_or(0),
        },
        Status::Failed | Status::Exhausted => Done::Final {
            retryable_failure: matches!(outcome, Outcome::Retry { .. }),
        },
    };
    core.book(endpoint_id, &mut entry, booked, done).await;
}

impl ShardCore {
    /// Appends an attempt record and hands the outcome to the scheduler at once; once the
    /// record is durable, updates the state table, the metrics and usage, and queues a final
    /// failure for the DLQ.
    ///
    /// The record is deferred ([`ATTEMPT_RECORD_HOLD`]): it rides with the next group commit
    /// rather than forcing one, so a webhook costs one fsync, not two, at low rates. The
    /// scheduler need not wait for it: a crash before it is durable only repeats the attempt
    /// after restart (at least once, never lost), as does a log failure, after which the
    /// outcome stays in memory only.
    pub(crate) async fn book(
        self: &Rc<Self>,
        endpoint_id: &str,
        entry: &mut Entry,
        booked: Attempted,
        done: Done,
    ) {
        let status_after = booked.status_after;
        let next_due_ms = booked.next_due_ms;
        let usage = self.usage_pending(&booked);
        let queued = self
            .log
            .append_deferred(TYPE_ATTEMPTED, booked.encode(), ATTEMPT_RECORD_HOLD);
        if let Ok(offset) = queued {
            entry.last_offset = offset;
            entry.attempts = entry.attempts.max(booked.n);
        }
        self.sched
            .borrow_mut()
            .done(endpoint_id, *entry, done, crate::clock::mono_ms());
        self.wake.notify_one();
        let durable = match queued {
            Ok(offset) => self.log.wait_durable(offset).await.map(|()| offset),
            Err(e) => Err(e),
        };
        match durable {
            Ok(offset) => {
                self.note_attempt(endpoint_id, &booked, offset, usage);
                let mut table = self.table.borrow_mut();
                // A later attempt of the same delivery may have been booked meanwhile: only
                // a newer record moves the slot.
                if let Some(mut slot) = table.get(entry.seq).filter(|s| s.last_offset < offset) {
                    slot.last_offset = offset;
                    slot.status = status_after;
                    slot.attempts = u16::try_from(entry.attempts).unwrap_or(u16::MAX);
                    slot.next_due_ms = next_due_ms;
                    if let Err(e) = table.put(entry.seq, &slot) {
                        tracing::error!(shard = self.id, seq = entry.seq, error = %e, "state table write failed");
                    }
                }
            }
            Err(e) => {
                tracing::error!(shard = self.id, seq = entry.seq, error = %e, "could not record an attempt");
            }
        }
        if matches!(status_after, Status::Failed | Status::Exhausted) {
            self.queue_dead_letter(entry.seq);
        }
    }

    /// Ends a delivery that can no longer be attempted (its endpoint is gone, its record is
    /// unreadable) as `failed`, without counting an attempt (`n = 0` marks such a record).
    pub(crate) async fn finish_without_attempt(
        self: &Rc<Self>,
        endpoint_id: &str,
        mut entry: Entry,
        reason: &str,
    ) {
        let booked = Attempted {
            seq: entry.seq,
            n: 0,
            at_ms: now_ms(),
            status_code: None,
            error: Some(reason.to_string()),
            latency_ms: 0,
            status_after: Status::Failed,
            next_due_ms: 0,
            prev_offset: entry.last_offset,
        };
        self.book(
            endpoint_id,
            &mut entry,
            booked,
            Done::Final {
                retryable_failure: false,
            },
        )
        .await;
    }

    /// Queued deliveries of a deleted endpoint: they end failed (and so land in the DLQ).
    pub(crate) fn finish_orphan(self: &Rc<Self>, endpoint_id: &str, entry: Entry) {
        // The scheduler handed the entry out of its ready queue without counting it in flight;
        // count it now so that `done` balances.
        self.sched.borrow_mut().count_in_flight(endpoint_id);
        let core = self.clone();
        let endpoint_id = endpoint_id.to_string();
        tokio::task::spawn_local(async move {
            core.finish_without_attempt(&endpoint_id, entry, "endpoint_deleted")
                .await;
        });
    }
}

/// The headers sent to the receiver: the sender's (minus hop-by-hop ones, those named in its
/// `Connection` header, and [`REPLACED_HEADERS`]) plus HookRelay's
/// Standard Webhooks signature and `X-HookRelay-*` headers.
fn forward_headers(
    record: &Ingested,
    endpoint: &Endpoint,
    n: u32,
    now_ms: u64,
) -> Vec<(String, Vec<u8>)> {
    // Headers the sender named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
    let connection_named: Vec<String> = record
        .headers
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(name, _)| {
            !is_dropped_header(name)
                && !REPLACED_HEADERS.contains(&name.as_str())
                && !connection_named.contains(name)
        })
        .map(|(name, value)| (name.clone(), value.to_vec()))
        .collect();
    let timestamp = (now_ms / 1000) as i64;
    let secrets = endpoint.signing_secrets(now_ms);
    let signature = signing::sign(&secrets, &record.delivery_id, timestamp, &record.body);
    out.push(("webhook-id".into(), record.delivery_id.clone().into_bytes()));
    out.push((
        "webhook-timestamp".into(),
        timestamp.to_string().into_bytes(),
    ));
    out.push(("webhook-signature".into(), signature.into_bytes()));
    out.push((
        "x-hookrelay-delivery-id".into(),
        record.delivery_id.clone().into_bytes(),
    ));
    out.push(("x-hookrelay-attempt".into(), n.to_string().into_bytes()));
    if let Some(original) = &record.replay_of {
        out.push((
            "x-hookrelay-replay-of".into(),
            original.clone().into_bytes(),
        ));
    }
    out
}
