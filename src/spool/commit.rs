//! Group commit: the one writer of the change log.
//!
//! Sessions hand their changes to a dedicated thread. It takes every request waiting, stages
//! them in one sled batch (assigning consecutive sequence numbers), applies the batch, then
//! makes it durable with `flush()` followed by our own `fdatasync` of sled's data file. sled's
//! flush alone calls `sync_file_range`, which neither flushes the device's cache nor commits
//! file-size metadata; the fdatasync does both. While one fsync runs, new requests queue up and
//! share the next one, so the fsync rate stays bounded however many sessions commit.
//!
//! Invariant: the log's sequence numbers are assigned here and only here, in commit order.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::SpoolError;
use super::keys;
use super::record::{Change, EpochStart, LogPosition, LogRecord, MessageRecord, RecipientState};

/// At most this many changes share one batch, to bound the batch's memory.
const MAX_BATCH: usize = 1024;

pub(super) enum Request {
    /// Append a change in the current epoch.
    Append(Change, oneshot::Sender<Result<LogPosition, SpoolError>>),
    /// Start a new epoch (persisted and synced before the caller may use it).
    BeginEpoch(u64, oneshot::Sender<Result<LogPosition, SpoolError>>),
}

/// The log's tail, owned by the committer thread.
pub(super) struct LogTail {
    pub next_seq: u64,
    pub history: Vec<EpochStart>,
}

impl LogTail {
    fn epoch(&self) -> u64 {
        self.history.last().map_or(0, |e| e.epoch)
    }
}

/// The handle on the committer thread. Dropping it lets the thread finish the requests it
/// has and exit, and waits for that, so that the spool's files are closed when it returns.
pub(super) struct Committer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Group commits made durable so far (each one flush and one fdatasync).
    syncs: Arc<AtomicU64>,
}

impl Committer {
    pub(super) fn spawn(
        db: sled::Db,
        data_file: File,
        tail: LogTail,
    ) -> std::io::Result<Committer> {
        let (requests, rx) = mpsc::channel(MAX_BATCH);
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || run(db, data_file, tail, rx, &counter))?;
        Ok(Committer { requests: Some(requests), thread: Some(thread), syncs })
    }

    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(super) async fn send(&self, request: Request) -> Result<(), SpoolError> {
        let requests = self.requests.as_ref().ok_or_else(SpoolError::closed)?;
        requests.send(request).await.map_err(|_| SpoolError::closed())
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
    db: sled::Db,
    data_file: File,
    mut tail: LogTail,
    mut rx: mpsc::Receiver<Request>,
    syncs: &AtomicU64,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut requests = vec![first];
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        let mut batch = sled::Batch::default();
        let mut staged = LogTail { next_seq: tail.next_seq, history: tail.history.clone() };
        let mut waiting = Vec::with_capacity(requests.len());
        let mut staging = Ok(());
        for request in requests {
            let (epoch, change, done) = match request {
                Request::Append(change, done) => (staged.epoch(), change, done),
                Request::BeginEpoch(epoch, done) => (epoch, Change::EpochStarted, done),
            };
            let record =
                LogRecord { position: LogPosition { epoch, seq: staged.next_seq }, change };
            if staging.is_ok() {
                staging = stage(&mut batch, &mut staged.history, &record);
            }
            staged.next_seq += 1;
            waiting.push((done, record.position));
        }
        let result = staging.and_then(|()| {
            db.apply_batch(batch)?;
            // From here the records are in the tree: their sequence numbers are used even if
            // the sync below fails (the sessions then answer 4xx; a retry may duplicate, never lose).
            tail = staged;
            db.flush()?;
            data_file.sync_data()?;
            syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        for (done, position) in waiting {
            // A session that gave up waiting (its client went away) no longer listens.
            let _ = done.send(result.clone().map(|()| position));
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "spool commit failed");
        }
    }
}

/// Stages one log record and the state change it describes into `batch`. The primary's
/// committer and (later) a standby applying a replicated record go through this one function,
/// so that both derive the same state from the same log.
pub(super) fn stage(
    batch: &mut sled::Batch,
    history: &mut Vec<EpochStart>,
    record: &LogRecord,
) -> Result<(), SpoolError> {
    match &record.change {
        Change::EpochStarted => {
            history
                .push(EpochStart { epoch: record.position.epoch, first_seq: record.position.seq });
            batch.insert(keys::EPOCH_HISTORY, postcard::to_stdvec(history)?);
        }
        Change::Accepted(envelope) => {
            let message = MessageRecord {
                recipients: vec![RecipientState::Pending; envelope.recipients.len()],
                envelope: envelope.clone(),
                accepted_at: record.position,
            };
            batch.insert(&keys::message(envelope.id)[..], postcard::to_stdvec(&message)?);
        }
    }
    batch.insert(&keys::log(record.position.seq)[..], postcard::to_stdvec(record)?);
    Ok(())
}
