//! Signals as operators expect: SIGTERM drains (421 to newcomers, open transactions and
//! deliveries in flight finish, exit 0), SIGHUP reloads without dropping sessions.

use crate::common;

use std::process::{Child, Command, Stdio};

use common::{Node, Raw, free_port, run, wait_for};

fn connect(node: &Node, source: [u8; 4]) -> Raw {
    let mut smtp = Raw::connect_from(node.addr(), Some(source));
    let greeting = smtp.read_reply();
    assert!(greeting.starts_with("220 "), "{greeting}");
    smtp
}

/// Postfix's smtp-sink, answering DATA only after `delay` seconds.
struct SlowSink(Child);

impl SlowSink {
    fn start(port: u16, delay: u32) -> SlowSink {
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", "-w", &delay.to_string(), &format!("127.0.0.1:{port}"), "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (scripts/test.sh installs Postfix)");
        wait_for("smtp-sink to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        SlowSink(child)
    }
}

impl Drop for SlowSink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Established TCP connections to `port` on loopback, as the kernel sees them.
fn connections_to(port: u16) -> usize {
    let out = run("ss", &["-Htn", "state", "established", "dport", &format!("= :{port}")]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn sigterm_refuses_newcomers_closes_idle_sessions_and_lets_a_transaction_finish() {
    let mut node = Node::relay("");
    let mut busy = connect(&node, [127, 0, 0, 1]);
    assert!(busy.cmd("EHLO client.test").starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(busy.cmd("RCPT TO:<b@example.com>").starts_with("250"));
    let mut idle = connect(&node, [127, 0, 0, 1]);
    assert!(idle.cmd("EHLO client.test").starts_with("250"));

    node.signal("TERM");
    assert_eq!(idle.read_reply(), "421 4.3.2 mx.test shutting down, try another MX\n");
    assert!(idle.is_closed());
    let mut newcomer = Raw::connect(node.addr());
    assert_eq!(newcomer.read_reply(), "421 4.3.2 mx.test shutting down, try another MX\n");

    assert!(busy.cmd("DATA").starts_with("354"));
    let reply = busy.cmd("Subject: finished while draining\r\n\r\nbody\r\n.");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    // Its transaction done, the session is idle, and closed like the others.
    assert_eq!(busy.read_reply(), "421 4.3.2 mx.test shutting down, try another MX\n");
    assert_eq!(node.wait_exit(), Some(0));
    assert!(node.log().contains("drained"), "{}", node.log());
    assert_eq!(node.queued().len(), 1, "the message acknowledged while draining is on disk");
}

#[test]
fn sigterm_waits_for_a_delivery_in_flight() {
    let sink_port = free_port();
    let _sink = SlowSink::start(sink_port, 2);
    let mut node = Node::start(
        "",
        &format!(
            "[relay]\ndomains = [\"example.com\"]\n\n[[route]]\ndomain = \"*\"\n\
             next_hop = \"127.0.0.1:{sink_port}\"\ntls = \"none\"\n"
        ),
    );
    let mut smtp = Raw::greeted(node.addr());
    let text = "Subject: slow\r\n\r\nbody\r\n";
    assert!(smtp.send_message("<a@client.test>", &["b@example.com"], text).starts_with("250"));
    assert!(smtp.cmd("QUIT").starts_with("221"));
    // The sink holds its DATA reply for 2 s: the delivery is in flight once relayd is connected.
    wait_for("relayd to connect to the sink", || connections_to(sink_port) > 0);
    node.signal("TERM");
    assert_eq!(node.wait_exit(), Some(0));
    let log = node.log();
    let delivered =
        log.find(" delivered ").unwrap_or_else(|| panic!("delivered before exit:\n{log}"));
    assert!(delivered < log.find("drained").unwrap_or(0), "{log}");
    assert!(node.queued().is_empty(), "the delivery was recorded before the exit");
}

#[test]
fn sighup_reloads_relay_domains_limits_and_certificates_without_dropping_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = common::self_signed(dir.path());
    let tls = format!("tls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display());
    let mut node = Node::start(&tls, "[relay]\ndomains = [\"a.test\"]\ntrusted_networks = []\n");
    let fingerprint = || {
        let script = r#"
import hashlib, smtplib, ssl, sys
c = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=10)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
c.starttls(context=ctx)
print(hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest())
c.quit()
"#;
        let out = run("python3", &["-c", script, &node.smtp_port.to_string()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first_cert = fingerprint();

    let mut before = connect(&node, [127, 0, 0, 2]);
    assert!(before.cmd("EHLO client.test").starts_with("250"));
    assert!(before.cmd("MAIL FROM:<s@client.test>").starts_with("250"));

    let config = std::fs::read_to_string(&node.config_path).expect("config");
    let changed = config
        .replace("domains = [\"a.test\"]", "domains = [\"b.test\"]")
        .replace("hostname = \"mx.test\"", "hostname = \"mx.test\"\nmax_recipients = 1");
    std::fs::write(&node.config_path, changed).expect("rewrite config");
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).expect("create dir");
    let (new_cert, new_key) = common::self_signed(&new_dir);
    std::fs::rename(&new_cert, &cert).expect("swap cert");
    std::fs::rename(&new_key, &key).expect("swap key");
    node.signal("HUP");
    wait_for("the reload", || node.log().contains("SIGHUP: config reloaded"));

    // The session opened before keeps its config: a.test, and more than one recipient.
    assert_eq!(before.cmd("RCPT TO:<x@a.test>"), "250 2.1.5 Ok\n");
    assert_eq!(before.cmd("RCPT TO:<y@a.test>"), "250 2.1.5 Ok\n");
    assert!(before.cmd("DATA").starts_with("354"));
    assert!(before.cmd("Subject: old config\r\n\r\n.").starts_with("250"));
    // A new session has the new one.
    let mut after = connect(&node, [127, 0, 0, 2]);
    assert!(after.cmd("EHLO client.test").starts_with("250"));
    assert!(after.cmd("MAIL FROM:<s@client.test>").starts_with("250"));
    assert_eq!(after.cmd("RCPT TO:<x@a.test>"), "550 5.7.1 relaying denied\n");
    assert_eq!(after.cmd("RCPT TO:<x@b.test>"), "250 2.1.5 Ok\n");
    assert_eq!(after.cmd("RCPT TO:<y@b.test>"), "452 4.5.3 Error: too many recipients\n");
    assert_ne!(fingerprint(), first_cert, "new sessions get the new certificate");

    // A broken file changes nothing.
    std::fs::write(&node.config_path, "[smtp\n").expect("break config");
    node.signal("HUP");
    wait_for("the refused reload", || node.log().contains("the running config is kept"));
    let mut still = connect(&node, [127, 0, 0, 2]);
    assert!(still.cmd("EHLO client.test").starts_with("250"));
    assert!(still.cmd("MAIL FROM:<s@client.test>").starts_with("250"));
    assert_eq!(still.cmd("RCPT TO:<x@b.test>"), "250 2.1.5 Ok\n");
    assert!(node.is_running());
}
