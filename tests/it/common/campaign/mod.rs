//! The black-box fault campaign: a trio of real relayd processes (two data nodes and a witness,
//! every cluster link through a fault proxy, sync replication, relayd's default timings), each
//! data node delivering to a sink of its own; a steady load of mail sent as an MTA sends to an
//! MX list; probes of both nodes' greetings and `/status`; a seeded [`Schedule`] of faults; then
//! everything healed, the queues drained, and the [`check`] of what was recorded.
//!
//! Only the operator's surface is used (the binary, its configs, SMTP, `/status`, signals, the
//! data directories), so that the campaign survives any change of relayd's insides.

pub mod check;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use self::check::{
    Ack, DataNode, Delivery, FaultState, History, Hold, Limits, Observation, Promotion,
    StateChange, Verdict, Window,
};
use self::schedule::{Action, Aim, Break, Member, Operator, Schedule};
use super::client::{self, Greeting, Outcome};
use super::cluster::{Timings, Trio, TrioOptions};
use super::proxy::Proxy;
use super::sink::Sink;
use super::within;

/// How a campaign runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The seeds of the schedules to run.
    pub seeds: Vec<u64>,
    /// Fault episodes per schedule.
    pub faults: usize,
    /// Where the report and the logs of failing schedules go.
    pub out: PathBuf,
}

impl Settings {
    /// From the environment: `RELAYD_CAMPAIGN_SEED` (replay that one schedule), else
    /// `RELAYD_CAMPAIGN_SCHEDULES` schedules from `RELAYD_CAMPAIGN_FIRST_SEED` (default 1) on,
    /// else the `short_form` seeds; `RELAYD_CAMPAIGN_FAULTS` episodes each
    /// (default 3); `RELAYD_CAMPAIGN_OUT` (default `target/campaign`). `RELAYD_CAMPAIGN_KEEP`
    /// keeps the logs of every schedule, not only of those that failed.
    pub fn from_env(short_form: &[u64]) -> Settings {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        let seeds = match (number("RELAYD_CAMPAIGN_SEED"), number("RELAYD_CAMPAIGN_SCHEDULES")) {
            (Some(seed), _) => vec![seed],
            (None, Some(count)) => {
                let first = number("RELAYD_CAMPAIGN_FIRST_SEED").unwrap_or(1);
                (first..first + count).collect()
            }
            (None, None) => short_form.to_vec(),
        };
        let faults = number("RELAYD_CAMPAIGN_FAULTS").map_or(3, |n| n as usize);
        let out = std::env::var_os("RELAYD_CAMPAIGN_OUT").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/campaign"),
            PathBuf::from,
        );
        Settings { seeds, faults, out }
    }
}

/// relayd's default timings, which the campaign runs on.
pub const TIMINGS: Timings = Timings::DEFAULTS;

/// The checker's bounds for these timings.
pub fn limits() -> Limits {
    Limits {
        max_window: Duration::from_millis(100),
        rto: TIMINGS.failover + Duration::from_secs(1),
        settle: Duration::from_secs(3),
        ack_grace: TIMINGS.lease + Duration::from_millis(500),
        result_grace: Duration::from_secs(1),
    }
}

/// One schedule's run.
#[derive(Debug)]
pub struct Run {
    pub schedule: Schedule,
    /// Faults injected (actions that break something and were applicable).
    pub faults: usize,
    /// Actions skipped because they did not apply when their time came (with why).
    pub skipped: Vec<String>,
    pub verdict: Verdict,
    /// Trouble of the harness itself (a node that would not start, ...).
    pub harness: Option<String>,
}

impl Run {
    pub fn violations(&self) -> Vec<String> {
        let mut out = self.verdict.violations();
        out.extend(self.harness.iter().map(|h| format!("harness: {h}")));
        out
    }

    /// The run as a JSON object, for the report.
    pub fn json(&self) -> serde_json::Value {
        let v = &self.verdict;
        serde_json::json!({
            "seed": self.schedule.seed,
            "schedule": self.schedule.to_string(),
            "faults": self.faults,
            "skipped": self.skipped,
            "acknowledged": v.acknowledged,
            "delivered": v.delivered,
            "lost": v.lost.len(),
            "duplicates": v.duplicates,
            "in_flight": v.in_flight,
            "two_serving_observations": v.overlaps.len(),
            "held_delivered": v.held_delivered,
            "held_alone_delivered": v.held_alone_delivered,
            "paused_promotions": v.paused_promotions.len(),
            "rto_max_ms": v.rto_max().map(|r| r.as_millis() as u64),
            "rto_final_ms": v.rto_final().map(|r| r.as_millis() as u64),
            "recoveries": v
                .recoveries
                .iter()
                .map(|(w, rto)| {
                    serde_json::json!({
                        "from_ms": w.start.as_millis() as u64,
                        "to_ms": w.end.as_millis() as u64,
                        "rto_ms": rto.map(|r| r.as_millis() as u64),
                    })
                })
                .collect::<Vec<_>>(),
            "violations": self.violations(),
        })
    }

    /// One row of the report's table.
    pub fn row(&self) -> String {
        let v = &self.verdict;
        let ms = |rto: Option<Duration>| rto.map_or("-".to_string(), |r| r.as_millis().to_string());
        let (rto_max, rto_final) = (ms(v.rto_max()), ms(v.rto_final()));
        let verdict = if self.violations().is_empty() { "ok" } else { "FAIL" };
        format!(
            "| {:>6} | {:>6} | {:>5} | {:>9} | {:>4} | {:>4} | {:>9} | {:>11} | {:>10} | {:>12} | {verdict} |",
            self.schedule.seed,
            self.faults,
            v.acknowledged,
            v.delivered,
            v.lost.len(),
            v.duplicates,
            v.in_flight,
            v.overlaps.len(),
            rto_max,
            rto_final
        )
    }
}

/// The header of [`Run::row`]'s table.
const TABLE_HEAD: &str = "|   seed | faults | acked | delivered | lost | dups | in flight | two serving | RTO max ms | RTO final ms | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// Runs every schedule of `settings`, one after the other, writing the report (`report.json`,
/// `report.md`) and, for each failing schedule, the nodes' logs under `settings.out`.
pub fn run_all(settings: &Settings) -> Vec<Run> {
    let aim = Aim { lease: TIMINGS.lease, failover: TIMINGS.failover };
    let mut runs = Vec::new();
    let _ = std::fs::create_dir_all(&settings.out);
    for &seed in &settings.seeds {
        let schedule = Schedule::generate(seed, settings.faults, aim);
        eprintln!("campaign: {schedule}");
        let run = run_one(schedule, &settings.out);
        eprintln!("{TABLE_HEAD}\n{}", run.row());
        for violation in run.violations() {
            eprintln!("  seed {seed}: {violation}");
        }
        runs.push(run);
        write_report(settings, &runs);
    }
    runs
}

fn write_report(settings: &Settings, runs: &[Run]) {
    let json = serde_json::json!({
        "summary": Summary::of(runs).json(),
        "schedules": runs.iter().map(Run::json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    let _ = std::fs::write(settings.out.join("report.json"), text);
    let _ = std::fs::write(settings.out.join("report.md"), report(runs));
}

/// The report: a row per schedule, the totals, then every broken invariant with its seed and
/// its schedule (replay one with `RELAYD_CAMPAIGN_SEED=N`).
pub fn report(runs: &[Run]) -> String {
    let mut text = format!("{TABLE_HEAD}\n");
    for run in runs {
        text += &run.row();
        text.push('\n');
    }
    text += &format!("\n{}\n", Summary::of(runs));
    for run in runs.iter().filter(|run| !run.violations().is_empty()) {
        text += &format!("\n{}\n", run.schedule);
        for violation in run.violations() {
            text += &format!("  {violation}\n");
        }
    }
    text
}

/// The campaign's totals.
#[derive(Debug, Default)]
pub struct Summary {
    pub schedules: usize,
    pub failed: usize,
    pub faults: usize,
    pub acknowledged: usize,
    pub lost: usize,
    pub two_serving: usize,
    pub duplicates: usize,
    pub in_flight: usize,
    /// Every recovery time measured (a stretch that never recovered is left out, and failed).
    pub recoveries: Vec<Duration>,
    pub never_recovered: usize,
}

impl Summary {
    pub fn of(runs: &[Run]) -> Summary {
        let mut summary = Summary { schedules: runs.len(), ..Summary::default() };
        for run in runs {
            let v = &run.verdict;
            summary.failed += usize::from(!run.violations().is_empty());
            summary.faults += run.faults;
            summary.acknowledged += v.acknowledged;
            summary.lost += v.lost.len();
            summary.two_serving += v.overlaps.len();
            summary.duplicates += v.duplicates;
            summary.in_flight += v.in_flight;
            summary.recoveries.extend(v.recoveries.iter().filter_map(|(_, rto)| *rto));
            summary.never_recovered += v.recoveries.iter().filter(|(_, rto)| rto.is_none()).count();
        }
        summary.recoveries.sort();
        summary
    }

    fn median(&self) -> Option<Duration> {
        self.recoveries.get(self.recoveries.len() / 2).copied()
    }

    fn json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        serde_json::json!({
            "schedules": self.schedules,
            "failed": self.failed,
            "faults": self.faults,
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "two_serving_observations": self.two_serving,
            "duplicates": self.duplicates,
            "in_flight": self.in_flight,
            "recoveries": self.recoveries.len(),
            "never_recovered": self.never_recovered,
            "rto_median_ms": ms(self.median()),
            "rto_max_ms": ms(self.recoveries.last().copied()),
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
        write!(
            f,
            "{} schedules ({} failed), {} faults injected, {} messages acknowledged, {} lost, {} \
             two-serving observations, {} duplicates ({} in flight), {} recoveries: median {}, \
             max {}, {} never",
            self.schedules,
            self.failed,
            self.faults,
            self.acknowledged,
            self.lost,
            self.two_serving,
            self.duplicates,
            self.in_flight,
            self.recoveries.len(),
            ms(self.median()),
            ms(self.recoveries.last().copied()),
            self.never_recovered
        )
    }
}

/// Runs one schedule; a panic of the harness (a node that would not start) becomes a finding.
pub fn run_one(schedule: Schedule, out: &Path) -> Run {
    let logs = out.join(format!("seed-{}", schedule.seed));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Episode::start(&schedule).play(&schedule, &logs)
    }));
    match outcome {
        Ok(run) => run,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Run {
                schedule,
                faults: 0,
                skipped: Vec::new(),
                verdict: Verdict::default(),
                harness: Some(message),
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Probes of both data nodes, each on a thread of its own: the greeting every 50 ms, `/status`
/// every 100 ms; every answer recorded as an [`Observation`] (a probe without an answer tells
/// nothing and is left out).
pub struct Watch {
    t0: Instant,
    observations: Arc<Mutex<Vec<Observation>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Watch {
    /// Starts probing `a` and `b` of `trio`; windows are offsets from `t0`.
    pub fn start(trio: &Trio, t0: Instant) -> Watch {
        let mut watch =
            Watch { t0, observations: Arc::default(), stop: Arc::default(), threads: Vec::new() };
        for (node, member) in [(DataNode::A, &trio.a), (DataNode::B, &trio.b)] {
            let (smtp, port) = (member.addr(), member.admin_port);
            let (observations, stop) = (watch.observations.clone(), watch.stop.clone());
            watch.threads.push(std::thread::spawn(move || {
                every(Duration::from_millis(50), &stop, || {
                    let (greeting, start, end) = client::greeting(smtp, PROBE_PATIENCE);
                    if greeting != Greeting::NoAnswer {
                        let window = window_of(t0, start, end);
                        let serving = greeting == Greeting::Serving;
                        let observation = Observation { node, window, serving, epoch: None };
                        lock(&observations).push(observation);
                    }
                })
            }));
            let (observations, stop) = (watch.observations.clone(), watch.stop.clone());
            watch.threads.push(std::thread::spawn(move || {
                every(Duration::from_millis(100), &stop, || {
                    let (sample, start, end) = client::status_sample(port, PROBE_PATIENCE);
                    if let Some(sample) = sample {
                        lock(&observations).push(Observation {
                            node,
                            window: window_of(t0, start, end),
                            serving: sample.serving,
                            epoch: Some(sample.epoch),
                        });
                    }
                })
            }));
        }
        watch
    }

    /// The observations so far.
    pub fn observations(&self) -> Vec<Observation> {
        lock(&self.observations).clone()
    }

    /// Whether a node was seen serving in a probe that began at `since` or later.
    pub fn served_since(&self, since: Instant) -> bool {
        let since = since.saturating_duration_since(self.t0);
        lock(&self.observations).iter().any(|o| o.serving && o.window.start >= since)
    }

    /// Stops the probes; every observation.
    pub fn finish(mut self) -> Vec<Observation> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
        self.observations()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A steady load of mail: clients that each send a message every [`LOAD_PERIOD`], with a
/// Message-ID of its own (`TAG-N@campaign.test`), offered to each node of an MX list in turn
/// until one answers 250; when all refuse, again 100 ms later, with the same Message-ID.
pub struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    resent: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` clients sending `messages` messages in all (None: until stopped).
    pub fn start(
        mx: [(DataNode, SocketAddr); 2],
        tag: &str,
        clients: usize,
        messages: Option<usize>,
        t0: Instant,
    ) -> Load {
        let mut load = Load {
            acks: Arc::default(),
            resent: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..clients {
            let (acks, resent, stop, next) =
                (load.acks.clone(), load.resent.clone(), load.stop.clone(), next.clone());
            let tag = tag.to_string();
            load.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if messages.is_some_and(|limit| n >= limit) {
                        return;
                    }
                    let began = Instant::now();
                    let id = format!("{tag}-{n}@campaign.test");
                    offer(&mx, id, &acks, &resent, &stop, t0);
                    std::thread::sleep(
                        (began + LOAD_PERIOD).saturating_duration_since(Instant::now()),
                    );
                }
            }));
        }
        load
    }

    /// Messages acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        lock(&self.acks).len()
    }

    /// Whether every client has sent its share (a load of a fixed number of messages).
    pub fn done(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Stops the clients (a message not yet acknowledged is given up); every 250, and the
    /// messages sent again after a submission whose fate was unknown.
    pub fn finish(mut self) -> (Vec<Ack>, BTreeSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
        (lock(&self.acks).clone(), lock(&self.resent).clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Offers the message `id` to each node of `mx` in turn until one answers 250 or `stop`.
fn offer(
    mx: &[(DataNode, SocketAddr)],
    id: String,
    acks: &Mutex<Vec<Ack>>,
    resent: &Mutex<BTreeSet<String>>,
    stop: &AtomicBool,
    t0: Instant,
) {
    while !stop.load(Ordering::SeqCst) {
        for &(node, addr) in mx {
            let start = Instant::now();
            match client::submit(addr, &id, Duration::from_secs(1)) {
                Outcome::Accepted => {
                    let window = window_of(t0, start, Instant::now());
                    lock(acks).push(Ack { id, node, window });
                    return;
                }
                Outcome::Failed { uncertain: true, .. } | Outcome::Deferred(_) => {
                    lock(resent).insert(id.clone());
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each data node's next hop: a sink of its own (so that a delivery by the node that should
/// not serve is seen as such) behind a gate, a fault proxy that refuses connections while the
/// mail is held (the node keeps it queued, retrying).
pub struct Gates {
    /// `a`'s sink and `b`'s.
    sinks: [Sink; 2],
    gates: [Proxy; 2],
}

impl Gates {
    /// Both gates open.
    pub fn open() -> Gates {
        let sinks = [Sink::plain(), Sink::plain()];
        let gates = [Proxy::start(sinks[0].addr()), Proxy::start(sinks[1].addr())];
        Gates { sinks, gates }
    }

    /// `a`'s and `b`'s next hops, for [`Trio::configure`].
    pub fn next_hops(&self) -> [Option<SocketAddr>; 2] {
        [Some(self.gates[0].addr()), Some(self.gates[1].addr())]
    }

    /// The next hops refuse mail.
    pub fn hold(&self) {
        self.gates.iter().for_each(Proxy::block);
    }

    /// The next hops take mail.
    pub fn release(&self) {
        self.gates.iter().for_each(Proxy::unblock);
    }

    /// Every message the sinks received: the deliveries of the load's messages, by the node
    /// whose sink it is, and the messages that bounces name.
    pub fn received(&self, t0: Instant) -> (Vec<Delivery>, BTreeSet<String>) {
        let mut deliveries = Vec::new();
        let mut bounced = BTreeSet::new();
        for (sink, by) in self.sinks.iter().zip([DataNode::A, DataNode::B]) {
            for t in sink.transactions() {
                if t.sender.is_empty() {
                    bounced.extend(campaign_ids(&String::from_utf8_lossy(&t.body)));
                } else if let Some(id) = t.message_id() {
                    let window = window_of(t0, t.mail_at, t.data_end_at);
                    deliveries.push(Delivery { by, id, window });
                }
            }
        }
        (deliveries, bounced)
    }

    /// The messages of `ids` that no sink received and no bounce names.
    pub fn undelivered(&self, ids: &BTreeSet<String>, t0: Instant) -> BTreeSet<String> {
        let (deliveries, bounced) = self.received(t0);
        let got: BTreeSet<&String> = deliveries.iter().map(|d| &d.id).chain(&bounced).collect();
        ids.iter().filter(|id| !got.contains(id)).cloned().collect()
    }
}

/// Why an operator's request did not succeed.
#[derive(Debug)]
enum AdminError {
    /// Nothing answered in time: the request may have been carried out.
    NoAnswer(String),
    /// A non-2xx answer.
    Refused(String),
}

impl From<AdminError> for String {
    fn from(error: AdminError) -> String {
        match error {
            AdminError::NoAnswer(why) | AdminError::Refused(why) => why,
        }
    }
}

/// The trio, its sinks, and the threads that load and watch it.
struct Episode {
    trio: Trio,
    gates: Gates,
    t0: Instant,
    load: Option<Load>,
    watch: Option<Watch>,
    /// What the faults leave of the trio now.
    state: FaultState,
    /// The state after each change, for the checker.
    states: Vec<StateChange>,
    /// For each data node killed, whether the pair was in sync just before.
    in_sync_at_kill: BTreeMap<Member, bool>,
    /// The wall clock at `t0`, to place the nodes' log lines.
    t0_wall: SystemTime,
    /// What the operator's actions did: the holds, and the pauses held by both data nodes.
    holds: Vec<Hold>,
    pauses: Vec<Window>,
    /// Since when the failover is paused on both data nodes, while it is.
    paused_since: Option<Duration>,
    /// Whether the operator asked for a hold (the run releases every hold at the end).
    hold_asked: bool,
    /// Picks the messages an operator holds (seeded, though what is queued varies by run).
    rng: fastrand::Rng,
}

/// Clients of the campaign's steady load.
const LOAD_CLIENTS: usize = 2;
/// How often a client of a [`Load`] sends a message.
const LOAD_PERIOD: Duration = Duration::from_millis(300);
/// How long a probe waits for an answer.
const PROBE_PATIENCE: Duration = Duration::from_millis(300);
/// How long an operator's request waits for its answer.
const ADMIN_PATIENCE: Duration = Duration::from_secs(3);
/// How long a switchover's request waits for the handover.
const SWITCHOVER_PATIENCE: Duration = Duration::from_secs(30);

impl Episode {
    fn start(schedule: &Schedule) -> Episode {
        let gates = Gates::open();
        let options =
            TrioOptions { timings: TIMINGS, witness_timings: false, ..TrioOptions::default() };
        let trio = Trio::configure(options, gates.next_hops());
        let t0 = Instant::now();
        let t0_wall = SystemTime::now();
        let nothing_started = FaultState { down: Member::ALL.into(), ..FaultState::default() };
        let mx = [(DataNode::A, trio.a.addr()), (DataNode::B, trio.b.addr())];
        let tag = format!("s{}", schedule.seed);
        let load = Some(Load::start(mx, &tag, LOAD_CLIENTS, None, t0));
        let watch = Some(Watch::start(&trio, t0));
        Episode {
            trio,
            t0,
            load,
            watch,
            gates,
            state: nothing_started.clone(),
            states: vec![StateChange { at: Duration::ZERO, state: nothing_started, wiped: None }],
            in_sync_at_kill: BTreeMap::new(),
            t0_wall,
            holds: Vec::new(),
            pauses: Vec::new(),
            paused_since: None,
            hold_asked: false,
            rng: fastrand::Rng::with_seed(schedule.seed),
        }
    }

    fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.t0)
    }

    /// Plays the schedule, heals, drains, checks; saves the logs when something broke.
    fn play(mut self, schedule: &Schedule, logs: &Path) -> Run {
        let mut faults = Vec::new();
        let mut skipped = Vec::new();
        let begin = Instant::now();
        for step in &schedule.steps {
            std::thread::sleep((begin + step.at).saturating_duration_since(Instant::now()));
            let when = self.at(Instant::now());
            match self.apply(step.action) {
                Ok(()) if step.action.is_fault() => faults.push(when),
                Ok(()) => {}
                Err(why) => {
                    skipped.push(format!("{:.1}s {}: {why}", step.at.as_secs_f64(), step.action))
                }
            }
        }
        self.heal_all();
        let healed_at = Instant::now();
        let limits = limits();
        // Mail keeps flowing for a while after the heal, through whichever node serves.
        within(limits.rto + Duration::from_secs(3), || {
            self.watch.as_ref().is_some_and(|w| w.served_since(healed_at))
        });
        // ... at least as long as the recovery bound and a second, so that the healed stretch
        // is one the checker holds to it.
        let healed_for = limits.rto + Duration::from_secs(1);
        std::thread::sleep((healed_at + healed_for).saturating_duration_since(Instant::now()));
        let (acks, resent) = self.load.take().map(Load::finish).unwrap_or_default();
        let mut history = History { acks, resent, faults, ..History::default() };
        // Everything not held is delivered; then the standby must hold what the primary holds
        // (the held messages, after a rebuild too); then every hold is released.
        let held: BTreeSet<String> =
            self.holds.iter().filter(|h| h.released.is_none()).map(|h| h.id.clone()).collect();
        self.wait_delivered(&history, &held);
        let mut final_queues = None;
        within(Duration::from_secs(15), || {
            final_queues = self.queue_views();
            final_queues.as_ref().is_some_and(|[a, b]| a == b && a.len() <= held.len())
        });
        history.final_queues = final_queues;
        // Every hold asked for, even one whose answer did not come in time.
        if self.hold_asked {
            within(Duration::from_secs(10), || self.operate(Operator::Release).is_ok());
        }
        self.wait_delivered(&history, &BTreeSet::new());
        // Redeliveries still under way settle before the duplicates are counted.
        within(Duration::from_secs(10), || self.queues_empty());
        history.observations = self.watch.take().map(Watch::finish).unwrap_or_default();
        (history.deliveries, history.bounced) = self.gates.received(self.t0);
        history.states = self.states.clone();
        history.holds = self.holds.clone();
        history.pauses = self.pauses.clone();
        history.promotions = self.promotions();
        history.end = self.at(Instant::now());
        let verdict = check::check(&history, &limits);
        let run = Run {
            schedule: schedule.clone(),
            faults: history.faults.len(),
            skipped,
            verdict,
            harness: None,
        };
        if !run.violations().is_empty() || std::env::var_os("RELAYD_CAMPAIGN_KEEP").is_some() {
            self.save_logs(&run, &history, logs);
        }
        run
    }

    fn apply(&mut self, action: Action) -> Result<(), String> {
        let mut wiped = match action {
            Action::Wipe(m) if m != Member::W => Some(m),
            _ => None,
        };
        match action {
            Action::Start(m) => {
                if !self.state.down.remove(&m) {
                    return Err("running".into());
                }
                self.trio.launch(m.name());
            }
            Action::Kill(m) => {
                if self.state.down.contains(&m) {
                    return Err("down".into());
                }
                if m != Member::W {
                    let in_sync = self.in_sync();
                    self.in_sync_at_kill.insert(m, in_sync);
                }
                self.trio.node_mut(m.name()).kill9();
                self.state.down.insert(m);
                self.state.stopped.remove(&m);
            }
            Action::Wipe(m) => {
                if !self.state.down.contains(&m) {
                    return Err("running".into());
                }
                if m != Member::W && self.in_sync_at_kill.get(&m) != Some(&true) {
                    return Err("the pair was not in sync when it was killed".into());
                }
                self.trio.node(m.name()).wipe_data();
            }
            Action::Stop(m) => {
                if self.state.down.contains(&m) || !self.state.stopped.insert(m) {
                    return Err("down or stopped".into());
                }
                self.trio.node(m.name()).pause();
            }
            Action::Cont(m) => {
                if !self.state.stopped.remove(&m) {
                    return Err("not stopped".into());
                }
                self.trio.node(m.name()).resume();
            }
            Action::Break(l, how) => {
                if !self.state.broken.insert(l) {
                    return Err("already broken".into());
                }
                let proxy = self.trio.link(l.name());
                match how {
                    Break::Sever => super::cluster::sever(proxy),
                    Break::Silent => proxy.pause(),
                    Break::OneWay(direction) => proxy.pause_one_way(direction),
                }
            }
            Action::Heal(l) => {
                if !self.state.broken.remove(&l) {
                    return Err("not broken".into());
                }
                let proxy = self.trio.link(l.name());
                proxy.unblock();
                proxy.resume();
            }
            Action::HoldMail => self.gates.hold(),
            Action::ReleaseMail => self.gates.release(),
            Action::Operator(op) => wiped = self.operate(op)?,
        }
        let at = self.at(Instant::now());
        self.states.push(StateChange { at, state: self.state.clone(), wiped });
        Ok(())
    }

    /// Does what an operator's action says, to the node it is for; the data node whose spool
    /// it emptied (a rebuild).
    fn operate(&mut self, op: Operator) -> Result<Option<Member>, String> {
        let asked = self.at(Instant::now());
        match op {
            Operator::PauseFailover => {
                let targets = [self.find("primary"), self.find("standby")];
                let answered = targets
                    .iter()
                    .flatten()
                    .filter(|&&m| self.post(m, "/failover/pause").is_ok())
                    .count();
                if answered == 0 {
                    return Err("no data node paused".into());
                }
                self.state.paused = true;
                if answered == 2 && self.paused_since.is_none() {
                    self.paused_since = Some(self.at(Instant::now()));
                }
            }
            Operator::ResumeFailover => {
                let up: Vec<Member> =
                    [Member::A, Member::B].into_iter().filter(|&m| self.state.up(m)).collect();
                let resumed =
                    up.iter().filter(|&&m| self.post(m, "/failover/resume").is_ok()).count();
                if let Some(start) = self.paused_since.take() {
                    self.pauses.push(Window { start, end: asked });
                }
                if resumed == 0 {
                    return Err("no data node resumed".into());
                }
                // A node that did not hear it may still hold its own pause (the run resumes
                // every node once healed).
                self.state.paused = resumed < 2;
            }
            Operator::Promote => {
                if !self.state.paused {
                    return Err("failover is not paused".into());
                }
                if self.find("primary").is_some() {
                    return Err("a primary serves".into());
                }
                let standby = self.find("standby").ok_or("no standby answers")?;
                self.post(standby, "/promote")?;
            }
            Operator::Switchover => {
                let primary = self.find("primary").ok_or("no primary serves")?;
                // The handover waits for the standby to take over, which the faults may
                // delay for long: the schedule goes on meanwhile, as the operator's faults do.
                let port = self.trio.node(primary.name()).admin_port;
                std::thread::spawn(move || {
                    super::cluster::admin_request(port, "POST", "/demote", "", SWITCHOVER_PATIENCE)
                });
            }
            Operator::Rebuild => {
                // Only as the runbook says: the primary healthy and its standby in sync (else
                // the standby may hold the only copy of some mail: a double fault).
                if !self.in_sync() {
                    return Err("no primary in sync with its standby".into());
                }
                let standby = self.find("standby").ok_or("no standby answers")?;
                // Asked for, it may have emptied the spool even without an answer in time.
                return match self.post(standby, "/rebuild") {
                    Ok(_) | Err(AdminError::NoAnswer(_)) => Ok(Some(standby)),
                    Err(refused) => Err(refused.into()),
                };
            }
            Operator::Hold(count) => {
                let primary = self.find("primary").ok_or("no primary serves")?;
                let port = self.trio.node(primary.name()).admin_port;
                let queue = client::get_json(port, "/queue", PROBE_PATIENCE * 3)
                    .ok_or("the queue could not be listed")?;
                let mut ids: Vec<String> = queue
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["held_since"].is_null())
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
                self.rng.shuffle(&mut ids);
                self.hold_asked = true;
                let before = self.holds.len();
                let alone = !self.in_sync();
                for queue_id in ids.into_iter().take(count) {
                    self.hold(port, &queue_id, alone);
                }
                if self.holds.len() == before {
                    return Err("nothing held".into());
                }
            }
            Operator::Release => {
                if !self.hold_asked {
                    return Err("nothing held".into());
                }
                let primary = self.find("primary").ok_or("no primary serves")?;
                self.post(primary, "/queue/release?all=true")?;
                for hold in self.holds.iter_mut().filter(|h| h.released.is_none()) {
                    hold.released = Some(asked);
                }
            }
        }
        Ok(None)
    }

    /// Holds the message `queue_id` on the node of admin `port`, recording its Message-ID when
    /// the node says it held it.
    fn hold(&mut self, port: u16, queue_id: &str, alone: bool) {
        let content = format!("/queue/{queue_id}/content");
        let Some((_, body)) = super::cluster::admin_get(port, &content, ADMIN_PATIENCE) else {
            return;
        };
        let Some(id) = campaign_ids(&body).into_iter().next() else { return };
        let path = format!("/queue/hold?id={queue_id}");
        let answer = super::cluster::admin_request(port, "POST", &path, "", ADMIN_PATIENCE);
        let held = answer
            .filter(|(head, _)| head.starts_with("HTTP/1.1 200"))
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|json| json["held"] == 1);
        if held {
            self.holds.push(Hold { id, held: self.at(Instant::now()), released: None, alone });
        }
    }

    /// The data node that is up and says (in `/status`) it is in `role`: for "primary", one
    /// that serves.
    fn find(&self, role: &str) -> Option<Member> {
        [Member::A, Member::B].into_iter().filter(|&m| self.state.up(m)).find(|&m| {
            client::status_sample(self.trio.node(m.name()).admin_port, PROBE_PATIENCE)
                .0
                .is_some_and(|s| s.role == role && (role != "primary" || s.serving))
        })
    }

    /// `POST path` to the data node `m`'s admin endpoint (what the CLI's command does, with
    /// a patience of the run's own); the body of a 2xx answer, or why not.
    fn post(&self, m: Member, path: &str) -> Result<String, AdminError> {
        let port = self.trio.node(m.name()).admin_port;
        match super::cluster::admin_request(port, "POST", path, "", ADMIN_PATIENCE) {
            Some((head, body)) if head.starts_with("HTTP/1.1 2") => Ok(body),
            Some((head, body)) => Err(AdminError::Refused(format!(
                "{path} on {}: {}: {}",
                m.name(),
                head.lines().next().unwrap_or(""),
                body.trim()
            ))),
            None => Err(AdminError::NoAnswer(format!("{path} on {}: no answer", m.name()))),
        }
    }

    /// Waits (with a deadline) until every acknowledged message but those of `held` reached a
    /// sink or a bounce.
    fn wait_delivered(&self, history: &History, held: &BTreeSet<String>) {
        let acks: Vec<Ack> =
            history.acks.iter().filter(|a| !held.contains(&a.id)).cloned().collect();
        within(Duration::from_secs(20), || {
            let (deliveries, bounced) = self.gates.received(self.t0);
            let seen = History { acks: acks.clone(), deliveries, bounced, ..History::default() };
            check::lost(&seen).is_empty()
        });
    }

    /// Both data nodes' queues (`ID`, or `ID held`), when both answer.
    fn queue_views(&self) -> Option<[BTreeSet<String>; 2]> {
        let view = |node: &super::Node| -> Option<BTreeSet<String>> {
            let queue = client::get_json(node.admin_port, "/queue", ADMIN_PATIENCE)?;
            let entries = queue.as_array()?.iter().filter_map(|m| {
                let id = m["id"].as_str()?;
                Some(if m["held_since"].is_null() { id.to_string() } else { format!("{id} held") })
            });
            Some(entries.collect())
        };
        Some([view(&self.trio.a)?, view(&self.trio.b)?])
    }

    /// Every epoch begun by a data node: when its log says it was promoted, and the epoch's
    /// cause in that node's `/history`.
    fn promotions(&self) -> Vec<Promotion> {
        let t0 = chrono::DateTime::<chrono::Utc>::from(self.t0_wall);
        let mut found = Vec::new();
        for (by, node) in [(DataNode::A, &self.trio.a), (DataNode::B, &self.trio.b)] {
            let history = client::get_json(node.admin_port, "/history", ADMIN_PATIENCE);
            let cause = |epoch: u64| -> String {
                let entries =
                    history.as_ref().and_then(|h| h.as_array().cloned()).unwrap_or_default();
                entries
                    .iter()
                    .find(|e| e["epoch"] == epoch)
                    .and_then(|e| e["cause"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into())
            };
            for line in node.log().lines().filter(|l| l.contains(" promoted")) {
                let stamp = line.split_whitespace().next().unwrap_or("");
                let Ok(logged) = chrono::DateTime::parse_from_rfc3339(stamp) else { continue };
                let epoch = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("epoch=")?.parse::<u64>().ok());
                let Some(epoch) = epoch else { continue };
                let at = (logged.with_timezone(&chrono::Utc) - t0).to_std().unwrap_or_default();
                found.push(Promotion { node: by, epoch, at, cause: cause(epoch) });
            }
        }
        found
    }

    /// Every link whole, every process running and awake.
    fn heal_all(&mut self) {
        for m in std::mem::take(&mut self.state.stopped) {
            self.trio.node(m.name()).resume();
        }
        for l in std::mem::take(&mut self.state.broken) {
            let proxy = self.trio.link(l.name());
            proxy.unblock();
            proxy.resume();
        }
        for m in std::mem::take(&mut self.state.down) {
            self.trio.launch(m.name());
        }
        self.gates.release();
        // Failover resumed on both data nodes (each may hold its own pause).
        if self.state.paused {
            let resumed = within(Duration::from_secs(10), || {
                [Member::A, Member::B].into_iter().all(|m| self.post(m, "/failover/resume").is_ok())
            });
            if let Some(start) = self.paused_since.take() {
                self.pauses.push(Window { start, end: self.at(Instant::now()) });
            }
            self.state.paused = !resumed;
        }
        let at = self.at(Instant::now());
        self.states.push(StateChange { at, state: self.state.clone(), wiped: None });
    }

    /// A primary sees its standby connected and holding its whole log.
    fn in_sync(&self) -> bool {
        [&self.trio.a, &self.trio.b].iter().any(|node| {
            client::status_sample(node.admin_port, PROBE_PATIENCE)
                .0
                .is_some_and(|s| s.role == "primary" && s.peer_connected && s.lag_records == 0)
        })
    }

    fn queues_empty(&self) -> bool {
        [&self.trio.a, &self.trio.b].iter().all(|node| {
            client::status_sample(node.admin_port, PROBE_PATIENCE).0.is_some_and(|s| s.queued == 0)
        })
    }

    fn save_logs(&self, run: &Run, history: &History, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        for m in Member::ALL {
            let _ = std::fs::write(
                dir.join(format!("{}.log", m.name())),
                self.trio.node(m.name()).log(),
            );
        }
        let mut text = format!("{}\n\nskipped: {:?}\n\n", run.schedule, run.skipped);
        for violation in run.violations() {
            text += &format!("{violation}\n");
        }
        text += &format!("\n{:#?}\n\nstates:\n", run.verdict);
        for change in &history.states {
            text += &format!("  {:?}\n", change);
        }
        let _ = std::fs::write(dir.join("run.txt"), text);
    }
}

impl Drop for Episode {
    fn drop(&mut self) {
        // A stopped process cannot be reaped until it runs again.
        for m in std::mem::take(&mut self.state.stopped) {
            self.trio.node(m.name()).resume();
        }
    }
}

fn window_of(t0: Instant, start: Instant, end: Instant) -> Window {
    Window { start: start.saturating_duration_since(t0), end: end.saturating_duration_since(t0) }
}

/// Runs `probe` every `period` until `stop`.
fn every(period: Duration, stop: &AtomicBool, mut probe: impl FnMut()) {
    while !stop.load(Ordering::SeqCst) {
        let next = Instant::now() + period;
        probe();
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The load's Message-IDs named in `text` (a bounce quotes its message's header).
fn campaign_ids(text: &str) -> Vec<String> {
    text.split('<')
        .skip(1)
        .filter_map(|part| part.split_once('>').map(|(id, _)| id))
        .filter(|id| id.ends_with("@campaign.test"))
        .map(str::to_string)
        .collect()
}
