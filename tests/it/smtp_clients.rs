//! Real clients (Python's smtplib, swaks, curl) send to the real binary; the bodies are read
//! back from the spool and compared byte for byte.

use crate::common;

use common::{Node, run, smtplib, starttls_keys};

/// A message with CRLF line ends, dot-leading lines (stuffed on the wire, unstuffed in the
/// spool) and a long line.
fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <sender@client.test>\r\nTo: <rcpt@example.com>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\nfirst line\r\n.leading dot\r\n..two dots\r\n.\r\n\
         {long}\r\nlast line\r\n",
        long = "x".repeat(3000),
    )
    .into_bytes()
}

fn write_message(node: &Node, name: &str, content: &[u8]) -> String {
    let path = node.dir.path().join(name);
    std::fs::write(&path, content).expect("write message");
    path.to_str().expect("utf-8").to_string()
}

/// The queue id in a "250 2.0.0 Ok: queued as ID" reply.
fn queue_id(reply: &str) -> String {
    let at = reply.find("queued as ").unwrap_or_else(|| panic!("no queue id in {reply:?}"));
    reply[at + 10..].split_whitespace().next().expect("id").to_string()
}

#[test]
fn smtplib_plain_8bitmime_and_smtputf8_bodies_are_stored_exactly() {
    let mut node = Node::relay("");
    let plain = message("plain");
    let eight_bit = [&message("eightbit")[..], "Grüße, ça va? 日本語\r\n".as_bytes()].concat();
    let utf8 = [&message("utf8")[..], "Ünïcödé\r\n".as_bytes()].concat();
    let cases = [
        ("sender@client.test", "rcpt@example.com", &plain, vec![]),
        (
            "sender@client.test",
            "rcpt@example.com,other@example.com",
            &eight_bit,
            vec!["--8bitmime"],
        ),
        ("jöran@client.test", "bücher@example.com", &utf8, vec!["--smtputf8", "--8bitmime"]),
    ];
    let mut sent = Vec::new();
    for (i, (from, to, body, flags)) in cases.iter().enumerate() {
        let file = write_message(&node, &format!("m{i}.eml"), body);
        let mut args = vec!["127.0.0.1", &node.smtp_port.to_string()[..], from, to, &file[..]]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(flags.iter().map(|f| f.to_string()));
        let out = smtplib(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "smtplib: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        for ext in ["PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"]
        {
            assert!(stdout.contains(&format!("ext {ext}")), "{ext} announced: {stdout}");
        }
        assert!(!stdout.contains("ext STARTTLS"), "no STARTTLS without a certificate");
        sent.push((
            queue_id(&stdout),
            from.to_string(),
            to.split(',').map(String::from).collect::<Vec<_>>(),
            body.to_vec(),
        ));
    }
    assert_eq!(node.stop(), Some(0), "SIGTERM exits 0");
    let queued = node.queued();
    assert_eq!(queued.len(), sent.len());
    for (id, from, to, body) in sent {
        let (record, stored) = queued
            .iter()
            .find(|(m, _)| m.envelope.id.to_string() == id)
            .unwrap_or_else(|| panic!("{id} is queued"));
        assert_eq!(record.envelope.sender, from);
        assert_eq!(record.envelope.recipients, to);
        common::assert_same_bytes(Node::without_received(stored), &body, &format!("body of {id}"));
        assert_eq!(record.envelope.size, stored.len() as u64);
        let received = String::from_utf8_lossy(&stored[..stored.len() - body.len()]).to_string();
        assert!(received.contains(&format!("id {id}")), "Received: names the queue id: {received}");
        assert!(received.contains("from client.test (unknown [127.0.0.1])"), "{received}");
        let logged = format!(
            "accepted id={id} from=<{from}> rcpts={} size={} client=127.0.0.1",
            record.envelope.recipients.len(),
            stored.len()
        );
        assert!(node.log().contains(&logged), "log line {logged:?} in:\n{}", node.log());
    }
    assert!(queued.iter().any(|(m, _)| m.envelope.smtputf8 && m.envelope.eight_bit));
}

#[test]
fn smtplib_over_starttls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::relay(&starttls_keys(dir.path()));
    let body = message("tls");
    let file = write_message(&node, "tls.eml", &body);
    let out = smtplib(&[
        "127.0.0.1",
        &node.smtp_port.to_string(),
        "a@client.test",
        "b@example.com",
        &file,
        "--starttls",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "smtplib: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("ext STARTTLS"), "STARTTLS is not offered again inside TLS: {stdout}");
    node.stop();
    let queued = node.queued();
    assert_eq!(queued.len(), 1);
    let (record, stored) = &queued[0];
    assert_eq!(record.envelope.id.to_string(), queue_id(&stdout));
    common::assert_same_bytes(Node::without_received(stored), &body, "body");
    let header = String::from_utf8_lossy(&stored[..200]).to_string();
    assert!(header.contains("(using TLSv1.3 with cipher"), "{header}");
    assert!(header.contains("with ESMTPS id"), "{header}");
}

#[test]
fn swaks_plain_pipelined_and_starttls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::relay(&starttls_keys(dir.path()));
    let port = node.smtp_port.to_string();
    let body = message("swaks");
    let file = write_message(&node, "swaks.eml", &body);
    let server = format!("127.0.0.1:{port}");
    for extra in [&[][..], &["--pipeline"][..], &["--tls"][..], &["--tls", "--pipeline"][..]] {
        let mut args = vec![
            "--server",
            &server,
            "--from",
            "s@client.test",
            "--to",
            "r@example.com",
            "--data",
            &file,
            "--helo",
            "client.test",
        ];
        args.extend_from_slice(extra);
        let out = run("swaks", &args);
        let transcript = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "swaks {extra:?}:\n{transcript}");
        assert!(
            transcript.contains("<-  250 2.0.0 Ok: queued as")
                || transcript.contains("<~  250 2.0.0 Ok: queued as"),
            "{transcript}"
        );
    }
    node.stop();
    let queued = node.queued();
    assert_eq!(queued.len(), 4);
    for (_, stored) in &queued {
        // swaks sends the file dot-stuffed and ends the data with one more CRLF of its own.
        common::assert_same_bytes(
            Node::without_received(stored),
            &[&body[..], b"\r\n"].concat(),
            "swaks body",
        );
    }
    let tls = queued
        .iter()
        .filter(|(_, s)| String::from_utf8_lossy(&s[..300]).contains("ESMTPS"))
        .count();
    assert_eq!(tls, 2, "two of the four came over STARTTLS");
}

#[test]
fn curl_plain_and_starttls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::relay(&starttls_keys(dir.path()));
    let body = message("curl");
    let file = write_message(&node, "curl.eml", &body);
    let url = format!("smtp://127.0.0.1:{}/client.test", node.smtp_port);
    for extra in [&[][..], &["--ssl-reqd", "--insecure"][..]] {
        let mut args = vec![
            "--silent",
            "--show-error",
            &url,
            "--mail-from",
            "c@client.test",
            "--mail-rcpt",
            "r@example.com",
            "--upload-file",
            &file,
        ];
        args.extend_from_slice(extra);
        let out = run("curl", &args);
        assert!(out.status.success(), "curl {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    node.stop();
    let queued = node.queued();
    assert_eq!(queued.len(), 2);
    for (record, stored) in &queued {
        assert_eq!(record.envelope.sender, "c@client.test");
        common::assert_same_bytes(Node::without_received(stored), &body, "body");
    }
}

/// CHUNKING with a client nobody here wrote: Stalwart's mail-send sends BDAT ... LAST. (Postfix's
/// smtp client, curl, swaks and smtplib never send BDAT; tests/it/smtp_limits.rs covers several
/// pipelined chunks with a raw client.)
#[test]
fn mail_send_bdat_body_is_stored_exactly() {
    let mut node = Node::relay("");
    let body = message("bdat");
    let port = node.smtp_port;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let reply = runtime.block_on(async {
        let builder = mail_send::SmtpClientBuilder::new("127.0.0.1", port)
            .expect("builder")
            .implicit_tls(false)
            .helo_host("client.test");
        let mut client = builder.connect_plain().await.expect("connect and EHLO");
        let none = mail_send::smtp::message::Parameters::new();
        client.mail_from("bdat@client.test", &none).await.expect("MAIL");
        client.rcpt_to("r@example.com", &none).await.expect("RCPT");
        let reply = client.bdat(&body).await.expect("BDAT LAST");
        client.quit().await.expect("QUIT");
        reply
    });
    let reply = format!("{} {}", reply.code, reply.message);
    node.stop();
    let queued = node.queued();
    assert_eq!(queued.len(), 1);
    let (record, stored) = &queued[0];
    assert!(reply.contains(&record.envelope.id.to_string()), "{reply}");
    common::assert_same_bytes(Node::without_received(stored), &body, "BDAT body");
}
