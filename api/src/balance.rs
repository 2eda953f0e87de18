//! Connection balancing (`server.balance_connections`, off by default): a shard much busier than
//! another hands some of its keep-alive connections over to it, between two requests.
//!
//! Why: an endpoint belongs to one shard (Architecture Invariant 3), which does the engine work
//! of every request for it, whichever shard's socket the request came in on. With one hot
//! endpoint (one Stripe account: the usual case) that shard's core is full while the others are
//! half idle, and SO_REUSEPORT spreads connections evenly whatever the load. Moving the HTTP
//! work of some connections (reading, parsing, verifying, answering) to an idle shard evens the
//! cores out; the engine work stays where it belongs.
//!
//! How:
//! - Each shard samples its thread's CPU time every [`SAMPLE_INTERVAL`]
//!   (`CLOCK_THREAD_CPUTIME_ID`) and publishes a smoothed busy figure.
//! - After accepting an ingest request (2xx: its body was read whole), a shard that is busy
//!   (50 % of its core by default) and busier than the least busy shard by a margin (15
//!   points) marks the connection to move there ([`Policy`]): at most
//!   `max(1, connections / 32)` per interval, so the figures catch up between moves.
//! - The move happens between two requests. Once the answer is flushed, the connection's IO
//!   reports end-of-stream to hyper at its next read, if the socket has no unread byte; hyper
//!   then ends the connection cleanly (its read buffer is empty on that path) without closing
//!   the socket. The stream goes to the other shard's accept loop, which serves it from there.
//!   The sender sees one keep-alive connection throughout.
//! - When the other shard's inbox is full, the connection is served again where it is.
//!
//! The same sampler measures how late each shard's timer fires (`hookrelay_shard_lag_seconds`):
//! the time a shard could not poll its tasks, whether it was in a blocking call, a page fault
//! that read the disk, or waiting for a CPU. A stall of the ACK tail shows there when it is the
//! shard's, and in `hookrelay_log_commit_seconds` when it is the disk's.
//!
//! A sender that pipelines (sends its next request before the answer to the last one came
//! back) leaves bytes in the socket or in hyper's buffer, so its connection is not moved at
//! that point.
//!
//! The cost: every request that comes in on a shard other than its endpoint's owner is handed
//! to the owner and its answer handed back, so evening the HTTP work out hands more requests
//! between shards. On the 2-core bench machine, where the load generator shares the cores, the
//! two costs cancel out (BENCHMARKS.md); hence off by default.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay_engine::metrics::histogram::{LAG_BOUNDS_US, PromHistogram};
use hookrelay_engine::metrics::prometheus::histogram;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How often each shard measures its thread's CPU time.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// When a shard hands connections over (`server.balance_*`).
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub enabled: bool,
    /// A shard below this share of its core (in ‰) keeps its connections.
    pub busy_min: u32,
    /// How much busier (in ‰ of a core) a shard must be than the least busy one to hand over.
    pub margin: u32,
}

impl Policy {
    /// From `server.balance_connections`, `server.balance_busy_min_percent` and
    /// `server.balance_margin_percent`.
    pub fn from_percent(enabled: bool, busy_min: u64, margin: u64) -> Policy {
        let permille = |p: u64| (p.min(100) * 10) as u32;
        Policy {
            enabled,
            busy_min: permille(busy_min),
            margin: permille(margin),
        }
    }
}
/// Moves per interval: one per this many open connections of the shard (at least one).
const CONNECTIONS_PER_MOVE: usize = 32;
/// Connections in flight to one shard's accept loop.
const INBOX_CAPACITY: usize = 1024;

/// A connection on its way to another shard.
pub struct Moved {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
}

/// What every shard shares: the busy figures, the inboxes and the counters.
pub struct Balancer {
    policy: Policy,
    /// Each shard's smoothed share of its core, in ‰.
    busy: Box<[AtomicU32]>,
    /// Connections each shard handed to another.
    moved_out: Box<[AtomicU64]>,
    /// How late every shard's sampling timer fired (each shard adds ten values a second).
    lag: Mutex<PromHistogram>,
    inboxes: Box<[mpsc::Sender<Moved>]>,
    receivers: Mutex<Vec<Option<mpsc::Receiver<Moved>>>>,
}

impl Balancer {
    /// One balancer for `shards` shards.
    pub fn new(shards: usize, policy: Policy) -> Arc<Balancer> {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
                (tx, Some(rx))
            })
            .unzip();
        Arc::new(Balancer {
            policy,
            busy: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            moved_out: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            lag: Mutex::new(PromHistogram::new(LAG_BOUNDS_US)),
            inboxes: inboxes.into(),
            receivers: Mutex::new(receivers),
        })
    }

    /// The connections handed to `shard`, once.
    pub fn take_inbox(&self, shard: usize) -> Option<mpsc::Receiver<Moved>> {
        self.receivers.lock().ok()?.get_mut(shard)?.take()
    }

    /// Counts one sampling tick that fired `lag` after it was due.
    fn record_lag(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record_us(us);
    }

    /// Appends the balancer's series to a Prometheus exposition.
    pub fn render_prometheus(&self, out: &mut String) {
        let lag = self
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        histogram(
            out,
            "hookrelay_shard_lag_seconds",
            "How late each shard's thread ran its 100 ms timer: time it could not poll its tasks (a blocking call, a page fault that read the disk, waiting for a CPU). One count per shard per 100 ms.",
            &lag,
        );
        out.push_str(
            "# HELP hookrelay_shard_busy_ratio Share of its core each shard's thread used \
             lately (smoothed over 100 ms samples).\n# TYPE hookrelay_shard_busy_ratio gauge\n",
        );
        for (i, b) in self.busy.iter().enumerate() {
            let ratio = f64::from(b.load(Ordering::Relaxed)) / 1000.0;
            let _ = writeln!(out, "hookrelay_shard_busy_ratio{{shard=\"{i}\"}} {ratio}");
        }
        out.push_str(
            "# HELP hookrelay_connections_moved_total Keep-alive connections a shard handed to \
             a less busy shard since the process started.\n\
             # TYPE hookrelay_connections_moved_total counter\n",
        );
        for (i, n) in self.moved_out.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "hookrelay_connections_moved_total{{shard=\"{i}\"}} {n}"
            );
        }
    }
}

/// The shard a connection of shard `me` should move to, given every shard's busy figure (‰):
/// the least busy one, when `me` is busy and clearly busier than it.
pub fn pick_target(policy: &Policy, me: usize, busy: &[u32]) -> Option<usize> {
    let mine = *busy.get(me)?;
    if !policy.enabled || mine < policy.busy_min {
        return None;
    }
    let (target, least) = busy
        .iter()
        .copied()
        .enumerate()
        .filter(|&(i, _)| i != me)
        .min_by_key(|&(_, b)| b)?;
    (mine >= least.saturating_add(policy.margin)).then_some(target)
}

/// One shard's side of the balancer.
pub struct ShardBalance {
    shard: usize,
    shared: Arc<Balancer>,
    connections: Cell<usize>,
    /// Moves left in this interval.
    budget: Cell<usize>,
}

impl ShardBalance {
    pub fn new(shard: usize, shared: Arc<Balancer>) -> Rc<ShardBalance> {
        Rc::new(ShardBalance {
            shard,
            shared,
            connections: Cell::new(0),
            budget: Cell::new(0),
        })
    }

    pub fn shared(&self) -> &Arc<Balancer> {
        &self.shared
    }

    /// Counts an open connection of this shard until the guard drops.
    pub fn connection(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        ConnectionGuard(self.clone())
    }

    /// Measures this thread's CPU time every [`SAMPLE_INTERVAL`] and refills the move budget.
    /// Run it on the shard's own thread. It runs with balancing off too: the busy figures are
    /// what tells an operator that one shard is the bottleneck.
    pub async fn sample(self: Rc<Self>) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut wall, mut cpu) = (Instant::now(), thread_cpu_time());
        loop {
            let due = ticks.tick().await;
            let (now, used) = (Instant::now(), thread_cpu_time());
            self.shared
                .record_lag(now.saturating_duration_since(due.into_std()));
            let elapsed = now.duration_since(wall).as_nanos().max(1);
            let share = (used.saturating_sub(cpu).as_nanos() * 1000 / elapsed).min(1000) as u32;
            (wall, cpu) = (now, used);
            let slot = &self.shared.busy[self.shard];
            // Half the last figure, half the new sample: steady, and still quick to follow.
            slot.store(
                (slot.load(Ordering::Relaxed) + share) / 2,
                Ordering::Relaxed,
            );
            self.budget
                .set((self.connections.get() / CONNECTIONS_PER_MOVE).max(1));
        }
    }

    /// After an answer: the shard this connection should move to, if any (takes one move from
    /// this interval's budget).
    pub fn want_move(&self) -> Option<usize> {
        if !self.shared.policy.enabled || self.budget.get() == 0 {
            return None;
        }
        let busy: Vec<u32> = self
            .shared
            .busy
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let target = pick_target(&self.shared.policy, self.shard, &busy)?;
        self.budget.set(self.budget.get() - 1);
        Some(target)
    }

    /// Hands a connection to shard `to`; gives it back when that shard's inbox is full or gone.
    pub fn send(&self, to: usize, moved: Moved) -> Result<(), Moved> {
        let inbox = &self.shared.inboxes[to];
        match inbox.try_send(moved) {
            Ok(()) => {
                self.shared.moved_out[self.shard].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                Err(m)
            }
        }
    }
}

/// An open connection of a shard (see [`ShardBalance::connection`]).
pub struct ConnectionGuard(Rc<ShardBalance>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let n = &self.0.connections;
        n.set(n.get().saturating_sub(1));
    }
}

/// The calling thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Where a connection stands with respect to moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    Stay,
    /// Move to this shard once the answer is flushed.
    AfterFlush(usize),
    /// The answer is flushed: report end-of-stream at the next read, unless bytes wait.
    AtNextRead(usize),
    /// End-of-stream was reported; hyper is ending the connection.
    Left(usize),
}

/// A connection's move, shared by its service (which asks for it) and its IO (which carries it
/// out).
#[derive(Clone)]
pub struct MoveSignal(Rc<Cell<Leave>>);

impl MoveSignal {
    pub fn new() -> MoveSignal {
        MoveSignal(Rc::new(Cell::new(Leave::Stay)))
    }

    /// Call when the service gets a request, before anything else. A move still pending then
    /// means hyper had read this request ahead (a pipelining sender): the boundary has passed,
    /// and end-of-stream now would cut this request, so the move is given up.
    pub fn on_request(&self) {
        if let Leave::AtNextRead(_) = self.0.get() {
            self.0.set(Leave::Stay);
        }
    }

    /// Asks to move the connection to shard `to` once this request's answer is flushed; the
    /// request's body must have been read whole.
    pub fn move_after_answer(&self, to: usize) {
        if self.0.get() == Leave::Stay {
            self.0.set(Leave::AfterFlush(to));
        }
    }

    /// Whether a move is asked for or under way.
    pub fn is_moving(&self) -> bool {
        self.0.get() != Leave::Stay
    }
}

impl Default for MoveSignal {
    fn default() -> Self {
        MoveSignal::new()
    }
}

/// A shard's connection IO that can report end-of-stream to hyper between two requests, so
/// that hyper lets go of a socket that is moving to another shard.
pub struct MovableIo {
    inner: TokioIo<TcpStream>,
    leave: Rc<Cell<Leave>>,
}

impl MovableIo {
    pub fn new(stream: TcpStream, signal: &MoveSignal) -> MovableIo {
        MovableIo {
            inner: TokioIo::new(stream),
            leave: signal.0.clone(),
        }
    }

    pub fn into_inner(self) -> TcpStream {
        self.inner.into_inner()
    }
}

/// Serves HTTP/1.1 on `stream` until the connection ends (`Ok(None)`), or until it reaches a
/// point between two requests where it should move: `service` calls [`MoveSignal::on_request`]
/// on each request and [`MoveSignal::move_after_answer`] to ask for a move, and this returns
/// that shard and the stream, with no byte read ahead.
pub async fn serve_movable<S>(
    builder: &http1::Builder,
    stream: TcpStream,
    service: S,
    signal: &MoveSignal,
) -> hyper::Result<Option<(usize, TcpStream)>>
where
    S: HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(MovableIo::new(stream, signal), service);
    let parts = conn.without_shutdown().await?;
    Ok(match signal.0.get() {
        // hyper ends a connection cleanly at end-of-stream only with nothing read ahead.
        Leave::Left(to) if parts.read_buf.is_empty() => Some((to, parts.io.into_inner())),
        _ => None,
    })
}

/// Bytes the kernel holds unread on the socket (0 when it cannot tell, which only makes a move
/// fail later on the other shard as a read of those bytes: nothing is lost either way).
fn unread_bytes(stream: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

impl Read for MovableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.leave.get() {
            Leave::AtNextRead(to) if unread_bytes(self.inner.inner()) == 0 => {
                self.leave.set(Leave::Left(to));
                return Poll::Ready(Ok(()));
            }
            // The sender already sent more: not a boundary we can see, stay.
            Leave::AtNextRead(_) => self.leave.set(Leave::Stay),
            Leave::Left(_) => return Poll::Ready(Ok(())),
            Leave::Stay | Leave::AfterFlush(_) => {}
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Write for MovableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let (Poll::Ready(Ok(())), Leave::AfterFlush(to)) = (&flushed, self.leave.get()) {
            self.leave.set(Leave::AtNextRead(to));
            // hyper may be parked on the socket's readiness, and the sender's next request would
            // then come first: have it read again now, while the socket is empty.
            cx.waker().wake_by_ref();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests;
