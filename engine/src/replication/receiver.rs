//! The replica's side, and the listener every node with `replication.listen` runs.
//!
//! The listener thread accepts connections and reads the plain-text preamble. A shard stream
//! that reaches a replica is handed (as a std socket) to the shard's thread, which owns the
//! shard's log copy: it checks the primary, then writes the primary's frames at the same
//! offsets and acknowledges each fsynced batch. The metadata stream is handled on the listener
//! thread. A stream that reaches a primary is answered there: an older primary is told it is
//! fenced; a newer one fences this node, which then becomes its replica.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::protocol::{self, Msg, Preamble, RefuseKind};
use super::sender::Stream;
use super::{Replication, Role};
use crate::node::Node;
use crate::shard::ShardCtx;

/// How long a connecting peer has for its preamble and hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a poisoned replica log waits before it is reopened.
const REOPEN_RETRY: Duration = Duration::from_secs(2);

/// Binds `replication.listen` and serves it on a thread of its own until the node stops.
pub fn spawn_listener(node: Node) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(addr) = node.replication().config().listen else {
        return Ok(None);
    };
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let handle = std::thread::Builder::new()
        .name("replication-listen".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "replication: cannot build the listener runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "replication: listener");
                        return;
                    }
                };
                tracing::info!(%addr, "replication: listening");
                let mut shutdown = node.shutdown_signal();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, from)) => {
                                let node = node.clone();
                                tokio::task::spawn_local(async move {
                                    if let Err(e) = route(node, tcp).await {
                                        tracing::warn!(%from, error = %e, "replication: connection refused");
                                    }
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "replication: accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = shutdown.changed() => return,
                    }
                }
            });
        })?;
    Ok(Some(handle))
}

/// Reads the preamble and sends the connection where it belongs.
async fn route(node: Node, mut tcp: TcpStream) -> Result<(), String> {
    use tokio::io::AsyncReadExt as _;
    let mut pre = [0u8; protocol::PREAMBLE_BYTES];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.read_exact(&mut pre))
        .await
        .map_err(|_| "no preamble in time".to_string())?
        .map_err(|e| e.to_string())?;
    let pre = Preamble::decode(&pre).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let repl = node.replication();
    if usize::from(pre.shards) != node.shards() {
        let reason = format!(
            "shard counts differ: the primary has {}, this node {}; both nodes need the same",
            pre.shards,
            node.shards()
        );
        let mut io = accept_tls(repl, tcp).await?;
        refuse(&mut io, RefuseKind::Denied, repl.epoch(), &reason).await;
        return Err(reason);
    }
    if pre.stream == protocol::META_STREAM {
        let io = accept_tls(repl, tcp).await?;
        return serve_meta(&node, io).await;
    }
    let shard = usize::from(pre.stream);
    if shard >= node.shards() {
        return Err(format!("no shard {shard}"));
    }
    if repl.role() == Role::Primary {
        let mut io = accept_tls(repl, tcp).await?;
        let theirs = check_hello(repl, &mut io, pre.stream).await?;
        return answer_as_primary(repl, io, theirs).await;
    }
    let std = tcp.into_std().map_err(|e| e.to_string())?;
    repl.conn_tx(shard)
        .ok_or("no shard")?
        .send(std)
        .map_err(|_| "the shard is stopped".to_string())
}

async fn accept_tls(repl: &Replication, tcp: TcpStream) -> Result<Box<dyn Stream>, String> {
    Ok(match repl.tls() {
        Some(tls) => Box::new(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake: {e}"))?,
        ),
        None => Box::new(tcp),
    })
}

async fn refuse(io: &mut Box<dyn Stream>, kind: RefuseKind, epoch: u32, reason: &str) {
    let msg = Msg::Refuse {
        kind,
        epoch,
        reason: reason.to_string(),
    };
    let _ = protocol::write_msg(io, &msg).await;
    let _ = io.shutdown().await;
}

/// Sends the challenge and checks the primary's hello: secret, master key, epoch. Returns the
/// primary's epoch, or refuses the connection.
async fn check_hello(
    repl: &Replication,
    io: &mut Box<dyn Stream>,
    stream: u16,
) -> Result<u32, String> {
    let nonce: [u8; 32] = rand::random();
    protocol::write_msg(io, &Msg::Challenge { nonce })
        .await
        .map_err(|e| e.to_string())?;
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, protocol::read_msg(io))
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    let Msg::Hello {
        epoch,
        master_fp,
        auth,
    } = hello
    else {
        return Err(format!("expected a hello, got {hello:?}"));
    };
    let secret = repl.config().secret.as_deref();
    if !protocol::auth_ok(secret, &nonce, stream, epoch, &auth) {
        let reason = "the replication secret does not match";
        refuse(io, RefuseKind::Denied, repl.epoch(), reason).await;
        return Err(reason.into());
    }
    if master_fp != repl.master_fp() {
        let reason = "the nodes' master keys differ: start both with the same HOOKRELAY_MASTER_KEY";
        refuse(io, RefuseKind::Denied, repl.epoch(), reason).await;
        return Err(reason.into());
    }
    Ok(epoch)
}

/// A primary with epoch `theirs` reached this node, which believes it is primary too.
async fn answer_as_primary(
    repl: &Replication,
    mut io: Box<dyn Stream>,
    theirs: u32,
) -> Result<(), String> {
    let ours = repl.epoch();
    if theirs > ours {
        // A newer primary: this node is stale. It fences itself and becomes the replica; the
        // primary's next attempt finds it ready.
        repl.observe_epoch(theirs).map_err(|e| e.to_string())?;
        refuse(
            &mut io,
            RefuseKind::Retry,
            theirs,
            "this node was primary in an older epoch; it is becoming your replica",
        )
        .await;
        return Ok(());
    }
    let reason = if theirs == ours {
        format!("both nodes are primary in epoch {ours}: configure one as replica, or promote one")
    } else {
        format!("this node is primary in epoch {ours}, newer than yours ({theirs})")
    };
    let kind = if theirs < ours {
        RefuseKind::Fenced
    } else {
        RefuseKind::Denied
    };
    refuse(&mut io, kind, ours, &reason).await;
    Err(reason)
}

/// The metadata stream: installs every state the primary sends.
async fn serve_meta(node: &Node, mut io: Box<dyn Stream>) -> Result<(), String> {
    let repl = node.replication();
    let epoch = check_hello(repl, &mut io, protocol::META_STREAM).await?;
    if epoch < repl.epoch() {
        let reason = format!("epoch {epoch} is older than this node's {}", repl.epoch());
        refuse(&mut io, RefuseKind::Fenced, repl.epoch(), &reason).await;
        return Err(reason);
    }
    if repl.role() == Role::Primary {
        return answer_as_primary(repl, io, epoch).await;
    }
    repl.observe_epoch(epoch).map_err(|e| e.to_string())?;
    let welcome = Msg::Welcome {
        epoch: repl.epoch(),
        first_offset: 0,
        next_offset: 0,
        last_epoch: None,
    };
    protocol::write_msg(&mut io, &welcome)
        .await
        .map_err(|e| e.to_string())?;
    let link = repl.meta_link();
    link.set_up();
    let mut installed = 0u64;
    let result = loop {
        let msg = match protocol::read_msg(&mut io).await {
            Ok(m) => m,
            Err(e) => break Err(e.to_string()),
        };
        match msg {
            Msg::MetaState { state } => {
                let meta = node.meta().clone();
                let done = tokio::task::spawn_blocking(move || meta.install(&state))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = done {
                    break Err(format!("installing the primary's metadata: {e}"));
                }
                installed += 1;
                link.set_next(installed);
            }
            Msg::Ping => {}
            other => {
                break Err(format!(
                    "unexpected message on the metadata stream: {other:?}"
                ));
            }
        }
        // Every state installed and every ping is acknowledged.
        if let Err(e) = protocol::write_msg(
            &mut io,
            &Msg::Ack {
                next_offset: installed,
            },
        )
        .await
        {
            break Err(e.to_string());
        }
        if repl.role() == Role::Primary {
            break Ok(());
        }
    };
    link.set_down(result.as_ref().err().cloned());
    result
}

/// What ended a shard's replica mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaExit {
    /// The node was promoted: open the shard as primary.
    Promoted,
    /// The node is shutting down.
    Shutdown,
}

/// The shard's log copy, reopened after a truncation, a reset or a failed write.
struct Copy {
    shard: usize,
    opts: hookrelay_log::Options,
    log: Option<hookrelay_log::Log>,
}

impl Copy {
    async fn log(&mut self) -> Result<&hookrelay_log::Log, String> {
        if self.log.as_ref().is_some_and(|l| l.is_poisoned()) {
            if let Some(old) = self.log.take() {
                let _ = old.close().await;
            }
            tokio::time::sleep(REOPEN_RETRY).await;
        }
        if self.log.is_none() {
            let (log, _) = hookrelay_log::Log::open(self.opts.clone())
                .await
                .map_err(|e| format!("opening shard {}'s log copy: {e}", self.shard))?;
            self.log = Some(log);
        }
        Ok(self.log.as_ref().expect("just opened"))
    }

    /// Closes the log and runs `f` on its directory (truncate or reset), then reopens it.
    async fn rewrite(
        &mut self,
        f: impl FnOnce(&std::path::Path) -> Result<(), hookrelay_log::Error> + Send + 'static,
    ) -> Result<(), String> {
        if let Some(log) = self.log.take() {
            log.close().await.map_err(|e| e.to_string())?;
        }
        let dir = self.opts.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.log().await.map(|_| ())
    }

    async fn close(&mut self) {
        if let Some(log) = self.log.take()
            && let Err(e) = log.close().await
        {
            tracing::warn!(shard = self.shard, error = %e, "replication: closing the log copy");
        }
    }
}

/// Runs shard `ctx.id` as a replica: keeps its log copy in step with the primary's stream
/// until the node is promoted or stops.
pub(crate) async fn run_replica(
    ctx: &Rc<ShardCtx>,
    conns: &mut mpsc::UnboundedReceiver<std::net::TcpStream>,
) -> Result<ReplicaExit, crate::shard::core::Error> {
    let node = ctx.node.clone();
    let repl = node.replication();
    let id = ctx.id;
    let (shard_dir, opts) = crate::shard::core::log_options(node.config(), id);
    // The state table and the idempotency index are caches of the log; the copy's log changes
    // under them (truncation, reset), so they are rebuilt from it on promotion.
    for cache in ["state.tbl", "idempotency", "usage.json"] {
        let p = shard_dir.join(cache);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    let mut copy = Copy {
        shard: id,
        opts,
        log: None,
    };
    let log = copy
        .log()
        .await
        .map_err(|reason| crate::shard::core::Error::Index { shard: id, reason })?;
    let link = repl.link(id);
    link.set_next(log.durable_offset());
    link.set_down(None);
    tracing::info!(
        shard = id,
        next_offset = log.durable_offset(),
        "replica: waiting for the primary's stream"
    );
    let mut role = repl.subscribe();
    let mut shutdown = node.shutdown_signal();
    let mut pending: Option<std::net::TcpStream> = None;
    let exit = loop {
        if node.is_stopping() {
            break ReplicaExit::Shutdown;
        }
        if repl.is_primary() {
            break ReplicaExit::Promoted;
        }
        let conn = match pending.take() {
            Some(c) => c,
            None => tokio::select! {
                c = conns.recv() => match c {
                    Some(c) => c,
                    None => break ReplicaExit::Shutdown,
                },
                _ = role.changed() => continue,
                _ = shutdown.changed() => continue,
            },
        };
        let outcome = serve_stream(&node, &mut copy, conn, conns, &mut pending).await;
        link.set_down(outcome.err());
    };
    copy.close().await;
    Ok(exit)
}

/// Serves one primary connection until it ends, a newer connection arrives (kept in
/// `pending`), the role changes or the node stops.
async fn serve_stream(
    node: &Node,
    copy: &mut Copy,
    std: std::net::TcpStream,
    conns: &mut mpsc::UnboundedReceiver<std::net::TcpStream>,
    pending: &mut Option<std::net::TcpStream>,
) -> Result<(), String> {
    let repl = node.replication();
    let shard = copy.shard;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    let tcp = TcpStream::from_std(std).map_err(|e| e.to_string())?;
    let mut io = accept_tls(repl, tcp).await?;
    let epoch = check_hello(repl, &mut io, shard as u16).await?;
    if epoch < repl.epoch() {
        let reason = format!(
            "epoch {epoch} is older than epoch {} this node has seen",
            repl.epoch()
        );
        refuse(&mut io, RefuseKind::Fenced, repl.epoch(), &reason).await;
        return Err(reason);
    }
    repl.observe_epoch(epoch).map_err(|e| e.to_string())?;
    let log = copy.log().await?;
    let (first, next) = (log.first_offset(), log.durable_offset());
    let last_epoch = if next > first {
        Some(log.read(next - 1).map_err(|e| e.to_string())?.epoch)
    } else {
        None
    };
    let welcome = Msg::Welcome {
        epoch: repl.epoch(),
        first_offset: first,
        next_offset: next,
        last_epoch,
    };
    protocol::write_msg(&mut io, &welcome)
        .await
        .map_err(|e| e.to_string())?;
    let link = repl.link(shard);
    link.set_up();
    tracing::info!(
        shard,
        epoch,
        next_offset = next,
        "replica: primary attached"
    );

    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut from_primary) = mpsc::channel(4);
    let reader = tokio::task::spawn_local(async move {
        loop {
            let m = protocol::read_msg(&mut rd).await;
            let failed = m.is_err();
            if tx.send(m).await.is_err() || failed {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(reader);
    let mut role = repl.subscribe();
    let mut shutdown = node.shutdown_signal();
    let mut next: Option<Msg> = None;
    loop {
        if node.is_stopping() || repl.is_primary() {
            return Ok(());
        }
        let msg = if let Some(m) = next.take() {
            m
        } else {
            tokio::select! {
            m = from_primary.recv() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the primary closed the connection".into()),
            },
            c = conns.recv() => {
                *pending = c;
                return Err("replaced by a newer connection from the primary".into());
            }
            _ = role.changed() => continue,
            _ = shutdown.changed() => continue,
            }
        };
        let ack = match msg {
            Msg::Records { records } => {
                let log = copy.log().await?;
                let mut last = None;
                let mut batch = records;
                loop {
                    for r in batch {
                        last = Some(r.offset);
                        log.append_replicated(r.offset, r.epoch, r.record_type, r.payload)
                            .map_err(|e| format!("writing the primary's record: {e}"))?;
                    }
                    // Whatever else has arrived meanwhile shares the same fsync.
                    match from_primary.try_recv() {
                        Ok(Ok(Msg::Records { records })) => batch = records,
                        Ok(Ok(other)) => {
                            next = Some(other);
                            break;
                        }
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => break,
                    }
                }
                let Some(last) = last else {
                    continue;
                };
                log.wait_durable(last)
                    .await
                    .map_err(|e| format!("fsync of the copy: {e}"))?;
                log.durable_offset()
            }
            Msg::Truncate { to } => {
                tracing::warn!(
                    shard,
                    from = to,
                    "replica: truncating records the primary never had"
                );
                copy.rewrite(move |dir| hookrelay_log::truncate_dir(dir, to).map(|_| ()))
                    .await?;
                continue;
            }
            Msg::Reset { base } => {
                tracing::warn!(
                    shard,
                    base,
                    "replica: restarting the copy at the primary's first record"
                );
                copy.rewrite(move |dir| hookrelay_log::reset_dir(dir, base))
                    .await?;
                continue;
            }
            Msg::Ping => copy.log().await?.durable_offset(),
            Msg::Trim { below } => {
                let log = copy.log().await?;
                match log.delete_below(below).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        shard,
                        below,
                        segments = n,
                        "replica: deleted segments the primary's retention deleted"
                    ),
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "replica: deleting old segments failed")
                    }
                }
                continue;
            }
            other => return Err(format!("unexpected message from the primary: {other:?}")),
        };
        link.set_next(ack);
        protocol::write_msg(&mut wr, &Msg::Ack { next_offset: ack })
            .await
            .map_err(|e| e.to_string())?;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
