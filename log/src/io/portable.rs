//! Portable backend: `pwrite` + `fdatasync` with std, run on tokio's blocking pool so the shard's
//! executor never blocks on the disk.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::SegmentIo;
use super::direct::DirectTail;

/// A file written through the blocking pool.
pub(crate) struct PortableFile {
    file: Arc<File>,
    /// Set when `file` was opened with `O_DIRECT` (see `direct`).
    direct: Option<RefCell<DirectTail>>,
}

impl PortableFile {
    pub fn new(file: File) -> Self {
        PortableFile {
            file: Arc::new(file),
            direct: None,
        }
    }

    /// `file` opened with `O_DIRECT`; `plain`, a buffered handle on the same file.
    pub fn direct(file: File, plain: File) -> Self {
        PortableFile {
            file: Arc::new(file),
            direct: Some(RefCell::new(DirectTail::new(plain))),
        }
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(io::Error::other)
}

impl SegmentIo for PortableFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let file = Arc::clone(&self.file);
        if let Some(direct) = &self.direct {
            let (aligned, start) = match direct.borrow_mut().stage(&buf, pos) {
                Ok(staged) => staged,
                Err(e) => return (Err(e), buf),
            };
            let written = tokio::task::spawn_blocking(move || {
                let r = file.write_all_at(aligned.as_slice(), start);
                (r, aligned)
            })
            .await;
            return match written {
                Ok((res, aligned)) => {
                    let end = pos + buf.len() as u64;
                    direct.borrow_mut().finish(aligned, start, end, res.is_ok());
                    (res, buf)
                }
                // As below: the write may or may not have happened; the log is poisoned.
                Err(e) => (Err(io::Error::other(e)), buf),
            };
        }
        match tokio::task::spawn_blocking(move || {
            let r = file.write_all_at(&buf, pos);
            (r, buf)
        })
        .await
        {
            Ok(out) => out,
            // The closure panicked or the runtime is shutting down: the buffer is gone, and the
            // write may or may not have happened — the caller poisons the log.
            Err(e) => (Err(io::Error::other(e)), Vec::new()),
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        joined(tokio::task::spawn_blocking(move || file.sync_data()).await)?
    }
}

/// fsync of a directory on the blocking pool.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    joined(tokio::task::spawn_blocking(move || File::open(dir)?.sync_all()).await)?
}

/// unlink on the blocking pool.
pub(crate) async fn remove_file(path: &Path) -> io::Result<()> {
    let path = path.to_path_buf();
    joined(tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await)?
}
