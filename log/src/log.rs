//! [`Log`]: the cheap-clone handle of one open log, and the state it shares with its committer.
//!
//! A `Log` lives on one shard thread (it is `!Send`: `Rc` and `RefCell` inside). Appends encode
//! and queue frames; the committer (see `commit.rs`) makes them durable; reads see durable
//! records only.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, Notify, oneshot};

use crate::commit::{self, PendingFrame, Writer};
use crate::error::Error;
use crate::frame::{self, FRAME_HEADER_BYTES};
use crate::io::{self, Backend, IoKind};
use crate::options::Options;
use crate::reader::Reader;
use crate::recent::Recent;
use crate::recovery::{self, Params, now_unix_ms};
use crate::segment::{self, ActiveView, Record, Sealed};

/// What [`Log::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Segments in the log after recovery (sealed + the active one).
    pub segments: usize,
    /// Records in the log after recovery.
    pub records: u64,
    /// Bytes cut from the end of the active segment (a torn tail), 0 after a clean shutdown.
    pub truncated_bytes: u64,
    /// Offset the next append will get.
    pub next_offset: u64,
    /// The I/O backend in use.
    pub io: IoKind,
}

/// Counters since open; tests use `fsyncs` to prove batching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames accepted by `append`/`append_nowait`.
    pub appends: u64,
    /// Group-commit batches written (one write + one fdatasync each).
    pub batches: u64,
    /// fsync/fdatasync calls of any kind (batches, index files, new segments, directory).
    pub fsyncs: u64,
    /// Frame bytes written by batches.
    pub bytes_written: u64,
    /// Segments sealed.
    pub rolls: u64,
    /// Segments deleted by `delete_below`.
    pub segments_deleted: u64,
    /// How long the group commits took.
    pub commit_times: CommitTimes,
}

/// Upper bounds, in µs, of the [`CommitTimes`] buckets (a last bucket takes the rest): from a
/// fast NVMe flush (tens of µs) to a disk in trouble (a second).
pub const COMMIT_BOUNDS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Time of each group commit, from submitting its write to the end of its fdatasync: what the
/// disk makes every ACK wait. A histogram with the bounds [`COMMIT_BOUNDS_US`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitTimes {
    /// `counts[i]`: commits that took at most `COMMIT_BOUNDS_US[i]` µs (and more than the bound
    /// before it); the last entry: longer than every bound.
    pub counts: [u64; COMMIT_BOUNDS_US.len() + 1],
    /// Total time of all of them, µs.
    pub sum_us: u64,
}

impl CommitTimes {
    /// Counts one commit that took `us` µs.
    pub fn record(&mut self, us: u64) {
        // At most `COMMIT_BOUNDS_US.len()`: the last entry of `counts`.
        let i = COMMIT_BOUNDS_US.partition_point(|&bound| bound < us);
        if let Some(n) = self.counts.get_mut(i) {
            *n += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Commits counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One segment as seen by [`Log::segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First offset stored in the segment (also its file name).
    pub first_offset: u64,
    /// One past the last durable offset in the segment.
    pub next_offset: u64,
    /// The segment file.
    pub path: PathBuf,
    /// Durable size of the file in bytes, header included.
    pub bytes: u64,
    /// Sealed (immutable) or active.
    pub sealed: bool,
}

/// How a waiter is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Durable,
    Poisoned,
    Closed,
}

/// Everything shared between handles, readers and the committer. Never borrowed across `.await`.
pub(crate) struct State {
    pub next_offset: u64,
    /// First offset not yet durable.
    pub durable_offset: u64,
    pub epoch: u32,
    pub poisoned: bool,
    pub closing: bool,
    pub closed: bool,
    pub pending: VecDeque<PendingFrame>,
    pub pending_bytes: usize,
    /// When the committer last started a batch: `batch_linger` counts from here.
    pub last_batch_at: Option<std::time::Instant>,
    /// While every pending frame was queued with [`Log::append_deferred`]: the latest time the
    /// committer may wait for another frame before writing them. `None` as soon as a frame that
    /// may not wait is queued, and when a batch is taken.
    pub hold_until: Option<std::time::Instant>,
    /// Sorted by offset.
    pub waiters: VecDeque<(u64, oneshot::Sender<Outcome>)>,
    pub roll_requested: bool,
    pub active_created_unix_ms: u64,
    /// The active segment is written with `O_DIRECT` ([`Options::direct_io`]).
    pub direct: bool,
    pub sealed: Vec<Sealed>,
    pub active: ActiveView,
    pub stats: Stats,
}

pub(crate) struct Inner {
    pub opts: Options,
    pub backend: Backend,
    pub state: RefCell<State>,
    pub writer: Mutex<Writer>,
    pub notify: Rc<Notify>,
    /// Woken (`notify_waiters`) whenever `durable_offset` grows and when the log is poisoned or
    /// closed; [`Log::wait_durable_beyond`] sleeps on it.
    pub durable_changed: Notify,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the committer see that every handle is gone and exit.
        self.notify.notify_one();
    }
}

/// Handle to an open log. Clones share the log; it is `!Send` and lives on one shard thread.
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Rc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.opts.dir)
            .field("io", &self.inner.backend.kind())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (or creates) the log in `opts.dir`, recovers it and starts its committer with
    /// `tokio::task::spawn_local`: call it inside `tokio_uring::start` or a tokio `LocalSet`
    /// (with the time driver enabled if `batch_linger` > 0).
    pub async fn open(opts: Options) -> Result<(Log, Recovery), Error> {
        opts.validate()?;
        let backend = io::choose(&opts.io).await?;
        let params = Params {
            dir: opts.dir.clone(),
            frame_bytes_max: opts.frame_bytes_max,
            index_interval_bytes: opts.index_interval_bytes,
            verify_sealed_on_open: opts.verify_sealed_on_open,
        };
        let rec = tokio::task::spawn_blocking(move || recovery::recover(&params))
            .await
            .map_err(|e| Error::io(&opts.dir, std::io::Error::other(e)))??;

        let active = rec.active;
        let write_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| Error::io(&active.path, e))?;
        let read_file = File::open(&active.path).map_err(|e| Error::io(&active.path, e))?;
        let (file, prealloc, direct) =
            commit::open_writer(&opts, &backend, write_file, &active.path, active.bytes)?;
        tracing::debug!(dir = %opts.dir.display(), direct, "log opened");
        let next_offset = active.next_offset;
        let frames = active.next_offset - active.base;
        let recovery = Recovery {
            segments: rec.sealed.len() + 1,
            records: rec.records,
            truncated_bytes: rec.truncated_bytes,
            next_offset,
            io: backend.kind(),
        };
        let state = State {
            next_offset,
            durable_offset: next_offset,
            epoch: rec.last_epoch.unwrap_or(0),
            poisoned: false,
            closing: false,
            closed: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            last_batch_at: None,
            hold_until: None,
            waiters: VecDeque::new(),
            roll_requested: false,
            active_created_unix_ms: active.created_unix_ms,
            direct,
            sealed: rec.sealed,
            active: ActiveView {
                base: active.base,
                path: active.path,
                file: read_file,
                durable_bytes: active.bytes,
                index: active.index,
                recent: Recent::for_writes(direct, opts.recent_bytes_max),
            },
            stats: Stats::default(),
        };
        let writer = Writer {
            file,
            write_pos: active.bytes,
            frames,
            next_write_offset: next_offset,
            buf: Vec::new(),
            positions: Vec::new(),
            prealloc,
        };
        let notify = Rc::new(Notify::new());
        let inner = Rc::new(Inner {
            opts,
            backend,
            state: RefCell::new(state),
            writer: Mutex::new(writer),
            notify: Rc::clone(&notify),
            durable_changed: Notify::new(),
        });
        let log = Log { inner };
        if rec.last_epoch.is_none() && next_offset > log.first_offset() {
            // Sealed segments were trusted from their index files: read the newest record.
            let last = log.read(next_offset - 1)?;
            log.inner.state.borrow_mut().epoch = last.epoch;
        }
        tokio::task::spawn_local(commit::run(Rc::downgrade(&log.inner), notify));
        tracing::info!(
            dir = %log.inner.opts.dir.display(),
            segments = recovery.segments,
            records = recovery.records,
            truncated_bytes = recovery.truncated_bytes,
            next_offset,
            io = ?recovery.io,
            "log opened"
        );
        Ok((log, recovery))
    }

    /// The I/O backend in use.
    pub fn io_kind(&self) -> IoKind {
        self.inner.backend.kind()
    }

    /// True when the active segment is written with `O_DIRECT`: [`Options::direct_io`] asked
    /// for it and its filesystem takes it.
    pub fn direct_io(&self) -> bool {
        self.inner.state.borrow().direct
    }

    /// Appends a record and resolves with its offset once the frame is fsynced (group commit:
    /// concurrent appends share one write and one fdatasync).
    pub async fn append(&self, record_type: u8, payload: Bytes) -> Result<u64, Error> {
        let offset = self.append_nowait(record_type, payload)?;
        self.wait_durable(offset).await?;
        Ok(offset)
    }

    /// Queues a record for the next batch and returns its offset at once; it is durable once
    /// [`Log::wait_durable`] for it (or a later offset) resolves.
    pub fn append_nowait(&self, record_type: u8, payload: Bytes) -> Result<u64, Error> {
        self.enqueue(None, None, record_type, payload)
    }

    /// Like [`Log::append_nowait`], for a record that need not be durable at once: it starts
    /// no group commit by itself but rides with the next one, or is written `within` after it
    /// was queued if no other record comes first. `roll` and `close` write it at once. A
    /// follow-up record (a delivery attempt's outcome after its ingest record) then costs no
    /// fsync of its own.
    pub fn append_deferred(
        &self,
        record_type: u8,
        payload: Bytes,
        within: Duration,
    ) -> Result<u64, Error> {
        self.enqueue(None, Some(within), record_type, payload)
    }

    /// Replication: queues a frame copied from the primary, at the primary's `offset` and
    /// `epoch`, and returns `offset` at once (durable once [`Log::wait_durable`] for it
    /// resolves). The frame written is byte-identical to the primary's (same header, same CRC).
    ///
    /// Fails with [`Error::OffsetMismatch`] unless `offset == next_offset()`, with
    /// [`Error::StaleEpoch`] when `epoch < epoch()`, and like [`Log::append_nowait`] otherwise
    /// (`FrameTooLarge`, `Poisoned`, `Closed`, `Backlogged`); a refused frame changes nothing.
    /// On success the log's epoch becomes `epoch` (epochs never decrease in offset order).
    pub fn append_replicated(
        &self,
        offset: u64,
        epoch: u32,
        record_type: u8,
        payload: Bytes,
    ) -> Result<u64, Error> {
        self.enqueue(Some((offset, epoch)), None, record_type, payload)
    }

    /// Encodes and queues one frame; `replicated` carries the caller's (offset, epoch), `hold`
    /// how long the frame may wait for company ([`Log::append_deferred`]).
    fn enqueue(
        &self,
        replicated: Option<(u64, u32)>,
        hold: Option<Duration>,
        record_type: u8,
        payload: Bytes,
    ) -> Result<u64, Error> {
        let opts = &self.inner.opts;
        let len = FRAME_HEADER_BYTES + payload.len();
        if len > opts.frame_bytes_max as usize {
            return Err(Error::FrameTooLarge {
                len,
                max: opts.frame_bytes_max,
            });
        }
        let mut st = self.inner.state.borrow_mut();
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        if st.closing {
            return Err(Error::Closed);
        }
        if let Some((offset, epoch)) = replicated {
            if offset != st.next_offset {
                return Err(Error::OffsetMismatch {
                    expected: st.next_offset,
                    got: offset,
                });
            }
            if epoch < st.epoch {
                return Err(Error::StaleEpoch {
                    epoch,
                    current: st.epoch,
                });
            }
        }
        if st.pending_bytes + len > opts.pending_bytes_max {
            return Err(Error::Backlogged {
                pending_bytes: st.pending_bytes,
                max: opts.pending_bytes_max,
            });
        }
        if let Some((_, epoch)) = replicated {
            st.epoch = epoch;
        }
        let age_ms = u64::try_from(opts.segment_age_max.as_millis()).unwrap_or(u64::MAX);
        if now_unix_ms().saturating_sub(st.active_created_unix_ms) >= age_ms {
            st.roll_requested = true;
        }
        let offset = st.next_offset;
        st.next_offset += 1;
        let header = frame::encode_header(offset, st.epoch, record_type, &payload);
        // The committer needs waking for a frame that may not wait, or to (re)arm its wait for
        // the first deferred one; a deferred frame joining deferred ones keeps the deadline.
        let wake = match hold {
            None => {
                st.hold_until = None;
                true
            }
            Some(within) => {
                let until = std::time::Instant::now() + within;
                // Behind a frame that may not wait (pending, no deadline) there is nothing to arm.
                let arm = st.pending.is_empty() || st.hold_until.is_some_and(|due| until < due);
                if arm {
                    st.hold_until = Some(until);
                }
                arm
            }
        };
        st.pending.push_back(PendingFrame {
            offset,
            header,
            payload,
        });
        st.pending_bytes += len;
        st.stats.appends += 1;
        drop(st);
        if wake {
            self.inner.notify.notify_one();
        }
        Ok(offset)
    }

    /// Resolves once every offset `<= offset` is fsynced. Fails with [`Error::Poisoned`] if the
    /// log is poisoned first, and with [`Error::OffsetOutOfRange`] for an offset never assigned.
    pub async fn wait_durable(&self, offset: u64) -> Result<(), Error> {
        let rx = {
            let mut st = self.inner.state.borrow_mut();
            if offset < st.durable_offset {
                return Ok(());
            }
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            if offset >= st.next_offset {
                return Err(Error::OffsetOutOfRange {
                    offset,
                    first_offset: self.first_offset_in(&st),
                    durable_offset: st.durable_offset,
                });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            let (tx, rx) = oneshot::channel();
            // Appends register in offset order, so this is almost always a push to the back.
            let at = st.waiters.partition_point(|(o, _)| *o <= offset);
            st.waiters.insert(at, (offset, tx));
            rx
        };
        match rx.await {
            Ok(Outcome::Durable) => Ok(()),
            Ok(Outcome::Poisoned) => Err(Error::Poisoned),
            Ok(Outcome::Closed) | Err(_) => Err(Error::Closed),
        }
    }

    /// Resolves once `durable_offset() > offset`, i.e. once record `offset` is durable and
    /// readable — also for an offset not assigned yet (unlike [`Log::wait_durable`]), so a
    /// streaming sender can sleep until the next record is durable. Does not poll: the committer
    /// wakes it after each batch. Fails with [`Error::Poisoned`] or [`Error::Closed`] if the log
    /// is poisoned or closed (or closing with `offset` never assigned) before that.
    pub async fn wait_durable_beyond(&self, offset: u64) -> Result<(), Error> {
        loop {
            // Register before checking, so a batch finishing in between is not missed.
            let notified = self.inner.durable_changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.inner.state.borrow();
                if st.durable_offset > offset {
                    return Ok(());
                }
                if st.poisoned {
                    return Err(Error::Poisoned);
                }
                // Once closing, no offset is assigned any more: an unassigned one never comes.
                if st.closed || st.closing && offset >= st.next_offset {
                    return Err(Error::Closed);
                }
            }
            notified.await;
        }
    }

    /// Offset the next append will get.
    pub fn next_offset(&self) -> u64 {
        self.inner.state.borrow().next_offset
    }

    /// First offset that is not yet durable (every smaller offset is fsynced).
    pub fn durable_offset(&self) -> u64 {
        self.inner.state.borrow().durable_offset
    }

    /// First offset still retained (not deleted by [`Log::delete_below`]).
    pub fn first_offset(&self) -> u64 {
        self.first_offset_in(&self.inner.state.borrow())
    }

    fn first_offset_in(&self, st: &State) -> u64 {
        st.sealed.first().map_or(st.active.base, |s| s.base)
    }

    /// Sets the epoch written into every following frame. Epochs only grow: a smaller value is a
    /// programmer error and panics.
    pub fn set_epoch(&self, epoch: u32) {
        let mut st = self.inner.state.borrow_mut();
        assert!(
            epoch >= st.epoch,
            "epochs only grow: {epoch} < current {}",
            st.epoch
        );
        st.epoch = epoch;
    }

    /// The epoch new frames are written in (after open: the epoch of the newest record).
    pub fn epoch(&self) -> u32 {
        self.inner.state.borrow().epoch
    }

    /// Replication: the first retained durable offset whose frame's epoch is greater than
    /// `epoch`, or `durable_offset()` when there is none (`first_offset()` when every retained
    /// frame is newer). Binary search with [`Log::read`] over `[first_offset, durable_offset)`
    /// (epochs never decrease in offset order): O(log n) reads.
    ///
    /// A record that cannot be read (`Error::Corrupt`, I/O error) counts as newer than `epoch`
    /// (and is logged): the answer can then only be lower than the true one, so a replica
    /// truncating to it may drop and re-fetch more than needed but never keeps a divergent
    /// record. Use [`Log::try_first_offset_above_epoch`] to see the error instead.
    pub fn first_offset_above_epoch(&self, epoch: u32) -> u64 {
        self.search_epoch_end(epoch, |offset, e| {
            tracing::error!(
                dir = %self.inner.opts.dir.display(),
                offset,
                error = %e,
                "unreadable record while searching for an epoch's end; treating it as newer"
            );
            Ok(true)
        })
        // The handler above never fails; the first retained offset would be the safe answer.
        .unwrap_or_else(|_| self.first_offset())
    }

    /// [`Log::first_offset_above_epoch`], failing with the read error when a record probed by
    /// the search cannot be read.
    pub fn try_first_offset_above_epoch(&self, epoch: u32) -> Result<u64, Error> {
        self.search_epoch_end(epoch, |_, e| Err(e))
    }

    /// The binary search behind `first_offset_above_epoch`; `on_error` decides what an
    /// unreadable record means (`Ok(true)`: newer than `epoch`).
    fn search_epoch_end(
        &self,
        epoch: u32,
        mut on_error: impl FnMut(u64, Error) -> Result<bool, Error>,
    ) -> Result<u64, Error> {
        let st = self.inner.state.borrow();
        let (mut lo, mut hi) = (self.first_offset_in(&st), st.durable_offset);
        // Invariant: records in [first, lo) have epoch <= `epoch`, records in [hi, durable)
        // have epoch > `epoch` (or were unreadable).
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let newer = match read_at(&st, self.inner.opts.frame_bytes_max, mid, None) {
                Ok((r, _, _)) => r.epoch > epoch,
                Err(e) => on_error(mid, e)?,
            };
            if newer {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Reads one durable record. Seeks with the segment's sparse index and walks at most about
    /// `index_interval_bytes`; the CRC is checked on every read.
    pub fn read(&self, offset: u64) -> Result<Record, Error> {
        let st = self.inner.state.borrow();
        read_at(&st, self.inner.opts.frame_bytes_max, offset, None).map(|(r, _, _)| r)
    }

    /// Iterates over durable records from `from`. Returns `None` at the durable end; calling
    /// `next` again later yields records that became durable since.
    pub fn reader(&self, from: u64) -> Reader {
        Reader::new(self.clone(), from)
    }

    /// Seals the active segment and starts a new one (after writing everything queued).
    /// A no-op when the active segment holds no records.
    pub async fn roll(&self) -> Result<(), Error> {
        let mut w = self.inner.writer.lock().await;
        commit::flush(&self.inner, &mut w, false).await?;
        if w.frames == 0 {
            return Ok(());
        }
        if let Err(e) = commit::roll_active(&self.inner, &mut w).await {
            commit::poison(&self.inner, &e);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes every sealed segment whose records are all below `offset`; returns how many.
    /// The active segment is never deleted.
    pub async fn delete_below(&self, offset: u64) -> Result<usize, Error> {
        let _w = self.inner.writer.lock().await;
        let removed: Vec<Sealed> = {
            let mut st = self.inner.state.borrow_mut();
            let n = st.sealed.iter().take_while(|s| s.next <= offset).count();
            st.stats.segments_deleted += n as u64;
            st.sealed.drain(..n).collect()
        };
        let backend = &self.inner.backend;
        for s in &removed {
            backend
                .remove_file(&s.path)
                .await
                .map_err(|e| Error::io(&s.path, e))?;
            match backend.remove_file(&s.idx_path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&s.idx_path, e));
                }
                _ => {}
            }
        }
        if !removed.is_empty() {
            let dir = &self.inner.opts.dir;
            backend.sync_dir(dir).await.map_err(|e| Error::io(dir, e))?;
            self.inner.state.borrow_mut().stats.fsyncs += 1;
        }
        Ok(removed.len())
    }

    /// Drops this process's resident pages of the sealed segments' memory maps
    /// (`madvise(MADV_DONTNEED)`): the data stays in the page cache and faults back in on the
    /// next read. Recovery and long scans touch every sealed page; without this, resident
    /// memory would grow with the history kept (ARCHITECTURE.md invariant 5).
    pub fn release_memory(&self) {
        let st = self.inner.state.borrow();
        for s in &st.sealed {
            release_pages(&s.data);
        }
    }

    /// The segments, oldest first; the last one is the active segment.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.inner.state.borrow();
        let mut out: Vec<SegmentInfo> = st
            .sealed
            .iter()
            .map(|s| SegmentInfo {
                first_offset: s.base,
                next_offset: s.next,
                path: s.path.clone(),
                bytes: s.bytes,
                sealed: true,
            })
            .collect();
        out.push(SegmentInfo {
            first_offset: st.active.base,
            next_offset: st.durable_offset,
            path: st.active.path.clone(),
            bytes: st.active.durable_bytes,
            sealed: false,
        });
        out
    }

    /// True after a write or fsync failed: no more writes until the log is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.inner.state.borrow().poisoned
    }

    /// Writes and fsyncs everything queued, then stops the committer. Later appends fail with
    /// [`Error::Closed`]; reads keep working.
    pub async fn close(&self) -> Result<(), Error> {
        {
            let mut st = self.inner.state.borrow_mut();
            if st.closed {
                return Ok(());
            }
            st.closing = true;
        }
        let mut w = self.inner.writer.lock().await;
        let flushed = commit::flush(&self.inner, &mut w, false).await;
        // A clean close leaves no zero-filled tail; if trimming fails the tail is still only
        // zeros, which recovery drops.
        let write_pos = w.write_pos;
        if let Err(e) = w.prealloc.trim(write_pos).await {
            tracing::warn!(error = %e, dir = %self.inner.opts.dir.display(), "could not trim the active segment's preallocated tail");
        }
        {
            let mut st = self.inner.state.borrow_mut();
            st.closed = true;
            for (_, tx) in st.waiters.drain(..) {
                let _ = tx.send(Outcome::Closed);
            }
        }
        self.inner.durable_changed.notify_waiters();
        self.inner.notify.notify_one();
        flushed
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        self.inner.state.borrow().stats
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.opts.dir
    }
}

/// Where a read left off: (segment first offset, byte position of the next frame).
pub(crate) type Hint = (u64, u64);

/// Reads durable record `offset`; `hint` (from the previous read) skips the index lookup.
/// Returns the record and the hint for `offset + 1`.
pub(crate) fn read_at(
    st: &State,
    frame_bytes_max: u32,
    offset: u64,
    hint: Option<Hint>,
) -> Result<(Record, u64, u64), Error> {
    let first = st.sealed.first().map_or(st.active.base, |s| s.base);
    if offset < first || offset >= st.durable_offset {
        return Err(Error::OffsetOutOfRange {
            offset,
            first_offset: first,
            durable_offset: st.durable_offset,
        });
    }
    let start_for = |base: u64, floor: Option<crate::index::Entry>| match hint {
        Some((b, pos)) if b == base => crate::index::Entry {
            offset,
            position: pos,
        },
        _ => segment::walk_start(floor, base),
    };
    if offset >= st.active.base {
        let a = &st.active;
        let start = start_for(a.base, floor_owned(&a.index.entries, offset));
        let (r, next) = segment::walk_to(&a.path, start, offset, a.durable_bytes, |pos| {
            segment::active_frame_at(a, pos, frame_bytes_max)
        })?;
        return Ok((r, a.base, next));
    }
    let i = st.sealed.partition_point(|s| s.base <= offset);
    let Some(s) = i.checked_sub(1).and_then(|i| st.sealed.get(i)) else {
        return Err(Error::OffsetOutOfRange {
            offset,
            first_offset: first,
            durable_offset: st.durable_offset,
        });
    };
    let start = start_for(s.base, s.index.floor(offset));
    let (r, next) = segment::walk_to(&s.path, start, offset, s.bytes, |pos| {
        segment::sealed_frame_at(s, pos, frame_bytes_max)
    })?;
    Ok((r, s.base, next))
}

fn floor_owned(entries: &[crate::index::Entry], offset: u64) -> Option<crate::index::Entry> {
    let i = entries.partition_point(|e| e.offset <= offset);
    i.checked_sub(1).and_then(|i| entries.get(i)).copied()
}

/// `madvise(MADV_DONTNEED)` over the whole pages of `data` (a read-only file mapping).
fn release_pages(data: &[u8]) {
    const PAGE: usize = 4096;
    let start = data.as_ptr() as usize;
    let aligned = start.div_ceil(PAGE) * PAGE;
    let end = (start + data.len()) / PAGE * PAGE;
    if end > aligned {
        // SAFETY: the range lies inside a live, read-only, file-backed shared mapping; dropping
        // its pages only makes later reads fault them back in from the file.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_DONTNEED,
            );
        }
    }
}

#[cfg(test)]
mod commit_times_tests {
    use super::{COMMIT_BOUNDS_US, CommitTimes};

    #[test]
    fn a_commit_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let mut t = CommitTimes::default();
        t.record(0);
        t.record(50);
        t.record(51);
        t.record(1_000_000);
        t.record(1_000_001);
        let last = COMMIT_BOUNDS_US.len();
        assert_eq!(t.counts[0], 2, "0 and 50 µs: le 50 µs");
        assert_eq!(t.counts[1], 1, "51 µs: le 100 µs");
        assert_eq!(t.counts[last - 1], 1, "1 s: le 1 s");
        assert_eq!(t.counts[last], 1, "over 1 s: +Inf");
        assert_eq!(t.count(), 5);
        assert_eq!(t.sum_us, 50 + 51 + 1_000_000 + 1_000_001);
    }
}
