//! The failover controller's errors: opening it, beginning an epoch, the operator's promote
//! and switchover, and the witness's server and client. Each says in its text what the log
//! line or the operator's answer said as a string before, and keeps its cause as `source()`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::core::Refusal;
use crate::config::{ConfigError, Role};
use crate::replication::HandoverError;
use crate::replication::frame::{Frame, FrameError};
use crate::spool::SpoolError;

/// Why the controller could not open on this node's spool.
#[derive(Debug)]
pub enum OpenError {
    /// The persisted role, epoch history or highest epoch could not be read.
    Spool(SpoolError),
    /// A single node's first epoch could not be committed.
    FirstEpoch(EpochError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Spool(e) => write!(f, "{e}"),
            OpenError::FirstEpoch(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Spool(e) => Some(e),
            OpenError::FirstEpoch(e) => Some(e),
        }
    }
}

impl From<SpoolError> for OpenError {
    fn from(e: SpoolError) -> OpenError {
        OpenError::Spool(e)
    }
}

/// Why this node could not begin an epoch.
#[derive(Debug)]
pub enum EpochError {
    /// A snapshot from the primary was begun and never finished: the spool lacks messages.
    PartialSnapshot,
    /// Whether a snapshot is partial could not be read.
    Spool(SpoolError),
    /// The epoch's `EpochStarted` record could not be committed.
    Commit { epoch: u64, source: SpoolError },
}

impl fmt::Display for EpochError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EpochError::PartialSnapshot => {
                write!(f, "this node holds a partial snapshot: it cannot take over")
            }
            EpochError::Spool(e) => write!(f, "{e}"),
            EpochError::Commit { epoch, source } => {
                write!(f, "cannot start epoch {epoch}: {source}")
            }
        }
    }
}

impl std::error::Error for EpochError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EpochError::PartialSnapshot => None,
            EpochError::Spool(e) | EpochError::Commit { source: e, .. } => Some(e),
        }
    }
}

/// Why `relayd promote` did not promote this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromoteError {
    /// The core refused, or the claim or the epoch failed.
    Refused(Refusal),
    AlreadyUnderWay,
    /// The controller's driver is gone (the node is stopping).
    Stopped,
    TimedOut,
}

impl fmt::Display for PromoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromoteError::Refused(why) => write!(f, "{why}"),
            PromoteError::AlreadyUnderWay => write!(f, "a promotion is already under way"),
            PromoteError::Stopped => write!(f, "the failover controller stopped"),
            PromoteError::TimedOut => write!(f, "no answer from the failover controller in time"),
        }
    }
}

impl std::error::Error for PromoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PromoteError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

/// Why `relayd demote` did not hand over (the node serves again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverError {
    NotPrimary(Role),
    NotClustered,
    DeliveriesInFlight,
    StandbyBehind { last: u64 },
    Handover(HandoverError),
}

impl fmt::Display for SwitchoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchoverError::NotPrimary(role) => {
                write!(f, "this node is a {role}, not the primary")
            }
            SwitchoverError::NotClustered => {
                write!(f, "this node is not in a cluster: there is nobody to hand over to")
            }
            SwitchoverError::DeliveriesInFlight => {
                write!(f, "deliveries in flight did not finish in time")
            }
            SwitchoverError::StandbyBehind { last } => {
                write!(f, "the standby did not catch up to record {last} in time")
            }
            SwitchoverError::Handover(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SwitchoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SwitchoverError::Handover(e) => Some(e),
            _ => None,
        }
    }
}

/// Why `relayd failover pause|resume` or `relayd rebuild` did nothing (the node is as it was).
#[derive(Debug)]
pub enum MaintenanceError {
    NotClustered,
    /// `relayd rebuild` on a node that is (or is becoming) the primary: it holds the data.
    NotStandby(Role),
    /// A claim or an epoch of this node's own is under way: it is becoming the primary.
    Promoting,
    /// The spool could not record it.
    Spool(SpoolError),
}

impl fmt::Display for MaintenanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaintenanceError::NotClustered => write!(f, "this node is not in a cluster"),
            MaintenanceError::NotStandby(role) => write!(
                f,
                "this node is a {role}, not a standby: only a standby is rebuilt from its primary (demote it first)"
            ),
            MaintenanceError::Promoting => {
                write!(f, "this node is claiming an epoch of its own: it is becoming the primary")
            }
            MaintenanceError::Spool(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MaintenanceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MaintenanceError::Spool(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SpoolError> for MaintenanceError {
    fn from(e: SpoolError) -> MaintenanceError {
        MaintenanceError::Spool(e)
    }
}

/// Why a request to the witness got no answer we can use.
#[derive(Debug)]
pub enum WitnessError {
    Connect(std::io::Error),
    /// The name the witness is dialled by is not a valid TLS server name.
    PeerName(rustls_pki_types::InvalidDnsNameError),
    Tls(std::io::Error),
    Frame(FrameError),
    Flush(std::io::Error),
    TimedOut,
    /// An answer that is not the one asked for.
    Unexpected(Box<Frame>),
}

impl fmt::Display for WitnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WitnessError::Connect(e) => write!(f, "connect to the witness: {e}"),
            WitnessError::PeerName(e) => write!(f, "{e}"),
            WitnessError::Tls(e) => write!(f, "TLS with the witness: {e}"),
            WitnessError::Frame(e) => write!(f, "{e}"),
            WitnessError::Flush(e) => write!(f, "{e}"),
            WitnessError::TimedOut => write!(f, "the witness did not answer in time"),
            WitnessError::Unexpected(frame) => {
                write!(f, "unexpected answer from the witness: {frame:?}")
            }
        }
    }
}

impl std::error::Error for WitnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WitnessError::Connect(e) | WitnessError::Tls(e) | WitnessError::Flush(e) => Some(e),
            WitnessError::PeerName(e) => Some(e),
            WitnessError::Frame(e) => Some(e),
            WitnessError::TimedOut | WitnessError::Unexpected(_) => None,
        }
    }
}

/// Why the witness server could not run.
#[derive(Debug)]
pub enum WitnessServeError {
    NoCluster,
    /// The cluster link's certificates.
    Config(ConfigError),
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    ReadGrant {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The grant file holds no epoch where it should.
    BadGrant {
        path: PathBuf,
        text: String,
    },
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl fmt::Display for WitnessServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WitnessServeError::NoCluster => write!(f, "a witness needs a [cluster] section"),
            WitnessServeError::Config(e) => write!(f, "{e}"),
            WitnessServeError::DataDir { path, source }
            | WitnessServeError::ReadGrant { path, source } => {
                write!(f, "{}: {source}", path.display())
            }
            WitnessServeError::BadGrant { path, text } => {
                write!(f, "{}: not an epoch: {text:?}", path.display())
            }
            WitnessServeError::Listen { address, source } => {
                write!(f, "cannot listen on {address}: {source}")
            }
        }
    }
}

impl std::error::Error for WitnessServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WitnessServeError::NoCluster | WitnessServeError::BadGrant { .. } => None,
            WitnessServeError::Config(e) => Some(e),
            WitnessServeError::DataDir { source, .. }
            | WitnessServeError::ReadGrant { source, .. }
            | WitnessServeError::Listen { source, .. } => Some(source),
        }
    }
}
