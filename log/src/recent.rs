//! The newest batches of the active segment, kept in memory for reads.
//!
//! A delivery reads its `Ingested` record a few milliseconds after the record became durable.
//! With direct writes (`io::direct`) the page cache does not hold those bytes: a `pread` goes to
//! the disk, and readahead does not help, because each direct write drops the cached pages it
//! covers, the ones readahead brought in just past the data among them. So the committer keeps
//! its last batches, up to [`crate::Options::recent_bytes_max`], and reads of the active segment
//! take a frame from them, without a copy, before they fall back to `pread`. Buffered writes
//! leave the bytes in the page cache, and nothing is kept here. Sealed segments are
//! read through their memory map as before.

use std::collections::VecDeque;

use bytes::Bytes;

/// Durable batches of the active segment by file position, oldest first.
pub(crate) struct Recent {
    batches: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max: usize,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("batches", &self.batches.len())
            .field("bytes", &self.bytes)
            .field("max", &self.max)
            .finish()
    }
}

impl Recent {
    /// Keeps at most `max` bytes (0: nothing).
    pub fn new(max: usize) -> Self {
        Recent {
            batches: VecDeque::new(),
            bytes: 0,
            max,
        }
    }

    /// For a segment written direct: keeps up to `max` bytes; written buffered, the page cache
    /// holds the newest bytes and nothing is kept.
    pub fn for_writes(direct: bool, max: usize) -> Self {
        Recent::new(if direct { max } else { 0 })
    }

    /// Keeps `data`, durable at file position `pos` (after every batch already kept), and
    /// forgets the oldest batches beyond the limit. A batch bigger than the limit is not kept.
    pub fn push(&mut self, pos: u64, data: &[u8]) {
        if data.len() > self.max {
            return;
        }
        debug_assert!(
            self.batches
                .back()
                .is_none_or(|(p, b)| p + b.len() as u64 <= pos),
            "batches are kept in file order"
        );
        while self.bytes + data.len() > self.max {
            let Some((_, old)) = self.batches.pop_front() else {
                break;
            };
            self.bytes -= old.len();
        }
        self.bytes += data.len();
        self.batches.push_back((pos, Bytes::copy_from_slice(data)));
    }

    /// The kept bytes from file position `pos` to the end of the batch holding it. A frame
    /// never spans two batches, so a frame starting at `pos` is whole in them.
    pub fn from(&self, pos: u64) -> Option<Bytes> {
        let i = self.batches.partition_point(|(start, _)| *start <= pos);
        let (start, data) = self.batches.get(i.checked_sub(1)?)?;
        let at = usize::try_from(pos - start).ok()?;
        (at < data.len()).then(|| data.slice(at..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_positions_inside_kept_batches_only() {
        let mut r = Recent::new(10);
        r.push(100, b"abcd");
        r.push(104, b"efg");
        assert_eq!(r.from(100).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(r.from(102).as_deref(), Some(&b"cd"[..]));
        assert_eq!(r.from(104).as_deref(), Some(&b"efg"[..]));
        assert_eq!(r.from(99), None);
        assert_eq!(r.from(107), None);
        assert_eq!(r.bytes, 7);
    }

    #[test]
    fn forgets_the_oldest_batches_past_the_limit() {
        let mut r = Recent::new(10);
        r.push(0, b"aaaa");
        r.push(4, b"bbbb");
        r.push(8, b"cccc");
        assert_eq!(r.from(0), None, "the oldest went");
        assert_eq!(r.from(4).as_deref(), Some(&b"bbbb"[..]));
        assert_eq!(r.from(8).as_deref(), Some(&b"cccc"[..]));
        assert_eq!(r.bytes, 8);
        // Too big to keep: nothing changes.
        r.push(12, &[0; 11]);
        assert_eq!(r.bytes, 8);
        assert_eq!(r.from(12), None);
        // Off: nothing is kept.
        let mut off = Recent::new(0);
        off.push(0, b"x");
        assert_eq!(off.from(0), None);
    }
}
