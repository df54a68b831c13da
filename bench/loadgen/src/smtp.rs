//! One SMTP client connection: greeting, EHLO, STARTTLS when asked, then transactions, the
//! envelope pipelined when the server offers PIPELINING (RFC 2920), as smtp-source does.
//!
//! Its one measurement is the time from the end of the data (the final `.` sent) to the
//! server's reply: what relayd spends making the message durable before it says 250.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A plain or TLS stream, the same to the session.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A reply: its code and its lines' text.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

/// Why a connection ended before its work was done.
#[derive(Debug)]
pub enum SessionError {
    Io(std::io::Error),
    /// A reply that is not SMTP, or the connection closed inside one.
    Garbled(String),
    /// The server refused the session itself (greeting, EHLO, STARTTLS).
    Refused(&'static str, Reply),
    Tls(std::io::Error),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Io(e) => write!(f, "{e}"),
            SessionError::Garbled(line) => write!(f, "not an SMTP reply: {line:?}"),
            SessionError::Refused(step, reply) => {
                write!(f, "{step} refused: {} {}", reply.code, reply.text)
            }
            SessionError::Tls(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::Io(e)
    }
}

/// One message to send.
pub struct Message<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The header section and the blank line after it.
    pub header: &'a [u8],
    /// The body: CRLF line ends, no line starting with a dot (nothing to dot-stuff).
    pub body: &'a [u8],
}

/// How a transaction ended.
pub enum Outcome {
    /// The reply to the end of data, and how long it took to come.
    Answered(Reply, Duration),
    /// Refused before the data (MAIL, every RCPT, or DATA): that reply.
    Refused(Reply),
}

pub struct Session {
    stream: BufReader<Box<dyn Io>>,
    pipelining: bool,
}

impl Session {
    /// Connects, reads the greeting, says EHLO and, with `tls`, STARTTLS and EHLO again.
    pub async fn open(
        server: &str,
        tls: Option<&(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
    ) -> Result<Session, SessionError> {
        let tcp = TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        let mut session = Session { stream: BufReader::new(Box::new(tcp)), pipelining: false };
        session.expect("greeting", 220).await?;
        let mut capabilities = session.ehlo().await?;
        if let Some((config, name)) = tls {
            session.send(b"STARTTLS\r\n").await?;
            session.expect("STARTTLS", 220).await?;
            let plain = std::mem::replace(
                &mut session.stream,
                BufReader::new(Box::new(tokio::io::empty())),
            )
            .into_inner();
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let secure = connector.connect(name.clone(), plain).await.map_err(SessionError::Tls)?;
            session.stream = BufReader::new(Box::new(secure));
            capabilities = session.ehlo().await?;
        }
        session.pipelining =
            capabilities.lines().any(|line| line.eq_ignore_ascii_case("PIPELINING"));
        Ok(session)
    }

    async fn ehlo(&mut self) -> Result<String, SessionError> {
        self.send(b"EHLO loadgen.test\r\n").await?;
        Ok(self.expect("EHLO", 250).await?.text)
    }

    /// One transaction.
    pub async fn send_message(&mut self, message: &Message<'_>) -> Result<Outcome, SessionError> {
        let mut commands = vec![format!("MAIL FROM:<{}>\r\n", message.sender)];
        commands.extend(message.recipients.iter().map(|to| format!("RCPT TO:<{to}>\r\n")));
        commands.push("DATA\r\n".to_string());
        if self.pipelining {
            self.send(commands.concat().as_bytes()).await?;
        }
        let mut replies = Vec::with_capacity(commands.len());
        for command in &commands {
            if !self.pipelining {
                self.send(command.as_bytes()).await?;
            }
            let reply = self.reply().await?;
            // Without pipelining, a refused MAIL ends the transaction there.
            if replies.is_empty() && reply.code != 250 && !self.pipelining {
                return Ok(Outcome::Refused(reply));
            }
            replies.push(reply);
        }
        let data = replies.pop().ok_or_else(|| SessionError::Garbled(String::new()))?;
        let mail_accepted = replies.first().is_some_and(|mail| mail.code == 250);
        let recipient_accepted = replies.iter().skip(1).any(|rcpt| rcpt.code == 250);
        if data.code == 354 && !(mail_accepted && recipient_accepted) {
            // Nothing to send the data for: end it empty, as a client must.
            self.send(b".\r\n").await?;
            self.reply().await?;
        }
        if data.code != 354 || !(mail_accepted && recipient_accepted) {
            let first_refusal = replies.into_iter().find(|reply| reply.code != 250);
            return Ok(Outcome::Refused(first_refusal.unwrap_or(data)));
        }
        let stream = self.stream.get_mut();
        stream.write_all(message.header).await?;
        stream.write_all(message.body).await?;
        self.send(b".\r\n").await?;
        let sent = Instant::now();
        let reply = self.reply().await?;
        Ok(Outcome::Answered(reply, sent.elapsed()))
    }

    pub async fn quit(mut self) -> Result<(), SessionError> {
        self.send(b"QUIT\r\n").await?;
        self.reply().await?;
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    async fn expect(&mut self, step: &'static str, code: u16) -> Result<Reply, SessionError> {
        let reply = self.reply().await?;
        if reply.code == code { Ok(reply) } else { Err(SessionError::Refused(step, reply)) }
    }

    /// Reads one reply, every line of a multi-line one; `text` holds each line's text.
    async fn reply(&mut self) -> Result<Reply, SessionError> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(SessionError::Garbled(format!("{text}<closed>")));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line.get(..3).and_then(|code| code.parse().ok());
            let (Some(code), more) = (code, line.as_bytes().get(3)) else {
                return Err(SessionError::Garbled(line.to_string()));
            };
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(line.get(4..).unwrap_or(""));
            match more {
                Some(b'-') => continue,
                Some(b' ') | None => return Ok(Reply { code, text }),
                Some(_) => return Err(SessionError::Garbled(line.to_string())),
            }
        }
    }
}
