//! [`Options`]: how a log is laid out on disk, batched and written. Plain data, validated on
//! [`crate::Log::open`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::frame::FRAME_HEADER_BYTES;
use crate::io::IoMode;
use crate::segment::SEGMENT_HEADER_BYTES;

/// Hard ceiling for [`Options::frame_bytes_max`]: frame lengths are u32 on disk, and a single
/// frame bigger than this would be a configuration mistake rather than a record.
pub const FRAME_BYTES_LIMIT: u32 = 1 << 30;

/// Configuration of one log (one shard's directory of segments).
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory holding the segments; created if missing.
    pub dir: PathBuf,
    /// Roll the active segment once appending the next frame would make it bigger than this.
    /// A segment always takes at least one frame. Default 128 MiB.
    pub segment_bytes_max: u64,
    /// Roll the active segment once it is older than this (checked on append). Default 1 h.
    pub segment_age_max: Duration,
    /// Upper bound of one group-commit batch (one write + one fdatasync). A single frame larger
    /// than this is written alone. Default 1 MiB.
    pub batch_bytes_max: usize,
    /// The least time between the starts of two batches, unless a full batch is queued: caps
    /// the fsync rate at one per `batch_linger` under load. A record that arrives after a quiet
    /// spell is written at once. Microsecond resolution (a timerfd). Default 0 (write as soon as
    /// the previous fsync finished).
    pub batch_linger: Duration,
    /// Largest frame (24-byte header + payload) accepted on write and on read. Must never shrink
    /// for an existing log: larger frames already on disk would then read as damaged.
    /// Default 8 MiB.
    pub frame_bytes_max: u32,
    /// Which I/O backend to use. Default [`IoMode::Auto`].
    pub io: IoMode,
    /// One sparse-index entry per this many segment bytes. Default 4096.
    pub index_interval_bytes: u32,
    /// Bytes that may wait for the committer; beyond it appends fail with
    /// [`Error::Backlogged`]. Default 64 MiB.
    pub pending_bytes_max: usize,
    /// Re-check the CRC of every frame of every sealed segment on open (a full read of the
    /// retained log). When false, sealed segments are trusted up to their index file, and damage
    /// is still reported (as [`Error::Corrupt`]) when a damaged frame is read. Default true.
    pub verify_sealed_on_open: bool,
    /// Zero-fill the active segment this far ahead of the write position, in the background
    /// (see the `prealloc` module): an fdatasync then only has to write data, not the journal
    /// entry of a growing file. 0 turns it off; the simulated disk never preallocates.
    /// Default 1 MiB.
    pub preallocate_bytes: u64,
    /// Write the active segment with `O_DIRECT`, around the page cache (see the `io::direct`
    /// module), where the filesystem takes it; elsewhere (tmpfs) and on the simulated disk the
    /// log writes buffered. Less CPU per record at moderate rates on the project's machine,
    /// the same tail and saturated rate within the noise (BENCHMARKS.md §2, "Direct I/O").
    /// Default false.
    pub direct_io: bool,
    /// With direct writes, bytes of the newest batches of the active segment kept in memory for
    /// reads (see the `recent` module): a delivery reads its record soon after it was written,
    /// and the page cache does not have it. Buffered writes leave it in the page cache and keep
    /// nothing here. 0 turns it off. Default 4 MiB.
    pub recent_bytes_max: usize,
}

impl Options {
    /// Defaults for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options {
            dir: dir.into(),
            segment_bytes_max: 128 * 1024 * 1024,
            segment_age_max: Duration::from_secs(3600),
            batch_bytes_max: 1024 * 1024,
            batch_linger: Duration::ZERO,
            frame_bytes_max: 8 * 1024 * 1024,
            io: IoMode::Auto,
            index_interval_bytes: 4096,
            pending_bytes_max: 64 * 1024 * 1024,
            verify_sealed_on_open: true,
            preallocate_bytes: 1024 * 1024,
            direct_io: false,
            recent_bytes_max: 4 * 1024 * 1024,
        }
    }

    /// Checks every field against its allowed range.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::InvalidOptions { reason });
        if self.segment_bytes_max <= SEGMENT_HEADER_BYTES as u64 {
            return bad(format!(
                "segment_bytes_max {} must exceed the {SEGMENT_HEADER_BYTES}-byte segment header",
                self.segment_bytes_max
            ));
        }
        if self.batch_bytes_max == 0 {
            return bad("batch_bytes_max must be > 0".into());
        }
        if (self.frame_bytes_max as usize) < FRAME_HEADER_BYTES
            || self.frame_bytes_max > FRAME_BYTES_LIMIT
        {
            return bad(format!(
                "frame_bytes_max {} must be in {FRAME_HEADER_BYTES}..={FRAME_BYTES_LIMIT}",
                self.frame_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be > 0".into());
        }
        if self.pending_bytes_max < self.frame_bytes_max as usize {
            return bad("pending_bytes_max must be >= frame_bytes_max".into());
        }
        Ok(())
    }
}
