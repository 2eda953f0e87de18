//! Latency histograms.
//!
//! [`Histogram`] is log-linear (HDR-like) over whole milliseconds: values below 64 ms each have
//! their own bucket; above, every power of two is cut into 32 equal buckets, so a bucket is at
//! most 1/32 of its lower bound wide and a quantile reported as the bucket's midpoint is within
//! 1/64 (≈1.6 %, about two significant digits) of the true value. Values above
//! [`VALUE_MS_MAX`] (≈35 min, far past the longest receiver timeout) land in the top bucket.
//! Histograms merge by adding bucket counts, so shards and time slots combine exactly.
//!
//! [`SparseHistogram`] is the same buckets stored as a sorted list of the non-empty ones with
//! `u32` counts: what each time slot keeps (latencies cluster, so a slot usually has a few
//! dozen buckets, not all [`BUCKETS`]).
//!
//! [`PromHistogram`] is separate on purpose: Prometheus wants fixed, human `le` bounds
//! (`0.005`, `0.01`, ...) that never change between scrapes; counting into those directly is
//! exact, where deriving them from log-linear buckets would not be.

/// Sub-buckets per power of two, as a power of two (32).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this each have their own bucket.
const LINEAR_MAX: u64 = 2 * SUB;
/// Largest value told apart; larger values count in the top bucket.
pub const VALUE_MS_MAX: u64 = (1 << 21) - 1;
/// Number of buckets: 64 exact ones, then 32 per power of two from 2^6 to 2^20.
pub const BUCKETS: usize = (LINEAR_MAX + (21 - 6) * SUB) as usize;

/// The bucket of a value (milliseconds).
pub fn bucket_of(value_ms: u64) -> usize {
    let v = value_ms.min(VALUE_MS_MAX);
    if v < LINEAR_MAX {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros() as u64; // >= 6
    let shift = msb - u64::from(SUB_BITS);
    let sub = (v >> shift) - SUB; // 0..32
    (LINEAR_MAX + (msb - 6) * SUB + sub) as usize
}

/// The smallest and largest value of bucket `i`.
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    assert!(i < BUCKETS, "bucket {i} out of range");
    let i = i as u64;
    if i < LINEAR_MAX {
        return (i, i);
    }
    let msb = 6 + (i - LINEAR_MAX) / SUB;
    let sub = (i - LINEAR_MAX) % SUB;
    let shift = msb - u64::from(SUB_BITS);
    let low = (SUB + sub) << shift;
    (low, low + (1 << shift) - 1)
}

/// The value a quantile falling into bucket `i` is reported as: the bucket's midpoint
/// (rounded down), so the error is at most half a bucket.
pub fn bucket_value(i: usize) -> u64 {
    let (low, high) = bucket_bounds(i);
    low + (high - low) / 2
}

/// A dense log-linear histogram with `u64` counts: what snapshots merge into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }

    pub fn record(&mut self, value_ms: u64) {
        self.record_n(bucket_of(value_ms), 1);
    }

    fn record_n(&mut self, bucket: usize, n: u64) {
        self.counts[bucket] = self.counts[bucket].saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// Adds every count of `other` (the union of the two samples).
    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in other.counts.iter().enumerate() {
            if *n > 0 {
                self.record_n(i, *n);
            }
        }
    }

    /// Adds a sparse histogram's counts.
    pub fn merge_sparse(&mut self, other: &SparseHistogram) {
        for (i, n) in &other.buckets {
            self.record_n(usize::from(*i), u64::from(*n));
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value whose rank is at least
    /// `ceil(q * count)`, as its bucket's midpoint. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(i));
            }
        }
        unreachable!("rank {rank} is at most the total {}", self.total)
    }

    /// Non-empty buckets as `(bucket, count)`, ascending: the form that crosses threads.
    pub fn to_sparse_u64(&self) -> Vec<(u16, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u16, *n))
            .collect()
    }

    /// The inverse of [`Histogram::to_sparse_u64`]; out-of-range buckets are ignored.
    pub fn from_sparse_u64(buckets: &[(u16, u64)]) -> Histogram {
        let mut h = Histogram::new();
        for (i, n) in buckets {
            if usize::from(*i) < BUCKETS {
                h.record_n(usize::from(*i), *n);
            }
        }
        h
    }
}

/// The non-empty buckets of a histogram, sorted, with `u32` counts (saturating): compact for
/// the many time slots. At most [`BUCKETS`] entries of 8 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseHistogram {
    buckets: Vec<(u16, u32)>,
}

impl SparseHistogram {
    pub fn record(&mut self, value_ms: u64) {
        let b = bucket_of(value_ms) as u16;
        match self.buckets.binary_search_by_key(&b, |(i, _)| *i) {
            Ok(pos) => self.buckets[pos].1 = self.buckets[pos].1.saturating_add(1),
            Err(pos) => self.buckets.insert(pos, (b, 1)),
        }
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
        self.buckets.shrink_to(8);
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Bytes of heap this histogram holds.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u16, u32)>()
    }
}

/// A Prometheus histogram with fixed `le` bounds in microseconds: per-bucket counts (the last
/// one is `+Inf`), the sum and the count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromHistogram {
    pub bounds_us: &'static [u64],
    pub counts: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

/// `le` bounds of `hookrelay_delivery_latency_seconds`: 5 ms to 60 s.
pub const DELIVERY_BOUNDS_US: &[u64] = &[
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];
/// `le` bounds of `hookrelay_ingest_latency_seconds`: 0.5 ms to 10 s (ingest waits for an fsync).
pub const INGEST_BOUNDS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// `le` bounds of `hookrelay_shard_lag_seconds`: 1 ms to 1 s (a shard thread that cannot poll
/// its tasks for a second is stalled, whatever the cause).
pub const LAG_BOUNDS_US: &[u64] = &[
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl PromHistogram {
    pub fn new(bounds_us: &'static [u64]) -> PromHistogram {
        debug_assert!(bounds_us.windows(2).all(|w| w[0] < w[1]));
        PromHistogram {
            bounds_us,
            counts: vec![0; bounds_us.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }

    pub fn record_us(&mut self, value_us: u64) {
        let i = self.bounds_us.partition_point(|b| *b < value_us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(value_us);
        self.count += 1;
    }

    /// Adds `other`'s counts; both must have the same bounds.
    pub fn merge(&mut self, other: &PromHistogram) {
        assert_eq!(
            self.bounds_us, other.bounds_us,
            "merging histograms with different bounds"
        );
        self.add_counts(&other.counts, other.sum_us);
    }

    /// Adds per-bucket counts taken with the same bounds (one entry per bound, then the
    /// overflow), and their sum: a histogram kept elsewhere, such as the log's commit times.
    pub fn add_counts(&mut self, counts: &[u64], sum_us: u64) {
        assert_eq!(
            counts.len(),
            self.counts.len(),
            "adding counts of other bounds"
        );
        for (a, b) in self.counts.iter_mut().zip(counts) {
            *a += b;
            self.count += b;
        }
        self.sum_us = self.sum_us.saturating_add(sum_us);
    }

    /// `(le in seconds, cumulative count)` per bound, then `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(Option<f64>, u64)> {
        let mut seen = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            out.push((self.bounds_us.get(i).map(|b| *b as f64 / 1e6), seen));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_tile_the_range() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, high) = bucket_bounds(i);
            assert_eq!(low, next, "bucket {i} starts where the previous ended");
            assert!(high >= low);
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high), i);
            next = high + 1;
        }
        assert_eq!(next, VALUE_MS_MAX + 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bucket_width_bounds_the_error() {
        for i in LINEAR_MAX as usize..BUCKETS {
            let (low, high) = bucket_bounds(i);
            let mid = bucket_value(i);
            assert!(
                high - mid <= low / 64 && mid - low <= low / 64,
                "bucket {i}: {low}..={high}"
            );
        }
    }

    #[test]
    fn empty_has_no_quantiles() {
        assert_eq!(Histogram::new().quantile(0.5), None);
    }

    #[test]
    fn prometheus_buckets_are_cumulative() {
        let mut h = PromHistogram::new(DELIVERY_BOUNDS_US);
        h.record_us(5_000); // le is inclusive
        h.record_us(7_000);
        h.record_us(90_000_000);
        let c = h.cumulative();
        assert_eq!(c[0], (Some(0.005), 1));
        assert_eq!(c[1], (Some(0.01), 2));
        assert_eq!(*c.last().unwrap(), (None, 3));
        assert_eq!(h.sum_us, 90_012_000);
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.count, 6);
        assert_eq!(twice.cumulative()[1].1, 4);
    }

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    proptest! {
        /// Against a sorted `Vec` model: every quantile is within the bucket error of the exact one.
        #[test]
        fn quantiles_within_bucket_error(values in proptest::collection::vec(0u64..3_000_000, 1..400),
                                         q in 0.0f64..=1.0) {
            let mut h = Histogram::new();
            let mut sparse = SparseHistogram::default();
            for v in &values {
                h.record(*v);
                sparse.record(*v);
            }
            let mut sorted: Vec<u64> = values.iter().map(|v| (*v).min(VALUE_MS_MAX)).collect();
            sorted.sort_unstable();
            for q in [q, 0.5, 0.95, 0.99, 0.0, 1.0] {
                let exact = exact_quantile(&sorted, q);
                let got = h.quantile(q).unwrap();
                prop_assert!(got.abs_diff(exact) <= exact / 64, "q={} exact={} got={}", q, exact, got);
            }
            let mut from_sparse = Histogram::new();
            from_sparse.merge_sparse(&sparse);
            prop_assert_eq!(&from_sparse, &h);
            prop_assert_eq!(Histogram::from_sparse_u64(&h.to_sparse_u64()), h.clone());
        }

        /// Merging is the histogram of the union of the samples.
        #[test]
        fn merge_is_union(a in proptest::collection::vec(0u64..5_000_000, 0..200),
                          b in proptest::collection::vec(0u64..5_000_000, 0..200)) {
            let (mut ha, mut hb, mut hu) = (Histogram::new(), Histogram::new(), Histogram::new());
            for v in &a { ha.record(*v); hu.record(*v); }
            for v in &b { hb.record(*v); hu.record(*v); }
            let mut merged = ha.clone();
            merged.merge(&hb);
            prop_assert_eq!(&merged, &hu);
            let mut other_way = hb;
            other_way.merge(&ha);
            prop_assert_eq!(other_way, hu);
        }
    }
}
