//! The standby's side of the link: accept the primary (one at a time: a new link replaces the
//! old), say where our log ends, then apply what it ships and acknowledge it once durable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::error::{Awaiting, LinkError};
use super::frame::{self, Frame, Hello, Sender};
use super::link::{self, Link};
use super::{
    Context, Replicator, data_of, hello, hello_at, last_epoch, peer_of, send_body, send_dsn,
    send_now,
};
use crate::config::Role;
use crate::role::{LinkVerdict, Report, Side};
use crate::spool::{
    BodyWriter, Change, Dsn, EpochStart, LogPosition, LogRecord, MessageRecord, QueueId, Queued,
    Rewound, Spool, SpoolError,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most messages a rewind may name (16 bytes each in the Hello).
const MAX_REWIND_MESSAGES: usize = 65_536;

pub(super) async fn run(
    replication: Replicator,
    spool: Spool,
    link: Link,
    context: Context,
    listener: TcpListener,
) {
    // The session of the primary we follow; a newer primary's link replaces it, once its
    // Hello has shown it is one.
    let current: Current = Arc::default();
    loop {
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (replication, spool, context, link) =
            (replication.clone(), spool.clone(), context.clone(), link.clone());
        let current = current.clone();
        // Each link runs on its own, so that a peer that connects and says nothing does not
        // hold off the real primary.
        tokio::spawn(async move {
            let Some(tls) = link::accept(&link.acceptor, tcp, address, HANDSHAKE_TIMEOUT).await
            else {
                return;
            };
            let mut linked = false;
            if let Err(e) =
                session(&replication, &spool, &context, tls, &current, &mut linked).await
            {
                replication.link_ended(&address, &e);
            }
            // Only the session that brought the link up takes it down.
            if linked {
                replication.unlinked();
            }
        });
    }
}

/// Which link the follower follows: each new primary's link takes the next number, and a
/// link whose number is no longer current ends.
type Current = Arc<watch::Sender<u64>>;

async fn session(
    replication: &Replicator,
    spool: &Spool,
    context: &Context,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    current: &Current,
    linked: &mut bool,
) -> Result<(), LinkError> {
    let node = context.node.as_str();
    let reporter = &context.reporter;
    let (mut reader, writer) = tokio::io::split(tls);
    let mut writer = Sender::new(writer);
    let read = match tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut reader)).await {
        Ok(Ok(Frame::Hello(hello))) => replication.check_peer(&hello).map(|()| hello),
        Ok(Ok(frame)) => {
            return Err(LinkError::Unexpected {
                awaiting: Awaiting::Hello,
                frame: Box::new(frame),
            });
        }
        Ok(Err(source)) => Err(LinkError::Read { awaiting: Awaiting::Hello, source }),
        Err(_) => return Err(LinkError::NoHello),
    };
    let theirs = match read {
        Ok(hello) => hello,
        Err(error) => {
            // A primary we cannot talk to (another protocol, or a Hello we cannot read): our
            // Hello tells it our version, so that its side can say so too (what it does with
            // it is its own affair: the refusal is what we log). We stay a standby, as with no
            // primary.
            if error.refused_version().is_some() {
                let ours = hello(node, context.role.borrow().role, spool)?;
                let _ = send_now(&mut writer, Frame::Hello(ours)).await;
            }
            return Err(error);
        }
    };
    writer.speak(theirs.protocol);
    if theirs.role != Role::Primary.as_str() {
        return Err(LinkError::NotAPrimary { peer: theirs.node, role: theirs.role });
    }
    // Whether we follow it is ha's decision, from both sides' data.
    match reporter.hello(Side::Following, data_of(spool)?, peer_of(&theirs)).await {
        LinkVerdict::Follow => {}
        LinkVerdict::Stale => {
            // Tell it who we are: it steps down on our newer epoch, or yields to our data and
            // asks us to take over.
            let status = *context.role.borrow();
            send_now(&mut writer, Frame::Hello(hello(node, status.role, spool)?)).await?;
            return match tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut reader)).await {
                Ok(Ok(Frame::Handover { epoch })) => {
                    let taken = take_over(context, epoch).await?;
                    send_now(&mut writer, Frame::TookOver { epoch: taken }).await
                }
                _ => Err(LinkError::PeerBehind {
                    their_epoch: last_epoch(&theirs.history),
                    peer: theirs.node,
                    our_epoch: status.epoch,
                }),
            };
        }
        verdict => return Err(LinkError::NotFollowing { peer: theirs.node, verdict }),
    }
    // This primary is the one to follow: the previous link ends.
    current.send_modify(|generation| *generation += 1);
    let mine = *current.borrow();
    let mut replaced = current.subscribe();
    reporter.report(Report::PrimaryFrame);
    // Rejoining after a failover: hand over what we acknowledged that the new primary lacks.
    let salvaged = salvage(&mut writer, spool, &theirs).await?;
    if salvaged > 0 {
        tracing::warn!(salvaged, peer = %theirs.node, "handed the new primary the messages it lacked");
    }
    // Our log may go on where the new primary's does not: that branch goes (what it accepted
    // was salvaged just now), and so the log resumes where the two part, without a snapshot.
    let branch = divergent_branch(spool, &theirs)?;
    let ours = match &branch {
        Some(branch) => branch.hello(node),
        None => hello(node, Role::Standby, spool)?,
    };
    let at = ours.last.seq;
    send_now(&mut writer, Frame::Hello(ours)).await?;
    replication.linked(&theirs);
    *linked = true;
    tracing::info!(peer = %theirs.node, at, protocol = writer.protocol(), "following the primary");

    // Commits in flight, in the order they were queued, for `acking` to wait on.
    let (in_flight, mut landing) = mpsc::channel(IN_FLIGHT);
    let replaced = async move {
        let _ = replaced.wait_for(|&generation| generation != mine).await;
    };
    let mut reading = std::pin::pin!(read_stream(
        replication,
        spool,
        context,
        &mut reader,
        branch,
        in_flight,
        replaced
    ));
    let read = {
        let acking = async {
            while let Some(commit) = landing.recv().await {
                commit.land(Some(&mut writer), context, replication, spool).await?;
            }
            Ok(())
        };
        tokio::select! {
            read = &mut reading => read,
            // Acking ends only on a failed commit or ack: while reading lives, so does the queue.
            landed = acking => return landed.and(Err(LinkError::AcksStopped)),
        }
    };
    // The reading is over (its end of the queue dropped with it), but what it queued still
    // lands: a commit that failed is the error to report (a refused record, above all, rather
    // than the end of the stream that followed it). The link is over: no more acks.
    while let Some(commit) = landing.recv().await {
        commit.land(None::<&mut Sender<tokio::io::Sink>>, context, replication, spool).await?;
    }
    // Said once the stream is over.
    if let Some(frame) = read? {
        send_now(&mut writer, frame).await?;
    }
    Ok(())
}

/// Frames of one primary's stream whose commits may be in flight at once: the committer takes
/// those queued while it commits the previous ones in its next durable commit.
const IN_FLIGHT: usize = 4;

/// A commit the follower queued, or an answer that waits for every commit queued before it.
enum InFlight {
    /// Records being applied: acknowledged once durable.
    Records {
        queued: Queued,
        primary_last: u64,
        beat: u64,
        epoch: Option<u64>,
        paused: Option<bool>,
    },
    /// Snapshot messages being installed: nothing to acknowledge, but a failure ends the link.
    Install(Queued),
    /// A heartbeat: acknowledged with the last durable position.
    Heartbeat { beat: u64 },
    /// Everything queued before it is durable: the reader waits on this before a request that
    /// must not be applied past a failed one (a snapshot's end above all: a snapshot is
    /// complete only if every message of it was installed).
    Barrier(oneshot::Sender<()>),
    /// An acknowledgement of `seq`, durable already.
    Ack { seq: u64, beat: u64 },
}

impl InFlight {
    /// Waits for this commit and says so: the ack and the reports it calls for.
    /// Without a writer (the link is over) the acks are left out.
    async fn land(
        self,
        mut writer: Option<&mut Sender<impl AsyncWrite + Unpin>>,
        context: &Context,
        replication: &Replicator,
        spool: &Spool,
    ) -> Result<(), LinkError> {
        match self {
            InFlight::Records { queued, primary_last, beat, epoch, paused } => {
                let applied = queued.durable().await?;
                if let Some(epoch) = epoch {
                    context.reporter.report(Report::Followed { epoch });
                }
                if let Some(paused) = paused {
                    context.reporter.report(Report::FailoverPaused(paused));
                }
                replication.primary_at(primary_last, applied.seq);
                ack_on(writer.as_deref_mut(), context, applied.seq, beat).await
            }
            InFlight::Install(queued) => queued.durable().await.map(|_| ()).map_err(Into::into),
            InFlight::Heartbeat { beat } => {
                ack_on(writer, context, spool.last_position().seq, beat).await
            }
            InFlight::Barrier(passed) => {
                // The reader may have ended meanwhile: nobody waits any more.
                let _ = passed.send(());
                Ok(())
            }
            InFlight::Ack { seq, beat } => ack_on(writer, context, seq, beat).await,
        }
    }
}

/// Reads and applies one primary's stream, queuing its commits to `in_flight`; returns when
/// the link is over, with the frame to send the primary last if there is one.
async fn read_stream(
    replication: &Replicator,
    spool: &Spool,
    context: &Context,
    reader: &mut (impl AsyncRead + Unpin),
    mut branch: Option<Branch>,
    in_flight: mpsc::Sender<InFlight>,
    replaced: impl std::future::Future<Output = ()>,
) -> Result<Option<Frame>, LinkError> {
    let reporter = &context.reporter;
    let queue = |commit| async {
        // The receiver lives as long as the reader: it is gone only once the link is over.
        in_flight.send(commit).await.map_err(|_| LinkError::AcksStopped)
    };
    let settle = || async {
        let (passed, settled) = oneshot::channel();
        queue(InFlight::Barrier(passed)).await?;
        settled.await.map_err(|_| LinkError::AcksStopped)
    };
    // Bodies arrive chunk by chunk before the record that accepts them.
    let mut bodies: HashMap<QueueId, BodyWriter> = HashMap::new();
    // DSN requests arrive, like bodies, before the snapshot or rewind frame that needs them.
    let mut dsn: HashMap<QueueId, Dsn> = HashMap::new();
    // The holds of the rewind to come, sent before it.
    let mut rewind_held = Vec::new();
    let mut roles = context.role.clone();
    // The last beat received: acks echo it.
    let mut beat = 0;
    let restarted = replication.restarted();
    tokio::pin!(restarted, replaced);
    loop {
        let frame = tokio::select! {
            frame = frame::read(reader) => frame?,
            // `relayd rebuild` emptied our spool: the primary's next link sends a snapshot.
            () = &mut restarted => return Ok(None),
            // Promoted meanwhile (the primary was silent): this link is over.
            _ = roles.wait_for(|status| status.role == Role::Primary) => return Ok(None),
            // A newer link from the primary replaced this one.
            () = &mut replaced => return Ok(None),
        };
        reporter.report(Report::PrimaryFrame);
        replication.heard();
        // Until the rewind is answered our log still holds the branch: nothing may be applied
        // on top of it, nor acknowledged from it.
        if branch.is_some()
            && !matches!(
                frame,
                Frame::Chunk { .. }
                    | Frame::Dsn(_)
                    | Frame::Held(_)
                    | Frame::Rewind { .. }
                    | Frame::SnapshotBegin { .. }
            )
        {
            return Err(LinkError::StreamedBeforeRewind);
        }
        // Chunks, records and a snapshot's messages are queued without waiting for their
        // commit; anything else first waits for every commit in flight.
        if !matches!(
            frame,
            Frame::Chunk { .. }
                | Frame::Dsn(_)
                | Frame::Records { .. }
                | Frame::SnapshotMessages(_)
                | Frame::Heartbeat { .. }
        ) {
            settle().await?;
        }
        match frame {
            Frame::Rewind { messages, absent } => {
                let Some(Branch { to, history, touched }) = branch.take() else {
                    return Err(LinkError::UnaskedRewind);
                };
                let needed =
                    messages.iter().filter_map(|m| bodies.remove(&m.envelope.id)).collect();
                let dsn = take_dsn(&mut dsn, &messages);
                let held = std::mem::take(&mut rewind_held);
                let state = Rewound { messages, dsn, held, absent };
                spool.rewind(to, history, state, needed).await?;
                tracing::warn!(
                    at = to.seq,
                    messages = touched.len(),
                    "dropped our divergent records: the log resumes where it parted from the primary's"
                );
            }
            Frame::Chunk { id, data } => {
                let body = bodies.entry(id).or_insert_with(|| spool.body_writer(id));
                body.write(&data)?;
            }
            Frame::Dsn(requests) => dsn.extend(requests),
            Frame::Records { records, primary_last, beat: sent } => {
                beat = sent;
                let needed = records
                    .iter()
                    .filter_map(|r| r.change.accepts().and_then(|e| bodies.remove(&e.id)))
                    .collect();
                let epoch = records.iter().map(|r| r.position.epoch).max();
                let paused = records.iter().rev().find_map(|r| match r.change {
                    Change::FailoverPaused { paused } => Some(paused),
                    _ => None,
                });
                let queued = spool.queue_apply(records, needed).await?;
                queue(InFlight::Records { queued, primary_last, beat, epoch, paused }).await?;
            }
            Frame::SnapshotBegin { last } => {
                tracing::info!(at = last.seq, "receiving a snapshot from the primary");
                branch = None;
                bodies.clear();
                dsn.clear();
                spool.wipe().await?;
            }
            // Before a rewind: kept for it. In a snapshot: its messages came first.
            Frame::Held(held) if branch.is_some() => rewind_held = held,
            Frame::Held(held) => spool.install_held(held).await?,
            Frame::SnapshotMessages(messages) => {
                let needed =
                    messages.iter().filter_map(|m| bodies.remove(&m.envelope.id)).collect();
                let requests = take_dsn(&mut dsn, &messages);
                queue(InFlight::Install(spool.queue_install(messages, requests, needed).await?))
                    .await?;
            }
            Frame::SnapshotState { notes, failover_paused } => {
                spool.install_state(notes, failover_paused).await?;
                reporter.report(Report::FailoverPaused(failover_paused));
            }
            Frame::SnapshotEnd { history, last } => {
                // Every message of the snapshot is installed (settled above): only now may
                // it be taken as complete.
                let epoch = last_epoch(&history);
                spool.resume(history, last).await?;
                reporter.report(Report::Followed { epoch });
                replication.primary_at(last.seq, last.seq);
                tracing::info!(at = last.seq, messages = spool.queue_len(), "snapshot installed");
                queue(InFlight::Ack { seq: last.seq, beat }).await?;
            }
            Frame::Heartbeat { beat: sent, .. } => {
                beat = sent;
                queue(InFlight::Heartbeat { beat }).await?;
            }
            Frame::Handover { epoch } => {
                let taken = take_over(context, epoch).await?;
                return Ok(Some(Frame::TookOver { epoch: taken }));
            }
            frame => {
                return Err(LinkError::Unexpected {
                    awaiting: Awaiting::Stream,
                    frame: Box::new(frame),
                });
            }
        }
    }
}

/// The DSN requests received for `messages`, taken out of `received`.
fn take_dsn(
    received: &mut HashMap<QueueId, Dsn>,
    messages: &[MessageRecord],
) -> Vec<(QueueId, Dsn)> {
    let ids = messages.iter().map(|m| m.envelope.id);
    ids.filter_map(|id| received.remove(&id).map(|dsn| (id, dsn))).collect()
}

/// Acknowledges everything up to `seq`, unless this node is claiming an epoch of its own: an
/// ack would renew the lease of the primary it is about to succeed.
async fn ack(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    context: &Context,
    seq: u64,
    beat: u64,
) -> Result<(), LinkError> {
    if context.role.borrow().claiming {
        return Ok(());
    }
    send_now(writer, Frame::Ack { seq, beat }).await
}

/// [`ack`] on the link, if it still is one.
async fn ack_on(
    writer: Option<&mut Sender<impl AsyncWrite + Unpin>>,
    context: &Context,
    seq: u64,
    beat: u64,
) -> Result<(), LinkError> {
    match writer {
        Some(writer) => ack(writer, context, seq, beat).await,
        None => Ok(()),
    }
}

/// The primary asks us to take over (a planned switchover, or it found us ahead of it): ha
/// claims the next epoch (repeating the claim for up to `failover_timeout` while the witness
/// still hears the old primary) and promotes; we wait for that and return the epoch.
async fn take_over(context: &Context, epoch: u64) -> Result<u64, LinkError> {
    context.reporter.report(Report::HandoverAsked { epoch });
    let mut roles = context.role.clone();
    let patience = context.cluster.failover_timeout + HANDSHAKE_TIMEOUT;
    let promoted = roles.wait_for(|status| status.role == Role::Primary && status.epoch > epoch);
    match tokio::time::timeout(patience, promoted).await {
        Ok(Ok(status)) => Ok(status.epoch),
        _ => Err(LinkError::TakeOverTimedOut { epoch }),
    }
}

/// The part of our log that the new primary's history does not share, to be dropped.
struct Branch {
    /// The last record both logs hold.
    to: LogPosition,
    /// Our epoch history up to `to`.
    history: Vec<EpochStart>,
    /// The messages the branch's records accepted or changed.
    touched: Vec<QueueId>,
}

impl Branch {
    /// Our Hello as a standby that asks for this branch to be rewound: our log as far as it
    /// shares the primary's.
    fn hello(&self, node: &str) -> Hello {
        hello_at(node, Role::Standby, self.history.clone(), self.to, Some(self.touched.clone()))
    }
}

/// Our log's records past the point where its history and `theirs` part (an old primary's,
/// written in an epoch the cluster moved past), if there are any and the log still holds them
/// all (else the primary sends a snapshot, as to a node that lacks history).
fn divergent_branch(spool: &Spool, theirs: &Hello) -> Result<Option<Branch>, SpoolError> {
    let last = spool.last_position().seq;
    branch_of(spool.epoch_history()?, &theirs.history, last, |from| spool.log_from(from))
}

/// [`divergent_branch`]'s decision, given our history, the primary's, where our log ends and
/// a way to read our log from a sequence number on.
fn branch_of<R>(
    ours: Vec<EpochStart>,
    theirs: &[EpochStart],
    last: u64,
    log_from: impl FnOnce(u64) -> R,
) -> Result<Option<Branch>, SpoolError>
where
    R: IntoIterator<Item = Result<LogRecord, SpoolError>>,
{
    let from = divergence(&ours, theirs);
    // Nothing past the fork, or nothing before it (a snapshot in any case).
    if from > last || from <= 1 {
        return Ok(None);
    }
    let history: Vec<EpochStart> = ours.into_iter().take_while(|e| e.first_seq < from).collect();
    let to = LogPosition { epoch: last_epoch(&history), seq: from - 1 };
    let (mut touched, mut seen) = (Vec::new(), HashSet::new());
    let mut expected = from;
    for record in log_from(from) {
        let record = record?;
        if record.position.seq != expected {
            return Ok(None);
        }
        expected += 1;
        for &id in record.change.messages() {
            if seen.insert(id) {
                touched.push(id);
            }
        }
        // Named in one Hello, and answered in one frame: past this, a snapshot.
        if touched.len() > MAX_REWIND_MESSAGES {
            return Ok(None);
        }
    }
    if expected != last + 1 {
        return Ok(None);
    }
    Ok(Some(Branch { to, history, touched }))
}

/// Where our log and the new primary's part: the first sequence number of the first epoch the
/// two histories disagree on (u64::MAX when they agree).
fn divergence(ours: &[EpochStart], theirs: &[EpochStart]) -> u64 {
    for index in 0..ours.len().max(theirs.len()) {
        match (ours.get(index), theirs.get(index)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => return a.first_seq.min(b.first_seq),
            (Some(a), None) => return a.first_seq,
            (None, Some(b)) => return b.first_seq,
            (None, None) => break,
        }
    }
    u64::MAX
}

/// Sends the new primary every message of our divergent suffix that is still queued here with
/// recipients pending: mail we acknowledged that it never received (async replication, or a
/// degraded sync). Returns how many.
async fn salvage(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    spool: &Spool,
    theirs: &Hello,
) -> Result<usize, LinkError> {
    let ours = spool.epoch_history()?;
    let from = divergence(&ours, &theirs.history);
    if from > spool.last_position().seq {
        return Ok(0);
    }
    // By the message records, not the log: the log may have been trimmed past the divergence.
    let mut count = 0;
    let divergent: Vec<MessageRecord> = spool
        .messages()
        .filter_map(Result::ok)
        .filter(|m| m.accepted_at.seq >= from && m.recipients.iter().any(|r| r.is_pending()))
        .collect();
    for message in divergent {
        let id = message.envelope.id;
        send_body(writer, spool, id).await?;
        send_dsn(writer, spool, &[id]).await?;
        writer.send(Frame::Salvage(message)).await?;
        tracing::warn!(id = %id, "salvaging: acknowledged here, never replicated");
        count += 1;
    }
    // The holds an operator took here on our branch go too: dropped with the branch, the new
    // primary would deliver what the operator was told is held. (An older primary is not sent
    // them: the Sender leaves a protocol 2 frame out.)
    let held = branch_holds(spool.log_from(from), spool.held()?)?;
    if !held.is_empty() {
        tracing::warn!(messages = held.len(), "salvaging holds taken here, never replicated");
        writer.send(Frame::Held(held)).await?;
    }
    Ok(count)
}

/// The holds of `held` (this node's held table) that a `Held` record of our divergent branch
/// (`branch`, the log from the fork on) took; one released since is no longer in `held`.
fn branch_holds(
    branch: impl IntoIterator<Item = Result<LogRecord, SpoolError>>,
    held: Vec<(QueueId, u64)>,
) -> Result<Vec<(QueueId, u64)>, SpoolError> {
    let mut taken = HashSet::new();
    for record in branch {
        if let Change::Held { ids, .. } = record?.change {
            taken.extend(ids);
        }
    }
    Ok(held.into_iter().filter(|(id, _)| taken.contains(id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Change;

    fn history(starts: &[(u64, u64)]) -> Vec<EpochStart> {
        starts.iter().map(|&(epoch, first_seq)| EpochStart { epoch, first_seq }).collect()
    }

    fn id(n: u8) -> QueueId {
        QueueId::from_bytes([n; 16])
    }

    fn record(epoch: u64, seq: u64, change: Change) -> Result<LogRecord, SpoolError> {
        Ok(LogRecord { position: LogPosition { epoch, seq }, change })
    }

    /// The log of an old primary that went on alone in epoch 2 from record 50 to 54, while
    /// the cluster moved to epoch 3 from record 50: an epoch start, a message's attempt and
    /// removal, another message's attempt.
    fn old_primary_log() -> Vec<Result<LogRecord, SpoolError>> {
        vec![
            record(2, 50, Change::EpochStarted),
            record(2, 51, Change::Attempted { id: id(1), results: vec![] }),
            record(2, 52, Change::Attempted { id: id(2), results: vec![] }),
            record(2, 53, Change::Removed { id: id(1) }),
            record(2, 54, Change::Attempted { id: id(2), results: vec![] }),
        ]
    }

    #[test]
    fn two_histories_part_at_the_first_epoch_they_disagree_on() {
        let ours = history(&[(1, 1), (2, 50)]);
        assert_eq!(divergence(&ours, &ours), u64::MAX, "the same history never parts");
        // Theirs went on in an epoch we never followed: from its start.
        assert_eq!(divergence(&ours, &history(&[(1, 1), (2, 50), (4, 80)])), 80);
        // Ours went on alone in an epoch they never had.
        assert_eq!(divergence(&history(&[(1, 1), (2, 50), (3, 70)]), &ours), 70);
        // The same place in both, different epochs: the earlier of the two starts.
        assert_eq!(divergence(&ours, &history(&[(1, 1), (3, 40)])), 40);
        assert_eq!(divergence(&ours, &history(&[(1, 1), (3, 60)])), 50);
        // One side empty: from the other's first record.
        assert_eq!(divergence(&[], &ours), 1);
        assert_eq!(divergence(&ours, &[]), 1);
        assert_eq!(divergence(&[], &[]), u64::MAX);
    }

    #[test]
    fn an_old_primary_rewinds_its_branch_to_where_the_logs_part() {
        let ours = history(&[(1, 1), (2, 50)]);
        let theirs = history(&[(1, 1), (3, 50)]);
        let mut asked = None;
        let branch = branch_of(ours, &theirs, 54, |from| {
            asked = Some(from);
            old_primary_log()
        });
        let branch = branch.expect("reads").expect("a branch to rewind");
        assert_eq!(asked, Some(50), "the log is read from the fork");
        assert_eq!(branch.to, LogPosition { epoch: 1, seq: 49 });
        assert_eq!(branch.history, history(&[(1, 1)]));
        assert_eq!(branch.touched, vec![id(1), id(2)], "each message once, in log order");
        let hello = branch.hello("a");
        assert_eq!((hello.role.as_str(), hello.last), ("standby", branch.to));
        assert_eq!(hello.rewind, Some(vec![id(1), id(2)]));
    }

    #[test]
    fn nothing_is_rewound_when_the_logs_do_not_part_or_part_before_anything_is_shared() {
        let never =
            |_: u64| -> Vec<Result<LogRecord, SpoolError>> { panic!("the log is not read") };
        // A standby behind the primary: theirs goes on where ours ends.
        let ours = history(&[(1, 1)]);
        let ahead = history(&[(1, 1), (2, 50)]);
        assert!(branch_of(ours.clone(), &ahead, 49, never).expect("reads").is_none());
        // The same history.
        assert!(branch_of(ours.clone(), &ours, 49, never).expect("reads").is_none());
        // No record in common (epoch 1 is not the same one): a snapshot instead.
        let other = history(&[(2, 1)]);
        assert!(branch_of(ours, &other, 49, never).expect("reads").is_none());
    }

    #[test]
    fn a_branch_the_log_no_longer_holds_whole_is_a_snapshot_instead() {
        let ours = history(&[(1, 1), (2, 50)]);
        let theirs = history(&[(1, 1), (3, 50)]);
        // Trimmed from the front: the first record read is not the fork's.
        let trimmed = |_: u64| old_primary_log().into_iter().skip(1).collect::<Vec<_>>();
        assert!(branch_of(ours.clone(), &theirs, 54, trimmed).expect("reads").is_none());
        // A hole in the middle.
        let holed = |_: u64| {
            let mut log = old_primary_log();
            log.retain(|r| r.as_ref().is_ok_and(|r| r.position.seq != 52));
            log
        };
        assert!(branch_of(ours.clone(), &theirs, 54, holed).expect("reads").is_none());
        // The records end before the log's last one.
        assert!(
            branch_of(ours.clone(), &theirs, 55, |_| old_primary_log()).expect("reads").is_none()
        );
        // A read error is an error, not a decision.
        let failing = |_: u64| vec![Err(SpoolError::closed())];
        assert!(branch_of(ours, &theirs, 54, failing).is_err());
    }

    #[test]
    fn a_branch_touching_more_messages_than_a_hello_may_name_is_a_snapshot_instead() {
        let ours = history(&[(1, 1), (2, 50)]);
        let theirs = history(&[(1, 1), (3, 50)]);
        let count = MAX_REWIND_MESSAGES as u64 + 1;
        let log = |_: u64| {
            (0..count)
                .map(|n| {
                    let id = QueueId::from_bytes(u128::from(n).to_be_bytes());
                    record(2, 50 + n, Change::Removed { id })
                })
                .collect::<Vec<_>>()
        };
        assert!(branch_of(ours.clone(), &theirs, 49 + count, log).expect("reads").is_none());
        // One fewer fits.
        let fits = |_: u64| log(0).into_iter().take(MAX_REWIND_MESSAGES).collect::<Vec<_>>();
        let last = 49 + MAX_REWIND_MESSAGES as u64;
        let branch = branch_of(ours, &theirs, last, fits).expect("reads").expect("a branch");
        assert_eq!(branch.touched.len(), MAX_REWIND_MESSAGES);
    }

    /// Seed 2 of the fault campaign: an operator held messages on a primary cut off from its
    /// standby; deposed, it rejoined and its branch (the holds with it) was dropped, and the
    /// new primary delivered them. The holds its branch took, and kept, are salvaged; one
    /// from before the fork (the new primary has it) or released since is not.
    #[test]
    fn the_holds_a_branch_took_and_kept_are_salvaged() {
        let branch = vec![
            record(2, 50, Change::Held { ids: vec![id(1), id(2)], since_ms: 7 }),
            record(2, 51, Change::Attempted { id: id(3), results: vec![] }),
            record(2, 52, Change::Held { ids: vec![id(4)], since_ms: 9 }),
            record(2, 53, Change::Released { ids: vec![id(2)] }),
        ];
        // The held table after the branch: 2 released, 5 held before the fork.
        let held = vec![(id(1), 7), (id(4), 9), (id(5), 3)];
        let salvaged = branch_holds(branch, held).expect("reads");
        assert_eq!(salvaged, vec![(id(1), 7), (id(4), 9)]);
        let unreadable = vec![Err(SpoolError::corrupt("log"))];
        assert!(branch_holds(unreadable, vec![(id(1), 7)]).is_err());
    }
}
