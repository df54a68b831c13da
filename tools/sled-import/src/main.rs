//! `relayd-sled-import DATA_DIR`: imports the spool of a sled-based relayd (its sled files in
//! `DATA_DIR/spool`) into a new spool of the format relayd reads now, through relayd's own
//! import API. The old files are kept in `DATA_DIR/spool.sled`. Run it with relayd stopped.
//!
//! The old layout, one sled tree keyed by prefix (big-endian numbers): `b` + queue id + chunk
//! index → body bytes; `m` + queue id → `MessageRecord`; `l` + sequence → `LogRecord`;
//! `s` + name → node state (`sepochs` the epoch history, `sresumed` where a snapshot left the
//! log, `ssnapshot` a snapshot being installed, `srole` the role as text). Values are
//! postcard, of the same types relayd stores now.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use relayd::config::Role;
use relayd::spool::import::{Import, Imported};
use relayd::spool::{EpochStart, LogPosition, LogRecord, MessageRecord, SpoolError};

/// The sled segment size the old relayd created its spool with (sled refuses another).
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;
/// Log records per commit of the import.
const LOG_BATCH: usize = 1024;

#[derive(Debug)]
enum Error {
    Usage,
    NotSled(PathBuf),
    Sled(sled::Error),
    Decode(&'static str, postcard::Error),
    Role(String),
    Spool(SpoolError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage => f.write_str("usage: relayd-sled-import DATA_DIR (relayd stopped)"),
            Error::NotSled(dir) => {
                write!(f, "{} holds no sled spool (no `conf` file)", dir.display())
            }
            Error::Sled(e) => write!(f, "reading the sled spool: {e}"),
            Error::Decode(what, e) => write!(f, "a stored {what} does not decode: {e}"),
            Error::Role(text) => write!(f, "the stored role {text:?} is not a role"),
            Error::Spool(e) => write!(f, "writing the new spool: {e}"),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Error {
        Error::Sled(e)
    }
}

impl From<SpoolError> for Error {
    fn from(e: SpoolError) -> Error {
        Error::Spool(e)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [dir] if dir != "--help" && dir != "-h" => import(Path::new(dir)),
        _ => Err(Error::Usage),
    };
    match result {
        Ok((imported, messages, records)) => {
            println!(
                "imported {messages} messages and {records} log records into {}; the old spool is kept in {}",
                imported.spool.display(),
                imported.kept.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ Error::Usage) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("relayd-sled-import: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The import; what it made, and how many messages and log records it carried over.
fn import(data_dir: &Path) -> Result<(Imported, usize, usize), Error> {
    let dir = data_dir.join("spool");
    if !dir.join("conf").exists() {
        return Err(Error::NotSled(dir));
    }
    let db = sled::Config::new().path(&dir).segment_size(SEGMENT_SIZE).open()?;
    let mut import = Import::begin(data_dir)?;
    let mut messages = 0;
    for entry in db.scan_prefix(b"m") {
        let (_, value) = entry?;
        let message: MessageRecord =
            postcard::from_bytes(&value).map_err(|e| Error::Decode("message", e))?;
        let mut prefix = vec![b'b'];
        prefix.extend_from_slice(&message.envelope.id.to_bytes());
        let body = db.scan_prefix(prefix).map(|chunk| chunk.map(|(_, bytes)| bytes));
        import.message(&message, body)?;
        messages += 1;
    }
    let mut records = 0;
    let mut batch = Vec::with_capacity(LOG_BATCH);
    for entry in db.scan_prefix(b"l") {
        let (_, value) = entry?;
        batch.push(
            postcard::from_bytes::<LogRecord>(&value)
                .map_err(|e| Error::Decode("log record", e))?,
        );
        if batch.len() == LOG_BATCH {
            import.log(&batch)?;
            records += batch.len();
            batch.clear();
        }
    }
    import.log(&batch)?;
    records += batch.len();
    let history: Vec<EpochStart> = match db.get(b"sepochs")? {
        Some(bytes) => {
            postcard::from_bytes(&bytes).map_err(|e| Error::Decode("epoch history", e))?
        }
        None => Vec::new(),
    };
    let resumed: Option<LogPosition> = match db.get(b"sresumed")? {
        Some(bytes) => {
            Some(postcard::from_bytes(&bytes).map_err(|e| Error::Decode("snapshot point", e))?)
        }
        None => None,
    };
    let snapshot_incomplete = db.contains_key(b"ssnapshot")?;
    let role: Option<Role> = match db.get(b"srole")? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Some(text.parse().map_err(|_| Error::Role(text))?)
        }
        None => None,
    };
    import.state(&history, resumed, snapshot_incomplete, role)?;
    // sled's lock and files go before its directory is renamed.
    drop(db);
    Ok((import.finish()?, messages, records))
}
