//! The cluster link under attack, against a real primary/standby pair: clients of the test's
//! making dial the standby's cluster port directly with an expired certificate, with none, or
//! with a member's certificate and then garbage, a truncated frame, a Hello or records of an
//! older epoch. Each must be refused and logged, change nothing on the standby, and leave the
//! real primary able to (re)link and replicate. Then the TLS versions: 1.2 and 1.3 only, on the
//! cluster port and on SMTP STARTTLS, shown with openssl s_client.
//!
//! (A foreign CA's certificate and plaintext are in tests/it/replication.rs.)

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Pair, count, status, try_get};
use common::{Node, Raw, free_port, run, self_signed, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use relayd::replication::frame::{self, Frame, Hello};
use relayd::spool::{Change, EpochStart, LogPosition, LogRecord, QueueId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, StreamOwned};

/// A certificate for node `a`, signed by the cluster's own CA (its key, from `certs init`),
/// that expired in 2021. Written as `a-expired.pem` and `a-expired.key` beside the CA.
fn expired_member(certs: &Path) -> (PathBuf, PathBuf) {
    let pem = std::fs::read_to_string(certs.join("ca.key")).expect("ca.key");
    let ca_key = KeyPair::from_pem(&pem).expect("the CA key");
    // The CA as `certs init` describes it: same name and key, so the same issuer.
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name = common_name("relayd cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let issuer = Issuer::new(ca, ca_key);

    let mut params = CertificateParams::new(vec!["a".to_string()]).expect("params");
    params.distinguished_name = common_name("a");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (cert_path, key_path) = (certs.join("a-expired.pem"), certs.join("a-expired.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// What a test client presents to the standby's cluster port.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Identity {
    /// `a`'s certificate, made by `certs init`: a member.
    Member,
    /// `a`'s name, the cluster's CA, expired.
    Expired,
    /// No client certificate at all.
    Anonymous,
}

/// A TLS connection to the standby's cluster port as `identity` (the server is checked
/// against the cluster CA, by the standby's certificate name `b`). The handshake may fail:
/// then the connection is returned anyway, for the server's side is what the test looks at.
fn dial(certs: &Path, standby: SocketAddr, identity: Identity) -> (Tls, SocketAddr) {
    let pem = |file: &str| certs.join(file);
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pem("ca.pem")).expect("ca.pem") {
        roots.add(ca.expect("CA certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let client = |cert: PathBuf, key: PathBuf| {
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        (chain, key)
    };
    let config = match identity {
        Identity::Member => {
            let (chain, key) = client(pem("a.pem"), pem("a.key"));
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
        Identity::Expired => {
            let (chain, key) = client(pem("a-expired.pem"), pem("a-expired.key"));
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
        Identity::Anonymous => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("b").expect("server name");
    let connection = ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(standby).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let local = tcp.local_addr().expect("local address");
    let mut tls = StreamOwned::new(connection, tcp);
    let _ = tls.conn.complete_io(&mut tls.sock);
    (tls, local)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn read_frame(tls: &mut Tls) -> Frame {
    let mut length = [0u8; 4];
    tls.read_exact(&mut length).expect("a frame's length");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    tls.read_exact(&mut body).expect("a frame's body");
    frame::decode(&body).expect("a frame")
}

fn encoded(frame: &Frame) -> Vec<u8> {
    frame::encode(frame).expect("encode")
}

/// What an attacker sends once the TLS handshake is done (and its Hello, if it says one).
enum Then {
    Bytes(Vec<u8>),
    /// A record of the epoch before the standby's, at the next sequence number its Hello
    /// gave, that would remove this queued message.
    StaleRemoval(QueueId),
}

impl Then {
    fn bytes(&self, theirs: Option<&Hello>) -> Vec<u8> {
        match (self, theirs) {
            (Then::Bytes(bytes), _) => bytes.clone(),
            (Then::StaleRemoval(id), Some(theirs)) => {
                let epoch = theirs.history.last().map_or(0, |e| e.epoch);
                let position = LogPosition { epoch: epoch - 1, seq: theirs.last.seq + 1 };
                let record = LogRecord { position, change: Change::Removed { id: *id } };
                let records = vec![record];
                encoded(&Frame::Records { records, primary_last: position.seq, beat: 1 })
            }
            (Then::StaleRemoval(_), None) => panic!("records come after a Hello"),
        }
    }
}

/// The standby's queue: its messages' ids, sorted.
fn queue_ids(node: &Node) -> Vec<String> {
    let queue = try_get(node, "/queue").expect("GET /queue");
    let mut ids: Vec<String> = queue
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

/// Sends one message to the primary (any reply but 250 fails the test).
fn send(primary: &Node, n: usize) {
    let mut smtp = Raw::connect(primary.addr());
    assert!(smtp.read_reply().starts_with("220 "));
    assert!(smtp.cmd("EHLO client.test").starts_with("250"));
    assert!(smtp.cmd("MAIL FROM:<sender@example.org>").starts_with("250 "));
    assert!(smtp.cmd(&format!("RCPT TO:<rcpt{n}@example.com>")).starts_with("250 "));
    assert!(smtp.cmd("DATA").starts_with("354 "));
    let reply = smtp.cmd(&format!("Subject: link {n}\r\n\r\nafter an attack\r\n."));
    assert!(reply.starts_with("250 "), "{reply}");
}

#[test]
fn the_cluster_link_refuses_bad_peers_and_frames_and_the_real_link_recovers() {
    let pair = Pair::start("async", "");
    send(pair.primary(), 0);
    pair.wait_settled(1);
    let standby = pair.standby_cluster();
    let certs = pair.certs();
    let (expired, _) = expired_member(certs);
    // The expired certificate is the CA's own and good but for its dates: openssl verifies it
    // when told not to check times, and says it expired when it checks them.
    let ca = certs.join("ca.pem");
    let verify = |check_time: bool| {
        let mut args = vec!["verify", "-CAfile", ca.to_str().expect("utf-8")];
        if !check_time {
            args.push("-no_check_time");
        }
        args.push(expired.to_str().expect("utf-8"));
        let out = run("openssl", &args);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let (good, said) = verify(false);
    assert!(good, "the expired certificate's chain: {said}");
    let (good, said) = verify(true);
    assert!(!good && said.contains("certificate has expired"), "{said}");

    // Learn the standby's history from its answer to a stale Hello (the first attack).
    let stale = vec![EpochStart { epoch: 0, first_seq: 1 }];
    let (mut tls, _) = dial(certs, standby, Identity::Member);
    // A primary's log is never behind its standby's in the same epoch (a standby does not
    // follow one that is: it would lose the records it holds past the primary's end), so the
    // impostor claims a log as long as can be.
    let hello = |history: Vec<EpochStart>| Hello {
        node: "a".into(),
        role: "primary".into(),
        last: LogPosition { epoch: history.last().map_or(0, |e| e.epoch), seq: u64::MAX },
        history,
        rewind: None,
        protocol: frame::PROTOCOL,
        release: frame::RELEASE.into(),
    };
    tls.write_all(&encoded(&Frame::Hello(hello(stale.clone())))).expect("Hello");
    let Frame::Hello(theirs) = read_frame(&mut tls) else { panic!("the standby's Hello") };
    drop(tls);
    assert_eq!(theirs.role, "standby");
    let history = theirs.history.clone();
    let epoch = history.last().expect("an epoch").epoch;
    assert!(epoch >= 1, "{history:?}");
    wait_for("the stale Hello to be refused", || {
        count(&pair.standby().log(), &format!("claims primary in epoch 0, ours is {epoch}")) == 1
    });

    let victim: QueueId = queue_ids(pair.standby())[0].parse().expect("queue id");
    let mut truncated = encoded(&Frame::Ack { seq: 1, beat: 1 });
    truncated.splice(0..4, 1000u32.to_be_bytes());
    let undecodable = [&[0, 0, 0, 8][..], &[0xff; 8]].concat();
    let http = b"GET / HTTP/1.1\r\nHost: standby\r\n\r\n".to_vec();
    use Identity::*;
    use Then::*;

    // What is sent, as whom, whether after a Hello in the current epoch, and what the standby
    // logs about it.
    let refused_tls = "cluster peer refused: TLS handshake failed";
    let attacks = [
        ("an expired certificate of the cluster's CA", Expired, false, Bytes(vec![]), refused_tls),
        ("no client certificate", Anonymous, false, Bytes(vec![]), refused_tls),
        ("garbage instead of a Hello", Member, false, Bytes(http), "reading Hello: a frame of"),
        (
            "a frame that does not decode instead of a Hello",
            Member,
            false,
            Bytes(undecodable.clone()),
            "reading Hello: a frame does not decode",
        ),
        ("a truncated Hello", Member, false, Bytes(truncated.clone()), "reading Hello: early eof"),
        (
            "a frame that does not decode after the Hello",
            Member,
            true,
            Bytes(undecodable),
            "a frame does not decode",
        ),
        ("a truncated frame after the Hello", Member, true, Bytes(truncated), "early eof"),
        (
            "records of an older epoch after a Hello in the current one",
            Member,
            true,
            StaleRemoval(victim),
            "is not of the epoch our log is in there",
        ),
    ];

    let before = queue_ids(pair.standby());
    for (n, (what, identity, replaces, then, logged)) in attacks.into_iter().enumerate() {
        let links = count(&pair.primary().log(), "replication link up");
        // A Hello in the current epoch makes the standby follow us instead of the real
        // primary, which would soon dial again and replace us: it may not until we are done.
        if replaces {
            pair.proxy().block();
        }
        let (mut tls, local) = dial(certs, standby, identity);
        let mut theirs = None;
        if replaces {
            tls.write_all(&encoded(&Frame::Hello(hello(history.clone())))).expect("Hello");
            // The standby took us for its primary: its Hello answers ours.
            let Frame::Hello(answer) = read_frame(&mut tls) else { panic!("{what}: a Hello") };
            theirs = Some(answer);
        }
        let _ = tls.write_all(&then.bytes(theirs.as_ref()));
        // A clean close, so that a truncated frame reads as the end of the stream: TLS's
        // close_notify and TCP's FIN, then what the standby still sends is read to its end
        // (closing with it unread would reset the connection instead).
        tls.conn.send_close_notify();
        let _ = tls.flush();
        let _ = tls.sock.shutdown(std::net::Shutdown::Write);
        let _ = tls.sock.read_to_end(&mut Vec::new());
        let peer = format!("peer={local}");
        wait_for(&format!("the standby to refuse {what}"), || {
            pair.standby().log().lines().any(|l| l.contains(&peer) && l.contains(logged))
        });

        // Nothing applied: the standby's epoch and queue are as they were (plus the messages
        // sent after each attack, below).
        let after = status(pair.standby());
        assert_eq!(after["role"], "standby", "{what}");
        assert_eq!(after["epoch"], epoch, "{what}");
        let ids = queue_ids(pair.standby());
        assert!(before.iter().all(|id| ids.contains(id)), "{what}: a message went");
        assert_eq!(ids.len(), before.len() + n, "{what}");

        // The real primary links (again: after a Hello, ours had replaced it) and replicates.
        if replaces {
            pair.proxy().unblock();
            pair.wait_links_up(links + 1);
        }
        send(pair.primary(), n + 1);
        pair.wait_settled(before.len() + n + 1);
    }
    assert_eq!(status(pair.standby())["epoch"], epoch);
}

/// The refusal of a peer for its version, as the log says it.
const REFUSED: &str = "cluster peer refused: incompatible version";

/// A Hello of a release far ahead, whose protocol (9) is outside the window of ours.
fn hello_of_protocol_9(role: &str, history: Vec<EpochStart>) -> Hello {
    Hello {
        node: "future".into(),
        role: role.into(),
        last: LogPosition { epoch: history.last().map_or(0, |e| e.epoch), seq: u64::MAX },
        history,
        rewind: None,
        protocol: 9,
        release: "9.0.0".into(),
    }
}

/// The rule of docs/operations.md, "Upgrading": a node refuses a peer whose protocol is more
/// than one from its own, or whose Hello does not decode, in one log line naming both versions
/// however often the peer comes back, and goes on as without a peer. As a standby (a protocol-9 primary dials it): it
/// answers with its own Hello, so that the other side can say so too, stays a standby in its
/// epoch and follows nothing. As a primary (its standby's place taken by a protocol-9 node):
/// it keeps serving as with no standby (async here) and ships nothing.
#[test]
fn a_peer_of_a_protocol_out_of_reach_is_refused_in_one_line_and_each_side_goes_on() {
    let mut pair = Pair::start("async", "");
    send(pair.primary(), 0);
    pair.wait_settled(1);
    let before = status(pair.standby());
    let epoch = before["epoch"].as_u64().expect("epoch");
    let history = vec![EpochStart { epoch, first_seq: 1 }];

    // The standby's side: the real primary kept away, a protocol-9 primary dials three times.
    pair.proxy().block();
    for attempt in 0..3 {
        let (mut tls, _) = dial(pair.certs(), pair.standby_cluster(), Identity::Member);
        let ours = Frame::Hello(hello_of_protocol_9("primary", history.clone()));
        tls.write_all(&encoded(&ours)).expect("Hello");
        let Frame::Hello(theirs) = read_frame(&mut tls) else { panic!("the standby's Hello") };
        assert_eq!((theirs.protocol, theirs.release.as_str()), (frame::PROTOCOL, frame::RELEASE));
        assert_eq!(theirs.role, "standby", "attempt {attempt}");
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty(), "attempt {attempt}: the standby sent more than its Hello");
    }
    let line = format!(
        "theirs=relayd 9.0.0 (protocol 9) ours=relayd {} (protocol {})",
        frame::RELEASE,
        frame::PROTOCOL
    );
    wait_for("the standby to refuse the protocol-9 primary", || {
        count(&pair.standby().log(), REFUSED) >= 1
    });
    let log = pair.standby().log();
    assert_eq!(count(&log, REFUSED), 1, "one line for three attempts:\n{log}");
    assert!(log.lines().any(|l| l.contains(REFUSED) && l.contains(&line)), "{log}");
    let after = status(pair.standby());
    assert_eq!((&after["role"], &after["epoch"]), (&before["role"], &before["epoch"]));
    assert_eq!(after["peer"]["protocol"], 9, "{after}");
    // A Hello that does not decode at all (a release that changed it beyond appending): the
    // same, one more line for twice, with the peer's version unknown.
    let undecodable = [&[0, 0, 0, 8][..], &[0xff; 8]].concat();
    for attempt in 0..2 {
        let (mut tls, _) = dial(pair.certs(), pair.standby_cluster(), Identity::Member);
        tls.write_all(&undecodable).expect("a Hello that does not decode");
        let Frame::Hello(theirs) = read_frame(&mut tls) else { panic!("the standby's Hello") };
        assert_eq!(theirs.protocol, frame::PROTOCOL, "attempt {attempt}");
    }
    let unknown = "theirs=unknown (its Hello does not decode)";
    wait_for("the standby to refuse the undecodable Hello", || {
        count(&pair.standby().log(), REFUSED) >= 2
    });
    let log = pair.standby().log();
    assert_eq!(count(&log, REFUSED), 2, "one more line for two attempts:\n{log}");
    assert!(log.lines().any(|l| l.contains(REFUSED) && l.contains(unknown)), "{log}");
    assert_eq!(status(pair.standby())["role"], "standby");
    pair.proxy().unblock();
    pair.wait_caught_up();

    // The primary's side: the standby stopped, a protocol-9 node answers on its port.
    pair.standby_mut().stop();
    let standby = pair.standby_cluster();
    let links = std::net::TcpListener::bind(standby).expect("the standby's port");
    let acceptor = fake_standby(pair.certs());
    let answer = Frame::Hello(hello_of_protocol_9("standby", history));
    for attempt in 0..3 {
        let (tcp, _) = links.accept().expect("the primary dials");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let connection = rustls::ServerConnection::new(acceptor.clone()).expect("server");
        let mut tls = StreamOwned::new(connection, tcp);
        let mut length = [0u8; 4];
        tls.read_exact(&mut length).expect("the primary's Hello");
        let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
        tls.read_exact(&mut body).expect("the primary's Hello");
        let Frame::Hello(theirs) = frame::decode(&body).expect("a frame") else {
            panic!("attempt {attempt}: a Hello first")
        };
        assert_eq!(theirs.protocol, frame::PROTOCOL);
        tls.write_all(&encoded(&answer)).expect("our Hello");
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty(), "attempt {attempt}: the primary shipped to a protocol-9 node");
    }
    let log = pair.primary().log();
    assert_eq!(count(&log, REFUSED), 1, "one line for three links:\n{log}");
    assert!(log.lines().any(|l| l.contains(REFUSED) && l.contains(&line)), "{log}");
    // It serves as a primary without its standby does.
    send(pair.primary(), 1);
    let after = status(pair.primary());
    assert_eq!((after["role"].as_str(), after["serving"].as_bool()), (Some("primary"), Some(true)));
    assert_eq!(after["peer"]["connected"], false, "{after}");
}

/// A TLS server with the standby's certificate (the primary checks it against the cluster CA;
/// the test does not check the primary's).
fn fake_standby(certs: &Path) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(certs.join("b.pem"))
        .expect("b.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(certs.join("b.key")).expect("b.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the standby's certificate");
    Arc::new(config)
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `openssl s_client` handshake limited to `version` (`-tls1`, `-tls1_1`, ...), at
/// security level 0 so that it offers the old versions at all: the protocol agreed, or None
/// when the handshake failed.
fn handshake(version: &str, target: &[&str]) -> Option<String> {
    let mut args = vec!["s_client", "-brief", version, "-cipher", "DEFAULT@SECLEVEL=0"];
    args.extend_from_slice(target);
    let out = run("openssl", &args);
    // -brief reports the handshake on stderr as soon as it is done.
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let agreed = said.lines().find_map(|l| l.strip_prefix("Protocol version: "));
    match (out.status.success(), said.contains("CONNECTION ESTABLISHED")) {
        (true, true) => agreed.map(str::to_string),
        _ => None,
    }
}

/// rustls speaks TLS 1.2 and 1.3 only; shown rather than assumed: openssl, which does offer
/// 1.0 and 1.1 (an openssl server agrees to them), gets no handshake below 1.2 from the cluster
/// port or from SMTP STARTTLS, and gets 1.2 and 1.3.
#[test]
fn the_cluster_port_and_starttls_speak_tls_1_2_and_1_3_only() {
    let pair = Pair::start("async", "");
    let certs = pair.certs();
    let file = |f: &str| certs.join(f).to_str().expect("utf-8").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let smtp =
        Node::relay(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display()));

    let control = format!("127.0.0.1:{}", free_port());
    let (b_pem, b_key) = (file("b.pem"), file("b.key"));
    let server = Command::new("openssl")
        .args(["s_server", "-accept", &control, "-cert", &b_pem, "-key", &b_key])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-www"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .expect("openssl s_server");
    wait_for("openssl s_server", || TcpStream::connect(&control).is_ok());

    let cluster = pair.standby_cluster().to_string();
    let (a_pem, a_key, ca) = (file("a.pem"), file("a.key"), file("ca.pem"));
    let member = ["-connect", &cluster, "-cert", &a_pem, "-key", &a_key, "-CAfile", &ca];
    let smtp_addr = smtp.addr().to_string();
    let starttls = ["-connect", &smtp_addr, "-starttls", "smtp"];
    let versions = [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1"), ("-tls1_2", "TLSv1.2")];
    for (flag, name) in versions {
        let agreed = handshake(flag, &["-connect", &control]);
        assert_eq!(agreed.as_deref(), Some(name), "openssl's own server, {flag}");
    }
    for (target, args) in [("the cluster port", &member[..]), ("SMTP STARTTLS", &starttls[..])] {
        for flag in ["-tls1", "-tls1_1"] {
            assert_eq!(handshake(flag, args), None, "{target} agreed to {flag}");
        }
        assert_eq!(handshake("-tls1_2", args).as_deref(), Some("TLSv1.2"), "{target}");
        assert_eq!(handshake("-tls1_3", args).as_deref(), Some("TLSv1.3"), "{target}");
    }
    drop(server);
    // The refusals are the server's, and logged: the two handshakes below 1.2.
    wait_for("the cluster port's refusals in the log", || {
        count(&pair.standby().log(), "cluster peer refused: TLS handshake failed") == 2
    });
}
