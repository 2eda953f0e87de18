//! The delivery state table: a dense, memory-mapped file of fixed-size slots indexed by a
//! shard's delivery sequence number, answering "what is the state of delivery #n" without keeping
//! history in RAM (invariant 5: ten million deliveries cost disk and page cache, not heap).
//!
//! Architecture invariant: the table is a cache derived from the log, never the truth. Writes go
//! to the mapping and reach the disk whenever the kernel writes the pages back, or at
//! [`StateTable::flush`]. After a crash a slot may hold any state it had since the last flush, or
//! be torn; each slot carries a CRC32, so a torn slot reads as absent rather than as a wrong state.
//! Recovery re-derives the states of the deliveries the log holds after the engine's checkpoint.
//!
//! File layout (little-endian): a 32-byte header (magic `HRSTATE1`, version, slot size, CRC32 of
//! the header), then slot `n` at byte `32 + 40 * n`:
//!
//! | bytes  | field                                           |
//! |--------|-------------------------------------------------|
//! | 0..8   | `ingest_offset` u64                             |
//! | 8..16  | `last_offset` u64                               |
//! | 16..24 | `next_due_ms` u64 (0 = none)                    |
//! | 24     | status u8 (0 = empty slot, then [`Status`])     |
//! | 25     | `flags` u8                                      |
//! | 26..28 | `attempts` u16                                  |
//! | 28..32 | endpoint tag (u32)                             |
//! | 32..36 | reserved (zero)                                |
//! | 36..40 | CRC32 of bytes 0..36                           |
//!
//! The file grows in chunks of [`StateTableOptions::chunk_slots`] slots, reserved with
//! `posix_fallocate` so that a full disk is an error at growth time rather than a `SIGBUS` when a
//! page of the mapping is written back.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

/// Bytes per slot.
pub const SLOT_BYTES: usize = 40;
/// Bytes of the file header before slot 0.
pub const HEADER_BYTES: usize = 32;
/// Default growth step: one million slots (32 MiB).
pub const DEFAULT_CHUNK_SLOTS: u64 = 1 << 20;
/// Highest number of slots a table may hold (2^32 slots, 128 GiB): sequence numbers at or past it
/// are refused with [`Error::SeqTooLarge`].
pub const MAX_SLOTS: u64 = 1 << 32;

const MAGIC: [u8; 8] = *b"HRSTATE1";
const VERSION: u32 = 1;

/// Failures of the state table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed (disk full when growing is one).
    #[error("state table {path}: {op}: {source}")]
    Io {
        /// The table's file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not a state table of this version.
    #[error("state table {path}: bad header: {reason}")]
    BadHeader {
        /// The table's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The sequence number is at or beyond [`MAX_SLOTS`].
    #[error("delivery sequence {seq} is beyond the state table's limit of {max} slots")]
    SeqTooLarge {
        /// The refused sequence number.
        seq: u64,
        /// [`MAX_SLOTS`].
        max: u64,
    },
}

pub use crate::record::Status;

/// The state of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Log offset of the delivery's ingest record.
    pub ingest_offset: u64,
    /// Log offset of the newest record about the delivery (walk back from it for the attempt
    /// history).
    pub last_offset: u64,
    /// When the next attempt is due, in Unix milliseconds; 0 when none is scheduled.
    pub next_due_ms: u64,
    /// Where the delivery stands.
    pub status: Status,
    /// Engine-defined bits.
    pub flags: u8,
    /// Attempts made so far.
    pub attempts: u16,
    /// A 32-bit tag of the delivery's endpoint (the engine's choice of hash), so scans for one
    /// endpoint's deliveries can skip the others without reading the log.
    pub endpoint_tag: u32,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[0..8].copy_from_slice(&self.ingest_offset.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.last_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.next_due_ms.to_le_bytes());
        bytes[24] = self.status as u8;
        bytes[25] = self.flags;
        bytes[26..28].copy_from_slice(&self.attempts.to_le_bytes());
        bytes[28..32].copy_from_slice(&self.endpoint_tag.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..36]);
        bytes[36..40].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// `None` for an empty slot, and for a torn or garbled one (bad CRC or unknown status).
    fn decode(bytes: &[u8; SLOT_BYTES]) -> Option<Self> {
        let status = Status::from_u8(bytes[24])?;
        let crc = u32::from_le_bytes(le_array(&bytes[36..40]));
        if crc != crc32fast::hash(&bytes[0..36]) {
            return None;
        }
        Some(Self {
            ingest_offset: u64::from_le_bytes(le_array(&bytes[0..8])),
            last_offset: u64::from_le_bytes(le_array(&bytes[8..16])),
            next_due_ms: u64::from_le_bytes(le_array(&bytes[16..24])),
            status,
            flags: bytes[25],
            attempts: u16::from_le_bytes(le_array(&bytes[26..28])),
            endpoint_tag: u32::from_le_bytes(le_array(&bytes[28..32])),
        })
    }
}

/// Copies a slice whose length the caller fixed into an array.
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(bytes);
    array
}

/// Tuning of a [`StateTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTableOptions {
    /// Slots added per growth step (at least 1; rounded so one step stays under [`MAX_SLOTS`]).
    pub chunk_slots: u64,
}

impl Default for StateTableOptions {
    fn default() -> Self {
        Self {
            chunk_slots: DEFAULT_CHUNK_SLOTS,
        }
    }
}

/// A shard's delivery state table (see the module docs for the format and crash behaviour).
#[derive(Debug)]
pub struct StateTable {
    path: PathBuf,
    file: File,
    map: MmapMut,
    /// Slots the file holds.
    capacity: u64,
    /// 1 + the highest sequence number ever put (or found non-empty on open).
    len_hint: u64,
    chunk_slots: u64,
    /// A [`GrowJob`] is out.
    growing: bool,
}

impl StateTable {
    /// Opens the table at `path`, creating it when absent, with default options.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, StateTableOptions::default())
    }

    /// Opens the table at `path`, creating it when absent.
    pub fn open_with(path: &Path, options: StateTableOptions) -> Result<Self, Error> {
        let chunk_slots = options.chunk_slots.clamp(1, MAX_SLOTS);
        let io_err = |op| {
            move |source| Error::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        if !path.try_exists().map_err(io_err("stat"))? {
            create(path, chunk_slots)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open"))?;
        let file_len = file.metadata().map_err(io_err("stat"))?.len();
        if file_len < HEADER_BYTES as u64 {
            return Err(Error::BadHeader {
                path: path.to_path_buf(),
                reason: format!("file is {file_len} bytes, shorter than the header"),
            });
        }
        // SAFETY: the file belongs to this shard's data directory and only this table, owned by
        // one shard thread, maps or resizes it; nothing truncates it while it is mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err("mmap"))?;
        check_header(&map[..HEADER_BYTES]).map_err(|reason| Error::BadHeader {
            path: path.to_path_buf(),
            reason,
        })?;
        // A crash can leave a partial slot after a growth step was cut short: ignore it.
        let capacity = ((map.len() - HEADER_BYTES) / SLOT_BYTES) as u64;
        let mut table = Self {
            path: path.to_path_buf(),
            file,
            map,
            capacity: capacity.min(MAX_SLOTS),
            len_hint: 0,
            chunk_slots,
            growing: false,
        };
        table.len_hint = table.scan_len_hint();
        Ok(table)
    }

    /// The state of delivery `seq`, or `None` when its slot is empty, torn or beyond the file.
    pub fn get(&self, seq: u64) -> Option<Slot> {
        if seq >= self.capacity {
            return None;
        }
        Slot::decode(self.slot_bytes(seq))
    }

    /// Records the state of delivery `seq`, growing the file when needed.
    ///
    /// Errors: [`Error::SeqTooLarge`] past [`MAX_SLOTS`], [`Error::Io`] when the file cannot grow
    /// (e.g. disk full); the table is unchanged then.
    pub fn put(&mut self, seq: u64, slot: &Slot) -> Result<(), Error> {
        if seq >= MAX_SLOTS {
            return Err(Error::SeqTooLarge {
                seq,
                max: MAX_SLOTS,
            });
        }
        if seq >= self.capacity {
            self.grow(seq)?;
        }
        assert!(seq < self.capacity);
        let bytes = slot.encode();
        let start = HEADER_BYTES + seq as usize * SLOT_BYTES;
        self.map[start..start + SLOT_BYTES].copy_from_slice(&bytes);
        // Pair assertion: what the mapping holds now reads back as what was put.
        debug_assert_eq!(self.get(seq).as_ref(), Some(slot));
        self.len_hint = self.len_hint.max(seq + 1);
        Ok(())
    }

    /// Growth ahead of need, once the puts are within half a chunk of the end: the file's next
    /// chunk is reserved on another thread ([`GrowJob::run`], a `posix_fallocate` of tens of
    /// MiB), and [`StateTable::finish_grow`] maps the grown file. On the shard's thread the
    /// growth took 0.7–2.6 ms at max-ingest (BENCHMARKS.md), most of it unmapping the old
    /// mapping's resident pages, which `finish_grow` hands back for the caller to drop
    /// elsewhere. `None`: no need yet, a job is out, or the file is at [`MAX_SLOTS`]. A put
    /// past the end still grows the file itself, as before.
    pub fn grow_job(&mut self) -> Option<GrowJob> {
        if self.growing
            || self.capacity >= MAX_SLOTS
            || self.len_hint.saturating_add(self.chunk_slots / 2) < self.capacity
        {
            return None;
        }
        let file = self.file.try_clone().ok()?;
        self.growing = true;
        Some(GrowJob {
            path: self.path.clone(),
            file,
            from: file_len(self.capacity),
            capacity: self
                .capacity
                .saturating_add(self.chunk_slots)
                .min(MAX_SLOTS),
        })
    }

    /// Takes back a finished [`GrowJob`]: maps the grown file and returns the old mapping, to
    /// be dropped (unmapped) off the shard's thread; `None` when a put grew the file past the
    /// job's size meanwhile. A failed job changes nothing (its error is returned to report).
    pub fn finish_grow(&mut self, done: Result<u64, Error>) -> Result<Option<MmapMut>, Error> {
        self.growing = false;
        if done? <= self.capacity {
            return Ok(None);
        }
        // SAFETY: as in `open_with`; the file only grew, so no page of either mapping is past
        // its end.
        let map = unsafe { MmapMut::map_mut(&self.file) }.map_err(|source| Error::Io {
            path: self.path.clone(),
            op: "remap",
            source,
        })?;
        self.capacity = (((map.len() - HEADER_BYTES) / SLOT_BYTES) as u64).min(MAX_SLOTS);
        Ok(Some(std::mem::replace(&mut self.map, map)))
    }

    /// 1 + the highest sequence number ever put; 0 for an empty table. After a crash it counts
    /// slots that were written back but may be torn, so it is a hint, never less than the truth
    /// for flushed slots.
    pub fn len_hint(&self) -> u64 {
        self.len_hint
    }

    /// Slots the file currently holds (grows in chunks).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Writes the mapping back to disk and waits for it. Blocks the calling thread for as long
    /// as the dirty pages take: call it from the checkpoint path, not per delivery.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_job()()
    }

    /// [`StateTable::flush`] as a closure for another thread: an fdatasync of the table's file,
    /// which writes the pages dirtied through the mapping too (on Linux `msync(MS_SYNC)` is an
    /// fsync of the file's range). The shard runs it on the blocking pool.
    pub fn flush_job(&self) -> impl FnOnce() -> Result<(), Error> + Send + use<> {
        let path = self.path.clone();
        move || {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|source| Error::Io {
                    path,
                    op: "fdatasync",
                    source,
                })
        }
    }

    /// Drops this process's resident pages of the mapping (`MADV_DONTNEED`); they stay in the
    /// page cache (dirty ones are still written back) and fault in again when touched. Keeps
    /// resident memory independent of the number of deliveries after scans and recovery.
    pub fn release_memory(&self) {
        // SAFETY: a shared file mapping: DONTNEED drops page-table entries only; the data is in
        // the page cache and the file, and no reference into the mapping outlives this call.
        if let Err(e) = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        } {
            tracing::debug!(error = %e, "madvise on the state table failed");
        }
    }

    fn slot_bytes(&self, seq: u64) -> &[u8; SLOT_BYTES] {
        let start = HEADER_BYTES + seq as usize * SLOT_BYTES;
        self.map[start..start + SLOT_BYTES]
            .try_into()
            .expect("slot is SLOT_BYTES long")
    }

    /// Grows the file to hold `seq`, in whole chunks, and remaps it.
    fn grow(&mut self, seq: u64) -> Result<(), Error> {
        let wanted = (seq / self.chunk_slots + 1).saturating_mul(self.chunk_slots);
        let capacity = wanted.min(MAX_SLOTS);
        assert!(capacity > seq && capacity > self.capacity);
        let path = &self.path;
        let io_err = |op| {
            move |source| Error::Io {
                path: path.clone(),
                op,
                source,
            }
        };
        crate::prealloc::reserve(&self.file, file_len(capacity)).map_err(io_err("grow"))?;
        // SAFETY: as in `open_with`; the old mapping is dropped when replaced, and the file only
        // grew, so no page of either mapping is past the end of the file.
        let map = unsafe { MmapMut::map_mut(&self.file) }.map_err(io_err("remap"))?;
        self.map = map;
        self.capacity = capacity;
        Ok(())
    }

    /// 1 + the last slot holding any non-zero byte (torn slots count).
    fn scan_len_hint(&self) -> u64 {
        let slots = &self.map[HEADER_BYTES..HEADER_BYTES + self.capacity as usize * SLOT_BYTES];
        match slots.iter().rposition(|&b| b != 0) {
            Some(byte) => (byte / SLOT_BYTES) as u64 + 1,
            None => 0,
        }
    }
}

/// The slow half of [`StateTable::grow_job`]: owns a handle of the file, so it runs on any thread.
#[derive(Debug)]
#[must_use = "a grow job does nothing until it is run and finished"]
pub struct GrowJob {
    path: PathBuf,
    file: File,
    /// The file's length before: where the new chunk starts.
    from: u64,
    capacity: u64,
}

impl GrowJob {
    /// Reserves the file's blocks up to the new capacity and brings the new chunk into the
    /// page cache ([`crate::prealloc::warm`]), so the puts that fill it only map its pages;
    /// returns the new capacity.
    pub fn run(self) -> Result<u64, Error> {
        crate::prealloc::reserve(&self.file, file_len(self.capacity)).map_err(|source| {
            Error::Io {
                path: self.path,
                op: "grow ahead",
                source,
            }
        })?;
        crate::prealloc::warm(&self.file, self.from, false);
        Ok(self.capacity)
    }
}

/// The length of a table file of `slots` slots.
fn file_len(slots: u64) -> u64 {
    HEADER_BYTES as u64 + slots * SLOT_BYTES as u64
}

/// Creates a table file complete and durable under a temporary name, then renames it into
/// place, so that a file with a bad header is always damage, never a creation cut short by a crash.
fn create(path: &Path, chunk_slots: u64) -> Result<(), Error> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    crate::prealloc::create_durable(&tmp, path, file_len(chunk_slots), &encode_header())
        .map(drop)
        .map_err(|e| Error::Io {
            path: e.path,
            op: e.op,
            source: e.source,
        })
}

fn encode_header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

fn check_header(header: &[u8]) -> Result<(), String> {
    if header[0..8] != MAGIC {
        return Err("not a state table (bad magic)".to_owned());
    }
    let crc = u32::from_le_bytes(le_array(&header[16..20]));
    if crc != crc32fast::hash(&header[0..16]) {
        return Err("header checksum mismatch".to_owned());
    }
    let version = u32::from_le_bytes(le_array(&header[8..12]));
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let slot_bytes = u32::from_le_bytes(le_array(&header[12..16]));
    if slot_bytes as usize != SLOT_BYTES {
        return Err(format!("slot size {slot_bytes}, expected {SLOT_BYTES}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn slot(n: u64) -> Slot {
        Slot {
            ingest_offset: n,
            last_offset: n.wrapping_mul(3),
            next_due_ms: n ^ 0xdead_beef,
            status: [
                Status::Queued,
                Status::Success,
                Status::Failed,
                Status::Exhausted,
            ][n as usize % 4],
            flags: n as u8,
            attempts: n as u16,
            endpoint_tag: (n as u32).rotate_left(7),
        }
    }

    fn small() -> StateTableOptions {
        StateTableOptions { chunk_slots: 16 }
    }

    #[test]
    fn new_table_is_empty_and_grows_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut table = StateTable::open_with(&path, small()).unwrap();
        assert_eq!(table.len_hint(), 0);
        assert_eq!(table.capacity(), 16);
        assert_eq!(table.get(0), None);
        assert_eq!(table.get(u64::MAX), None);
        table.put(40, &slot(40)).unwrap();
        assert_eq!(table.capacity(), 48);
        assert_eq!(table.len_hint(), 41);
        assert_eq!(table.get(40), Some(slot(40)));
        assert_eq!(table.get(39), None);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, (HEADER_BYTES + 48 * SLOT_BYTES) as u64);
    }

    #[test]
    fn put_overwrites_and_reopen_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let mut table = StateTable::open_with(&path, small()).unwrap();
            table.put(3, &slot(3)).unwrap();
            table.put(3, &slot(7)).unwrap();
            table.put(100, &slot(100)).unwrap();
            table.flush().unwrap();
        }
        let table = StateTable::open(&path).unwrap();
        assert_eq!(table.get(3), Some(slot(7)));
        assert_eq!(table.get(100), Some(slot(100)));
        assert_eq!(table.len_hint(), 101);
    }

    #[test]
    fn the_file_grows_ahead_of_need_off_the_puts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut table = StateTable::open_with(&path, small()).unwrap();
        let chunk = small().chunk_slots;
        for seq in 0..chunk / 2 - 1 {
            table.put(seq, &slot(seq)).unwrap();
        }
        assert!(table.grow_job().is_none(), "more than half a chunk left");
        table.put(chunk / 2 - 1, &slot(chunk / 2 - 1)).unwrap();
        let job = table.grow_job().expect("half a chunk left");
        assert!(table.grow_job().is_none(), "one job at a time");
        let old = table.finish_grow(job.run()).unwrap();
        assert!(old.is_some(), "the old mapping, to drop elsewhere");
        assert_eq!(table.capacity(), 2 * chunk);
        for seq in 0..chunk / 2 {
            assert_eq!(table.get(seq), Some(slot(seq)));
        }
        table.put(2 * chunk - 1, &slot(9)).unwrap();
        assert_eq!(table.capacity(), 2 * chunk, "no growth on the put");
        table.flush().unwrap();
        drop(table);
        let table = StateTable::open_with(&path, small()).unwrap();
        assert_eq!(table.get(2 * chunk - 1), Some(slot(9)));
        assert_eq!(table.get(3), Some(slot(3)));
    }

    /// A grow job leaves the new chunk in the page cache ([`crate::prealloc::warm`]): the
    /// puts that fill it only map its pages.
    #[test]
    fn a_grown_chunk_is_in_the_page_cache_before_the_puts() {
        let dir = tempfile::tempdir().unwrap();
        let options = StateTableOptions {
            chunk_slots: 1 << 16,
        };
        let mut table = StateTable::open_with(&dir.path().join("state"), options).unwrap();
        let chunk = options.chunk_slots;
        table.put(chunk / 2, &slot(1)).unwrap();
        let job = table.grow_job().expect("half a chunk left");
        assert!(table.finish_grow(job.run()).unwrap().is_some());
        assert_eq!(table.capacity(), 2 * chunk);
        let from = HEADER_BYTES + chunk as usize * SLOT_BYTES;
        let (in_cache, pages) = crate::prealloc::pages_in_cache(&table.map[from..]);
        assert!(pages > 500, "{pages} pages in the new chunk");
        assert_eq!(in_cache, pages, "pages of the new chunk in the page cache");
    }

    #[test]
    fn a_grow_job_overtaken_by_a_put_or_failed_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = StateTable::open_with(&dir.path().join("s"), small()).unwrap();
        let chunk = small().chunk_slots;
        table.put(chunk - 1, &slot(1)).unwrap();
        let job = table.grow_job().expect("at the end");
        table.put(3 * chunk, &slot(3)).unwrap();
        assert_eq!(table.capacity(), 4 * chunk);
        assert!(table.finish_grow(job.run()).unwrap().is_none());
        assert_eq!(table.capacity(), 4 * chunk);
        assert_eq!(table.get(3 * chunk), Some(slot(3)));

        table.put(4 * chunk - 1, &slot(4)).unwrap();
        let job = table.grow_job().expect("at the end again");
        drop(job);
        let failed = Err(Error::Io {
            path: "s".into(),
            op: "grow ahead",
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert!(table.finish_grow(failed).is_err());
        assert_eq!(table.capacity(), 4 * chunk);
        assert!(table.grow_job().is_some(), "tried again later");
    }

    #[test]
    fn creation_cut_short_by_a_crash_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(dir.path().join("state.tmp"), [0u8; 10]).unwrap();
        let mut table = StateTable::open_with(&path, small()).unwrap();
        table.put(1, &slot(1)).unwrap();
        assert_eq!(table.get(1), Some(slot(1)));
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn seq_past_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = StateTable::open_with(&dir.path().join("s"), small()).unwrap();
        let err = table.put(MAX_SLOTS, &slot(1)).unwrap_err();
        assert!(matches!(err, Error::SeqTooLarge { seq: MAX_SLOTS, .. }));
        assert_eq!(table.len_hint(), 0);
    }

    #[test]
    fn torn_slot_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let mut table = StateTable::open_with(&path, small()).unwrap();
            table.put(2, &slot(2)).unwrap();
            table.put(5, &slot(5)).unwrap();
        }
        // Flip a byte of slot 2's offset: the CRC no longer matches.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 2 * SLOT_BYTES + 1] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let table = StateTable::open(&path).unwrap();
        assert_eq!(table.get(2), None);
        assert_eq!(table.get(5), Some(slot(5)));
    }

    #[test]
    fn foreign_or_damaged_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, [7u8; 64]).unwrap();
        assert!(matches!(
            StateTable::open(&path),
            Err(Error::BadHeader { .. })
        ));
        std::fs::write(&path, [7u8; 5]).unwrap();
        assert!(matches!(
            StateTable::open(&path),
            Err(Error::BadHeader { .. })
        ));
        drop(StateTable::open(&dir.path().join("good")).unwrap());
        let mut bytes = std::fs::read(dir.path().join("good")).unwrap();
        bytes[8] = 9; // version
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            StateTable::open(&path),
            Err(Error::BadHeader { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u64, u64),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (prop_oneof![0..40u64, 0..2_000u64], any::<u64>()).prop_map(|(s, v)| Op::Put(s, v)),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_matches_hashmap_model(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state");
            let mut table = StateTable::open_with(&path, small()).unwrap();
            let mut model: HashMap<u64, Slot> = HashMap::new();
            for op in ops {
                match op {
                    Op::Put(seq, v) => {
                        table.put(seq, &slot(v)).unwrap();
                        model.insert(seq, slot(v));
                    }
                    Op::Reopen => {
                        table.flush().unwrap();
                        drop(table);
                        table = StateTable::open_with(&path, small()).unwrap();
                    }
                }
                let highest = model.keys().max().map_or(0, |s| s + 1);
                prop_assert_eq!(table.len_hint(), highest);
                prop_assert!(table.capacity() >= highest);
                for seq in 0..highest + 20 {
                    prop_assert_eq!(table.get(seq), model.get(&seq).copied());
                }
            }
        }

        #[test]
        fn prop_slot_encoding_round_trips(v in any::<u64>(), due in any::<u64>(), attempts in any::<u16>()) {
            let s = Slot { next_due_ms: due, attempts, ..slot(v) };
            prop_assert_eq!(Slot::decode(&s.encode()), Some(s));
        }
    }
}
