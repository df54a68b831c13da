//! The DSN extension (RFC 3461) against the real binary: messages sent with Python's smtplib
//! (its mail_options and rcpt_options), relayed to the scripted sink with and without DSN in
//! its EHLO, and the reports relayd sends read by Python's email package
//! (tests/peers/dsn_report.py). A pair test shows the DSN request reaching the standby through
//! the log and through a snapshot.

use serde_json::Value;

use crate::common::cluster::{CLOSED, Pair, Trio, TrioOptions, count, sever, try_status};
use crate::common::sink::{Options, Sink, Transaction};
use crate::common::{self, Node, Raw, wait_for};
use crate::delivery::{
    Mail, dsn_report, dsns, field, has, logged, node_for, state, wait_explained,
};
use crate::failover::{wait_following, wait_log, wait_role};

/// Sends `mail` to `node` with smtplib, with these MAIL parameters and these parameters on
/// every RCPT; returns the queue id. smtplib must have seen DSN in relayd's EHLO.
fn send(node: &Node, mail: &Mail, mail_options: &[&str], rcpt_options: &[&str]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), mail.text()).expect("write the message");
    let port = node.addr().port().to_string();
    let rcpts = mail.to.join(",");
    let mut args =
        vec!["127.0.0.1", &port, &mail.from, &rcpts, file.path().to_str().expect("utf-8")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
    args.extend(mail_options.iter().map(|o| format!("--mail-option={o}")));
    args.extend(rcpt_options.iter().map(|o| format!("--rcpt-option={o}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::smtplib(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "smtplib: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.lines().any(|l| l == "ext DSN"), "DSN offered in EHLO: {text}");
    let last = text.lines().last().unwrap_or_default();
    let id = last.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{text}"));
    id.trim().to_string()
}

/// The reports at the sink about the message `id` (their X-Relayd-Queue-ID), parsed.
fn reports_about(sink: &Sink, id: &str) -> Vec<(Transaction, Value)> {
    dsns(sink)
        .into_iter()
        .filter(|t| String::from_utf8_lossy(&t.body).contains(&format!("X-Relayd-Queue-ID: {id}")))
        .map(|t| {
            let report = dsn_report(&t);
            (t, report)
        })
        .collect()
}

/// The "accepted DSN" log lines of reports about `id`.
fn accepted_reports(node: &Node, id: &str) -> Vec<String> {
    let needle = format!("orig_id={id}");
    node.log()
        .lines()
        .filter(|l| l.contains("accepted DSN") && l.contains(&needle))
        .map(String::from)
        .collect()
}

#[test]
fn bad_or_repeated_dsn_parameters_are_refused_with_501() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"1h\"]");
    let mut smtp = Raw::greeted(node.addr());
    for bad in [
        "MAIL FROM:<a@client.test> RET=PART",
        "MAIL FROM:<a@client.test> RET=FULL RET=HDRS",
        "MAIL FROM:<a@client.test> ENVID=two=signs",
    ] {
        assert!(smtp.cmd(bad).starts_with("501 5.5.4"), "{bad}");
    }
    assert!(smtp.cmd("MAIL FROM:<a@client.test> RET=HDRS ENVID=x+2By").starts_with("250"));
    for bad in [
        "RCPT TO:<ok@dest.test> NOTIFY=NEVER,FAILURE",
        "RCPT TO:<ok@dest.test> NOTIFY=DELAY NOTIFY=SUCCESS",
        "RCPT TO:<ok@dest.test> ORCPT=ok@dest.test",
        "RCPT TO:<ok@dest.test> NOTIFY=SOMETIMES",
    ] {
        assert!(smtp.cmd(bad).starts_with("501 5.5.4"), "{bad}");
    }
    assert!(
        smtp.cmd("RCPT TO:<ok@dest.test> NOTIFY=NEVER ORCPT=rfc822;ok+40dest.test")
            .starts_with("250")
    );
    assert!(smtp.cmd("QUIT").starts_with("221"));
    assert_eq!(node.stop(), Some(0));
}

/// NOTIFY=NEVER: bounced, and no report. NOTIFY=FAILURE with RET=HDRS, ENVID and ORCPT: a
/// failure report whose delivery-status part names the envelope id and the original recipient
/// and returns the headers only. RET=FULL: the message itself comes back.
#[test]
fn failure_reports_follow_notify_ret_envid_and_orcpt() {
    let sink = Sink::plain();
    // One delivery at a time: the NEVER message is recorded before the others are tried.
    let mut node = node_for(&sink, "retry = [\"1h\"]\nconcurrency_per_host = 1");
    let never = send(
        &node,
        &Mail::new("s@client.test", &["reject-never@dest.test"], "never"),
        &[],
        &["NOTIFY=NEVER"],
    );
    let hdrs = send(
        &node,
        &Mail::new("s@client.test", &["reject-hdrs@dest.test"], "hdrs"),
        &["RET=HDRS", "ENVID=QQ+2B314159"],
        &["NOTIFY=FAILURE", "ORCPT=rfc822;Original+2BRcpt@dest.test"],
    );
    let full = send(
        &node,
        &Mail::new("s@client.test", &["reject-full@dest.test"], "full"),
        &["RET=FULL"],
        &[],
    );
    wait_explained(
        "the two failure reports",
        || reports_about(&sink, &hdrs).len() == 1 && reports_about(&sink, &full).len() == 1,
        || state(&node, &sink),
    );
    let log = node.log();
    assert_eq!(logged(&log, "bounced", &never, "reject-never@dest.test").len(), 1, "{log}");
    assert_eq!(accepted_reports(&node, &never), Vec::<String>::new(), "NEVER: no report");

    let (_, report) = reports_about(&sink, &hdrs).remove(0);
    assert_eq!(
        report["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "text/rfc822-headers"]),
        "{report:#}"
    );
    assert_eq!(report["defects"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["per_message"]["Original-Envelope-Id"], "QQ+314159", "{report:#}");
    let recipient = &report["recipients"][0];
    assert_eq!(recipient["Original-Recipient"], "rfc822;Original+Rcpt@dest.test", "{report:#}");
    assert_eq!(recipient["Final-Recipient"], "rfc822; reject-hdrs@dest.test", "{report:#}");
    assert_eq!(recipient["Action"], "failed", "{report:#}");
    assert_eq!(recipient["Status"], "5.1.1", "{report:#}");
    assert_eq!(report["original_headers"]["Subject"], "hdrs", "{report:#}");

    let (_, report) = reports_about(&sink, &full).remove(0);
    assert_eq!(
        report["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"]),
        "{report:#}"
    );
    assert_eq!(report["original_headers"]["Subject"], "full", "{report:#}");
    let body = report["original_body"].as_str().unwrap_or_default();
    assert!(body.contains("This is full."), "the message comes back whole: {report:#}");
    assert!(report["per_message"].get("Original-Envelope-Id").is_none(), "{report:#}");
    assert!(report["recipients"][0].get("Original-Recipient").is_none(), "{report:#}");

    assert_eq!(node.stop(), Some(0));
    assert_eq!(dsns(&sink).len(), 2, "two reports in all");
}

/// NOTIFY=SUCCESS to a next hop without DSN: relayd sends a "relayed" report itself, and passes
/// no DSN parameter to the hop.
#[test]
fn success_at_a_next_hop_without_dsn_is_reported_as_relayed() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"1h\"]");
    let id = send(
        &node,
        &Mail::new("s@client.test", &["ok-relayed@dest.test"], "relayed"),
        &["ENVID=relayed-1"],
        &["NOTIFY=SUCCESS", "ORCPT=rfc822;ok-relayed@dest.test"],
    );
    wait_explained(
        "the relayed report",
        || reports_about(&sink, &id).len() == 1,
        || state(&node, &sink),
    );
    let (report_mail, report) = reports_about(&sink, &id).remove(0);
    assert_eq!(report_mail.recipients, ["s@client.test"]);
    assert_eq!(report["report_type"], "delivery-status", "{report:#}");
    assert_eq!(report["defects"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["per_message"]["Original-Envelope-Id"], "relayed-1", "{report:#}");
    let recipient = &report["recipients"][0];
    assert_eq!(recipient["Action"], "relayed", "{report:#}");
    assert_eq!(recipient["Status"], "2.0.0", "{report:#}");
    assert_eq!(recipient["Original-Recipient"], "rfc822;ok-relayed@dest.test", "{report:#}");
    let original = sink
        .transactions()
        .into_iter()
        .find(|t| t.header("Subject").as_deref() == Some("relayed"))
        .expect("the message at the sink");
    assert!(!original.mail_params.contains("RET=") && !original.mail_params.contains("ENVID="));
    assert_eq!(original.rcpt_params, [""], "nothing passed to a hop without DSN");
    let line = &accepted_reports(&node, &id)[0];
    assert_eq!(field(line, "report"), "relayed", "{line}");
    assert_eq!(node.stop(), Some(0));
}

/// To a next hop that offers DSN, RET and ENVID go on MAIL and NOTIFY and ORCPT on RCPT
/// (xtext-encoded again); reporting success is then that hop's job, not relayd's.
#[test]
fn dsn_parameters_are_passed_to_a_next_hop_that_offers_dsn() {
    let sink = Sink::start("127.0.0.1:0", Options { dsn: true, ..Options::default() });
    let mut node = node_for(&sink, "retry = [\"1h\"]");
    let id = send(
        &node,
        &Mail::new("s@client.test", &["ok-passed@dest.test"], "passed"),
        &["RET=HDRS", "ENVID=abc+2Bdef"],
        &["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;first+2Blast@dest.test"],
    );
    wait_explained(
        "the delivery",
        || has(&node, "delivered", &id, "ok-passed@dest.test"),
        || state(&node, &sink),
    );
    let original = sink.transactions().remove(0);
    assert!(original.mail_params.ends_with(" RET=HDRS ENVID=abc+2Bdef"), "{original:?}");
    assert_eq!(original.rcpt_params, [" NOTIFY=SUCCESS,DELAY ORCPT=rfc822;first+2Blast@dest.test"]);
    assert_eq!(node.stop(), Some(0));
    assert!(accepted_reports(&node, &id).is_empty(), "no relayed report: {}", node.log());
    assert_eq!(dsns(&sink).len(), 0);
}

/// NOTIFY=DELAY: once the message has been queued longer than delay_warning_time, the first
/// deferral sends a delay report; the later ones send none.
#[test]
fn a_delay_report_is_sent_once() {
    let sink = Sink::plain();
    let keys = "retry = [\"200ms\"]\nmax_queue_lifetime = \"1h\"\ndelay_warning_time = \"1ms\"";
    let mut node = node_for(&sink, keys);
    let rcpt = "defer-delay@dest.test";
    let id = send(
        &node,
        &Mail::new("s@client.test", &[rcpt], "delayed"),
        &["ENVID=delay-1"],
        &["NOTIFY=DELAY,FAILURE"],
    );
    wait_explained(
        "three deferrals",
        || logged(&node.log(), "deferred", &id, rcpt).len() >= 3,
        || state(&node, &sink),
    );
    // The report was committed with the first deferral's results; it reaches the sink.
    wait_explained(
        "the delay report",
        || !reports_about(&sink, &id).is_empty(),
        || state(&node, &sink),
    );
    assert_eq!(node.stop(), Some(0));
    let reports = reports_about(&sink, &id);
    assert_eq!(reports.len(), 1, "one delay report, not one per deferral");
    assert_eq!(accepted_reports(&node, &id).len(), 1, "{}", node.log());
    let (_, report) = &reports[0];
    assert_eq!(report["defects"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["per_message"]["Original-Envelope-Id"], "delay-1", "{report:#}");
    let recipient = &report["recipients"][0];
    assert_eq!(recipient["Action"], "delayed", "{report:#}");
    assert_eq!(recipient["Status"], "4.3.0", "{report:#}");
    assert_eq!(report["original_headers"]["Subject"], "delayed", "{report:#}");
    // The recipient is still queued, its delay report marked sent.
    let dsn = node.spool().dsn(id.parse().expect("queue id")).expect("read").expect("stored");
    assert!(dsn.recipients[0].delay_reported, "{dsn:?}");
}

/// A message accepted with DSN parameters on the primary has them on the standby: through the
/// log, and through the snapshot a standby with an empty data_dir is rebuilt from.
#[test]
fn the_dsn_request_reaches_the_standby_through_the_log_and_a_snapshot() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let id = send(
        pair.primary(),
        &Mail::new("s@client.test", &["u1@example.com", "u2@example.com"], "pair"),
        &["RET=HDRS", "ENVID=pair-1"],
        &["NOTIFY=DELAY,FAILURE", "ORCPT=rfc822;orig@example.com"],
    );
    let id: relayd::spool::QueueId = id.parse().expect("queue id");
    pair.wait_settled(1);
    let expected = |node: &Node| {
        let dsn = node.spool().dsn(id).expect("read").expect("the DSN request is there");
        assert_eq!(dsn.envid.as_deref(), Some("pair-1"));
        assert_eq!(dsn.ret, Some(relayd::proto::dsn::Ret::Headers));
        assert_eq!(dsn.recipients.len(), 2);
        for recipient in &dsn.recipients {
            let notify = recipient.request.notify.expect("NOTIFY");
            assert!(notify.delay && notify.failure && !notify.success, "{dsn:?}");
            let orcpt = recipient.request.orcpt.as_ref().expect("ORCPT");
            assert_eq!(orcpt.to_string(), "rfc822;orig@example.com");
        }
    };
    pair.standby_mut().stop();
    pair.wait_disconnected();
    expected(pair.standby());
    pair.standby().wipe_data();
    pair.standby_mut().launch();
    wait_for("the standby to install a snapshot", || {
        count(&pair.standby().log(), "snapshot installed") == 2
    });
    pair.wait_settled(1);
    assert_eq!(pair.primary_mut().stop(), Some(0));
    assert_eq!(pair.standby_mut().stop(), Some(0));
    expected(pair.primary());
    expected(pair.standby());
}

/// A message acknowledged by a primary that never replicated it (async, its link cut), killed
/// then: the new primary salvages it from the returning old one with its DSN request, and,
/// delivering it to a next hop without DSN, sends the relayed report its NOTIFY=SUCCESS asked
/// for, with its ENVID. (`a` delivers to a closed port: the message is still queued there.)
#[test]
fn a_salvaged_message_keeps_its_dsn_request() {
    let options = TrioOptions { replication: "async", ..TrioOptions::default() };
    let closed: std::net::SocketAddr = CLOSED.parse().expect("an address");
    let mut trio = Trio::start_with(options, Some(closed));
    wait_following(&trio.a, "b to follow a");
    sever(&trio.ab);
    wait_for("a to see b gone", || {
        try_status(&trio.a).is_some_and(|s| s["peer"]["connected"] == false)
    });
    let mail = Mail::new("s@client.test", &["ok-salvaged@failover.test"], "salvaged");
    let id = send(&trio.a, &mail, &["ENVID=salvaged-1"], &["NOTIFY=SUCCESS"]);
    trio.a.kill9();
    wait_log(&trio.b, "b promoted", "promoted epoch=2", 1);
    wait_role(&trio.b, "b", "primary", 2);
    trio.ab.unblock();
    trio.a.launch();
    wait_log(&trio.b, "b takes what a alone held", "salvaged a message", 1);
    wait_for("the relayed report from b", || reports_about(&trio.sink, &id).len() == 1);
    let (_, report) = reports_about(&trio.sink, &id).remove(0);
    assert_eq!(report["per_message"]["Original-Envelope-Id"], "salvaged-1", "{report:#}");
    assert_eq!(report["recipients"][0]["Action"], "relayed", "{report:#}");
    assert_eq!(accepted_reports(&trio.b, &id).len(), 1, "b sent it: {}", trio.b.log());
}
