//! A primary/standby pair of real relayd processes for the replication tests: certificates made
//! by `relayd certs init`, a standby `b`, a primary `a` that reaches `b` through a fault
//! [`Proxy`], and the admin endpoint's `/status` to tell when the standby has caught up.
//!
//! For the failover tests, a [`Trio`]: a witness `w` too, every cluster link through a proxy of
//! its own (`a → b`, `b → a`, `a → w`, `b → w`), automatic failover, and deliveries to a
//! scripted [`Sink`] where messages are counted by Message-ID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::proxy::Proxy;
use super::sink::Sink;
use super::{BIN, Node, free_addr, free_port, node_config, run, wait_for};

/// Where mail and DNS queries go: nothing listens on port 1 of this loopback address.
pub const CLOSED: &str = "127.63.0.1:1";

/// A temp dir holding `relayd certs init`'s CA and a certificate for each of `nodes`.
pub fn certs(nodes: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    certs_init(dir.path(), nodes);
    dir
}

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
    let cluster = format!("replication = \"{replication}\"\nauto_failover = false\n{extra}");
    node_sections(certs, name, (listen, peer), CLOSED, r#"["1h"]"#, &cluster)
}

/// What [`sections`] and [`trio_sections`] share: relaying from 127.0.0.1 to `next_hop`, retried
/// on `retry`, DNS at a closed port, and a `[cluster]` section between `listen` and `peer` with
/// this node's certificate `name` from `certs`, plus the `cluster` keys.
fn node_sections(
    certs: &Path,
    name: &str,
    (listen, peer): (SocketAddr, SocketAddr),
    next_hop: impl std::fmt::Display,
    retry: &str,
    cluster: &str,
) -> String {
    node_config(&[
        ("name", name),
        ("relay", "example.com"),
        ("trusted", "127.0.0.1/32"),
        ("route", &next_hop.to_string()),
        ("retry", retry),
        ("resolver", CLOSED),
        ("cluster", &listen.to_string()),
        ("peer", &peer.to_string()),
        ("certs", &certs.display().to_string()),
        ("cluster_keys", cluster),
    ])
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
        Pair::start_with(replication, extra_cluster, "")
    }

    /// [`Pair::start`], with `extra_node` keys in both nodes' `[node]` section.
    pub fn start_with(replication: &str, extra_cluster: &str, extra_node: &str) -> Pair {
        let certs = certs("a,b");
        let primary_cluster = free_addr();
        let standby_cluster = free_addr();
        let proxy = Proxy::start(standby_cluster);
        let mut standby = Node::configure(
            "b",
            "standby",
            extra_node,
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
        standby.launch();
        let mut primary = Node::configure(
            "a",
            "primary",
            extra_node,
            "",
            &sections(certs.path(), "a", primary_cluster, proxy.addr(), replication, extra_cluster),
        );
        primary.launch();
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
            caught_up(&self.primary)
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

/// `GET path` on the admin endpoint at `port` of 127.0.0.1: the answer's head and body; None
/// if nothing answers within `patience` or the answer is cut short.
pub fn admin_get(port: u16, path: &str, patience: Duration) -> Option<(String, String)> {
    admin_get_with(port, path, "", patience)
}

/// [`admin_get`] with more header lines (each ended by CRLF), such as an `Authorization`.
pub fn admin_get_with(
    port: u16,
    path: &str,
    headers: &str,
    patience: Duration,
) -> Option<(String, String)> {
    admin_request(port, "GET", path, headers, patience)
}

/// `METHOD path` (no body) on the admin endpoint at `port` of 127.0.0.1, as [`admin_get_with`].
pub fn admin_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    patience: Duration,
) -> Option<(String, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, patience).ok()?;
    stream.set_read_timeout(Some(patience)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: relayd\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

/// Whether `primary` sees its standby connected and holding all of its log (false while it does
/// not answer).
pub fn caught_up(primary: &Node) -> bool {
    try_status(primary)
        .is_some_and(|s| s["peer"]["connected"] == true && s["replication"]["lag_records"] == 0)
}

/// `GET path` on a node's admin endpoint: the body of a 200 answer; None if the node does not
/// answer.
pub fn try_get_text(node: &Node, path: &str) -> Option<String> {
    let (head, body) = admin_get(node.admin_port, path, Duration::from_secs(10))?;
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}\r\n\r\n{body}");
    Some(body)
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

/// The failover timings of a trio's data nodes.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub heartbeat: Duration,
    pub lease: Duration,
    pub failover: Duration,
    /// Written into the configs; false leaves the keys out, so that relayd's own defaults apply.
    pub written: bool,
}

impl Timings {
    /// Short but valid: 1 s + 100 ms + 2 s / 20 < 2 s.
    pub const FAST: Timings = Timings {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_secs(1),
        failover: Duration::from_secs(2),
        written: true,
    };

    /// relayd's defaults (docs/configuration.md), left out of the configs.
    pub const DEFAULTS: Timings = Timings {
        heartbeat: Duration::from_millis(200),
        lease: Duration::from_secs(2),
        failover: Duration::from_millis(2500),
        written: false,
    };

    fn keys(&self) -> String {
        if !self.written {
            return String::new();
        }
        format!(
            "heartbeat_interval = \"{}ms\"\nlease = \"{}ms\"\nfailover_timeout = \"{}ms\"\n",
            self.heartbeat.as_millis(),
            self.lease.as_millis(),
            self.failover.as_millis()
        )
    }
}

/// How a [`Trio`] is set up.
#[derive(Clone, Debug)]
pub struct TrioOptions {
    /// "sync" or "async".
    pub replication: &'static str,
    pub timings: Timings,
    /// `[delivery].retry` of both data nodes, as TOML (`["1s"]`).
    pub retry: &'static str,
    /// More `[cluster]` keys for both data nodes.
    pub extra_cluster: String,
    /// Whether the data nodes name the witness (it runs either way).
    pub witness: bool,
    /// Whether the witness's config carries the data nodes' timings too (when they are not
    /// the defaults); false: only what docs/configuration.md says a witness needs.
    pub witness_timings: bool,
    /// Whether the witness serves its admin endpoint (an `[admin]` section on a free port:
    /// `w.admin_port`).
    pub witness_admin: bool,
}

impl Default for TrioOptions {
    fn default() -> Self {
        TrioOptions {
            replication: "sync",
            timings: Timings::FAST,
            retry: r#"["1s"]"#,
            extra_cluster: String::new(),
            witness: true,
            witness_timings: true,
            witness_admin: false,
        }
    }
}

/// The sections of a trio data node's config besides `[node]`, `[smtp]`, `[admin]` and
/// `[log]`: relaying from 127.0.0.1, every domain routed to `next_hop` (the trio's sink), DNS
/// pointed at a closed loopback port, and a `[cluster]` section with the `witness` (unless
/// `options.witness` is false) and automatic failover (the default).
#[allow(clippy::too_many_arguments)]
pub fn trio_sections(
    certs: &Path,
    name: &str,
    listen: SocketAddr,
    peer: SocketAddr,
    witness: SocketAddr,
    next_hop: SocketAddr,
    options: &TrioOptions,
) -> String {
    let witness =
        if options.witness { format!("witness = \"{witness}\"\n") } else { String::new() };
    let cluster = format!(
        "{witness}replication = \"{}\"\n{}{}",
        options.replication,
        options.timings.keys(),
        options.extra_cluster
    );
    node_sections(certs, name, (listen, peer), next_hop, options.retry, &cluster)
}

/// A witness's whole config: only `[node]` and `[cluster]` (listen, the three TLS keys, and
/// the data nodes' timings when they are not the defaults: the witness grants an epoch only
/// after it has not heard a serving primary for *its own* `failover_timeout`).
pub fn witness_config(
    certs: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    timings: &Timings,
) -> String {
    node_config(&[
        ("data_dir", &data_dir.display().to_string()),
        ("name", "w"),
        ("role", "witness"),
        ("cluster", &listen.to_string()),
        ("certs", &certs.display().to_string()),
        ("cluster_keys", &timings.keys()),
    ])
}

/// Two data nodes and a witness: `w` (started first), the standby `b`, the primary `a`. Every
/// link a test may break goes through a fault [`Proxy`] of its own: `a → b` (replication while
/// `a` is primary: `a`'s `peer`), `b → a` (replication once `b` is primary: `b`'s `peer`),
/// `a → w` and `b → w` (each node's `witness`). Both nodes deliver to one scripted [`Sink`].
pub struct Trio {
    /// The certificates the nodes' configs name: held so that they outlive the nodes.
    _certs: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub w: Node,
    pub ab: Proxy,
    pub ba: Proxy,
    pub aw: Proxy,
    pub bw: Proxy,
    pub sink: Sink,
    pub options: TrioOptions,
    w_cluster: SocketAddr,
}

impl Trio {
    /// Starts the trio and waits until `a` serves, the link is up and `b` has caught up.
    pub fn start(options: TrioOptions) -> Trio {
        Trio::start_with(options, None)
    }

    /// The same, with `a`'s deliveries sent to `a_next_hop` instead of the sink (a node's
    /// routes are its own: a primary whose next hop is unreachable keeps its mail queued).
    pub fn start_with(options: TrioOptions, a_next_hop: Option<SocketAddr>) -> Trio {
        let mut trio = Trio::configure(options, [a_next_hop, None]);
        for member in ["w", "b", "a"] {
            trio.launch(member);
        }
        trio.wait_ready();
        trio
    }

    /// The trio's certificates, proxies, sink and configs, with nothing started: the test
    /// starts the nodes in the order it likes ([`Trio::launch`]). `next_hops` are `a`'s and
    /// `b`'s next hops (None: the trio's sink).
    pub fn configure(options: TrioOptions, next_hops: [Option<SocketAddr>; 2]) -> Trio {
        let certs = certs("a,b,w");
        let (a_cluster, b_cluster, w_cluster) = (free_addr(), free_addr(), free_addr());
        let (ab, ba) = (Proxy::start(b_cluster), Proxy::start(a_cluster));
        let (aw, bw) = (Proxy::start(w_cluster), Proxy::start(w_cluster));
        let sink = Sink::plain();
        let timings = if options.witness_timings { options.timings } else { Timings::DEFAULTS };
        let w_admin = if options.witness_admin { free_port() } else { 0 };
        let mut w = Node::prepare(|data| {
            let config = witness_config(certs.path(), data, w_cluster, &timings);
            match w_admin {
                0 => config,
                port => format!("{config}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"),
            }
        });
        w.admin_port = w_admin;
        let data_node = |name: &str, role: &str, links: (SocketAddr, SocketAddr, SocketAddr)| {
            let (listen, peer, witness) = links;
            let next_hop = next_hops[usize::from(name == "b")].unwrap_or(sink.addr());
            let sections =
                trio_sections(certs.path(), name, listen, peer, witness, next_hop, &options);
            Node::configure(name, role, "", "", &sections)
        };
        let b = data_node("b", "standby", (b_cluster, ba.addr(), bw.addr()));
        let a = data_node("a", "primary", (a_cluster, ab.addr(), aw.addr()));
        Trio { _certs: certs, a, b, w, ab, ba, aw, bw, sink, options, w_cluster }
    }

    /// Starts (or restarts) `a`, `b` or `w`, and waits until it listens.
    pub fn launch(&mut self, member: &str) {
        if member == "w" {
            self.relaunch_witness();
        } else {
            self.node_mut(member).launch();
        }
    }

    /// Waits until `a` serves (when it needs a lease: a witness is named), the link is up and
    /// `b` has caught up.
    pub fn wait_ready(&self) {
        if self.options.witness {
            // A primary that needs a lease starts fenced, and serves once it has heard the
            // standby or the witness.
            wait_for("a to serve (its lease renewed)", || {
                count(&self.a.log(), "serving reason=") >= 1
            });
        }
        wait_for("b to follow a, caught up", || caught_up(&self.a));
    }

    /// Restarts the witness (after [`Node::stop`] or [`Node::kill9`]).
    pub fn relaunch_witness(&mut self) {
        self.w.launch_until(&witness_ready(self.w_cluster));
    }

    /// The witness's grant file: "EPOCH NODE", or None before its first grant.
    pub fn grant_file(&self) -> Option<String> {
        std::fs::read_to_string(self.w.dir.path().join("data/witness-grant"))
            .ok()
            .map(|text| text.trim().to_string())
    }

    pub fn node(&self, name: &str) -> &Node {
        match name {
            "a" => &self.a,
            "b" => &self.b,
            "w" => &self.w,
            other => panic!("no node {other} in the trio"),
        }
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        match name {
            "a" => &mut self.a,
            "b" => &mut self.b,
            "w" => &mut self.w,
            other => panic!("no node {other} in the trio"),
        }
    }

    /// The proxy of a cluster link: "ab", "ba", "aw" or "bw".
    pub fn link(&self, name: &str) -> &Proxy {
        match name {
            "ab" => &self.ab,
            "ba" => &self.ba,
            "aw" => &self.aw,
            "bw" => &self.bw,
            other => panic!("no link {other} in the trio"),
        }
    }
}

/// The witness's line that says it listens at `address`.
pub fn witness_ready(address: SocketAddr) -> String {
    format!("witness listening address={address} ")
}

/// A break of both kinds: new connections refused, open ones closed (FIN/RST).
pub fn sever(proxy: &Proxy) {
    proxy.block();
    proxy.cut();
}

/// A node's role and epoch from `/status`; None if it does not answer.
pub fn role_epoch(node: &Node) -> Option<(String, u64)> {
    let status = try_status(node)?;
    Some((status["role"].as_str()?.to_string(), status["epoch"].as_u64()?))
}

/// The time stamp of the first line of `log` that contains `needle`.
pub fn log_time(log: &str, needle: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    log.lines().find(|line| line.contains(needle)).map(|line| {
        let stamp = line.split_whitespace().next().unwrap_or("");
        chrono::DateTime::parse_from_rfc3339(stamp)
            .unwrap_or_else(|e| panic!("a log line without a time stamp ({e}): {line}"))
    })
}

/// The lines of a node's log that tell its role's story (promotions, fencing, the witness's
/// answers, snapshots, rewinds, salvage), for failure messages.
pub fn ha_lines(node: &Node) -> String {
    const EVENTS: [&str; 13] = [
        "snapshot",
        "divergent records",
        "promoted",
        "demoted",
        "fenced",
        "serving reason",
        "witness refused",
        "granted epoch",
        "salvag",
        "replication link up",
        "last held",
        "following the primary",
        "switchover",
    ];
    node.log()
        .lines()
        .filter(|line| EVENTS.iter().any(|e| line.contains(e)))
        .collect::<Vec<_>>()
        .join("\n")
}
