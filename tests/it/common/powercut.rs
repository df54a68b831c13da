//! Power cuts for the harness: a [`Node`] whose data directory is a cutfs mount (tools/cutfs:
//! writes kept in memory until fsynced, and dropped on command), parallel SMTP senders that
//! record which messages got a 250, and the seeded schedule of the rounds.
//!
//! `RELAYD_POWERCUT_SEED=N` replays a run (each test prints its seed); `RELAYD_POWERCUT_ROUNDS=N`
//! runs N rounds per test instead of the short default (the long form).

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use cutfs::Cut;

use super::{Node, PATIENCE};

/// A node on a cutfs mount of its own (its `data_dir`); killed, then unmounted, when dropped.
pub struct CutNode {
    pub node: Node,
    mount: Option<cutfs::Mount>,
}

impl CutNode {
    /// Mounts an empty cutfs on the data directory of `node` (configured, not yet launched).
    /// None, having said why, where this machine has no FUSE: the caller skips its test.
    pub fn mount(node: Node) -> Option<CutNode> {
        if let Some(why) = cutfs::unavailable() {
            eprintln!("skipped: {why} (the power-cut tests need FUSE)");
            return None;
        }
        let data = node.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mount = cutfs::Mount::new(&data).expect("mount cutfs on the data dir");
        Some(CutNode { node, mount: Some(mount) })
    }

    /// The power cut: kill -9 (nothing flushed), then every write not fsynced is lost, and
    /// (with [`Cut::Unsynced`]) every directory change whose directory was not fsynced.
    /// Returns what cutfs says the cut reverted, on one line.
    pub fn power_cut(&mut self, cut: Cut) -> String {
        self.node.kill9();
        let mount = self.mount.as_ref().expect("mounted");
        mount.cut(cut).expect("cut the power");
        let status = std::fs::read_to_string(mount.path().join(cutfs::CONTROL_NAME))
            .expect("read the control file");
        status.lines().skip(1).collect::<Vec<_>>().join(", ")
    }

    /// Starts the node (again, on what the cut left), waiting for `ready` in its log (see
    /// [`Node::launch_until`]). If it does not come up, fails saying whether it exited or
    /// hangs, with the end of its log (where a panic shows).
    pub fn start_until(&mut self, what: &str, ready: &str) {
        let began = std::time::Instant::now();
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.node.launch_until(ready)
        }));
        if let Err(failure) = started {
            let reason = failure
                .downcast_ref::<String>()
                .map(|s| s.lines().next().unwrap_or("").to_string())
                .unwrap_or_default();
            let state = if self.node.is_running() { "still not ready" } else { "exited" };
            // Its warnings, errors and panic, the last ones: a busy node's INFO lines and a
            // panic's backtrace would bury them.
            let log = self.node.log();
            let frame = |line: &str| {
                let line = line.trim_start();
                line.starts_with("at ")
                    || line.split(':').next().is_some_and(|n| n.parse::<u32>().is_ok())
            };
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|line| {
                    !line.contains(" INFO ") && !frame(line) && *line != "stack backtrace:"
                })
                .take(25)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{what}: relayd did not start on what the cut left ({state} after {:?}: \
                 {reason}); the last lines of its log above INFO:\n{}",
                began.elapsed(),
                tail.join("\n")
            );
        }
    }

    /// [`CutNode::start_until`] its SMTP listener is up.
    pub fn start(&mut self, what: &str) {
        let listening = format!("SMTP listening address={}", self.node.addr());
        self.start_until(what, &listening);
    }
}

impl Drop for CutNode {
    fn drop(&mut self) {
        self.node.kill9();
        drop(self.mount.take());
    }
}

/// The seed of a test's randomness: `RELAYD_POWERCUT_SEED`, or a new one; printed either way,
/// so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("RELAYD_POWERCUT_SEED") {
        Ok(text) => text.trim().parse().expect("RELAYD_POWERCUT_SEED: a number"),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{test}: seed {seed} (replay with RELAYD_POWERCUT_SEED={seed})");
    seed
}

/// A cut of either kind, drawn from `rng`: of everything unsynced (the strict model), or of
/// unsynced file data only (directory changes kept, as LazyFS models a cut). Each finds what
/// the other cannot: a file missing, or a file there but empty.
pub fn any_cut(rng: &mut fastrand::Rng) -> Cut {
    if rng.bool() { Cut::Unsynced } else { Cut::UnsyncedData }
}

/// Rounds per test: `RELAYD_POWERCUT_ROUNDS`, or `default`.
pub fn rounds(default: usize) -> usize {
    match std::env::var("RELAYD_POWERCUT_ROUNDS") {
        Ok(text) => text.trim().parse().expect("RELAYD_POWERCUT_ROUNDS: a number"),
        Err(_) => default,
    }
}

/// One message to send.
#[derive(Clone, Debug)]
pub struct Mail {
    pub message_id: String,
    pub recipients: Vec<String>,
    /// The whole message, header and body, CRLF line ends, no line starting with ".".
    pub data: Vec<u8>,
}

/// A message a sender got a 250 for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acked {
    pub message_id: String,
    /// What the 250 named ("queued as ...").
    pub queue_id: String,
}

/// Sends one message over a new connection (RCPTs pipelined: relayd offers PIPELINING).
/// `Ok(Some(queue id))` for a 250 to the end of data, `Ok(None)` for any refusal, `Err` when
/// the connection failed (the node was killed, say). Never panics: it runs while nodes die.
pub fn submit(addr: SocketAddr, mail: &Mail) -> io::Result<Option<String>> {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let expect = |reader: &mut BufReader<TcpStream>, code: &str| -> io::Result<bool> {
        Ok(read_reply(reader)?.starts_with(code))
    };
    if !expect(&mut reader, "220")? {
        return Ok(None);
    }
    writer.write_all(b"EHLO sender.test\r\n")?;
    if !expect(&mut reader, "250")? {
        return Ok(None);
    }
    let mut envelope = String::from("MAIL FROM:<sender@client.test>\r\n");
    for rcpt in &mail.recipients {
        envelope += &format!("RCPT TO:<{rcpt}>\r\n");
    }
    envelope += "DATA\r\n";
    writer.write_all(envelope.as_bytes())?;
    let mut accepted = expect(&mut reader, "250")?;
    for _ in &mail.recipients {
        accepted &= expect(&mut reader, "250")?;
    }
    if !expect(&mut reader, "354")? || !accepted {
        return Ok(None);
    }
    writer.write_all(&mail.data)?;
    writer.write_all(b".\r\n")?;
    let reply = read_reply(&mut reader)?;
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .map(|id| id.split_whitespace().next().unwrap_or("").to_string()))
}

/// One reply, its lines joined; an error if the connection ends first.
fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        reply += &line;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(reply);
        }
    }
}

/// Parallel senders, each sending the messages its `make` gives it, one after the other, until
/// stopped or its connection fails; every 250 is recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    senders: Vec<JoinHandle<()>>,
}

impl Load {
    /// `senders` threads sending to `addr`; `make(sender, n)` is sender's n-th message.
    pub fn start(
        addr: SocketAddr,
        senders: usize,
        make: impl Fn(usize, usize) -> Mail + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let make = Arc::new(make);
        let senders = (0..senders)
            .map(|sender| {
                let (stop, acked, make) = (stop.clone(), acked.clone(), make.clone());
                std::thread::spawn(move || {
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let mail = make(sender, n);
                        match submit(addr, &mail) {
                            Ok(Some(queue_id)) => acked
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(Acked { message_id: mail.message_id, queue_id }),
                            // A refusal (a 4xx while the node is busy): go on with the next.
                            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, senders }
    }

    /// The messages acknowledged so far (the senders go on).
    pub fn acked_so_far(&self) -> Vec<Acked> {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops the senders (a sender in a transaction ends it, or sees its connection fail) and
    /// returns every message that got a 250.
    pub fn finish(self) -> BTreeSet<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        for sender in self.senders {
            sender.join().expect("sender thread");
        }
        let acked = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        acked.iter().cloned().collect()
    }
}

/// A message of `size` bytes of text (about) with the given Message-ID and recipients.
pub fn mail(message_id: String, recipients: Vec<String>, size: usize) -> Mail {
    let mut data = format!(
        "Message-ID: <{message_id}>\r\nFrom: <sender@client.test>\r\nSubject: power cut\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, and a power cut follows it.\r\n";
    while data.len() < size {
        data.extend_from_slice(line);
    }
    Mail { message_id, recipients, data }
}

/// The lines of a node's log that tell of a panic, if any.
pub fn panics(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains("panicked")).collect()
}
