//! The failover controller between real relayd processes: a witness `w`, a primary `a` and a
//! standby `b` (tests/it/common/cluster.rs, [`Trio`]), every cluster link through a fault proxy of
//! its own, and both data nodes delivering to one scripted sink, where every message is counted
//! by its Message-ID. The tests kill, cut and isolate, and check the guarantees' promises (docs/guarantees.md): no
//! acknowledged mail lost, never two primaries, failover in seconds, nothing a demoted primary
//! accepted thrown away, few duplicates (none on a planned switchover).
//!
//! Most tests use short timings (heartbeat 100 ms, lease 1 s, failover_timeout 2 s); the kill -9
//! under load runs on relayd's defaults (200 ms, 2 s, 2.5 s) for the recovery time it measures.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::client::{self, Outcome};
use common::cluster::{
    CLOSED, Timings, Trio, TrioOptions, admin_get, certs, count, ha_lines, log_time, role_epoch,
    sever, trio_sections,
};
use common::sink::Sink;
use common::{BIN, Node, run, wait_for};

/// Sends the message `id` in a session of its own, with the fault tests' client (it never
/// panics: senders must survive nodes that die or refuse).
fn submit(addr: SocketAddr, id: &str) -> Outcome {
    client::submit(addr, id, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------------
// Senders: a load that moves to the next MX, and a probe of each node.

/// A message that got its 250.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    /// Index of the node in the MX list that acknowledged it.
    node: usize,
    at: Instant,
}

/// Client threads sending messages back to back, each in a session of its own, as a sending
/// MTA does with an MX list: the first node, and on a refusal or a failure the next; when all
/// refuse, again after a short pause (a real MTA waits minutes). A message without its 250 is
/// sent again, with the same Message-ID, until it gets one.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    /// Messages sent again after a failure that left their fate unknown (the body was sent,
    /// no reply came): a duplicate of one of these is the client's, not the relay's.
    resent: Arc<Mutex<HashSet<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(mx: Vec<SocketAddr>, tag: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let resent = Arc::new(Mutex::new(HashSet::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, acked, resent, next) =
                    (stop.clone(), acked.clone(), resent.clone(), next.clone());
                let (mx, tag) = (mx.clone(), tag.to_string());
                std::thread::spawn(move || {
                    'messages: while !stop.load(Ordering::SeqCst) {
                        let id =
                            format!("{tag}-{}@failover.test", next.fetch_add(1, Ordering::SeqCst));
                        loop {
                            for (node, addr) in mx.iter().enumerate() {
                                match submit(*addr, &id) {
                                    Outcome::Accepted => {
                                        let at = Instant::now();
                                        lock(&acked).push(Acked { id, node, at });
                                        continue 'messages;
                                    }
                                    Outcome::Failed { uncertain: true, .. }
                                    | Outcome::Deferred(_) => {
                                        lock(&resent).insert(id.clone());
                                    }
                                    _ => {}
                                }
                            }
                            if stop.load(Ordering::SeqCst) {
                                break 'messages;
                            }
                            // Every MX refused: try the list again a little later.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, resent, threads }
    }

    fn acknowledged(&self) -> usize {
        lock(&self.acked).len()
    }

    /// Waits until `n` more messages than now have had their 250.
    fn wait_more(&self, n: usize) {
        let target = self.acknowledged() + n;
        wait_for(&format!("{target} messages acknowledged"), || self.acknowledged() >= target);
    }

    /// The first 250 given by node `node`, after `since`.
    fn first_from(&self, node: usize, since: Instant) -> Option<Instant> {
        lock(&self.acked).iter().filter(|a| a.node == node && a.at >= since).map(|a| a.at).min()
    }

    /// Stops the clients; every acknowledged message, and the ids sent again after an
    /// uncertain failure.
    fn finish(self) -> (Vec<Acked>, HashSet<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a client thread");
        }
        let acked = std::mem::take(&mut *lock(&self.acked));
        let resent = std::mem::take(&mut *lock(&self.resent));
        (acked, resent)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One submission of a probe, with when it started and when its answer came.
#[derive(Clone, Debug)]
struct Attempt {
    node: &'static str,
    id: String,
    start: Instant,
    end: Instant,
    /// The same two moments on the wall clock, to compare with the nodes' log time stamps.
    sent: chrono::DateTime<chrono::Utc>,
    answered: chrono::DateTime<chrono::Utc>,
    outcome: Outcome,
}

/// Sends a message to each node every ~100 ms, each in a session and on a thread of its own
/// (so that a slow answer holds no other probe back), and records every answer with its time.
struct Probe {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Probe {
    fn start(nodes: &[(&'static str, SocketAddr)], tag: &str) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let threads = nodes
            .iter()
            .map(|&(node, addr)| {
                let (stop, attempts, tag) = (stop.clone(), attempts.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let mut senders = Vec::new();
                    let mut round = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let id = format!("{tag}-{node}-{round}@failover.test");
                        let attempts = attempts.clone();
                        let start = Instant::now();
                        senders.push(std::thread::spawn(move || {
                            let (start, sent) = (Instant::now(), chrono::Utc::now());
                            let outcome = submit(addr, &id);
                            let (end, answered) = (Instant::now(), chrono::Utc::now());
                            let attempt = Attempt { node, id, start, end, sent, answered, outcome };
                            lock(&attempts).push(attempt);
                        }));
                        round += 1;
                        // The probe's period: time passes between rounds.
                        let next = start + Duration::from_millis(100);
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    senders
                })
            })
            .collect();
        Probe { stop, attempts, threads }
    }

    fn accepted(&self, node: &str) -> usize {
        lock(&self.attempts)
            .iter()
            .filter(|a| a.node == node && a.outcome == Outcome::Accepted)
            .count()
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            for sender in thread.join().expect("a probe thread") {
                sender.join().expect("a probe's sender");
            }
        }
        std::mem::take(&mut *lock(&self.attempts))
    }
}

// ---------------------------------------------------------------------------------------------
// The sink's side: deliveries by Message-ID.

/// How many times the sink received each Message-ID.
fn deliveries(sink: &Sink) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for transaction in sink.transactions() {
        let id = transaction.message_id().expect("every test message has a Message-ID");
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Waits until every id in `ids` reached the sink; the deliveries then.
fn wait_delivered<'a>(
    sink: &Sink,
    ids: impl IntoIterator<Item = &'a String> + Clone,
) -> BTreeMap<String, usize> {
    let total = ids.clone().into_iter().count();
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let counts = deliveries(sink);
        let missing: Vec<&String> =
            ids.clone().into_iter().filter(|id| !counts.contains_key(*id)).collect();
        if missing.is_empty() {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} acknowledged messages never reached the sink: {missing:?}",
            missing.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Message-IDs the sink received more than once, with their counts.
fn duplicates(counts: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    counts.iter().filter(|(_, n)| **n > 1).map(|(id, n)| (id.clone(), *n)).collect()
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Runs `relayd ARGS`: (exit code, stdout, stderr).
fn relayd(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(BIN, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(node: &Node) -> &str {
    node.config_path.to_str().expect("utf-8 path")
}

/// Waits until `node`'s log has at least `n` lines containing `needle`.
pub(crate) fn wait_log(node: &Node, what: &str, needle: &str, n: usize) {
    wait_for(&format!("{what} (log: {needle:?} x{n})"), || count(&node.log(), needle) >= n);
}

/// Waits until `/status` on `node` says `role` in `epoch`.
pub(crate) fn wait_role(node: &Node, name: &str, role: &str, epoch: u64) {
    wait_for(&format!("{name} to be {role} in epoch {epoch}"), || {
        role_epoch(node).is_some_and(|(r, e)| r == role && e == epoch)
    });
}

/// Waits until `primary` sees its standby connected and holding all of its log.
pub(crate) fn wait_following(primary: &Node, what: &str) {
    wait_for(what, || {
        common::cluster::try_status(primary)
            .is_some_and(|s| s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0)
    });
}

/// Waits until `node` has delivered everything it holds.
/// Waits until every acknowledged message has reached the trio's sink and the serving node's
/// queue is empty (redeliveries settled); the sink's deliveries by Message-ID, and the
/// duplicates among them.
fn settled_deliveries(
    trio: &Trio,
    acked: &[Acked],
    serving: &Node,
    name: &str,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let ids: Vec<String> = acked.iter().map(|a| a.id.clone()).collect();
    wait_delivered(&trio.sink, &ids);
    wait_queue_empty(serving, name);
    let counts = deliveries(&trio.sink);
    let dups = duplicates(&counts);
    (counts, dups)
}

fn wait_queue_empty(node: &Node, name: &str) {
    wait_for(&format!("{name}'s queue to empty"), || {
        common::cluster::try_status(node).is_some_and(|s| s["queue"]["messages"] == 0)
    });
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Guarantees 1, 3 and 6 on relayd's default timings: kill -9 of the primary while clients
/// send mail; the standby serves within failover_timeout + 1 s of the kill, every acknowledged
/// message is delivered, and duplicates stay within what was in flight.
#[test]
fn kill9_of_the_primary_under_load_fails_over_in_seconds_and_loses_nothing() {
    const CLIENTS: usize = 4;
    const CONCURRENCY_PER_HOST: usize = 10; // relayd's default
    let options = TrioOptions { timings: Timings::DEFAULTS, ..TrioOptions::default() };
    let failover = options.timings.failover;
    let mut trio = Trio::start(options);
    let load = Load::start(vec![trio.a.addr(), trio.b.addr()], "kill", CLIENTS);
    // Under way: messages acknowledged, and deliveries to the sink going on.
    load.wait_more(150);
    wait_for("deliveries under way", || trio.sink.transaction_count() >= 50);

    let killed = Instant::now();
    trio.a.kill9();
    wait_for("a first 250 from b", || load.first_from(1, killed).is_some());
    let first = load.first_from(1, killed).expect("b's first 250");
    load.wait_more(100);
    let (acked, resent) = load.finish();
    let rto = first - killed;

    let b_log = trio.b.log();
    assert!(count(&b_log, "promoted epoch=2") == 1, "b promoted once:\n{}", ha_lines(&trio.b));
    assert!(
        rto <= failover + Duration::from_secs(1),
        "b served {rto:?} after the kill; failover_timeout is {failover:?}:\n{}",
        ha_lines(&trio.b)
    );
    assert_eq!(role_epoch(&trio.b), Some(("primary".into(), 2)));

    // Deliveries still under way (b redelivers what a had in flight) settle first.
    let (counts, dups) = settled_deliveries(&trio, &acked, &trio.b, "b");
    let by_client: Vec<&String> = dups.keys().filter(|id| resent.contains(*id)).collect();
    eprintln!(
        "kill -9 under load (default timings): {} acknowledged ({} by a, {} by b), b's first \
         250 {} ms after the kill (failover_timeout {} ms); {} delivered, {} duplicates ({} of \
         them messages the client sent again after an unanswered DATA): {:?}",
        acked.len(),
        acked.iter().filter(|a| a.node == 0).count(),
        acked.iter().filter(|a| a.node == 1).count(),
        rto.as_millis(),
        failover.as_millis(),
        counts.len(),
        dups.values().map(|n| n - 1).sum::<usize>(),
        by_client.len(),
        dups
    );
    let extra: usize = dups.values().map(|n| n - 1).sum();
    assert!(
        extra <= CONCURRENCY_PER_HOST + CLIENTS,
        "{extra} duplicate deliveries: more than were in flight ({CONCURRENCY_PER_HOST} \
         deliveries, {CLIENTS} submissions): {dups:?}"
    );
}

/// The witness tells "the primary is dead" from "the link is cut": with only the link between
/// the data nodes cut (both ways), the standby's claims are refused and nobody is promoted,
/// while the primary, still in touch with the witness, keeps its lease and keeps serving.
#[test]
fn a_cut_link_between_the_data_nodes_alone_promotes_nobody() {
    let trio = Trio::start(TrioOptions::default());
    let failover = trio.options.timings.failover;
    sever(&trio.ab);
    sever(&trio.ba);
    let cut = Instant::now();
    let probe = Probe::start(&[("a", trio.a.addr())], "cut");
    wait_log(
        &trio.b,
        "b's claim refused by the witness",
        "the witness refused to grant an epoch",
        1,
    );
    // Let time pass: nothing may happen within twice the failover timeout.
    std::thread::sleep((cut + failover * 2).saturating_duration_since(Instant::now()));
    let attempts = probe.finish();

    let refusal = trio.b.log().lines().find(|l| l.contains("witness refused")).map(str::to_owned);
    assert!(
        refusal.as_deref().is_some_and(|l| l.contains("epoch=2") && l.contains("primary a")),
        "the witness refused epoch 2 because it hears a: {refusal:?}"
    );
    assert_eq!(count(&trio.b.log(), "promoted"), 0, "b promoted:\n{}", ha_lines(&trio.b));
    assert_eq!(count(&trio.a.log(), "fenced"), 0, "a fenced itself:\n{}", ha_lines(&trio.a));
    assert_eq!(role_epoch(&trio.a), Some(("primary".into(), 1)));
    assert_eq!(role_epoch(&trio.b), Some(("standby".into(), 1)));
    assert!(attempts.len() >= 30, "the probe ran throughout: {} rounds", attempts.len());
    let refused: Vec<&Attempt> =
        attempts.iter().filter(|a| a.outcome != Outcome::Accepted).collect();
    assert!(refused.is_empty(), "a refused mail while cut from b only: {refused:?}");
    assert!(
        submit(trio.b.addr(), "cut-b@failover.test") != Outcome::Accepted,
        "b, a standby, took mail"
    );

    // Healed: a ships what b lacks, and every message is delivered once.
    trio.ab.unblock();
    trio.ba.unblock();
    wait_following(&trio.a, "b to follow a again, caught up");
    let ids: Vec<String> = attempts.iter().map(|a| a.id.clone()).collect();
    let counts = wait_delivered(&trio.sink, &ids);
    assert!(duplicates(&counts).is_empty(), "duplicates: {:?}", duplicates(&counts));
}

/// Never two primaries: a primary cut off from both the standby and the witness (connections
/// closed, new ones refused) fences itself before the standby is promoted, and a probe of both
/// nodes never finds them both answering 250 at once. Healed, the old primary steps down and
/// follows, and every message either node acknowledged is delivered.
#[test]
fn an_isolated_primary_fences_itself_before_the_standby_is_promoted() {
    let episode = isolation(false);
    episode.assert_fenced_within_lease();
    episode.assert_fenced_before_promoted();
    episode.assert_no_250_once_fenced();
    episode.assert_never_both_serving();
    episode.assert_all_delivered();
}

/// The same with a silent partition (the links drop every byte but close nothing: no FIN, no
/// RST, as a real network failure), where each side learns of it only by its own time-outs:
/// the primary must still fence itself within its lease, before the standby is promoted.
/// (Up to 0f6afd3 it did not: the lease check waited behind a witness ping that could take
/// 2 s, and the primary fenced ~2 s after its last word, at or after the promotion.)
#[test]
fn a_silently_partitioned_primary_fences_itself_within_its_lease() {
    let episode = isolation(true);
    episode.assert_fenced_within_lease();
    episode.assert_fenced_before_promoted();
}

/// In a silent partition, a message whose DATA ended just before the fence waits for the
/// standby's ack (sync_timeout), then is acknowledged in degraded mode: that 250 must not come
/// from a primary that has fenced itself (and so, perhaps, after the standby took over).
#[test]
fn a_silently_partitioned_primary_gives_no_250_once_fenced() {
    let episode = isolation(true);
    episode.assert_no_250_once_fenced();
    episode.assert_never_both_serving();
    episode.assert_all_delivered();
}

/// What an isolation of the primary left to check.
struct Episode {
    trio: Trio,
    attempts: Vec<Attempt>,
    isolated: Instant,
    fenced: chrono::DateTime<chrono::Utc>,
    promoted: chrono::DateTime<chrono::Utc>,
    /// The silence a's fence reason names, in ms.
    fenced_after_ms: u64,
}

/// Starts a trio and a probe of both nodes, cuts `a` from `b` and from the witness (`silent`:
/// pauses those links instead), waits until `b` is promoted and serves, heals the links, and
/// waits until `a` has stepped down and follows `b`.
fn isolation(silent: bool) -> Episode {
    let trio = Trio::start(TrioOptions::default());
    let probe = Probe::start(&[("a", trio.a.addr()), ("b", trio.b.addr())], "iso");
    wait_for("the probe to get 250s from a", || probe.accepted("a") >= 3);
    let serving = |node: &Node| {
        let status = common::cluster::try_status(node).expect("/status");
        (status["role"].as_str().map(str::to_string), status["serving"].as_bool())
    };
    assert_eq!(serving(&trio.a), (Some("primary".into()), Some(true)));
    let links = [&trio.ab, &trio.ba, &trio.aw];
    for link in links {
        if silent { link.pause() } else { sever(link) }
    }
    let isolated = Instant::now();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    wait_log(&trio.a, "a fenced", "fenced reason=", 1);
    // What monitoring sees of the fenced primary: its role, but not serving.
    assert_eq!(serving(&trio.a), (Some("primary".into()), Some(false)));
    wait_for("the probe to get 250s from b", || probe.accepted("b") >= 3);
    for link in links {
        if silent { link.resume() } else { link.unblock() }
    }
    wait_log(&trio.a, "a steps down", "demoted epoch=2", 1);
    wait_role(&trio.a, "a", "standby", 2);
    wait_following(&trio.b, "a to follow b, caught up");
    let attempts = probe.finish();
    let (a_log, b_log) = (trio.a.log(), trio.b.log());
    let fenced = log_time(&a_log, "fenced reason=").expect("a fenced").to_utc();
    let promoted = log_time(&b_log, "promoted epoch=2").expect("b promoted").to_utc();
    let reason = a_log.lines().find(|l| l.contains("fenced reason=")).expect("a fenced");
    let fenced_after_ms = reason
        .split_once(" for ")
        .and_then(|(_, rest)| rest.split_once(" ms"))
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("a fence reason naming the silence: {reason}"));
    Episode { trio, attempts, isolated, fenced, promoted, fenced_after_ms }
}

impl Episode {
    fn context(&self) -> String {
        format!(
            "{}\na:\n{}\nb:\n{}",
            timeline(&self.attempts, self.isolated),
            ha_lines(&self.trio.a),
            ha_lines(&self.trio.b)
        )
    }

    fn accepted(&self, node: &str) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(move |x| x.node == node && x.outcome == Outcome::Accepted)
    }

    /// The safety rule's own bound: the lease, plus the heartbeat on which the last word may
    /// have come, plus 5% of failover_timeout.
    fn assert_fenced_within_lease(&self) {
        let t = self.trio.options.timings;
        let bound = t.lease + t.heartbeat + t.failover / 20;
        assert!(
            u128::from(self.fenced_after_ms) <= bound.as_millis(),
            "a fenced itself {} ms after its last word: more than lease + heartbeat + 5% of \
             failover_timeout ({} ms)\n{}",
            self.fenced_after_ms,
            bound.as_millis(),
            self.context()
        );
    }

    fn assert_fenced_before_promoted(&self) {
        assert!(
            self.fenced < self.promoted,
            "a fenced at {}, after b was promoted at {}\n{}",
            self.fenced,
            self.promoted,
            self.context()
        );
    }

    /// No 250 from a after the moment a logged its fence.
    fn assert_no_250_once_fenced(&self) {
        let late: Vec<String> = self
            .accepted("a")
            .filter(|x| x.answered > self.fenced)
            .map(|x| {
                format!(
                    "{} answered {} ms after the fence (sent {} ms before it)",
                    x.id,
                    (x.answered - self.fenced).num_milliseconds(),
                    (self.fenced - x.sent).num_milliseconds()
                )
            })
            .collect();
        assert!(late.is_empty(), "a fenced primary answered 250: {late:?}\n{}", self.context());
    }

    /// No moment when both served: every 250 of a ended before the first 250 of b began.
    fn assert_never_both_serving(&self) {
        let a_last = self.accepted("a").map(|x| x.end).max().expect("250s from a");
        let b_first = self.accepted("b").map(|x| x.start).min().expect("250s from b");
        assert!(
            a_last < b_first,
            "a and b both answered 250 at once: a's last 250 came {:?} after the isolation, \
             b's first session began {:?} after it\n{}",
            a_last - self.isolated,
            b_first - self.isolated,
            self.context()
        );
        eprintln!(
            "isolation: a fenced {} ms after its last word, {} ms before b was promoted; a's \
             last 250 {} ms before b's first",
            self.fenced_after_ms,
            (self.promoted - self.fenced).num_milliseconds(),
            (b_first - a_last).as_millis(),
        );
    }

    /// Guarantee 5: what a acknowledged alone (after the cut, before its fence) is not lost.
    /// Guarantee 6: a delivery a made whose result never reached b is made again by b; no more
    /// of those than a had deliveries in flight (concurrency_per_host, 10).
    fn assert_all_delivered(&self) {
        let accepted = self.attempts.iter().filter(|x| x.outcome == Outcome::Accepted);
        let ids: Vec<String> = accepted.map(|x| x.id.clone()).collect();
        wait_delivered(&self.trio.sink, &ids);
        wait_queue_empty(&self.trio.b, "b");
        let dups = duplicates(&deliveries(&self.trio.sink));
        eprintln!("isolation: {} acknowledged, duplicates {dups:?}", ids.len());
        assert!(dups.len() <= 10, "more duplicates than deliveries in flight: {dups:?}");
    }
}

/// The probe's answers after `since`, one line each, for failure messages.
fn timeline(attempts: &[Attempt], since: Instant) -> String {
    let mut lines: Vec<(Instant, String)> = attempts
        .iter()
        .filter(|a| a.end >= since)
        .map(|a| {
            let at = |t: Instant| {
                if t >= since {
                    format!("+{}", (t - since).as_millis())
                } else {
                    format!("-{}", (since - t).as_millis())
                }
            };
            let outcome = match &a.outcome {
                Outcome::Accepted => "250".to_string(),
                Outcome::Refused(reply) | Outcome::Deferred(reply) => {
                    reply.chars().take(40).collect()
                }
                Outcome::Failed { error, .. } => format!("failed: {error}"),
            };
            (a.start, format!("  {} {}..{} ms: {outcome}", a.node, at(a.start), at(a.end)))
        })
        .collect();
    lines.sort_by_key(|(start, _)| *start);
    let lines: Vec<String> = lines.into_iter().map(|(_, line)| line).collect();
    format!("probe answers since the isolation:\n{}", lines.join("\n"))
}

/// Guarantee 5 with replication = "async": the primary acknowledges messages that never reach
/// the standby (its link is cut), and is killed. The standby is promoted; the old primary,
/// restarted, steps down, salvages what it alone held, and the new primary delivers it.
/// (`a` delivers to a closed port, so that its mail is still queued when it dies.)
#[test]
fn async_mail_acknowledged_by_a_killed_primary_is_salvaged_when_it_returns() {
    let options = TrioOptions { replication: "async", ..TrioOptions::default() };
    let closed: SocketAddr = CLOSED.parse().expect("an address");
    let mut trio = Trio::start_with(options, Some(closed));
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = format!("async-replicated-{n}@failover.test");
        assert_eq!(submit(trio.a.addr(), &id), Outcome::Accepted, "{id}");
        ids.push(id);
    }
    wait_following(&trio.a, "b to hold the first messages");
    sever(&trio.ab);
    wait_for("a to see b gone", || {
        common::cluster::try_status(&trio.a).is_some_and(|s| s["peer"]["connected"] == false)
    });
    let mut alone = Vec::new();
    for n in 0..5 {
        let id = format!("async-alone-{n}@failover.test");
        assert_eq!(submit(trio.a.addr(), &id), Outcome::Accepted, "{id}");
        alone.push(id);
    }
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    wait_role(&trio.b, "b", "primary", 2);
    // The first three were replicated: b delivers them itself.
    wait_delivered(&trio.sink, &ids);

    trio.ab.unblock();
    trio.a.launch();
    wait_log(&trio.a, "a steps down", "demoted epoch=2", 1);
    wait_log(&trio.b, "b takes what a alone held", "salvaged a message", alone.len());
    wait_role(&trio.a, "a", "standby", 2);
    wait_following(&trio.b, "a to follow b, caught up");
    ids.extend(alone.iter().cloned());
    let counts = wait_delivered(&trio.sink, &ids);

    let a_log = trio.a.log();
    assert!(
        count(&a_log, "salvaging: acknowledged here, never replicated") >= alone.len(),
        "a salvaged its {} messages:\n{}",
        alone.len(),
        ha_lines(&trio.a)
    );
    assert_eq!(
        count(&trio.b.log(), "salvaged a message the old primary acknowledged and we lacked"),
        alone.len(),
        "b took each salvaged message once:\n{}",
        ha_lines(&trio.b)
    );
    assert!(duplicates(&counts).is_empty(), "duplicates: {:?}", duplicates(&counts));
    assert_eq!(counts.len(), ids.len(), "the sink got exactly the test's messages: {counts:?}");
    wait_queue_empty(&trio.b, "b");
    // Catch-up, not copy-all (guarantee 4): a dropped its divergent records and resumed from
    // where the two logs part; b sent no snapshot.
    assert_eq!(
        count(&trio.a.log(), "dropped our divergent records"),
        1,
        "a rewound its log once:\n{}",
        ha_lines(&trio.a)
    );
    let b_log = trio.b.log();
    assert_eq!(count(&b_log, "sending a snapshot"), 0, "b sent a snapshot:\n{}", ha_lines(&trio.b));
    wait_queue_empty(&trio.a, "a");
}

/// A standby built from a snapshot is promoted; the old primary returns, holding exactly the
/// position that snapshot was taken at. The new primary's log holds no record there (its log
/// starts after it), yet the old primary resumes from it: no second snapshot (guarantee 4).
#[test]
fn a_node_that_stopped_at_the_snapshot_point_resumes_without_a_snapshot() {
    let mut trio = Trio::start(TrioOptions::default());
    wait_following(&trio.a, "b to follow a");
    assert_eq!(count(&trio.a.log(), "sending a snapshot"), 1, "b, empty, got a snapshot first");
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    trio.a.launch();
    wait_role(&trio.a, "a", "standby", 2);
    wait_following(&trio.b, "a to follow b, caught up");
    let b_log = trio.b.log();
    assert_eq!(count(&b_log, "sending a snapshot"), 0, "b sent a snapshot:\n{}", ha_lines(&trio.b));
    assert_eq!(count(&b_log, "replication link up peer=a"), 1, "{}", ha_lines(&trio.b));
}

/// A planned switchover (`relayd demote`) while mail flows, from a to b and back, twice: each
/// hands over with the next epoch (granted by the witness), and no message is lost or
/// delivered twice.
#[test]
fn switchover_there_and_back_twice_loses_nothing_and_duplicates_nothing() {
    switchovers(TrioOptions::default());
}

/// The same between two data nodes that name no witness (nothing to claim the epoch from):
/// the handover itself loses nothing and delivers nothing twice.
#[test]
fn switchover_without_a_witness_there_and_back_twice_loses_nothing_and_duplicates_nothing() {
    switchovers(TrioOptions { witness: false, ..TrioOptions::default() });
}

fn switchovers(options: TrioOptions) {
    let trio = Trio::start(options);
    let load = Load::start(vec![trio.a.addr(), trio.b.addr()], "switch", 3);
    load.wait_more(20);
    let mut epoch = 1;
    let mut promotions = [0, 0];
    for round in 0..4 {
        let (from, to, to_index) =
            if round % 2 == 0 { (&trio.a, &trio.b, 1) } else { (&trio.b, &trio.a, 0) };
        let names = if round % 2 == 0 { ("a", "b") } else { ("b", "a") };
        let (code, out, err) = relayd(&["demote", "--config", config(from)]);
        assert_eq!(
            code,
            Some(0),
            "relayd demote on {}: {out}{err}\n{}:\n{}\n{}:\n{}",
            names.0,
            names.0,
            ha_lines(from),
            names.1,
            ha_lines(to)
        );
        epoch += 1;
        promotions[to_index] += 1;
        assert!(out.contains(&format!("epoch {epoch}")), "relayd demote says the epoch: {out}");
        wait_role(to, names.1, "primary", epoch);
        wait_role(from, names.0, "standby", epoch);
        let promoted = to.log();
        let planned = promoted
            .lines()
            .filter(|l| l.contains(&format!("promoted epoch={epoch} ")))
            .collect::<Vec<_>>();
        assert!(
            planned.len() == 1 && planned[0].contains("planned switchover"),
            "{} promoted in epoch {epoch} for a planned switchover: {planned:?}",
            names.1
        );
        assert!(
            count(&from.log(), &format!("demoted epoch={epoch} ")) == 1,
            "{} demoted in epoch {epoch}:\n{}",
            names.0,
            ha_lines(from)
        );
        // The old primary follows the new one before the next switchover; mail flows meanwhile.
        wait_following(to, &format!("{} to follow {}, caught up", names.0, names.1));
        load.wait_more(20);
    }
    let (acked, resent) = load.finish();
    assert_eq!(promotions, [2, 2]);
    assert_eq!(role_epoch(&trio.a), Some(("primary".into(), 5)));

    let (counts, dups) = settled_deliveries(&trio, &acked, &trio.a, "a");
    eprintln!(
        "switchover x4: {} acknowledged ({} by a, {} by b), {} delivered, {} duplicates, {} sent \
         again by the client after an unanswered DATA",
        acked.len(),
        acked.iter().filter(|a| a.node == 0).count(),
        acked.iter().filter(|a| a.node == 1).count(),
        counts.len(),
        dups.len(),
        resent.len()
    );
    assert!(dups.is_empty(), "a planned switchover delivered messages twice: {dups:?}");
}

/// `relayd promote` on the standby is refused while the primary is alive; `--force` promotes
/// it (the witness grants the next epoch anyway), and the old primary steps down as soon as it
/// hears of the newer epoch, then follows.
#[test]
fn manual_promote_is_refused_while_the_primary_lives_and_forced_makes_it_step_down() {
    let trio = Trio::start(TrioOptions::default());
    let (code, out, err) = relayd(&["promote", "--config", config(&trio.b)]);
    assert_eq!(code, Some(1), "relayd promote while a lives: {out}{err}");
    assert!(err.contains("the primary is alive"), "the refusal says why: {err}");
    assert_eq!(role_epoch(&trio.b), Some(("standby".into(), 1)));
    assert_eq!(role_epoch(&trio.a), Some(("primary".into(), 1)));
    assert_eq!(submit(trio.a.addr(), "promote-before@failover.test"), Outcome::Accepted);
    // Delivered by a, and its result held by b: b has nothing to send again.
    wait_for("a to deliver", || {
        deliveries(&trio.sink).contains_key("promote-before@failover.test")
    });
    wait_queue_empty(&trio.b, "b");

    let (code, out, err) = relayd(&["promote", "--force", "--config", config(&trio.b)]);
    assert_eq!(code, Some(0), "relayd promote --force: {out}{err}");
    assert!(out.contains("epoch 2"), "it says the new epoch: {out}");
    assert!(
        out.contains("warning: forced") && out.contains("until it rejoins"),
        "it says what a forced promotion risks: {out}"
    );
    assert!(
        count(&trio.w.log(), "granted epoch epoch=2 to=b force=true") == 1,
        "the witness granted epoch 2 to b, forced:\n{}",
        trio.w.log()
    );
    wait_log(&trio.a, "a steps down", "demoted epoch=2", 1);
    wait_role(&trio.a, "a", "standby", 2);
    wait_role(&trio.b, "b", "primary", 2);
    wait_following(&trio.b, "a to follow b, caught up");
    assert!(
        matches!(submit(trio.a.addr(), "promote-a@failover.test"), Outcome::Refused(r) if r.starts_with("421")),
        "a, now a standby, refuses mail"
    );
    assert_eq!(submit(trio.b.addr(), "promote-after@failover.test"), Outcome::Accepted);
    assert_eq!(trio.grant_file().as_deref(), Some("2 b"));
    let ids = ["promote-before@failover.test", "promote-after@failover.test"].map(String::from);
    let counts = wait_delivered(&trio.sink, &ids);
    assert!(duplicates(&counts).is_empty(), "duplicates: {:?}", duplicates(&counts));
}

/// The witness grants each epoch once, and remembers it across a restart: after b was granted
/// epoch 2, the witness is killed and restarted where only a (cut from b, and still in epoch 1)
/// reaches it. a learns of epoch 2 from the grant file alone and steps down; it never claims
/// epoch 2 again, but epoch 3, above everything seen (issue 11, case 3), once it has not heard
/// a primary for failover_timeout; the witness grants it (b, cut off from both, fenced itself
/// long ago, and the witness's own wait after a restart is over by then). Healed, b steps
/// down and follows a; a second failover (a killed) grants epoch 4 to b.
#[test]
fn the_witness_grants_each_epoch_once_and_remembers_it_across_a_restart() {
    let mut trio = Trio::start(TrioOptions::default());
    // The cluster's first epoch, taken by a itself, is recorded as seen.
    wait_for("the witness to record epoch 1", || trio.grant_file().as_deref() == Some("1 a"));
    // A SIGHUP (a log rotation, say) leaves the witness running: it has nothing to reload, and
    // the rest of this test needs it.
    trio.w.signal("HUP");
    wait_log(
        &trio.w,
        "the witness to take the SIGHUP",
        "SIGHUP: a witness has nothing to reload",
        1,
    );
    assert!(trio.w.is_running(), "{}", trio.w.log());

    // First failover: a isolated, b granted epoch 2.
    for link in [&trio.ab, &trio.ba, &trio.aw] {
        sever(link);
    }
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    assert_eq!(trio.grant_file().as_deref(), Some("2 b"));
    assert_eq!(count(&trio.w.log(), "granted epoch epoch=2 to=b"), 1);

    // The witness restarts, and only a can reach it: what it knows of epoch 2 is its file.
    sever(&trio.bw);
    trio.w.kill9();
    trio.relaunch_witness();
    assert_eq!(
        count(&trio.w.log(), "granted=2"),
        1,
        "the restarted witness read its grant:\n{}",
        trio.w.log()
    );
    trio.aw.unblock();
    wait_log(&trio.a, "a steps down on the witness's word", "demoted epoch=2", 1);
    wait_log(&trio.a, "a promoted in epoch 3", "promoted epoch=3", 1);
    assert!(
        !trio.a.log().lines().any(|l| l.contains("witness refused") && l.contains("epoch=2 ")),
        "a never claims epoch 2 again:\n{}",
        ha_lines(&trio.a)
    );
    assert_eq!(count(&trio.w.log(), "granted epoch epoch=2"), 1, "{}", trio.w.log());
    assert_eq!(trio.grant_file().as_deref(), Some("3 a"));
    assert_eq!(count(&trio.w.log(), "granted epoch epoch=3 to=a"), 1, "{}", trio.w.log());

    // Healed: b follows a. Second failover: a killed, b granted epoch 4.
    for link in [&trio.ab, &trio.ba, &trio.bw] {
        link.unblock();
    }
    wait_log(&trio.b, "b steps down", "demoted epoch=3", 1);
    wait_following(&trio.a, "b to follow a, caught up");
    wait_role(&trio.b, "b", "standby", 3);
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=4", 1);
    assert_eq!(trio.grant_file().as_deref(), Some("4 b"));
    assert_eq!(count(&trio.w.log(), "granted epoch epoch=4 to=b"), 1, "{}", trio.w.log());
    wait_role(&trio.b, "b", "primary", 4);
    assert_eq!(submit(trio.b.addr(), "witness-after@failover.test"), Outcome::Accepted);
}

/// The safety rule (lease + heartbeat_interval + failover_timeout/20 < failover_timeout) is
/// enforced by check-config: lease 2900ms with failover_timeout 3s is refused, naming the key.
#[test]
fn check_config_rejects_a_lease_that_could_outlive_the_failover_timeout() {
    let dir = certs("a,b,w");
    let config = |lease: &str| {
        let port = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut options = TrioOptions { timings: Timings::DEFAULTS, ..TrioOptions::default() };
        options.extra_cluster = lease.to_string();
        let text = format!(
            "[node]\nname = \"a\"\nrole = \"primary\"\ndata_dir = \"{}\"\n\n[smtp]\nlisten = \
             [\"127.0.0.1:2525\"]\nhostname = \"mx.test\"\n\n{}",
            dir.path().join("data").display(),
            trio_sections(dir.path(), "a", port(7401), port(7402), port(7403), port(25), &options)
        );
        let path = dir.path().join("a.toml");
        std::fs::write(&path, text).expect("write config");
        relayd(&["check-config", "--config", path.to_str().expect("utf-8")])
    };
    let (code, out, err) = config("lease = \"2900ms\"\nfailover_timeout = \"3s\"");
    assert_eq!(code, Some(2), "check-config with lease 2900ms: {out}{err}");
    assert!(err.contains("cluster.lease"), "the error names cluster.lease: {err}");
    assert!(err.contains("a.toml:"), "the error names the file: {err}");
    // Just inside the rule: 2600 + 200 + 150 < 3000.
    let (code, out, err) = config("lease = \"2600ms\"\nfailover_timeout = \"3s\"");
    assert_eq!(code, Some(0), "check-config with lease 2600ms: {out}{err}");
    // The defaults satisfy it.
    let (code, out, err) = config("");
    assert_eq!(code, Some(0), "check-config with the default timings: {out}{err}");
}

/// docs/configuration.md: "A witness needs only [node] ... [cluster] (listen and the three
/// tls_ keys)". With the data nodes on failover_timeout 1 s (heartbeat 100 ms, lease 500 ms:
/// valid) and the witness configured as documented (no timings of its own), the witness must
/// judge a claim by the claimant's failover_timeout, not by its own default of 3 s: b claims
/// after 1 s of silence, and a refusal saying the primary "was heard N ms ago" with N past
/// 1,000 would be the witness waiting on a window of its own. Judged on the refusals' words,
/// not on a stopwatch, so that a loaded machine cannot fail it.
#[test]
fn a_witness_configured_as_documented_follows_the_data_nodes_failover_timeout() {
    let timings = Timings {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_millis(500),
        failover: Duration::from_secs(1),
        written: true,
    };
    let options = TrioOptions {
        timings,
        witness_timings: false,
        witness_admin: true,
        ..TrioOptions::default()
    };
    let mut trio = Trio::start(options);
    assert_eq!(submit(trio.a.addr(), "documented-a@failover.test"), Outcome::Accepted);
    wait_for("the witness to hear a serving", || {
        admin_get(trio.w.admin_port, "/metrics", Duration::from_secs(5))
            .is_some_and(|(_, page)| page.contains("relayd_witness_node_serving{node=\"a\"} 1\n"))
    });
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    wait_for("b to serve", || {
        submit(trio.b.addr(), "documented@failover.test") == Outcome::Accepted
    });
    let window = timings.failover.as_millis();
    let b_log = trio.b.log();
    let late_refusals: Vec<&str> = b_log
        .lines()
        .filter(|line| line.contains("the witness refused to grant an epoch"))
        .filter(|line| heard_ms_ago(line).is_some_and(|ms| ms >= window))
        .collect();
    assert!(
        late_refusals.is_empty(),
        "the witness refused b's claim on a window longer than b's failover_timeout ({window} \
         ms):\n{}\n{}",
        late_refusals.join("\n"),
        ha_lines(&trio.b)
    );
}

/// The N of a witness's refusal "primary … was heard N ms ago".
fn heard_ms_ago(line: &str) -> Option<u128> {
    let (_, after) = line.split_once("was heard ")?;
    after.split_once(" ms ago")?.0.parse().ok()
}

/// Holds travel with a rewind (guarantee 4's catch-up, docs/operations.md "Hold and release"):
/// a message held on both nodes is released by the old primary alone, cut off, and another
/// held there; it dies, the standby is promoted, and the old primary, rejoining, salvages the
/// hold its branch took (as it salvages the mail it took: the operator was told it is held;
/// the fault campaign's seed 2 saw the new primary deliver such a message), drops its branch
/// and takes the new primary's state of what that branch touched, holds included: the first
/// held again (the new primary's `Frame::Held`, since its hold came before the logs parted,
/// and a release is what may be lost), the second held on both nodes.
#[test]
fn a_rejoining_old_primary_takes_the_new_primarys_holds_with_its_rewind() {
    use crate::admin::{cli, send_from};
    use common::cluster::{all_attempted, try_get};
    let options = TrioOptions { replication: "async", retry: r#"["1h"]"#, ..Default::default() };
    let closed: SocketAddr = CLOSED.parse().expect("an address");
    let mut trio = Trio::configure(options, [Some(closed), Some(closed)]);
    for member in ["w", "b", "a"] {
        trio.launch(member);
    }
    trio.wait_ready();
    let held = |node: &Node| -> Vec<String> {
        let page = try_get(node, "/queue?state=held").unwrap_or_default();
        let ids = page["messages"].as_array().cloned().unwrap_or_default();
        ids.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect()
    };
    let data = "Subject: rewound holds\r\n\r\nHeld, or not.\r\n";
    let x = send_from(&trio.a, "alice@example.org", "x@example.com", data);
    let y = send_from(&trio.a, "alice@example.org", "y@example.com", data);
    wait_for("b to hold both messages, tried", || all_attempted(&trio.b, 2));
    let (code, _, err) = cli(&trio.a, &["queue", "hold", &x]);
    assert_eq!(code, Some(0), "{err}");
    wait_for("the hold on b", || held(&trio.b) == [x.clone()]);
    wait_following(&trio.a, "b to catch up");

    sever(&trio.ab);
    wait_for("a to see b gone", || {
        common::cluster::try_status(&trio.a).is_some_and(|s| s["peer"]["connected"] == false)
    });
    for (change, id) in [("release", &x), ("hold", &y)] {
        let (code, out, err) = cli(&trio.a, &["queue", change, id]);
        assert_eq!(code, Some(0), "{change}: {out}{err}");
    }
    assert_eq!(held(&trio.a), std::slice::from_ref(&y), "a's branch");
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    wait_role(&trio.b, "b", "primary", 2);
    assert_eq!(held(&trio.b), std::slice::from_ref(&x), "b keeps what it followed");

    trio.ab.unblock();
    trio.a.launch();
    wait_log(&trio.a, "a steps down", "demoted epoch=2", 1);
    wait_role(&trio.a, "a", "standby", 2);
    wait_following(&trio.b, "a to follow b, caught up");
    assert_eq!(
        count(&trio.a.log(), "dropped our divergent records"),
        1,
        "a rewound its log:\n{}",
        ha_lines(&trio.a)
    );
    assert_eq!(count(&trio.b.log(), "sending a snapshot"), 0, "b sent a snapshot");
    assert_eq!(count(&trio.b.log(), "salvaged holds the old primary took"), 1, "b's log");
    let both = [x, y];
    assert_eq!(held(&trio.b), both, "b takes the hold a's branch took");
    wait_for("a to hold what b holds", || held(&trio.a) == both);
}
