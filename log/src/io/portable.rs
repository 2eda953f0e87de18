//! Portable backend: `pwrite` + `fdatasync` with std, run on tokio's blocking pool so the shard's
//! executor never blocks on the disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::SegmentIo;

/// A file written through the blocking pool.
pub(crate) struct PortableFile {
    file: Arc<File>,
}

impl PortableFile {
    pub fn new(file: File) -> Self {
        PortableFile {
            file: Arc::new(file),
        }
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> io::Result<T> {
    r.map_err(io::Error::other)
}

impl SegmentIo for PortableFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let file = Arc::clone(&self.file);
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
