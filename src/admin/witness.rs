//! A witness's admin endpoint (docs/contract.md, "Admin endpoint"): `/healthz`, `/metrics`
//! and `/status`, on the listener, token check and page writer of a data node's endpoint. What
//! it shows is read from the witness server's state through [`WitnessView`]: the highest grant
//! and its grantee, the grants since start, and for each data node when it was last heard and
//! what it said. A witness holds no mail: no queue, promote or demote here.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::metrics::{CONTENT_TYPE, Page};
use super::{Listener, finish, serve_router};
use crate::config::Role;
use crate::ha::witness::{WitnessReport, WitnessView};

/// What the witness's endpoint reads.
pub struct WitnessContext {
    /// `[node].name`.
    pub node: String,
    pub witness: WitnessView,
}

/// `GET /status` of a witness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Always "witness": how a client tells this document from a data node's.
    pub role: String,
    pub node: String,
    /// The highest epoch granted (or taken in from a primary), 0 for none.
    pub granted_epoch: u64,
    /// Its grantee, "" for none.
    pub granted_to: String,
    pub grants_since_start: u64,
    /// The data nodes heard since the witness started, by name.
    pub nodes: Vec<HeardNode>,
}

/// A data node as the witness last heard it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeardNode {
    pub node: String,
    /// Since its last ping or claim, with millisecond precision.
    pub last_heard_seconds: f64,
    /// What its last ping said.
    pub role: String,
    pub epoch: u64,
    pub serving: bool,
}

impl WitnessStatus {
    fn from_report(node: String, report: WitnessReport) -> WitnessStatus {
        let nodes = report
            .nodes
            .into_iter()
            .map(|heard| HeardNode {
                node: heard.node,
                last_heard_seconds: seconds(heard.silent_for),
                role: heard.role,
                epoch: heard.epoch,
                serving: heard.serving,
            })
            .collect();
        WitnessStatus {
            role: Role::Witness.to_string(),
            node,
            granted_epoch: report.granted,
            granted_to: report.granted_to,
            grants_since_start: report.grants_since_start,
            nodes,
        }
    }
}

/// Seconds, rounded to the millisecond (what a heartbeat-scale silence needs; no more digits
/// than that on the page).
fn seconds(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Serves the witness's endpoint on `listener` until the task is dropped or aborted.
pub async fn serve(listener: Listener, context: WitnessContext) {
    let Listener { socket, token } = listener;
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(context));
    serve_router(socket, finish(router, token)).await;
}

type Context = State<Arc<WitnessContext>>;

/// `GET /healthz`: 200 while the process runs (a witness has no fenced or closed state).
async fn healthz() -> &'static str {
    "ok"
}

async fn status(State(context): Context) -> Json<WitnessStatus> {
    Json(WitnessStatus::from_report(context.node.clone(), context.witness.report()))
}

async fn metrics(State(context): Context) -> Response {
    let page = render(&context.witness.report());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], page).into_response()
}

/// The witness's Prometheus page.
pub fn render(report: &WitnessReport) -> String {
    let mut page = Page(String::with_capacity(1024));
    page.build_info();
    page.role(Some(Role::Witness));
    page.gauge(
        "relayd_witness_granted_epoch",
        "The highest epoch this witness granted (or took in from a primary); 0: none.",
        report.granted,
    );
    let grantee: Vec<(String, u64)> = match report.granted {
        0 => Vec::new(),
        _ => vec![(node_label(&report.granted_to), 1)],
    };
    page.family(
        "relayd_witness_grantee",
        "gauge",
        "1 for the node the highest epoch was granted to.",
        &grantee,
    );
    page.counter(
        "relayd_witness_grants_total",
        "Epochs granted since this witness started.",
        report.grants_since_start,
    );
    let heard: Vec<(String, String)> = report
        .nodes
        .iter()
        .map(|n| (node_label(&n.node), format!("{:.3}", seconds(n.silent_for))))
        .collect();
    page.family(
        "relayd_witness_last_heard_seconds",
        "gauge",
        "Seconds since each data node's last ping or claim reached this witness.",
        &heard,
    );
    let serving: Vec<(String, u64)> =
        report.nodes.iter().map(|n| (node_label(&n.node), u64::from(n.serving))).collect();
    page.family(
        "relayd_witness_node_serving",
        "gauge",
        "1 when a data node's last ping said it serves (a primary within its lease).",
        &serving,
    );
    page.0
}

/// `{node="NAME"}`, the name escaped as the text format wants: it comes from the node's
/// request, which need not follow `[node].name`'s rules.
fn node_label(name: &str) -> String {
    let mut label = String::with_capacity(name.len() + 9);
    label.push_str("{node=\"");
    for c in name.chars() {
        match c {
            '\\' => label.push_str("\\\\"),
            '"' => label.push_str("\\\""),
            '\n' => label.push_str("\\n"),
            c => label.push(c),
        }
    }
    label.push_str("\"}");
    label
}

/// `relayd status` against a witness: the grant, then a line per data node heard.
pub fn status_table(status: &WitnessStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node     {}", status.node);
    let _ = writeln!(out, "role     witness");
    let grants = status.grants_since_start;
    let since = format!("{grants} {} since start", if grants == 1 { "grant" } else { "grants" });
    match status.granted_epoch {
        0 => {
            let _ = writeln!(out, "granted  nothing yet ({since})");
        }
        epoch => {
            let _ = writeln!(out, "granted  epoch {epoch} to {} ({since})", status.granted_to);
        }
    }
    if status.nodes.is_empty() {
        let _ = writeln!(out, "heard    no data node since start");
    }
    for (i, node) in status.nodes.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{}: {} in epoch {}{}, {:.1}s ago",
            if i == 0 { "heard    " } else { "         " },
            node.node,
            node.role,
            node.epoch,
            if node.serving { ", serving" } else { "" },
            node.last_heard_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ha::witness::NodeHeard;

    fn report() -> WitnessReport {
        let heard = |node: &str, ms: u64, serving: bool| NodeHeard {
            node: node.into(),
            silent_for: Duration::from_millis(ms),
            role: if serving { "primary" } else { "standby" }.into(),
            epoch: 2,
            serving,
        };
        WitnessReport {
            granted: 2,
            granted_to: "b".into(),
            grants_since_start: 1,
            nodes: vec![heard("a", 12_345, false), heard("b\"\\\n", 240, true)],
        }
    }

    #[test]
    fn every_family_has_help_type_and_its_samples() {
        let page = render(&report());
        assert!(page.contains("relayd_role{role=\"witness\"} 1\n"));
        assert!(page.contains("relayd_role{role=\"primary\"} 0\n"));
        assert!(page.contains("relayd_witness_granted_epoch 2\n"));
        assert!(page.contains("relayd_witness_grantee{node=\"b\"} 1\n"));
        assert!(page.contains(
            "# TYPE relayd_witness_grants_total counter\nrelayd_witness_grants_total 1\n"
        ));
        assert!(page.contains("relayd_witness_last_heard_seconds{node=\"a\"} 12.345\n"));
        assert!(page.contains("relayd_witness_node_serving{node=\"a\"} 0\n"));
        // A name with a quote, a backslash and a line end stays one sample line.
        assert!(page.contains("relayd_witness_last_heard_seconds{node=\"b\\\"\\\\\\n\"} 0.240\n"));
        assert!(page.contains("relayd_witness_node_serving{node=\"b\\\"\\\\\\n\"} 1\n"));
        let families: Vec<&str> = page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), 7, "{page}");
        assert!(page.contains("relayd_build_info{version=\""), "{page}");
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap_or(name);
            assert!(page.contains(&format!("# HELP {base} ")), "{line}");
            assert!(page.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }

    #[test]
    fn a_witness_that_granted_nothing_names_no_grantee() {
        let page = render(&WitnessReport {
            granted: 0,
            granted_to: String::new(),
            grants_since_start: 0,
            nodes: Vec::new(),
        });
        assert!(page.contains("relayd_witness_granted_epoch 0\n"));
        assert!(!page.contains("relayd_witness_grantee{"), "{page}");
        assert!(page.contains("# TYPE relayd_witness_grantee gauge\n"));
    }

    #[test]
    fn the_status_table_says_the_grant_and_each_node_heard() {
        let status = WitnessStatus::from_report("w".into(), report());
        assert_eq!(status.nodes[0].last_heard_seconds, 12.345);
        let table = status_table(&status);
        assert!(table.contains("role     witness\n"), "{table}");
        assert!(table.contains("granted  epoch 2 to b (1 grant since start)\n"), "{table}");
        assert!(table.contains("heard    a: standby in epoch 2, 12.3s ago\n"), "{table}");
        assert!(table.contains(", serving, 0.2s ago\n"), "{table}");
    }
}
