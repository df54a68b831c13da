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
use crate::spool::{BodyWriter, Change, Envelope, ErrorKind, QueueId, SpoolError, now_ms};

/// `replication = "sync"`, `on_standby_loss = "refuse"`, and no standby to confirm.
fn standby_unavailable() -> Reply {
    Reply::new(451, "4.3.0", "Error: standby unavailable, try again later")
}

/// A body on its way into the spool, with the size limit applied as it arrives.
struct IncomingBody {
    writer: BodyWriter,
    /// Content bytes received (the Received: header not counted).
    size: u64,
    max_size: u64,
    too_big: bool,
    failed: Option<SpoolError>,
}

impl IncomingBody {
    fn take(&mut self, content: &[u8]) {
        self.size += content.len() as u64;
        if self.size > self.max_size {
            // Keep reading to the end of the body, storing nothing more.
            self.too_big = true;
        }
        if self.too_big || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.writer.write(content) {
            self.failed = Some(e);
        }
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
        if chunk.body.too_big {
            self.transaction = None;
            return Ok(Reply::new(552, "5.3.4", "Message size exceeds fixed limit"));
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
            failed,
        }
    }

    /// Ends the transaction: commits the message and gives the 250 once it is durable.
    async fn complete(&mut self, body: IncomingBody) -> Reply {
        let Some(transaction) = self.transaction.take() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        if body.too_big {
            return Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
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
        match self.services.spool.accept(envelope, body.writer).await {
            Ok(position) => {
                let copies = match self.services.replication.confirm(position).await {
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
                self.services.delivery.queued(id);
                // A session that moves mail may go on: connection reuse sends RSET and
                // EHLO between messages.
                self.junk_commands = 0;
                Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(error) => self.spool_failure(id, error),
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
}
