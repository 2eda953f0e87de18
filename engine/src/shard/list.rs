//! `GET /v1/deliveries`: a page of one tenant's deliveries, newest first, served from the state
//! table and the log — never from an in-memory list of deliveries.
//!
//! Each shard scans its state table downward from a position (its highest sequence number on
//! the first page), skipping slots whose endpoint tag is not one of the tenant's endpoints
//! without touching the log, and reading the ingest record only of candidates. A scan examines
//! at most [`SCAN_SLOTS_MAX`] slots per request, so a query costs bounded time and memory
//! whatever the history; when the bound stops a shard early, the page may be short and the
//! cursor resumes the scan. The router merges the shards' pages by creation time.

use std::collections::HashSet;

use serde::Serialize;

use crate::clock::rfc3339_ms;
use crate::record::Status;
use crate::shard::core::ShardCore;

/// Slots one shard examines for one page.
pub const SCAN_SLOTS_MAX: u64 = 1 << 20;
/// Largest page.
pub const LIMIT_MAX: usize = 1000;

/// Filters of a list query, resolved by the caller (tenant scoping, endpoint tags).
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub tenant_id: String,
    /// Only this endpoint.
    pub endpoint_id: Option<String>,
    /// Endpoint tags of the tenant's endpoints (or of `endpoint_id`): slots with another tag
    /// are skipped without reading the log.
    pub endpoint_tags: HashSet<u32>,
    pub status: Option<Status>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

/// A delivery in a list.
#[derive(Debug, Clone, Serialize)]
pub struct DeliverySummary {
    pub id: String,
    pub endpoint_id: String,
    pub tenant_id: String,
    pub status: &'static str,
    pub attempts: u32,
    pub created_at: String,
    pub last_error: Option<String>,
    pub replay_of: Option<String>,
    pub idempotency_key: String,
    #[serde(skip)]
    pub created_ms: u64,
    #[serde(skip)]
    pub seq: u64,
}

/// One shard's answer.
#[derive(Debug, Clone, Default)]
pub struct ShardPage {
    pub items: Vec<DeliverySummary>,
    /// Where this shard's next scan starts (scanning downward), or `None` when it has no more.
    pub next_from: Option<u64>,
}

impl ShardCore {
    /// Scans downward from `from` (inclusive; `None` = newest).
    pub fn list(&self, q: &ListQuery, from: Option<u64>) -> ShardPage {
        let end = self.next_seq.get();
        let mut seq = match from {
            Some(f) => f.min(end),
            None => end,
        };
        // `seq` is one past the next slot to examine.
        let mut page = ShardPage::default();
        let mut examined = 0u64;
        // Slots below the lowest live seq are stale: retention deleted their records.
        let floor = self.retention.first_seq();
        while seq > floor {
            if page.items.len() >= q.limit.min(LIMIT_MAX) || examined >= SCAN_SLOTS_MAX {
                page.next_from = Some(seq);
                return page;
            }
            seq -= 1;
            examined += 1;
            let Some(slot) = self.table.borrow().get(seq) else {
                continue;
            };
            if q.status.is_some_and(|s| s != slot.status)
                || !q.endpoint_tags.contains(&slot.endpoint_tag)
            {
                continue;
            }
            let Ok(rec) = self.read_ingested(slot.ingest_offset, false) else {
                continue;
            };
            if self.is_purged(&rec) {
                continue;
            }
            if rec.tenant_id != q.tenant_id
                || q.endpoint_id
                    .as_ref()
                    .is_some_and(|e| *e != rec.endpoint_id)
            {
                continue;
            }
            if q.until_ms.is_some_and(|u| rec.received_at_ms > u) {
                continue;
            }
            if q.since_ms.is_some_and(|s| rec.received_at_ms < s) {
                // Sequence numbers follow arrival: everything further down is older.
                return page;
            }
            let history = self.history(slot.last_offset, slot.ingest_offset);
            page.items.push(DeliverySummary {
                id: rec.delivery_id,
                endpoint_id: rec.endpoint_id,
                tenant_id: rec.tenant_id,
                status: slot.status.as_str(),
                attempts: history.attempts.iter().filter(|a| a.n > 0).count() as u32,
                created_at: rfc3339_ms(rec.received_at_ms),
                last_error: history.last_error(),
                replay_of: rec.replay_of,
                idempotency_key: rec.idempotency_key,
                created_ms: rec.received_at_ms,
                seq,
            });
        }
        page
    }
}
