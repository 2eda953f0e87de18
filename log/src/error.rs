//! The log's error type: what failed, and where (path, byte position or offset).
//!
//! Operating errors (disk full, a torn segment, a closed log) are values of [`Error`];
//! programmer errors (offsets going backwards, a frame whose length disagrees with its header)
//! are assertions and panic instead.

use std::path::PathBuf;

/// Everything that can go wrong when opening, writing or reading a log.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// An operating-system I/O call failed on `path`.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A segment or index holds bytes that are not a valid frame where one must be.
    /// Never skipped: the log refuses to serve (or to open) until an operator repairs it.
    #[error("corrupt segment {segment} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file (or index file) that is damaged.
        segment: PathBuf,
        /// Byte position inside that file where the damage starts.
        position: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A frame (header + payload) is bigger than [`crate::Options::frame_bytes_max`].
    #[error("frame of {len} bytes (header + payload) exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Frame length in bytes, header included.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// The offset is not (or no longer, or not yet durably) in the log.
    #[error("offset {offset} is outside the readable range {first_offset}..{durable_offset}")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// First offset still retained.
        first_offset: u64,
        /// First offset not yet durable (exclusive end of the readable range).
        durable_offset: u64,
    },
    /// Too many bytes are queued for the committer; the caller should shed load (503/429).
    #[error("{pending_bytes} bytes already wait for the committer (limit {max})")]
    Backlogged {
        /// Bytes queued when the append was refused.
        pending_bytes: usize,
        /// [`crate::Options::pending_bytes_max`].
        max: usize,
    },
    /// A write or fsync failed earlier; the log takes no more writes until it is reopened
    /// (retrying an fsync after a failure can silently lose data — "fsyncgate").
    #[error("the log is poisoned by an earlier write or fsync failure; reopen it")]
    Poisoned,
    /// [`crate::Log::append_replicated`] was given an offset other than the log's next offset
    /// (a replica must write the primary's frames at the same offsets, without gaps).
    #[error("replicated frame has offset {got}, the log expects {expected}")]
    OffsetMismatch {
        /// The offset the next frame must carry ([`crate::Log::next_offset`]).
        expected: u64,
        /// The offset the caller supplied.
        got: u64,
    },
    /// [`crate::Log::append_replicated`] was given a frame of an older epoch than the log's
    /// current one (frames' epochs never decrease in offset order).
    #[error("replicated frame has epoch {epoch}, older than the log's epoch {current}")]
    StaleEpoch {
        /// The epoch the caller supplied.
        epoch: u32,
        /// The log's current epoch ([`crate::Log::epoch`]).
        current: u32,
    },
    /// The log was closed with [`crate::Log::close`].
    #[error("the log is closed")]
    Closed,
    /// `IoMode::Uring` (or `HOOKRELAY_LOG_IO=uring`) was asked for but cannot be used.
    #[error("io_uring backend unavailable: {reason}")]
    UringUnavailable {
        /// Why the probe failed.
        reason: String,
    },
    /// [`crate::Options`] holds a value outside its allowed range.
    #[error("invalid log options: {reason}")]
    InvalidOptions {
        /// Which field and why.
        reason: String,
    },
}

impl Error {
    /// Wraps an `std::io::Error` with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A corruption report for `segment` at byte `position`.
    pub(crate) fn corrupt(
        segment: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            segment: segment.into(),
            position,
            reason: reason.into(),
        }
    }
}
