//! The write path: group commit, segment rolls, poisoning.
//!
//! Appends only encode a frame and queue it in `State::pending` (no I/O). One committer task
//! per log (spawned with `spawn_local`) drains that queue: it takes every queued frame up to
//! `batch_bytes_max` (and up to the segment size limit), writes them with one positioned write,
//! calls `fdatasync` once, and only then advances `durable_offset` and answers the waiters of that
//! batch. Appends that arrive while the write or fsync is in flight form the next batch.
//! Write → fdatasync → acknowledge is strictly sequential: there is never more than one write in
//! flight, so io_uring's freedom to complete operations out of order cannot reorder them.
//!
//! With `batch_linger`, a batch that is not full starts no sooner than `batch_linger` after the
//! previous one started: the fsync rate is capped at one per `batch_linger` under load, while a
//! record that arrives after a quiet spell is written at once. On a virtual machine whose host
//! charges its I/O threads to the guest's CPU quota, fewer fsyncs are what keeps the host from
//! freezing the vCPUs (BENCHMARKS.md §2, "The 5k tail is the host's CPU quota"). The wait is a
//! timerfd, to the microsecond ([`crate::pace`]). `roll` and `close` flush without waiting.
//!
//! Any write or fsync error poisons the log: every waiter and every later append gets
//! [`Error::Poisoned`] until the log is reopened (and recovered). The log never retries an fsync.
//!
//! The [`Writer`] (the active file and its write position) sits behind an async mutex so that
//! `roll`, `delete_below` and `close` serialise with the committer; the shared [`State`] is a
//! `RefCell` that is never borrowed across an `.await`.

use std::fs::OpenOptions;
use std::rc::{Rc, Weak};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::Error;
use crate::frame::FRAME_HEADER_BYTES;
use crate::index::{self, IndexMeta, SparseIndex};
use crate::io::{SegmentFile, SegmentIo};
use crate::log::{Inner, Outcome, State};
use crate::pace::PaceTimer;
use crate::prealloc::Prealloc;
use crate::recovery::{map_file, now_unix_ms, write_index_file_via};
use crate::segment::{self, ActiveView, SEGMENT_HEADER_BYTES, Sealed};

/// A frame waiting for the committer.
pub(crate) struct PendingFrame {
    pub offset: u64,
    pub header: [u8; FRAME_HEADER_BYTES],
    pub payload: Bytes,
}

impl PendingFrame {
    pub fn len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload.len()
    }
}

/// The write side of the active segment; owned by whoever holds `Inner::writer`.
pub(crate) struct Writer {
    pub file: SegmentFile,
    /// Bytes of the active segment written and fsynced so far (header included).
    pub write_pos: u64,
    /// Frames in the active segment.
    pub frames: u64,
    /// Offset the next written frame must carry.
    pub next_write_offset: u64,
    /// Reused batch buffer.
    pub buf: Vec<u8>,
    /// Reused (offset, position) list of the frames in the current batch.
    pub positions: Vec<(u64, u64)>,
    /// The active segment's zero-filled region ahead of `write_pos`.
    pub prealloc: Prealloc,
}

/// The write side of a segment open for writing at `write_pos`: `file` (opened read + write)
/// wrapped by the backend, direct (the third value) when the options ask for it and the filesystem takes it
/// ([`Backend::segment_writer`](crate::io::Backend::segment_writer)), and its zero-filler. No
/// preallocation on the simulated disk, whose crash model only knows appends.
pub(crate) fn open_writer(
    opts: &crate::Options,
    backend: &crate::io::Backend,
    file: std::fs::File,
    path: &std::path::Path,
    write_pos: u64,
) -> Result<(SegmentFile, Prealloc, bool), Error> {
    let w = backend
        .segment_writer(file, path, opts.direct_io)
        .map_err(|e| Error::io(path, e))?;
    let on = opts.preallocate_bytes > 0 && backend.kind() != crate::IoKind::Simulated;
    let align = if w.direct {
        crate::io::direct::BLOCK
    } else {
        1
    };
    // A direct segment needs the handle to be trimmed of its last block's padding even when
    // nothing is zero-filled ahead.
    let prealloc = Prealloc::new(
        (on || w.direct).then_some(w.zero_fill),
        write_pos,
        if on { opts.preallocate_bytes } else { 0 },
        opts.segment_bytes_max,
        align,
    );
    Ok((w.file, prealloc, w.direct))
}

/// The committer task: wakes when frames are queued, flushes them, exits when the log is
/// closed, poisoned or dropped. With `batch_linger` it writes one batch at a time and waits
/// between them (without the writer lock, so `roll` and `close` never wait for the pace).
pub(crate) async fn run(weak: Weak<Inner>, notify: Rc<Notify>) {
    let _guard = PanicGuard(weak.clone());
    let mut timer: Option<PaceTimer> = None;
    loop {
        notify.notified().await;
        loop {
            let Some(inner) = weak.upgrade() else { return };
            {
                let st = inner.state.borrow();
                if st.closed || st.poisoned {
                    return;
                }
            }
            if let Some(due) = pace_due(&inner) {
                drop(inner);
                timer
                    .get_or_insert_with(PaceTimer::new)
                    .sleep_until(due)
                    .await;
                continue;
            }
            if let Some(due) = hold_due(&inner) {
                drop(inner);
                // Until the deadline, or until a frame that may not wait is queued.
                let timer = timer.get_or_insert_with(PaceTimer::new);
                tokio::select! {
                    () = timer.sleep_until(due) => {}
                    () = notify.notified() => {}
                }
                continue;
            }
            let paced = !inner.opts.batch_linger.is_zero();
            let mut w = inner.writer.lock().await;
            // Errors reach the callers through their waiters (poisoning); nothing to do here.
            let _ = flush(&inner, &mut w, paced).await;
            if !paced || inner.state.borrow().pending.is_empty() {
                break;
            }
        }
    }
}

/// When the next batch may start, if that is later than now: `batch_linger` after the previous
/// batch started, unless a full batch is queued (see the module doc).
fn pace_due(inner: &Inner) -> Option<Instant> {
    let linger = inner.opts.batch_linger;
    let st = inner.state.borrow();
    if linger.is_zero() || st.pending.is_empty() || st.pending_bytes >= inner.opts.batch_bytes_max {
        return None;
    }
    let due = st.last_batch_at? + linger;
    (Instant::now() < due).then_some(due)
}

/// When only deferred frames are queued ([`crate::Log::append_deferred`]): how long the
/// committer may still wait for another frame to write them with. Not while closing or
/// rolling, nor with a full batch queued.
fn hold_due(inner: &Inner) -> Option<Instant> {
    let st = inner.state.borrow();
    if st.pending.is_empty()
        || st.closing
        || st.roll_requested
        || st.pending_bytes >= inner.opts.batch_bytes_max
    {
        return None;
    }
    let due = st.hold_until?;
    (Instant::now() < due).then_some(due)
}

/// If the committer panics (a broken invariant), every waiter would otherwise wait forever:
/// poison the log on the way out so they, and later appends, get `Error::Poisoned`. The panic
/// itself is still reported by the runtime.
struct PanicGuard(Weak<Inner>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let Ok(mut st) = inner.state.try_borrow_mut() else {
            return;
        };
        st.poisoned = true;
        st.pending.clear();
        st.pending_bytes = 0;
        for (_, tx) in st.waiters.drain(..) {
            let _ = tx.send(Outcome::Poisoned);
        }
        drop(st);
        inner.durable_changed.notify_waiters();
    }
}

enum Step {
    Done,
    Roll,
    Batch,
}

/// Writes and fsyncs every queued frame, batch by batch, rolling segments as needed; with
/// `one_batch`, returns after the first batch written.
pub(crate) async fn flush(inner: &Inner, w: &mut Writer, one_batch: bool) -> Result<(), Error> {
    loop {
        let step = {
            let mut st = inner.state.borrow_mut();
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            match st.pending.front().map(PendingFrame::len) {
                None => Step::Done,
                Some(front_len) => {
                    let too_big = w.write_pos + front_len as u64 > inner.opts.segment_bytes_max;
                    if st.roll_requested && w.frames == 0 {
                        // Nothing to seal: restart the age clock instead of making an empty segment.
                        st.roll_requested = false;
                        st.active_created_unix_ms = now_unix_ms();
                    }
                    if w.frames > 0 && (st.roll_requested || too_big) {
                        Step::Roll
                    } else {
                        Step::Batch
                    }
                }
            }
        };
        match step {
            Step::Done => return Ok(()),
            Step::Roll => {
                if let Err(e) = roll_active(inner, w).await {
                    poison(inner, &e);
                    return Err(e);
                }
            }
            Step::Batch => {
                if let Err(e) = write_batch(inner, w).await {
                    poison(inner, &e);
                    return Err(e);
                }
                if one_batch {
                    return Ok(());
                }
            }
        }
    }
}

/// One batch: one write, one fdatasync, then acknowledge.
async fn write_batch(inner: &Inner, w: &mut Writer) -> Result<(), Error> {
    if !inner.opts.batch_linger.is_zero() {
        // Only a pace reads it: no clock read per batch on the unpaced path.
        inner.state.borrow_mut().last_batch_at = Some(Instant::now());
    }
    let mut buf = std::mem::take(&mut w.buf);
    let mut positions = std::mem::take(&mut w.positions);
    buf.clear();
    positions.clear();
    let segment_room = inner.opts.segment_bytes_max.saturating_sub(w.write_pos);
    {
        let mut st = inner.state.borrow_mut();
        // Deferred frames are written with this batch; any left over follow right after it.
        st.hold_until = None;
        while let Some(f) = st.pending.front() {
            let len = f.len();
            let fits_batch = buf.len() + len <= inner.opts.batch_bytes_max;
            let fits_segment = (buf.len() + len) as u64 <= segment_room;
            // A batch always takes at least one frame (a frame may exceed both limits alone).
            if !(buf.is_empty() || fits_batch && fits_segment) {
                break;
            }
            let Some(f) = st.pending.pop_front() else {
                break;
            };
            let expect = w.next_write_offset + positions.len() as u64;
            assert_eq!(f.offset, expect, "frames must be written in offset order");
            positions.push((f.offset, w.write_pos + buf.len() as u64));
            buf.extend_from_slice(&f.header);
            buf.extend_from_slice(&f.payload);
            st.pending_bytes -= len;
        }
    }
    assert!(!positions.is_empty(), "a batch holds at least one frame");
    let len = buf.len() as u64;
    let path = inner.state.borrow().active.path.clone();

    w.prealloc.clear_for(w.write_pos + len).await;
    // One write and one fdatasync, submitted together where the backend can.
    let submitted = Instant::now();
    let (res, buf) = w.file.write_all_at_synced(buf, w.write_pos).await;
    w.buf = buf;
    {
        let mut st = inner.state.borrow_mut();
        st.stats.fsyncs += 1;
        let took = submitted.elapsed().as_micros();
        st.stats
            .commit_times
            .record(u64::try_from(took).unwrap_or(u64::MAX));
    }
    res.map_err(|e| Error::io(&path, e))?;

    // Durable from here on.
    let count = positions.len() as u64;
    w.write_pos += len;
    w.frames += count;
    w.next_write_offset += count;
    w.prealloc.top_up(w.write_pos);
    let mut st = inner.state.borrow_mut();
    let st = &mut *st;
    for &(offset, position) in &positions {
        st.active.index.note(offset, position);
    }
    st.active.recent.push(st.active.durable_bytes, &w.buf);
    st.active.durable_bytes = w.write_pos;
    assert!(
        w.next_write_offset > st.durable_offset,
        "durable offset only grows"
    );
    st.durable_offset = w.next_write_offset;
    st.stats.batches += 1;
    st.stats.bytes_written += len;
    answer_waiters(st);
    inner.durable_changed.notify_waiters();
    w.positions = positions;
    Ok(())
}

/// Answers every waiter whose offset is now durable (waiters are sorted by offset).
pub(crate) fn answer_waiters(st: &mut State) {
    while let Some((offset, _)) = st.waiters.front() {
        if *offset >= st.durable_offset {
            break;
        }
        if let Some((_, tx)) = st.waiters.pop_front() {
            // The caller may have stopped waiting (dropped its future); that is fine.
            let _ = tx.send(Outcome::Durable);
        }
    }
}

/// Marks the log poisoned and fails every waiter and queued frame.
pub(crate) fn poison(inner: &Inner, cause: &Error) {
    let mut st = inner.state.borrow_mut();
    if !st.poisoned {
        tracing::error!(error = %cause, dir = %inner.opts.dir.display(), "log poisoned");
    }
    st.poisoned = true;
    st.pending.clear();
    st.pending_bytes = 0;
    for (_, tx) in st.waiters.drain(..) {
        let _ = tx.send(Outcome::Poisoned);
    }
    drop(st);
    inner.durable_changed.notify_waiters();
}

/// Seals the active segment (index file, memory map) and starts a new one.
/// Everything written to the active segment is already fsynced when this runs.
pub(crate) async fn roll_active(inner: &Inner, w: &mut Writer) -> Result<(), Error> {
    assert!(w.frames > 0, "never seal an empty segment");
    let dir = &inner.opts.dir;
    let backend = &inner.backend;
    let (base, bytes, entries) = {
        let st = inner.state.borrow();
        assert_eq!(
            st.active.durable_bytes, w.write_pos,
            "only durable segments are sealed"
        );
        (
            st.active.base,
            st.active.durable_bytes,
            st.active.index.entries.clone(),
        )
    };

    // 1. The segment being sealed cut back to its data (no zero-filled tail), then its index
    //    file (tmp + fsync + rename).
    let old_path = segment::segment_path(dir, base);
    w.prealloc
        .trim(w.write_pos)
        .await
        .map_err(|e| Error::io(&old_path, e))?;
    let idx_path = segment::index_path(dir, base);
    let meta = IndexMeta {
        interval_bytes: inner.opts.index_interval_bytes,
        base_offset: base,
        segment_bytes: bytes,
        records: w.frames,
    };
    let encoded = index::encode(meta, &entries);
    write_index_file_via(backend, &idx_path, encoded).await?;

    // 2. The new segment: header, fsync, then the directory (new entry + renamed index).
    let new_base = w.next_write_offset;
    let new_path = segment::segment_path(dir, new_base);
    let created = now_unix_ms();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&new_path)
        .map_err(|e| Error::io(&new_path, e))?;
    let reader = f.try_clone().map_err(|e| Error::io(&new_path, e))?;
    let (file, prealloc, direct) = open_writer(
        &inner.opts,
        backend,
        f,
        &new_path,
        SEGMENT_HEADER_BYTES as u64,
    )?;
    let header = segment::encode_header(new_base, created).to_vec();
    let (res, _) = file.write_all_at_synced(header, 0).await;
    res.map_err(|e| Error::io(&new_path, e))?;
    backend.sync_dir(dir).await.map_err(|e| Error::io(dir, e))?;
    inner.state.borrow_mut().stats.fsyncs += 3;

    // 3. Switch readers over: the old segment becomes a mapped, sealed one.
    let data = map_file(&old_path)?
        .ok_or_else(|| Error::corrupt(&old_path, 0, "sealed segment is empty"))?;
    assert_eq!(
        data.len() as u64,
        bytes,
        "sealed segment length matches its durable length"
    );
    let index = match map_file(&idx_path)? {
        Some(map) => SparseIndex::Mapped {
            map,
            count: entries.len(),
        },
        None => SparseIndex::Owned(entries),
    };
    let sealed = Sealed {
        base,
        next: new_base,
        path: old_path,
        idx_path,
        bytes,
        data: Bytes::from_owner(data),
        index,
    };
    {
        let mut st = inner.state.borrow_mut();
        st.active = ActiveView {
            base: new_base,
            path: new_path,
            file: reader,
            durable_bytes: SEGMENT_HEADER_BYTES as u64,
            index: index::IndexBuilder::new(inner.opts.index_interval_bytes),
            recent: crate::recent::Recent::for_writes(direct, inner.opts.recent_bytes_max),
        };
        st.sealed.push(sealed);
        st.active_created_unix_ms = created;
        st.direct = direct;
        st.roll_requested = false;
        st.stats.rolls += 1;
    }
    w.file = file;
    w.write_pos = SEGMENT_HEADER_BYTES as u64;
    w.frames = 0;
    w.prealloc = prealloc;
    w.prealloc.top_up(w.write_pos);
    Ok(())
}
