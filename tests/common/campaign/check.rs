//! The campaign's checker: pure functions of a recorded [`History`] (times are offsets from the
//! start of the run), so that each can be tested on fabricated histories.
//!
//! **Two serving at once** is judged on observations: a probe of a node's greeting (220 or
//! not) or of its `/status` (`serving`). An observation says the node was serving at *some*
//! instant of its window (from before the probe's connect to after its answer). Two nodes count
//! as serving at once only when a serving observation of each has a window no longer than
//! `max_window` and the windows intersect: the two were then serving within `2 × max_window`
//! of each other, far less than the gap the design keeps between one node's fence and the
//! other's promotion (failover_timeout − lease − heartbeat − 5 %), and a probe that took long
//! (a stopped node answering when it wakes) is left out instead of stretched into a false alarm.
//! A delivery (from MAIL FROM to the end of the body, at the node's own sink) is treated the
//! same way: one by a node while the other was seen serving counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The two data nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataNode {
    A,
    B,
}

impl DataNode {
    pub fn name(self) -> &'static str {
        match self {
            DataNode::A => "a",
            DataNode::B => "b",
        }
    }
}

/// A time window: something happened at some instant within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    pub fn len(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    pub fn intersects(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// A 250 for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub id: String,
    pub node: DataNode,
    /// The submission, from its connect to the 250.
    pub window: Window,
}

/// A probe's view of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub node: DataNode,
    pub window: Window,
    pub serving: bool,
    /// From `/status`; None for a greeting probe.
    pub epoch: Option<u64>,
}

/// A message received by a node's own sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The node whose sink received it.
    pub by: DataNode,
    pub id: String,
    pub window: Window,
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub acks: Vec<Ack>,
    /// Messages sent again after a submission whose fate was unknown (the body went out, no
    /// reply came): the client may have made a duplicate itself.
    pub resent: BTreeSet<String>,
    pub observations: Vec<Observation>,
    /// Deliveries of the load's messages (not of bounces).
    pub deliveries: Vec<Delivery>,
    /// Messages named in a bounce (a DSN) that reached a sink.
    pub bounced: BTreeSet<String>,
    /// When each fault was injected.
    pub faults: Vec<Duration>,
    /// When the last fault was healed (every node up, every link whole).
    pub healed: Option<Duration>,
}

/// The bounds the checks hold the history to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest probe or delivery window that counts for "two serving at once".
    pub max_window: Duration,
    /// How long after the heal a node must serve (failover_timeout + 1 s).
    pub rto: Duration,
    /// A message is in flight at a fault when its submission began before the fault plus
    /// this (an isolated primary may still acknowledge until its lease runs out) ...
    pub ack_grace: Duration,
    /// ... and it was not yet delivered this long before the fault (a delivery's result
    /// takes a moment to reach the standby).
    pub result_grace: Duration,
}

/// Two nodes seen serving at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub first: (DataNode, Window, &'static str),
    pub second: (DataNode, Window, &'static str),
}

/// What the checks found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub acknowledged: usize,
    pub delivered: usize,
    /// Acknowledged, neither delivered nor bounced.
    pub lost: Vec<String>,
    /// Serving observations of both nodes at once.
    pub overlaps: Vec<Overlap>,
    /// Extra deliveries (each delivery of a message beyond its first).
    pub duplicates: usize,
    /// Messages in flight at the faults (or sent again by the client): the most that may be
    /// duplicated.
    pub in_flight: usize,
    /// Duplicated messages that were not in flight at any fault.
    pub unexplained_duplicates: Vec<String>,
    /// From the heal to the end of the first serving observation after it.
    pub rto: Option<Duration>,
    pub rto_late: bool,
}

impl Verdict {
    /// The broken invariants, one line each; empty when the run is clean.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.lost.is_empty() {
            out.push(format!(
                "lost: {} of {} acknowledged messages never delivered nor bounced (first: {:?})",
                self.lost.len(),
                self.acknowledged,
                &self.lost[..self.lost.len().min(5)]
            ));
        }
        if let Some(o) = self.overlaps.first() {
            out.push(format!(
                "two serving: {} observations of both nodes serving at once (first: {} by {} \
                 at {:?}, {} by {} at {:?})",
                self.overlaps.len(),
                o.first.2,
                o.first.0.name(),
                o.first.1,
                o.second.2,
                o.second.0.name(),
                o.second.1
            ));
        }
        if self.duplicates > self.in_flight || !self.unexplained_duplicates.is_empty() {
            out.push(format!(
                "duplicates: {} extra deliveries, {} messages in flight at the faults; not in \
                 flight: {:?}",
                self.duplicates, self.in_flight, self.unexplained_duplicates
            ));
        }
        if self.rto_late {
            out.push(match self.rto {
                Some(rto) => format!("rto: a node served {} ms after the heal", rto.as_millis()),
                None => "rto: no node served after the heal".to_string(),
            });
        }
        out
    }
}

/// Runs every check.
pub fn check(history: &History, limits: &Limits) -> Verdict {
    let acked: BTreeSet<&str> = history.acks.iter().map(|a| a.id.as_str()).collect();
    let delivered: BTreeSet<&str> = history.deliveries.iter().map(|d| d.id.as_str()).collect();
    let (duplicates, duplicated) = duplicates(history);
    let in_flight = in_flight(history, limits);
    let rto = rto(history);
    Verdict {
        acknowledged: acked.len(),
        delivered: delivered.len(),
        lost: lost(history),
        overlaps: overlaps(history, limits.max_window),
        duplicates,
        in_flight: in_flight.len(),
        unexplained_duplicates: duplicated
            .into_iter()
            .filter(|id| !in_flight.contains(id.as_str()))
            .collect(),
        rto,
        rto_late: history.healed.is_some() && rto.is_none_or(|rto| rto > limits.rto),
    }
}

/// Acknowledged messages that no sink received and no bounce names, in order.
pub fn lost(history: &History) -> Vec<String> {
    let delivered: BTreeSet<&str> = history.deliveries.iter().map(|d| d.id.as_str()).collect();
    let lost: BTreeSet<&str> = history
        .acks
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| !delivered.contains(id) && !history.bounced.contains(*id))
        .collect();
    lost.into_iter().map(str::to_string).collect()
}

/// Every pair of (serving observation or delivery) of different nodes whose short windows
/// intersect.
pub fn overlaps(history: &History, max_window: Duration) -> Vec<Overlap> {
    let mut serving: Vec<(DataNode, Window, &'static str)> = history
        .observations
        .iter()
        .filter(|o| o.serving)
        .map(|o| (o.node, o.window, if o.epoch.is_some() { "status" } else { "greeting" }))
        .chain(history.deliveries.iter().map(|d| (d.by, d.window, "delivery")))
        .filter(|(_, w, _)| w.len() <= max_window)
        .collect();
    serving.sort_by_key(|(_, w, _)| w.start);
    let mut found = Vec::new();
    for (i, first) in serving.iter().enumerate() {
        // Sorted by start: once a window starts after `first` ends, none later can meet it.
        for second in serving[i + 1..].iter().take_while(|s| s.1.start <= first.1.end) {
            // Two deliveries by different nodes are not two *serving* observations each: a
            // delivery overlaps only what says the other node was serving.
            let both_deliveries = first.2 == "delivery" && second.2 == "delivery";
            if first.0 != second.0 && !both_deliveries && first.1.intersects(&second.1) {
                found.push(Overlap { first: *first, second: *second });
            }
        }
    }
    found
}

/// The extra deliveries in all, and the messages delivered more than once.
pub fn duplicates(history: &History) -> (usize, Vec<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for delivery in &history.deliveries {
        *counts.entry(delivery.id.as_str()).or_insert(0) += 1;
    }
    let extra = counts.values().map(|n| n - 1).sum();
    let duplicated = counts.into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id.to_string());
    (extra, duplicated.collect())
}

/// The messages in flight at some fault: submitted before the fault (plus `ack_grace`) and
/// not delivered before it (less `result_grace`); and those the client sent again.
pub fn in_flight(history: &History, limits: &Limits) -> BTreeSet<String> {
    let mut first_delivery: BTreeMap<&str, Duration> = BTreeMap::new();
    for d in &history.deliveries {
        let at = first_delivery.entry(d.id.as_str()).or_insert(d.window.end);
        *at = (*at).min(d.window.end);
    }
    let mut found: BTreeSet<String> = history.resent.clone();
    for &fault in &history.faults {
        for ack in &history.acks {
            let submitted_before = ack.window.start <= fault + limits.ack_grace;
            let undelivered = first_delivery
                .get(ack.id.as_str())
                .is_none_or(|&at| at + limits.result_grace >= fault);
            if submitted_before && undelivered {
                found.insert(ack.id.clone());
            }
        }
    }
    found
}

/// From the heal to the end of the first serving observation that began after it.
pub fn rto(history: &History) -> Option<Duration> {
    let healed = history.healed?;
    history
        .observations
        .iter()
        .filter(|o| o.serving && o.window.start >= healed)
        .map(|o| o.window.end - healed)
        .min()
}
