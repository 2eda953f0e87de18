//! The idempotency index: per shard, which (endpoint, idempotency key) pairs were ingested in the
//! last TTL (7 days by default), with the log offset of the first delivery and a hash of its body
//! (CONTRACT.md, "Ingest" step 5; ARCHITECTURE.md, "The engine").
//!
//! Shape: a directory of memory-mapped hash tables, grouped in time buckets (one UTC day each by
//! default), so the TTL is enforced by deleting whole bucket files. A bucket starts with one table
//! sized from the previous bucket's volume; when a table passes [`MAX_LOAD_PERCENT`] load a twice
//! bigger table is chained after it (no rehash: the shard never stops for one). That table, and
//! the next bucket's first one, are made ahead of need on another thread ([`SpareJob`]), so the
//! insert that needs one only renames it into place. Slots are 32 bytes:
//!
//! | bytes  | field                                                         |
//! |--------|---------------------------------------------------------------|
//! | 0..8   | fingerprint: first 8 bytes of SHA-256(endpoint, key); 0 = empty |
//! | 8..16  | body hash ([`body_hash`])                                     |
//! | 16..24 | log offset of the ingest record                               |
//! | 24..28 | insertion time, milliseconds after the bucket start           |
//! | 28..32 | CRC32 of bytes 0..28                                          |
//!
//! Open addressing with linear probing, at most [`MAX_PROBE`] slots per table. Lookups probe the
//! newest bucket first (a duplicate is most likely recent), each bucket's newest table first.
//!
//! After the slots, each table ends with a filter of its fingerprints (a blocked Bloom filter:
//! one byte per slot, 64-byte blocks, 8 bits per fingerprint in one block). Most ingests are
//! of new keys, and a miss used to read a random page of every table of every bucket in the TTL,
//! a week of tables that at volume is far bigger than memory: a major fault per table on the
//! shard's thread. The filter is 1/32 of its table, so it stays cached, and a miss reads one
//! cache line per table and the slots of about 1 table in 150. Tables of earlier releases have no
//! filter (their length says so) and are always probed.
//!
//! Architecture invariant: the log is the truth, the index is derived from it. A `meta` file says
//! up to which log offset the index is complete ([`IdempotencyIndex::indexed_through`]); after a
//! crash the engine re-inserts the records from there, and insertion is idempotent. Slots written
//! after the last [`checkpoint`](IdempotencyIndex::checkpoint) may be lost or torn; a torn slot
//! fails its CRC and is never returned. Filter bits are only ever set; those lost with their
//! page are set again when the replay re-inserts their entries.
//!
//! Fingerprints are 64 bits, so a lookup may, with probability about n / 2^64, return another
//! key's entry: the engine confirms a hit by reading the log record at [`Hit::offset`].
//!
//! Not here: reading the log, and deciding between "duplicate" and "key reused" (the engine does,
//! with [`Hit::body_hash`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use sha2::{Digest, Sha256};

/// Bytes per slot.
pub const SLOT_BYTES: usize = 32;
/// Bytes of a table file's header before slot 0.
pub const TABLE_HEADER_BYTES: usize = 64;
/// Bytes of a table's filter per slot, after the slots: 8 bits, 11 per entry at the load that
/// chains the next table, 16 at the 50 % a steady day runs at.
pub const FILTER_BYTES_PER_SLOT: u64 = 1;
/// A filter is made of 64-byte blocks (one cache line); a fingerprint's bits are all in one.
const FILTER_BLOCK_BYTES: u64 = 64;
/// Bits a fingerprint sets in its block.
const FILTER_HASHES: u64 = 8;
/// Smallest table, in slots.
pub const MIN_TABLE_SLOTS: u64 = 64;
/// Largest table, in slots (2^31 slots, 64 GiB).
pub const MAX_TABLE_SLOTS: u64 = 1 << 31;
/// Tables chained in one bucket before inserts into it fail with [`Error::Full`]. With doubling
/// that is 2^15 times the bucket's first table.
pub const MAX_TABLES_PER_BUCKET: usize = 16;
/// Buckets the index keeps open at once; options must leave room for clock skew
/// (`ttl / bucket width + 2 <= MAX_BUCKETS / 2`).
pub const MAX_BUCKETS: usize = 1024;
/// Slots probed in one table before giving up (a lookup miss, or a full table for an insert).
pub const MAX_PROBE: u64 = 512;
/// A table at this load chains a new, twice bigger table.
pub const MAX_LOAD_PERCENT: u64 = 70;
/// Default bucket width: one UTC day (buckets start at multiples of the width since the epoch).
pub const DEFAULT_BUCKET_WIDTH_MS: u64 = 24 * 60 * 60 * 1000;
/// Default time to live of an entry: 7 days (CONTRACT.md, "Ingest").
pub const DEFAULT_TTL_MS: u64 = 7 * DEFAULT_BUCKET_WIDTH_MS;
/// Default first table of a new index's first bucket (32 MiB).
pub const DEFAULT_INITIAL_SLOTS: u64 = 1 << 20;

const TABLE_MAGIC: [u8; 8] = *b"HRIDXTB1";
const META_MAGIC: [u8; 8] = *b"HRIDXMT1";
const VERSION: u32 = 1;
const META_FILE: &str = "meta";
const META_BYTES: usize = 40;
const TMP_SUFFIX: &str = ".tmp";
/// A table made ahead of need is named `<table name>.spare.tmp` until it is taken: a crash
/// leaves only a temporary file, removed at open.
const SPARE_SUFFIX: &str = ".spare.tmp";
/// The newest table's successor is made ahead of need once the table is this full (it is
/// chained at [`MAX_LOAD_PERCENT`]).
pub const SPARE_LOAD_PERCENT: u64 = 50;
/// The next bucket's first table is made ahead of need this fraction of a bucket width before
/// the bucket starts (an hour, with day buckets).
pub const SPARE_LEAD_PARTS: u64 = 24;
/// After a failed [`SpareJob`], the next one waits this long.
pub const SPARE_RETRY_MS: u64 = 10_000;

/// Failures of the idempotency index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed (disk full when creating a table is one).
    #[error("idempotency index {path}: {op}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file of the index is not what the index wrote.
    #[error("idempotency index {path}: corrupt: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The options make no sense, or do not match the index on disk (the bucket width cannot
    /// change under an existing index: delete the directory and let the engine rebuild it).
    #[error("idempotency index options: {0}")]
    InvalidOptions(String),
    /// A bucket cannot take more entries ([`MAX_TABLES_PER_BUCKET`]), or too many buckets are
    /// open ([`MAX_BUCKETS`], e.g. inserts with wildly skewed timestamps).
    #[error("idempotency index full: {0}")]
    Full(String),
}

impl Error {
    fn from_create(e: crate::prealloc::CreateError) -> Self {
        Error::Io {
            path: e.path,
            op: e.op,
            source: e.source,
        }
    }
}

/// Tuning of an [`IdempotencyIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Time span of one bucket file (1 ms ..= u32::MAX ms); fixed for the life of the index.
    pub bucket_width_ms: u64,
    /// How long an entry answers lookups.
    pub ttl_ms: u64,
    /// Slots of the first table of the first bucket; later buckets size themselves from the
    /// previous one. Rounded up to a power of two in `MIN_TABLE_SLOTS..=MAX_TABLE_SLOTS`.
    pub initial_slots: u64,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            bucket_width_ms: DEFAULT_BUCKET_WIDTH_MS,
            ttl_ms: DEFAULT_TTL_MS,
            initial_slots: DEFAULT_INITIAL_SLOTS,
        }
    }
}

impl IndexOptions {
    /// Checks the options (also done by [`IdempotencyIndex::open`]), for config validation.
    pub fn validate(&self) -> Result<(), Error> {
        if self.bucket_width_ms == 0 || self.bucket_width_ms > u64::from(u32::MAX) {
            return Err(Error::InvalidOptions(format!(
                "bucket_width_ms must be in 1..={}, got {}",
                u32::MAX,
                self.bucket_width_ms
            )));
        }
        if self.ttl_ms == 0 {
            return Err(Error::InvalidOptions("ttl_ms must be positive".to_owned()));
        }
        let buckets = self.ttl_ms / self.bucket_width_ms + 2;
        if buckets > (MAX_BUCKETS / 2) as u64 {
            return Err(Error::InvalidOptions(format!(
                "ttl_ms / bucket_width_ms needs {buckets} buckets, more than {}",
                MAX_BUCKETS / 2
            )));
        }
        Ok(())
    }

    fn table_slots(&self) -> u64 {
        clamp_slots(self.initial_slots)
    }
}

/// A table size: a power of two within the limits.
fn clamp_slots(slots: u64) -> u64 {
    slots
        .clamp(MIN_TABLE_SLOTS, MAX_TABLE_SLOTS)
        .next_power_of_two()
}

/// What the index knows about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Log offset of the delivery first ingested with the key.
    pub offset: u64,
    /// [`BodyHash`] of that delivery's body.
    pub body_hash: u64,
    /// When it was inserted (Unix milliseconds).
    pub at_ms: u64,
}

/// How a request body's 64-bit hash was computed. The index stores the hash without saying;
/// an ingested record's version says which ([`crate::record::Algorithms`], which also names
/// the one new records use), and a duplicate is confirmed against the record.
///
/// The hash only tells a retry (same key, same body: answered 200 with the first delivery)
/// from a reuse (same key, another body: 422 `idempotency_key_reused`). A collision could only be made on purpose by
/// someone who can sign requests to the endpoint, and its only effect is that their own
/// second body is taken for their first: a cryptographic hash buys nothing here, and SHA-256
/// of a 1 KiB body cost 15 times XXH3's (662 against 46 ns on the project's machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyHash {
    /// The first 8 bytes of the body's SHA-256, big-endian: records of earlier releases.
    Sha256Prefix,
    /// XXH3-64 with seed 0: records written now.
    Xxh3,
}

impl BodyHash {
    /// The hash of `body`.
    pub fn of(self, body: &[u8]) -> u64 {
        match self {
            BodyHash::Sha256Prefix => {
                let digest = Sha256::digest(body);
                u64::from_be_bytes(digest[0..8].try_into().expect("SHA-256 is 32 bytes"))
            }
            BodyHash::Xxh3 => xxhash_rust::xxh3::xxh3_64(body),
        }
    }
}

/// (endpoint, key) as the index stores it. An ingest hashes its key once
/// ([`Fingerprint::of`]) for both its lookup and its insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of (endpoint, key).
    pub fn of(endpoint_id: &str, key: &str) -> Fingerprint {
        Fingerprint(fingerprint(endpoint_id, key))
    }
}

/// The 64-bit fingerprint of (endpoint, key); never 0, which marks an empty slot. The endpoint's
/// length is hashed first so that ("ab", "c") and ("a", "bc") differ.
fn fingerprint(endpoint_id: &str, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((endpoint_id.len() as u64).to_le_bytes());
    hasher.update(endpoint_id.as_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let fp = u64::from_le_bytes(digest[0..8].try_into().expect("SHA-256 is 32 bytes"));
    fp.max(1)
}

/// One slot's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fingerprint: u64,
    body_hash: u64,
    offset: u64,
    at_rel_ms: u32,
}

impl Entry {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[0..8].copy_from_slice(&self.fingerprint.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.body_hash.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.offset.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.at_rel_ms.to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// `None` for a torn or garbled slot.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let crc = read_u32(bytes, 28);
        if crc != crc32fast::hash(&bytes[0..28]) {
            return None;
        }
        Some(Self {
            fingerprint: read_u64(bytes, 0),
            body_hash: read_u64(bytes, 8),
            offset: read_u64(bytes, 16),
            at_rel_ms: read_u32(bytes, 24),
        })
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Outcome of placing an entry in one table.
enum Placed {
    Inserted,
    AlreadyPresent,
    /// No free slot within [`MAX_PROBE`].
    NoRoom,
}

/// Which table a new file is (its bucket and generation, as its name says) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableSpec {
    start_ms: u64,
    width_ms: u64,
    generation: u32,
    capacity: u64,
}

impl TableSpec {
    fn file_name(&self) -> String {
        Table::file_name(self.start_ms, self.generation)
    }

    /// The file's length and header.
    fn layout(&self) -> (u64, Vec<u8>) {
        let capacity = self.capacity;
        assert!(
            capacity.is_power_of_two() && (MIN_TABLE_SLOTS..=MAX_TABLE_SLOTS).contains(&capacity)
        );
        (
            Table::file_len(capacity, true),
            Table::encode_header(capacity, self.start_ms, self.width_ms, self.generation),
        )
    }
}

/// One memory-mapped hash table file.
#[derive(Debug)]
struct Table {
    path: PathBuf,
    map: MmapMut,
    capacity: u64,
    /// Whether the file ends with a filter (tables of earlier releases do not: every lookup
    /// probes them).
    filtered: bool,
    /// Occupied slots (a hint after a crash: it only drives growth, MAX_PROBE bounds the rest).
    len: u64,
    dirty: bool,
}

/// Table header layout: magic 0..8, version 8..12, slot bytes 12..16, capacity 16..24, bucket
/// start 24..32, bucket width 32..40, generation 40..44, CRC32 of 0..44 at 44..48, len 48..56.
const LEN_AT: usize = 48;

impl Table {
    fn file_name(start_ms: u64, generation: u32) -> String {
        format!("b{start_ms:020}-t{generation:02}.idx")
    }

    /// Parses a table file name into (bucket start, generation).
    fn parse_name(name: &str) -> Option<(u64, u32)> {
        let rest = name.strip_prefix('b')?.strip_suffix(".idx")?;
        let (start, generation) = rest.split_once("-t")?;
        Some((start.parse().ok()?, generation.parse().ok()?))
    }

    fn encode_header(capacity: u64, start_ms: u64, width_ms: u64, generation: u32) -> Vec<u8> {
        let mut header = vec![0u8; TABLE_HEADER_BYTES];
        header[0..8].copy_from_slice(&TABLE_MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
        header[16..24].copy_from_slice(&capacity.to_le_bytes());
        header[24..32].copy_from_slice(&start_ms.to_le_bytes());
        header[32..40].copy_from_slice(&width_ms.to_le_bytes());
        header[40..44].copy_from_slice(&generation.to_le_bytes());
        let crc = crc32fast::hash(&header[0..44]);
        header[44..48].copy_from_slice(&crc.to_le_bytes());
        header
    }

    /// Creates the file complete and durable under a temporary name, then renames it, so that a
    /// table file with a bad header is always corruption, never a crash during creation.
    fn create(dir: &Path, spec: TableSpec) -> Result<Self, Error> {
        let path = dir.join(spec.file_name());
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", spec.file_name()));
        let (len, header) = spec.layout();
        let file = crate::prealloc::create_durable(&tmp, &path, len, &header)
            .map_err(Error::from_create)?;
        Self::drop_header_page(&file);
        Self::map(path, file, spec.capacity, 0)
    }

    /// A table made ahead of need ([`SpareJob`]): complete and fsynced under its spare name,
    /// which the index renames to the table's own when it takes it.
    fn create_spare(dir: &Path, spec: TableSpec) -> Result<Self, Error> {
        let path = dir.join(format!("{}{SPARE_SUFFIX}", spec.file_name()));
        let (len, header) = spec.layout();
        let made = crate::prealloc::create_reserved(&path, len, &header)
            .map_err(Error::from_create)
            .and_then(|file| {
                Self::drop_header_page(&file);
                // In the 2 MiB folios the newest table maps (`Table::set_hot`).
                crate::prealloc::warm(&file, 0, true);
                Self::map(path.clone(), file, spec.capacity, 0)
            });
        if made.is_err() {
            // Best effort: a file left behind is a temporary one, removed at the next open.
            let _ = fs::remove_file(&path);
        }
        made
    }

    /// A table file's length: header, slots, and the filter if it has one.
    fn file_len(capacity: u64, filtered: bool) -> u64 {
        let filter = if filtered {
            capacity * FILTER_BYTES_PER_SLOT
        } else {
            0
        };
        TABLE_HEADER_BYTES as u64 + capacity * SLOT_BYTES as u64 + filter
    }

    /// The header's write left a 4 KiB page in the page cache, which would keep the mapping's
    /// first 2 MiB on small pages (see `Table::set_hot`); dropped (it is clean after the
    /// fsync), the first fault reads it back as part of a huge folio.
    fn drop_header_page(file: &File) {
        // SAFETY: plain syscall on an open descriptor; advice only, its failure changes nothing.
        let _ = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    }

    /// Opens an existing table file and checks its header against its name.
    fn open(path: PathBuf, start_ms: u64, width_ms: u64, generation: u32) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                op: "open table",
                source,
            })?;
        let mut header = [0u8; TABLE_HEADER_BYTES];
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason,
        };
        file.read_exact_at(&mut header, 0)
            .map_err(|e| corrupt(format!("cannot read header: {e}")))?;
        if header[0..8] != TABLE_MAGIC {
            return Err(corrupt("bad magic".to_owned()));
        }
        if read_u32(&header, 44) != crc32fast::hash(&header[0..44]) {
            return Err(corrupt("header checksum mismatch".to_owned()));
        }
        let capacity = read_u64(&header, 16);
        let expected = Self::encode_header(capacity, start_ms, width_ms, generation);
        if header[0..44] != expected[0..44] {
            return Err(corrupt(format!(
                "header does not match name/options (start {start_ms}, width {width_ms}, \
                 generation {generation}, version {VERSION})"
            )));
        }
        let file_len = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.clone(),
                op: "stat table",
                source,
            })?
            .len();
        if !capacity.is_power_of_two()
            || ![true, false]
                .into_iter()
                .any(|f| file_len == Self::file_len(capacity, f))
        {
            return Err(corrupt(format!(
                "capacity {capacity} does not match length {file_len}"
            )));
        }
        let len = read_u64(&header, LEN_AT).min(capacity);
        let mut table = Self::map(path, file, capacity, len)?;
        table.filtered = file_len == Self::file_len(capacity, true);
        Ok(table)
    }

    fn map(path: PathBuf, file: File, capacity: u64, len: u64) -> Result<Self, Error> {
        // SAFETY: the file lives in this shard's index directory and only this index, owned by
        // one shard thread, maps it; nothing truncates it while mapped (expiry unmaps first).
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|source| Error::Io {
            path: path.clone(),
            op: "mmap table",
            source,
        })?;
        Ok(Self {
            path,
            map,
            capacity,
            filtered: true,
            len,
            dirty: false,
        })
    }

    /// Asks for 2 MiB pages (`hot`) or 4 KiB pages for this table's mapping.
    ///
    /// Lookups and inserts land on a random slot of the whole table, one page each. With 4 KiB
    /// pages that is a TLB miss, and on a virtual machine often a far costlier miss in the
    /// hypervisor's mappings, on nearly every call (BENCHMARKS.md, "Huge pages for the
    /// idempotency tables"). ext4 and XFS map page-cache folios of 2 MiB with one PMD entry when
    /// asked. The price is granularity: a fault on a cold table reads, and maps, 2 MiB. So only
    /// the newest bucket's tables, which take every insert and the first probe of every lookup,
    /// are hot; older days stay on small pages. With a filter, an older table's slots are read
    /// only for its own keys and the filter's rare false positives, so they go without
    /// read-around (`MADV_RANDOM`): a cold probe reads 4 KiB, where the kernel would read the
    /// device's whole readahead window around it (8 MiB on the project's VM); and the filter,
    /// which every miss reads, is read ahead at once (`MADV_WILLNEED`, asynchronous). Tables of
    /// earlier releases, probed by every lookup, keep the kernel's read-around, which warms
    /// them in big reads. Where the kernel or file system cannot do any of it, the advice is
    /// refused and nothing else changes.
    fn set_hot(&self, hot: bool) {
        if hot {
            let _ = self.map.advise(memmap2::Advice::HugePage);
            let _ = self.map.advise(memmap2::Advice::Normal);
            return;
        }
        let _ = self.map.advise(memmap2::Advice::NoHugePage);
        if self.filtered {
            let _ = self.map.advise(memmap2::Advice::Random);
            let filter_at = Self::file_len(self.capacity, false) as usize;
            let _ = self.map.advise_range(
                memmap2::Advice::WillNeed,
                filter_at,
                self.map.len() - filter_at,
            );
        }
    }

    fn slot(&self, index: u64) -> &[u8] {
        let start = TABLE_HEADER_BYTES + index as usize * SLOT_BYTES;
        &self.map[start..start + SLOT_BYTES]
    }

    /// Slot indexes of the probe sequence of `fingerprint`.
    fn probe(&self, fingerprint: u64) -> impl Iterator<Item = u64> + use<> {
        let mask = self.capacity - 1;
        let home = fingerprint & mask;
        (0..MAX_PROBE.min(self.capacity)).map(move |k| (home + k) & mask)
    }

    /// The filter's bits of `fingerprint`: (byte, mask) pairs, all in one 64-byte block.
    fn filter_bits(&self, fingerprint: u64) -> impl Iterator<Item = (usize, u8)> + use<> {
        // SplitMix64's finalizer: the slot index used the fingerprint's low bits, the filter
        // wants bits independent of those.
        let mut h = fingerprint;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let blocks = self.capacity * FILTER_BYTES_PER_SLOT / FILTER_BLOCK_BYTES;
        let filter_at = TABLE_HEADER_BYTES as u64 + self.capacity * SLOT_BYTES as u64;
        let block_at = filter_at + ((h >> 32) & (blocks.max(1) - 1)) * FILTER_BLOCK_BYTES;
        // Double hashing inside the block: bit i at a + i * b, b odd so the bits differ.
        let (a, b) = (h & 0xffff, (h >> 16) & 0xffff | 1);
        (0..FILTER_HASHES).map(move |i| {
            let bit = (a + i * b) % (FILTER_BLOCK_BYTES * 8);
            ((block_at + bit / 8) as usize, 1u8 << (bit % 8))
        })
    }

    /// False when the table certainly holds no entry with `fingerprint` (the lookup then skips
    /// the table: one cache line read instead of a random page of the slots). True when it may,
    /// and always for a table without a filter.
    fn may_hold(&self, fingerprint: u64) -> bool {
        !self.filtered
            || self
                .filter_bits(fingerprint)
                .all(|(byte, mask)| self.map[byte] & mask != 0)
    }

    /// Records `fingerprint` in the filter. Bits are only ever set, so a filter page written
    /// back early or late never hides an entry the checkpoint made durable, and replaying the
    /// log sets again what a crash lost.
    fn filter_add(&mut self, fingerprint: u64) {
        if !self.filtered {
            return;
        }
        for (byte, mask) in self.filter_bits(fingerprint) {
            if self.map[byte] & mask == 0 {
                self.map[byte] |= mask;
                self.dirty = true;
            }
        }
    }

    /// Every valid entry with this fingerprint, in probe order.
    fn matches(&self, fingerprint: u64) -> impl Iterator<Item = Entry> + '_ {
        self.probe(fingerprint)
            .map(|index| self.slot(index))
            .take_while(|bytes| read_u64(bytes, 0) != 0)
            .filter(move |bytes| read_u64(bytes, 0) == fingerprint)
            .filter_map(Entry::decode)
    }

    /// Puts `entry` in the first free slot of its probe sequence, unless the same fingerprint
    /// and offset are already there.
    fn place(&mut self, entry: &Entry) -> Placed {
        let mut free = None;
        for index in self.probe(entry.fingerprint) {
            let bytes = self.slot(index);
            let fingerprint = read_u64(bytes, 0);
            if fingerprint == 0 {
                free = Some(index);
                break;
            }
            if fingerprint == entry.fingerprint
                && Entry::decode(bytes).is_some_and(|e| e.offset == entry.offset)
            {
                // A replay after a crash that lost the filter's page but not the slot's.
                self.filter_add(entry.fingerprint);
                return Placed::AlreadyPresent;
            }
        }
        let Some(index) = free else {
            return Placed::NoRoom;
        };
        let start = TABLE_HEADER_BYTES + index as usize * SLOT_BYTES;
        self.map[start..start + SLOT_BYTES].copy_from_slice(&entry.encode());
        // Pair assertion: the slot reads back as written.
        debug_assert_eq!(Entry::decode(self.slot(index)), Some(*entry));
        self.len += 1;
        self.map[LEN_AT..LEN_AT + 8].copy_from_slice(&self.len.to_le_bytes());
        self.dirty = true;
        self.filter_add(entry.fingerprint);
        Placed::Inserted
    }

    fn over_load(&self) -> bool {
        (self.len + 1) * 100 > self.capacity * MAX_LOAD_PERCENT
    }
}

/// The tables of one time bucket, oldest first.
#[derive(Debug)]
struct Bucket {
    tables: Vec<Table>,
}

impl Bucket {
    fn len(&self) -> u64 {
        self.tables.iter().map(|t| t.len).sum()
    }
}

/// A shard's idempotency index (see the module docs).
#[derive(Debug)]
pub struct IdempotencyIndex {
    dir: PathBuf,
    options: IndexOptions,
    /// Buckets by start time.
    buckets: BTreeMap<u64, Bucket>,
    indexed_through: u64,
    /// The latest `now_ms` given to [`IdempotencyIndex::expire`]: inserts into buckets already
    /// expired by then are skipped instead of resurrecting the bucket.
    expired_at_ms: u64,
    /// Tables made ahead of need ([`IdempotencyIndex::spare_job`]), at most one per kind
    /// (the newest table's successor, the next bucket's first table).
    spares: Vec<Spare>,
    /// A [`SpareJob`] is out.
    spare_busy: bool,
    /// No new spare before this (after a failed one).
    spare_retry_at_ms: u64,
    /// A spare was renamed into place since the last checkpoint: the next one fsyncs the
    /// directory before it records a newer `indexed_through`.
    renamed: bool,
}

impl IdempotencyIndex {
    /// Opens the index in `dir` (created when absent).
    ///
    /// Errors: [`Error::InvalidOptions`] for nonsense options or a bucket width other than the
    /// one the index was created with; [`Error::Corrupt`] for a damaged file (the engine may
    /// delete the directory and rebuild it from the log); [`Error::Io`].
    pub fn open(dir: &Path, options: IndexOptions) -> Result<Self, Error> {
        options.validate()?;
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let meta_path = dir.join(META_FILE);
        let indexed_through = match fs::read(&meta_path) {
            Ok(bytes) => {
                let (width_ms, through) = decode_meta(&bytes).map_err(|reason| Error::Corrupt {
                    path: meta_path.clone(),
                    reason,
                })?;
                if width_ms != options.bucket_width_ms {
                    return Err(Error::InvalidOptions(format!(
                        "index in {} has bucket_width_ms {width_ms}, asked for {}",
                        dir.display(),
                        options.bucket_width_ms
                    )));
                }
                through
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_meta(dir, options.bucket_width_ms, 0)?;
                0
            }
            Err(source) => {
                return Err(Error::Io {
                    path: meta_path,
                    op: "read meta",
                    source,
                });
            }
        };

        let mut found: BTreeMap<u64, BTreeMap<u32, PathBuf>> = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            op: "list directory",
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                op: "list directory",
                source,
            })?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                // A creation or meta update cut short by a crash: never in use.
                fs::remove_file(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    op: "remove temporary file",
                    source,
                })?;
            } else if let Some((start_ms, generation)) = Table::parse_name(name) {
                found.entry(start_ms).or_default().insert(generation, path);
            }
        }
        if found.len() > MAX_BUCKETS {
            return Err(Error::Full(format!("{} buckets on disk", found.len())));
        }
        let mut buckets = BTreeMap::new();
        for (start_ms, generations) in found {
            let mut tables = Vec::with_capacity(generations.len());
            for (generation, path) in generations {
                tables.push(Table::open(
                    path,
                    start_ms,
                    options.bucket_width_ms,
                    generation,
                )?);
            }
            buckets.insert(start_ms, Bucket { tables });
        }
        let index = Self {
            dir: dir.to_path_buf(),
            options,
            buckets,
            indexed_through,
            expired_at_ms: 0,
            spares: Vec::new(),
            spare_busy: false,
            spare_retry_at_ms: 0,
            renamed: false,
        };
        index.set_page_sizes();
        Ok(index)
    }

    /// The entry for (endpoint, key) inserted less than the TTL before `now_ms`, newest bucket
    /// first. May (about once in 2^64 / keys) return another key's entry: confirm against the log.
    /// If the same key was inserted with several offsets within the TTL, which one is returned is
    /// unspecified (the engine does not do that: a seen key is a duplicate or a reuse).
    pub fn lookup(&self, endpoint_id: &str, key: &str, now_ms: u64) -> Option<Hit> {
        self.lookup_fingerprint(Fingerprint::of(endpoint_id, key), now_ms)
    }

    /// [`lookup`](Self::lookup) by the key's [`Fingerprint`].
    pub fn lookup_fingerprint(&self, key: Fingerprint, now_ms: u64) -> Option<Hit> {
        let fingerprint = key.0;
        // The newest table is probed without its filter: a miss there is followed by the
        // insert of the same key, which reads the same slots, so its filter would only add a
        // cache line to every ingest.
        let mut newest = true;
        for (&start_ms, bucket) in self.buckets.iter().rev() {
            if self.bucket_expired(start_ms, now_ms) {
                // Buckets are sorted by start: every older one is expired too.
                break;
            }
            for table in bucket.tables.iter().rev() {
                if !std::mem::take(&mut newest) && !table.may_hold(fingerprint) {
                    continue;
                }
                for entry in table.matches(fingerprint) {
                    let at_ms = start_ms + u64::from(entry.at_rel_ms);
                    if now_ms.saturating_sub(at_ms) < self.options.ttl_ms {
                        return Some(Hit {
                            offset: entry.offset,
                            body_hash: entry.body_hash,
                            at_ms,
                        });
                    }
                }
            }
        }
        None
    }

    /// Records that the delivery at log `offset` was ingested at `at_ms` with (endpoint, key) and
    /// a body of hash `body_hash`.
    ///
    /// Idempotent for the same (endpoint, key, offset, at_ms), so recovery can replay the log
    /// from [`indexed_through`](Self::indexed_through). An entry already expired by the last
    /// [`expire`](Self::expire) is skipped. May create a file (a new bucket or a chained table),
    /// which fsyncs it: a few milliseconds, once per bucket or growth step.
    pub fn insert(
        &mut self,
        endpoint_id: &str,
        key: &str,
        body_hash: u64,
        offset: u64,
        at_ms: u64,
    ) -> Result<(), Error> {
        let key = Fingerprint::of(endpoint_id, key);
        self.insert_inner(key, body_hash, offset, at_ms, true)
    }

    /// [`insert`](Self::insert) for a record being ingested now: its offset is new to the log,
    /// so it cannot already be in the index, and the bucket's older tables are not searched for
    /// it. That search cost a random page per older table on every insert once a busy day had
    /// chained tables; without it, max-ingest ran 6–7 % faster in alternated runs
    /// (BENCHMARKS.md §2, "The idempotency chain"). Replays (recovery) must use `insert`.
    pub fn insert_new(
        &mut self,
        endpoint_id: &str,
        key: &str,
        body_hash: u64,
        offset: u64,
        at_ms: u64,
    ) -> Result<(), Error> {
        let key = Fingerprint::of(endpoint_id, key);
        self.insert_inner(key, body_hash, offset, at_ms, false)
    }

    /// [`insert_new`](Self::insert_new) by the key's [`Fingerprint`].
    pub fn insert_new_fingerprint(
        &mut self,
        key: Fingerprint,
        body_hash: u64,
        offset: u64,
        at_ms: u64,
    ) -> Result<(), Error> {
        self.insert_inner(key, body_hash, offset, at_ms, false)
    }

    fn insert_inner(
        &mut self,
        key: Fingerprint,
        body_hash: u64,
        offset: u64,
        at_ms: u64,
        maybe_replay: bool,
    ) -> Result<(), Error> {
        let start_ms = self.bucket_start(at_ms);
        if self.bucket_expired(start_ms, self.expired_at_ms) {
            return Ok(());
        }
        let entry = Entry {
            fingerprint: key.0,
            body_hash,
            offset,
            at_rel_ms: u32::try_from(at_ms - start_ms).expect("bucket width fits u32"),
        };
        self.ensure_bucket(start_ms)?;
        let bucket = self.buckets.get_mut(&start_ms).expect("bucket exists");
        let (newest, older) = bucket
            .tables
            .split_last_mut()
            .expect("a bucket has a table");
        if maybe_replay
            && let Some(table) = older
                .iter_mut()
                .find(|t| t.matches(entry.fingerprint).any(|e| e.offset == offset))
        {
            table.filter_add(entry.fingerprint);
            return Ok(());
        }
        if !newest.over_load() {
            match newest.place(&entry) {
                Placed::Inserted | Placed::AlreadyPresent => return Ok(()),
                Placed::NoRoom => {}
            }
        } else if newest
            .matches(entry.fingerprint)
            .any(|e| e.offset == offset)
        {
            newest.filter_add(entry.fingerprint);
            return Ok(());
        }
        // Chain a bigger table.
        let generation = bucket.tables.len();
        if generation >= MAX_TABLES_PER_BUCKET {
            return Err(Error::Full(format!(
                "bucket starting at {start_ms} has {MAX_TABLES_PER_BUCKET} tables"
            )));
        }
        let last = bucket.tables.last().expect("a bucket has a table");
        let slots = clamp_slots(last.capacity.saturating_mul(2));
        let mut table = self.new_table(start_ms, generation as u32, slots)?;
        match table.place(&entry) {
            Placed::Inserted => {}
            Placed::AlreadyPresent | Placed::NoRoom => {
                unreachable!("a new table has room and no entries")
            }
        }
        let bucket = self.buckets.get_mut(&start_ms).expect("bucket exists");
        bucket.tables.push(table);
        self.set_page_sizes();
        Ok(())
    }

    /// The start of the bucket that holds moment `at_ms`.
    fn bucket_start(&self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.options.bucket_width_ms
    }

    /// Opens bucket `start_ms` with its first table, unless it is open already.
    fn ensure_bucket(&mut self, start_ms: u64) -> Result<(), Error> {
        if self.buckets.contains_key(&start_ms) {
            return Ok(());
        }
        if self.buckets.len() >= MAX_BUCKETS {
            return Err(Error::Full(format!(
                "{MAX_BUCKETS} buckets open, cannot add one for {start_ms}"
            )));
        }
        // Size the new bucket for the previous one's volume at about 50 % load, so that a
        // steady stream needs one table per bucket.
        let previous = self
            .buckets
            .range(..start_ms)
            .next_back()
            .map_or(0, |(_, b)| b.len());
        let slots = clamp_slots(self.options.table_slots().max(previous.saturating_mul(2)));
        let table = self.new_table(start_ms, 0, slots)?;
        self.buckets.insert(
            start_ms,
            Bucket {
                tables: vec![table],
            },
        );
        self.set_page_sizes();
        Ok(())
    }

    /// Readies the index to take inserts at `now_ms`, for a shard about to serve: makes the
    /// first table of `now_ms`'s bucket if there is none (a new index, or one closed across a
    /// bucket's start), here and now as the bucket's first insert would have; and returns a
    /// job that brings the newest bucket's tables into the page cache ([`WarmJob`]), to run on
    /// another thread while the shard serves.
    ///
    /// Why: every insert and lookup lands on a random 2 MiB page of the newest tables. Left to
    /// them, the first seconds of a new table's life fault each page in on the shard's thread,
    /// zeroed (a new table) or read from disk (after a restart): the shard stopped for ~90 ms
    /// in the first second of a fresh start on the project's VM, where first-touch memory costs
    /// ~2 ms per MiB (BENCHMARKS.md, "Nineteenth session"). Tables made later come as warmed
    /// spares ([`SpareJob`]).
    pub fn ready_for(&mut self, now_ms: u64) -> Result<WarmJob, Error> {
        self.ensure_bucket(self.bucket_start(now_ms))?;
        let paths = self
            .buckets
            .last_key_value()
            .map(|(_, bucket)| bucket.tables.iter().map(|t| t.path.clone()).collect())
            .unwrap_or_default();
        Ok(WarmJob(paths))
    }

    /// Table `generation` of bucket `start_ms`, with `capacity` slots: the spare made for it,
    /// renamed into place (one rename on this thread: the next checkpoint fsyncs the
    /// directory), or else made here and now (fallocate, fsync, rename and directory fsync,
    /// milliseconds on this thread). A bucket's first table takes its spare whatever its size:
    /// the spare was sized for the bucket when it was made.
    fn new_table(&mut self, start_ms: u64, generation: u32, capacity: u64) -> Result<Table, Error> {
        if let Some(i) = self.spares.iter().position(|s| {
            s.start_ms == start_ms
                && s.generation == generation
                && (generation == 0 || s.table.capacity == capacity)
        }) {
            let mut spare = self.spares.swap_remove(i);
            let path = self.dir.join(Table::file_name(start_ms, generation));
            if fs::rename(&spare.table.path, &path).is_ok() {
                self.renamed = true;
                spare.table.path = path;
                return Ok(spare.table);
            }
            // Kept, to be removed: made below instead, the table no longer needs it.
            self.spares.push(spare);
        }
        let spec = TableSpec {
            start_ms,
            width_ms: self.options.bucket_width_ms,
            generation,
            capacity,
        };
        Table::create(&self.dir, spec)
    }

    /// Work that keeps the next table made ahead of need, so that inserts only rename it into
    /// place instead of creating it on the index's thread (ARCHITECTURE.md invariant 6): the
    /// newest table's successor once the table passes [`SPARE_LOAD_PERCENT`] load, the next
    /// bucket's first table from [`SPARE_LEAD_PARTS`] of a width before the bucket starts; or
    /// the removal of a spare that will not be taken (the table was made without it, its bucket
    /// ended or another became the newest). `None`: nothing to do, or a job is still out. Cheap
    /// enough to call after every insert. Run the job on any thread and hand its result to
    /// [`IdempotencyIndex::finish_spare`]; one job at a time.
    pub fn spare_job(&mut self, now_ms: u64) -> Option<SpareJob> {
        if self.spare_busy {
            return None;
        }
        if let Some(i) = self
            .spares
            .iter()
            .position(|s| !self.spare_wanted(s, now_ms))
        {
            self.spare_busy = true;
            return Some(SpareJob(SpareTask::Remove(self.spares.swap_remove(i))));
        }
        if now_ms < self.spare_retry_at_ms {
            return None;
        }
        let (start_ms, generation, capacity) = self
            .spare_needs(now_ms)
            .into_iter()
            .flatten()
            .find(|&(start_ms, generation, _)| {
                !self
                    .spares
                    .iter()
                    .any(|s| s.start_ms == start_ms && s.generation == generation)
            })?;
        self.spare_busy = true;
        Some(SpareJob(SpareTask::Create {
            dir: self.dir.clone(),
            spec: TableSpec {
                start_ms,
                width_ms: self.options.bucket_width_ms,
                generation,
                capacity,
            },
        }))
    }

    /// Takes back a finished [`SpareJob`]: a made spare joins the index; after a failure no
    /// new spare is made for [`SPARE_RETRY_MS`] (inserts make their tables themselves
    /// meanwhile), and the error is returned for the caller to report.
    pub fn finish_spare(
        &mut self,
        done: Result<Option<Spare>, Error>,
        now_ms: u64,
    ) -> Result<(), Error> {
        self.spare_busy = false;
        match done {
            Ok(Some(spare)) => {
                self.spares.push(spare);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.spare_retry_at_ms = now_ms.saturating_add(SPARE_RETRY_MS);
                Err(e)
            }
        }
    }

    /// The tables worth making ahead at `now_ms`, as (bucket start, generation, slots): the
    /// newest table's successor, the next bucket's first table.
    fn spare_needs(&self, now_ms: u64) -> [Option<(u64, u32, u64)>; 2] {
        let Some((&start_ms, bucket)) = self.buckets.last_key_value() else {
            return [None, None];
        };
        let newest = bucket.tables.last().expect("a bucket has a table");
        let generation = bucket.tables.len();
        let successor = (newest.len * 100 >= newest.capacity * SPARE_LOAD_PERCENT
            && generation < MAX_TABLES_PER_BUCKET)
            .then(|| {
                (
                    start_ms,
                    generation as u32,
                    clamp_slots(newest.capacity.saturating_mul(2)),
                )
            });
        // The next bucket, sized like `insert` sizes a new bucket (twice the previous one's
        // volume), from this bucket's volume so far projected over its whole width.
        let width_ms = self.options.bucket_width_ms;
        let next_ms = start_ms.saturating_add(width_ms);
        let lead_ms = (width_ms / SPARE_LEAD_PARTS).max(1);
        let next = (now_ms < next_ms && now_ms.saturating_add(lead_ms) >= next_ms).then(|| {
            let elapsed_ms = now_ms.saturating_sub(start_ms).max(1);
            let projected =
                u128::from(bucket.len()) * u128::from(width_ms) / u128::from(elapsed_ms);
            let projected = u64::try_from(projected).unwrap_or(u64::MAX);
            let slots = clamp_slots(self.options.table_slots().max(projected.saturating_mul(2)));
            (next_ms, 0, slots)
        });
        [successor, next]
    }

    /// Whether `spare` may still be taken: its bucket is the newest (or the next one) and does
    /// not have that table yet, and a bucket's first table only while the bucket has not ended.
    fn spare_wanted(&self, spare: &Spare, now_ms: u64) -> bool {
        let newest_ms = self.buckets.keys().next_back().copied();
        if newest_ms.is_some_and(|newest| spare.start_ms < newest) {
            return false;
        }
        match self.buckets.get(&spare.start_ms) {
            Some(bucket) => {
                let last = bucket.tables.last().expect("a bucket has a table");
                bucket.tables.len() == spare.generation as usize
                    && clamp_slots(last.capacity.saturating_mul(2)) == spare.table.capacity
            }
            None => {
                spare.generation == 0
                    && now_ms < spare.start_ms.saturating_add(self.options.bucket_width_ms)
            }
        }
    }

    /// Deletes the bucket files whose every entry is at least the TTL older than `now_ms`;
    /// returns how many buckets it dropped. Lookups already ignore such entries, so calling this
    /// late only costs disk. All on the calling thread: [`take_expired`](Self::take_expired)
    /// leaves the slow part to another.
    pub fn expire(&mut self, now_ms: u64) -> Result<usize, Error> {
        self.take_expired(now_ms).remove()
    }

    /// The quick half of [`expire`](Self::expire), on the thread that owns the index: forgets
    /// the expired buckets and hands over their tables, still mapped. Unmapping them and deleting
    /// their files is the slow half ([`ExpiredTables::remove`]): a day's table can be GiBs, and
    /// its unlink frees every extent and drops every cached page, milliseconds that the shard
    /// runs on its blocking pool (ARCHITECTURE.md invariant 6). Until then the files stay on
    /// disk; an index opened meanwhile loads them as expired buckets and expires them again.
    pub fn take_expired(&mut self, now_ms: u64) -> ExpiredTables {
        self.expired_at_ms = self.expired_at_ms.max(now_ms);
        let expired: Vec<u64> = self
            .buckets
            .keys()
            .copied()
            .take_while(|&start_ms| self.bucket_expired(start_ms, now_ms))
            .collect();
        let mut tables = Vec::new();
        for start_ms in &expired {
            let bucket = self.buckets.remove(start_ms).expect("listed bucket");
            // Newest first: a crash part way leaves a bucket with its oldest tables, which the
            // next expire deletes.
            tables.extend(bucket.tables.into_iter().rev().map(|t| (t.path, t.map)));
        }
        ExpiredTables {
            buckets: expired.len(),
            tables,
        }
    }

    /// Makes the index durable as of `log_offset` (see [`IdempotencyIndex::prepare_checkpoint`]),
    /// all on the calling thread: for recovery and shutdown, where blocking is fine.
    pub fn checkpoint(&mut self, log_offset: u64) -> Result<(), Error> {
        let job = self.prepare_checkpoint(log_offset);
        let done = job.run();
        self.finish_checkpoint(done)
    }

    /// The quick half of a checkpoint, on the thread that owns the index: which tables were
    /// written since the last checkpoint (their dirty marks are cleared), and the offset to
    /// record. [`CheckpointJob::run`] does the slow half — fdatasync of those table files, then
    /// the meta file — on any thread (the shard runs it on the blocking pool, so a checkpoint of
    /// tens of MiB of dirty slots never stalls ingest); hand its result to
    /// [`IdempotencyIndex::finish_checkpoint`]. Every record before `log_offset` must have been
    /// inserted before this call.
    ///
    /// fdatasync of the file writes the pages dirtied through the shared mapping: on Linux,
    /// `msync(MS_SYNC)` is itself an fsync of the file's range, and dirty pages of shared
    /// mappings are tracked in the page cache.
    ///
    /// # Panics
    /// When `log_offset` is lower than [`indexed_through`](Self::indexed_through).
    pub fn prepare_checkpoint(&mut self, log_offset: u64) -> CheckpointJob {
        assert!(
            log_offset >= self.indexed_through,
            "checkpoint offset went back from {} to {log_offset}",
            self.indexed_through
        );
        let mut tables = Vec::new();
        for bucket in self.buckets.values_mut() {
            for table in &mut bucket.tables {
                if std::mem::take(&mut table.dirty) {
                    tables.push(table.path.clone());
                }
            }
        }
        CheckpointJob {
            dir: self.dir.clone(),
            width_ms: self.options.bucket_width_ms,
            log_offset,
            tables,
            sync_dir: std::mem::take(&mut self.renamed),
        }
    }

    /// Records a finished [`CheckpointJob`]: on success the index is durable through its offset
    /// (never moving back, should an older job finish after a newer one); on failure its
    /// tables are marked dirty again, for the next checkpoint.
    pub fn finish_checkpoint(&mut self, done: Result<u64, CheckpointFailed>) -> Result<(), Error> {
        match done {
            Ok(offset) => {
                self.indexed_through = self.indexed_through.max(offset);
                Ok(())
            }
            Err(failed) => {
                self.renamed |= failed.sync_dir;
                for bucket in self.buckets.values_mut() {
                    for table in &mut bucket.tables {
                        if failed.tables.contains(&table.path) {
                            table.dirty = true;
                        }
                    }
                }
                Err(failed.error)
            }
        }
    }

    /// The log offset from which recovery must re-insert records (every record before it is in
    /// the index durably).
    pub fn indexed_through(&self) -> u64 {
        self.indexed_through
    }

    /// Drops this process's resident pages of every table mapping (`MADV_DONTNEED`); they
    /// stay in the page cache and fault back in on use.
    pub fn release_memory(&self) {
        for bucket in self.buckets.values() {
            for table in &bucket.tables {
                // SAFETY: shared file mappings: only page-table entries are dropped; the data
                // is in the page cache and the file. No slice into the map is alive here.
                let _ = unsafe {
                    table
                        .map
                        .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
                };
            }
        }
    }

    /// Huge pages for the newest bucket's tables, small pages for the others (see
    /// [`Table::set_hot`]). Called whenever a table is opened or created, which is rare.
    fn set_page_sizes(&self) {
        let newest = self.buckets.keys().next_back().copied();
        for (&start_ms, bucket) in &self.buckets {
            for table in &bucket.tables {
                table.set_hot(Some(start_ms) == newest);
            }
        }
    }

    /// Buckets currently open (for metrics and tests).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// True when every entry the bucket can hold is at least the TTL old at `now_ms`.
    fn bucket_expired(&self, start_ms: u64, now_ms: u64) -> bool {
        let end_ms = start_ms.saturating_add(self.options.bucket_width_ms);
        end_ms.saturating_add(self.options.ttl_ms) <= now_ms
    }
}

/// Meta layout: magic 0..8, version 8..12, bucket width 12..20, indexed through 20..28, CRC32 of
/// 0..28 at 28..32, zero padding.
fn encode_meta(width_ms: u64, indexed_through: u64) -> [u8; META_BYTES] {
    let mut bytes = [0u8; META_BYTES];
    bytes[0..8].copy_from_slice(&META_MAGIC);
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&width_ms.to_le_bytes());
    bytes[20..28].copy_from_slice(&indexed_through.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_meta(bytes: &[u8]) -> Result<(u64, u64), String> {
    if bytes.len() != META_BYTES {
        return Err(format!(
            "meta is {} bytes, expected {META_BYTES}",
            bytes.len()
        ));
    }
    if bytes[0..8] != META_MAGIC {
        return Err("bad magic".to_owned());
    }
    if read_u32(bytes, 28) != crc32fast::hash(&bytes[0..28]) {
        return Err("checksum mismatch".to_owned());
    }
    let version = read_u32(bytes, 8);
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    Ok((read_u64(bytes, 12), read_u64(bytes, 20)))
}

/// Replaces the meta file atomically: write a temporary file, fsync, rename, fsync the directory.
/// The slow half of a checkpoint (see [`IdempotencyIndex::prepare_checkpoint`]): owns only
/// paths, so it can run on any thread.
#[derive(Debug)]
#[must_use = "a checkpoint job does nothing until it is run and finished"]
pub struct CheckpointJob {
    dir: PathBuf,
    width_ms: u64,
    log_offset: u64,
    tables: Vec<PathBuf>,
    /// A table was renamed into place since the last checkpoint ([`IdempotencyIndex::new_table`]):
    /// its name is made durable before the meta file says its entries are.
    sync_dir: bool,
}

/// A [`CheckpointJob`] that failed, with the tables to flush again.
#[derive(Debug)]
pub struct CheckpointFailed {
    pub error: Error,
    tables: Vec<PathBuf>,
    sync_dir: bool,
}

impl CheckpointJob {
    /// fdatasyncs the tables written since the last checkpoint (and the directory, when a
    /// table was renamed into place), then writes and fsyncs the meta file with the job's
    /// offset. A table deleted meanwhile (its bucket expired) needs no flush. Blocks for as
    /// long as the dirty pages take.
    pub fn run(self) -> Result<u64, CheckpointFailed> {
        let result = self.tables.iter().try_for_each(|path| {
            match File::open(path).and_then(|f| f.sync_data()) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(|source| Error::Io {
                    path: path.clone(),
                    op: "fdatasync table",
                    source,
                }),
            }
        });
        let result = result
            .and_then(|()| {
                if self.sync_dir {
                    sync_dir(&self.dir)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| write_meta(&self.dir, self.width_ms, self.log_offset));
        match result {
            Ok(()) => Ok(self.log_offset),
            Err(error) => Err(CheckpointFailed {
                error,
                tables: self.tables,
                sync_dir: self.sync_dir,
            }),
        }
    }
}

/// Expired tables taken out of the index ([`IdempotencyIndex::take_expired`]), to be unmapped
/// and deleted on any thread.
#[derive(Debug)]
pub struct ExpiredTables {
    buckets: usize,
    /// Oldest bucket first, each bucket's newest table first.
    tables: Vec<(PathBuf, MmapMut)>,
}

impl ExpiredTables {
    /// Buckets taken out.
    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// Unmaps and deletes the tables, in order; returns [`ExpiredTables::buckets`]. A file
    /// already gone counts as deleted (an index reopened meanwhile may have expired it).
    pub fn remove(self) -> Result<usize, Error> {
        for (path, map) in self.tables {
            drop(map);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        path,
                        op: "remove expired table",
                        source,
                    });
                }
            }
        }
        Ok(self.buckets)
    }
}

/// A table made ahead of need, not yet taken ([`IdempotencyIndex::spare_job`]).
#[derive(Debug)]
pub struct Spare {
    start_ms: u64,
    generation: u32,
    /// Mapped already, under its spare name.
    table: Table,
}

/// The slow half of keeping a spare table ([`IdempotencyIndex::spare_job`]): making one
/// (fallocate, header, fsync, mmap) or removing one no longer wanted (unmap, unlink). Owns
/// what it needs, so it runs on any thread.
#[derive(Debug)]
#[must_use = "a spare job does nothing until it is run and finished"]
pub struct SpareJob(SpareTask);

#[derive(Debug)]
enum SpareTask {
    Create { dir: PathBuf, spec: TableSpec },
    Remove(Spare),
}

impl SpareJob {
    /// Does the work: `Some` spare made, or `None` after a removal (a file already gone counts
    /// as removed). Blocks for as long as the file system takes.
    pub fn run(self) -> Result<Option<Spare>, Error> {
        match self.0 {
            SpareTask::Create { dir, spec } => Table::create_spare(&dir, spec).map(|table| {
                Some(Spare {
                    start_ms: spec.start_ms,
                    generation: spec.generation,
                    table,
                })
            }),
            SpareTask::Remove(spare) => {
                let Table { path, map, .. } = spare.table;
                drop(map);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(Error::Io {
                        path,
                        op: "remove spare table",
                        source,
                    }),
                }
            }
        }
    }
}

/// Tables to bring into the page cache, in 2 MiB folios ([`IdempotencyIndex::ready_for`]).
/// Owns their paths, so it runs on any thread; a table removed meanwhile is skipped.
#[derive(Debug)]
#[must_use = "a warm job does nothing until it is run"]
pub struct WarmJob(Vec<PathBuf>);

impl WarmJob {
    /// Reads or zeroes every page of the tables into the page cache. Blocks for as long as
    /// that takes (a table's size from disk after a restart). Advice only: nothing to report.
    pub fn run(self) {
        for path in self.0 {
            if let Ok(file) = File::open(&path) {
                crate::prealloc::warm(&file, 0, true);
            }
        }
    }
}

fn write_meta(dir: &Path, width_ms: u64, indexed_through: u64) -> Result<(), Error> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}{TMP_SUFFIX}"));
    let io_err = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            path: p,
            op,
            source,
        }
    };
    let file = File::create(&tmp).map_err(io_err("create meta", &tmp))?;
    file.write_all_at(&encode_meta(width_ms, indexed_through), 0)
        .map_err(io_err("write meta", &tmp))?;
    file.sync_all().map_err(io_err("fsync meta", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename meta", &path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            op: "fsync directory",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WIDTH: u64 = 1_000;
    const TTL: u64 = 3_000;

    fn small() -> IndexOptions {
        IndexOptions {
            bucket_width_ms: WIDTH,
            ttl_ms: TTL,
            initial_slots: MIN_TABLE_SLOTS,
        }
    }

    fn table_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".idx")
            })
            .count()
    }

    /// Both hashes are pinned: records on disk carry them, so neither may ever change.
    #[test]
    fn body_hashes_are_the_sha256_prefix_and_xxh3() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(BodyHash::Sha256Prefix.of(b"abc"), 0xba78_16bf_8f01_cfea);
        // XXH3-64("abc", seed 0), from the reference implementation's test vectors.
        assert_eq!(BodyHash::Xxh3.of(b"abc"), 0x78af_5f94_892f_3950);
        assert_ne!(fingerprint("ab", "c"), fingerprint("a", "bc"));
    }

    #[test]
    fn insert_lookup_and_ttl_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(index.lookup("ep", "k", 10_000), None);
        index.insert("ep", "k", 7, 100, 10_500).unwrap();
        let hit = Hit {
            offset: 100,
            body_hash: 7,
            at_ms: 10_500,
        };
        assert_eq!(index.lookup("ep", "k", 10_500), Some(hit));
        assert_eq!(index.lookup("ep", "k", 10_500 + TTL - 1), Some(hit));
        assert_eq!(index.lookup("ep", "k", 10_500 + TTL), None);
        assert_eq!(
            index.lookup("ep", "k", 9_000),
            Some(hit),
            "clock skew: still a duplicate"
        );
        assert_eq!(index.lookup("other", "k", 10_500), None);
        assert_eq!(index.lookup("ep", "k2", 10_500), None);
    }

    #[test]
    fn insert_is_idempotent_for_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        for _ in 0..3 {
            index.insert("ep", "k", 7, 100, 1_000).unwrap();
        }
        let bucket = index.buckets.values().next().unwrap();
        assert_eq!(bucket.len(), 1);
    }

    #[test]
    fn grows_past_initial_capacity_by_chaining_tables() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        let n = 2_000u64;
        for i in 0..n {
            index
                .insert("ep", &format!("key-{i}"), i, i * 10, 5_000)
                .unwrap();
        }
        let tables = index.buckets.values().next().unwrap().tables.len();
        assert!(
            tables >= 5,
            "64 slots at 70 % cannot hold 2000 keys in {tables} tables"
        );
        for i in 0..n {
            let hit = index.lookup("ep", &format!("key-{i}"), 5_000).unwrap();
            assert_eq!((hit.offset, hit.body_hash), (i * 10, i));
        }
        // Replay after growth stays idempotent.
        index.insert("ep", "key-0", 0, 0, 5_000).unwrap();
        assert_eq!(index.buckets.values().next().unwrap().len(), n);
        // The next bucket is sized from this one: one table suffices.
        for i in 0..n {
            index
                .insert("ep", &format!("next-{i}"), i, i, 6_000)
                .unwrap();
        }
        assert_eq!(index.buckets.get(&6_000).unwrap().tables.len(), 1);
    }

    fn spare_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(SPARE_SUFFIX))
            .collect();
        names.sort();
        names
    }

    /// Inserts keys `k{i}` at `at_ms`, each with body hash and offset `i`.
    fn fill(index: &mut IdempotencyIndex, keys: std::ops::Range<u64>, at_ms: u64) {
        for i in keys {
            index
                .insert_new("ep", &format!("k{i}"), i, i, at_ms)
                .unwrap();
        }
    }

    /// Runs a spare job and hands its result back, as the shard does on its blocking pool.
    fn run_spare(index: &mut IdempotencyIndex, job: SpareJob, now_ms: u64) {
        let done = job.run();
        index.finish_spare(done, now_ms).unwrap();
    }

    /// A spare's pages are in the page cache before any insert touches them
    /// ([`crate::prealloc::warm`]): the shard that takes it only maps them.
    #[test]
    fn a_spare_is_made_with_its_pages_in_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TableSpec {
            start_ms: 5_000,
            width_ms: small().bucket_width_ms,
            generation: 1,
            capacity: 1 << 17,
        };
        let table = Table::create_spare(dir.path(), spec).unwrap();
        let len = table.map.len();
        assert!(len > 4 << 20, "{len} bytes: several huge pages");
        let (in_cache, pages) = crate::prealloc::pages_in_cache(&table.map);
        assert_eq!(in_cache, pages, "pages of the spare in the page cache");
    }

    /// A shard about to serve has the current bucket's first table made, and the warm job
    /// brings it into the page cache, so the first inserts only map it; the bucket's first
    /// insert then takes that table. An index that has its current bucket makes nothing more.
    #[test]
    fn ready_for_makes_the_current_table_and_the_job_warms_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = IndexOptions {
            initial_slots: 1 << 17,
            ..small()
        };
        let mut index = IdempotencyIndex::open(dir.path(), options).unwrap();
        let now_ms = 5 * WIDTH + 7;
        let job = index.ready_for(now_ms).unwrap();
        assert_eq!(index.bucket_count(), 1);
        assert_eq!(table_files(dir.path()), 1);
        let table = &index.buckets[&(5 * WIDTH)].tables[0];
        assert!(table.map.len() > 4 << 20, "several huge pages");
        // (On a disk file system the new table's pages are not in the page cache before the
        // job; on tmpfs they always are, so that is not asserted.)
        job.run();
        let (in_cache, pages) = crate::prealloc::pages_in_cache(&table.map);
        assert_eq!(in_cache, pages, "pages of the table in the page cache");

        index.insert_new("ep", "k", 1, 1, now_ms).unwrap();
        assert_eq!(
            table_files(dir.path()),
            1,
            "the insert took the table made ready"
        );
        assert_eq!(index.lookup("ep", "k", now_ms).map(|h| h.offset), Some(1));
        let again = index.ready_for(now_ms + 1).unwrap();
        assert_eq!((index.bucket_count(), table_files(dir.path())), (1, 1));
        again.run();
    }

    #[test]
    fn a_full_tables_successor_is_made_ahead_and_taken_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        // 64 slots: the successor is wanted from 32 entries (50 %), chained at the 45th (70 %).
        fill(&mut index, 0..31, 5_000);
        assert!(index.spare_job(5_000).is_none(), "below 50 % load");
        index.insert_new("ep", "k31", 31, 31, 5_000).unwrap();
        let job = index.spare_job(5_000).expect("a spare at 50 % load");
        assert!(index.spare_job(5_000).is_none(), "one job at a time");
        run_spare(&mut index, job, 5_000);
        let spare_name = format!("{}{SPARE_SUFFIX}", Table::file_name(5_000, 1));
        assert_eq!(spare_files(dir.path()), vec![spare_name]);
        assert!(
            index.spare_job(5_000).is_none(),
            "the spare is made already"
        );
        assert_eq!(table_files(dir.path()), 1);

        fill(&mut index, 32..60, 5_000);
        let bucket = index.buckets.get(&5_000).unwrap();
        assert_eq!(bucket.tables.len(), 2);
        assert_eq!(bucket.tables[1].capacity, 128);
        assert!(index.spares.is_empty(), "the spare was taken");
        assert!(spare_files(dir.path()).is_empty());
        assert_eq!(table_files(dir.path()), 2);

        // The rename is made durable by the next checkpoint, before its meta file.
        let job = index.prepare_checkpoint(60);
        assert!(job.sync_dir);
        let done = job.run();
        index.finish_checkpoint(done).unwrap();
        assert!(!index.prepare_checkpoint(60).sync_dir);
        drop(index);
        let index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        for i in 0..60u64 {
            let hit = index.lookup("ep", &format!("k{i}"), 5_000).unwrap();
            assert_eq!((hit.offset, hit.body_hash), (i, i));
        }
    }

    #[test]
    fn the_next_buckets_first_table_is_made_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        fill(&mut index, 0..10, 5_000);
        // 1000 ms buckets: from 1000 / 24 = 41 ms before the next one starts.
        assert!(index.spare_job(5_958).is_none());
        let job = index.spare_job(5_959).expect("the next bucket's table");
        run_spare(&mut index, job, 5_959);
        assert_eq!(
            spare_files(dir.path()),
            vec![format!("{}{SPARE_SUFFIX}", Table::file_name(6_000, 0))]
        );
        index.insert_new("ep", "next", 1, 10, 6_010).unwrap();
        assert!(index.spares.is_empty(), "the spare was taken");
        assert!(spare_files(dir.path()).is_empty());
        assert_eq!(index.lookup("ep", "next", 6_010).unwrap().offset, 10);
        assert_eq!(index.lookup("ep", "k3", 6_010).unwrap().offset, 3);

        // A spare left by a crash is a temporary file: gone at the next open.
        let job = index.spare_job(6_960).expect("the bucket after");
        run_spare(&mut index, job, 6_960);
        assert_eq!(spare_files(dir.path()).len(), 1);
        drop(index);
        let index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert!(spare_files(dir.path()).is_empty());
        assert_eq!(index.lookup("ep", "next", 6_010).unwrap().offset, 10);
    }

    #[test]
    fn spares_not_taken_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        fill(&mut index, 0..32, 5_000);
        // The job is slow: the table fills and makes its successor itself first.
        let late = index.spare_job(5_000).expect("a spare at 50 % load");
        fill(&mut index, 32..50, 5_000);
        assert_eq!(index.buckets.get(&5_000).unwrap().tables.len(), 2);
        run_spare(&mut index, late, 5_000);
        assert_eq!(spare_files(dir.path()).len(), 1);
        let remove = index.spare_job(5_000).expect("the stale spare's removal");
        run_spare(&mut index, remove, 5_000);
        assert!(spare_files(dir.path()).is_empty());
        assert!(index.spares.is_empty());
        assert_eq!(table_files(dir.path()), 2);

        // The next bucket's table, made ahead, when that bucket passes without an insert.
        let job = index.spare_job(5_990).expect("the next bucket's table");
        run_spare(&mut index, job, 5_990);
        assert_eq!(spare_files(dir.path()).len(), 1);
        assert!(
            index.spare_job(6_500).is_none(),
            "still wanted in its bucket"
        );
        let remove = index.spare_job(7_000).expect("its bucket ended");
        run_spare(&mut index, remove, 7_000);
        assert!(spare_files(dir.path()).is_empty());
        assert!(index.spares.is_empty());
    }

    #[test]
    fn a_failed_spare_waits_before_the_next_and_inserts_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idx");
        let mut index = IdempotencyIndex::open(&path, small()).unwrap();
        fill(&mut index, 0..32, 5_000);
        let job = index.spare_job(5_000).expect("a spare at 50 % load");
        // The directory is gone when the job runs (a stand-in for a full disk).
        fs::remove_dir_all(&path).unwrap();
        let done = job.run();
        assert!(index.finish_spare(done, 5_000).is_err());
        assert!(index.spare_job(5_000 + SPARE_RETRY_MS - 1).is_none());
        fs::create_dir_all(&path).unwrap();
        let job = index
            .spare_job(5_000 + SPARE_RETRY_MS)
            .expect("retried after the wait");
        run_spare(&mut index, job, 5_000 + SPARE_RETRY_MS);
        assert_eq!(index.spares.len(), 1);
    }

    #[test]
    fn insert_new_fills_chained_tables_like_insert() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = IdempotencyIndex::open(dir.path(), small()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut replayed = IdempotencyIndex::open(other.path(), small()).unwrap();
        for i in 0..2_000u64 {
            live.insert_new("ep", &format!("k{i}"), i, i * 3, 5_000)
                .unwrap();
            replayed
                .insert("ep", &format!("k{i}"), i, i * 3, 5_000)
                .unwrap();
        }
        let chain = |index: &IdempotencyIndex| {
            let b = &index.buckets[&5_000];
            (b.tables.len(), b.len())
        };
        assert_eq!(chain(&live), chain(&replayed));
        assert!(chain(&live).0 >= 5);
        for i in 0..2_000u64 {
            let hit = live.lookup("ep", &format!("k{i}"), 5_000).unwrap();
            assert_eq!((hit.offset, hit.body_hash), (i * 3, i));
        }
        // A replay through `insert` still finds the live entries in the older tables.
        live.insert("ep", "k0", 0, 0, 5_000).unwrap();
        assert_eq!(chain(&live).1, 2_000);
    }

    #[test]
    fn expire_drops_whole_old_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        index.insert("ep", "old", 1, 1, 1_999).unwrap();
        index.insert("ep", "new", 2, 2, 2_000).unwrap();
        assert_eq!(table_files(dir.path()), 2);
        // Bucket [1000, 2000) is wholly expired at 2000 + TTL.
        assert_eq!(index.expire(2_000 + TTL - 1).unwrap(), 0);
        assert_eq!(index.expire(2_000 + TTL).unwrap(), 1);
        assert_eq!(table_files(dir.path()), 1);
        assert_eq!(
            index.lookup("ep", "new", 2_000 + TTL - 1).map(|h| h.offset),
            Some(2)
        );
        // A replayed insert into the dropped bucket does not bring it back.
        index.insert("ep", "old", 1, 1, 1_999).unwrap();
        assert_eq!(index.bucket_count(), 1);
    }

    /// The split expiry the shard runs: the index forgets the bucket at once, its files go
    /// only when the taken tables are removed (on another thread), and an index opened in
    /// between loads them, expires them itself, and the late removal still succeeds.
    #[test]
    fn taken_expired_tables_are_deleted_by_their_removal() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        index.insert("ep", "old", 1, 1, 1_999).unwrap();
        index.insert("ep", "new", 2, 2, 2_000).unwrap();
        let none = index.take_expired(2_000 + TTL - 1);
        assert_eq!(none.buckets(), 0);
        assert_eq!(none.remove().unwrap(), 0);

        let taken = index.take_expired(2_000 + TTL);
        assert_eq!(taken.buckets(), 1);
        assert_eq!(index.bucket_count(), 1);
        assert_eq!(
            table_files(dir.path()),
            2,
            "nothing deleted before the removal"
        );
        // A replayed insert into the taken bucket does not bring it back.
        index.insert("ep", "old", 1, 1, 1_999).unwrap();
        assert_eq!(index.bucket_count(), 1);

        // Another index on the directory meanwhile (a shard reopening) sees both buckets and
        // expires the old one on its own.
        let mut reopened = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(reopened.bucket_count(), 2);
        assert_eq!(reopened.expire(2_000 + TTL).unwrap(), 1);
        assert_eq!(
            taken.remove().unwrap(),
            1,
            "a file already gone counts as deleted"
        );
        assert_eq!(table_files(dir.path()), 1);
        assert_eq!(
            index.lookup("ep", "new", 2_000 + TTL - 1).map(|h| h.offset),
            Some(2)
        );
    }

    /// The split checkpoint the shard runs (quick half on its thread, flushes elsewhere): a
    /// failed job leaves its tables dirty for the next one, and an older job finishing late
    /// never moves `indexed_through` back.
    #[test]
    fn split_checkpoints_retry_failures_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        index.insert("ep", "a", 7, 100, 1_000).unwrap();
        let first = index.prepare_checkpoint(101);
        assert_eq!(first.tables.len(), 1, "the written table is in the job");
        // Nothing written since: the next job has no table to flush.
        let empty = index.prepare_checkpoint(101);
        assert!(empty.tables.is_empty());

        // A job that cannot write the meta file fails and gives its tables back.
        let broken = CheckpointJob {
            dir: dir.path().join("gone"),
            ..first
        };
        assert!(index.finish_checkpoint(broken.run()).is_err());
        assert_eq!(index.indexed_through(), 0);
        let retry = index.prepare_checkpoint(101);
        assert_eq!(
            retry.tables.len(),
            1,
            "the failed job's table is dirty again"
        );
        index.finish_checkpoint(retry.run()).unwrap();
        assert_eq!(index.indexed_through(), 101);

        index.insert("ep", "b", 7, 200, 1_000).unwrap();
        let newer = index.prepare_checkpoint(201);
        index.finish_checkpoint(newer.run()).unwrap();
        index.finish_checkpoint(Ok(101)).unwrap();
        assert_eq!(
            index.indexed_through(),
            201,
            "a late, older job does not go back"
        );
        drop(index);
        let index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(index.indexed_through(), 201);
        assert_eq!(index.lookup("ep", "b", 1_000).map(|h| h.offset), Some(200));
    }

    /// For each mapped table file under `dir`: its bucket start and whether its `VmFlags` (from
    /// `/proc/self/smaps`) hold "hg" (`MADV_HUGEPAGE`) and "nh" (`MADV_NOHUGEPAGE`), sorted.
    fn page_advice(dir: &Path) -> Vec<(u64, bool, bool)> {
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        let dir = dir.to_string_lossy().into_owned();
        let mut found = Vec::new();
        let mut current = None;
        for line in smaps.lines() {
            // A mapping's first line starts with its address range and ends with its path.
            if line
                .split_whitespace()
                .next()
                .is_some_and(|w| w.contains('-'))
            {
                current = line
                    .split_whitespace()
                    .last()
                    .filter(|path| path.starts_with(&dir))
                    .and_then(|path| Path::new(path).file_name()?.to_str())
                    .and_then(Table::parse_name)
                    .map(|(start_ms, _)| start_ms);
            } else if let (Some(start_ms), Some(flags)) = (current, line.strip_prefix("VmFlags:")) {
                let has = |flag: &str| flags.split_whitespace().any(|w| w == flag);
                found.push((start_ms, has("hg"), has("nh")));
            }
        }
        found.sort_unstable();
        found
    }

    #[test]
    fn only_the_newest_buckets_tables_ask_for_huge_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        // A new bucket, then a chained table in it: both hot.
        for i in 0..MIN_TABLE_SLOTS {
            index.insert("ep", &format!("k{i}"), 7, i, 1_000).unwrap();
        }
        assert_eq!(table_files(dir.path()), 2);
        assert_eq!(
            page_advice(dir.path()),
            [(1_000, true, false), (1_000, true, false)]
        );
        // A newer bucket takes over; the older one goes back to small pages.
        index.insert("ep", "late", 7, 1_000, 2_500).unwrap();
        let expected = [
            (1_000, false, true),
            (1_000, false, true),
            (2_000, true, false),
        ];
        assert_eq!(page_advice(dir.path()), expected);
        // An insert into the older bucket changes nothing.
        index.insert("ep", "early", 7, 1_001, 1_900).unwrap();
        assert_eq!(page_advice(dir.path()), expected);
        let answers = |index: &IdempotencyIndex| {
            ["k3", "late", "early"].map(|k| index.lookup("ep", k, 2_600).map(|h| h.offset))
        };
        assert_eq!(answers(&index), [Some(3), Some(1_000), Some(1_001)]);
        drop(index);
        assert!(page_advice(dir.path()).is_empty());
        // Reopened: the same advice.
        let index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(page_advice(dir.path()), expected);
        assert_eq!(answers(&index), [Some(3), Some(1_000), Some(1_001)]);
    }

    #[test]
    fn checkpoint_and_reopen_keep_answers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            assert_eq!(index.indexed_through(), 0);
            index.insert("ep", "k", 7, 100, 1_000).unwrap();
            index.checkpoint(101).unwrap();
        }
        let index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(index.indexed_through(), 101);
        assert_eq!(index.lookup("ep", "k", 1_000).map(|h| h.offset), Some(100));
        let other = IndexOptions {
            bucket_width_ms: 2 * WIDTH,
            ..small()
        };
        drop(index);
        assert!(matches!(
            IdempotencyIndex::open(dir.path(), other),
            Err(Error::InvalidOptions(_))
        ));
    }

    /// A lookup miss reads one cache line of each table's filter, and the table's slots only
    /// when the filter lets it through (about 1 % of tables at most at 70 % load); a key the
    /// table holds always gets through.
    #[test]
    fn filters_keep_lookup_misses_out_of_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        for i in 0..2_000u64 {
            index
                .insert_new("ep", &format!("key-{i}"), i, i, 5_000)
                .unwrap();
        }
        let tables = &index.buckets.get(&5_000).unwrap().tables;
        assert!(tables.len() >= 5 && tables.iter().all(|t| t.filtered));
        for i in 0..2_000u64 {
            let fp = fingerprint("ep", &format!("key-{i}"));
            let holder = tables
                .iter()
                .find(|t| t.matches(fp).any(|e| e.offset == i))
                .expect("inserted");
            assert!(holder.may_hold(fp), "no false negative");
        }
        let (mut through, mut checked) = (0u64, 0u64);
        for i in 0..20_000u64 {
            let fp = fingerprint("ep", &format!("absent-{i}"));
            for t in tables {
                checked += 1;
                through += u64::from(t.may_hold(fp));
            }
            assert_eq!(index.lookup("ep", &format!("absent-{i}"), 5_000), None);
        }
        assert!(
            through * 100 < checked * 2,
            "{through} of {checked} table probes got through the filters"
        );
    }

    /// Tables written by earlier releases have no filter: they are probed on every lookup, and
    /// take inserts as before.
    #[test]
    fn tables_without_a_filter_are_always_probed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            for i in 0..20u64 {
                index.insert("ep", &format!("k{i}"), i, i, 5_000).unwrap();
            }
        }
        let path = dir.path().join(Table::file_name(5_000, 0));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(Table::file_len(64, false)).unwrap();
        drop(file);
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert!(!index.buckets.get(&5_000).unwrap().tables[0].filtered);
        for i in 0..20u64 {
            assert_eq!(
                index.lookup("ep", &format!("k{i}"), 5_000).unwrap().offset,
                i
            );
        }
        index.insert_new("ep", "late", 1, 99, 5_000).unwrap();
        assert_eq!(index.lookup("ep", "late", 5_000).unwrap().offset, 99);
        assert_eq!(index.lookup("ep", "never", 5_000), None);
    }

    /// A crash may write a table's slots back but not its filter: the log's replay from the
    /// checkpoint sets the filter's bits again (insert is idempotent and re-marks what it finds).
    #[test]
    fn a_filter_lost_in_a_crash_is_set_again_by_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(Table::file_name(5_000, 0));
        let filter_at = Table::file_len(64, false);
        let checkpointed_filter;
        {
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            fill(&mut index, 0..10, 5_000);
            index.checkpoint(10).unwrap();
            checkpointed_filter = fs::read(&path).unwrap()[filter_at as usize..].to_vec();
            fill(&mut index, 10..30, 5_000);
            // A newer bucket: the newest table is probed without its filter.
            index.insert_new("ep", "next", 30, 30, 6_000).unwrap();
        }
        // The crash: slots of entries 10.. reached the disk, their filter bits did not.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&checkpointed_filter, filter_at).unwrap();
        drop(file);
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        assert_eq!(index.indexed_through(), 10);
        for i in 0..10u64 {
            assert_eq!(
                index.lookup("ep", &format!("k{i}"), 6_000).unwrap().offset,
                i
            );
        }
        assert!(
            (10..30u64).any(|i| index.lookup("ep", &format!("k{i}"), 6_000).is_none()),
            "the lost bits hide some entries until the replay"
        );
        for i in 10..30u64 {
            index.insert("ep", &format!("k{i}"), i, i, 5_000).unwrap();
        }
        for i in 0..30u64 {
            assert_eq!(
                index.lookup("ep", &format!("k{i}"), 6_000).unwrap().offset,
                i
            );
        }
    }

    #[test]
    fn torn_slot_is_never_returned_and_replay_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
        index.insert("ep", "k", 7, 100, 1_000).unwrap();
        let table = &mut index.buckets.get_mut(&1_000).unwrap().tables[0];
        let fp = fingerprint("ep", "k");
        let slot = table.probe(fp).next().unwrap() as usize;
        table.map[TABLE_HEADER_BYTES + slot * SLOT_BYTES + 17] ^= 1; // the offset
        assert_eq!(index.lookup("ep", "k", 1_000), None);
        index.insert("ep", "k", 7, 100, 1_000).unwrap();
        assert_eq!(index.lookup("ep", "k", 1_000).map(|h| h.offset), Some(100));
    }

    #[test]
    fn damaged_files_are_reported_and_leftover_temporaries_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            index.insert("ep", "k", 7, 100, 1_000).unwrap();
        }
        fs::write(
            dir.path().join("b00000000000000002000-t00.idx.tmp"),
            b"junk",
        )
        .unwrap();
        drop(IdempotencyIndex::open(dir.path(), small()).unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "meta + one table"
        );
        let table = dir.path().join(Table::file_name(1_000, 0));
        let mut bytes = fs::read(&table).unwrap();
        bytes[20] ^= 1; // capacity
        fs::write(&table, &bytes).unwrap();
        assert!(matches!(
            IdempotencyIndex::open(dir.path(), small()),
            Err(Error::Corrupt { .. })
        ));
        fs::write(dir.path().join(META_FILE), b"garbage").unwrap();
        assert!(matches!(
            IdempotencyIndex::open(dir.path(), small()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn options_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            IndexOptions {
                bucket_width_ms: 0,
                ..small()
            },
            IndexOptions {
                bucket_width_ms: u64::from(u32::MAX) + 1,
                ..small()
            },
            IndexOptions {
                ttl_ms: 0,
                ..small()
            },
            IndexOptions {
                ttl_ms: WIDTH * MAX_BUCKETS as u64,
                ..small()
            },
        ] {
            assert!(matches!(
                IdempotencyIndex::open(dir.path(), bad),
                Err(Error::InvalidOptions(_))
            ));
        }
        assert!(IndexOptions::default().validate().is_ok());
    }

    /// What the model remembers of one insert.
    #[derive(Debug, Clone)]
    struct Inserted {
        endpoint: u8,
        key: u8,
        body_hash: u64,
        offset: u64,
        at_ms: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert (endpoint, key) at now - back_ms.
        Insert {
            endpoint: u8,
            key: u8,
            body_hash: u64,
            back_ms: u64,
        },
        /// Re-insert the n-th earlier insert (log replay).
        Replay(usize),
        Lookup {
            endpoint: u8,
            key: u8,
        },
        Tick(u64),
        Expire,
        CheckpointReopen,
        /// Take the index's spare job, if any, and hold it (the shard's blocking pool).
        SpareStart,
        /// Run the held spare job and hand its result back.
        SpareFinish,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3u8, 0..30u8, any::<u64>(), prop_oneof![Just(0u64), 0..4_000u64])
                .prop_map(|(endpoint, key, body_hash, back_ms)| Op::Insert {
                    endpoint, key, body_hash, back_ms,
                }),
            1 => any::<usize>().prop_map(Op::Replay),
            4 => (0..3u8, 0..30u8).prop_map(|(endpoint, key)| Op::Lookup { endpoint, key }),
            2 => prop_oneof![0..100u64, 0..2_500u64].prop_map(Op::Tick),
            1 => Just(Op::Expire),
            1 => Just(Op::CheckpointReopen),
            2 => Just(Op::SpareStart),
            2 => Just(Op::SpareFinish),
        ]
    }

    fn names(endpoint: u8, key: u8) -> (String, String) {
        (format!("ep_{endpoint}"), format!("key-{key}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_matches_model_with_expiry_and_reopen(
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            let mut now_ms = 10_000u64;
            let mut log: Vec<Inserted> = Vec::new();
            let mut held: Option<SpareJob> = None;
            let visible = |log: &[Inserted], endpoint: u8, key: u8, now_ms: u64| {
                let hits: Vec<Inserted> = log
                    .iter()
                    .filter(|e| e.endpoint == endpoint && e.key == key)
                    .filter(|e| now_ms.saturating_sub(e.at_ms) < TTL)
                    .cloned()
                    .collect();
                assert!(hits.len() <= 1, "the generator keeps one live entry per key");
                hits.into_iter().next()
            };
            for op in ops {
                match op {
                    Op::Insert { endpoint, key, body_hash, back_ms } => {
                        // The engine only inserts keys it did not find.
                        if visible(&log, endpoint, key, now_ms).is_some() {
                            continue;
                        }
                        let at_ms = now_ms - back_ms;
                        let offset = log.len() as u64;
                        let (e, k) = names(endpoint, key);
                        index.insert(&e, &k, body_hash, offset, at_ms).unwrap();
                        log.push(Inserted { endpoint, key, body_hash, offset, at_ms });
                    }
                    Op::Replay(n) if !log.is_empty() => {
                        let entry = log[n % log.len()].clone();
                        let (e, k) = names(entry.endpoint, entry.key);
                        index.insert(&e, &k, entry.body_hash, entry.offset, entry.at_ms).unwrap();
                    }
                    Op::Replay(_) => {}
                    Op::Lookup { endpoint, key } => {
                        let (e, k) = names(endpoint, key);
                        let expected = visible(&log, endpoint, key, now_ms)
                            .map(|i| Hit { offset: i.offset, body_hash: i.body_hash, at_ms: i.at_ms });
                        prop_assert_eq!(index.lookup(&e, &k, now_ms), expected);
                    }
                    Op::Tick(ms) => now_ms += ms,
                    Op::Expire => {
                        index.expire(now_ms).unwrap();
                        for &start in index.buckets.keys() {
                            prop_assert!(start + WIDTH + TTL > now_ms);
                        }
                    }
                    Op::SpareStart => {
                        if held.is_none() {
                            held = index.spare_job(now_ms);
                        }
                    }
                    Op::SpareFinish => {
                        if let Some(job) = held.take() {
                            let done = job.run();
                            index.finish_spare(done, now_ms).unwrap();
                        }
                    }
                    Op::CheckpointReopen => {
                        let through = log.len() as u64;
                        index.checkpoint(through).unwrap();
                        // A shard never reopens its index while a job is out.
                        held = None;
                        drop(index);
                        index = IdempotencyIndex::open(dir.path(), small()).unwrap();
                        prop_assert_eq!(index.indexed_through(), through);
                    }
                }
            }
            // Everything the model says is live is found, and nothing else.
            for endpoint in 0..3 {
                for key in 0..30 {
                    let (e, k) = names(endpoint, key);
                    let expected = visible(&log, endpoint, key, now_ms).map(|i| i.offset);
                    prop_assert_eq!(index.lookup(&e, &k, now_ms).map(|h| h.offset), expected);
                }
            }
        }

        /// Growth under load: batches of new keys chain tables and cross buckets while spare
        /// jobs are taken, held and finished in any order, and the index is reopened after a
        /// checkpoint or after a crash (then the log is replayed from `indexed_through`).
        /// Every live key is found with its offset, absent keys are not (filters never hide
        /// an entry), and no spare file outlives what the index knows of.
        #[test]
        fn prop_growth_with_spares_and_crashes_keeps_every_key(
            ops in proptest::collection::vec(growth_op(), 1..60),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut index = IdempotencyIndex::open(dir.path(), small()).unwrap();
            let mut now_ms = 10_000u64;
            let mut log: Vec<u64> = Vec::new(); // at_ms by offset (= key id)
            let mut held: Option<SpareJob> = None;
            let key = |id: u64| format!("g{id}");
            for op in ops {
                match op {
                    GrowthOp::Insert(n) => {
                        for _ in 0..n {
                            let id = log.len() as u64;
                            index.insert_new("ep", &key(id), id, id, now_ms).unwrap();
                            log.push(now_ms);
                            if held.is_none() {
                                held = index.spare_job(now_ms);
                            }
                        }
                    }
                    GrowthOp::Tick(ms) => now_ms += ms,
                    GrowthOp::SpareFinish => {
                        if let Some(job) = held.take() {
                            let done = job.run();
                            index.finish_spare(done, now_ms).unwrap();
                        }
                    }
                    GrowthOp::Reopen { crash } => {
                        if !crash {
                            index.checkpoint(log.len() as u64).unwrap();
                        }
                        held = None;
                        drop(index);
                        index = IdempotencyIndex::open(dir.path(), small()).unwrap();
                        prop_assert!(spare_files(dir.path()).is_empty());
                        for id in index.indexed_through()..log.len() as u64 {
                            index.insert("ep", &key(id), id, id, log[id as usize]).unwrap();
                        }
                    }
                }
                let on_disk = spare_files(dir.path()).len();
                prop_assert!(on_disk <= index.spares.len() + 1, "{on_disk} spare files");
            }
            for (id, &at_ms) in log.iter().enumerate() {
                let found = index.lookup("ep", &key(id as u64), now_ms).map(|h| h.offset);
                let live = now_ms.saturating_sub(at_ms) < TTL;
                prop_assert_eq!(found, live.then_some(id as u64), "key {}", id);
            }
            for id in log.len() as u64..log.len() as u64 + 50 {
                prop_assert_eq!(index.lookup("ep", &key(id), now_ms), None);
            }
        }
    }

    #[derive(Debug, Clone)]
    enum GrowthOp {
        /// Insert this many new keys at the current time, taking a spare job when one is due.
        Insert(u64),
        Tick(u64),
        /// Run the held spare job and hand its result back.
        SpareFinish,
        /// Reopen after a checkpoint, or after a crash (no checkpoint; the log is replayed).
        Reopen {
            crash: bool,
        },
    }

    fn growth_op() -> impl Strategy<Value = GrowthOp> {
        prop_oneof![
            5 => (1..40u64).prop_map(GrowthOp::Insert),
            3 => prop_oneof![0..200u64, 900..1_000u64].prop_map(GrowthOp::Tick),
            3 => Just(GrowthOp::SpareFinish),
            1 => any::<bool>().prop_map(|crash| GrowthOp::Reopen { crash }),
        ]
    }
}
