//! A fault schedule: what the campaign does to a trio, and when, drawn from a seed so that a
//! failing run is replayed by its seed alone (the same steps at the same offsets; the real
//! processes' timing may still differ from one run to the next).

use std::fmt;
use std::time::Duration;

use super::super::proxy::Direction;

/// One of the trio's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    A,
    B,
    W,
}

impl Member {
    pub const ALL: [Member; 3] = [Member::A, Member::B, Member::W];

    pub fn name(self) -> &'static str {
        match self {
            Member::A => "a",
            Member::B => "b",
            Member::W => "w",
        }
    }
}

/// A cluster link, named as the trio's proxies are: the dialer, then the dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    Ab,
    Ba,
    Aw,
    Bw,
}

impl Link {
    pub const ALL: [Link; 4] = [Link::Ab, Link::Ba, Link::Aw, Link::Bw];

    /// Whether the link carries `member`'s traffic.
    pub fn touches(self, member: Member) -> bool {
        let (from, to) = match self {
            Link::Ab => (Member::A, Member::B),
            Link::Ba => (Member::B, Member::A),
            Link::Aw => (Member::A, Member::W),
            Link::Bw => (Member::B, Member::W),
        };
        member == from || member == to
    }

    pub fn name(self) -> &'static str {
        match self {
            Link::Ab => "ab",
            Link::Ba => "ba",
            Link::Aw => "aw",
            Link::Bw => "bw",
        }
    }
}

/// How a link is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// Connections closed and new ones refused.
    Sever,
    /// Every byte held back, nothing closed (a silent partition).
    Silent,
    /// The bytes of one direction only held back.
    OneWay(Direction),
}

/// One thing done to the trio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process (it was never started, or was killed).
    Start(Member),
    /// kill -9.
    Kill(Member),
    /// Empty the data directory of a node that is down (a replaced disk; for the witness, a
    /// witness lost with its grants). Done only while the cluster was in sync just before the
    /// kill that preceded it, so that no acknowledged message was on that disk alone.
    Wipe(Member),
    /// SIGSTOP.
    Stop(Member),
    /// SIGCONT.
    Cont(Member),
    Break(Link, Break),
    Heal(Link),
    /// Both next hops refuse connections (the nodes keep their mail queued, retrying).
    HoldMail,
    /// The next hops take mail again.
    ReleaseMail,
    /// An operator's command, given to whichever node it is meant for when its time comes.
    Operator(Operator),
}

/// What an operator does to a running cluster (docs/operations.md, "Maintenance" and "Queue
/// control"), drawn between the faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `relayd failover pause` on the primary, and on the standby (which holds it even if the
    /// primary's record has not reached it).
    PauseFailover,
    /// `relayd failover resume` on every data node running.
    ResumeFailover,
    /// `relayd promote` on the standby, done only while the failover is paused and no node
    /// serves: what an operator does when the primary died in a maintenance window.
    Promote,
    /// `relayd demote` on the primary (a planned switchover).
    Switchover,
    /// `relayd rebuild` on the standby.
    Rebuild,
    /// `relayd queue hold ID` of up to this many messages of the primary's queue.
    Hold(usize),
    /// `relayd queue release --all` on the primary.
    Release,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operator::PauseFailover => write!(f, "pause failover"),
            Operator::ResumeFailover => write!(f, "resume failover"),
            Operator::Promote => write!(f, "promote the standby"),
            Operator::Switchover => write!(f, "switchover"),
            Operator::Rebuild => write!(f, "rebuild the standby"),
            Operator::Hold(n) => write!(f, "hold {n} messages"),
            Operator::Release => write!(f, "release the holds"),
        }
    }
}

impl Action {
    /// True for what breaks something or hands the service to the other node (the faults
    /// counted in the report, at which a message may be in flight).
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            Action::Kill(_)
                | Action::Wipe(_)
                | Action::Stop(_)
                | Action::Break(..)
                | Action::Operator(Operator::Promote | Operator::Switchover)
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start(m) => write!(f, "start {}", m.name()),
            Action::Kill(m) => write!(f, "kill -9 {}", m.name()),
            Action::Wipe(m) => write!(f, "wipe {}", m.name()),
            Action::Stop(m) => write!(f, "SIGSTOP {}", m.name()),
            Action::Cont(m) => write!(f, "SIGCONT {}", m.name()),
            Action::Break(l, Break::Sever) => write!(f, "sever {}", l.name()),
            Action::Break(l, Break::Silent) => write!(f, "silence {}", l.name()),
            Action::Break(l, Break::OneWay(Direction::ToTarget)) => {
                write!(f, "silence {} forward", l.name())
            }
            Action::Break(l, Break::OneWay(Direction::FromTarget)) => {
                write!(f, "silence {} backward", l.name())
            }
            Action::Heal(l) => write!(f, "heal {}", l.name()),
            Action::HoldMail => write!(f, "hold mail"),
            Action::ReleaseMail => write!(f, "release mail"),
            Action::Operator(op) => write!(f, "operator: {op}"),
        }
    }
}

/// An action at an offset from the start of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

/// A seeded schedule: the order the nodes start in, then faults, some overlapping. The run
/// heals whatever is still broken after the last step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> =
            self.steps.iter().map(|s| format!("{:.1}s {}", s.at.as_secs_f64(), s.action)).collect();
        write!(f, "seed {}: {}", self.seed, steps.join(", "))
    }
}

/// The timings the schedule aims its pauses at (the data nodes' lease and failover_timeout).
#[derive(Clone, Copy, Debug)]
pub struct Aim {
    pub lease: Duration,
    pub failover: Duration,
}

const MS: fn(u64) -> Duration = Duration::from_millis;

impl Schedule {
    /// Draws a schedule from `seed`: the three nodes started in a random order with random
    /// gaps (some longer than failover_timeout), a few seconds of calm, then `faults` fault
    /// episodes (each a fault and its end), starting 0.5 to 4 s apart, so that some overlap.
    /// In half the schedules the next hops refuse mail from the start (so that the nodes hold
    /// a queue when the faults strike) until some point of the faults, or until the heal.
    /// Then one to [`OPERATOR_EPISODES`] operator episodes, each starting at a random moment of
    /// the faults' span.
    pub fn generate(seed: u64, faults: usize, aim: Aim) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut steps = Vec::new();
        let hold = rng.bool();
        let release = rng.bool().then(|| MS(rng.u64(2000..10_000)));
        if hold {
            steps.push(Step { at: Duration::ZERO, action: Action::HoldMail });
        }
        let mut order = Member::ALL.to_vec();
        rng.shuffle(&mut order);
        let mut at = Duration::ZERO;
        for (n, member) in order.into_iter().enumerate() {
            if n > 0 {
                let gaps = [MS(100), MS(1000), aim.failover + MS(1000)];
                at += gaps[rng.usize(..gaps.len())];
            }
            steps.push(Step { at, action: Action::Start(member) });
        }
        // Calm, longer than failover_timeout + 1 s: the cluster must serve by its end.
        at += aim.failover + MS(1500);
        if let (true, Some(after)) = (hold, release) {
            steps.push(Step { at: at + after, action: Action::ReleaseMail });
        }
        let faults_from = at;
        let mut wiped_data_node = false;
        for _ in 0..faults {
            let episode = episode(&mut rng, aim, &mut wiped_data_node);
            steps.extend(
                episode.into_iter().map(|(offset, action)| Step { at: at + offset, action }),
            );
            at += MS(rng.u64(500..4000));
        }
        // A quarter of the schedules end with a second failure, drawn from a stream of its own
        // so that the rest of each schedule stays what its seed drew before this was added.
        let mut second = fastrand::Rng::with_seed(seed ^ 0x5ec0_7d00);
        if second.usize(..4) == 0 {
            let episode = successor_dies(&mut second, aim);
            steps.extend(
                episode.into_iter().map(|(offset, action)| Step { at: at + offset, action }),
            );
        }
        // The operator's actions, interleaved with the faults, from a stream of their own too.
        let mut operator = fastrand::Rng::with_seed(seed ^ 0x0be7_a70e);
        for _ in 0..operator.usize(1..=OPERATOR_EPISODES) {
            let start = faults_from + MS(operator.u64(0..=(at - faults_from).as_millis() as u64));
            let episode = operator_episode(&mut operator);
            steps.extend(episode.into_iter().map(|(offset, action)| Step {
                at: start + offset,
                action: Action::Operator(action),
            }));
        }
        // Stable: same-time steps keep their episode's order.
        steps.sort_by_key(|s| s.at);
        Schedule { seed, steps }
    }
}

/// One fault episode, as (offset from its start, action) pairs.
fn episode(
    rng: &mut fastrand::Rng,
    aim: Aim,
    wiped_data_node: &mut bool,
) -> Vec<(Duration, Action)> {
    // Pauses that end just before, at and just after the lease and failover_timeout, and a
    // short and a long one.
    let near = |t: Duration| [t.saturating_sub(MS(200)), t, t + MS(200)];
    let mut pauses: Vec<Duration> = near(aim.lease).into_iter().chain(near(aim.failover)).collect();
    pauses.extend([MS(800), MS(6000)]);
    let member = Member::ALL[rng.usize(..3)];
    // Kills and cuts twice as often as pauses: they are where failovers happen.
    match rng.usize(..5) {
        0 | 1 => {
            // The witness half as often as each data node.
            let member = [Member::A, Member::A, Member::B, Member::B, Member::W][rng.usize(..5)];
            let down = [MS(300), aim.failover + MS(1500), MS(8000)][rng.usize(..3)];
            let mut actions = vec![(Duration::ZERO, Action::Kill(member))];
            // The witness may be lost any number of times; a data node's disk once per
            // schedule (two would lose what only those disks held: a double fault).
            let wipe = rng.bool() && (member == Member::W || !*wiped_data_node);
            if wipe {
                *wiped_data_node |= member != Member::W;
                actions.push((down / 2, Action::Wipe(member)));
            }
            actions.push((down, Action::Start(member)));
            actions
        }
        2 => {
            let pause = pauses[rng.usize(..pauses.len())];
            vec![(Duration::ZERO, Action::Stop(member)), (pause, Action::Cont(member))]
        }
        _ => {
            // Half the time a node's site is cut off (every link that touches it), else any
            // subset of the links.
            let mut links: Vec<Link> = if rng.bool() {
                Link::ALL.into_iter().filter(|l| l.touches(member)).collect()
            } else {
                Link::ALL.into_iter().filter(|_| rng.bool()).collect()
            };
            if links.is_empty() {
                links.push(Link::ALL[rng.usize(..4)]);
            }
            let kind = match rng.usize(..4) {
                0 => Break::Sever,
                1 => Break::Silent,
                2 => Break::OneWay(Direction::ToTarget),
                _ => Break::OneWay(Direction::FromTarget),
            };
            let length =
                [pauses[rng.usize(..pauses.len())], MS(rng.u64(1000..9000))][rng.usize(..2)];
            let mut actions: Vec<(Duration, Action)> =
                links.iter().map(|&l| (Duration::ZERO, Action::Break(l, kind))).collect();
            actions.extend(links.iter().map(|&l| (length, Action::Heal(l))));
            actions
        }
    }
}

/// The most operator episodes a schedule draws.
pub const OPERATOR_EPISODES: usize = 3;

/// One operator episode, as (offset from its start, action) pairs: a pause of the failover
/// resumed 1.5, 4 or 8 s later (half the time with a promote of the standby halfway, which the
/// run makes only if no node serves then); a hold of a few queued messages, released 1 to 8 s
/// later or kept until the end (the run releases every hold once everything is healed); a
/// switchover; a rebuild of the standby.
fn operator_episode(rng: &mut fastrand::Rng) -> Vec<(Duration, Operator)> {
    match rng.usize(..4) {
        0 => {
            let length = [MS(1500), MS(4000), MS(8000)][rng.usize(..3)];
            let mut actions = vec![(Duration::ZERO, Operator::PauseFailover)];
            if rng.bool() {
                actions.push((length / 2, Operator::Promote));
            }
            actions.push((length, Operator::ResumeFailover));
            actions
        }
        1 => {
            let mut actions = vec![(Duration::ZERO, Operator::Hold(rng.usize(1..=6)))];
            if rng.bool() {
                actions.push((MS(rng.u64(1000..8000)), Operator::Release));
            }
            actions
        }
        2 => vec![(Duration::ZERO, Operator::Switchover)],
        _ => vec![(Duration::ZERO, Operator::Rebuild)],
    }
}

/// A second failure: a data node's site is cut off (every link that touches it), the other
/// data node takes over and is killed; the cut heals while the successor is still down (8 s),
/// so the node cut off is the only one left to serve. (When the node cut off is the standby,
/// it is an ordinary failover after the kill, delayed until the cut heals.)
fn successor_dies(rng: &mut fastrand::Rng, aim: Aim) -> Vec<(Duration, Action)> {
    let (cut, successor) = if rng.bool() { (Member::A, Member::B) } else { (Member::B, Member::A) };
    let how = if rng.bool() { Break::Sever } else { Break::Silent };
    let links: Vec<Link> = Link::ALL.into_iter().filter(|l| l.touches(cut)).collect();
    let killed = aim.failover + MS(1500);
    let healed = killed + MS(1000);
    let mut actions: Vec<(Duration, Action)> =
        links.iter().map(|&l| (Duration::ZERO, Action::Break(l, how))).collect();
    actions.push((killed, Action::Kill(successor)));
    actions.extend(links.iter().map(|&l| (healed, Action::Heal(l))));
    actions.push((healed + MS(8000), Action::Start(successor)));
    actions
}
