//! The cluster link's frames: a 4-byte big-endian length, then a postcard-encoded [`Frame`].
//! A frame longer than [`MAX_FRAME`] is refused before anything is allocated for it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::spool::{EpochStart, LogPosition, LogRecord, MessageRecord, QueueId};

/// The largest frame either side accepts: a batch of records is cut well below it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

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
    /// The witness → a data node: the highest epoch granted, and the serving primary it
    /// hears, if any.
    Pong {
        granted: u64,
        primary: Option<String>,
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
    /// The witness's answer to a claim.
    Verdict {
        granted: bool,
        epoch: u64,
        reason: String,
    },
    /// Primary → standby, first, when the standby's Hello asked for a rewind: the current state
    /// of the messages its branch touched (their chunks came first), and those the primary no
    /// longer holds. The standby drops its branch and takes these in one commit.
    Rewind {
        messages: Vec<MessageRecord>,
        absent: Vec<QueueId>,
    },
}

#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
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
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.map_err(FrameError::Io)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
