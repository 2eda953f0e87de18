//! Paced writeback of the memory-mapped tables (idempotency index, state table).
//!
//! A table dirtied by a busy minute holds tens of MiB of dirty pages scattered over its file.
//! Written back in one go — by a plain `fdatasync`, or by the kernel's flusher once the pages
//! are `vm.dirty_expire_centisecs` (30 s) old — those pages fill the disk's queue, and every log
//! commit behind them waits: in a 10k req/s run a 66 MiB flusher burst made three commits take
//! 59–91 ms, and the ACK p99 of that run 148 ms (BENCHMARKS.md, "Table writeback").
//!
//! [`sync_paced`] writes a file back a window at a time and waits for each window before it
//! starts the next, so at most one window of table writes is ever queued in front of a
//! commit. It makes two such passes (the second catches what was dirtied during the first),
//! then an `fdatasync`, which has little left to write, flushes the disk's cache, and marks
//! the file clean: the kernel's flusher then sees it dirty only from the next write on, so
//! checkpoints more often than the flusher's 30 s keep it off the tables altogether.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

/// Bytes written back per window: at most this much table writeback is queued ahead of a log
/// commit (a few milliseconds of this machine's disk; BENCHMARKS.md).
pub const WINDOW_BYTES: u64 = 512 * 1024;

/// Writes `file` back window by window (two passes), then fdatasyncs it. Clean windows cost
/// a lookup in the page cache's dirty tags, no I/O.
pub fn sync_paced(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    for _ in 0..2 {
        let mut offset = 0;
        while offset < len {
            write_and_wait(file, offset, WINDOW_BYTES.min(len - offset))?;
            offset += WINDOW_BYTES;
        }
    }
    file.sync_data()
}

/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` of `[offset, offset + len)`: the
/// range's dirty pages are written and waited for (no metadata, no cache flush).
fn write_and_wait(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range past the largest file offset",
        ));
    };
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;

    use super::*;

    /// Whole windows, a last partial one, an empty file: all written back and readable.
    #[test]
    fn writes_every_window_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0u64, 1, WINDOW_BYTES, 3 * WINDOW_BYTES + 17] {
            let path = dir.path().join(format!("t{len}"));
            let mut f = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            f.write_all(&bytes).unwrap();
            sync_paced(&f).unwrap();
            let mut back = vec![0u8; len as usize];
            File::open(&path)
                .unwrap()
                .read_exact_at(&mut back, 0)
                .unwrap();
            assert_eq!(back, bytes, "len {len}");
        }
    }

    /// A descriptor that cannot be written back (a pipe) reports the error.
    #[test]
    fn errors_are_reported() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let as_file = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(sync_paced(&as_file).is_err(), "a pipe cannot be synced");
    }
}
