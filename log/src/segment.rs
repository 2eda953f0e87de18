//! Segments: files named by their first offset, a 40-byte header, then frames.
//!
//! ```text
//! byte  0..8   magic "HRLOGSEG"
//! byte  8      format version (1)
//! byte  9..16  reserved, zero
//! byte 16..24  first offset of the segment  u64 LE (must match the file name)
//! byte 24..32  creation time, ms since the Unix epoch  u64 LE (segment age survives restarts)
//! byte 32..36  crc32 of bytes 0..32         u32 LE
//! byte 36..40  reserved, zero
//! byte 40..    frames (see `frame.rs`), back to back, offsets consecutive from the first
//! ```
//!
//! A sealed segment is immutable and read through a memory map; the active segment is read with
//! positioned reads, and only up to its durable length. This module holds both views and the
//! "find a frame by offset" walk; it does not write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::Error;
use crate::frame::{self, FRAME_HEADER_BYTES, FrameCheck, FrameHeader};
use crate::index::{Entry, IndexBuilder, SparseIndex};

/// Magic bytes at the start of a segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"HRLOGSEG";
/// Segment format version written by this code.
pub const SEGMENT_VERSION: u8 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 40;

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number of the record in the log (0, 1, 2, …).
    pub offset: u64,
    /// Epoch the record was written in.
    pub epoch: u32,
    /// Caller-defined record type.
    pub record_type: u8,
    /// The payload, exactly as appended.
    pub payload: Bytes,
}

/// `<dir>/<first offset, 20 digits>.seg`
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// `<dir>/<first offset, 20 digits>.idx`
pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Parses a segment file name back into its first offset.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub(crate) fn encode_header(base: u64, created_unix_ms: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8] = SEGMENT_VERSION;
    h[16..24].copy_from_slice(&base.to_le_bytes());
    h[24..32].copy_from_slice(&created_unix_ms.to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub base: u64,
    pub created_unix_ms: u64,
}

/// Checks a segment header; `Err(reason)` when it is not one this code can read.
pub(crate) fn decode_header(b: &[u8]) -> Result<SegmentHeader, String> {
    let h: &[u8; SEGMENT_HEADER_BYTES] = b
        .get(..SEGMENT_HEADER_BYTES)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| "segment shorter than its header".to_string())?;
    if h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if h[8] != SEGMENT_VERSION {
        return Err(format!("unknown segment format version {}", h[8]));
    }
    let crc = u32::from_le_bytes([h[32], h[33], h[34], h[35]]);
    if crc32fast::hash(&h[0..32]) != crc {
        return Err("segment header crc mismatch".into());
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&h[16..24]);
    let mut created = [0u8; 8];
    created.copy_from_slice(&h[24..32]);
    Ok(SegmentHeader {
        base: u64::from_le_bytes(base),
        created_unix_ms: u64::from_le_bytes(created),
    })
}

/// A sealed, immutable segment, mapped into memory.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub base: u64,
    /// One past the last offset in the segment.
    pub next: u64,
    pub path: PathBuf,
    pub idx_path: PathBuf,
    pub bytes: u64,
    /// The whole file, backed by the memory map (cheap to slice into payloads).
    pub data: Bytes,
    pub index: SparseIndex,
}

/// The readable (durable) part of the active segment.
#[derive(Debug)]
pub(crate) struct ActiveView {
    pub base: u64,
    pub path: PathBuf,
    /// A read-only handle used for positioned reads.
    pub file: File,
    /// Bytes of the file that are fsynced (header included).
    pub durable_bytes: u64,
    pub index: IndexBuilder,
    /// The newest durable batches, served before `file`.
    pub recent: crate::recent::Recent,
}

/// Reads the frame starting at `pos` (and ending before `end`) from a sealed segment.
pub(crate) fn sealed_frame_at(
    seg: &Sealed,
    pos: u64,
    frame_bytes_max: u32,
) -> Result<(FrameHeader, Bytes), Error> {
    let corrupt = |reason: String| Error::corrupt(&seg.path, pos, reason);
    let start = usize::try_from(pos).map_err(|_| corrupt("position overflow".into()))?;
    let buf = seg
        .data
        .get(start..)
        .ok_or_else(|| corrupt("position past end of segment".into()))?;
    match frame::check(buf, frame_bytes_max) {
        FrameCheck::Valid(h) => {
            let end = start + h.frame_len() as usize;
            Ok((h, seg.data.slice(start + FRAME_HEADER_BYTES..end)))
        }
        bad => Err(corrupt(bad.reason())),
    }
}

/// Reads the frame starting at `pos` from the active segment with positioned reads; the frame
/// must end at or before `durable_bytes`.
pub(crate) fn active_frame_at(
    seg: &ActiveView,
    pos: u64,
    frame_bytes_max: u32,
) -> Result<(FrameHeader, Bytes), Error> {
    let corrupt = |reason: String| Error::corrupt(&seg.path, pos, reason);
    if let Some(kept) = seg.recent.from(pos) {
        return match frame::check(&kept, frame_bytes_max) {
            FrameCheck::Valid(h) => {
                let len = usize::try_from(h.frame_len())
                    .map_err(|_| corrupt("frame length overflow".into()))?;
                Ok((h, kept.slice(FRAME_HEADER_BYTES..len)))
            }
            bad => Err(corrupt(bad.reason())),
        };
    }
    let mut hb = [0u8; FRAME_HEADER_BYTES];
    if pos + FRAME_HEADER_BYTES as u64 > seg.durable_bytes {
        return Err(corrupt("frame header past the durable end".into()));
    }
    seg.file
        .read_exact_at(&mut hb, pos)
        .map_err(|e| Error::io(&seg.path, e))?;
    let h = frame::decode_header(&hb);
    let len = h.frame_len();
    if len > u64::from(frame_bytes_max) {
        return Err(corrupt(FrameCheck::TooLarge(len).reason()));
    }
    if pos + len > seg.durable_bytes {
        return Err(corrupt("frame extends past the durable end".into()));
    }
    let mut buf = vec![0u8; len as usize];
    seg.file
        .read_exact_at(&mut buf, pos)
        .map_err(|e| Error::io(&seg.path, e))?;
    match frame::check(&buf, frame_bytes_max) {
        FrameCheck::Valid(h2) => {
            // Pair assertion: what we decoded before the full read is what the CRC covers.
            debug_assert_eq!(h, h2);
            Ok((h2, Bytes::from(buf).slice(FRAME_HEADER_BYTES..)))
        }
        bad => Err(corrupt(bad.reason())),
    }
}

/// Where a read by offset starts walking: the nearest index entry at or below `offset`.
pub(crate) fn walk_start(index_floor: Option<Entry>, base: u64) -> Entry {
    index_floor.unwrap_or(Entry {
        offset: base,
        position: SEGMENT_HEADER_BYTES as u64,
    })
}

/// Walks frames from `start` until `target`, using `frame_at` to read each one.
/// Returns the record and the position of the frame after it.
pub(crate) fn walk_to(
    path: &Path,
    start: Entry,
    target: u64,
    end_bytes: u64,
    mut frame_at: impl FnMut(u64) -> Result<(FrameHeader, Bytes), Error>,
) -> Result<(Record, u64), Error> {
    assert!(
        start.offset <= target,
        "walk must start at or below its target"
    );
    let (mut pos, mut expect) = (start.position, start.offset);
    loop {
        if pos >= end_bytes {
            return Err(Error::corrupt(
                path,
                pos,
                format!("offset {target} missing from its segment"),
            ));
        }
        let (h, payload) = frame_at(pos)?;
        if h.offset != expect {
            return Err(Error::corrupt(
                path,
                pos,
                format!(
                    "frame holds offset {} where {expect} was expected",
                    h.offset
                ),
            ));
        }
        let next_pos = pos + h.frame_len();
        if h.offset == target {
            let record = Record {
                offset: h.offset,
                epoch: h.epoch,
                record_type: h.record_type,
                payload,
            };
            return Ok((record, next_pos));
        }
        pos = next_pos;
        expect += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/x"), 42);
        assert_eq!(p, Path::new("/x/00000000000000000042.seg"));
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.idx"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = encode_header(7, 1_700_000_000_000);
        assert_eq!(
            decode_header(&h),
            Ok(SegmentHeader {
                base: 7,
                created_unix_ms: 1_700_000_000_000
            })
        );
        for i in 0..36 {
            let mut d = h;
            d[i] ^= 1;
            assert!(decode_header(&d).is_err(), "damage at {i} not detected");
        }
        assert!(decode_header(&h[..39]).is_err());
    }
}
