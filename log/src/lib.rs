//! `hookrelay-log`: a segmented, checksummed, group-committed append log.
//!
//! Storage only: it stores `(record type, payload)` frames at sequence-number offsets and knows
//! nothing about webhooks. One [`Log`] per shard, used from that shard's thread only.
//!
//! Read first: [`Log`] (the handle and its promises), then `commit.rs` (group commit and
//! poisoning), `recovery.rs` (what open does to a damaged directory), `frame.rs`, `segment.rs`
//! and `index.rs` (the on-disk format, also described in the crate's README), and `io/` (the
//! io_uring / portable / simulated backends behind one small trait).
//!
//! Architecture invariants: an append resolves only after its frame is fsynced; readers see
//! durable records only; a failed write or fsync poisons the log until it is reopened; a bad
//! frame is either a torn tail of the active segment (cut and reported) or an [`Error::Corrupt`],
//! never skipped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]
#![warn(missing_docs)]

mod commit;
mod error;
mod frame;
mod index;
mod io;
mod log;
mod offline;
mod options;
mod pace;
mod prealloc;
mod reader;
mod recent;
mod recovery;
mod segment;

pub use error::Error;
pub use frame::FRAME_HEADER_BYTES;
pub use io::{IO_ENV, IoKind, IoMode, SimDisk};
pub use log::{COMMIT_BOUNDS_US, CommitTimes, Log, Recovery, SegmentInfo, Stats};
pub use offline::{TruncateOutcome, reset_dir, truncate_dir};
pub use options::{FRAME_BYTES_LIMIT, Options};
pub use reader::Reader;
pub use segment::{Record, SEGMENT_HEADER_BYTES};
