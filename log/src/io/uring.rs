//! io_uring backend. Segment and index files are written through a ring of their own
//! ([`SegmentRing`]); directory `fsync`, `remove_file` and [`probe`] use tokio-uring's ring, so
//! the backend is only usable inside `tokio_uring::start`, which [`probe`] checks.
//!
//! Ordering: the log has one chain in flight per file, a write and the `fdatasync` linked to it
//! (`IOSQE_IO_LINK`: the sync starts once the write completed whole), then acknowledges.

use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::pin::pin;
use std::sync::Once;
use std::task::{Context, Poll, Waker};

use super::SegmentIo;
use super::direct::DirectTail;
use super::ring::SegmentRing;

/// A segment (or index) file written through a ring of its own ([`SegmentRing`]): its write and
/// `fdatasync` reach the kernel as soon as they are asked for, linked into one submission.
pub(crate) struct UringFile {
    file: File,
    ring: Box<SegmentRing>,
    /// Set when `file` was opened with `O_DIRECT` (see `direct`).
    direct: Option<RefCell<DirectTail>>,
}

impl UringFile {
    pub fn new(file: File) -> io::Result<Self> {
        Ok(UringFile {
            file,
            ring: Box::new(SegmentRing::new()?),
            direct: None,
        })
    }

    /// `file` opened with `O_DIRECT`; `plain`, a buffered handle on the same file.
    pub fn direct(file: File, plain: File) -> io::Result<Self> {
        Ok(UringFile {
            file,
            ring: Box::new(SegmentRing::new()?),
            direct: Some(RefCell::new(DirectTail::new(plain))),
        })
    }

    async fn write(&self, buf: Vec<u8>, pos: u64, sync: bool) -> (io::Result<()>, Vec<u8>) {
        let fd = self.file.as_raw_fd();
        if buf.is_empty() {
            let synced = if sync {
                self.ring.sync(fd).await
            } else {
                Ok(())
            };
            return (synced, buf);
        }
        let Some(direct) = &self.direct else {
            return self.ring.write(fd, buf, pos, sync).await;
        };
        let (aligned, start) = match direct.borrow_mut().stage(&buf, pos) {
            Ok(staged) => staged,
            Err(e) => return (Err(e), buf),
        };
        let (res, aligned) = self.ring.write(fd, aligned, start, sync).await;
        let end = pos + buf.len() as u64;
        direct.borrow_mut().finish(aligned, start, end, res.is_ok());
        (res, buf)
    }
}

impl SegmentIo for UringFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        self.write(buf, pos, false).await
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.ring.sync(self.file.as_raw_fd()).await
    }

    async fn write_all_at_synced(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        self.write(buf, pos, true).await
    }
}

/// fsync of a directory through the ring.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let f = tokio_uring::fs::File::from_std(File::open(dir)?);
    let r = f.sync_all().await;
    let closed = f.close().await;
    r.and(closed)
}

thread_local! {
    static PROBING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once per process) a panic hook that stays silent for the expected panic of the
/// probe below and forwards every other panic to the previous hook.
fn install_quiet_probe_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PROBING.with(|p| p.get()) {
                previous(info);
            }
        }));
    });
}

/// Ok when the caller runs inside `tokio_uring::start` and a no-op makes a round trip through
/// the ring. tokio-uring exposes no "is there a runtime" query and panics when an operation is
/// submitted outside one, so the first poll runs under `catch_unwind`.
pub(crate) async fn probe() -> Result<(), String> {
    install_quiet_probe_hook();
    let mut op = pin!(tokio_uring::no_op());
    let mut cx = Context::from_waker(Waker::noop());
    PROBING.with(|p| p.set(true));
    let first = catch_unwind(AssertUnwindSafe(|| op.as_mut().poll(&mut cx)));
    PROBING.with(|p| p.set(false));
    match first {
        Err(_) => Err("not running inside tokio_uring::start".into()),
        Ok(Poll::Ready(r)) => r.map_err(|e| format!("io_uring no-op failed: {e}")),
        Ok(Poll::Pending) => op.await.map_err(|e| format!("io_uring no-op failed: {e}")),
    }
}
