//! The bench's receiver: the destination HookRelay forwards to. It records when each delivery
//! (keyed by `X-HookRelay-Delivery-Id`) first arrived and first succeeded, so a scenario can
//! measure end-to-end latency and deliveries/s and check that every acknowledged delivery came
//! through. It can also misbehave: fail a fraction of attempts (503), answer slowly, or hang.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::listen::{self, HttpResponse, ServerGroup};

/// The header HookRelay puts on every forwarded request.
pub const DELIVERY_ID_HEADER: &str = "x-hookrelay-delivery-id";
/// Lock shards of the arrival book (two cores, a handful of threads: 16 keeps contention nil).
const BOOK_SHARDS: usize = 16;

/// How the receiver behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Fraction of attempts answered with `fail_status`, at random.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// Fraction of attempts never answered (held until the sender gives up), at random.
    pub hang_rate: f64,
    /// Delay before every answer.
    pub delay: Duration,
    /// Keep an [`Arrival`] per delivery id (off for runs of millions of deliveries, where
    /// only the counters matter).
    pub record_ids: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            fail_status: 503,
            hang_rate: 0.0,
            delay: Duration::ZERO,
            record_ids: true,
        }
    }
}

/// What the receiver saw of one delivery.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// When the first attempt that was answered 2xx arrived.
    pub success: Option<Instant>,
    pub attempts: u32,
}

/// Everything the receiver saw.
pub struct Book {
    shards: Vec<Mutex<HashMap<Box<str>, Arrival>>>,
    hasher: RandomState,
    pub requests: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed_on_purpose: AtomicU64,
    pub hung: AtomicU64,
    /// Requests without the delivery id header.
    pub without_id: AtomicU64,
}

impl Book {
    fn new() -> Self {
        Self {
            shards: (0..BOOK_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            requests: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed_on_purpose: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            without_id: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<Box<str>, Arrival>> {
        &self.shards[(self.hasher.hash_one(id) as usize) % BOOK_SHARDS]
    }

    fn note(&self, id: &str, at: Instant, success: bool) {
        let mut map = self.shard(id).lock().expect("book lock");
        match map.get_mut(id) {
            Some(a) => {
                a.attempts += 1;
                if success && a.success.is_none() {
                    a.success = Some(at);
                }
            }
            None => {
                map.insert(
                    id.into(),
                    Arrival {
                        success: success.then_some(at),
                        attempts: 1,
                    },
                );
            }
        }
    }

    /// What arrived for delivery `id`.
    pub fn get(&self, id: &str) -> Option<Arrival> {
        self.shard(id).lock().expect("book lock").get(id).copied()
    }

    /// Distinct deliveries that succeeded at least once.
    pub fn delivered(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .expect("book lock")
                    .values()
                    .filter(|a| a.success.is_some())
                    .count() as u64
            })
            .sum()
    }

    /// Forgets every delivery (between phases of a scenario).
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().expect("book lock").clear();
        }
    }
}

/// A running receiver.
pub struct Receiver {
    group: ServerGroup,
    book: Arc<Book>,
}

impl Receiver {
    /// Starts a receiver on `addr` with `threads` threads (not pinned: it shares the cores
    /// with everything else).
    pub fn start(addr: SocketAddr, threads: usize, behaviour: Behaviour) -> io::Result<Self> {
        let book = Arc::new(Book::new());
        let shared = (book.clone(), Arc::new(behaviour));
        let group = listen::spawn(
            addr,
            threads,
            false,
            "receiver",
            move |req: Request<Incoming>| {
                let (book, behaviour) = shared.clone();
                async move { receive(req, &book, &behaviour).await }
            },
        )?;
        Ok(Self { group, book })
    }

    pub fn addr(&self) -> SocketAddr {
        self.group.addr()
    }

    pub fn book(&self) -> &Arc<Book> {
        &self.book
    }

    pub fn stop(self) {
        self.group.stop();
    }
}

async fn receive(req: Request<Incoming>, book: &Book, behaviour: &Behaviour) -> HttpResponse {
    let at = Instant::now();
    book.requests.fetch_add(1, Ordering::Relaxed);
    let id: Option<Box<str>> = req
        .headers()
        .get(DELIVERY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(Into::into);
    // Read the whole body, as a real receiver would.
    let _ = req.into_body().collect().await;
    let roll = random_unit();
    let outcome = if roll < behaviour.hang_rate {
        Outcome::Hang
    } else if roll < behaviour.hang_rate + behaviour.fail_rate {
        Outcome::Fail
    } else {
        Outcome::Ok
    };
    match &id {
        Some(id) if behaviour.record_ids => book.note(id, at, outcome == Outcome::Ok),
        Some(_) => {}
        None => {
            book.without_id.fetch_add(1, Ordering::Relaxed);
        }
    }
    match outcome {
        Outcome::Hang => {
            book.hung.fetch_add(1, Ordering::Relaxed);
            // Held until the sender gives up and closes the connection (which drops this).
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Outcome::Fail => {
            book.failed_on_purpose.fetch_add(1, Ordering::Relaxed);
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"bench receiver: failing on purpose\n",
            )));
            *resp.status_mut() = StatusCode::from_u16(behaviour.fail_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            resp
        }
        Outcome::Ok => {
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            book.succeeded.fetch_add(1, Ordering::Relaxed);
            Response::new(Full::new(Bytes::from_static(b"ok\n")))
        }
    }
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Hang,
}

/// A uniform number in [0, 1) from a per-thread xorshift generator (no shared state).
fn random_unit() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn seed() -> u64 {
    let s = RandomState::new().hash_one(std::thread::current().id());
    s | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::Conn;

    fn post(id: &str) -> Vec<u8> {
        format!("POST / HTTP/1.1\r\nHost: x\r\nX-HookRelay-Delivery-Id: {id}\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes()
    }

    #[test]
    fn records_arrivals_and_fails_the_asked_fraction() {
        let r = Receiver::start(
            "127.0.0.1:0".parse().unwrap(),
            1,
            Behaviour {
                fail_rate: 0.3,
                ..Behaviour::default()
            },
        )
        .unwrap();
        let addr = r.addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let statuses: Vec<u16> = rt.block_on(async {
            let mut c = Conn::connect(addr).await.unwrap();
            let mut out = Vec::new();
            for i in 0..2000 {
                out.push(
                    c.round_trip(&post(&format!("dl_{}", i % 1000)))
                        .await
                        .unwrap()
                        .status,
                );
            }
            out
        });
        let failed = statuses.iter().filter(|&&s| s == 503).count();
        assert!((450..750).contains(&failed), "{failed} of 2000 failed");
        assert_eq!(
            statuses.iter().filter(|&&s| s == 200).count(),
            2000 - failed
        );
        let book = r.book().clone();
        assert_eq!(book.requests.load(Ordering::Relaxed), 2000);
        let a = book.get("dl_7").unwrap();
        assert_eq!(a.attempts, 2);
        // With two tries at 30% failure, about 91% of deliveries got through.
        let delivered = book.delivered();
        assert!((850..970).contains(&delivered), "{delivered}");
        r.stop();
    }

    #[test]
    fn random_units_are_uniform_enough() {
        let n = 100_000;
        let below = (0..n).filter(|_| random_unit() < 0.3).count();
        assert!((28_000..32_000).contains(&below), "{below}");
    }
}
