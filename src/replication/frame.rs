//! The cluster link's frames: a 4-byte big-endian length, then a postcard-encoded [`Frame`].
//! A frame longer than [`MAX_FRAME`] is refused before anything is allocated for it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spool::{Dsn, EpochStart, LogPosition, LogRecord, MessageRecord, QueueId};

/// The largest frame either side accepts: a batch of records is cut well below it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The first piece of a frame's body read into memory; the buffer then doubles as bytes arrive.
const READ_STEP: usize = 64 * 1024;

/// What a node says about itself when the link opens (each side sends one, first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    /// "primary" or "standby".
    pub role: String,
    pub history: Vec<EpochStart>,
    /// The last record this node holds durably (a rejoining old primary: the last one its log
    /// shares with the primary's, see `rewind`).
    pub last: LogPosition,
    /// A standby whose log goes on past `last` on a branch the primary's history does not
    /// share (an old primary, rejoining): the messages that branch touched. The primary answers
    /// with [`Frame::Rewind`] before it streams, and the standby drops the branch.
    pub rewind: Option<Vec<QueueId>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// Primary → standby: a piece of a message body, sent before the record that needs it
    /// (an `Accepted` record, or a snapshot's message).
    Chunk {
        id: QueueId,
        data: Vec<u8>,
    },
    /// Primary → standby: log records, in order, and how far the primary's log goes. `beat`
    /// numbers the frame, so that the ack can tell which one it answers.
    Records {
        records: Vec<LogRecord>,
        primary_last: u64,
        beat: u64,
    },
    /// Primary → standby: a snapshot follows; erase everything.
    SnapshotBegin {
        last: LogPosition,
    },
    /// Primary → standby: some of the snapshot's messages (their chunks came first).
    SnapshotMessages(Vec<MessageRecord>),
    /// Primary → standby: the snapshot is complete; the log continues after `last`.
    SnapshotEnd {
        history: Vec<EpochStart>,
        last: LogPosition,
    },
    /// Standby → primary: everything up to `seq` is durable here (also the answer to a
    /// heartbeat). `beat`: the last Records or Heartbeat frame received, whose sending time
    /// renews the primary's lease.
    Ack {
        seq: u64,
        beat: u64,
    },
    /// Primary → standby, while the stream is idle: still here.
    Heartbeat {
        epoch: u64,
        beat: u64,
    },
    /// Primary → standby: a planned switchover. The standby has everything; it takes over
    /// with the next epoch.
    Handover {
        epoch: u64,
    },
    /// Standby → primary: it is now primary in `epoch`.
    TookOver {
        epoch: u64,
    },
    /// An old primary → the new primary, before its Hello: a message it acknowledged that the
    /// new primary never received (its chunks came first). Only the pending recipients count.
    Salvage(MessageRecord),
    /// A data node → the witness: who it is and what it does.
    Ping {
        node: String,
        role: String,
        epoch: u64,
        serving: bool,
    },
    /// The witness → a data node: the highest epoch granted, to whom, and whether that
    /// grantee was last heard serving. A primary's lease is renewed only by a pong naming it
    /// the grantee of its epoch.
    Pong {
        granted: u64,
        granted_to: String,
        serving: bool,
    },
    /// A standby → the witness: grant me `epoch`. `force`: an operator's `promote --force`.
    Claim {
        node: String,
        epoch: u64,
        force: bool,
        /// The claimant's failover_timeout: how long the witness must not have heard a serving
        /// primary (the data nodes' timings, checked against their lease by check-config).
        failover_timeout_ms: u64,
    },
    /// The witness's answer to a claim. `highest`: its highest grant, so that a refused
    /// claimant claims above it.
    Verdict {
        granted: bool,
        epoch: u64,
        highest: u64,
        reason: String,
    },
    /// Primary → standby, first, when the standby's Hello asked for a rewind: the current state
    /// of the messages its branch touched (their chunks came first), and those the primary no
    /// longer holds. The standby drops its branch and takes these in one commit.
    Rewind {
        messages: Vec<MessageRecord>,
        absent: Vec<QueueId>,
    },
    /// Primary → standby, before a `SnapshotMessages` or `Rewind` frame, and an old primary →
    /// the new primary, before a `Salvage`: the DSN requests (RFC 3461) of those of its
    /// messages accepted with DSN parameters. The receiver keeps them, like chunks, for the
    /// frame that follows. Protocol 2: an older peer gets the messages without them.
    Dsn(Vec<(QueueId, Dsn)>),
    /// Primary → standby, protocol 2: which of the messages a snapshot or a rewind carries an
    /// operator holds, and since when (Unix ms). In a snapshot, after its last
    /// `SnapshotMessages` (a frame per [`HELD_BATCH`] holds); before a `Rewind`, once, for the
    /// messages that rewind sends (a standby that gets none before it, from an older primary,
    /// holds none of them).
    Held(Vec<(QueueId, u64)>),
}

/// Holds per [`Frame::Held`] frame of a snapshot: some 30 bytes each, well under a frame.
pub const HELD_BATCH: usize = 65_536;

impl Frame {
    /// The oldest cluster protocol whose nodes decode this frame (see
    /// [`crate::spool::Change::since_protocol`]): a frame added later is sent only to a peer
    /// whose Hello announced that protocol or a later one.
    pub fn since_protocol(&self) -> u32 {
        match self {
            Frame::Dsn(_) | Frame::Held(_) => 2,
            _ => 1,
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The connection failed (an end of stream included).
    Io(std::io::Error),
    /// A length over [`MAX_FRAME`], announced or encoded.
    TooLarge(usize),
    Garbled(postcard::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::TooLarge(n) => {
                write!(f, "a frame of {n} bytes is over the {MAX_FRAME}-byte limit")
            }
            FrameError::Garbled(e) => write!(f, "a frame does not decode: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            FrameError::TooLarge(_) => None,
            FrameError::Garbled(e) => Some(e),
        }
    }
}

/// Encodes a frame with its length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(frame).map_err(FrameError::Garbled)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes one frame's body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
    postcard::from_bytes(body).map_err(FrameError::Garbled)
}

pub async fn write(
    stream: &mut (impl AsyncWrite + Unpin),
    frame: &Frame,
) -> Result<(), FrameError> {
    stream.write_all(&encode(frame)?).await.map_err(FrameError::Io)
}

pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> Result<Frame, FrameError> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).await.map_err(FrameError::Io)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    // Memory follows the bytes that arrive, not the length announced: a peer that announces
    // 16 MiB and then sends nothing holds READ_STEP bytes here, not 16 MiB. The buffer grows by
    // at most its own size per step, so it never holds more than twice what was received.
    let mut body = Vec::new();
    while body.len() < length {
        let start = body.len();
        let step = (length - start).min(start.max(READ_STEP));
        body.reserve_exact(step);
        body.resize(start + step, 0);
        stream.read_exact(&mut body[start..]).await.map_err(FrameError::Io)?;
    }
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Change, Envelope, RecipientState};

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused() {
        let frame = Frame::Ack { seq: 42, beat: 7 };
        let bytes = encode(&frame).expect("encode");
        assert_eq!(decode(&bytes[4..]).expect("decode"), frame);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0];
        assert!(matches!(runtime.block_on(read(&mut huge)), Err(FrameError::TooLarge(_))));
        let mut garbage: &[u8] = &[0, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(runtime.block_on(read(&mut garbage)), Err(FrameError::Garbled(_))));
    }

    #[test]
    fn bodies_longer_than_a_read_step_arrive_whole_and_short_ones_are_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        // Longer than READ_STEP and not a multiple of it: the buffer grows over several steps.
        let frame = Frame::Chunk { id: QueueId::from_bytes([7; 16]), data: vec![0xa5; 200_003] };
        let bytes = encode(&frame).expect("encode");
        let mut stream: &[u8] = &bytes;
        assert_eq!(runtime.block_on(read(&mut stream)).expect("read"), frame);
        // 16 MiB announced, a few bytes sent: an end of stream, with no 16 MiB buffer made.
        let mut announced = (MAX_FRAME as u32).to_be_bytes().to_vec();
        announced.extend_from_slice(b"short");
        let mut stream: &[u8] = &announced;
        assert!(matches!(runtime.block_on(read(&mut stream)), Err(FrameError::Io(_))));
    }

    /// One frame of each kind, as the fuzz seeds hold them (`fuzz/corpus/cluster_frame/`).
    fn seed_frames() -> Vec<(&'static str, Frame)> {
        let id = QueueId::from_bytes(*b"0123456789abcdef");
        let at = LogPosition { epoch: 3, seq: 41 };
        let history =
            vec![EpochStart { epoch: 1, first_seq: 1 }, EpochStart { epoch: 3, first_seq: 30 }];
        let envelope = Envelope {
            id,
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.com".into(), "jöran@bücher.de".into()],
            received_at_ms: 1_700_000_000_000,
            client: "192.0.2.7".into(),
            helo: "client.example.org".into(),
            size: 1234,
            eight_bit: true,
            smtputf8: true,
        };
        let message = MessageRecord {
            envelope: envelope.clone(),
            recipients: vec![
                RecipientState::Pending {
                    attempts: 2,
                    next_attempt_ms: 9,
                    last_reply: Some("451 4.7.1 later".into()),
                },
                RecipientState::Delivered {
                    reply: "250 ok".into(),
                    relay: "mx.example.com[198.51.100.1]".into(),
                },
            ],
            accepted_at: at,
        };
        let record = |seq, change| LogRecord { position: LogPosition { epoch: 3, seq }, change };
        vec![
            (
                "hello",
                Frame::Hello(Hello {
                    node: "mx1".into(),
                    role: "primary".into(),
                    history: history.clone(),
                    last: at,
                    rewind: None,
                }),
            ),
            (
                "hello_rewind",
                Frame::Hello(Hello {
                    node: "mx2".into(),
                    role: "standby".into(),
                    history: history.clone(),
                    last: at,
                    rewind: Some(vec![id]),
                }),
            ),
            ("chunk", Frame::Chunk { id, data: b"Subject: hi\r\n\r\nbody\r\n".to_vec() }),
            (
                "records",
                Frame::Records {
                    records: vec![
                        record(40, Change::EpochStarted),
                        record(41, Change::Accepted(envelope)),
                        record(
                            42,
                            Change::Attempted {
                                id,
                                results: vec![(
                                    1,
                                    RecipientState::Bounced { reply: "550 5.1.1 no".into() },
                                )],
                            },
                        ),
                        record(43, Change::Removed { id }),
                    ],
                    primary_last: 43,
                    beat: 17,
                },
            ),
            ("snapshot_begin", Frame::SnapshotBegin { last: at }),
            ("snapshot_messages", Frame::SnapshotMessages(vec![message.clone()])),
            ("snapshot_end", Frame::SnapshotEnd { history, last: at }),
            ("ack", Frame::Ack { seq: 43, beat: 17 }),
            ("heartbeat", Frame::Heartbeat { epoch: 3, beat: 18 }),
            ("handover", Frame::Handover { epoch: 3 }),
            ("took_over", Frame::TookOver { epoch: 4 }),
            ("salvage", Frame::Salvage(message.clone())),
            (
                "ping",
                Frame::Ping {
                    node: "mx2".into(),
                    role: "standby".into(),
                    epoch: 3,
                    serving: false,
                },
            ),
            ("pong", Frame::Pong { granted: 3, granted_to: "mx1".into(), serving: true }),
            (
                "claim",
                Frame::Claim {
                    node: "mx2".into(),
                    epoch: 4,
                    force: false,
                    failover_timeout_ms: 30_000,
                },
            ),
            (
                "verdict",
                Frame::Verdict { granted: true, epoch: 4, highest: 4, reason: "granted".into() },
            ),
            ("rewind", Frame::Rewind { messages: vec![message], absent: vec![id] }),
            ("held", Frame::Held(vec![(id, 1_700_000_000_000)])),
            (
                "records_held",
                Frame::Records {
                    records: vec![
                        record(44, Change::Held { ids: vec![id], since_ms: 1_700_000_000_000 }),
                        record(45, Change::Released { ids: vec![id] }),
                    ],
                    primary_last: 45,
                    beat: 18,
                },
            ),
        ]
    }

    /// The committed fuzz seeds are these frames as encoded today, each alone and all in one
    /// stream, so that a change of the wire format cannot leave the fuzzer starting from
    /// frames that no longer decode. `RELAYD_WRITE_SEEDS=1 cargo test seeds` rewrites them.
    #[test]
    fn fuzz_seeds_are_the_frames_encoded_today() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/cluster_frame");
        let write = std::env::var_os("RELAYD_WRITE_SEEDS").is_some();
        let mut stream = Vec::new();
        let mut seeds = Vec::new();
        for (name, frame) in seed_frames() {
            let bytes = encode(&frame).expect("encode");
            stream.extend_from_slice(&bytes);
            seeds.push((name, bytes));
        }
        seeds.push(("stream", stream));
        for (name, bytes) in seeds {
            let path = dir.join(format!("{name}.bin"));
            if write {
                std::fs::create_dir_all(&dir).expect("corpus directory");
                std::fs::write(&path, &bytes).expect("write seed");
            }
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == bytes,
                "{} is stale: RELAYD_WRITE_SEEDS=1 cargo test seeds",
                path.display()
            );
        }
    }
}
