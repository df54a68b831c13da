//! The command line: check-config's verdicts and exit codes, the embedded default, --role.

use crate::common;

use std::path::Path;
use std::process::{Child, Command};

use common::{BIN, Raw, run, wait_for};

/// Starts relayd without `--config` (the embedded default: SMTP on 127.0.0.1:2525) in `dir`,
/// with `args`, and waits until *this* process says it listens: on a shared machine another
/// relayd may hold that port, and answering for this one it would make the test's verdicts
/// about a stranger. Its output goes to `dir/relayd.log`.
fn start_embedded_default(dir: &Path, args: &[&str]) -> Child {
    let log_path = dir.join("relayd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawn relayd");
    wait_for("the embedded default to listen on 127.0.0.1:2525", || {
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("relayd exited with {status}:\n{said}");
        }
        said.contains("SMTP listening address=127.0.0.1:2525")
    });
    child
}

fn check_config(text: &str) -> (Option<i32>, String, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relayd.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("utf-8").to_string();
    let out = run(BIN, &["check-config", "--config", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr, path)
}

#[test]
fn check_config_accepts_the_example_configs() {
    for name in ["default", "primary", "standby", "witness"] {
        let path = format!("{}/config/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = run(BIN, &["check-config", "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The examples name certificates under /etc/relayd, which this machine lacks: that
        // must be the only complaint.
        if out.status.code() == Some(2) {
            assert!(
                stderr.contains(": smtp.tls_cert: cannot read certificates from /etc/relayd/"),
                "{name}: {stderr}"
            );
            continue;
        }
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn check_config_names_file_line_and_key_and_exits_2() {
    let cases = [
        (
            "[node]\nname = \"a\"\n\n[smtp]\nmax_message_size = \"25 parsecs\"\n",
            ":5: smtp.max_message_size: invalid size",
        ),
        (
            "[smtp]\nhostname = \"mx.test\"\nbogus = 1\n",
            ":3: smtp.bogus: unknown key `bogus`; allowed keys: `listen`",
        ),
        ("[node]\nrole = \"leader\"\n", ":2: node.role:"),
        ("[smtp\n", ":1:"),
        ("[smtp]\ncommand_timeout = \"soon\"\n", ":2: smtp.command_timeout:"),
        (
            "[smtp]\ntls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.key\"\n",
            ":2: smtp.tls_cert: cannot read certificates",
        ),
    ];
    for (text, expected) in cases {
        let (code, _, stderr, path) = check_config(text);
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}{expected}")),
            "{text:?} gave {stderr:?}, want {expected:?}"
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(BIN, &["--no-such-flag"]).status.code(), Some(2));
    assert_eq!(run(BIN, &["--role", "leader"]).status.code(), Some(2));
}

#[test]
fn no_config_runs_the_embedded_default_and_role_overrides_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = start_embedded_default(dir.path(), &[]);
    let addr = "127.0.0.1:2525".parse().expect("address");
    let mut smtp = Raw::connect(addr);
    assert!(smtp.read_reply().starts_with("220 "));
    assert!(smtp.cmd("EHLO client.test").starts_with("250"));
    assert!(smtp.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert_eq!(smtp.cmd("RCPT TO:<anyone@elsewhere.test>"), "250 2.1.5 Ok\n", "loopback may relay");
    smtp.cmd("QUIT");
    assert!(dir.path().join("relayd-data/spool").is_dir(), "spool in ./relayd-data");
    child.kill().expect("kill");
    child.wait().expect("reap");

    let mut standby = start_embedded_default(dir.path(), &["--role", "standby"]);
    let mut refused = Raw::connect(addr);
    let greeting = refused.read_reply();
    assert!(
        greeting.starts_with("421 4.3.2 ") && greeting.ends_with(" not primary, try another MX\n"),
        "{greeting}"
    );
    standby.kill().expect("kill");
    standby.wait().expect("reap");
}
