//! Postfix as relayd's peer: a private Postfix instance relays through relayd with its smtp(8)
//! client, and smtp-source (Postfix's load generator) sends many messages over many connections
//! and over one.

use crate::common;

use std::collections::HashMap;

use common::postfix::Postfix;
use common::{Node, run};

/// A test message with LF line ends, as a local program hands it to sendmail.
struct Message {
    message_id: &'static str,
    subject: &'static str,
    recipients: &'static [&'static str],
    text: String,
}

impl Message {
    fn new(
        message_id: &'static str,
        subject: &'static str,
        recipients: &'static [&'static str],
        extra_headers: &str,
        body: &str,
    ) -> Message {
        let text = format!(
            "From: Sender <sender@client.test>\nTo: {to}\nSubject: {subject}\n\
             Date: Mon, 24 Nov 2025 10:00:00 +0000\nMessage-ID: <{message_id}>\n\
             {extra_headers}\n{body}",
            to = recipients.join(", "),
        );
        Message { message_id, subject, recipients, text }
    }

    /// What goes over SMTP, and so what relayd stores after the Received: headers: CRLF lines.
    fn on_the_wire(&self) -> Vec<u8> {
        self.text.replace('\n', "\r\n").into_bytes()
    }
}

fn messages() -> Vec<Message> {
    // ~200 KiB of 77-byte lines: many TCP segments, many relayd body chunks.
    let large: String = (0..2700)
        .map(|i| format!("{i:05} {}\n", "abcdefghijklmnopqrstuvwxyz0123456789".repeat(2)))
        .collect();
    vec![
        Message::new("large@client.test", "large", &["rcpt@example.com"], "", &large),
        Message::new(
            "dots@client.test",
            "dots",
            &["one@example.com", "two@example.com"],
            "",
            "first line\n.leading dot\n..two dots\n.\n...\n. space\nlast line\n",
        ),
        Message::new(
            "utf8@client.test",
            "eight-bit",
            &["rcpt@example.com"],
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
             Content-Transfer-Encoding: 8bit\n",
            "Grüße, ça va? 日本語\nÜnïcödé\n",
        ),
    ]
}

/// The lines that Postfix's smtp(8) logged for the dialogue with `peer` (with debug_peer_list):
/// ("> ", command) for what it sent, ("< ", reply line) for what it read.
fn dialogue<'a>(log: &'a str, peer: &str) -> Vec<(&'a str, &'a str)> {
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| l.contains("postfix/smtp[")) {
        for direction in ["> ", "< "] {
            let marker = format!("]: {direction}{peer}: ");
            if let Some(at) = line.find(&marker) {
                lines.push((direction, &line[at + marker.len()..]));
            }
        }
    }
    lines
}

/// From Postfix's log: Message-ID -> (relayd's queue id, the recipients Postfix says it sent).
fn relayed(log: &str, peer: &str) -> HashMap<String, (String, Vec<String>)> {
    let mut message_ids = HashMap::new(); // Postfix queue id -> Message-ID
    let mut sent: Vec<(&str, String, String)> = Vec::new(); // Postfix queue id, rcpt, relayd id
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("]: ") else {
            continue;
        };
        let Some((queue_id, entry)) = rest.split_once(": ") else {
            continue;
        };
        if let Some(id) = entry.strip_prefix("message-id=<") {
            message_ids.insert(queue_id, id.trim_end_matches('>').to_string());
        } else if let Some(to) = entry.strip_prefix("to=<") {
            let rcpt = to.split('>').next().expect("rcpt").to_string();
            assert!(entry.contains(&format!("relay={peer},")), "{line}");
            let status = "status=sent (250 2.0.0 Ok: queued as ";
            let at =
                entry.find(status).unwrap_or_else(|| panic!("not sent with relayd's 250: {line}"));
            let relayd_id = entry[at + status.len()..].trim_end_matches(')').to_string();
            sent.push((queue_id, rcpt, relayd_id));
        }
    }
    let mut by_message_id: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for (queue_id, rcpt, relayd_id) in sent {
        let message_id = message_ids
            .get(queue_id)
            .unwrap_or_else(|| panic!("no message-id logged for {queue_id}"));
        let entry = by_message_id
            .entry(message_id.clone())
            .or_insert_with(|| (relayd_id.clone(), Vec::new()));
        assert_eq!(entry.0, relayd_id, "{message_id}: all recipients in one relayd transaction");
        entry.1.push(rcpt);
    }
    by_message_id
}

/// Postfix's smtp(8) relays three messages through relayd: a large one, one with dot-leading
/// lines (dot-stuffed by Postfix, unstuffed by relayd) and an 8-bit UTF-8 one.
///
/// relayd announces CHUNKING, but Postfix 3.7's SMTP client has no BDAT support at all (only
/// its smtpd implements RFC 3030), so Postfix always sends DATA; the dialogue Postfix logs
/// shows which command carried each message, and the test accepts either.
#[test]
fn postfix_relays_through_relayd() {
    let mut node = Node::relay("");
    let postfix = Postfix::start(node.smtp_port);
    let messages = messages();
    let recipients: usize = messages.iter().map(|m| m.recipients.len()).sum();
    for message in &messages {
        postfix.sendmail("sender@client.test", message.recipients, message.text.as_bytes());
    }
    wait_for_postfix(&postfix, &mut node, recipients);
    let log = postfix.log();
    let peer = format!("127.0.0.1[127.0.0.1]:{}", node.smtp_port);

    // What Postfix's smtp(8) said to relayd, and what relayd answered.
    let talk = dialogue(&log, &peer);
    let replies: Vec<&str> = talk.iter().filter(|(d, _)| *d == "< ").map(|(_, l)| *l).collect();
    let commands: Vec<&str> = talk.iter().filter(|(d, _)| *d == "> ").map(|(_, l)| *l).collect();
    assert!(
        replies.iter().any(|r| *r == "250 CHUNKING" || *r == "250-CHUNKING"),
        "relayd announces CHUNKING to Postfix: {replies:#?}"
    );
    let mails = commands.iter().filter(|c| c.starts_with("MAIL FROM:<sender@client.test>")).count();
    let data = commands.iter().filter(|c| **c == "DATA").count();
    let bdat_last =
        commands.iter().filter(|c| c.starts_with("BDAT ") && c.ends_with(" LAST")).count();
    assert_eq!(mails, messages.len(), "{commands:#?}");
    assert_eq!(
        data + bdat_last,
        messages.len(),
        "each message went with DATA or ended with BDAT LAST: {commands:#?}"
    );
    assert!(
        commands.iter().any(|c| c.starts_with("MAIL FROM:") && c.contains(" BODY=8BITMIME")),
        "Postfix declares the 8-bit message: {commands:#?}"
    );

    // Every recipient was sent with relayd's own 250 reply; relayd logged each acceptance.
    let relayed = relayed(&log, &peer);
    assert_eq!(relayed.len(), messages.len(), "{relayed:?}");
    let relayd_log = node.log();
    for (relayd_id, _) in relayed.values() {
        assert!(
            relayd_log.lines().any(|l| l.contains("accepted") && l.contains(relayd_id.as_str())),
            "relayd logged accepting {relayd_id}:\n{relayd_log}"
        );
    }

    assert_eq!(node.stop(), Some(0), "SIGTERM exits 0");
    let queued = node.queued();
    assert_eq!(queued.len(), messages.len());
    for message in &messages {
        let (relayd_id, sent_to) = &relayed[message.message_id];
        let mut sent_to = sent_to.clone();
        sent_to.sort();
        let mut expected_to: Vec<String> =
            message.recipients.iter().map(|r| r.to_string()).collect();
        expected_to.sort();
        assert_eq!(sent_to, expected_to, "{}", message.subject);
        let (record, stored) = queued
            .iter()
            .find(|(m, _)| m.envelope.id.to_string() == *relayd_id)
            .unwrap_or_else(|| panic!("{relayd_id} is queued"));
        assert_eq!(record.envelope.sender, "sender@client.test");
        let mut recipients = record.envelope.recipients.clone();
        recipients.sort();
        assert_eq!(recipients, expected_to);
        assert_eq!(record.envelope.size, stored.len() as u64);
        assert_eq!(
            record.envelope.eight_bit,
            message.subject == "eight-bit",
            "8BITMIME recorded for {} only",
            message.subject
        );

        // relayd's Received:, then Postfix's, then the message exactly as submitted.
        let after_ours = Node::without_received(stored);
        let ours = String::from_utf8_lossy(&stored[..stored.len() - after_ours.len()]);
        assert!(ours.contains(&format!("with ESMTP id {relayd_id}")), "{ours}");
        assert!(ours.contains("from postfix.test ("), "{ours}");
        let original = Node::without_received(after_ours);
        let theirs = String::from_utf8_lossy(&after_ours[..after_ours.len() - original.len()]);
        assert!(theirs.contains("by postfix.test (Postfix"), "{theirs}");
        common::assert_same_bytes(
            original,
            &message.on_the_wire(),
            &format!("{} as stored by relayd", message.subject),
        );
        let headers = String::from_utf8_lossy(original);
        assert!(
            headers.contains(&format!("\r\nSubject: {}\r\n", message.subject)),
            "{headers:.300}"
        );
    }
    let large = &queued
        .iter()
        .find(|(m, _)| m.envelope.id.to_string() == relayed["large@client.test"].0)
        .expect("large")
        .1;
    assert!(large.len() > 200 * 1024, "{} bytes", large.len());
}

/// Waits until Postfix has logged `status=sent` for every recipient; fails at once if it
/// deferred or bounced any, with Postfix's reasons and relayd's state and log.
fn wait_for_postfix(postfix: &Postfix, node: &mut Node, recipients: usize) {
    common::wait_for("Postfix to relay every recipient through relayd", || {
        let log = postfix.log();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("status=deferred") || l.contains("status=bounced"))
            .collect();
        if !failed.is_empty() {
            panic!(
                "Postfix could not relay through relayd:\n{}\nrelayd running: {}; its log:\n{}",
                failed.join("\n"),
                node.is_running(),
                node.log()
            );
        }
        log.matches("status=sent").count() == recipients
    });
}

/// Runs smtp-source against relayd and fails the test, with its output, unless it exits 0.
fn smtp_source(node: &Node, args: &[&str]) {
    let target = format!("127.0.0.1:{}", node.smtp_port);
    let mut all = vec!["-M", "src.test"];
    all.extend_from_slice(args);
    all.push(&target);
    let out = run("smtp-source", &all);
    assert!(
        out.status.success(),
        "smtp-source {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// smtp-source: 200 messages of 4 KiB over 10 parallel sessions, then 50 over one connection
/// (-d: no disconnect between messages). smtp-source does not pipeline commands.
#[test]
fn smtp_source_load_is_all_accepted() {
    let mut node = Node::relay("");
    let size = "4096";
    smtp_source(
        &node,
        &["-s", "10", "-m", "200", "-l", size, "-f", "a@src.test", "-t", "r@example.com"],
    );
    smtp_source(&node, &["-d", "-m", "50", "-l", size, "-f", "b@src.test", "-t", "r@example.com"]);
    let accepted = node.log().lines().filter(|l| l.contains("accepted")).count();
    assert_eq!(accepted, 250, "relayd logged every acceptance");
    assert_eq!(node.stop(), Some(0), "SIGTERM exits 0");
    let queued = node.queued();
    for (sender, count) in [("a@src.test", 200), ("b@src.test", 50)] {
        let from_sender: Vec<_> =
            queued.iter().filter(|(m, _)| m.envelope.sender == sender).collect();
        assert_eq!(from_sender.len(), count, "messages from {sender} queued");
        for (record, stored) in from_sender {
            assert_eq!(record.envelope.recipients, ["r@example.com"]);
            assert_eq!(record.envelope.size, stored.len() as u64);
            assert!(stored.len() > 4096, "{} bytes", stored.len());
            assert!(stored.ends_with(b"\r\n"), "{}", record.envelope.id);
        }
    }
    assert_eq!(queued.len(), 250);
}
