//! Opening the spool file: redb's settings, the format check (formats 1 and 2 migrated), a
//! sled-based relayd's spool refused with the command that imports it, a damaged file refused
//! with what to do, and the bodies of messages never committed removed.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::commit::LogTail;
use super::record::{LogPosition, LogRecord};
use super::{CACHE_SIZE, ErrorKind, Opened, SpoolError, tables};

/// Creates `dir` and whatever ancestors it lacks, each made durable: a new directory's entry
/// lives in its parent, and is lost at a power cut until that parent is fsynced (the spool and
/// the witness's grants would go with it, acknowledged or not).
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|at| !at.as_os_str().is_empty() && !at.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The command that imports a sled-based relayd's spool (tools/sled-import).
pub const SLED_IMPORT: &str = "relayd-sled-import";

/// The sled-based relayd kept its spool in `data_dir/spool` as sled's own files: refuse to
/// start beside them (a new, empty spool would hide the queue they hold).
pub(super) fn refuse_sled(data_dir: &Path, dir: &Path) -> Result<(), SpoolError> {
    let sled = ["conf", "db"].iter().any(|name| dir.join(name).exists());
    if sled && !dir.join(super::FILE_NAME).exists() {
        return Err(SpoolError::new(
            ErrorKind::Format,
            format!(
                "{} holds a spool of the sled-based relayd (spool format 0; this relayd reads \
                 format {}): import it with `{SLED_IMPORT} {}` (tools/sled-import), which \
                 keeps the old files in {}, then start relayd again",
                dir.display(),
                tables::FORMAT,
                data_dir.display(),
                data_dir.join("spool.sled").display(),
            ),
        ));
    }
    Ok(())
}

/// redb's settings for the spool file.
pub(super) fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    let said = std::sync::atomic::AtomicBool::new(false);
    builder
        .set_cache_size(CACHE_SIZE)
        // A file changed behind redb's back (a damaged disk, a bad copy) fails to open with an
        // error instead of being trusted; the cost is a read of the whole file at each start.
        .set_check_integrity_on_open(true)
        .set_repair_callback(move |_| {
            // Called as the check (or the repair after a crash) goes; once is enough to say
            // why a start over a large spool takes a while.
            if !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("checking the spool file");
            }
        });
    builder
}

/// Opens (or creates) the spool file at `path`.
pub(super) fn open_file(path: &Path) -> Result<Opened, SpoolError> {
    let db = guarded(|| builder().create(path)).map_err(|e| explain(path, e))?;
    prepare(db).map_err(|e| explain(path, e))
}

/// A spool file smaller than this is never compacted at start: what it could give back is
/// not worth the start's time.
pub(super) const COMPACT_FROM: u64 = 32 * 1024 * 1024;

/// Opens (or creates) the spool file at a start, when nothing else uses it: a file of at least
/// [`COMPACT_FROM`] bytes more than half free is compacted first (redb's `compact` needs the
/// database to itself: no reader, no writer, which only a start can promise; a running spool
/// reuses its free pages instead). A compaction that fails is said and skipped: the file is
/// opened again as it is.
pub(super) fn open_at_start(path: &Path) -> Result<Opened, SpoolError> {
    let mut opened = open_file(path)?;
    match compact(&mut opened.db, path) {
        Ok(None) => Ok(opened),
        Ok(Some((before, after))) => {
            tracing::info!(before, after, "spool file compacted");
            Ok(opened)
        }
        Err(e) => {
            tracing::warn!(error = %e, "spool file not compacted");
            drop(opened);
            open_file(path)
        }
    }
}

/// Compacts the file at `path` if it is large and mostly free: its sizes before and after.
fn compact(db: &mut Database, path: &Path) -> Result<Option<(u64, u64)>, SpoolError> {
    let before = std::fs::metadata(path)?.len();
    if before < COMPACT_FROM {
        return Ok(None);
    }
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    let used = stats.allocated_pages().saturating_mul(stats.page_size() as u64);
    if used.saturating_mul(2) > before {
        return Ok(None);
    }
    db.compact().map_err(|e| SpoolError::new(ErrorKind::Io, format!("compaction: {e}")))?;
    Ok(Some((before, std::fs::metadata(path)?.len())))
}

/// Opens (or creates) a spool on a storage backend of the tests' making.
#[cfg(test)]
pub(super) fn open_backend(backend: impl redb::StorageBackend) -> Result<Opened, SpoolError> {
    prepare(guarded(|| builder().create_with_backend(backend))?)
}

/// Runs redb's open, turning a panic inside it (a file redb cannot make sense of) into an
/// error, so that a damaged spool is reported, not a crash.
fn guarded(
    open: impl FnOnce() -> Result<Database, redb::DatabaseError>,
) -> Result<Database, SpoolError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)) {
        // redb's word for a file that is not a redb database at all (its header overwritten).
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(SpoolError::corrupt(e))
        }
        Ok(opened) => Ok(opened?),
        Err(_) => Err(SpoolError::corrupt("the storage engine could not read it")),
    }
}

/// A file redb cannot read is damaged: say which, and what the operator can do.
fn explain(path: &Path, error: SpoolError) -> SpoolError {
    if error.kind != ErrorKind::Corrupt {
        return error;
    }
    let path = path.display();
    SpoolError::new(
        ErrorKind::Corrupt,
        format!(
            "the spool file {path} is damaged and cannot be read ({error}). \
             On a standby: move it aside (`mv {path} {path}.damaged`) and start relayd, which \
             then starts with an empty spool and takes a snapshot from the primary. On a lone \
             primary, the file is the only copy of its queue: keep it for recovery (`mv {path} \
             {path}.damaged`); relayd then starts with an empty spool, so do that only once \
             you have chosen to go on without what the file held"
        ),
    )
}

/// Checks (or, on a new file, writes) the format, creates the tables, removes the bodies of
/// messages never committed, and reads where the log ends.
fn prepare(db: Database) -> Result<Opened, SpoolError> {
    let mut txn = db.begin_write()?;
    super::commit::make_durable(&mut txn)?;
    let fresh = txn.list_tables()?.next().is_none();
    let opened = {
        let mut meta = txn.open_table(tables::META)?;
        let format = meta.get(tables::FORMAT_KEY)?.map(|format| format.value());
        match format {
            Some(tables::FORMAT) => {}
            None if fresh => {
                meta.insert(tables::FORMAT_KEY, tables::FORMAT)?;
            }
            // Format 1 lacks the log's marks: the seal below marks its whole log as of now (its
            // records then count as this young: kept longer, never shorter). Formats 1 and 2
            // lack the `dsn`, `epoch_notes` and `held` tables, which the staging below creates
            // empty: no message of theirs was accepted with DSN parameters or held, and their
            // epochs have no notes.
            Some(from @ (tables::FORMAT_WITHOUT_MARKS | tables::FORMAT_0_1_0)) => {
                meta.insert(tables::FORMAT_KEY, tables::FORMAT)?;
                tracing::info!(from, to = tables::FORMAT, "spool format migrated");
            }
            None => return Err(SpoolError::corrupt("the file holds no spool format")),
            Some(other) => {
                return Err(SpoolError::new(
                    ErrorKind::Format,
                    format!(
                        "the spool is of format {other}, written by a newer relayd; this one \
                         reads format {}: run the relayd that wrote it (a spool is never \
                         migrated to an older format)",
                        tables::FORMAT
                    ),
                ));
            }
        }
        let mut staging = super::commit::Staging::open(&txn, Vec::new())?;
        let orphans = staging.remove_orphans()?;
        // A log written without marks (format 1, an import) gets its mark here.
        staging.seal(super::now_ms())?;
        drop(staging);
        read_tail(&txn, orphans)?
    };
    txn.commit()?;
    Ok(opened.with(db))
}

/// Where the log ends, the epoch history, and how many messages are queued.
fn read_tail(txn: &redb::WriteTransaction, orphans: usize) -> Result<TailRead, SpoolError> {
    let state = txn.open_table(tables::STATE)?;
    let history = match state.get(tables::EPOCH_HISTORY)? {
        Some(bytes) => postcard::from_bytes(bytes.value())?,
        None => Vec::new(),
    };
    // The log's last record, or where a snapshot left the log, whichever is later.
    let logged = match txn.open_table(tables::LOG)?.last()? {
        Some((_, bytes)) => postcard::from_bytes::<LogRecord>(bytes.value())?.position,
        None => LogPosition::default(),
    };
    let resumed: LogPosition = match state.get(tables::RESUMED)? {
        Some(bytes) => postcard::from_bytes(bytes.value())?,
        None => LogPosition::default(),
    };
    let last = logged.max(resumed);
    let queued = txn.open_table(tables::MESSAGES)?.len()?;
    Ok(TailRead {
        tail: LogTail { next_seq: last.seq + 1, history },
        last,
        queued: i64::try_from(queued).unwrap_or(i64::MAX),
        orphans,
    })
}

/// What [`read_tail`] found.
struct TailRead {
    tail: LogTail,
    last: LogPosition,
    queued: i64,
    orphans: usize,
}

impl TailRead {
    fn with(self, db: Database) -> Opened {
        Opened { db, tail: self.tail, last: self.last, queued: self.queued, orphans: self.orphans }
    }
}
