//! Reading a delivery back: its state from the state table, its request from the ingest record,
//! its attempt history by walking the chain of records about it (each points at the previous).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::clock::rfc3339_ms;
use crate::dlq::object::AttemptEntry;
use crate::record::{Attempted, DeadLettered, Ingested, Status, TYPE_ATTEMPTED, TYPE_DEAD_LETTERED};
use crate::shard::core::ShardCore;

/// Longest attempt chain walked (max_attempts is at most 100; leaves room for other records).
const HISTORY_RECORDS_MAX: usize = 1024;

/// `GET /v1/deliveries/{id}` as CONTRACT.md shapes it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    pub id: String,
    pub endpoint_id: String,
    pub tenant_id: String,
    pub status: &'static str,
    pub attempts: u32,
    pub created_at: String,
    pub last_error: Option<String>,
    pub replay_of: Option<String>,
    pub idempotency_key: String,
    pub attempt_history: Vec<AttemptEntry>,
    pub request: RequestView,
    /// Where the delivery's DLQ object is, once dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlq_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub headers: BTreeMap<String, String>,
    pub body_base64: String,
}

/// What the chain of records says about a delivery.
pub(crate) struct History {
    pub attempts: Vec<Attempted>,
    pub dead_lettered: Option<DeadLettered>,
}

impl History {
    /// Attempt entries in the contract's shape, oldest first (no-attempt records excluded).
    pub fn entries(&self) -> Vec<AttemptEntry> {
        self.attempts
            .iter()
            .filter(|a| a.n > 0)
            .map(|a| AttemptEntry {
                n: a.n,
                at: rfc3339_ms(a.at_ms),
                status_code: a.status_code,
                error: a.error.clone(),
                latency_ms: a.latency_ms,
            })
            .collect()
    }
    pub fn last_error(&self) -> Option<String> {
        self.attempts.last().and_then(|a| a.error.clone())
    }
}

/// Headers as a JSON object; repeated headers are joined with ", " (RFC 9110 §5.3).
pub(crate) fn header_map(headers: &[(String, bytes::Bytes)]) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value);
        map.entry(name.clone())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

impl ShardCore {
    /// The ingest record and history of delivery `seq`, checked against `delivery_id`.
    pub(crate) fn load_delivery(&self, seq: u64, delivery_id: &str) -> Option<(Ingested, History, Status)> {
        let slot = self.table.borrow().get(seq)?;
        let status = slot.status;
        let rec = self.log.read(slot.ingest_offset).ok()?;
        let ingested = Ingested::decode(rec.payload).ok()?;
        if ingested.delivery_id != delivery_id {
            return None;
        }
        let history = self.history(slot.last_offset, slot.ingest_offset);
        Some((ingested, history, status))
    }

    /// Walks the chain back from `last_offset` to the ingest record.
    pub(crate) fn history(&self, last_offset: u64, ingest_offset: u64) -> History {
        let mut attempts = Vec::new();
        let mut dead_lettered = None;
        let mut offset = last_offset;
        for _ in 0..HISTORY_RECORDS_MAX {
            if offset == ingest_offset {
                break;
            }
            let Ok(rec) = self.log.read(offset) else {
                tracing::warn!(shard = self.id, offset, "attempt history record unreadable");
                break;
            };
            match rec.record_type {
                TYPE_ATTEMPTED => match Attempted::decode(rec.payload) {
                    Ok(a) => {
                        offset = a.prev_offset;
                        attempts.push(a);
                    }
                    Err(_) => break,
                },
                TYPE_DEAD_LETTERED => match DeadLettered::decode(rec.payload) {
                    Ok(d) => {
                        offset = d.prev_offset;
                        dead_lettered = Some(d);
                    }
                    Err(_) => break,
                },
                _ => break,
            }
        }
        attempts.reverse();
        History {
            attempts,
            dead_lettered,
        }
    }

    /// `GET /v1/deliveries/{id}`.
    pub fn delivery(&self, seq: u64, delivery_id: &str) -> Option<DeliveryDetail> {
        let (rec, history, status) = self.load_delivery(seq, delivery_id)?;
        let entries = history.entries();
        Some(DeliveryDetail {
            id: rec.delivery_id,
            endpoint_id: rec.endpoint_id,
            tenant_id: rec.tenant_id,
            status: status.as_str(),
            attempts: entries.len() as u32,
            created_at: rfc3339_ms(rec.received_at_ms),
            last_error: history.last_error(),
            replay_of: rec.replay_of,
            idempotency_key: rec.idempotency_key,
            attempt_history: entries,
            request: RequestView {
                headers: header_map(&rec.headers),
                body_base64: base64::engine::general_purpose::STANDARD.encode(&rec.body),
            },
            dlq_key: history.dead_lettered.map(|d| d.key),
        })
    }
}
