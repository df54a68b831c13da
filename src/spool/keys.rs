//! The key layout of the spool's single sled tree.
//!
//! One tree, so that one `apply_batch` changes a message and appends its log record
//! atomically (sled batches are atomic within a tree, not across trees). Big-endian numbers
//! keep each prefix in order: body chunks by index, log records by sequence.
//!
//! | prefix | key                         | value                       |
//! |--------|-----------------------------|-----------------------------|
//! | `b`    | queue id, chunk index (u32) | up to [`CHUNK_SIZE`] body bytes |
//! | `m`    | queue id                    | [`MessageRecord`](super::MessageRecord) |
//! | `l`    | sequence (u64)              | [`LogRecord`](super::LogRecord) |
//! | `s`    | state name                  | node state (the epoch history)  |

use super::QueueId;

pub const BODY: u8 = b'b';
pub const MESSAGE: u8 = b'm';
pub const LOG: u8 = b'l';

/// Body chunk size. Far below sled's inline-value limit (a quarter of its segment size), so
/// that sled never writes a value to a separate blob file that our fdatasync would miss.
pub const CHUNK_SIZE: usize = 32 * 1024;

/// Under the `s` prefix: the epoch history, a list of [`EpochStart`](super::EpochStart).
pub const EPOCH_HISTORY: &[u8] = b"sepochs";
/// Under the `s` prefix: where a snapshot left the log (a [`LogPosition`](super::LogPosition)),
/// for a log that holds no record after it yet.
pub const RESUMED: &[u8] = b"sresumed";
/// Under the `s` prefix: present while a snapshot is being installed (a node in that state
/// holds a partial spool and must not be promoted).
pub const SNAPSHOT_INCOMPLETE: &[u8] = b"ssnapshot";
/// Under the `s` prefix: the role this node last held ("primary" or "standby").
pub const ROLE: &[u8] = b"srole";
/// Under the `s` prefix: the highest epoch this node has seen anywhere (its own, its peer's,
/// the witness's grants), a big-endian u64: a new epoch it claims is above it.
pub const HIGHEST_EPOCH: &[u8] = b"shighest";

pub fn body_chunk(id: QueueId, index: u32) -> [u8; 21] {
    let mut key = [0u8; 21];
    key[0] = BODY;
    key[1..17].copy_from_slice(&id.to_bytes());
    key[17..].copy_from_slice(&index.to_be_bytes());
    key
}

pub fn body_prefix(id: QueueId) -> [u8; 17] {
    prefixed_id(BODY, id)
}

pub fn message(id: QueueId) -> [u8; 17] {
    prefixed_id(MESSAGE, id)
}

pub fn log(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LOG;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The queue id in a `b` or `m` key.
pub fn id_of(key: &[u8]) -> Option<QueueId> {
    let bytes: [u8; 16] = key.get(1..17)?.try_into().ok()?;
    Some(QueueId::from_bytes(bytes))
}

fn prefixed_id(prefix: u8, id: QueueId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = prefix;
    key[1..].copy_from_slice(&id.to_bytes());
    key
}
