//! Queue control against the real binary (docs/operations.md, "Queue control"): the listing's
//! pages and filters, delete by filter with a dry run, requeue, a message's content, hold and
//! release; over curl and through `relayd queue ...`. Mail stays queued: every route leads to a
//! closed port (or the test sink, whose `flaky…` recipients defer the first attempt), and the
//! first retry is an hour away, so only a requeue (or a release) makes a second attempt.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::admin::{cli, curl, get, sections, send_from, wait_for_admin};
use crate::common::cluster::{Pair, all_attempted, count};
use crate::common::sink::Sink;
use crate::common::{Node, free_port, wait_for};
use crate::delivery::{dsn_report, dsns};

fn start(role: &str) -> Node {
    let delivery =
        format!("[delivery]\nretry = [\"1h\"]\nresolvers = [\"127.0.0.1:{}\"]\n", free_port());
    let node = Node::start_as(role, "", &format!("{}\n{delivery}", sections()));
    wait_for_admin(&node);
    node
}

/// The message `n` of a test, as sent (CRLF lines).
fn data(n: usize) -> String {
    format!(
        "Subject: queue test {n}\r\nX-Test: {n}\r\n\r\nBody of message {n}.\r\nSecond line.\r\n"
    )
}

/// Sends `count` messages from `sender` to `rcpt`; their queue ids.
fn send_many(node: &Node, count: usize, sender: &str, rcpt: &str) -> Vec<String> {
    (0..count).map(|n| send_from(node, sender, rcpt, &data(n))).collect()
}

fn ids(messages: &Value) -> BTreeSet<String> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("an array: {messages}"))
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

/// The ids a filtered listing (one page of 100) answers.
fn listed(node: &Node, query: &str) -> BTreeSet<String> {
    let page = get(node, &format!("/queue?{query}"));
    assert_eq!(page.status, 200, "{query}: {}", page.body);
    let page = page.json();
    assert_eq!(page["next_after"], Value::Null, "{page}");
    ids(&page["messages"])
}

/// The attempts made so far for the (only) recipient of each queued message, by id.
fn attempts(node: &Node) -> Vec<(String, u64)> {
    let list = get(node, "/queue").json();
    list.as_array()
        .expect("array")
        .iter()
        .map(|m| {
            let id = m["id"].as_str().expect("id").to_string();
            (id, m["recipients"][0]["attempts"].as_u64().unwrap_or(0))
        })
        .collect()
}

#[test]
fn pages_and_filters_see_each_message_once() {
    let node = start("primary");
    let mut one = send_many(&node, 15, "alice@example.org", "x@one.test");
    let two = send_many(&node, 10, "bob@example.org", "y@two.test");
    let every: BTreeSet<String> = one.iter().chain(&two).cloned().collect();
    assert_eq!(every.len(), 25);

    // The old call: the whole queue, a bare array.
    assert_eq!(ids(&get(&node, "/queue").json()), every);

    // Pages of 10: 10, 10, 5, each message once, the cursor ending on the last page.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let path = match &after {
            Some(id) => format!("/queue?limit=10&after={id}"),
            None => "/queue?limit=10".to_string(),
        };
        let page = get(&node, &path).json();
        let messages = page["messages"].as_array().expect("messages").clone();
        sizes.push(messages.len());
        seen.extend(messages.iter().map(|m| m["id"].as_str().expect("id").to_string()));
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), every);

    // Each filter.
    let two_set: BTreeSet<String> = two.iter().cloned().collect();
    one.sort();
    let one_set: BTreeSet<String> = one.iter().cloned().collect();
    assert_eq!(listed(&node, "domain=two.test"), two_set);
    assert_eq!(listed(&node, "domain=ONE.test"), one_set);
    assert_eq!(listed(&node, "sender=bob%40example.org"), two_set);
    assert_eq!(listed(&node, "recipient=x%40one.test"), one_set);
    assert_eq!(listed(&node, "older_than=1h"), BTreeSet::new());
    assert_eq!(listed(&node, "older_than=0s&domain=two.test"), two_set);
    // After the first attempt (to a closed port), every message waits an hour: deferred.
    wait_for("every message tried once", || all_attempted(&node, 25));
    assert_eq!(listed(&node, "state=deferred"), every);
    assert_eq!(listed(&node, "state=active"), BTreeSet::new());

    let bad = get(&node, "/queue?state=frozen");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().is_some_and(|e| e.starts_with("state=")), "{}", bad.body);
    assert_eq!(get(&node, "/queue?after=nope").status, 400);

    // The CLI: a page, and the command for the next one.
    let (code, out, err) = cli(&node, &["queue", "list", "--limit", "10"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("10 messages\n"), "{out}");
    let next = out
        .lines()
        .find_map(|line| line.strip_prefix("more: the next page with --after "))
        .unwrap_or_else(|| panic!("no next page in {out}"));
    let (code, out, err) =
        cli(&node, &["queue", "list", "--limit", "10", "--after", next, "--domain", "two.test"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("more:"), "{out}");
    let (code, out, _) = cli(&node, &["queue", "list", "--sender", "bob@example.org", "--json"]);
    assert_eq!(code, Some(0));
    let page: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(ids(&page["messages"]), two_set);
    let (code, _, err) = cli(&node, &["queue", "list", "--older-than", "soon"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("HTTP 400: older_than="), "{err}");
}

#[test]
fn delete_by_filter_counts_and_dry_runs() {
    let node = start("primary");
    let one = send_many(&node, 4, "alice@example.org", "x@one.test");
    let two = send_many(&node, 3, "bob@example.org", "y@two.test");
    let count = || get(&node, "/queue").json().as_array().expect("array").len();

    let dry = curl(&node, "DELETE", "/queue?domain=two.test&dry_run=true", &[]);
    assert_eq!(dry.status, 200, "{}", dry.body);
    let dry = dry.json();
    assert_eq!((dry["dry_run"].as_bool(), dry["deleted"].as_u64()), (Some(true), Some(3)));
    let would_go: BTreeSet<String> = dry["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").into())
        .collect();
    assert_eq!(would_go, two.iter().cloned().collect());
    assert_eq!(count(), 7, "a dry run removes nothing");

    let refused = curl(&node, "DELETE", "/queue", &[]);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.json()["error"].as_str().is_some_and(|e| e.contains("all=true")));
    assert_eq!(count(), 7);

    let deleted = curl(&node, "DELETE", "/queue?domain=two.test", &[]).json();
    assert_eq!(deleted["deleted"], 3, "{deleted}");
    assert_eq!(ids(&get(&node, "/queue").json()), one.iter().cloned().collect());

    // The CLI: a dry run prints the ids and the count; without a filter it is refused.
    let (code, out, err) =
        cli(&node, &["queue", "delete", "--sender", "alice@example.org", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("dry run: 4 messages would be deleted\n"), "{out}");
    assert!(one.iter().all(|id| out.contains(id.as_str())), "{out}");
    assert_eq!(count(), 4);
    // Bad usage, before any request.
    assert_eq!(cli(&node, &["queue", "delete"]).0, Some(2));
    assert_eq!(cli(&node, &["queue", "delete", "--dry-run"]).0, Some(2));
    let (code, out, err) = cli(&node, &["queue", "delete", "--sender", "alice@example.org"]);
    assert_eq!((code, out.as_str()), (Some(0), "deleted 4 messages\n"), "{err}");
    assert_eq!(count(), 0);
    // One by id, as before.
    let last = send_from(&node, "carol@example.org", "z@one.test", &data(0));
    let (code, out, _) = cli(&node, &["queue", "delete", &last]);
    assert_eq!((code, out), (Some(0), format!("deleted {last}\n")));
    assert_eq!(count(), 0);
}

#[test]
fn requeue_tries_one_or_a_domain_now() {
    let node = start("primary");
    let one = send_many(&node, 2, "alice@example.org", "x@one.test");
    let two = send_many(&node, 2, "bob@example.org", "y@two.test");
    wait_for("every message tried once", || all_attempted(&node, 4));
    let tries = |id: &str| {
        attempts(&node).into_iter().find(|(i, _)| i == id).map(|(_, n)| n).expect("queued")
    };

    let one_only = curl(&node, "POST", &format!("/queue/requeue?id={}", one[0]), &[]);
    assert_eq!(one_only.status, 202, "{}", one_only.body);
    assert_eq!(one_only.json()["requeued"], 1);
    wait_for("the requeued message tried again", || tries(&one[0]) == 2);

    let (code, out, err) = cli(&node, &["queue", "requeue", "--domain", "two.test"]);
    assert_eq!((code, out.as_str()), (Some(0), "requeued 2 messages\n"), "{err}");
    wait_for("the domain's messages tried again", || two.iter().all(|id| tries(id) == 2));
    // The message neither requeue named waits for its retry, an hour away.
    assert_eq!(tries(&one[1]), 1);

    assert_eq!(cli(&node, &["queue", "requeue"]).0, Some(2));
    let bare = curl(&node, "POST", "/queue/requeue", &[]);
    assert_eq!(bare.status, 400, "{}", bare.body);
    let missing = curl(&node, "POST", &format!("/queue/requeue?id={}", "0".repeat(32)), &[]);
    assert_eq!(missing.status, 404);
    let (code, out, err) = cli(&node, &["queue", "requeue", "--all"]);
    assert_eq!((code, out.as_str()), (Some(0), "requeued 4 messages\n"), "{err}");
    wait_for("every message tried once more", || {
        tries(&one[0]) == 3 && tries(&one[1]) == 2 && two.iter().all(|id| tries(id) == 3)
    });
}

#[test]
fn content_is_the_message_as_stored() {
    let node = start("primary");
    let id = send_from(&node, "alice@example.org", "x@one.test", &data(7));

    let content = get(&node, &format!("/queue/{id}/content"));
    assert_eq!(content.status, 200);
    assert!(content.headers.contains("content-type: message/rfc822"), "{}", content.headers);
    // Our Received: header first, then the message as the client sent it.
    assert!(content.body.starts_with("Received: "), "{}", content.body);
    assert!(content.body.ends_with(&data(7)), "{:?}", content.body);

    let (code, out, err) = cli(&node, &["queue", "show", &id, "--content"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, content.body);

    // A body of many spool chunks (32 KiB each) comes back whole and in order.
    let lines: String = (0..20_000).map(|n| format!("line {n:05} of a long body\r\n")).collect();
    let long = format!("Subject: long\r\n\r\n{lines}");
    let long_id = send_from(&node, "alice@example.org", "x@one.test", &long);
    let (code, out, err) = cli(&node, &["queue", "show", &long_id, "--content"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.len() > 500_000, "{}", out.len());
    assert!(out.ends_with(&long), "the long body differs");

    let absent = "0".repeat(32);
    assert_eq!(get(&node, &format!("/queue/{absent}/content")).status, 404);
    let (code, _, err) = cli(&node, &["queue", "show", &absent, "--content"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("HTTP 404"), "{err}");
}

#[test]
fn a_standby_refuses_deletes_and_requeues_but_answers_dry_runs() {
    let node = start("standby");
    let delete = curl(&node, "DELETE", "/queue?all=true", &[]);
    assert_eq!(delete.status, 409, "{}", delete.body);
    assert!(delete.json()["error"].as_str().is_some_and(|e| e.contains("serving primary")));
    let dry = curl(&node, "DELETE", "/queue?all=true&dry_run=true", &[]);
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.json()["deleted"], 0);
    let requeue = curl(&node, "POST", "/queue/requeue?all=true", &[]);
    assert_eq!(requeue.status, 409, "{}", requeue.body);
    let bounce = curl(&node, "POST", "/queue/bounce?all=true", &[]);
    assert_eq!(bounce.status, 409, "{}", bounce.body);
    let dry = curl(&node, "POST", "/queue/bounce?all=true&dry_run=true", &[]);
    assert_eq!((dry.status, dry.json()["bounced"].as_u64()), (200, Some(0)), "{}", dry.body);
    let (code, _, err) = cli(&node, &["queue", "delete", "--all"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("HTTP 409"), "{err}");
}

#[test]
fn a_delete_by_filter_reaches_the_standby() {
    let pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let (primary, standby) = (pair.primary(), pair.standby());
    send_many(primary, 3, "bob@example.org", "y@two.test");
    let kept: BTreeSet<String> =
        send_many(primary, 2, "alice@example.org", "x@one.test").into_iter().collect();
    pair.wait_settled(5);

    // The standby answers a dry run from its copy, and refuses the real thing.
    let bob = "/queue?sender=bob%40example.org";
    let dry = curl(standby, "DELETE", &format!("{bob}&dry_run=true"), &[]).json();
    assert_eq!(dry["deleted"], 3, "{dry}");
    assert_eq!(curl(standby, "DELETE", bob, &[]).status, 409);

    let deleted = curl(primary, "DELETE", bob, &[]).json();
    assert_eq!(deleted["deleted"], 3, "{deleted}");
    assert_eq!(ids(&get(primary, "/queue").json()), kept);
    // The removals are replicated like every change.
    wait_for("the standby to drop the deleted messages", || {
        ids(&get(standby, "/queue").json()) == kept
    });
}

/// A primary whose every domain goes to `sink`, one delivery at a time (so that what the runner
/// dispatches reaches the sink in that order), the first retry an hour away, with more
/// `[delivery]` keys.
fn start_for(sink: &Sink, delivery: &str) -> Node {
    let sections = format!(
        "[relay]\ndomains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n\n\
         [[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:{}\"\ntls = \"none\"\n\n\
         [delivery]\nretry = [\"1h\"]\nconcurrency_per_host = 1\nresolvers = [\"127.0.0.1:{}\"]\n{delivery}\n",
        sink.port(),
        free_port()
    );
    let node = Node::start_as("primary", "", &sections);
    wait_for_admin(&node);
    node
}

/// Sends a message to `rcpt` and waits until the sink has it: everything the runner dispatched
/// before it (one delivery at a time) has been tried by then.
fn delivered_through(node: &Node, sink: &Sink, rcpt: &str) {
    send_from(node, "alice@example.org", rcpt, &data(0));
    wait_for(&format!("{rcpt} at the sink"), || {
        sink.transactions().iter().any(|t| t.recipients.iter().any(|r| r == rcpt))
    });
}

#[test]
fn a_held_message_is_never_delivered_until_released() {
    let sink = Sink::plain();
    let mut node = start_for(&sink, "");
    // Its first attempt is deferred (451): it then waits an hour.
    let held = send_from(&node, "alice@example.org", "flaky-held@one.test", &data(1));
    wait_for("the first attempt", || all_attempted(&node, 1));
    let one = BTreeSet::from([held.clone()]);

    let dry = curl(&node, "POST", &format!("/queue/hold?id={held}&dry_run=true"), &[]);
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(
        (dry.json()["held"].as_u64(), dry.json()["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(listed(&node, "state=held"), BTreeSet::new(), "a dry run holds nothing");
    let (code, out, err) = cli(&node, &["queue", "hold", &held]);
    assert_eq!((code, out.as_str()), (Some(0), "held 1 message\n"), "{err}");
    assert_eq!(listed(&node, "state=held"), one);
    assert_eq!(listed(&node, "state=deferred"), BTreeSet::new(), "held is neither deferred...");
    assert_eq!(listed(&node, "state=active"), BTreeSet::new(), "... nor active");
    assert!(get(&node, &format!("/queue/{held}")).json()["held_since"].is_string());
    let (_, out, _) = cli(&node, &["queue", "list"]);
    assert!(out.contains("<flaky-held@one.test> held (1 attempt)"), "{out}");
    // Held already: nothing to do.
    let again = curl(&node, "POST", &format!("/queue/hold?id={held}"), &[]).json();
    assert_eq!(again["held"], 0, "{again}");

    // A requeue of everything passes it by: the mail sent after the requeue, dispatched after
    // it, arrives, and the held message was not tried.
    let (code, _, err) = cli(&node, &["queue", "requeue", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    delivered_through(&node, &sink, "ok-after-requeue@one.test");
    assert_eq!(sink.rcpts_for("flaky-held@one.test"), 1, "a held message was tried");

    // Still held after a restart.
    node.stop();
    node.launch();
    wait_for_admin(&node);
    delivered_through(&node, &sink, "ok-after-restart@one.test");
    assert_eq!(sink.rcpts_for("flaky-held@one.test"), 1, "a held message was tried");
    assert_eq!(listed(&node, "state=held"), one);

    // Released: tried at once (the flaky recipient takes it the second time).
    let dry = curl(&node, "POST", "/queue/release?all=true&dry_run=true", &[]).json();
    assert_eq!(
        (dry["released"].as_u64(), &dry["ids"]),
        (Some(1), &serde_json::json!([held])),
        "{dry}"
    );
    let (code, out, err) = cli(&node, &["queue", "release", "--sender", "alice@example.org"]);
    assert_eq!((code, out.as_str()), (Some(0), "released 1 message\n"), "{err}");
    wait_for("the released message delivered", || {
        sink.rcpts_for("flaky-held@one.test") == 2
            && get(&node, "/queue").json() == Value::Array(vec![])
    });

    // No selector: bad usage, and a 400.
    assert_eq!(cli(&node, &["queue", "hold"]).0, Some(2));
    assert_eq!(cli(&node, &["queue", "release", "--dry-run"]).0, Some(2));
    let bare = curl(&node, "POST", "/queue/hold", &[]);
    assert_eq!(bare.status, 400, "{}", bare.body);
    let missing = curl(&node, "POST", &format!("/queue/release?id={}", "0".repeat(32)), &[]);
    assert_eq!(missing.status, 404, "{}", missing.body);
}

/// The attempts of message `id`'s only recipient on `node`.
fn tries(node: &Node, id: &str) -> u64 {
    attempts(node).into_iter().find(|(i, _)| i == id).map(|(_, n)| n).expect("queued")
}

#[test]
fn a_hold_reaches_the_standby_by_log_and_snapshot_and_outlives_a_failover() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let held = send_from(pair.primary(), "bob@example.org", "y@two.test", &data(0));
    let others = send_many(pair.primary(), 2, "alice@example.org", "x@one.test");
    pair.wait_settled(3);
    let one = BTreeSet::from([held.clone()]);

    // The standby answers a dry run from its copy, and refuses the real thing.
    let standby = pair.standby();
    let dry = curl(standby, "POST", "/queue/hold?sender=bob%40example.org&dry_run=true", &[]);
    assert_eq!((dry.status, dry.json()["held"].as_u64()), (200, Some(1)), "{}", dry.body);
    let refused = curl(standby, "POST", &format!("/queue/hold?id={held}"), &[]);
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(curl(standby, "POST", "/queue/release?all=true", &[]).status, 409);
    let (code, _, err) = cli(standby, &["queue", "hold", "--all"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("HTTP 409"), "{err}");

    // Held on the primary: the Held record reaches the standby.
    let (code, out, err) = cli(pair.primary(), &["queue", "hold", "--sender", "bob@example.org"]);
    assert_eq!((code, out.as_str()), (Some(0), "held 1 message\n"), "{err}");
    wait_for("the hold on the standby", || listed(pair.standby(), "state=held") == one);

    // A standby rebuilt from a snapshot gets the hold with the messages.
    pair.standby_mut().stop();
    pair.standby().wipe_data();
    pair.standby_mut().launch();
    pair.wait_links_up(2);
    pair.wait_caught_up();
    assert!(count(&pair.primary().log(), "sending a snapshot to the standby") >= 1);
    assert_eq!(ids(&get(pair.standby(), "/queue").json()).len(), 3);
    assert_eq!(listed(pair.standby(), "state=held"), one);

    // The primary dies; the promoted standby keeps the message held: two requeues of
    // everything try the others twice more, the held one not at all.
    pair.primary_mut().kill9();
    let standby = pair.standby();
    let (code, _, err) = cli(standby, &["promote", "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(listed(standby, "state=held"), one);
    for round in [2, 3] {
        let (code, _, err) = cli(standby, &["queue", "requeue", "--all"]);
        assert_eq!(code, Some(0), "{err}");
        wait_for(&format!("the others tried {round} times"), || {
            others.iter().all(|id| tries(standby, id) == round)
        });
    }
    assert_eq!(tries(standby, &held), 1, "the held message was tried on the new primary");
    let (code, out, err) = cli(standby, &["queue", "release", &held]);
    assert_eq!((code, out.as_str()), (Some(0), "released 1 message\n"), "{err}");
    wait_for("the released message tried", || tries(standby, &held) == 2);
}

/// The DSNs at the sink for `sender`.
fn dsns_to(sink: &Sink, sender: &str) -> usize {
    dsns(sink).iter().filter(|t| t.recipients.iter().any(|r| r == sender)).count()
}

#[test]
fn bounce_now_reports_every_pending_recipient_to_the_sender_but_never_to_the_null_sender() {
    let sink = Sink::plain();
    let node = start_for(&sink, "");
    // Deferred at their first attempt (451), then an hour away from the next.
    let both = send_many_to(&node, "sender@client.test", &["defer-a@one.test", "defer-b@two.test"]);
    let null = send_from(&node, "", "defer-c@one.test", &data(2));
    let bob = send_from(&node, "bob@client.test", "defer-d@one.test", &data(3));
    wait_for("every message tried once", || all_attempted(&node, 3));

    let dry = curl(&node, "POST", "/queue/bounce?sender=sender%40client.test&dry_run=true", &[]);
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(
        (dry.json()["bounced"].as_u64(), &dry.json()["ids"]),
        (Some(1), &serde_json::json!([both]))
    );
    assert_eq!(ids(&get(&node, "/queue").json()).len(), 3, "a dry run bounces nothing");

    let bounced = curl(&node, "POST", &format!("/queue/bounce?id={both}"), &[]).json();
    assert_eq!(bounced["bounced"], 1, "{bounced}");
    wait_for("the DSN to the sender", || dsns_to(&sink, "sender@client.test") == 1);
    let dsn =
        dsns(&sink).into_iter().find(|t| t.recipients == ["sender@client.test"]).expect("DSN");
    let report = dsn_report(&dsn);
    let context = format!("{report:#}\n{}", String::from_utf8_lossy(&dsn.body));
    assert_eq!(report["content_type"], "multipart/report", "{context}");
    assert_eq!(report["defects"], serde_json::json!([]), "{context}");
    let recipients = report["recipients"].as_array().expect("recipients");
    let finals: Vec<&str> =
        recipients.iter().map(|r| r["Final-Recipient"].as_str().expect("field")).collect();
    assert_eq!(finals, ["rfc822; defer-a@one.test", "rfc822; defer-b@two.test"], "{context}");
    for fields in recipients {
        assert_eq!(
            (&fields["Action"], &fields["Status"]),
            (&Value::from("failed"), &Value::from("5.0.0")),
            "{context}"
        );
        let diagnostic = fields["Diagnostic-Code"].as_str().expect("Diagnostic-Code");
        assert!(diagnostic.contains("bounced by the mail system's operator"), "{context}");
    }
    assert_eq!(report["original_headers"]["Subject"], "queue test 0", "{context}");

    // The null sender's message goes without a DSN: bounced through the CLI, then bob's, whose
    // DSN arrives after any the first would have made (one delivery at a time).
    let (code, out, err) = cli(&node, &["queue", "bounce", "--sender", ""]);
    assert_eq!((code, out.as_str()), (Some(0), "bounced 1 message\n"), "{err}");
    let (code, out, err) = cli(&node, &["queue", "bounce", &bob]);
    assert_eq!((code, out.as_str()), (Some(0), "bounced 1 message\n"), "{err}");
    wait_for("the DSN to bob", || dsns_to(&sink, "bob@client.test") == 1);
    assert_eq!(dsns(&sink).len(), 2, "a DSN for the null sender's message");
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains(&null) && l.contains("<defer-c@one.test>") && l.contains("bounced"))
        .unwrap_or_else(|| panic!("no bounced line for {null}:\n{log}"));
    assert!(line.contains("dsn=5.0.0"), "{line}");
    wait_for("an empty queue (the DSNs delivered)", || {
        get(&node, "/queue").json() == Value::Array(vec![])
    });
    assert_eq!(cli(&node, &["queue", "bounce"]).0, Some(2));
    assert_eq!(curl(&node, "POST", "/queue/bounce", &[]).status, 400);
}

/// Sends one message from `sender` to every one of `rcpts`; its queue id.
fn send_many_to(node: &Node, sender: &str, rcpts: &[&str]) -> String {
    let mut smtp = crate::common::Raw::greeted(node.addr());
    let reply = smtp.send_message(&format!("<{sender}>"), rcpts, &data(0));
    assert!(reply.starts_with("250 "), "{reply}");
    reply.split_whitespace().last().expect("queue id in the 250 reply").to_string()
}

#[test]
fn a_message_held_past_its_lifetime_is_not_expired_and_gets_one_attempt_at_its_release() {
    let sink = Sink::plain();
    let node = start_for(&sink, "max_queue_lifetime = \"2s\"");
    let sent = std::time::Instant::now();
    let late = send_from(&node, "sender@client.test", "defer-late@one.test", &data(4));
    wait_for("the first attempt", || all_attempted(&node, 1));
    let (code, _, err) = cli(&node, &["queue", "hold", &late]);
    assert_eq!(code, Some(0), "{err}");
    // Past its lifetime, held: a requeue of everything passes it by (not held, it would be
    // tried and bounced as expired), and the mail sent after the requeue arrives.
    wait_for("the message's lifetime to pass", || {
        sent.elapsed() > std::time::Duration::from_millis(2500)
    });
    let (code, _, err) = cli(&node, &["queue", "requeue", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    delivered_through(&node, &sink, "ok-meanwhile@one.test");
    assert_eq!(sink.rcpts_for("defer-late@one.test"), 1, "tried while held");
    assert_eq!(dsns_to(&sink, "sender@client.test"), 0, "expired while held");
    assert_eq!(listed(&node, "state=held"), BTreeSet::from([late.clone()]));

    // Released: one attempt, deferred again (451), and so bounced as expired (Postfix's way).
    let (code, _, err) = cli(&node, &["queue", "release", &late]);
    assert_eq!(code, Some(0), "{err}");
    wait_for("the expiry DSN", || dsns_to(&sink, "sender@client.test") == 1);
    assert_eq!(sink.rcpts_for("defer-late@one.test"), 2, "one attempt at the release");
    let dsn =
        dsns(&sink).into_iter().find(|t| t.recipients == ["sender@client.test"]).expect("DSN");
    let report = dsn_report(&dsn);
    assert_eq!(report["recipients"][0]["Status"], "4.4.7", "{report:#}");
    assert!(!ids(&get(&node, "/queue").json()).contains(&late), "the expired message left");
}

#[test]
fn a_bounce_waits_for_a_delivery_in_flight_and_does_not_report_what_it_delivered() {
    let sink = Sink::plain();
    // The sink takes the body and holds its reply: the delivery is in flight.
    sink.hold();
    let node = start_for(&sink, "");
    let id = send_from(&node, "sender@client.test", "ok-in-flight@one.test", &data(5));
    wait_for("the body at the sink, its reply held", || sink.transaction_count() == 1);
    std::thread::scope(|scope| {
        let bounce = scope.spawn(|| curl(&node, "POST", &format!("/queue/bounce?id={id}"), &[]));
        wait_for("the bounce to wait for the delivery", || {
            node.log().contains("bounce waits for the deliveries in flight")
        });
        sink.release();
        let answer = bounce.join().expect("the bounce's thread");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["bounced"], 0, "a delivered message bounced: {}", answer.body);
    });
    assert_eq!(get(&node, "/queue").json(), Value::Array(vec![]), "a DSN queued");
    assert!(dsns(&sink).is_empty(), "a DSN for a delivered recipient");
}

#[test]
fn bounce_now_honours_the_senders_dsn_request() {
    let sink = Sink::plain();
    let node = start_for(&sink, "");
    let mut smtp = crate::common::Raw::greeted(node.addr());
    for (command, expected) in [
        ("MAIL FROM:<sender@client.test> ENVID=op-bounce-1", "250"),
        ("RCPT TO:<defer-never@one.test> NOTIFY=NEVER", "250"),
        ("RCPT TO:<defer-told@one.test> NOTIFY=FAILURE ORCPT=rfc822;told+40one.test", "250"),
        ("DATA", "354"),
    ] {
        let reply = smtp.cmd(command);
        assert!(reply.starts_with(expected), "{command}: {reply}");
    }
    let reply = smtp.cmd(&format!("{}.", data(6)));
    assert!(reply.starts_with("250 "), "{reply}");
    let id = reply.split_whitespace().last().expect("queue id").to_string();
    wait_for("the first attempt", || all_attempted(&node, 1));

    let (code, out, err) = cli(&node, &["queue", "bounce", &id]);
    assert_eq!((code, out.as_str()), (Some(0), "bounced 1 message\n"), "{err}");
    wait_for("the failure report", || dsns_to(&sink, "sender@client.test") == 1);
    let dsn = dsns(&sink).remove(0);
    let report = dsn_report(&dsn);
    let context = format!("{report:#}\n{}", String::from_utf8_lossy(&dsn.body));
    assert_eq!(report["per_message"]["Original-Envelope-Id"], "op-bounce-1", "{context}");
    let recipients = report["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 1, "NOTIFY=NEVER reported: {context}");
    assert_eq!(recipients[0]["Final-Recipient"], "rfc822; defer-told@one.test", "{context}");
    assert_eq!(recipients[0]["Original-Recipient"], "rfc822;told@one.test", "{context}");
    assert_eq!(recipients[0]["Status"], "5.0.0", "{context}");
    wait_for("an empty queue", || get(&node, "/queue").json() == Value::Array(vec![]));
}
