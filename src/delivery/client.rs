//! The outbound SMTP client: one connection to a next hop, on mail-send's lower-level calls,
//! with RFC 5321's per-stage timeouts and the route's TLS policy.

use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
    Response,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::outcome::{Outcome, Reply};
use super::route::{self, Hop};
use crate::config::RouteTls;
use crate::proto::dsn::MailDsn;
use crate::proto::{DotStuffer, Stream};
use crate::spool::{Dsn, MessageRecord, Spool};

/// RFC 5321 section 4.5.3.2's minimum timeouts, per stage; connecting gets Postfix's 30 s.
const CONNECT: Duration = Duration::from_secs(30);
const GREETING: Duration = Duration::from_secs(300);
const MAIL_RCPT: Duration = Duration::from_secs(300);
const DATA_INIT: Duration = Duration::from_secs(120);
const DATA_BLOCK: Duration = Duration::from_secs(180);
const DATA_TERM: Duration = Duration::from_secs(600);

/// An open SMTP connection, ready for a transaction.
pub struct Connection {
    client: SmtpClient<Box<dyn Stream>>,
    capabilities: EhloResponse<String>,
    /// "host[ip]:port", as logged.
    pub relay: String,
    /// Transactions done on this connection; from the second on, each starts with RSET.
    transactions: u32,
}

/// Why one address of a next hop was not used.
enum Unusable {
    /// It failed: the next address is tried.
    Failed(Outcome),
    /// It is relayd itself (its greeting or EHLO names our host name): no further address is
    /// tried, the mail loops back (the hosts after it are the ones relayd prefers less than
    /// itself, as `route::without_self` treats an address of our own).
    Loop(Outcome),
}

impl From<Outcome> for Unusable {
    fn from(outcome: Outcome) -> Unusable {
        Unusable::Failed(outcome)
    }
}

/// Whether a next hop that calls itself `name` (the first word of its greeting, or its EHLO
/// reply's host name) is relayd itself, which greets as `helo`: Postfix's check.
fn names_us(name: &str, helo: &str) -> bool {
    name.trim_end_matches('.').eq_ignore_ascii_case(helo.trim_end_matches('.'))
}

/// Opens a connection to the first of `hops` that answers well (trying every address of
/// every host in order, as with MX fallback). A failure is the outcome for every recipient;
/// a next hop that is relayd itself fails them for good (5.4.6).
pub async fn connect(
    hops: &[Hop],
    tls: RouteTls,
    helo: &str,
    connector: &TlsConnector,
) -> Result<Connection, Outcome> {
    let mut last = Outcome::temporary([4, 4, 1], "no host to connect to");
    for hop in hops {
        for addr in &hop.addrs {
            // Postfix's form, "mx.example.com[192.0.2.1]:25", or just the address for an IP hop.
            let relay = if hop.name.parse::<std::net::IpAddr>().is_ok() {
                addr.to_string()
            } else {
                format!("{}[{}]:{}", hop.name, addr.ip(), addr.port())
            };
            match open(&hop.name, *addr, &relay, tls, helo, connector).await {
                Ok(connection) => return Ok(connection),
                Err(Unusable::Loop(outcome)) => return Err(outcome),
                Err(Unusable::Failed(outcome)) => {
                    tracing::debug!(relay, reply = %outcome.reply(), "next hop not usable");
                    last = outcome;
                }
            }
        }
    }
    Err(last)
}

async fn open(
    host: &str,
    addr: std::net::SocketAddr,
    relay: &str,
    tls: RouteTls,
    helo: &str,
    connector: &TlsConnector,
) -> Result<Connection, Unusable> {
    let lost = |stage: &str, e: mail_send::Error| {
        Outcome::temporary([4, 4, 2], format!("{relay}: {stage}: {e}")).at(relay)
    };
    let loops = || Unusable::Loop(route::loops_back(host).at(relay));
    let stream = match tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(Outcome::temporary([4, 4, 1], format!("connect to {relay}: {e}")).into());
        }
        Err(_) => {
            let text = format!("connect to {relay}: timed out");
            return Err(Outcome::temporary([4, 4, 1], text).into());
        }
    };
    let _ = stream.set_nodelay(true);
    let mut client = SmtpClient { stream, timeout: GREETING };
    let greeting = client.read().await.map_err(|e| lost("reading the greeting", e))?;
    if !greeting.is_positive_completion() {
        // A 4xx or 5xx greeting: try the next host, as RFC 5321 section 5.1 asks.
        return Err(Outcome::refused(&greeting, relay).into());
    }
    if greeting.message.split_whitespace().next().is_some_and(|name| names_us(name, helo)) {
        let _ = client.quit().await;
        return Err(loops());
    }
    client.timeout = MAIL_RCPT;
    let capabilities = client.ehlo(helo).await.map_err(|e| lost("EHLO", e))?;
    if names_us(&capabilities.hostname, helo) {
        let _ = client.quit().await;
        return Err(loops());
    }
    let offers_tls = capabilities.has_capability(EXT_START_TLS);
    let (client, capabilities) = match (tls, offers_tls) {
        (RouteTls::Required, false) => {
            let _ = client.quit().await;
            let text = format!("{relay}: TLS is required, but the host does not offer STARTTLS");
            return Err(Outcome::temporary([4, 7, 4], text).at(relay).into());
        }
        (RouteTls::None, _) | (RouteTls::Opportunistic, false) => (
            SmtpClient {
                stream: Box::new(client.stream) as Box<dyn Stream>,
                timeout: client.timeout,
            },
            capabilities,
        ),
        (RouteTls::Opportunistic | RouteTls::Required, true) => {
            let mut client = client;
            let ready = client.cmd(b"STARTTLS\r\n").await.map_err(|e| lost("STARTTLS", e))?;
            if !ready.is_positive_completion() {
                if tls == RouteTls::Required {
                    let text =
                        format!("{relay}: STARTTLS refused: {}", Reply::from_response(&ready));
                    return Err(Outcome::temporary([4, 7, 5], text).at(relay).into());
                }
                // RFC 3207 section 4.1: after a refusal the session may go on in plain text.
                tracing::debug!(relay, reply = %Reply::from_response(&ready), "STARTTLS refused; going on in plain text");
                let plain = SmtpClient {
                    stream: Box::new(client.stream) as Box<dyn Stream>,
                    timeout: client.timeout,
                };
                return Ok(Connection {
                    client: plain,
                    capabilities,
                    relay: relay.to_string(),
                    transactions: 0,
                });
            }
            let mut secure = client.into_tls(connector, host).await.map_err(|e| {
                Outcome::temporary([4, 7, 5], format!("{relay}: TLS handshake failed: {e}"))
                    .at(relay)
            })?;
            let capabilities =
                secure.ehlo(helo).await.map_err(|e| lost("EHLO after STARTTLS", e))?;
            (
                SmtpClient {
                    stream: Box::new(secure.stream) as Box<dyn Stream>,
                    timeout: secure.timeout,
                },
                capabilities,
            )
        }
    };
    Ok(Connection { client, capabilities, relay: relay.to_string(), transactions: 0 })
}

impl Connection {
    /// Whether the next hop offers DSN (RFC 3461): then a message's DSN request is passed on
    /// to it, and reporting success is its job.
    pub fn offers_dsn(&self) -> bool {
        self.capabilities.has_capability(EXT_DSN)
    }

    /// Delivers `message` to the recipients at `rcpts` (indexes into its envelope), passing
    /// its DSN request `dsn` on when the next hop offers DSN. `Err` means the connection
    /// failed: its outcome holds for every recipient, and the connection must not be reused.
    pub async fn send(
        &mut self,
        message: &MessageRecord,
        dsn: Option<&Dsn>,
        rcpts: &[u32],
        spool: &Spool,
    ) -> Result<Vec<(u32, Outcome)>, Outcome> {
        let relay = self.relay.clone();
        let lost = |stage: &str, e: mail_send::Error| {
            Outcome::temporary([4, 4, 2], format!("{relay}: lost connection while {stage}: {e}"))
                .at(&relay)
        };
        let envelope = &message.envelope;
        if envelope.smtputf8 && !self.capabilities.has_capability(EXT_SMTP_UTF8) {
            let text =
                format!("{relay}: the message needs SMTPUTF8, which the host does not offer");
            let outcome = Outcome::permanent([5, 6, 7], text).at(&relay);
            return Ok(rcpts.iter().map(|&i| (i, outcome.clone())).collect());
        }
        self.client.timeout = MAIL_RCPT;
        // From the second transaction on, RSET first: it also proves the connection alive.
        let reset = self.transactions > 0;
        self.transactions += 1;
        let pipelining = self.capabilities.has_capability(EXT_PIPELINING);

        let mut params = String::new();
        if self.capabilities.has_capability(EXT_SIZE) {
            params += &format!(" SIZE={}", envelope.size);
        }
        if envelope.eight_bit && self.capabilities.has_capability(EXT_8BIT_MIME) {
            params += " BODY=8BITMIME";
        }
        if envelope.smtputf8 {
            params += " SMTPUTF8";
        }
        let dsn = dsn.filter(|_| self.offers_dsn());
        if let Some(dsn) = dsn {
            params += &MailDsn::params(dsn.ret, dsn.envid.as_deref());
        }
        let mut commands = Vec::with_capacity(rcpts.len() + 3);
        if reset {
            commands.push("RSET\r\n".to_string());
        }
        commands.push(format!("MAIL FROM:<{}>{params}\r\n", envelope.sender));
        for &index in rcpts {
            let address = envelope.recipients.get(index as usize).map_or("", String::as_str);
            let rcpt_params = dsn.and_then(|dsn| dsn.recipient(index)).map(|r| r.request.params());
            commands.push(format!("RCPT TO:<{address}>{}\r\n", rcpt_params.unwrap_or_default()));
        }
        // RFC 2920: with PIPELINING, RSET, MAIL, the RCPTs and DATA go in one write, and their
        // replies come back together: one round trip instead of one per command.
        let replies = if pipelining {
            commands.push("DATA\r\n".to_string());
            self.client.cmds(commands).await.map_err(|e| lost("sending the envelope", e))?
        } else {
            let mut replies = Vec::with_capacity(commands.len());
            for command in commands {
                let reply =
                    self.client.cmd(command).await.map_err(|e| lost("sending the envelope", e))?;
                // After a refused RSET or MAIL, nothing else can succeed.
                let stop =
                    replies.len() < usize::from(reset) + 1 && !reply.is_positive_completion();
                replies.push(reply);
                if stop {
                    break;
                }
            }
            replies
        };
        let mut replies = replies.into_iter();
        if reset && !replies.next().is_some_and(|r| r.is_positive_completion()) {
            return Err(Outcome::temporary([4, 4, 2], format!("{relay}: RSET refused")));
        }
        let Some(mail) = replies.next() else {
            return Err(Outcome::temporary([4, 4, 2], format!("{relay}: no reply to MAIL")));
        };
        if !mail.is_positive_completion() {
            let outcome = Outcome::refused(&mail, &relay);
            return Ok(rcpts.iter().map(|&i| (i, outcome.clone())).collect());
        }
        let mut results = Vec::with_capacity(rcpts.len());
        let mut accepted = Vec::new();
        for &index in rcpts {
            match replies.next() {
                Some(reply) if reply.is_positive_completion() => accepted.push(index),
                Some(reply) => results.push((index, Outcome::refused_recipient(&reply, &relay))),
                None => {
                    return Err(Outcome::temporary(
                        [4, 4, 2],
                        format!("{relay}: no reply to RCPT"),
                    ));
                }
            }
        }
        let data_reply = match replies.next() {
            Some(reply) => reply,
            None if accepted.is_empty() => return Ok(results),
            None => {
                self.client.timeout = DATA_INIT;
                self.client.cmd(b"DATA\r\n").await.map_err(|e| lost("sending DATA", e))?
            }
        };
        if data_reply.code != 354 {
            let outcome = Outcome::refused(&data_reply, &relay);
            results.extend(accepted.into_iter().map(|index| (index, outcome.clone())));
            return Ok(results);
        }
        if accepted.is_empty() {
            // A server that said 354 with no recipient accepted: end the empty message.
            self.client.timeout = DATA_TERM;
            self.client.cmd(b".\r\n").await.map_err(|e| lost("ending an empty DATA", e))?;
            return Ok(results);
        }
        let final_reply =
            self.body(message, spool).await.map_err(|e| lost("sending the message", e))?;
        let outcome = Outcome::from_final_reply(&final_reply, &relay);
        results.extend(accepted.into_iter().map(|index| (index, outcome.clone())));
        Ok(results)
    }

    /// After the 354: the body streamed from the spool chunk by chunk, dot-stuffed on the way,
    /// then the final reply.
    async fn body(
        &mut self,
        message: &MessageRecord,
        spool: &Spool,
    ) -> Result<Response<String>, mail_send::Error> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        for chunk in spool.body(message.envelope.id) {
            let chunk = chunk.map_err(|e| mail_send::Error::Io(std::io::Error::other(e)))?;
            out.clear();
            stuffer.stuff(&chunk, &mut out);
            let write = self.client.stream.write_all(&out);
            tokio::time::timeout(DATA_BLOCK, write)
                .await
                .map_err(|_| mail_send::Error::Timeout)??;
        }
        out.clear();
        stuffer.end(&mut out);
        let stream = &mut self.client.stream;
        tokio::time::timeout(DATA_BLOCK, async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| mail_send::Error::Timeout)??;
        self.client.timeout = DATA_TERM;
        tokio::time::timeout(DATA_TERM, self.client.read())
            .await
            .map_err(|_| mail_send::Error::Timeout)?
    }

    /// Asks the next hop whether it takes mail for `address` (recipient verification, as
    /// Postfix's verify(8) does): MAIL FROM:<> and RCPT TO, then RSET; no message is sent. The
    /// outcome is the RCPT's (or the refused MAIL's); `Err` means the connection failed.
    pub async fn probe(&mut self, address: &str) -> Result<Outcome, Outcome> {
        let relay = self.relay.clone();
        let lost = |stage: &str, e: mail_send::Error| {
            Outcome::temporary([4, 4, 2], format!("{relay}: lost connection while {stage}: {e}"))
                .at(&relay)
        };
        self.client.timeout = MAIL_RCPT;
        let mail = self.client.cmd(b"MAIL FROM:<>\r\n").await.map_err(|e| lost("probing", e))?;
        if !mail.is_positive_completion() {
            return Ok(Outcome::refused(&mail, &relay));
        }
        let rcpt = self
            .client
            .cmd(format!("RCPT TO:<{address}>\r\n"))
            .await
            .map_err(|e| lost("probing", e))?;
        let _ = self.client.cmd(b"RSET\r\n").await;
        Ok(Outcome::from_final_reply(&rcpt, &relay))
    }

    /// Ends the session politely.
    pub async fn quit(self) {
        let mut client = self.client;
        client.timeout = MAIL_RCPT;
        let _ = client.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::names_us;

    #[test]
    fn a_next_hop_naming_our_host_name_is_us() {
        assert!(names_us("mx.test", "mx.test"));
        // Host names compare without regard to case or a final dot.
        assert!(names_us("MX.Test.", "mx.test"));
        assert!(!names_us("mx2.test", "mx.test"));
        assert!(!names_us("", "mx.test"));
    }
}
