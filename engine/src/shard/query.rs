//! Reading a delivery back: its state from the state table, its request from the ingest record,
//! its attempt history by walking the chain of records about it (each points at the previous).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::clock::rfc3339_ms;
use crate::dlq::object::AttemptEntry;
use crate::record::{
    Attempted, DeadLettered, Ingested, Status, TYPE_ATTEMPTED, TYPE_DEAD_LETTERED,
};
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

/// Why an ingest record cannot be given back with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Missing, damaged or not an ingest record.
    Unreadable(String),
    /// Sealed under a data key that no longer exists (the tenant's data was purged).
    Purged,
}

impl ShardCore {
    /// Reads the ingest record at `offset`, opening its sealed payload when `with_payload`.
    pub(crate) fn read_ingested(
        &self,
        offset: u64,
        with_payload: bool,
    ) -> Result<Ingested, ReadError> {
        let rec = self
            .log
            .read(offset)
            .map_err(|e| ReadError::Unreadable(e.to_string()))?;
        if rec.record_type != crate::record::TYPE_INGESTED {
            return Err(ReadError::Unreadable(format!(
                "record {offset} is not an ingest record"
            )));
        }
        let mut ingested =
            Ingested::decode(rec.payload).map_err(|e| ReadError::Unreadable(e.to_string()))?;
        if with_payload && ingested.is_sealed() {
            let snapshot = self.node.meta().load();
            match snapshot.data_keys.get(&ingested.tenant_id) {
                Some((generation, key)) if *generation == ingested.key_generation => ingested
                    .unseal(key)
                    .map_err(|e| ReadError::Unreadable(e.to_string()))?,
                _ => return Err(ReadError::Purged),
            }
        }
        Ok(ingested)
    }

    /// True when the record's payload was sealed under a data key that has since been destroyed.
    pub(crate) fn is_purged(&self, ingested: &Ingested) -> bool {
        ingested.key_generation > 0
            && self
                .node
                .meta()
                .load()
                .data_keys
                .get(&ingested.tenant_id)
                .is_none_or(|(generation, _)| *generation != ingested.key_generation)
    }

    /// The ingest record and history of delivery `seq`, checked against `delivery_id`.
    pub(crate) fn load_delivery(
        &self,
        seq: u64,
        delivery_id: &str,
    ) -> Option<(Ingested, History, Status)> {
        let slot = self.table.borrow().get(seq)?;
        let status = slot.status;
        let ingested = self.read_ingested(slot.ingest_offset, true).ok()?;
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

    /// The tenant and status of delivery `seq`, checked against `delivery_id`; `None` when
    /// unknown or purged. Reads the ingest record's header fields only, never the payload.
    pub fn status(&self, seq: u64, delivery_id: &str) -> Option<(String, Status)> {
        let slot = self.table.borrow().get(seq)?;
        let rec = self.read_ingested(slot.ingest_offset, false).ok()?;
        (rec.delivery_id == delivery_id && !self.is_purged(&rec))
            .then_some((rec.tenant_id, slot.status))
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
