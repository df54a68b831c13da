//! The delivery engine against next hops on loopback: Postfix's smtp-sink, the scripted sink of
//! tests/it/common/sink.rs (per-recipient replies, STARTTLS, delays), and dnsmasq as the DNS server
//! for MX routing. Each test runs its own relayd with its own routes; nothing leaves 127.0.0.0/8
//! and relayd never asks the system's DNS (its resolvers are always on loopback).
//!
//! Tests run in parallel, and a port picked free on 127.0.0.1 may be taken by another socket
//! before it is bound. So whatever a test must find at a known address later (a peer daemon, a
//! next hop that comes up after relayd, a next hop or DNS server that must stay silent) lives on
//! a loopback address of its own, where nothing else binds:
//!
//! | address | what |
//! |---|---|
//! | 127.0.0.31:25 | mx1.mxtest.example: nobody listens |
//! | 127.0.0.32:25 | mx2.mxtest.example: the scripted sink |
//! | 127.0.0.33:25 | mx.shared.example: the scripted sink |
//! | 127.0.0.41 | Postfix's smtp-sink |
//! | 127.0.0.51, 127.0.0.52 | dnsmasq |
//! | 127.0.0.61 | the next hop that comes up while relayd is down |
//! | 127.0.0.71:2525 | a dead next hop: nobody listens |
//! | 127.0.0.81:53 | the resolver of tests without DNS: nobody answers |
//!
//! relayd itself is started by the harness on ports picked free on 127.0.0.1; [`start_node`]
//! makes sure it is this test's relayd that listens there.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sink::{Options, Sink, Transaction};
use common::{BIN, Node, Raw, run, self_signed, wait_for};
use relayd::spool::RecipientState;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Config, mail and log helpers

/// How long a connection to a port where nobody should listen may take to be refused.
const CONNECT_CHECK: Duration = Duration::from_secs(2);

/// `common::wait_for`, failing with `context()` (relayd's log, the sink's state) on a timeout.
pub(crate) fn wait_explained(
    what: &str,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + common::PATIENCE;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a timed-out wait shows: relayd's log and what the sink received.
pub(crate) fn state(node: &Node, sink: &Sink) -> String {
    let received: Vec<String> = sink
        .transactions()
        .iter()
        .map(|t| {
            format!("  #{} <{}> {:?} {:?}", t.connection, t.sender, t.recipients, t.message_id())
        })
        .collect();
    format!(
        "sink: {} connections, {} RSETs, {} protocol errors, transactions:\n{}\nrelayd's log:\n{}",
        sink.connections(),
        sink.rsets(),
        sink.protocol_errors(),
        received.join("\n"),
        node.log()
    )
}

/// A free TCP port on the loopback address `ip`, for a daemon of this test to bind there.
fn free_port_on(ip: [u8; 4]) -> u16 {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// `Node::start` with these sections, made sure to be this test's relayd. The harness picks
/// relayd's ports free before relayd binds them; another socket of a parallel test may take
/// one first. relayd then exits ("Address already in use"), and the harness may even have
/// taken the other process's listener for relayd's. So this waits for relayd's own log to say
/// it listens on both its ports, and starts it afresh, on new ports, if it exited instead.
///
/// [`OWN_PORT`] in `sections` stands for relayd's own SMTP port, once the harness has picked it.
fn start_node(sections: &str) -> Node {
    for _ in 0..5 {
        let started = std::panic::catch_unwind(|| {
            let mut node = Node::configure("test", "primary", "", "", sections);
            let config = std::fs::read_to_string(&node.config_path).expect("read config");
            let config = config.replace(OWN_PORT, &node.smtp_port.to_string());
            std::fs::write(&node.config_path, config).expect("write config");
            node.launch();
            node
        });
        let mut node = match started {
            Ok(node) => node,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                if !text.contains("Address already in use") {
                    std::panic::resume_unwind(panic);
                }
                continue;
            }
        };
        if listens(&mut node) {
            return node;
        }
    }
    panic!("relayd could not get free ports in 5 tries");
}

/// Stands for relayd's own SMTP port in the sections given to [`start_node`].
const OWN_PORT: &str = "OWN_SMTP_PORT";

/// After a restart on the same ports: this test's relayd listens on them.
fn relaunch(node: &mut Node) {
    node.launch();
    assert!(listens(node), "relayd did not get its ports back:\n{}", node.log());
}

/// Waits until relayd's log says it listens on its SMTP and admin ports (true), or it exited
/// because one was taken (false).
fn listens(node: &mut Node) -> bool {
    let ports = [node.smtp_port, node.admin_port];
    let mut exited = false;
    wait_for("relayd to listen, or to exit", || {
        let log = node.log();
        // After a restart, only what the last start logged counts.
        let Some((_, last)) = log.rsplit_once("relayd started") else { return false };
        let listening = |port: u16| {
            last.lines().any(|line| {
                line.contains(" listening ")
                    && line.contains(" address=")
                    && field(line, "address") == format!("127.0.0.1:{port}")
            })
        };
        if ports.iter().all(|&port| listening(port)) {
            return true;
        }
        exited = !node.is_running();
        exited
    });
    if exited {
        let log = node.log();
        assert!(log.contains("Address already in use"), "relayd exited:\n{log}");
    }
    !exited
}

/// A `[[route]]` table.
fn route(domain: &str, next_hop: &str, tls: &str) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{next_hop}\"\ntls = \"{tls}\"\n\n")
}

/// A `[delivery]` section with the given keys. Unless `keys` names resolvers, DNS goes to a
/// loopback address where nobody answers: a fixed next hop needs none, and the system's
/// resolver must never be asked.
fn delivery(keys: &str) -> String {
    let resolvers = if keys.contains("resolvers") {
        String::new()
    } else {
        "resolvers = [\"127.0.0.81:53\"]\n".to_string()
    };
    format!("[delivery]\n{resolvers}{keys}\n")
}

/// A relayd whose every domain goes to `sink` in plain text, with the given [delivery] keys.
pub(crate) fn node_for(sink: &Sink, delivery_keys: &str) -> Node {
    let hop = format!("127.0.0.1:{}", sink.port());
    start_node(&format!("{}{}", route("*", &hop, "none"), delivery(delivery_keys)))
}

/// A message to send: its Subject is `tag` and its Message-ID `<tag@client.test>`.
pub(crate) struct Mail {
    /// Header fields before the others (CRLF lines): trace fields, as Received:.
    trace: String,
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    tag: String,
    body: String,
}

impl Mail {
    pub(crate) fn new(from: &str, to: &[&str], tag: &str) -> Mail {
        Mail {
            trace: String::new(),
            from: from.to_string(),
            to: to.iter().map(|r| r.to_string()).collect(),
            tag: tag.to_string(),
            body: format!("This is {tag}.\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"),
        }
    }

    /// The same with another body (CRLF lines).
    fn with_body(mut self, body: String) -> Mail {
        self.body = body;
        self
    }

    fn message_id(&self) -> String {
        format!("{}@client.test", self.tag)
    }

    /// The message as relayd stores it after its Received: header (CRLF lines, dots as they
    /// are, not stuffed).
    pub(crate) fn text(&self) -> String {
        let to: Vec<String> = self.to.iter().map(|r| format!("<{r}>")).collect();
        format!(
            "{trace}From: <{from}>\r\nTo: {to}\r\nSubject: {tag}\r\nMessage-ID: <{id}>\r\n\
             Date: Mon, 24 Nov 2025 10:00:00 +0000\r\n\r\n{body}",
            trace = self.trace,
            from = self.from,
            to = to.join(", "),
            tag = self.tag,
            id = self.message_id(),
            body = self.body,
        )
    }
}

/// Dot-stuffing for DATA (the text has CRLF line ends).
fn stuffed(text: &str) -> String {
    let text = text.replace("\r\n.", "\r\n..");
    if text.starts_with('.') { format!(".{text}") } else { text }
}

/// Sends `mails` to `node` over one SMTP session; returns their queue ids, in order.
fn send(node: &Node, mails: &[Mail]) -> Vec<String> {
    let mut smtp = Raw::greeted(node.addr());
    let mut ids = Vec::new();
    for mail in mails {
        let reply =
            smtp.send_message(&format!("<{}>", mail.from), &mail.to, &stuffed(&mail.text()));
        let id = reply
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .unwrap_or_else(|| panic!("end of DATA: {reply}"));
        ids.push(id.trim().to_string());
    }
    assert!(smtp.cmd("QUIT").starts_with("221"));
    ids
}

fn send_one(node: &Node, mail: Mail) -> String {
    send(node, &[mail]).remove(0)
}

/// relayd's log lines for `event` ("delivered", "deferred", "bounced") of queue id `id` and
/// recipient `rcpt`.
pub(crate) fn logged(log: &str, event: &str, id: &str, rcpt: &str) -> Vec<String> {
    let head = format!(" {event} id={id} rcpt=<{rcpt}> ");
    log.lines().filter(|line| line.contains(&head)).map(String::from).collect()
}

/// Whether relayd logged `event` for `id` and `rcpt`.
pub(crate) fn has(node: &Node, event: &str, id: &str, rcpt: &str) -> bool {
    !logged(&node.log(), event, id, rcpt).is_empty()
}

/// The value of `key=` in a log line (quoted values unquoted).
pub(crate) fn field(line: &str, key: &str) -> String {
    let at = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key}= in {line}"));
    let rest = &line[at + key.len() + 2..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or("").to_string(),
        None => rest.split(' ').next().unwrap_or("").to_string(),
    }
}

/// A log line's `delay=`: seconds with two decimals, and less than the test's patience.
#[track_caller]
fn assert_delay(line: &str) {
    let delay = field(line, "delay");
    let (whole, fraction) = delay.split_once('.').unwrap_or_else(|| panic!("delay= {line}"));
    assert_eq!(fraction.len(), 2, "{line}");
    let seconds: f64 = delay.parse().unwrap_or_else(|e| panic!("delay= {e}: {line}"));
    assert!(whole.parse::<u64>().is_ok() && seconds < common::PATIENCE.as_secs_f64(), "{line}");
}

/// The DSNs a sink received (transactions from the null sender).
pub(crate) fn dsns(sink: &Sink) -> Vec<Transaction> {
    sink.transactions().into_iter().filter(|t| t.sender.is_empty()).collect()
}

/// Transactions that are not DSNs, by Message-ID: how many copies of each arrived.
fn copies(sink: &Sink) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for t in sink.transactions().into_iter().filter(|t| !t.sender.is_empty()) {
        *copies.entry(t.message_id().expect("a Message-ID")).or_insert(0) += 1;
    }
    copies
}

/// A DSN read by Python's email package (tests/peers/dsn_report.py).
pub(crate) fn dsn_report(dsn: &Transaction) -> Value {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &dsn.body).expect("write the DSN");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/dsn_report.py");
    let out = common::run(
        "python3",
        &[script.to_str().expect("utf-8"), file.path().to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "dsn_report.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from dsn_report.py")
}

/// Checks the structure of a DSN that reports one failed recipient.
#[track_caller]
fn assert_dsn(dsn: &Transaction, rcpt: &str, status: &str, subject: &str) {
    let text = String::from_utf8_lossy(&dsn.body).into_owned();
    let report = dsn_report(dsn);
    let context = format!("{report:#}\n{text}");
    assert_eq!(report["content_type"], "multipart/report", "{context}");
    assert_eq!(report["report_type"], "delivery-status", "{context}");
    assert_eq!(
        report["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "text/rfc822-headers"]),
        "{context}"
    );
    assert_eq!(report["defects"], serde_json::json!([]), "{context}");
    assert_eq!(report["per_message"]["Reporting-MTA"], "dns; mx.test", "{context}");
    let recipients = report["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 1, "one failed recipient: {context}");
    let fields = &recipients[0];
    assert_eq!(fields["Final-Recipient"], format!("rfc822; {rcpt}"), "{context}");
    assert_eq!(fields["Action"], "failed", "{context}");
    assert_eq!(fields["Status"], status, "{context}");
    assert_eq!(report["original_headers"]["Subject"], subject, "{context}");
    assert_eq!(dsn.header("Auto-Submitted").as_deref(), Some("auto-replied"), "{context}");
}

/// A daemon started by a test, killed and reaped when the test ends, however it ends.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn spawn(name: &'static str, program: &str, args: &[String], log: &Path) -> Daemon {
        let log = std::fs::File::create(log).expect("daemon log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (scripts/test.sh installs it)"));
        Daemon { name, child }
    }

    /// Waits until it accepts TCP connections on `addr`; fails at once if it exited.
    fn wait_listening(&mut self, addr: SocketAddr, log: &Path) {
        wait_for(&format!("{} to listen on {addr}", self.name), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            TcpStream::connect(addr).is_ok()
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dnsmasq on a free port of the loopback address `ip`, answering for the names under `example` from `records`
/// (its --mx-host and --host-record options) and NXDOMAIN for the others; killed when dropped.
struct Dns {
    // Fields drop in order: dnsmasq is killed before its directory goes.
    _daemon: Daemon,
    _dir: tempfile::TempDir,
    /// IP:PORT, for [delivery].resolvers.
    address: String,
    log_path: std::path::PathBuf,
}

impl Dns {
    fn start(ip: [u8; 4], records: &[&str]) -> Dns {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port_on(ip);
        let address = std::net::Ipv4Addr::from(ip);
        let log_path = dir.path().join("dnsmasq.log");
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            format!("--port={port}"),
            format!("--listen-address={address}"),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--pid-file=".into(),
            "--log-facility=-".into(),
            "--log-queries".into(),
            // Names under example are answered from the records given here, or NXDOMAIN; no
            // query is ever forwarded (there is no upstream server).
            "--local=/example/".into(),
        ];
        args.extend(records.iter().map(|r| r.to_string()));
        let mut daemon = Daemon::spawn("dnsmasq", "/usr/sbin/dnsmasq", &args, &log_path);
        daemon.wait_listening(SocketAddr::from((ip, port)), &log_path);
        Dns { _daemon: daemon, _dir: dir, address: format!("{address}:{port}"), log_path }
    }

    /// What dnsmasq logged: every query, with --log-queries.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The scripted sink itself, driven by hand: its replies by local part, flaky addresses,
/// unstuffing, and the counters the other tests rely on.
#[test]
fn the_sink_follows_its_script() {
    let sink = Sink::start("127.0.0.1:0", Options { pipelining: false, ..Options::default() });
    let mut smtp = Raw::connect(sink.addr());
    assert!(smtp.read_reply().starts_with("220"));
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(!ehlo.contains("PIPELINING") && !ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(smtp.cmd("BOGUS").starts_with("500"));
    // Two commands in one write although PIPELINING was not offered.
    smtp.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<flaky9@dest.test>\r\n");
    assert!(smtp.read_reply().starts_with("250"));
    assert!(smtp.read_reply().starts_with("451 4.3.0"), "flaky: refused the first time");
    assert!(smtp.cmd("RCPT TO:<flaky9@dest.test>").starts_with("250"), "then accepted");
    assert!(smtp.cmd("RCPT TO:<reject1@dest.test>").starts_with("550 5.1.1"));
    assert!(smtp.cmd("RCPT TO:<defer1@dest.test>").starts_with("451 4.3.0"));
    assert!(smtp.cmd("RCPT TO:<ok1@dest.test>").starts_with("250"));
    assert!(smtp.cmd("DATA").starts_with("354"));
    assert!(smtp.cmd("a\r\n..b\r\n.").starts_with("250 2.0.0 Ok: queued as S1"));
    assert!(smtp.cmd("RSET").starts_with("250"));
    assert!(smtp.cmd("DATA").starts_with("554"), "no DATA without a recipient");
    assert!(smtp.cmd("QUIT").starts_with("221"));
    assert_eq!((sink.protocol_errors(), sink.unasked_pipelining(), sink.rsets()), (1, 1, 1));
    let received = sink.transactions();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, b"a\r\n.b\r\n");
    assert_eq!(received[0].sender, "a@client.test");
    assert_eq!(received[0].recipients, ["flaky9@dest.test", "ok1@dest.test"]);
    assert_eq!((received[0].connection, received[0].tls), (1, false));
    assert_eq!(sink.connections(), 1);
}

/// Postfix's smtp-sink, a peer nobody here wrote, receives 20 messages: relayd logs each as
/// delivered with smtp-sink's reply, smtp-sink's dumps hold each message once, and the spool
/// is empty afterwards.
#[test]
fn postfix_smtp_sink_receives_every_message() {
    let work = tempfile::tempdir().expect("temp dir");
    let dumps = work.path().join("dumps");
    std::fs::create_dir(&dumps).expect("dump dir");
    // smtp-sink writes its dumps as nobody.
    std::fs::set_permissions(&dumps, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let port = free_port_on([127, 0, 0, 41]);
    let sink_log = work.path().join("smtp-sink.log");
    let args: Vec<String> = [
        "-u",
        "nobody",
        "-d",
        &format!("{}/msg.", dumps.display()),
        &format!("127.0.0.41:{port}"),
        "64",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut smtp_sink = Daemon::spawn("smtp-sink", "/usr/sbin/smtp-sink", &args, &sink_log);
    smtp_sink.wait_listening(SocketAddr::from(([127, 0, 0, 41], port)), &sink_log);

    let hop = format!("127.0.0.41:{port}");
    let mut node = start_node(&format!("{}{}", route("*", &hop, "none"), delivery("")));
    let mails: Vec<Mail> = (0..20)
        .map(|i| Mail::new("sender@client.test", &["rcpt@dest.test"], &format!("pf-{i:02}")))
        .collect();
    let ids = send(&node, &mails);
    wait_explained(
        "relayd to deliver all 20 messages to smtp-sink",
        || ids.iter().all(|id| has(&node, "delivered", id, "rcpt@dest.test")),
        || format!("{}\n{}", node.log(), std::fs::read_to_string(&sink_log).unwrap_or_default()),
    );
    let log = node.log();
    for id in &ids {
        let lines = logged(&log, "delivered", id, "rcpt@dest.test");
        assert_eq!(lines.len(), 1, "{id} delivered once: {lines:#?}");
        assert_eq!(field(&lines[0], "relay"), hop, "{}", lines[0]);
        assert!(field(&lines[0], "reply").starts_with("250 "), "{}", lines[0]);
    }

    // What smtp-sink dumped: one file per transaction, each with the message's Message-ID.
    let dumped = || -> BTreeMap<String, usize> {
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(&dumps).expect("read dumps") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("Message-ID: ")) {
                *found.entry(line["Message-ID: ".len()..].to_string()).or_insert(0) += 1;
            }
        }
        found
    };
    let expected: BTreeMap<String, usize> =
        mails.iter().map(|m| (format!("<{}>", m.message_id()), 1)).collect();
    wait_explained(
        "smtp-sink to dump every message",
        || dumped() == expected,
        || format!("dumped: {:?}\n{}", dumped(), node.log()),
    );

    assert_eq!(node.stop(), Some(0));
    let queued = node.queued();
    assert!(queued.is_empty(), "the spool is empty: {:#?}", queued);
}

/// One message, three recipients, three fates: ok1 delivered, reject1 bounced (with a DSN to
/// the sender), defer1 deferred and still queued, alone, with its reply and next attempt.
#[test]
fn each_recipient_gets_its_own_result() {
    per_recipient_results(true);
}

/// The same with a next hop that does not offer PIPELINING: relayd waits for each reply.
#[test]
fn each_recipient_gets_its_own_result_without_pipelining() {
    per_recipient_results(false);
}

fn per_recipient_results(pipelining: bool) {
    let sink = Sink::start("127.0.0.1:0", Options { pipelining, ..Options::default() });
    let mut node = node_for(&sink, "retry = [\"1h\"]");
    let (ok, reject, defer) = ("ok1@dest.test", "reject1@dest.test", "defer1@dest.test");
    let id = send_one(&node, Mail::new("oksender@client.test", &[ok, reject, defer], "mixed"));
    wait_explained(
        "a result for each recipient, and the DSN recorded",
        || {
            let log = node.log();
            !logged(&log, "delivered", &id, ok).is_empty()
                && !logged(&log, "bounced", &id, reject).is_empty()
                && !logged(&log, "deferred", &id, defer).is_empty()
                && log.contains(&format!("orig_id={id}"))
        },
        || state(&node, &sink),
    );
    let log = node.log();
    let delivered = &logged(&log, "delivered", &id, ok)[0];
    assert_eq!(field(delivered, "relay"), format!("127.0.0.1:{}", sink.port()), "{delivered}");
    assert!(field(delivered, "reply").starts_with("250 2.0.0 Ok: queued as S"), "{delivered}");
    let bounced = &logged(&log, "bounced", &id, reject)[0];
    assert_eq!(field(bounced, "reply"), "550 5.1.1 no such user", "{bounced}");
    let deferred = &logged(&log, "deferred", &id, defer)[0];
    assert_eq!(field(deferred, "reply"), "451 4.3.0 try later", "{deferred}");
    assert!(!field(deferred, "next_attempt").is_empty(), "{deferred}");
    // Postfix's dsn= and delay=: the enhanced status code, and the seconds since the message
    // was accepted (two decimals).
    for (line, dsn) in [(delivered, "2.0.0"), (bounced, "5.1.1"), (deferred, "4.3.0")] {
        assert_eq!(field(line, "dsn"), dsn, "{line}");
        assert_delay(line);
    }
    for (event, rcpt) in [("delivered", defer), ("bounced", defer), ("delivered", reject)] {
        assert!(logged(&log, event, &id, rcpt).is_empty(), "{rcpt} not {event}:\n{log}");
    }

    // The sink got the message once, for ok1 only.
    let message: Vec<Transaction> =
        sink.transactions().into_iter().filter(|t| !t.sender.is_empty()).collect();
    assert_eq!(message.len(), 1, "{message:#?}");
    assert_eq!(message[0].recipients, [ok]);
    assert_eq!(message[0].sender, "oksender@client.test");
    assert!(message[0].mail_params.contains(" SIZE="), "{}", message[0].mail_params);
    assert_eq!(sink.unasked_pipelining(), 0, "no command sent ahead without PIPELINING");
    assert_eq!(sink.protocol_errors(), 0);
    common::assert_same_bytes(
        Node::without_received(&message[0].body),
        Mail::new("oksender@client.test", &[ok, reject, defer], "mixed").text().as_bytes(),
        "the message at the sink, after relayd's Received:",
    );

    assert_eq!(node.stop(), Some(0));
    let queued = node.queued();
    let (record, _) = queued
        .iter()
        .find(|(m, _)| m.envelope.id.to_string() == id)
        .unwrap_or_else(|| panic!("{id} is still queued for defer1: {queued:#?}"));
    match &record.recipients[..] {
        [
            RecipientState::Delivered { reply: ok_reply, relay },
            RecipientState::Bounced { reply: bounce_reply },
            RecipientState::Pending { attempts: 1, next_attempt_ms, last_reply: Some(last) },
        ] => {
            assert!(ok_reply.starts_with("250 2.0.0"), "{ok_reply}");
            assert_eq!(*relay, format!("127.0.0.1:{}", sink.port()));
            assert_eq!(bounce_reply, "550 5.1.1 no such user");
            assert_eq!(last, "451 4.3.0 try later");
            let now = now_ms();
            // retry = 1h with ±10% jitter.
            let (min, max) = (now + 50 * 60 * 1000, now + 67 * 60 * 1000);
            assert!((min..max).contains(next_attempt_ms), "{next_attempt_ms} vs now {now}");
        }
        other => panic!("recipient states of {id}: {other:#?}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
        as u64
}

/// A 300 KiB message, many spool chunks, with dot-leading lines of every length: the sink
/// gets it byte for byte (relayd dot-stuffs it on the way, the sink unstuffs it), 8BITMIME
/// declared for its 8-bit content.
#[test]
fn a_large_message_arrives_byte_for_byte() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "");
    let body: String = (0..11_000)
        .map(|i| match i % 5 {
            0 => format!(".{i:05}{}\r\n", ".".repeat(i % 7)),
            1 => ".\r\n".to_string(),
            2 => format!("{i:05} Grüße {}\r\n", "x".repeat(i % 97)),
            _ => format!("{i:05}.{}\r\n", "y".repeat(i % 53)),
        })
        .collect();
    let mail = Mail::new("oksender@client.test", &["ok1@dest.test"], "large").with_body(body);
    let reply = Raw::greeted(node.addr()).send_message(
        "<oksender@client.test> BODY=8BITMIME",
        &mail.to,
        &stuffed(&mail.text()),
    );
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").expect("queued").trim().to_string();
    wait_explained(
        "the large message delivered",
        || has(&node, "delivered", &id, "ok1@dest.test"),
        || state(&node, &sink),
    );
    let at_sink = sink.transactions();
    assert_eq!(at_sink.len(), 1);
    assert!(mail.text().len() > 300 * 1024, "{} bytes", mail.text().len());
    common::assert_same_bytes(
        Node::without_received(&at_sink[0].body),
        mail.text().as_bytes(),
        "the large message at the sink",
    );
    assert!(at_sink[0].mail_params.contains(" BODY=8BITMIME"), "{}", at_sink[0].mail_params);
    assert_eq!(node.stop(), Some(0));
}

/// flaky1 is refused with 451 the first time: relayd defers it, tries again after the 200 ms
/// retry interval, and delivers exactly one copy.
#[test]
fn a_deferred_recipient_is_retried_and_delivered_once() {
    let (deferred, _) = deferred_once_then_delivered("flaky1@dest.test", "flaky");
    assert_eq!(field(&deferred, "reply"), "451 4.3.0 try later");
}

/// Sends one message to `rcpt`, which the sink refuses the first time, with a 200 ms retry
/// interval: relayd defers it once, then delivers exactly one copy, and bounces nothing.
/// Returns the `deferred` and the `delivered` log lines.
fn deferred_once_then_delivered(rcpt: &str, tag: &str) -> (String, String) {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"200ms\"]");
    let id = send_one(&node, Mail::new("oksender@client.test", &[rcpt], tag));
    wait_explained(
        &format!("{rcpt} delivered"),
        || has(&node, "delivered", &id, rcpt),
        || state(&node, &sink),
    );
    let log = node.log();
    let deferred = logged(&log, "deferred", &id, rcpt);
    assert_eq!(deferred.len(), 1, "deferred once, first: {log}");
    let first_deferred = log.find(&deferred[0]).expect("in the log");
    let delivered = logged(&log, "delivered", &id, rcpt).remove(0);
    assert!(first_deferred < log.find(delivered.as_str()).expect("in the log"), "{log}");
    assert!(logged(&log, "bounced", &id, rcpt).is_empty(), "{log}");
    assert!(dsns(&sink).is_empty(), "no bounce: {log}");

    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "the message left the spool");
    let at_sink = sink.transactions();
    assert_eq!(at_sink.len(), 1, "exactly one copy: {at_sink:#?}");
    assert_eq!(at_sink[0].recipients, [rcpt]);
    (deferred[0].clone(), delivered)
}

/// `relayd queue flush` tries a deferred recipient now, not at its retry time an hour away.
#[test]
fn a_flush_tries_deferred_recipients_before_their_retry_time() {
    let sink = Sink::plain();
    let node = node_for(&sink, "retry = [\"1h\"]");
    let rcpt = "flaky2@dest.test";
    let id = send_one(&node, Mail::new("oksender@client.test", &[rcpt], "flushed"));
    wait_explained("flaky2 deferred", || has(&node, "deferred", &id, rcpt), || state(&node, &sink));
    assert!(!has(&node, "delivered", &id, rcpt));
    let config = node.config_path.to_str().expect("utf-8 path");
    let out = run(BIN, &["queue", "flush", "--config", config]);
    assert!(out.status.success(), "queue flush: {}", String::from_utf8_lossy(&out.stderr));
    wait_explained(
        "flaky2 delivered after the flush",
        || has(&node, "delivered", &id, rcpt),
        || state(&node, &sink),
    );
    assert_eq!(sink.transactions().len(), 1);
}

/// A recipient refused with 550 is reported to the sender in an RFC 3464 DSN from the null
/// sender, which the sink (the sender's domain routes there too) receives; Python's email
/// package reads it as a multipart/report with the recipient's status and the original headers.
#[test]
fn a_refused_recipient_is_reported_to_the_sender_in_a_dsn() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"1h\"]");
    let id = send_one(
        &node,
        Mail::new("oksender@client.test", &["ok1@dest.test", "reject1@dest.test"], "dsn-subject"),
    );
    wait_explained("the DSN at the sink", || !dsns(&sink).is_empty(), || state(&node, &sink));
    let log = node.log();
    assert_eq!(logged(&log, "bounced", &id, "reject1@dest.test").len(), 1, "{log}");
    assert!(has(&node, "delivered", &id, "ok1@dest.test"), "{log}");
    let dsn = dsns(&sink).remove(0);
    assert_eq!(dsn.recipients, ["oksender@client.test"], "the DSN goes to the original sender");
    assert_dsn(&dsn, "reject1@dest.test", "5.1.1", "dsn-subject");
    let text = String::from_utf8_lossy(&dsn.body);
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"), "{text}");
    let dsn_line = log
        .lines()
        .find(|l| l.contains(&format!("orig_id={id}")))
        .unwrap_or_else(|| panic!("accepted DSN logged: {log}"));
    assert!(dsn_line.contains("accepted DSN id="), "{dsn_line}");
    let dsn_id = field(dsn_line, "id");
    wait_explained(
        "the DSN logged as delivered",
        || has(&node, "delivered", &dsn_id, "oksender@client.test"),
        || state(&node, &sink),
    );

    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "the message and its DSN left the spool");
    assert_eq!(dsns(&sink).len(), 1, "one DSN");
}

/// A message from the null sender that is refused is bounced without a DSN: a bounce is never
/// bounced. With one delivery at a time to the sink, a later message reaching the sink shows
/// that the refused one's results (and any DSN) were recorded before.
#[test]
fn a_bounce_is_never_bounced() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"1h\"]\nconcurrency_per_host = 1");
    let id = send_one(&node, Mail::new("", &["reject1@dest.test"], "null-sender"));
    wait_explained(
        "the null sender's message bounced",
        || has(&node, "bounced", &id, "reject1@dest.test"),
        || state(&node, &sink),
    );
    let later = send_one(&node, Mail::new("oksender@client.test", &["ok1@dest.test"], "later"));
    wait_explained(
        "the later message delivered",
        || has(&node, "delivered", &later, "ok1@dest.test"),
        || state(&node, &sink),
    );
    let log = node.log();
    assert!(!log.contains("accepted DSN"), "no DSN for a message from <>:\n{log}");
    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "nothing queued, no DSN: {:#?}", node.queued());
    assert!(sink.transactions().iter().all(|t| !t.sender.is_empty()), "no DSN at the sink");
    assert_eq!(copies(&sink).len(), 1, "only the later message arrived");
}

/// A recipient still deferred when the message has been queued longer than
/// max_queue_lifetime is bounced with a DSN whose status is 4.4.7.
#[test]
fn an_expired_message_is_bounced_with_4_4_7() {
    let sink = Sink::plain();
    let mut node = node_for(&sink, "retry = [\"300ms\"]\nmax_queue_lifetime = \"1s\"");
    let rcpt = "defer1@dest.test";
    let id = send_one(&node, Mail::new("oksender@client.test", &[rcpt], "expiring"));
    wait_explained(
        "the expiry DSN at the sink",
        || !dsns(&sink).is_empty(),
        || state(&node, &sink),
    );
    let log = node.log();
    let deferred = logged(&log, "deferred", &id, rcpt);
    assert!(deferred.len() >= 2, "deferred until it expired: {log}");
    let bounced = logged(&log, "bounced", &id, rcpt);
    assert_eq!(bounced.len(), 1, "{log}");
    assert!(field(&bounced[0], "reply").starts_with("4.4.7 "), "{}", bounced[0]);
    assert!(field(&bounced[0], "reply").contains("451 4.3.0 try later"), "{}", bounced[0]);
    assert_dsn(&dsns(&sink)[0], rcpt, "4.4.7", "expiring");

    assert_eq!(node.stop(), Some(0));
    let queued = node.queued();
    assert!(queued.iter().all(|(m, _)| m.envelope.id.to_string() != id), "{queued:#?}");
    assert!(sink.transactions().iter().all(|t| t.sender.is_empty()), "nothing but the DSN");
}

/// MX routing through dnsmasq on loopback: mxtest.example has MX 10 mx1 (127.0.0.31, where
/// nobody listens) and MX 20 mx2 (127.0.0.32, the sink on port 25); relayd falls back to mx2.
/// nosuch.example does not exist (NXDOMAIN): its recipient is bounced with 5.1.2, and the DSN
/// goes to the sender at mxtest.example, through mx2 too.
#[test]
fn mx_routing_falls_back_to_the_next_mx_and_bounces_a_missing_domain() {
    let refused = TcpStream::connect_timeout(&"127.0.0.31:25".parse().unwrap(), CONNECT_CHECK);
    assert!(refused.is_err(), "something listens on 127.0.0.31:25; the test needs it closed");
    let sink = Sink::start("127.0.0.32:25", Options::default());

    let dns = Dns::start(
        [127, 0, 0, 51],
        &[
            "--mx-host=mxtest.example,mx1.mxtest.example,10",
            "--mx-host=mxtest.example,mx2.mxtest.example,20",
            "--host-record=mx1.mxtest.example,127.0.0.31",
            "--host-record=mx2.mxtest.example,127.0.0.32",
            // No MX: the domain's own address is its mail host (RFC 5321 section 5.1).
            "--host-record=amx.example,127.0.0.32",
        ],
    );
    let mut node = start_node(&format!(
        "{}{}",
        route("*", "mx", "none"),
        delivery(&format!("resolvers = [\"{}\"]\nretry = [\"1h\"]", dns.address))
    ));
    let sender = "oksender@mxtest.example";
    let id = send_one(&node, Mail::new(sender, &["ok1@mxtest.example"], "via-mx"));
    wait_explained(
        "delivery through MX",
        || has(&node, "delivered", &id, "ok1@mxtest.example"),
        || state(&node, &sink),
    );
    let log = node.log();
    let line = &logged(&log, "delivered", &id, "ok1@mxtest.example")[0];
    assert_eq!(field(line, "relay"), "mx2.mxtest.example[127.0.0.32]:25", "{line}");
    let at_sink = sink.transactions();
    assert_eq!(at_sink.len(), 1);
    assert_eq!(at_sink[0].recipients, ["ok1@mxtest.example"]);

    let missing = send_one(&node, Mail::new(sender, &["user@nosuch.example"], "no-such-domain"));
    wait_explained(
        "the DSN for nosuch.example at mx2",
        || !dsns(&sink).is_empty(),
        || state(&node, &sink),
    );
    let log = node.log();
    let bounced = logged(&log, "bounced", &missing, "user@nosuch.example");
    assert_eq!(bounced.len(), 1, "{log}");
    assert!(field(&bounced[0], "reply").starts_with("5.1.2 "), "{}", bounced[0]);
    let dsn = dsns(&sink).remove(0);
    assert_eq!(dsn.recipients, [sender]);
    assert_dsn(&dsn, "user@nosuch.example", "5.1.2", "no-such-domain");

    // No MX record, an address: delivered to that address.
    let implicit = send_one(&node, Mail::new(sender, &["ok2@amx.example"], "implicit-mx"));
    wait_explained(
        "delivery to the implicit MX",
        || has(&node, "delivered", &implicit, "ok2@amx.example"),
        || state(&node, &sink),
    );
    let line = &logged(&node.log(), "delivered", &implicit, "ok2@amx.example")[0];
    assert_eq!(field(line, "relay"), "amx.example[127.0.0.32]:25", "{line}");

    let queries = dns.log();
    for query in ["query[MX] mxtest.example", "query[MX] nosuch.example", "mx1.mxtest.example"] {
        assert!(queries.contains(query), "relayd asked dnsmasq: {query}\n{queries}");
    }
    assert_eq!(node.stop(), Some(0));
}

/// Two domains whose MX is the same host: with an `mx` route the destination is the recipient
/// domain (Postfix's per-destination concurrency), so concurrency_per_host = 1 allows one
/// connection per domain: two at once here. The sink takes 1 s to answer each DATA, so the
/// overlap is seen.
#[test]
fn concurrency_per_host_is_per_destination_domain_with_mx_routes() {
    let delay = Options { data_delay: Duration::from_secs(1), ..Options::default() };
    let sink = Sink::start("127.0.0.33:25", delay);
    let dns = Dns::start(
        [127, 0, 0, 52],
        &[
            "--mx-host=one.example,mx.shared.example,10",
            "--mx-host=two.example,mx.shared.example,10",
            "--host-record=mx.shared.example,127.0.0.33",
        ],
    );
    let keys = format!("resolvers = [\"{}\"]\nconcurrency_per_host = 1", dns.address);
    let node = start_node(&format!("{}{}", route("*", "mx", "none"), delivery(&keys)));
    let ids = send(
        &node,
        &[
            Mail::new("oksender@one.example", &["ok1@one.example"], "shared-mx-1"),
            Mail::new("oksender@two.example", &["ok1@two.example"], "shared-mx-2"),
        ],
    );
    wait_explained(
        "both delivered",
        || {
            has(&node, "delivered", &ids[0], "ok1@one.example")
                && has(&node, "delivered", &ids[1], "ok1@two.example")
        },
        || state(&node, &sink),
    );
    assert_eq!(sink.max_simultaneous(), 2, "one connection per destination domain at once");
}

/// Two sinks, one offering STARTTLS and one not, each the next hop of its own domain
/// (secure.test, plain.test) under the same TLS `policy`, and one message sent to each. The
/// certificates' directory is returned so that it outlives the test.
fn tls_pair(policy: &str, keys: &str) -> (Node, Sink, Sink, Vec<String>, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(certs.path());
    let secure =
        Sink::start("127.0.0.1:0", Options { starttls: Some((cert, key)), ..Options::default() });
    let plain = Sink::plain();
    let sections = format!(
        "{}{}{}",
        route("secure.test", &format!("127.0.0.1:{}", secure.port()), policy),
        route("plain.test", &format!("127.0.0.1:{}", plain.port()), policy),
        delivery(keys),
    );
    let node = start_node(&sections);
    let ids = send(
        &node,
        &[
            Mail::new("oksender@client.test", &["ok1@secure.test"], &format!("{policy}-tls")),
            Mail::new("oksender@client.test", &["ok1@plain.test"], &format!("{policy}-plain")),
        ],
    );
    (node, secure, plain, ids, certs)
}

/// tls = "required": delivered over STARTTLS to a sink that offers it; deferred with 4.7.4,
/// and nothing sent, to one that does not.
#[test]
fn tls_required_delivers_only_over_tls() {
    let (node, secure, plain, ids, _certs) = tls_pair("required", "retry = [\"1h\"]");
    wait_explained(
        "delivered over TLS, and deferred without",
        || {
            has(&node, "delivered", &ids[0], "ok1@secure.test")
                && has(&node, "deferred", &ids[1], "ok1@plain.test")
        },
        || node.log(),
    );
    let at_secure = secure.transactions();
    assert_eq!(at_secure.len(), 1);
    assert!(at_secure[0].tls, "the sink saw TLS");
    let log = node.log();
    let deferred = &logged(&log, "deferred", &ids[1], "ok1@plain.test")[0];
    assert!(field(deferred, "reply").starts_with("4.7.4 "), "{deferred}");
    assert_eq!(plain.transaction_count(), 0, "nothing sent in plain text");
    assert!(plain.connections() >= 1, "relayd did talk to the plain sink");
}

/// tls = "opportunistic": STARTTLS when offered, plain text when not.
#[test]
fn opportunistic_tls_is_used_when_offered() {
    let (node, secure, plain, ids, _certs) = tls_pair("opportunistic", "");
    wait_explained(
        "both delivered",
        || {
            has(&node, "delivered", &ids[0], "ok1@secure.test")
                && has(&node, "delivered", &ids[1], "ok1@plain.test")
        },
        || node.log(),
    );
    assert!(secure.transactions()[0].tls, "TLS when offered");
    assert!(!plain.transactions()[0].tls, "plain text when not");
}

/// concurrency_per_host = 2 and 30 messages queued while the sink holds its replies: at most
/// two connections at once, connections reused (RSET between messages), every message once.
#[test]
fn connections_are_reused_within_the_concurrency_limit() {
    connection_reuse(true);
}

/// The same with a next hop that does not offer PIPELINING: RSET, MAIL, RCPT and DATA each wait
/// for the reply to the one before.
#[test]
fn connections_are_reused_without_pipelining() {
    connection_reuse(false);
}

fn connection_reuse(pipelining: bool) {
    let sink = Sink::start("127.0.0.1:0", Options { pipelining, ..Options::default() });
    sink.hold();
    let mut node = node_for(&sink, "concurrency_per_host = 2");
    let mails: Vec<Mail> = (0..30)
        .map(|i| Mail::new("oksender@client.test", &["ok1@dest.test"], &format!("reuse-{i:02}")))
        .collect();
    let ids = send(&node, &mails);
    // Both workers are busy with a message each, the others wait in relayd's queue.
    wait_explained(
        "two deliveries in flight",
        || sink.transaction_count() == 2,
        || state(&node, &sink),
    );
    assert_eq!(sink.connections(), 2);
    sink.release();
    wait_explained(
        "all 30 delivered",
        || ids.iter().all(|id| has(&node, "delivered", id, "ok1@dest.test")),
        || state(&node, &sink),
    );
    assert!(sink.max_simultaneous() <= 2, "{} connections at once", sink.max_simultaneous());
    assert!(sink.connections() < 30, "{} connections for 30 messages", sink.connections());
    assert!(sink.rsets() >= 1, "RSET between messages on a reused connection");
    assert_eq!(sink.protocol_errors(), 0);
    assert_eq!(sink.unasked_pipelining(), 0, "no command sent ahead without PIPELINING");
    let expected: BTreeMap<String, usize> = mails.iter().map(|m| (m.message_id(), 1)).collect();
    assert_eq!(copies(&sink), expected);
    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty());
    eprintln!(
        "reuse (pipelining {pipelining}): {} connections, {} RSETs, at most {} at once",
        sink.connections(),
        sink.rsets(),
        sink.max_simultaneous()
    );
}

/// A message none of whose recipients is accepted, between two good ones on one connection
/// (one delivery at a time, the first held at the sink while the others queue): with
/// PIPELINING relayd sends DATA along with the refused RCPTs, takes the sink's 554 for it, sends
/// no body, and the next message goes through on the same connection.
#[test]
fn a_message_with_no_accepted_recipient_sends_no_body() {
    let sink = Sink::plain();
    sink.hold();
    let mut node = node_for(&sink, "retry = [\"1h\"]\nconcurrency_per_host = 1");
    let first = send_one(&node, Mail::new("oksender@client.test", &["ok1@dest.test"], "first"));
    wait_explained(
        "the first message held at the sink",
        || sink.transaction_count() == 1,
        || state(&node, &sink),
    );
    let ids = send(
        &node,
        &[
            Mail::new("oksender@client.test", &["reject1@dest.test", "defer1@dest.test"], "none"),
            Mail::new("oksender@client.test", &["ok2@dest.test"], "after"),
        ],
    );
    sink.release();
    wait_explained(
        "results for all three",
        || {
            let log = node.log();
            !logged(&log, "delivered", &first, "ok1@dest.test").is_empty()
                && !logged(&log, "bounced", &ids[0], "reject1@dest.test").is_empty()
                && !logged(&log, "deferred", &ids[0], "defer1@dest.test").is_empty()
                && !logged(&log, "delivered", &ids[1], "ok2@dest.test").is_empty()
        },
        || state(&node, &sink),
    );
    let tags: BTreeSet<String> = copies(&sink).into_keys().collect();
    assert_eq!(tags, BTreeSet::from(["after@client.test".into(), "first@client.test".into()]));
    assert_eq!(sink.protocol_errors(), 0, "no body taken for commands");
    eprintln!("no accepted recipient: {} connection(s) for 3 messages", sink.connections());
    assert_eq!(node.stop(), Some(0));
}

/// A dead next hop (connection refused) and a silent one (accepts, never greets) hold up
/// nobody else: mail for b.test is delivered while a.test's is deferred and c.test's waits.
#[test]
fn a_dead_host_does_not_hold_up_the_others() {
    let sink = Sink::plain();
    // Listening but never accepting: the kernel completes the handshake, nobody greets.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let sections = format!(
        "{}{}{}{}",
        route("a.test", "127.0.0.71:2525", "none"),
        route("c.test", &format!("127.0.0.1:{silent_port}"), "none"),
        route("b.test", &format!("127.0.0.1:{}", sink.port()), "none"),
        delivery("retry = [\"1h\"]"),
    );
    let node = start_node(&sections);
    let ids = send(
        &node,
        &[
            Mail::new("oksender@client.test", &["x@a.test"], "to-dead"),
            Mail::new("oksender@client.test", &["y@c.test"], "to-silent"),
            Mail::new("oksender@client.test", &["z@b.test"], "to-live"),
            Mail::new("oksender@client.test", &["u@a.test", "v@b.test"], "to-both"),
        ],
    );
    wait_explained(
        "b.test delivered, a.test deferred",
        || {
            let log = node.log();
            !logged(&log, "deferred", &ids[0], "x@a.test").is_empty()
                && !logged(&log, "delivered", &ids[2], "z@b.test").is_empty()
                && !logged(&log, "deferred", &ids[3], "u@a.test").is_empty()
                && !logged(&log, "delivered", &ids[3], "v@b.test").is_empty()
        },
        || state(&node, &sink),
    );
    let log = node.log();
    let deferred = &logged(&log, "deferred", &ids[0], "x@a.test")[0];
    assert!(field(deferred, "reply").starts_with("4.4.1 connect to 127.0.0.71:2525"), "{deferred}");
    for event in ["delivered", "deferred", "bounced"] {
        assert!(logged(&log, event, &ids[1], "y@c.test").is_empty(), "c.test still waits: {log}");
    }
    let at_sink = sink.transactions();
    assert_eq!(at_sink.len(), 2);
    assert!(at_sink.iter().any(|t| t.recipients == ["v@b.test"]), "{at_sink:#?}");
    drop(silent);
}

/// The next hop is down while 20 messages are accepted and deferred; relayd is killed -9, the
/// next hop comes up, relayd starts again: all 20 are delivered, each exactly once.
#[test]
fn restart_during_a_backlog_delivers_everything_once() {
    let hop = format!("127.0.0.61:{}", free_port_on([127, 0, 0, 61]));
    let mut node =
        start_node(&format!("{}{}", route("*", &hop, "none"), delivery("retry = [\"300ms\"]")));
    let mails: Vec<Mail> = (0..20)
        .map(|i| Mail::new("oksender@client.test", &["ok1@dest.test"], &format!("backlog-{i:02}")))
        .collect();
    let ids = send(&node, &mails);
    wait_explained(
        "every message deferred",
        || {
            let log = node.log();
            ids.iter().all(|id| !logged(&log, "deferred", id, "ok1@dest.test").is_empty())
        },
        || node.log(),
    );
    node.kill9();
    let sink = Sink::start(&hop, Options::default());
    relaunch(&mut node);
    wait_explained(
        "all 20 at the sink and logged delivered",
        || {
            copies(&sink).len() == 20
                && ids.iter().all(|id| has(&node, "delivered", id, "ok1@dest.test"))
        },
        || state(&node, &sink),
    );
    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "the spool is empty");
    let expected: BTreeMap<String, usize> = mails.iter().map(|m| (m.message_id(), 1)).collect();
    assert_eq!(copies(&sink), expected, "each message exactly once");
}

/// kill -9 while deliveries wait for the sink's reply to DATA: after the restart every message
/// reaches the sink; only the ones in flight at the kill may arrive twice (at most one per
/// connection, so at most concurrency_per_host).
#[test]
fn kill_9_during_delivery_loses_nothing() {
    let sink = Sink::start(
        "127.0.0.1:0",
        Options { data_delay: Duration::from_secs(2), ..Options::default() },
    );
    let mut node = node_for(&sink, "retry = [\"300ms\"]\nconcurrency_per_host = 2");
    let mails: Vec<Mail> = (0..10)
        .map(|i| Mail::new("oksender@client.test", &["ok1@dest.test"], &format!("inflight-{i:02}")))
        .collect();
    send(&node, &mails);
    wait_explained(
        "the first bodies at the sink",
        || sink.transaction_count() >= 2,
        || state(&node, &sink),
    );
    let in_flight: BTreeSet<String> = copies(&sink).into_keys().collect();
    node.kill9();
    sink.set_data_delay(Duration::ZERO);
    relaunch(&mut node);
    let all: BTreeSet<String> = mails.iter().map(Mail::message_id).collect();
    wait_explained(
        "every message at the sink",
        || copies(&sink).keys().cloned().collect::<BTreeSet<_>>() == all,
        || state(&node, &sink),
    );
    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "the spool is empty");
    let copies = copies(&sink);
    let duplicated: Vec<&String> =
        copies.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    assert!(duplicates <= 2, "{duplicates} duplicates: {copies:#?}");
    for id in &duplicated {
        assert!(in_flight.contains(*id), "{id} was duplicated but not in flight at the kill");
    }
    eprintln!(
        "kill -9 during delivery: {} in flight at the kill, {duplicates} duplicate(s): {duplicated:?}",
        in_flight.len()
    );
}

/// STARTTLS offered but refused with 454 (RFC 3207 lets the client go on in plain text): with
/// tls = "required" the delivery is deferred and nothing is sent.
#[test]
fn tls_required_defers_when_starttls_is_refused() {
    let sink = Sink::start("127.0.0.1:0", Options { refuse_starttls: true, ..Options::default() });
    let hop = format!("127.0.0.1:{}", sink.port());
    let sections = format!("{}{}", route("*", &hop, "required"), delivery("retry = [\"1h\"]"));
    let node = start_node(&sections);
    let id = send_one(&node, Mail::new("oksender@client.test", &["ok1@dest.test"], "refused-tls"));
    wait_explained(
        "deferred",
        || has(&node, "deferred", &id, "ok1@dest.test"),
        || state(&node, &sink),
    );
    let log = node.log();
    let deferred = &logged(&log, "deferred", &id, "ok1@dest.test")[0];
    assert!(field(deferred, "reply").starts_with("4.7."), "{deferred}");
    assert_eq!(sink.transaction_count(), 0, "nothing sent in plain text");
}

/// With tls = "opportunistic", a next hop that offers STARTTLS but refuses it (454) gets the
/// mail in plain text: RFC 3207 lets the client go on without TLS after a 454, and plain text is
/// what "opportunistic" settles for when TLS is not to be had.
#[test]
fn opportunistic_tls_falls_back_to_plain_text_when_starttls_is_refused() {
    let sink = Sink::start("127.0.0.1:0", Options { refuse_starttls: true, ..Options::default() });
    let hop = format!("127.0.0.1:{}", sink.port());
    let sections = format!("{}{}", route("*", &hop, "opportunistic"), delivery("retry = [\"1h\"]"));
    let node = start_node(&sections);
    let id = send_one(&node, Mail::new("oksender@client.test", &["ok1@dest.test"], "tls-454"));
    wait_explained(
        "a result",
        || {
            has(&node, "delivered", &id, "ok1@dest.test")
                || has(&node, "deferred", &id, "ok1@dest.test")
        },
        || state(&node, &sink),
    );
    let log = node.log();
    assert!(has(&node, "delivered", &id, "ok1@dest.test"), "delivered in plain text:\n{log}");
    assert!(!sink.transactions()[0].tls);
}

/// A message that needs SMTPUTF8 (a UTF-8 recipient) to a next hop without SMTPUTF8 is bounced
/// with 5.6.7, and the sender, whose address is ASCII, gets the DSN at that same next hop (RFC
/// 6533 has the DSN downgraded when its return path lacks SMTPUTF8).
#[test]
fn an_smtputf8_message_to_a_host_without_it_is_bounced_to_the_sender() {
    let sink = Sink::plain();
    let node = node_for(&sink, "retry = [\"1h\"]");
    let (sender, rcpt) = ("oksender@client.test", "okbücher@dest.test");
    let mail = Mail::new(sender, &[rcpt], "utf8-rcpt");
    let reply = Raw::greeted(node.addr()).send_message(
        &format!("<{sender}> SMTPUTF8"),
        &[rcpt],
        &stuffed(&mail.text()),
    );
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").expect("queued").trim().to_string();
    wait_explained(
        "the recipient bounced",
        || has(&node, "bounced", &id, rcpt),
        || state(&node, &sink),
    );
    let log = node.log();
    let bounced = &logged(&log, "bounced", &id, rcpt)[0];
    assert!(field(bounced, "reply").starts_with("5.6.7 "), "{bounced}");
    // The DSN reaches the sink, or relayd gives up on it.
    let dsn_given_up = |log: &str| {
        log.lines().any(|l| l.contains(" bounced id=") && l.contains(&format!("rcpt=<{sender}>")))
    };
    wait_explained(
        "the DSN delivered or given up",
        || !dsns(&sink).is_empty() || dsn_given_up(&node.log()),
        || state(&node, &sink),
    );
    let dsns = dsns(&sink);
    assert_eq!(dsns.len(), 1, "the sender got a DSN; relayd's log:\n{}", node.log());
    assert_eq!(dsns[0].recipients, [sender]);
    let report = dsn_report(&dsns[0]);
    assert_eq!(report["recipients"][0]["Action"], "failed", "{report:#}");
    assert_eq!(report["recipients"][0]["Status"], "5.6.7", "{report:#}");
}

/// RFC 5321 section 4.5.3.1.10: a 552 to RCPT (full1 gets one, the first time) is temporary.
/// relayd defers it as a 452, Postfix's reading, retries and delivers it once; the log lines
/// carry the status code and the delay.
#[test]
fn a_552_to_rcpt_is_deferred_and_retried() {
    let (deferred, delivered) = deferred_once_then_delivered("full1@dest.test", "full");
    assert_eq!(field(&deferred, "reply"), "452 4.2.2 mailbox full", "{deferred}");
    assert_eq!(field(&deferred, "dsn"), "4.2.2", "{deferred}");
    assert_delay(&deferred);
    assert_eq!(field(&delivered, "dsn"), "2.0.0", "{delivered}");
    assert_delay(&delivered);
}

/// A header section with `n` Received: fields, as a looping message gathers them.
fn looping_mail(tag: &str, n: usize) -> Mail {
    let received: String = (0..n)
        .map(|i| format!("Received: from hop{i}.test by hop{}.test; Mon, 24 Nov 2025\r\n", i + 1))
        .collect();
    let mut mail = Mail::new("oksender@client.test", &["ok1@dest.test"], tag);
    mail.trace = received;
    mail
}

/// Postfix's hopcount_limit: 51 Received: fields (the default limit is 50) are a mail loop,
/// refused at the end of DATA, and at BDAT, with 554 5.4.6; nothing is queued. 50 are
/// accepted. Python's smtplib is the client of the refused DATA.
#[test]
fn more_received_fields_than_the_limit_are_refused_as_a_loop() {
    let mut node = start_node("");
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = looping_mail("hops-51", 51);
    let path = dir.path().join("hops-51.eml");
    std::fs::write(&path, refused.text()).expect("write the message");
    let address = node.addr();
    let out = common::smtplib(&[
        &address.ip().to_string(),
        &address.port().to_string(),
        "oksender@client.test",
        "ok1@dest.test",
        path.to_str().expect("utf-8 path"),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "smtplib: {said}");
    assert!(said.contains("554 5.4.6 too many hops"), "smtplib: {said}");

    // BDAT, in two chunks cut inside a Received: field: refused when the chunk that makes the
    // count go over arrives, and the transaction is gone.
    let text = looping_mail("hops-51-bdat", 51).text();
    let (first, second) = text.split_at(text.len() / 2);
    let mut smtp = Raw::greeted(node.addr());
    assert!(smtp.cmd("MAIL FROM:<oksender@client.test>").starts_with("250"));
    assert!(smtp.cmd("RCPT TO:<ok1@dest.test>").starts_with("250"));
    smtp.send(format!("BDAT {}\r\n{first}", first.len()).as_bytes());
    assert!(smtp.read_reply().starts_with("250"), "the first chunk holds 25 fields");
    smtp.send(format!("BDAT {} LAST\r\n{second}", second.len()).as_bytes());
    assert_eq!(smtp.read_reply(), "554 5.4.6 too many hops\n");

    // 50 are fine, and the session goes on.
    let accepted = looping_mail("hops-50", 50);
    let reply =
        smtp.send_message("<oksender@client.test>", &accepted.to, &stuffed(&accepted.text()));
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert!(smtp.cmd("QUIT").starts_with("221"));

    let log = node.log();
    let rejected: Vec<&str> =
        log.lines().filter(|l| l.contains("rejected: too many hops")).collect();
    assert_eq!(rejected.len(), 2, "{log}");
    assert!(rejected.iter().all(|l| field(l, "received") == "51"), "{rejected:?}");
    assert_eq!(node.stop(), Some(0));
    let queued = node.queued();
    assert_eq!(queued.len(), 1, "only the message with 50 Received: fields is queued");
    common::assert_same_bytes(
        Node::without_received(&queued[0].1),
        accepted.text().as_bytes(),
        "the queued message",
    );
}

/// A route whose next hop is relayd's own listener: the recipient bounces with 5.4.6 ("loops
/// back to myself") and the sender gets a DSN saying so; relayd never receives the message
/// from itself.
#[test]
fn a_route_to_relayds_own_listener_bounces_with_5_4_6() {
    let sink = Sink::plain();
    let own = format!("127.0.0.1:{OWN_PORT}");
    let to_sink = format!("127.0.0.1:{}", sink.port());
    let node = start_node(&format!(
        "{}{}{}",
        route("dest.test", &own, "none"),
        route("*", &to_sink, "none"),
        delivery("")
    ));
    let rcpt = "ok1@dest.test";
    let id = send_one(&node, Mail::new("oksender@client.test", &[rcpt], "loop-self"));
    wait_explained("the DSN at the sink", || !dsns(&sink).is_empty(), || state(&node, &sink));
    let log = node.log();
    let bounced = logged(&log, "bounced", &id, rcpt);
    assert_eq!(bounced.len(), 1, "{log}");
    assert_eq!(field(&bounced[0], "reply"), "5.4.6 mail for 127.0.0.1 loops back to myself");
    assert_eq!(field(&bounced[0], "dsn"), "5.4.6", "{}", bounced[0]);
    assert_delay(&bounced[0]);
    assert_dsn(&dsns(&sink)[0], rcpt, "5.4.6", "loop-self");
    // Only the client's message was ever accepted over SMTP (the DSN is relayd's own).
    assert_eq!(log.matches(" accepted id=").count(), 1, "{log}");
}

/// A next hop that greets with relayd's own host name is relayd (another node with the same
/// name, or an address relayd does not know as its own): bounced with 5.4.6, no message sent.
#[test]
fn a_next_hop_greeting_with_our_host_name_bounces_with_5_4_6() {
    let mirror = Sink::start("127.0.0.1:0", Options { name: "mx.test", ..Options::default() });
    let sink = Sink::plain();
    let node = start_node(&format!(
        "{}{}{}",
        route("dest.test", &format!("127.0.0.1:{}", mirror.port()), "none"),
        route("*", &format!("127.0.0.1:{}", sink.port()), "none"),
        delivery("")
    ));
    let rcpt = "ok1@dest.test";
    let id = send_one(&node, Mail::new("oksender@client.test", &[rcpt], "loop-name"));
    wait_explained("the DSN at the sink", || !dsns(&sink).is_empty(), || state(&node, &sink));
    let bounced = &logged(&node.log(), "bounced", &id, rcpt)[0];
    assert_eq!(field(bounced, "reply"), "5.4.6 mail for 127.0.0.1 loops back to myself");
    assert_eq!(field(bounced, "dsn"), "5.4.6", "{bounced}");
    assert_dsn(&dsns(&sink)[0], rcpt, "5.4.6", "loop-name");
    assert_eq!(mirror.connections(), 1, "one connection, not one per retry");
    assert!(mirror.transactions().is_empty(), "nothing was sent to the mirror");
}
