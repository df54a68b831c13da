//! MAIL FROM: opens a transaction.

use super::{MailFrom, Reply, Session, Transaction};
use crate::metrics::Metrics;
use crate::spool::ErrorKind;

/// The spool's disk is (nearly) full: the client keeps the message and tries again later.
pub(super) fn insufficient_storage() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage")
}

impl Session {
    pub(super) fn mail(&mut self, mail: MailFrom) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, "5.5.1", "Error: nested MAIL command");
        }
        if mail.size.is_some_and(|size| size > self.config.smtp.max_message_size) {
            return Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
        }
        if mail.sender.as_ref().is_some_and(|sender| sender.is_utf8()) && !mail.smtputf8 {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        if let Some(refusal) = self.no_room(mail.size) {
            return refusal;
        }
        self.transaction =
            Some(Transaction { mail, recipients: Vec::new(), rcpt_dsn: Vec::new(), chunked: None });
        Reply::new(250, "2.1.0", "Ok")
    }
}

impl Session {
    /// `452 4.3.1` when a new message would eat into the room kept free on the spool's file
    /// system (`[node].min_free_space`, plus the size the client declared: RFC 1870), or when
    /// the spool is closed after a failed write. Refused here, before the body, the client
    /// sends nothing in vain, and the spool never meets a full disk in the usual case.
    fn no_room(&self, declared: Option<u64>) -> Option<Reply> {
        let needed = self.config.node.min_free_space.saturating_add(declared.unwrap_or(0));
        let free = match self.services.spool.free_space() {
            Ok(free) if free >= needed => return None,
            Ok(free) => Some(free),
            Err(e) if e.kind == ErrorKind::NoSpace => None,
            Err(e) => {
                // Not knowing is no reason to refuse: a write that fails still gets its 4xx.
                tracing::warn!(error = %e, "cannot read the spool's free space");
                return None;
            }
        };
        tracing::warn!(client = %self.peer.ip(), free, needed, "insufficient storage: transaction refused");
        Metrics::count(&self.services.metrics.storage_refusals);
        Some(insufficient_storage())
    }
}
