//! The counters and histograms behind `/metrics` (the names of docs/contract.md, "Metrics").
//! Gauges that can be read off their owner (queue length from the spool, open sessions from the
//! connection limiter) are not kept here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Event counters and latency histograms, shared by the parts of a node that count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages acknowledged with 250.
    pub messages_accepted: AtomicU64,
    /// Recipients delivered (the next hop said 2xx).
    pub recipients_delivered: AtomicU64,
    /// Recipient delivery attempts that failed temporarily and were rescheduled.
    pub recipients_deferred: AtomicU64,
    /// Recipients given up on (permanent failure or expiry).
    pub recipients_bounced: AtomicU64,
    /// Promotions of this node to primary.
    pub failovers: AtomicU64,
    /// Transactions and messages refused with `452 4.3.1`: the spool's disk low or full.
    pub storage_refusals: AtomicU64,
    /// From the end of DATA (or BDAT LAST) to the 250: the durable commit, and in sync mode
    /// the standby's acknowledgement.
    pub smtp_commit: Histogram,
    /// In sync mode, how long a session waited for the standby's acknowledgement of its
    /// message (acknowledged, or given up on at `sync_timeout`).
    pub replication_ack: Histogram,
    /// One delivery attempt of a job (connect or reuse, the transaction, the results' commit).
    pub delivery_attempt: Histogram,
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The upper bounds (seconds) of every histogram's buckets: from a fast local commit (1 ms)
/// to a slow next hop (a minute); `+Inf` is implied.
pub const BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A latency histogram with the fixed [`BUCKETS`]: one atomic add per observation and bucket
/// (no lock), so that the session's hot path pays next to nothing.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// The observations' sum, in microseconds (an integer, so that it can be atomic).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram as Prometheus shows it: cumulative counts per bound. Read without a lock,
    /// so an observation made meanwhile may be in the count and not yet in the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum_micros = self.sum_micros.load(Ordering::Relaxed);
        HistogramSnapshot { cumulative, sum_seconds: sum_micros as f64 / 1e6 }
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or below each of [`BUCKETS`], then all of them (`+Inf`); empty for a
    /// histogram never read (the page then shows zeros).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Every observation (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500)); // <= 0.001
        histogram.observe(Duration::from_millis(1)); // == 0.001: its bound is inclusive
        histogram.observe(Duration::from_millis(30)); // <= 0.05
        histogram.observe(Duration::from_secs(120)); // above every bound
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative.len(), BUCKETS.len() + 1);
        let at = |bound: f64| {
            let index = BUCKETS.iter().position(|&b| b == bound).unwrap();
            snapshot.cumulative[index]
        };
        assert_eq!(at(0.001), 2);
        assert_eq!(at(0.025), 2);
        assert_eq!(at(0.05), 3);
        assert_eq!(at(60.0), 3);
        assert_eq!(snapshot.count(), 4);
        assert!((snapshot.sum_seconds - 120.0315).abs() < 1e-9, "{}", snapshot.sum_seconds);
    }

    #[test]
    fn cumulative_counts_never_decrease() {
        let histogram = Histogram::default();
        for ms in [0, 3, 3, 70, 900, 4000, 9000, 20_000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let snapshot = histogram.snapshot();
        assert!(snapshot.cumulative.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(snapshot.count(), 8);
        assert_eq!(snapshot.cumulative[0], 1);
    }
}
