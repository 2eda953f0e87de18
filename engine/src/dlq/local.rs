//! The local-disk DLQ store (`dlq.backend = "local"`): one JSON file per object at
//! `<root>/<key>`, root being `<data_dir>/dlq`.
//!
//! Every call blocks (plain `std::fs` plus fsyncs): the engine calls it from a blocking pool
//! (`spawn_blocking`), never on a shard's executor (ARCHITECTURE.md Invariant 6).
//! Architecture Invariant: a key is validated by `object::parse_key` before any path is built
//! from it, so no input reaches the filesystem outside `root`.
//! Architecture Invariant: `put` returns only once the object and every directory entry leading
//! to it are fsynced; a reader sees the old object or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use super::object::{self, DlqObject, is_valid_id, parse_fixed_digits};
use super::{Error, Result};

/// Objects larger than this are not read back (a body is at most `ingest.max_body_bytes`, 1 MiB
/// by default, so a real object is far smaller; this only guards against a foreign file).
pub const OBJECT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `list_range` answers at most this many keys; past it, `Error::TooManyKeys` (use
/// `list_range_page`).
pub const LIST_RANGE_KEYS_MAX: usize = 100_000;

/// Directories created for one object: tenant, endpoint, yyyy, mm, dd, plus root's own missing
/// ancestors; a bound on the walk up.
const CREATED_DIRS_MAX: usize = 64;

/// Temp files get a unique name per put, so concurrent puts of the same key never share one.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The local DLQ store rooted at a directory.
#[derive(Debug, Clone)]
pub struct LocalDlq {
    root: PathBuf,
}

impl LocalDlq {
    /// A store under `root` (usually `<data_dir>/dlq`). Touches nothing until the first put.
    pub fn new(root: PathBuf) -> Self {
        LocalDlq { root }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`, after validating it.
    pub fn path_of(&self, key: &str) -> Result<PathBuf> {
        object::parse_key(key)?;
        Ok(self.root.join(key))
    }

    /// Writes `obj` at `key` durably: temp file in the same directory, fsync, rename over the
    /// key, fsync of the directory (and of the parents of every directory it created). A second
    /// put of the same key atomically replaces the first. `obj` must carry the key's ids.
    /// Returns the object's path.
    pub fn put(&self, key: &str, obj: &DlqObject) -> Result<PathBuf> {
        let json = object::encode(key, obj)?;
        let parts = object::parse_key(key)?;

        let path = self.root.join(key);
        let dir = path.parent().unwrap_or(&self.root);
        create_dirs_durably(dir)?;

        let temp = dir.join(format!(
            ".{}.json.tmp.{}.{}",
            parts.delivery_id,
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_synced(&temp, &json)
            .and_then(|()| fs::rename(&temp, &path).map_err(|e| Error::io(&path, e)));
        if let Err(e) = written {
            // Best effort: the temp name is ignored by `get`/`list` anyway.
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        fsync_dir(dir)?;
        Ok(path)
    }

    /// The object at `key`, `None` if there is none. A file that is not a valid object of that
    /// key is `Error::Corrupt`.
    pub fn get(&self, key: &str) -> Result<Option<DlqObject>> {
        object::parse_key(key)?;
        let path = self.root.join(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > OBJECT_BYTES_MAX {
            return Err(Error::TooLarge {
                key: key.to_owned(),
                bytes: len,
                limit: OBJECT_BYTES_MAX,
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // `take` keeps the bound even if the file grows between metadata and read.
        file.take(OBJECT_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&path, e))?;
        let obj = object::decode(key, &bytes)?;
        Ok(Some(obj))
    }

    /// Removes the object at `key` durably (directory fsynced). `false` if there was none.
    /// Empty date directories are left in place.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path_of(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        }
        fsync_dir(path.parent().unwrap_or(&self.root))?;
        Ok(true)
    }

    /// Every key of `tenant_id` (and `endpoint_id` if given) whose date is within the UTC dates
    /// of `from..=to`, in key order. Day granularity: objects of the first and last day outside
    /// the exact instants are included — filter on `exhausted_at` when that matters. More than
    /// [`LIST_RANGE_KEYS_MAX`] keys is `Error::TooManyKeys`.
    pub fn list_range(
        &self,
        tenant_id: &str,
        endpoint_id: Option<&str>,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<String>> {
        let keys = self.list_range_page(
            tenant_id,
            endpoint_id,
            from,
            to,
            None,
            LIST_RANGE_KEYS_MAX + 1,
        )?;
        if keys.len() > LIST_RANGE_KEYS_MAX {
            return Err(Error::TooManyKeys {
                limit: LIST_RANGE_KEYS_MAX,
            });
        }
        Ok(keys)
    }

    /// One page of [`list_range`](Self::list_range): at most `limit` keys greater than `after`
    /// (the last key of the previous page), in key order. Whole subtrees before `after` are
    /// skipped without being read.
    pub fn list_range_page(
        &self,
        tenant_id: &str,
        endpoint_id: Option<&str>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let Some((from, to)) = object::range_dates(tenant_id, endpoint_id, from, to)? else {
            return Ok(out);
        };
        if limit == 0 {
            return Ok(out);
        }
        // A subtree whose key prefix sorts before `after` and is not a prefix of it holds only
        // keys before `after`.
        let skip = |prefix: &str| after.is_some_and(|a| prefix < a && !a.starts_with(prefix));
        let tenant_dir = self.root.join(tenant_id);
        let endpoints = match endpoint_id {
            Some(e) => vec![e.to_owned()],
            None => sorted_names(&tenant_dir, |n| is_valid_id("ep_", n))?,
        };
        for ep in &endpoints {
            let ep_dir = tenant_dir.join(ep);
            if skip(&format!("{tenant_id}/{ep}/")) {
                continue;
            }
            let years = sorted_names(&ep_dir, |n| {
                parse_fixed_digits(n, 4)
                    .and_then(|y| i32::try_from(y).ok())
                    .is_some_and(|y| (from.year()..=to.year()).contains(&y))
            })?;
            for y in &years {
                let months =
                    sorted_names(&ep_dir.join(y), |n| object::month_overlaps(y, n, from, to))?;
                for m in &months {
                    let days = sorted_names(&ep_dir.join(y).join(m), |n| {
                        object::parse_date_parts(y, m, n).is_some_and(|d| from <= d && d <= to)
                    })?;
                    for d in &days {
                        let prefix = format!("{tenant_id}/{ep}/{y}/{m}/{d}/");
                        if skip(&prefix) {
                            continue;
                        }
                        let files = sorted_names(&ep_dir.join(y).join(m).join(d), |n| {
                            n.strip_suffix(".json")
                                .is_some_and(|id| is_valid_id("dl_", id))
                        })?;
                        for f in files {
                            let key = format!("{prefix}{f}");
                            if after.is_some_and(|a| key.as_str() <= a) {
                                continue;
                            }
                            out.push(key);
                            if out.len() >= limit {
                                return Ok(out);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes every object of a tenant (GDPR purge): the tenant's directory is first renamed
    /// out of the key space (atomic: afterwards no key of it resolves), then deleted. Leftovers
    /// of an interrupted purge are deleted by the next purge.
    pub fn purge_tenant(&self, tenant_id: &str) -> Result<()> {
        if !is_valid_id("tn_", tenant_id) {
            return Err(Error::InvalidKey {
                key: tenant_id.to_owned(),
                reason: "bad tenant id",
            });
        }
        let dir = self.root.join(tenant_id);
        let doomed = self.root.join(format!(
            ".purge-{tenant_id}-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&dir, &doomed) {
            Ok(()) => fsync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        for name in sorted_names(&self.root, |n| n.starts_with(".purge-"))? {
            let p = self.root.join(name);
            match fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        Ok(())
    }
}

/// The UTF-8 names in `dir` that pass `keep`, sorted; a missing directory is empty.
fn sorted_names(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Ok(name) = entry.file_name().into_string()
            && keep(&name)
        {
            names.push(name);
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// fsync a directory so the entries created, renamed or removed in it survive a crash.
fn fsync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// `create_dir_all`, plus an fsync of the parent of every directory created, so a crash cannot
/// lose the path to an object that `put` reported durable.
fn create_dirs_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        if cur.as_os_str().is_empty() {
            break; // the current directory exists
        }
        match fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                let e = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
                return Err(Error::io(cur, e));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if missing.len() >= CREATED_DIRS_MAX {
                    return Err(Error::io(
                        dir,
                        io::Error::other("too many missing ancestors"),
                    ));
                }
                missing.push(cur);
                match cur.parent() {
                    Some(p) => cur = p,
                    None => break,
                }
            }
            Err(e) => return Err(Error::io(cur, e)),
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // A concurrent put made it; its parent still gets our fsync below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(d, e)),
        }
        fsync_dir(d.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::object::tests::sample;
    use crate::dlq::object::{FinalStatus, object_key};
    use time::macros::datetime;

    fn store() -> (tempfile::TempDir, LocalDlq) {
        let dir = tempfile::tempdir().expect("tempdir");
        // A root that does not exist yet: put creates it.
        let dlq = LocalDlq::new(dir.path().join("data").join("dlq"));
        (dir, dlq)
    }

    fn obj_at(
        tenant: &str,
        endpoint: &str,
        delivery: &str,
        at: OffsetDateTime,
    ) -> (String, DlqObject) {
        let obj = DlqObject {
            tenant_id: tenant.to_owned(),
            endpoint_id: endpoint.to_owned(),
            delivery_id: delivery.to_owned(),
            exhausted_at: object::rfc3339(at),
            ..sample()
        };
        (object_key(tenant, endpoint, at, delivery), obj)
    }

    #[test]
    fn put_get_round_trip() {
        let (_tmp, dlq) = store();
        let obj = sample();
        let key = obj.key().expect("key");
        let path = dlq.put(&key, &obj).expect("put");
        assert_eq!(path, dlq.root().join(&key));
        assert_eq!(dlq.get(&key).expect("get"), Some(obj.clone()));
        // On disk it is the contract's JSON.
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(raw["delivery_id"], obj.delivery_id.as_str());
        assert_eq!(raw["final_status"], "exhausted");
        let missing = key.replace(".json", "0.json");
        assert_eq!(dlq.get(&missing).expect("get missing"), None);
    }

    #[test]
    fn second_put_replaces_atomically_and_leaves_no_temp_files() {
        let (_tmp, dlq) = store();
        let first = sample();
        let key = first.key().expect("key");
        dlq.put(&key, &first).expect("put 1");
        let second = DlqObject {
            final_status: FinalStatus::Failed,
            body_base64: "AA==".into(),
            ..sample()
        };
        dlq.put(&key, &second).expect("put 2");
        assert_eq!(dlq.get(&key).expect("get"), Some(second));
        let dir = dlq.root().join(&key);
        let dir = dir.parent().expect("parent");
        let names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(names, [format!("{}.json", sample().delivery_id)]);
    }

    #[test]
    fn path_traversal_keys_touch_nothing() {
        let (tmp, dlq) = store();
        let obj = sample();
        let bad = [
            "../../../etc/passwd",
            "/etc/passwd",
            "tn_A/ep_B/2024/03/05/../../../../../x.json",
            "tn_A/../../2024/03/05/dl_C.json",
            "tn_A/ep_B/2024/03/05/dl_C.json/../../x",
        ];
        for key in bad {
            assert!(
                matches!(dlq.put(key, &obj), Err(Error::InvalidKey { .. })),
                "{key}"
            );
            assert!(
                matches!(dlq.get(key), Err(Error::InvalidKey { .. })),
                "{key}"
            );
            assert!(
                matches!(dlq.delete(key), Err(Error::InvalidKey { .. })),
                "{key}"
            );
        }
        // Nothing was created anywhere under the temp dir.
        assert_eq!(fs::read_dir(tmp.path()).expect("read_dir").count(), 0);
        // A well-formed key that does not match the object is refused too.
        let other = object_key(
            "tn_OTHER",
            &obj.endpoint_id,
            datetime!(2024-03-05 0:00 UTC),
            &obj.delivery_id,
        );
        assert!(matches!(
            dlq.put(&other, &obj),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            dlq.list_range(
                "../x",
                None,
                datetime!(2024-01-01 0:00 UTC),
                datetime!(2024-12-31 0:00 UTC)
            ),
            Err(Error::InvalidKey { .. })
        ));
        assert!(dlq.purge_tenant("..").is_err());
    }

    #[test]
    fn corrupt_or_misplaced_objects_are_reported() {
        let (_tmp, dlq) = store();
        let obj = sample();
        let key = obj.key().expect("key");
        let path = dlq.put(&key, &obj).expect("put");
        fs::write(&path, b"{not json").expect("write");
        assert!(matches!(dlq.get(&key), Err(Error::Corrupt { .. })));
        // A valid object of another delivery at this key.
        let other = DlqObject {
            delivery_id: "dl_SOMEONEELSE".into(),
            ..obj
        };
        fs::write(&path, serde_json::to_vec(&other).expect("json")).expect("write");
        assert!(matches!(dlq.get(&key), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn list_range_over_days() {
        let (_tmp, dlq) = store();
        let (t, e1, e2) = ("tn_T1", "ep_E1", "ep_E2");
        let days = [
            datetime!(2024-02-27 10:00 UTC),
            datetime!(2024-02-28 23:59:59.999 UTC),
            datetime!(2024-02-29 00:00 UTC),
            datetime!(2024-03-01 12:00 UTC),
            datetime!(2024-03-02 08:00 UTC),
        ];
        let mut all = Vec::new();
        for (i, at) in days.iter().enumerate() {
            for ep in [e1, e2] {
                let (key, obj) = obj_at(t, ep, &format!("dl_{i}A"), *at);
                dlq.put(&key, &obj).expect("put");
                all.push(key);
            }
        }
        // Another tenant on the same days never shows up.
        let (key, obj) = obj_at("tn_T2", e1, "dl_X", days[2]);
        dlq.put(&key, &obj).expect("put");
        // Stray files are ignored.
        fs::write(dlq.root().join("tn_T1/ep_E1/2024/02/29/notes.txt"), b"x").expect("write");
        all.sort();

        let from = datetime!(2024-02-28 12:00 UTC);
        let to = datetime!(2024-03-01 00:00 UTC);
        let keys = dlq.list_range(t, None, from, to).expect("list");
        let want: Vec<String> = all
            .iter()
            .filter(|k| {
                ["/2024/02/28/", "/2024/02/29/", "/2024/03/01/"]
                    .iter()
                    .any(|d| k.contains(d))
            })
            .cloned()
            .collect();
        assert_eq!(keys, want);
        assert_eq!(keys.len(), 6);

        let only_e2 = dlq.list_range(t, Some(e2), from, to).expect("list e2");
        assert_eq!(
            only_e2,
            want.iter()
                .filter(|k| k.contains("/ep_E2/"))
                .cloned()
                .collect::<Vec<_>>()
        );

        // A range given at another offset is taken in UTC: 2024-03-02T01:00+02:00 is 03-01.
        let keys = dlq
            .list_range(
                t,
                Some(e1),
                datetime!(2024-03-02 01:00 +02:00),
                datetime!(2024-03-02 01:00 +02:00),
            )
            .expect("list");
        assert_eq!(keys, ["tn_T1/ep_E1/2024/03/01/dl_3A.json"]);

        assert!(
            dlq.list_range(t, None, to, from)
                .expect("reversed")
                .is_empty()
        );
        assert!(
            dlq.list_range("tn_NOBODY", None, from, to)
                .expect("nobody")
                .is_empty()
        );

        // Paging walks the same keys in the same order.
        let whole = dlq.list_range(t, None, days[0], days[4]).expect("all");
        assert_eq!(whole, all);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = dlq
                .list_range_page(t, None, days[0], days[4], after.as_deref(), 3)
                .expect("page");
            assert!(page.len() <= 3);
            let Some(last) = page.last().cloned() else {
                break;
            };
            paged.extend(page);
            after = Some(last);
        }
        assert_eq!(paged, all);
    }

    #[test]
    fn delete_and_purge_tenant() {
        let (_tmp, dlq) = store();
        let (k1, o1) = obj_at("tn_T1", "ep_E1", "dl_A", datetime!(2024-03-01 0:00 UTC));
        let (k2, o2) = obj_at("tn_T1", "ep_E2", "dl_B", datetime!(2024-03-02 0:00 UTC));
        let (k3, o3) = obj_at("tn_T2", "ep_E1", "dl_C", datetime!(2024-03-01 0:00 UTC));
        for (k, o) in [(&k1, &o1), (&k2, &o2), (&k3, &o3)] {
            dlq.put(k, o).expect("put");
        }
        assert!(dlq.delete(&k1).expect("delete"));
        assert!(!dlq.delete(&k1).expect("delete again"));
        assert_eq!(dlq.get(&k1).expect("get"), None);

        dlq.purge_tenant("tn_T1").expect("purge");
        dlq.purge_tenant("tn_T1").expect("purge is idempotent");
        assert_eq!(dlq.get(&k2).expect("get"), None);
        assert!(!dlq.root().join("tn_T1").exists());
        let leftovers = sorted_names(dlq.root(), |n| n.starts_with('.')).expect("names");
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(dlq.get(&k3).expect("get"), Some(o3));
    }

    #[test]
    fn oversized_files_are_not_read() {
        let (_tmp, dlq) = store();
        let obj = sample();
        let key = obj.key().expect("key");
        let path = dlq.put(&key, &obj).expect("put");
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(OBJECT_BYTES_MAX + 1).expect("sparse grow");
        assert!(matches!(dlq.get(&key), Err(Error::TooLarge { .. })));
    }
}
