//! Shipping final failures to the DLQ. A delivery that ends `failed` or `exhausted` is queued
//! here; a single shipping task per shard stores its DLQ object (file + directory fsynced) and
//! then appends a `DeadLettered` record. Errors are retried with backoff forever: an outage of
//! the store delays shipping, it never drops a record. A crash before the record is written
//! re-ships on recovery; a second put of the same key is harmless (it replaces the object).

use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;

use crate::clock::{now_ms, rfc3339_ms};
use crate::dlq::object::{DlqObject, FinalStatus, object_key};
use crate::record::{DeadLettered, Status, TYPE_DEAD_LETTERED};
use crate::shard::core::ShardCore;
use crate::shard::query::{ReadError, header_map};

/// Flag bit in a state-table slot: the delivery's DLQ object is stored.
pub(crate) const FLAG_DEAD_LETTERED: u8 = 1;
/// Longest wait between retries of a failing DLQ store.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);

impl ShardCore {
    /// Queues delivery `seq` (final, failed or exhausted) for the DLQ.
    pub(crate) fn queue_dead_letter(self: &Rc<Self>, seq: u64) {
        self.to_dead_letter.borrow_mut().push_back(seq);
        if !self.dead_letter_running.get() {
            self.dead_letter_running.set(true);
            tokio::task::spawn_local(ship_loop(self.clone()));
        }
    }

    /// Stores one DLQ object and records it. `Ok` also when there is nothing (left) to do.
    async fn ship(self: &Rc<Self>, seq: u64) -> Result<(), String> {
        let Some(slot) = self.table.borrow().get(seq) else {
            return Ok(());
        };
        if slot.flags & FLAG_DEAD_LETTERED != 0 {
            return Ok(());
        }
        let final_status = match Some(slot.status) {
            Some(Status::Failed) => FinalStatus::Failed,
            Some(Status::Exhausted) => FinalStatus::Exhausted,
            _ => return Ok(()),
        };
        if slot.ingest_offset < self.log.first_offset() {
            // Retention deletes only dead-lettered failures, so this is a stale slot; retrying
            // could never read the record, and would hold up every later shipment.
            tracing::error!(
                shard = self.id,
                seq,
                "DLQ: ingest record already deleted; nothing to ship"
            );
            return Ok(());
        }
        self.log
            .wait_durable(slot.last_offset)
            .await
            .map_err(|e| e.to_string())?;
        let rec = match self.read_ingested(slot.ingest_offset, true) {
            Ok(rec) => rec,
            Err(ReadError::Purged) => {
                // Its payload was crypto-shredded: there is nothing left to dead-letter.
                let mut table = self.table.borrow_mut();
                if let Some(mut slot) = table.get(seq) {
                    slot.flags |= FLAG_DEAD_LETTERED;
                    table.put(seq, &slot).map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            Err(ReadError::Unreadable(reason)) => return Err(reason),
        };
        let history = self.history(slot.last_offset, slot.ingest_offset);
        let final_at_ms = history.attempts.last().map_or(now_ms(), |a| a.at_ms);
        let final_at = crate::clock::datetime_ms(final_at_ms);
        let key = object_key(&rec.tenant_id, &rec.endpoint_id, final_at, &rec.delivery_id);
        let object = DlqObject {
            delivery_id: rec.delivery_id.clone(),
            tenant_id: rec.tenant_id.clone(),
            endpoint_id: rec.endpoint_id.clone(),
            final_status,
            headers: header_map(&rec.headers),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&rec.body),
            attempt_history: history.entries(),
            first_seen_at: rfc3339_ms(rec.received_at_ms),
            exhausted_at: rfc3339_ms(final_at_ms),
        };
        let store = self.dlq.clone();
        let put_key = key.clone();
        tokio::task::spawn_blocking(move || store.put(&put_key, &object))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let record = DeadLettered {
            seq,
            key,
            at_ms: now_ms(),
            prev_offset: slot.last_offset,
        };
        let offset = self
            .log
            .append(TYPE_DEAD_LETTERED, record.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut table = self.table.borrow_mut();
        if let Some(mut slot) = table.get(seq) {
            slot.flags |= FLAG_DEAD_LETTERED;
            slot.last_offset = offset;
            table.put(seq, &slot).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

async fn ship_loop(core: Rc<ShardCore>) {
    loop {
        let next = core.to_dead_letter.borrow_mut().pop_front();
        let Some(seq) = next else {
            break;
        };
        let mut delay = Duration::from_millis(100);
        while let Err(reason) = core.ship(seq).await {
            tracing::warn!(shard = core.id, seq, %reason, "DLQ store failed; retrying");
            if core.node.is_stopping() || core.retired.get() || core.is_poisoned() {
                // Recovery re-ships whatever has no DeadLettered record.
                core.dead_letter_running.set(false);
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }
    core.dead_letter_running.set(false);
}
