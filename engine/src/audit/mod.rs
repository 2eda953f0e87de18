//! The audit log: who changed what through the management API, when, and from where.
//!
//! Not part of the metadata snapshot: it grows without bound, and nothing but `GET /v1/audit`
//! ever reads it. Instead each scope — a tenant, or the operator (actions made with the root
//! key) — has its own directory `<data_dir>/audit/<tenant_id | operator>/` of append-only
//! segment files `<seq>.jsonl`, each line `<crc32 hex> <json>\n` (the metadata log's format)
//! written and fdatasync'ed before [`AuditStore::append`] returns. A segment rolls at
//! [`SEGMENT_BYTES_MAX`] or when its first entry is [`SEGMENT_AGE_MAX_MS`] old.
//!
//! - Order: the store stamps entries so times never go backwards within a scope, so the newest
//!   entries are at the end of the newest segment and a read walks segments backwards
//!   ([`line::ReverseLines`]), holding one block and the page being built, never a whole file.
//! - Cursors name a position (segment, byte offset, time): segments are append-only and only
//!   ever deleted whole, so a position stays valid for as long as its segment exists.
//! - Retention: entries older than [`RETENTION_MS`] (365 days) are never returned, and a segment
//!   whose newest entry is that old is deleted. Sweeps run at open and then at most daily, on
//!   the next append.
//! - GDPR: [`AuditStore::purge_tenant`] deletes the tenant's directory (rename, then delete, so
//!   a crash in between is finished at the next open).
//! - Crashes: a torn last line (append cut short) is cut when the scope is next appended to,
//!   and skipped by readers until then; a bad line elsewhere is skipped with a warning rather
//!   than making the tenant's whole audit log unreadable.
//!
//! All methods are blocking file I/O; the `async` ones run on tokio's blocking pool, since this
//! is control plane and must never stall a shard's executor.

mod line;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::ids::is_valid;
use line::{RawLine, ReverseLines};

const DAY_MS: u64 = 24 * 3600 * 1000;
/// How long entries are kept: a year, the usual horizon of a compliance review.
pub const RETENTION_MS: u64 = 365 * DAY_MS;
/// A segment is rolled once it holds this many bytes.
pub const SEGMENT_BYTES_MAX: u64 = 8 << 20;
/// ... or once its first entry is this old, so retention can drop whole files of a quiet tenant
/// within [`RETENTION_MS`] + this.
pub const SEGMENT_AGE_MAX_MS: u64 = 30 * DAY_MS;
/// Most entries one read returns.
pub const READ_LIMIT_MAX: usize = 1000;
/// Time between retention sweeps triggered by appends.
const SWEEP_INTERVAL_MS: u64 = DAY_MS;
/// Scopes whose active segment the writer remembers; past this it forgets them all and
/// re-reads each from disk on its next append.
const SCOPES_CACHED_MAX: usize = 4096;
/// Field bounds of a stored entry (bytes); longer values are cut on a character boundary.
const ACTOR_BYTES_MAX: usize = 128;
const ACTION_BYTES_MAX: usize = 64;
const TARGET_BYTES_MAX: usize = 256;
const IP_BYTES_MAX: usize = 64;
const USER_AGENT_BYTES_MAX: usize = 512;
/// The directory of actions made with the operator (root) key.
const OPERATOR_DIR: &str = "operator";
/// Prefix of a tenant directory being purged.
const PURGING_PREFIX: &str = ".purging-";
const SEGMENT_SUFFIX: &str = ".jsonl";

/// Errors of the audit store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("audit I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a tenant id")]
    InvalidScope(String),
    #[error("the cursor is not one this audit log handed out")]
    BadCursor,
    #[error("the audit store is poisoned by an earlier write failure")]
    Poisoned,
}

/// Whose audit log an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Changes made with the operator (root) key, e.g. `tenant.create`.
    Operator,
    /// Changes made with one tenant's keys.
    Tenant(String),
}

impl Scope {
    /// The scope's directory name; tenant ids are checked so they are safe in a path.
    fn dir_name(&self) -> Result<&str, Error> {
        match self {
            Scope::Operator => Ok(OPERATOR_DIR),
            Scope::Tenant(id) if is_valid(id, "tn") => Ok(id),
            Scope::Tenant(id) => Err(Error::InvalidScope(id.clone())),
        }
    }
}

/// One change made through the management API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When the change was made (ms since the epoch). The store may move it forward by a few
    /// ms so that times never go backwards within a scope.
    pub at_ms: u64,
    /// The id of the API key that made the change.
    pub actor: String,
    /// `<resource>.<verb>`, e.g. `endpoint.create`, `api_key.delete`.
    pub action: String,
    /// The id of the object changed, when there is one.
    #[serde(default)]
    pub target: Option<String>,
    /// The client's address as HookRelay saw it (the TCP peer).
    pub ip: String,
    #[serde(default)]
    pub user_agent: Option<String>,
}

impl Entry {
    /// The entry with every field cut to its bound.
    fn bounded(mut self) -> Entry {
        truncate(&mut self.actor, ACTOR_BYTES_MAX);
        truncate(&mut self.action, ACTION_BYTES_MAX);
        truncate(&mut self.ip, IP_BYTES_MAX);
        if let Some(t) = &mut self.target {
            truncate(t, TARGET_BYTES_MAX);
        }
        if let Some(ua) = &mut self.user_agent {
            truncate(ua, USER_AGENT_BYTES_MAX);
        }
        self
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let cut = s.floor_char_boundary(max);
        s.truncate(cut);
    }
}

/// What to read: entries at or after `since_ms`, newest first, up to `limit`, after `cursor`.
#[derive(Debug, Clone, Default)]
pub struct ReadQuery {
    pub since_ms: Option<u64>,
    /// 1..=[`READ_LIMIT_MAX`]; other values are clamped.
    pub limit: usize,
    /// A [`Page::next_cursor`] from an earlier read of the same scope.
    pub cursor: Option<String>,
    /// The current time, for retention.
    pub now_ms: u64,
}

/// One page of a read, newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Where the next page starts; `None` when this page reached the oldest entry.
    pub next_cursor: Option<String>,
}

/// A position in a scope's log: the entry at `offset` of segment `seq`, stamped `at_ms`.
/// A page after it holds the entries before that position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    seq: u64,
    offset: u64,
    at_ms: u64,
}

impl Position {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("a1.{}.{}.{}", self.seq, self.offset, self.at_ms))
    }

    fn decode(cursor: &str) -> Result<Position, Error> {
        let raw = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| Error::BadCursor)?;
        let text = String::from_utf8(raw).map_err(|_| Error::BadCursor)?;
        let mut parts = text.split('.');
        let (Some("a1"), Some(seq), Some(offset), Some(at_ms), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Error::BadCursor);
        };
        let number = |s: &str| s.parse::<u64>().map_err(|_| Error::BadCursor);
        Ok(Position {
            seq: number(seq)?,
            offset: number(offset)?,
            at_ms: number(at_ms)?,
        })
    }
}

/// What the writer knows of a scope's active (newest) segment.
#[derive(Debug, Clone, Copy)]
struct Active {
    seq: u64,
    len: u64,
    first_at_ms: u64,
    last_at_ms: u64,
}

struct Writer {
    /// `None` for a scope with no segment yet.
    scopes: HashMap<String, Option<Active>>,
    poisoned: bool,
    last_sweep_ms: u64,
}

struct Inner {
    root: PathBuf,
    /// [`SEGMENT_BYTES_MAX`], smaller in tests.
    segment_bytes_max: u64,
    writer: Mutex<Writer>,
}

/// Handle to the audit store; cheap to clone, shared by every thread.
#[derive(Clone)]
pub struct AuditStore {
    inner: Arc<Inner>,
}

impl AuditStore {
    /// Opens (or creates) the store in `root`, finishes interrupted purges and drops expired
    /// segments.
    pub fn open(root: &Path, now_ms: u64) -> Result<AuditStore, Error> {
        Self::open_with(root, now_ms, SEGMENT_BYTES_MAX)
    }

    fn open_with(root: &Path, now_ms: u64, segment_bytes_max: u64) -> Result<AuditStore, Error> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        for dir in std::fs::read_dir(root).map_err(io(root))? {
            let dir = dir.map_err(io(root))?;
            if dir
                .file_name()
                .to_string_lossy()
                .starts_with(PURGING_PREFIX)
            {
                std::fs::remove_dir_all(dir.path()).map_err(io(&dir.path()))?;
            }
        }
        let store = AuditStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                segment_bytes_max,
                writer: Mutex::new(Writer {
                    scopes: HashMap::new(),
                    poisoned: false,
                    last_sweep_ms: now_ms,
                }),
            }),
        };
        store.drop_expired(now_ms)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entry` to `scope`'s log and fdatasyncs it. Returns the entry as stored (fields
    /// cut to their bounds, time never before the scope's previous entry).
    pub fn append_blocking(&self, scope: &Scope, entry: Entry) -> Result<Entry, Error> {
        let name = scope.dir_name()?.to_string();
        let dir = self.inner.root.join(&name);
        let mut w = self.lock();
        if w.poisoned {
            return Err(Error::Poisoned);
        }
        let active = match w.scopes.get(&name) {
            Some(a) => *a,
            None => {
                let a = open_scope(&self.inner.root, &dir)?;
                if w.scopes.len() >= SCOPES_CACHED_MAX {
                    w.scopes.clear();
                }
                w.scopes.insert(name.clone(), a);
                a
            }
        };
        let mut entry = entry.bounded();
        if let Some(a) = active {
            entry.at_ms = entry.at_ms.max(a.last_at_ms);
        }
        let line = line::encode(&entry);
        let roll = active.is_none_or(|a| {
            a.len > 0
                && (a.len + line.len() as u64 > self.inner.segment_bytes_max
                    || entry.at_ms.saturating_sub(a.first_at_ms) >= SEGMENT_AGE_MAX_MS)
        });
        let mut next = match active {
            Some(a) if !roll => a,
            _ => Active {
                seq: active.map_or(0, |a| a.seq + 1),
                len: 0,
                first_at_ms: entry.at_ms,
                last_at_ms: entry.at_ms,
            },
        };
        if next.len == 0 {
            next.first_at_ms = entry.at_ms;
        }
        let path = segment_path(&dir, next.seq);
        let written = (|| {
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            if next.len == 0 {
                // A new file: make its directory entry durable too.
                sync_dir(&dir)?;
            }
            f.write_all(&line)?;
            f.sync_data()
        })();
        if let Err(e) = written {
            // After a failed write or fsync what is on disk is unknown (fsyncgate): take no
            // more writes until a restart re-reads the tail.
            w.poisoned = true;
            return Err(io(&path)(e));
        }
        next.len += line.len() as u64;
        next.last_at_ms = entry.at_ms;
        w.scopes.insert(name, Some(next));
        let sweep_due = entry.at_ms.saturating_sub(w.last_sweep_ms) >= SWEEP_INTERVAL_MS;
        drop(w);
        if sweep_due && let Err(e) = self.drop_expired(entry.at_ms) {
            tracing::warn!(error = %e, "audit retention sweep failed");
        }
        Ok(entry)
    }

    /// Reads `scope`'s entries newest first (see [`ReadQuery`]).
    pub fn read_blocking(&self, scope: &Scope, q: &ReadQuery) -> Result<Page, Error> {
        let dir = self.inner.root.join(scope.dir_name()?);
        let limit = q.limit.clamp(1, READ_LIMIT_MAX);
        let floor_ms = q
            .since_ms
            .unwrap_or(0)
            .max(q.now_ms.saturating_sub(RETENTION_MS));
        let after = q.cursor.as_deref().map(Position::decode).transpose()?;
        let mut segments = list_segments(&dir)?;
        segments.reverse();
        // One more than asked, to know whether a next page exists.
        let mut found: Vec<(Entry, Position)> = Vec::with_capacity(limit + 1);
        'segments: for seq in segments {
            if after.is_some_and(|c| seq > c.seq) {
                continue;
            }
            let path = segment_path(&dir, seq);
            let file = match File::open(&path) {
                Ok(f) => f,
                // Dropped by retention or a purge since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let len = file.metadata().map_err(io(&path))?.len();
            let end = match after {
                Some(c) if c.seq == seq => c.offset.min(len),
                _ => len,
            };
            let mut lines = ReverseLines::new(&file, end);
            while let Some(raw) = lines.next_line().map_err(io(&path))? {
                let (start, bytes) = match raw {
                    RawLine::Line { start, bytes } => (start, bytes),
                    // A torn append, or one in progress: not an entry (yet).
                    RawLine::Partial { .. } => continue,
                    RawLine::Overlong => {
                        tracing::warn!(path = %path.display(), "skipped an overlong audit line");
                        continue;
                    }
                };
                let entry = match line::parse(&bytes) {
                    Ok(e) => e,
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), offset = start, %reason, "skipped a bad audit line");
                        continue;
                    }
                };
                if entry.at_ms < floor_ms {
                    break 'segments;
                }
                if after.is_some_and(|c| entry.at_ms > c.at_ms) {
                    // Only possible after retention emptied the scope and numbering restarted.
                    continue;
                }
                let at_ms = entry.at_ms;
                found.push((
                    entry,
                    Position {
                        seq,
                        offset: start,
                        at_ms,
                    },
                ));
                if found.len() > limit {
                    break 'segments;
                }
            }
        }
        let next_cursor = (found.len() > limit).then(|| {
            found.truncate(limit);
            found[limit - 1].1.encode()
        });
        Ok(Page {
            entries: found.into_iter().map(|(e, _)| e).collect(),
            next_cursor,
        })
    }

    /// Deletes every audit entry of `tenant_id` (GDPR purge). Entries appended afterwards start
    /// a new log.
    pub fn purge_tenant_blocking(&self, tenant_id: &str) -> Result<(), Error> {
        let scope = Scope::Tenant(tenant_id.to_string());
        let name = scope.dir_name()?;
        let root = &self.inner.root;
        let dir = root.join(name);
        let mut w = self.lock();
        w.scopes.remove(name);
        if !dir.exists() {
            return Ok(());
        }
        // Rename first so a crash mid-delete leaves a directory that `open` finishes deleting,
        // never a half-deleted log that still reads.
        let doomed = root.join(format!("{PURGING_PREFIX}{name}"));
        if doomed.exists() {
            std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        }
        std::fs::rename(&dir, &doomed).map_err(io(&dir))?;
        sync_dir(root).map_err(io(root))?;
        std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        sync_dir(root).map_err(io(root))?;
        Ok(())
    }

    /// Deletes every segment whose newest entry is older than [`RETENTION_MS`]. Returns how
    /// many were deleted.
    pub fn drop_expired(&self, now_ms: u64) -> Result<usize, Error> {
        let root = &self.inner.root;
        let cutoff_ms = now_ms.saturating_sub(RETENTION_MS);
        let mut dropped = 0;
        self.lock().last_sweep_ms = now_ms;
        for dir in std::fs::read_dir(root).map_err(io(root))? {
            let dir = dir.map_err(io(root))?;
            let name = dir.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !dir.path().is_dir() {
                continue;
            }
            // One scope at a time under the writer's lock, so an append never meets a segment
            // being deleted, and other scopes' appends wait for one scope at most.
            let mut w = self.lock();
            let segments = list_segments(&dir.path())?;
            for seq in segments {
                let path = segment_path(&dir.path(), seq);
                let newest = newest_entry(&path)?.map(|e| e.at_ms);
                if newest.is_some_and(|at_ms| at_ms >= cutoff_ms) {
                    break;
                }
                if newest.is_none()
                    && w.scopes
                        .get(&name)
                        .and_then(|a| a.as_ref())
                        .is_some_and(|a| a.seq == seq)
                {
                    // The empty active segment of a scope being written: keep it.
                    break;
                }
                std::fs::remove_file(&path).map_err(io(&path))?;
                w.scopes.remove(&name);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(dropped, "audit retention dropped old segments");
        }
        Ok(dropped)
    }

    /// [`AuditStore::append_blocking`] on the blocking pool.
    pub async fn append(&self, scope: Scope, entry: Entry) -> Result<Entry, Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_blocking(&scope, entry))
            .await
            .unwrap_or(Err(Error::Poisoned))
    }

    /// [`AuditStore::read_blocking`] on the blocking pool.
    pub async fn read(&self, scope: Scope, q: ReadQuery) -> Result<Page, Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read_blocking(&scope, &q))
            .await
            .unwrap_or(Err(Error::Poisoned))
    }

    /// [`AuditStore::purge_tenant_blocking`] on the blocking pool.
    pub async fn purge_tenant(&self, tenant_id: String) -> Result<(), Error> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.purge_tenant_blocking(&tenant_id))
            .await
            .unwrap_or(Err(Error::Poisoned))
    }
}

/// Prepares a scope for appending: creates its directory, cuts a torn tail off its newest
/// segment, and reports that segment.
fn open_scope(root: &Path, dir: &Path) -> Result<Option<Active>, Error> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        sync_dir(root).map_err(io(root))?;
        return Ok(None);
    }
    let Some(&seq) = list_segments(dir)?.last() else {
        return Ok(None);
    };
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();
    let mut lines = ReverseLines::new(&file, len);
    let mut last: Option<(Entry, u64)> = None;
    while let Some(raw) = lines.next_line().map_err(io(&path))? {
        if let RawLine::Line { start, bytes } = raw
            && let Ok(entry) = line::parse(&bytes)
        {
            last = Some((entry, start + bytes.len() as u64 + 1));
            break;
        }
    }
    let good_len = last.as_ref().map_or(0, |(_, end)| *end);
    if good_len != len {
        tracing::warn!(path = %path.display(), len, good_len, "cut a torn audit segment tail");
        file.set_len(good_len).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
    }
    let Some((last, _)) = last else {
        return Ok(Some(Active {
            seq,
            len: 0,
            first_at_ms: 0,
            last_at_ms: 0,
        }));
    };
    let first_at_ms = first_entry(&file, good_len, &path)?.map_or(last.at_ms, |e| e.at_ms);
    Ok(Some(Active {
        seq,
        len: good_len,
        first_at_ms,
        last_at_ms: last.at_ms,
    }))
}

/// The first good entry of a segment, reading forward one line at a time.
fn first_entry(file: &File, len: u64, path: &Path) -> Result<Option<Entry>, Error> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(file).take(len);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(line::LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut buf)
            .map_err(io(path))?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        if let Ok(e) = line::parse(&buf[..buf.len() - 1]) {
            return Ok(Some(e));
        }
    }
}

/// The newest good entry of a segment.
fn newest_entry(path: &Path) -> Result<Option<Entry>, Error> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut lines = ReverseLines::new(&file, len);
    while let Some(raw) = lines.next_line().map_err(io(path))? {
        if let RawLine::Line { bytes, .. } = raw
            && let Ok(e) = line::parse(&bytes)
        {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The segment numbers in `dir`, ascending; none when the directory does not exist.
fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:010}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
