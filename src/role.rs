//! The node's role as every part reads it: role, epoch, and until when it may serve.
//!
//! A leaf module: it imports nothing of relayd but the config's [`Role`], so that `smtp`,
//! `delivery`, `admin` and `replication` can read the role without importing `ha`, which sits
//! above them all and is the only writer ([`RoleWatch`] is made by `ha`). The replication link
//! does not change the role either: it reports what it sees ([`Report`], through a
//! [`Reporter`]) and `ha` decides; for a Hello it waits for the decision ([`LinkVerdict`]).
//!
//! Serving is a question asked at the moment of use, against the lease's deadline, never a
//! cached flag: a session asks [`RoleStatus::serving_now`] before each 250, the queue runner
//! before each delivery. A primary whose process was paused past its lease wakes up not
//! serving, whatever the last published status said.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::config::Role;

/// Until when a primary may serve, on clock `T`: an [`Instant`] here, core time
/// (`ha::core::Ms`) in the failover controller's decisions, which read no clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve<T> {
    /// Not serving: a standby, a primary without a lease (fenced), or one that is handing over.
    Never,
    /// A leased primary: serving until this time, unless renewed.
    Until(T),
    /// A primary that needs no lease (nobody can be promoted in its place automatically).
    Always,
}

/// Until when a primary may serve, by the clock.
pub type ServeUntil = Serve<Instant>;

/// What a node is, on clock `T` (see [`Serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status<T> {
    pub role: Role,
    pub epoch: u64,
    pub serve: Serve<T>,
    /// A standby claiming or beginning an epoch of its own: it acknowledges nothing to the
    /// old primary meanwhile (an ack would renew a lease its new epoch is about to end).
    pub claiming: bool,
}

impl<T: PartialOrd> Status<T> {
    /// Accepting and delivering mail at `now`.
    pub fn serving_at(&self, now: T) -> bool {
        self.role == Role::Primary
            && match &self.serve {
                Serve::Never => false,
                Serve::Until(deadline) => now < *deadline,
                Serve::Always => true,
            }
    }
}

/// What this node is now, as the parts that read the role see it.
pub type RoleStatus = Status<Instant>;

impl RoleStatus {
    /// Accepting and delivering mail now (reads the clock).
    pub fn serving_now(&self) -> bool {
        self.serving_at(Instant::now())
    }
}

/// The receiving side of the role's watch: what every part holds.
pub type RoleWatch = watch::Receiver<RoleStatus>;

/// Reads the current status of a role watch.
pub fn current(watch: &RoleWatch) -> RoleStatus {
    *watch.borrow()
}

/// How far a node's data goes, compared as Raft compares logs: the last epoch of its history
/// first, then the last sequence number. `(0, 0)` is an empty spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Data {
    pub epoch: u64,
    pub seq: u64,
}

impl Data {
    pub fn is_empty(&self) -> bool {
        self.epoch == 0
    }
}

/// The peer as its Hello describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub primary: bool,
    pub data: Data,
}

/// Which end of the link this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We dialed the peer (a primary, or a primary still without an epoch).
    Shipping,
    /// The peer dialed us, saying it is a primary.
    Following,
}

/// What the link does after the Hellos, as `ha` decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkVerdict {
    /// Shipping: stream to the standby (resume, rewind, or snapshot: it is not ahead of us).
    Ship,
    /// Following: apply what the primary ships.
    Follow,
    /// Shipping: the standby holds more than we do: ask it to take over after `epoch`
    /// (`Frame::Handover`), and follow it.
    Yield { epoch: u64 },
    /// Following: the peer is behind us: send it our Hello (it steps down or yields to us)
    /// and take its handover if it sends one.
    Stale,
    /// Nothing to do on this link.
    Close,
}

/// What the replication link tells `ha`.
#[derive(Debug)]
pub enum Report {
    /// The Hellos were exchanged: `verdict` gets the decision.
    Hello { side: Side, ours: Data, theirs: Peer, verdict: oneshot::Sender<LinkVerdict> },
    /// Standby: a frame from the primary we follow arrived.
    PrimaryFrame,
    /// Primary: the standby acknowledged a frame we sent at `sent`.
    StandbyAck { sent: Instant },
    /// Standby: our spool holds the primary's history up to `epoch`.
    Followed { epoch: u64 },
    /// Standby: the primary asks us to take over after its `epoch`.
    HandoverAsked { epoch: u64 },
    /// Primary: the standby took over in `epoch`.
    TookOver { epoch: u64 },
    /// Standby: a record of the primary's paused (true) or resumed automatic failover.
    FailoverPaused(bool),
}

/// The link's way to report to `ha`; cheap to clone.
#[derive(Clone, Debug)]
pub struct Reporter {
    reports: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    pub fn new(reports: mpsc::UnboundedSender<Report>) -> Reporter {
        Reporter { reports }
    }

    /// Reports something; `ha` acts on it in order. A node shutting down drops it.
    pub fn report(&self, report: Report) {
        let _ = self.reports.send(report);
    }

    /// Reports the Hellos and waits for the decision (Close if `ha` is gone).
    pub async fn hello(&self, side: Side, ours: Data, theirs: Peer) -> LinkVerdict {
        let (verdict, decided) = oneshot::channel();
        self.report(Report::Hello { side, ours, theirs, verdict });
        decided.await.unwrap_or(LinkVerdict::Close)
    }
}
