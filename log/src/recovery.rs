//! Opening a log directory: validate sealed segments, scan the active one, cut a torn tail.
//!
//! Rules (each is tested in `tests/crash.rs`):
//! - Every segment starts with a valid header whose first offset matches its file name, and the
//!   segments' offsets are contiguous; otherwise [`Error::Corrupt`].
//! - Sealed segments (all but the last) were fully fsynced before the next one was created, so a
//!   bad frame in one is corruption, never a torn write: [`Error::Corrupt`] naming the file and
//!   byte position. With `verify_sealed_on_open` every frame's CRC is checked here; otherwise
//!   only their index files are checked (and rebuilt by a scan if missing or invalid).
//! - The last (active) segment is scanned frame by frame. At the first frame that is incomplete,
//!   has a bad CRC, a length over `frame_bytes_max` or an unexpected offset, the rest of the file
//!   is searched for any valid frame. None: a torn tail, cut off and reported in
//!   `truncated_bytes`. One: corruption, [`Error::Corrupt`] at the first bad byte position.
//!   Trailing zeros are the active segment's preallocated region (`prealloc`): cut too, but not
//!   counted in `truncated_bytes`.
//! - A last segment shorter than its header (a crash while rolling) is re-initialised.
//!
//! Runs on tokio's blocking pool: it reads whole segments.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memmap2::Mmap;

use crate::error::Error;
use crate::frame::{self, FRAME_HEADER_BYTES, FrameCheck};
use crate::index::{self, IndexBuilder, IndexMeta, SparseIndex};
use crate::segment::{self, SEGMENT_HEADER_BYTES, Sealed};

/// What recovery hands to [`crate::Log::open`].
pub(crate) struct Recovered {
    pub sealed: Vec<Sealed>,
    pub active: RecoveredActive,
    pub records: u64,
    pub truncated_bytes: u64,
    /// Epoch of the newest record, if the log holds any.
    pub last_epoch: Option<u32>,
}

pub(crate) struct RecoveredActive {
    pub base: u64,
    pub path: PathBuf,
    pub created_unix_ms: u64,
    /// Valid bytes (header included); the file has been cut to this length.
    pub bytes: u64,
    pub next_offset: u64,
    pub index: IndexBuilder,
}

/// Parameters recovery needs (a `Send` subset of the options).
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub dir: PathBuf,
    pub frame_bytes_max: u32,
    pub index_interval_bytes: u32,
    pub verify_sealed_on_open: bool,
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Recovers (or creates) the log in `p.dir`.
pub(crate) fn recover(p: &Params) -> Result<Recovered, Error> {
    std::fs::create_dir_all(&p.dir).map_err(|e| Error::io(&p.dir, e))?;
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(&p.dir).map_err(|e| Error::io(&p.dir, e))? {
        let entry = entry.map_err(|e| Error::io(&p.dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_segment_name(name) {
            bases.push(base);
        } else if name.ends_with(".idx.tmp") {
            // An index file that was being written when the process stopped; rebuilt below.
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    bases.sort_unstable();

    let Some((&active_base, sealed_bases)) = bases.split_last() else {
        let active = create_segment(&p.dir, 0, p.index_interval_bytes)?;
        return Ok(Recovered {
            sealed: Vec::new(),
            active,
            records: 0,
            truncated_bytes: 0,
            last_epoch: None,
        });
    };

    let mut sealed = Vec::with_capacity(sealed_bases.len());
    let mut records = 0u64;
    let mut last_epoch = None;
    let mut dir_dirty = false;
    for &base in sealed_bases {
        let (seg, epoch, rewrote) = open_sealed(p, base)?;
        if let Some(prev) = sealed.last().map(|s: &Sealed| s.next)
            && prev != base
        {
            return Err(Error::corrupt(
                &seg.path,
                0,
                format!(
                    "offset gap: previous segment ends before {prev}, this one starts at {base}"
                ),
            ));
        }
        records += seg.next - seg.base;
        last_epoch = epoch.or(last_epoch);
        dir_dirty |= rewrote;
        sealed.push(seg);
    }
    let (active, truncated_bytes, active_epoch) = recover_active(p, active_base)?;
    if let Some(prev) = sealed.last()
        && prev.next != active_base
    {
        return Err(Error::corrupt(
            &active.path,
            0,
            format!(
                "offset gap: previous segment ends before {}, this one starts at {active_base}",
                prev.next
            ),
        ));
    }
    records += active.next_offset - active.base;
    if dir_dirty {
        sync_dir(&p.dir)?;
    }
    Ok(Recovered {
        sealed,
        active,
        records,
        truncated_bytes,
        last_epoch: active_epoch.or(last_epoch),
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Creates an empty segment (header only), durable including its directory entry.
pub(crate) fn create_segment(
    dir: &Path,
    base: u64,
    interval: u32,
) -> Result<RecoveredActive, Error> {
    let path = segment::segment_path(dir, base);
    let created_unix_ms = now_unix_ms();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.write_all(&segment::encode_header(base, created_unix_ms))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(RecoveredActive {
        base,
        path,
        created_unix_ms,
        bytes: SEGMENT_HEADER_BYTES as u64,
        next_offset: base,
        index: IndexBuilder::new(interval),
    })
}

pub(crate) fn map_file(path: &Path) -> Result<Option<Mmap>, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: segment and index files are only ever appended to by this process while active,
    // and never modified once sealed; nobody truncates a file that is mapped.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(Some(map))
}

/// Scans every frame of a sealed segment; any bad frame is corruption.
/// Returns the index, one past the last offset, and the last epoch.
fn scan_sealed(
    path: &Path,
    data: &[u8],
    base: u64,
    interval_bytes: u32,
    p: &Params,
) -> Result<(IndexBuilder, u64, Option<u32>), Error> {
    let mut index = IndexBuilder::new(interval_bytes);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut expect = base;
    let mut epoch = None;
    while pos < data.len() {
        let rest = data.get(pos..).unwrap_or_default();
        match frame::check(rest, p.frame_bytes_max) {
            FrameCheck::Valid(h) if h.offset == expect => {
                index.note(h.offset, pos as u64);
                epoch = Some(h.epoch);
                pos += h.frame_len() as usize;
                expect += 1;
            }
            FrameCheck::Valid(h) => {
                return Err(Error::corrupt(
                    path,
                    pos as u64,
                    format!(
                        "frame holds offset {} where {expect} was expected",
                        h.offset
                    ),
                ));
            }
            bad => {
                return Err(Error::corrupt(
                    path,
                    pos as u64,
                    format!("{} in a sealed segment", bad.reason()),
                ));
            }
        }
    }
    Ok((index, expect, epoch))
}

/// Writes an index file atomically (tmp + fsync + rename); the caller syncs the directory.
pub(crate) fn write_index_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("idx.tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes an index file atomically through the I/O backend (for rolls, on the shard); the
/// caller syncs the directory.
pub(crate) async fn write_index_file_via(
    backend: &crate::io::Backend,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), Error> {
    use crate::io::SegmentIo;
    let tmp = path.with_extension("idx.tmp");
    let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let file = backend.wrap(f, &tmp).map_err(|e| Error::io(&tmp, e))?;
    let (res, _) = file.write_all_at_synced(bytes, 0).await;
    res.map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Loads a valid index file for a segment of `base` and `segment_bytes`, or None.
fn load_index(path: &Path, base: u64, segment_bytes: u64) -> Option<(SparseIndex, IndexMeta)> {
    let map = map_file(path).ok()??;
    let (meta, count) = index::validate(&map)?;
    if meta.base_offset != base || meta.segment_bytes != segment_bytes {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    let idx = SparseIndex::Mapped { map, count };
    // Entries must point inside the segment, in increasing order, within the segment's offsets.
    let mut prev: Option<index::Entry> = None;
    for i in 0..count {
        let e = idx.get(i)?;
        let in_range = e.position >= SEGMENT_HEADER_BYTES as u64
            && e.position < segment_bytes
            && e.offset >= base
            && e.offset < base + meta.records;
        let ordered = prev.is_none_or(|p| e.offset > p.offset && e.position > p.position);
        if !in_range || !ordered {
            return None;
        }
        prev = Some(e);
    }
    Some((idx, meta))
}

/// Opens a sealed segment: header, index (loaded or rebuilt), optional full CRC check.
/// Returns the segment, its last epoch if it was scanned, and whether an index file was written.
fn open_sealed(p: &Params, base: u64) -> Result<(Sealed, Option<u32>, bool), Error> {
    let path = segment::segment_path(&p.dir, base);
    let idx_path = segment::index_path(&p.dir, base);
    let Some(map) = map_file(&path)? else {
        return Err(Error::corrupt(&path, 0, "sealed segment is empty"));
    };
    let header = segment::decode_header(&map).map_err(|r| Error::corrupt(&path, 0, r))?;
    if header.base != base {
        return Err(Error::corrupt(
            &path,
            16,
            format!(
                "header says first offset {}, file name says {base}",
                header.base
            ),
        ));
    }
    let bytes = map.len() as u64;
    let loaded = load_index(&idx_path, base, bytes);
    let (index, next, epoch, rewrote) = match (p.verify_sealed_on_open, loaded) {
        (false, Some((idx, meta))) => (idx, base + meta.records, None, false),
        (verify, loaded) => {
            // Scan with the interval the index file was built with, so a valid file compares
            // equal even if `index_interval_bytes` changed since.
            let interval = loaded
                .as_ref()
                .map_or(p.index_interval_bytes, |(_, m)| m.interval_bytes);
            let (built, next, epoch) = scan_sealed(&path, &map, base, interval, p)?;
            let matches = loaded.as_ref().is_some_and(|(idx, meta)| {
                meta.records == next - base && idx.to_vec() == built.entries
            });
            match loaded {
                Some((idx, _)) if matches => (idx, next, epoch, false),
                _ => {
                    if verify {
                        tracing::info!(path = %idx_path.display(), "rebuilding index file");
                    }
                    let meta = IndexMeta {
                        interval_bytes: interval,
                        base_offset: base,
                        segment_bytes: bytes,
                        records: next - base,
                    };
                    let encoded = index::encode(meta, &built.entries);
                    write_index_file(&idx_path, &encoded)?;
                    (SparseIndex::Owned(built.entries), next, epoch, true)
                }
            }
        }
    };
    let sealed = Sealed {
        base,
        next,
        path,
        idx_path,
        bytes,
        data: Bytes::from_owner(map),
        index,
    };
    Ok((sealed, epoch, rewrote))
}

/// Position of the first valid frame that starts after `bad_pos` and could belong to this log
/// (offset at least `expect`, plausibly close), if any.
pub(crate) fn valid_frame_after(
    data: &[u8],
    bad_pos: usize,
    expect: u64,
    frame_bytes_max: u32,
) -> Option<usize> {
    let remaining = data.len().saturating_sub(bad_pos) as u64;
    let max_offset = expect.saturating_add(remaining / FRAME_HEADER_BYTES as u64 + 1);
    let last_start = data.len().checked_sub(FRAME_HEADER_BYTES)?;
    (bad_pos + 1..=last_start).find(|&q| {
        let Some(hb) = data
            .get(q..q + FRAME_HEADER_BYTES)
            .and_then(|s| <&[u8; FRAME_HEADER_BYTES]>::try_from(s).ok())
        else {
            return false;
        };
        let h = frame::decode_header(hb);
        // Cheap filters first so a long damaged tail costs a header decode per byte, not a CRC.
        h.offset >= expect
            && h.offset <= max_offset
            && h.frame_len() <= u64::from(frame_bytes_max)
            && (q as u64 + h.frame_len()) <= data.len() as u64
            && matches!(
                frame::check(data.get(q..).unwrap_or_default(), frame_bytes_max),
                FrameCheck::Valid(_)
            )
    })
}

/// Length of `bytes` without its trailing zeros.
fn nonzero_len(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Scans the active segment, cutting a torn tail. Returns it, the bytes cut and the last epoch.
fn recover_active(p: &Params, base: u64) -> Result<(RecoveredActive, u64, Option<u32>), Error> {
    let path = segment::segment_path(&p.dir, base);
    // A log of this directory dropped without closing may still be zero-filling this file.
    let _no_zero_fill = crate::prealloc::exclusive();
    let map = map_file(&path)?;
    let data: &[u8] = map.as_deref().unwrap_or_default();
    let file_len = data.len() as u64;

    let created_unix_ms = match segment::decode_header(data) {
        Ok(h) if h.base == base => h.created_unix_ms,
        Ok(h) => {
            return Err(Error::corrupt(
                &path,
                16,
                format!("header says first offset {}, file name says {base}", h.base),
            ));
        }
        Err(reason) => {
            // A header that never became durable (crash while rolling) with nothing after it.
            if let Some(q) = valid_frame_after(data, 0, base, p.frame_bytes_max) {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("{reason}, yet a valid frame follows at byte {q}"),
                ));
            }
            tracing::warn!(path = %path.display(), file_len, "re-initialising a segment with a torn header");
            let torn = nonzero_len(data);
            drop(map);
            let active = create_segment(&p.dir, base, p.index_interval_bytes)?;
            return Ok((active, torn, None));
        }
    };

    let mut index = IndexBuilder::new(p.index_interval_bytes);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut expect = base;
    let mut epoch = None;
    while pos < data.len() {
        let rest = data.get(pos..).unwrap_or_default();
        let check = frame::check(rest, p.frame_bytes_max);
        match check {
            FrameCheck::Valid(h) if h.offset == expect => {
                index.note(h.offset, pos as u64);
                epoch = Some(h.epoch);
                pos += h.frame_len() as usize;
                expect += 1;
                continue;
            }
            _ => {}
        }
        let reason = match check {
            FrameCheck::Valid(h) => format!(
                "frame holds offset {} where {expect} was expected",
                h.offset
            ),
            bad => bad.reason(),
        };
        if let Some(q) = valid_frame_after(data, pos, expect, p.frame_bytes_max) {
            return Err(Error::corrupt(
                &path,
                pos as u64,
                format!("{reason}, yet a valid frame follows at byte {q}"),
            ));
        }
        break;
    }

    let valid = pos as u64;
    // Trailing zeros are the preallocated region (see `prealloc`), not a torn write: only the
    // bytes up to the last non-zero one are reported.
    let truncated = nonzero_len(data.get(pos..).unwrap_or_default());
    drop(map);
    if truncated > 0 {
        tracing::warn!(path = %path.display(), at = valid, bytes = truncated, "cutting a torn tail");
    }
    if file_len > valid {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.set_len(valid)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok((
        RecoveredActive {
            base,
            path,
            created_unix_ms,
            bytes: valid,
            next_offset: expect,
            index,
        },
        truncated,
        epoch,
    ))
}
