//! Shared test helpers: every test body runs inside `tokio_uring::start`, on the backend named
//! by `HOOKRELAY_LOG_IO` (uring | portable; unset = auto), so the whole suite runs against both
//! real backends.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hookrelay_log::{IO_ENV, IoKind, IoMode, Log, Options};

/// The backend the environment asks for.
pub fn env_mode() -> IoMode {
    match std::env::var(IO_ENV).as_deref() {
        Ok("uring") => IoMode::Uring,
        Ok("portable") => IoMode::Portable,
        _ => IoMode::Auto,
    }
}

/// Options for a test log in `dir` on the environment's backend.
/// The log's tests write direct (`O_DIRECT`, where the filesystem takes it): the harder of the
/// two write modes for the log's own logic. Buffered writes, HookRelay's default, are what the
/// engine's tests, the chaos suite and the bench run.
pub fn opts(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.io = env_mode();
    o.direct_io = true;
    o
}

/// Runs a test body on a tokio_uring runtime (a current-thread tokio runtime + LocalSet).
///
/// The body runs on its own thread and a panic is caught inside the runtime and re-raised here:
/// dropping a tokio_uring runtime while io_uring operations are still in flight (which is what
/// unwinding through `tokio_uring::start` does) can block forever, and a failing test must fail,
/// not hang.
pub fn run<C, F>(make: C)
where
    C: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("log-test-runtime".into())
        .spawn(move || {
            tokio_uring::start(async move {
                let outcome = CatchUnwind(Box::pin(make())).await;
                let _ = tx.send(outcome);
            });
        });
    if let Err(e) = spawned {
        panic!("spawn test runtime thread: {e}");
    }
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(payload)) => std::panic::resume_unwind(payload),
        Err(_) => panic!("the test runtime stopped without a result"),
    }
}

/// Polls a future under `catch_unwind`, turning a panic into an `Err` with its payload.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Result<(), Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Asserts the log uses the backend the environment asked for.
pub fn assert_backend(log: &Log) {
    match std::env::var(IO_ENV).as_deref() {
        Ok("uring") => assert_eq!(log.io_kind(), IoKind::Uring),
        Ok("portable") => assert_eq!(log.io_kind(), IoKind::Portable),
        _ => assert_ne!(log.io_kind(), IoKind::Simulated),
    }
}

/// A deterministic payload for record `i` of length `len`.
pub fn payload(i: u64, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    Bytes::from(v)
}

/// Opens a log, panicking on error.
pub async fn open(o: Options) -> (Log, hookrelay_log::Recovery) {
    match Log::open(o).await {
        Ok(x) => x,
        Err(e) => panic!("open failed: {e}"),
    }
}
