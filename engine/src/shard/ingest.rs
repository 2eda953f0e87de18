//! The hot path: an ingest request becomes a durable record, then a queued delivery.

use std::rc::Rc;

use crate::idempotency::{Fingerprint, Hit};
use crate::ids;
use crate::record::{Ingested, IngestedHead, Status, TYPE_INGESTED};
use crate::shard::core::{ShardCore, endpoint_tag};
use crate::shard::scheduler::Entry;
use crate::shard::{IngestError, IngestOk, IngestRequest};
use crate::state_table::Slot;

impl ShardCore {
    /// Dedupes, appends and waits for the fsync; the delivery is scheduled only once durable.
    pub async fn ingest(self: &Rc<Self>, req: IngestRequest) -> Result<IngestOk, IngestError> {
        if self.node.is_stopping() {
            return Err(IngestError::Unavailable("shutting down".into()));
        }
        if self.is_poisoned() {
            return Err(IngestError::Unavailable(
                "the shard's log stopped taking writes after a disk error".into(),
            ));
        }
        if !self.node.replication().is_primary() {
            return Err(IngestError::Unavailable(
                "this node is not the primary (fenced by a newer epoch)".into(),
            ));
        }
        let key = Fingerprint::of(&req.endpoint_id, &req.idempotency_key);
        let hit = self
            .idem
            .borrow()
            .lookup_fingerprint(key, req.received_at_ms);
        if let Some(hit) = hit
            && let Some(answer) = self.confirm_duplicate(&req, hit).await?
        {
            return answer;
        }

        let hash = req.payload.body_hash();
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        let delivery_id = ids::delivery_id(req.received_at_ms, self.id, seq);
        let head = IngestedHead {
            seq,
            delivery_id: &delivery_id,
            tenant_id: &req.tenant_id,
            endpoint_id: &req.endpoint_id,
            received_at_ms: req.received_at_ms,
            idempotency_key: &req.idempotency_key,
            body_hash: hash,
            replay_of: req.replay_of.as_deref(),
        };
        // Payloads are sealed under the tenant's data key (crypto-shredding on purge).
        let meta = self.node.meta().load();
        let seal = meta
            .data_keys
            .get(&req.tenant_id)
            .map(|(generation, key)| (*generation, &**key));
        let encoded = head.encode(req.payload.as_bytes(), seal);
        drop(meta);
        // The index and the state table take the delivery before the log does: if either
        // cannot (a full disk while growing a file), nothing is appended and the sender gets a
        // 503 to retry — never an ACK whose duplicate could not be detected. No await from here
        // to the append, so the predicted offset is the one the append returns.
        let offset = self.log.next_offset();
        let refuse = |what: &str, e: &dyn std::fmt::Display| {
            self.next_seq.set(seq);
            tracing::error!(shard = self.id, seq, error = %e, "{what} failed; ingest refused");
            IngestError::Unavailable(format!("{what} failed: {e}"))
        };
        self.idem
            .borrow_mut()
            .insert_new_fingerprint(key, hash, offset, req.received_at_ms)
            .map_err(|e| refuse("idempotency index insert", &e))?;
        let slot = Slot {
            ingest_offset: offset,
            last_offset: offset,
            next_due_ms: 0,
            status: Status::Queued,
            flags: 0,
            attempts: 0,
            endpoint_tag: endpoint_tag(&req.endpoint_id),
        };
        self.table
            .borrow_mut()
            .put(seq, &slot)
            .map_err(|e| refuse("state table write", &e))?;
        self.tend_files(req.received_at_ms);
        let appended = self
            .log
            .append_nowait(TYPE_INGESTED, encoded)
            .map_err(|e| refuse("log append", &e))?;
        assert_eq!(
            appended, offset,
            "the log moved between the prediction and the append"
        );
        self.log.wait_durable(offset).await.map_err(|e| {
            self.node.mark_poisoned_once(self.id);
            IngestError::Unavailable(format!("fsync failed: {e}"))
        })?;
        let entry = Entry {
            seq,
            ingest_offset: offset,
            last_offset: offset,
            attempts: 0,
        };
        self.sched
            .borrow_mut()
            .admit(&req.endpoint_id, entry, None, crate::clock::mono_ms());
        self.note_ingested(&req.endpoint_id, &req.tenant_id, req.received_at_ms);
        self.wake.notify_one();
        // With `replication.ack = "peer"` the sender hears 2xx only once the peer holds the
        // record too. On a timeout it gets a 503 and retries with the same idempotency key; the
        // record is durable here and is delivered either way (at least once).
        self.node
            .replication()
            .wait_peer(self.id, offset)
            .await
            .map_err(IngestError::Unavailable)?;
        Ok(IngestOk::Accepted { delivery_id })
    }

    /// Confirms an index hit against the log. `Ok(None)`: not a duplicate after all (a stale or
    /// colliding index entry). `Ok(Some(answer))`: the answer to give.
    async fn confirm_duplicate(
        &self,
        req: &IngestRequest,
        hit: Hit,
    ) -> Result<Option<Result<IngestOk, IngestError>>, IngestError> {
        if hit.offset < self.log.first_offset() || hit.offset >= self.log.next_offset() {
            return Ok(None);
        }
        // The first request may still be waiting for its fsync: a duplicate must not be
        // answered 200 before the original is durable.
        self.log
            .wait_durable(hit.offset)
            .await
            .map_err(|e| IngestError::Unavailable(format!("fsync failed: {e}")))?;
        let Ok(rec) = self.log.read(hit.offset) else {
            return Ok(None);
        };
        if rec.record_type != TYPE_INGESTED {
            return Ok(None);
        }
        let Ok(first) = Ingested::decode(rec.payload) else {
            return Ok(None);
        };
        if first.endpoint_id != req.endpoint_id || first.idempotency_key != req.idempotency_key {
            return Ok(None);
        }
        // The body is hashed the way the first record was (records of earlier releases hold
        // another hash than the payload's); only duplicates take this path.
        if first.body_hash != first.algorithms.body_hash().of(req.payload.body()) {
            return Ok(Some(Err(IngestError::KeyReused)));
        }
        // A duplicate is answered like the first request: with `ack = "peer"`, only once the
        // peer holds the first delivery.
        self.node
            .replication()
            .wait_peer(self.id, hit.offset)
            .await
            .map_err(IngestError::Unavailable)?;
        let status = self
            .table
            .borrow()
            .get(first.seq)
            .map(|s| s.status)
            .unwrap_or(Status::Queued);
        Ok(Some(Ok(IngestOk::Duplicate {
            delivery_id: first.delivery_id,
            status,
        })))
    }
}

#[cfg(test)]
mod tests {
    use crate::backoff::RetryPolicy;
    use crate::clock::now_ms;
    use crate::meta::{Endpoint, EndpointSecrets, MetaOp, Verification};
    use crate::node::{EngineConfig, Node};
    use crate::record::IngestPayload;
    use crate::shard::{IngestError, IngestOk, IngestRequest, ShardCore};

    fn request(key: &str, received_at_ms: u64) -> IngestRequest {
        IngestRequest {
            endpoint_id: "ep_held".into(),
            tenant_id: "tn_t".into(),
            payload: IngestPayload::encode([], format!("body-{key}").as_bytes()),
            idempotency_key: key.into(),
            received_at_ms,
            replay_of: None,
        }
    }

    /// Regression (found by the chaos suite's disk-full scenario): when the idempotency index
    /// cannot take a key, ingest must refuse *before* appending — never ACK a delivery whose
    /// duplicate could not be detected, and never leave an un-ACKed record to be delivered.
    #[test]
    fn a_failing_index_refuses_ingest_before_the_append() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = EngineConfig::new(dir.path(), 1);
            config.log_io = hookrelay_log::IoMode::Portable;
            let node = Node::open(config).expect("node");
            node.meta()
                .apply(vec![MetaOp::PutEndpoint(Box::new(Endpoint {
                    id: "ep_held".into(),
                    tenant_id: "tn_t".into(),
                    name: None,
                    destination_url: "http://127.0.0.1:9/".into(),
                    verification: Verification {
                        mode: crate::verify::Mode::None,
                        secret: "s".into(),
                        previous_secret: None,
                        previous_valid_until_ms: None,
                    },
                    secrets: EndpointSecrets {
                        signing_secret: "whsec_dGVzdA==".into(),
                        previous_signing_secret: None,
                        previous_signing_valid_until_ms: None,
                    },
                    retry: RetryPolicy::default(),
                    timeout_ms: 1000,
                    max_in_flight: 1,
                    rate_limit_per_s: None,
                    allowed_source_ips: None,
                    ordering: "none".into(),
                    paused: true,
                    created_at: "2026-01-01T00:00:00.000Z".into(),
                }))])
                .await
                .expect("endpoint");
            let core = ShardCore::open(0, node.clone()).await.expect("shard");
            let now = now_ms();
            let ok = core.ingest(request("a", now)).await.expect("first ingest");
            assert!(matches!(ok, IngestOk::Accepted { .. }));
            let (offset, seq) = (core.log.next_offset(), core.next_seq.get());

            // The index can no longer create files: a key of another day needs a new bucket.
            std::fs::remove_dir_all(dir.path().join("shards/000/idempotency")).expect("rm");
            let refused = core.ingest(request("b", now + 2 * 86_400_000)).await;
            assert!(
                matches!(refused, Err(IngestError::Unavailable(_))),
                "{refused:?}"
            );
            assert_eq!(core.log.next_offset(), offset, "nothing appended");
            assert_eq!(core.next_seq.get(), seq, "sequence number given back");
            core.log.close().await.expect("close");
        });
    }
}
