//! The test harness: runs the real relayd binary on loopback ports with a config of the test's
//! making, talks to it over real sockets, and reads its spool back once it has stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use relayd::spool::{MessageRecord, Spool};

pub const BIN: &str = env!("CARGO_BIN_EXE_relayd");

/// How long a test waits for a condition before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 for a test's listener. Ports are handed out in order from a
/// per-process counter, so two tests of one run never get the same one, and below the
/// kernel's ephemeral range (32768 and up), so no outgoing connection holds one either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 600) * 20;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

/// 127.0.0.1 and a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `condition` until it holds or `PATIENCE` runs out.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` until it holds or `patience` runs out; whether it held. Unlike
/// [`wait_for`] it does not fail the test: the caller records what did not happen.
pub fn within(patience: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One relayd process and its data directory.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    /// The admin endpoint's port ([admin].listen on 127.0.0.1).
    pub admin_port: u16,
    pub config_path: PathBuf,
    /// Environment variables the process is started with, besides the harness's own.
    env: Vec<(String, String)>,
    /// The relayd binary it runs: [`BIN`], or another release's ([`Node::run_binary`]).
    program: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Writes a config with the given extra `[smtp]` keys and extra sections, and starts relayd.
    pub fn start(smtp_extra: &str, sections: &str) -> Node {
        Node::start_as("primary", smtp_extra, sections)
    }

    /// The same, in the given role.
    ///
    /// Unless `sections` has routes or a `[delivery]` section of its own, every domain is
    /// routed to a loopback port where nobody listens (mail stays queued, deferred) and DNS is
    /// pointed at loopback too: a test never sends anything off this machine.
    pub fn start_as(role: &str, smtp_extra: &str, sections: &str) -> Node {
        Node::start_named("test", role, smtp_extra, sections)
    }

    /// The same, with the given `[node].name` (the two nodes of a cluster need their own).
    pub fn start_named(name: &str, role: &str, smtp_extra: &str, sections: &str) -> Node {
        let mut node = Node::configure(name, role, "", smtp_extra, sections);
        node.launch();
        node
    }

    /// The config of [`Node::start_named`], with extra `[node]` keys, written but not started
    /// (see [`Node::launch`]): a test may prepare the data directory first.
    pub fn configure(
        name: &str,
        role: &str,
        node_extra: &str,
        smtp_extra: &str,
        sections: &str,
    ) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let smtp_port = free_port();
        let admin_port = free_port();
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let route =
            if sections.contains("[[route]]") { String::new() } else { loopback(free_port()) };
        let resolver =
            if sections.contains("[delivery]") { String::new() } else { loopback(free_port()) };
        let config = node_config(&[
            ("data_dir", &dir.path().join("data").display().to_string()),
            ("name", name),
            ("role", role),
            ("node_keys", node_extra),
            ("smtp", &loopback(smtp_port)),
            ("hostname", "mx.test"),
            ("smtp_keys", smtp_extra),
            ("route", &route),
            ("resolver", &resolver),
            ("admin", &loopback(admin_port)),
            ("log", "info"),
            ("sections", sections),
        ]);
        let config_path = dir.path().join("relayd.toml");
        std::fs::write(&config_path, config).expect("write config");
        Node {
            dir,
            smtp_port,
            admin_port,
            config_path,
            env: Vec::new(),
            program: BIN.into(),
            child: None,
        }
    }

    /// A node with the relay settings most tests want: relay for example.com from anyone,
    /// and for anything from 127.0.0.1 (but not from 127.0.0.2, to test relay control).
    pub fn relay(smtp_extra: &str) -> Node {
        Node::start(
            smtp_extra,
            "[relay]\ndomains = [\"example.com\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n",
        )
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.smtp_port))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relayd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log from byte `offset` on (what was appended since the log was that long).
    fn log_since(&self, offset: u64) -> String {
        use std::io::Seek;
        let Ok(mut file) = std::fs::File::open(self.log_path()) else { return String::new() };
        let mut appended = Vec::new();
        let _ = file
            .seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut appended));
        String::from_utf8_lossy(&appended).into_owned()
    }

    /// A node whose whole config file the caller writes: `config` is given the node's data
    /// directory (to name as `[node].data_dir`) and returns the file's text. Not started: see
    /// [`Node::launch_until`]. Its SMTP and admin ports are 0 unless the caller sets them.
    pub fn prepare(config: impl FnOnce(&Path) -> String) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config(&dir.path().join("data"));
        let config_path = dir.path().join("relayd.toml");
        std::fs::write(&config_path, text).expect("write config");
        Node {
            dir,
            smtp_port: 0,
            admin_port: 0,
            config_path,
            env: Vec::new(),
            program: BIN.into(),
            child: None,
        }
    }

    /// Runs `program` (another release's relayd) from the next launch on.
    pub fn run_binary(&mut self, program: &Path) {
        self.program = program.to_path_buf();
    }

    /// The relayd binary this node runs: the operator's commands on its host are that one's.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts the process with `key=value` in its environment from its next launch on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process (again) and waits until it answers on its SMTP port.
    pub fn launch(&mut self) {
        let listening = format!("SMTP listening address={}", self.addr());
        self.launch_until(&listening);
    }

    /// Starts the process (again) and waits until *this* process logs a line containing `ready`
    /// (one more such line than the log held before).
    pub fn launch_until(&mut self, ready: &str) {
        self.launch_wrapped_until(&[], ready);
    }

    /// As [`Node::launch_until`], with relayd run by `wrapper` (a program and its arguments
    /// that execs the rest of its command line, such as `prlimit --nofile=256`).
    pub fn launch_wrapped_until(&mut self, wrapper: &[&str], ready: &str) {
        assert!(self.child.is_none(), "already running");
        // Measured before the spawn, so that a fast start cannot log its line unseen; only
        // what is appended after is read (a busy node's log can be hundreds of megabytes).
        let before = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        let child = command
            .arg("--config")
            .arg(&self.config_path)
            .env("RELAYD_LOG", "info")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn relayd");
        self.child = Some(child);
        // Ready when *this* process says it listens (a connect alone could reach another's).
        wait_for("relayd to listen", || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()).flatten() {
                panic!("relayd exited with {status}:\n{}", self.log_since(before));
            }
            self.log_since(before).contains(ready)
        });
    }

    /// The running process's id (the wrapper's, which is relayd's once the wrapper has
    /// exec'd it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, then wait for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`, ...) to the running process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits for the process to exit by itself; returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "relayd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process holds its sockets and answers nothing until [`Node::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// The node's `[node].data_dir` (for the nodes of [`Node::configure`] and [`Node::prepare`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Empties the data directory of a stopped node, as a replaced disk: the next start finds
    /// nothing of what it held (its log, queue, epochs, role, a witness's grants).
    pub fn wipe_data(&self) {
        assert!(self.child.is_none(), "stop the node before wiping its data");
        match std::fs::remove_dir_all(self.data_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("wipe {}: {e}", self.data_dir().display()),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Opens the spool of a stopped node.
    pub fn spool(&self) -> Spool {
        assert!(self.child.is_none(), "stop the node before reading its spool");
        Spool::open(&self.dir.path().join("data")).expect("open spool")
    }

    /// Every queued message with its body, read from the spool of a stopped node.
    pub fn queued(&self) -> Vec<(MessageRecord, Vec<u8>)> {
        let spool = self.spool();
        let messages: Vec<MessageRecord> =
            spool.messages().collect::<Result<_, _>>().expect("read messages");
        messages
            .into_iter()
            .map(|m| {
                let body = spool
                    .body(m.envelope.id)
                    .map(|chunk| chunk.expect("read chunk").to_vec())
                    .collect::<Vec<_>>()
                    .concat();
                (m, body)
            })
            .collect()
    }

    /// A node's data with its Received: header (the first header, with its folded lines) removed.
    pub fn without_received(body: &[u8]) -> &[u8] {
        assert!(body.starts_with(b"Received: "), "the body starts with our Received: header");
        let mut at = 0;
        loop {
            let eol =
                body[at..].windows(2).position(|w| w == b"\r\n").expect("header line end") + at + 2;
            at = eol;
            if !matches!(body.get(at), Some(b' ' | b'\t')) {
                return &body[at..];
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw SMTP client for sending what well-behaved clients never send.
pub struct Raw {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_from(addr, None)
    }

    /// Connects from a chosen loopback source address (127.0.0.2 is "untrusted" in tests).
    pub fn connect_from(addr: SocketAddr, source: Option<[u8; 4]>) -> Raw {
        let stream = match source {
            None => TcpStream::connect(addr).expect("connect"),
            Some(ip) => {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .expect("socket");
                socket.bind(&SocketAddr::from((ip, 0)).into()).expect("bind source");
                socket.connect(&addr.into()).expect("connect");
                socket.into()
            }
        };
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Raw { reader: BufReader::new(stream.try_clone().expect("clone")), stream }
    }

    /// Connects, reads the greeting (220) and says `EHLO client.test` (250).
    pub fn greeted(addr: SocketAddr) -> Raw {
        let mut smtp = Raw::connect(addr);
        let greeting = smtp.read_reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        let ehlo = smtp.cmd("EHLO client.test");
        assert!(ehlo.starts_with("250"), "EHLO: {ehlo}");
        smtp
    }

    /// One message: `MAIL FROM:` and `from` (the address in <> and any parameters), `RCPT TO`
    /// each of `to`, DATA, then `text` (dot-stuffed, ending in CRLF) and the closing dot. Every
    /// step before the dot must be accepted; returns the reply to the dot.
    pub fn send_message<S: AsRef<str>>(&mut self, from: &str, to: &[S], text: &str) -> String {
        let reply = self.cmd(&format!("MAIL FROM:{from}"));
        assert!(reply.starts_with("250"), "MAIL FROM:{from}: {reply}");
        for rcpt in to {
            let rcpt = rcpt.as_ref();
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert!(reply.starts_with("250"), "RCPT TO:<{rcpt}>: {reply}");
        }
        let reply = self.cmd("DATA");
        assert!(reply.starts_with("354"), "DATA: {reply}");
        self.cmd(&format!("{text}."))
    }

    /// Reads one reply (all its lines); returns it with CRLFs as "\n".
    pub fn read_reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; reply so far: {reply:?}");
            reply.push_str(line.trim_end_matches(['\r', '\n']));
            reply.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a command line (CRLF added) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// A slow client (slowloris): sends `bytes` one at a time, `every` apart, on a thread of
    /// its own, until they are all sent or a write fails because the server has closed the
    /// connection. The thread returns how many bytes it sent.
    pub fn trickle(&self, bytes: Vec<u8>, every: Duration) -> std::thread::JoinHandle<usize> {
        let mut stream = self.stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            for (sent, byte) in bytes.iter().enumerate() {
                if stream.write_all(std::slice::from_ref(byte)).is_err() {
                    return sent;
                }
                std::thread::sleep(every);
            }
            bytes.len()
        })
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// A config from scripts/node-config.sh, the node-config template the drill and the benchmarks
/// use too: `fields` are its FIELD=VALUE arguments (an empty value leaves the field out).
pub fn node_config(fields: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node-config.sh");
    let mut args = vec![script.display().to_string()];
    args.extend(fields.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("bash", &args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a UTF-8 config")
}

/// Runs a program and returns its output, failing the test if it cannot be started.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (run scripts/test.sh, which installs it)")
    })
}

/// Runs tests/peers/smtp_client.py (Python's smtplib) with the given arguments.
pub fn smtplib(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtplib_send.py");
    let mut all = vec![script.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run("python3", &all)
}

/// Makes a self-signed certificate for `mx.test` with openssl; returns (cert, key) paths.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("mx.pem");
    let key = dir.join("mx.key");
    let out = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().expect("path"),
            "-out",
            cert.to_str().expect("path"),
            "-days",
            "2",
            "-subj",
            "/CN=mx.test",
            "-addext",
            "subjectAltName=DNS:mx.test",
        ],
    );
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The `[smtp]` keys that offer STARTTLS with a certificate made by [`self_signed`] in `dir`.
pub fn starttls_keys(dir: &Path) -> String {
    let (cert, key) = self_signed(dir);
    format!("tls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display())
}

/// Asserts two byte strings are equal; on a mismatch, shows where they part, readably.
#[track_caller]
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let context = |bytes: &[u8]| {
        String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 40).min(bytes.len())])
            .into_owned()
    };
    panic!(
        "{what}: {} bytes stored, {} expected; they part at byte {at}:\n  stored:   {:?}\n  expected: {:?}",
        actual.len(),
        expected.len(),
        context(actual),
        context(expected)
    );
}
pub mod campaign;
pub mod client;
pub mod cluster;
pub mod postfix;
pub mod powercut;
pub mod proxy;
pub mod sink;
