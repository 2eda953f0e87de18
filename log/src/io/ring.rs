//! A small io_uring of the segment's own, for the committer's write and `fdatasync`.
//!
//! tokio-uring queues an operation in its ring and submits it only when the shard thread parks.
//! A busy shard rarely parks, so a batch waited for the shard once for its write and once more
//! for its `fdatasync` (BENCHMARKS.md §2: the log sat idle ~1.7 ms between fsyncs under load, and
//! direct writes, whose write completes on the device, lengthened the ACK tail). This ring is
//! submitted to the kernel the moment a batch is ready, with the write and the `fdatasync`
//! linked (`IOSQE_IO_LINK`: the sync starts when the write has completed, and is cancelled if it
//! failed or was short), so a batch costs one submission and one wake-up.
//!
//! Completions are signalled on an eventfd registered with the ring and watched by tokio's
//! reactor ([`AsyncFd`]): the operation's future reaps the completion queue itself. One
//! operation chain is in flight at a time (the committer is sequential).
//!
//! Buffers: the kernel reads the buffer until the write completes. If the future is dropped
//! before that (the log dropped mid-batch), the buffer is parked here and freed once the ring
//! has reaped the chain; dropping the ring first waits for every chain still in flight.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Entries of the submission queue: a chain is at most two operations.
const ENTRIES: u32 = 8;

/// `user_data` of a write; the `fdatasync` linked to it is `+ 1`.
type OpId = u64;

pub(crate) struct SegmentRing {
    ring: IoUring,
    eventfd: AsyncFd<OwnedFd>,
    next_id: Cell<OpId>,
    /// Completions reaped but not yet claimed by their operation: (user_data, result).
    done: RefCell<Vec<(u64, i32)>>,
    /// Operations of dropped futures still in the kernel, and the buffers they may still read.
    abandoned: Cell<usize>,
    parked: RefCell<Vec<Box<dyn Any>>>,
}

impl SegmentRing {
    /// A ring whose completions wake tokio's reactor. Needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(ENTRIES)?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(fd.as_raw_fd())?;
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open (and the same
        // descriptor) until it is dropped.
        let eventfd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(SegmentRing {
            ring,
            eventfd,
            next_id: Cell::new(0),
            done: RefCell::new(Vec::new()),
            abandoned: Cell::new(0),
            parked: RefCell::new(Vec::new()),
        })
    }

    /// Writes all of `buf` at `pos` of `fd`, then (with `sync`) makes it durable with
    /// `fdatasync`; one submission when the write is whole.
    pub async fn write<B: AsRef<[u8]> + 'static>(
        &self,
        fd: RawFd,
        buf: B,
        pos: u64,
        sync: bool,
    ) -> (io::Result<()>, B) {
        if let Err(e) = self.settle_abandoned() {
            return (Err(e), buf);
        }
        let mut op = InFlight {
            ring: self,
            buf: Some(buf),
            pending: 0,
        };
        let r = op.run(fd, pos, sync).await;
        if op.pending > 0 {
            // A failed submission: the entries may still reach the kernel. Wait for them before
            // the buffer goes back to the caller (blocking; an error path only).
            self.abandoned.set(self.abandoned.get() + op.pending);
            op.pending = 0;
            let _ = self.settle_abandoned();
        }
        let buf = op.buf.take().expect("the buffer is returned once");
        (r, buf)
    }

    /// `fdatasync` of `fd`.
    pub async fn sync(&self, fd: RawFd) -> io::Result<()> {
        self.settle_abandoned()?;
        let id = self.take_id();
        let sqe = fdatasync(fd, id + 1);
        let mut op = InFlight::<()> {
            ring: self,
            buf: None,
            pending: 0,
        };
        self.push(&[sqe], &mut op.pending)?;
        let res = op.wait(id + 1).await;
        errno(res).map(drop)
    }

    fn take_id(&self) -> OpId {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(2));
        id
    }

    /// Queues `sqes` and submits them at once. `pending` becomes their count once they are
    /// queued (from then on the kernel may read their buffers), even if the submission fails.
    fn push(&self, sqes: &[squeue::Entry], pending: &mut usize) -> io::Result<()> {
        // SAFETY: only the committer (one chain at a time, on this thread) touches the
        // submission queue, so `submission_shared` has no concurrent user.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: every buffer a queued entry points at stays alive until its completion is
        // reaped (owned by `InFlight`, else parked in `self`).
        unsafe { sq.push_multiple(sqes) }.map_err(|_| io::Error::other("io_uring queue full"))?;
        sq.sync();
        drop(sq);
        *pending = sqes.len();
        self.ring.submit()?;
        Ok(())
    }

    /// Moves every available completion into `done`, or drops it if its operation was abandoned.
    fn reap(&self) {
        // SAFETY: as in `push`: this thread alone reads the completion queue.
        let cq = unsafe { self.ring.completion_shared() };
        let mut done = self.done.borrow_mut();
        for cqe in cq {
            done.push((cqe.user_data(), cqe.result()));
        }
    }

    /// Waits (blocking: rare, only after a dropped future) until the kernel is done with every
    /// abandoned operation, then frees their buffers.
    fn settle_abandoned(&self) -> io::Result<()> {
        while self.abandoned.get() > 0 {
            self.ring.submit_and_wait(1)?;
            self.reap();
            let n = self.done.borrow().len();
            self.done.borrow_mut().clear();
            self.abandoned.set(self.abandoned.get().saturating_sub(n));
        }
        self.parked.borrow_mut().clear();
        Ok(())
    }
}

impl Drop for SegmentRing {
    fn drop(&mut self) {
        if let Err(e) = self.settle_abandoned() {
            // The kernel may still read parked buffers: leak them rather than free them.
            tracing::error!(error = %e, "io_uring: could not wait for abandoned operations");
            std::mem::forget(std::mem::take(&mut *self.parked.borrow_mut()));
        }
    }
}

/// A chain in flight and the buffer it reads.
struct InFlight<'a, B: 'static> {
    ring: &'a SegmentRing,
    buf: Option<B>,
    /// Operations submitted and not yet completed.
    pending: usize,
}

impl<B: AsRef<[u8]> + 'static> InFlight<'_, B> {
    async fn run(&mut self, fd: RawFd, mut pos: u64, sync: bool) -> io::Result<()> {
        let total = self.buf.as_ref().map_or(0, |b| b.as_ref().len());
        // The sync covers the whole buffer's range, also after a short write.
        let start = pos;
        let mut written = 0usize;
        let mut synced = !sync;
        while written < total || !synced {
            let id = self.ring.take_id();
            let rest = self
                .buf
                .as_ref()
                .and_then(|b| b.as_ref().get(written..))
                .unwrap_or_default();
            let mut sqes = Vec::with_capacity(2);
            if !rest.is_empty() {
                let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                let mut w = opcode::Write::new(types::Fd(fd), rest.as_ptr(), len)
                    .offset(pos)
                    .build()
                    .user_data(id);
                if !synced {
                    w = w.flags(squeue::Flags::IO_LINK);
                }
                sqes.push(w);
            }
            if !synced {
                sqes.push(fdatasync_range(fd, start, total, id + 1));
            }
            self.ring.push(&sqes, &mut self.pending)?;
            let wrote = if rest.is_empty() {
                None
            } else {
                Some(self.wait(id).await)
            };
            let sync_res = if synced {
                None
            } else {
                Some(self.wait(id + 1).await)
            };
            if let Some(res) = wrote {
                let n = errno(res)?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                written += n;
                pos += n as u64;
            }
            match sync_res {
                // Cancelled because the write was short: write the rest, then sync again.
                Some(res) if res == -libc::ECANCELED && written < total => {}
                Some(res) => {
                    errno(res)?;
                    synced = written >= total;
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl<B: 'static> InFlight<'_, B> {
    /// The result of operation `user_data`, waiting on the eventfd until it completes. Should
    /// the reactor fail on the eventfd, it waits in the kernel instead (blocking).
    async fn wait(&mut self, user_data: u64) -> i32 {
        loop {
            self.ring.reap();
            {
                let mut done = self.ring.done.borrow_mut();
                if let Some(i) = done.iter().position(|&(u, _)| u == user_data) {
                    let (_, res) = done.swap_remove(i);
                    self.pending = self.pending.saturating_sub(1);
                    return res;
                }
            }
            let mut ready = match self.ring.eventfd.readable().await {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring eventfd unusable; waiting in the kernel");
                    if let Err(e) = self.ring.ring.submit_and_wait(1) {
                        tracing::warn!(error = %e, "io_uring wait failed; retrying");
                    }
                    continue;
                }
            };
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into `count` from the eventfd (non-blocking).
            let _ = unsafe {
                libc::read(
                    self.ring.eventfd.get_ref().as_raw_fd(),
                    count.as_mut_ptr().cast(),
                    count.len(),
                )
            };
            ready.clear_ready();
        }
    }
}

impl<B: 'static> Drop for InFlight<'_, B> {
    fn drop(&mut self) {
        if self.pending > 0 {
            // Dropped mid-chain: the kernel may still read the buffer.
            self.ring
                .abandoned
                .set(self.ring.abandoned.get() + self.pending);
            if let Some(buf) = self.buf.take() {
                self.ring.parked.borrow_mut().push(Box::new(buf));
            }
        }
    }
}

/// An `fdatasync` of the whole of `fd` tagged `user_data`.
fn fdatasync(fd: RawFd, user_data: u64) -> squeue::Entry {
    fdatasync_range(fd, 0, 0, user_data)
}

/// An `fdatasync` of `len` bytes of `fd` from `pos` (the file's metadata as a whole, as any
/// fdatasync), tagged `user_data`. It does not wait for writeback elsewhere in the file: the
/// zero-filler's 1 MiB chunks ahead of the log's write position are written and synced
/// separately, and a commit synced file-wide waited for them (BENCHMARKS.md §2, "Seventeenth
/// session"). A zero `len` (a range past `u32::MAX` bytes) syncs the whole file.
fn fdatasync_range(fd: RawFd, pos: u64, len: usize, user_data: u64) -> squeue::Entry {
    opcode::Fsync::new(types::Fd(fd))
        .flags(types::FsyncFlags::DATASYNC)
        .offset(pos)
        .len(u32::try_from(len).unwrap_or(0))
        .build()
        .user_data(user_data)
}

/// A completion's result as a byte count or an error.
fn errno(res: i32) -> io::Result<usize> {
    usize::try_from(res).map_err(|_| io::Error::from_raw_os_error(-res))
}

#[cfg(test)]
mod tests;
