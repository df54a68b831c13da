//! The admin endpoint and the operator subcommands, against the real binary: curl for HTTP,
//! `relayd status` / `relayd queue ...` for the CLI.

use crate::common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Node, PATIENCE, Raw, free_port, run, wait_for};
use serde_json::Value;

/// Relay for example.com; every domain routed to a loopback port where nobody listens, so
/// that mail stays queued (deferred) for the test to look at.
pub(crate) fn sections() -> String {
    format!(
        "[relay]\ndomains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n\n\
         [[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:{}\"\ntls = \"none\"\n",
        free_port()
    )
}

fn start(role: &str) -> Node {
    let node = Node::start_as(role, "", &sections());
    wait_for_admin(&node);
    node
}

/// The admin listener is bound just after the SMTP one, which the harness waits for.
pub(crate) fn wait_for_admin(node: &Node) {
    wait_for("the admin endpoint", || TcpStream::connect(("127.0.0.1", node.admin_port)).is_ok());
}

/// An HTTP answer as curl saw it.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `curl -X METHOD http://127.0.0.1:ADMIN/PATH`, with extra curl arguments (headers).
pub(crate) fn curl(node: &Node, method: &str, path: &str, extra: &[&str]) -> Answer {
    let url = format!("http://127.0.0.1:{}{path}", node.admin_port);
    let mut args = vec!["-sS", "-i", "--noproxy", "*", "-X", method];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run("curl", &args);
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {headers:?}"));
    Answer { status, headers: headers.to_ascii_lowercase(), body: body.to_string() }
}

pub(crate) fn get(node: &Node, path: &str) -> Answer {
    curl(node, "GET", path, &[])
}

/// Sends one message to `rcpt` with the harness's raw SMTP client; returns its queue id.
fn send_message(node: &Node, rcpt: &str) -> String {
    send_from(node, "alice@example.org", rcpt, "Subject: admin test\r\n\r\nHello.\r\n")
}

/// Sends `data` (CRLF lines, ending in CRLF) from `sender` to `rcpt`; returns its queue id.
pub(crate) fn send_from(node: &Node, sender: &str, rcpt: &str, data: &str) -> String {
    let mut smtp = Raw::connect(node.addr());
    assert!(smtp.read_reply().starts_with("220 "));
    assert!(smtp.cmd("EHLO client.test").starts_with("250"));
    assert!(smtp.cmd(&format!("MAIL FROM:<{sender}>")).starts_with("250 "));
    let reply = smtp.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(smtp.cmd("DATA").starts_with("354 "));
    let reply = smtp.cmd(&format!("{data}."));
    assert!(reply.starts_with("250 "), "{reply}");
    smtp.cmd("QUIT");
    reply.split_whitespace().last().expect("queue id in the 250 reply").to_string()
}

/// A sample's value in a Prometheus text page (`name value`, or `name{labels} value`).
fn sample<T: std::str::FromStr>(page: &str, series: &str) -> Option<T> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `relayd ARGS --config NODE'S CONFIG`.
pub(crate) fn cli(node: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    let config = node.config_path.to_str().expect("utf-8 path");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--config", config]);
    let out = run(BIN, &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_healthz_and_metrics() {
    let node = start("primary");

    let health = get(&node, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let status = get(&node, "/status");
    assert_eq!(status.status, 200);
    assert!(status.headers.contains("content-type: application/json"), "{}", status.headers);
    let status = status.json();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["node"], "test");
    assert_eq!(status["peer"], Value::Null);
    for lag in ["lag_records", "lag_bytes", "lag_seconds"] {
        assert_eq!(status["replication"][lag], 0, "{status}");
    }
    assert_eq!(status["queue"]["messages"], 0);
    assert_eq!(status["queue"]["recipients_pending"], 0);
    assert_eq!(status["queue"]["oldest_age_seconds"], 0);

    let metrics = get(&node, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers.contains("content-type: text/plain; version=0.0.4"));
    let page = format!("\n{}", metrics.body);
    for name in [
        "relayd_role",
        "relayd_epoch",
        "relayd_queue_messages",
        "relayd_smtp_sessions_active",
        "relayd_messages_accepted_total",
        "relayd_recipients_delivered_total",
        "relayd_recipients_deferred_total",
        "relayd_recipients_bounced_total",
        "relayd_replication_lag_records",
        "relayd_replication_lag_seconds",
        "relayd_failovers_total",
        "relayd_spool_syncs_total",
    ] {
        assert!(page.contains(&format!("\n# HELP {name} ")), "no HELP for {name}:\n{page}");
        assert!(page.contains(&format!("\n# TYPE {name} ")), "no TYPE for {name}:\n{page}");
    }
    assert_eq!(sample(&page, "relayd_role{role=\"primary\"}"), Some(1));
    assert_eq!(sample(&page, "relayd_role{role=\"standby\"}"), Some(0));
    assert_eq!(sample(&page, "relayd_role{role=\"witness\"}"), Some(0));
    assert_eq!(sample(&page, "relayd_epoch"), Some(1));
    assert_eq!(sample(&page, "relayd_queue_messages"), Some(0));
    assert_eq!(sample(&page, "relayd_messages_accepted_total"), Some(0));
    assert_eq!(sample(&page, "relayd_failovers_total"), Some(0));

    // An open SMTP session shows, and an accepted message moves the counters.
    let mut open = Raw::connect(node.addr());
    assert!(open.read_reply().starts_with("220 "));
    let page = get(&node, "/metrics").body;
    assert_eq!(sample(&page, "relayd_smtp_sessions_active"), Some(1), "{page}");
    let syncs_before: u64 = sample(&page, "relayd_spool_syncs_total").expect("syncs");
    send_message(&node, "bob@example.com");
    let page = get(&node, "/metrics").body;
    assert_eq!(sample(&page, "relayd_messages_accepted_total"), Some(1), "{page}");
    assert_eq!(sample(&page, "relayd_queue_messages"), Some(1), "{page}");
    assert!(sample::<u64>(&page, "relayd_spool_syncs_total").expect("syncs") > syncs_before);
    drop(open);

    let status = get(&node, "/status").json();
    assert_eq!(status["queue"]["messages"], 1);
    assert_eq!(status["queue"]["recipients_pending"], 1);
}

/// `promtool check metrics` (Prometheus's own linter of the text format) on a page.
fn promtool_check_metrics(page: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool: {e} (run scripts/test.sh, which installs it)")
        });
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), page.as_bytes())
        .expect("page to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{page}"
    );
}

#[test]
fn metrics_pass_promtool_and_time_the_mail() {
    let node = start("primary");
    let page = get(&node, "/metrics").body;
    promtool_check_metrics(&page);
    // The commit this checkout is at (the binary was built from it: build.rs runs again when
    // HEAD moves); empty where git cannot tell.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let version =
        format!("relayd_build_info{{version=\"{}\",commit=\"{head}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&page, &version), Some(1), "{page}");
    assert_eq!(sample(&page, "relayd_smtp_commit_seconds_count"), Some(0), "{page}");
    let free: u64 = sample(&page, "relayd_spool_disk_free_bytes").expect("free bytes");
    let size: u64 = sample(&page, "relayd_spool_disk_size_bytes").expect("size bytes");
    assert!(0 < free && free <= size, "{page}");
    assert!(sample::<u64>(&page, "relayd_spool_file_bytes").is_some_and(|b| b > 0), "{page}");
    // A single node has no witness to hear from.
    assert!(!page.contains("relayd_witness_last_answer_seconds"), "{page}");

    // One message: one end of DATA timed; its delivery attempt (to a port nobody listens on,
    // so deferred) timed too.
    send_message(&node, "bob@example.com");
    let mut page = String::new();
    wait_for("the delivery attempt timed", || {
        page = get(&node, "/metrics").body;
        sample(&page, "relayd_delivery_attempt_seconds_count") == Some(1)
    });
    // The attempt is timed once its results are recorded (and counted).
    assert_eq!(sample(&page, "relayd_recipients_deferred_total"), Some(1), "{page}");
    promtool_check_metrics(&page);
    assert_eq!(sample(&page, "relayd_smtp_commit_seconds_count"), Some(1), "{page}");
    assert_eq!(sample(&page, "relayd_smtp_commit_seconds_bucket{le=\"+Inf\"}"), Some(1));
    let commit: f64 = sample(&page, "relayd_smtp_commit_seconds_sum").expect("sum");
    assert!(commit > 0.0, "{page}");
    // Not in a cluster: nothing waits for a standby.
    assert_eq!(sample(&page, "relayd_replication_ack_seconds_count"), Some(0), "{page}");
}

#[test]
fn queue_list_show_flush_and_delete() {
    let node = start("primary");
    let id = send_message(&node, "bob@example.com");

    let list = get(&node, "/queue");
    assert_eq!(list.status, 200);
    let list = list.json();
    let messages = list.as_array().expect("a list");
    assert_eq!(messages.len(), 1, "{list}");
    let listed = &messages[0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["sender"], "alice@example.org");
    assert_eq!(listed["client"], "127.0.0.1");
    assert!(listed["size"].as_u64().is_some_and(|size| size > 0), "{listed}");
    let received = listed["received_at"].as_str().expect("received_at");
    assert!(chrono::DateTime::parse_from_rfc3339(received).is_ok(), "{received}");
    let rcpt = &listed["recipients"][0];
    assert_eq!(rcpt["address"], "bob@example.com");
    assert_eq!(rcpt["state"], "pending");
    assert!(rcpt["attempts"].is_u64(), "{rcpt}");
    assert!(rcpt["next_attempt"].is_null() || rcpt["next_attempt"].is_string(), "{rcpt}");

    let shown = get(&node, &format!("/queue/{id}"));
    assert_eq!(shown.status, 200);
    let shown = shown.json();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["recipients"][0]["address"], "bob@example.com");

    let malformed = get(&node, "/queue/not-an-id");
    assert_eq!(malformed.status, 400);
    assert!(malformed.json()["error"].as_str().is_some_and(|e| e.contains("malformed queue id")));
    let absent = format!("/queue/{}", "0".repeat(32));
    let missing = get(&node, &absent);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());

    // The node delivers (it is a primary): a flush is taken.
    let flush = curl(&node, "POST", "/queue/flush", &[]);
    assert_eq!(flush.status, 202, "{}", flush.body);

    let deleted = curl(&node, "DELETE", &format!("/queue/{id}"), &[]);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["deleted"], id.as_str());
    assert_eq!(get(&node, &format!("/queue/{id}")).status, 404);
    assert_eq!(curl(&node, "DELETE", &format!("/queue/{id}"), &[]).status, 404);
    assert_eq!(get(&node, "/queue").json(), serde_json::json!([]));
    assert_eq!(get(&node, "/status").json()["queue"]["messages"], 0);

    let unknown = get(&node, "/no/such/thing");
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());
    let wrong_method = curl(&node, "PUT", "/status", &[]);
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["error"].is_string());
}

#[test]
fn a_standby_reports_its_role_and_refuses_queue_changes() {
    let node = start("standby");
    let status = get(&node, "/status").json();
    assert_eq!(status["role"], "standby");
    assert_eq!(status["epoch"], 0);
    let page = get(&node, "/metrics").body;
    assert_eq!(sample(&page, "relayd_role{role=\"standby\"}"), Some(1));
    assert_eq!(sample(&page, "relayd_role{role=\"primary\"}"), Some(0));

    let flush = curl(&node, "POST", "/queue/flush", &[]);
    assert_eq!(flush.status, 409);
    assert!(flush.json()["error"].is_string());
    let delete = curl(&node, "DELETE", &format!("/queue/{}", "0".repeat(32)), &[]);
    assert_eq!(delete.status, 409);
    assert!(delete.json()["error"].as_str().is_some_and(|e| e.contains("primary")));

    let (code, _, stderr) = cli(&node, &["queue", "flush"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 409: this node does not deliver"), "{stderr}");
}

/// With no `[admin]` section, the endpoint listens on 127.0.0.1:8025 only: `ss` shows no other
/// listener on that port, and `relayd status`, which reads the same default, reaches it.
#[test]
fn the_admin_endpoint_binds_loopback_by_default() {
    // The default port is fixed: another relayd on this machine may hold it.
    if std::net::TcpListener::bind(("0.0.0.0", 8025)).is_err() {
        eprintln!("SKIPPED the_admin_endpoint_binds_loopback_by_default: port 8025 is in use");
        return;
    }
    let smtp_port = free_port();
    let mut node = Node::prepare(|data| {
        format!(
            "[node]\nname = \"loopback\"\ndata_dir = \"{}\"\n\n[smtp]\n\
             listen = [\"127.0.0.1:{smtp_port}\"]\nhostname = \"mx.test\"\n\n{}",
            data.display(),
            sections()
        )
    });
    node.smtp_port = smtp_port;
    node.launch_until("admin endpoint listening address=127.0.0.1:8025");
    let out = run("ss", &["-Hltn", "sport", "= :8025"]);
    let listeners: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3).map(str::to_string))
        .collect();
    assert_eq!(listeners, ["127.0.0.1:8025"], "listening on port 8025");
    let (code, stdout, stderr) = cli(&node, &["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("role   primary"), "{stdout}");
}

/// Adds `token_file` to the node's [admin] section and restarts it.
fn require_token(node: &mut Node, token_file: &Path) {
    node.stop();
    let config = std::fs::read_to_string(&node.config_path).expect("read config");
    let listen = format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", node.admin_port);
    assert!(config.contains(&listen));
    let config =
        config.replace(&listen, &format!("{listen}token_file = \"{}\"\n", token_file.display()));
    std::fs::write(&node.config_path, config).expect("write config");
    node.launch();
    wait_for_admin(node);
}

#[test]
fn a_token_is_required_when_configured() {
    let mut node = start("primary");
    let token = "tok-3f9a1c0e55d24b8b";
    let token_file = node.dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    require_token(&mut node, &token_file);

    for path in ["/status", "/queue", "/metrics", "/no/such/thing"] {
        let refused = get(&node, path);
        assert_eq!(refused.status, 401, "{path}");
        assert!(refused.headers.contains("www-authenticate: bearer"), "{}", refused.headers);
        assert!(refused.json()["error"].is_string());
    }
    let wrong = curl(&node, "GET", "/status", &["-H", "Authorization: Bearer tok-wrong"]);
    assert_eq!(wrong.status, 401);
    let not_bearer =
        curl(&node, "GET", "/status", &["-H", &format!("Authorization: Basic {token}")]);
    assert_eq!(not_bearer.status, 401);

    let bearer = format!("Authorization: Bearer {token}");
    let allowed = curl(&node, "GET", "/status", &["-H", &bearer]);
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.json()["role"], "primary");
    assert_eq!(curl(&node, "GET", "/metrics", &["-H", &bearer]).status, 200);
    // Load balancers probe /healthz without credentials.
    assert_eq!(get(&node, "/healthz").status, 200);

    wait_for("the refusals in the log", || {
        node.log().contains("admin request refused")
            && node.log().contains("path=\"/no/such/thing\"")
    });
    let log = node.log();
    let refusal = log.lines().find(|l| l.contains("admin request refused")).expect("a refusal");
    assert!(refusal.contains("client=127.0.0.1"), "{refusal}");
    assert!(refusal.contains("path=\"/status\""), "{refusal}");
    assert!(!log.contains(token) && !log.contains("tok-wrong"), "a token was logged:\n{log}");

    // The CLI reads the same token file.
    let (code, stdout, stderr) = cli(&node, &["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("role   primary"), "{stdout}");

    // A token file that cannot be read stops the node at start, naming the file; the CLI
    // calls it a config error.
    std::fs::remove_file(&token_file).expect("remove token");
    let (code, _, stderr) = cli(&node, &["status"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin.token_file: cannot read the admin token from"), "{stderr}");
    node.stop();
    let out = run_until_exit(&node);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&token_file.display().to_string()), "{stderr}");
}

/// Runs a node that is expected to exit by itself; kills it after PATIENCE.
fn run_until_exit(node: &Node) -> Output {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&node.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relayd");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("relayd kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn the_cli_talks_to_the_running_node() {
    let mut node = start("primary");
    let id = send_message(&node, "bob@example.com");

    let (code, stdout, stderr) = cli(&node, &["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    for line in ["node   test", "role   primary", "epoch  1", "peer   none", "lag    0 records"] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("queue  1 message, 1 recipient pending"), "{stdout}");

    let (code, stdout, stderr) = cli(&node, &["status", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    assert_eq!(status["role"], "primary");
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["queue"]["messages"], 1);

    let (code, stdout, stderr) = cli(&node, &["queue", "list"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("ID "), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with(&id)).expect("the message's row");
    assert!(row.contains("<alice@example.org>"), "{row}");
    assert!(row.contains("<bob@example.com> pending"), "{row}");

    let (code, stdout, stderr) = cli(&node, &["queue", "show", &id]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("id          {id}")), "{stdout}");
    assert!(stdout.contains("sender      <alice@example.org>"), "{stdout}");
    assert!(stdout.contains("<bob@example.com>  pending"), "{stdout}");

    let (code, stdout, stderr) = cli(&node, &["queue", "flush"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("flush requested"), "{stdout}");

    let (code, stdout, stderr) = cli(&node, &["queue", "delete", &id]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), format!("deleted {id}"));
    let (code, _, stderr) = cli(&node, &["queue", "show", &id]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("HTTP 404: no message {id} in the queue")), "{stderr}");
    let (code, stdout, _) = cli(&node, &["queue", "list"]);
    assert_eq!((code, stdout.trim()), (Some(0), "the queue is empty"));

    // Bad usage: exit 2, before any request.
    assert_eq!(cli(&node, &["queue", "show", "nonsense"]).0, Some(2));
    assert_eq!(cli(&node, &["queue", "delete"]).0, Some(2));

    // A node that is not running: exit 1, one line naming the address.
    node.stop();
    let (code, stdout, stderr) = cli(&node, &["status"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the admin endpoint at 127.0.0.1:{}: connection refused",
            node.admin_port
        )),
        "{stderr}"
    );
}

#[test]
fn a_data_node_shows_the_sync_ack_wait_and_how_long_the_witness_has_been_silent() {
    use common::cluster::{Trio, TrioOptions, sever};
    let trio = Trio::start(TrioOptions::default());
    let witness_silence = |node: &Node| {
        sample::<f64>(&get(node, "/metrics").body, "relayd_witness_last_answer_seconds")
    };
    // Heard within the last second, where pings go every heartbeat (100 ms).
    // Every data node with a witness pings it, a standby too.
    for node in [&trio.a, &trio.b] {
        wait_for("the data nodes to hear the witness", || {
            witness_silence(node).is_some_and(|s| s < 1.0)
        });
    }

    // Sync mode: the message's 250 waited for b's acknowledgement, and that wait is timed.
    send_message(&trio.a, "bob@example.com");
    let page = get(&trio.a, "/metrics").body;
    promtool_check_metrics(&page);
    assert_eq!(sample(&page, "relayd_replication_ack_seconds_count"), Some(1), "{page}");
    assert_eq!(sample(&page, "relayd_smtp_commit_seconds_count"), Some(1), "{page}");

    // The witness cut off from a (b's acks keep a's lease): the gauge grows, then falls back
    // once the witness answers again.
    sever(&trio.aw);
    wait_for("a's witness silence to pass 2 s", || {
        witness_silence(&trio.a).is_some_and(|s| s > 2.0)
    });
    trio.aw.unblock();
    wait_for("a to hear the witness again", || witness_silence(&trio.a).is_some_and(|s| s < 1.0));
}
