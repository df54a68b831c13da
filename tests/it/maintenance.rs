//! Maintenance of a running cluster (issue 15, points 2 and 3) between real relayd processes:
//! the trio of tests/it/common/cluster.rs (a witness `w`, a primary `a`, a standby `b`).
//! `relayd status` shows every member, and a member killed as not heard; `relayd failover
//! pause` keeps a standby from promoting itself for a dead primary, across a restart, until
//! `relayd failover resume`; `relayd rebuild` makes a standby take the primary's whole queue
//! again, and is refused on a primary.
//!
//! Timing tests: run in a pass of their own (scripts/test.sh), on the trio's short timings,
//! with every condition awaited.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::client::{self, Outcome, relayd_on};
use common::cluster::{
    CLOSED, Trio, TrioOptions, count, role_epoch, sever, try_get_text, try_status,
};
use common::{Node, wait_for};

const PATIENCE: Duration = Duration::from_secs(10);

/// `node`'s member `name` in its `/status`.
fn member(node: &Node, name: &str) -> Option<serde_json::Value> {
    let status = try_status(node)?;
    status["members"].as_array()?.iter().find(|m| m["name"] == name).cloned()
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("a duration in ms")
}

#[test]
fn status_shows_every_member_and_a_killed_one_as_not_heard() {
    let mut trio = Trio::start(TrioOptions::default());
    // a names the witness by its proxy's address: the name its member goes by.
    let witness = trio.aw.addr().to_string();
    // The witness's member shows its grant once a's ping has been answered.
    wait_for("a to hear the witness", || {
        member(&trio.a, &witness).is_some_and(|w| w["state"] == "answering")
    });
    let status = try_status(&trio.a).expect("a's status");
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status:#}");
    let (a, b, w) = (&members[0], &members[1], &members[2]);
    assert_eq!(
        (&a["name"], &a["role"], &a["state"]),
        (&"a".into(), &"primary".into(), &"self".into())
    );
    assert_eq!((a["epoch"].as_u64(), a["serving"].as_bool()), (Some(1), Some(true)), "{a}");
    assert_eq!(
        (&b["name"], &b["role"], &b["state"]),
        (&"b".into(), &"standby".into(), &"linked".into())
    );
    assert_eq!((b["epoch"].as_u64(), b["lag_records"].as_u64()), (Some(1), Some(0)), "{b}");
    assert!(b["last_heard_ms"].as_u64().is_some_and(|heard| heard < 2000), "{b}");
    assert_eq!(
        (&w["role"], w["epoch"].as_u64(), &w["granted_to"]),
        (&"witness".into(), Some(1), &"a".into())
    );
    assert!(w["last_heard_ms"].as_u64().is_some_and(|heard| heard < 2000), "{w}");
    // The standby sees the primary, and the CLI prints the members as a table.
    let on_b = member(&trio.b, "a").expect("b's member a");
    assert_eq!(
        (&on_b["role"], &on_b["state"], on_b["epoch"].as_u64()),
        (&"primary".into(), &"linked".into(), Some(1))
    );
    let (code, out, err) = relayd_on(&trio.a, &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let header = out.lines().find(|l| l.starts_with("MEMBER")).unwrap_or_default();
    assert!(header.contains("ROLE") && header.contains("LAST HEARD"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("b ") && l.contains("standby") && l.contains("linked")),
        "{out}"
    );
    let (code, json, err) = relayd_on(&trio.a, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["members"].as_array().map(Vec::len), Some(3), "{json:#}");

    // b killed: a shows it unreachable, last heard longer and longer ago.
    trio.b.kill9();
    let failover = ms(trio.options.timings.failover);
    wait_for("a to show b unreachable, not heard for a failover_timeout", || {
        member(&trio.a, "b").is_some_and(|b| {
            b["state"] == "unreachable" && b["last_heard_ms"].as_u64().is_some_and(|h| h > failover)
        })
    });
    let (code, out, _) = relayd_on(&trio.a, &["status"]);
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|l| l.starts_with("b ") && l.contains("unreachable")), "{out}");
}

/// Automatic failover paused on the primary reaches the standby (replicated); the primary
/// killed, the standby does not promote itself, even once it has not heard the primary for
/// far longer than failover_timeout, nor after a restart of its own (the pause persisted);
/// resumed, it promotes.
#[test]
fn paused_failover_keeps_the_standby_from_promoting_until_resumed() {
    let mut trio = Trio::start(TrioOptions::default());
    let (code, out, err) = relayd_on(&trio.a, &["failover", "pause"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("paused on this primary and its standby"), "{out}");
    for node in [&trio.a, &trio.b] {
        wait_for("the pause to reach both nodes", || {
            try_status(node).is_some_and(|s| s["failover_paused"] == true)
        });
        let metrics = try_get_text(node, "/metrics").expect("metrics");
        assert!(metrics.contains("relayd_failover_paused 1\n"), "{metrics}");
    }
    assert!(
        count(&trio.a.log(), "automatic failover paused by the operator") == 1,
        "{}",
        trio.a.log()
    );
    assert!(count(&trio.b.log(), "as the primary says") == 1, "{}", trio.b.log());
    let (_, status, _) = relayd_on(&trio.b, &["status"]);
    assert!(status.contains("failover paused"), "{status}");

    trio.a.kill9();
    let failover = ms(trio.options.timings.failover);
    // The decision not to promote is made (and said) once the silence passes failover_timeout.
    let declined = "automatic failover is paused: not promoting";
    wait_for("b to decline a failover", || count(&trio.b.log(), declined) == 1);
    wait_for("b to have not heard a for twice failover_timeout", || {
        member(&trio.b, "a")
            .is_some_and(|a| a["last_heard_ms"].as_u64().is_some_and(|h| h > 2 * failover))
    });
    assert_eq!(role_epoch(&trio.b), Some(("standby".into(), 1)), "{}", trio.b.log());

    // Restarted, b is still paused.
    trio.b.kill9();
    trio.b.launch();
    wait_for("b to decline a failover after its restart", || count(&trio.b.log(), declined) == 2);
    let status = try_status(&trio.b).expect("b's status");
    assert_eq!(
        (status["role"].as_str(), status["failover_paused"].as_bool()),
        (Some("standby"), Some(true))
    );

    let (code, out, err) = relayd_on(&trio.b, &["failover", "resume"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("resumed on this node only"), "{out}");
    wait_for("b to promote itself once resumed", || {
        role_epoch(&trio.b) == Some(("primary".into(), 2))
    });
    let metrics = try_get_text(&trio.b, "/metrics").expect("metrics");
    assert!(metrics.contains("relayd_failover_paused 0\n"), "{metrics}");
}

/// A trio whose primary keeps its mail queued (its next hop closed, retried hourly), holding
/// `n` messages on both nodes.
fn trio_holding(n: usize) -> Trio {
    let closed: SocketAddr = CLOSED.parse().expect("an address");
    let options = TrioOptions { retry: r#"["1h"]"#, ..TrioOptions::default() };
    let trio = Trio::start_with(options, Some(closed));
    for i in 0..n {
        let id = format!("rebuild-{i}@maintenance.test");
        assert_eq!(client::submit(trio.a.addr(), &id, PATIENCE), Outcome::Accepted);
    }
    wait_for("b to hold the messages", || {
        try_status(&trio.b).is_some_and(|s| s["queue"]["messages"] == n)
    });
    trio
}

/// The ids and bodies of a stopped node's queue.
fn queue_of(node: &Node) -> BTreeSet<(String, Vec<u8>)> {
    node.queued().into_iter().map(|(m, body)| (m.envelope.id.to_string(), body)).collect()
}

/// `relayd rebuild` on a primary is refused (409, exit 1); on the standby it empties its spool
/// and takes a full snapshot of the primary's: afterwards it holds the very queue the primary
/// holds (the mail stays queued: a's next hop is closed), bodies included, and the primary's
/// state besides: its pause of automatic failover (which b had resumed on its own) and the
/// history's notes.
#[test]
fn rebuild_takes_the_primary_queue_again_and_is_refused_on_a_primary() {
    let mut trio = trio_holding(5);

    let (code, out, err) = relayd_on(&trio.a, &["rebuild"]);
    assert_eq!(code, Some(1), "refused on a primary: {out}{err}");
    assert!(err.contains("not a standby"), "{err}");
    assert_eq!(try_status(&trio.a).map(|s| s["queue"]["messages"].clone()), Some(5.into()));

    // Paused on a (and so on b), then resumed on b alone: only a snapshot tells b again.
    assert_eq!(relayd_on(&trio.a, &["failover", "pause"]).0, Some(0));
    wait_for("b to be paused", || {
        try_status(&trio.b).is_some_and(|s| s["failover_paused"] == true)
    });
    assert_eq!(relayd_on(&trio.b, &["failover", "resume"]).0, Some(0));
    assert_eq!(try_status(&trio.b).map(|s| s["failover_paused"].clone()), Some(false.into()));

    let snapshots = count(&trio.a.log(), "sending a snapshot to the standby");
    let installed = count(&trio.b.log(), "snapshot installed");
    let (code, out, err) = relayd_on(&trio.b, &["rebuild"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(count(&trio.b.log(), "rebuild requested by the operator") == 1, "{}", trio.b.log());
    wait_for("a to send b a snapshot", || {
        count(&trio.a.log(), "sending a snapshot to the standby") > snapshots
    });
    wait_for("b to install it and catch up", || {
        count(&trio.b.log(), "snapshot installed") > installed
            && try_status(&trio.b).is_some_and(|s| s["queue"]["messages"] == 5)
            && try_status(&trio.a).is_some_and(|s| {
                s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0
            })
    });
    // Still a standby of epoch 1, following: mail taken after the rebuild reaches it too.
    assert_eq!(role_epoch(&trio.b), Some(("standby".into(), 1)));
    assert_eq!(try_status(&trio.b).map(|s| s["failover_paused"].clone()), Some(true.into()));
    let (_, history, _) = relayd_on(&trio.b, &["history", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&history).expect("JSON");
    assert_eq!((&history[0]["node"], &history[0]["cause"]), (&"a".into(), &"bootstrap".into()));
    assert_eq!(
        client::submit(trio.a.addr(), "rebuild-after@maintenance.test", PATIENCE),
        Outcome::Accepted
    );
    wait_for("b to hold the sixth", || {
        try_status(&trio.b).is_some_and(|s| s["queue"]["messages"] == 6)
    });
    trio.b.stop();
    trio.a.stop();
    let (on_a, on_b) = (queue_of(&trio.a), queue_of(&trio.b));
    assert_eq!(on_a.len(), 6);
    assert_eq!(on_a, on_b, "b holds a's queue, bodies included");
}

/// `relayd history` after a planned switchover: two epochs, a's bootstrap and b's
/// switchover, with their nodes and reasons, the same on both nodes (the note is replicated
/// with the epoch's first record).
#[test]
fn history_after_a_switchover_names_both_epochs_nodes_and_causes() {
    let trio = Trio::start(TrioOptions::default());
    let (code, out, err) = relayd_on(&trio.a, &["demote"]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for("b to be the primary of epoch 2", || {
        role_epoch(&trio.b) == Some(("primary".into(), 2))
    });
    wait_for("a to follow b, caught up", || {
        try_status(&trio.b)
            .is_some_and(|s| s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0)
    });
    for node in [&trio.a, &trio.b] {
        let (code, json, err) = relayd_on(node, &["history", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let history: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let epochs = history.as_array().expect("an array");
        assert_eq!(epochs.len(), 2, "{history:#}");
        let (first, second) = (&epochs[0], &epochs[1]);
        assert_eq!(
            (first["epoch"].as_u64(), &first["node"], &first["cause"]),
            (Some(1), &"a".into(), &"bootstrap".into()),
            "{first}"
        );
        assert_eq!(
            (second["epoch"].as_u64(), &second["node"], &second["cause"]),
            (Some(2), &"b".into(), &"switchover".into()),
            "{second}"
        );
        assert!(second["reason"].as_str().is_some_and(|r| r.contains("handed over")), "{second}");
        assert!(
            second["started_at"]
                .as_str()
                .is_some_and(|t| t >= first["started_at"].as_str().unwrap_or("")),
            "{history:#}"
        );
        let (code, table, _) = relayd_on(node, &["history"]);
        assert_eq!(code, Some(0));
        assert!(table.starts_with("EPOCH"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("2 ") && l.contains(" b ") && l.contains("switchover")),
            "{table}"
        );
    }
}

/// A rebuild the primary cannot answer yet (the link cut): the emptied standby is not
/// promotable, neither by itself once it has not heard the primary for failover_timeout nor by
/// `relayd promote --force`; killed and restarted before the snapshot came, it is still
/// empty and still waiting, and takes the snapshot once the link is back.
#[test]
fn a_rebuild_cut_short_by_a_crash_resumes_and_the_emptied_standby_is_not_promotable() {
    let mut trio = trio_holding(3);
    sever(&trio.ab);
    let (code, out, err) = relayd_on(&trio.b, &["rebuild"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let empty = "this node's spool is empty: it never promotes itself";
    wait_for("b to decline a failover, holding nothing", || count(&trio.b.log(), empty) == 1);
    let (code, out, err) = relayd_on(&trio.b, &["promote", "--force"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("spool is empty and the cluster already has epoch 1"), "{err}");
    let status = try_status(&trio.b).expect("b's status");
    assert_eq!((status["role"].as_str(), status["epoch"].as_u64()), (Some("standby"), Some(0)));
    assert_eq!(status["queue"]["messages"], 0);

    trio.b.kill9();
    let installed = count(&trio.b.log(), "snapshot installed");
    trio.b.launch();
    wait_for("b, restarted, to wait holding nothing", || count(&trio.b.log(), empty) == 2);
    trio.ab.unblock();
    wait_for("b to take the snapshot once the link is back", || {
        count(&trio.b.log(), "snapshot installed") > installed
            && try_status(&trio.b).is_some_and(|s| s["queue"]["messages"] == 3 && s["epoch"] == 1)
    });
    trio.b.stop();
    trio.a.stop();
    assert_eq!(queue_of(&trio.a), queue_of(&trio.b), "b holds a's queue again");
}
