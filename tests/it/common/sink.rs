//! A scripted SMTP server for the delivery tests: relayd's next hop, on std threads.
//!
//! RCPT is answered by the recipient's local part:
//!
//! | local part starts with | reply |
//! |---|---|
//! | `defer`  | `451 4.3.0 try later` |
//! | `reject` | `550 5.1.1 no such user` |
//! | `flaky`  | `451 4.3.0 try later` the first time the address is seen, `250` afterwards |
//! | `full`   | `552 5.2.2 mailbox full` the first time the address is seen, `250` afterwards |
//! | `slow`   | `250 2.1.5 ok`, after [`Options::slow_rcpt`] |
//! | anything else (`ok…`) | `250 2.1.5 ok` |
//!
//! With [`Options::dsn`] the sink offers DSN (RFC 3461); with or without it, it records what
//! followed the path in MAIL and in each accepted RCPT (the parameters relayd passed on).
//!
//! Every RCPT's address is counted ([`Sink::rcpts_for`]), refused or not: how a test sees that
//! relayd asked (a recipient verification probe) or did not.
//!
//! DATA is answered `250 2.0.0 Ok: queued as S<n>` (n counts the sink's transactions), after
//! an optional delay and while the sink is not [held](Sink::hold). Every transaction whose
//! body was received is recorded (sender, accepted recipients, the unstuffed body, whether TLS
//! was on, the connection's number, when it began and ended), even if its reply never reached
//! the client.
//!
//! Input is read line by line from a buffered reader, so pipelined commands are taken one at a
//! time; replies are written when the client has nothing more in flight (when PIPELINING is
//! offered) or at once.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PATIENCE;

/// How the sink behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Offer STARTTLS with this certificate chain and key (PEM files, as from
    /// `common::self_signed`).
    pub starttls: Option<(PathBuf, PathBuf)>,
    /// Offer PIPELINING.
    pub pipelining: bool,
    /// Wait this long before answering the end of DATA.
    pub data_delay: Duration,
    /// Offer STARTTLS but answer it `454 4.7.0 TLS not available` (no certificate needed).
    pub refuse_starttls: bool,
    /// Offer SMTPUTF8.
    pub smtputf8: bool,
    /// Offer DSN.
    pub dsn: bool,
    /// The host name in the greeting and the EHLO reply.
    pub name: &'static str,
    /// How long a `slow…` recipient waits for its 250.
    pub slow_rcpt: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            starttls: None,
            pipelining: true,
            data_delay: Duration::ZERO,
            refuse_starttls: false,
            smtputf8: false,
            dsn: false,
            name: "sink.test",
            slow_rcpt: Duration::from_secs(3),
        }
    }
}

/// One mail transaction whose body the sink received.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// The connection it came on: 1 for the sink's first connection, and so on.
    pub connection: usize,
    /// The reverse path without angle brackets; empty for `<>`.
    pub sender: String,
    /// What followed the reverse path in MAIL FROM (" SIZE=123 BODY=8BITMIME").
    pub mail_params: String,
    /// The recipients the sink accepted, without angle brackets.
    pub recipients: Vec<String>,
    /// What followed each accepted recipient's path in RCPT TO (" NOTIFY=SUCCESS"), in order.
    pub rcpt_params: Vec<String>,
    /// The message as sent, dot-unstuffed, without the final ".".
    pub body: Vec<u8>,
    /// Whether the connection was under TLS (after STARTTLS).
    pub tls: bool,
    /// When MAIL FROM arrived and when the body ended: the client was delivering throughout.
    pub mail_at: Instant,
    pub data_end_at: Instant,
}

impl Transaction {
    /// The value of the first header field named `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.body);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut fields: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.push_str(line);
                }
            } else {
                fields.push(line.to_string());
            }
        }
        fields.into_iter().find_map(|field| {
            let (field_name, value) = field.split_once(':')?;
            field_name.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    }

    /// The Message-ID header's value, without angle brackets.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID").map(|id| id.trim_matches(['<', '>']).to_string())
    }
}

#[derive(Default)]
struct State {
    transactions: Vec<Transaction>,
    connections: usize,
    active: usize,
    max_active: usize,
    rsets: usize,
    /// Commands that arrived before the reply to the previous one without PIPELINING offered.
    unasked_pipelining: usize,
    /// Commands answered 500-503: unknown, bad syntax, not offered, out of sequence.
    protocol_errors: usize,
    /// Addresses a `flaky…` or `full…` recipient was already refused for.
    seen: HashSet<String>,
    /// Every RCPT's address, in the order asked.
    rcpts: Vec<String>,
    held: bool,
    data_delay: Duration,
    /// A handle on every connection's socket, to cut them all at stop.
    sockets: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    released: Condvar,
    tls: Option<Arc<ServerConfig>>,
    pipelining: bool,
    refuse_starttls: bool,
    smtputf8: bool,
    dsn: bool,
    name: &'static str,
    slow_rcpt: Duration,
    stopping: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running sink; stops (closing its listener and every connection) when dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts a sink on `addr` ("127.0.0.1:0" for a free port, or a fixed address).
    pub fn start(addr: &str, options: Options) -> Sink {
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("sink: cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("sink address");
        let tls = options.starttls.as_ref().map(|(cert, key)| server_config(cert, key));
        let shared = Arc::new(Shared {
            state: Mutex::new(State { data_delay: options.data_delay, ..State::default() }),
            released: Condvar::new(),
            tls,
            pipelining: options.pipelining,
            refuse_starttls: options.refuse_starttls,
            smtputf8: options.smtputf8,
            dsn: options.dsn,
            name: options.name,
            slow_rcpt: options.slow_rcpt,
            stopping: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        Sink { addr, shared, acceptor: Some(acceptor) }
    }

    /// A sink with the default options on a free port of 127.0.0.1.
    pub fn plain() -> Sink {
        Sink::start("127.0.0.1:0", Options::default())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every transaction received so far, in the order their bodies ended.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared.state().transactions.clone()
    }

    pub fn transaction_count(&self) -> usize {
        self.shared.state().transactions.len()
    }

    /// How many RCPTs named `address` (compared without regard to case), on all connections.
    pub fn rcpts_for(&self, address: &str) -> usize {
        self.shared.state().rcpts.iter().filter(|r| r.eq_ignore_ascii_case(address)).count()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// The most connections open at once (a connection counts as closed from its QUIT on).
    pub fn max_simultaneous(&self) -> usize {
        self.shared.state().max_active
    }

    /// RSET commands received, on all connections.
    pub fn rsets(&self) -> usize {
        self.shared.state().rsets
    }

    /// Commands that were already waiting when the sink read the one before them, although
    /// PIPELINING was not offered (RFC 2920 forbids that). A violation whose commands came in
    /// separate reads goes uncounted: zero is evidence, not proof.
    pub fn unasked_pipelining(&self) -> usize {
        self.shared.state().unasked_pipelining
    }

    /// Commands the sink answered with 500-503 (unknown, bad syntax, not offered, out of
    /// sequence): what a correct client never provokes.
    pub fn protocol_errors(&self) -> usize {
        self.shared.state().protocol_errors
    }

    /// From now on, replies to the end of DATA wait until [`Sink::release`] (at most
    /// `PATIENCE`); the bodies are recorded meanwhile.
    pub fn hold(&self) {
        self.shared.state().held = true;
    }

    pub fn release(&self) {
        self.shared.state().held = false;
        self.shared.released.notify_all();
    }

    /// Changes the delay before the reply to the end of DATA.
    pub fn set_data_delay(&self, delay: Duration) {
        self.shared.state().data_delay = delay;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.release();
        // Wake the acceptor with a connection of our own; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for socket in self.shared.state().sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

fn server_config(cert: &std::path::Path, key: &std::path::Path) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .unwrap_or_else(|e| panic!("sink: certificates in {}: {e}", cert.display()));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("sink: private key in {}: {e}", key.display()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("sink: TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("sink: certificate and key");
    Arc::new(config)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let number = {
            let mut state = shared.state();
            state.connections += 1;
            state.active += 1;
            state.max_active = state.max_active.max(state.active);
            if let Ok(handle) = stream.try_clone() {
                state.sockets.push(handle);
            }
            state.connections
        };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut session = Session { shared: &shared, number, counted: true };
            let _ = session.serve(stream);
            if session.counted {
                shared.state().active -= 1;
            }
        });
    }
}

/// A connection's byte stream, plain or under TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    number: usize,
    /// Still counted among the active connections (until QUIT or the end).
    counted: bool,
}

/// The transaction being built: sender, MAIL parameters, accepted recipients.
struct Envelope {
    sender: String,
    params: String,
    recipients: Vec<String>,
    rcpt_params: Vec<String>,
    at: Instant,
}

impl Session<'_> {
    fn serve(&mut self, stream: TcpStream) -> io::Result<()> {
        // Bounded, so that a client that goes silent never keeps a thread forever.
        stream.set_read_timeout(Some(PATIENCE * 3))?;
        let mut reader = BufReader::new(Conn::Plain(stream));
        let mut out = format!("220 {} ESMTP scripted sink\r\n", self.shared.name);
        flush(&mut reader, &mut out)?;
        let mut tls = false;
        let mut envelope: Option<Envelope> = None;
        loop {
            let Some(line) = read_line(&mut reader)? else { return Ok(()) };
            if !self.shared.pipelining && !reader.buffer().is_empty() {
                self.shared.state().unasked_pipelining += 1;
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("");
            match verb {
                "EHLO" | "HELO" => {
                    envelope = None;
                    if verb == "HELO" {
                        out += &format!("250 {}\r\n", self.shared.name);
                    } else {
                        out += &format!("250-{}\r\n", self.shared.name);
                        if self.shared.pipelining {
                            out += "250-PIPELINING\r\n";
                        }
                        if (self.shared.tls.is_some() || self.shared.refuse_starttls) && !tls {
                            out += "250-STARTTLS\r\n";
                        }
                        if self.shared.smtputf8 {
                            out += "250-SMTPUTF8\r\n";
                        }
                        if self.shared.dsn {
                            out += "250-DSN\r\n";
                        }
                        out += "250-SIZE 104857600\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
                    }
                }
                "STARTTLS" => match (&self.shared.tls, tls) {
                    _ if self.shared.refuse_starttls => out += "454 4.7.0 TLS not available\r\n",
                    (Some(config), false) => {
                        out += "220 2.0.0 ready to start TLS\r\n";
                        flush(&mut reader, &mut out)?;
                        // RFC 3207: whatever was pipelined behind STARTTLS is discarded.
                        let Conn::Plain(tcp) = reader.into_inner() else {
                            unreachable!("TLS is started once")
                        };
                        let server = ServerConnection::new(config.clone())
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        reader = BufReader::new(Conn::Tls(Box::new(StreamOwned::new(server, tcp))));
                        tls = true;
                        envelope = None;
                        continue;
                    }
                    _ => out += "502 5.5.1 STARTTLS not offered\r\n",
                },
                "MAIL" => match mail_from(&line) {
                    Some((sender, params)) if envelope.is_none() => {
                        envelope = Some(Envelope {
                            sender,
                            params,
                            recipients: Vec::new(),
                            rcpt_params: Vec::new(),
                            at: Instant::now(),
                        });
                        out += "250 2.1.0 ok\r\n";
                    }
                    Some(_) => out += "503 5.5.1 nested MAIL\r\n",
                    None => out += "501 5.5.4 syntax: MAIL FROM:<address>\r\n",
                },
                "RCPT" => match (envelope.as_mut(), path_after(&line, "RCPT TO:")) {
                    (Some(envelope), Some((rcpt, params))) => {
                        let reply = self.rcpt_reply(&rcpt);
                        if reply.starts_with('2') {
                            envelope.recipients.push(rcpt);
                            envelope.rcpt_params.push(params);
                        }
                        out += reply;
                    }
                    (None, _) => out += "503 5.5.1 MAIL first\r\n",
                    (_, None) => out += "501 5.5.4 syntax: RCPT TO:<address>\r\n",
                },
                "DATA" => match envelope.take() {
                    Some(envelope) if !envelope.recipients.is_empty() => {
                        out += "354 end data with <CR><LF>.<CR><LF>\r\n";
                        flush(&mut reader, &mut out)?;
                        let body = read_body(&mut reader)?;
                        let id = self.record(envelope, body, tls);
                        self.before_data_reply();
                        out += &format!("250 2.0.0 Ok: queued as S{id}\r\n");
                    }
                    _ => out += "554 5.5.1 no valid recipients\r\n",
                },
                "RSET" => {
                    self.shared.state().rsets += 1;
                    envelope = None;
                    out += "250 2.0.0 ok\r\n";
                }
                "NOOP" => out += "250 2.0.0 ok\r\n",
                "QUIT" => {
                    if self.counted {
                        self.counted = false;
                        self.shared.state().active -= 1;
                    }
                    out += "221 2.0.0 bye\r\n";
                    return flush(&mut reader, &mut out);
                }
                _ => out += "500 5.5.2 command not recognized\r\n",
            }
            if out
                .rsplit("\r\n")
                .nth(1)
                .is_some_and(|last| matches!(last.get(..3), Some("500" | "501" | "502" | "503")))
            {
                self.shared.state().protocol_errors += 1;
            }
            if !self.shared.pipelining || reader.buffer().is_empty() {
                flush(&mut reader, &mut out)?;
            }
        }
    }

    fn rcpt_reply(&self, rcpt: &str) -> &'static str {
        self.shared.state().rcpts.push(rcpt.to_string());
        let local = rcpt.split('@').next().unwrap_or("").to_ascii_lowercase();
        if local.starts_with("slow") {
            std::thread::sleep(self.shared.slow_rcpt);
        }
        if local.starts_with("defer") {
            "451 4.3.0 try later\r\n"
        } else if local.starts_with("reject") {
            "550 5.1.1 no such user\r\n"
        } else if local.starts_with("flaky") && self.shared.state().seen.insert(rcpt.to_lowercase())
        {
            "451 4.3.0 try later\r\n"
        } else if local.starts_with("full") && self.shared.state().seen.insert(rcpt.to_lowercase())
        {
            "552 5.2.2 mailbox full\r\n"
        } else {
            "250 2.1.5 ok\r\n"
        }
    }

    /// Records a transaction; returns its number.
    fn record(&self, envelope: Envelope, body: Vec<u8>, tls: bool) -> usize {
        let mut state = self.shared.state();
        state.transactions.push(Transaction {
            connection: self.number,
            sender: envelope.sender,
            mail_params: envelope.params,
            recipients: envelope.recipients,
            rcpt_params: envelope.rcpt_params,
            body,
            tls,
            mail_at: envelope.at,
            data_end_at: Instant::now(),
        });
        state.transactions.len()
    }

    /// The configured delay, then the wait while the sink is held (bounded by `PATIENCE`).
    fn before_data_reply(&self) {
        let delay = self.shared.state().data_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let deadline = Instant::now() + PATIENCE;
        let mut state = self.shared.state();
        while state.held && !self.shared.stopping.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .released
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Writes the pending replies.
fn flush(reader: &mut BufReader<Conn>, out: &mut String) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let conn = reader.get_mut();
    conn.write_all(out.as_bytes())?;
    conn.flush()?;
    out.clear();
    Ok(())
}

/// A line without its CRLF (or LF); `None` at the end of the stream.
fn read_line(reader: &mut BufReader<Conn>) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// The DATA content up to the CRLF "." CRLF line, dot-unstuffed, with its CRLFs.
fn read_body(reader: &mut BufReader<Conn>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in DATA"));
        }
        if line == b".\r\n" {
            return Ok(body);
        }
        let content = line.strip_prefix(b".").unwrap_or(&line);
        body.extend_from_slice(content);
    }
}

/// "MAIL FROM:<a@b> PARAMS" → ("a@b", " PARAMS").
fn mail_from(line: &str) -> Option<(String, String)> {
    path_after(line, "MAIL FROM:")
}

/// The path after `prefix` (case-insensitive, angle brackets required) and what follows it.
fn path_after(line: &str, prefix: &str) -> Option<(String, String)> {
    let head = line.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = line[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    Some((path.to_string(), params.to_string()))
}
