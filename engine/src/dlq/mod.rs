//! The dead-letter queue: the contract's JSON object and its stores.
//!
//! Code map: `object.rs` (the object, its key, its bytes), `local.rs` (`dlq.backend = "local"`,
//! files under `<data_dir>/dlq`), `s3.rs` (`dlq.backend = "s3"`, aws-sdk-s3 on its own
//! runtime), `store.rs` (the handle shards and API share over either backend, with the shipping
//! bound and backoff), `metrics.rs` (the shipping counters of `/metrics`). The shipper itself is
//! `shard/dead_letter.rs`.

pub mod error;
pub mod local;
pub mod metrics;
pub mod object;
pub mod s3;
pub mod store;

pub use error::{Error, Result};
pub use store::{Store, StoreOptions};
