//! One SMTP session: the command loop and its I/O, with a file per phase of the transaction
//! (as RFC 5321 orders them): [`ehlo`], [`mail`], [`rcpt`], [`data`].
//!
//! Replies are buffered and written when the client has nothing more in flight, which is what
//! makes PIPELINING (RFC 2920) cheap: one write answers a whole pipelined group.

mod data;
mod ehlo;
mod mail;
mod rcpt;
mod received;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::limits::ConnectionSlot;
use super::{Elsewhere, Services};
use crate::config::Config;
use crate::proto::dsn::RcptDsn;
use crate::proto::{self, Address, Command, LineReader, MailFrom, RcptTo, Reply, Stream};

/// The client's connection: buffered input, and the replies not yet written.
struct Conn {
    io: BufReader<Box<dyn Stream>>,
    out: Vec<u8>,
    write_timeout: Duration,
}

/// Why a session stopped reading commands.
enum End {
    /// The session is over (QUIT, the client went away, a timeout, a fatal limit).
    Close,
    /// STARTTLS was accepted: the caller runs the handshake and the session goes on over TLS.
    StartTls,
}

/// The TLS facts the Received: header records.
struct TlsInfo {
    version: String,
    cipher: String,
}

/// The state of one session.
pub struct Session {
    config: Arc<Config>,
    services: Services,
    tls_acceptor: Option<TlsAcceptor>,
    peer: SocketAddr,
    /// The name from EHLO/HELO, once given.
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    transaction: Option<Transaction>,
    errors: u32,
    /// Commands that moved no mail (see [`Command::moves_no_mail`]) since the session began
    /// or last had a message accepted.
    junk_commands: u32,
    /// Becomes true when the node starts to drain (SIGTERM).
    draining: watch::Receiver<bool>,
}

/// A mail transaction, from MAIL to the end of its body.
struct Transaction {
    mail: MailFrom,
    recipients: Vec<Address>,
    /// Each recipient's DSN parameters (NOTIFY, ORCPT), in the order of `recipients`.
    rcpt_dsn: Vec<RcptDsn>,
    /// The BDAT body received so far, when the client uses CHUNKING.
    chunked: Option<data::ChunkedBody>,
}

impl Session {
    pub fn new(
        config: Arc<Config>,
        services: Services,
        tls_acceptor: Option<TlsAcceptor>,
        peer: SocketAddr,
        draining: watch::Receiver<bool>,
    ) -> Session {
        Session {
            config,
            services,
            tls_acceptor,
            peer,
            helo: None,
            esmtp: false,
            tls: None,
            transaction: None,
            errors: 0,
            junk_commands: 0,
            draining,
        }
    }

    /// Runs the session to its end: greeting, commands, and at most one STARTTLS upgrade.
    /// The connection's slot is released before the last reply is written, so that a client
    /// that reconnects as soon as it reads our 221 finds its slot free.
    pub async fn run(mut self, stream: Box<dyn Stream>, slot: ConnectionSlot) {
        let mut conn = Conn {
            io: BufReader::new(stream),
            out: Vec::new(),
            write_timeout: self.config.smtp.command_timeout,
        };
        let greeting = format!("{} ESMTP relayd", self.config.smtp.hostname);
        conn.reply(&Reply::plain(220, vec![greeting.into()]));
        loop {
            match self.serve(&mut conn).await {
                End::Close => break,
                End::StartTls => {
                    let Some(acceptor) = self.tls_acceptor.clone() else {
                        break;
                    };
                    // Whatever the client pipelined behind STARTTLS is dropped with the buffer
                    // (the CVE-2011-0411 class of command injection).
                    let plain = conn.io.into_inner();
                    let handshake = acceptor.accept(plain);
                    let tls = match tokio::time::timeout(
                        self.config.smtp.command_timeout,
                        handshake,
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(client = %self.peer.ip(), error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(client = %self.peer.ip(), "TLS handshake timed out");
                            return;
                        }
                    };
                    let (_, state) = tls.get_ref();
                    self.tls = Some(TlsInfo {
                        version: state.protocol_version().map_or("TLS".into(), |v| {
                            v.as_str().unwrap_or("TLS").replace("TLSv1_", "TLSv1.")
                        }),
                        cipher: state
                            .negotiated_cipher_suite()
                            .and_then(|s| s.suite().as_str())
                            .unwrap_or("unknown")
                            .to_string(),
                    });
                    conn = Conn { io: BufReader::new(Box::new(tls)), out: Vec::new(), ..conn };
                    // RFC 3207 section 4.2: forget everything learnt before TLS.
                    self.helo = None;
                    self.esmtp = false;
                    self.transaction = None;
                }
            }
        }
        drop(slot);
        let _ = conn.flush().await;
    }

    async fn serve(&mut self, conn: &mut Conn) -> End {
        loop {
            if conn.flush_if_idle().await.is_err() {
                return End::Close;
            }
            // While draining, a session with no transaction open is closed instead of waiting
            // for its next command; one in the middle of a transaction may finish it.
            let idle = self.transaction.is_none();
            let mut draining = self.draining.clone();
            let read = tokio::select! {
                read = conn.read_line(self.config.smtp.command_timeout) => read,
                _ = draining.wait_for(|&draining| draining && idle) => Err(Closed::Draining),
            };
            let line = match read {
                Ok(line) => line,
                Err(Closed::Draining) => {
                    conn.reply(&Elsewhere::ShuttingDown.reply(&self.config.smtp.hostname));
                    return End::Close;
                }
                Err(Closed::Timeout) => {
                    self.timed_out(conn, "command");
                    return End::Close;
                }
                Err(Closed::Eof) => return End::Close,
            };
            // A node that stopped serving (fenced, or no longer primary) takes no more mail:
            // the client moves to the next MX.
            if !crate::role::current(&self.services.role).serving_now() {
                conn.reply(&Elsewhere::NotPrimary.reply(&self.config.smtp.hostname));
                return End::Close;
            }
            let reply = match line.and_then(|line| proto::command::parse(&line)) {
                Ok(command) => {
                    if command.moves_no_mail() {
                        self.junk_commands = self.junk_commands.saturating_add(1);
                        if self.junk_commands > self.config.smtp.max_junk_commands {
                            return self.too_many(conn, "commands without mail");
                        }
                    }
                    match self.execute(command, conn).await {
                        Ok(reply) => reply,
                        Err(end) => return end,
                    }
                }
                Err(reply) => reply,
            };
            conn.reply(&reply);
            if !reply.is_positive() {
                self.errors += 1;
                if self.errors >= self.config.smtp.max_bad_commands {
                    return self.too_many(conn, "errors");
                }
            }
        }
    }

    /// Runs one command and returns its reply, or how the session ends.
    async fn execute(&mut self, command: Command, conn: &mut Conn) -> Result<Reply, End> {
        Ok(match command {
            Command::Quit => {
                conn.reply(&Reply::new(221, "2.0.0", "Bye"));
                return Err(End::Close);
            }
            Command::StartTls => match self.starttls() {
                Ok(ready) => {
                    conn.reply(&ready);
                    return Err(match conn.flush().await {
                        Ok(()) => End::StartTls,
                        Err(_) => End::Close,
                    });
                }
                Err(refusal) => refusal,
            },
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt).await,
            Command::Data => return self.data(conn).await,
            Command::Bdat { size, last } => return self.bdat(conn, size, last).await,
            Command::Rset => {
                self.transaction = None;
                Reply::new(250, "2.0.0", "Ok")
            }
            Command::Noop => Reply::new(250, "2.0.0", "Ok"),
            Command::Help => {
                Reply::new(214, "2.0.0", "See RFC 5321; relayd is a relay, not a mailbox")
            }
            Command::Vrfy => Reply::new(
                252,
                "2.0.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn => Reply::new(502, "5.5.1", "Error: EXPN not available"),
            Command::Auth => Reply::new(503, "5.5.1", "Error: authentication not enabled"),
        })
    }

    fn starttls(&self) -> Result<Reply, Reply> {
        if self.tls_acceptor.is_none() {
            return Err(Reply::new(502, "5.5.1", "Error: STARTTLS not available"));
        }
        if self.tls.is_some() {
            return Err(Reply::new(503, "5.5.1", "Error: TLS already active"));
        }
        if self.transaction.is_some() {
            return Err(Reply::new(503, "5.5.1", "Error: MAIL transaction in progress"));
        }
        Ok(Reply::new(220, "2.0.0", "Ready to start TLS"))
    }

    /// Ends a session that has used up one of its limits: 421 4.7.0 "too many `what`".
    fn too_many(&self, conn: &mut Conn, what: &str) -> End {
        let text = format!("{} Error: too many {what}", self.config.smtp.hostname);
        conn.reply(&Reply::new(421, "4.7.0", text));
        tracing::info!(
            client = %self.peer.ip(),
            errors = self.errors,
            junk_commands = self.junk_commands,
            "disconnected after too many {what}"
        );
        End::Close
    }

    /// The client took too long (in `phase`: a command line, or a body): 421, and the caller
    /// ends the session.
    fn timed_out(&self, conn: &mut Conn, phase: &str) {
        tracing::info!(client = %self.peer.ip(), phase, "timeout exceeded");
        let text = format!("{} Error: timeout exceeded", self.config.smtp.hostname);
        conn.reply(&Reply::new(421, "4.4.2", text));
    }
}

/// `from + d`, or a time too far away to matter when `d` is too long to add (a config may say
/// "100000000d"): a deadline must never overflow.
fn later(from: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    from.checked_add(d).unwrap_or_else(|| from + FAR)
}

/// The client went away, or said nothing for too long, or the node is shutting down.
enum Closed {
    Eof,
    Timeout,
    Draining,
}

impl Conn {
    fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Writes the buffered replies if the client has sent nothing more yet: pipelined
    /// commands are answered together, and nobody waits for a reply still in our buffer.
    async fn flush_if_idle(&mut self) -> std::io::Result<()> {
        if self.io.buffer().is_empty() { self.flush().await } else { Ok(()) }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.get_mut().write_all(&self.out).await?;
            self.io.get_mut().flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.out.clear();
        Ok(())
    }

    /// Reads one command line, which must arrive whole within `timeout`. The outer error ends
    /// the session; the inner one is the reply to a line that cannot be a command (too long, a
    /// bare LF, a NUL byte).
    ///
    /// The timeout bounds the whole line, not each read: a client trickling a byte at a time
    /// (slowloris) would otherwise hold its session for as long as it cares to.
    async fn read_line(&mut self, timeout: Duration) -> Result<Result<Vec<u8>, Reply>, Closed> {
        let deadline = later(Instant::now(), timeout);
        let mut reader = LineReader::default();
        loop {
            let available = match tokio::time::timeout_at(deadline, self.io.fill_buf()).await {
                Err(_) => return Err(Closed::Timeout),
                Ok(Err(_)) => return Err(Closed::Eof),
                Ok(Ok([])) => return Err(Closed::Eof),
                Ok(Ok(available)) => available,
            };
            let pushed = reader.push(available);
            self.io.consume(pushed.consumed);
            if let Some(line) = pushed.line {
                return Ok(line);
            }
        }
    }
}
