//! Rolling upgrades (issue 15; docs/operations.md, "Upgrading") with real binaries: the
//! previous release, relayd 0.1.0, built from its git tag by scripts/previous-release.sh (once:
//! it is kept under target/releases/), and this build. A witness and a sync pair of 0.1.0 under
//! a steady load; the standby upgraded on its spool; a planned switchover with 0.1.0's own
//! `relayd demote`; the old primary's disk replaced (rebuilt by snapshot across releases), then
//! it is upgraded and rejoins as the standby; the witness last. Every
//! acknowledged message must reach the sinks once: lost 0, duplicates 0, counted by the fault
//! campaign's load, sinks and checks (tests/it/common/campaign).
//!
//! Also here, ignored: the writer of the golden fixtures of 0.1.0's files
//! (tests/fixtures/v0.1.0, scripts/v0.1.0-fixtures.sh).

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::campaign::check::{DataNode, History, duplicates, lost};
use common::campaign::{Gates, Load};
use common::client::{self, Outcome, relayd_on};
use common::cluster::{
    Trio, TrioOptions, all_attempted, caught_up, count, ha_lines, role_epoch, status, try_get,
};
use common::{BIN, Node, run, wait_for};
use relayd::replication::frame::{PROTOCOL, RELEASE};

/// The release this build upgrades from.
const PREVIOUS: &str = "v0.1.0";

/// The previous release's binary, built from the git history (a clear failure without it).
fn previous_release() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/previous-release.sh");
    let out = Command::new(&script).arg(PREVIOUS).output().expect("scripts/previous-release.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "building relayd {PREVIOUS} from the git history:\n{stderr}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A witness (with its admin endpoint) and a sync pair, all three running `binary`, each data
/// node delivering to a sink of its own behind `gates`; `a` serving, `b` caught up.
fn trio_of(binary: &Path, gates: &Gates) -> Trio {
    let options = TrioOptions { witness_admin: true, ..TrioOptions::default() };
    let mut trio = Trio::configure(options, gates.next_hops());
    for member in ["w", "b", "a"] {
        trio.node_mut(member).run_binary(binary);
        trio.launch(member);
    }
    trio.wait_ready();
    trio
}

/// Stops `member` (SIGTERM: it drains) and starts it again as this build, on the same data.
/// Before, as on a host where the new package is installed and the node not yet restarted,
/// this build's `relayd status` reads the running old node.
fn upgrade(trio: &mut Trio, member: &str) {
    let node = trio.node_mut(member);
    let config = node.config_path.to_str().expect("utf-8 path");
    let out = run(BIN, &["status", "--config", config]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "relayd status on {member} before its upgrade: {said}");
    let named = said.lines().any(|l| l.starts_with("node ") && l.trim_end().ends_with(member));
    assert!(named, "relayd status on {member}: {said}");
    node.stop();
    node.run_binary(Path::new(BIN));
    trio.launch(member);
}

/// Waits until `node` is `role` in `epoch`.
fn wait_role(node: &Node, name: &str, role: &str, epoch: u64) {
    wait_for(&format!("{name} to be {role} in epoch {epoch}"), || {
        role_epoch(node) == Some((role.to_string(), epoch))
    });
}

/// Waits until `n` more messages are acknowledged.
fn more_mail(load: &Load, n: usize, what: &str) {
    let target = load.acknowledged() + n;
    wait_for(&format!("{n} more messages acknowledged: {what}"), || load.acknowledged() >= target);
}

/// The release and protocol `node` sees its peer at, from its `/status`.
fn peer_version(node: &Node) -> (String, u64) {
    let status = status(node);
    let peer = &status["peer"];
    let release = peer["release"].as_str().unwrap_or_else(|| panic!("peer.release: {status}"));
    (release.to_string(), peer["protocol"].as_u64().expect("peer.protocol"))
}

/// The protocol of each link `node`'s log says it made (`starting`: the line's start), "-" for
/// a line of 0.1.0's, which names none.
fn links(node: &Node, starting: &str) -> Vec<String> {
    let log = node.log();
    let protocols = log.lines().filter(|l| l.contains(starting)).map(|line| {
        let field = line.split_whitespace().find_map(|f| f.strip_prefix("protocol="));
        field.unwrap_or("-").to_string()
    });
    protocols.collect()
}

#[test]
fn a_rolling_upgrade_from_0_1_0_under_load_loses_nothing_and_duplicates_nothing() {
    let old = previous_release();
    let began = Instant::now();
    let gates = Gates::open();
    let mut trio = trio_of(&old, &gates);
    let t0 = Instant::now();
    let mx = [(DataNode::A, trio.a.addr()), (DataNode::B, trio.b.addr())];
    let load = Load::start(mx, "upgrade", 4, None, t0);
    more_mail(&load, 20, "a 0.1.0 pair");

    // The standby first: this build on 0.1.0's spool, following the 0.1.0 primary.
    upgrade(&mut trio, "b");
    wait_for("b, upgraded, to follow a, caught up", || caught_up(&trio.a));
    assert_eq!(peer_version(&trio.b), ("0.1.0".to_string(), 1), "b sees a as protocol 1");
    let followed = links(&trio.b, "following the primary peer=a");
    assert_eq!(followed, ["-", "1"], "b, upgraded, talks to a in protocol 1");
    let (a, b) = (status(&trio.a), status(&trio.b));
    assert_eq!((&b["release"], &b["protocol"]), (&RELEASE.into(), &PROTOCOL.into()), "{b}");
    assert!(a["release"].is_null() && a["peer"]["release"].is_null(), "0.1.0 says neither: {a}");
    more_mail(&load, 20, "a 0.1.0 primary, a standby of this build");

    // The planned switchover, with the release a's host runs.
    let (code, out, err) = relayd_on(&trio.a, &["demote"]);
    assert_eq!(code, Some(0), "relayd demote on a (0.1.0): {out}{err}");
    wait_role(&trio.b, "b", "primary", 2);
    wait_role(&trio.a, "a", "standby", 2);
    wait_for("a (0.1.0) to follow b, caught up", || caught_up(&trio.b));
    assert_eq!(peer_version(&trio.b), ("0.1.0".to_string(), 1), "b ships to a as protocol 1");
    assert_eq!(links(&trio.b, "replication link up peer=a"), ["1"], "b ships in protocol 1");
    more_mail(&load, 20, "a primary of this build, a 0.1.0 standby");

    // A snapshot across releases: a's disk replaced while it still runs 0.1.0; this build's
    // primary rebuilds it in protocol 1.
    trio.a.stop();
    trio.a.wipe_data();
    trio.launch("a");
    wait_role(&trio.a, "a", "standby", 2);
    wait_for("a (0.1.0), emptied, rebuilt by b", || caught_up(&trio.b));
    assert_eq!(count(&trio.b.log(), "sending a snapshot"), 1, "{}", ha_lines(&trio.b));
    assert_eq!(links(&trio.b, "replication link up peer=a"), ["1", "1"]);
    more_mail(&load, 10, "a 0.1.0 standby rebuilt by a primary of this build");

    // The old primary: upgraded, it rejoins as the standby.
    upgrade(&mut trio, "a");
    wait_role(&trio.a, "a", "standby", 2);
    wait_for("a, upgraded, to follow b, caught up", || caught_up(&trio.b));
    let ours = (RELEASE.to_string(), u64::from(PROTOCOL));
    assert_eq!(peer_version(&trio.b), ours, "b sees a as this build");
    assert_eq!(peer_version(&trio.a), ours, "a sees b as this build");
    let both = PROTOCOL.to_string();
    assert_eq!(links(&trio.b, "replication link up peer=a"), ["1", "1", &both], "then ours");
    assert_eq!(links(&trio.a, "following the primary peer=b"), ["-", "-", &both], "a, upgraded");
    more_mail(&load, 20, "both data nodes of this build, the 0.1.0 witness");

    // The witness last (until now, this build's nodes talked to a 0.1.0 witness: b's claim of
    // epoch 2 among them).
    upgrade(&mut trio, "w");
    more_mail(&load, 10, "all three of this build");
    assert_eq!(role_epoch(&trio.b), Some(("primary".to_string(), 2)));

    let (acks, resent) = load.finish();
    let ids: BTreeSet<String> = acks.iter().map(|a| a.id.clone()).collect();
    wait_for("every acknowledged message at a sink", || gates.undelivered(&ids, t0).is_empty());
    let (deliveries, bounced) = gates.received(t0);
    let history = History { acks, resent, deliveries, bounced, ..History::default() };
    let lost = lost(&history);
    let (extra, duplicated) = duplicates(&history);
    eprintln!(
        "rolling upgrade {PREVIOUS} → {}: {} acknowledged, {} delivered, lost {}, duplicates {} \
         ({} sent again by a client), {:.0?} in all",
        env!("CARGO_PKG_VERSION"),
        history.acks.len(),
        history.deliveries.len(),
        lost.len(),
        extra,
        history.resent.len(),
        began.elapsed()
    );
    assert!(lost.is_empty(), "lost in the upgrade: {lost:?}");
    assert_eq!(extra, 0, "delivered twice in the upgrade: {duplicated:?}");
}

/// Where the golden fixtures of the previous release's files are.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(PREVIOUS)
}

/// Sends `n` messages to `node`, each acknowledged, with Message-IDs `TAG-N@campaign.test`.
fn send(node: &Node, tag: &str, n: usize) {
    for i in 0..n {
        let id = format!("{tag}-{i}@campaign.test");
        let outcome = client::submit(node.addr(), &id, Duration::from_secs(10));
        assert_eq!(outcome, Outcome::Accepted, "{id}");
    }
}

/// Writes the golden fixtures of 0.1.0's files with the 0.1.0 binary (the new primary's spool
/// after mail delivered in epoch 1, a switchover to epoch 2 and mail queued there; its queue
/// as 0.1.0's `GET /queue` listed it; the witness's grant file). scripts/v0.1.0-fixtures.sh
/// runs it; tests/fixtures/v0.1.0/README.md says what is there.
#[test]
#[ignore = "writes tests/fixtures/v0.1.0: scripts/v0.1.0-fixtures.sh"]
fn write_the_files_of_0_1_0() {
    let old = previous_release();
    let gates = Gates::open();
    let mut trio = trio_of(&old, &gates);
    let t0 = Instant::now();
    send(&trio.a, "delivered", 3);
    let ids = (0..3).map(|i| format!("delivered-{i}@campaign.test")).collect();
    wait_for("three messages delivered", || gates.undelivered(&ids, t0).is_empty());
    let (code, out, err) = relayd_on(&trio.a, &["demote"]);
    assert_eq!(code, Some(0), "relayd demote: {out}{err}");
    wait_role(&trio.b, "b", "primary", 2);
    wait_for("a to follow b, caught up", || caught_up(&trio.b));
    gates.hold();
    send(&trio.b, "queued", 4);
    wait_for("four messages queued and tried", || all_attempted(&trio.b, 4));
    let queue = try_get(&trio.b, "/queue").expect("GET /queue");
    for member in ["a", "b", "w"] {
        trio.node_mut(member).stop();
    }
    let out = fixtures();
    std::fs::create_dir_all(&out).expect("fixtures directory");
    let pretty = serde_json::to_string_pretty(&queue).expect("json");
    std::fs::write(out.join("queue.json"), pretty + "\n").expect("queue.json");
    let spool = trio.b.data_dir().join("spool/spool.redb");
    let gzipped = Command::new("gzip").args(["-9", "-n", "-c"]).arg(&spool).output().expect("gzip");
    assert!(gzipped.status.success(), "gzip {}", spool.display());
    std::fs::write(out.join("spool.redb.gz"), gzipped.stdout).expect("spool.redb.gz");
    let grant = trio.w.data_dir().join("witness-grant");
    std::fs::copy(&grant, out.join("witness-grant")).expect("witness-grant");
}
