//! A primary/standby pair of real relayd processes for the replication tests: certificates made
//! by `relayd certs init`, a standby `b`, a primary `a` that reaches `b` through a fault
//! [`Proxy`], and the admin endpoint's `/status` to tell when the standby has caught up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::proxy::Proxy;
use super::{BIN, Node, free_port, run, wait_for};

/// Where mail and DNS queries go: nothing listens on port 1 of this loopback address.
pub const CLOSED: &str = "127.63.0.1:1";

/// Runs `relayd certs init DIR --nodes NODES` and asserts it succeeded.
pub fn certs_init(dir: &Path, nodes: &str) {
    let out = run(BIN, &["certs", "init", dir.to_str().expect("utf-8 path"), "--nodes", nodes]);
    assert!(
        out.status.success(),
        "relayd certs init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sections of a cluster node's config besides `[node]`, `[smtp]`, `[admin]` and `[log]`:
/// relaying from 127.0.0.1, every domain routed to port 1 of a loopback address nobody uses
/// (refused at once: mail stays queued, deferred, next try in an hour; no other test can be
/// listening there), DNS there too, and a `[cluster]` section with this node's
/// certificate `name` from `certs`, plus `extra` cluster keys.
pub fn sections(
    certs: &Path,
    name: &str,
    listen: SocketAddr,
    peer: SocketAddr,
    replication: &str,
    extra: &str,
) -> String {
    let file = |f: &str| certs.join(f).display().to_string();
    format!(
        r#"[relay]
domains = ["example.com"]
trusted_networks = ["127.0.0.1/32"]

[[route]]
domain = "*"
next_hop = "{CLOSED}"
tls = "none"

[delivery]
retry = ["1h"]
resolvers = ["{CLOSED}"]

[cluster]
listen = "{listen}"
peer = "{peer}"
replication = "{replication}"
auto_failover = false
tls_cert = "{cert}"
tls_key = "{key}"
tls_ca = "{ca}"
{extra}
"#,
        cert = file(&format!("{name}.pem")),
        key = file(&format!("{name}.key")),
        ca = file("ca.pem"),
    )
}

/// A primary `a` and a standby `b`; the primary dials the standby through [`Pair::proxy`].
pub struct Pair {
    certs: tempfile::TempDir,
    primary: Node,
    standby: Node,
    proxy: Proxy,
    standby_cluster: SocketAddr,
}

impl Pair {
    /// Makes the certificates, starts the standby, then the primary, and waits until the link
    /// is up and the standby has caught up. `replication` is "sync" or "async"; `extra_cluster`
    /// holds more `[cluster]` keys for both nodes (`sync_timeout = "1s"`, ...).
    pub fn start(replication: &str, extra_cluster: &str) -> Pair {
        let certs = tempfile::tempdir().expect("temp dir");
        certs_init(certs.path(), "a,b");
        let primary_cluster = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let standby_cluster = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = Proxy::start(standby_cluster);
        let standby = Node::start_named(
            "b",
            "standby",
            "",
            &sections(
                certs.path(),
                "b",
                standby_cluster,
                primary_cluster,
                replication,
                extra_cluster,
            ),
        );
        let primary = Node::start_named(
            "a",
            "primary",
            "",
            &sections(certs.path(), "a", primary_cluster, proxy.addr(), replication, extra_cluster),
        );
        let pair = Pair { certs, primary, standby, proxy, standby_cluster };
        pair.wait_links_up(1);
        pair.wait_caught_up();
        pair
    }

    pub fn primary(&self) -> &Node {
        &self.primary
    }

    pub fn primary_mut(&mut self) -> &mut Node {
        &mut self.primary
    }

    pub fn standby(&self) -> &Node {
        &self.standby
    }

    pub fn standby_mut(&mut self) -> &mut Node {
        &mut self.standby
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The directory with ca.pem, a.pem, a.key, b.pem, b.key.
    pub fn certs(&self) -> &Path {
        self.certs.path()
    }

    /// The standby's `[cluster].listen` (reached directly, not through the proxy).
    pub fn standby_cluster(&self) -> SocketAddr {
        self.standby_cluster
    }

    /// Waits until the primary's log says "replication link up" at least `n` times in all.
    pub fn wait_links_up(&self, n: usize) {
        wait_for(&format!("replication link up #{n}"), || {
            count(&self.primary.log(), "replication link up") >= n
        });
    }

    /// Waits until the primary sees its standby connected and holding all of its log.
    pub fn wait_caught_up(&self) {
        wait_for("the standby to catch up (primary's lag_records == 0, peer connected)", || {
            try_status(&self.primary).is_some_and(|s| {
                s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0
            })
        });
    }

    /// Waits until the queue holds `messages` messages, all tried once and deferred, on the
    /// standby (so the primary made and shipped those results), and the standby has caught up:
    /// nothing changes after that for an hour (the retry interval).
    pub fn wait_settled(&self, messages: usize) {
        wait_for(&format!("{messages} messages, all deferred, on the standby"), || {
            all_attempted(&self.standby, messages)
        });
        self.wait_caught_up();
    }

    /// Waits until the primary sees its standby connected.
    pub fn wait_connected(&self) {
        wait_for("the primary to see its standby connected", || {
            try_status(&self.primary).is_some_and(|s| s["peer"]["connected"] == true)
        });
    }

    /// Waits until the primary sees its standby gone.
    pub fn wait_disconnected(&self) {
        wait_for("the primary to see its standby gone", || {
            try_status(&self.primary).is_some_and(|s| s["peer"]["connected"] == false)
        });
    }
}

/// Sends `signal` ("STOP", "CONT", ...) to a running node.
pub fn send_signal(node: &Node, signal: &str) {
    let pid = node.child.as_ref().expect("running").id().to_string();
    let out = run("kill", &[&format!("-{signal}"), &pid]);
    assert!(out.status.success(), "kill -{signal} {pid}");
}

/// How many lines of `log` contain `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

/// `GET path` on a node's admin endpoint: the body of a 200 answer; None if the node does not
/// answer.
pub fn try_get_text(node: &Node, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", node.admin_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: relayd\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {answer}");
    Some(body.to_string())
}

/// `GET path` on a node's admin endpoint, its JSON parsed; None if the node does not answer.
pub fn try_get(node: &Node, path: &str) -> Option<serde_json::Value> {
    let body = try_get_text(node, path)?;
    Some(serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}")))
}

/// `GET /status`, parsed; None if the node does not answer.
pub fn try_status(node: &Node) -> Option<serde_json::Value> {
    try_get(node, "/status")
}

/// `GET /status` on a node that must answer.
pub fn status(node: &Node) -> serde_json::Value {
    try_status(node).expect("GET /status")
}

/// True when `GET /queue` on `node` lists exactly `messages` messages, each recipient of which
/// has had a delivery attempt (the deferral of each is in that node's spool).
pub fn all_attempted(node: &Node, messages: usize) -> bool {
    let Some(queue) = try_get(node, "/queue") else { return false };
    let queue = queue.as_array().expect("GET /queue: an array");
    queue.len() == messages
        && queue.iter().all(|m| {
            m["recipients"]
                .as_array()
                .expect("recipients")
                .iter()
                .all(|r| r["attempts"].as_u64().is_some_and(|n| n >= 1))
        })
}
