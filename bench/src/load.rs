//! The load generator: signed ingest requests over HTTP/1.1 keep-alive connections, either
//! open loop at a fixed rate or closed loop for maximum throughput.
//!
//! Open loop, without coordinated omission (as wrk2): request `i` has an intended send time
//! `start + i / rate` ([`Schedule`]). A pacer thread releases one permit per request when its
//! time comes; any idle connection takes the next permit and the next request number. When
//! every connection is busy (the server is slow), permits pile up and requests go out late,
//! and their latency is still measured from the intended time ([`latency_from_intended`]), so
//! a stall shows up in the histogram as the server's senders would feel it, not as one slow
//! sample. Requests still owed when the drain time after the run is over count as `unsent`.
//!
//! Cheap by construction, since the generator shares the machine with the server: one
//! current-thread runtime per generator thread (no work stealing), a hand-rolled HTTP/1.1
//! client (`http1.rs`), prebuilt request bytes signed from a per-second HMAC state
//! (`request.rs`, `sign.rs`), one histogram per connection merged at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::hiccup::{Hiccups, Probe};
use crate::hist::LatencyHist;
use crate::http1::{self, Conn};
use crate::request::{RequestFactory, SigningCache};

/// Time given to the workers to connect before the first request is due.
const START_DELAY: Duration = Duration::from_millis(200);
/// The pacer never sleeps less than this (batching permits at very high rates).
const PACER_SLEEP_MIN: Duration = Duration::from_micros(50);
/// After a failed connect, a closed-loop worker waits this long before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// A fixed rate in requests per second, whatever the answers.
    Open { rate: u64 },
    /// Each connection sends its next request as soon as the previous one is answered.
    Closed,
}

/// A run's settings.
#[derive(Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    pub factory: Arc<RequestFactory>,
    pub connections: usize,
    /// Generator threads (each a current-thread runtime).
    pub threads: usize,
    pub pace: Pace,
    /// Length of the run, warm-up included.
    pub duration: Duration,
    /// The first part of the run, left out of the figures.
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Open loop: how long after the end requests still owed may go out.
    pub drain: Duration,
    /// Closed loop: stop after this many requests (the run still ends at `duration`).
    pub max_requests: Option<u64>,
    /// Keep `(delivery_id, intended send time)` of every 2xx answer.
    pub record_acks: bool,
    /// Print a progress line to stderr every this often.
    pub progress: Option<Duration>,
}

/// One acknowledged ingest request.
#[derive(Clone, Debug)]
pub struct Ack {
    pub delivery_id: Box<str>,
    /// Intended send time (open loop) or send time (closed loop).
    pub sent: Instant,
}

/// What a run measured. Figures are for the measured window (after the warm-up).
pub struct LoadResult {
    pub pace: Pace,
    pub connections: usize,
    pub body_bytes: usize,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of 2xx answers.
    pub ack: LatencyHist,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by cause (`connect_error`, `timeout`, `io_error`, `unsent`).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests sent in the whole run, warm-up included.
    pub sent_total: u64,
    /// 2xx answers in the whole run, warm-up included.
    pub ok_total: u64,
    /// Every 2xx answer of the run when `record_acks`.
    pub acks: Vec<Ack>,
    /// When the first request was due.
    pub started: Instant,
    /// The machine's own stalls over the measured window ([`crate::hiccup`]).
    pub hiccups: Hiccups,
}

impl LoadResult {
    /// 2xx answers in the measured window.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// Non-2xx answers and requests without an answer, in the measured window.
    pub fn failed(&self) -> u64 {
        let non_2xx: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum();
        non_2xx + self.errors.values().sum::<u64>()
    }

    /// 2xx answers per second in the measured window.
    pub fn ok_per_s(&self) -> f64 {
        self.ok() as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// `503 x12, timeout x3` or `none`.
    pub fn errors_line(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("{s} x{n}"))
            .collect();
        parts.extend(self.errors.iter().map(|(e, n)| format!("{e} x{n}")));
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// A few lines for a human.
    pub fn describe(&self) -> String {
        let pace = match self.pace {
            Pace::Open { rate } => format!("open loop {rate} req/s"),
            Pace::Closed => "closed loop".to_string(),
        };
        format!(
            "{pace}, {} connections, {} B bodies, {:.1} s measured ({} sent in all, {} 2xx)\n  2xx: {} ({:.0}/s)\n  latency: {}\n  errors: {}\n  host: {}",
            self.connections,
            self.body_bytes,
            self.window.as_secs_f64(),
            self.sent_total,
            self.ok_total,
            self.ok(),
            self.ok_per_s(),
            self.ack.summary().line(),
            self.errors_line(),
            self.hiccups.summary().line()
        )
    }
}

/// The open-loop timetable: request `i` is due `ceil(i * 1e9 / rate)` ns after the start.
/// (Rounding up makes [`Schedule::due`] and [`Schedule::offset`] agree exactly.)
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    rate: u64,
}

impl Schedule {
    pub fn new(rate: u64) -> Self {
        assert!(rate > 0, "an open-loop rate must be positive");
        Self { rate }
    }

    /// When request `i` is due, after the start.
    pub fn offset(&self, i: u64) -> Duration {
        let ns = (i as u128 * 1_000_000_000).div_ceil(self.rate as u128);
        Duration::from_nanos(ns as u64)
    }

    /// How many requests are due `elapsed` after the start (those with `offset(i) <= elapsed`).
    pub fn due(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() * self.rate as u128 / 1_000_000_000) as u64 + 1
    }

    /// How many requests a run of `duration` owes (those with `offset(i) < duration`).
    pub fn total(&self, duration: Duration) -> u64 {
        if duration.is_zero() {
            0
        } else {
            self.due(duration - Duration::from_nanos(1))
        }
    }
}

/// The latency of a request: from when it should have been sent, not from when it was.
pub fn latency_from_intended(intended: Instant, answered: Instant) -> Duration {
    answered.saturating_duration_since(intended)
}

/// What the connections share.
struct Shared {
    cfg: LoadConfig,
    start: Instant,
    end: Instant,
    measure_from: Instant,
    /// Open loop: one permit per due request.
    permits: Semaphore,
    /// Next request number.
    next: AtomicU64,
    /// Answers and failures so far (for progress lines).
    done: AtomicU64,
}

/// One connection's (then one thread's, then the run's) tallies.
#[derive(Default)]
struct Tally {
    ack: LatencyHist,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    sent_total: u64,
    ok_total: u64,
    acks: Vec<Ack>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ack.merge(&other.ack);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.sent_total += other.sent_total;
        self.ok_total += other.ok_total;
        self.acks.extend(other.acks);
    }
}

/// Runs the load; blocks the calling thread until the run (and its drain) is over.
pub fn run(cfg: LoadConfig) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(cfg.connections > 0, "at least one connection");
    anyhow::ensure!(cfg.threads > 0, "at least one generator thread");
    anyhow::ensure!(
        cfg.warmup < cfg.duration,
        "the warm-up must be shorter than the run"
    );
    let start = Instant::now() + START_DELAY;
    let shared = Arc::new(Shared {
        start,
        end: start + cfg.duration,
        measure_from: start + cfg.warmup,
        permits: Semaphore::new(0),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        cfg: cfg.clone(),
    });
    let probe = Probe::start(shared.measure_from, shared.end)?;
    let threads = cfg.threads.min(cfg.connections);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns = (t..cfg.connections).step_by(threads).count();
        let shared = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-gen-{t}"))
                .spawn(move || run_thread(shared, conns))?,
        );
    }
    let pacer = match cfg.pace {
        Pace::Open { rate } => {
            let shared = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("bench-pacer".into())
                    .spawn(move || pace(&shared, Schedule::new(rate)))?,
            )
        }
        Pace::Closed => None,
    };
    if let Some(every) = cfg.progress {
        let mut last = 0;
        let mut at = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if at.elapsed() >= every {
                let done = shared.done.load(Ordering::Relaxed);
                let secs = at.elapsed().as_secs_f64();
                eprintln!(
                    "  [{:>5.0} s] {done} answered, {:.0}/s",
                    start.elapsed().as_secs_f64(),
                    (done - last) as f64 / secs
                );
                last = done;
                at = Instant::now();
            }
        }
    }
    let mut total = Tally::default();
    for h in handles {
        let tally = h
            .join()
            .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        total.merge(tally);
    }
    if let Some(p) = pacer {
        let unsent = p
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer panicked"))?;
        if unsent > 0 {
            *total.errors.entry("unsent").or_default() += unsent;
        }
    }
    let hiccups = probe.finish()?;
    Ok(LoadResult {
        pace: cfg.pace,
        connections: cfg.connections,
        body_bytes: cfg.factory.body_bytes(),
        window: cfg.duration - cfg.warmup,
        ack: total.ack,
        statuses: total.statuses,
        errors: total.errors,
        sent_total: total.sent_total,
        ok_total: total.ok_total,
        acks: total.acks,
        started: start,
        hiccups,
    })
}

/// The pacer: releases permits as requests come due, then gives the late ones `drain` to go
/// out, then closes the permits. Returns how many requests were never sent.
fn pace(shared: &Shared, schedule: Schedule) -> u64 {
    set_fine_timer_slack();
    let total = schedule.total(shared.cfg.duration);
    let mut released = 0u64;
    while released < total {
        let now = Instant::now();
        if now >= shared.start {
            let due = schedule.due(now - shared.start).min(total);
            if due > released {
                shared.permits.add_permits((due - released) as usize);
                released = due;
            }
        }
        if released >= total {
            break;
        }
        let next = shared.start + schedule.offset(released);
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .max(PACER_SLEEP_MIN),
        );
    }
    let deadline = shared.end + shared.cfg.drain;
    while shared.next.load(Ordering::Acquire) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    shared.permits.close();
    total.saturating_sub(shared.next.load(Ordering::Acquire))
}

/// Asks the kernel to wake the pacer close to when it asked (the default slack is 50 µs).
pub fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn run_thread(shared: Arc<Shared>, conns: usize) -> anyhow::Result<Tally> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conns {
            set.spawn(connection(shared.clone()));
        }
        let mut tally = Tally::default();
        while let Some(t) = set.join_next().await {
            tally.merge(t?);
        }
        Ok(tally)
    })
}

/// One keep-alive connection's loop.
async fn connection(shared: Arc<Shared>) -> Tally {
    let cfg = &shared.cfg;
    let mut tally = Tally::default();
    let mut conn = Conn::connect(cfg.addr).await.ok();
    let mut cache = SigningCache::default();
    let mut buf = Vec::with_capacity(cfg.factory.body_bytes() + 1024);
    if cfg.pace == Pace::Closed {
        tokio::time::sleep_until(shared.start.into()).await;
    }
    loop {
        // Which request, and when it should have gone out.
        let (seq, intended) = match cfg.pace {
            Pace::Open { rate } => {
                let Ok(permit) = shared.permits.acquire().await else {
                    break;
                };
                permit.forget();
                let seq = shared.next.fetch_add(1, Ordering::AcqRel);
                (seq, shared.start + Schedule::new(rate).offset(seq))
            }
            Pace::Closed => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                let seq = shared.next.fetch_add(1, Ordering::AcqRel);
                if cfg.max_requests.is_some_and(|max| seq >= max) {
                    break;
                }
                (seq, now)
            }
        };
        let measured = intended >= shared.measure_from;
        tally.sent_total += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(cfg.addr).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    fail(&mut tally, measured, "connect_error");
                    if cfg.pace == Pace::Closed {
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        cfg.factory.build(seq, &mut cache, &mut buf);
        let outcome = tokio::time::timeout(cfg.timeout, c.round_trip(&buf)).await;
        let answered = Instant::now();
        shared.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(Ok(resp)) => {
                let ok = (200..300).contains(&resp.status);
                if ok {
                    tally.ok_total += 1;
                    if cfg.record_acks
                        && let Some(id) = http1::delivery_id(c.body())
                    {
                        tally.acks.push(Ack {
                            delivery_id: id.into(),
                            sent: intended,
                        });
                    }
                }
                if measured {
                    if ok {
                        tally.ack.record(latency_from_intended(intended, answered));
                    }
                    *tally.statuses.entry(resp.status).or_default() += 1;
                }
                if resp.close {
                    conn = None;
                }
            }
            Ok(Err(_)) => {
                fail(&mut tally, measured, "io_error");
                conn = None;
            }
            Err(_) => {
                fail(&mut tally, measured, "timeout");
                conn = None;
            }
        }
    }
    tally
}

fn fail(tally: &mut Tally, measured: bool, cause: &'static str) {
    if measured {
        *tally.errors.entry(cause).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::BodyTemplate;
    use crate::request::Target;
    use crate::sign::{Mode, Signer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn intended_times_follow_the_rate() {
        let s = Schedule::new(1000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1500), Duration::from_millis(1500));
        let s = Schedule::new(3);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_334));
        assert_eq!(s.offset(3), Duration::from_secs(1));
    }

    #[test]
    fn due_counts_agree_with_offsets() {
        for rate in [1, 3, 7, 1000, 4999, 100_000] {
            let s = Schedule::new(rate);
            for elapsed_ns in [
                0u64,
                1,
                333_333_333,
                333_333_334,
                999_999_999,
                1_000_000_000,
                12_345_678_901,
            ] {
                let e = Duration::from_nanos(elapsed_ns);
                let due = s.due(e);
                assert!(s.offset(due - 1) <= e, "rate {rate} e {e:?}");
                assert!(s.offset(due) > e, "rate {rate} e {e:?}");
            }
            // A run of n seconds owes n * rate requests.
            assert_eq!(s.total(Duration::from_secs(10)), 10 * rate);
            assert_eq!(s.total(Duration::ZERO), 0);
        }
    }

    #[test]
    fn latency_counts_from_the_intended_time() {
        let intended = Instant::now();
        let sent_late = intended + Duration::from_millis(300);
        let answered = sent_late + Duration::from_millis(2);
        // The 300 ms the request waited for a free connection are part of its latency.
        assert_eq!(
            latency_from_intended(intended, answered),
            Duration::from_millis(302)
        );
        assert_eq!(latency_from_intended(answered, intended), Duration::ZERO);
    }

    /// A server that answers 202 at once, except that it stalls `stall` on request number
    /// `stall_at`. Counts the requests it answered.
    async fn stalling_server(stall_at: u64, stall: Duration) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut have = 0;
                    loop {
                        // Read one whole request (head + Content-Length body).
                        let total = loop {
                            let mut headers = [httparse::EMPTY_HEADER; 16];
                            let mut req = httparse::Request::new(&mut headers);
                            if let Ok(httparse::Status::Complete(h)) = req.parse(&buf[..have]) {
                                let len: usize = req
                                    .headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                                    .unwrap_or(0);
                                if have >= h + len {
                                    break h + len;
                                }
                            }
                            match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => have += n,
                            }
                        };
                        buf.copy_within(total..have, 0);
                        have -= total;
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        if n == stall_at {
                            tokio::time::sleep(stall).await;
                        }
                        let body = r#"{"delivery_id":"dl_x","status":"queued"}"#;
                        let answer = format!(
                            "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn config(addr: SocketAddr, pace: Pace, duration: Duration) -> LoadConfig {
        let targets = vec![Target {
            path: "/ingest/ep_test".into(),
            signer: Signer::new(Mode::Stripe, "s").unwrap(),
        }];
        LoadConfig {
            addr,
            factory: Arc::new(RequestFactory::new(
                &addr.to_string(),
                targets,
                BodyTemplate::new(256).unwrap(),
                7,
            )),
            connections: 1,
            threads: 1,
            pace,
            duration,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            max_requests: None,
            record_acks: true,
            progress: None,
        }
    }

    /// The point of the open loop: one 500 ms stall on the only connection delays the ~500
    /// requests due during it, and each of them is charged from its intended time. A closed
    /// loop (or a generator measuring from the actual send) would show one slow request.
    #[test]
    fn a_stall_shows_in_every_request_due_during_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, count) = rt.block_on(stalling_server(100, Duration::from_millis(500)));
        let result = run(config(
            addr,
            Pace::Open { rate: 1000 },
            Duration::from_secs(2),
        ))
        .unwrap();
        assert_eq!(result.ok(), 2000, "{}", result.describe());
        assert_eq!(result.failed(), 0, "{}", result.describe());
        assert_eq!(count.load(Ordering::SeqCst), 2000);
        assert_eq!(result.acks.len(), 2000);
        let s = result.ack.summary();
        // About 500 of 2000 requests (25%) waited behind the stall, by 0 to 500 ms.
        assert!(s.p90_ms > 100.0, "p90 should carry the stall: {s:?}");
        assert!(
            s.max_ms >= 490.0,
            "the stalled request waited 500 ms: {s:?}"
        );
        assert!(s.p50_ms < 50.0, "most requests were not delayed: {s:?}");
    }

    #[test]
    fn an_open_loop_sends_at_the_rate_and_a_closed_loop_as_fast_as_answered() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, _) = rt.block_on(stalling_server(u64::MAX, Duration::ZERO));
        let mut cfg = config(addr, Pace::Open { rate: 500 }, Duration::from_secs(2));
        cfg.connections = 4;
        cfg.threads = 2;
        cfg.warmup = Duration::from_secs(1);
        let open = run(cfg.clone()).unwrap();
        // Only the second second is measured: 500 requests.
        assert_eq!(open.ok(), 500, "{}", open.describe());
        assert_eq!(open.ok_total, 1000);
        cfg.pace = Pace::Closed;
        let closed = run(cfg).unwrap();
        assert!(closed.ok() > 1000, "{}", closed.describe());
        assert_eq!(closed.failed(), 0);
    }

    #[test]
    fn requests_never_sent_count_as_unsent() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The 11th request stalls 3 s, longer than the run and its drain.
        let (addr, _) = rt.block_on(stalling_server(10, Duration::from_secs(3)));
        let mut cfg = config(addr, Pace::Open { rate: 100 }, Duration::from_secs(1));
        cfg.drain = Duration::from_millis(100);
        let r = run(cfg).unwrap();
        assert_eq!(r.ok(), 11, "{}", r.describe());
        assert_eq!(r.errors.get("unsent"), Some(&89), "{}", r.describe());
    }
}
