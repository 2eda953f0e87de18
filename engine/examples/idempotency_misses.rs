//! What a new key's idempotency lookup costs against a week of tables (BENCHMARKS.md §2,
//! "Lookup misses against a week of tables").
//!
//! ```sh
//! D=/var/tmp/idx-misses
//! cargo run --release -p hookrelay-engine --example idempotency_misses -- build $D 7 2000000
//! cargo run --release -p hookrelay-engine --example idempotency_misses -- measure $D 200000 warm
//! cargo run --release -p hookrelay-engine --example idempotency_misses -- measure $D 20000 cold
//! cargo run --release -p hookrelay-engine --example idempotency_misses -- strip-filters $D
//! # ... and measure again: the tables as earlier releases wrote them, without filters
//! ```
//!
//! `build` fills `buckets` day buckets with `keys` keys each (each bucket one table at ~50 %
//! load, as a steady day runs). `measure` looks up keys that are in no table, at the newest
//! bucket's time; `cold` drops the page cache first (root) and reads the newest table back in
//! (every insert touches it), as after a restart or on a host whose page cache cannot hold a
//! week of tables. `strip-filters` cuts each table's filter off.

use std::time::Instant;

use hookrelay_engine::idempotency::{
    DEFAULT_BUCKET_WIDTH_MS, IdempotencyIndex, IndexOptions, SLOT_BYTES, TABLE_HEADER_BYTES,
};

const T0: u64 = 1_796_601_600_000;

fn options(keys: u64) -> IndexOptions {
    IndexOptions {
        bucket_width_ms: DEFAULT_BUCKET_WIDTH_MS,
        ttl_ms: 7 * DEFAULT_BUCKET_WIDTH_MS,
        initial_slots: (keys * 2).next_power_of_two(),
    }
}

fn faults() -> (i64, i64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    (u.ru_majflt, u.ru_minflt)
}

/// KiB read from block devices so far, machine-wide (`pgpgin` of /proc/vmstat).
fn kib_read() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|v| {
            v.lines().find_map(|l| {
                l.strip_prefix("pgpgin ")
                    .and_then(|n| n.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: idempotency_misses build DIR BUCKETS KEYS | measure DIR LOOKUPS warm|cold | strip-filters DIR";
    let dir = std::path::PathBuf::from(args.get(1).expect(usage));
    match args.first().map(String::as_str) {
        Some("build") => {
            let buckets: u64 = args[2].parse().expect(usage);
            let keys: u64 = args[3].parse().expect(usage);
            let _ = std::fs::remove_dir_all(&dir);
            let mut index = IdempotencyIndex::open(&dir, options(keys)).expect("open");
            let started = Instant::now();
            let mut offset = 0;
            for b in 0..buckets {
                let at = T0 + b * DEFAULT_BUCKET_WIDTH_MS + 1;
                for k in 0..keys {
                    index
                        .insert_new("ep_bench", &format!("evt_{b}_{k}"), k, offset, at)
                        .expect("insert");
                    offset += 1;
                }
            }
            index.checkpoint(offset).expect("checkpoint");
            println!(
                "built {buckets} buckets of {keys} keys in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Some("strip-filters") => {
            for entry in std::fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "idx") {
                    let len = std::fs::metadata(&path).expect("stat").len();
                    // header + capacity × (32 + 1)
                    let capacity = (len - TABLE_HEADER_BYTES as u64) / (SLOT_BYTES as u64 + 1);
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .expect("open");
                    file.set_len(TABLE_HEADER_BYTES as u64 + capacity * SLOT_BYTES as u64)
                        .expect("truncate");
                }
            }
            println!("filters removed");
        }
        Some("measure") => {
            let lookups: u64 = args[2].parse().expect(usage);
            if args.get(3).map(String::as_str) == Some("cold") {
                // SAFETY: plain syscall.
                unsafe { libc::sync() };
                std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (root)");
                // Every insert touches the newest table: in a running shard it is cached.
                let mut tables: Vec<_> = std::fs::read_dir(&dir)
                    .expect("list")
                    .map(|e| e.expect("entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "idx"))
                    .collect();
                tables.sort();
                std::fs::read(tables.last().expect("a table")).expect("read the newest table");
            }
            let index = IdempotencyIndex::open(&dir, options(1)).expect("open");
            let newest = T0 + (index.bucket_count() as u64 - 1) * DEFAULT_BUCKET_WIDTH_MS + 2;
            let before = faults();
            let read_before = kib_read();
            let started = Instant::now();
            for i in 0..lookups {
                assert!(
                    index
                        .lookup("ep_bench", &format!("absent_{i}"), newest)
                        .is_none()
                );
            }
            let took = started.elapsed();
            let after = faults();
            let read_mib = (kib_read() - read_before) as f64 / 1024.0;
            println!(
                "{} buckets, {lookups} misses: {:.2} µs per lookup, {:.2} major and {:.2} minor faults per lookup, {read_mib:.0} MiB read from disk",
                index.bucket_count(),
                took.as_secs_f64() * 1e6 / lookups as f64,
                (after.0 - before.0) as f64 / lookups as f64,
                (after.1 - before.1) as f64 / lookups as f64,
            );
        }
        _ => panic!("{usage}"),
    }
}
