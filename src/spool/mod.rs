//! The spool: where accepted mail lives until it is delivered or bounced.
//!
//! Storage is one sled tree behind this module's API (see [`keys`] for the layout), so that
//! the rest of relayd never touches sled and the engine could be replaced. Every change is a
//! record of the ordered change log ([`LogRecord`]), staged in the same atomic batch as the
//! state it changes and made durable by the group committer ([`commit`]). A 250 is given only
//! once [`Spool::accept`] has returned, i.e. after a real fdatasync.
//!
//! sled stops for good after a failed write (a full disk): every later call returns the same
//! error. The committer then closes the tree and reopens it once the disk has room again
//! ([`commit`]); meanwhile every change is refused (`452 4.3.1` for mail) and every read is an
//! error. A body being received across a reopen is refused, never committed with chunks lost.

mod body;
mod commit;
mod error;
mod id;
mod keys;
mod record;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use commit::Store;

use crate::config::Role;

pub use body::{BodyChunks, BodyWriter};
pub use error::{ErrorKind, SpoolError};
pub use id::QueueId;
pub use record::{
    Change, Envelope, EpochStart, LogPosition, LogRecord, MessageRecord, RecipientState, now_ms,
};

/// sled's page cache. Bodies are streamed through it, so it bounds the spool's memory.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;
/// sled's segment size: values up to a quarter of it stay inline in the data file (see
/// [`keys::CHUNK_SIZE`]); an envelope with the most recipients the config allows fits.
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

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

/// A spool opened from disk: the tree, sled's data file (for our fdatasync), and where the
/// log ends.
pub(super) struct Opened {
    db: sled::Db,
    data_file: File,
    tail: commit::LogTail,
    /// The last record the log holds (or where a snapshot left it).
    last: LogPosition,
    queued: i64,
}

impl Spool {
    /// Opens (or creates) the spool in `data_dir/spool`. Removes the bodies of messages that
    /// were being received when the process last stopped: they were never acknowledged.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let dir = data_dir.join("spool");
        std::fs::create_dir_all(&dir)?;
        // sled's lock on its files can outlive a closed spool by a moment (its I/O threads
        // finish first): wait a little for it, but not for another process that holds it.
        let started = std::time::Instant::now();
        let opened = loop {
            match open_db(&dir) {
                Err(e) if e.kind == ErrorKind::Locked && started.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        // sled created its files: make their directory entries durable too.
        File::open(&dir)?.sync_all()?;
        File::open(data_dir)?.sync_all()?;
        let Opened { db, data_file, tail, last, queued } = opened;
        let counters = Arc::new(commit::Counters {
            syncs: Default::default(),
            reopens: tokio::sync::watch::Sender::new(0),
            queued: Default::default(),
            durable: tokio::sync::watch::Sender::new(last),
            writable: std::sync::atomic::AtomicBool::new(true),
        });
        counters.queued.store(queued, Ordering::Relaxed);
        let removed = remove_orphan_bodies(&db)?;
        if removed > 0 {
            tracing::info!(removed, "removed the bodies of messages never acknowledged");
        }
        let store = Arc::new(Store::new(db));
        let committer = commit::Committer::spawn(
            store.clone(),
            dir.clone(),
            data_file,
            tail,
            counters.clone(),
        )?;
        Ok(Spool { inner: Arc::new(Inner { store, committer, counters, dir }) })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts writing the body of a new message.
    pub fn body_writer(&self, id: QueueId) -> BodyWriter {
        BodyWriter::new(self.clone(), id, self.inner.store.generation())
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

    /// Records an accepted message and returns once it is durable: its body chunks, its
    /// message record and its log record, all synced by one group commit.
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
        self.submit_with(bodies, |done| commit::Request::Apply(records, done)).await
    }

    /// A standby starts taking a snapshot: erases everything it holds.
    pub async fn wipe(&self) -> Result<(), SpoolError> {
        self.submit(commit::Request::Wipe).await.map(|_| ())
    }

    /// A standby stores a snapshot's messages, with their bodies.
    pub async fn install(
        &self,
        messages: Vec<MessageRecord>,
        bodies: Vec<BodyWriter>,
    ) -> Result<(), SpoolError> {
        self.submit_with(bodies, |done| commit::Request::Install(messages, done)).await.map(|_| ())
    }

    /// A standby (an old primary, rejoining) drops the branch of its log after `to` and takes
    /// the primary's state of the messages it touched (see `commit::Request::Rewind`).
    pub async fn rewind(
        &self,
        to: LogPosition,
        history: Vec<EpochStart>,
        messages: Vec<MessageRecord>,
        absent: Vec<QueueId>,
        bodies: Vec<BodyWriter>,
    ) -> Result<(), SpoolError> {
        self.submit_with(bodies, |done| commit::Request::Rewind {
            to,
            history,
            messages,
            absent,
            done,
        })
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
        match self.db()?.get(keys::log(seq))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Bytes of the log records `from..=to` and of the bodies they accept: what a standby that
    /// lacks them has to receive.
    pub fn log_bytes(&self, from: u64, to: u64) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        db.range(keys::log(from)..=keys::log(to))
            .filter_map(Result::ok)
            .map(|(_, value)| {
                let body = match postcard::from_bytes::<LogRecord>(&value) {
                    Ok(LogRecord { change: Change::Accepted(envelope), .. }) => envelope.size,
                    _ => 0,
                };
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
        match self.db()?.get(keys::RESUMED)? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A snapshot was begun and not finished: the spool is partial.
    pub fn snapshot_incomplete(&self) -> Result<bool, SpoolError> {
        Ok(self.db()?.contains_key(keys::SNAPSHOT_INCOMPLETE)?)
    }

    /// Drops log records below `seq`, always keeping the newest one. Housekeeping, not a
    /// change: what a standby may still need is the caller's to judge.
    pub fn trim_log(&self, seq: u64) -> Result<usize, SpoolError> {
        let newest = self.last_position().seq;
        let mut removed = 0;
        let db = self.db()?;
        for key in db.range(keys::log(0)..keys::log(seq.min(newest))).keys() {
            db.remove(key?)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Starts `epoch`: an `EpochStarted` record, durable before this returns.
    pub async fn begin_epoch(&self, epoch: u64) -> Result<LogPosition, SpoolError> {
        self.submit(|done| commit::Request::BeginEpoch(epoch, done)).await
    }

    /// The role this node last persisted, if any.
    pub fn persisted_role(&self) -> Result<Option<Role>, SpoolError> {
        match self.db()?.get(keys::ROLE)? {
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
        self.submit(|done| commit::Request::State { key: keys::ROLE, value, done })
            .await
            .map(|_| ())
    }

    /// The highest epoch this node has persisted as seen (0 when none was).
    pub fn highest_epoch(&self) -> Result<u64, SpoolError> {
        match self.db()?.get(keys::HIGHEST_EPOCH)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
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
        self.submit(|done| commit::Request::State { key: keys::HIGHEST_EPOCH, value, done })
            .await
            .map(|_| ())
    }

    /// Makes sure the log has an epoch, starting epoch 1 on a fresh spool, and returns the
    /// current one. The epoch is durable before this returns, so it is never used unpersisted.
    pub async fn ensure_epoch(&self) -> Result<u64, SpoolError> {
        if let Some(current) = self.epoch_history()?.last() {
            return Ok(current.epoch);
        }
        let position = self.submit(|done| commit::Request::BeginEpoch(1, done)).await?;
        Ok(position.epoch)
    }

    pub fn epoch_history(&self) -> Result<Vec<EpochStart>, SpoolError> {
        match self.db()?.get(keys::EPOCH_HISTORY)? {
            Some(bytes) => Ok(postcard::from_bytes(&bytes)?),
            None => Ok(Vec::new()),
        }
    }

    pub fn get(&self, id: QueueId) -> Result<Option<MessageRecord>, SpoolError> {
        match self.db()?.get(keys::message(id))? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every queued message, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = Result<MessageRecord, SpoolError>> + '_ {
        self.scan(|db| db.scan_prefix([keys::MESSAGE]))
            .map(|entry| Ok(postcard::from_bytes(&entry?.1)?))
    }

    /// The body of a queued message, chunk by chunk.
    pub fn body(&self, id: QueueId) -> BodyChunks {
        BodyChunks::new(self.scan(|db| db.scan_prefix(keys::body_prefix(id))))
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
        self.scan(|db| db.range(keys::log(from_seq)..=keys::log(u64::MAX))).map(|entry| {
            let (_, value) = entry?;
            Ok((postcard::from_bytes(&value)?, value.len()))
        })
    }

    /// How many group commits were made durable since the spool was opened: one flush and
    /// one fdatasync each, however many changes they carried.
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

    /// Syncs everything written so far (used at shutdown).
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.db()?.flush()?;
        File::open(self.dir().join("db"))?.sync_data()?;
        Ok(())
    }

    fn nudge_committer(&self) {
        self.inner.committer.nudge();
    }

    /// The open tree, or an error while it is being reopened after a failed write.
    fn db(&self) -> Result<Arc<sled::Db>, SpoolError> {
        self.inner.store.db()
    }

    /// The open tree if it is still the one of `generation` (see [`Store::generation`]).
    fn db_of(&self, generation: u64) -> Result<Arc<sled::Db>, SpoolError> {
        self.inner.store.db_of(generation)
    }

    /// An iteration over the tree; a single error while the tree is being reopened.
    fn scan(&self, start: impl FnOnce(&sled::Db) -> sled::Iter) -> Scan {
        match self.db() {
            Ok(db) => Scan::Entries(Box::new(start(&db))),
            Err(e) => Scan::Failed(Some(e)),
        }
    }

    /// Submits a request whose records accept `bodies`: their last chunks are written first,
    /// and they are marked committed (kept) once the request is durable.
    async fn submit_with(
        &self,
        mut bodies: Vec<BodyWriter>,
        request: impl FnOnce(commit::Reply) -> commit::Request,
    ) -> Result<LogPosition, SpoolError> {
        for body in &mut bodies {
            body.finish()?;
        }
        // The committer refuses the request if the tree was reopened since the oldest of these
        // bodies was begun: chunks written to the closed tree may be lost.
        let generation = bodies.iter().map(BodyWriter::generation).min();
        let (done, result) = oneshot::channel();
        self.inner.committer.send(generation, request(done)).await?;
        let position = result.await.map_err(|_| SpoolError::closed())??;
        for body in &mut bodies {
            body.mark_committed();
        }
        Ok(position)
    }

    async fn submit(
        &self,
        request: impl FnOnce(commit::Reply) -> commit::Request,
    ) -> Result<LogPosition, SpoolError> {
        let (done, result) = oneshot::channel();
        self.inner.committer.send(None, request(done)).await?;
        result.await.map_err(|_| SpoolError::closed())?
    }

    fn remove_body(&self, id: QueueId) -> Result<(), SpoolError> {
        remove_body(&*self.db()?, id)
    }
}

/// How long `open` waits for sled's lock from a spool closed a moment ago.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled in `dir` (the spool directory) and reads where its log ends. A lock held by
/// another open tree is [`ErrorKind::Locked`].
pub(super) fn open_db(dir: &Path) -> Result<Opened, SpoolError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_CAPACITY)
        .segment_size(SEGMENT_SIZE)
        // Durability is ours to schedule: the committer flushes and syncs.
        .flush_every_ms(None);
    let db = match config.open() {
        // sled reports the lock as an `Other` error with this text.
        Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
            return Err(SpoolError::new(ErrorKind::Locked, e.to_string()));
        }
        other => other?,
    };
    let data_file = File::open(dir.join("db"))?;
    let history = match db.get(keys::EPOCH_HISTORY)? {
        Some(bytes) => postcard::from_bytes(&bytes)?,
        None => Vec::new(),
    };
    // The log's last record, or where a snapshot left the log, whichever is later.
    let logged: LogPosition = match db.scan_prefix([keys::LOG]).next_back() {
        Some(entry) => postcard::from_bytes::<LogRecord>(&entry?.1)?.position,
        None => LogPosition::default(),
    };
    let resumed: LogPosition = match db.get(keys::RESUMED)? {
        Some(bytes) => postcard::from_bytes(&bytes)?,
        None => LogPosition::default(),
    };
    let last = logged.max(resumed);
    let tail = commit::LogTail { next_seq: last.seq + 1, history };
    let queued = i64::try_from(db.scan_prefix([keys::MESSAGE]).count()).unwrap_or(i64::MAX);
    Ok(Opened { db, data_file, tail, last, queued })
}

/// Bytes free for an unprivileged writer on the file system that holds `path` (statvfs).
fn free_space(path: &Path) -> Result<u64, SpoolError> {
    let stat = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn remove_body(db: &sled::Db, id: QueueId) -> Result<(), SpoolError> {
    for key in db.scan_prefix(keys::body_prefix(id)).keys() {
        db.remove(key?)?;
    }
    Ok(())
}

/// Removes body chunks that belong to no message record; returns how many bodies.
pub(super) fn remove_orphan_bodies(db: &sled::Db) -> Result<usize, SpoolError> {
    let mut orphans = Vec::new();
    let mut last: Option<QueueId> = None;
    for key in db.scan_prefix([keys::BODY]).keys() {
        let id = keys::id_of(&key?).ok_or_else(|| SpoolError::corrupt("body key"))?;
        if last != Some(id) {
            last = Some(id);
            if !db.contains_key(keys::message(id))? {
                orphans.push(id);
            }
        }
    }
    for id in &orphans {
        remove_body(db, *id)?;
    }
    Ok(orphans.len())
}

/// Entries of the tree, or the one error that the tree is closed. (sled's iterator is large;
/// boxed, a scan costs one allocation.)
enum Scan {
    Entries(Box<sled::Iter>),
    Failed(Option<SpoolError>),
}

impl Iterator for Scan {
    type Item = Result<(sled::IVec, sled::IVec), SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Scan::Entries(entries) => entries.next().map(|entry| entry.map_err(SpoolError::from)),
            Scan::Failed(error) => error.take().map(Err),
        }
    }
}

#[cfg(test)]
mod tests;
