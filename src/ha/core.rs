//! The failover controller's decisions, with no I/O: `(state, event, now) -> actions`.
//!
//! [`Core::step`] is the one place where this node's role or epoch changes. It reads no clock
//! (time is passed in, in milliseconds of a monotonic clock), opens no socket and touches no
//! disk: the shell (`ha::Ha` and the replication tasks) carries out the [`Action`]s and feeds
//! what came of them back as [`Event`]s. The deterministic simulation (`ha::sim`) runs the
//! same code on a simulated clock and network.
//!
//! The rules it keeps (docs/guarantees.md has them in full, with the tests that check them):
//! * the direction of data follows the data, never the configured role: a node ships only to
//!   a peer whose history is not ahead of its own; a primary that finds its standby ahead
//!   yields to it ([`LinkVerdict::Yield`]);
//! * a node without an epoch history never serves or promotes by itself: the configured
//!   primary bootstraps epoch 1 only with the witness's grant (which it gives only when it has
//!   never granted one), or, without a witness, when the peer is empty too;
//! * a new epoch is greater than every epoch this node or the witness has seen;
//! * a lease renewal counts only when the witness names this node as the grantee of its epoch,
//!   or a standby that has not moved past it answers; serving is decided against the lease's
//!   deadline at the moment of use.

use crate::config::Role;
pub use crate::role::{Data, LinkVerdict, Peer, Side};

/// Milliseconds of a monotonic clock (the shell's origin is its start).
pub type Ms = u64;

/// What the core knows of its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub node: String,
    /// In a cluster (`[cluster]` present).
    pub cluster: bool,
    pub witness: bool,
    pub auto_failover: bool,
    pub without_witness: bool,
    pub heartbeat: Ms,
    pub lease: Ms,
    pub failover: Ms,
}

impl Setup {
    /// Whether a standby may promote itself: only then does a primary need a lease.
    pub fn leased(&self) -> bool {
        self.cluster && self.auto_failover && (self.witness || self.without_witness)
    }
}

/// What the node's disk holds at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The role last persisted, if any.
    pub role: Option<Role>,
    /// The operator's `--role`, if given.
    pub role_override: Option<Role>,
    /// The configured `[node].role`.
    pub configured: Role,
    /// The last epoch of the history (0: no history, an empty spool).
    pub epoch: u64,
    /// The highest epoch this node has seen (persisted), at least `epoch`.
    pub highest: u64,
    /// An operator paused automatic failover (persisted: `relayd failover pause`).
    pub paused: bool,
}

/// Until when the node may serve, in core time.
pub type Serve = crate::role::Serve<Ms>;

/// What the core publishes, in core time: the shell turns it into a
/// [`crate::role::RoleStatus`].
pub type Status = crate::role::Status<Ms>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The clock: a quarter heartbeat has passed (or any time; the core reads `now`).
    Tick,
    /// The witness's answer to a ping sent at `sent`: its highest grant and its grantee.
    Pong {
        sent: Ms,
        granted: u64,
        granted_to: String,
    },
    /// The witness's answer to our claim of `epoch`; on refusal, its highest grant.
    Verdict {
        epoch: u64,
        granted: bool,
        highest: u64,
        reason: String,
    },
    /// The claim of `epoch` got no answer.
    ClaimFailed {
        epoch: u64,
        error: String,
    },
    /// Standby: a frame from the primary we follow arrived.
    PrimaryFrame,
    /// Primary: the standby acknowledged a frame we sent at `sent`.
    StandbyAck {
        sent: Ms,
    },
    /// The link's Hellos were exchanged: decide what the link does.
    Hello {
        side: Side,
        ours: Data,
        theirs: Peer,
    },
    /// Standby: our spool now holds the primary's history up to `epoch`.
    Followed {
        epoch: u64,
    },
    /// Standby: the primary asks us to take over (a planned switchover, or it yields).
    HandoverAsked {
        epoch: u64,
    },
    /// Primary: the standby took over in `epoch`.
    TookOver {
        epoch: u64,
    },
    /// `relayd promote [--force]`.
    Promote {
        force: bool,
    },
    /// A planned switchover holds the primary from serving (true) or releases it (false).
    Hold(bool),
    /// `relayd failover pause` (true) or `resume` (false), on this node or replicated from
    /// the primary: while paused, a standby never promotes itself.
    Pause(bool),
    /// `relayd rebuild`: the spool was emptied to be rebuilt from the primary's snapshot. The
    /// node holds nothing until it has followed again, and so never claims (I2).
    Emptied,
    /// `EpochStarted` for `epoch` is durable.
    EpochBegun {
        epoch: u64,
    },
    EpochFailed {
        epoch: u64,
        error: String,
    },
}

/// Why an epoch is being claimed or begun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The configured primary's first epoch, on an empty cluster.
    Bootstrap,
    /// The primary went silent.
    Failover,
    /// The primary handed over.
    Handover,
    /// `relayd promote`.
    Operator { force: bool },
}

/// What the log should say (the shell maps these onto its log lines, metrics and hooks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// `first`: the node's first epoch (a bootstrap), not a failover.
    Promoted {
        epoch: u64,
        reason: String,
        first: bool,
    },
    Demoted {
        epoch: u64,
        reason: String,
    },
    Fenced {
        reason: String,
    },
    Serving {
        reason: String,
    },
    Refused {
        epoch: u64,
        reason: String,
    },
    /// Something worth one line, once per episode.
    Info(String),
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The status changed: publish it (after every `Persist` before it).
    Publish(Status),
    /// Persist the role and the highest epoch seen (synced) before what follows.
    Persist {
        role: Role,
        highest: u64,
    },
    /// Commit `EpochStarted` for this epoch, noting why and the reason said; answer with
    /// `EpochBegun` or `EpochFailed`.
    BeginEpoch {
        epoch: u64,
        why: Why,
        reason: String,
    },
    /// Ask the witness for `epoch`; answer with `Verdict` or `ClaimFailed`.
    Claim {
        epoch: u64,
        force: bool,
    },
    /// Ping the witness; answer with `Pong` (nothing when it is unreachable).
    Ping {
        role: Role,
        epoch: u64,
        serving: bool,
    },
    /// The answer to a `Hello` event.
    Link(LinkVerdict),
    /// Following: tell the old primary we took over in `epoch`.
    TookOver {
        epoch: u64,
    },
    /// The answer to `Promote`: the epoch this node serves in, or why not.
    Answer(Result<u64, Refusal>),
    Note(Note),
}

/// Why an operator's promote did not promote this node (its text is the operator's answer).
/// The failures it passes on (the witness's, the spool's) arrive as text in events: they are
/// said, not decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotStandby(Role),
    NotClustered,
    UnderWay,
    /// The primary was heard `heard` ms ago, within failover_timeout (and no --force).
    PrimaryAlive {
        heard: Ms,
    },
    /// The spool is empty (and no --force).
    EmptySpool,
    /// The spool is empty, and the cluster has an epoch already: forcing would bootstrap over it.
    ClusterHasEpoch(u64),
    WitnessUnreachable(String),
    WitnessRefused {
        epoch: u64,
        reason: String,
    },
    EpochFailed {
        epoch: u64,
        error: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotStandby(role) => write!(f, "this node is a {role}, not a standby"),
            Refusal::NotClustered => write!(f, "this node is not in a cluster"),
            Refusal::UnderWay => write!(f, "a promotion is already under way"),
            Refusal::PrimaryAlive { heard } => write!(
                f,
                "the primary is alive (heard {heard} ms ago): promoting now would make two primaries; use --force if it is not"
            ),
            Refusal::EmptySpool => write!(
                f,
                "this node's spool is empty (it has never followed a primary): promoting it would serve an empty queue; use --force to bootstrap the cluster from it"
            ),
            Refusal::ClusterHasEpoch(epoch) => write!(
                f,
                "this node's spool is empty and the cluster already has epoch {epoch}: start it as a standby, it catches up from its peer (promote it once it has)"
            ),
            Refusal::WitnessUnreachable(error) => write!(f, "cannot ask the witness: {error}"),
            Refusal::WitnessRefused { epoch, reason } => {
                write!(f, "the witness refused epoch {epoch}: {reason}")
            }
            Refusal::EpochFailed { epoch, error } => {
                write!(f, "cannot start epoch {epoch}: {error}")
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// A claim sent to the witness and not answered yet.
#[derive(Clone, Copy, Debug)]
struct Claim {
    epoch: u64,
    why: Why,
    sent: Ms,
}

/// An epoch being committed.
#[derive(Clone, Debug)]
struct Begin {
    epoch: u64,
    why: Why,
    /// The lease runs from here (when the claim that granted it was sent).
    lease_from: Ms,
    reason: String,
}

/// The old decision rules that the simulation shows wrong (issue 11). Never set outside the
/// simulation's tests (outside tests, `Core` has no field to set them in): each is the
/// one-line decision the code made before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OldRules {
    /// Case 1: the configured role decides: an empty primary starts epoch 1 by itself, and
    /// ships (snapshot included) to a standby whose log is longer.
    pub config_role_decides: bool,
    /// Case 2: a standby with an empty spool claims; a pong renews the lease whoever the
    /// witness granted our epoch to.
    pub empty_standby_claims: bool,
    /// Case 3: a claim is our log's epoch + 1, whatever the witness has granted since.
    pub claim_ignores_witness: bool,
    /// Before `relayd failover pause` (issue 15): a silent primary is succeeded whatever the
    /// operator said.
    pub pause_ignored: bool,
    /// Before the stall rule: a standby counts the time its own decisions were held up (a slow
    /// disk, a pause) as its primary's silence, and claims as soon as it steps again.
    pub stall_is_silence: bool,
}

/// One data node's failover state.
#[derive(Debug)]
pub struct Core {
    setup: Setup,
    role: Role,
    /// The epoch of our log (the one we serve in, or the last we followed).
    epoch: u64,
    /// The highest epoch seen anywhere (persisted): a new epoch is above it.
    highest: u64,
    has_history: bool,
    /// A configured primary with an empty spool, waiting to bootstrap epoch 1 (or to learn
    /// that the cluster exists and become a standby). Published as a primary that does not
    /// serve, so that its link dials the peer.
    bootstrapping: bool,
    /// A leased primary serves until then.
    lease_until: Option<Ms>,
    /// A standby: when the primary last showed a sign of life.
    heard_primary: Ms,
    last_ping: Option<Ms>,
    /// When the last tick was stepped: a longer gap than a heartbeat between two ticks is
    /// time this node was not running its decisions (its driver blocked on a slow disk, its
    /// process paused), which is not the primary's silence.
    last_tick: Option<Ms>,
    claim: Option<Claim>,
    beginning: Option<Begin>,
    /// A standby asked to take over, until then.
    handover_until: Option<Ms>,
    /// The handover's epoch (the primary's).
    handover_epoch: u64,
    /// The peer's last Hello showed an empty spool. An empty node never serves or claims until
    /// it has followed (I2), so its word is the vote the witness would give: its handover (a
    /// node whose disk was replaced, yielding to our data), or, when both of us are empty, the
    /// configured primary's bootstrap, needs no witness that cannot be reached.
    peer_empty: bool,
    hold: bool,
    /// Automatic failover paused by an operator: a silent primary is not succeeded.
    paused: bool,
    /// A primary handing over to a standby that holds more, until then.
    yielding_until: Option<Ms>,
    published: Option<Status>,
    was_serving: bool,
    /// The epoch whose refusal was last noted, so that a refusal is one line, not one a tick.
    last_refused: u64,
    warned_idle: bool,
    /// When the pings that said "serving" were sent: a pong renews the lease only for one of
    /// them (a ping that said otherwise let the witness forget us as the serving primary).
    willing_pings: std::collections::VecDeque<Ms>,
    /// Claims an operator's promote has retried above a refusal's highest grant.
    operator_retries: u32,
    #[cfg(test)]
    pub old: OldRules,
}

/// Pings remembered for their pongs (a pong later than this many heartbeats renews nothing).
const PINGS_KEPT: usize = 16;
/// Operator claims retried after a refusal that named a higher grant.
const OPERATOR_RETRIES: u32 = 3;

impl Core {
    /// The core at start, and what to do first (persist, publish, perhaps begin an epoch).
    pub fn start(setup: Setup, disk: Disk, now: Ms) -> (Core, Vec<Action>) {
        Core::start_with(setup, disk, now, |_| {})
    }

    /// [`Core::start`], with the core adjusted before its first decision (the simulation sets
    /// its old rules here).
    pub(crate) fn start_with(
        setup: Setup,
        disk: Disk,
        now: Ms,
        adjust: impl FnOnce(&mut Core),
    ) -> (Core, Vec<Action>) {
        // The operator's --role wins over the persisted role, which wins over the config.
        let wanted = disk.role_override.or(disk.role).unwrap_or(disk.configured);
        let role = if wanted == Role::Primary { Role::Primary } else { Role::Standby };
        let mut core = Core {
            role,
            epoch: disk.epoch,
            highest: disk.highest.max(disk.epoch),
            has_history: disk.epoch > 0,
            bootstrapping: false,
            lease_until: None,
            heard_primary: now,
            last_ping: None,
            last_tick: None,
            claim: None,
            beginning: None,
            handover_until: None,
            handover_epoch: 0,
            peer_empty: false,
            hold: false,
            paused: disk.paused,
            yielding_until: None,
            published: None,
            was_serving: false,
            last_refused: 0,
            warned_idle: false,
            operator_retries: 0,
            willing_pings: std::collections::VecDeque::new(),
            #[cfg(test)]
            old: OldRules::default(),
            setup,
        };
        adjust(&mut core);
        let mut out = Vec::new();
        if role == Role::Primary && !core.has_history {
            if !core.setup.cluster || core.old().config_role_decides {
                // A single node is its own cluster: its first epoch needs nobody's word. (The
                // old rule took it in a cluster too.)
                core.begin(1, Why::Bootstrap, now, "the node's first epoch".into(), &mut out);
                core.bootstrapping = true;
            } else {
                core.bootstrapping = true;
                out.push(Action::Note(Note::Info(
                    "empty spool: waiting to bootstrap the cluster's first epoch, or to catch up from the peer"
                        .into(),
                )));
            }
        }
        if core.has_history {
            out.push(Action::Persist { role: core.role, highest: core.highest });
        }
        core.publish(now, &mut out);
        (core, out)
    }

    pub fn status(&self) -> Status {
        let serve = if self.role != Role::Primary
            || self.bootstrapping
            || self.beginning.is_some()
            || self.hold
            || self.yielding_until.is_some()
        {
            Serve::Never
        } else if !self.setup.leased() {
            Serve::Always
        } else {
            self.lease_until.map_or(Serve::Never, Serve::Until)
        };
        let claiming = self.claim.is_some() || self.beginning.is_some();
        Status { role: self.role, epoch: self.epoch, serve, claiming }
    }

    /// The highest epoch this node has seen.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Standby: whether an ack may go to the primary. Not while we claim or begin an epoch of
    /// our own: an ack would renew a lease that our new epoch is about to end.
    pub fn may_ack(&self) -> bool {
        self.role == Role::Standby && self.claim.is_none() && self.beginning.is_none()
    }

    /// How long since the primary showed a sign of life (standby).
    pub fn silence(&self, now: Ms) -> Ms {
        now.saturating_sub(self.heard_primary)
    }

    /// Whether an operator paused automatic failover.
    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn step(&mut self, event: Event, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => self.tick(now, &mut out),
            Event::Pong { sent, granted, granted_to } => {
                self.pong(sent, granted, &granted_to, now, &mut out)
            }
            Event::Verdict { epoch, granted, highest, reason } => {
                self.verdict(epoch, granted, highest, reason, now, &mut out)
            }
            Event::ClaimFailed { epoch, error } => {
                if let Some(claim) = self.claim.filter(|c| c.epoch == epoch) {
                    self.claim = None;
                    match claim.why {
                        Why::Operator { .. } => {
                            out.push(Action::Answer(Err(Refusal::WitnessUnreachable(error))))
                        }
                        // The peer that handed over is empty: with it and us, the majority is
                        // there without the witness, and nobody else can serve.
                        Why::Handover if self.peer_empty && self.role == Role::Standby => {
                            let reason = format!(
                                "the peer that handed over holds nothing, and the witness cannot be reached ({error})"
                            );
                            self.begin(epoch, Why::Handover, now, reason, &mut out);
                        }
                        Why::Bootstrap if self.peer_empty && self.bootstrapping => {
                            let reason = format!(
                                "bootstrap: the peer's spool is empty too, and the witness cannot be reached ({error})"
                            );
                            self.begin(1, Why::Bootstrap, now, reason, &mut out);
                        }
                        _ => {}
                    }
                }
            }
            Event::PrimaryFrame => {
                if self.role == Role::Standby {
                    self.heard_primary = now;
                    self.warned_idle = false;
                }
            }
            Event::StandbyAck { sent } => {
                if self.role == Role::Primary && !self.bootstrapping {
                    self.renew(sent);
                }
            }
            Event::Hello { side, ours, theirs } => {
                self.see(theirs.data.epoch, &mut out);
                self.peer_empty = theirs.data.is_empty();
                let verdict = match side {
                    Side::Shipping => self.shipping(ours, &theirs, now, &mut out),
                    Side::Following => self.following(ours, &theirs, now, &mut out),
                };
                out.push(Action::Link(verdict));
            }
            Event::Followed { epoch } => {
                if self.role == Role::Standby {
                    self.epoch = self.epoch.max(epoch);
                    self.has_history |= epoch > 0;
                    self.see(epoch, &mut out);
                }
            }
            Event::HandoverAsked { epoch } => self.handover_asked(epoch, now, &mut out),
            Event::TookOver { epoch } => {
                if self.role == Role::Primary {
                    self.step_down(
                        Some(epoch),
                        "planned switchover: the standby took over".into(),
                        now,
                        &mut out,
                    );
                }
            }
            Event::Promote { force } => self.promote(force, now, &mut out),
            Event::Hold(hold) => self.hold = hold,
            Event::Pause(paused) => {
                self.paused = paused;
                self.warned_idle = false;
            }
            Event::Emptied => {
                if self.role == Role::Standby {
                    self.has_history = false;
                    self.epoch = 0;
                    self.claim = None;
                    self.handover_until = None;
                }
            }
            Event::EpochBegun { epoch } => self.begun(epoch, &mut out),
            Event::EpochFailed { epoch, error } => {
                if let Some(begin) = self.beginning.take_if(|b| b.epoch == epoch) {
                    out.push(Action::Note(Note::Error(format!(
                        "cannot start epoch {epoch}: {error}"
                    ))));
                    if let Why::Operator { .. } = begin.why {
                        out.push(Action::Answer(Err(Refusal::EpochFailed { epoch, error })));
                    }
                }
            }
        }
        self.publish(now, &mut out);
        out
    }

    fn tick(&mut self, now: Ms, out: &mut Vec<Action>) {
        self.discount_own_stall(now);
        if self.yielding_until.is_some_and(|until| now >= until) {
            self.yielding_until = None;
            let reason = "handed over, and the standby did not take over in time".to_string();
            self.step_down(None, reason, now, out);
        }
        if self.setup.witness && self.last_ping.is_none_or(|at| now >= at + self.setup.heartbeat) {
            self.last_ping = Some(now);
            // A primary that means to serve says so even while fenced: the witness then holds
            // off claims, and only a pong of such a ping renews the lease.
            let serving = self.role == Role::Primary
                && !self.bootstrapping
                && !self.hold
                && self.yielding_until.is_none();
            if serving {
                self.willing_pings.push_back(now);
                if self.willing_pings.len() > PINGS_KEPT {
                    self.willing_pings.pop_front();
                }
            }
            out.push(Action::Ping { role: self.role, epoch: self.epoch, serving });
        }
        if self.claim.is_some() || self.beginning.is_some() {
            return;
        }
        match self.role {
            Role::Primary if self.bootstrapping && self.setup.witness => {
                self.send_claim(1, Why::Bootstrap, now, out);
            }
            Role::Standby if self.handover_until.is_some_and(|until| now < until) => {
                let epoch = self.next_epoch().max(self.handover_epoch + 1);
                self.send_claim(epoch, Why::Handover, now, out);
            }
            Role::Standby
                if self.setup.cluster
                    && self.setup.auto_failover
                    && self.silence(now) > self.setup.failover =>
            {
                self.fail_over(now, out)
            }
            _ => {}
        }
    }

    /// Ticks come every quarter heartbeat. A gap of more than a heartbeat since the last one
    /// means that this node was not stepping: its driver was held up carrying out an action (a
    /// synced write of the role, seconds long on a loaded disk, right after a demotion) or its
    /// process was paused. Frames of the primary that arrived meanwhile are still queued, or
    /// were never read: the gap is this node's deafness, not the primary's silence, and a
    /// standby that counted it would claim at once, keep its acks back for as long as the
    /// (equally slow) witness takes to answer, and degrade or fence a primary that is alive.
    /// So the primary's silence is counted without it: a claim comes only after
    /// failover_timeout of listening.
    fn discount_own_stall(&mut self, now: Ms) {
        if let Some(previous) = self.last_tick.replace(now) {
            let gap = now.saturating_sub(previous);
            if gap > self.setup.heartbeat && !self.old().stall_is_silence {
                self.heard_primary = now.min(self.heard_primary.saturating_add(gap));
            }
        }
    }

    /// The primary has been silent for failover_timeout.
    fn fail_over(&mut self, now: Ms, out: &mut Vec<Action>) {
        let silence = self.silence(now);
        if self.paused && !self.old().pause_ignored {
            // The operator's maintenance: only `relayd promote` (or a handover) promotes.
            if !std::mem::replace(&mut self.warned_idle, true) {
                out.push(Action::Note(Note::Info(format!(
                    "no primary heard for {silence} ms, but automatic failover is paused: not promoting (relayd failover resume, or relayd promote)"
                ))));
            }
            return;
        }
        if !self.has_history && !self.old().empty_standby_claims {
            if !std::mem::replace(&mut self.warned_idle, true) {
                out.push(Action::Note(Note::Info(format!(
                    "no primary heard for {silence} ms, but this node's spool is empty: it never promotes itself (bootstrap the cluster from its configured primary, or relayd promote --force)"
                ))));
            }
            return;
        }
        let epoch = self.next_epoch();
        if self.setup.witness {
            self.send_claim(epoch, Why::Failover, now, out);
        } else if self.setup.without_witness {
            let reason = format!(
                "primary silent for {silence} ms; no witness (allow_failover_without_witness = true: split brain possible)"
            );
            self.begin(epoch, Why::Failover, now, reason, out);
        } else if !std::mem::replace(&mut self.warned_idle, true) {
            out.push(Action::Note(Note::Info(
                "primary silent, but no witness is configured: not promoting (relayd promote, or set allow_failover_without_witness)"
                    .into(),
            )));
        }
    }

    fn pong(&mut self, sent: Ms, granted: u64, granted_to: &str, now: Ms, out: &mut Vec<Action>) {
        self.see(granted, out);
        if self.role != Role::Primary {
            return;
        }
        if self.bootstrapping {
            // Epoch 1 granted to us is our own bootstrap claim's, whose verdict decides.
            let ours = granted == 1 && granted_to == self.setup.node;
            if granted > 0 && !ours && !self.old().config_role_decides {
                self.become_standby(
                    format!(
                        "the witness has granted epoch {granted} already: catching up from the peer"
                    ),
                    now,
                    out,
                );
            }
            return;
        }
        let grantee_elsewhere = granted == self.epoch
            && granted_to != self.setup.node
            && !self.old().empty_standby_claims;
        if granted > self.epoch || grantee_elsewhere {
            let reason = if granted > self.epoch {
                "the witness granted a newer epoch".to_string()
            } else {
                format!("the witness granted epoch {granted} to {granted_to}")
            };
            self.step_down(Some(granted), reason, now, out);
        } else if self.willing_pings.contains(&sent) {
            self.renew(sent);
        }
    }

    fn verdict(
        &mut self,
        epoch: u64,
        granted: bool,
        highest: u64,
        reason: String,
        now: Ms,
        out: &mut Vec<Action>,
    ) {
        let Some(claim) = self.claim.filter(|c| c.epoch == epoch) else { return };
        self.claim = None;
        // A grant that came after its reason went (a bootstrap claim of a node that learnt
        // the cluster exists; a failover claim of a node that is primary) is not used.
        let still_wanted = match claim.why {
            Why::Bootstrap => self.bootstrapping,
            Why::Operator { .. } => self.role == Role::Standby || self.bootstrapping,
            Why::Failover | Why::Handover => self.role == Role::Standby,
        };
        if granted && !still_wanted {
            out.push(Action::Note(Note::Info(format!(
                "the witness granted epoch {epoch}, no longer wanted: not used"
            ))));
            self.see(epoch, out);
            return;
        }
        if granted {
            let reason = match claim.why {
                Why::Bootstrap => {
                    format!("bootstrap: the witness granted the cluster's first epoch {epoch}")
                }
                Why::Failover => format!(
                    "primary silent for {} ms; the witness granted epoch {epoch}",
                    self.silence(now)
                ),
                Why::Handover => "planned switchover: the primary handed over".to_string(),
                Why::Operator { force: true } => "operator: relayd promote --force".to_string(),
                Why::Operator { force: false } => "operator: relayd promote".to_string(),
            };
            self.begin(epoch, claim.why, claim.sent, reason, out);
            return;
        }
        if !self.old().claim_ignores_witness {
            self.see(highest, out);
        }
        if self.last_refused != epoch {
            self.last_refused = epoch;
            out.push(Action::Note(Note::Refused { epoch, reason: reason.clone() }));
        }
        match claim.why {
            Why::Bootstrap if highest > 0 => self.become_standby(
                format!(
                    "the witness has granted epoch {highest} already: catching up from the peer"
                ),
                now,
                out,
            ),
            Why::Operator { force } => {
                let retry = self.next_epoch();
                let above = retry > epoch && self.has_history;
                if above && self.operator_retries < OPERATOR_RETRIES {
                    self.operator_retries += 1;
                    self.send_claim(retry, Why::Operator { force }, now, out);
                } else {
                    out.push(Action::Answer(Err(Refusal::WitnessRefused { epoch, reason })));
                }
            }
            // Claimed again at the next tick, above the witness's highest grant.
            _ => {}
        }
    }

    fn shipping(
        &mut self,
        ours: Data,
        theirs: &Peer,
        now: Ms,
        out: &mut Vec<Action>,
    ) -> LinkVerdict {
        if self.role != Role::Primary || self.beginning.is_some() {
            return LinkVerdict::Close;
        }
        if theirs.primary {
            if self.bootstrapping {
                self.become_standby(format!("peer {} is primary", theirs.node), now, out);
            } else if self.loses_to(theirs) {
                self.step_down_for(theirs, now, out);
            }
            return LinkVerdict::Close;
        }
        if self.bootstrapping && !self.old().config_role_decides {
            if !theirs.data.is_empty() {
                return self.yield_to(theirs, now, out);
            }
            if !self.setup.witness {
                self.begin(
                    1,
                    Why::Bootstrap,
                    now,
                    format!("bootstrap: peer {}'s spool is empty too", theirs.node),
                    out,
                );
            }
            return LinkVerdict::Close;
        }
        if theirs.data.epoch > self.epoch {
            let reason = format!("peer {} has seen epoch {}", theirs.node, theirs.data.epoch);
            self.step_down(Some(theirs.data.epoch), reason, now, out);
            return LinkVerdict::Close;
        }
        if theirs.data > ours && !self.old().config_role_decides {
            return self.yield_to(theirs, now, out);
        }
        LinkVerdict::Ship
    }

    /// A primary met on the link (`theirs`, another primary) wins over us.
    fn loses_to(&self, theirs: &Peer) -> bool {
        other_primary_wins(theirs.data.epoch, &theirs.node, self.epoch, &self.setup.node)
    }

    /// Steps down for the primary met on the link that wins over us.
    fn step_down_for(&mut self, theirs: &Peer, now: Ms, out: &mut Vec<Action>) {
        let reason = format!("peer {} is primary in epoch {}", theirs.node, theirs.data.epoch);
        self.step_down(Some(theirs.data.epoch), reason, now, out);
    }

    /// The standby holds more than we do: it leads. We stop serving and hand over (the
    /// planned switchover's path: it claims the next epoch and promotes); we step down when it
    /// says it took over, when it dials us as the new primary, or after failover_timeout.
    fn yield_to(&mut self, theirs: &Peer, now: Ms, out: &mut Vec<Action>) -> LinkVerdict {
        let epoch = self.epoch.max(theirs.data.epoch);
        if self.yielding_until.is_none() {
            out.push(Action::Note(Note::Info(format!(
                "peer {} holds more (epoch {}, record {}) than this node (epoch {}): handing over to it",
                theirs.node, theirs.data.epoch, theirs.data.seq, self.epoch
            ))));
        }
        self.yielding_until = Some(now + self.setup.failover);
        LinkVerdict::Yield { epoch }
    }

    fn following(
        &mut self,
        ours: Data,
        theirs: &Peer,
        now: Ms,
        out: &mut Vec<Action>,
    ) -> LinkVerdict {
        if !theirs.primary {
            return LinkVerdict::Close;
        }
        match self.role {
            Role::Primary if self.bootstrapping => {
                if theirs.data.is_empty() {
                    return LinkVerdict::Stale;
                }
                self.become_standby(format!("peer {} is primary", theirs.node), now, out);
            }
            Role::Primary => {
                if !self.loses_to(theirs) || self.beginning.is_some() {
                    return LinkVerdict::Stale;
                }
                self.step_down_for(theirs, now, out);
            }
            _ => {
                // A primary without an epoch has nothing to follow: it reads our Hello (and
                // bootstraps when we are empty too, or yields when we are not).
                let behind = theirs.data.is_empty()
                    || theirs.data.epoch < self.epoch
                    || (theirs.data.epoch == self.epoch
                        && theirs.data < ours
                        && !self.old().config_role_decides);
                // A claim in flight does not keep us from following a primary that shows up
                // (its acks are held back until the claim is answered: see `may_ack`).
                if behind || self.beginning.is_some() {
                    return LinkVerdict::Stale;
                }
            }
        }
        self.heard_primary = now;
        LinkVerdict::Follow
    }

    fn handover_asked(&mut self, epoch: u64, now: Ms, out: &mut Vec<Action>) {
        if self.role != Role::Standby || !self.has_history || self.beginning.is_some() {
            return;
        }
        self.handover_until = Some(now + self.setup.failover);
        self.handover_epoch = epoch;
        let next = self.next_epoch().max(epoch + 1);
        if self.setup.witness {
            if self.claim.is_none() {
                self.send_claim(next, Why::Handover, now, out);
            }
        } else {
            self.begin(
                next,
                Why::Handover,
                now,
                "planned switchover: the primary handed over".into(),
                out,
            );
        }
    }

    fn promote(&mut self, force: bool, now: Ms, out: &mut Vec<Action>) {
        let refuse = |out: &mut Vec<Action>, why| out.push(Action::Answer(Err(why)));
        // A configured primary with an empty spool is bootstrapped by an operator's --force
        // (the cluster's first epoch, taken without waiting for the peer).
        let bootstrap = self.bootstrapping && force;
        if self.role != Role::Standby && !bootstrap {
            return refuse(out, Refusal::NotStandby(self.role));
        }
        if !self.setup.cluster {
            return refuse(out, Refusal::NotClustered);
        }
        if self.claim.is_some() || self.beginning.is_some() {
            return refuse(out, Refusal::UnderWay);
        }
        let silence = if bootstrap { Ms::MAX } else { self.silence(now) };
        if !force && silence < self.setup.failover {
            return refuse(out, Refusal::PrimaryAlive { heard: silence });
        }
        if !force && !self.has_history {
            return refuse(out, Refusal::EmptySpool);
        }
        // An empty node forced is a bootstrap: of a new cluster only. Forced over a cluster
        // that has an epoch, its empty history would be newer than the data of the node that
        // holds the mail, which would then be rebuilt from it.
        if !self.has_history && self.highest > 0 {
            return refuse(out, Refusal::ClusterHasEpoch(self.highest));
        }
        self.operator_retries = 0;
        let epoch = self.next_epoch();
        if self.setup.witness {
            self.send_claim(epoch, Why::Operator { force }, now, out);
        } else {
            let reason =
                if force { "operator: relayd promote --force" } else { "operator: relayd promote" };
            self.begin(epoch, Why::Operator { force }, now, reason.into(), out);
        }
    }

    fn begun(&mut self, epoch: u64, out: &mut Vec<Action>) {
        let Some(begin) = self.beginning.take_if(|b| b.epoch == epoch) else { return };
        self.role = Role::Primary;
        self.epoch = epoch;
        self.highest = self.highest.max(epoch);
        self.has_history = true;
        self.bootstrapping = false;
        self.handover_until = None;
        self.lease_until = Some(begin.lease_from + self.setup.lease);
        out.push(Action::Persist { role: Role::Primary, highest: self.highest });
        let first = begin.why == Why::Bootstrap;
        out.push(Action::Note(Note::Promoted { epoch, reason: begin.reason, first }));
        match begin.why {
            Why::Handover => out.push(Action::TookOver { epoch }),
            Why::Operator { .. } => out.push(Action::Answer(Ok(epoch))),
            Why::Bootstrap | Why::Failover => {}
        }
    }

    fn send_claim(&mut self, epoch: u64, why: Why, now: Ms, out: &mut Vec<Action>) {
        self.claim = Some(Claim { epoch, why, sent: now });
        let force = matches!(why, Why::Operator { force: true });
        out.push(Action::Claim { epoch, force });
    }

    fn begin(
        &mut self,
        epoch: u64,
        why: Why,
        lease_from: Ms,
        reason: String,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::BeginEpoch { epoch, why, reason: reason.clone() });
        self.beginning = Some(Begin { epoch, why, lease_from, reason });
    }

    /// The epoch a claim asks for: above everything seen.
    fn next_epoch(&self) -> u64 {
        if self.old().claim_ignores_witness {
            return self.epoch + 1;
        }
        self.epoch.max(self.highest) + 1
    }

    /// An epoch seen (from the witness or the peer): remembered, persisted when it is new.
    fn see(&mut self, epoch: u64, out: &mut Vec<Action>) {
        if epoch > self.highest {
            self.highest = epoch;
            if self.has_history {
                out.push(Action::Persist { role: self.role, highest: epoch });
            }
        }
    }

    fn renew(&mut self, sent: Ms) {
        let until = sent + self.setup.lease;
        if self.lease_until.is_none_or(|at| at < until) {
            self.lease_until = Some(until);
        }
    }

    /// A primary becomes a standby. `ended_by`: the epoch that ended ours, when we know it
    /// (the peer's, the witness's grant, the one the standby took over in), which the highest
    /// epoch seen takes in; the log names it, or ours when we do not know it.
    fn step_down(&mut self, ended_by: Option<u64>, reason: String, now: Ms, out: &mut Vec<Action>) {
        if self.role != Role::Primary {
            return;
        }
        if self.bootstrapping {
            return self.become_standby(reason, now, out);
        }
        self.role = Role::Standby;
        self.lease_until = None;
        self.heard_primary = now;
        self.hold = false;
        self.yielding_until = None;
        let epoch = ended_by.unwrap_or(self.epoch);
        self.highest = self.highest.max(epoch);
        // One synced write: the highest epoch this step saw already (the grant or the Hello
        // that ends ours) is in this one, with the role. Each is seconds on a loaded disk,
        // and the node steps nothing else until they are done.
        out.retain(|action| !matches!(action, Action::Persist { .. }));
        out.push(Action::Persist { role: Role::Standby, highest: self.highest });
        out.push(Action::Note(Note::Demoted { epoch, reason }));
    }

    /// A primary without an epoch learns that the cluster has one: it catches up as a standby.
    fn become_standby(&mut self, reason: String, now: Ms, out: &mut Vec<Action>) {
        self.role = Role::Standby;
        self.bootstrapping = false;
        self.heard_primary = now;
        self.yielding_until = None;
        self.claim = None;
        // Persisted even on an empty spool: once it holds the peer's data, a restart must not
        // find it a primary by its config.
        out.push(Action::Persist { role: Role::Standby, highest: self.highest });
        out.push(Action::Note(Note::Info(format!("standing by: {reason}"))));
    }

    /// The status changed: published; a serving primary that stops serving (or starts again)
    /// says so.
    fn publish(&mut self, now: Ms, out: &mut Vec<Action>) {
        let status = self.status();
        let serving = status.serving_at(now);
        if self.role == Role::Primary && !self.bootstrapping && serving != self.was_serving {
            let note = if serving {
                Note::Serving { reason: "heard the standby or the witness: lease renewed".into() }
            } else if self.hold {
                Note::Fenced { reason: "demoting: planned switchover".into() }
            } else {
                // The last renewal counted from when it was sent: the silence since then.
                let heard = self.lease_until.map_or(0, |until| until - self.setup.lease);
                Note::Fenced {
                    reason: format!(
                        "no word from the standby or the witness for {} ms (lease {} ms)",
                        now.saturating_sub(heard),
                        self.setup.lease
                    ),
                }
            };
            out.push(Action::Note(note));
        }
        self.was_serving = serving;
        if self.published != Some(status) && !self.small_renewal(status, now) {
            self.published = Some(status);
            out.push(Action::Publish(status));
        }
    }

    /// A renewal that moves the published deadline by less than a quarter heartbeat, while
    /// more than half a lease of it is left, is not published (every ack renews the lease:
    /// publishing each would wake every reader of the role once a frame). The published
    /// deadline is then a little earlier than ours: the safe side. The next tick publishes it.
    fn small_renewal(&self, status: Status, now: Ms) -> bool {
        let Some(published) = self.published else { return false };
        let (Serve::Until(shown), Serve::Until(ours)) = (published.serve, status.serve) else {
            return false;
        };
        let same = Status { serve: published.serve, ..status } == published;
        same && ours > shown
            && ours - shown < self.setup.heartbeat / 4
            && shown > now + self.setup.lease / 2
    }

    /// The old rules switched on: the simulation's, in tests; none outside them.
    #[cfg(test)]
    fn old(&self) -> OldRules {
        self.old
    }
    #[cfg(not(test))]
    fn old(&self) -> OldRules {
        OldRules::default()
    }
}

/// Two primaries met (on the link): does the other one win? The newer epoch does; in the same
/// epoch (only possible without a witness) the lower node name, so that both sides agree.
pub fn other_primary_wins(
    their_epoch: u64,
    their_node: &str,
    our_epoch: u64,
    our_node: &str,
) -> bool {
    their_epoch > our_epoch || (their_epoch == our_epoch && their_node < our_node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(node: &str) -> Setup {
        Setup {
            node: node.into(),
            cluster: true,
            witness: true,
            auto_failover: true,
            without_witness: false,
            heartbeat: 200,
            lease: 2000,
            failover: 3000,
        }
    }

    fn disk(role: Role, epoch: u64) -> Disk {
        Disk {
            role: Some(role),
            role_override: None,
            configured: role,
            epoch,
            highest: epoch,
            paused: false,
        }
    }

    fn claims(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect()
    }

    /// Ticks every 50 ms from `from` to `to`; every action taken.
    fn run(core: &mut Core, from: Ms, to: Ms) -> Vec<Action> {
        (from / 50..to / 50).flat_map(|t| core.step(Event::Tick, t * 50)).collect()
    }

    fn begins(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::BeginEpoch { epoch, .. } => Some(*epoch),
                _ => None,
            })
            .collect()
    }

    fn hello(side: Side, node: &str, primary: bool, theirs: Data, ours: Data) -> Event {
        Event::Hello { side, ours, theirs: Peer { node: node.into(), primary, data: theirs } }
    }

    const EMPTY: Data = Data { epoch: 0, seq: 0 };

    fn empty_primary() -> Disk {
        Disk {
            role: None,
            role_override: None,
            configured: Role::Primary,
            epoch: 0,
            highest: 0,
            paused: false,
        }
    }

    /// The simulation's finding 5: a grant of epoch 1 that arrives once the node has learnt
    /// that the cluster exists (a primary with data dialed it) is not used.
    #[test]
    fn a_bootstrap_grant_answered_after_standing_by_is_not_used() {
        let (mut core, _) = Core::start(setup("a"), empty_primary(), 0);
        assert_eq!(claims(&core.step(Event::Tick, 50)), vec![1]);
        core.step(hello(Side::Following, "b", true, Data { epoch: 1, seq: 9 }, EMPTY), 60);
        assert_eq!(core.status().role, Role::Standby);
        let late = Event::Verdict { epoch: 1, granted: true, highest: 1, reason: "granted".into() };
        let actions = core.step(late, 70);
        assert!(begins(&actions).is_empty(), "{actions:?}");
        assert_eq!(core.status().role, Role::Standby);
    }

    /// The simulation's finding 7: without a witness, a configured primary that finds its peer
    /// holding the data stands by and persists that role, so that a restart once it holds the
    /// peer's data does not make it a primary again by its config.
    #[test]
    fn a_configured_primary_that_stands_by_persists_the_standby_role() {
        let no_witness = Setup { witness: false, auto_failover: false, ..setup("a") };
        let (mut core, _) = Core::start(no_witness, empty_primary(), 0);
        let actions =
            core.step(hello(Side::Following, "b", true, Data { epoch: 2, seq: 9 }, EMPTY), 10);
        assert_eq!(core.status().role, Role::Standby);
        assert!(
            actions.iter().any(|a| matches!(a, Action::Persist { role: Role::Standby, .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn an_empty_configured_primary_bootstraps_on_its_empty_peer_when_the_witness_is_unreachable() {
        let (mut core, _) = Core::start(setup("a"), empty_primary(), 0);
        core.step(hello(Side::Shipping, "b", false, EMPTY, EMPTY), 10);
        assert_eq!(claims(&core.step(Event::Tick, 50)), vec![1], "the witness is asked first");
        let failed = core.step(Event::ClaimFailed { epoch: 1, error: "refused".into() }, 60);
        assert_eq!(begins(&failed), vec![1], "{failed:?}");

        // A peer that holds data is never bootstrapped over.
        let (mut core, _) = Core::start(setup("a"), empty_primary(), 0);
        core.step(hello(Side::Shipping, "b", false, Data { epoch: 1, seq: 9 }, EMPTY), 10);
        let failed = core.step(Event::ClaimFailed { epoch: 1, error: "refused".into() }, 60);
        assert!(begins(&failed).is_empty(), "{failed:?}");
    }

    #[test]
    fn a_standby_takes_over_from_an_empty_peer_that_hands_over_when_the_witness_is_unreachable() {
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 1), 0);
        let theirs = hello(Side::Following, "a", true, EMPTY, Data { epoch: 1, seq: 50 });
        core.step(theirs, 10);
        let asked = core.step(Event::HandoverAsked { epoch: 0 }, 20);
        assert_eq!(claims(&asked), vec![2]);
        let failed = core.step(Event::ClaimFailed { epoch: 2, error: "refused".into() }, 30);
        assert_eq!(begins(&failed), vec![2], "{failed:?}");

        // A peer with data of its own that hands over: the witness's word is needed.
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 1), 0);
        let data = Data { epoch: 1, seq: 50 };
        core.step(hello(Side::Following, "a", true, data, Data { epoch: 1, seq: 60 }), 10);
        let asked = core.step(Event::HandoverAsked { epoch: 1 }, 20);
        assert_eq!(claims(&asked), vec![2]);
        let failed = core.step(Event::ClaimFailed { epoch: 2, error: "refused".into() }, 30);
        assert!(begins(&failed).is_empty(), "{failed:?}");
    }

    /// The drill's stall (CI, a loaded 2-core machine): a primary handing over is demoted by
    /// the witness's pong; the synced write of its standby role takes seconds, and the ticks
    /// queued meanwhile are stepped only then. Counted as the new primary's silence, that wait
    /// made the node claim the next epoch at once (the drill's claim 63 ms after the
    /// "demoted" line) and keep its acks back while the slow witness answered: the new
    /// primary lost its standby. Its own stall is not the primary's silence: it claims only
    /// after failover_timeout of listening, and then only if the primary is silent.
    #[test]
    fn a_node_held_up_after_its_demotion_does_not_count_the_wait_as_the_primarys_silence() {
        let demoted = |old: OldRules| {
            let (mut core, _) = Core::start(setup("b"), disk(Role::Primary, 4), 0);
            core.old = old;
            core.step(Event::StandbyAck { sent: 9000 }, 9000);
            run(&mut core, 9000, 9600);
            core.step(Event::Hold(true), 9600);
            let pong = Event::Pong { sent: 9600, granted: 5, granted_to: "a".into() };
            let stepped = core.step(pong, 9650);
            let persists: Vec<_> =
                stepped.iter().filter(|a| matches!(a, Action::Persist { .. })).collect();
            assert_eq!(persists, [&Action::Persist { role: Role::Standby, highest: 5 }]);
            core
        };
        // The persist done 4 s later: the queued ticks, then the new primary's first frame.
        let mut core = demoted(OldRules::default());
        let woken = run(&mut core, 13_650, 13_700);
        assert!(claims(&woken).is_empty(), "claimed right after its own stall: {woken:?}");
        assert!(!core.status().claiming, "acks are not held back");
        core.step(Event::PrimaryFrame, 13_700);
        let listening = run(&mut core, 13_700, 16_000);
        assert!(claims(&listening).is_empty(), "{listening:?}");
        // A primary that really is silent is still succeeded, failover_timeout after the stall.
        let mut core = demoted(OldRules::default());
        assert!(claims(&run(&mut core, 13_650, 16_600)).is_empty());
        assert_eq!(claims(&run(&mut core, 16_600, 16_800)), vec![6]);
        // The old rule: the wait counted as silence, a claim (and no acks) at the first tick.
        let mut old = demoted(OldRules { stall_is_silence: true, ..OldRules::default() });
        assert_eq!(claims(&run(&mut old, 13_650, 13_700)), vec![6]);
        assert!(old.status().claiming);
    }

    #[test]
    fn a_paused_standby_never_claims_for_a_silent_primary_but_promotes_when_asked() {
        let paused = Disk { paused: true, ..disk(Role::Standby, 1) };
        let (mut core, _) = Core::start(setup("b"), paused, 0);
        let quiet = run(&mut core, 0, 30_000);
        assert!(claims(&quiet).is_empty(), "{quiet:?}");
        let said = quiet.iter().filter(|a| matches!(a, Action::Note(Note::Info(_)))).count();
        assert_eq!(said, 1, "the pause is said once: {quiet:?}");
        // The operator's promote still works, and so does a handover.
        assert_eq!(claims(&core.step(Event::Promote { force: false }, 30_000)), vec![2]);
        let (mut core, _) =
            Core::start(setup("b"), Disk { paused: true, ..disk(Role::Standby, 1) }, 0);
        assert_eq!(claims(&core.step(Event::HandoverAsked { epoch: 1 }, 10)), vec![2]);
        // Resumed (at run time), it claims once the primary has been silent long enough.
        let (mut core, _) =
            Core::start(setup("b"), Disk { paused: true, ..disk(Role::Standby, 1) }, 0);
        assert!(claims(&run(&mut core, 0, 5000)).is_empty());
        core.step(Event::Pause(false), 5000);
        assert!(!core.paused());
        assert_eq!(claims(&run(&mut core, 5000, 5100)), vec![2]);
        // Paused at run time, it stops claiming.
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 1), 0);
        core.step(Event::Pause(true), 10);
        assert!(claims(&run(&mut core, 50, 10_000)).is_empty());
    }

    #[test]
    fn an_emptied_standby_is_not_promotable_until_it_has_followed_again() {
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 3), 0);
        core.step(Event::Emptied, 10);
        assert!(claims(&run(&mut core, 50, 30_000)).is_empty(), "an empty standby never claims");
        let answer = core.step(Event::Promote { force: true }, 30_000);
        assert!(answer.contains(&Action::Answer(Err(Refusal::ClusterHasEpoch(3)))), "{answer:?}");
        core.step(Event::Followed { epoch: 3 }, 30_010);
        core.step(Event::PrimaryFrame, 30_010);
        assert_eq!(claims(&run(&mut core, 30_050, 33_200)), vec![4], "rebuilt, it may again");
    }

    #[test]
    fn an_empty_standby_never_claims_however_long_it_waits() {
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 0), 0);
        assert!(claims(&run(&mut core, 0, 60_000)).is_empty());
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 1), 0);
        assert_eq!(claims(&run(&mut core, 0, 3200)), vec![2], "one with data does");
    }

    #[test]
    fn an_empty_configured_primary_claims_epoch_1_and_stands_by_when_refused() {
        let (mut core, _) = Core::start(setup("a"), empty_primary(), 0);
        assert!(!core.status().serving_at(0));
        assert_eq!(claims(&core.step(Event::Tick, 50)), vec![1]);
        let refusal = Event::Verdict { epoch: 1, granted: false, highest: 4, reason: "no".into() };
        core.step(refusal, 60);
        assert_eq!(core.status().role, Role::Standby);
        assert_eq!(core.highest(), 4);
    }

    #[test]
    fn a_forced_promotion_of_an_empty_node_bootstraps_only_a_new_cluster() {
        let (mut core, _) = Core::start(setup("b"), disk(Role::Standby, 0), 0);
        let answer = |actions: Vec<Action>| {
            actions.into_iter().find_map(|a| match a {
                Action::Answer(answer) => Some(answer),
                _ => None,
            })
        };
        let forced = core.step(Event::Promote { force: true }, 10);
        assert_eq!(claims(&forced), vec![1], "epoch 1, on a new cluster");
        let refusal = Event::Verdict { epoch: 1, granted: false, highest: 3, reason: "no".into() };
        let refused = answer(core.step(refusal, 20));
        assert!(refused.is_some_and(|a| a.is_err()), "not retried above the cluster's epoch");
        let again = answer(core.step(Event::Promote { force: true }, 30));
        assert_eq!(again, Some(Err(Refusal::ClusterHasEpoch(3))));
    }

    #[test]
    fn a_refused_claim_is_claimed_again_above_the_witness_highest_grant() {
        let (mut core, _) = Core::start(setup("a"), disk(Role::Standby, 1), 0);
        assert_eq!(claims(&run(&mut core, 0, 3200)), vec![2]);
        let refusal = Event::Verdict { epoch: 2, granted: false, highest: 2, reason: "no".into() };
        core.step(refusal, 3210);
        assert_eq!(claims(&core.step(Event::Tick, 3250)), vec![3]);
    }

    #[test]
    fn a_pong_renews_the_lease_only_when_it_names_us_the_grantee_of_a_serving_ping() {
        let (mut core, _) = Core::start(setup("a"), disk(Role::Primary, 1), 0);
        let pinged = core.step(Event::Tick, 0);
        assert!(pinged.contains(&Action::Ping { role: Role::Primary, epoch: 1, serving: true }));
        let pong = |to: &str| Event::Pong { sent: 0, granted: 1, granted_to: to.into() };
        core.step(pong("a"), 10);
        assert!(core.status().serving_at(1999) && !core.status().serving_at(2000));
        // A pong for a ping never sent renews nothing.
        core.step(Event::Pong { sent: 500, granted: 1, granted_to: "a".into() }, 510);
        assert!(!core.status().serving_at(2000));
        // Epoch 1 granted to b: we step down.
        core.step(pong("b"), 600);
        assert_eq!(core.status().role, Role::Standby);
        assert!(!core.status().serving_at(610));
    }

    #[test]
    fn a_primary_steps_down_naming_the_epoch_that_ended_its_own_or_its_own_when_unknown() {
        // The standby took over: its epoch is named, and taken in as the highest seen.
        let (mut core, _) = Core::start(setup("a"), disk(Role::Primary, 1), 0);
        let actions = core.step(Event::TookOver { epoch: 2 }, 10);
        let reason = "planned switchover: the standby took over".to_string();
        assert!(actions.contains(&Action::Note(Note::Demoted { epoch: 2, reason })), "{actions:?}");
        assert!(actions.contains(&Action::Persist { role: Role::Standby, highest: 2 }));
        assert_eq!((core.status().role, core.highest()), (Role::Standby, 2));
        // It yielded to a standby that holds more, which never said it took over: our own.
        let (mut core, _) = Core::start(setup("a"), disk(Role::Primary, 1), 0);
        let standby = Peer { node: "b".into(), primary: false, data: Data { epoch: 1, seq: 60 } };
        let ours = Data { epoch: 1, seq: 50 };
        core.step(Event::Hello { side: Side::Shipping, ours, theirs: standby }, 10);
        let actions = run(&mut core, 50, 3100);
        assert!(
            actions.iter().any(|a| matches!(a, Action::Note(Note::Demoted { epoch: 1, .. }))),
            "{actions:?}"
        );
        assert_eq!((core.status().role, core.highest()), (Role::Standby, 1));
    }

    #[test]
    fn a_primary_behind_its_standby_yields_and_ships_only_to_a_peer_not_ahead() {
        let (mut core, _) = Core::start(setup("a"), disk(Role::Primary, 1), 0);
        let standby = |seq| Peer { node: "b".into(), primary: false, data: Data { epoch: 1, seq } };
        let ours = Data { epoch: 1, seq: 50 };
        let hello = |seq| Event::Hello { side: Side::Shipping, ours, theirs: standby(seq) };
        assert!(core.step(hello(50), 10).contains(&Action::Link(LinkVerdict::Ship)));
        assert!(core.step(hello(10), 20).contains(&Action::Link(LinkVerdict::Ship)));
        let ahead = core.step(hello(51), 30);
        assert!(ahead.contains(&Action::Link(LinkVerdict::Yield { epoch: 1 })), "{ahead:?}");
        assert!(!core.status().serving_at(40), "a yielding primary does not serve");
        core.step(Event::TookOver { epoch: 2 }, 50);
        assert_eq!(core.status().role, Role::Standby);
        // A standby does not follow a primary behind it in the same epoch.
        let mut follower = Core::start(setup("b"), disk(Role::Standby, 1), 0).0;
        let primary = Peer { node: "a".into(), primary: true, data: Data { epoch: 1, seq: 10 } };
        let hello = Event::Hello { side: Side::Following, ours, theirs: primary };
        assert!(follower.step(hello, 10).contains(&Action::Link(LinkVerdict::Stale)));
    }
}
