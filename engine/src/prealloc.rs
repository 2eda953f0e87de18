//! Preallocating the files HookRelay memory-maps (state table, idempotency tables), so a full
//! disk is an error when a file is created or grown — not a `SIGBUS` when a page of the mapping
//! is written back later.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
