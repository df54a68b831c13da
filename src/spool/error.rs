//! Spool errors, classified by what the SMTP layer must answer.

use std::fmt;

/// Why the spool could not do what was asked. Cloneable, because one failed group commit
/// answers every session that was waiting on it.
#[derive(Clone, Debug)]
pub struct SpoolError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The disk is full: senders get 452 4.3.1 and retry later.
    NoSpace,
    /// Any other I/O or storage failure.
    Io,
    /// A stored record does not decode: the spool was damaged or written by another version.
    Corrupt,
    /// The spool is shutting down.
    Closed,
    /// This node is not the primary: it does not write its own records.
    ReadOnly,
    /// The spool's files are locked by another open spool (another process, or the file
    /// closed after a failed write that someone still reads).
    Locked,
    /// The spool is of another format (a newer relayd's, or the sled-based relayd's): it must
    /// be migrated with the command the message names.
    Format,
}

impl SpoolError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> SpoolError {
        SpoolError { kind, message: message.into() }
    }

    pub fn corrupt(what: impl fmt::Display) -> SpoolError {
        SpoolError::new(ErrorKind::Corrupt, what.to_string())
    }

    pub fn closed() -> SpoolError {
        SpoolError::new(ErrorKind::Closed, "the spool is shutting down")
    }

    /// The spool file is closed after a failed write and not reopened yet. Counted as a full disk,
    /// the usual cause, so that mail gets `452 4.3.1`.
    pub fn reopening() -> SpoolError {
        SpoolError::new(
            ErrorKind::NoSpace,
            "the spool is closed after a failed write; it reopens once the disk has room",
        )
    }

    /// Whether the storage itself failed (the file must be reopened), as opposed to a refused
    /// request or a record that does not decode.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, ErrorKind::NoSpace | ErrorKind::Io)
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpoolError {}

impl From<std::io::Error> for SpoolError {
    fn from(e: std::io::Error) -> SpoolError {
        let kind = if e.kind() == std::io::ErrorKind::StorageFull {
            ErrorKind::NoSpace
        } else {
            ErrorKind::Io
        };
        SpoolError::new(kind, e.to_string())
    }
}

impl From<redb::Error> for SpoolError {
    fn from(e: redb::Error) -> SpoolError {
        match e {
            redb::Error::Io(io) => io.into(),
            redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => SpoolError::corrupt(e),
            redb::Error::DatabaseAlreadyOpen => SpoolError::new(ErrorKind::Locked, e.to_string()),
            // redb refuses every call after a failed write until the file is opened again.
            other => SpoolError::new(ErrorKind::Io, other.to_string()),
        }
    }
}

/// redb's operations each have their own error type; all of them convert into `redb::Error`.
macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for SpoolError {
            fn from(e: $error) -> SpoolError {
                redb::Error::from(e).into()
            }
        })*
    };
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<postcard::Error> for SpoolError {
    fn from(e: postcard::Error) -> SpoolError {
        SpoolError::corrupt(format!("record encoding: {e}"))
    }
}
