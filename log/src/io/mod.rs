//! The I/O seam: everything the write path does to disk goes through [`SegmentIo`] and
//! [`Backend`], so the log runs on io_uring, on a portable pwrite + fdatasync fallback, or on a
//! simulated disk for deterministic fault tests.
//!
//! With `Options::direct_io`, segment files are written with `O_DIRECT` where the filesystem
//! takes it (see [`direct`]).
//!
//! Reads are not part of the seam: sealed segments are memory-mapped and the durable part of the
//! active segment is read with `pread` (the page cache holds data just written buffered; after
//! direct writes, the log's `recent` batches serve it first).
//!
//! Backend choice ([`IoMode::Auto`]): the environment variable `HOOKRELAY_LOG_IO`
//! (`uring` | `portable`) wins; otherwise io_uring is used when the caller runs inside
//! `tokio_uring::start` and a no-op round trip through the ring succeeds, else the portable
//! backend. The choice is logged with `tracing` and reported as [`IoKind`].

pub(crate) mod direct;
mod portable;
mod ring;
mod sim;
mod uring;

use std::fs::File;
use std::io;
use std::path::Path;

pub use sim::SimDisk;

/// Environment variable that overrides [`IoMode::Auto`]: `uring` or `portable`.
pub const IO_ENV: &str = "HOOKRELAY_LOG_IO";

/// Which backend the caller asks for.
#[derive(Clone, Debug, Default)]
pub enum IoMode {
    /// `HOOKRELAY_LOG_IO` if set, else io_uring when available, else portable.
    #[default]
    Auto,
    /// io_uring through `tokio_uring::fs::File`; needs the caller to run inside
    /// `tokio_uring::start`. Opening fails with [`crate::Error::UringUnavailable`] otherwise.
    Uring,
    /// `pwrite` + `fdatasync` on tokio's blocking pool. Works on any tokio current-thread
    /// runtime with a `LocalSet` (and inside `tokio_uring::start`).
    Portable,
    /// A simulated disk (real files, simulated fsync) for fault tests.
    Simulated(SimDisk),
}

/// The backend actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// io_uring.
    Uring,
    /// pwrite + fdatasync on the blocking pool.
    Portable,
    /// The simulated disk.
    Simulated,
}

/// The write-side operations on one open file. `write_all_at` takes and returns an owned buffer
/// because io_uring (and the blocking pool) need the memory to outlive the call; the caller
/// reuses it for the next batch.
#[allow(async_fn_in_trait)] // crate-private; every implementor is !Send by design (one shard).
pub(crate) trait SegmentIo {
    /// Writes all of `buf` at byte `pos`.
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>);
    /// `fdatasync`: the written data (and the file size) are durable when this returns Ok.
    async fn sync_data(&self) -> io::Result<()>;
    /// `write_all_at`, then `sync_data`; a backend may submit the two together.
    async fn write_all_at_synced(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = self.write_all_at(buf, pos).await;
        match res {
            Ok(()) => (self.sync_data().await, buf),
            Err(e) => (Err(e), buf),
        }
    }
}

/// An open file on the chosen backend.
pub(crate) enum SegmentFile {
    Uring(uring::UringFile),
    Portable(portable::PortableFile),
    Sim(sim::SimFile),
}

impl SegmentIo for SegmentFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        match self {
            SegmentFile::Uring(f) => f.write_all_at(buf, pos).await,
            SegmentFile::Portable(f) => f.write_all_at(buf, pos).await,
            SegmentFile::Sim(f) => f.write_all_at(buf, pos).await,
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        match self {
            SegmentFile::Uring(f) => f.sync_data().await,
            SegmentFile::Portable(f) => f.sync_data().await,
            SegmentFile::Sim(f) => f.sync_data().await,
        }
    }

    async fn write_all_at_synced(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        match self {
            SegmentFile::Uring(f) => f.write_all_at_synced(buf, pos).await,
            SegmentFile::Portable(f) => f.write_all_at_synced(buf, pos).await,
            SegmentFile::Sim(f) => f.write_all_at_synced(buf, pos).await,
        }
    }
}

/// A segment opened for writing ([`Backend::segment_writer`]).
pub(crate) struct SegmentWriter {
    pub file: SegmentFile,
    /// A write handle on the same file for the zero-filler (direct when `direct`).
    pub zero_fill: File,
    /// Writes bypass the page cache: positions and lengths of `zero_fill`'s writes must be
    /// multiples of [`direct::BLOCK`], from aligned memory.
    pub direct: bool,
}

/// The chosen backend; opens files and does the directory-level operations.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Uring,
    Portable,
    Sim(SimDisk),
}

impl Backend {
    pub fn kind(&self) -> IoKind {
        match self {
            Backend::Uring => IoKind::Uring,
            Backend::Portable => IoKind::Portable,
            Backend::Sim(_) => IoKind::Simulated,
        }
    }

    /// Wraps an already-open std file (opened read + write) for the write path. Fails only
    /// when io_uring cannot set up the file's ring.
    pub fn wrap(&self, file: File, path: &Path) -> io::Result<SegmentFile> {
        Ok(match self {
            Backend::Uring => SegmentFile::Uring(uring::UringFile::new(file)?),
            Backend::Portable => SegmentFile::Portable(portable::PortableFile::new(file)),
            Backend::Sim(disk) => SegmentFile::Sim(disk.wrap(file, path)),
        })
    }

    /// The write side of a segment: `file` (opened read + write, at `path`) wrapped for the
    /// write path, and a second write handle for the zero-filler. With `direct`, on a backend
    /// that does real I/O and a filesystem that takes `O_DIRECT`, both write around the page
    /// cache; `file` then only serves reads of a partly written block.
    pub fn segment_writer(
        &self,
        file: File,
        path: &Path,
        direct: bool,
    ) -> io::Result<SegmentWriter> {
        let handle = match self {
            Backend::Uring | Backend::Portable if direct => direct::open(path)?,
            _ => None,
        };
        let Some(handle) = handle else {
            let zero_fill = file.try_clone()?;
            return Ok(SegmentWriter {
                file: self.wrap(file, path)?,
                zero_fill,
                direct: false,
            });
        };
        let zero_fill = handle.try_clone()?;
        let file = match self {
            Backend::Uring => SegmentFile::Uring(uring::UringFile::direct(handle, file)?),
            _ => SegmentFile::Portable(portable::PortableFile::direct(handle, file)),
        };
        Ok(SegmentWriter {
            file,
            zero_fill,
            direct: true,
        })
    }

    /// fsyncs a directory so that created, renamed or removed entries are durable.
    pub async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Backend::Uring => uring::sync_dir(dir).await,
            Backend::Portable => portable::sync_dir(dir).await,
            Backend::Sim(disk) => disk.sync_dir(),
        }
    }

    /// Removes a file (unlink can take a while on big files, so it is off the shard).
    pub async fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Backend::Uring => tokio_uring::fs::remove_file(path).await,
            Backend::Portable => portable::remove_file(path).await,
            Backend::Sim(disk) => disk.remove_file(path),
        }
    }
}

/// Picks the backend for `mode`, probing io_uring where needed, and logs the choice.
pub(crate) async fn choose(mode: &IoMode) -> Result<Backend, crate::Error> {
    let backend = match mode {
        IoMode::Simulated(disk) => Backend::Sim(disk.clone()),
        IoMode::Portable => Backend::Portable,
        IoMode::Uring => {
            uring::probe()
                .await
                .map_err(|reason| crate::Error::UringUnavailable { reason })?;
            Backend::Uring
        }
        IoMode::Auto => match std::env::var(IO_ENV).ok().as_deref() {
            Some("uring") => {
                uring::probe()
                    .await
                    .map_err(|reason| crate::Error::UringUnavailable {
                        reason: format!("{IO_ENV}=uring: {reason}"),
                    })?;
                Backend::Uring
            }
            Some("portable") => Backend::Portable,
            other => {
                if let Some(v) = other.filter(|v| !v.is_empty() && *v != "auto") {
                    tracing::warn!(value = v, "{IO_ENV} is not uring|portable|auto; probing");
                }
                match uring::probe().await {
                    Ok(()) => Backend::Uring,
                    Err(reason) => {
                        tracing::info!(%reason, "io_uring unavailable, using the portable backend");
                        Backend::Portable
                    }
                }
            }
        },
    };
    tracing::info!(io = ?backend.kind(), "log i/o backend chosen");
    Ok(backend)
}
