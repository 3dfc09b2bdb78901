//! Per-transfer latencies, kept as a fixed-size log-linear histogram so that any number of
//! transfers costs the same memory, and so that tasks (threads here, MPI ranks in a C
//! driver) merge theirs by adding bucket counts (`MPI_Reduce` with `MPI_SUM`).
//!
//! A latency of `v` nanoseconds falls in bucket `v` when `v < 64`; otherwise, with
//! `e = floor(log2 v)`, in bucket `(e - 4) * 32 + (v >> (e - 5)) - 32`: 32 buckets per
//! power of two, so a percentile read from the histogram is within 1/32 (about 3%) of the
//! true value. Count, sum, minimum and maximum are kept exactly.

use std::time::Duration;

/// Buckets per power of two (as a power of two: 2^5 = 32).
const SUB_BUCKET_BITS: u32 = 5;
/// Buckets per power of two.
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Buckets in all: enough for every `u64` number of nanoseconds.
pub(super) const LATENCY_BUCKETS: usize =
    ((64 - SUB_BUCKET_BITS as usize) + 1) * SUB_BUCKETS as usize;

fn bucket_of(ns: u64) -> usize {
    if ns < 2 * SUB_BUCKETS {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros();
    let sub = (ns >> (e - SUB_BUCKET_BITS)) - SUB_BUCKETS;
    ((u64::from(e) - u64::from(SUB_BUCKET_BITS) + 1) * SUB_BUCKETS + sub) as usize
}

/// The smallest value of bucket `b` and the width of the bucket.
fn bucket_range(b: usize) -> (u64, u64) {
    let b = b as u64;
    if b < 2 * SUB_BUCKETS {
        return (b, 1);
    }
    let e = b / SUB_BUCKETS + u64::from(SUB_BUCKET_BITS) - 1;
    let sub = b % SUB_BUCKETS;
    let shift = e - u64::from(SUB_BUCKET_BITS);
    ((SUB_BUCKETS + sub) << shift, 1 << shift)
}

/// A histogram of latencies.
#[derive(Debug, Clone)]
pub(super) struct Latencies {
    counts: Vec<u64>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            counts: vec![0; LATENCY_BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

/// What a report says of latencies, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct LatencySummary {
    /// Transfers measured.
    pub count: u64,
    /// Mean (exact).
    pub mean_s: f64,
    /// Shortest (exact).
    pub min_s: f64,
    /// Median (within a bucket).
    pub p50_s: f64,
    /// 99th percentile (within a bucket).
    pub p99_s: f64,
    /// Longest (exact).
    pub max_s: f64,
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Latencies {
    /// Counts one latency.
    pub(super) fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds another histogram's latencies to this one.
    pub(super) fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value below which a fraction `p` (0 to 1) of the latencies lie: the middle of
    /// the bucket holding the `ceil(p * count)`-th smallest, kept within the exact minimum
    /// and maximum. 0 when nothing was recorded.
    pub(super) fn percentile_ns(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(b);
                return (low + width / 2).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// Mean, extremes and percentiles, in seconds.
    pub(super) fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            mean_s: self.sum_ns as f64 / self.count as f64 / 1e9,
            min_s: seconds(self.min_ns),
            p50_s: seconds(self.percentile_ns(0.50)),
            p99_s: seconds(self.percentile_ns(0.99)),
            max_s: seconds(self.max_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for ns in (0..5000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b < LATENCY_BUCKETS, "{ns}");
            assert!(b >= last, "{ns}");
            last = b;
            let (low, width) = bucket_range(b);
            assert!(low <= ns && ns - low < width, "{ns} in [{low}, +{width})");
            assert!(width <= low / SUB_BUCKETS + 1, "{ns}: bucket too wide");
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Latencies::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.mean_s - 500.5e-6).abs() < 1e-12);
        assert_eq!(s.min_s, 1e-6);
        assert_eq!(s.max_s, 1e-3);
        assert!((s.p50_s / 500e-6 - 1.0).abs() < 1.0 / 32.0, "{}", s.p50_s);
        assert!((s.p99_s / 990e-6 - 1.0).abs() < 1.0 / 32.0, "{}", s.p99_s);
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for us in 1..=1000u64 {
            if us % 2 == 0 { &mut a } else { &mut b }.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.summary(), s);
    }

    #[test]
    fn nothing_recorded_is_all_zero() {
        assert_eq!(Latencies::default().summary(), LatencySummary::default());
    }
}
