//! Usage: successful deliveries per tenant per UTC day, for `GET /v1/usage` and billing.
//!
//! Counted when a success is booked (after its `Attempted` record is durable), kept in memory
//! for [`USAGE_DAYS_KEPT`] days, and persisted per shard in a small rollup file
//! (`shards/NNN/usage.json`, replaced atomically: temp file, fsync, rename, fsync dir) so it
//! survives restarts and outlives the log's retention. The rollup says how far into the log it
//! is complete (`through_offset`); recovery counts the success records from there on.
//!
//! Exactly once across a crash: a success is counted when its append completes, and appends
//! of concurrent attempts complete in whatever order their tasks resume. So the rollup's
//! `through_offset` is not simply the log's end: it is the lowest possible offset of a success
//! still being appended (the log's end read just before each append, its *floor*), and the
//! offsets at or past it that are already counted are listed in `included_offsets` so replay
//! skips them. That list only holds successes that finished while an earlier one was still
//! being appended, so it stays about as long as the attempts in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use time::macros::format_description;
use time::{Date, Duration as TimeDuration};

/// Days of usage kept (in memory and in the rollup); `GET /v1/usage` reaches 366 days back.
pub const USAGE_DAYS_KEPT: u32 = 400;
/// Longest range one `GET /v1/usage` may ask for, in days.
pub const USAGE_RANGE_DAYS_MAX: u32 = 366;
const DAY_MS: u64 = 86_400_000;
const ROLLUP_VERSION: u32 = 1;
/// Counted-while-pending offsets kept before pruning those no rollup can need.
const RECENT_PRUNE_AT: usize = 4096;

/// The UTC day (days since 1970-01-01) of a time in milliseconds.
pub fn day_of_ms(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(day: u32) -> String {
    let date = Date::from_calendar_date(1970, time::Month::January, 1)
        .expect("the epoch is a date")
        .checked_add(TimeDuration::days(i64::from(day)))
        .unwrap_or(Date::MAX);
    date.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

/// The day number of `YYYY-MM-DD`; `None` when malformed or before 1970.
pub fn parse_day(s: &str) -> Option<u32> {
    if s.len() != 10 {
        return None;
    }
    let date = Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
    let epoch = Date::from_calendar_date(1970, time::Month::January, 1).ok()?;
    u32::try_from((date - epoch).whole_days()).ok()
}

#[derive(Debug, Serialize, Deserialize)]
struct Rollup {
    version: u32,
    through_offset: u64,
    #[serde(default)]
    included_offsets: Vec<u64>,
    /// `YYYY-MM-DD` → tenant id → successful deliveries.
    days: BTreeMap<String, BTreeMap<String, u64>>,
}

/// One shard's usage counts and their persistence state.
#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    days: BTreeMap<u32, HashMap<String, u64>>,
    /// From the rollup loaded at start: successes below this offset are already counted...
    replay_from: u64,
    /// ... and so are these at or above it.
    replay_skip: HashSet<u64>,
    /// Floors of success appends in flight (multiset).
    pending: BTreeMap<u64, u32>,
    /// Offsets of successes counted while an earlier-floored one was pending.
    recent: Vec<u64>,
    dirty: bool,
}

impl Usage {
    /// Loads `path` if it exists. A rollup that cannot be read is moved aside (and said so):
    /// the counts are rebuilt from whatever the log still holds.
    pub fn open(path: &Path) -> Usage {
        let mut usage = Usage {
            path: path.to_path_buf(),
            days: BTreeMap::new(),
            replay_from: 0,
            replay_skip: HashSet::new(),
            pending: BTreeMap::new(),
            recent: Vec::new(),
            dirty: false,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return usage,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "usage rollup unreadable; rebuilding from the log");
                return usage;
            }
        };
        match serde_json::from_slice::<Rollup>(&bytes) {
            Ok(r) if r.version == ROLLUP_VERSION => {
                usage.replay_from = r.through_offset;
                usage.replay_skip = r.included_offsets.into_iter().collect();
                for (date, tenants) in r.days {
                    if let Some(day) = parse_day(&date) {
                        usage.days.insert(day, tenants.into_iter().collect());
                    }
                }
            }
            other => {
                let aside = path.with_extension(format!("json.bad-{}", crate::clock::now_ms()));
                let reason = match other {
                    Ok(r) => format!("unknown version {}", r.version),
                    Err(e) => e.to_string(),
                };
                tracing::error!(path = %path.display(), %reason, aside = %aside.display(),
                    "usage rollup is damaged; moved aside, rebuilding from the log");
                let _ = std::fs::rename(path, &aside);
            }
        }
        usage
    }

    /// A success append is about to start; `floor` is the log's end now (the record's offset
    /// will be at least that).
    pub fn begin(&mut self, floor: u64) {
        *self.pending.entry(floor).or_insert(0) += 1;
    }

    /// The append that began at `floor` finished (counted or not).
    pub fn end(&mut self, floor: u64) {
        if let Some(n) = self.pending.get_mut(&floor) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&floor);
            }
        }
        if self.pending.is_empty() {
            self.recent.clear();
        }
    }

    /// Counts a success booked live at `offset`. Call after [`Usage::end`] of its own floor.
    pub fn count_live(&mut self, offset: u64, day: u32, tenant_id: &str) {
        if let Some((&min_floor, _)) = self.pending.first_key_value()
            && min_floor <= offset
        {
            if self.recent.len() >= RECENT_PRUNE_AT {
                self.recent.retain(|o| *o >= min_floor);
            }
            self.recent.push(offset);
        }
        self.add(day, tenant_id, 1);
    }

    /// Counts a success record met during recovery, unless the rollup already has it.
    pub fn count_replayed(&mut self, offset: u64, day: u32, tenant_id: &str) {
        if self.needs_replay(offset) {
            self.add(day, tenant_id, 1);
        }
    }

    /// Whether a success record at `offset` is missing from the loaded rollup.
    pub fn needs_replay(&self, offset: u64) -> bool {
        offset >= self.replay_from && !self.replay_skip.contains(&offset)
    }

    /// Recovery is over: the loaded rollup's bookkeeping is no longer needed.
    pub fn finish_replay(&mut self) {
        self.replay_skip = HashSet::new();
    }

    fn add(&mut self, day: u32, tenant_id: &str, n: u64) {
        let tenants = self.days.entry(day).or_default();
        match tenants.get_mut(tenant_id) {
            Some(c) => *c += n,
            None => {
                tenants.insert(tenant_id.to_string(), n);
            }
        }
        self.dirty = true;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// `(day, successful deliveries)` of `tenant_id` for the days in `from..=to` that have any.
    pub fn days_for(&self, tenant_id: &str, from: u32, to: u32) -> Vec<(u32, u64)> {
        self.days
            .range(from..=to)
            .filter_map(|(day, tenants)| tenants.get(tenant_id).map(|n| (*day, *n)))
            .collect()
    }

    /// Forgets days older than [`USAGE_DAYS_KEPT`] before `today`.
    pub fn prune(&mut self, today: u32) {
        let keep_from = today.saturating_sub(USAGE_DAYS_KEPT);
        while let Some((&day, _)) = self.days.first_key_value() {
            if day >= keep_from {
                break;
            }
            self.days.remove(&day);
            self.dirty = true;
        }
    }

    /// The rollup to write now, given the log's durable end: `(path, bytes)`. Marks the counts
    /// clean; call [`Usage::mark_dirty`] if writing fails.
    pub fn rollup(&mut self, log_end: u64) -> (PathBuf, Vec<u8>) {
        // Never past the durable end: a crash may cut what lies beyond it, and offsets there
        // would be reused by records this rollup must not claim to have seen.
        let through = self
            .pending
            .first_key_value()
            .map_or(log_end, |(floor, _)| (*floor).min(log_end));
        self.recent.retain(|o| *o >= through);
        let mut included = self.recent.clone();
        included.sort_unstable();
        let rollup = Rollup {
            version: ROLLUP_VERSION,
            through_offset: through,
            included_offsets: included,
            days: self
                .days
                .iter()
                .map(|(day, tenants)| {
                    let tenants = tenants.iter().map(|(t, n)| (t.clone(), *n)).collect();
                    (format_day(*day), tenants)
                })
                .collect(),
        };
        self.dirty = false;
        let bytes = serde_json::to_vec(&rollup).expect("the rollup serializes");
        (self.path.clone(), bytes)
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

/// Replaces `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync dir.
/// Blocking: run it on the blocking pool (or at shutdown). Each call writes its own temp file,
/// so a periodic write still running when the shutdown one starts cannot interleave with it;
/// whichever rename lands last, every rollup is consistent on its own.
pub fn write_rollup(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.tmp{n}"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(parse_day("1970-01-02"), Some(1));
        let d = day_of_ms(1_790_000_000_000);
        assert_eq!(parse_day(&format_day(d)), Some(d));
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "20260101",
            "1969-12-31",
            "2026-1-01",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    /// Two successes appended concurrently complete out of order around a rollup; a crash
    /// after the rollup and a replay of the log count each exactly once.
    #[test]
    fn rollup_then_replay_counts_each_success_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let mut u = Usage::open(&path);
        // Success A at offset 100 and B at offset 200 both start appending.
        u.begin(100);
        u.begin(150);
        // B finishes first and is counted; A is still in flight.
        u.end(150);
        u.count_live(200, 5, "tn_a");
        let (p, bytes) = u.rollup(300);
        write_rollup(&p, &bytes).unwrap();
        // A finishes after the rollup was taken; then the process dies.
        u.end(100);
        u.count_live(100, 5, "tn_a");
        assert_eq!(u.days_for("tn_a", 0, 10), vec![(5, 2)]);

        // Recovery: the log holds both successes.
        let mut r = Usage::open(&path);
        for offset in [100, 200] {
            r.count_replayed(offset, 5, "tn_a");
        }
        r.finish_replay();
        assert_eq!(r.days_for("tn_a", 0, 10), vec![(5, 2)]);
        assert_eq!(r.days_for("tn_b", 0, 10), vec![]);
    }

    #[test]
    fn damaged_rollup_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        std::fs::write(&path, b"{not json").unwrap();
        let u = Usage::open(&path);
        assert!(u.needs_replay(0));
        assert!(!path.exists());
    }

    #[test]
    fn prunes_old_days() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = Usage::open(&dir.path().join("usage.json"));
        u.count_live(1, 10, "t");
        u.count_live(2, 1000, "t");
        u.prune(1000);
        assert_eq!(u.days_for("t", 0, 2000), vec![(1000, 1)]);
    }
}
