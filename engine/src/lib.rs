//! HookRelay's domain: shards, records, idempotency index, timer wheel, delivery, DLQ and
//! metadata. Architecture Invariant: no HTTP routing lives here — the `api` crate turns
//! requests into calls on [`shard::ShardCtx`] and [`meta::Meta`]; this crate never sees a
//! hyper request. It depends on `hookrelay-log` for storage and on nothing above it.
//!
//! Read first: [`node::Node`] (what all threads share), [`shard`] (one thread's state and the
//! hot path), [`record`] (what goes into the log), [`meta`] (tenants, endpoints, keys).

pub mod audit;
pub mod backoff;
pub mod checked_line;
pub mod clock;
pub mod delivery;
pub mod dlq;
pub mod idempotency;
pub mod ids;
pub mod meta;
pub mod metrics;
pub mod node;
mod prealloc;
pub mod record;
pub mod replication;
pub mod seal;
pub mod shard;
pub mod signing;
pub mod state_table;
pub mod verify;
pub mod wheel;
