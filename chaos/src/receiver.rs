//! The receiver HookRelay delivers to: an HTTP server on 127.0.0.1 that answers each attempt
//! as a scenario's [`Policy`] says (status, delay, hang, connection reset) and records, per
//! delivery id, every attempt and how it was answered. The record is the suite's independent
//! view of "delivered": a delivery counts as delivered when this receiver chose a 2xx answer.
//!
//! It also checks the Standard Webhooks signature HookRelay puts on each forwarded request,
//! with the endpoint's signing secret (the endpoint id is the last path segment).
//!
//! Bounded: hangs end after [`HANG_MAX`], request bodies are capped, open connections are
//! capped at [`CONNECTIONS_MAX`], attempts kept per delivery are capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::signing::verify_standard;

/// Longest a hanging answer is held.
pub const HANG_MAX: Duration = Duration::from_secs(30);
/// Open connections beyond this are closed at once.
pub const CONNECTIONS_MAX: usize = 4096;
/// Largest request body read.
const BODY_BYTES_MAX: usize = 4 << 20;
/// Attempts remembered per delivery (counts go on past it).
const ATTEMPTS_KEPT_MAX: usize = 32;

/// How to answer one attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Answer `status` after `delay`, with `Retry-After: retry_after_s` when set.
    Respond {
        status: u16,
        delay: Duration,
        retry_after_s: Option<u32>,
    },
    /// Hold the request for this long (past HookRelay's timeout), then answer 200 to nobody.
    Hang(Duration),
    /// Close the connection without an answer (a TCP reset: SO_LINGER 0).
    Reset,
}

impl Action {
    pub fn ok() -> Self {
        Self::status(200)
    }
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            delay: Duration::ZERO,
            retry_after_s: None,
        }
    }
    /// Whether this answer counts as delivered (a 2xx chosen by the receiver).
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Respond { status, .. } if (200..300).contains(status))
    }
    /// A short class name for notes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Respond { status, .. } if (200..300).contains(status) => "2xx",
            Self::Respond { status: 429, .. } => "429",
            Self::Respond { status, .. } if *status >= 500 => "5xx",
            Self::Respond { .. } => "4xx",
            Self::Hang(_) => "hang",
            Self::Reset => "reset",
        }
    }
}

/// Decides the answer from the delivery id and `X-HookRelay-Attempt`.
pub type Policy = Arc<dyn Fn(&str, u32) -> Action + Send + Sync>;

/// One attempt as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub n: u32,
    pub at: Instant,
    pub action: Action,
}

/// What the receiver saw of one delivery id.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Requests that arrived for this id.
    pub requests: u32,
    /// Of them, answered with a 2xx.
    pub successes: u32,
    pub attempts: Vec<Attempt>,
}

struct State {
    policy: RwLock<Policy>,
    seen: Mutex<HashMap<String, Seen>>,
    /// endpoint id → signing secret, to check the outbound signature.
    secrets: RwLock<HashMap<String, String>>,
    requests: AtomicU64,
    no_delivery_id: AtomicU64,
    bad_signatures: AtomicU64,
    /// A few examples of what was wrong, for the notes.
    examples: Mutex<Vec<String>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start(policy: Policy) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            policy: RwLock::new(policy),
            seen: Mutex::new(HashMap::new()),
            secrets: RwLock::new(HashMap::new()),
            requests: AtomicU64::new(0),
            no_delivery_id: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// The destination URL for an endpoint (its id goes in the path once known; see
    /// [`Receiver::add_endpoint`]).
    pub fn url(&self, tag: &str) -> String {
        format!("http://{}/hooks/{tag}", self.addr)
    }

    /// Registers an endpoint's signing secret under the path tag used in its destination URL.
    pub fn add_endpoint(&self, tag: &str, signing_secret: &str) {
        write(&self.state.secrets).insert(tag.to_string(), signing_secret.to_string());
    }

    pub fn set_policy(&self, policy: Policy) {
        *write(&self.state.policy) = policy;
    }

    /// A copy of everything seen, by delivery id.
    pub fn seen(&self) -> HashMap<String, Seen> {
        lock(&self.state.seen).clone()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn bad_signatures(&self) -> u64 {
        self.state.bad_signatures.load(Ordering::SeqCst)
    }

    pub fn without_delivery_id(&self) -> u64 {
        self.state.no_delivery_id.load(Ordering::SeqCst)
    }

    pub fn examples(&self) -> Vec<String> {
        lock(&self.state.examples).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An always-200 policy.
pub fn always_ok() -> Policy {
    Arc::new(|_, _| Action::ok())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if connections.len() >= CONNECTIONS_MAX {
                    continue;
                }
                // Linger 0: when a `Reset` action drops the connection, the peer sees a reset,
                // not a graceful close.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                let _ = stream.set_nodelay(true);
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

/// The error a `Reset` answer returns: hyper closes the connection without a response.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("chaos receiver resets this connection")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let at = Instant::now();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, BODY_BYTES_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = header("x-hookrelay-delivery-id");
    let attempt: u32 = header("x-hookrelay-attempt").parse().unwrap_or(0);
    if id.is_empty() {
        state.no_delivery_id.fetch_add(1, Ordering::SeqCst);
        return Ok(respond(400, None));
    }
    check_signature(&state, parts.uri.path(), &id, &header, &body);

    let policy = read(&state.policy).clone();
    let action = policy(&id, attempt);
    {
        let mut seen = lock(&state.seen);
        let entry = seen.entry(id).or_default();
        entry.requests += 1;
        if action.is_success() {
            entry.successes += 1;
        }
        if entry.attempts.len() < ATTEMPTS_KEPT_MAX {
            entry.attempts.push(Attempt {
                n: attempt,
                at,
                action: action.clone(),
            });
        }
    }
    match action {
        Action::Respond {
            status,
            delay,
            retry_after_s,
        } => {
            tokio::time::sleep(delay).await;
            Ok(respond(status, retry_after_s))
        }
        Action::Hang(d) => {
            tokio::time::sleep(d.min(HANG_MAX)).await;
            Ok(respond(200, None))
        }
        Action::Reset => Err(ResetConnection),
    }
}

fn check_signature(
    state: &State,
    path: &str,
    id: &str,
    header: &impl Fn(&str) -> String,
    body: &[u8],
) {
    let tag = path.rsplit('/').next().unwrap_or("");
    let Some(secret) = read(&state.secrets).get(tag).cloned() else {
        return;
    };
    let ok = header("webhook-id") == id
        && verify_standard(
            &secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            body,
            &header("webhook-signature"),
        );
    if !ok {
        state.bad_signatures.fetch_add(1, Ordering::SeqCst);
        let mut examples = lock(&state.examples);
        if examples.len() < 3 {
            examples.push(format!(
                "bad outbound signature on {id}: webhook-id={:?} webhook-timestamp={:?}",
                header("webhook-id"),
                header("webhook-timestamp")
            ));
        }
    }
}

fn respond(status: u16, retry_after_s: Option<u32>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(s) = retry_after_s
        && let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string())
    {
        response.headers_mut().insert("retry-after", v);
    }
    response
}
