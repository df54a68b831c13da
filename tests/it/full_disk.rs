//! A full disk, for real: the node's data directory is a small tmpfs that the test fills with
//! a filler file. relayd must refuse new mail with `452 4.3.1` (first by `[node].min_free_space`
//! at MAIL FROM, then, with that reserve off, when a write meets ENOSPC), stay up, keep what
//! it had accepted intact, and take mail again once the filler is gone, by itself.
//!
//! Needs root (mount); skipped, saying so, otherwise.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::cluster::{CLOSED, count, try_get, try_get_text};
use common::sink::{Options, Sink};
use common::{BIN, Node, Raw, free_port, run, wait_for};

/// The tmpfs: room for the spool file and some mail, small enough to fill at once.
const DISK: &str = "48m";

/// A node whose data directory is a tmpfs of its own; unmounted when dropped, after the
/// process is killed, pass or fail.
struct SmallDisk {
    node: Node,
    mount: PathBuf,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.node.kill9();
        // Lazily: a reader that still has a file open does not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Why this test cannot run here, if it cannot.
fn cannot_mount() -> Option<String> {
    let uid = run("id", &["-u"]);
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: mounting a tmpfs needs root".into());
    }
    None
}

impl SmallDisk {
    /// Mounts the tmpfs on the node's data directory and starts the node; the next hop's port
    /// has nobody listening until the test starts a sink there.
    fn start(next_hop: u16) -> Result<SmallDisk, String> {
        // Mail from 127.0.0.1 is relayed by default; it goes to `next_hop`, and a deferral
        // waits an hour (a flush ends the wait).
        let sections = format!(
            "[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:{next_hop}\"\ntls = \"none\"\n\n\
             [delivery]\nretry = [\"1h\"]\nresolvers = [\"{CLOSED}\"]\n"
        );
        let reserve = "min_free_space = \"16MiB\"";
        let node = Node::configure("small", "primary", reserve, "", &sections);
        let mount = node.dir.path().join("data");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let size = format!("size={DISK}");
        let out =
            run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", mount.to_str().unwrap_or("")]);
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut disk = SmallDisk { node, mount };
        disk.node.launch();
        Ok(disk)
    }

    /// Bytes free on the tmpfs, as df sees them.
    fn free(&self) -> u64 {
        let out = run("df", &["-B1", "--output=avail", self.mount.to_str().unwrap_or("")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df: {text}"))
    }

    /// Fills the tmpfs until `leave` bytes (or, for 0, nothing at all) are free.
    fn fill(&self, name: &str, leave: u64) {
        let filler = self.mount.join(name);
        let size = self.free().saturating_sub(leave).to_string();
        let out = run("fallocate", &["-l", &size, filler.to_str().unwrap_or("")]);
        assert!(out.status.success(), "fallocate: {}", String::from_utf8_lossy(&out.stderr));
        if leave == 0 {
            // What fallocate left (a page here and there) goes too; dd stops at ENOSPC.
            let of = format!("of={}", self.mount.join(format!("{name}.rest")).display());
            run("dd", &["if=/dev/zero", &of, "bs=4096"]);
            assert_eq!(self.free(), 0, "the tmpfs is full");
        }
    }

    fn unfill(&self, name: &str) {
        for file in [name.to_string(), format!("{name}.rest")] {
            let _ = std::fs::remove_file(self.mount.join(file));
        }
    }

    fn metric(&self, name: &str) -> u64 {
        let page = try_get_text(&self.node, "/metrics").expect("GET /metrics");
        page.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{page}"))
    }

    /// `GET /healthz`: the status line's code and the body.
    fn health(&self) -> (u16, String) {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.node.admin_port)).expect("admin");
        let request = "GET /healthz HTTP/1.1\r\nHost: relayd\r\nConnection: close\r\n\r\n";
        std::io::Write::write_all(&mut stream, request.as_bytes()).expect("request");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
        let code = answer.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        (code, body.to_string())
    }
}

/// Message `n`'s content: a Message-ID to find it at the sink by, and `size` bytes of text.
fn message(n: usize, size: usize) -> Vec<u8> {
    let mut data =
        format!("Message-ID: <full-disk-{n}@test>\r\nSubject: full disk {n}\r\n\r\n").into_bytes();
    let line = format!("{:075}\r\n", n);
    while data.len() < size {
        data.extend_from_slice(line.as_bytes());
    }
    data
}

/// What the server said to one transaction.
#[derive(Debug, PartialEq)]
enum Sent {
    Queued(String),
    /// Refused at MAIL FROM (before the body), with this reply.
    AtMail(String),
    /// Refused after the body, with this reply.
    AtData(String),
}

/// One transaction on a new connection; `size` is declared with SIZE= when given. A closed
/// connection without a reply fails the test (Raw::read_reply).
fn send(node: &Node, n: usize, body_size: usize, declare: Option<u64>) -> Sent {
    let mut smtp = Raw::connect(node.addr());
    assert!(smtp.read_reply().starts_with("220 "));
    assert!(smtp.cmd("EHLO client.test").starts_with("250"));
    let size = declare.map(|s| format!(" SIZE={s}")).unwrap_or_default();
    let reply = smtp.cmd(&format!("MAIL FROM:<sender@example.org>{size}"));
    if !reply.starts_with("250 ") {
        return Sent::AtMail(reply);
    }
    assert!(smtp.cmd(&format!("RCPT TO:<ok{n}@dest.test>")).starts_with("250 "));
    assert!(smtp.cmd("DATA").starts_with("354 "));
    smtp.send(&message(n, body_size));
    let reply = smtp.cmd(".");
    smtp.cmd("QUIT");
    match reply.strip_prefix("250 ") {
        Some(text) => Sent::Queued(text.split_whitespace().last().expect("queue id").to_string()),
        None => Sent::AtData(reply),
    }
}

#[track_caller]
fn assert_452(reply: &str) {
    assert!(reply.starts_with("452 4.3.1 "), "expected 452 4.3.1, got {reply:?}");
}

#[test]
fn a_full_disk_gets_452_keeps_the_spool_and_recovers_when_space_returns() {
    if let Some(why) = cannot_mount() {
        eprintln!(
            "SKIPPED a_full_disk_gets_452_keeps_the_spool_and_recovers_when_space_returns: {why}"
        );
        return;
    }
    let next_hop = free_port();
    let mut disk = match SmallDisk::start(next_hop) {
        Ok(disk) => disk,
        Err(why) => panic!("cannot mount a tmpfs as root: {why}"),
    };
    let mut queued = Vec::new();
    for n in 0..3 {
        match send(&disk.node, n, 20_000, None) {
            Sent::Queued(id) => queued.push((n, id)),
            other => panic!("message {n} with room to spare: {other:?}"),
        }
    }

    // The reserve: with 20 MiB free and 16 MiB kept, a message that declares 5 MiB (RFC 1870)
    // is refused at MAIL FROM while one that declares nothing is taken; with 10 MiB free,
    // nothing is.
    disk.fill("filler", 20 << 20);
    match send(&disk.node, 10, 1000, Some(5 << 20)) {
        Sent::AtMail(reply) => assert_452(&reply),
        other => panic!("SIZE=5MiB, 20 MiB free, 16 MiB kept: {other:?}"),
    }
    match send(&disk.node, 11, 20_000, None) {
        Sent::Queued(id) => queued.push((11, id)),
        other => panic!("no SIZE, 20 MiB free, 16 MiB kept: {other:?}"),
    }
    disk.unfill("filler");
    disk.fill("filler", 10 << 20);
    match send(&disk.node, 12, 1000, None) {
        Sent::AtMail(reply) => assert_452(&reply),
        other => panic!("10 MiB free, 16 MiB kept: {other:?}"),
    }
    assert!(disk.node.log().contains("insufficient storage: transaction refused"));
    assert_eq!(disk.metric("relayd_smtp_storage_refusals_total"), 2);
    assert_eq!(disk.health(), (200, "ok".to_string()));

    // No reserve, and a disk full to the last page: the spool's own writes meet ENOSPC.
    disk.unfill("filler");
    disk.node.stop();
    let config = std::fs::read_to_string(&disk.node.config_path).expect("config");
    let config = config.replace("min_free_space = \"16MiB\"", "min_free_space = \"0\"");
    std::fs::write(&disk.node.config_path, config).expect("write config");
    disk.node.launch();
    disk.fill("filler", 0);
    let mut refused = None;
    for n in 20..60 {
        match send(&disk.node, n, 400_000, None) {
            // Room left in the space the spool file had already taken.
            Sent::Queued(id) => queued.push((n, id)),
            Sent::AtData(reply) | Sent::AtMail(reply) => {
                refused = Some((n, reply));
                break;
            }
        }
    }
    let (refused, reply) = refused.expect("a full disk refused a message");
    assert_452(&reply);
    wait_for("the spool to say it closed", || {
        disk.node.log().contains("spool closed after a failed write")
    });
    // Closed: the next sender hears 452 at once, and the node is up.
    match send(&disk.node, 70, 1000, None) {
        Sent::AtMail(reply) => assert_452(&reply),
        other => panic!("a closed spool: {other:?}"),
    }
    assert!(disk.node.is_running(), "{}", disk.node.log());
    assert_eq!(disk.health(), (503, "spool closed after a failed write".to_string()));

    // Space returns: the spool reopens by itself and mail is taken again.
    disk.unfill("filler");
    wait_for("the spool to reopen", || count(&disk.node.log(), "spool reopened") == 1);
    assert_eq!(disk.health(), (200, "ok".to_string()));
    match send(&disk.node, 80, 20_000, None) {
        Sent::Queued(id) => queued.push((80, id)),
        other => panic!("the disk has room again: {other:?}"),
    }
    assert_eq!(disk.metric("relayd_spool_reopens_total"), 1);
    // The queue runner reloads the queue from the reopened spool: a message whose delivery
    // result could not be recorded while the disk was full is tried again, not forgotten.
    wait_for("every queued message tried after the reopen", || {
        try_get(&disk.node, "/queue").is_some_and(|queue| {
            queue.as_array().expect("an array").iter().all(|m| {
                let rcpts = m["recipients"].as_array().expect("recipients");
                rcpts.iter().all(|r| r["attempts"].as_u64().is_some_and(|n| n >= 1))
            })
        })
    });
    assert!(disk.metric("relayd_smtp_storage_refusals_total") >= 2);

    // Nothing acknowledged was damaged: after a restart, each message is there, whole.
    disk.node.stop();
    let stored = disk.node.queued();
    for (n, id) in &queued {
        let (record, body) = stored
            .iter()
            .find(|(m, _)| m.envelope.id.to_string() == *id)
            .unwrap_or_else(|| panic!("message {n} ({id}) acknowledged, not in the spool"));
        assert_eq!(record.envelope.size, body.len() as u64, "message {n}'s body");
        let size = if *n >= 20 && *n < 60 { 400_000 } else { 20_000 };
        let sent = message(*n, size);
        common::assert_same_bytes(Node::without_received(body), &sent, "a stored body");
    }
    // The refused message may have reached the disk after all (then it is whole, and a
    // retry delivers it twice, never zero times); nothing else is queued.
    assert!(stored.len() <= queued.len() + 1, "{} stored, {} queued", stored.len(), queued.len());

    // And everything acknowledged is delivered once the next hop answers.
    let sink = Sink::start(&format!("127.0.0.1:{next_hop}"), Options::default());
    disk.node.launch();
    let out =
        run(BIN, &["queue", "flush", "--config", disk.node.config_path.to_str().unwrap_or("")]);
    assert!(out.status.success(), "queue flush: {}", String::from_utf8_lossy(&out.stderr));
    let wanted: Vec<String> = queued.iter().map(|(n, _)| format!("full-disk-{n}@test")).collect();
    wait_for("every acknowledged message at the sink", || {
        let ids: Vec<String> = sink.transactions().iter().filter_map(|t| t.message_id()).collect();
        wanted.iter().all(|w| ids.contains(w))
    });
    eprintln!("message {refused} was the first refused: {reply}");
}
