//! DATA and BDAT: the message content, streamed into the spool, then committed.
//!
//! The 250 is written only after [`Spool::accept`](crate::spool::Spool::accept) returns, that
//! is after the group commit's fdatasync.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use super::{Conn, End, Session, later};
use crate::config::SmtpConfig;
use crate::metrics::Metrics;
use crate::proto::{BodyDecoder, Reply};
use crate::replication::Copies;
use crate::smtp::Elsewhere;
use crate::spool::{BodyWriter, Change, Dsn, Envelope, ErrorKind, QueueId, SpoolError, now_ms};

/// `replication = "sync"`, `on_standby_loss = "refuse"`, and no standby to confirm.
fn standby_unavailable() -> Reply {
    Reply::new(451, "4.3.0", "Error: standby unavailable, try again later")
}

/// A body on its way into the spool, with the size and hop limits applied as it arrives.
struct IncomingBody {
    writer: BodyWriter,
    /// Content bytes received (the Received: header not counted).
    size: u64,
    max_size: u64,
    too_big: bool,
    /// The client's Received: headers (ours not counted), against `max_received_headers`.
    hops: HopCounter,
    max_hops: u32,
    failed: Option<SpoolError>,
}

impl IncomingBody {
    fn take(&mut self, content: &[u8]) {
        self.size += content.len() as u64;
        if self.size > self.max_size {
            // Keep reading to the end of the body, storing nothing more.
            self.too_big = true;
        }
        self.hops.feed(content);
        if self.refusal().is_some() || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.writer.write(content) {
            self.failed = Some(e);
        }
    }

    /// Why this body may not be accepted, whatever the spool says: too big, or looping. Once
    /// known, nothing more of it is stored; the rest is read and dropped.
    fn refusal(&self) -> Option<Reply> {
        if self.too_big {
            return Some(Reply::new(552, "5.3.4", "Message size exceeds fixed limit"));
        }
        if self.hops.count() > self.max_hops {
            return Some(Reply::new(554, "5.4.6", "too many hops"));
        }
        None
    }
}

/// Counts the Received: fields of a message's header section as its content streams past, in
/// pieces cut anywhere, holding nothing but its state: the body is never held whole, so a
/// parser that wants the message (or its header section) in one buffer does not fit here.
/// The content is already decoded (CRLF line ends), and the header section ends at the first
/// empty line, or at the first line that is neither a field nor a field's continuation (as
/// Postfix's cleanup reads it); nothing after it is looked at.
#[derive(Debug, Default)]
struct HopCounter {
    state: HeaderState,
    count: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HeaderState {
    /// At the start of a line of the header section.
    #[default]
    LineStart,
    /// In a field name; `matched` is how much of "received" it has matched so far (`None`
    /// once it cannot be that name).
    Name { matched: Option<usize> },
    /// Blanks between a field name and its colon (RFC 5322's obsolete syntax allows them).
    BeforeColon { received: bool },
    /// In a field's value, or a continuation line: nothing to see until the line ends.
    Value,
    /// Past the header section.
    Body,
}

const RECEIVED: &[u8] = b"received";

impl HopCounter {
    fn feed(&mut self, mut content: &[u8]) {
        while let Some((&byte, rest)) = content.split_first() {
            if self.state == HeaderState::Body {
                return;
            }
            if self.state == HeaderState::Value {
                // Most of a header section is values: skip to the line's end in one go.
                match memchr::memchr(b'\n', content) {
                    Some(at) => {
                        self.state = HeaderState::LineStart;
                        content = &content[at + 1..];
                    }
                    None => return,
                }
                continue;
            }
            self.state = self.next(byte);
            content = rest;
        }
    }

    fn next(&mut self, byte: u8) -> HeaderState {
        match (self.state, byte) {
            // An empty line ends the header section; a blank starts a continuation line.
            (HeaderState::LineStart, b'\r' | b'\n') => HeaderState::Body,
            (HeaderState::LineStart, b' ' | b'\t') => HeaderState::Value,
            (HeaderState::LineStart, _) => self.in_name(Some(0), byte),
            (HeaderState::Name { matched }, _) => self.in_name(matched, byte),
            (HeaderState::BeforeColon { .. }, b' ' | b'\t') => self.state,
            (HeaderState::BeforeColon { received }, b':') => self.named(received),
            (HeaderState::BeforeColon { .. }, _) => HeaderState::Body,
            (HeaderState::Value | HeaderState::Body, _) => self.state,
        }
    }

    /// The state after `byte` in a field name that has matched `matched` bytes of "received".
    fn in_name(&mut self, matched: Option<usize>, byte: u8) -> HeaderState {
        let received = matched == Some(RECEIVED.len());
        match byte {
            b':' => self.named(received),
            b' ' | b'\t' => HeaderState::BeforeColon { received },
            // RFC 5322's field name: printable US-ASCII but the colon.
            33..=126 => {
                let next = matched.filter(|&n| RECEIVED.get(n) == Some(&byte.to_ascii_lowercase()));
                HeaderState::Name { matched: next.map(|n| n + 1) }
            }
            // A line that is no field: the body has begun (a header section without its empty
            // line).
            _ => HeaderState::Body,
        }
    }

    /// A field name ended at its colon: one hop more if it was Received.
    fn named(&mut self, received: bool) -> HeaderState {
        if received {
            self.count = self.count.saturating_add(1);
        }
        HeaderState::Value
    }

    fn count(&self) -> u32 {
        self.count
    }
}

/// The time a body (DATA's, or one BDAT chunk) may take. Silence may last `data_timeout`; in
/// all, the body may take `data_timeout` plus the time its bytes need at `min_data_rate`. A
/// client that sends a byte now and then cannot hold its session for ever (slowloris), while
/// one on a slow link that moves real data keeps earning time.
struct BodyClock {
    started: Instant,
    received: u64,
}

impl BodyClock {
    fn start() -> BodyClock {
        BodyClock { started: Instant::now(), received: 0 }
    }

    /// When the next read must have returned.
    fn deadline(&self, smtp: &SmtpConfig) -> Instant {
        let earned = earned(self.received, smtp.min_data_rate);
        let total = later(later(self.started, smtp.data_timeout), earned);
        total.min(later(Instant::now(), smtp.data_timeout))
    }
}

/// The time `bytes` need at `rate` bytes per second (saturating, for absurd values).
fn earned(bytes: u64, rate: u64) -> Duration {
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A BDAT body between its chunks.
pub(super) struct ChunkedBody {
    body: IncomingBody,
    decoder: BodyDecoder,
}

impl Session {
    pub(super) async fn data(&mut self, conn: &mut Conn) -> Result<Reply, End> {
        if let Some(refusal) = self.refuse_body(false) {
            return Ok(refusal);
        }
        conn.reply(&Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()]));
        conn.flush().await.map_err(|_| End::Close)?;
        let mut body = self.start_body();
        let mut decoder = BodyDecoder::data();
        let mut content = Vec::new();
        let mut clock = BodyClock::start();
        loop {
            let available = self.fill(conn, &clock).await?;
            let decoded = decoder.decode(available, &mut content);
            conn.io.consume(decoded.consumed);
            clock.received = clock.received.saturating_add(decoded.consumed as u64);
            body.take(&content);
            content.clear();
            if decoded.end {
                return Ok(self.complete(body).await);
            }
        }
    }

    pub(super) async fn bdat(
        &mut self,
        conn: &mut Conn,
        size: u64,
        last: bool,
    ) -> Result<Reply, End> {
        // The chunk's bytes follow the command whatever we answer: read them all, so that
        // none is taken for a command.
        let refusal = self.refuse_body(true);
        let mut chunk = match (refusal.is_none(), self.transaction.as_mut()) {
            (true, Some(transaction)) => transaction.chunked.take(),
            _ => None,
        };
        if refusal.is_none() && chunk.is_none() {
            chunk = Some(ChunkedBody { body: self.start_body(), decoder: BodyDecoder::bdat() });
        }
        let mut content = Vec::new();
        let mut remaining = size;
        let mut clock = BodyClock::start();
        while remaining > 0 {
            let available = self.fill(conn, &clock).await?;
            let n = available.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            if let Some(chunk) = chunk.as_mut() {
                chunk.decoder.decode(&available[..n], &mut content);
                chunk.body.take(&content);
                content.clear();
            }
            conn.io.consume(n);
            remaining -= n as u64;
            clock.received = clock.received.saturating_add(n as u64);
        }
        let Some(mut chunk) = chunk else {
            return Ok(
                refusal.unwrap_or_else(|| Reply::new(503, "5.5.1", "Error: need MAIL command"))
            );
        };
        if last {
            chunk.decoder.finish(&mut content);
            chunk.body.take(&content);
            return Ok(self.complete(chunk.body).await);
        }
        if let Some(refusal) = chunk.body.refusal() {
            self.transaction = None;
            self.log_refusal(&chunk.body, &refusal);
            return Ok(refusal);
        }
        let reply = Reply::new(250, "2.0.0", format!("{size} octets received"));
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.chunked = Some(chunk);
        }
        Ok(reply)
    }

    /// Why a body may not start now, if it may not.
    fn refuse_body(&self, chunked: bool) -> Option<Reply> {
        if self.services.replication.refusing() {
            return Some(standby_unavailable());
        }
        let Some(transaction) = &self.transaction else {
            return Some(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if transaction.recipients.is_empty() {
            return Some(Reply::new(554, "5.5.1", "Error: no valid recipients"));
        }
        if !chunked && transaction.chunked.is_some() {
            return Some(Reply::new(503, "5.5.1", "Error: DATA after BDAT"));
        }
        None
    }

    /// A new queue id and body writer, with our Received: header already written.
    fn start_body(&self) -> IncomingBody {
        let id = QueueId::new();
        let mut writer = self.services.spool.body_writer(id);
        let (recipients, smtputf8) = match &self.transaction {
            Some(t) => (&t.recipients[..], t.mail.smtputf8),
            None => (&[][..], false),
        };
        let header = self.received_header(id, recipients, smtputf8);
        let failed = writer.write(header.as_bytes()).err();
        IncomingBody {
            writer,
            size: 0,
            max_size: self.config.smtp.max_message_size,
            too_big: false,
            hops: HopCounter::default(),
            max_hops: self.config.smtp.max_received_headers,
            failed,
        }
    }

    /// Ends the transaction: commits the message and gives the 250 once it is durable.
    async fn complete(&mut self, body: IncomingBody) -> Reply {
        let ended = Instant::now();
        let Some(transaction) = self.transaction.take() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        if let Some(refusal) = body.refusal() {
            self.log_refusal(&body, &refusal);
            return refusal;
        }
        if let Some(error) = body.failed {
            return self.spool_failure(body.writer.id(), error);
        }
        let id = body.writer.id();
        let envelope = Envelope {
            id,
            sender: transaction.mail.sender.as_ref().map(ToString::to_string).unwrap_or_default(),
            recipients: transaction.recipients.iter().map(ToString::to_string).collect(),
            received_at_ms: now_ms(),
            client: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            size: body.writer.size(),
            eight_bit: transaction.mail.eight_bit,
            smtputf8: transaction.mail.smtputf8,
        };
        let (from, rcpts, size) =
            (envelope.sender.clone(), envelope.recipients.len(), envelope.size);
        let dsn = Dsn::requested(&transaction.mail.dsn, &transaction.rcpt_dsn);
        let accepted = Change::accepted(envelope, dsn);
        match self.services.spool.commit(vec![accepted], vec![body.writer]).await {
            Ok(position) => {
                let waited = Instant::now();
                let confirmed = self.services.replication.confirm(position).await;
                if self.services.replication.waits_for_acks() {
                    self.services.metrics.replication_ack.observe(waited.elapsed());
                }
                let copies = match confirmed {
                    Ok(copies) => copies,
                    Err(_) => return self.withdraw(id, standby_unavailable()).await,
                };
                // The wait may have outlasted this node's time as the serving primary (fenced,
                // or handing over). A message the standby holds is safe there: the 250 is
                // true, and the node that serves next delivers it. One only here gets no 250:
                // it is withdrawn, and the client takes it to the next MX.
                if !crate::role::current(&self.services.role).serving_now()
                    && copies == Copies::Local
                {
                    let refusal = Elsewhere::NoLongerPrimary.reply(&self.config.smtp.hostname);
                    return self.withdraw(id, refusal).await;
                }
                tracing::info!(
                    id = %id,
                    from = %format_args!("<{from}>"),
                    rcpts,
                    size,
                    client = %self.peer.ip(),
                    "accepted"
                );
                Metrics::count(&self.services.metrics.messages_accepted);
                self.services.metrics.smtp_commit.observe(ended.elapsed());
                self.services.delivery.queued(id);
                // A session that moves mail may go on: connection reuse sends RSET and
                // EHLO between messages.
                self.junk_commands = 0;
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(error) => self.spool_failure(id, error),
        }
    }

    /// A mail loop is worth a line: the operator may have to find the route that makes it.
    fn log_refusal(&self, body: &IncomingBody, refusal: &Reply) {
        if !body.too_big {
            tracing::info!(client = %self.peer.ip(), received = body.hops.count(), reply = %refusal, "rejected: too many hops");
        }
    }

    /// A committed message that may not be acknowledged (sync replication refusing without its
    /// standby, or a node that stopped serving meanwhile): it is taken back out of the spool
    /// (the removal replicates too, should the standby have it after all), and the client,
    /// told 4xx, keeps the copy it will retry.
    async fn withdraw(&self, id: QueueId, reply: Reply) -> Reply {
        if let Err(e) = self.services.spool.commit(vec![Change::Removed { id }], Vec::new()).await {
            tracing::error!(id = %id, error = %e, "cannot withdraw an unreplicated message; it stays queued");
        }
        tracing::warn!(id = %id, client = %self.peer.ip(), reply = %reply, "not acknowledged");
        reply
    }

    fn spool_failure(&self, id: QueueId, error: SpoolError) -> Reply {
        tracing::error!(id = %id, client = %self.peer.ip(), error = %error, "message not queued");
        match error.kind {
            ErrorKind::NoSpace => {
                Metrics::count(&self.services.metrics.storage_refusals);
                super::mail::insufficient_storage()
            }
            _ => Reply::new(451, "4.3.0", "Error: queue file write error"),
        }
    }

    /// Waits for body bytes, within the body's time (see [`BodyClock`]).
    async fn fill<'c>(&self, conn: &'c mut Conn, clock: &BodyClock) -> Result<&'c [u8], End> {
        let deadline = clock.deadline(&self.config.smtp);
        match tokio::time::timeout_at(deadline, conn.io.fill_buf()).await {
            Ok(Ok(available)) if !available.is_empty() => {}
            Ok(_) => return Err(End::Close),
            Err(_) => {
                self.timed_out(conn, "data");
                return Err(End::Close);
            }
        }
        Ok(conn.io.buffer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_body_earns_time_at_min_data_rate_and_the_deadline_never_overflows() {
        // A byte a second for an hour earns 7.2 s at 500 bytes/s; 25 MiB earns 14.6 hours.
        assert_eq!(earned(3600, 500), Duration::from_millis(7200));
        assert_eq!(earned(25 << 20, 500).as_secs(), 52_428);
        let mut smtp = Config::embedded_default().expect("the embedded default").smtp;
        smtp.data_timeout = Duration::from_secs(10);
        smtp.min_data_rate = 500;
        let started = Instant::now();
        let mut clock = BodyClock { started, received: 0 };
        // Nothing received: data_timeout from the start.
        assert_eq!(clock.deadline(&smtp), started + Duration::from_secs(10));
        // Much received: still no more than data_timeout of silence from now.
        clock.received = 1_000_000;
        let deadline = clock.deadline(&smtp);
        assert!(deadline <= Instant::now() + Duration::from_secs(10));
        assert!(deadline > started + Duration::from_secs(9));
        // Absurd values give a far deadline, not a panic.
        clock.received = u64::MAX;
        smtp.min_data_rate = 1;
        smtp.data_timeout = Duration::MAX;
        assert!(clock.deadline(&smtp) > Instant::now());
    }

    /// The counter fed `content` cut at each of `cuts` (offsets, ascending).
    fn counted(content: &[u8], cuts: &[usize]) -> u32 {
        let mut counter = HopCounter::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&content.len()]) {
            counter.feed(&content[from..cut]);
            from = cut;
        }
        counter.count()
    }

    #[test]
    fn received_fields_are_counted_in_the_header_section_only() {
        let message = b"Received: from a by b; Mon, 1 Dec 2025\r\n\
            \tfor <x@y>; folded\r\n\
            RECEIVED : obsolete blank before the colon\r\n\
            received:no blank after it\r\n\
            Received-SPF: pass\r\n\
            X-Received: by a relay\r\n\
            Subject: Received: not a field name\r\n\
            \tReceived: a continuation line\r\n\
            Receive: too short\r\n\
            \r\n\
            Received: in the body\r\n";
        assert_eq!(counted(message, &[]), 3);
        // However the content is cut, the count is the same: every single cut, and every byte
        // on its own.
        for cut in 0..=message.len() {
            assert_eq!(counted(message, &[cut]), 3, "cut at {cut}");
        }
        let every: Vec<usize> = (1..message.len()).collect();
        assert_eq!(counted(message, &every), 3);
    }

    #[test]
    fn a_line_that_is_no_field_ends_the_header_section() {
        assert_eq!(counted(b"Received: a\r\nno colon here\r\nReceived: b\r\n", &[]), 1);
        assert_eq!(counted(b"Received: a\r\nReceived x\r\nReceived: b\r\n", &[]), 1);
        // A message with no header section at all.
        assert_eq!(counted(b"\r\nReceived: a\r\n", &[]), 0);
        assert_eq!(counted(b"", &[]), 0);
    }
}
