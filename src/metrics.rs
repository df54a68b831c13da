//! The counters behind `/metrics` (the names of docs/contract.md, "Metrics"). Gauges that can be read off their owner
//! (queue length from the spool, open sessions from the connection limiter) are not kept here.

use std::sync::atomic::{AtomicU64, Ordering};

/// Event counters, shared by the parts of a node that count.
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
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
