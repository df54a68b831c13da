//! The layout of the spool's redb file, `data_dir/spool/spool.redb`.
//!
//! One file, so that one write transaction changes a message, appends its log record and
//! holds its body chunks atomically. Keys are numbers (redb orders them numerically): body
//! chunks iterate by index, log records by sequence, messages by queue id (arrival order).
//!
//! | table       | key                         | value                                  |
//! |-------------|-----------------------------|----------------------------------------|
//! | `meta`      | name                        | the spool format ([`FORMAT`])          |
//! | `state`     | name                        | node state: epoch history, role, ...   |
//! | `messages`  | queue id                    | [`MessageRecord`](super::MessageRecord) (postcard) |
//! | `log`       | sequence                    | [`LogRecord`](super::LogRecord) (postcard) |
//! | `bodies`    | (queue id, chunk index)     | up to [`CHUNK_SIZE`] body bytes        |
//! | `receiving` | queue id                    | nothing: a body begun, not yet committed |
//! | `marks`     | sequence                    | (Unix ms, log bytes through it): [`super::retention`] |
//! | `dsn`       | queue id                    | [`Dsn`](super::Dsn) (postcard): only for a message accepted with DSN parameters |
//! | `epoch_notes` | epoch                     | [`EpochNote`](super::EpochNote) (postcard): who began it, why |
//! | `held`      | queue id                    | Unix ms: an operator held the message then |

use redb::TableDefinition;

/// The format of the spool: the tables above and their encodings. Stored under [`FORMAT_KEY`]
/// in `meta` when the file is created and checked at every open; a change that an older relayd
/// could not read takes a new number (and an import path). Format 2 added `marks`; format 3
/// (relayd 0.2.0) `dsn`, `epoch_notes` and `held`. An older spool is migrated at open: its log
/// marked as of the open, the new tables created empty by the open's transaction (its epochs
/// have no notes, none of its messages is held).
pub const FORMAT: u64 = 3;
/// The format before `marks`: migrated at open.
pub const FORMAT_WITHOUT_MARKS: u64 = 1;
/// The format of relayd 0.1.0, before `dsn`, `epoch_notes` and `held`: migrated at open.
pub const FORMAT_0_1_0: u64 = 2;
pub const FORMAT_KEY: &str = "format";

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
pub const MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const BODIES: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("bodies");
pub const RECEIVING: TableDefinition<u128, ()> = TableDefinition::new("receiving");
/// The log's marks: at a record's sequence number, when it was committed (Unix ms) and the
/// bytes of log records written up to and with it (a running total: differences count).
pub const MARKS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("marks");
/// The DSN request of each message accepted with DSN parameters (RFC 3461), and which of its
/// delay reports went; a message without them has no entry, so costs nothing here.
pub const DSN: TableDefinition<u128, &[u8]> = TableDefinition::new("dsn");
/// Who began each epoch, when and why, by epoch (`Change::EpochNoted`).
pub const EPOCH_NOTES: TableDefinition<u64, &[u8]> = TableDefinition::new("epoch_notes");
/// The messages an operator holds (never delivered nor expired until released): since when,
/// in Unix ms, as the primary's `Held` record says. Derived from the log like `messages`.
pub const HELD: TableDefinition<u128, u64> = TableDefinition::new("held");

/// Body chunk size: what a session buffers before handing a chunk to the committer. redb
/// gives an entry larger than a page a page of the next power of two: a chunk of exactly
/// 32 KiB, with its key and the leaf's header, would take 64 KiB. So a chunk leaves room for
/// them in 32 KiB.
pub const CHUNK_SIZE: usize = 32 * 1024 - PAGE_SLACK;
/// The most bytes of a body's tail chunk: what is left once the full chunks are cut is stored
/// in pieces that each fit a 4 KiB page with their key (a 20 KB tail in five 4 KiB pages, not
/// in one entry of a 32 KiB page).
pub const TAIL_PIECE: usize = 4 * 1024 - PAGE_SLACK;
/// Room left in a page for an entry's key and the leaf's header (redb: 4 bytes of header, two
/// 4-byte offsets, a 20-byte key).
const PAGE_SLACK: usize = 64;

/// In `state`: the epoch history, a list of [`EpochStart`](super::EpochStart).
pub const EPOCH_HISTORY: &str = "epochs";
/// In `state`: where a snapshot left the log (a [`LogPosition`](super::LogPosition)), for a
/// log that holds no record after it yet.
pub const RESUMED: &str = "resumed";
/// In `state`: present while a snapshot is being installed (a node in that state holds a
/// partial spool and must not be promoted).
pub const SNAPSHOT_INCOMPLETE: &str = "snapshot";
/// In `state`: the role this node last held ("primary" or "standby").
pub const ROLE: &str = "role";
/// In `state`: the highest epoch this node has seen anywhere (its own, its peer's, the
/// witness's grants), a big-endian u64: a new epoch it claims is above it.
pub const HIGHEST_EPOCH: &str = "highest";

/// In `state`: one byte, 1 while an operator has paused automatic failover, 0 (or absent)
/// otherwise: written by `Change::FailoverPaused`, or by `relayd failover pause` on a standby.
pub const FAILOVER_PAUSED: &str = "failover_paused";

/// The key range of one message's body chunks.
pub fn body_range(id: u128) -> std::ops::RangeInclusive<(u128, u32)> {
    (id, 0)..=(id, u32::MAX)
}
