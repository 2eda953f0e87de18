//! Ingest request counters of one shard thread.
//!
//! The HTTP layer records every `POST /ingest/...` answer here on the thread that served it.
//! They live in a thread-local rather than in the shard's state because the listener serves
//! requests before the shard has recovered (answering 503) and those count too; each shard
//! thread still owns its own counters (no lock, no shared cache line), and a scrape reads them
//! on the owning thread through the shard's inbox, like everything else.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use super::histogram::{INGEST_BOUNDS_US, PromHistogram};

/// The ingest counters of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStats {
    /// Requests by HTTP status code (at most the 500 codes 100..=599).
    pub by_code: BTreeMap<u16, u64>,
    /// Time from the request's arrival to its answer.
    pub latency: PromHistogram,
}

impl Default for IngestStats {
    fn default() -> Self {
        IngestStats {
            by_code: BTreeMap::new(),
            latency: PromHistogram::new(INGEST_BOUNDS_US),
        }
    }
}

impl IngestStats {
    pub fn record(&mut self, code: u16, latency: Duration) {
        // Status codes are 100..=599 by construction; clamping keeps the map bounded anyway.
        *self.by_code.entry(code.clamp(100, 599)).or_insert(0) += 1;
        self.latency
            .record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &IngestStats) {
        for (code, n) in &other.by_code {
            *self.by_code.entry(*code).or_insert(0) += n;
        }
        self.latency.merge(&other.latency);
    }
}

thread_local! {
    static INGEST: RefCell<IngestStats> = RefCell::new(IngestStats::default());
}

/// Counts one ingest answer on the current thread.
pub fn record_ingest(code: u16, latency: Duration) {
    INGEST.with(|s| s.borrow_mut().record(code, latency));
}

/// A copy of the current thread's ingest counters.
pub fn ingest_stats() -> IngestStats {
    INGEST.with(|s| s.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_thread() {
        record_ingest(202, Duration::from_millis(3));
        record_ingest(202, Duration::from_micros(200));
        record_ingest(404, Duration::from_micros(100));
        let here = ingest_stats();
        assert_eq!(here.by_code.get(&202), Some(&2));
        assert_eq!(here.latency.count, 3);
        let there = std::thread::spawn(ingest_stats).join().unwrap();
        assert!(
            there.by_code.is_empty(),
            "another thread has its own counters"
        );
        let mut merged = here.clone();
        merged.merge(&here);
        assert_eq!(merged.by_code.get(&404), Some(&2));
    }
}
