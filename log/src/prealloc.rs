//! Zero-filling the active segment ahead of the write position.
//!
//! An `fdatasync` of a file that grew must also commit the journal entry of the new size and of
//! the blocks just allocated; an `fdatasync` of bytes overwritten inside the file's size only
//! writes the data. On ext4 that halves the fsync's latency and its CPU for batches of a few KiB
//! (BENCHMARKS.md, "Preallocated segments"). PostgreSQL zero-fills its WAL segments for the same
//! reason; `fallocate` does not help, since its unwritten extents are converted — journaled —
//! on the first write.
//!
//! So, on the blocking pool, one chunk at a time, the committer has `[from, to)` written with
//! zeros and fsynced while it keeps writing batches below `from`. A batch that would end past
//! the zeroed region first waits for the chunk in flight: the committer and the zero-filler never
//! write the same bytes. If the committer outruns the zeroing anyway it writes past it, growing
//! the file as it would without preallocation.
//!
//! A log dropped without `close` may leave a chunk in flight. It is cancelled (checked before
//! every write of zeros) and every chunk is written under one process-wide lock that recovery
//! also takes, so a log reopened in the same process never has zeros land on its new data.
//!
//! The zeroed tail is never data: recovery drops a tail of zeros without counting it as torn
//! (`recovery::recover_active`), and a segment is cut back to its data before it is sealed and
//! when the log is closed. A failed zero-fill (a full disk) only stops preallocation for that
//! segment; the committer's own writes report the disk's state.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinHandle;

/// Zeros written per `pwrite` of a chunk, aligned for direct writes.
#[repr(C, align(4096))]
struct Zeros([u8; 64 * 1024]);
static ZEROS: Zeros = Zeros([0; 64 * 1024]);

/// Held while a chunk is written, and by recovery while it scans and cuts an active segment.
static ZERO_FILL: Mutex<()> = Mutex::new(());

/// Waits until no chunk is being written, and keeps it so: recovery holds this while it reads
/// and cuts an active segment that a dropped log may still have been zero-filling.
pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    ZERO_FILL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The zero-filled region of the active segment and the chunk being written.
pub(crate) struct Prealloc {
    /// A write handle on the active segment for the blocking pool; `None` when preallocation is
    /// off (by option or on the simulated disk) and writes are buffered.
    file: Option<Arc<File>>,
    /// False after a failed zero-fill: no more chunks for this segment (it is still trimmed).
    zeroing: bool,
    /// End of the zeros already durable (below it: data or those zeros).
    ready_to: u64,
    /// The chunk in flight: `[from, to)` and its job. The committer writes freely below `from`.
    job: Option<(u64, u64, JoinHandle<io::Result<()>>)>,
    /// Chunk size.
    chunk: u64,
    /// Never zero past this (the segment size limit).
    limit: u64,
    /// Chunk boundaries are multiples of this: [`crate::io::direct::BLOCK`] when `file` writes
    /// directly (and the committer's writes are padded to it), else 1.
    align: u64,
    /// Set when this segment's writer goes away: a chunk still queued or running stops.
    cancelled: Arc<AtomicBool>,
}

impl Drop for Prealloc {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

impl Prealloc {
    /// Preallocation of a segment whose data ends at `write_pos`; `file` is `None` to turn it off.
    /// With a `file` and a zero `chunk` nothing is zero-filled, but the segment is still trimmed
    /// to its data (direct writes pad its last block).
    /// `align`: see the field.
    pub fn new(file: Option<File>, write_pos: u64, chunk: u64, limit: u64, align: u64) -> Self {
        Prealloc {
            file: file.map(Arc::new),
            zeroing: chunk > 0,
            ready_to: write_pos,
            job: None,
            chunk,
            limit,
            align: align.max(1),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes sure a batch may write up to `end`: if that reaches into the chunk being zeroed,
    /// waits for it. A direct write pads the batch to the next block boundary, so that is where
    /// it ends.
    pub async fn clear_for(&mut self, end: u64) {
        let end = end.next_multiple_of(self.align);
        if self.job.as_ref().is_some_and(|&(from, _, _)| end > from) {
            self.settle().await;
        }
    }

    /// Starts zeroing the next chunk if less than a chunk of zeros is left past `write_pos` and
    /// nothing is in flight. Steady state: the chunk starts where the zeros end, a whole chunk
    /// ahead of the committer. With no zeros left (a new segment, or the committer outran the
    /// zero-filler), it starts a chunk past `write_pos` so the committer never waits for it;
    /// the gap is written the ordinary way, growing into the hole.
    pub fn top_up(&mut self, write_pos: u64) {
        let Some(file) = &self.file else { return };
        if !self.zeroing
            || self.job.is_some()
            || self.ready_to.saturating_sub(write_pos) >= self.chunk
        {
            return;
        }
        // Nothing at or past `from` is data (the committer has written below `write_pos` only),
        // and the committer does not write past `from` before this chunk is settled.
        let from = if self.ready_to > write_pos {
            self.ready_to
        } else {
            write_pos.saturating_add(self.chunk)
        }
        .next_multiple_of(self.align);
        let to = from.saturating_add(self.chunk).min(self.limit);
        let to = to - to % self.align;
        if to <= from {
            return;
        }
        let file = Arc::clone(file);
        let cancelled = Arc::clone(&self.cancelled);
        let job = tokio::task::spawn_blocking(move || zero_fill(&file, from, to, &cancelled));
        self.job = Some((from, to, job));
    }

    /// Waits for the chunk in flight, if any. A failure turns preallocation off for this
    /// segment (the zeroes already written are harmless).
    async fn settle(&mut self) {
        let Some((_, to, job)) = self.job.take() else {
            return;
        };
        match job.await.unwrap_or_else(|e| Err(io::Error::other(e))) {
            Ok(()) => self.ready_to = to,
            Err(e) => {
                tracing::warn!(error = %e, "zero-filling the active segment failed; preallocation off until the next segment");
                self.zeroing = false;
            }
        }
    }

    /// Waits for the chunk in flight, then cuts the file back to `data_end` (its data) and makes
    /// the new length durable, if it was longer: before the segment is sealed or the log closed.
    pub async fn trim(&mut self, data_end: u64) -> io::Result<()> {
        self.settle().await;
        // After a failed chunk too: it may have grown the file before failing.
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        self.ready_to = data_end;
        tokio::task::spawn_blocking(move || {
            if file.metadata()?.len() > data_end {
                file.set_len(data_end)?;
                file.sync_all()?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

/// Writes zeros over `[from, to)` and makes them durable, unless cancelled first.
fn zero_fill(file: &File, from: u64, to: u64, cancelled: &AtomicBool) -> io::Result<()> {
    let _one_at_a_time = exclusive();
    let mut pos = from;
    while pos < to {
        if cancelled.load(Ordering::Acquire) {
            return Err(io::Error::other("cancelled: the log was dropped"));
        }
        let n = (to - pos).min(ZEROS.0.len() as u64) as usize;
        let zeros = ZEROS.0.get(..n).unwrap_or(&ZEROS.0);
        file.write_all_at(zeros, pos)?;
        pos += zeros.len() as u64;
    }
    file.sync_data()
}
