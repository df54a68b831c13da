//! What the spool stores: message records and the ordered change log.
//!
//! Every change to the spool is a [`LogRecord`] carrying `(epoch, seq)`, written in the same
//! atomic batch as the state it changes. The log is what replication ships to a standby and
//! what a rejoining node compares against its peer's epoch history to find the divergence
//! point; the message records are the current state derived from it.

use serde::{Deserialize, Serialize};

use super::QueueId;
use crate::proto::dsn::{MailDsn, RcptDsn, Ret};

/// Now, in Unix milliseconds: the unit of every time the spool stores.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A position in the change log. `seq` grows by one per record and never restarts, across
/// epochs; `epoch` is the epoch of the primary that wrote the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct LogPosition {
    pub epoch: u64,
    pub seq: u64,
}

/// One entry of the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub position: LogPosition,
    pub change: Change,
}

/// A change to the spool. New variants are appended at the end so that stored records keep
/// decoding (postcard encodes the variant index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A primary began a new epoch at this record's sequence number.
    EpochStarted,
    /// A message was accepted: its envelope. Its body chunks were written before this record
    /// and are made durable by the same flush.
    Accepted(Envelope),
    /// A delivery attempt's outcome for some recipients of a message (by index). When no
    /// recipient is left pending, the message leaves the queue with this same record.
    Attempted { id: QueueId, results: Vec<(u32, RecipientState)> },
    /// An operator deleted the message: its record and body are removed.
    Removed { id: QueueId },
    /// A message was accepted with DSN parameters (RFC 3461): its envelope, as `Accepted`, and
    /// its DSN request, which the spool keeps beside the message record (table `dsn`). A
    /// message without them is an `Accepted`, as before. Protocol 2.
    AcceptedWithDsn { envelope: Envelope, dsn: Dsn },
    /// Delay reports went to the sender for these recipients (by index) of a message: none is
    /// sent for them again. Protocol 2.
    DelayReported { id: QueueId, recipients: Vec<u32> },
    /// An operator paused (true) or resumed (false) automatic failover on the primary
    /// (`relayd failover pause|resume`): every node that applies it persists it, so that the
    /// standby, and the node promoted later, keep it. Protocol 2.
    FailoverPaused { paused: bool },
    /// Who began this record's epoch, when and why: committed with the epoch's
    /// `EpochStarted`, in the same batch, right after it. Protocol 2.
    EpochNoted(EpochNote),
    /// An operator held these messages at `since_ms` (Unix ms): none is delivered, nor expired,
    /// until it is released. A message held already keeps its first time; an id no longer
    /// queued is skipped. Protocol 2.
    Held { ids: Vec<QueueId>, since_ms: u64 },
    /// An operator released these held messages: they are delivered again. Protocol 2.
    Released { ids: Vec<QueueId> },
}

impl Change {
    /// The oldest cluster protocol whose nodes decode this change (protocol 1 is relayd
    /// 0.1.0's; `replication::frame` says how the link agrees on one). A variant added later
    /// returns the protocol that added it, and [`Change::for_protocol`] says what an older
    /// peer is sent instead.
    pub fn since_protocol(&self) -> u32 {
        match self {
            Change::EpochStarted
            | Change::Accepted(_)
            | Change::Attempted { .. }
            | Change::Removed { .. } => 1,
            Change::AcceptedWithDsn { .. }
            | Change::DelayReported { .. }
            | Change::FailoverPaused { .. }
            | Change::EpochNoted(_)
            | Change::Held { .. }
            | Change::Released { .. } => 2,
        }
    }

    /// The messages this change is about (none for an epoch's start).
    pub fn messages(&self) -> &[QueueId] {
        match self {
            Change::EpochStarted | Change::FailoverPaused { .. } | Change::EpochNoted(_) => &[],
            Change::Accepted(envelope) | Change::AcceptedWithDsn { envelope, .. } => {
                std::slice::from_ref(&envelope.id)
            }
            Change::Attempted { id, .. }
            | Change::Removed { id }
            | Change::DelayReported { id, .. } => std::slice::from_ref(id),
            Change::Held { ids, .. } | Change::Released { ids } => ids,
        }
    }

    /// The change that accepts `envelope`: with its DSN request when the client gave one.
    pub fn accepted(envelope: Envelope, dsn: Option<Dsn>) -> Change {
        match dsn {
            Some(dsn) => Change::AcceptedWithDsn { envelope, dsn },
            None => Change::Accepted(envelope),
        }
    }

    /// The envelope of a change that accepts a message (whose body comes with it).
    pub fn accepts(&self) -> Option<&Envelope> {
        match self {
            Change::Accepted(envelope) | Change::AcceptedWithDsn { envelope, .. } => Some(envelope),
            _ => None,
        }
    }

    /// What a peer that speaks `protocol` is sent in place of this change: the change itself
    /// when the peer decodes it, else the nearest change it does decode. A stand-in never
    /// takes a pending recipient out of the peer's queue: at worst the peer, promoted, does
    /// what the older release would have done.
    pub fn for_protocol(self, protocol: u32) -> Change {
        if protocol >= self.since_protocol() {
            return self;
        }
        match self {
            // An older node queues the message as one without DSN parameters: it loses only
            // the sender's DSN options (its reports are relayd 0.1.0's).
            Change::AcceptedWithDsn { envelope, .. } => Change::Accepted(envelope),
            // Nothing of a message's delivery changes: the no-op an older node skips.
            Change::DelayReported { id, .. } => Change::Attempted { id, results: vec![] },
            // About no message: the no-op an old node skips (it holds no such id). An old
            // standby does not learn of the pause: docs/operations.md says so.
            // An old node's history then shows its epochs as it always did, with no node.
            Change::FailoverPaused { .. } | Change::EpochNoted(_) => {
                Change::Attempted { id: QueueId::from_bytes([0; 16]), results: vec![] }
            }
            // Relayd 0.1.0 knows no holds: it delivers the message as if never held, which is
            // what it would have done. The stand-in leaves the message as it is there.
            Change::Held { ids, .. } | Change::Released { ids } => Change::Attempted {
                id: ids.first().copied().unwrap_or(QueueId::from_bytes([0; 16])),
                results: vec![],
            },
            change => change,
        }
    }
}

/// What the SMTP transaction established about a message, besides its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Unix time in milliseconds at which the 250 was given.
    pub received_at_ms: u64,
    /// The client's IP address, as text.
    pub client: String,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Body size in bytes, the Received: header included.
    pub size: u64,
    /// The client declared BODY=8BITMIME.
    pub eight_bit: bool,
    /// The client asked for SMTPUTF8.
    pub smtputf8: bool,
}

/// Per-recipient delivery state of a queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientState {
    /// Still to be delivered: at `next_attempt_ms` (Unix ms; 0 = now), after `attempts` tries.
    Pending { attempts: u32, next_attempt_ms: u64, last_reply: Option<String> },
    /// The next hop accepted it: its reply and its address.
    Delivered { reply: String, relay: String },
    /// Given up (permanent failure, or expired): the reason. A DSN went to the sender unless
    /// the sender was null.
    Bounced { reply: String },
}

impl RecipientState {
    /// A recipient never tried.
    pub fn new() -> RecipientState {
        RecipientState::Pending { attempts: 0, next_attempt_ms: 0, last_reply: None }
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, RecipientState::Pending { .. })
    }
}

impl Default for RecipientState {
    fn default() -> Self {
        RecipientState::new()
    }
}

/// A queued message as stored under its id: the envelope plus its delivery state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub envelope: Envelope,
    pub recipients: Vec<RecipientState>,
    /// Where in the log the message was accepted.
    pub accepted_at: LogPosition,
}

/// Who began an epoch, when and why (`relayd history`). Kept in a table of its own, by epoch,
/// on every node that applied it; an epoch begun by relayd 0.1.0 has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochNote {
    pub epoch: u64,
    /// The node that became primary in it.
    pub node: String,
    pub cause: EpochCause,
    /// The failover controller's own words (the `promoted` log line's reason).
    pub reason: String,
    /// When it began, in Unix ms.
    pub at_ms: u64,
}

/// Why an epoch began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochCause {
    /// The cluster's (or a single node's) first epoch.
    Bootstrap,
    /// The primary went silent: the standby promoted itself (with the witness's grant).
    Failover,
    /// The primary handed over: a planned switchover (`relayd demote`), or a primary that
    /// found its standby holding more.
    Switchover,
    /// `relayd promote`.
    Promote,
    /// `relayd promote --force`.
    ForcedPromote,
}

impl EpochCause {
    pub fn as_str(self) -> &'static str {
        match self {
            EpochCause::Bootstrap => "bootstrap",
            EpochCause::Failover => "failover",
            EpochCause::Switchover => "switchover",
            EpochCause::Promote => "promote",
            EpochCause::ForcedPromote => "promote --force",
        }
    }
}

/// One entry of the epoch history: epoch `epoch` began at log sequence `first_seq`.
/// Compared between two nodes, the histories give the divergence point of their logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    pub epoch: u64,
    pub first_seq: u64,
}

/// A message's DSN request (RFC 3461), for a message accepted with DSN parameters, and what of
/// it was done: stored under the message's id in the spool's `dsn` table, removed with the
/// message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dsn {
    /// RET: what a failure report returns (absent: the header section, as without DSN).
    pub ret: Option<Ret>,
    /// ENVID, decoded: the report's Original-Envelope-Id.
    pub envid: Option<String>,
    /// One per recipient of the envelope, in its order.
    pub recipients: Vec<RecipientDsn>,
}

/// One recipient's NOTIFY and ORCPT, and whether its delay report went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    pub request: RcptDsn,
    pub delay_reported: bool,
}

impl Dsn {
    /// What a transaction's DSN parameters ask for, or None when it gave none: a message
    /// without them is stored as before, with no entry in the `dsn` table.
    pub fn requested(mail: &MailDsn, rcpts: &[RcptDsn]) -> Option<Dsn> {
        if mail.is_empty() && rcpts.iter().all(RcptDsn::is_empty) {
            return None;
        }
        Some(Dsn {
            ret: mail.ret,
            envid: mail.envid.clone(),
            recipients: rcpts
                .iter()
                .map(|request| RecipientDsn { request: request.clone(), delay_reported: false })
                .collect(),
        })
    }

    /// The request of the recipient at `index`.
    pub fn recipient(&self, index: u32) -> Option<&RecipientDsn> {
        self.recipients.get(index as usize)
    }

    /// The same request for the recipients at `kept` (indexes), in that order: a message
    /// accepted again with fewer recipients (salvaged) keeps theirs.
    pub fn only(&self, kept: &[usize]) -> Dsn {
        Dsn {
            ret: self.ret,
            envid: self.envid.clone(),
            recipients: kept
                .iter()
                .map(|&i| self.recipients.get(i).cloned().unwrap_or_default())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The changes of protocol 2 reach a 0.1.0 peer as the no-op it skips; a protocol 2 peer
    /// gets them as they are.
    #[test]
    fn a_protocol_1_peer_gets_the_no_op_for_the_maintenance_changes() {
        let note = EpochNote {
            epoch: 2,
            node: "b".into(),
            cause: EpochCause::Switchover,
            reason: "handed over".into(),
            at_ms: 1,
        };
        let no_op = Change::Attempted { id: QueueId::from_bytes([0; 16]), results: vec![] };
        for change in [Change::FailoverPaused { paused: true }, Change::EpochNoted(note)] {
            assert_eq!(change.since_protocol(), 2);
            assert_eq!(change.clone().for_protocol(1), no_op);
            assert_eq!(change.clone().for_protocol(2), change);
        }
    }

    #[test]
    fn holds_are_protocol_2_and_an_older_peer_gets_a_no_op_attempt_instead() {
        let (a, b) = (QueueId::from_bytes([1; 16]), QueueId::from_bytes([2; 16]));
        let held = Change::Held { ids: vec![a, b], since_ms: 7 };
        let released = Change::Released { ids: vec![b] };
        assert_eq!((held.since_protocol(), released.since_protocol()), (2, 2));
        assert_eq!(held.messages(), [a, b]);
        assert_eq!(held.clone().for_protocol(2), held);
        assert_eq!(held.for_protocol(1), Change::Attempted { id: a, results: vec![] });
        assert_eq!(released.for_protocol(1), Change::Attempted { id: b, results: vec![] });
        let none = Change::Released { ids: vec![] }.for_protocol(1);
        assert_eq!(none, Change::Attempted { id: QueueId::from_bytes([0; 16]), results: vec![] });
        assert_eq!(Change::Removed { id: a }.for_protocol(1), Change::Removed { id: a });
    }
}
