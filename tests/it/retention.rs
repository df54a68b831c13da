//! Log retention (`[node].log_retention_bytes`, `log_retention_age`) between two real relayd
//! processes: a standby away for longer than the primary keeps its log is rebuilt from a
//! snapshot when it comes back, and loses nothing; one back within the bound resumes from the
//! log. Mail is routed to a closed port, so every message stays queued (deferred once), and
//! both spools are read back and compared once the nodes are stopped.

use crate::common;

use std::time::Duration;

use common::client::{Outcome, submit};
use common::cluster::{Pair, count};
use common::wait_for;

/// Sends messages `from..to` to the primary, each in a session of its own: all must be taken.
fn send(pair: &Pair, from: usize, to: usize) {
    for i in from..to {
        let id = format!("retention-{i}@client.test");
        let outcome = submit(pair.primary().addr(), &id, Duration::from_secs(10));
        assert_eq!(outcome, Outcome::Accepted, "message {i}");
    }
}

/// Stops both nodes; both spools hold the same `messages` messages, envelopes, recipient states
/// and bodies.
fn assert_same_queues(pair: &mut Pair, messages: usize) {
    assert_eq!(pair.primary_mut().stop(), Some(0), "the primary's exit status");
    assert_eq!(pair.standby_mut().stop(), Some(0), "the standby's exit status");
    let primary = pair.primary().queued();
    let standby = pair.standby().queued();
    assert_eq!(primary.len(), messages, "the primary's queue");
    let ids = |queue: &[(relayd::spool::MessageRecord, Vec<u8>)]| {
        queue.iter().map(|(m, _)| m.envelope.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&standby), ids(&primary), "the same messages on both nodes");
    for ((p, p_body), (s, s_body)) in primary.iter().zip(&standby) {
        assert_eq!(s, p, "message {} differs on the standby", p.envelope.id);
        assert!(s_body == p_body, "the standby's body of {} differs", p.envelope.id);
    }
}

/// The `n`th "replication link up" line of the primary (1 is the first).
fn link_up(pair: &Pair, n: usize) -> String {
    let log = pair.primary().log();
    let line = log.lines().filter(|l| l.contains("replication link up")).nth(n - 1);
    line.unwrap_or_else(|| panic!("no link #{n}:\n{log}")).to_string()
}

/// A pair whose nodes keep `log_retention_age` of log, with 5 messages on both, then the
/// standby stopped and 5 more messages taken by the primary alone (async).
fn standby_away(log_retention_age: &str) -> Pair {
    let node = format!("log_retention_age = \"{log_retention_age}\"");
    let mut pair = Pair::start_with("async", "", &node);
    send(&pair, 0, 5);
    pair.wait_settled(5);
    pair.standby_mut().stop();
    pair.wait_disconnected();
    send(&pair, 5, 10);
    pair
}

/// The standby back: 2 more messages, both nodes settled, stopped, and their queues the same.
fn back_and_same(mut pair: Pair) {
    send(&pair, 10, 12);
    pair.wait_settled(12);
    assert_same_queues(&mut pair, 12);
}

#[test]
fn a_standby_away_past_the_log_retention_is_rebuilt_by_snapshot_and_loses_nothing() {
    // The primary's records age past the bound, and the trim (every 10 s) drops them, the
    // standby's last one with them.
    let mut pair = standby_away("2s");
    wait_for("the primary to trim its log past the standby's last record", || {
        count(&pair.primary().log(), "trimmed past the standby's last record") == 1
    });
    pair.standby_mut().launch();
    pair.wait_links_up(2);
    let relink = link_up(&pair, 2);
    assert!(relink.contains("from=None"), "the log no longer holds its position: {relink}");
    assert_eq!(count(&pair.primary().log(), "sending a snapshot"), 2, "a second snapshot");
    wait_for("the standby to install it", || {
        count(&pair.standby().log(), "snapshot installed") == 2
    });
    // And it streams from there.
    back_and_same(pair);
}

#[test]
fn a_standby_back_within_the_log_retention_resumes_from_the_log() {
    let mut pair = standby_away("1h");
    // Away across a trim (every 10 s), which keeps what the standby lacks. There is nothing to
    // wait on: a trim that keeps every record says nothing.
    std::thread::sleep(Duration::from_secs(11));
    pair.standby_mut().launch();
    pair.wait_links_up(2);
    let relink = link_up(&pair, 2);
    assert!(relink.contains("from=Some("), "resumed from the log, no snapshot: {relink}");
    assert_eq!(count(&pair.primary().log(), "sending a snapshot"), 1, "no second snapshot");
    assert_eq!(count(&pair.primary().log(), "trimmed past the standby"), 0);
    back_and_same(pair);
}
