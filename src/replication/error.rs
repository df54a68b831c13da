//! Why a replication link ended, and why a switchover's handover did not happen: each link
//! task logs its error once ("replication link down"), so the text says what happened on the
//! wire or the disk, and the cause stays reachable through `source()`.

use std::fmt;

use tokio::sync::watch::error::RecvError;

use super::frame::{self, Frame, FrameError};
use crate::role::LinkVerdict;
use crate::spool::SpoolError;

/// What ended one session of the link, on either side.
#[derive(Debug)]
pub enum LinkError {
    ConnectTimeout,
    Connect(std::io::Error),
    /// The name the peer is dialled by is not a valid TLS server name.
    PeerName(rustls_pki_types::InvalidDnsNameError),
    HandshakeTimeout,
    Handshake(std::io::Error),
    /// A frame could not be written, or read in the middle of the stream.
    Frame(FrameError),
    /// Buffered frames could not be flushed to the peer.
    Flush(std::io::Error),
    Spool(SpoolError),
    /// The spool's durable-position watch closed (the spool is shutting down).
    SpoolClosed(RecvError),
    /// A frame expected at a point of the conversation did not come; `awaiting` says which.
    Read {
        awaiting: Awaiting,
        source: FrameError,
    },
    NoHello,
    /// A frame that has no place where it came: `awaiting` says what was expected instead.
    Unexpected {
        awaiting: Awaiting,
        frame: Box<Frame>,
    },
    /// ha decided this shipper does not ship to the peer.
    NotShipping {
        peer: String,
        role: String,
        epoch: u64,
        verdict: LinkVerdict,
    },
    /// ha decided this node does not follow the peer.
    NotFollowing {
        peer: String,
        verdict: LinkVerdict,
    },
    /// The peer that dialled the follower is not a primary.
    NotAPrimary {
        peer: String,
        role: String,
    },
    /// The peer says it is primary in an epoch older than ours.
    PeerBehind {
        peer: String,
        their_epoch: u64,
        our_epoch: u64,
    },
    /// The log was trimmed past what the standby needs: it needs a snapshot.
    LogTrimmed {
        seq: u64,
    },
    /// The peer we handed over to did not say it took over in time.
    PeerDidNotTakeOver,
    /// Asked to take over, this node did not become primary in time.
    TakeOverTimedOut {
        epoch: u64,
    },
    /// The primary streamed records before it answered our rewind.
    StreamedBeforeRewind,
    /// A rewind came that our Hello did not ask for.
    UnaskedRewind,
    /// The follower's acknowledgements stopped before its reading did (only as the link ends:
    /// the failed commit that stops them is the error reported).
    AcksStopped,
    /// The peer's Hello names a cluster protocol this node does not speak.
    Incompatible {
        peer: String,
        release: String,
        protocol: u32,
    },
}

impl LinkError {
    /// The peer's version, when this error refused the peer for it: a protocol we do not
    /// speak, or a Hello we cannot decode (a far newer or an unknown peer).
    pub fn refused_version(&self) -> Option<String> {
        match self {
            LinkError::Incompatible { release, protocol, .. } => {
                Some(format!("relayd {release} (protocol {protocol})"))
            }
            LinkError::Read { awaiting: Awaiting::Hello, source: FrameError::Garbled(_) } => {
                Some("unknown (its Hello does not decode)".to_string())
            }
            _ => None,
        }
    }
}

/// Where in the conversation a frame was awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// The peer's Hello, the first frame (after an old primary's salvage).
    Hello,
    /// The standby's acks (and its TookOver).
    Acks,
    /// The answer to our Handover.
    TookOver,
    /// What the primary streams.
    Stream,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::ConnectTimeout => write!(f, "connect timed out"),
            LinkError::Connect(e) => write!(f, "connect: {e}"),
            LinkError::PeerName(e) => write!(f, "{e}"),
            LinkError::HandshakeTimeout => write!(f, "TLS handshake timed out"),
            LinkError::Handshake(e) => write!(f, "TLS handshake: {e}"),
            LinkError::Frame(e) => write!(f, "{e}"),
            LinkError::Flush(e) => write!(f, "{e}"),
            LinkError::Spool(e) => write!(f, "{e}"),
            LinkError::SpoolClosed(_) => write!(f, "the spool closed"),
            LinkError::Read { awaiting, source } => match awaiting {
                Awaiting::Hello => write!(f, "reading Hello: {source}"),
                Awaiting::Acks => write!(f, "reading acks: {source}"),
                Awaiting::TookOver => write!(f, "no answer to the handover: {source}"),
                Awaiting::Stream => write!(f, "{source}"),
            },
            LinkError::NoHello => write!(f, "no Hello from the peer"),
            LinkError::Unexpected { awaiting, frame } => match awaiting {
                Awaiting::Hello => write!(f, "expected Hello, got {frame:?}"),
                Awaiting::Acks => write!(f, "unexpected frame from the standby: {frame:?}"),
                Awaiting::TookOver => write!(f, "unexpected answer to a handover: {frame:?}"),
                Awaiting::Stream => write!(f, "unexpected frame from the primary: {frame:?}"),
            },
            LinkError::NotShipping { peer, role, epoch, verdict } => {
                write!(f, "not shipping to {peer} ({role}, epoch {epoch}): {verdict:?}")
            }
            LinkError::NotFollowing { peer, verdict } => {
                write!(f, "not following {peer}: {verdict:?}")
            }
            LinkError::NotAPrimary { peer, role } => {
                write!(f, "peer {peer} is a {role}, not a primary")
            }
            LinkError::PeerBehind { peer, their_epoch, our_epoch } => write!(
                f,
                "peer {peer} claims primary in epoch {their_epoch}, ours is {our_epoch}: it is behind us"
            ),
            LinkError::LogTrimmed { seq } => {
                write!(f, "the log no longer holds record {seq}: the standby needs a snapshot")
            }
            LinkError::PeerDidNotTakeOver => write!(f, "the peer did not take over in time"),
            LinkError::TakeOverTimedOut { epoch } => {
                write!(f, "could not take over after epoch {epoch} in time")
            }
            LinkError::StreamedBeforeRewind => {
                write!(f, "the primary streamed before it answered our rewind")
            }
            LinkError::UnaskedRewind => write!(f, "a rewind nobody asked for"),
            LinkError::AcksStopped => write!(f, "the acknowledgements stopped"),
            LinkError::Incompatible { peer, release, protocol } => write!(
                f,
                "peer {peer} runs relayd {release}, cluster protocol {protocol}; this node runs \
                 relayd {}, protocol {}, and talks to protocols {} to {}",
                frame::RELEASE,
                frame::PROTOCOL,
                frame::PROTOCOL - 1,
                frame::PROTOCOL + 1
            ),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LinkError::Connect(e) | LinkError::Handshake(e) | LinkError::Flush(e) => Some(e),
            LinkError::PeerName(e) => Some(e),
            LinkError::Frame(e) | LinkError::Read { source: e, .. } => Some(e),
            LinkError::Spool(e) => Some(e),
            LinkError::SpoolClosed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SpoolError> for LinkError {
    fn from(e: SpoolError) -> LinkError {
        LinkError::Spool(e)
    }
}

impl From<FrameError> for LinkError {
    fn from(e: FrameError) -> LinkError {
        LinkError::Frame(e)
    }
}

/// Why a planned switchover's handover did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverError {
    /// The link ended before the standby said it took over.
    LinkDown,
    /// The standby did not say it took over within the limit.
    TimedOut,
}

impl fmt::Display for HandoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoverError::LinkDown => write!(f, "the link went down during the handover"),
            HandoverError::TimedOut => write!(f, "the standby did not take over in time"),
        }
    }
}

impl std::error::Error for HandoverError {}
