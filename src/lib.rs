//! relayd: a primary/warm-standby SMTP relay whose 250 means "on disk".
//!
//! See docs/ARCHITECTURE.md for the map of the code.

pub mod config;
