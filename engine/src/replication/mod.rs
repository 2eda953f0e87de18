//! Replication to a peer node (CONTRACT.md "Replication", ARCHITECTURE.md).
//!
//! A primary streams every shard's log to the same shard on the peer, one TCP connection per
//! shard (`sender.rs`), plus one for the metadata (`meta_sync.rs`). The replica writes the same
//! frames at the same offsets, fsyncs, and acknowledges the fsynced end (`receiver.rs`). With
//! `ack = "peer"` ingest answers only when the peer's acknowledgement covers the record.
//!
//! Roles and epochs: the node's role and epoch are durable (`state.rs`). Promotion raises the
//! epoch; every frame carries the epoch it was written in. A node refuses a primary whose epoch
//! is lower than the highest it has seen, and a primary that meets a higher epoch — refused by
//! its peer, or contacted by a newer primary — fences itself: it stops taking ingest, becomes a
//! replica, and the new primary truncates the suffix of its log that the new primary never had
//! (found from the epochs of the frames, as Kafka's leader epochs do).

pub mod protocol;
pub mod receiver;
pub(crate) mod sender;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use state::{Role, StateError};

/// When ingest answers under replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the local fsync.
    Local,
    /// After the local and the peer's fsync.
    Peer,
}

/// The engine's replication settings.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Role on first start; afterwards the durable state decides.
    pub role: Role,
    /// Where this node streams while primary (the other node's `listen`).
    pub peer: Option<String>,
    /// Where this node accepts a primary's stream.
    pub listen: Option<SocketAddr>,
    pub ack: AckMode,
    /// With `ack = peer`: after the peer has been away this long, answer after the local fsync.
    pub degrade_after: Option<Duration>,
    /// How long ingest waits for the peer (and connects wait), then 503.
    pub peer_timeout: Duration,
    /// Shared secret of the replication connections.
    pub secret: Option<String>,
    /// TLS of the replication connections.
    pub tls: Option<tls::TlsSettings>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            role: Role::Primary,
            peer: None,
            listen: None,
            ack: AckMode::Local,
            degrade_after: None,
            peer_timeout: Duration::from_secs(5),
            secret: None,
            tls: None,
        }
    }
}

/// Progress of one stream (a shard, or the metadata).
#[derive(Debug)]
pub struct Link {
    /// Primary: the local durable end of the log. Replica: the end of its copy.
    next_offset: AtomicU64,
    /// Primary: the peer's acknowledged (fsynced) end; `u64::MAX` = unknown.
    peer_acked: AtomicU64,
    acked_tx: watch::Sender<u64>,
    connected: AtomicBool,
    /// Monotonic ms since the link has been down; 0 while it is up.
    down_since_ms: AtomicU64,
    /// Average frame size, for the byte lag estimate.
    avg_frame_bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Link {
    fn new() -> Link {
        Link {
            next_offset: AtomicU64::new(0),
            peer_acked: AtomicU64::new(u64::MAX),
            acked_tx: watch::channel(0).0,
            connected: AtomicBool::new(false),
            down_since_ms: AtomicU64::new(crate::clock::mono_ms().max(1)),
            avg_frame_bytes: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn set_next(&self, next: u64) {
        self.next_offset.store(next, Ordering::Relaxed);
    }

    pub(crate) fn set_avg_frame_bytes(&self, bytes: u64) {
        self.avg_frame_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_acked(&self, next: u64) {
        self.peer_acked.store(next, Ordering::Release);
        self.acked_tx.send_replace(next);
    }

    pub(crate) fn set_up(&self) {
        self.connected.store(true, Ordering::Release);
        self.down_since_ms.store(0, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(crate) fn set_down(&self, error: Option<String>) {
        self.connected.store(false, Ordering::Release);
        let _ = self.down_since_ms.compare_exchange(
            0,
            crate::clock::mono_ms().max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if let Some(e) = error {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    }

    /// How long the link has been down, `None` while up.
    fn down_for(&self) -> Option<Duration> {
        match self.down_since_ms.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(
                crate::clock::mono_ms().saturating_sub(since),
            )),
        }
    }

    pub fn status(&self, shard: usize) -> LinkStatus {
        let next = self.next_offset.load(Ordering::Relaxed);
        let acked = self.peer_acked.load(Ordering::Acquire);
        let acked = (acked != u64::MAX).then_some(acked);
        let lag_records = acked.map_or(0, |a| next.saturating_sub(a));
        LinkStatus {
            shard,
            next_offset: next,
            peer_acked_offset: acked,
            lag_records,
            lag_bytes: lag_records * self.avg_frame_bytes.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Acquire),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// One shard's replication state as `GET /v1/admin/replication` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub shard: usize,
    pub next_offset: u64,
    pub peer_acked_offset: Option<u64>,
    pub lag_records: u64,
    /// Estimated from the average frame size of the log.
    pub lag_bytes: u64,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// `GET /v1/admin/replication`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub role: Role,
    pub epoch: u32,
    pub ack: AckMode,
    pub degraded: bool,
    pub peer: Option<String>,
    pub listen: Option<String>,
    pub shards: Vec<LinkStatus>,
    pub metadata: LinkStatus,
}

/// Why a promotion was refused.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("this node is already the primary (epoch {0})")]
    AlreadyPrimary(u32),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The node's replication state, shared by every thread.
pub struct Replication {
    cfg: ReplicationConfig,
    /// The durable role and epoch; every change goes through [`Replication::transition`].
    state: Mutex<state::DurableState>,
    store: state::StateFile,
    /// Copies of `state` for the hot path (every ingest asks), read without a lock.
    primary: AtomicBool,
    epoch_now: AtomicU32,
    role_tx: watch::Sender<(Role, u32)>,
    links: Vec<Link>,
    meta_link: Link,
    /// Incoming replication connections per shard, handed from the listener thread.
    conn_txs: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    conn_rxs: Mutex<Vec<Option<mpsc::UnboundedReceiver<std::net::TcpStream>>>>,
    degraded_logged: AtomicBool,
    master_fp: [u8; 32],
    tls: Option<tls::Tls>,
}

impl Replication {
    /// Loads (or, on first start, creates from `cfg.role`) the durable role and epoch.
    pub fn open(
        data_dir: &Path,
        cfg: ReplicationConfig,
        shards: usize,
        master_key: &[u8],
    ) -> Result<Replication, StateError> {
        let store = state::StateFile::new(data_dir.join("replication"));
        let st = match store.load()? {
            Some(st) => {
                if st.role != cfg.role {
                    tracing::warn!(
                        durable = ?st.role,
                        configured = ?cfg.role,
                        epoch = st.epoch,
                        "replication: the durable role (set by a promotion or a fencing) wins \
                         over replication.role"
                    );
                }
                st
            }
            None => {
                let st = state::DurableState {
                    role: cfg.role,
                    epoch: 0,
                };
                store.save(&st)?;
                st
            }
        };
        let tls = match &cfg.tls {
            Some(settings) => Some(tls::Tls::load(settings).map_err(StateError::Tls)?),
            None => None,
        };
        let (mut conn_txs, mut conn_rxs) = (Vec::new(), Vec::new());
        for _ in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            conn_txs.push(tx);
            conn_rxs.push(Some(rx));
        }
        Ok(Replication {
            role_tx: watch::channel((st.role, st.epoch)).0,
            primary: AtomicBool::new(st.role == Role::Primary),
            epoch_now: AtomicU32::new(st.epoch),
            state: Mutex::new(st),
            store,
            links: (0..shards).map(|_| Link::new()).collect(),
            meta_link: Link::new(),
            conn_txs,
            conn_rxs: Mutex::new(conn_rxs),
            degraded_logged: AtomicBool::new(false),
            master_fp: protocol::master_fingerprint(master_key),
            tls,
            cfg,
        })
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.cfg
    }

    pub fn role(&self) -> Role {
        if self.is_primary() {
            Role::Primary
        } else {
            Role::Replica
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch_now.load(Ordering::Acquire)
    }

    /// Sees every change of role or epoch.
    pub fn subscribe(&self) -> watch::Receiver<(Role, u32)> {
        self.role_tx.subscribe()
    }

    pub(crate) fn tls(&self) -> Option<&tls::Tls> {
        self.tls.as_ref()
    }

    pub(crate) fn master_fp(&self) -> [u8; 32] {
        self.master_fp
    }

    pub(crate) fn link(&self, shard: usize) -> &Link {
        &self.links[shard]
    }

    pub(crate) fn meta_link(&self) -> &Link {
        &self.meta_link
    }

    pub(crate) fn conn_tx(
        &self,
        shard: usize,
    ) -> Option<&mpsc::UnboundedSender<std::net::TcpStream>> {
        self.conn_txs.get(shard)
    }

    /// The receiving end of shard `i`'s incoming replication connections; taken once.
    pub(crate) fn take_conns(
        &self,
        i: usize,
    ) -> Option<mpsc::UnboundedReceiver<std::net::TcpStream>> {
        let mut r = self.conn_rxs.lock().unwrap_or_else(|p| p.into_inner());
        r.get_mut(i).and_then(Option::take)
    }

    /// Does this primary stream to a peer?
    pub fn streams(&self) -> bool {
        self.cfg.peer.is_some()
    }

    /// Changes the durable role and epoch under the lock, so concurrent promotions and fencings
    /// decide on the same state: `decide` returns the next state, or `None` for no change. The
    /// file is replaced before the change is visible.
    fn transition(
        &self,
        decide: impl FnOnce(state::DurableState) -> Option<state::DurableState>,
    ) -> Result<Option<state::DurableState>, StateError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(next) = decide(*st) else {
            return Ok(None);
        };
        self.store.save(&next)?;
        *st = next;
        self.epoch_now.store(next.epoch, Ordering::Release);
        self.primary
            .store(next.role == Role::Primary, Ordering::Release);
        self.role_tx.send_replace((next.role, next.epoch));
        Ok(Some(next))
    }

    /// Makes this node the primary with a higher epoch than any it has seen.
    pub fn promote(&self) -> Result<u32, PromoteError> {
        let promoted = self.transition(|st| {
            (st.role != Role::Primary).then_some(state::DurableState {
                role: Role::Primary,
                epoch: st.epoch + 1,
            })
        })?;
        let Some(st) = promoted else {
            return Err(PromoteError::AlreadyPrimary(self.epoch()));
        };
        tracing::warn!(epoch = st.epoch, "replication: promoted to primary");
        Ok(st.epoch)
    }

    /// A higher epoch exists: a primary fences itself and becomes a replica; a replica records
    /// the epoch (so it refuses older primaries). A lower or equal epoch changes nothing.
    pub fn observe_epoch(&self, epoch: u32) -> Result<(), StateError> {
        let mut fenced_from = None;
        self.transition(|st| {
            if epoch <= st.epoch {
                return None;
            }
            if st.role == Role::Primary {
                fenced_from = Some(st.epoch);
            }
            Some(state::DurableState {
                role: Role::Replica,
                epoch,
            })
        })?;
        if let Some(current) = fenced_from {
            tracing::error!(
                epoch = current,
                newer = epoch,
                "replication: a primary with a higher epoch exists; this node stops taking \
                 ingest (fenced) and becomes its replica"
            );
        }
        Ok(())
    }

    /// With `ack = peer` and `degrade_after` set, true once `shard`'s peer has been away that
    /// long: ingest then answers after the local fsync alone.
    pub fn degraded(&self, shard: usize) -> bool {
        self.link_degraded(&self.links[shard])
    }

    fn link_degraded(&self, link: &Link) -> bool {
        if self.cfg.ack != AckMode::Peer || !self.streams() {
            return false;
        }
        match (self.cfg.degrade_after, link.down_for()) {
            (Some(after), Some(down)) => down >= after,
            _ => false,
        }
    }

    /// True when any shard acks locally because its peer is away.
    pub fn any_degraded(&self) -> bool {
        self.is_primary() && self.links.iter().any(|l| self.link_degraded(l))
    }

    /// Resolves once the peer has fsynced record `offset` of `shard` — at once with
    /// `ack = local`, or when degraded. Fails after `peer_timeout`.
    pub async fn wait_peer(&self, shard: usize, offset: u64) -> Result<(), String> {
        if self.cfg.ack != AckMode::Peer || !self.streams() {
            return Ok(());
        }
        let link = &self.links[shard];
        let mut rx = link.acked_tx.subscribe();
        let deadline = tokio::time::Instant::now() + self.cfg.peer_timeout;
        loop {
            let acked = link.peer_acked.load(Ordering::Acquire);
            if acked != u64::MAX && acked > offset {
                return Ok(());
            }
            if self.link_degraded(link) {
                if !self.degraded_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        shard,
                        "replication: the peer has been away longer than degrade_after_ms; \
                         ingest answers after the local fsync alone (degraded)"
                    );
                }
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the replication peer did not confirm within {} ms (ack = peer); retry",
                    self.cfg.peer_timeout.as_millis()
                ));
            }
            rx.borrow_and_update();
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, rx.changed()).await;
        }
    }

    /// Why this node cannot take ingest, if replication is the reason.
    pub fn readiness(&self) -> Result<(), String> {
        let (role, epoch) = (self.role(), self.epoch());
        if role == Role::Replica {
            return Err(format!(
                "this node is a replica (epoch {epoch}): it stores the primary's logs and takes \
                 no ingest until promoted"
            ));
        }
        if self.cfg.ack == AckMode::Peer && self.streams() {
            let away: Vec<usize> = self
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.down_for().is_some() && !self.link_degraded(l))
                .map(|(i, _)| i)
                .collect();
            if !away.is_empty() {
                return Err(format!(
                    "ack = peer and the replication peer is unreachable for shard(s) {away:?}: \
                     ingest answers 503"
                ));
            }
        }
        Ok(())
    }

    pub fn status(&self) -> ReplicationStatus {
        let (role, epoch) = (self.role(), self.epoch());
        ReplicationStatus {
            role,
            epoch,
            ack: self.cfg.ack,
            degraded: self.any_degraded(),
            peer: self.cfg.peer.clone(),
            listen: self.cfg.listen.map(|a| a.to_string()),
            shards: self
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| l.status(i))
                .collect(),
            metadata: self.meta_link.status(usize::from(protocol::META_STREAM)),
        }
    }

    /// The replication families of `/metrics` (Prometheus text format).
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let status = self.status();
        let family = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        family(
            out,
            "hookrelay_replication_lag_bytes",
            "Bytes of log (estimated from the average frame) the peer has not acknowledged, per shard; 0 without a peer.",
        );
        for s in &status.shards {
            let _ = writeln!(
                out,
                "hookrelay_replication_lag_bytes{{shard=\"{}\"}} {}",
                s.shard, s.lag_bytes
            );
        }
        family(
            out,
            "hookrelay_replication_lag_records",
            "Records the peer has not acknowledged, per shard.",
        );
        for s in &status.shards {
            let _ = writeln!(
                out,
                "hookrelay_replication_lag_records{{shard=\"{}\"}} {}",
                s.shard, s.lag_records
            );
        }
        family(
            out,
            "hookrelay_replication_connected",
            "1 while the shard's replication stream is up (primary: to the peer; replica: from the primary).",
        );
        for s in &status.shards {
            let _ = writeln!(
                out,
                "hookrelay_replication_connected{{shard=\"{}\"}} {}",
                s.shard,
                u8::from(s.connected)
            );
        }
        family(
            out,
            "hookrelay_replication_epoch",
            "The node's replication epoch (raised by each promotion).",
        );
        let _ = writeln!(out, "hookrelay_replication_epoch {}", status.epoch);
        family(
            out,
            "hookrelay_replication_primary",
            "1 on the primary, 0 on a replica.",
        );
        let _ = writeln!(
            out,
            "hookrelay_replication_primary {}",
            u8::from(status.role == Role::Primary)
        );
        family(
            out,
            "hookrelay_replication_degraded",
            "1 while ack = peer is degraded to local acknowledgements because the peer is away.",
        );
        let _ = writeln!(
            out,
            "hookrelay_replication_degraded {}",
            u8::from(status.degraded)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, cfg: ReplicationConfig) -> Replication {
        Replication::open(dir, cfg, 2, &[7u8; 32]).unwrap()
    }

    #[test]
    fn promotion_and_fencing_are_durable_and_epochs_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let replica = ReplicationConfig {
            role: Role::Replica,
            ..ReplicationConfig::default()
        };
        let r = open(dir.path(), replica.clone());
        assert_eq!((r.role(), r.epoch()), (Role::Replica, 0));
        assert!(r.readiness().unwrap_err().contains("replica"));
        assert_eq!(r.promote().unwrap(), 1);
        assert!(matches!(r.promote(), Err(PromoteError::AlreadyPrimary(1))));
        drop(r);
        // The configured role only counts on the first start: the promotion is remembered.
        let r = open(dir.path(), replica);
        assert_eq!((r.role(), r.epoch()), (Role::Primary, 1));
        r.observe_epoch(1).unwrap();
        assert_eq!(r.role(), Role::Primary, "an equal epoch fences nothing");
        r.observe_epoch(3).unwrap();
        assert_eq!((r.role(), r.epoch()), (Role::Replica, 3));
        r.observe_epoch(2).unwrap();
        assert_eq!(r.epoch(), 3, "epochs never go down");
        drop(r);
        let r = open(dir.path(), ReplicationConfig::default());
        assert_eq!((r.role(), r.epoch()), (Role::Replica, 3));
        assert_eq!(r.promote().unwrap(), 4);
    }

    #[tokio::test]
    async fn ack_peer_waits_for_the_peer_then_times_out_or_degrades() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ReplicationConfig {
            peer: Some("127.0.0.1:1".into()),
            ack: AckMode::Peer,
            peer_timeout: Duration::from_millis(100),
            ..ReplicationConfig::default()
        };
        let r = open(dir.path(), cfg.clone());
        // The peer is away: not ready, and ingest would wait, then fail.
        assert!(r.readiness().unwrap_err().contains("unreachable"));
        assert!(
            r.wait_peer(0, 0)
                .await
                .unwrap_err()
                .contains("did not confirm")
        );
        // The peer acknowledges through offset 5 (next = 6): 0..=5 are confirmed, 6 is not.
        r.link(0).set_up();
        r.link(0).set_acked(6);
        r.wait_peer(0, 5).await.unwrap();
        assert!(r.wait_peer(0, 6).await.is_err());
        assert!(r.wait_peer(1, 0).await.is_err(), "links are per shard");

        let dir = tempfile::tempdir().unwrap();
        let r = open(
            dir.path(),
            ReplicationConfig {
                degrade_after: Some(Duration::from_millis(1)),
                ..cfg
            },
        );
        r.link(0).set_down(Some("refused".into()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(r.degraded(0));
        assert!(r.any_degraded());
        r.wait_peer(0, 100).await.unwrap();
        let mut text = String::new();
        r.render_prometheus(&mut text);
        for line in [
            "hookrelay_replication_degraded 1",
            "hookrelay_replication_epoch 0",
            "hookrelay_replication_primary 1",
            "hookrelay_replication_connected{shard=\"0\"} 0",
            "hookrelay_replication_lag_records{shard=\"1\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let status = r.status();
        assert_eq!(status.shards[0].last_error.as_deref(), Some("refused"));
    }

    #[test]
    fn ack_local_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(
            dir.path(),
            ReplicationConfig {
                peer: Some("127.0.0.1:1".into()),
                ..ReplicationConfig::default()
            },
        );
        r.readiness().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(r.wait_peer(0, u64::MAX - 1)).unwrap();
    }
}
