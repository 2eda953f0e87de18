//! The sparse offset → byte-position index of one segment, and its on-disk form.
//!
//! An entry is added for the first frame of a segment and then for the first frame that starts
//! at least `index_interval_bytes` after the previous entry, so a read by offset seeks to the
//! nearest entry at or below it and walks forward at most about one interval.
//!
//! Index file (`<first offset>.idx`, written once when a segment is sealed):
//!
//! ```text
//! byte  0..8   magic "HRLOGIDX"
//! byte  8      format version (1)
//! byte  9..12  reserved, zero
//! byte 12..16  index_interval_bytes used to build it   u32 LE
//! byte 16..24  segment first offset                    u64 LE
//! byte 24..32  segment file length in bytes            u64 LE
//! byte 32..40  records in the segment                  u64 LE
//! byte 40..48  entry count n                           u64 LE
//! byte 48..    n entries of 16 bytes: offset u64 LE, byte position u64 LE
//! last 4 bytes crc32 of everything before it           u32 LE
//! ```
//!
//! An index file that is missing, has another version, a bad CRC or disagrees with its segment
//! is rebuilt from the segment; it is a cache, the segment is the truth.

use memmap2::Mmap;

/// Magic bytes at the start of an index file.
pub const INDEX_MAGIC: [u8; 8] = *b"HRLOGIDX";
/// Index file format version.
pub const INDEX_VERSION: u8 = 1;
/// Bytes before the first entry.
pub const INDEX_HEADER_BYTES: usize = 48;
/// Bytes per entry.
pub const INDEX_ENTRY_BYTES: usize = 16;

/// One sparse-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub offset: u64,
    pub position: u64,
}

/// Builds the entry list while frames are appended or scanned, applying the interval rule.
#[derive(Debug, Clone)]
pub(crate) struct IndexBuilder {
    interval_bytes: u64,
    last_position: Option<u64>,
    pub entries: Vec<Entry>,
}

impl IndexBuilder {
    pub fn new(interval_bytes: u32) -> Self {
        IndexBuilder {
            interval_bytes: u64::from(interval_bytes),
            last_position: None,
            entries: Vec::new(),
        }
    }

    /// Notes a frame for `offset` at byte `position`; positions must grow.
    pub fn note(&mut self, offset: u64, position: u64) {
        let due = match self.last_position {
            None => true,
            Some(last) => {
                assert!(position > last, "frame positions must grow");
                position - last >= self.interval_bytes
            }
        };
        if due {
            if let Some(prev) = self.entries.last() {
                assert!(offset > prev.offset, "index offsets must grow");
            }
            self.entries.push(Entry { offset, position });
            self.last_position = Some(position);
        }
    }
}

/// What an index file says about its segment besides the entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexMeta {
    /// The `index_interval_bytes` the entries were built with.
    pub interval_bytes: u32,
    pub base_offset: u64,
    pub segment_bytes: u64,
    pub records: u64,
}

/// Serialises an index file.
pub(crate) fn encode(meta: IndexMeta, entries: &[Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(INDEX_HEADER_BYTES + entries.len() * INDEX_ENTRY_BYTES + 4);
    b.extend_from_slice(&INDEX_MAGIC);
    b.push(INDEX_VERSION);
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&meta.interval_bytes.to_le_bytes());
    b.extend_from_slice(&meta.base_offset.to_le_bytes());
    b.extend_from_slice(&meta.segment_bytes.to_le_bytes());
    b.extend_from_slice(&meta.records.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.position.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// Checks an index file's bytes; `None` if they cannot be trusted (the caller rebuilds).
pub(crate) fn validate(b: &[u8]) -> Option<(IndexMeta, u64)> {
    if b.get(..8)? != INDEX_MAGIC || *b.get(8)? != INDEX_VERSION {
        return None;
    }
    let count = u64_at(b, 40)?;
    let expected_len = (INDEX_HEADER_BYTES as u64)
        .checked_add(count.checked_mul(INDEX_ENTRY_BYTES as u64)?)?
        .checked_add(4)?;
    if b.len() as u64 != expected_len {
        return None;
    }
    let body_len = b.len() - 4;
    if crc32fast::hash(b.get(..body_len)?) != u32_at(b, body_len)? {
        return None;
    }
    let meta = IndexMeta {
        interval_bytes: u32_at(b, 12)?,
        base_offset: u64_at(b, 16)?,
        segment_bytes: u64_at(b, 24)?,
        records: u64_at(b, 32)?,
    };
    Some((meta, count))
}

/// The entries of a segment: owned while the segment is active (or when rebuilt), mapped from
/// the index file once sealed so that retained history does not cost heap memory.
#[derive(Debug)]
pub(crate) enum SparseIndex {
    Owned(Vec<Entry>),
    Mapped { map: Mmap, count: usize },
}

impl SparseIndex {
    pub fn len(&self) -> usize {
        match self {
            SparseIndex::Owned(v) => v.len(),
            SparseIndex::Mapped { count, .. } => *count,
        }
    }

    pub fn get(&self, i: usize) -> Option<Entry> {
        match self {
            SparseIndex::Owned(v) => v.get(i).copied(),
            SparseIndex::Mapped { map, count } => {
                if i >= *count {
                    return None;
                }
                let at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES;
                Some(Entry {
                    offset: u64_at(map, at)?,
                    position: u64_at(map, at + 8)?,
                })
            }
        }
    }

    /// The last entry whose offset is <= `offset` (binary search).
    pub fn floor(&self, offset: u64) -> Option<Entry> {
        let (mut lo, mut hi) = (0usize, self.len());
        // Invariant: entries [0, lo) have offset <= target, entries [hi, len) have offset > target.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if e.offset <= offset => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo.checked_sub(1).and_then(|i| self.get(i))
    }

    pub fn to_vec(&self) -> Vec<Entry> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_respects_interval() {
        let mut b = IndexBuilder::new(100);
        for i in 0..50u64 {
            b.note(i, 40 + i * 30);
        }
        let pos: Vec<u64> = b.entries.iter().map(|e| e.position).collect();
        assert_eq!(pos.first(), Some(&40));
        for w in pos.windows(2) {
            assert!(w[1] - w[0] >= 100 && w[1] - w[0] < 130);
        }
    }

    #[test]
    fn encode_validate_round_trip_and_damage() {
        let entries = vec![
            Entry {
                offset: 10,
                position: 40,
            },
            Entry {
                offset: 15,
                position: 4200,
            },
        ];
        let meta = IndexMeta {
            interval_bytes: 4096,
            base_offset: 10,
            segment_bytes: 9000,
            records: 20,
        };
        let b = encode(meta, &entries);
        assert_eq!(validate(&b), Some((meta, 2)));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert_eq!(validate(&d), None, "damage at {i} not detected");
        }
        assert_eq!(validate(&b[..b.len() - 1]), None);
    }

    #[test]
    fn floor_matches_linear_search() {
        let entries: Vec<Entry> = (0..37u64)
            .map(|i| Entry {
                offset: i * 3 + 5,
                position: i * 100,
            })
            .collect();
        let idx = SparseIndex::Owned(entries.clone());
        for q in 0..150u64 {
            let want = entries.iter().rev().find(|e| e.offset <= q).copied();
            assert_eq!(idx.floor(q), want, "query {q}");
        }
    }
}
