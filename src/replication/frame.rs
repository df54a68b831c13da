//! The cluster link's frames: a 4-byte big-endian length, then a postcard-encoded [`Frame`].
//! A frame longer than [`MAX_FRAME`] is refused before anything is allocated for it.
//!
//! **Versions.** postcard is not self-describing, so the link agrees on a *cluster protocol*
//! ([`PROTOCOL`]) in the Hello each side sends first. relayd 0.1.0's Hello names none: it is
//! protocol 1 ([`FIRST_PROTOCOL`]). Protocol 2 appended `protocol` and `release` to the
//! [`Hello`]; 0.1.0's decoder (`postcard::from_bytes`) reads the fields it knows and ignores
//! the bytes after them, and [`decode`] reads a Hello that ends before them as protocol 1's.
//! A later protocol appends its Hello fields after these, the same way. A node talks to a peer
//! whose protocol is within one of its own ([`compatible`]), and every frame it sends goes
//! through [`Sender`], which leaves out or stands in for what the peer's protocol cannot read
//! ([`Frame::for_protocol`]). The witness's frames (Ping, Pong, Claim, Verdict) have no Hello:
//! they are protocol 1's and must stay as they are.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spool::{Dsn, EpochNote, EpochStart, LogPosition, LogRecord, MessageRecord, QueueId};

/// The largest frame either side accepts: a batch of records is cut well below it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The first piece of a frame's body read into memory; the buffer then doubles as bytes arrive.
const READ_STEP: usize = 64 * 1024;

/// The cluster protocol this build speaks: 1 was relayd 0.1.0's, 2 is relayd 0.2.0's.
pub const PROTOCOL: u32 = 2;
/// The protocol of a Hello that names none: relayd 0.1.0's.
pub const FIRST_PROTOCOL: u32 = 1;
/// The release that spoke [`FIRST_PROTOCOL`], named for a peer whose Hello does not say.
pub const FIRST_RELEASE: &str = "0.1.0";
/// This build's release, as a Hello names it (for log lines and `/status`).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// Whether this node talks to a peer of cluster protocol `peer`: one protocol apart at most,
/// either way (a node of release N works with N-1 and N+1, as primary and as standby).
pub fn compatible(peer: u32) -> bool {
    peer.abs_diff(PROTOCOL) <= 1
}

/// What a node says about itself when the link opens (each side sends one, first). Fields are
/// only ever appended (see the module's comment).
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
    /// The cluster protocol the sender speaks (since protocol 2; [`FIRST_PROTOCOL`] when the
    /// Hello ends before it).
    pub protocol: u32,
    /// The sender's release, e.g. "0.2.0" ([`FIRST_RELEASE`] when the Hello ends before it).
    pub release: String,
}

/// A Hello as relayd 0.1.0 sends it: the fields before `protocol`.
#[derive(Deserialize)]
struct FirstHello {
    node: String,
    role: String,
    history: Vec<EpochStart>,
    last: LogPosition,
    rewind: Option<Vec<QueueId>>,
}

/// The frames of protocol 1 whose shape changed since: the Hello alone. Its one variant has
/// [`Frame::Hello`]'s index, 0, so a 0.1.0 Hello's bytes decode as it.
#[derive(Deserialize)]
enum FirstFrame {
    Hello(FirstHello),
}

impl From<FirstHello> for Hello {
    fn from(hello: FirstHello) -> Hello {
        let FirstHello { node, role, history, last, rewind } = hello;
        let (protocol, release) = (FIRST_PROTOCOL, FIRST_RELEASE.to_string());
        Hello { node, role, history, last, rewind, protocol, release }
    }
}

/// A body chunk's bytes as one byte string instead of a sequence of bytes one by one. In
/// postcard both are the length (a varint) and the bytes, so the wire is 0.1.0's (the golden
/// frames say so); serde's default visits each byte, which was a tenth of the primary's CPU
/// in a catch-up (docs/benchmarks.md).
mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteBuf)
    }

    struct ByteBuf;

    impl<'de> de::Visitor<'de> for ByteBuf {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, data: &[u8]) -> Result<Vec<u8>, E> {
            Ok(data.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, data: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(data)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// Primary → standby: a piece of a message body, sent before the record that needs it
    /// (an `Accepted` record, or a snapshot's message).
    Chunk {
        id: QueueId,
        #[serde(with = "bytes")]
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
    /// Primary → standby, in a snapshot, before [`Frame::SnapshotEnd`]: what the primary's
    /// spool holds besides the messages, that its log may no longer carry: who began each
    /// epoch and why (`relayd history`), and whether automatic failover is paused. Protocol 2.
    SnapshotState {
        notes: Vec<EpochNote>,
        failover_paused: bool,
    },
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
            Frame::Hello(_)
            | Frame::Chunk { .. }
            | Frame::Records { .. }
            | Frame::SnapshotBegin { .. }
            | Frame::SnapshotMessages(_)
            | Frame::SnapshotEnd { .. }
            | Frame::Ack { .. }
            | Frame::Heartbeat { .. }
            | Frame::Handover { .. }
            | Frame::TookOver { .. }
            | Frame::Salvage(_)
            | Frame::Ping { .. }
            | Frame::Pong { .. }
            | Frame::Claim { .. }
            | Frame::Verdict { .. }
            | Frame::Rewind { .. } => 1,
            Frame::Dsn(_) | Frame::SnapshotState { .. } | Frame::Held(_) => 2,
        }
    }

    /// This frame as a peer of `protocol` is sent it: None when that peer cannot read it (a
    /// snapshot to an older peer leaves out what it cannot hold), else the frame with each
    /// record's change as [`crate::spool::Change::for_protocol`] says (a record is never left
    /// out: the peer's log must stay gapless). A frame added later that carries changes maps
    /// them here too.
    pub fn for_protocol(self, protocol: u32) -> Option<Frame> {
        if self.since_protocol() > protocol {
            return None;
        }
        Some(match self {
            Frame::Records { records, primary_last, beat } => Frame::Records {
                records: records
                    .into_iter()
                    .map(|LogRecord { position, change }| LogRecord {
                        position,
                        change: change.for_protocol(protocol),
                    })
                    .collect(),
                primary_last,
                beat,
            },
            frame => frame,
        })
    }
}

/// The sending half of a cluster link: every frame a data node sends its peer goes through
/// [`Sender::send`], which encodes it for the protocol the peer speaks. Until the peer's Hello
/// has said, that is [`FIRST_PROTOCOL`] (our own Hello is protocol 1's frame, with fields an
/// older peer skips).
pub struct Sender<W> {
    writer: W,
    protocol: u32,
}

/// What [`Sender::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written (unflushed).
    Written,
    /// Not sent: the peer's protocol cannot read it.
    LeftOut,
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    pub fn new(writer: W) -> Sender<W> {
        Sender { writer, protocol: FIRST_PROTOCOL }
    }

    /// The peer's Hello named `protocol`: from now on frames are sent as it reads them (ours
    /// when it is newer: we know no later frames).
    pub fn speak(&mut self, protocol: u32) {
        self.protocol = protocol.min(PROTOCOL);
    }

    /// The protocol frames are sent in.
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// Writes `frame` as the peer's protocol has it, or nothing if it cannot read it.
    pub async fn send(&mut self, frame: Frame) -> Result<Sent, FrameError> {
        match frame.for_protocol(self.protocol) {
            Some(frame) => write(&mut self.writer, &frame).await.map(|()| Sent::Written),
            None => Ok(Sent::LeftOut),
        }
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
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

/// Decodes one frame's body (without its length prefix). Bytes after the frame's last field
/// are ignored (postcard's `from_bytes`, as in 0.1.0): that is how a newer Hello's appended
/// fields pass an older node. A Hello that ends before `protocol` is 0.1.0's.
pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
    postcard::from_bytes(body).or_else(|error| match postcard::from_bytes(body) {
        Ok(FirstFrame::Hello(hello)) => Ok(Frame::Hello(hello.into())),
        Err(_) => Err(FrameError::Garbled(error)),
    })
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
        frames_with_hellos_of(PROTOCOL, "0.2.0")
    }

    /// The same frames, with Hellos that name `protocol` and `release`.
    fn frames_with_hellos_of(protocol: u32, release: &str) -> Vec<(&'static str, Frame)> {
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
                    protocol,
                    release: release.into(),
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
                    protocol,
                    release: release.into(),
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

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/v0.1.0/frames")
            .join(format!("{name}.bin"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The golden frames: every frame kind as relayd 0.1.0 encoded it (tests/fixtures/v0.1.0,
    /// see its README) decodes to what 0.1.0 meant, its Hellos as protocol 1's, each alone and
    /// all in one stream. A change to the encoding of a frame 0.1.0 sends fails here.
    #[test]
    fn every_frame_of_relayd_0_1_0_decodes_to_what_it_sent() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        // The frames 0.1.0 could send: those a protocol-1 peer is sent as they are.
        let expected: Vec<_> = frames_with_hellos_of(FIRST_PROTOCOL, FIRST_RELEASE)
            .into_iter()
            .filter(|(_, frame)| frame.clone().for_protocol(FIRST_PROTOCOL).as_ref() == Some(frame))
            .collect();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0/frames");
        let fixtures = std::fs::read_dir(&dir).expect("fixtures").count();
        assert_eq!(expected.len() + 1, fixtures, "a frame per fixture (and the stream)");
        for (name, frame) in &expected {
            let bytes = fixture(name);
            let mut stream: &[u8] = &bytes;
            assert_eq!(&runtime.block_on(read(&mut stream)).expect(name), frame, "{name}");
            assert!(stream.is_empty(), "{name}: bytes left over");
        }
        let bytes = fixture("stream");
        let mut stream: &[u8] = &bytes;
        for (name, frame) in &expected {
            assert_eq!(&runtime.block_on(read(&mut stream)).expect(name), frame, "stream: {name}");
        }
        assert!(stream.is_empty(), "stream: bytes left over");
    }

    /// The other direction: our Hello is 0.1.0's bytes with the new fields after them, and a
    /// decoder of 0.1.0's shape (what `postcard::from_bytes` does there: the fields it knows,
    /// the rest ignored) reads it as the same Hello.
    #[test]
    fn relayd_0_1_0_reads_our_hello_as_the_hello_it_knows() {
        for name in ["hello", "hello_rewind"] {
            let (_, ours) = seed_frames().into_iter().find(|(n, _)| *n == name).expect(name);
            let Frame::Hello(hello) = &ours else { panic!("{name}: a Hello") };
            let body = postcard::to_stdvec(&ours).expect("encode");
            let theirs = fixture(name);
            assert!(body.starts_with(&theirs[4..]), "{name}: 0.1.0's bytes, then ours");
            let FirstFrame::Hello(read) = postcard::from_bytes(&body).expect("0.1.0 decodes");
            let read = Hello::from(read);
            assert_eq!((read.protocol, read.release.as_str()), (FIRST_PROTOCOL, FIRST_RELEASE));
            let read = Hello { protocol: hello.protocol, release: hello.release.clone(), ..read };
            assert_eq!(&read, hello, "{name}");
        }
    }

    #[test]
    fn a_node_talks_to_protocols_one_apart_from_its_own() {
        assert_eq!(PROTOCOL, 2, "the window below is written for protocol 2");
        assert!(compatible(1) && compatible(2) && compatible(3));
        assert!(!compatible(0) && !compatible(4) && !compatible(9));
    }

    /// The sender sends a frame only in a protocol that reads it: a peer that announced more
    /// than ours is spoken to in ours, and a peer below every frame's protocol gets none.
    #[test]
    fn the_sender_leaves_out_what_the_peer_cannot_read() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let frame = Frame::Heartbeat { epoch: 3, beat: 1 };
        let mut sender = Sender::new(Vec::new());
        assert_eq!(sender.protocol(), FIRST_PROTOCOL, "before the peer's Hello");
        sender.speak(9);
        assert_eq!(sender.protocol(), PROTOCOL);
        assert_eq!(runtime.block_on(sender.send(frame.clone())).expect("send"), Sent::Written);
        sender.speak(0);
        assert_eq!(runtime.block_on(sender.send(frame.clone())).expect("send"), Sent::LeftOut);
        assert_eq!(sender.writer, encode(&frame).expect("encode"), "one frame written");
        // What a protocol-1 peer is sent of each frame kind: nothing, or frames and changes it
        // reads; a frame of protocol 1 with protocol-1 changes goes as it is.
        for (name, frame) in seed_frames() {
            let since = frame.since_protocol();
            match frame.clone().for_protocol(FIRST_PROTOCOL) {
                None => assert!(since > FIRST_PROTOCOL, "{name} left out"),
                Some(sent) => {
                    assert!(since <= FIRST_PROTOCOL, "{name} sent");
                    if let Frame::Records { records, .. } = &sent {
                        let newer = records.iter().find(|r| r.change.since_protocol() > 1);
                        assert_eq!(newer, None, "{name}: a change a protocol-1 peer cannot read");
                    }
                    let downgraded = matches!(&frame, Frame::Records { records, .. }
                        if records.iter().any(|r| r.change.since_protocol() > FIRST_PROTOCOL));
                    if !downgraded {
                        assert_eq!(sent, frame, "{name}");
                    }
                }
            }
        }
    }
}
