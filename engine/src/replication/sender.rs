//! The primary's side: one task per shard (on the shard's thread, since the log is `!Send`)
//! streams durable records to the peer and records the peer's acknowledgements; one task
//! streams the metadata. Both reconnect with backoff for as long as the node is primary.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::protocol::{self, Msg, Preamble, RefuseKind, WireRecord};
use super::{Link, Replication};
use crate::shard::ShardCore;

/// Most record bytes in one `Records` message.
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Most record bytes sent and not yet acknowledged.
const WINDOW_BYTES_MAX: usize = 16 << 20;
/// A ping is sent after this long without any other message, and answered with an ack.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Reconnect backoff bounds.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Metadata changes closer together than this are sent as one state.
const META_DEBOUNCE: Duration = Duration::from_millis(20);

/// A byte stream, plain TCP or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("the peer has seen epoch {0}, higher than ours: this node is fenced")]
    Fenced(u32),
    #[error("the peer refused the stream: {0}")]
    Refused(String),
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    #[error("{0}")]
    Other(String),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        SendError::Protocol(e.into())
    }
}

/// Connects to the peer, sends the preamble and proves the secret. Returns the stream and the
/// replica's `Welcome`.
async fn handshake(
    repl: &Replication,
    stream_id: u16,
    shards: usize,
) -> Result<(Box<dyn Stream>, Msg), SendError> {
    let cfg = repl.config();
    let peer = cfg
        .peer
        .as_deref()
        .expect("the sender runs only with a peer");
    let timeout = cfg.peer_timeout;
    let mut tcp = tokio::time::timeout(timeout, TcpStream::connect(peer))
        .await
        .map_err(|_| SendError::Other(format!("connecting to {peer} timed out")))?
        .map_err(|e| SendError::Other(format!("connecting to {peer}: {e}")))?;
    tcp.set_nodelay(true)?;
    let preamble = Preamble {
        stream: stream_id,
        shards: shards as u16,
    };
    tcp.write_all(&preamble.encode()).await?;
    let mut io: Box<dyn Stream> = match repl.tls() {
        Some(tls) => Box::new(
            tokio::time::timeout(timeout, tls.connect(peer, tcp))
                .await
                .map_err(|_| SendError::Other("TLS handshake timed out".into()))?
                .map_err(|e| SendError::Other(format!("TLS handshake with {peer}: {e}")))?,
        ),
        None => Box::new(tcp),
    };
    let challenge = read_timed(&mut io, timeout).await?;
    let Msg::Challenge { nonce } = challenge else {
        return Err(unexpected(&challenge));
    };
    let epoch = repl.epoch();
    let hello = Msg::Hello {
        epoch,
        master_fp: repl.master_fp(),
        auth: protocol::auth_tag(cfg.secret.as_deref(), &nonce, stream_id, epoch),
    };
    protocol::write_msg(&mut io, &hello).await?;
    match read_timed(&mut io, timeout).await? {
        w @ Msg::Welcome { .. } => Ok((io, w)),
        Msg::Refuse {
            kind: RefuseKind::Fenced,
            epoch,
            ..
        } => Err(SendError::Fenced(epoch)),
        Msg::Refuse { reason, .. } => Err(SendError::Refused(reason)),
        other => Err(unexpected(&other)),
    }
}

async fn read_timed(io: &mut Box<dyn Stream>, timeout: Duration) -> Result<Msg, SendError> {
    tokio::time::timeout(timeout, protocol::read_msg(io))
        .await
        .map_err(|_| SendError::Other("the peer did not answer in time".into()))?
        .map_err(SendError::from)
}

fn unexpected(msg: &Msg) -> SendError {
    SendError::Other(format!("unexpected message from the peer: {msg:?}"))
}

/// Reads messages from the peer on a task of its own (reading is not cancel-safe), handing
/// them over on a channel the stream loop can select on.
fn spawn_reader(
    mut rd: tokio::io::ReadHalf<Box<dyn Stream>>,
) -> (
    mpsc::UnboundedReceiver<Result<Msg, protocol::ProtocolError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::task::spawn_local(async move {
        loop {
            let m = protocol::read_msg(&mut rd).await;
            let failed = m.is_err();
            if tx.send(m).is_err() || failed {
                return;
            }
        }
    });
    (rx, task)
}

/// Aborts the reader task when the stream ends, whichever way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn stopped(core: &ShardCore) -> bool {
    core.retired.get()
        || core.node.is_stopping()
        || core.is_poisoned()
        || !core.node.replication().is_primary()
}

/// Sleeps `d` unless the shard stops first; true when it stopped.
async fn pause(core: &ShardCore, d: Duration) -> bool {
    let mut role = core.node.replication().subscribe();
    let mut shutdown = core.node.shutdown_signal();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = role.changed() => {}
        _ = shutdown.changed() => {}
    }
    stopped(core)
}

/// Streams shard `core.id`'s log to the peer for as long as this incarnation of the shard runs
/// and the node is primary.
pub(crate) async fn run_shard(core: Rc<ShardCore>) {
    let link = core.node.replication().link(core.id);
    let what = format!("shard {}", core.id);
    reconnecting(&core, link, &what, || stream_shard(&core, link)).await;
}

/// Streams the metadata state to the peer: the whole state on connect and after every change.
/// Runs on shard 0's thread for as long as that incarnation of the shard runs.
pub(crate) async fn run_meta(core: Rc<ShardCore>) {
    let link = core.node.replication().meta_link();
    reconnecting(&core, link, "metadata", || stream_meta(&core, link)).await;
}

/// Runs `stream` again and again, with backoff, until the shard stops or the peer fences this
/// node; keeps `link` up to date and logs each new kind of interruption once.
async fn reconnecting<F, Fut>(core: &ShardCore, link: &Link, what: &str, mut stream: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SendError>>,
{
    let repl = core.node.replication();
    if !repl.streams() {
        return;
    }
    let mut delay = RETRY_MIN;
    let mut last_error = String::new();
    while !stopped(core) {
        match stream().await {
            Ok(()) => break,
            Err(SendError::Fenced(epoch)) => {
                link.set_down(Some(format!("fenced by epoch {epoch}")));
                if let Err(e) = repl.observe_epoch(epoch) {
                    tracing::error!(error = %e, "replication: recording the newer epoch failed");
                }
                break;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!(stream = what, error = %msg, "replication: stream to the peer interrupted; reconnecting");
                    last_error = msg.clone();
                }
                if link.connected.load(std::sync::atomic::Ordering::Acquire) {
                    delay = RETRY_MIN;
                }
                link.set_down(Some(msg));
            }
        }
        if pause(core, delay).await {
            break;
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
    link.set_down(None);
}

async fn stream_shard(core: &Rc<ShardCore>, link: &Link) -> Result<(), SendError> {
    let node = &core.node;
    let repl = node.replication();
    let log = &core.log;
    let (mut io, welcome) = handshake(repl, core.id as u16, node.shards()).await?;
    let Msg::Welcome {
        epoch: peer_epoch,
        first_offset: _,
        next_offset,
        last_epoch,
    } = welcome
    else {
        return Err(unexpected(&welcome));
    };
    if peer_epoch > repl.epoch() {
        return Err(SendError::Fenced(peer_epoch));
    }
    let plan = resume_point(
        next_offset,
        last_epoch,
        log.first_offset(),
        log.durable_offset(),
        |epoch| log.first_offset_above_epoch(epoch),
    );
    if let Some(to) = plan.truncate_to {
        tracing::warn!(
            shard = core.id,
            from = to,
            to = next_offset,
            "replication: the peer holds records this primary never had; truncating them"
        );
        protocol::write_msg(&mut io, &Msg::Truncate { to }).await?;
    }
    if let Some(base) = plan.reset_to {
        tracing::info!(
            shard = core.id,
            base,
            "replication: the peer starts over from this primary's first retained record"
        );
        protocol::write_msg(&mut io, &Msg::Reset { base }).await?;
    }
    let start = plan.start;
    link.set_acked(start);
    link.set_up();
    tracing::info!(
        shard = core.id,
        from = start,
        "replication: streaming to the peer"
    );

    let (rd, mut wr) = tokio::io::split(io);
    let (mut from_peer, reader) = spawn_reader(rd);
    let _abort = AbortOnDrop(reader);
    let mut role = repl.subscribe();
    let mut records = log.reader(start);
    let mut sent = start;
    let mut acked = start;
    // (end offset, bytes) of each batch in flight.
    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
    let mut in_flight_bytes = 0usize;
    let mut last_ack = Instant::now();
    let mut last_send = Instant::now();
    let mut trimmed = 0u64;
    // One timer for the whole stream: a sleep re-created every turn of the loop would never
    // fire under steady traffic.
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    update_avg_frame(log, link);
    loop {
        if stopped(core) {
            return Ok(());
        }
        link.set_next(log.durable_offset());
        // Send what is durable, within the window.
        while in_flight_bytes < WINDOW_BYTES_MAX && sent < log.durable_offset() {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while bytes < BATCH_BYTES_MAX {
                match records.next() {
                    None => break,
                    Some(Ok(r)) => {
                        bytes += protocol::RECORD_OVERHEAD_BYTES + r.payload.len();
                        batch.push(WireRecord {
                            offset: r.offset,
                            epoch: r.epoch,
                            record_type: r.record_type,
                            payload: r.payload,
                        });
                    }
                    Some(Err(e)) => {
                        return Err(SendError::Other(format!("reading the log: {e}")));
                    }
                }
            }
            let Some(last) = batch.last() else { break };
            sent = last.offset + 1;
            let msg = Msg::Records { records: batch };
            wr.write_all(&msg.encode()).await?;
            in_flight.push_back((sent, bytes));
            in_flight_bytes += bytes;
            last_send = Instant::now();
        }
        wr.flush().await?;
        let window_open = in_flight_bytes < WINDOW_BYTES_MAX;
        tokio::select! {
            m = from_peer.recv() => match m {
                Some(Ok(Msg::Ack { next_offset })) => {
                    if next_offset > sent {
                        return Err(SendError::Other(format!(
                            "the peer acknowledged {next_offset}, past what was sent ({sent})"
                        )));
                    }
                    acked = acked.max(next_offset);
                    while let Some(&(end, bytes)) = in_flight.front() {
                        if end > acked {
                            break;
                        }
                        in_flight.pop_front();
                        in_flight_bytes -= bytes;
                    }
                    link.set_acked(acked);
                    last_ack = Instant::now();
                }
                Some(Ok(Msg::Refuse { kind: RefuseKind::Fenced, epoch, .. })) => {
                    return Err(SendError::Fenced(epoch));
                }
                Some(Ok(Msg::Refuse { reason, .. })) => return Err(SendError::Refused(reason)),
                Some(Ok(other)) => return Err(unexpected(&other)),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SendError::Other("the peer closed the connection".into())),
            },
            r = log.wait_durable_beyond(sent), if window_open => {
                if let Err(e) = r {
                    if stopped(core) {
                        return Ok(());
                    }
                    return Err(SendError::Other(format!("the log stopped: {e}")));
                }
            }
            _ = tick.tick() => {
                if acked < sent && last_ack.elapsed() > repl.config().peer_timeout {
                    return Err(SendError::Other(format!(
                        "the peer stopped acknowledging ({} records unacknowledged)",
                        sent - acked
                    )));
                }
                if last_send.elapsed() >= HEARTBEAT {
                    wr.write_all(&Msg::Ping.encode()).await?;
                    last_send = Instant::now();
                }
                let first = log.first_offset();
                if first > trimmed && first <= acked {
                    wr.write_all(&Msg::Trim { below: first }.encode()).await?;
                    trimmed = first;
                }
                update_avg_frame(log, link);
            }
            _ = role.changed() => {}
        }
    }
}

/// How a replica's copy is brought in line before streaming resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Cut the copy's records from this offset on (the primary never had them).
    pub truncate_to: Option<u64>,
    /// Drop the copy and start it over at this offset (the primary's first retained record).
    pub reset_to: Option<u64>,
    /// The first record to send.
    pub start: u64,
}

/// Compares the replica's copy (`replica_next`, the epoch of its last record) with this
/// primary's log (`first..end`, and `end_of_epoch(e)`: the first offset whose epoch is above
/// `e`, or `end`). The copy agrees with the primary up to where its last epoch ends here —
/// records of that epoch past that point were written by a primary that lost its place (the
/// same rule as Kafka's leader epochs) — and it must not start before the primary's first
/// retained record, or hold nothing while the primary holds records.
pub(crate) fn resume_point(
    replica_next: u64,
    replica_last_epoch: Option<u32>,
    first: u64,
    end: u64,
    end_of_epoch: impl Fn(u32) -> u64,
) -> Resume {
    let mut start = replica_next;
    if let Some(last) = replica_last_epoch {
        start = start.min(end_of_epoch(last));
    }
    start = start.min(end);
    let truncate_to = (start < replica_next).then_some(start);
    let reset_to =
        (start < first || (replica_last_epoch.is_none() && start != first)).then_some(first);
    Resume {
        truncate_to,
        reset_to,
        start: reset_to.unwrap_or(start),
    }
}

/// The average frame size of the retained log, for the byte-lag estimate.
fn update_avg_frame(log: &hookrelay_log::Log, link: &Link) {
    let (bytes, records) = log.segments().iter().fold((0u64, 0u64), |(b, r), s| {
        (
            b + s.bytes,
            r + s.next_offset.saturating_sub(s.first_offset),
        )
    });
    if let Some(avg) = bytes.checked_div(records) {
        link.set_avg_frame_bytes(avg);
    }
}

async fn stream_meta(core: &Rc<ShardCore>, link: &Link) -> Result<(), SendError> {
    let node = &core.node;
    let repl = node.replication();
    let (io, welcome) = handshake(repl, protocol::META_STREAM, node.shards()).await?;
    if let Msg::Welcome { epoch, .. } = welcome
        && epoch > repl.epoch()
    {
        return Err(SendError::Fenced(epoch));
    }
    link.set_up();
    let (rd, mut wr) = tokio::io::split(io);
    let (mut from_peer, reader) = spawn_reader(rd);
    let _abort = AbortOnDrop(reader);
    let mut changes = node.meta().subscribe();
    let mut role = repl.subscribe();
    let mut sent = 0u64;
    let mut dirty = true;
    let mut last_ack = Instant::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if stopped(core) {
            return Ok(());
        }
        if dirty {
            dirty = false;
            changes.borrow_and_update();
            let state = Bytes::from(node.meta().export());
            wr.write_all(&Msg::MetaState { state }.encode()).await?;
            wr.flush().await?;
            sent += 1;
        }
        tokio::select! {
            m = from_peer.recv() => match m {
                Some(Ok(Msg::Ack { next_offset })) => {
                    link.set_acked(next_offset);
                    link.set_next(sent);
                    last_ack = Instant::now();
                }
                Some(Ok(Msg::Refuse { kind: RefuseKind::Fenced, epoch, .. })) => {
                    return Err(SendError::Fenced(epoch));
                }
                Some(Ok(Msg::Refuse { reason, .. })) => return Err(SendError::Refused(reason)),
                Some(Ok(other)) => return Err(unexpected(&other)),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(SendError::Other("the peer closed the connection".into())),
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(META_DEBOUNCE).await;
                dirty = true;
            }
            _ = tick.tick() => {
                if last_ack.elapsed() > repl.config().peer_timeout + HEARTBEAT {
                    return Err(SendError::Other("the peer stopped acknowledging".into()));
                }
                wr.write_all(&Msg::Ping.encode()).await?;
                wr.flush().await?;
            }
            _ = role.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `resume_point` against a primary whose log holds epoch 0 for 0..100 and epoch 2 for
    /// 100..150, retained from `first` on.
    fn resume(first: u64, replica_next: u64, last_epoch: Option<u32>) -> Resume {
        let end = 150;
        let end_of_epoch = |e: u32| {
            let boundary = if e < 2 { 100 } else { end };
            boundary.max(first).min(end)
        };
        resume_point(replica_next, last_epoch, first, end, end_of_epoch)
    }

    fn plan(truncate_to: Option<u64>, reset_to: Option<u64>, start: u64) -> Resume {
        Resume {
            truncate_to,
            reset_to,
            start,
        }
    }

    #[test]
    fn an_up_to_date_or_lagging_copy_resumes_where_it_stopped() {
        assert_eq!(resume(0, 150, Some(2)), plan(None, None, 150));
        assert_eq!(resume(0, 120, Some(2)), plan(None, None, 120));
        assert_eq!(resume(0, 60, Some(0)), plan(None, None, 60));
    }

    #[test]
    fn a_former_primary_loses_the_suffix_of_its_old_epoch() {
        // It wrote 100..130 in epoch 0 after the new primary took over at 100.
        assert_eq!(resume(0, 130, Some(0)), plan(Some(100), None, 100));
        // Ahead of the primary in the current epoch (cannot happen, but never send past end).
        assert_eq!(resume(0, 170, Some(2)), plan(Some(150), None, 150));
    }

    #[test]
    fn an_empty_or_too_old_copy_starts_over_at_the_first_retained_record() {
        assert_eq!(resume(40, 0, None), plan(None, Some(40), 40));
        assert_eq!(resume(40, 30, Some(0)), plan(None, Some(40), 40));
        // An empty copy positioned elsewhere is moved too.
        assert_eq!(resume(40, 90, None), plan(None, Some(40), 40));
        // An empty copy at the primary's first record just starts.
        assert_eq!(resume(40, 40, None), plan(None, None, 40));
        assert_eq!(resume(0, 0, None), plan(None, None, 0));
    }

    #[test]
    fn a_divergent_copy_older_than_the_retained_log_is_cut_then_reset() {
        // The primary retains only epoch-2 records from 120; the copy ends at 130 in epoch 0.
        assert_eq!(resume(120, 130, Some(0)), plan(Some(120), None, 120));
    }
}
