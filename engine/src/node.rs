//! The node: what every shard thread shares — configuration, metadata and the router that
//! carries messages between shards. Cheap to clone, `Send + Sync`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::audit::{self, AuditStore};
use crate::ids::SHARDS_MAX;
use crate::meta::{Meta, MetaError};
use crate::shard::ShardMsg;

/// Depth of each shard's inbox; a full inbox answers 503 rather than queueing without bound.
pub const INBOX_DEPTH: usize = 8192;

/// Everything the engine needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub shards: usize,
    pub log_io: hookrelay_log::IoMode,
    pub segment_bytes_max: u64,
    pub segment_age_max: Duration,
    pub batch_bytes_max: usize,
    pub batch_linger: Duration,
    /// Write the active segments with `O_DIRECT` where the filesystem takes it.
    pub direct_io: bool,
    pub frame_bytes_max: u32,
    pub allow_private_destinations: bool,
    pub connect_timeout: Duration,
    pub pool_idle_per_host: usize,
    pub max_in_flight_per_shard: usize,
    pub queue_in_memory_per_endpoint: usize,
    pub circuit_failures_to_open: u32,
    pub circuit_probe_interval: Duration,
    pub idempotency_ttl: Duration,
    /// How long deliveries are kept (`retention.deliveries_days`): whole log segments older than
    /// this whose deliveries are all settled are deleted (`shard/retention.rs`). Zero keeps them.
    pub deliveries_retention: Duration,
    pub shutdown_timeout: Duration,
    /// Seals tenants' data keys; `None` = `<data_dir>/meta/master.key`, created on first start.
    pub master_key: Option<crate::seal::SecretKey>,
    /// Extra trusted CA certificates (PEM) for HTTPS receivers.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Replication to a peer node (`replication/`).
    pub replication: crate::replication::ReplicationConfig,
    /// The DLQ store (`dlq.backend`); `None` = the local store under `<data_dir>/dlq`.
    pub dlq: Option<crate::dlq::store::Store>,
}

impl EngineConfig {
    /// Defaults matching CONTRACT.md, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>, shards: usize) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            shards,
            log_io: hookrelay_log::IoMode::Auto,
            segment_bytes_max: 128 << 20,
            segment_age_max: Duration::from_secs(3600),
            batch_bytes_max: 1 << 20,
            batch_linger: Duration::ZERO,
            direct_io: false,
            frame_bytes_max: 8 << 20,
            allow_private_destinations: false,
            connect_timeout: Duration::from_secs(5),
            pool_idle_per_host: 32,
            max_in_flight_per_shard: 4096,
            queue_in_memory_per_endpoint: 4096,
            circuit_failures_to_open: 20,
            circuit_probe_interval: Duration::from_secs(30),
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
            deliveries_retention: Duration::from_secs(30 * 24 * 3600),
            shutdown_timeout: Duration::from_secs(25),
            master_key: None,
            extra_roots_pem: None,
            replication: crate::replication::ReplicationConfig::default(),
            dlq: None,
        }
    }
}

struct Inner {
    config: EngineConfig,
    meta: Meta,
    audit: AuditStore,
    replication: crate::replication::Replication,
    dlq: crate::dlq::store::Store,
    inboxes: Vec<mpsc::Sender<ShardMsg>>,
    receivers: std::sync::Mutex<Vec<Option<mpsc::Receiver<ShardMsg>>>>,
    ready: Vec<AtomicBool>,
    poisoned: Vec<AtomicBool>,
    shutdown: watch::Sender<bool>,
    stopping: AtomicBool,
}

/// Shared node state; see the module docs.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Audit(#[from] audit::Error),
    #[error(transparent)]
    Replication(#[from] crate::replication::StateError),
    #[error("{0}")]
    Config(String),
    #[error("data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Node {
    /// Opens the metadata and prepares one inbox per shard. The shard count is recorded in the
    /// data dir on first start: endpoints are hashed to shards, so it cannot change afterwards.
    pub fn open(mut config: EngineConfig) -> Result<Node, NodeError> {
        if config.shards == 0 || config.shards > SHARDS_MAX {
            return Err(NodeError::Config(format!(
                "shards must be 1..={SHARDS_MAX}, got {}",
                config.shards
            )));
        }
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| NodeError::Io {
            path: dir.clone(),
            source,
        })?;
        let marker = dir.join("shard_count");
        match std::fs::read_to_string(&marker) {
            Ok(s) => {
                let recorded: usize = s.trim().parse().map_err(|_| {
                    NodeError::Config(format!("{} is not a number", marker.display()))
                })?;
                if recorded != config.shards {
                    tracing::warn!(
                        recorded,
                        requested = config.shards,
                        "the data dir was created with another shard count; keeping {recorded} \
                         (endpoints are hashed to shards)"
                    );
                    config.shards = recorded;
                }
            }
            Err(_) => {
                std::fs::write(&marker, format!("{}\n", config.shards)).map_err(|source| {
                    NodeError::Io {
                        path: marker.clone(),
                        source,
                    }
                })?;
            }
        }
        let meta = Meta::open_with_master(&dir.join("meta"), config.master_key.clone())?;
        let audit = AuditStore::open(&dir.join("audit"), crate::clock::now_ms())?;
        let replication = crate::replication::Replication::open(
            &dir,
            config.replication.clone(),
            config.shards,
            meta.master_key().as_bytes(),
        )?;
        let dlq = config
            .dlq
            .clone()
            .unwrap_or_else(|| crate::dlq::store::Store::local(dir.join("dlq")));
        let mut inboxes = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.shards {
            let (tx, rx) = mpsc::channel(INBOX_DEPTH);
            inboxes.push(tx);
            receivers.push(Some(rx));
        }
        let (shutdown, _) = watch::channel(false);
        let poisoned = (0..config.shards).map(|_| AtomicBool::new(false)).collect();
        let shards_n = config.shards;
        Ok(Node {
            inner: Arc::new(Inner {
                config,
                meta,
                audit,
                replication,
                dlq,
                inboxes,
                receivers: std::sync::Mutex::new(receivers),
                ready: (0..shards_n).map(|_| AtomicBool::new(false)).collect(),
                poisoned,
                shutdown,
                stopping: AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
    pub fn shards(&self) -> usize {
        self.inner.config.shards
    }
    pub fn meta(&self) -> &Meta {
        &self.inner.meta
    }
    /// The DLQ store every shard ships to and replays read from.
    pub fn dlq(&self) -> &crate::dlq::store::Store {
        &self.inner.dlq
    }
    /// Role, epoch and the progress of the streams to or from the peer.
    pub fn replication(&self) -> &crate::replication::Replication {
        &self.inner.replication
    }
    /// The audit log of changes made through the management API.
    pub fn audit(&self) -> &AuditStore {
        &self.inner.audit
    }

    /// The receiving end of shard `i`'s inbox; each can be taken once.
    pub fn take_inbox(&self, i: usize) -> Option<mpsc::Receiver<ShardMsg>> {
        let mut r = self
            .inner
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.get_mut(i).and_then(Option::take)
    }

    pub(crate) fn inbox(&self, i: usize) -> &mpsc::Sender<ShardMsg> {
        &self.inner.inboxes[i]
    }

    /// Shard `i` has recovered (again) and takes ingest.
    pub(crate) fn mark_ready(&self, i: usize) {
        if let Some(flag) = self.inner.poisoned.get(i) {
            flag.store(false, Ordering::SeqCst);
        }
        if let Some(flag) = self.inner.ready.get(i) {
            flag.store(true, Ordering::SeqCst);
        }
    }
    /// Shard `i` is reopening its storage.
    pub(crate) fn mark_unready(&self, i: usize) {
        if let Some(flag) = self.inner.ready.get(i) {
            flag.store(false, Ordering::SeqCst);
        }
    }
    /// Records that shard `i`'s log stopped taking writes (readiness reports it).
    pub(crate) fn mark_poisoned_once(&self, i: usize) {
        if let Some(flag) = self.inner.poisoned.get(i)
            && !flag.swap(true, Ordering::SeqCst)
        {
            tracing::error!(
                shard = i,
                "log poisoned by a failed write or fsync; shard refuses ingest"
            );
        }
    }

    /// `Ok` when every shard has recovered and can take ingest; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        self.inner.replication.readiness()?;
        let poisoned = self
            .inner
            .poisoned
            .iter()
            .filter(|p| p.load(Ordering::SeqCst))
            .count();
        if poisoned > 0 {
            return Err(format!(
                "{poisoned} shard(s) stopped taking writes after a disk error"
            ));
        }
        let ready = self
            .inner
            .ready
            .iter()
            .filter(|r| r.load(Ordering::SeqCst))
            .count();
        if ready < self.shards() {
            return Err(format!(
                "recovering: {ready}/{} shards ready",
                self.shards()
            ));
        }
        Ok(())
    }

    /// True when every shard has opened its storage and runs (as primary).
    pub fn shards_ready(&self) -> bool {
        self.inner.ready.iter().all(|r| r.load(Ordering::SeqCst))
    }

    /// Asks every shard to stop: no new ingest, finish or persist in-flight work, close logs.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
    }
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }
}
