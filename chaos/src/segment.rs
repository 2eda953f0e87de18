//! Reads and damages log segments on disk, from the format in log/README.md (version 1):
//! a 40-byte segment header, then frames of a 24-byte header (length u32, crc32 u32 of header
//! bytes 8..24 and the payload, offset u64, epoch u32, record type u8, 3 reserved zero bytes)
//! and the payload. An `Ingested` record's payload starts with a version byte, the sequence
//! number (u64) and the delivery id (u32 length + bytes).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const SEGMENT_HEADER_BYTES: u64 = 40;
pub const FRAME_HEADER_BYTES: u64 = 24;
/// The record type of `Ingested` (engine/src/record.rs).
pub const TYPE_INGESTED: u8 = 1;
/// Frames longer than this are treated as damage (the log's default `frame_bytes_max`).
const FRAME_BYTES_MAX: u64 = 8 << 20;

/// One valid frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Byte position of the frame header in the file.
    pub pos: u64,
    /// Header + payload bytes.
    pub len: u64,
    pub offset: u64,
    /// The delivery id of an `Ingested` record.
    pub delivery_id: Option<String>,
}

impl Frame {
    pub fn end(&self) -> u64 {
        self.pos + self.len
    }
}

/// The valid frames of a segment, front to back, and where validity ends.
#[derive(Clone, Debug)]
pub struct Scan {
    pub frames: Vec<Frame>,
    /// End of the last valid frame.
    pub valid_end: u64,
    /// End of the last non-zero byte at or after `valid_end`: past it, only the zeros the log
    /// preallocates ahead of its data.
    pub data_end: u64,
}

/// `<data_dir>/shards/NNN/log` for every shard, in shard order.
pub fn shard_log_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("shards"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("log"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The active (highest-named) segment of a log directory.
pub fn active_segment(log_dir: &Path) -> Option<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(log_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop()
}

/// Scans a segment up to its first invalid frame.
pub fn scan(path: &Path) -> anyhow::Result<Scan> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(scan_bytes(&bytes))
}

fn scan_bytes(bytes: &[u8]) -> Scan {
    let file_len = bytes.len() as u64;
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut expected_offset: Option<u64> = None;
    while let Some(frame) = frame_at(bytes, pos) {
        if expected_offset.is_some_and(|o| o != frame.offset) {
            break;
        }
        expected_offset = Some(frame.offset + 1);
        pos = frame.end();
        frames.push(frame);
    }
    let valid_end = frames
        .last()
        .map_or(SEGMENT_HEADER_BYTES.min(file_len), Frame::end);
    Scan {
        valid_end,
        data_end: valid_end + nonzero_len(bytes.get(valid_end as usize..).unwrap_or_default()),
        frames,
    }
}

/// Length of `bytes` without its trailing zeros.
pub fn nonzero_len(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// What recovery must report as torn when the valid frames of `path` end at `valid_end`: the
/// bytes after it up to the last non-zero one (trailing zeros are preallocated space).
pub fn torn_len(path: &Path, valid_end: u64) -> anyhow::Result<u64> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(nonzero_len(
        bytes.get(valid_end as usize..).unwrap_or_default(),
    ))
}

fn frame_at(bytes: &[u8], pos: u64) -> Option<Frame> {
    let p = usize::try_from(pos).ok()?;
    let header = bytes.get(p..p + FRAME_HEADER_BYTES as usize)?;
    let payload_len = u64::from(u32::from_le_bytes(header[0..4].try_into().ok()?));
    if FRAME_HEADER_BYTES + payload_len > FRAME_BYTES_MAX || header[21..24] != [0, 0, 0] {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = bytes.get(p + 24..p + 24 + payload_len as usize)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..24]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    let record_type = header[20];
    let delivery_id = (record_type == TYPE_INGESTED)
        .then(|| {
            let len = u32::from_le_bytes(payload.get(9..13)?.try_into().ok()?) as usize;
            let id = payload.get(13..13 + len)?;
            String::from_utf8(id.to_vec()).ok()
        })
        .flatten();
    Some(Frame {
        pos,
        len: FRAME_HEADER_BYTES + payload_len,
        offset: u64::from_le_bytes(header[8..16].try_into().ok()?),
        delivery_id,
    })
}

/// Cuts the file to `len` bytes and syncs it.
pub fn cut(path: &Path, len: u64) -> anyhow::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()?;
    Ok(())
}

/// XORs the byte at `pos` with `mask` (non-zero) and syncs; returns the original byte.
pub fn flip(path: &Path, pos: u64, mask: u8) -> anyhow::Result<u8> {
    assert_ne!(mask, 0, "a zero mask flips nothing");
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos)?;
    let original = b[0];
    f.write_all_at(&[original ^ mask], pos)?;
    f.sync_all()?;
    Ok(original)
}

/// Writes `byte` back at `pos` (undoes [`flip`]).
pub fn restore(path: &Path, pos: u64, byte: u8) -> anyhow::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&[byte], pos)?;
    f.sync_all()?;
    Ok(())
}

/// Writes `bytes` (a torn, partial frame) at `pos` — where the next frame would have gone,
/// inside the zeros the log preallocates or at the end of the file — and syncs.
pub fn write_torn(path: &Path, pos: u64, bytes: &[u8]) -> anyhow::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, pos)?;
    f.sync_all()?;
    Ok(())
}

/// The bytes of `frame` in the file at `path`.
pub fn frame_bytes(path: &Path, frame: &Frame) -> anyhow::Result<Vec<u8>> {
    let f = OpenOptions::new().read(true).open(path)?;
    let mut buf = vec![0u8; frame.len as usize];
    f.read_exact_at(&mut buf, frame.pos)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, record_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 24];
        h[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        h[20] = record_type;
        let mut c = crc32fast::Hasher::new();
        c.update(&h[8..24]);
        c.update(payload);
        h[4..8].copy_from_slice(&c.finalize().to_le_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn ingested(id: &str) -> Vec<u8> {
        let mut p = vec![1u8];
        p.extend_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(&(id.len() as u32).to_le_bytes());
        p.extend_from_slice(id.as_bytes());
        p.extend_from_slice(b"rest");
        p
    }

    #[test]
    fn scans_frames_and_stops_at_damage() {
        let mut seg = vec![0u8; 40];
        seg.extend(frame(0, 1, &ingested("dl_A")));
        seg.extend(frame(1, 2, b"attempt"));
        let two = seg.len() as u64;
        seg.extend(frame(2, 1, &ingested("dl_B")));
        let s = scan_bytes(&seg);
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.frames[0].delivery_id.as_deref(), Some("dl_A"));
        assert_eq!(s.frames[1].delivery_id, None);
        assert_eq!(s.valid_end, seg.len() as u64);

        let mut torn = seg.clone();
        torn.truncate(seg.len() - 3);
        let s = scan_bytes(&torn);
        assert_eq!((s.frames.len(), s.valid_end), (2, two));

        let mut flipped = seg.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert_eq!(scan_bytes(&flipped).valid_end, two);

        // A frame with the wrong offset ends the valid run too.
        let mut wrong = seg[..two as usize].to_vec();
        wrong.extend(frame(9, 1, &ingested("dl_C")));
        assert_eq!(scan_bytes(&wrong).frames.len(), 2);
    }
}
