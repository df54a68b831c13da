//! Recipient checks at RCPT (issue 14, point 1), against the real binary over real sockets: a
//! relay domain's list of valid recipients (inline, catch-alls, a file reloaded on SIGHUP), and
//! verification at the route's next hop (the test sink playing the customer's server: its
//! `reject…` users are unknown, `defer…` ones get a 4xx, `slow…` ones answer late), with the
//! cache seen from the sink's count of RCPTs. swaks, a client nobody here wrote, once.

use crate::common;

use std::time::Duration;

use common::postfix::Postfix;
use common::sink::{Options, Sink};
use common::{BIN, Node, Raw, free_port, run, wait_for};

/// A session from 127.0.0.2 (an outsider: relay domains only) with its transaction open.
fn outsider(node: &Node) -> Raw {
    let mut smtp = Raw::connect_from(node.addr(), Some([127, 0, 0, 2]));
    assert!(smtp.read_reply().starts_with("220"));
    assert!(smtp.cmd("EHLO client.test").starts_with("250"));
    assert!(smtp.cmd("MAIL FROM:<sender@client.test>").starts_with("250"));
    smtp
}

fn rcpt(smtp: &mut Raw, address: &str) -> String {
    smtp.cmd(&format!("RCPT TO:<{address}>"))
}

const ACCEPTED: &str = "250 2.1.5 Ok\n";

fn unknown(address: &str) -> String {
    format!("550 5.1.1 <{address}>: recipient unknown\n")
}

#[test]
fn a_list_accepts_its_recipients_and_refuses_the_rest_with_550() {
    let mut node = Node::start(
        "",
        "[relay]\ndomains = [\"open.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n\
         [[relay.domain]]\nname = \"example.com\"\nrecipients = [\"alice@example.com\"]\n\
         [[relay.domain]]\nname = \".example.org\"\nrecipients = [\"@sales.example.org\", \"boss@support.example.org\"]\n",
    );
    let mut smtp = outsider(&node);
    assert_eq!(rcpt(&mut smtp, "alice@example.com"), ACCEPTED);
    // The domain in any case, the local part exactly as listed.
    assert_eq!(rcpt(&mut smtp, "alice@EXAMPLE.com"), ACCEPTED);
    assert_eq!(rcpt(&mut smtp, "Alice@example.com"), unknown("Alice@example.com"));
    assert_eq!(rcpt(&mut smtp, "bob@example.com"), unknown("bob@example.com"));
    // A catch-all takes every address of its subdomain; the other subdomain has one address.
    assert_eq!(rcpt(&mut smtp, "anyone@sales.example.org"), ACCEPTED);
    assert_eq!(rcpt(&mut smtp, "boss@support.example.org"), ACCEPTED);
    assert_eq!(
        rcpt(&mut smtp, "anyone@support.example.org"),
        unknown("anyone@support.example.org")
    );
    // A plain relay domain is not checked; a domain we do not relay for is still refused.
    assert_eq!(rcpt(&mut smtp, "anyone@open.test"), ACCEPTED);
    assert_eq!(rcpt(&mut smtp, "anyone@elsewhere.test"), "550 5.7.1 relaying denied\n");
    // A trusted client is held to the lists too (Postfix's smtpd_reject_unlisted_recipient).
    let mut trusted = Raw::greeted(node.addr());
    assert!(trusted.cmd("MAIL FROM:<sender@client.test>").starts_with("250"));
    assert_eq!(rcpt(&mut trusted, "bob@example.com"), unknown("bob@example.com"));
    assert!(node.log().contains("rejected: recipient"), "{}", node.log());

    // The recipients accepted make a message as usual.
    assert!(smtp.cmd("DATA").starts_with("354"));
    assert!(smtp.cmd("Subject: listed\r\n\r\nhello\r\n.").starts_with("250 2.0.0 Ok: queued as"));
    // Sessions with a transaction open would hold the drain.
    drop((smtp, trusted));
    node.stop();
    let queued = node.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        queued[0].0.envelope.recipients,
        [
            "alice@example.com",
            "alice@EXAMPLE.com",
            "anyone@sales.example.org",
            "boss@support.example.org",
            "anyone@open.test"
        ]
    );
}

#[test]
fn a_file_list_is_read_at_start_and_again_at_sighup_keeping_the_old_list_when_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.com.txt");
    std::fs::write(&file, "# the customer's mailboxes\nbob@example.com\n").unwrap();
    let mut node = Node::start(
        "",
        &format!(
            "[[relay.domain]]\nname = \"example.com\"\nrecipients_file = \"{}\"\n",
            file.display()
        ),
    );
    // Sessions are ended as soon as done with: one with a transaction open would hold the
    // drain at the stop below.
    let rcpts = |addresses: &[&str]| {
        let mut smtp = outsider(&node);
        addresses.iter().map(|a| rcpt(&mut smtp, a)).collect::<Vec<_>>()
    };
    assert_eq!(
        rcpts(&["bob@example.com", "carol@example.com"]),
        [ACCEPTED.to_string(), unknown("carol@example.com")]
    );

    std::fs::write(&file, "bob@example.com\ncarol@example.com\n").unwrap();
    node.signal("HUP");
    wait_for("the reload", || node.log().contains("SIGHUP: config reloaded"));
    assert_eq!(rcpts(&["carol@example.com"]), [ACCEPTED]);

    // Gone at the next SIGHUP: the list read before stays, with a warning.
    std::fs::remove_file(&file).unwrap();
    node.signal("HUP");
    wait_for("the warning", || node.log().contains("recipients file not reloaded"));
    wait_for("the second reload", || node.log().matches("SIGHUP: config reloaded").count() == 2);
    assert_eq!(
        rcpts(&["carol@example.com", "dave@example.com"]),
        [ACCEPTED.to_string(), unknown("dave@example.com")]
    );

    // At a start, a file that cannot be read is a config error naming it.
    node.stop();
    let out = run(BIN, &["check-config", "--config", node.config_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("relay.domain[1].recipients_file"), "{stderr}");
    assert!(stderr.contains(&format!("cannot read {}", file.display())), "{stderr}");
    let before = node.log().len();
    let out = run(BIN, &["--config", node.config_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot read {}", file.display())), "{stderr}");
    assert_eq!(node.log().len(), before);
}

/// A node that verifies example.com's recipients at `next_hop`, within `timeout`.
fn verifying(next_hop: &str, timeout: &str) -> Node {
    Node::start(
        "",
        &format!(
            "[relay]\nverify_timeout = \"{timeout}\"\n\
             [[relay.domain]]\nname = \"example.com\"\nverify = true\n\
             [[route]]\ndomain = \"example.com\"\nnext_hop = \"{next_hop}\"\ntls = \"none\"\n"
        ),
    )
}

#[test]
fn verification_asks_the_next_hop_once_and_answers_with_its_word() {
    let sink = Sink::start(
        "127.0.0.1:0",
        Options { slow_rcpt: Duration::from_secs(4), ..Options::default() },
    );
    let node = verifying(&sink.addr().to_string(), "2s");
    let mut smtp = outsider(&node);
    assert_eq!(rcpt(&mut smtp, "ok-user@example.com"), ACCEPTED);
    assert_eq!(
        rcpt(&mut smtp, "reject-user@example.com"),
        "550 5.1.1 <reject-user@example.com>: recipient unknown (550 5.1.1 no such user)\n"
    );
    assert_eq!(
        rcpt(&mut smtp, "defer-user@example.com"),
        "450 4.1.1 <defer-user@example.com>: recipient not verified: 451 4.3.0 try later\n"
    );
    // The sink answers after 4 s; relayd waits 2 s.
    assert_eq!(
        rcpt(&mut smtp, "slow-user@example.com"),
        "450 4.1.1 <slow-user@example.com>: recipient not verified: no answer from the next hop within 2s\n"
    );
    // Each probe: MAIL FROM:<> and one RCPT, no message.
    for address in ["ok-user", "reject-user", "defer-user", "slow-user"] {
        assert_eq!(sink.rcpts_for(&format!("{address}@example.com")), 1, "{address}");
    }
    assert_eq!(sink.transaction_count(), 0);

    // Again, in a new session: the 250 and the 550 come from the cache, the 4xx is asked again.
    let mut again = outsider(&node);
    assert_eq!(rcpt(&mut again, "ok-user@example.com"), ACCEPTED);
    assert!(rcpt(&mut again, "reject-user@example.com").starts_with("550 5.1.1 "));
    assert!(rcpt(&mut again, "defer-user@example.com").starts_with("450 4.1.1 "));
    assert_eq!(sink.rcpts_for("ok-user@example.com"), 1);
    assert_eq!(sink.rcpts_for("reject-user@example.com"), 1);
    assert_eq!(sink.rcpts_for("defer-user@example.com"), 2);
}

#[test]
fn concurrent_rcpts_for_one_address_share_one_probe() {
    let sink = Sink::start(
        "127.0.0.1:0",
        Options { slow_rcpt: Duration::from_secs(1), ..Options::default() },
    );
    let node = verifying(&sink.addr().to_string(), "15s");
    // Every session is ready before any asks, and they ask together: all four RCPTs arrive
    // within the probe's second at the sink.
    let sessions: Vec<Raw> = (0..4).map(|_| outsider(&node)).collect();
    let together = std::sync::Arc::new(std::sync::Barrier::new(sessions.len()));
    let clients: Vec<_> = sessions
        .into_iter()
        .map(|mut smtp| {
            let together = together.clone();
            std::thread::spawn(move || {
                together.wait();
                rcpt(&mut smtp, "slow-user@example.com")
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), ACCEPTED);
    }
    assert_eq!(sink.rcpts_for("slow-user@example.com"), 1);
}

#[test]
fn a_dead_next_hop_is_a_450_never_a_550() {
    let node = verifying(&format!("127.0.0.1:{}", free_port()), "5s");
    let mut smtp = outsider(&node);
    let reply = rcpt(&mut smtp, "ok-user@example.com");
    assert!(
        reply.starts_with(
            "450 4.1.1 <ok-user@example.com>: recipient not verified: 4.4.1 connect to"
        ),
        "{reply}"
    );
    assert!(reply.contains("refused"), "{reply}");
}

#[test]
fn swaks_is_refused_an_unknown_recipient_and_delivers_to_a_known_one() {
    let sink = Sink::plain();
    let node = verifying(&sink.addr().to_string(), "5s");
    let swaks = |to: &str| {
        let server = node.addr().to_string();
        let out = run(
            "swaks",
            &[
                "--server",
                &server,
                "--from",
                "sender@client.test",
                "--to",
                to,
                "--helo",
                "client.test",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = swaks("reject-me@example.com");
    assert!(
        refused.contains(
            "<** 550 5.1.1 <reject-me@example.com>: recipient unknown (550 5.1.1 no such user)"
        ),
        "{refused}"
    );
    let sent = swaks("ok-me@example.com");
    assert!(sent.contains("<-  250 2.0.0 Ok: queued as"), "{sent}");
    wait_for("the delivery", || {
        sink.transactions().iter().any(|t| t.recipients == ["ok-me@example.com"])
    });
    // One probe, then the delivery's own RCPT.
    assert_eq!(sink.rcpts_for("ok-me@example.com"), 2);
}

#[test]
fn with_a_list_and_verification_only_listed_recipients_are_asked_about() {
    let sink = Sink::plain();
    let node = Node::start(
        "",
        &format!(
            "[[relay.domain]]\nname = \"example.com\"\nverify = true\n\
             recipients = [\"ok-a@example.com\", \"reject-b@example.com\"]\n\
             [[route]]\ndomain = \"example.com\"\nnext_hop = \"{}\"\ntls = \"none\"\n",
            sink.addr()
        ),
    );
    let mut smtp = outsider(&node);
    assert_eq!(rcpt(&mut smtp, "ok-a@example.com"), ACCEPTED);
    assert!(rcpt(&mut smtp, "reject-b@example.com").starts_with("550 5.1.1 "));
    assert_eq!(rcpt(&mut smtp, "ok-c@example.com"), unknown("ok-c@example.com"));
    assert_eq!(sink.rcpts_for("ok-a@example.com"), 1);
    assert_eq!(sink.rcpts_for("reject-b@example.com"), 1);
    assert_eq!(sink.rcpts_for("ok-c@example.com"), 0);
}

#[test]
fn a_real_postfix_as_the_customers_server_is_asked_and_believed() {
    let port = free_port();
    let postfix = Postfix::customer(port, "example.com", &["alice"]);
    let node = verifying(&format!("127.0.0.1:{port}"), "10s");
    wait_for("Postfix's smtpd", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut smtp = outsider(&node);
    assert_eq!(rcpt(&mut smtp, "alice@example.com"), ACCEPTED);
    let reply = rcpt(&mut smtp, "bob@example.com");
    assert!(
        reply.starts_with(
            "550 5.1.1 <bob@example.com>: recipient unknown (550 5.1.1 <bob@example.com>: \
             Recipient address rejected: User unknown in relay recipient table)"
        ),
        "{reply}\n{}",
        postfix.log()
    );
}
