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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::check::{Ack, DataNode, Delivery, History, Limits, Observation, Verdict, Window};
use self::schedule::{Action, Aim, Break, Link, Member, Schedule};
use super::client::{self, Greeting, Outcome};
use super::cluster::{Timings, Trio, TrioOptions};
use super::sink::Sink;

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
    /// `RELAYD_CAMPAIGN_SCHEDULES` schedules (default `default_schedules`) from
    /// `RELAYD_CAMPAIGN_FIRST_SEED` (default 1) on; `RELAYD_CAMPAIGN_FAULTS` episodes each
    /// (default 3); `RELAYD_CAMPAIGN_OUT` (default `target/campaign`).
    pub fn from_env(default_schedules: u64) -> Settings {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        let seeds = match number("RELAYD_CAMPAIGN_SEED") {
            Some(seed) => vec![seed],
            None => {
                let first = number("RELAYD_CAMPAIGN_FIRST_SEED").unwrap_or(1);
                let count = number("RELAYD_CAMPAIGN_SCHEDULES").unwrap_or(default_schedules);
                (first..first + count).collect()
            }
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
            "rto_ms": v.rto.map(|r| r.as_millis() as u64),
            "violations": self.violations(),
        })
    }

    /// One row of the report's table.
    pub fn row(&self) -> String {
        let v = &self.verdict;
        let rto = v.rto.map_or("-".to_string(), |r| r.as_millis().to_string());
        let verdict = if self.violations().is_empty() { "ok" } else { "FAIL" };
        format!(
            "| {:>6} | {:>6} | {:>5} | {:>9} | {:>4} | {:>4} | {:>9} | {:>11} | {:>6} | {verdict} |",
            self.schedule.seed,
            self.faults,
            v.acknowledged,
            v.delivered,
            v.lost.len(),
            v.duplicates,
            v.in_flight,
            v.overlaps.len(),
            rto
        )
    }
}

/// The header of [`Run::row`]'s table.
pub const TABLE_HEAD: &str = "|   seed | faults | acked | delivered | lost | dups | in flight | two serving | RTO ms | verdict |\n|---|---|---|---|---|---|---|---|---|---|";

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
    let json: Vec<serde_json::Value> = runs.iter().map(Run::json).collect();
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    let _ = std::fs::write(settings.out.join("report.json"), text);
    let mut table = format!("{TABLE_HEAD}\n");
    for run in runs {
        table += &run.row();
        table.push('\n');
    }
    for run in runs {
        for violation in run.violations() {
            table += &format!("\nseed {}: {violation}", run.schedule.seed);
        }
    }
    let _ = std::fs::write(settings.out.join("report.md"), table);
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

/// What the load and the probes record, as they go.
#[derive(Default)]
struct Records {
    acks: Mutex<Vec<Ack>>,
    resent: Mutex<BTreeSet<String>>,
    observations: Mutex<Vec<Observation>>,
}

/// The trio, its sinks, and the threads that load and watch it.
struct Episode {
    trio: Trio,
    /// `a`'s sink and `b`'s.
    sinks: [Sink; 2],
    t0: Instant,
    records: Arc<Records>,
    stop_load: Arc<AtomicBool>,
    stop_probes: Arc<AtomicBool>,
    load: Vec<JoinHandle<()>>,
    probes: Vec<JoinHandle<()>>,
    /// Members that are not running (never started, or killed).
    down: BTreeSet<Member>,
    stopped: BTreeSet<Member>,
    broken: BTreeSet<Link>,
    /// For each data node killed, whether the pair was in sync just before.
    in_sync_at_kill: BTreeMap<Member, bool>,
}

/// Clients of the steady load, each sending a message every `LOAD_PERIOD`.
const LOAD_CLIENTS: usize = 2;
const LOAD_PERIOD: Duration = Duration::from_millis(300);
/// How long a probe waits for an answer.
const PROBE_PATIENCE: Duration = Duration::from_millis(300);

impl Episode {
    fn start(schedule: &Schedule) -> Episode {
        let sinks = [Sink::plain(), Sink::plain()];
        let options =
            TrioOptions { timings: TIMINGS, witness_timings: false, ..TrioOptions::default() };
        let trio = Trio::configure(options, [Some(sinks[0].addr()), Some(sinks[1].addr())]);
        let mut episode = Episode {
            trio,
            sinks,
            t0: Instant::now(),
            records: Arc::default(),
            stop_load: Arc::default(),
            stop_probes: Arc::default(),
            load: Vec::new(),
            probes: Vec::new(),
            down: Member::ALL.into_iter().collect(),
            stopped: BTreeSet::new(),
            broken: BTreeSet::new(),
            in_sync_at_kill: BTreeMap::new(),
        };
        episode.start_threads(schedule.seed);
        episode
    }

    fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.t0)
    }

    fn window(&self, start: Instant, end: Instant) -> Window {
        Window { start: self.at(start), end: self.at(end) }
    }

    fn start_threads(&mut self, seed: u64) {
        let mx = [(DataNode::A, self.trio.a.addr()), (DataNode::B, self.trio.b.addr())];
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..LOAD_CLIENTS {
            let (records, stop, next, t0) =
                (self.records.clone(), self.stop_load.clone(), next.clone(), self.t0);
            self.load.push(std::thread::spawn(move || {
                load_client(&mx, seed, &next, &records, &stop, t0)
            }));
        }
        let admin = [(DataNode::A, self.trio.a.admin_port), (DataNode::B, self.trio.b.admin_port)];
        for ((node, smtp), (_, port)) in mx.into_iter().zip(admin) {
            let (records, stop, t0) = (self.records.clone(), self.stop_probes.clone(), self.t0);
            self.probes.push(std::thread::spawn(move || {
                every(Duration::from_millis(50), &stop, || {
                    let (greeting, start, end) = client::greeting(smtp, PROBE_PATIENCE);
                    if greeting != Greeting::NoAnswer {
                        let window = window_of(t0, start, end);
                        let serving = greeting == Greeting::Serving;
                        let observation = Observation { node, window, serving, epoch: None };
                        lock(&records.observations).push(observation);
                    }
                })
            }));
            let (records, stop) = (self.records.clone(), self.stop_probes.clone());
            self.probes.push(std::thread::spawn(move || {
                every(Duration::from_millis(100), &stop, || {
                    let (sample, start, end) = client::status_sample(port, PROBE_PATIENCE);
                    if let Some(sample) = sample {
                        lock(&records.observations).push(Observation {
                            node,
                            window: window_of(t0, start, end),
                            serving: sample.serving,
                            epoch: Some(sample.epoch),
                        });
                    }
                })
            }));
        }
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
        let healed = self.at(Instant::now());
        let limits = limits();
        // Mail keeps flowing for a while after the heal, through whichever node serves.
        self.wait_until(limits.rto + Duration::from_secs(3), |e| e.served_since(healed));
        std::thread::sleep(Duration::from_secs(2));
        self.stop_load.store(true, Ordering::SeqCst);
        for client in std::mem::take(&mut self.load) {
            let _ = client.join();
        }
        self.wait_until(Duration::from_secs(20), |e| {
            check::lost(&e.history(&faults, healed)).is_empty()
        });
        // Redeliveries still under way settle before the duplicates are counted.
        self.wait_until(Duration::from_secs(10), |e| e.queues_empty());
        self.stop_probes.store(true, Ordering::SeqCst);
        for probe in std::mem::take(&mut self.probes) {
            let _ = probe.join();
        }
        let history = self.history(&faults, healed);
        let verdict = check::check(&history, &limits);
        let run = Run {
            schedule: schedule.clone(),
            faults: faults.len(),
            skipped,
            verdict,
            harness: None,
        };
        if !run.violations().is_empty() {
            self.save_logs(&run, logs);
        }
        run
    }

    fn apply(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::Start(m) => {
                if !self.down.remove(&m) {
                    return Err("running".into());
                }
                self.trio.launch(m.name());
            }
            Action::Kill(m) => {
                if self.down.contains(&m) {
                    return Err("down".into());
                }
                if m != Member::W {
                    let in_sync = self.in_sync();
                    self.in_sync_at_kill.insert(m, in_sync);
                }
                self.trio.node_mut(m.name()).kill9();
                self.down.insert(m);
                self.stopped.remove(&m);
            }
            Action::Wipe(m) => {
                if !self.down.contains(&m) {
                    return Err("running".into());
                }
                if m != Member::W && self.in_sync_at_kill.get(&m) != Some(&true) {
                    return Err("the pair was not in sync when it was killed".into());
                }
                self.trio.node(m.name()).wipe_data();
            }
            Action::Stop(m) => {
                if self.down.contains(&m) || !self.stopped.insert(m) {
                    return Err("down or stopped".into());
                }
                self.trio.node(m.name()).pause();
            }
            Action::Cont(m) => {
                if !self.stopped.remove(&m) {
                    return Err("not stopped".into());
                }
                self.trio.node(m.name()).resume();
            }
            Action::Break(l, how) => {
                if !self.broken.insert(l) {
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
                if !self.broken.remove(&l) {
                    return Err("not broken".into());
                }
                let proxy = self.trio.link(l.name());
                proxy.unblock();
                proxy.resume();
            }
        }
        Ok(())
    }

    /// Every link whole, every process running and awake.
    fn heal_all(&mut self) {
        for m in std::mem::take(&mut self.stopped) {
            self.trio.node(m.name()).resume();
        }
        for l in std::mem::take(&mut self.broken) {
            let proxy = self.trio.link(l.name());
            proxy.unblock();
            proxy.resume();
        }
        for m in std::mem::take(&mut self.down) {
            self.trio.launch(m.name());
        }
    }

    /// A primary sees its standby connected and holding its whole log.
    fn in_sync(&self) -> bool {
        [&self.trio.a, &self.trio.b].iter().any(|node| {
            client::status_sample(node.admin_port, PROBE_PATIENCE)
                .0
                .is_some_and(|s| s.role == "primary" && s.peer_connected && s.lag_records == 0)
        })
    }

    fn served_since(&self, since: Duration) -> bool {
        lock(&self.records.observations).iter().any(|o| o.serving && o.window.start >= since)
    }

    fn queues_empty(&self) -> bool {
        [&self.trio.a, &self.trio.b].iter().all(|node| {
            client::status_sample(node.admin_port, PROBE_PATIENCE).0.is_some_and(|s| s.queued == 0)
        })
    }

    fn wait_until(&self, patience: Duration, done: impl Fn(&Episode) -> bool) {
        let deadline = Instant::now() + patience;
        while !done(self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What was recorded so far.
    fn history(&self, faults: &[Duration], healed: Duration) -> History {
        let mut deliveries = Vec::new();
        let mut bounced = BTreeSet::new();
        for (sink, by) in self.sinks.iter().zip([DataNode::A, DataNode::B]) {
            for t in sink.transactions() {
                if t.sender.is_empty() {
                    bounced.extend(campaign_ids(&String::from_utf8_lossy(&t.body)));
                } else if let Some(id) = t.message_id() {
                    deliveries.push(Delivery {
                        by,
                        id,
                        window: self.window(t.mail_at, t.data_end_at),
                    });
                }
            }
        }
        History {
            acks: lock(&self.records.acks).clone(),
            resent: lock(&self.records.resent).clone(),
            observations: lock(&self.records.observations).clone(),
            deliveries,
            bounced,
            faults: faults.to_vec(),
            healed: Some(healed),
        }
    }

    fn save_logs(&self, run: &Run, dir: &Path) {
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
        text += &format!("\n{:#?}\n", run.verdict);
        let _ = std::fs::write(dir.join("run.txt"), text);
    }
}

impl Drop for Episode {
    fn drop(&mut self) {
        self.stop_load.store(true, Ordering::SeqCst);
        self.stop_probes.store(true, Ordering::SeqCst);
        // A stopped process cannot be reaped until it runs again.
        for m in std::mem::take(&mut self.stopped) {
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

/// One client of the steady load: a message every [`LOAD_PERIOD`], each with a Message-ID of
/// its own, offered to `a` then `b` (an MX list) until one answers 250; when both refuse,
/// again 100 ms later, with the same Message-ID.
fn load_client(
    mx: &[(DataNode, std::net::SocketAddr)],
    seed: u64,
    next: &AtomicUsize,
    records: &Records,
    stop: &AtomicBool,
    t0: Instant,
) {
    'messages: while !stop.load(Ordering::SeqCst) {
        let id = format!("s{seed}-{}@campaign.test", next.fetch_add(1, Ordering::SeqCst));
        let began = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            for &(node, addr) in mx {
                let start = Instant::now();
                match client::submit(addr, &id, Duration::from_secs(1)) {
                    Outcome::Accepted => {
                        let window = window_of(t0, start, Instant::now());
                        lock(&records.acks).push(Ack { id, node, window });
                        std::thread::sleep(
                            (began + LOAD_PERIOD).saturating_duration_since(Instant::now()),
                        );
                        continue 'messages;
                    }
                    Outcome::Failed { uncertain: true, .. } => {
                        lock(&records.resent).insert(id.clone());
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
