//! The failover drill's short form (scripts/drill.sh --short) as part of the test suite: this
//! build's relayd as dc1, dc2 and the witness in network namespaces, a real Postfix sending by
//! MX through dnsmasq, smtp-sink as the customer's server; one kill -9 drill and one drill
//! where dc1's link is cut while it lives on. The script checks the guarantees' promises (docs/guarantees.md) itself (its
//! exit status); this test also reads its JSON report back, so that a report that stopped
//! saying what it must fails here too.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn the_short_drill_keeps_every_guarantee() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        // Network namespaces, veth links and a bridge need root; CI runs as root. Written to
        // the stderr handle itself, which the test harness does not capture (println! it
        // does): a skip must be seen, not pass for a success.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_short_drill_keeps_every_guarantee: scripts/drill.sh needs root"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/drill.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--short", "--relayd", env!("CARGO_BIN_EXE_relayd"), "--json"])
        .arg(&json)
        .output()
        .expect("run scripts/drill.sh");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "scripts/drill.sh --short failed ({}):\n{said}", out.status);

    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("{}: {e}\n{said}", json.display())),
    )
    .expect("the report is JSON");
    assert_eq!(report["ok"], true, "{said}");
    let summary = &report["summary"];
    let number = |v: &Value, what: &str| -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("{what} is not a number in the report: {v}"))
    };
    assert_eq!(number(&summary["lost"], "lost"), 0.0, "acknowledged mail lost");
    assert_eq!(number(&summary["two_serving_primaries"], "two_serving_primaries"), 0.0);
    assert!(
        number(&summary["duplicates"], "duplicates") <= number(&summary["in_flight"], "in_flight"),
        "more duplicates than messages in flight: {summary}"
    );
    // The drill really ran: mail through relayd, a backlog at dc2, both kinds of failure.
    assert!(number(&summary["acknowledged_by_relayd"], "acknowledged") > 0.0, "{summary}");
    assert!(number(&summary["backlog_messages"], "backlog") >= 200.0, "{summary}");
    // guarantee 3 (docs/guarantees.md): a standby serves within failover_timeout plus about a second.
    let rto_limit = number(&report["settings"]["failover_timeout_s"], "failover_timeout_s") + 1.0;
    let drills = report["drills"].as_array().expect("drills");
    let kinds: Vec<&str> = drills.iter().map(|d| d["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds, ["kill", "cut"]);
    for drill in drills {
        let rto = number(&drill["rto_s"], "rto_s");
        assert!(rto > 0.0 && rto <= rto_limit, "RTO {rto} s, more than {rto_limit} s: {drill}");
        assert!(number(&drill["sender_via_dc2"], "sender_via_dc2") > 0.0, "{drill}");
        assert!(number(&drill["catch_up_s"], "catch_up_s") > 0.0, "{drill}");
        assert!(number(&drill["switchover_s"], "switchover_s") > 0.0, "{drill}");
        assert_eq!(drill["switchover_by"], "demote", "{drill}");
    }
    // A cut primary fences itself (its lease, 2 s) before the standby is promoted
    // (failover_timeout).
    let cut = &drills[1];
    assert!(
        number(&cut["dc1_fenced_s"], "dc1_fenced_s")
            < number(&cut["dc2_serving_s"], "dc2_serving_s"),
        "dc1 fenced after dc2 served: {cut}"
    );
}
