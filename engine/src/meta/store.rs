//! The metadata log and its snapshots.
//!
//! On disk, `<dir>/meta.log` holds one change per line: `<crc32 hex> <json>\n`, appended and
//! fdatasync'ed before the change is visible. `<dir>/meta.snapshot.json` holds the whole state
//! as of some number of changes; when the log grows past [`COMPACT_AFTER_OPS`] lines a new
//! snapshot is written (temp file, fsync, rename, fsync dir) and the log is emptied, so start-up
//! never replays years of history. A torn last line (crash mid-append) is cut on open; a bad
//! line followed by good ones is corruption and refuses to start.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::model::{ApiKey, Endpoint, MetaOp, ReplayJob, Tenant, TenantKey};
use crate::seal::SecretKey;
use base64::Engine as _;

/// Log lines after which the state is snapshotted and the log emptied.
pub const COMPACT_AFTER_OPS: usize = 10_000;
/// Longest metadata log line accepted on read (an endpoint is a few KiB at most).
const LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata log {path} is corrupt at line {line}: {reason}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("metadata store is poisoned by an earlier write failure")]
    Poisoned,
}

/// The whole metadata state, serialisable for snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    tenants: HashMap<String, Tenant>,
    endpoints: HashMap<String, Endpoint>,
    api_keys: HashMap<String, ApiKey>,
    #[serde(default)]
    replays: HashMap<String, ReplayJob>,
    #[serde(default)]
    tenant_keys: HashMap<String, TenantKey>,
}

impl State {
    fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::PutTenant(t) => {
                self.tenants.insert(t.id.clone(), t.clone());
            }
            MetaOp::PutEndpoint(e) => {
                self.endpoints.insert(e.id.clone(), (**e).clone());
            }
            MetaOp::DeleteEndpoint { id } => {
                self.endpoints.remove(id);
            }
            MetaOp::PutApiKey(k) => {
                self.api_keys.insert(k.id.clone(), k.clone());
            }
            MetaOp::DeleteApiKey { id } => {
                self.api_keys.remove(id);
            }
            MetaOp::PutReplay(job) => {
                self.replays.insert(job.id.clone(), (**job).clone());
            }
            MetaOp::TouchApiKey { id, at_ms } => {
                if let Some(k) = self.api_keys.get_mut(id) {
                    k.last_used_at_ms = Some(k.last_used_at_ms.map_or(*at_ms, |t| t.max(*at_ms)));
                }
            }
            MetaOp::PutTenantKey { tenant_id, key } => {
                self.tenant_keys.insert(tenant_id.clone(), key.clone());
            }
            MetaOp::PurgeTenant { tenant_id, key } => {
                self.api_keys
                    .retain(|_, k| k.tenant_id.as_deref() != Some(tenant_id.as_str()));
                self.replays.retain(|_, j| j.tenant_id != *tenant_id);
                self.tenant_keys.insert(tenant_id.clone(), key.clone());
            }
        }
    }
}

/// An immutable view of the metadata, cheap to load on every request.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub tenants: HashMap<String, Arc<Tenant>>,
    pub endpoints: HashMap<String, Arc<Endpoint>>,
    /// Parsed `allowed_source_ips` per endpoint that has a list.
    pub allowlists: HashMap<String, Arc<Vec<IpNet>>>,
    pub api_keys: HashMap<String, Arc<ApiKey>>,
    /// API keys by the hex SHA-256 of the key.
    pub keys_by_hash: HashMap<String, Arc<ApiKey>>,
    pub replays: HashMap<String, Arc<ReplayJob>>,
    /// Each tenant's current data key generation and key, opened with the master key.
    pub data_keys: HashMap<String, (u32, Arc<SecretKey>)>,
}

impl Snapshot {
    fn build(state: &State, version: u64, master: &SecretKey) -> Snapshot {
        let mut allowlists = HashMap::new();
        for e in state.endpoints.values() {
            if let Some(list) = &e.allowed_source_ips {
                allowlists.insert(e.id.clone(), Arc::new(parse_allowlist(list)));
            }
        }
        let api_keys: HashMap<String, Arc<ApiKey>> = state
            .api_keys
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        Snapshot {
            version,
            tenants: state
                .tenants
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            endpoints: state
                .endpoints
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            allowlists,
            keys_by_hash: api_keys
                .values()
                .map(|k| (k.hash.clone(), k.clone()))
                .collect(),
            api_keys,
            replays: state
                .replays
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            data_keys: state
                .tenant_keys
                .iter()
                .filter_map(|(tenant, k)| match open_tenant_key(master, tenant, k) {
                    Some(key) => Some((tenant.clone(), (k.generation, Arc::new(key)))),
                    None => {
                        tracing::error!(%tenant, "tenant data key does not open with the master key");
                        None
                    }
                })
                .collect(),
        }
    }

    /// The key record for a presented key, if it exists. The lookup is by SHA-256 of the key, so
    /// timing reveals nothing about stored keys (the standard way of storing API keys).
    pub fn key_for(&self, presented: &str) -> Option<&Arc<ApiKey>> {
        self.keys_by_hash.get(&hash_key(presented))
    }

    /// True when `ip` may send to the endpoint (no list means any source).
    pub fn source_allowed(&self, endpoint_id: &str, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match self.allowlists.get(endpoint_id) {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// Seals a new data key for `tenant_id` under the master key.
pub fn seal_tenant_key(
    master: &SecretKey,
    tenant_id: &str,
    generation: u32,
    key: &SecretKey,
) -> TenantKey {
    let context = format!("{tenant_id}/{generation}");
    TenantKey {
        generation,
        sealed: base64::engine::general_purpose::STANDARD
            .encode(master.seal(key.as_bytes(), context.as_bytes())),
    }
}

fn open_tenant_key(master: &SecretKey, tenant_id: &str, k: &TenantKey) -> Option<SecretKey> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&k.sealed)
        .ok()?;
    let plain = master
        .open(&sealed, format!("{tenant_id}/{}", k.generation).as_bytes())
        .ok()?;
    SecretKey::from_bytes(&plain)
}

/// Parses CIDRs and bare addresses; entries that fail were refused at write time already.
pub fn parse_allowlist(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| parse_net(s).ok()).collect()
}

/// Parses one allowlist entry: a CIDR (`203.0.113.0/24`) or a bare address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// Hex SHA-256 of an API key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

struct Writer {
    state: State,
    log: File,
    log_lines: usize,
    version: u64,
    poisoned: bool,
}

struct Inner {
    dir: PathBuf,
    master: SecretKey,
    writer: Mutex<Writer>,
    snapshot: ArcSwap<Snapshot>,
    changed: watch::Sender<u64>,
}

/// Handle to the metadata store; cheap to clone and shared by every thread.
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

impl Meta {
    /// Opens (or creates) the store in `dir`, loading the snapshot and replaying the log.
    /// Opens (or creates) the store in `dir`; `master` opens the tenants' data keys.
    pub fn open(dir: &Path) -> Result<Meta, MetaError> {
        Self::open_with_master(dir, None)
    }

    /// Like [`Meta::open`] with the master key given (e.g. from `HOOKRELAY_MASTER_KEY`); without
    /// one it is read from, or created in, `<dir>/master.key` (mode 0600).
    pub fn open_with_master(dir: &Path, master: Option<SecretKey>) -> Result<Meta, MetaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let snap_path = dir.join("meta.snapshot.json");
        let mut state = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                serde_json::from_slice::<State>(&bytes).map_err(|e| MetaError::Corrupt {
                    path: snap_path.clone(),
                    line: 0,
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&snap_path)(e)),
        };
        let log_path = dir.join("meta.log");
        let (ops, good_len) = read_log(&log_path)?;
        for op in &ops {
            state.apply(op);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        // Cut a torn tail so the next append starts on a line boundary.
        if log.metadata().map_err(io(&log_path))?.len() != good_len {
            log.set_len(good_len).map_err(io(&log_path))?;
            log.sync_all().map_err(io(&log_path))?;
        }
        let version = ops.len() as u64;
        let master = match master {
            Some(k) => k,
            None => load_or_create_master(dir)?,
        };
        let snapshot = Snapshot::build(&state, version, &master);
        let (changed, _) = watch::channel(version);
        Ok(Meta {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                master,
                writer: Mutex::new(Writer {
                    state,
                    log,
                    log_lines: ops.len(),
                    version,
                    poisoned: false,
                }),
                snapshot: ArcSwap::from_pointee(snapshot),
                changed,
            }),
        })
    }

    /// The node's master key (seals tenants' data keys).
    pub fn master_key(&self) -> &SecretKey {
        &self.inner.master
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// A receiver that sees the snapshot version change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Makes `ops` durable and visible, in order, atomically with respect to other writers.
    /// Blocking (write + fdatasync): call it from a blocking pool, see [`Meta::apply`].
    pub fn apply_blocking(&self, ops: &[MetaOp]) -> Result<Arc<Snapshot>, MetaError> {
        let inner = &self.inner;
        let mut w = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.poisoned {
            return Err(MetaError::Poisoned);
        }
        let log_path = inner.dir.join("meta.log");
        let mut buf = Vec::new();
        for op in ops {
            crate::checked_line::encode_into(op, &mut buf);
        }
        let written = w.log.write_all(&buf).and_then(|()| w.log.sync_data());
        if let Err(e) = written {
            // After a failed write or fsync we cannot know what is on disk: stop taking writes.
            w.poisoned = true;
            return Err(io(&log_path)(e));
        }
        for op in ops {
            w.state.apply(op);
        }
        w.log_lines += ops.len();
        w.version += ops.len() as u64;
        let purged = ops
            .iter()
            .any(|op| matches!(op, MetaOp::PurgeTenant { .. }));
        if purged {
            // The old data key is in the log's lines: rewrite the snapshot and empty the log
            // now, or the purge is not real. A failure here fails the purge.
            if let Err(e) = compact(&inner.dir, &mut w) {
                w.poisoned = true;
                return Err(e);
            }
        } else if w.log_lines >= COMPACT_AFTER_OPS
            && let Err(e) = compact(&inner.dir, &mut w)
        {
            tracing::warn!(error = %e, "metadata snapshot failed; the log keeps growing");
        }
        let snapshot = Arc::new(Snapshot::build(&w.state, w.version, &inner.master));
        inner.snapshot.store(snapshot.clone());
        inner.changed.send_replace(w.version);
        Ok(snapshot)
    }

    /// The whole state as JSON, as the replication stream sends it to the peer.
    pub fn export(&self) -> Vec<u8> {
        let w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_vec(&w.state).expect("metadata serialises")
    }

    /// Replaces the whole state with `json` (from [`Meta::export`] on the primary): written as
    /// the snapshot (temp file, fsync, rename) with the log emptied, then made visible.
    /// Blocking.
    pub fn install(&self, json: &[u8]) -> Result<(), MetaError> {
        let inner = &self.inner;
        let state: State = serde_json::from_slice(json).map_err(|e| MetaError::Corrupt {
            path: inner.dir.join("meta.snapshot.json"),
            line: 0,
            reason: format!("replicated state: {e}"),
        })?;
        let mut w = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.poisoned {
            return Err(MetaError::Poisoned);
        }
        let previous = std::mem::replace(&mut w.state, state);
        if let Err(e) = compact(&inner.dir, &mut w) {
            w.state = previous;
            w.poisoned = true;
            return Err(e);
        }
        w.version += 1;
        let snapshot = Arc::new(Snapshot::build(&w.state, w.version, &inner.master));
        inner.snapshot.store(snapshot);
        inner.changed.send_replace(w.version);
        Ok(())
    }

    /// Async wrapper over [`Meta::apply_blocking`] that runs it on the blocking pool, so a
    /// shard's executor never waits on the metadata fsync.
    pub async fn apply(&self, ops: Vec<MetaOp>) -> Result<Arc<Snapshot>, MetaError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.apply_blocking(&ops))
            .await
            .unwrap_or(Err(MetaError::Poisoned))
    }
}

/// The master key file: 32 random bytes, created once with mode 0600.
fn load_or_create_master(dir: &Path) -> Result<SecretKey, MetaError> {
    let path = dir.join("master.key");
    match std::fs::read(&path) {
        Ok(bytes) => SecretKey::from_bytes(&bytes).ok_or_else(|| MetaError::Corrupt {
            path: path.clone(),
            line: 0,
            reason: "a master key is 32 bytes".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            let key = SecretKey::generate();
            let tmp = dir.join("master.key.tmp");
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(key.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            Ok(key)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn compact(dir: &Path, w: &mut Writer) -> Result<(), MetaError> {
    let tmp = dir.join("meta.snapshot.json.tmp");
    let path = dir.join("meta.snapshot.json");
    let json = serde_json::to_vec(&w.state).expect("metadata serialises");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&json).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    let log_path = dir.join("meta.log");
    w.log.set_len(0).map_err(io(&log_path))?;
    w.log.sync_all().map_err(io(&log_path))?;
    w.log_lines = 0;
    Ok(())
}

/// Reads the metadata log: the ops of every good line, and the byte length of the good prefix.
fn read_log(path: &Path) -> Result<(Vec<MetaOp>, u64), MetaError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut ops = Vec::new();
    let mut good_len = 0u64;
    let mut bad_line: Option<(usize, String)> = None;
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io(path))?;
        if read == 0 {
            break;
        }
        n += 1;
        match parse_line(&line) {
            Ok(op) => {
                if let Some((at, reason)) = bad_line.take() {
                    return Err(MetaError::Corrupt {
                        path: path.to_path_buf(),
                        line: at,
                        reason,
                    });
                }
                ops.push(op);
                good_len += read as u64;
            }
            Err(reason) => {
                if bad_line.is_none() {
                    bad_line = Some((n, reason));
                }
            }
        }
    }
    if let Some((at, reason)) = bad_line {
        tracing::warn!(path = %path.display(), line = at, %reason, "cut a torn metadata log tail");
    }
    Ok((ops, good_len))
}

fn parse_line(line: &[u8]) -> Result<MetaOp, String> {
    let line = line
        .strip_suffix(b"\n")
        .ok_or_else(|| "incomplete line".to_string())?;
    crate::checked_line::parse(line)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::model::Role;

    fn key(id: &str) -> MetaOp {
        MetaOp::PutApiKey(ApiKey {
            id: id.into(),
            tenant_id: Some("tn_a".into()),
            role: Role::Admin,
            name: "k".into(),
            hash: hash_key(id),
            prefix: "hr_admin_x".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            last_used_at_ms: None,
        })
    }

    #[test]
    fn survives_reopen_and_cuts_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.apply_blocking(&[key("a"), key("b")]).unwrap();
        meta.apply_blocking(&[MetaOp::DeleteApiKey { id: "a".into() }])
            .unwrap();
        drop(meta);
        // A torn append: half a line at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("meta.log"))
            .unwrap();
        f.write_all(b"deadbeef {\"op\":").unwrap();
        drop(f);
        let meta = Meta::open(dir.path()).unwrap();
        let snap = meta.load();
        assert!(snap.api_keys.contains_key("b"));
        assert!(!snap.api_keys.contains_key("a"));
        assert!(snap.key_for("b").is_some());
        meta.apply_blocking(&[key("c")]).unwrap();
        drop(meta);
        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(meta.load().api_keys.len(), 2);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.apply_blocking(&[key("a"), key("b"), key("c")])
            .unwrap();
        drop(meta);
        let path = dir.path().join("meta.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let first_nl = bytes.iter().position(|b| *b == b'\n').unwrap();
        bytes[first_nl + 12] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            Meta::open(dir.path()),
            Err(MetaError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn an_installed_state_replaces_the_old_and_survives_reopen() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = Meta::open(a_dir.path()).unwrap();
        let b = Meta::open(b_dir.path()).unwrap();
        a.apply_blocking(&[key("k1"), key("k2")]).unwrap();
        b.apply_blocking(&[key("stale")]).unwrap();
        let changes = b.subscribe();
        b.install(&a.export()).unwrap();
        assert!(changes.has_changed().unwrap());
        let ids = |m: &Meta| {
            let mut v: Vec<String> = m.load().api_keys.keys().cloned().collect();
            v.sort();
            v
        };
        assert_eq!(ids(&b), vec!["k1".to_string(), "k2".to_string()]);
        drop(b);
        let b = Meta::open(b_dir.path()).unwrap();
        assert_eq!(ids(&b), vec!["k1".to_string(), "k2".to_string()]);
        assert!(b.install(b"{not json").is_err());
        assert_eq!(ids(&b), vec!["k1".to_string(), "k2".to_string()]);
    }

    #[test]
    fn compaction_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let ops: Vec<MetaOp> = (0..COMPACT_AFTER_OPS + 5)
            .map(|i| key(&format!("k{i}")))
            .collect();
        meta.apply_blocking(&ops).unwrap();
        meta.apply_blocking(&[key("last")]).unwrap();
        drop(meta);
        assert!(dir.path().join("meta.snapshot.json").exists());
        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(meta.load().api_keys.len(), COMPACT_AFTER_OPS + 6);
    }

    #[test]
    fn allowlist_matches_cidrs_and_mapped_v4() {
        let nets = parse_allowlist(&["203.0.113.0/24".into(), "::1".into()]);
        assert_eq!(nets.len(), 2);
        let mut snap = Snapshot::default();
        snap.allowlists.insert("ep".into(), Arc::new(nets));
        assert!(snap.source_allowed("ep", "203.0.113.9".parse().unwrap()));
        assert!(snap.source_allowed("ep", "::ffff:203.0.113.9".parse().unwrap()));
        assert!(!snap.source_allowed("ep", "198.51.100.1".parse().unwrap()));
        assert!(snap.source_allowed("other", "198.51.100.1".parse().unwrap()));
    }
}
