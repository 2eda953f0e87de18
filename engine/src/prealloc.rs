//! Preallocating the files HookRelay memory-maps (state table, idempotency tables), so a full
//! disk is an error when a file is created or grown — not a `SIGBUS` when a page of the mapping
//! is written back later.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// What step of [`create_durable`] or [`create_reserved`] failed, on which path.
#[derive(Debug)]
pub(crate) struct CreateError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Creates `path` complete and durable: written under `tmp` ([`create_reserved`]), renamed into
/// place, and the directory fsynced. A file with a bad header is therefore always damage, never
/// a creation cut short by a crash. Returns the open file (read + write).
pub(crate) fn create_durable(
    tmp: &Path,
    path: &Path,
    len: u64,
    header: &[u8],
) -> Result<File, CreateError> {
    let file = create_reserved(tmp, len, header)?;
    std::fs::rename(tmp, path).map_err(fail("rename", path))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(fail("fsync directory", parent))?;
    Ok(file)
}

/// Creates (or truncates) `path`, preallocated to `len` bytes with `header` at offset 0, and
/// fsyncs it; the caller names it into place. Returns the open file (read + write).
pub(crate) fn create_reserved(path: &Path, len: u64, header: &[u8]) -> Result<File, CreateError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(fail("create", path))?;
    reserve(&file, len).map_err(fail("reserve", path))?;
    file.write_all_at(header, 0)
        .map_err(fail("write header", path))?;
    file.sync_all().map_err(fail("fsync", path))?;
    Ok(file)
}

/// Maps an `io::Error` of step `op` on `path` to a [`CreateError`].
fn fail(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CreateError + use<> {
    let path = path.to_path_buf();
    move |source| CreateError { op, path, source }
}

/// Makes `file` at least `len` bytes, with real blocks reserved for the new part
/// (`posix_fallocate`); a no-op when it is already that long.
pub(crate) fn reserve(file: &File, len: u64) -> io::Result<()> {
    let current = file.metadata()?.len();
    if len <= current {
        return Ok(());
    }
    let offset = libc::off_t::try_from(current).map_err(io::Error::other)?;
    let extra = libc::off_t::try_from(len - current).map_err(io::Error::other)?;
    // SAFETY: plain syscall on an open descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, extra) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: fall back to a sparse file, the best we can do.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
