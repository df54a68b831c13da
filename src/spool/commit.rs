//! Group commit: the one writer of the change log.
//!
//! Sessions hand their changes to a dedicated thread. It takes every request waiting, stages
//! them in one sled batch (assigning consecutive sequence numbers), applies the batch, then
//! makes it durable with `flush()` followed by our own `fdatasync` of sled's data file. sled's
//! flush alone calls `sync_file_range`, which neither flushes the device's cache nor commits
//! file-size metadata; the fdatasync does both. While one fsync runs, new requests queue up and
//! share the next one, so the fsync rate stays bounded however many sessions commit.
//!
//! Invariant: the log's sequence numbers are assigned here and only here, in commit order —
//! or, on a standby, taken from the primary's records, which must continue the log exactly.
//!
//! A failed write (ENOSPC, EIO) leaves sled refusing every later call, and leaves us unsure
//! of what reached the disk. The committer then closes the tree ([`Store`] holds none),
//! refuses what it is sent, and once the file system has [`REOPEN_ROOM`] free opens the tree
//! again and takes the log's end, the queue length and the durable position from what the
//! disk holds: a record whose commit failed is there or not, never half.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use super::record::{Change, EpochStart, LogPosition, LogRecord, MessageRecord, RecipientState};
use super::{ErrorKind, QueueId, SpoolError};
use super::{Opened, keys};

/// At most this many changes share one batch, to bound the batch's memory.
const MAX_BATCH: usize = 1024;
/// Free space the file system needs before a closed tree is opened again: two of sled's
/// segments, so that its first writes after the reopen find room.
const REOPEN_ROOM: u64 = 2 * super::SEGMENT_SIZE as u64;
/// How often a closed tree tries to reopen.
const REOPEN_POLL: Duration = Duration::from_millis(250);

/// The open tree, shared by the spool's handles and the committer.
pub(super) struct Store {
    /// None while the tree is closed after a failed write.
    db: ArcSwapOption<sled::Db>,
    /// How many times the tree was opened: a body remembers the tree it was written to.
    generation: AtomicU64,
}

impl Store {
    pub(super) fn new(db: sled::Db) -> Store {
        Store { db: ArcSwapOption::from_pointee(db), generation: AtomicU64::new(0) }
    }

    pub(super) fn db(&self) -> Result<Arc<sled::Db>, SpoolError> {
        self.db.load_full().ok_or_else(SpoolError::reopening)
    }

    /// The open tree if it is the one of `generation`.
    pub(super) fn db_of(&self, generation: u64) -> Result<Arc<sled::Db>, SpoolError> {
        let db = self.db()?;
        if self.generation() != generation {
            return Err(reopened());
        }
        Ok(db)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.db.store(None);
    }

    /// The generation moves before the tree is shown, so that whoever sees the new tree sees
    /// the new generation too.
    fn publish(&self, db: sled::Db) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.db.store(Some(Arc::new(db)));
    }
}

fn reopened() -> SpoolError {
    SpoolError::new(
        ErrorKind::Io,
        "the spool was reopened after a failed write while this body was received",
    )
}

pub(super) enum Request {
    /// Append changes in the current epoch, all in one batch, in order.
    Append(Vec<Change>, Reply),
    /// Start a new epoch (persisted and synced before the caller may use it).
    BeginEpoch(u64, Reply),
    /// A standby applies the primary's records. Records it already has are skipped (a resumed
    /// stream may repeat a few); a record past the next sequence number (a gap) is refused.
    Apply(Vec<LogRecord>, Reply),
    /// A standby starts a snapshot: everything is erased.
    Wipe(Reply),
    /// A standby installs a snapshot's message records (their bodies were written already).
    Install(Vec<MessageRecord>, Reply),
    /// A standby ends a snapshot: the log continues after `last` with this epoch history.
    Resume { history: Vec<EpochStart>, last: LogPosition, done: Reply },
    /// A standby (an old primary, rejoining) drops its log's records after `to`, a branch the
    /// primary's history does not share, and takes the primary's state of the messages that
    /// branch touched: `messages` as the primary holds them (their bodies were written
    /// already), `absent` ones it no longer holds.
    Rewind {
        to: LogPosition,
        history: Vec<EpochStart>,
        messages: Vec<MessageRecord>,
        absent: Vec<QueueId>,
        done: Reply,
    },
    /// Node state outside the log (the role), made durable like the rest.
    State { key: &'static [u8], value: Vec<u8>, done: Reply },
    /// Nothing to stage: a flush and a sync, which tell whether the tree still writes (a
    /// write outside the committer, a body chunk, failed).
    Sync(Reply),
}

/// Where the committer sends the position of a request's last record.
pub(super) type Reply = oneshot::Sender<Result<LogPosition, SpoolError>>;

impl Request {
    /// Answers the request with `error`, doing nothing of it.
    fn refuse(self, error: SpoolError) {
        let done = match self {
            Request::Append(_, done)
            | Request::BeginEpoch(_, done)
            | Request::Apply(_, done)
            | Request::Wipe(done)
            | Request::Install(_, done)
            | Request::Resume { done, .. }
            | Request::Rewind { done, .. }
            | Request::State { done, .. }
            | Request::Sync(done) => done,
        };
        // A caller that gave up waiting no longer listens.
        let _ = done.send(Err(error));
    }
}

/// A request, and the tree generation its bodies were written to, if it has bodies.
pub(super) struct Submission {
    bodies_of: Option<u64>,
    request: Request,
}

/// The log's tail, owned by the committer thread.
pub(super) struct LogTail {
    pub next_seq: u64,
    pub history: Vec<EpochStart>,
}

/// What the committer counts and publishes, shared with the spool's readers.
pub(super) struct Counters {
    /// Group commits made durable (each one flush and one fdatasync).
    pub syncs: AtomicU64,
    /// Times the tree was reopened after a failed write; watched by the queue runner, which
    /// then reloads the queue from what the disk holds.
    pub reopens: watch::Sender<u64>,
    /// Messages in the queue.
    pub queued: AtomicI64,
    /// The position of the last durable record: replication waits on it.
    pub durable: watch::Sender<LogPosition>,
    /// Whether this node may append to its log (a primary), or only apply a primary's records.
    pub writable: std::sync::atomic::AtomicBool,
}

/// The handle on the committer thread. Dropping it lets the thread finish the requests it
/// has and exit, and waits for that, so that the spool's files are closed when it returns.
pub(super) struct Committer {
    requests: Option<mpsc::Sender<Submission>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// `dir` is the spool directory, where a closed tree is opened again.
    pub(super) fn spawn(
        store: Arc<Store>,
        dir: PathBuf,
        data_file: File,
        tail: LogTail,
        counters: Arc<Counters>,
    ) -> std::io::Result<Committer> {
        let (requests, rx) = mpsc::channel(MAX_BATCH);
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(&store, &dir, data_file, tail, rx, &counters))?;
        Ok(Committer { requests: Some(requests), thread: Some(thread) })
    }

    /// Asks for a sync without waiting for it (from synchronous code): if the tree no longer
    /// writes, the committer finds out and reopens it. Dropped if the queue is full: the
    /// requests queued will find out as well.
    pub(super) fn nudge(&self) {
        if let Some(requests) = &self.requests {
            let (done, _) = oneshot::channel();
            let _ = requests.try_send(Submission { bodies_of: None, request: Request::Sync(done) });
        }
    }

    /// Sends a request; `bodies_of`: the oldest tree generation its bodies were written to.
    pub(super) async fn send(
        &self,
        bodies_of: Option<u64>,
        request: Request,
    ) -> Result<(), SpoolError> {
        let requests = self.requests.as_ref().ok_or_else(SpoolError::closed)?;
        let submission = Submission { bodies_of, request };
        requests.send(submission).await.map_err(|_| SpoolError::closed())
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

fn run(
    store: &Store,
    dir: &Path,
    mut data_file: File,
    mut tail: LogTail,
    mut rx: mpsc::Receiver<Submission>,
    counters: &Counters,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut submissions = vec![first];
        while submissions.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(submission) => submissions.push(submission),
                Err(_) => break,
            }
        }
        let generation = store.generation();
        let mut requests = Vec::with_capacity(submissions.len());
        for Submission { bodies_of, request } in submissions {
            match bodies_of {
                Some(of) if of != generation => request.refuse(reopened()),
                _ => requests.push(request),
            }
        }
        let Ok(db) = store.db() else {
            requests.into_iter().for_each(|r| r.refuse(SpoolError::reopening()));
            continue;
        };
        if let Err(e) = commit(&db, &data_file, &mut tail, requests, counters)
            && e.is_io()
        {
            drop(db);
            match reopen(store, dir, &mut rx, counters) {
                Some((file, reopened)) => (data_file, tail) = (file, reopened),
                // Every sender is gone: the spool was dropped.
                None => return,
            }
        }
    }
}

/// Stages every request in one batch and makes it durable; answers each. The error, if the
/// batch failed.
fn commit(
    db: &sled::Db,
    data_file: &File,
    tail: &mut LogTail,
    requests: Vec<Request>,
    counters: &Counters,
) -> Result<(), SpoolError> {
    let mut staging = Staging::new(db, tail.history.clone());
    let mut next_seq = tail.next_seq;
    let mut last = counters.durable.borrow().to_owned();
    let mut answers = Vec::with_capacity(requests.len());
    let mut staged = Ok(());
    for request in requests {
        let (outcome, done) = match request {
            Request::Append(_, done) if !counters.writable.load(Ordering::Relaxed) => (
                Err(SpoolError::new(
                    super::ErrorKind::ReadOnly,
                    "this node is not the primary: its log takes only the primary's records",
                )),
                done,
            ),
            Request::Append(changes, done) => {
                let (epoch, first) = (staging.epoch(), next_seq);
                let records = changes.into_iter().enumerate().map(move |(i, change)| LogRecord {
                    position: LogPosition { epoch, seq: first + i as u64 },
                    change,
                });
                (stage_all(&mut staging, &mut staged, &mut next_seq, records), done)
            }
            Request::BeginEpoch(epoch, done) => {
                let record = LogRecord {
                    position: LogPosition { epoch, seq: next_seq },
                    change: Change::EpochStarted,
                };
                (stage_all(&mut staging, &mut staged, &mut next_seq, [record]), done)
            }
            Request::Apply(records, done) => {
                // A record we already hold must be the very same record: same sequence
                // number in the same epoch. Anything else means the logs have diverged.
                let diverged = records.iter().filter(|r| r.position.seq < next_seq).find(|r| {
                    let ours = db.get(super::keys::log(r.position.seq)).ok().flatten();
                    ours.and_then(|bytes| postcard::from_bytes::<LogRecord>(&bytes).ok())
                        .is_some_and(|ours| ours.position != r.position)
                });
                let fresh: Vec<LogRecord> =
                    records.iter().filter(|r| r.position.seq >= next_seq).cloned().collect();
                // Each new record must take the next sequence number, in the epoch the log is
                // in there: a record of an older epoch comes from a primary that was deposed.
                let gap = (next_seq..).zip(&fresh).find(|(seq, r)| r.position.seq != *seq);
                let misplaced = staging.misplaced_epoch(&fresh);
                match fresh.first() {
                    _ if diverged.is_some() => (
                        Err(SpoolError::corrupt(format!(
                            "replicated record {:?} differs from ours: the logs have diverged",
                            diverged.map(|r| r.position)
                        ))),
                        done,
                    ),
                    _ if gap.is_some() => (
                        Err(SpoolError::corrupt(format!(
                            "replicated record {:?} is not record {}: a gap",
                            gap.map(|(_, r)| r.position),
                            gap.map_or(0, |(seq, _)| seq),
                        ))),
                        done,
                    ),
                    _ if misplaced.is_some() => (
                        Err(SpoolError::corrupt(format!(
                            "replicated record {misplaced:?} is not of the epoch our log is in \
                             there: a stale primary's"
                        ))),
                        done,
                    ),
                    None => (Ok(last), done),
                    Some(_) => (stage_all(&mut staging, &mut staged, &mut next_seq, fresh), done),
                }
            }
            Request::Wipe(done) => {
                staging.wipe();
                next_seq = 1;
                (Ok(LogPosition::default()), done)
            }
            Request::Install(messages, done) => {
                let result = messages.into_iter().try_for_each(|m| staging.install(m));
                (result.map(|()| last), done)
            }
            Request::Rewind { to, history, messages, absent, done } => {
                let result = staging.rewind(to, next_seq, history, messages, absent);
                if result.is_ok() {
                    next_seq = to.seq.saturating_add(1);
                }
                (result.map(|()| to), done)
            }
            Request::State { key, value, done } => {
                staging.batch.insert(key, value);
                (Ok(last), done)
            }
            Request::Sync(done) => (Ok(last), done),
            Request::Resume { history, last: resumed, done } => {
                staging.resume(history, resumed);
                next_seq = resumed.seq.saturating_add(1);
                (Ok(resumed), done)
            }
        };
        if let Ok(position) = &outcome {
            last = *position;
        }
        answers.push((done, outcome));
    }
    let Staging { batch, history, queued_delta, wiped, .. } = staging;
    let result = staged.and_then(|()| {
        if wiped {
            // Everything goes but the node's own state (its persisted role).
            for prefix in [keys::BODY, keys::MESSAGE, keys::LOG] {
                for key in db.scan_prefix([prefix]).keys() {
                    db.remove(key?)?;
                }
            }
            db.remove(keys::EPOCH_HISTORY)?;
            db.remove(keys::RESUMED)?;
            counters.queued.store(0, Ordering::Relaxed);
        }
        db.apply_batch(batch)?;
        // From here the records are in the tree: their sequence numbers are used even if
        // the sync below fails (the sessions then answer 4xx; a retry may duplicate, never lose).
        *tail = LogTail { next_seq, history };
        counters.queued.fetch_add(queued_delta, Ordering::Relaxed);
        db.flush()?;
        data_file.sync_data()?;
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    if result.is_ok() {
        counters.durable.send_replace(last);
    }
    for (done, outcome) in answers {
        // A session that gave up waiting (its client went away) no longer listens.
        let _ = done.send(result.clone().and(outcome));
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "spool commit failed");
    }
    result
}

/// sled refuses every call after a failed write: with the tree closed (the caller dropped its
/// handle), refuses what is sent meanwhile, and opens the tree again once the file system has
/// room and nobody holds the old one any more. The new data file and log tail; None when the
/// spool was dropped meanwhile.
fn reopen(
    store: &Store,
    dir: &Path,
    rx: &mut mpsc::Receiver<Submission>,
    counters: &Counters,
) -> Option<(File, LogTail)> {
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
        let opened = super::free_space(dir).and_then(|free| match free >= REOPEN_ROOM {
            true => super::open_db(dir),
            false => Err(SpoolError::new(
                ErrorKind::NoSpace,
                format!("{free} bytes free, {REOPEN_ROOM} needed to reopen"),
            )),
        });
        match opened {
            Ok(Opened { db, data_file, tail, last, queued }) => {
                let orphans = super::remove_orphan_bodies(&db).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "orphan bodies not removed; they are at the next start");
                    0
                });
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
                return Some((data_file, tail));
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

/// Stages records in order; the position of the last, or the first staging error.
fn stage_all(
    staging: &mut Staging<'_>,
    staged: &mut Result<(), SpoolError>,
    next_seq: &mut u64,
    records: impl IntoIterator<Item = LogRecord>,
) -> Result<LogPosition, SpoolError> {
    let mut position = None;
    for record in records {
        position = Some(record.position);
        if staged.is_ok() {
            *staged = staging.stage(&record);
        }
        *next_seq = record.position.seq.saturating_add(1);
    }
    staged.clone()?;
    position.ok_or_else(|| SpoolError::corrupt("an empty commit"))
}

/// One batch being staged: the sled batch, and the state it will leave behind, so that several
/// changes to one message in the same batch build on each other.
///
/// The primary's committer and (later) a standby applying replicated records go through this
/// one type, so that both derive the same state from the same log.
pub(super) struct Staging<'a> {
    db: &'a sled::Db,
    batch: sled::Batch,
    history: Vec<EpochStart>,
    /// Message records as this batch leaves them (`None`: removed).
    messages: HashMap<QueueId, Option<MessageRecord>>,
    /// Messages added minus messages removed.
    queued_delta: i64,
    /// Everything stored before this batch is erased first (a snapshot begins).
    wiped: bool,
}

impl<'a> Staging<'a> {
    pub(super) fn new(db: &'a sled::Db, history: Vec<EpochStart>) -> Staging<'a> {
        Staging {
            db,
            batch: sled::Batch::default(),
            history,
            messages: HashMap::new(),
            queued_delta: 0,
            wiped: false,
        }
    }

    /// Erases everything: what was staged so far, and (when the batch is applied) the spool,
    /// marking the snapshot incomplete until `resume`.
    fn wipe(&mut self) {
        self.batch = sled::Batch::default();
        self.batch.insert(keys::SNAPSHOT_INCOMPLETE, &[1u8][..]);
        self.history.clear();
        self.messages.clear();
        self.queued_delta = 0;
        self.wiped = true;
    }

    /// A snapshot's message record, as the primary had it.
    fn install(&mut self, message: MessageRecord) -> Result<(), SpoolError> {
        if self.message(message.envelope.id)?.is_none() {
            self.queued_delta += 1;
        }
        self.put(message)
    }

    /// After a snapshot: the epoch history the log continues with, and where.
    fn resume(&mut self, history: Vec<EpochStart>, last: LogPosition) {
        self.history = history;
        if let (Ok(history), Ok(last)) =
            (postcard::to_stdvec(&self.history), postcard::to_stdvec(&last))
        {
            self.batch.insert(keys::EPOCH_HISTORY, history);
            self.batch.insert(keys::RESUMED, last);
            self.batch.remove(keys::SNAPSHOT_INCOMPLETE);
        }
    }

    /// Drops the log records from `to` + 1 up to (not including) `next_seq`, takes `history`,
    /// and sets the given messages to the primary's state.
    fn rewind(
        &mut self,
        to: LogPosition,
        next_seq: u64,
        history: Vec<EpochStart>,
        messages: Vec<MessageRecord>,
        absent: Vec<QueueId>,
    ) -> Result<(), SpoolError> {
        for seq in to.seq.saturating_add(1)..next_seq {
            self.batch.remove(&keys::log(seq)[..]);
        }
        self.history = history;
        self.batch.insert(keys::EPOCH_HISTORY, postcard::to_stdvec(&self.history)?);
        for message in messages {
            self.install(message)?;
        }
        for id in absent {
            if let Some(message) = self.message(id)? {
                self.remove(&message);
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
                self.batch.insert(keys::EPOCH_HISTORY, postcard::to_stdvec(&self.history)?);
            }
            Change::Accepted(envelope) => {
                let message = MessageRecord {
                    recipients: vec![RecipientState::new(); envelope.recipients.len()],
                    envelope: envelope.clone(),
                    accepted_at: record.position,
                };
                // A snapshot taken while mail kept coming may already hold a message whose
                // Accepted record is replayed after it: count it once.
                if self.message(envelope.id)?.is_none() {
                    self.queued_delta += 1;
                }
                self.put(message)?;
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
                    // batch: removal is derived from the log, the same way on every node.
                    if message.recipients.iter().any(RecipientState::is_pending) {
                        self.put(message)?;
                    } else {
                        self.remove(&message);
                    }
                }
            }
            Change::Removed { id } => {
                if let Some(message) = self.message(*id)? {
                    self.remove(&message);
                }
            }
        }
        self.batch.insert(&keys::log(record.position.seq)[..], postcard::to_stdvec(record)?);
        Ok(())
    }

    fn message(&self, id: QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        if let Some(staged) = self.messages.get(&id) {
            return Ok(staged.clone());
        }
        if self.wiped {
            return Ok(None);
        }
        match self.db.get(keys::message(id))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    fn remove(&mut self, message: &MessageRecord) {
        let id = message.envelope.id;
        let chunks = message.envelope.size.div_ceil(keys::CHUNK_SIZE as u64);
        for index in 0..chunks {
            self.batch.remove(&keys::body_chunk(id, index as u32)[..]);
        }
        self.batch.remove(&keys::message(id)[..]);
        self.messages.insert(id, None);
        self.queued_delta -= 1;
    }

    fn put(&mut self, message: MessageRecord) -> Result<(), SpoolError> {
        let id = message.envelope.id;
        self.batch.insert(&keys::message(id)[..], postcard::to_stdvec(&message)?);
        self.messages.insert(id, Some(message));
        Ok(())
    }
}
