//! A spool written by the sled-based relayd (tests/fixtures/sled-spool.tar.gz, see its README)
//! is refused by relayd with the command that imports it; `relayd-sled-import` (tools/
//! sled-import, built here with its own Cargo.lock) imports it with every message, body,
//! recipient state, log record, the epoch history and the role; relayd then starts on it and
//! lists the queue.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::try_get;
use common::{BIN, Node, run};
use relayd::spool::{EpochStart, ErrorKind, LogRecord, MessageRecord, Spool};

/// What the sled-based relayd read back from the fixture (`expected/spool.postcard`).
type Expected = (Vec<MessageRecord>, Vec<LogRecord>, Vec<EpochStart>, Option<String>);

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The import tool: the one scripts/test.sh built beforehand (`RELAYD_SLED_IMPORT`, built into
/// the main target directory, where it shares relayd's compiled dependencies), else built here
/// (a no-op once built) in a target directory of its own, named explicitly: a
/// `CARGO_TARGET_DIR` inherited from the `cargo test` running this would point the build at the
/// directory that cargo may still hold locked.
fn import_tool() -> PathBuf {
    if let Some(prebuilt) = std::env::var_os("RELAYD_SLED_IMPORT") {
        return PathBuf::from(prebuilt);
    }
    let manifest = repository().join("tools/sled-import/Cargo.toml");
    let target = repository().join("tools/sled-import/target");
    let started = std::time::Instant::now();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo build of tools/sled-import");
    assert!(status.success(), "tools/sled-import does not build");
    eprintln!("tools/sled-import built in {:.1?}", started.elapsed());
    target.join("debug/relayd-sled-import")
}

/// Unpacks the fixture into `into`: `into/data` (the node's data directory) and
/// `into/expected`.
fn unpack(into: &Path) {
    let archive = repository().join("tests/fixtures/sled-spool.tar.gz");
    let out =
        run("tar", &["-xzf", archive.to_str().expect("path"), "-C", into.to_str().expect("path")]);
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_sled_spool_is_refused_then_imported_whole_and_served() {
    let mut node = Node::configure("imported", "primary", "", "", "");
    unpack(node.dir.path());
    let data = node.dir.path().join("data");
    let expected: Expected = postcard::from_bytes(
        &std::fs::read(node.dir.path().join("expected/spool.postcard")).expect("expected"),
    )
    .expect("decode expected");
    let (messages, log, history, role) = expected;
    assert_eq!(messages.len(), 6, "the fixture's messages");

    // Refused, by the API and by the binary, naming the command; nothing is changed.
    let error = Spool::open(&data).err().expect("a sled spool is refused");
    assert_eq!(error.kind, ErrorKind::Format, "{error}");
    assert!(error.message.contains("relayd-sled-import"), "{error}");
    let out = run(BIN, &["--config", node.config_path.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("relayd-sled-import {}", data.display())), "{stderr}");
    assert!(data.join("spool/conf").exists() && !data.join("spool/spool.redb").exists());

    let tool = import_tool();
    let out = Command::new(&tool).arg(&data).output().expect("run the import");
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("spool.sled/conf").exists(), "the old spool is kept");

    {
        let spool = Spool::open(&data).expect("the imported spool opens");
        let imported: Vec<MessageRecord> =
            spool.messages().collect::<Result<_, _>>().expect("messages");
        assert_eq!(imported, messages, "every message, with its recipients' states");
        for message in &messages {
            let id = message.envelope.id;
            let body: Vec<u8> =
                spool.body(id).collect::<Result<Vec<_>, _>>().expect("body").concat();
            let want = std::fs::read(node.dir.path().join(format!("expected/bodies/{id}")))
                .expect("expected body");
            assert!(body == want, "message {id}'s body");
        }
        let imported_log: Vec<LogRecord> =
            spool.log_from(0).collect::<Result<_, _>>().expect("log");
        assert_eq!(imported_log, log, "the change log");
        assert_eq!(spool.epoch_history().expect("history"), history);
        assert_eq!(
            spool.persisted_role().expect("role").map(|r| r.as_str().to_string()),
            role,
            "the persisted role"
        );
        assert_eq!(spool.queue_len(), 6);
    }

    // relayd starts on it, in the role it had (a standby), and lists the queue.
    node.launch();
    let queue = try_get(&node, "/queue").expect("GET /queue");
    let listed: BTreeSet<String> = queue
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    let want: BTreeSet<String> = messages.iter().map(|m| m.envelope.id.to_string()).collect();
    assert_eq!(listed, want);
    let status = try_get(&node, "/status").expect("GET /status");
    assert_eq!(status["role"], "standby");
    assert_eq!(status["epoch"], 2);

    // A second import finds nothing to import.
    node.stop();
    let out = Command::new(&tool).arg(&data).output().expect("run the import again");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
}
