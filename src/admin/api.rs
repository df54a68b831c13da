//! The admin endpoint's JSON documents (docs/contract.md, "Admin endpoint"), shared by the server,
//! which builds them from the spool, and by the CLI, which reads them back.

use serde::{Deserialize, Serialize};

use crate::spool::{EpochNote, EpochStart, MessageRecord, QueueId, RecipientState};

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub role: String,
    pub epoch: u64,
    /// Accepting and delivering mail: a primary that is not fenced. (A fenced primary keeps
    /// its role and answers 421; an older node does not report this, hence the default.)
    #[serde(default)]
    pub serving: bool,
    pub node: String,
    /// The other data node; null without a cluster. Left open (any JSON) so that a CLI keeps
    /// reading the status of a node that reports more about its peer.
    pub peer: Option<serde_json::Value>,
    pub replication: ReplicationLag,
    pub queue: QueueSummary,
    /// The node's release ("0.2.0") and the cluster protocol it speaks; absent from 0.1.0's
    /// answer, hence the defaults.
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub protocol: Option<u32>,
    /// An operator paused automatic failover (`relayd failover pause`). An older node does
    /// not report it, hence the default.
    #[serde(default)]
    pub failover_paused: bool,
    /// Every member of the cluster this node knows of: itself first, then its peer (as the
    /// cluster link last saw it) and the witness (as its last answer to a ping said). Empty
    /// from an older node.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// One epoch in `GET /history`: who was primary in it, from when, and why. The node, cause,
/// reason and time are null for an epoch begun by relayd 0.1.0 (which noted none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub epoch: u64,
    /// The log sequence number it began at; null for an epoch noted but not in this node's log
    /// (a deposed primary's branch, dropped when it rejoined).
    pub first_seq: Option<u64>,
    pub node: Option<String>,
    /// "bootstrap", "failover", "switchover", "promote" or "promote --force".
    pub cause: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
}

impl HistoryEntry {
    /// The history: every epoch of the log's history, and every epoch noted, by epoch.
    pub fn list(history: &[EpochStart], notes: Vec<EpochNote>) -> Vec<HistoryEntry> {
        let mut entries: std::collections::BTreeMap<u64, HistoryEntry> = history
            .iter()
            .map(|start| (start.epoch, HistoryEntry::unnoted(start.epoch, Some(start.first_seq))))
            .collect();
        for note in notes {
            let entry = entries
                .entry(note.epoch)
                .or_insert_with(|| HistoryEntry::unnoted(note.epoch, None));
            entry.node = Some(note.node);
            entry.cause = Some(note.cause.as_str().to_string());
            entry.reason = Some(note.reason);
            entry.started_at = rfc3339(note.at_ms);
        }
        entries.into_values().collect()
    }

    fn unnoted(epoch: u64, first_seq: Option<u64>) -> HistoryEntry {
        HistoryEntry { epoch, first_seq, node: None, cause: None, reason: None, started_at: None }
    }
}

/// One member of the cluster in `/status`, as the node that answers sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name; the witness's address (its pongs carry no name).
    pub name: String,
    /// "primary", "standby" (the peer: as its Hello said) or "witness".
    pub role: String,
    /// A data node's epoch; the witness's highest grant. None: not known (never heard).
    pub epoch: Option<u64>,
    /// Only for this node itself: whether it serves; None for the others.
    pub serving: Option<bool>,
    /// "self"; a peer "linked" or "unreachable"; a witness "answering" or "unreachable".
    pub state: String,
    /// Change-log records the standby lacks (on a pair's primary, its standby's; on the
    /// standby, its own). None for the witness.
    pub lag_records: Option<u64>,
    /// Milliseconds since it was last heard from (0 for this node); None: never heard.
    pub last_heard_ms: Option<u64>,
    /// The witness: the node it granted its highest epoch to.
    pub granted_to: Option<String>,
}

/// How far the standby is behind this primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicationLag {
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueSummary {
    pub messages: u64,
    pub recipients_pending: u64,
    /// Age of the oldest queued message; 0 when the queue is empty.
    pub oldest_age_seconds: u64,
}

/// One queued message, in `GET /queue` and `GET /queue/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    /// The reverse path without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Bytes, our Received: header included.
    pub size: u64,
    /// RFC 3339, UTC.
    pub received_at: String,
    /// The client's IP address.
    pub client: String,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// RFC 3339, UTC: since when an operator holds the message (`relayd queue hold`); null
    /// when it is not held. (Absent from an older node's answer.)
    #[serde(default)]
    pub held_since: Option<String>,
}

/// A page of `GET /queue?…`: the messages, and the `after=` of the next page (null on the
/// last one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePage {
    pub messages: Vec<Message>,
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// "pending", "delivered" or "bounced".
    pub state: String,
    /// Delivery attempts so far, for a pending recipient; null once delivered or bounced.
    pub attempts: Option<u32>,
    /// RFC 3339, for a pending recipient that waits for a retry; null when it is due now, or
    /// not pending.
    pub next_attempt: Option<String>,
    /// The last reply of a next hop (or the reason of a bounce), if any.
    pub last_reply: Option<String>,
    /// The next hop that accepted it, once delivered.
    pub relay: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl Message {
    /// The message as listed; `held_since` (Unix ms) when an operator holds it.
    pub fn from_record(record: &MessageRecord, held_since: Option<u64>) -> Message {
        let envelope = &record.envelope;
        let recipients = envelope
            .recipients
            .iter()
            .enumerate()
            .map(|(i, address)| {
                // A record always has one state per recipient; read a missing one as untried.
                let state = record.recipients.get(i).cloned().unwrap_or_default();
                Recipient::new(address, state)
            })
            .collect();
        Message {
            id: envelope.id.to_string(),
            sender: envelope.sender.clone(),
            recipients,
            size: envelope.size,
            received_at: rfc3339(envelope.received_at_ms).unwrap_or_default(),
            client: envelope.client.clone(),
            helo: envelope.helo.clone(),
            held_since: held_since.and_then(rfc3339),
        }
    }
}

impl Recipient {
    fn new(address: &str, state: RecipientState) -> Recipient {
        let address = address.to_string();
        match state {
            RecipientState::Pending { attempts, next_attempt_ms, last_reply } => Recipient {
                address,
                state: "pending".into(),
                attempts: Some(attempts),
                next_attempt: if next_attempt_ms == 0 { None } else { rfc3339(next_attempt_ms) },
                last_reply,
                relay: None,
            },
            RecipientState::Delivered { reply, relay } => Recipient {
                address,
                state: "delivered".into(),
                attempts: None,
                next_attempt: None,
                last_reply: Some(reply),
                relay: Some(relay),
            },
            RecipientState::Bounced { reply } => Recipient {
                address,
                state: "bounced".into(),
                attempts: None,
                next_attempt: None,
                last_reply: Some(reply),
                relay: None,
            },
        }
    }
}

/// A queue id as the admin endpoint and the CLI take it: exactly 32 hexadecimal digits, in
/// any case (the id of the 250 reply and the logs).
pub fn parse_queue_id(text: &str) -> Result<QueueId, MalformedQueueId> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MalformedQueueId);
    }
    text.parse().map_err(|_| MalformedQueueId)
}

/// Not a queue id: not 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedQueueId;

impl std::fmt::Display for MalformedQueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("expected a queue id: 32 hexadecimal digits")
    }
}

impl std::error::Error for MalformedQueueId {}

/// Unix milliseconds as RFC 3339 in UTC, to the second; None if out of chrono's range.
pub fn rfc3339(unix_ms: u64) -> Option<String> {
    let ms = i64::try_from(unix_ms).ok()?;
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)?;
    Some(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, LogPosition};

    #[test]
    fn a_record_becomes_its_json_view() {
        let id = QueueId::new();
        let record = MessageRecord {
            envelope: Envelope {
                id,
                sender: "a@example.org".into(),
                recipients: vec!["b@example.com".into(), "c@example.com".into(), "d@x.y".into()],
                received_at_ms: 1_700_000_000_000,
                client: "127.0.0.1".into(),
                helo: "client.test".into(),
                size: 321,
                eight_bit: false,
                smtputf8: false,
            },
            recipients: vec![
                RecipientState::Pending {
                    attempts: 2,
                    next_attempt_ms: 1_700_000_060_000,
                    last_reply: Some("451 4.3.0 later".into()),
                },
                RecipientState::Delivered { reply: "250 ok".into(), relay: "mx.test:25".into() },
                RecipientState::Bounced { reply: "550 5.1.1 no such user".into() },
            ],
            accepted_at: LogPosition { epoch: 1, seq: 2 },
        };
        let view = Message::from_record(&record, None);
        assert_eq!(view.id, id.to_string());
        assert_eq!(view.held_since, None);
        let held = Message::from_record(&record, Some(1_700_000_120_000));
        assert_eq!(held.held_since.as_deref(), Some("2023-11-14T22:15:20Z"));
        assert_eq!(view.received_at, "2023-11-14T22:13:20Z");
        let json = serde_json::to_value(&view).expect("serialize");
        assert_eq!(json["recipients"][0]["state"], "pending");
        assert_eq!(json["recipients"][0]["attempts"], 2);
        assert_eq!(json["recipients"][0]["next_attempt"], "2023-11-14T22:14:20Z");
        assert_eq!(json["recipients"][1]["state"], "delivered");
        assert_eq!(json["recipients"][1]["attempts"], serde_json::Value::Null);
        assert_eq!(json["recipients"][1]["relay"], "mx.test:25");
        assert_eq!(json["recipients"][2]["state"], "bounced");
        assert_eq!(json["recipients"][2]["last_reply"], "550 5.1.1 no such user");
    }

    #[test]
    fn history_names_the_noted_epochs_and_leaves_older_ones_unknown() {
        use crate::spool::{EpochCause, EpochNote, EpochStart};
        let history =
            [EpochStart { epoch: 1, first_seq: 1 }, EpochStart { epoch: 3, first_seq: 40 }];
        let note = |epoch, node: &str, cause| EpochNote {
            epoch,
            node: node.into(),
            cause,
            reason: "why".into(),
            at_ms: 1_700_000_000_000,
        };
        // Epoch 1 was begun by relayd 0.1.0: no note. Epoch 2 is a dropped branch's.
        let notes = vec![note(2, "a", EpochCause::Failover), note(3, "b", EpochCause::Switchover)];
        let entries = HistoryEntry::list(&history, notes);
        let seen: Vec<_> = entries
            .iter()
            .map(|e| (e.epoch, e.first_seq, e.node.as_deref(), e.cause.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, Some(1), None, None),
                (2, None, Some("a"), Some("failover")),
                (3, Some(40), Some("b"), Some("switchover"))
            ]
        );
        assert_eq!(entries[2].started_at.as_deref(), Some("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn queue_ids_are_32_hexadecimal_digits_in_any_case() {
        let id = QueueId::new();
        assert_eq!(parse_queue_id(&id.to_string()), Ok(id));
        assert_eq!(parse_queue_id(&id.to_string().to_lowercase()), Ok(id));
        for bad in ["0190", "+190A1B2C3D4E5F60718293A4B5C6D7E", "Z190A1B2C3D4E5F60718293A4B5C6D7E"]
        {
            assert_eq!(parse_queue_id(bad), Err(MalformedQueueId), "{bad}");
        }
        // u128's parser alone would take a sign, or fewer digits.
        assert!("+190A1B2C3D4E5F60718293A4B5C6D7E".parse::<QueueId>().is_ok());
    }

    #[test]
    fn an_untried_recipient_has_no_next_attempt() {
        let view = Recipient::new("b@example.com", RecipientState::new());
        assert_eq!(view.state, "pending");
        assert_eq!(view.attempts, Some(0));
        assert_eq!(view.next_attempt, None);
    }
}
