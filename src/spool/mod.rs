//! The spool: where accepted mail lives until it is delivered or bounced.
//!
//! Storage is one redb file, `data_dir/spool/spool.redb`, behind this module's API (see
//! [`tables`] for the layout), so that the rest of relayd never touches redb and the engine
//! could be replaced. Every change is a record of the ordered change log ([`LogRecord`]),
//! staged in the same write transaction as the state it changes and made durable by the group
//! committer ([`commit`]). A 250 is given only once [`Spool::accept`] has returned, i.e. after
//! the durable commit that holds the message record, its log record and its body.
//!
//! redb refuses every call after a failed write (a full disk) until the file is opened again.
//! The committer then closes the file and reopens it once the disk has room again
//! ([`commit`]); meanwhile every change is refused (`452 4.3.1` for mail) and every read is an
//! error. A body being received across a reopen is refused, never committed with chunks lost.
//!
//! The spool's format is checked at open ([`tables::FORMAT`]); a spool of the sled-based
//! relayd is refused with the command that imports it ([`import`]).

mod body;
mod commit;
#[cfg(test)]
mod crash;
mod error;
mod id;
pub mod import;
mod open;
mod record;
pub mod retention;
mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use commit::Store;

use crate::config::Role;

pub use body::{BodyChunks, BodyWriter};
pub use error::{ErrorKind, SpoolError};
pub use id::QueueId;
pub use open::create_dir_durable;
pub use record::{
    Change, Dsn, Envelope, EpochCause, EpochNote, EpochStart, LogPosition, LogRecord,
    MessageRecord, RecipientDsn, RecipientState, now_ms,
};
pub use retention::Retention;

/// redb's cache, its write buffer included (at most half of it): bodies stream through it, so
/// it bounds the spool's memory.
const CACHE_SIZE: usize = 32 * 1024 * 1024;
/// The spool's file in `data_dir/spool`.
pub const FILE_NAME: &str = "spool.redb";

/// A handle on the spool; cheap to clone, shared by every session and task.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    committer: commit::Committer,
    counters: Arc<commit::Counters>,
    dir: PathBuf,
}

/// A spool file opened: the database, where its log ends, how many messages it holds, and
/// how many bodies of messages never committed its open removed.
pub(super) struct Opened {
    db: Database,
    tail: commit::LogTail,
    /// The last record the log holds (or where a snapshot left it).
    last: LogPosition,
    queued: i64,
    orphans: usize,
}

impl Spool {
    /// Opens (or creates) the spool in `data_dir/spool`. Removes the bodies of messages that
    /// were being received when the process last stopped: they were never acknowledged.
    ///
    /// A spool of another format, or of the sled-based relayd, is refused
    /// ([`ErrorKind::Format`]) with the command that migrates it; a damaged file is refused
    /// ([`ErrorKind::Corrupt`]) with what the operator can do.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let dir = data_dir.join("spool");
        open::refuse_sled(data_dir, &dir)?;
        create_dir_durable(&dir)?;
        let path = dir.join(FILE_NAME);
        // A spool closed a moment ago may still be held by a reader finishing: wait a little
        // for its lock, but not for another process that holds it.
        let started = std::time::Instant::now();
        let opened = loop {
            match open::open_at_start(&path) {
                Err(e) if e.kind == ErrorKind::Locked && started.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        // redb created its file: make the directory entries durable too.
        std::fs::File::open(&dir)?.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()?;
        let reopen =
            commit::Reopen { dir: dir.clone(), open: Box::new(move || open::open_file(&path)) };
        Spool::start(opened, dir, reopen)
    }

    /// A spool on `backend` instead of a file: the crash tests' way in. `reopen` opens it
    /// again after a failed write.
    #[cfg(test)]
    pub(super) fn open_backend(
        backend: impl redb::StorageBackend,
        dir: &Path,
        reopen: Box<dyn Fn() -> Result<Opened, SpoolError> + Send>,
    ) -> Result<Spool, SpoolError> {
        let opened = open::open_backend(backend)?;
        Spool::start(
            opened,
            dir.to_path_buf(),
            commit::Reopen { dir: dir.to_path_buf(), open: reopen },
        )
    }

    fn start(opened: Opened, dir: PathBuf, reopen: commit::Reopen) -> Result<Spool, SpoolError> {
        let Opened { db, tail, last, queued, orphans } = opened;
        if orphans > 0 {
            tracing::info!(removed = orphans, "removed the bodies of messages never acknowledged");
        }
        let counters = Arc::new(commit::Counters {
            syncs: Default::default(),
            reopens: tokio::sync::watch::Sender::new(0),
            queued: Default::default(),
            durable: tokio::sync::watch::Sender::new(last),
            writable: std::sync::atomic::AtomicBool::new(true),
        });
        counters.queued.store(queued, Ordering::Relaxed);
        let store = Arc::new(Store::new(db));
        let committer = commit::Committer::spawn(store.clone(), reopen, tail, counters.clone())?;
        Ok(Spool { inner: Arc::new(Inner { store, committer, counters, dir }) })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts writing the body of a new message.
    pub fn body_writer(&self, id: QueueId) -> BodyWriter {
        BodyWriter::new(self.clone(), id)
    }

    /// False while the spool is closed after a failed write and not yet reopened.
    pub fn is_open(&self) -> bool {
        self.db().is_ok()
    }

    /// Bytes free for the spool on its file system (what an unprivileged process may still
    /// write), or an error while the spool is closed after a failed write and not yet reopened.
    pub fn free_space(&self) -> Result<u64, SpoolError> {
        self.db()?;
        free_space(&self.inner.dir)
    }

    /// The spool's file system and file, for `/metrics`: read even while the spool is closed
    /// after a failed write (a full disk is when an operator most wants to see them).
    pub fn disk_usage(&self) -> Result<DiskUsage, SpoolError> {
        let stat = rustix::fs::statvfs(&self.inner.dir).map_err(std::io::Error::from)?;
        let file = std::fs::metadata(self.inner.dir.join(FILE_NAME))?;
        Ok(DiskUsage {
            free: available(&stat),
            size: stat.f_blocks.saturating_mul(stat.f_frsize),
            file: file.len(),
        })
    }

    /// Records an accepted message and returns once it is durable: its body chunks, its
    /// message record and its log record, all in one durable commit.
    pub async fn accept(
        &self,
        envelope: Envelope,
        body: BodyWriter,
    ) -> Result<LogPosition, SpoolError> {
        debug_assert_eq!(envelope.id, body.id());
        self.commit(vec![Change::Accepted(envelope)], vec![body]).await
    }

    /// Commits `changes` in one atomic batch, with the bodies they accept, and returns the
    /// position of the last one once all are durable.
    pub async fn commit(
        &self,
        changes: Vec<Change>,
        bodies: Vec<BodyWriter>,
    ) -> Result<LogPosition, SpoolError> {
        self.submit_with(bodies, |done| commit::Request::Append(changes, done)).await
    }

    /// The position of the last durable record.
    pub fn last_position(&self) -> LogPosition {
        *self.inner.counters.durable.borrow()
    }

    /// Follows the last durable position (replication ships what lies behind it).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<LogPosition> {
        self.inner.counters.durable.subscribe()
    }

    /// A standby applies records shipped by the primary, with the bodies their `Accepted`
    /// records need; returns the position of the last once durable. A record at a sequence
    /// number it holds already is skipped if it is the same record (same epoch), and is an
    /// error if not (the logs diverged); a gap is an error.
    pub async fn apply(
        &self,
        records: Vec<LogRecord>,
        bodies: Vec<BodyWriter>,
    ) -> Result<LogPosition, SpoolError> {
        self.queue_apply(records, bodies).await?.durable().await
    }

    /// A standby starts taking a snapshot: erases everything it holds.
    pub async fn wipe(&self) -> Result<(), SpoolError> {
        self.submit(commit::Request::Wipe).await.map(|_| ())
    }

    /// A standby stores a snapshot's messages, with their bodies and the DSN requests of
    /// those that have one.
    pub async fn install(
        &self,
        messages: Vec<MessageRecord>,
        dsn: Vec<(QueueId, Dsn)>,
        bodies: Vec<BodyWriter>,
    ) -> Result<(), SpoolError> {
        self.queue_install(messages, dsn, bodies).await?.durable().await.map(|_| ())
    }

    /// A standby stores a snapshot's holds: these messages, stored already, are held since
    /// the time given.
    pub async fn install_held(&self, held: Vec<(QueueId, u64)>) -> Result<(), SpoolError> {
        self.submit(|done| commit::Request::InstallHeld(held, done)).await.map(|_| ())
    }

    /// A standby (an old primary, rejoining) drops the branch of its log after `to` and takes
    /// the primary's state of the messages it touched, their DSN requests and holds included
    /// (see `commit::Request::Rewind`).
    pub async fn rewind(
        &self,
        to: LogPosition,
        history: Vec<EpochStart>,
        state: Rewound,
        bodies: Vec<BodyWriter>,
    ) -> Result<(), SpoolError> {
        self.submit_with(bodies, |done| commit::Request::Rewind { to, history, state, done })
            .await
            .map(|_| ())
    }

    /// A standby stores a snapshot's state besides its messages: the primary's epoch notes
    /// and whether its automatic failover is paused.
    pub async fn install_state(
        &self,
        notes: Vec<EpochNote>,
        failover_paused: bool,
    ) -> Result<(), SpoolError> {
        self.submit(|done| commit::Request::InstallState { notes, failover_paused, done })
            .await
            .map(|_| ())
    }

    /// A standby ends a snapshot: its log continues after `last`, with `history`.
    pub async fn resume(
        &self,
        history: Vec<EpochStart>,
        last: LogPosition,
    ) -> Result<(), SpoolError> {
        self.submit(|done| commit::Request::Resume { history, last, done }).await.map(|_| ())
    }

    /// The log record at `seq`, if the log still holds it.
    pub fn log_record(&self, seq: u64) -> Result<Option<LogRecord>, SpoolError> {
        let table = self.read()?.open_table(tables::LOG)?;
        match table.get(seq)? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Bytes of the log records `from..=to` and of the bodies they accept: what a standby that
    /// lacks them has to receive.
    pub fn log_bytes(&self, from: u64, to: u64) -> u64 {
        self.scan(tables::LOG, |table| table.range(from..=to))
            .filter_map(Result::ok)
            .map(|value| {
                let body = postcard::from_bytes::<LogRecord>(&value)
                    .ok()
                    .and_then(|record| record.change.accepts().map(|envelope| envelope.size))
                    .unwrap_or(0);
                value.len() as u64 + body
            })
            .sum()
    }

    /// Whether this node appends its own records (a primary) or only applies a primary's (a
    /// standby): an append on a standby would take sequence numbers that are the primary's.
    pub fn set_writable(&self, writable: bool) {
        self.inner.counters.writable.store(writable, Ordering::Relaxed);
    }

    /// Where the snapshot this spool was built from left the log (its log continues after it),
    /// if it was built from one.
    pub fn snapshot_point(&self) -> Result<Option<LogPosition>, SpoolError> {
        self.state(tables::RESUMED)?.map(|bytes| Ok(postcard::from_bytes(&bytes)?)).transpose()
    }

    /// A snapshot was begun and not finished: the spool is partial.
    pub fn snapshot_incomplete(&self) -> Result<bool, SpoolError> {
        Ok(self.state(tables::SNAPSHOT_INCOMPLETE)?.is_some())
    }

    /// Drops the log records nobody may need: those before `wanted_from` (what the caller
    /// judges a peer may still need), and, whatever is wanted, those past `retention` (older
    /// than its age, or more than its bytes before the log's end: [`retention::keep_from`]).
    /// The newest record always stays. Housekeeping, not a change: a non-durable commit, which
    /// the next durable one takes along (records that come back after a crash are harmless).
    pub fn trim_log(
        &self,
        wanted_from: u64,
        now_ms: u64,
        retention: &Retention,
    ) -> Result<Trimmed, SpoolError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::None)?;
        let trimmed = {
            let mut log = txn.open_table(tables::LOG)?;
            let mut marks = txn.open_table(tables::MARKS)?;
            let last = log.last()?.map(|(seq, _)| seq.value());
            let (Some(end), Some(last)) = (retention::last_mark(&marks)?, last) else {
                return Ok(Trimmed { removed: 0, keep_from: 0 });
            };
            let keep_from = retention::keep_from(
                retention::marks(&marks)?,
                end,
                wanted_from,
                now_ms,
                retention,
            )?
            .min(last);
            let removed = log.extract_from_if(..keep_from, |_, _| true)?.count();
            // The last mark before what is kept stays: the bytes after it are counted from it.
            let base =
                marks.range(..keep_from)?.next_back().transpose()?.map(|(seq, _)| seq.value());
            if let Some(base) = base {
                marks.retain_in(..base, |_, _| false)?;
            }
            Trimmed { removed, keep_from }
        };
        txn.commit()?;
        Ok(trimmed)
    }

    /// Starts `epoch`: an `EpochStarted` record and, in the same batch right after it, the
    /// note of who began it and why, if given; durable before this returns.
    pub async fn begin_epoch(
        &self,
        epoch: u64,
        note: Option<EpochNote>,
    ) -> Result<LogPosition, SpoolError> {
        self.submit(|done| commit::Request::BeginEpoch(epoch, note, done)).await
    }

    /// Every epoch note this node holds, by epoch (an epoch begun by relayd 0.1.0 has none).
    pub fn epoch_notes(&self) -> Result<Vec<EpochNote>, SpoolError> {
        self.scan(tables::EPOCH_NOTES, |table| table.range(0..))
            .map(|value| Ok(postcard::from_bytes(&value?)?))
            .collect()
    }

    /// The role this node last persisted, if any.
    pub fn persisted_role(&self) -> Result<Option<Role>, SpoolError> {
        match self.state(tables::ROLE)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                text.parse()
                    .map(Some)
                    .map_err(|_| SpoolError::corrupt(format!("stored role {text:?}")))
            }
            None => Ok(None),
        }
    }

    /// Persists the role (synced) before the node acts in it.
    pub async fn persist_role(&self, role: Role) -> Result<(), SpoolError> {
        let value = role.as_str().as_bytes().to_vec();
        self.submit(|done| commit::Request::State { key: tables::ROLE, value, done })
            .await
            .map(|_| ())
    }

    /// Whether an operator paused automatic failover on this node (or on the primary whose
    /// log it applied).
    pub fn failover_paused(&self) -> Result<bool, SpoolError> {
        Ok(self.state(tables::FAILOVER_PAUSED)?.is_some_and(|value| value == [1]))
    }

    /// Pauses or resumes automatic failover on this node alone (a standby, which appends
    /// nothing to the log; a primary commits [`Change::FailoverPaused`] instead, which its
    /// standby applies too). Synced before it returns.
    pub async fn persist_failover_paused(&self, paused: bool) -> Result<(), SpoolError> {
        let value = vec![u8::from(paused)];
        self.submit(|done| commit::Request::State { key: tables::FAILOVER_PAUSED, value, done })
            .await
            .map(|_| ())
    }

    /// The highest epoch this node has persisted as seen (0 when none was).
    pub fn highest_epoch(&self) -> Result<u64, SpoolError> {
        match self.state(tables::HIGHEST_EPOCH)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    SpoolError::corrupt(format!("stored highest epoch of {} bytes", bytes.len()))
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
            None => Ok(0),
        }
    }

    /// Persists the highest epoch seen (synced) before the node relies on it.
    pub async fn persist_highest_epoch(&self, epoch: u64) -> Result<(), SpoolError> {
        let value = epoch.to_be_bytes().to_vec();
        self.submit(|done| commit::Request::State { key: tables::HIGHEST_EPOCH, value, done })
            .await
            .map(|_| ())
    }

    /// Makes sure the log has an epoch, starting epoch 1 on a fresh spool, and returns the
    /// current one. The epoch is durable before this returns, so it is never used unpersisted.
    pub async fn ensure_epoch(&self) -> Result<u64, SpoolError> {
        if let Some(current) = self.epoch_history()?.last() {
            return Ok(current.epoch);
        }
        let position = self.submit(|done| commit::Request::BeginEpoch(1, None, done)).await?;
        Ok(position.epoch)
    }

    pub fn epoch_history(&self) -> Result<Vec<EpochStart>, SpoolError> {
        match self.state(tables::EPOCH_HISTORY)? {
            Some(bytes) => Ok(postcard::from_bytes(&bytes)?),
            None => Ok(Vec::new()),
        }
    }

    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        let table = self.read()?.open_table(tables::MESSAGES)?;
        match table.get(id.as_u128())? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Since when (Unix ms) an operator holds message `id`; None when it is not held (or not
    /// queued).
    pub fn held_since(&self, id: QueueId) -> Result<Option<u64>, SpoolError> {
        let table = self.read()?.open_table(tables::HELD)?;
        Ok(table.get(id.as_u128())?.map(|since| since.value()))
    }

    /// Every held message and since when, in queue order.
    pub fn held(&self) -> Result<Vec<(QueueId, u64)>, SpoolError> {
        let table = self.read()?.open_table(tables::HELD)?;
        let entries = table
            .iter()?
            .map(|entry| entry.map(|(id, since)| (QueueId::from_u128(id.value()), since.value())));
        Ok(entries.collect::<Result<_, _>>()?)
    }

    /// The DSN request of a message accepted with DSN parameters (RFC 3461); None for any
    /// other message, or one no longer queued.
    pub fn dsn(&self, id: QueueId) -> Result<Option<Dsn>, SpoolError> {
        let table = self.read()?.open_table(tables::DSN)?;
        match table.get(id.as_u128())? {
            Some(bytes) => Ok(Some(postcard::from_bytes(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every queued message, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = Result<MessageRecord, SpoolError>> + '_ {
        self.messages_after(None)
    }

    /// The queued messages whose ids follow `after` (every one without it), oldest first: a
    /// page of the admin endpoint's listing starts its read there, not at the queue's head.
    pub fn messages_after(
        &self,
        after: Option<QueueId>,
    ) -> impl Iterator<Item = Result<MessageRecord, SpoolError>> + '_ {
        let start = after.map_or(0, |id| id.as_u128().saturating_add(1));
        self.scan(tables::MESSAGES, move |table| table.range::<u128>(start..))
            .map(|value| Ok(postcard::from_bytes(&value?)?))
    }

    /// The body of a queued message, chunk by chunk.
    pub fn body(&self, id: QueueId) -> BodyChunks {
        BodyChunks::new(
            self.scan(tables::BODIES, |table| table.range(tables::body_range(id.as_u128()))),
        )
    }

    /// The change log from sequence `from_seq` on, in order.
    pub fn log_from(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<LogRecord, SpoolError>> + '_ {
        self.log_entries_from(from_seq).map(|entry| entry.map(|(record, _)| record))
    }

    /// The same, with each record's encoded size (what it weighs in a replication frame).
    pub fn log_entries_from(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<(LogRecord, usize), SpoolError>> + '_ {
        self.scan(tables::LOG, |table| table.range(from_seq..)).map(|value| {
            let value = value?;
            Ok((postcard::from_bytes(&value)?, value.len()))
        })
    }

    /// How many durable commits were made since the spool was opened: one fsync each, however
    /// many changes they carried.
    pub fn syncs(&self) -> u64 {
        self.inner.counters.syncs.load(Ordering::Relaxed)
    }

    /// How many messages are queued.
    pub fn queue_len(&self) -> u64 {
        u64::try_from(self.inner.counters.queued.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// How many times the spool was reopened after a failed write.
    pub fn reopens(&self) -> u64 {
        *self.inner.counters.reopens.borrow()
    }

    /// Follows the count of reopens: after one, what is queued is what the disk holds.
    pub fn watch_reopens(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.counters.reopens.subscribe()
    }

    /// Makes everything written so far durable (used at shutdown): a durable commit of
    /// nothing, after whatever the committer was sent before, which takes the non-durable
    /// commits before it along.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let (done, result) = oneshot::channel();
        self.send_blocking(commit::Request::Sync(done))?;
        commit::wait_on(result).map_err(|_| SpoolError::closed())?.map(|_| ())
    }

    /// Hands a body writer's request (a chunk, an abandoned body) to the committer.
    fn send_blocking(&self, request: commit::Request) -> Result<(), SpoolError> {
        self.inner.committer.send_blocking(request)
    }

    /// The open file, or an error while it is being reopened after a failed write.
    fn db(&self) -> Result<Arc<Database>, SpoolError> {
        self.inner.store.db()
    }

    fn read(&self) -> Result<ReadTransaction, SpoolError> {
        Ok(self.db()?.begin_read()?)
    }

    /// A value of the `state` table.
    fn state(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let table = self.read()?.open_table(tables::STATE)?;
        Ok(table.get(key)?.map(|bytes| bytes.value().to_vec()))
    }

    /// The values of a range of `table`, read from one snapshot; a single error while the file
    /// is being reopened.
    fn scan<K: redb::Key + 'static>(
        &self,
        table: redb::TableDefinition<K, &'static [u8]>,
        range: impl FnOnce(
            &redb::ReadOnlyTable<K, &'static [u8]>,
        )
            -> Result<redb::Range<'static, K, &'static [u8]>, redb::StorageError>,
    ) -> Scan<K> {
        let entries = self.read().and_then(|txn| Ok(range(&txn.open_table(table)?)?));
        match entries {
            Ok(entries) => Scan::Entries(Box::new(entries)),
            Err(e) => Scan::Failed(Some(e)),
        }
    }

    /// Submits a request whose records accept `bodies`: their last chunks are written first,
    /// and they are marked committed (kept) once the request is durable.
    async fn submit_with(
        &self,
        bodies: Vec<BodyWriter>,
        request: impl FnOnce(commit::Reply) -> commit::Request,
    ) -> Result<LogPosition, SpoolError> {
        self.queue_with(bodies, request).await?.durable().await
    }

    /// [`Self::submit_with`]'s first half: the request is in the committer's queue (behind
    /// every request sent before it, ahead of every one sent after) when this returns.
    async fn queue_with(
        &self,
        mut bodies: Vec<BodyWriter>,
        request: impl FnOnce(commit::Reply) -> commit::Request,
    ) -> Result<Queued, SpoolError> {
        let mut chunks = Vec::with_capacity(bodies.len());
        for body in &mut bodies {
            chunks.push((body.id(), body.finish()?));
        }
        // The committer refuses the request unless it stored every chunk of these bodies.
        let (done, result) = oneshot::channel();
        self.inner.committer.send(chunks, request(done)).await?;
        Ok(Queued { bodies, result })
    }

    /// [`Self::apply`] without waiting for the commit: the records are queued, and the
    /// returned [`Queued`] says when they are durable. A standby reads the primary's next
    /// frame meanwhile, so that the committer takes several frames in one durable commit.
    pub async fn queue_apply(
        &self,
        records: Vec<LogRecord>,
        bodies: Vec<BodyWriter>,
    ) -> Result<Queued, SpoolError> {
        self.queue_with(bodies, |done| commit::Request::Apply(records, done)).await
    }

    /// [`Self::install`] without waiting for the commit (see [`Self::queue_apply`]).
    pub async fn queue_install(
        &self,
        messages: Vec<MessageRecord>,
        dsn: Vec<(QueueId, Dsn)>,
        bodies: Vec<BodyWriter>,
    ) -> Result<Queued, SpoolError> {
        self.queue_with(bodies, |done| commit::Request::Install(messages, dsn, done)).await
    }

    async fn submit(
        &self,
        request: impl FnOnce(commit::Reply) -> commit::Request,
    ) -> Result<LogPosition, SpoolError> {
        let (done, result) = oneshot::channel();
        self.inner.committer.send(Vec::new(), request(done)).await?;
        result.await.map_err(|_| SpoolError::closed())?
    }
}

/// A request in the committer's queue, with the bodies its records accept: they are kept once
/// it is durable, and removed if it fails or is dropped unanswered.
pub struct Queued {
    bodies: Vec<BodyWriter>,
    result: oneshot::Receiver<Result<LogPosition, SpoolError>>,
}

impl Queued {
    /// Waits for the request's commit: the position of its last record once durable.
    pub async fn durable(mut self) -> Result<LogPosition, SpoolError> {
        let position = (&mut self.result).await.map_err(|_| SpoolError::closed())??;
        for body in &mut self.bodies {
            body.mark_committed();
        }
        Ok(position)
    }
}

/// A primary's state of the messages a rejoining standby's branch touched, which
/// [`Spool::rewind`] takes: those it holds (their bodies were written already), the DSN
/// requests of those that have one, the holds of those held (the others are not), and the ids
/// it no longer holds.
#[derive(Debug, Default)]
pub struct Rewound {
    pub messages: Vec<MessageRecord>,
    pub dsn: Vec<(QueueId, Dsn)>,
    pub held: Vec<(QueueId, u64)>,
    pub absent: Vec<QueueId>,
}

/// What [`Spool::trim_log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Log records dropped.
    pub removed: usize,
    /// The log now starts at this sequence number (or later, where it held nothing there).
    pub keep_from: u64,
}

/// How long `open` waits for the lock of a spool closed a moment ago.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes free for an unprivileged writer on the file system that holds `path` (statvfs).
fn free_space(path: &Path) -> Result<u64, SpoolError> {
    let stat = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(available(&stat))
}

/// Bytes an unprivileged writer may still use (the blocks reserved for root left out).
fn available(stat: &rustix::fs::StatVfs) -> u64 {
    stat.f_bavail.saturating_mul(stat.f_frsize)
}

/// What the spool occupies, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Free on the spool's file system, for an unprivileged writer (what `min_free_space`
    /// is compared with).
    pub free: u64,
    /// The file system's size.
    pub size: u64,
    /// The spool file's size (redb reuses its free pages; the file shrinks only when a start
    /// compacts it).
    pub file: u64,
}

/// The values of a table's range, or the one error that the file is closed. (redb's range is
/// large; boxed, a scan costs one allocation.)
pub(super) enum Scan<K: redb::Key + 'static> {
    Entries(Box<redb::Range<'static, K, &'static [u8]>>),
    Failed(Option<SpoolError>),
}

impl<K: redb::Key + 'static> Iterator for Scan<K> {
    type Item = Result<Vec<u8>, SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Scan::Entries(entries) => entries
                .next()
                .map(|entry| entry.map(|(_, value)| value.value().to_vec()).map_err(Into::into)),
            Scan::Failed(error) => error.take().map(Err),
        }
    }
}

#[cfg(test)]
mod tests;
