//! The primary's side of the link: dial the standby, agree where its log resumes (or rebuild
//! it from a snapshot), then stream records as they become durable, with the bodies their
//! `Accepted` records need, and collect the standby's acks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter};
use tokio::net::TcpStream;

use super::error::{Awaiting, LinkError};
use super::frame::{self, Frame, Hello, Sender};
use super::link::{Link, PEER_NAME};
use super::{
    Context, Replicator, data_of, flush, hello, last_epoch, peer_of, send_body, send_dsn, send_now,
};
use crate::config::Role;
use crate::role::{LinkVerdict, Report, Side};
use crate::spool::{
    BodyWriter, Change, Dsn, LogPosition, LogRecord, MessageRecord, QueueId, Spool, SpoolError,
};

/// A frame of records is cut at this many records or bytes.
const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Messages per snapshot frame.
const SNAPSHOT_BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    replication: Replicator,
    spool: Spool,
    link: Link,
    context: Context,
    peer: String,
) {
    let mut roles = context.role.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        // Only a primary ships.
        if roles.wait_for(|status| status.role == Role::Primary).await.is_err() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = session(&replication, &spool, &link, &context, &peer) => result,
            _ = roles.wait_for(|status| status.role != Role::Primary) => Ok(()),
        };
        if let Err(e) = result {
            replication.link_ended(&peer, &e);
        }
        replication.unlinked();
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn session(
    replication: &Replicator,
    spool: &Spool,
    link: &Link,
    context: &Context,
    peer: &str,
) -> Result<(), LinkError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| LinkError::ConnectTimeout)?
        .map_err(LinkError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(PEER_NAME).map_err(LinkError::PeerName)?;
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, link.connector.connect(name, tcp))
        .await
        .map_err(|_| LinkError::HandshakeTimeout)?
        .map_err(LinkError::Handshake)?;
    let (mut reader, writer) = tokio::io::split(tls);
    let mut writer = Sender::new(BufWriter::with_capacity(256 * 1024, writer));

    let ours = hello(&context.node, Role::Primary, spool)?;
    send_now(&mut writer, Frame::Hello(ours)).await?;
    // An old primary rejoining sends what it must hand over before its Hello.
    let theirs = receive_salvage(&mut reader, replication, spool).await?;
    // A peer of a protocol we do not speak is refused before ha hears of it: this node goes on
    // as without a standby.
    replication.check_peer(&theirs)?;
    writer.speak(theirs.protocol);
    // Which way the data goes is ha's decision, from both sides' data, not from our role.
    match context.reporter.hello(Side::Shipping, data_of(spool)?, peer_of(&theirs)).await {
        LinkVerdict::Ship => {}
        LinkVerdict::Yield { epoch } => {
            return hand_over_to_peer(&mut reader, &mut writer, context, &theirs.node, epoch).await;
        }
        verdict => {
            return Err(LinkError::NotShipping {
                peer: theirs.node.clone(),
                role: theirs.role.clone(),
                epoch: last_epoch(&theirs.history),
                verdict,
            });
        }
    }
    let resume = resume_point(spool, &theirs)?;
    replication.linked(&theirs);
    // What the standby holds of our log: its last record if it continues ours, else nothing
    // until the snapshot is acknowledged.
    replication.reset_acked(resume.map_or(0, |next| next - 1));
    tracing::info!(
        peer = %theirs.node,
        standby_at = theirs.last.seq,
        from = ?resume,
        protocol = writer.protocol(),
        "replication link up"
    );

    let beats = Beats::default();
    let acks = async {
        loop {
            match frame::read(&mut reader).await {
                Ok(Frame::Ack { seq, beat }) => {
                    // The lease runs from when the answered frame was *sent*: a late ack
                    // must not stretch it.
                    if let Some(sent) = beats.sent_at(beat) {
                        context.reporter.report(Report::StandbyAck { sent });
                    }
                    replication.acked(seq, spool.last_position().seq);
                }
                Ok(Frame::TookOver { epoch }) => {
                    context.reporter.report(Report::TookOver { epoch });
                    replication.took_over(epoch);
                }
                Ok(frame) => {
                    return Err(LinkError::Unexpected {
                        awaiting: Awaiting::Acks,
                        frame: Box::new(frame),
                    });
                }
                Err(source) => return Err(LinkError::Read { awaiting: Awaiting::Acks, source }),
            }
        }
    };
    let shipping = async {
        let next = match (resume, &theirs.rewind) {
            (Some(seq), Some(touched)) if rewind(&mut writer, spool, touched).await? => seq,
            (Some(seq), None) => seq,
            _ => snapshot(&mut writer, spool).await? + 1,
        };
        stream(&mut writer, replication, spool, context, &beats, next).await
    };
    tokio::select! {
        result = acks => result,
        result = shipping => result,
    }
}

/// The standby holds more than we do: we ask it to take over after `epoch` (it claims the next
/// epoch and promotes, the planned switchover's path) and wait for its word that it did.
async fn hand_over_to_peer(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    context: &Context,
    peer: &str,
    epoch: u64,
) -> Result<(), LinkError> {
    tracing::warn!(peer = %peer, epoch, "handing over to the peer, which holds more than this node");
    send_now(writer, Frame::Handover { epoch }).await?;
    let patience = context.cluster.failover_timeout + CONNECT_TIMEOUT;
    match tokio::time::timeout(patience, frame::read(reader)).await {
        Ok(Ok(Frame::TookOver { epoch })) => {
            context.reporter.report(Report::TookOver { epoch });
            Ok(())
        }
        Ok(Ok(frame)) => {
            Err(LinkError::Unexpected { awaiting: Awaiting::TookOver, frame: Box::new(frame) })
        }
        Ok(Err(source)) => Err(LinkError::Read { awaiting: Awaiting::TookOver, source }),
        Err(_) => Err(LinkError::PeerDidNotTakeOver),
    }
}

/// Where the standby's log continues from ours, or None when it needs a snapshot: it is empty,
/// or ours no longer holds its last record, or that record is not ours (a different epoch).
/// A standby that stopped exactly where the snapshot we were built from left our log continues
/// too: our log holds no record there, but it goes on from it.
fn resume_point(spool: &Spool, theirs: &Hello) -> Result<Option<u64>, SpoolError> {
    let position_at = |seq| spool.log_record(seq).map(|r| r.map(|r| r.position));
    resume_from(spool.last_position(), theirs, position_at, || spool.snapshot_point())
}

/// [`resume_point`]'s decision, given where our log ends, the position of the record our log
/// holds at a sequence number, and where the snapshot we were built from left our log.
fn resume_from(
    ours: LogPosition,
    theirs: &Hello,
    position_at: impl Fn(u64) -> Result<Option<LogPosition>, SpoolError>,
    snapshot_point: impl FnOnce() -> Result<Option<LogPosition>, SpoolError>,
) -> Result<Option<u64>, SpoolError> {
    if theirs.history.is_empty() || theirs.last.seq == 0 || theirs.last.seq > ours.seq {
        return Ok(None);
    }
    if theirs.last == ours {
        return Ok(Some(ours.seq + 1));
    }
    match position_at(theirs.last.seq)? {
        Some(position) if position == theirs.last => Ok(Some(theirs.last.seq + 1)),
        Some(_) => Ok(None),
        None => match snapshot_point()? {
            // ... unless the log was trimmed since.
            Some(point) if point == theirs.last && position_at(point.seq + 1)?.is_some() => {
                Ok(Some(point.seq + 1))
            }
            _ => Ok(None),
        },
    }
}

/// Answers a rejoining old primary's request to drop the branch of its log: our state of every
/// message that branch touched, with their bodies and their holds, and the ones we no longer
/// hold. False, with nothing sent, when that state would not fit in one frame: a snapshot then.
async fn rewind(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    spool: &Spool,
    touched: &[QueueId],
) -> Result<bool, LinkError> {
    let Some(RewindState { messages, absent }) = rewind_state(touched, |id| spool.get(id))? else {
        tracing::info!(
            messages = touched.len(),
            "the standby's divergent records touch too much for a rewind"
        );
        return Ok(false);
    };
    for message in &messages {
        send_body(writer, spool, message.envelope.id).await?;
    }
    let ids: Vec<QueueId> = messages.iter().map(|m| m.envelope.id).collect();
    send_dsn(writer, spool, &ids).await?;
    let mut held = Vec::new();
    for &id in &ids {
        held.extend(spool.held_since(id)?.map(|since| (id, since)));
    }
    tracing::info!(
        messages = messages.len(),
        absent = absent.len(),
        held = held.len(),
        "rewinding the standby's divergent records"
    );
    writer.send(Frame::Held(held)).await?;
    writer.send(Frame::Rewind { messages, absent }).await?;
    Ok(true)
}

/// Our state of the messages a standby's branch touched.
#[derive(Debug, PartialEq)]
struct RewindState {
    /// Those we hold.
    messages: Vec<MessageRecord>,
    /// Those we do not.
    absent: Vec<QueueId>,
}

/// [`RewindState`] of `touched`; None when it would not fit in half a frame (the bodies go in
/// frames of their own).
fn rewind_state(
    touched: &[QueueId],
    get: impl Fn(QueueId) -> Result<Option<MessageRecord>, SpoolError>,
) -> Result<Option<RewindState>, SpoolError> {
    let (mut messages, mut absent) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for &id in touched {
        match get(id)? {
            Some(message) => {
                bytes += postcard::to_stdvec(&message).map_or(frame::MAX_FRAME, |m| m.len());
                messages.push(message);
            }
            None => absent.push(id),
        }
        if bytes + absent.len() * std::mem::size_of::<QueueId>() > frame::MAX_FRAME / 2 {
            return Ok(None);
        }
    }
    Ok(Some(RewindState { messages, absent }))
}

/// Sends every queued message, then the holds, then the history and position the log
/// continues from. The messages and holds are read after the position is taken, and every
/// record is a state assignment, so replaying the log from there converges whatever changed
/// during the iteration.
async fn snapshot(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    spool: &Spool,
) -> Result<u64, LinkError> {
    let last = spool.last_position();
    let history = spool.epoch_history()?;
    tracing::info!(
        at = last.seq,
        messages = spool.queue_len(),
        "sending a snapshot to the standby"
    );
    writer.send(Frame::SnapshotBegin { last }).await?;
    let mut batch = Vec::with_capacity(SNAPSHOT_BATCH);
    let mut batch_bytes = 0;
    for message in spool.messages() {
        let message = message?;
        send_body(writer, spool, message.envelope.id).await?;
        batch_bytes += postcard::to_stdvec(&message).map_or(0, |encoded| encoded.len());
        batch.push(message);
        if batch.len() == SNAPSHOT_BATCH || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            send_snapshot_batch(writer, spool, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        send_snapshot_batch(writer, spool, batch).await?;
    }
    for held in spool.held()?.chunks(frame::HELD_BATCH) {
        writer.send(Frame::Held(held.to_vec())).await?;
    }
    let state = Frame::SnapshotState {
        notes: spool.epoch_notes()?,
        failover_paused: spool.failover_paused()?,
    };
    writer.send(state).await?;
    writer.send(Frame::SnapshotEnd { history, last }).await?;
    flush(writer).await?;
    Ok(last.seq)
}

/// One `SnapshotMessages` frame, after the DSN requests of its messages that have one.
async fn send_snapshot_batch(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    spool: &Spool,
    batch: Vec<MessageRecord>,
) -> Result<(), LinkError> {
    let ids: Vec<QueueId> = batch.iter().map(|m| m.envelope.id).collect();
    send_dsn(writer, spool, &ids).await?;
    writer.send(Frame::SnapshotMessages(batch)).await?;
    Ok(())
}

/// Ships records from `next` on, as they become durable; a heartbeat when there is nothing to
/// ship; the handover when an operator asks for a switchover.
async fn stream(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    replication: &Replicator,
    spool: &Spool,
    context: &Context,
    beats: &Beats,
    mut next: u64,
) -> Result<(), LinkError> {
    let mut durable = spool.subscribe();
    let interval = context.cluster.heartbeat_interval;
    let mut heartbeat = tokio::time::interval(interval);
    loop {
        let last = durable.borrow_and_update().seq;
        if last < next {
            if let Some(epoch) = replication.handover_to_send() {
                send_now(writer, Frame::Handover { epoch }).await?;
            }
            tokio::select! {
                changed = durable.changed() => changed.map_err(LinkError::SpoolClosed)?,
                _ = heartbeat.tick() => {
                    let beat = beats.next();
                    let epoch = context.role.borrow().epoch;
                    send_now(writer, Frame::Heartbeat { epoch, beat }).await?;
                }
                _ = replication.handover_wanted() => {}
            }
            continue;
        }
        replication.behind();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut bytes = 0;
        for entry in spool.log_entries_from(next) {
            let (record, encoded) = entry?;
            if record.position.seq > last {
                break;
            }
            if record.position.seq != next + records.len() as u64 {
                return Err(LinkError::LogTrimmed { seq: next + records.len() as u64 });
            }
            if let Some(envelope) = record.change.accepts() {
                bytes += send_body(writer, spool, envelope.id).await?;
            }
            // Records count by their encoded size: a frame must stay under frame::MAX_FRAME.
            bytes += encoded;
            records.push(record);
            if records.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES {
                break;
            }
        }
        let Some(end) = records.last().map(|r| r.position.seq) else {
            return Err(LinkError::LogTrimmed { seq: next });
        };
        let beat = beats.next();
        send_now(writer, Frame::Records { records, primary_last: last, beat }).await?;
        next = end + 1;
    }
}

/// Reads what an old primary hands over before its Hello: salvaged messages, accepted here as
/// new (their pending recipients only), the holds it took on its branch (taken here for those
/// still queued), then its Hello.
async fn receive_salvage(
    reader: &mut (impl AsyncRead + Unpin),
    replication: &Replicator,
    spool: &Spool,
) -> Result<Hello, LinkError> {
    let mut bodies: HashMap<QueueId, BodyWriter> = HashMap::new();
    let mut requests: HashMap<QueueId, Dsn> = HashMap::new();
    loop {
        let frame = match tokio::time::timeout(CONNECT_TIMEOUT, frame::read(reader)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(source)) => return Err(LinkError::Read { awaiting: Awaiting::Hello, source }),
            Err(_) => return Err(LinkError::NoHello),
        };
        match frame {
            Frame::Hello(hello) => return Ok(hello),
            Frame::Chunk { id, data } => {
                // A message we hold already (a salvage resent after a cut) keeps its body.
                if spool.get(id)?.is_none() {
                    let body = bodies.entry(id).or_insert_with(|| spool.body_writer(id));
                    body.write(&data)?;
                }
            }
            Frame::Dsn(received) => requests.extend(received),
            Frame::Held(held) => {
                let ids: Vec<QueueId> = held.into_iter().map(|(id, _)| id).collect();
                let taken = replication.state.delivery.hold_all(&ids).await?;
                if !taken.is_empty() {
                    tracing::warn!(
                        messages = taken.len(),
                        "salvaged holds the old primary took and we lacked"
                    );
                }
            }
            Frame::Salvage(message) => {
                let id = message.envelope.id;
                let body = bodies.remove(&id).unwrap_or_else(|| spool.body_writer(id));
                let dsn = requests.remove(&id);
                if spool.get(id)?.is_some() {
                    continue;
                }
                let pending: Vec<usize> = (0..message.recipients.len())
                    .filter(|&i| message.recipients[i].is_pending())
                    .collect();
                let mut envelope = message.envelope.clone();
                envelope.recipients = pending
                    .iter()
                    .filter_map(|&i| message.envelope.recipients.get(i).cloned())
                    .collect();
                if envelope.recipients.is_empty() {
                    continue;
                }
                // The pending recipients keep their DSN requests (and delay reports sent).
                let dsn = dsn.map(|dsn| dsn.only(&pending));
                spool.commit(vec![Change::accepted(envelope, dsn)], vec![body]).await?;
                tracing::warn!(id = %id, "salvaged a message the old primary acknowledged and we lacked");
                replication.state.delivery.queued(id);
            }
            frame => {
                return Err(LinkError::Unexpected {
                    awaiting: Awaiting::Hello,
                    frame: Box::new(frame),
                });
            }
        }
    }
}

/// When each recent frame that an ack may answer (Records, Heartbeat) was sent.
#[derive(Default)]
struct Beats {
    sent: std::sync::Mutex<std::collections::VecDeque<(u64, Instant)>>,
}

/// Beats remembered; an ack answers one of the last few.
const BEATS_KEPT: usize = 1024;

impl Beats {
    /// Numbers the next frame and notes when it leaves.
    fn next(&self) -> u64 {
        let mut sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let beat = sent.back().map_or(1, |(beat, _)| beat + 1);
        sent.push_back((beat, Instant::now()));
        if sent.len() > BEATS_KEPT {
            sent.pop_front();
        }
        beat
    }

    fn sent_at(&self, beat: u64) -> Option<Instant> {
        let sent = self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sent.iter().find(|(b, _)| *b == beat).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, EpochStart, RecipientState};

    /// A standby's Hello: its history and its last record.
    fn standby(history: &[(u64, u64)], last: (u64, u64)) -> Hello {
        Hello {
            node: "b".into(),
            role: "standby".into(),
            history: history
                .iter()
                .map(|&(epoch, first_seq)| EpochStart { epoch, first_seq })
                .collect(),
            last: LogPosition { epoch: last.0, seq: last.1 },
            rewind: None,
            protocol: frame::PROTOCOL,
            release: frame::RELEASE.into(),
        }
    }

    fn at(epoch: u64, seq: u64) -> LogPosition {
        LogPosition { epoch, seq }
    }

    /// Our log: epoch 1 from record 1, epoch 3 from record 40, up to record 60; records before
    /// `trimmed_to` are gone.
    fn our_log(trimmed_to: u64) -> impl Fn(u64) -> Result<Option<LogPosition>, SpoolError> {
        move |seq| {
            let epoch = if seq >= 40 { 3 } else { 1 };
            Ok((trimmed_to..=60).contains(&seq).then(|| at(epoch, seq)))
        }
    }

    fn no_snapshot() -> Result<Option<LogPosition>, SpoolError> {
        Ok(None)
    }

    #[test]
    fn a_standby_resumes_right_after_its_last_record_when_our_log_holds_it_in_its_epoch() {
        let ours = at(3, 60);
        let resume =
            |theirs: &Hello| resume_from(ours, theirs, our_log(1), no_snapshot).expect("reads");
        // At our end, or behind in the same history.
        assert_eq!(resume(&standby(&[(1, 1), (3, 40)], (3, 60))), Some(61));
        assert_eq!(resume(&standby(&[(1, 1), (3, 40)], (3, 45))), Some(46));
        assert_eq!(resume(&standby(&[(1, 1)], (1, 30))), Some(31));
        // Its last record is in another epoch than ours there (an old primary's branch): a
        // snapshot.
        assert_eq!(resume(&standby(&[(1, 1), (2, 40)], (2, 45))), None);
        // Empty, or ahead of us: a snapshot (ha never ships to a standby that holds more).
        assert_eq!(resume(&standby(&[], (0, 0))), None);
        assert_eq!(resume(&standby(&[(1, 1), (3, 40)], (3, 61))), None);
    }

    #[test]
    fn a_standby_whose_record_was_trimmed_resumes_only_from_our_snapshot_point() {
        let ours = at(3, 60);
        let theirs = standby(&[(1, 1), (3, 40)], (3, 45));
        // Trimmed, and nothing else to go by.
        assert_eq!(resume_from(ours, &theirs, our_log(50), no_snapshot).expect("reads"), None);
        // We were built from a snapshot at its very record, and the log goes on from there.
        let point = || Ok(Some(at(3, 45)));
        let built = |seq| Ok((46..=60).contains(&seq).then(|| at(3, seq)));
        assert_eq!(resume_from(ours, &theirs, built, point).expect("reads"), Some(46));
        // ... but not once the log was trimmed past it too, nor from another point.
        assert_eq!(resume_from(ours, &theirs, our_log(50), point).expect("reads"), None);
        let elsewhere = || Ok(Some(at(3, 44)));
        assert_eq!(resume_from(ours, &theirs, built, elsewhere).expect("reads"), None);
    }

    fn message(n: u8, sender_bytes: usize) -> MessageRecord {
        let id = QueueId::from_bytes([n; 16]);
        let envelope = Envelope {
            id,
            sender: "s".repeat(sender_bytes),
            recipients: vec!["bob@example.com".into()],
            received_at_ms: 0,
            client: "192.0.2.7".into(),
            helo: "client.example.org".into(),
            size: 10,
            eight_bit: false,
            smtputf8: false,
        };
        MessageRecord {
            envelope,
            recipients: vec![RecipientState::Bounced { reply: "550 5.1.1 no".into() }],
            accepted_at: at(3, 41),
        }
    }

    #[test]
    fn a_rewind_sends_our_state_of_what_the_branch_touched_unless_it_is_over_half_a_frame() {
        let held = message(1, 10);
        let gone = QueueId::from_bytes([2; 16]);
        let get = |id| Ok((id == held.envelope.id).then(|| held.clone()));
        let state = rewind_state(&[held.envelope.id, gone], get).expect("reads");
        assert_eq!(state, Some(RewindState { messages: vec![held.clone()], absent: vec![gone] }));
        // A message over half a frame: a snapshot instead.
        let huge = message(3, frame::MAX_FRAME / 2);
        let get = |_| Ok(Some(huge.clone()));
        assert_eq!(rewind_state(&[huge.envelope.id], get).expect("reads"), None);
        // So many messages gone that their ids alone are over half a frame.
        let ids = frame::MAX_FRAME / 2 / std::mem::size_of::<QueueId>() + 1;
        let touched: Vec<QueueId> =
            (0..ids as u128).map(|n| QueueId::from_bytes(n.to_be_bytes())).collect();
        assert_eq!(rewind_state(&touched, |_| Ok(None)).expect("reads"), None);
        assert!(
            rewind_state(&touched[1..], |_| Ok(None)).expect("reads").is_some(),
            "one fewer fits"
        );
    }
}
