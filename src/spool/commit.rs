//! Group commit: the one writer of the spool file.
//!
//! Sessions hand their changes, and their bodies' chunks, to a dedicated thread. It takes
//! every request waiting and stages them all in one redb write transaction (assigning
//! consecutive sequence numbers). A batch that holds a change commits with
//! `Durability::Immediate`: its pages are written and fsynced before `commit` returns, and
//! with them those of every earlier non-durable commit. A batch of body chunks only commits
//! with `Durability::None`: its pages stay in redb's write buffer (or are written out, unsynced,
//! when the buffer is over its budget) until the next durable commit. So a body reaches the
//! disk through the very commit that records its message, and while one fsync runs, new
//! requests queue up and share the next one: the fsync rate stays bounded however many
//! sessions commit.
//!
//! Invariant: the log's sequence numbers are assigned here and only here, in commit order —
//! or, on a standby, taken from the primary's records, which must continue the log exactly.
//!
//! A body is committed only whole: the committer counts the chunks it stored of each body in
//! progress, and refuses a commit whose bodies it did not store every chunk of. Counts are
//! forgotten when the file is reopened, so a body begun before a failed write is never
//! acknowledged.
//!
//! A failed write (ENOSPC, EIO) leaves redb refusing every later call until the file is opened
//! again, and leaves us unsure of what reached the disk. The committer then closes the file
//! ([`Store`] holds none), refuses what it is sent, and once the file system has
//! [`REOPEN_ROOM`] free opens the file again and takes the log's end, the queue length and the
//! durable position from what the disk holds: redb rolls back to its last durable commit, so a
//! record whose commit failed is there or not, never half.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, oneshot, watch};

use super::record::{
    Change, Dsn, Envelope, EpochNote, EpochStart, LogPosition, LogRecord, MessageRecord,
    RecipientState,
};
use super::{ErrorKind, QueueId, Rewound, SpoolError};
use super::{Opened, retention, tables};

/// At most this many requests wait for the committer, and share one batch: it bounds the
/// memory of the chunks in flight (32 KiB each) and of a batch.
const QUEUE: usize = 512;
/// Free space the file system needs before a closed file is opened again: room for redb to
/// grow the file by a region and write its first commits.
pub(super) const REOPEN_ROOM: u64 = 8 * 1024 * 1024;
/// How often a closed file tries to reopen.
const REOPEN_POLL: Duration = Duration::from_millis(250);

/// The open file, shared by the spool's handles and the committer.
pub(super) struct Store {
    /// None while the file is closed after a failed write.
    db: ArcSwapOption<Database>,
}

impl Store {
    pub(super) fn new(db: Database) -> Store {
        Store { db: ArcSwapOption::from_pointee(db) }
    }

    pub(super) fn db(&self) -> Result<Arc<Database>, SpoolError> {
        self.db.load_full().ok_or_else(SpoolError::reopening)
    }

    fn close(&self) {
        self.db.store(None);
    }

    fn publish(&self, db: Database) {
        self.db.store(Some(Arc::new(db)));
    }
}

fn incomplete_body(id: QueueId) -> SpoolError {
    SpoolError::new(
        ErrorKind::Io,
        format!("body {id} lost chunks (the spool was reopened after a failed write meanwhile)"),
    )
}

pub(super) enum Request {
    /// Append changes in the current epoch, all in one batch, in order.
    Append(Vec<Change>, Reply),
    /// Start a new epoch (persisted and synced before the caller may use it).
    BeginEpoch(u64, Option<EpochNote>, Reply),
    /// A standby applies the primary's records. Records it already has are skipped (a resumed
    /// stream may repeat a few); a record past the next sequence number (a gap) is refused.
    Apply(Vec<LogRecord>, Reply),
    /// A standby starts a snapshot: everything is erased.
    Wipe(Reply),
    /// A standby installs a snapshot's message records (their bodies were written already),
    /// with the DSN requests of those that have one.
    Install(Vec<MessageRecord>, Vec<(QueueId, Dsn)>, Reply),
    /// A standby takes a snapshot's state besides its messages: epoch notes, the pause.
    InstallState { notes: Vec<EpochNote>, failover_paused: bool, done: Reply },
    /// A standby installs a snapshot's holds: these messages (installed already) are held,
    /// since the time given.
    InstallHeld(Vec<(QueueId, u64)>, Reply),
    /// A standby ends a snapshot: the log continues after `last` with this epoch history.
    Resume { history: Vec<EpochStart>, last: LogPosition, done: Reply },
    /// A standby (an old primary, rejoining) drops its log's records after `to`, a branch the
    /// primary's history does not share, and takes the primary's state of the messages that
    /// branch touched ([`Rewound`]).
    Rewind { to: LogPosition, history: Vec<EpochStart>, state: Rewound, done: Reply },
    /// Node state outside the log (the role), made durable like the rest.
    State { key: &'static str, value: Vec<u8>, done: Reply },
    /// Nothing to stage: a durable commit of everything sent before it.
    Sync(Reply),
    /// A body chunk, stored by a non-durable commit unless a durable one takes it along. No
    /// answer: a chunk that was not stored fails the commit of its message.
    Chunk { id: QueueId, index: u32, data: Vec<u8> },
    /// A body whose message was not committed: its chunks go, unless the message is stored
    /// (a body resent for a message this spool holds already).
    Abandon(QueueId),
}

/// Where the committer sends the position of a request's last record.
pub(super) type Reply = oneshot::Sender<Result<LogPosition, SpoolError>>;

impl Request {
    /// Answers the request with `error`, doing nothing of it.
    fn refuse(self, error: SpoolError) {
        if let Some(done) = self.into_reply() {
            // A caller that gave up waiting no longer listens.
            let _ = done.send(Err(error));
        }
    }

    /// The reply of a request that changes the spool; None for chunks and abandoned bodies,
    /// which need no durable commit of their own.
    fn into_reply(self) -> Option<Reply> {
        match self {
            Request::Append(_, done)
            | Request::BeginEpoch(_, _, done)
            | Request::Apply(_, done)
            | Request::Wipe(done)
            | Request::Install(_, _, done)
            | Request::InstallState { done, .. }
            | Request::InstallHeld(_, done)
            | Request::Resume { done, .. }
            | Request::Rewind { done, .. }
            | Request::State { done, .. }
            | Request::Sync(done) => Some(done),
            Request::Chunk { .. } | Request::Abandon(_) => None,
        }
    }

    fn is_durable(&self) -> bool {
        !matches!(self, Request::Chunk { .. } | Request::Abandon(_))
    }
}

/// A request, and the bodies (id, chunk count) its records accept.
pub(super) struct Submission {
    bodies: Vec<(QueueId, u32)>,
    request: Request,
}

/// The log's tail, owned by the committer thread.
pub(super) struct LogTail {
    pub next_seq: u64,
    pub history: Vec<EpochStart>,
}

/// What the committer counts and publishes, shared with the spool's readers.
pub(super) struct Counters {
    /// Durable commits made (each one fsync, however many changes they carried).
    pub syncs: AtomicU64,
    /// Times the file was reopened after a failed write; watched by the queue runner, which
    /// then reloads the queue from what the disk holds.
    pub reopens: watch::Sender<u64>,
    /// Messages in the queue.
    pub queued: AtomicI64,
    /// The position of the last durable record: replication waits on it.
    pub durable: watch::Sender<LogPosition>,
    /// Whether this node may append to its log (a primary), or only apply a primary's records.
    pub writable: std::sync::atomic::AtomicBool,
}

/// How the committer opens the spool again after a failed write.
pub(super) struct Reopen {
    /// Where the spool lives: the file system whose free space decides when to try.
    pub dir: PathBuf,
    pub open: Box<dyn Fn() -> Result<Opened, SpoolError> + Send>,
}

/// The handle on the committer thread. Dropping it lets the thread finish the requests it
/// has and exit, and waits for that, so that the spool's file is closed when it returns.
pub(super) struct Committer {
    requests: Option<mpsc::Sender<Submission>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    pub(super) fn spawn(
        store: Arc<Store>,
        reopen: Reopen,
        tail: LogTail,
        counters: Arc<Counters>,
    ) -> std::io::Result<Committer> {
        let (requests, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(&store, &reopen, tail, rx, &counters))?;
        Ok(Committer { requests: Some(requests), thread: Some(thread) })
    }

    /// Sends a request; `bodies`: the bodies (id, chunk count) its records accept.
    pub(super) async fn send(
        &self,
        bodies: Vec<(QueueId, u32)>,
        request: Request,
    ) -> Result<(), SpoolError> {
        let requests = self.requests.as_ref().ok_or_else(SpoolError::closed)?;
        let submission = Submission { bodies, request };
        requests.send(submission).await.map_err(|_| SpoolError::closed())
    }

    /// Sends a request from synchronous code (a body writer): at once if the queue has room,
    /// else this thread waits for room, which is the back-pressure on a sender faster than
    /// the disk.
    pub(super) fn send_blocking(&self, request: Request) -> Result<(), SpoolError> {
        let requests = self.requests.as_ref().ok_or_else(SpoolError::closed)?;
        let submission = Submission { bodies: Vec::new(), request };
        match requests.try_send(submission) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(SpoolError::closed()),
            Err(TrySendError::Full(submission)) => {
                wait_on(requests.send(submission)).map_err(|_| SpoolError::closed())
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `future` to completion on this thread (unconstrained: on a runtime thread, tokio's task
/// budget would otherwise keep answering Pending to a future never given back to the
/// scheduler), parking it while the future waits. For the one
/// place synchronous code waits on the committer's queue; the committer is a thread of its own,
/// so nothing this thread would otherwise run is needed for the wait to end.
pub(super) fn wait_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// The bodies in progress: how many chunks of each the committer stored since the file was
/// opened (chunks arrive in order, each body's from one writer).
type Progress = HashMap<QueueId, u32>;

fn run(
    store: &Store,
    reopen_with: &Reopen,
    mut tail: LogTail,
    mut rx: mpsc::Receiver<Submission>,
    counters: &Counters,
) {
    let mut progress = Progress::new();
    while let Some(first) = rx.blocking_recv() {
        let mut submissions = vec![first];
        while submissions.len() < QUEUE {
            match rx.try_recv() {
                Ok(submission) => submissions.push(submission),
                Err(_) => break,
            }
        }
        let Ok(db) = store.db() else {
            submissions.into_iter().for_each(|s| s.request.refuse(SpoolError::reopening()));
            continue;
        };
        if let Err(e) = commit(&db, &mut tail, &mut progress, submissions, counters)
            && e.is_io()
        {
            drop(db);
            progress.clear();
            match reopen(store, reopen_with, &mut rx, counters) {
                Some(reopened) => tail = reopened,
                // Every sender is gone: the spool was dropped.
                None => return,
            }
        }
    }
}

/// Stages every request in one write transaction and commits it, durably if any request
/// changes the spool; answers each. The error, if the batch failed.
fn commit(
    db: &Database,
    tail: &mut LogTail,
    progress: &mut Progress,
    submissions: Vec<Submission>,
    counters: &Counters,
) -> Result<(), SpoolError> {
    let durable = submissions.iter().any(|s| s.request.is_durable());
    let mut answers = Vec::with_capacity(submissions.len());
    let result = stage_and_commit(db, durable, tail, progress, submissions, counters, &mut answers)
        .map(|last| {
            if durable {
                counters.durable.send_replace(last);
            }
        });
    for (done, outcome) in answers {
        // A session that gave up waiting (its client went away) no longer listens.
        let _ = done.send(result.clone().and(outcome));
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "spool commit failed");
    }
    result
}

/// The body of [`commit`]: stages the requests, pushing each one's reply and outcome to
/// `answers`, and commits. The position of the last record the spool now holds.
fn stage_and_commit(
    db: &Database,
    durable: bool,
    tail: &mut LogTail,
    progress: &mut Progress,
    submissions: Vec<Submission>,
    counters: &Counters,
    answers: &mut Vec<(Reply, Result<LogPosition, SpoolError>)>,
) -> Result<LogPosition, SpoolError> {
    let mut txn = db.begin_write()?;
    match durable {
        true => make_durable(&mut txn)?,
        false => txn.set_durability(Durability::None)?,
    }
    let mut staging = Staging::open(&txn, tail.history.clone())?;
    let mut next_seq = tail.next_seq;
    let mut last = counters.durable.borrow().to_owned();
    // Chunks this batch stores, per body.
    let mut stored = Progress::new();
    let mut failed = None;
    for Submission { bodies, request } in submissions {
        if let Some(error) = &failed {
            answers.extend(request.into_reply().map(|done| (done, Err(SpoolError::clone(error)))));
            continue;
        }
        let chunks_of = |id: &QueueId| {
            progress.get(id).copied().unwrap_or(0) + stored.get(id).copied().unwrap_or(0)
        };
        if let Some((id, _)) = bodies.iter().find(|(id, chunks)| chunks_of(id) < *chunks) {
            answers.extend(request.into_reply().map(|done| (done, Err(incomplete_body(*id)))));
            continue;
        }
        if let Request::Abandon(id) = &request {
            progress.remove(id);
        }
        let (done, staged) = staging.request(request, &mut next_seq, &mut stored, last, counters);
        let outcome = match staged {
            Ok(outcome) => outcome,
            Err(error) => {
                answers.extend(done.map(|done| (done, Err(error.clone()))));
                failed = Some(error);
                continue;
            }
        };
        if let Ok(position) = &outcome {
            last = *position;
            // Committed: the bodies are no longer in progress.
            for (id, _) in &bodies {
                if let Err(error) = staging.receiving.remove(id.as_u128()) {
                    failed = Some(error.into());
                }
                stored.remove(id);
                progress.remove(id);
            }
        }
        answers.extend(done.map(|done| (done, outcome)));
    }
    if let Some(error) = failed {
        // Dropping the transaction uncommitted aborts it.
        return Err(error);
    }
    staging.seal(super::now_ms())?;
    let Staged { history, queued_delta, wiped } = staging.close();
    txn.commit()?;
    // From here the records are on disk (or, for a non-durable batch, in redb's buffer).
    *tail = LogTail { next_seq, history };
    if wiped {
        counters.queued.store(0, Ordering::Relaxed);
        progress.clear();
    }
    counters.queued.fetch_add(queued_delta, Ordering::Relaxed);
    for (id, chunks) in stored {
        *progress.entry(id).or_default() += chunks;
    }
    if durable {
        counters.syncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(last)
}

/// Makes `txn` a durable commit: fsynced before `commit` returns, taking every non-durable
/// commit before it along. One-phase (redb's default): the pages and the header that makes
/// them the primary, then one fsync; after a crash, redb tells a torn commit from a whole one
/// by the commit's checksums and falls back to the previous one. Two phases would cost a second
/// fsync per commit (measured: from 0.64 to about 1.5 per message under 20 clients). redb's
/// design notes describe an attack on one phase: an input crafted to collide with XXH3, by an
/// attacker who knows the database's contents, controls the order pages reach the disk, and
/// crashes the machine during the fsync; a relay's clients can do none of the last three.
pub(super) fn make_durable(txn: &mut WriteTransaction) -> Result<(), SpoolError> {
    txn.set_durability(Durability::Immediate)?;
    txn.set_two_phase_commit(false);
    Ok(())
}

/// After a failed write redb refuses every call: with the file closed (the caller dropped
/// its handle), refuses what is sent meanwhile, and opens the file again once the file
/// system has room and nobody holds the old handle any more. The new log tail; None when the
/// spool was dropped meanwhile.
fn reopen(
    store: &Store,
    with: &Reopen,
    rx: &mut mpsc::Receiver<Submission>,
    counters: &Counters,
) -> Option<LogTail> {
    store.close();
    tracing::error!("spool closed after a failed write: changes are refused until it reopens");
    let mut said = String::new();
    loop {
        loop {
            match rx.try_recv() {
                Ok(submission) => submission.request.refuse(SpoolError::reopening()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return None,
            }
        }
        let opened = super::free_space(&with.dir).and_then(|free| match free >= REOPEN_ROOM {
            true => (with.open)(),
            false => Err(SpoolError::new(
                ErrorKind::NoSpace,
                format!("{free} bytes free, {REOPEN_ROOM} needed to reopen"),
            )),
        });
        match opened {
            Ok(Opened { db, tail, last, queued, orphans }) => {
                counters.queued.store(queued, Ordering::Relaxed);
                // A record whose commit failed may have reached the disk after all: it is
                // durable now, and replication ships it.
                counters.durable.send_if_modified(|durable| {
                    let moved = *durable != last;
                    *durable = last;
                    moved
                });
                store.publish(db);
                counters.reopens.send_modify(|reopens| *reopens += 1);
                tracing::info!(at = last.seq, messages = queued, orphans, "spool reopened");
                return Some(tail);
            }
            Err(e) => {
                // Each new reason once, not every poll.
                let reason = e.to_string();
                if reason != said {
                    tracing::warn!(error = %reason, "spool not reopened yet");
                    said = reason;
                }
            }
        }
        std::thread::sleep(REOPEN_POLL);
    }
}

/// What staging one request gave: the request's outcome (an error refuses this request only),
/// or the error of the staging itself, which fails the batch.
type Outcome = Result<Result<LogPosition, SpoolError>, SpoolError>;

/// The tables of one write transaction being staged, and the state it will leave behind.
///
/// The primary's committer and a standby applying replicated records go through this one
/// type, so that both derive the same state from the same log.
pub(super) struct Staging<'t> {
    messages: Table<'t, u128, &'static [u8]>,
    log: Table<'t, u64, &'static [u8]>,
    bodies: Table<'t, (u128, u32), &'static [u8]>,
    receiving: Table<'t, u128, ()>,
    state: Table<'t, &'static str, &'static [u8]>,
    marks: Table<'t, u64, (u64, u64)>,
    held: Table<'t, u128, u64>,
    dsn: Table<'t, u128, &'static [u8]>,
    /// Kept across a wipe, like the node's own state: what it knew of past epochs.
    epoch_notes: Table<'t, u64, &'static [u8]>,
    history: Vec<EpochStart>,
    /// Messages added minus messages removed.
    queued_delta: i64,
    /// Everything stored before this batch was erased (a snapshot begins).
    wiped: bool,
}

/// What a batch leaves behind once its tables are closed.
pub(super) struct Staged {
    pub(super) history: Vec<EpochStart>,
    pub(super) queued_delta: i64,
    pub(super) wiped: bool,
}

impl<'t> Staging<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        history: Vec<EpochStart>,
    ) -> Result<Staging<'t>, SpoolError> {
        Ok(Staging {
            messages: txn.open_table(tables::MESSAGES)?,
            log: txn.open_table(tables::LOG)?,
            bodies: txn.open_table(tables::BODIES)?,
            receiving: txn.open_table(tables::RECEIVING)?,
            state: txn.open_table(tables::STATE)?,
            marks: txn.open_table(tables::MARKS)?,
            held: txn.open_table(tables::HELD)?,
            dsn: txn.open_table(tables::DSN)?,
            epoch_notes: txn.open_table(tables::EPOCH_NOTES)?,
            history,
            queued_delta: 0,
            wiped: false,
        })
    }

    /// Marks the log's end as of `now_ms`, if records were added (see [`retention::seal`]).
    pub(super) fn seal(&mut self, now_ms: u64) -> Result<(), SpoolError> {
        retention::seal(&self.log, &mut self.marks, now_ms)
    }

    /// Closes the tables (a transaction commits only once they are), keeping what the caller
    /// publishes after the commit.
    pub(super) fn close(self) -> Staged {
        Staged { history: self.history, queued_delta: self.queued_delta, wiped: self.wiped }
    }

    /// Stages one request: its reply (None for chunks and abandoned bodies, which have none)
    /// and its outcome. `stored` counts the chunks this batch stores.
    fn request(
        &mut self,
        request: Request,
        next_seq: &mut u64,
        stored: &mut Progress,
        last: LogPosition,
        counters: &Counters,
    ) -> (Option<Reply>, Outcome) {
        match request {
            Request::Chunk { id, index, data } => {
                *stored.entry(id).or_default() += 1;
                (None, self.chunk(id, index, &data).map(|()| Ok(last)))
            }
            Request::Abandon(id) => {
                stored.remove(&id);
                (None, self.abandon(id).map(|()| Ok(last)))
            }
            Request::Append(_, done) if !counters.writable.load(Ordering::Relaxed) => {
                let refusal = SpoolError::new(
                    ErrorKind::ReadOnly,
                    "this node is not the primary: its log takes only the primary's records",
                );
                (Some(done), Ok(Err(refusal)))
            }
            Request::Append(changes, done) => {
                let (epoch, first) = (self.epoch(), *next_seq);
                let records = changes.into_iter().enumerate().map(move |(i, change)| LogRecord {
                    position: LogPosition { epoch, seq: first + i as u64 },
                    change,
                });
                (Some(done), self.stage_all(next_seq, records))
            }
            Request::BeginEpoch(epoch, note, done) => {
                let changes = std::iter::once(Change::EpochStarted)
                    .chain(note.map(Change::EpochNoted))
                    .enumerate();
                let first = *next_seq;
                let records = changes.map(|(i, change)| LogRecord {
                    position: LogPosition { epoch, seq: first + i as u64 },
                    change,
                });
                (Some(done), self.stage_all(next_seq, records.collect::<Vec<_>>()))
            }
            Request::Apply(records, done) => (Some(done), self.apply(records, next_seq, last)),
            Request::Wipe(done) => {
                *next_seq = 1;
                (Some(done), self.wipe().map(|()| Ok(LogPosition::default())))
            }
            Request::Install(messages, dsn, done) => {
                let installed = messages.into_iter().try_for_each(|m| self.install(m));
                let installed = installed.and_then(|()| self.put_dsn_all(&dsn));
                (Some(done), installed.map(|()| Ok(last)))
            }
            Request::InstallState { notes, failover_paused, done } => {
                let installed = notes
                    .iter()
                    .try_for_each(|note| self.note_epoch(note))
                    .and_then(|()| self.set_failover_paused(failover_paused));
                (Some(done), installed.map(|()| Ok(last)))
            }
            Request::InstallHeld(held, done) => {
                let installed = held.into_iter().try_for_each(|(id, since)| self.hold(id, since));
                (Some(done), installed.map(|()| Ok(last)))
            }
            Request::Rewind { to, history, state, done } => {
                let rewound = self.rewind(to, *next_seq, history, state);
                *next_seq = to.seq.saturating_add(1);
                (Some(done), rewound.map(|()| Ok(to)))
            }
            Request::State { key, value, done } => {
                let stored = self.state.insert(key, value.as_slice()).map_err(SpoolError::from);
                (Some(done), stored.map(|_| Ok(last)))
            }
            Request::Sync(done) => (Some(done), Ok(Ok(last))),
            Request::Resume { history, last: resumed, done } => {
                *next_seq = resumed.seq.saturating_add(1);
                (Some(done), self.resume(history, resumed).map(|()| Ok(resumed)))
            }
        }
    }

    /// Stores a body chunk; the first one marks the body as being received, so that it is
    /// removed at the next start if its message is never committed.
    fn chunk(&mut self, id: QueueId, index: u32, data: &[u8]) -> Result<(), SpoolError> {
        if index == 0 {
            self.receiving.insert(id.as_u128(), ())?;
        }
        self.bodies.insert((id.as_u128(), index), data)?;
        Ok(())
    }

    /// Removes the bodies of messages never committed (the process stopped while receiving
    /// them); returns how many.
    pub(super) fn remove_orphans(&mut self) -> Result<usize, SpoolError> {
        let ids = self.receiving.iter()?.map(|entry| entry.map(|(id, _)| id.value()));
        let ids: Vec<u128> = ids.collect::<Result<_, _>>()?;
        let mut removed = 0;
        for id in ids.into_iter().map(QueueId::from_u128) {
            if self.message(id)?.is_none() {
                removed += 1;
            }
            self.abandon(id)?;
        }
        Ok(removed)
    }

    /// A body whose message was not committed: removed, unless the message is stored.
    fn abandon(&mut self, id: QueueId) -> Result<(), SpoolError> {
        if self.message(id)?.is_none() {
            self.bodies.retain_in(tables::body_range(id.as_u128()), |_, _| false)?;
        }
        self.receiving.remove(id.as_u128())?;
        Ok(())
    }

    /// A standby's records: checked against the log, then staged.
    fn apply(&mut self, records: Vec<LogRecord>, next_seq: &mut u64, last: LogPosition) -> Outcome {
        // A record we already hold must be the very same record: same sequence number in the
        // same epoch. Anything else means the logs have diverged.
        let mut diverged = None;
        for record in records.iter().filter(|r| r.position.seq < *next_seq) {
            if let Some(ours) = self.log.get(record.position.seq)? {
                let ours: LogRecord = postcard::from_bytes(ours.value())?;
                if ours.position != record.position {
                    diverged = Some(record.position);
                    break;
                }
            }
        }
        if let Some(position) = diverged {
            return Ok(Err(SpoolError::corrupt(format!(
                "replicated record {position:?} differs from ours: the logs have diverged"
            ))));
        }
        let fresh: Vec<LogRecord> =
            records.into_iter().filter(|r| r.position.seq >= *next_seq).collect();
        // Each new record must take the next sequence number, in the epoch the log is in
        // there: a record of an older epoch comes from a primary that was deposed.
        if let Some((seq, record)) =
            (*next_seq..).zip(&fresh).find(|(seq, r)| r.position.seq != *seq)
        {
            return Ok(Err(SpoolError::corrupt(format!(
                "replicated record {:?} is not record {seq}: a gap",
                record.position
            ))));
        }
        if let Some(misplaced) = self.misplaced_epoch(&fresh) {
            return Ok(Err(SpoolError::corrupt(format!(
                "replicated record {misplaced:?} is not of the epoch our log is in there: a \
                 stale primary's"
            ))));
        }
        if fresh.is_empty() {
            return Ok(Ok(last));
        }
        self.stage_all(next_seq, fresh)
    }

    /// Stages records in order; the position of the last.
    fn stage_all(
        &mut self,
        next_seq: &mut u64,
        records: impl IntoIterator<Item = LogRecord>,
    ) -> Outcome {
        let mut position = None;
        for record in records {
            position = Some(record.position);
            self.stage(&record)?;
            *next_seq = record.position.seq.saturating_add(1);
        }
        Ok(position.ok_or_else(|| SpoolError::corrupt("an empty commit")))
    }

    /// Erases everything but the node's own state (its persisted role), marking the snapshot
    /// incomplete until `resume`.
    fn wipe(&mut self) -> Result<(), SpoolError> {
        self.messages.retain(|_, _| false)?;
        self.log.retain(|_, _| false)?;
        self.bodies.retain(|_, _| false)?;
        self.receiving.retain(|_, _| false)?;
        self.marks.retain(|_, _| false)?;
        self.held.retain(|_, _| false)?;
        self.dsn.retain(|_, _| false)?;
        self.state.remove(tables::EPOCH_HISTORY)?;
        self.state.remove(tables::RESUMED)?;
        self.state.insert(tables::SNAPSHOT_INCOMPLETE, [1u8].as_slice())?;
        self.history.clear();
        self.queued_delta = 0;
        self.wiped = true;
        Ok(())
    }

    /// Keeps who began an epoch and why.
    fn note_epoch(&mut self, note: &EpochNote) -> Result<(), SpoolError> {
        self.epoch_notes.insert(note.epoch, postcard::to_stdvec(note)?.as_slice())?;
        Ok(())
    }

    /// Persists whether automatic failover is paused (kept across a wipe: the node's own).
    fn set_failover_paused(&mut self, paused: bool) -> Result<(), SpoolError> {
        self.state.insert(tables::FAILOVER_PAUSED, [u8::from(paused)].as_slice())?;
        Ok(())
    }

    /// A snapshot's message record, as the primary had it.
    pub(super) fn install(&mut self, message: MessageRecord) -> Result<(), SpoolError> {
        if self.message(message.envelope.id)?.is_none() {
            self.queued_delta += 1;
        }
        self.put(&message)
    }

    /// After a snapshot: the epoch history the log continues with, and where.
    fn resume(&mut self, history: Vec<EpochStart>, last: LogPosition) -> Result<(), SpoolError> {
        self.history = history;
        self.state.insert(tables::EPOCH_HISTORY, postcard::to_stdvec(&self.history)?.as_slice())?;
        self.state.insert(tables::RESUMED, postcard::to_stdvec(&last)?.as_slice())?;
        self.state.remove(tables::SNAPSHOT_INCOMPLETE)?;
        Ok(())
    }

    /// Drops the log records from `to` + 1 up to (not including) `next_seq`, takes `history`,
    /// and sets the messages of `state` to the primary's state, their DSN requests and holds
    /// included.
    fn rewind(
        &mut self,
        to: LogPosition,
        next_seq: u64,
        history: Vec<EpochStart>,
        state: Rewound,
    ) -> Result<(), SpoolError> {
        let Rewound { messages, dsn, held, absent } = state;
        if to.seq.saturating_add(1) < next_seq {
            self.log.retain_in(to.seq.saturating_add(1)..next_seq, |_, _| false)?;
        }
        self.history = history;
        self.state.insert(tables::EPOCH_HISTORY, postcard::to_stdvec(&self.history)?.as_slice())?;
        for message in messages {
            // The primary's state of the message: its DSN request and its hold as it has
            // them, or none.
            self.dsn.remove(message.envelope.id.as_u128())?;
            self.held.remove(message.envelope.id.as_u128())?;
            self.install(message)?;
        }
        self.put_dsn_all(&dsn)?;
        for (id, since) in held {
            self.hold(id, since)?;
        }
        for id in absent {
            if self.message(id)?.is_some() {
                self.remove(id)?;
            }
        }
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.history.last().map_or(0, |e| e.epoch)
    }

    /// The first of `records` (to be appended to the log, in order) whose epoch is not the
    /// one the epoch history says the log is in at its sequence number, or an `EpochStarted`
    /// that does not go up: what only a primary of an older epoch would send.
    fn misplaced_epoch(&self, records: &[LogRecord]) -> Option<LogPosition> {
        let mut history = self.history.clone();
        for record in records {
            let LogPosition { epoch, seq } = record.position;
            let current = history.iter().rev().find(|e| e.first_seq <= seq).map_or(0, |e| e.epoch);
            let start = EpochStart { epoch, first_seq: seq };
            match record.change {
                // A snapshot's history may name it already.
                Change::EpochStarted if history.contains(&start) => {}
                Change::EpochStarted if epoch > current => history.push(start),
                Change::EpochStarted => return Some(record.position),
                _ if epoch != current => return Some(record.position),
                _ => {}
            }
        }
        None
    }

    /// Stages one log record and the state change it describes.
    pub(super) fn stage(&mut self, record: &LogRecord) -> Result<(), SpoolError> {
        match &record.change {
            Change::EpochStarted => {
                let start =
                    EpochStart { epoch: record.position.epoch, first_seq: record.position.seq };
                self.history.push(start);
                let history = postcard::to_stdvec(&self.history)?;
                self.state.insert(tables::EPOCH_HISTORY, history.as_slice())?;
            }
            Change::Accepted(envelope) => self.accept(envelope, record.position)?,
            Change::AcceptedWithDsn { envelope, dsn } => {
                self.accept(envelope, record.position)?;
                self.put_dsn(envelope.id, dsn)?;
            }
            Change::DelayReported { id, recipients } => {
                // A message gone meanwhile has no request left to mark.
                if let Some(mut dsn) = self.dsn_of(*id)? {
                    for &index in recipients {
                        if let Some(slot) = dsn.recipients.get_mut(index as usize) {
                            slot.delay_reported = true;
                        }
                    }
                    self.put_dsn(*id, &dsn)?;
                }
            }
            Change::Attempted { id, results } => {
                // A message removed meanwhile (an operator deleted it) takes no more results.
                if let Some(mut message) = self.message(*id)? {
                    for (index, state) in results {
                        if let Some(slot) = message.recipients.get_mut(*index as usize) {
                            *slot = state.clone();
                        }
                    }
                    // Once no recipient is pending the message leaves the queue, in the same
                    // commit: removal is derived from the log, the same way on every node.
                    if message.recipients.iter().any(RecipientState::is_pending) {
                        self.put(&message)?;
                    } else {
                        self.remove(*id)?;
                    }
                }
            }
            Change::Removed { id } => {
                if self.message(*id)?.is_some() {
                    self.remove(*id)?;
                }
            }
            Change::FailoverPaused { paused } => self.set_failover_paused(*paused)?,
            Change::EpochNoted(note) => self.note_epoch(note)?,
            Change::Held { ids, since_ms } => {
                for id in ids {
                    self.hold(*id, *since_ms)?;
                }
            }
            Change::Released { ids } => {
                for id in ids {
                    self.held.remove(id.as_u128())?;
                }
            }
        }
        self.log.insert(record.position.seq, postcard::to_stdvec(record)?.as_slice())?;
        Ok(())
    }

    /// Queues a message of `envelope`, accepted at `position`, every recipient untried.
    fn accept(&mut self, envelope: &Envelope, position: LogPosition) -> Result<(), SpoolError> {
        let message = MessageRecord {
            recipients: vec![RecipientState::new(); envelope.recipients.len()],
            envelope: envelope.clone(),
            accepted_at: position,
        };
        // A snapshot taken while mail kept coming may already hold a message whose Accepted
        // record is replayed after it: count it once.
        if self.message(envelope.id)?.is_none() {
            self.queued_delta += 1;
        }
        self.put(&message)
    }

    fn dsn_of(&self, id: QueueId) -> Result<Option<Dsn>, SpoolError> {
        match self.dsn.get(id.as_u128())? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn put_dsn(&mut self, id: QueueId, dsn: &Dsn) -> Result<(), SpoolError> {
        self.dsn.insert(id.as_u128(), postcard::to_stdvec(dsn)?.as_slice())?;
        Ok(())
    }

    /// The DSN requests of messages this spool holds (a snapshot's, a rewind's); one of a
    /// message it does not hold is dropped.
    fn put_dsn_all(&mut self, dsn: &[(QueueId, Dsn)]) -> Result<(), SpoolError> {
        for (id, request) in dsn {
            if self.message(*id)?.is_some() {
                self.put_dsn(*id, request)?;
            }
        }
        Ok(())
    }

    fn message(&self, id: QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        match self.messages.get(id.as_u128())? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Holds a queued message since `since_ms`; one held already keeps its first time, and an
    /// id no longer queued (delivered or deleted meanwhile) is skipped.
    fn hold(&mut self, id: QueueId, since_ms: u64) -> Result<(), SpoolError> {
        if self.held.get(id.as_u128())?.is_none() && self.message(id)?.is_some() {
            self.held.insert(id.as_u128(), since_ms)?;
        }
        Ok(())
    }

    /// Removes a stored message, its body and its hold.
    fn remove(&mut self, id: QueueId) -> Result<(), SpoolError> {
        self.held.remove(id.as_u128())?;
        self.bodies.retain_in(tables::body_range(id.as_u128()), |_, _| false)?;
        self.messages.remove(id.as_u128())?;
        self.dsn.remove(id.as_u128())?;
        self.queued_delta -= 1;
        Ok(())
    }

    pub(super) fn put(&mut self, message: &MessageRecord) -> Result<(), SpoolError> {
        let bytes = postcard::to_stdvec(message)?;
        self.messages.insert(message.envelope.id.as_u128(), bytes.as_slice())?;
        Ok(())
    }
}
