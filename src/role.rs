//! The node's role as every part reads it: role, epoch, and until when it may serve.
//!
//! A leaf module: it imports nothing of relayd but the config's [`Role`], so that `smtp`,
//! `delivery`, `admin` and `replication` can read the role without importing `ha`, which sits
//! above them all and is the only writer ([`RoleWatch`] is made by `ha`).
//!
//! Serving is a question asked at the moment of use, against the lease's deadline, never a
//! cached flag: a session asks [`RoleStatus::serving_now`] before each 250, the queue runner
//! before each delivery. A primary whose process was paused past its lease wakes up not
//! serving, whatever the last published status said.

use std::time::Instant;

use tokio::sync::watch;

pub use crate::config::Role;

/// Until when a primary may serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeUntil {
    /// Not serving: a standby, a primary without a lease (fenced), or one that is handing over.
    Never,
    /// A leased primary: serving until this instant, unless renewed.
    Until(Instant),
    /// A primary that needs no lease (nobody can be promoted in its place automatically).
    Always,
}

/// What this node is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleStatus {
    pub role: Role,
    pub epoch: u64,
    pub serve: ServeUntil,
}

impl RoleStatus {
    /// Accepting and delivering mail at `now`.
    pub fn serving_at(&self, now: Instant) -> bool {
        self.role == Role::Primary
            && match self.serve {
                ServeUntil::Never => false,
                ServeUntil::Until(deadline) => now < deadline,
                ServeUntil::Always => true,
            }
    }

    /// Accepting and delivering mail now (reads the clock).
    pub fn serving_now(&self) -> bool {
        self.serving_at(Instant::now())
    }
}

/// The receiving side of the role's watch: what every part holds.
pub type RoleWatch = watch::Receiver<RoleStatus>;

/// Reads the current status of a role watch.
pub fn current(watch: &RoleWatch) -> RoleStatus {
    *watch.borrow()
}
