//! The witness's admin endpoint (issue 15, point 4), against the real binary: `/healthz` open,
//! `/metrics` behind the token, its page parsed as Prometheus text; in a running trio, the
//! witness's page shows when it last heard each data node, and the grants of the bootstrap and
//! of a failover; `relayd status` read from a witness.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{
    Timings, Trio, TrioOptions, admin_get, admin_get_with, certs, witness_config, witness_ready,
};
use common::{BIN, Node, PATIENCE, free_addr, free_port, run, wait_for};

/// A witness alone (no data node names it), its admin endpoint on a free port behind the
/// token `TOKEN`.
fn lone_witness() -> (tempfile::TempDir, Node) {
    let certs = certs("w");
    let listen = free_addr();
    let port = free_port();
    let mut w = Node::prepare(|data| {
        let token = data.with_file_name("admin.token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("write the token");
        let config = witness_config(certs.path(), data, listen, &Timings::DEFAULTS);
        format!(
            "{config}\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    });
    w.admin_port = port;
    w.launch_until(&witness_ready(listen));
    (certs, w)
}

const TOKEN: &str = "witness-s3cret";

/// A Prometheus text page: each sample (its name with its labels) and its value. Fails the test
/// on a line that is not a sample, a comment of another kind than HELP and TYPE, or a sample
/// whose family has no HELP and TYPE line before it.
fn parse(page: &str) -> BTreeMap<String, f64> {
    let mut helped = Vec::new();
    let mut typed = Vec::new();
    let mut samples = BTreeMap::new();
    for line in page.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').expect("HELP NAME TEXT");
            assert!(!text.is_empty(), "{line}");
            helped.push(name.to_string());
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').expect("TYPE NAME KIND");
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed.push(name.to_string());
        } else {
            assert!(!line.starts_with('#'), "an unknown comment: {line}");
            let (sample, value) = line.rsplit_once(' ').expect("NAME VALUE");
            let family = sample.split('{').next().unwrap_or(sample);
            assert!(
                helped.iter().any(|n| n == family) && typed.iter().any(|n| n == family),
                "{line}: no HELP and TYPE before it"
            );
            let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            samples.insert(sample.to_string(), value);
        }
    }
    samples
}

/// `GET /metrics` of the witness `w` (with the token when `token`), parsed; None while it does
/// not answer 200.
fn metrics(w: &Node, token: Option<&str>) -> Option<BTreeMap<String, f64>> {
    let headers = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let (head, body) = admin_get_with(w.admin_port, "/metrics", &headers, PATIENCE)?;
    head.starts_with("HTTP/1.1 200").then(|| parse(&body))
}

fn sample(page: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    page.get(name).copied()
}

/// `relayd status --config FILE`: its exit code and what it printed (stdout, then stderr).
fn status(config: &std::path::Path) -> (Option<i32>, String) {
    let out = run(BIN, &["status", "--config", config.to_str().expect("utf-8 path")]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn a_witness_with_admin_answers_healthz_openly_and_metrics_only_with_its_token() {
    let (_certs, w) = lone_witness();
    let (head, body) = admin_get(w.admin_port, "/healthz", PATIENCE).expect("GET /healthz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    for headers in
        ["", "Authorization: Bearer wrong\r\n", "Authorization: Basic witness-s3cret\r\n"]
    {
        let (head, body) =
            admin_get_with(w.admin_port, "/metrics", headers, PATIENCE).expect("GET /metrics");
        assert!(head.starts_with("HTTP/1.1 401"), "{headers:?}: {head}\r\n\r\n{body}");
        assert!(!body.contains("relayd_"), "{body}");
    }
    let page = metrics(&w, Some(TOKEN)).expect("GET /metrics with the token");
    assert_eq!(sample(&page, "relayd_role{role=\"witness\"}"), Some(1.0), "{page:?}");
    assert_eq!(sample(&page, "relayd_role{role=\"primary\"}"), Some(0.0));
    assert_eq!(sample(&page, "relayd_witness_granted_epoch"), Some(0.0));
    assert_eq!(sample(&page, "relayd_witness_grants_total"), Some(0.0));
    assert!(!page.keys().any(|k| k.starts_with("relayd_witness_last_heard_seconds")), "{page:?}");
    // No queue at a witness.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (head, _) = admin_get_with(w.admin_port, "/queue", &auth, PATIENCE).expect("GET /queue");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // `relayd status` with the witness's own file: its token, its endpoint.
    let (code, text) = status(&w.config_path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("role     witness\n"), "{text}");
    assert!(text.contains("granted  nothing yet (0 grants since start)\n"), "{text}");
    assert!(text.contains("heard    no data node since start\n"), "{text}");
}

#[test]
fn relayd_status_says_a_witness_without_an_admin_section_serves_no_endpoint() {
    let certs = certs("w");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("witness.toml");
    let text = witness_config(certs.path(), &dir.path().join("data"), free_addr(), &Timings::FAST);
    std::fs::write(&config, text).expect("write the config");
    let (code, text) = status(&config);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("this witness has no [admin] section"), "{text}");
}

/// The bootstrap's grant (epoch 1 to a), both data nodes heard within a few heartbeats, a
/// serving; then a is killed and b's grant (epoch 2) shows, with a silent and b heard.
#[test]
fn a_witness_metrics_show_the_nodes_heard_and_the_grants_of_bootstrap_and_failover() {
    let options = TrioOptions { witness_admin: true, ..TrioOptions::default() };
    let mut trio = Trio::start(options);
    let heard = |page: &BTreeMap<String, f64>, node: &str| {
        sample(page, &format!("relayd_witness_last_heard_seconds{{node=\"{node}\"}}"))
    };
    let serving = |page: &BTreeMap<String, f64>, node: &str| {
        sample(page, &format!("relayd_witness_node_serving{{node=\"{node}\"}}"))
    };
    let mut page = BTreeMap::new();
    wait_for("the witness to have granted epoch 1 to a and to hear a serving, and b", || {
        page = metrics(&trio.w, None).expect("GET /metrics");
        sample(&page, "relayd_witness_granted_epoch") == Some(1.0)
            && sample(&page, "relayd_witness_grantee{node=\"a\"}") == Some(1.0)
            && serving(&page, "a") == Some(1.0)
            && serving(&page, "b") == Some(0.0)
    });
    assert_eq!(sample(&page, "relayd_role{role=\"witness\"}"), Some(1.0));
    assert_eq!(sample(&page, "relayd_witness_grants_total"), Some(1.0), "{page:?}");
    for node in ["a", "b"] {
        // Pings come every heartbeat (100 ms): both were heard well within the failover
        // timeout.
        let seconds = heard(&page, node).expect("last heard");
        assert!((0.0..2.0).contains(&seconds), "{node}: {seconds}");
    }
    let (code, text) = status(&trio.w.config_path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("granted  epoch 1 to a (1 grant since start)\n"), "{text}");
    assert!(text.contains("a: primary in epoch 1, serving, "), "{text}");

    trio.a.kill9();
    wait_for("the witness to grant epoch 2 to b, and b to be heard serving", || {
        page = metrics(&trio.w, None).expect("GET /metrics");
        sample(&page, "relayd_witness_granted_epoch") == Some(2.0)
            && sample(&page, "relayd_witness_grantee{node=\"b\"}") == Some(1.0)
            && serving(&page, "b") == Some(1.0)
    });
    assert_eq!(sample(&page, "relayd_witness_grants_total"), Some(2.0), "{page:?}");
    assert_eq!(sample(&page, "relayd_witness_grantee{node=\"a\"}"), None, "{page:?}");
    // a is silent since the kill; b pings on.
    wait_for("a to have been silent longer than the failover timeout", || {
        page = metrics(&trio.w, None).expect("GET /metrics");
        heard(&page, "a").is_some_and(|a| a > Timings::FAST.failover.as_secs_f64())
    });
    let b = heard(&page, "b").expect("b heard");
    assert!(b < Duration::from_secs(2).as_secs_f64(), "b last heard {b} s ago: {page:?}");
}
