//! What the fault tests see of relayd from outside, without ever panicking on a node that dies,
//! stops or refuses: an SMTP submission with its outcome, a probe of a node's greeting, a probe
//! of its `/status`, and the `relayd` operator commands.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{Node, run};

/// How one submission ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 250 after the body.
    Accepted,
    /// A reply that refused the message (421 at the greeting, 451, ...).
    Refused(String),
    /// A 4xx to the end of the body: the client keeps the message and sends it again, but a
    /// cluster node may hold it all the same (a primary that stopped serving during the sync
    /// wait withdraws it, and its standby may have it already): a delivery of it may follow.
    Deferred(String),
    /// No answer: refused connection, closed or reset connection, time-out. `uncertain` when
    /// the body had been sent: the message may have been queued all the same.
    Failed { error: String, uncertain: bool },
}

/// The DATA of the message with Message-ID `id` (without the final ".").
pub fn message_data(id: &str) -> String {
    format!(
        "From: <sender@example.org>\r\nTo: <user@example.com>\r\nSubject: fault {id}\r\n\
         Message-ID: <{id}>\r\n\r\nThis is message {id}.\r\n"
    )
}

/// How long the reply to the end of the body may take: longer than `sync_timeout` (the 250
/// may wait for the standby's ack).
const FINAL_REPLY: Duration = Duration::from_secs(10);

/// Sends the message `id` to `addr` in a session of its own. `patience` bounds the connect
/// and each reply before the body's end; the last one may take [`FINAL_REPLY`].
pub fn submit(addr: SocketAddr, id: &str, patience: Duration) -> Outcome {
    let mut body_sent = false;
    match try_submit(addr, id, patience, &mut body_sent) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Failed { error: error.to_string(), uncertain: body_sent },
    }
}

fn try_submit(
    addr: SocketAddr,
    id: &str,
    patience: Duration,
    body_sent: &mut bool,
) -> std::io::Result<Outcome> {
    let stream = TcpStream::connect_timeout(&addr, patience)?;
    stream.set_read_timeout(Some(patience))?;
    stream.set_write_timeout(Some(patience))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let greeting = read_reply(&mut reader)?;
    if !greeting.starts_with("220") {
        return Ok(Outcome::Refused(greeting));
    }
    for (line, code) in [
        ("EHLO client.test", "250"),
        ("MAIL FROM:<sender@example.org>", "250"),
        ("RCPT TO:<user@example.com>", "250"),
        ("DATA", "354"),
    ] {
        writer.write_all(format!("{line}\r\n").as_bytes())?;
        let reply = read_reply(&mut reader)?;
        if !reply.starts_with(code) {
            return Ok(Outcome::Refused(reply));
        }
    }
    writer.write_all(format!("{}.\r\n", message_data(id)).as_bytes())?;
    *body_sent = true;
    writer.set_read_timeout(Some(patience.max(FINAL_REPLY)))?;
    let reply = read_reply(&mut reader)?;
    if reply.starts_with('4') {
        return Ok(Outcome::Deferred(reply));
    }
    if !reply.starts_with("250") {
        return Ok(Outcome::Refused(reply));
    }
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(Outcome::Accepted)
}

/// One reply, all its lines, trimmed.
fn read_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed; reply so far {reply:?}"),
            ));
        }
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(reply.trim_end().to_string());
        }
    }
}

/// What a node's greeting said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// 220: it takes mail.
    Serving,
    /// Any other reply (421 not primary, too many connections, ...).
    Refusing,
    /// No greeting within the patience: down, stopped, or too slow.
    NoAnswer,
}

/// Connects to `addr`, reads the greeting, says QUIT. Returns what it said and the window
/// in which it was said: from before the connect to after the greeting arrived.
pub fn greeting(addr: SocketAddr, patience: Duration) -> (Greeting, Instant, Instant) {
    let start = Instant::now();
    let answer = (|| -> std::io::Result<String> {
        let stream = TcpStream::connect_timeout(&addr, patience)?;
        stream.set_read_timeout(Some(patience))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let reply = read_reply(&mut reader)?;
        let _ = (&stream).write_all(b"QUIT\r\n");
        Ok(reply)
    })();
    let end = Instant::now();
    let greeting = match answer {
        Ok(reply) if reply.starts_with("220") => Greeting::Serving,
        Ok(_) => Greeting::Refusing,
        Err(_) => Greeting::NoAnswer,
    };
    (greeting, start, end)
}

/// A node's `/status` as seen once: role, epoch, serving, and the queue's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSample {
    pub role: String,
    pub epoch: u64,
    pub serving: bool,
    pub queued: u64,
    pub peer_connected: bool,
    pub lag_records: u64,
}

/// `GET /status` on the admin port `port`, within `patience`; None when the node does not
/// answer 200 with a document in time. Returns the window of the request too.
pub fn status_sample(port: u16, patience: Duration) -> (Option<StatusSample>, Instant, Instant) {
    let start = Instant::now();
    let sample = get_json(port, "/status", patience).and_then(|s| {
        Some(StatusSample {
            role: s["role"].as_str()?.to_string(),
            epoch: s["epoch"].as_u64()?,
            serving: s["serving"].as_bool()?,
            queued: s["queue"]["messages"].as_u64().unwrap_or(0),
            peer_connected: s["peer"]["connected"].as_bool().unwrap_or(false),
            lag_records: s["replication"]["lag_records"].as_u64().unwrap_or(0),
        })
    });
    (sample, start, Instant::now())
}

/// `GET path` on the admin port, its JSON parsed; None on any trouble (no panic).
pub fn get_json(port: u16, path: &str, patience: Duration) -> Option<serde_json::Value> {
    let (head, body) = super::cluster::admin_get(port, path, patience)?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// An exit code, stdout and stderr.
fn outputs(out: std::process::Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `relayd SUBCOMMAND... --config` the node's config, with the binary the node runs.
pub fn relayd_on(node: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    let config = node.config_path.to_str().expect("utf-8 path");
    let mut all = args.to_vec();
    all.extend(["--config", config]);
    outputs(run(node.program().to_str().expect("utf-8 path"), &all))
}
