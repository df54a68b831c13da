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
//!
//! **Serving again in seconds** is judged on the faults' state, as the run applied them: in
//! every stretch of time in which the faults left the cluster able to serve ([`serviceable`])
//! and that lasted at least the recovery bound, some node must be seen serving within that
//! bound of the stretch's start. The last stretch, after everything healed, is one of them.
//! While the operator has paused automatic failover, only the pair itself is held to it: a
//! paused standby alone with the witness never takes over (the schedule resumes or promotes).
//!
//! **The operator's actions** are held to what they promise: a message held (and not released
//! since) is never delivered; no automatic promotion (an epoch whose cause is `failover`)
//! begins while the failover is paused on both data nodes; and once healed, the standby holds
//! the primary's queue, holds included (after a rebuild too).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::schedule::{Link, Member};

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
    /// Messages sent again after a submission whose fate was unknown (the body went out, and
    /// no reply came, or a 4xx: a primary that stopped serving withdraws the message, which
    /// its standby may hold already): the client may have made a duplicate itself.
    pub resent: BTreeSet<String>,
    pub observations: Vec<Observation>,
    /// Deliveries of the load's messages (not of bounces).
    pub deliveries: Vec<Delivery>,
    /// Messages named in a bounce (a DSN) that reached a sink.
    pub bounced: BTreeSet<String>,
    /// When each fault was injected.
    pub faults: Vec<Duration>,
    /// The faults' state after each change the run made, in time order (the first: nothing
    /// started yet, or whatever the run began with; the last: everything healed).
    pub states: Vec<StateChange>,
    /// When the recording ended.
    pub end: Duration,
    /// The operator's holds of messages.
    pub holds: Vec<Hold>,
    /// The stretches in which automatic failover was paused on both data nodes (from the
    /// second pause's answer to the resume's request).
    pub pauses: Vec<Window>,
    /// Every epoch a data node began, as its log and its `/history` say.
    pub promotions: Vec<Promotion>,
    /// Each data node's queue once healed and drained, holds still in place (`ID` or
    /// `ID held`): None when the run could not read both.
    pub final_queues: Option<[BTreeSet<String>; 2]>,
}

/// A message an operator held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Its Message-ID.
    pub id: String,
    /// When the hold was answered.
    pub held: Duration,
    /// When its release was asked for, if it was.
    pub released: Option<Duration>,
    /// The primary that took it was not in sync with its standby (degraded): deposed before
    /// its standby had the hold, the new primary may deliver the message until the old one
    /// returns with it (docs/operations.md, "Hold and release"), so such a delivery is counted
    /// apart, not a violation.
    pub alone: bool,
}

/// A data node became primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub node: DataNode,
    pub epoch: u64,
    /// When its `promoted` line was logged.
    pub at: Duration,
    /// The epoch's cause in `/history` (`failover`, `switchover`, `promote`, ...).
    pub cause: String,
}

/// What the faults left of the trio at some moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultState {
    /// Not running (never started, or killed).
    pub down: BTreeSet<Member>,
    /// SIGSTOPped.
    pub stopped: BTreeSet<Member>,
    /// Links broken in any way (severed, silent, one direction silent).
    pub broken: BTreeSet<Link>,
    /// The operator paused automatic failover (on some node at least).
    pub paused: bool,
}

impl FaultState {
    /// Nothing broken (a pause of the failover breaks nothing).
    pub fn healthy(&self) -> bool {
        self.down.is_empty() && self.stopped.is_empty() && self.broken.is_empty()
    }

    /// Running and awake.
    pub fn up(&self, member: Member) -> bool {
        !self.down.contains(&member) && !self.stopped.contains(&member)
    }

    fn whole(&self, link: Link) -> bool {
        !self.broken.contains(&link)
    }
}

/// The state the faults left from `at` on; `wiped` when this change emptied a data node's
/// spool (its disk lost, or the operator's rebuild).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub at: Duration,
    pub state: FaultState,
    pub wiped: Option<Member>,
}

/// The bounds the checks hold the history to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest probe or delivery window that counts for "two serving at once".
    pub max_window: Duration,
    /// How long after the start of a serviceable stretch a node must serve
    /// (failover_timeout + 1 s).
    pub rto: Duration,
    /// How long the cluster must have been whole before a lone data node may be expected to
    /// take over (it has followed a primary, and caught up after a lost disk).
    pub settle: Duration,
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
    /// Each serviceable stretch that lasted at least the recovery bound, and how long after
    /// its start a node was first seen serving (to the end of that observation).
    pub recoveries: Vec<(Window, Option<Duration>)>,
    /// The recovery bound the stretches were held to.
    pub rto_bound: Duration,
    /// Deliveries of a message while an operator held it (a hold its primary shared with
    /// its standby).
    pub held_delivered: Vec<String>,
    /// The same, of holds taken by a primary alone (the documented window).
    pub held_alone_delivered: Vec<String>,
    /// Automatic promotions while failover was paused.
    pub paused_promotions: Vec<Promotion>,
    /// How the standby's queue differed from the primary's once healed.
    pub diverged: Option<String>,
}

impl Verdict {
    /// The longest recovery (None: no stretch demanded one, or one never recovered).
    pub fn rto_max(&self) -> Option<Duration> {
        self.recoveries.iter().map(|(_, rto)| *rto).max().flatten()
    }

    /// The recovery after the last heal.
    pub fn rto_final(&self) -> Option<Duration> {
        self.recoveries.last().and_then(|(_, rto)| *rto)
    }

    fn late(&self, bound: Duration) -> Vec<(Window, Option<Duration>)> {
        let late = |rto: &Option<Duration>| rto.is_none_or(|rto| rto > bound);
        self.recoveries.iter().filter(|(_, rto)| late(rto)).copied().collect()
    }
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
        if !self.held_delivered.is_empty() {
            out.push(format!(
                "held: {} messages delivered while held (first: {:?})",
                self.held_delivered.len(),
                &self.held_delivered[..self.held_delivered.len().min(5)]
            ));
        }
        if let Some(p) = self.paused_promotions.first() {
            out.push(format!(
                "paused: {} automatic promotions while failover was paused (first: {} in epoch \
                 {} at {:.1} s)",
                self.paused_promotions.len(),
                p.node.name(),
                p.epoch,
                p.at.as_secs_f64()
            ));
        }
        if let Some(diverged) = &self.diverged {
            out.push(format!("diverged: {diverged}"));
        }
        for (stretch, rto) in self.late(self.rto_bound) {
            let (from, to) = (stretch.start.as_secs_f64(), stretch.end.as_secs_f64());
            out.push(match rto {
                Some(rto) => format!(
                    "rto: the faults allowed serving from {from:.1} s to {to:.1} s, a node \
                     served only {} ms after its start",
                    rto.as_millis()
                ),
                None => format!(
                    "rto: the faults allowed serving from {from:.1} s to {to:.1} s, no node served"
                ),
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
        recoveries: recoveries(history, limits),
        rto_bound: limits.rto,
        held_delivered: held_delivered(history, false),
        held_alone_delivered: held_delivered(history, true),
        paused_promotions: paused_promotions(history),
        diverged: diverged(history),
    }
}

/// The messages delivered (the delivery's MAIL FROM) after their hold was answered and before
/// its release was asked for (a delivery already under way when the hold came may finish), of
/// the holds taken by a primary `alone` or not.
pub fn held_delivered(history: &History, alone: bool) -> Vec<String> {
    let mut found = BTreeSet::new();
    for hold in history.holds.iter().filter(|h| h.alone == alone) {
        let held = |at: Duration| at > hold.held && hold.released.is_none_or(|r| at < r);
        if history.deliveries.iter().any(|d| d.id == hold.id && held(d.window.start)) {
            found.insert(hold.id.clone());
        }
    }
    found.into_iter().collect()
}

/// The automatic promotions (cause `failover`) logged while failover was paused everywhere.
pub fn paused_promotions(history: &History) -> Vec<Promotion> {
    let paused = |at: Duration| history.pauses.iter().any(|w| w.start <= at && at <= w.end);
    history.promotions.iter().filter(|p| p.cause == "failover" && paused(p.at)).cloned().collect()
}

/// How the two nodes' final queues differ, if they do.
pub fn diverged(history: &History) -> Option<String> {
    let [a, b] = history.final_queues.as_ref()?;
    if a == b {
        return None;
    }
    let only = |x: &BTreeSet<String>, y: &BTreeSet<String>| -> Vec<String> {
        x.difference(y).take(5).cloned().collect()
    };
    Some(format!(
        "a's queue ({} messages) and b's ({}) differ: only a's {:?}, only b's {:?}",
        a.len(),
        b.len(),
        only(a, b),
        only(b, a)
    ))
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

/// Whether the faults of `state` leave the cluster able to serve: both data nodes up with
/// their link whole both ways (the primary's lease comes from its standby); or, unless the
/// operator paused the failover (a standby alone never takes over then), a data node up, in
/// touch with an awake witness, that is `eligible` (it has followed a primary and holds the
/// cluster's mail: it may take over).
pub fn serviceable(state: &FaultState, eligible: impl Fn(Member) -> bool) -> bool {
    let pair = state.up(Member::A)
        && state.up(Member::B)
        && state.whole(Link::Ab)
        && state.whole(Link::Ba);
    let with_witness = |node: Member, link: Link| {
        state.up(node) && state.up(Member::W) && state.whole(link) && eligible(node)
    };
    let alone =
        !state.paused && (with_witness(Member::A, Link::Aw) || with_witness(Member::B, Link::Bw));
    pair || alone
}

/// The serviceable stretches at least `limits.rto` long, each with its recovery time. A data
/// node is eligible once the cluster has been whole for `limits.settle`, and again after its
/// disk was lost only once the cluster has been whole that long since.
pub fn recoveries(history: &History, limits: &Limits) -> Vec<(Window, Option<Duration>)> {
    // A change that leaves the state as it was (a disk wiped while its node is down) does not
    // start a new stretch.
    let mut stretches: Vec<(Window, &FaultState, BTreeSet<Member>)> = Vec::new();
    for (i, change) in history.states.iter().enumerate() {
        let end = history.states.get(i + 1).map_or(history.end, |next| next.at);
        match stretches.last_mut() {
            Some((window, state, wiped)) if **state == change.state => {
                window.end = end;
                wiped.extend(change.wiped);
            }
            _ => stretches.push((
                Window { start: change.at, end },
                &change.state,
                change.wiped.into_iter().collect(),
            )),
        }
    }
    let mut settled = false;
    let mut behind: BTreeSet<Member> = BTreeSet::new();
    let mut found = Vec::new();
    for (stretch, state, wiped) in stretches {
        behind.extend(wiped);
        let eligible = |node: Member| settled && !behind.contains(&node);
        if stretch.len() >= limits.rto && serviceable(state, eligible) {
            let first = history
                .observations
                .iter()
                .filter(|o| {
                    o.serving && o.window.start >= stretch.start && o.window.end <= stretch.end
                })
                .map(|o| o.window.end - stretch.start)
                .min();
            found.push((stretch, first));
        }
        if state.healthy() && stretch.len() >= limits.settle {
            settled = true;
            behind.clear();
        }
    }
    found
}
