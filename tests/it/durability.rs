//! A 250 means "on disk": kill -9 right after it loses nothing, a restart finds every queued
//! message, and the change log records each acceptance at a strictly increasing (epoch, seq).

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::{Node, Raw};
use relayd::spool::Change;

fn send_one(addr: SocketAddr, subject: &str) -> String {
    let text = format!("Subject: {subject}\r\n\r\n{}\r\n", "body ".repeat(20_000));
    let reply = Raw::greeted(addr).send_message("<a@client.test>", &["b@example.com"], &text);
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{reply}"));
    id.trim().to_string()
}

#[test]
fn kill_9_right_after_each_250_loses_nothing() {
    let mut node = Node::relay("");
    let mut acknowledged = BTreeSet::new();
    for round in 0..3 {
        acknowledged.insert(send_one(node.addr(), &format!("round {round}")));
        node.kill9();
        node.launch();
    }
    node.kill9();
    let queued = node.queued();
    let ids: BTreeSet<String> = queued.iter().map(|(m, _)| m.envelope.id.to_string()).collect();
    assert_eq!(ids, acknowledged);
    for (record, body) in &queued {
        assert_eq!(record.envelope.size, body.len() as u64, "the whole body survived");
        assert!(body.len() > 100_000, "several chunks");
    }
}

#[test]
fn restart_finds_every_message_and_the_log_orders_them() {
    let mut node = Node::relay("");
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let addr = node.addr();
            std::thread::spawn(move || {
                (0..5).map(|i| send_one(addr, &format!("t{t} m{i}"))).collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: BTreeSet<String> =
        senders.into_iter().flat_map(|s| s.join().expect("sender thread")).collect();
    assert_eq!(acknowledged.len(), 40);

    node.kill9();
    node.launch();
    assert_eq!(node.stop(), Some(0));

    let spool = node.spool();
    let queued: BTreeSet<String> =
        spool.messages().map(|m| m.expect("record").envelope.id.to_string()).collect();
    assert_eq!(queued, acknowledged);

    // The change log: epoch 1 began at seq 1 (and its note, who began it and why, at seq 2),
    // then one Accepted record per message, in order.
    let log: Vec<_> = spool.log_from(1).collect::<Result<_, _>>().expect("log");
    assert_eq!(log[0].change, Change::EpochStarted);
    assert_eq!((log[0].position.epoch, log[0].position.seq), (1, 1));
    assert!(matches!(&log[1].change, Change::EpochNoted(note) if note.epoch == 1), "{:?}", log[1]);
    // Besides one Accepted record per message, the log holds the delivery attempts (to a
    // closed port here: deferred), each an Attempted record.
    let accepted = log.iter().filter(|r| matches!(r.change, Change::Accepted(_))).count();
    assert_eq!(accepted, 40);
    assert!(
        log.iter()
            .skip(2)
            .all(|r| matches!(r.change, Change::Accepted(_) | Change::Attempted { .. }))
    );
    for pair in log.windows(2) {
        assert_eq!(pair[1].position.seq, pair[0].position.seq + 1, "no gap, no repeat");
        assert_eq!(pair[1].position.epoch, 1);
    }
    let logged: BTreeSet<String> = log
        .iter()
        .filter_map(|r| match &r.change {
            Change::Accepted(envelope) => Some(envelope.id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(logged, acknowledged);
    assert_eq!(spool.epoch_history().expect("history").len(), 1);
}
