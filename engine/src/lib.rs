//! HookRelay's domain: shards, records, idempotency index, timer wheel, delivery, DLQ and
//! metadata. No HTTP routing lives here: the `api` crate turns requests into calls on this crate.

pub mod backoff;
pub mod delivery;
pub mod dlq;
pub mod idempotency;
pub mod signing;
pub mod state_table;
pub mod verify;
pub mod wheel;
