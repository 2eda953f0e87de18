//! Direct I/O for the active segment: writes that bypass the page cache.
//!
//! A buffered write of a batch copies it into page-cache pages that the kernel allocates,
//! dirties and writes back on the `fdatasync`; the zero-filler (`prealloc`) first allocates and
//! fills the same pages with zeros. On the machines HookRelay is measured on, touching freshly
//! allocated pages is the dear part: the zero-filler's copy alone was ~5 % of the machine during
//! max-ingest (BENCHMARKS.md §2, "Direct I/O"). With `O_DIRECT` the batch
//! goes from one reused, aligned buffer straight to the device, the way Seastar-based stores
//! (Redpanda, ScyllaDB) write their logs and PostgreSQL can write its WAL.
//!
//! `O_DIRECT` wants the file position, the length and the memory aligned to the device's block.
//! The log appends frames of any size, so [`DirectTail`] keeps the last, partly filled block of
//! what it wrote: each write starts at the block boundary below its position with those bytes,
//! then the batch, then zeros up to the next boundary. The partly filled block is thus written
//! again by the next batch, with the same bytes in front. A crash during that write leaves each
//! sector old or new, and both hold the same acknowledged bytes; the zeros past the data are
//! what recovery already treats as an unwritten tail.
//!
//! Reads stay buffered: sealed segments are memory-mapped and the active one is read with
//! `pread`, after the newest batches kept in memory (`recent`). The kernel keeps the page cache
//! coherent with direct writes (it drops the cached pages of the range a direct write covers).
//!
//! Off by default (`Options::direct_io`): on the project's machine it saves CPU at moderate
//! rates, with the tail and the saturated rate even with buffered writes (BENCHMARKS.md §2).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::ptr::NonNull;

/// Alignment of position, length and memory for direct writes: the page size, which is a
/// multiple of every logical block size Linux supports for `O_DIRECT` on the filesystems we run on.
pub(crate) const BLOCK: u64 = 4096;

/// Opens `path` for direct writes. `Ok(None)` when its filesystem does not take `O_DIRECT`
/// (tmpfs, some FUSE and network filesystems answer `EINVAL`): the caller writes buffered.
pub(crate) fn open(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A heap buffer whose memory and capacity are [`BLOCK`]-aligned; `len` bytes of it are the
/// write. Zeroed on allocation, so every byte is initialised.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively (like a `Vec<u8>`); moving it to the
// blocking pool's thread moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `min` bytes (rounded up to [`BLOCK`], at least one block).
    pub fn zeroed(min: usize) -> Self {
        let cap = min.max(1).next_multiple_of(BLOCK as usize);
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len: 0, cap }
    }

    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, BLOCK as usize).expect("a block-aligned layout")
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The bytes to write.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` and every byte of the allocation is initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Makes the first `len` bytes the write and returns them to fill.
    fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.cap, "an aligned buffer never grows");
        self.len = len;
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

/// The direct-write state of one segment file: its last partly filled block and a reusable
/// aligned buffer. Writes must append (each starts where the previous one ended, as the log's
/// do); a write anywhere else reads its leading partial block back from the file first.
pub(crate) struct DirectTail {
    /// A buffered handle on the same file, to read a leading partial block not in `tail`.
    plain: File,
    /// File position of `tail` (block-aligned); `u64::MAX` when unknown.
    tail_start: u64,
    /// The bytes of the block at `tail_start` before the end of the last write.
    tail: Vec<u8>,
    /// The buffer of the last write, reused when big enough.
    spare: Option<AlignedBuf>,
}

impl DirectTail {
    /// `plain`: a buffered read handle on the file written directly.
    pub fn new(plain: File) -> Self {
        DirectTail {
            plain,
            tail_start: u64::MAX,
            tail: Vec::new(),
            spare: None,
        }
    }

    /// The aligned write that puts `data` at `pos`: the buffer and its file position.
    pub fn stage(&mut self, data: &[u8], pos: u64) -> io::Result<(AlignedBuf, u64)> {
        let start = pos - pos % BLOCK;
        let head = usize::try_from(pos - start).expect("less than a block");
        if self.tail_start != start || self.tail.len() != head {
            self.tail.resize(head, 0);
            self.plain.read_exact_at(&mut self.tail, start)?;
            self.tail_start = start;
        }
        let end = pos + data.len() as u64;
        let padded = usize::try_from(end.next_multiple_of(BLOCK) - start)
            .map_err(|_| io::Error::other("a write larger than memory"))?;
        let mut buf = match self.spare.take() {
            Some(b) if b.capacity() >= padded => b,
            _ => AlignedBuf::zeroed(padded),
        };
        let out = buf.fill(padded);
        let (prefix, rest) = out.split_at_mut(head);
        prefix.copy_from_slice(&self.tail);
        let (body, pad) = rest.split_at_mut(data.len());
        body.copy_from_slice(data);
        pad.fill(0);
        Ok((buf, start))
    }

    /// Records a finished write of `buf` at `start` whose data ends at `end`: its last partial
    /// block becomes the tail, and the buffer is kept for the next write. On a failed write,
    /// pass `ok = false`: the tail is then read back from the file when next needed.
    pub fn finish(&mut self, buf: AlignedBuf, start: u64, end: u64, ok: bool) {
        self.tail.clear();
        if ok {
            let last = end - end % BLOCK;
            let from = usize::try_from(last - start).expect("within the buffer");
            let to = usize::try_from(end - start).expect("within the buffer");
            let kept = buf
                .as_slice()
                .get(from..to)
                .expect("the tail is within the write");
            self.tail.extend_from_slice(kept);
            self.tail_start = last;
        } else {
            self.tail_start = u64::MAX;
        }
        self.spare = Some(buf);
    }
}

#[cfg(test)]
mod tests;
