//! Preallocating the files HookRelay memory-maps (state table, idempotency tables), so a full
//! disk is an error when a file is created or grown — not a `SIGBUS` when a page of the mapping
//! is written back later; and warming what was preallocated ([`warm`]), off the shard's thread.

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

/// Brings `[from, end of file)` of `file` into the page cache through a read-only mapping of
/// its own, dropped at once: the pages are not this process's resident memory until the
/// file's real mapping touches them. With `huge` the mapping asks for 2 MiB pages, so the
/// page cache holds 2 MiB folios that a huge-page mapping of the file maps whole.
///
/// For the blocking pool, on files just preallocated. Left to the shard's first writes, the
/// page cache's zeroed pages are made on the shard's thread, and first-touch memory is slow on
/// a virtual machine (~2 ms per MiB on the project's, host faults): the owning shard stopped
/// for 90–150 ms, nearly all of it in `memset`, each time it moved to a new idempotency table
/// at max-ingest (BENCHMARKS.md, "Eighteenth session"). The pages stay clean: nothing more is
/// written, and the kernel may still reclaim them before they are used. Advice only: where
/// the kernel cannot populate (before Linux 5.14), the first writes fault them in as before.
pub(crate) fn warm(file: &File, from: u64, huge: bool) {
    // SAFETY: a read-only mapping of a file that nothing truncates while it is being made or
    // grown; no slice into it is created, and it is dropped before returning.
    let Ok(map) = (unsafe { memmap2::Mmap::map(file) }) else {
        return;
    };
    let Some(from) = usize::try_from(from).ok().filter(|&from| from < map.len()) else {
        return;
    };
    if huge {
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    let _ = map.advise_range(memmap2::Advice::PopulateRead, from, map.len() - from);
}

/// Of the pages under `bytes` (a slice of a file mapping), how many are in the page cache, and
/// how many there are (`mincore`).
#[cfg(test)]
pub(crate) fn pages_in_cache(bytes: &[u8]) -> (usize, usize) {
    const PAGE: usize = 4096;
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % PAGE;
    let len = start + bytes.len() - aligned;
    let mut resident = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `[aligned, aligned + len)` lies within the pages of a live mapping (`bytes` is
    // in it; mappings are page-aligned); `resident` has one byte per page of the range.
    let rc = unsafe { libc::mincore(aligned as *mut libc::c_void, len, resident.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
    let in_cache = resident.iter().filter(|&&b| b & 1 == 1).count();
    (in_cache, resident.len())
}
