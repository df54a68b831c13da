//! The monitoring files in config/: the Prometheus alerting rules (`promtool check rules`, and
//! their unit tests with `promtool test rules`) and the Grafana dashboard, whose expressions,
//! like the rules', may name only metrics that relayd's /metrics page has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relayd::admin::metrics::{Snapshot, render};
use relayd::config::Role;
use relayd::ha::witness::{NodeHeard, WitnessReport};
use relayd::spool::DiskUsage;
use serde_json::Value;

use crate::common::run;

fn config_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(path)
}

/// Runs promtool with `args`; panics with what it said unless it succeeded.
fn promtool(args: &[&str]) {
    let out = run("promtool", args);
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = config_file("prometheus/relayd.rules.yml");
    promtool(&["check", "rules", rules.to_str().expect("utf-8 path")]);
    let tests = config_file("prometheus/relayd.rules.test.yml");
    promtool(&["test", "rules", tests.to_str().expect("utf-8 path")]);
}

/// Every family and series name the pages can show: a data node's with each optional gauge
/// present (a witness configured, its spool readable), histograms by their family's name and
/// their `_bucket`, `_sum` and `_count`; and a witness's, with a grant and a node heard.
fn exported() -> BTreeSet<String> {
    let data_node = render(&Snapshot {
        role: Some(Role::Primary),
        spool_disk: Some(DiskUsage::default()),
        witness_silence: Some(Duration::ZERO),
        ..Snapshot::default()
    });
    let heard = NodeHeard {
        node: "a".into(),
        silent_for: Duration::ZERO,
        role: "primary".into(),
        epoch: 1,
        serving: true,
    };
    let report = WitnessReport {
        granted: 1,
        granted_to: "a".into(),
        grants_since_start: 1,
        nodes: vec![heard],
    };
    let witness = relayd::admin::witness::render(&report);
    data_node
        .lines()
        .chain(witness.lines())
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_string)
        .collect()
}

/// The `relayd_…` names in a PromQL expression (or any text).
fn metric_names(text: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    for (at, _) in text.match_indices("relayd_") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let rest = &text[at..];
        names.push(&rest[..rest.find(|c: char| !is_name(c)).unwrap_or(rest.len())]);
    }
    names
}

#[test]
fn the_rules_name_only_exported_metrics() {
    let exported = exported();
    let rules = std::fs::read_to_string(config_file("prometheus/relayd.rules.yml")).unwrap();
    let names = metric_names(&rules);
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        assert!(exported.contains(name), "the rules name {name}, which /metrics has not");
    }
}

#[test]
fn every_dashboard_panel_queries_exported_metrics() {
    let exported = exported();
    let text = std::fs::read_to_string(config_file("grafana/relayd.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "relayd");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut shown = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panel_error(title, target));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {title:?}: {expr} names no metric");
            for name in names {
                assert!(exported.contains(name), "panel {title:?} queries {name}, not on /metrics");
                shown.insert(name.to_string());
            }
        }
    }
    // The metrics an SRE alerts on (issue 15) are on the dashboard.
    for name in [
        "relayd_serving",
        "relayd_smtp_commit_seconds_bucket",
        "relayd_replication_ack_seconds_bucket",
        "relayd_delivery_attempt_seconds_bucket",
        "relayd_replication_lag_seconds",
        "relayd_spool_disk_free_bytes",
        "relayd_witness_last_answer_seconds",
        "relayd_build_info",
    ] {
        assert!(shown.contains(name), "no panel shows {name}");
    }
}

fn panel_error(title: &str, target: &Value) -> ! {
    panic!("panel {title:?}: a target without an expression: {target}")
}
