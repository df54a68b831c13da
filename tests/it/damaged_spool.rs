//! A spool file the engine cannot read (its header overwritten, or cut short) stops relayd at
//! start without a panic: it names the file and what the operator can do, and exits 1. Once
//! the operator moves the file aside as told, relayd starts with an empty spool.

use crate::common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{BIN, Node, Raw, run};

/// A node that queued one message and stopped; the path of its spool file.
fn stopped_node_with_mail() -> (Node, std::path::PathBuf) {
    let mut node = Node::relay("");
    let text = format!("Subject: damaged\r\n\r\n{}\r\n", "body ".repeat(20_000));
    let reply =
        Raw::greeted(node.addr()).send_message("<a@client.test>", &["b@example.com"], &text);
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(node.stop(), Some(0));
    let file = node.dir.path().join("data/spool/spool.redb");
    assert!(file.exists(), "the spool file");
    (node, file)
}

/// Runs relayd on the damaged spool: exit 1, no panic, the file and the way out named.
fn assert_refused(node: &Node, file: &Path) {
    let out = run(BIN, &["--config", node.config_path.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let name = file.display().to_string();
    assert!(stderr.contains(&format!("the spool file {name} is damaged")), "{stderr}");
    assert!(stderr.contains("On a standby") && stderr.contains("snapshot"), "{stderr}");
    assert!(stderr.contains(&format!("mv {name} {name}.damaged")), "{stderr}");
}

#[test]
fn an_overwritten_header_is_reported_and_moving_the_file_aside_starts_empty() {
    let (mut node, file) = stopped_node_with_mail();
    let mut spool = std::fs::OpenOptions::new().write(true).open(&file).expect("open");
    spool.seek(SeekFrom::Start(0)).expect("seek");
    spool.write_all(&[0x5a; 512]).expect("overwrite the header");
    drop(spool);
    assert_refused(&node, &file);

    std::fs::rename(&file, file.with_extension("redb.damaged")).expect("mv");
    node.launch();
    assert_eq!(node.stop(), Some(0));
    assert!(node.queued().is_empty(), "an empty spool, once told");
}

#[test]
fn a_truncated_file_is_reported() {
    let (node, file) = stopped_node_with_mail();
    let len = std::fs::metadata(&file).expect("metadata").len();
    let spool = std::fs::OpenOptions::new().write(true).open(&file).expect("open");
    spool.set_len(len / 3).expect("truncate");
    drop(spool);
    assert_refused(&node, &file);
}
