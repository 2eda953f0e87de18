//! Latency histograms (HDR, microsecond resolution) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest recordable latency: larger values are clamped to it (and show as the max).
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone)]
pub struct LatencyHist {
    h: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    pub fn new() -> Self {
        Self {
            h: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.h.record(us).expect("value clamped into the bounds");
    }

    /// Records `latency` from a loop that looks every `interval`, plus the samples the loop
    /// would have taken while it was held up (hdrhistogram's correction for coordinated
    /// omission).
    pub fn record_corrected(&mut self, latency: Duration, interval: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let every = (interval.as_micros() as u64).max(1);
        self.h
            .record_correct(us, every)
            .expect("value clamped into the bounds");
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        self.h.add(&other.h).expect("histograms share bounds");
    }

    pub fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |q: f64| {
            if self.h.is_empty() {
                0.0
            } else {
                ms(self.h.value_at_quantile(q))
            }
        };
        Summary {
            count: self.h.len(),
            mean_ms: if self.h.is_empty() {
                0.0
            } else {
                self.h.mean() / 1000.0
            },
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: if self.h.is_empty() {
                0.0
            } else {
                ms(self.h.max())
            },
        }
    }
}

/// The figures a report shows, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// `p50 a / p90 b / p95 c / p99 d / p99.9 e / max f ms`.
    pub fn line(&self) -> String {
        format!(
            "p50 {} / p90 {} / p95 {} / p99 {} / p99.9 {} / max {} ms",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p95_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms)
        )
    }
}

/// Milliseconds with a precision that suits their size.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_out_in_milliseconds() {
        let mut h = LatencyHist::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 100));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        let mut other = LatencyHist::new();
        other.record(Duration::from_secs(5));
        h.merge(&other);
        assert!((h.summary().max_ms - 5000.0).abs() < 5.0);
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = LatencyHist::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.summary().count, 2);
    }
}
