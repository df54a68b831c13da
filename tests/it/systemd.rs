//! relayd under systemd (issue 15, point 5), without systemd: the notify protocol read from a
//! Unix datagram socket of ours named in `NOTIFY_SOCKET` (READY=1 when the listeners accept,
//! WATCHDOG=1 again and again, STOPPING=1 at SIGTERM), the journal's priority prefixes with
//! `JOURNAL_STREAM` naming stderr or not, and `systemd-analyze verify` on the unit.

use crate::common;

use std::net::{SocketAddr, TcpStream};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use common::cluster::{self, Timings, certs, witness_config, witness_ready};
use common::{BIN, Node, PATIENCE, free_addr, run, wait_for};

/// The socket systemd would listen on, in a directory of its own.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket { socket, path, _dir: dir }
    }

    /// Names this socket (and a watchdog of `watchdog_usec`) in the node's environment.
    fn attach(&self, node: &mut Node, watchdog_usec: u32) {
        node.set_env("NOTIFY_SOCKET", self.path.to_str().unwrap());
        node.set_env("WATCHDOG_USEC", &watchdog_usec.to_string());
    }

    /// The next datagram, within the harness's patience.
    fn next(&self) -> String {
        let mut buffer = [0; 4096];
        let n = self.socket.recv(&mut buffer).expect("a notification from relayd");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    /// Reads datagrams until `wanted`; returns how many WATCHDOG=1 came before it.
    fn until(&self, wanted: &str) -> usize {
        let mut pings = 0;
        loop {
            match self.next().as_str() {
                message if message == wanted => return pings,
                "WATCHDOG=1\n" => pings += 1,
                other => panic!("unexpected notification {other:?} before {wanted:?}"),
            }
        }
    }

    /// In a thread of its own, so that the node's start does not wait on it: waits for the
    /// first datagram and, the moment it arrives, tries a TCP connection to each of `addrs`.
    /// Returns the datagram and, per address, whether it accepted.
    fn first_then_connect(
        self,
        addrs: Vec<SocketAddr>,
    ) -> std::thread::JoinHandle<(NotifySocket, String, Vec<bool>)> {
        std::thread::spawn(move || {
            let first = self.next();
            let accepted = addrs.iter().map(|addr| TcpStream::connect(addr).is_ok()).collect();
            (self, first, accepted)
        })
    }
}

const WATCHDOG_USEC: u32 = 200_000;

#[test]
fn a_data_node_is_ready_once_its_listeners_accept_pings_the_watchdog_and_stops_with_stopping() {
    // A primary of a pair whose standby is not there: its cluster link listens all the same.
    let certs = certs("a,b");
    let cluster = free_addr();
    let sections = cluster::sections(certs.path(), "a", cluster, free_addr(), "async", "");
    let mut node = Node::configure("a", "primary", "", "", &sections);
    let notify = NotifySocket::bind();
    notify.attach(&mut node, WATCHDOG_USEC);
    let admin = SocketAddr::from(([127, 0, 0, 1], node.admin_port));
    let first = notify.first_then_connect(vec![node.addr(), admin, cluster]);
    node.launch();
    let (notify, message, accepted) = first.join().unwrap();
    assert_eq!(message, "READY=1\n", "the first notification");
    assert_eq!(accepted, [true; 3], "SMTP, admin and the cluster link accept at READY=1");

    // Half of WATCHDOG_USEC apart, each after the spool's committer answered.
    for _ in 0..3 {
        assert_eq!(notify.next(), "WATCHDOG=1\n");
    }

    node.signal("TERM");
    notify.until("STOPPING=1\n");
    assert_eq!(node.wait_exit(), Some(0));
    assert!(!node.log().contains("cannot notify systemd"), "{}", node.log());
}

#[test]
fn a_witness_is_ready_once_its_listener_accepts_and_pings_the_watchdog() {
    let certs = certs("w");
    let listen = free_addr();
    let mut witness =
        Node::prepare(|data| witness_config(certs.path(), data, listen, &Timings::DEFAULTS));
    let notify = NotifySocket::bind();
    notify.attach(&mut witness, WATCHDOG_USEC);
    let first = notify.first_then_connect(vec![listen]);
    witness.launch_until(&witness_ready(listen));
    let (notify, message, accepted) = first.join().unwrap();
    assert_eq!(message, "READY=1\n");
    assert_eq!(accepted, [true], "the witness's listener accepts when READY=1 arrives");
    assert_eq!(notify.next(), "WATCHDOG=1\n");
    assert_eq!(notify.next(), "WATCHDOG=1\n");
    witness.signal("TERM");
    notify.until("STOPPING=1\n");
    assert_eq!(witness.wait_exit(), Some(0));
}

/// `DEVICE:INODE` of a file, as systemd writes `JOURNAL_STREAM`.
fn stream_id(path: &std::path::Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.st_dev(), meta.st_ino())
}

/// Starts a relay with `JOURNAL_STREAM` as `journal_stream` gives it (from the log file the
/// node's stderr goes to), makes it log an error (a SIGHUP with a file that does not load) and
/// a warning (a SIGHUP with a changed `[log]`, which needs a restart), and returns its log.
fn log_with_journal_stream(journal_stream: impl FnOnce(&Node) -> Option<String>) -> String {
    let mut node = Node::configure("test", "primary", "", "", "");
    std::fs::write(node.log_path(), "").unwrap();
    if let Some(value) = journal_stream(&node) {
        node.set_env("JOURNAL_STREAM", &value);
    }
    node.launch();
    let good = std::fs::read_to_string(&node.config_path).unwrap();
    std::fs::write(&node.config_path, "[node\n").unwrap();
    node.signal("HUP");
    wait_for("the reload to fail", || node.log().contains("the running config is kept"));
    assert!(good.contains("level = \"info\""), "{good}");
    std::fs::write(&node.config_path, good.replace("level = \"info\"", "level = \"debug\""))
        .unwrap();
    node.signal("HUP");
    wait_for("the reload to warn", || node.log().contains("takes effect at the next restart"));
    assert_eq!(node.stop(), Some(0));
    node.log()
}

fn line_with<'a>(log: &'a str, text: &str) -> &'a str {
    log.lines().find(|line| line.contains(text)).unwrap_or_else(|| panic!("{text:?} in:\n{log}"))
}

#[test]
fn log_lines_carry_their_priority_only_when_stderr_is_the_journal_stream() {
    let journal = log_with_journal_stream(|node| Some(stream_id(&node.log_path())));
    assert!(line_with(&journal, "relayd started").starts_with("<6>"), "{journal}");
    assert!(line_with(&journal, "the running config is kept").starts_with("<3>"), "{journal}");
    assert!(line_with(&journal, "next restart").starts_with("<4>"), "{journal}");
    assert!(journal.lines().all(|line| line.starts_with('<')), "every line: {journal}");

    // A JOURNAL_STREAM inherited by a process whose stderr was redirected since (here: to the
    // log file, while the variable names another file) is not the journal.
    let redirected = log_with_journal_stream(|node| Some(stream_id(&node.config_path)));
    let unset = log_with_journal_stream(|_| None);
    for log in [redirected, unset] {
        assert!(log.contains("relayd started"), "{log}");
        assert!(log.contains("the running config is kept"), "{log}");
        assert!(log.contains("next restart"), "{log}");
        assert!(!log.lines().any(|line| line.starts_with('<')), "no prefixes: {log}");
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let analyze = "systemd-analyze";
    if run("sh", &["-c", &format!("command -v {analyze}")]).stdout.is_empty() {
        eprintln!("skipped: {analyze} is not installed (scripts/test.sh installs systemd)");
        return;
    }
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/relayd.service"))
            .unwrap();
    for key in ["Type=notify\n", "WatchdogSec=", "ExecStartPre=/usr/bin/relayd check-config "] {
        assert!(unit.contains(key), "{key:?} in the unit");
    }
    // verify checks that the commands exist: the binary under test stands in for the
    // installed one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayd.service");
    std::fs::write(&path, unit.replace("/usr/bin/relayd", BIN)).unwrap();
    let out = run(analyze, &["verify", path.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    // A key it does not know or a value it cannot parse is only a warning: none is allowed.
    assert!(out.status.success() && said.trim().is_empty(), "{analyze} verify: {said}");
}
