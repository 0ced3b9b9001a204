//! A fixed-bucket latency histogram written by one shard and read by the
//! scrape: the shape Prometheus exposes (`le` buckets, `_sum`, `_count`),
//! so nothing is converted at scrape time and nothing is locked on record.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::Counter;

/// Upper bounds of the buckets, in seconds (the `+Inf` bucket is implicit).
/// From a cached login or a small RETR (about a millisecond) to a failed
/// login's delay (2 s by default, up to 15 s with penalties) and a large
/// RETR to a slow client.
pub const BOUNDS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The bounds in nanoseconds, for the recording path (no float maths).
const BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// One shard's histogram. Buckets hold plain (not cumulative) counts; the
/// last one is `+Inf`.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Counter; BOUNDS_NS.len() + 1],
    sum_ns: Counter,
}

/// A histogram summed over shards, as rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Plain counts per bucket, `+Inf` last.
    pub buckets: [u64; BOUNDS_NS.len() + 1],
    /// The sum of every observation, in nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// Records one observation. Called by the owning shard only.
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket].add(1);
        self.sum_ns.add(ns);
    }

    /// Adds this shard's counts into `into`.
    pub fn add_to(&self, into: &mut Snapshot) {
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            *total = total.wrapping_add(bucket.get());
        }
        into.sum_ns = into.sum_ns.wrapping_add(self.sum_ns.get());
    }
}

impl Snapshot {
    /// Observations in all buckets: `_count`, always equal to the `+Inf`
    /// bucket even when a scrape races a record.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |n, &b| n.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree_and_ascend() {
        for (s, ns) in BOUNDS_SECONDS.iter().zip(BOUNDS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::from_micros(500)); // le="0.0005" is inclusive
        h.record(Duration::from_micros(501));
        h.record(Duration::from_secs(2));
        h.record(Duration::from_secs(11));
        h.record(Duration::MAX);
        let mut s = Snapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[11], 1); // le="2.5"
        assert_eq!(s.buckets[14], 2); // +Inf
        assert_eq!(s.count(), 6);
        h.add_to(&mut s);
        assert_eq!(s.count(), 12);
    }
}
