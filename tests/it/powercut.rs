//! Power cuts of the real binary: its data directory on cutfs (tools/cutfs), parallel senders,
//! and at a random moment kill -9, every unsynced change dropped, and a restart on the same
//! disk. Every round relayd must start again, and every message that got a 250 must still be
//! there: delivered to a sink in the end (a single node), on the standby's disk (a sync
//! standby cut), or, for a witness, every grant it answered must still bind it.
//!
//! Seeded: each test prints its seed; `RELAYD_POWERCUT_SEED=N` replays it and
//! `RELAYD_POWERCUT_ROUNDS=N` runs N rounds (the long form). Skipped, saying so, where
//! /dev/fuse is absent.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{
    CLOSED, Timings, admin_get, certs, sections, try_status, witness_config, witness_ready,
};
use common::powercut::{Acked, Cut, CutNode, Load, Mail, any_cut, mail, panics, rounds, seed};
use common::sink::Sink;
use common::{Node, free_addr};
use relayd::replication::frame::Frame;

/// Rounds per test in the short (CI) form.
const ROUNDS: usize = 10;
/// How long senders run before a cut, at most (the moment is drawn from 50 ms up to this).
const MAX_LOAD: Duration = Duration::from_millis(2500);
/// How long the delivery of everything acknowledged may go without progress once the next hop
/// is up, before what has not arrived is taken as lost.
const DELIVERY_STALL: Duration = Duration::from_secs(20);

/// The three kinds of mail the issue names.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// About 2,000 bytes, one recipient.
    Small,
    /// A 256 KiB body (eight spool chunks), one recipient.
    Large,
    /// A small message to 1,000 recipients (`max_recipients = 1000`, the most allowed).
    Crowd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Small => "small",
            Kind::Large => "large",
            Kind::Crowd => "crowd",
        }
    }

    fn size(self) -> usize {
        match self {
            Kind::Small | Kind::Crowd => 2_000,
            Kind::Large => 256 * 1024,
        }
    }

    fn recipients(self, message: &str) -> Vec<String> {
        let count = match self {
            Kind::Small | Kind::Large => 1,
            Kind::Crowd => 1_000,
        };
        (0..count).map(|i| format!("ok{i}.{message}@example.com")).collect()
    }

    /// Sender `s`'s `n`-th message of `round`.
    fn mail(self, round: usize, s: usize, n: usize) -> Mail {
        let tag = format!("{}-r{round}-s{s}-n{n}", self.name());
        mail(format!("{tag}@powercut.test"), self.recipients(&tag), self.size())
    }
}

/// Parallel senders per node.
const SENDERS: usize = 8;

/// The round a message was sent in, from its Message-ID (`KIND-rROUND-...`).
fn round_of(message_id: &str) -> usize {
    message_id
        .split('-')
        .nth(1)
        .and_then(|r| r.strip_prefix('r'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("not a power-cut Message-ID: {message_id}"))
}

/// Relaying for example.com to `next_hop`, deferrals retried after a second, DNS at a closed port.
fn relay_sections(next_hop: &str) -> String {
    format!(
        "[relay]\ndomains = [\"example.com\"]\n\n[[route]]\ndomain = \"*\"\nnext_hop = \"{next_hop}\"\n\
         tls = \"none\"\n\n[delivery]\nretry = [\"1s\"]\nresolvers = [\"{CLOSED}\"]\n"
    )
}

/// Runs `load` for a moment drawn from `rng`, then cuts `disk`'s power (and whatever `also`
/// kills); returns what was acknowledged, and says so with what the cut reverted.
fn load_then_cut(
    rng: &mut fastrand::Rng,
    load: Load,
    disk: &mut CutNode,
    also: impl FnOnce(),
    round: &str,
) -> BTreeSet<Acked> {
    let moment = Duration::from_millis(rng.u64(50..=MAX_LOAD.as_millis() as u64));
    let cut = any_cut(rng);
    std::thread::sleep(moment);
    let reverted = disk.power_cut(cut);
    also();
    let acked = load.finish();
    eprintln!(
        "{round}: {cut:?} cut after {moment:?}, {} acknowledged; the cut reverted {reverted}",
        acked.len()
    );
    acked
}

/// The report a failure gives: per round, how many of `lost` were sent in it, and which
/// (the first few), with what `detail` says of each.
fn by_round(lost: &BTreeMap<String, String>) -> String {
    let mut rounds: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (id, detail) in lost {
        rounds.entry(round_of(id)).or_default().push(format!("{id}{detail}"));
    }
    rounds
        .iter()
        .map(|(round, ids)| {
            let few = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            format!("\n  round {round}: {} lost: {few}", ids.len())
        })
        .collect()
}

/// A single node under load, its power cut at random moments; in the end its route points at
/// a sink and every message acknowledged must arrive there with all its recipients.
fn single_node(kind: Kind) {
    let test = format!("single node, {} mail", kind.name());
    let mut rng = fastrand::Rng::with_seed(seed(&test));
    // Mail stays queued through the rounds (nothing listens at the next hop), so the cuts hit
    // the whole queue; the acceptances and each second's deferrals are what is being written.
    let node =
        Node::configure("cut", "primary", "", "max_recipients = 1000", &relay_sections(CLOSED));
    let Some(mut disk) = CutNode::mount(node) else { return };
    disk.start(&format!("{test}: the first start"));
    let mut acked = BTreeSet::new();
    for round in 0..rounds(ROUNDS) {
        let load = Load::start(disk.node.addr(), SENDERS, move |s, n| kind.mail(round, s, n));
        let got =
            load_then_cut(&mut rng, load, &mut disk, || {}, &format!("{test}: round {round}"));
        acked.extend(got);
        disk.start(&format!("{test}: round {round}"));
    }
    assert!(!acked.is_empty(), "{test}: no message was acknowledged in any round");

    // The next hop comes up: a sink, which counts recipients by Message-ID.
    let sink = Sink::plain();
    disk.power_cut(any_cut(&mut rng));
    let config = std::fs::read_to_string(&disk.node.config_path).expect("config");
    let config = config
        .replace(&format!("next_hop = \"{CLOSED}\""), &format!("next_hop = \"{}\"", sink.addr()));
    std::fs::write(&disk.node.config_path, config).expect("config");
    disk.start(&format!("{test}: the last restart"));
    let missing = wait_delivered(&sink, kind, &acked);
    let log = disk.node.log();
    assert!(panics(&log).is_empty(), "{test}: relayd panicked:\n{}", panics(&log).join("\n"));
    assert!(
        missing.is_empty(),
        "{test}: {} of {} acknowledged messages never arrived whole:{}",
        missing.len(),
        acked.len(),
        by_round(&missing),
    );
}

/// Waits until the sink has every message of `acked`, each with all its recipients, or
/// nothing more has arrived for `DELIVERY_STALL`; returns the Message-IDs still incomplete,
/// each with how many of its recipients did arrive.
fn wait_delivered(sink: &Sink, kind: Kind, acked: &BTreeSet<Acked>) -> BTreeMap<String, String> {
    let (mut arrived, mut progress) = (0, Instant::now());
    loop {
        let count = sink.transaction_count();
        if count > arrived {
            (arrived, progress) = (count, Instant::now());
        }
        let mut delivered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for transaction in sink.transactions() {
            if let Some(id) = transaction.message_id() {
                delivered.entry(id).or_default().extend(transaction.recipients);
            }
        }
        let missing: BTreeMap<String, String> = acked
            .iter()
            .filter_map(|a| {
                let tag = a.message_id.trim_end_matches("@powercut.test");
                let want: BTreeSet<String> = kind.recipients(tag).into_iter().collect();
                let got =
                    delivered.get(&a.message_id).map_or(0, |got| want.intersection(got).count());
                let detail = format!(" ({got} of {} recipients arrived)", want.len());
                (got < want.len()).then(|| (a.message_id.clone(), detail))
            })
            .collect();
        if missing.is_empty() || progress.elapsed() > DELIVERY_STALL {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn single_node_power_cuts_lose_no_acknowledged_small_message() {
    single_node(Kind::Small);
}

#[test]
fn single_node_power_cuts_lose_no_acknowledged_256k_message() {
    single_node(Kind::Large);
}

#[test]
fn single_node_power_cuts_lose_no_acknowledged_1000_recipient_message() {
    single_node(Kind::Crowd);
}

/// The queue ids a node's `GET /queue` lists. A node just restarted on a spool of a thousand
/// crowd messages may take longer than one request's patience to list them on a loaded
/// machine: the question is asked again until it is answered, and what came instead is said.
fn queue_ids(node: &Node) -> BTreeSet<String> {
    let mut queue = None;
    common::wait_for("the node to list its queue (GET /queue, 200)", || {
        match admin_get(node.admin_port, "/queue", Duration::from_secs(60)) {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => queue = Some(body),
            other => eprintln!("GET /queue: not yet: {:?}", other.map(|(head, _)| head)),
        }
        queue.is_some()
    });
    let queue: serde_json::Value =
        serde_json::from_str(&queue.unwrap_or_default()).expect("GET /queue: JSON");
    let queue = queue.as_array().expect("GET /queue: an array");
    queue.iter().map(|m| m["id"].as_str().expect("id").to_string()).collect()
}

fn wait_caught_up(primary: &Node) {
    common::wait_for("the standby to catch up (primary's lag_records == 0)", || {
        try_status(primary)
            .is_some_and(|s| s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0)
    });
}

/// A sync standby on cutfs: the primary 250s only what the standby acknowledged as durable
/// (`on_standby_loss = "refuse"`: never without it). At a random moment the standby's power is
/// cut, the primary killed too (so that it cannot send anything again), and the standby
/// restarted alone: its queue must hold every message the primary acknowledged. Then the
/// primary comes back and the standby catches up, for the next round. The rounds take the
/// three kinds of mail in turn.
#[test]
fn a_sync_standby_keeps_every_acknowledged_message_through_power_cuts() {
    let test = "sync standby";
    let mut rng = fastrand::Rng::with_seed(seed(test));
    let certs = certs("a,b");
    let primary_cluster = free_addr();
    let standby_cluster = free_addr();
    let cluster = "on_standby_loss = \"refuse\"\nsync_timeout = \"1s\"\n";
    let node = |name: &str, role: &str, listen, peer| {
        let sections = sections(certs.path(), name, listen, peer, "sync", cluster);
        Node::configure(name, role, "", "max_recipients = 1000", &sections)
    };
    let Some(mut standby) = CutNode::mount(node("b", "standby", standby_cluster, primary_cluster))
    else {
        return;
    };
    standby.start(&format!("{test}: the first start"));
    let mut primary = node("a", "primary", primary_cluster, standby_cluster);
    primary.launch();
    wait_caught_up(&primary);

    let kinds = [Kind::Small, Kind::Large, Kind::Crowd];
    let mut acked = BTreeSet::new();
    let mut lost: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..rounds(ROUNDS) {
        let kind = kinds[round % kinds.len()];
        let load = Load::start(primary.addr(), SENDERS, move |s, n| kind.mail(round, s, n));
        let label = format!("{test}: round {round} ({} mail)", kind.name());
        let got = load_then_cut(&mut rng, load, &mut standby, || primary.kill9(), &label);
        acked.extend(got);
        standby.start(&label);
        let on_standby = queue_ids(&standby.node);
        for message in &acked {
            if !on_standby.contains(&message.queue_id) && !lost.contains_key(&message.message_id) {
                eprintln!("{test}: round {round}: lost {}", message.message_id);
                let detail =
                    format!(" (queued as {}, missed after round {round})", message.queue_id);
                lost.insert(message.message_id.clone(), detail);
            }
        }
        primary.launch();
        wait_caught_up(&primary);
    }
    assert!(!acked.is_empty(), "{test}: no message was acknowledged in any round");
    let log = standby.node.log();
    assert!(panics(&log).is_empty(), "{test}: the standby panicked:\n{}", panics(&log).join("\n"));
    assert!(
        lost.is_empty(),
        "{test}: {} of {} acknowledged messages were missing from the standby after its power \
         cut:{}",
        lost.len(),
        acked.len(),
        by_round(&lost),
    );
}

/// A witness on cutfs: a claimant asks it for one epoch after the other (forced, so that each
/// is granted at once), to two nodes in turn; at a random moment its power is cut and it is
/// restarted. The last epoch it answered "granted" must bind it: the other node's claim of
/// it is refused, and its grant file names that epoch or a later one.
#[test]
fn a_witness_keeps_every_grant_it_answered_through_power_cuts() {
    let test = "witness";
    let mut rng = fastrand::Rng::with_seed(seed(test));
    let certs = certs("a,b,w");
    let w_cluster = free_addr();
    let witness =
        Node::prepare(|data| witness_config(certs.path(), data, w_cluster, &Timings::FAST));
    let Some(mut witness) = CutNode::mount(witness) else { return };
    witness.start_until(&format!("{test}: the first start"), &witness_ready(w_cluster));
    // A data node's config, only for its TLS client (the claimant speaks as b and as a: the
    // witness tells them apart by the name in the claim).
    let peer = free_addr();
    let b = Node::configure(
        "b",
        "standby",
        "",
        "",
        &sections(certs.path(), "b", peer, peer, "sync", ""),
    );
    let config = relayd::config::Config::load(&b.config_path).expect("b's config");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    let connector = relayd::replication::link::load(&config, cluster).expect("TLS").connector;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let address = w_cluster.to_string();
    let claim = |node: &str, epoch: u64| {
        let request = Frame::Claim {
            node: node.to_string(),
            epoch,
            force: true,
            failover_timeout_ms: Timings::FAST.failover.as_millis() as u64,
        };
        match runtime.block_on(relayd::ha::witness::ask_once(&address, &connector, &request)) {
            Ok(Frame::Verdict { granted, reason, .. }) => Ok((granted, reason)),
            Ok(other) => panic!("the witness answered a claim with {other:?}"),
            Err(e) => Err(e),
        }
    };
    let claimant = |epoch: u64| if epoch.is_multiple_of(2) { "a" } else { "b" };

    let mut next = 2;
    let mut grants = 0;
    for round in 0..rounds(ROUNDS) {
        // The claimant runs until the witness stops answering; the cut comes at a random
        // moment, in the middle of whatever the witness is writing then. It returns the last
        // epoch answered "granted" and the epoch in flight when the answers stopped.
        let moment = Duration::from_millis(rng.u64(50..=700));
        let cut = any_cut(&mut rng);
        let ((answered, in_flight), reverted) = std::thread::scope(|scope| {
            let claimant = scope.spawn(|| {
                let (mut answered, mut epoch) = (None, next);
                loop {
                    match claim(claimant(epoch), epoch) {
                        Ok((true, _)) => answered = Some(epoch),
                        Ok((false, reason)) => panic!("{test}: epoch {epoch} refused: {reason}"),
                        Err(_) => return (answered, epoch),
                    }
                    epoch += 1;
                }
            });
            std::thread::sleep(moment);
            let reverted = witness.power_cut(cut);
            (claimant.join().expect("claimant"), reverted)
        });
        witness.start_until(&format!("{test}: round {round}"), &witness_ready(w_cluster));
        eprintln!(
            "{test}: round {round}: {cut:?} cut after {moment:?}, last grant answered: {answered:?}; \
             the cut reverted {reverted}"
        );
        if let Some(epoch) = answered {
            grants += epoch + 1 - next;
            let rival = claimant(epoch + 1);
            let (granted, reason) = claim(rival, epoch).expect("the restarted witness answers");
            assert!(
                !granted,
                "{test}: round {round}: epoch {epoch}, granted to {} before the cut, was granted \
                 again to {rival} after it ({reason})",
                claimant(epoch)
            );
            let file = std::fs::read_to_string(witness.node.dir.path().join("data/witness-grant"))
                .expect("the grant file");
            let on_disk: u64 = file.split(' ').next().and_then(|e| e.parse().ok()).expect("epoch");
            assert!(on_disk >= epoch, "{test}: round {round}: grant file {file:?} < {epoch}");
        }
        // The claim in flight may have been granted and kept: the next round starts past it.
        next = in_flight + 1;
    }
    assert!(grants > 0, "{test}: no grant was answered in any round");
    let log = witness.node.log();
    assert!(panics(&log).is_empty(), "{test}: the witness panicked:\n{}", panics(&log).join("\n"));
}

/// A data directory relayd itself creates, two levels deep inside the disk that is cut (a
/// fresh install whose `data_dir` does not exist yet): every directory it created must be
/// durable before the first 250, or a cut takes the whole spool with it.
#[test]
fn a_data_dir_relayd_creates_survives_a_power_cut() {
    let test = "created data_dir";
    let node = Node::configure("cut", "primary", "", "", &relay_sections(CLOSED));
    let Some(mut disk) = CutNode::mount(node) else { return };
    let mount = disk.node.dir.path().join("data");
    let config = std::fs::read_to_string(&disk.node.config_path).expect("config");
    let config = config.replace(
        &format!("data_dir = \"{}\"", mount.display()),
        &format!("data_dir = \"{}\"", mount.join("var/relayd").display()),
    );
    std::fs::write(&disk.node.config_path, config).expect("config");
    disk.start(&format!("{test}: the first start"));
    let load = Load::start(disk.node.addr(), 2, move |s, n| Kind::Small.mail(0, s, n));
    common::wait_for("a message acknowledged", || !load.acked_so_far().is_empty());
    // Every unsynced change, directory entries included: the cut that loses a directory whose
    // parent was never fsynced.
    let reverted = disk.power_cut(Cut::Unsynced);
    let acked = load.finish();
    eprintln!("{test}: {} acknowledged; the cut reverted {reverted}", acked.len());
    disk.start(&format!("{test}: the restart"));
    let queued = queue_ids(&disk.node);
    let lost: Vec<&Acked> = acked.iter().filter(|a| !queued.contains(&a.queue_id)).collect();
    assert!(
        lost.is_empty(),
        "{test}: {} of {} acknowledged messages are gone after the cut: {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
}
