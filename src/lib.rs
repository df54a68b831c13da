//! relayd: a primary/warm-standby SMTP relay whose 250 means "on disk".
//!
//! The modules follow the data (see docs/ARCHITECTURE.md for the map):
//! [`smtp`] receives mail into the [`spool`]; [`node`] wires them together for the
//! [`cli`]; [`config`] and [`logging`] serve them all.

pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod ha;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod role;
pub mod smtp;
pub mod spool;
