//! relayd: a primary/warm-standby SMTP relay whose 250 means "on disk".
//!
//! The modules follow the data, in layers; a module imports only the layers below it
//! (docs/ARCHITECTURE.md has the map, `tests/it/tidy.rs` checks the rule):
//!
//! - the bottom, read by all: [`config`] (the operator's file), [`role`] (what this node is
//!   now, written only by [`ha`]), [`proto`] (the SMTP grammar, no I/O), [`spool`] (the durable
//!   queue and its change log), [`metrics`], [`logging`], [`certs`], [`service`] (systemd's
//!   notify protocol and watchdog);
//! - the data path: [`delivery`] relays queued mail to its routes, [`replication`] ships the
//!   spool's change log to the standby, [`recipients`] checks a relay domain's recipients at
//!   RCPT (its lists, or a probe at the next hop), [`smtp`] receives mail into the spool;
//! - [`ha`]: the failover controller, the one writer of the role;
//! - the top: [`admin`] (the HTTP API and the operator's commands), [`node`] (wires a running
//!   node), [`cli`] (the command line).

pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod ha;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod recipients;
pub mod replication;
pub mod role;
pub mod service;
pub mod smtp;
pub mod spool;
