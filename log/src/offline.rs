//! Offline operations on a log directory that is not open: [`truncate_dir`] (drop a suffix, for
//! a rejoining replica whose tail the new primary never had) and [`reset_dir`] (start over at a
//! given offset, for a replica that bootstraps from the primary's first retained offset).
//!
//! Both leave a directory that [`crate::Log::open`] recovers like any other: sealed segments
//! with their index files, then one active segment (the last, without an index file).
//!
//! The log must not be open in any process while these run, and nothing obtained from it may
//! still be alive: sealed segments are memory-mapped and record payloads are slices of those
//! maps, so cutting a file that is still mapped makes later reads of the cut part fault
//! (`SIGBUS`). Close the log and drop every `Log` handle, `Reader` and `Record` first.
//!
//! Crash safety: files are removed from the highest offset down (index file before its
//! segment), the directory is fsynced before the surviving segment is cut, and the cut is
//! fsynced, so a crash in the middle leaves a valid log holding a prefix of the old one (or,
//! for a reset or a truncation below the first offset, possibly an empty directory, which opens
//! as an empty log at offset 0). Running the operation again finishes it.

use std::fs::OpenOptions;
use std::path::Path;

use crate::error::Error;
use crate::frame::{self, FrameCheck};
use crate::options::FRAME_BYTES_LIMIT;
use crate::recovery::{create_segment, map_file, sync_dir, valid_frame_after};
use crate::segment::{self, SEGMENT_HEADER_BYTES};

/// What [`truncate_dir`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TruncateOutcome {
    /// Records removed (0 when `from` was at or past the end of the log).
    pub removed_records: u64,
    /// Offset the next append gets once the log is opened again.
    pub next_offset: u64,
}

/// Removes every record with offset `>= from` from the log in `dir`, which must not be open
/// (see the module docs).
///
/// - `from` at or past the end of the log (or an empty directory): nothing changes;
///   `next_offset` is the log's end (what `Log::open` will report).
/// - `from` below the first retained offset: every segment and index file is removed and one
///   empty segment whose first offset is `from` is created, so the next append gets `from`.
/// - Otherwise: segments whose first offset is above `from` are deleted (with their index
///   files), and the segment holding `from` is cut just before that record's frame
///   (`ftruncate` + fsync) and loses its index file, so it is the active segment on the next
///   open (it may be left with no records when `from` is its first offset). Older records stay
///   readable.
///
/// Frames are checked like recovery does: a damaged frame before `from` in a sealed segment, or
/// a damaged frame in the last segment followed by a valid one, is [`Error::Corrupt`] and
/// nothing is changed. A torn tail of the last segment is simply the end of the log. Frames
/// are checked against [`crate::FRAME_BYTES_LIMIT`], not the log's `frame_bytes_max`.
pub fn truncate_dir(dir: &Path, from: u64) -> Result<TruncateOutcome, Error> {
    let files = list(dir)?;
    let (Some(&first), Some(&last_base)) = (files.segments.first(), files.segments.last()) else {
        return Ok(TruncateOutcome {
            removed_records: 0,
            next_offset: 0,
        });
    };
    let end = last_segment_end(dir, last_base)?;
    if from >= end {
        return Ok(TruncateOutcome {
            removed_records: 0,
            next_offset: end,
        });
    }
    if from < first {
        remove_from(dir, &files, from)?;
        create_segment(dir, from, 1)?;
        tracing::info!(dir = %dir.display(), from, removed = end - first, "log truncated to empty");
        return Ok(TruncateOutcome {
            removed_records: end - first,
            next_offset: from,
        });
    }
    // first <= from < end: the segment holding `from` is the last one starting at or below it.
    let k = files.segments.partition_point(|&b| b <= from);
    let base = files
        .segments
        .get(k.wrapping_sub(1))
        .copied()
        .ok_or_else(|| Error::corrupt(dir, 0, "no segment holds the truncation point"))?;
    let path = segment::segment_path(dir, base);
    let position = frame_position(&path, base, from)?;

    // Later segments first (so every intermediate state is a prefix of the log), durably,
    // before the cut: a cut segment followed by a resurrected successor would be a gap.
    remove_from(dir, &files, base + 1)?;
    remove_if_exists(&segment::index_path(dir, base))?;
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.set_len(position)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    drop(f);
    sync_dir(dir)?;
    tracing::info!(
        dir = %dir.display(),
        from,
        removed = end - from,
        segment = %path.display(),
        position,
        "log truncated"
    );
    Ok(TruncateOutcome {
        removed_records: end - from,
        next_offset: from,
    })
}

/// Deletes every segment and index file in `dir` (created if missing; the log must not be open,
/// see the module docs) and creates one empty segment whose first offset is `base` (header
/// fsynced, directory fsynced): after [`crate::Log::open`], `first_offset() == next_offset() ==
/// base` and the log's epoch is 0.
pub fn reset_dir(dir: &Path, base: u64) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let files = list(dir)?;
    remove_from(dir, &files, 0)?;
    create_segment(dir, base, 1)?;
    tracing::info!(dir = %dir.display(), base, "log reset");
    Ok(())
}

/// The log files of a directory, sorted by first offset.
struct Files {
    segments: Vec<u64>,
    /// Index files, including orphans (an index file whose segment is gone).
    indexes: Vec<u64>,
}

fn list(dir: &Path) -> Result<Files, Error> {
    let mut files = Files {
        segments: Vec::new(),
        indexes: Vec::new(),
    };
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_segment_name(name) {
            files.segments.push(base);
        } else if let Some(base) = parse_index_name(name) {
            files.indexes.push(base);
        } else if name.ends_with(".idx.tmp") {
            // Left by a roll that did not finish; recovery would delete it too.
            remove_if_exists(&entry.path())?;
        }
    }
    files.segments.sort_unstable();
    files.indexes.sort_unstable();
    Ok(files)
}

fn parse_index_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".idx")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Removes every segment and index file whose first offset is `>= from`, highest first (an
/// index file before its segment), then fsyncs the directory if anything was removed.
fn remove_from(dir: &Path, files: &Files, from: u64) -> Result<(), Error> {
    let mut removed = false;
    // Orphan index files first: they have no segment, so removing them changes no log state.
    for &base in files.indexes.iter().rev().filter(|&&b| b >= from) {
        if files.segments.binary_search(&base).is_err() {
            remove_if_exists(&segment::index_path(dir, base))?;
            removed = true;
        }
    }
    for &base in files.segments.iter().rev().filter(|&&b| b >= from) {
        remove_if_exists(&segment::index_path(dir, base))?;
        remove_if_exists(&segment::segment_path(dir, base))?;
        removed = true;
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Where a walk over a segment's frames stopped.
struct Walk {
    /// Offset of the frame at `position` (the first one not walked over).
    offset: u64,
    /// Byte position where the walk stopped.
    position: usize,
    /// Why it stopped before `stop` and before the end of the data, if it did.
    bad: Option<String>,
}

/// Walks the frames of a segment from its header while their offsets are below `stop`.
fn walk(data: &[u8], base: u64, stop: u64) -> Walk {
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut expect = base;
    while expect < stop && pos < data.len() {
        match frame::check(data.get(pos..).unwrap_or_default(), FRAME_BYTES_LIMIT) {
            FrameCheck::Valid(h) if h.offset == expect => {
                pos += h.frame_len() as usize;
                expect += 1;
            }
            FrameCheck::Valid(h) => {
                return Walk {
                    offset: expect,
                    position: pos,
                    bad: Some(format!(
                        "frame holds offset {} where {expect} was expected",
                        h.offset
                    )),
                };
            }
            bad => {
                return Walk {
                    offset: expect,
                    position: pos,
                    bad: Some(bad.reason()),
                };
            }
        }
    }
    Walk {
        offset: expect,
        position: pos,
        bad: None,
    }
}

/// Checks the header of segment `base`; `Err(reason)` if it is not a valid one for this name.
fn check_header(data: &[u8], base: u64) -> Result<(), (u64, String)> {
    match segment::decode_header(data) {
        Ok(h) if h.base == base => Ok(()),
        Ok(h) => Err((
            16,
            format!("header says first offset {}, file name says {base}", h.base),
        )),
        Err(reason) => Err((0, reason)),
    }
}

/// One past the last valid record of the last (active) segment, as recovery would find it: a
/// torn tail (or a torn header with nothing valid after it) ends the log, a damaged frame
/// followed by a valid one is corruption.
fn last_segment_end(dir: &Path, base: u64) -> Result<u64, Error> {
    let path = segment::segment_path(dir, base);
    let map = map_file(&path)?;
    let data: &[u8] = map.as_deref().unwrap_or_default();
    if let Err((at, reason)) = check_header(data, base) {
        if at != 0 {
            return Err(Error::corrupt(&path, at, reason));
        }
        // A crash while rolling: recovery re-initialises it if nothing valid follows.
        if let Some(q) = valid_frame_after(data, 0, base, FRAME_BYTES_LIMIT) {
            return Err(Error::corrupt(
                &path,
                0,
                format!("{reason}, yet a valid frame follows at byte {q}"),
            ));
        }
        return Ok(base);
    }
    let w = walk(data, base, u64::MAX);
    if let Some(reason) = w.bad
        && let Some(q) = valid_frame_after(data, w.position, w.offset, FRAME_BYTES_LIMIT)
    {
        return Err(Error::corrupt(
            &path,
            w.position as u64,
            format!("{reason}, yet a valid frame follows at byte {q}"),
        ));
    }
    Ok(w.offset)
}

/// Byte position of the frame of offset `target` in segment `base`, every frame before it
/// being valid; otherwise [`Error::Corrupt`].
fn frame_position(path: &Path, base: u64, target: u64) -> Result<u64, Error> {
    let map = map_file(path)?;
    let data: &[u8] = map.as_deref().unwrap_or_default();
    check_header(data, base).map_err(|(at, reason)| Error::corrupt(path, at, reason))?;
    let w = walk(data, base, target);
    if w.offset != target {
        let reason = w
            .bad
            .unwrap_or_else(|| "segment ends before the next segment starts".into());
        return Err(Error::corrupt(
            path,
            w.position as u64,
            format!("{reason} (looking for offset {target})"),
        ));
    }
    Ok(w.position as u64)
}
