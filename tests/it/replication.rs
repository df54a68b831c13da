//! Replication between two real relayd processes: a primary `a` ships its change log, with the
//! message bodies, to a standby `b` over mutual TLS, through a fault proxy that the tests cut.
//! Mail is routed to a closed loopback port, so every message stays queued and deferred, and
//! the deferrals replicate too. After each scenario both nodes are stopped and their spools
//! read back and compared.

use crate::common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Pair, certs, certs_init, count, sections, send_signal, status};
use common::{BIN, Node, Raw, assert_same_bytes, free_addr, run, wait_for};
use relayd::spool::{EpochStart, LogPosition, LogRecord, MessageRecord, RecipientState};

/// A message's DATA as the client sends it: CRLF lines (none starting with a dot), about `size`
/// bytes, different for every `n`.
fn message_data(n: usize, size: usize) -> Vec<u8> {
    let mut data = format!(
        "From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\nSubject: replication {n}\r\n\r\n"
    )
    .into_bytes();
    let mut state = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while data.len() < size {
        state =
            state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let length = 1 + (state >> 33) as usize % 200;
        let line: String = (0..length)
            .map(|i| {
                let c = b'a' + ((state >> (i % 48)) as u8 ^ i as u8) % 26;
                if i % 9 == 8 { ' ' } else { c as char }
            })
            .collect();
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    data
}

/// Recipients for message `n`: one to four.
fn recipients(n: usize) -> Vec<String> {
    (0..=n % 4).map(|r| format!("user{r}.{n}@example.com")).collect()
}

/// One mail transaction on an open session (greeting and EHLO done): the queue id on 250, or
/// the reply that refused it (at DATA or after the body).
fn transaction(smtp: &mut Raw, rcpts: &[String], data: &[u8]) -> Result<String, String> {
    let reply = smtp.cmd("MAIL FROM:<sender@example.org>");
    assert!(reply.starts_with("250 "), "MAIL: {reply}");
    for rcpt in rcpts {
        let reply = smtp.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("250 "), "RCPT: {reply}");
    }
    let reply = smtp.cmd("DATA");
    if !reply.starts_with("354 ") {
        return Err(reply);
    }
    smtp.send(data);
    let reply = smtp.cmd(".");
    match reply.strip_prefix("250 ") {
        Some(text) => Ok(text.split_whitespace().last().expect("queue id").to_string()),
        None => Err(reply),
    }
}

/// Sends one message in a session of its own.
fn send(addr: SocketAddr, rcpts: &[String], data: &[u8]) -> Result<String, String> {
    let mut smtp = Raw::greeted(addr);
    let outcome = transaction(&mut smtp, rcpts, data);
    smtp.cmd("QUIT");
    outcome
}

/// What the test sent and got a 250 for.
#[derive(Clone)]
struct Sent {
    id: String,
    rcpts: Vec<String>,
    data: Vec<u8>,
}

/// Sends messages `first..first + n` (sizes from 1 KiB to about 300 KiB, 1 to 4 recipients)
/// from `threads` clients at once; every one must get its 250.
fn load(addr: SocketAddr, first: usize, n: usize, threads: usize) -> Vec<Sent> {
    let sent = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let sent = &sent;
            scope.spawn(move || {
                let mut smtp = Raw::greeted(addr);
                for i in (first + t..first + n).step_by(threads) {
                    let size = 1024 + (i * 104_729) % (300 * 1024);
                    let (rcpts, data) = (recipients(i), message_data(i, size));
                    let id = transaction(&mut smtp, &rcpts, &data)
                        .unwrap_or_else(|reply| panic!("message {i} refused: {reply}"));
                    sent.lock().unwrap().push(Sent { id, rcpts, data });
                }
                smtp.cmd("QUIT");
            });
        }
    });
    sent.into_inner().unwrap()
}

/// Clients sending messages (up to `max_size` bytes) back to back until [`Stream::finish`].
struct Stream {
    acknowledged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    senders: Vec<std::thread::JoinHandle<Vec<Sent>>>,
}

impl Stream {
    /// `threads` clients; client t sends messages first + t, first + t + threads, ...
    fn start(addr: SocketAddr, first: usize, threads: usize, max_size: usize) -> Stream {
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..threads)
            .map(|t| {
                let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut sent = Vec::new();
                    let mut smtp = Raw::greeted(addr);
                    let mut i = first + t;
                    while !stop.load(Ordering::SeqCst) {
                        let size = 512 + (i * 7_919) % max_size;
                        let (rcpts, data) = (recipients(i), message_data(i, size));
                        let id = transaction(&mut smtp, &rcpts, &data)
                            .unwrap_or_else(|reply| panic!("message {i} refused: {reply}"));
                        sent.push(Sent { id, rcpts, data });
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                        i += threads;
                    }
                    smtp.cmd("QUIT");
                    sent
                })
            })
            .collect();
        Stream { acknowledged, stop, senders }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Waits until `n` more messages than now have had their 250.
    fn wait_more(&self, n: usize) {
        let target = self.acknowledged() + n;
        wait_for(&format!("{target} messages acknowledged"), || self.acknowledged() >= target);
    }

    /// Stops the clients; what they sent and got a 250 for.
    fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.senders.into_iter().flat_map(|s| s.join().expect("a sender thread")).collect()
    }
}

/// A stopped node's spool: queued messages with their bodies, the change log, the epoch
/// history.
struct Contents {
    messages: Vec<(MessageRecord, Vec<u8>)>,
    log: Vec<LogRecord>,
    history: Vec<EpochStart>,
    /// Where the log ends (its last record, or where a snapshot left it).
    last: LogPosition,
}

fn contents(node: &Node) -> Contents {
    let messages = node.queued();
    let spool = node.spool();
    let log = spool.log_from(0).collect::<Result<Vec<_>, _>>().expect("read the log");
    let history = spool.epoch_history().expect("epoch history");
    let last = spool.last_position();
    Contents { messages, log, history, last }
}

/// The standby's spool equals the primary's: the same messages (ids, envelopes, recipient
/// states, acceptance positions), the same bodies byte for byte, the same epoch history, and
/// the standby's log is the primary's from the standby's first record on, without a gap or a
/// duplicate. Returns both.
fn assert_same_spools(pair: &Pair) -> (Contents, Contents) {
    let primary = contents(pair.primary());
    let standby = contents(pair.standby());
    let ids = |c: &Contents| c.messages.iter().map(|(m, _)| m.envelope.id).collect::<Vec<_>>();
    assert_eq!(ids(&standby), ids(&primary), "the same messages are queued on both nodes");
    for ((p, p_body), (s, s_body)) in primary.messages.iter().zip(&standby.messages) {
        assert_eq!(s, p, "message {} differs on the standby", p.envelope.id);
        assert_same_bytes(s_body, p_body, &format!("the standby's body of {}", p.envelope.id));
    }
    assert_eq!(standby.history, primary.history, "epoch histories");
    assert_eq!(standby.last, primary.last, "the standby's log ends where the primary's does");

    let first = standby.log.first().expect("the standby holds log records").position.seq;
    for (i, record) in standby.log.iter().enumerate() {
        assert_eq!(
            record.position.seq,
            first + i as u64,
            "the standby's log has a gap or a repeat"
        );
    }
    let from: Vec<&LogRecord> = primary.log.iter().filter(|r| r.position.seq >= first).collect();
    assert_eq!(from.len(), standby.log.len(), "records from seq {first} on, primary vs standby");
    for (p, s) in from.iter().zip(&standby.log) {
        assert_eq!(&s, p, "log record {} differs", p.position.seq);
    }
    let mut accepted = HashSet::new();
    for record in &standby.log {
        if let Some(envelope) = record.change.accepts() {
            assert!(accepted.insert(envelope.id), "{} accepted twice in the log", envelope.id);
        }
    }
    (primary, standby)
}

/// Every message of `sent` is queued in `contents` with its recipients, deferred once, and its
/// body: our Received: header, then the data as sent.
fn assert_holds(contents: &Contents, sent: &[Sent], node: &str) {
    for message in sent {
        let (record, body) = contents
            .messages
            .iter()
            .find(|(m, _)| m.envelope.id.to_string() == message.id)
            .unwrap_or_else(|| panic!("{} is not in the {node}'s spool", message.id));
        assert_eq!(record.envelope.recipients, message.rcpts, "{}'s recipients", message.id);
        assert_same_bytes(
            Node::without_received(body),
            &message.data,
            &format!("{node}'s body of {}", message.id),
        );
        for state in &record.recipients {
            assert!(
                matches!(state, RecipientState::Pending { attempts: 1.., last_reply: Some(_), .. }),
                "{} on the {node}: a recipient not deferred once: {state:?}",
                message.id
            );
        }
    }
}

fn ids(sent: &[Sent]) -> HashSet<String> {
    sent.iter().map(|s| s.id.clone()).collect()
}

fn queued_ids(contents: &Contents) -> HashSet<String> {
    contents.messages.iter().map(|(m, _)| m.envelope.id.to_string()).collect()
}

/// The "replication link up" lines of a node's log, one per link made.
fn link_ups(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("replication link up")).collect()
}

/// Stops both nodes and asserts that their spools are the same and that they hold exactly the
/// acknowledged mail, `sent`, bodies included; the two spools, for more checks.
fn stop_and_compare(pair: &mut Pair, sent: &[Sent]) -> (Contents, Contents) {
    stop_both(pair);
    let (primary, standby) = assert_same_spools(pair);
    assert_eq!(queued_ids(&primary), ids(sent), "only acknowledged mail is queued");
    assert_holds(&standby, sent, "standby");
    (primary, standby)
}

fn stop_both(pair: &mut Pair) {
    assert_eq!(pair.primary_mut().stop(), Some(0), "the primary's exit status");
    assert_eq!(pair.standby_mut().stop(), Some(0), "the standby's exit status");
}

#[test]
fn standby_spool_equals_primary_after_a_load() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let sent = load(pair.primary().addr(), 0, 50, 5);
    assert_eq!(ids(&sent).len(), 50);
    pair.wait_settled(50);
    let status = status(pair.primary());
    assert_eq!(status["peer"]["mode"], "sync", "never degraded: {status}");
    assert_eq!(status["peer"]["node"], "b", "{status}");
    let (_, standby) = stop_and_compare(&mut pair, &sent);
    // The standby began with a snapshot of the empty queue at the primary's first record;
    // everything since came through the log: 50 acceptances and 50 deferrals.
    assert_eq!(standby.log.first().map(|r| r.position.seq), Some(2));
    assert!(standby.log.len() >= 100, "{} records", standby.log.len());
}

#[test]
fn cut_mid_stream_resumes_without_gap_or_duplicate() {
    let mut pair = Pair::start("async", "");
    // Two clients send messages of up to 200 KB until told to stop: the link has bodies in
    // flight when it is cut.
    let stream = Stream::start(pair.primary().addr(), 0, 2, 200_000);
    for round in 1..=3 {
        // The link is up (again), more mail has come: cut.
        pair.wait_links_up(round);
        stream.wait_more(20);
        assert!(pair.proxy().cut() >= 1, "round {round}: the link went through the proxy");
    }
    pair.wait_links_up(4);
    stream.wait_more(10);
    let sent = stream.finish();
    pair.wait_settled(sent.len());

    let log = pair.primary().log();
    let ups = link_ups(&log);
    assert!(ups.len() >= 4, "a link per cut:\n{log}");
    assert!(ups[0].contains("from=None"), "the first link starts with a snapshot: {}", ups[0]);
    for up in &ups[1..] {
        assert!(up.contains("from=Some("), "a relink resumes, no snapshot: {up}");
    }
    assert_eq!(count(&log, "sending a snapshot"), 1, "one snapshot only:\n{log}");
    assert!(count(&log, "replication link down") >= 3, "the cuts were seen:\n{log}");
    stop_and_compare(&mut pair, &sent);
}

#[test]
fn standby_with_an_empty_data_dir_is_rebuilt_by_snapshot() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let mut sent = load(pair.primary().addr(), 0, 20, 2);
    pair.wait_settled(20);
    assert_eq!(count(&pair.primary().log(), "sending a snapshot"), 1);
    assert_eq!(count(&pair.standby().log(), "snapshot installed"), 1);

    pair.standby_mut().stop();
    pair.wait_disconnected();
    std::fs::remove_dir_all(pair.standby().dir.path().join("data")).expect("remove data_dir");
    // The primary goes on alone meanwhile (on_standby_loss = "degrade").
    sent.extend(load(pair.primary().addr(), 20, 5, 1));
    pair.standby_mut().launch();
    wait_for("the primary to send a second snapshot", || {
        count(&pair.primary().log(), "sending a snapshot") == 2
    });
    wait_for("the standby to install it", || {
        count(&pair.standby().log(), "snapshot installed") == 2
    });
    // And streams from there.
    sent.extend(load(pair.primary().addr(), 25, 5, 1));
    pair.wait_settled(30);
    let (_, standby) = stop_and_compare(&mut pair, &sent);
    assert!(
        standby.log.first().expect("records after the snapshot").position.seq > 1,
        "the rebuilt standby's log starts after the snapshot, not with the primary's first record"
    );
}

/// A sample's value in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_standby_killed_mid_stream_resumes_from_its_own_log() {
    let mut pair = Pair::start("async", "");
    let stream = Stream::start(pair.primary().addr(), 0, 2, 200_000);
    stream.wait_more(20);
    pair.standby_mut().kill9();
    stream.wait_more(10);
    pair.standby_mut().launch();
    pair.wait_links_up(2);
    stream.wait_more(10);
    let sent = stream.finish();
    pair.wait_settled(sent.len());

    let log = pair.primary().log();
    let ups = link_ups(&log);
    assert!(ups[1..].iter().all(|up| up.contains("from=Some(")), "resumed, no snapshot:\n{log}");
    assert_eq!(count(&log, "sending a snapshot"), 1, "{log}");
    stop_and_compare(&mut pair, &sent);
}

/// A standby rebuilt from a snapshot while mail keeps coming (2 senders, up to 150 KB): while
/// it is away, while it takes the snapshot, and after. Returns once it has caught up.
fn snapshot_under_load() -> (Pair, Vec<Sent>) {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let mut sent = load(pair.primary().addr(), 0, 120, 3);
    pair.wait_settled(120);
    pair.standby_mut().stop();
    pair.wait_disconnected();
    std::fs::remove_dir_all(pair.standby().dir.path().join("data")).expect("remove data_dir");

    let stream = Stream::start(pair.primary().addr(), 1000, 3, 150_000);
    stream.wait_more(5);
    pair.standby_mut().launch();
    wait_for("the standby to install a snapshot", || {
        count(&pair.standby().log(), "snapshot installed") == 2
    });
    stream.wait_more(10);
    sent.extend(stream.finish());
    pair.wait_settled(sent.len());
    (pair, sent)
}

#[test]
fn a_snapshot_taken_while_mail_keeps_coming_converges() {
    let (mut pair, sent) = snapshot_under_load();
    stop_and_compare(&mut pair, &sent);
}

#[test]
fn a_snapshot_taken_while_mail_keeps_coming_keeps_the_queue_gauge_right() {
    let (pair, _) = snapshot_under_load();
    let queued = status(pair.standby())["queue"]["messages"].as_u64();
    let metrics = common::cluster::try_get_text(pair.standby(), "/metrics").expect("metrics");
    let log = pair.standby().log();
    let snapshots: Vec<&str> = log.lines().filter(|l| l.contains("snapshot")).collect();
    assert_eq!(
        sample(&metrics, "relayd_queue_messages"),
        queued,
        "the standby's relayd_queue_messages vs the messages in its queue; its log says:\n{}",
        snapshots.join("\n")
    );
}

#[test]
fn peers_with_a_foreign_certificate_or_plaintext_are_refused() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"");
    let mut sent = load(pair.primary().addr(), 0, 1, 1);
    pair.wait_settled(1);
    let queued = |pair: &Pair| status(pair.standby())["queue"]["messages"].clone();
    assert_eq!(queued(&pair), 1);

    // A primary whose certificate comes from another CA, dialling the real standby directly.
    let other = certs("a");
    let listen = free_addr();
    let mut rogue = Node::start_named(
        "rogue",
        "primary",
        "",
        &sections(other.path(), "a", listen, pair.standby_cluster(), "async", ""),
    );
    // With an empty spool it serves nothing by itself (it would have to hear its peer's
    // empty Hello first): its operator bootstraps it.
    let promoted =
        run(BIN, &["promote", "--force", "--config", rogue.config_path.to_str().expect("utf-8")]);
    assert!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    let rogue_id = send(rogue.addr(), &recipients(1), &message_data(1, 2000))
        .expect("the rogue (async), bootstrapped, accepts mail alone");
    let refused = count(&pair.standby().log(), "cluster peer refused: TLS handshake failed");
    wait_for("the standby to refuse the rogue twice after it had mail", || {
        count(&pair.standby().log(), "cluster peer refused: TLS handshake failed") >= refused + 2
    });
    rogue.stop();
    let rogue_log = rogue.log();
    assert!(count(&rogue_log, "replication link down") >= 2, "{rogue_log}");
    assert_eq!(count(&rogue_log, "replication link up"), 0, "{rogue_log}");
    assert_eq!(count(&pair.standby().log(), "following the primary"), 1, "only `a` is followed");
    assert_eq!(queued(&pair), 1, "nothing of the rogue's was applied");

    // Plaintext on the cluster port: closed without a word of the protocol, and logged.
    let mut plain = TcpStream::connect(pair.standby_cluster()).expect("connect");
    let local = plain.local_addr().expect("local address");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    plain.write_all(b"HELO standby\r\nI am your primary, trust me\r\n").expect("write");
    let mut answer = Vec::new();
    match plain.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the standby did not close a plaintext connection: {e}"),
    }
    let line = format!("peer={local}");
    wait_for("the standby to log the plaintext peer", || {
        pair.standby()
            .log()
            .lines()
            .any(|l| l.contains("cluster peer refused") && l.contains(&line))
    });

    // The real link still works.
    assert_eq!(
        count(&pair.primary().log(), "replication link up"),
        1,
        "the link was not disturbed"
    );
    sent.extend(load(pair.primary().addr(), 1, 1, 1));
    pair.wait_settled(2);
    stop_both(&mut pair);
    let (_, standby) = assert_same_spools(&pair);
    assert_eq!(queued_ids(&standby), ids(&sent));
    assert!(!queued_ids(&standby).contains(&rogue_id));
    assert_holds(&standby, &sent, "standby");
}

#[test]
fn silent_connections_to_the_cluster_port_do_not_hold_off_the_primary() {
    let pair = Pair::start("async", "");
    // Three connections that never say anything, as a port scanner or an attacker would leave.
    let silent: Vec<TcpStream> =
        (0..3).map(|_| TcpStream::connect(pair.standby_cluster()).expect("connect")).collect();
    let started = Instant::now();
    pair.proxy().cut();
    pair.wait_links_up(2);
    let took = started.elapsed();
    drop(silent);
    assert!(took < Duration::from_secs(3), "the primary got its link back after {took:?}");
}

#[test]
fn sync_mode_kill9_of_the_primary_after_each_250_loses_nothing() {
    let mut pair = Pair::start("sync", "sync_timeout = \"15s\"\non_standby_loss = \"refuse\"");
    let mut sent = Vec::new();
    for round in 0..5 {
        pair.wait_connected();
        let (rcpts, data) = (recipients(round), message_data(round, 20_000 + round * 50_000));
        let mut smtp = Raw::greeted(pair.primary().addr());
        let id = transaction(&mut smtp, &rcpts, &data)
            .unwrap_or_else(|reply| panic!("round {round}: {reply}"));
        pair.primary_mut().kill9();
        drop(smtp);
        sent.push(Sent { id, rcpts, data });
        pair.primary_mut().launch();
    }
    pair.wait_connected();
    pair.wait_caught_up();
    stop_both(&mut pair);
    let standby = contents(pair.standby());
    for message in &sent {
        let (record, body) = standby
            .messages
            .iter()
            .find(|(m, _)| m.envelope.id.to_string() == message.id)
            .unwrap_or_else(|| panic!("acknowledged {} is not on the standby", message.id));
        assert_eq!(record.envelope.recipients, message.rcpts);
        assert_same_bytes(Node::without_received(body), &message.data, &message.id);
    }
    let primary = contents(pair.primary());
    assert!(ids(&sent).is_subset(&queued_ids(&primary)), "and still on the primary");
    let log = pair.primary().log();
    assert_eq!(count(&log, "sending a snapshot"), 1, "each restart resumed the standby:\n{log}");
}

/// Sends "." and times the reply.
fn timed(smtp: &mut Raw, rcpts: &[String], data: &[u8]) -> (Result<String, String>, Duration) {
    let started = Instant::now();
    let outcome = transaction(smtp, rcpts, data);
    (outcome, started.elapsed())
}

#[test]
fn refuse_mode_answers_451_without_the_standby_and_keeps_nothing() {
    let mut pair = Pair::start("sync", "sync_timeout = \"500ms\"\non_standby_loss = \"refuse\"");
    let mut sent = load(pair.primary().addr(), 0, 1, 1);
    pair.wait_settled(1);

    // The standby is gone: 451, at DATA or after the body.
    pair.standby_mut().stop();
    pair.wait_disconnected();
    let refused = send(pair.primary().addr(), &recipients(1), &message_data(1, 5000))
        .expect_err("no 250 without the standby");
    assert!(refused.starts_with("451 4.3.0"), "{refused}");
    assert_eq!(status(pair.primary())["queue"]["messages"], 1, "nothing new is queued");

    pair.standby_mut().launch();
    pair.wait_caught_up();
    sent.extend(load(pair.primary().addr(), 2, 1, 1));

    // The standby is there but does not answer (SIGSTOP): the message is written, not confirmed
    // within sync_timeout, withdrawn, and refused after its body.
    pair.wait_settled(2);
    send_signal(pair.standby(), "STOP");
    let mut smtp = Raw::greeted(pair.primary().addr());
    let (outcome, took) = timed(&mut smtp, &recipients(3), &message_data(3, 5000));
    let reply = outcome.expect_err("no 250 from a frozen standby");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(took >= Duration::from_millis(500), "refused after sync_timeout, not before: {took:?}");
    drop(smtp);
    assert!(pair.primary().log().contains("not acknowledged"), "the withdrawal is logged");
    assert_eq!(status(pair.primary())["queue"]["messages"], 2, "the withdrawn message is gone");
    send_signal(pair.standby(), "CONT");
    pair.wait_caught_up();
    sent.extend(load(pair.primary().addr(), 4, 1, 1));
    pair.wait_settled(3);
    stop_and_compare(&mut pair, &sent);
}

#[test]
fn degrade_mode_accepts_without_the_standby_and_catches_up() {
    let mut pair = Pair::start("sync", "sync_timeout = \"1s\"\non_standby_loss = \"degrade\"");
    let sync_timeout = Duration::from_secs(1);
    let slack = Duration::from_millis(1500);
    let mut sent = load(pair.primary().addr(), 0, 1, 1);
    pair.wait_settled(1);

    // The standby is gone: 250 at once, degraded, lagging.
    pair.standby_mut().stop();
    pair.wait_disconnected();
    let (rcpts, data) = (recipients(1), message_data(1, 100_000));
    let mut smtp = Raw::greeted(pair.primary().addr());
    let (outcome, took) = timed(&mut smtp, &rcpts, &data);
    smtp.cmd("QUIT");
    sent.push(Sent { id: outcome.expect("250 without the standby"), rcpts, data });
    assert!(took <= sync_timeout + slack, "250 within sync_timeout: {took:?}");
    let degraded = status(pair.primary());
    assert_eq!(degraded["peer"]["mode"], "degraded", "{degraded}");
    assert_eq!(degraded["peer"]["connected"], false, "{degraded}");
    assert!(degraded["replication"]["lag_records"].as_u64() > Some(0), "{degraded}");

    // Back: it catches up, and sync mode is back.
    pair.standby_mut().launch();
    wait_for("the standby to catch up and sync mode to return", || {
        common::cluster::try_status(pair.primary()).is_some_and(|s| {
            s["peer"]["connected"] == true
                && s["replication"]["lag_records"] == 0
                && s["peer"]["mode"] == "sync"
        })
    });
    pair.wait_settled(2);

    // The standby is there but frozen: 250 once sync_timeout has passed, degraded again.
    send_signal(pair.standby(), "STOP");
    let (rcpts, data) = (recipients(2), message_data(2, 3000));
    let mut smtp = Raw::greeted(pair.primary().addr());
    let (outcome, took) = timed(&mut smtp, &rcpts, &data);
    smtp.cmd("QUIT");
    sent.push(Sent { id: outcome.expect("250 from a degraded primary"), rcpts, data });
    assert!(took >= sync_timeout, "waited for the standby first: {took:?}");
    assert!(took <= sync_timeout + slack, "then gave up on it: {took:?}");
    assert_eq!(status(pair.primary())["peer"]["mode"], "degraded");
    send_signal(pair.standby(), "CONT");
    wait_for("sync mode to return", || {
        common::cluster::try_status(pair.primary())
            .is_some_and(|s| s["replication"]["lag_records"] == 0 && s["peer"]["mode"] == "sync")
    });
    pair.wait_settled(3);
    stop_and_compare(&mut pair, &sent);
}

#[test]
fn certs_init_makes_a_ca_and_node_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    certs_init(&certs, "a,b,w");
    let path = |f: &str| certs.join(f).to_str().expect("utf-8").to_string();
    for key in ["ca.key", "a.key", "b.key", "w.key"] {
        let mode = std::fs::metadata(certs.join(key)).expect(key).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}'s mode");
    }
    for node in ["a", "b", "w"] {
        let pem = path(&format!("{node}.pem"));
        let out = run("openssl", &["verify", "-CAfile", &path("ca.pem"), &pem]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.contains(": OK"), "openssl verify {node}: {said}");

        let out = run(
            "openssl",
            &["x509", "-in", &pem, "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "openssl x509: {}", String::from_utf8_lossy(&out.stderr));
        let sans: Vec<&str> =
            text.lines().map(str::trim).filter(|l| l.starts_with("DNS:")).collect();
        assert_eq!(sans, [format!("DNS:{node}")], "{node}'s SAN:\n{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{node}: serverAuth\n{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{node}: clientAuth\n{text}");
        // The key goes with the certificate.
        let modulus = |args: &[&str]| run("openssl", args).stdout;
        let from_cert = modulus(&["x509", "-in", &pem, "-noout", "-pubkey"]);
        let from_key = modulus(&["pkey", "-in", &path(&format!("{node}.key")), "-pubout"]);
        assert!(!from_cert.is_empty() && from_cert == from_key, "{node}.key is {node}.pem's key");
    }

    // Again on the same directory: refused, the CA untouched.
    let before = std::fs::read(certs.join("ca.key")).expect("ca.key");
    let ca_before = std::fs::read(certs.join("ca.pem")).expect("ca.pem");
    let out = run(BIN, &["certs", "init", &path(""), "--nodes", "a,b,w"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not overwriting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(certs.join("ca.key")).expect("ca.key"), before);
    assert_eq!(std::fs::read(certs.join("ca.pem")).expect("ca.pem"), ca_before);
}
