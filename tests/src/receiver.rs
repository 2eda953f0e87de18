//! A scriptable receiver: the HTTP server HookRelay forwards to in tests.
//!
//! It listens on `127.0.0.1:0`, records every request (method, path, headers, body, arrival time,
//! and how many requests were in flight at arrival, itself included) and answers each one by a
//! [`Script`]: a queue of [`Step`]s consumed in arrival order and then a default step, or a
//! closure. It keeps the highest concurrency it saw, which is how tests check `max_in_flight`.
//!
//! Everything is bounded: request bodies ([`Limits::body_bytes_max`], larger ones get 413 and are
//! recorded with an empty body), recorded requests ([`Limits::records_max`], later ones are
//! answered and counted but not stored), open connections ([`CONNECTIONS_MAX`]) and hangs
//! ([`HANG_MAX`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a `hang` step holds a request before giving up. Far longer than any test, but finite.
pub const HANG_MAX: Duration = Duration::from_secs(120);

/// Open connections beyond this are closed at once (a runaway sender must not exhaust the test).
pub const CONNECTIONS_MAX: usize = 4096;

/// Bounds on what one receiver keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub body_bytes_max: usize,
    pub records_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 16 << 20,
            records_max: 200_000,
        }
    }
}

/// How to answer one request.
#[derive(Clone, Debug)]
pub struct Step {
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Never answer (until [`HANG_MAX`] or the client goes away).
    pub hang: bool,
}

impl Step {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: Bytes::new(),
            hang: false,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::status(200)
        }
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Arrival index, from 0.
    pub n: usize,
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request head arrived.
    pub at: Instant,
    /// Requests in flight when this one arrived, itself included.
    pub concurrency: usize,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

type StepFn = dyn Fn(&RecordedRequest, usize) -> Step + Send + Sync;

/// How the receiver answers.
#[derive(Clone)]
pub enum Script {
    /// `steps` in arrival order, then `then` for every later request.
    Queue { steps: VecDeque<Step>, then: Step },
    /// A function of the request and its arrival index (from 0).
    Func(Arc<StepFn>),
}

impl Script {
    pub fn always(step: Step) -> Self {
        Self::Queue {
            steps: VecDeque::new(),
            then: step,
        }
    }

    pub fn queue(steps: impl IntoIterator<Item = Step>, then: Step) -> Self {
        Self::Queue {
            steps: steps.into_iter().collect(),
            then,
        }
    }

    pub fn func(f: impl Fn(&RecordedRequest, usize) -> Step + Send + Sync + 'static) -> Self {
        Self::Func(Arc::new(f))
    }

    fn next(&mut self, request: &RecordedRequest) -> Step {
        match self {
            Self::Queue { steps, then } => steps.pop_front().unwrap_or_else(|| then.clone()),
            Self::Func(f) => f(request, request.n),
        }
    }
}

struct State {
    limits: Limits,
    script: Mutex<Script>,
    records: Mutex<Vec<RecordedRequest>>,
    /// Requests whose body was read (recorded or not); the arrival index source.
    arrivals: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Bumped to the arrival count after each arrival, to wake `wait_for`.
    arrived: watch::Sender<usize>,
}

/// Decrements the in-flight count when a request ends, answered or abandoned.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running receiver; stops (closing every connection) when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver with the default [`Limits`].
    pub async fn start(script: Script) -> Self {
        Self::start_with(script, Limits::default()).await
    }

    pub async fn start_with(script: Script, limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver to 127.0.0.1:0");
        let addr = listener.local_addr().expect("receiver local address");
        let (arrived, _) = watch::channel(0);
        let state = Arc::new(State {
            limits,
            script: Mutex::new(script),
            records: Mutex::new(Vec::new()),
            arrivals: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrived,
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Self { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the script; requests already answered are unaffected.
    pub fn set_script(&self, script: Script) {
        *lock(&self.state.script) = script;
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.records).clone()
    }

    /// Requests that arrived (recorded or beyond [`Limits::records_max`]).
    pub fn count(&self) -> usize {
        self.state.arrivals.load(Ordering::SeqCst)
    }

    /// The highest number of requests in flight at once so far.
    pub fn max_concurrency(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` requests have arrived and returns the recorded ones; panics
    /// after `timeout` with what did arrive.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let mut arrived = self.state.arrived.subscribe();
        let reached = tokio::time::timeout(timeout, arrived.wait_for(|n| *n >= count)).await;
        if reached.is_err() {
            let got = self.requests();
            let summary: Vec<String> = got
                .iter()
                .map(|r| format!("#{} {} {} ({} bytes)", r.n, r.method, r.path, r.body.len()))
                .collect();
            panic!(
                "receiver {}: expected at least {count} requests within {timeout:?}, got {}: {summary:#?}",
                self.addr,
                self.count(),
            );
        }
        self.requests()
    }

    /// Waits `quiet` and returns how many requests arrived in that time (for "nothing more
    /// arrives" checks after a final state).
    pub async fn arrivals_during(&self, quiet: Duration) -> usize {
        let before = self.count();
        tokio::time::sleep(quiet).await;
        self.count() - before
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere in a test must not hide the records behind a poisoned lock.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if connections.len() >= CONNECTIONS_MAX {
                    drop(stream);
                    continue;
                }
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let concurrency = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(state.clone());
    state.max_in_flight.fetch_max(concurrency, Ordering::SeqCst);

    let (parts, body) = request.into_parts();
    let (body, too_large) = match Limited::new(body, state.limits.body_bytes_max)
        .collect()
        .await
    {
        Ok(collected) => (collected.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    let n = state.arrivals.fetch_add(1, Ordering::SeqCst);
    let recorded = RecordedRequest {
        n,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string()),
        headers: parts.headers,
        body,
        at,
        concurrency,
    };
    let step = if too_large {
        Step::status(413)
    } else {
        lock(&state.script).next(&recorded)
    };
    {
        let mut records = lock(&state.records);
        if records.len() < state.limits.records_max {
            records.push(recorded);
        }
    }
    // Counted, not set from `n`: two requests finishing out of order must not lower the count
    // (a `send_replace(n + 1)` here once left it at 19 of 20 and timed a test out).
    state.arrived.send_modify(|arrived| *arrived += 1);

    if step.hang {
        tokio::time::sleep(HANG_MAX).await;
    }
    tokio::time::sleep(step.delay).await;
    let mut response = Response::new(Full::new(step.body.clone()));
    *response.status_mut() = hyper::StatusCode::from_u16(step.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &step.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Http, headers};

    const WAIT: Duration = Duration::from_secs(10);

    fn client(receiver: &Receiver) -> Http {
        Http::new(receiver.url(""))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_method_path_headers_and_body() {
        let receiver = Receiver::start(Script::always(Step::ok())).await;
        let http = client(&receiver);
        let body: &[u8] = b"\x00\xffbinary body";
        let response = http
            .post_raw(
                "/hooks/in?x=1",
                body.to_vec(),
                &headers(&[("X-Custom", "a"), ("X-Custom", "b")]),
            )
            .await;
        assert_eq!(response.status, 200);
        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(
            (r.n, r.method.as_str(), r.path.as_str()),
            (0, "POST", "/hooks/in?x=1")
        );
        assert_eq!(r.body.as_ref(), body);
        assert_eq!(r.header("x-custom"), Some("a"));
        assert_eq!(r.header_all("X-CUSTOM"), vec!["a", "b"]);
        assert_eq!(r.concurrency, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_is_consumed_in_order_then_default() {
        let script = Script::queue(
            [
                Step::status(503).header("Retry-After", "1"),
                Step::status(429).body("slow down"),
            ],
            Step::status(204),
        );
        let receiver = Receiver::start(script).await;
        let http = client(&receiver);
        let first = http.post_raw("/", "a", &[]).await;
        assert_eq!(first.status, 503);
        assert_eq!(first.header("retry-after"), Some("1"));
        let second = http.post_raw("/", "b", &[]).await;
        assert_eq!((second.status, second.text().as_str()), (429, "slow down"));
        for _ in 0..3 {
            assert_eq!(http.post_raw("/", "c", &[]).await.status, 204);
        }
        assert_eq!(receiver.count(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closure_sees_request_and_index() {
        let receiver = Receiver::start(Script::func(|request, n| {
            if request.path == "/fail" || n == 0 {
                Step::status(500)
            } else {
                Step::ok()
            }
        }))
        .await;
        let http = client(&receiver);
        assert_eq!(http.post_raw("/", "", &[]).await.status, 500);
        assert_eq!(http.post_raw("/", "", &[]).await.status, 200);
        assert_eq!(http.post_raw("/fail", "", &[]).await.status, 500);
        receiver.set_script(Script::always(Step::status(202)));
        assert_eq!(http.post_raw("/fail", "", &[]).await.status, 202);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_is_applied_and_concurrency_tracked() {
        let receiver =
            Receiver::start(Script::always(Step::ok().delay(Duration::from_millis(300)))).await;
        let http = client(&receiver);
        let started = Instant::now();
        let sends: Vec<_> = (0..3)
            .map(|_| {
                let http = http.clone();
                tokio::spawn(async move { http.post_raw("/", "x", &[]).await.status })
            })
            .collect();
        for send in sends {
            assert_eq!(send.await.unwrap(), 200);
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(receiver.max_concurrency(), 3);
        assert_eq!(receiver.in_flight(), 0);
        let max_seen = receiver.requests().iter().map(|r| r.concurrency).max();
        assert_eq!(max_seen, Some(3));

        // Sequential requests never overlap.
        let sequential =
            Receiver::start(Script::always(Step::ok().delay(Duration::from_millis(20)))).await;
        let http = client(&sequential);
        for _ in 0..3 {
            http.post_raw("/", "x", &[]).await;
        }
        assert_eq!(sequential.max_concurrency(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hang_never_answers_and_releases_on_disconnect() {
        let receiver = Receiver::start(Script::always(Step::hang())).await;
        let http = client(&receiver);
        let attempt =
            tokio::time::timeout(Duration::from_millis(300), http.post_raw("/", "x", &[])).await;
        assert!(attempt.is_err(), "a hanging step must not answer");
        assert_eq!(receiver.count(), 1, "the hung request is still recorded");
        // The client gave up and closed the connection: the request must stop counting as in
        // flight, or max_in_flight checks after a timeout would be wrong.
        let deadline = Instant::now() + WAIT;
        while receiver.in_flight() != 0 {
            assert!(
                Instant::now() < deadline,
                "in-flight count never dropped after the client left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_and_records_are_bounded() {
        let limits = Limits {
            body_bytes_max: 1024,
            records_max: 2,
        };
        let receiver = Receiver::start_with(Script::always(Step::ok()), limits).await;
        let http = client(&receiver);
        assert_eq!(http.post_raw("/", vec![b'a'; 1024], &[]).await.status, 200);
        assert_eq!(http.post_raw("/", vec![b'a'; 1025], &[]).await.status, 413);
        assert_eq!(http.post_raw("/", "third", &[]).await.status, 200);
        assert_eq!(receiver.count(), 3, "every arrival is counted");
        let recorded = receiver.requests();
        assert_eq!(recorded.len(), 2, "only records_max are kept");
        assert_eq!(recorded[0].body.len(), 1024);
        assert!(
            recorded[1].body.is_empty(),
            "an oversized body is recorded empty"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "expected at least 2 requests")]
    async fn wait_for_panics_on_timeout() {
        let receiver = Receiver::start(Script::always(Step::ok())).await;
        client(&receiver).post_raw("/", "one", &[]).await;
        receiver.wait_for(2, Duration::from_millis(200)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_stops_the_receiver() {
        let receiver = Receiver::start(Script::always(Step::ok())).await;
        let http = client(&receiver);
        assert_eq!(http.post_raw("/", "x", &[]).await.status, 200);
        drop(receiver);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            http.try_send(hyper::Method::POST, "/", Bytes::new(), &[])
                .await
                .is_err()
        );
    }
}
