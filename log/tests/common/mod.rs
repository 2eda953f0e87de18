//! Shared test helpers: every test body runs inside `tokio_uring::start`, on the backend named
//! by `HOOKRELAY_LOG_IO` (uring | portable; unset = auto), so the whole suite runs against both
//! real backends.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

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
pub fn opts(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.io = env_mode();
    o
}

/// Runs a test body on a tokio_uring runtime (a current-thread tokio runtime + LocalSet).
pub fn run<F: Future<Output = ()>>(f: F) {
    tokio_uring::start(f)
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
