//! Append throughput with group commit vs. a plain write + fdatasync loop on the same disk.
//!
//! `cargo bench -p hookrelay-log` (backend: `HOOKRELAY_LOG_IO`, default auto = io_uring when
//! available; seconds per cell: `BENCH_SECS`, default 2). Prints a markdown table.

use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay_log::{FRAME_HEADER_BYTES, Log, Options};

const SIZES: [usize; 3] = [256, 1024, 16 * 1024];
const APPENDERS: [usize; 3] = [1, 16, 256];

fn secs() -> Duration {
    let s = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

struct Cell_ {
    appends_per_s: f64,
    mb_per_s: f64,
    fsyncs_per_s: f64,
    records_per_fsync: f64,
}

async fn log_cell(size: usize, appenders: usize, dur: Duration) -> (Cell_, hookrelay_log::IoKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = Log::open(Options::new(dir.path())).await.expect("open");
    let kind = log.io_kind();
    let payload = Bytes::from(vec![0xA5u8; size]);
    let done = Rc::new(Cell::new(0u64));
    // Warm-up: a few appends so the segment file exists in the page cache.
    for _ in 0..10 {
        log.append(1, payload.clone()).await.expect("append");
    }
    let before = log.stats();
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, payload, done) = (log.clone(), payload.clone(), done.clone());
        tasks.push(tokio::task::spawn_local(async move {
            while Instant::now() < deadline {
                log.append(1, payload.clone()).await.expect("append");
                done.set(done.get() + 1);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = log.stats();
    log.close().await.expect("close");
    let n = done.get() as f64;
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    (
        Cell_ {
            appends_per_s: n / elapsed,
            mb_per_s: n * size as f64 / elapsed / 1e6,
            fsyncs_per_s: fsyncs / elapsed,
            records_per_fsync: n / fsyncs.max(1.0),
        },
        kind,
    )
}

/// One record per write + fdatasync, std calls, same frame size, same directory kind.
fn plain_cell(size: usize, dur: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = std::fs::File::create(dir.path().join("plain")).expect("create");
    let buf = vec![0xA5u8; size + FRAME_HEADER_BYTES];
    let (mut pos, mut n) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        f.write_all_at(&buf, pos).expect("write");
        f.sync_data().expect("fdatasync");
        pos += buf.len() as u64;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported, everything runs.
    let dur = secs();
    let mut rows = Vec::new();
    let mut kind = None;
    for size in SIZES {
        let plain = plain_cell(size, dur);
        for appenders in APPENDERS {
            let (cell, k) = tokio_uring::start(log_cell(size, appenders, dur));
            kind = Some(k);
            eprintln!(
                "{size} B x {appenders}: {:.0} appends/s ({:.1} records/fsync), plain {plain:.0}/s",
                cell.appends_per_s, cell.records_per_fsync
            );
            rows.push((size, appenders, cell, plain));
        }
    }
    println!();
    println!("backend: {:?}, {} s per cell", kind, dur.as_secs_f64());
    println!();
    println!(
        "| record | appenders | appends/s | MB/s | fsyncs/s | records/fsync | plain write+fdatasync appends/s | plain MB/s | speed-up |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (size, appenders, c, plain) in rows {
        let label = if size >= 1024 {
            format!("{} KiB", size / 1024)
        } else {
            format!("{size} B")
        };
        println!(
            "| {label} | {appenders} | {:.0} | {:.1} | {:.0} | {:.1} | {plain:.0} | {:.1} | {:.1}x |",
            c.appends_per_s,
            c.mb_per_s,
            c.fsyncs_per_s,
            c.records_per_fsync,
            plain * size as f64 / 1e6,
            c.appends_per_s / plain
        );
    }
}
