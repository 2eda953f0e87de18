//! A simulated disk for deterministic fault tests.
//!
//! Data goes to real files (so the normal read path — mmap and pread — sees it), but `fsync` is
//! simulated: the disk remembers, per file, how many bytes the last successful sync covered.
//! Tests can make the next fsync (or write) fail, slow fsyncs down so appenders pile up, count
//! fsyncs, and [`SimDisk::crash`] to cut every file back to its synced length — the bytes a
//! power loss would lose.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::SegmentIo;

#[derive(Debug, Default)]
struct FileState {
    written_len: u64,
    synced_len: u64,
}

#[derive(Debug, Default)]
struct SimState {
    fsyncs: AtomicU64,
    writes: AtomicU64,
    fail_next_sync: AtomicBool,
    fail_next_write: AtomicBool,
    sync_delay_us: AtomicU64,
    /// Bumped by every crash; files opened before it behave like the dead process's handles.
    generation: AtomicU64,
    files: Mutex<HashMap<PathBuf, FileState>>,
}

/// Handle to a simulated disk; clones share the same disk. `Send + Sync` so it can sit in
/// [`crate::Options`] that are built on one thread and used on a shard thread.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<SimState>,
}

impl SimDisk {
    /// A fresh disk: no faults, no delay.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next fsync (data or directory) fails with an I/O error.
    pub fn fail_next_sync(&self) {
        self.state.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// The next write fails with an I/O error (after writing nothing).
    pub fn fail_next_write(&self) {
        self.state.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// Every data fsync takes this long (a timer, so appenders can queue behind it).
    pub fn set_sync_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.sync_delay_us.store(us, Ordering::SeqCst);
    }

    /// Successful and failed fsyncs so far.
    pub fn fsyncs(&self) -> u64 {
        self.state.fsyncs.load(Ordering::SeqCst)
    }

    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.state.writes.load(Ordering::SeqCst)
    }

    /// Bytes of `path` covered by its last successful fsync.
    pub fn synced_len(&self, path: &Path) -> u64 {
        self.files().get(path).map_or(0, |f| f.synced_len)
    }

    /// Simulates a power loss: every file is cut back to the length its last successful fsync
    /// covered, and every file handle opened before the crash fails from now on (the process
    /// that held them is gone). Drop the log, crash, then reopen it.
    pub fn crash(&self) -> io::Result<()> {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        let mut files = self.files();
        for (path, st) in files.iter_mut() {
            if st.written_len > st.synced_len && path.exists() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(st.synced_len)?;
            }
            st.written_len = st.synced_len;
        }
        Ok(())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, FileState>> {
        // A panicking test thread must not hide the disk state from the next assertion.
        self.state
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn take_sync_fault(&self) -> io::Result<()> {
        self.state.fsyncs.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("simulated fsync failure"));
        }
        Ok(())
    }

    pub(crate) fn wrap(&self, file: File, path: &Path) -> SimFile {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A file opened by the log is treated as durable up to its current length (it was
        // either just created or recovered).
        self.files().insert(
            path.to_path_buf(),
            FileState {
                written_len: len,
                synced_len: len,
            },
        );
        SimFile {
            disk: self.clone(),
            generation: self.state.generation.load(Ordering::SeqCst),
            file,
            path: path.to_path_buf(),
        }
    }

    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        self.take_sync_fault()
    }

    pub(crate) fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.files().remove(path);
        std::fs::remove_file(path)
    }
}

/// A file on the simulated disk.
pub(crate) struct SimFile {
    disk: SimDisk,
    generation: u64,
    file: File,
    path: PathBuf,
}

impl SimFile {
    fn alive(&self) -> io::Result<()> {
        if self.disk.state.generation.load(Ordering::SeqCst) != self.generation {
            return Err(io::Error::other(
                "simulated crash: this handle's process is gone",
            ));
        }
        Ok(())
    }
}

impl SegmentIo for SimFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        self.disk.state.writes.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.alive() {
            return (Err(e), buf);
        }
        if self
            .disk
            .state
            .fail_next_write
            .swap(false, Ordering::SeqCst)
        {
            return (Err(io::Error::other("simulated write failure")), buf);
        }
        let r = self.file.write_all_at(&buf, pos);
        if r.is_ok() {
            let end = pos + buf.len() as u64;
            let mut files = self.disk.files();
            let st = files.entry(self.path.clone()).or_default();
            st.written_len = st.written_len.max(end);
        }
        (r, buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        let delay = self.disk.state.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        self.alive()?;
        self.disk.take_sync_fault()?;
        let mut files = self.disk.files();
        let st = files.entry(self.path.clone()).or_default();
        st.synced_len = st.written_len;
        Ok(())
    }
}
