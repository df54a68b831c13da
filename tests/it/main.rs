//! relayd's integration tests: one test binary (so that a clean build links once), one module
//! per subject. Each runs the real relayd binary over real sockets through the harness in
//! [`common`].
//!
//! `cargo test --test it NAME::` runs one module. Cargo ran one binary per file before, one
//! after another; here every module shares one process and its test threads, so
//! scripts/test.sh runs the modules that load the machine or time failovers (campaign, drill,
//! failover, faults, powercut) each in a pass of its own, and the rest together.

// Cargo.toml denies unwrap/expect outside tests; here a failed unwrap is a failed test, and
// clippy does not see the harness's helpers as test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin;
mod campaign;
mod cli;
mod cluster_link;
mod damaged_spool;
mod delivery;
mod drill;
mod dsn;
mod durability;
mod failover;
mod faults;
mod full_disk;
mod monitoring;
mod package;
mod postfix_peers;
mod powercut;
mod queue;
mod recipients;
mod replication;
mod retention;
mod signals;
mod sled_import;
mod smtp_clients;
mod smtp_limits;
mod systemd;
mod tidy;
mod witness_admin;
