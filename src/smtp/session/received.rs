//! The Received: header we prepend to every message (RFC 5321 section 4.4, RFC 5322 3.6.7).

use super::Session;
use crate::spool::QueueId;

impl Session {
    /// The trace header for a message about to be received, CRLF-terminated and folded.
    pub(super) fn received_header(
        &self,
        id: QueueId,
        recipients: &[super::Address],
        smtputf8: bool,
    ) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let mut header = format!("Received: from {helo} (unknown [{}])\r\n", self.peer.ip());
        if let Some(tls) = &self.tls {
            header += &format!("\t(using {} with cipher {})\r\n", tls.version, tls.cipher);
        }
        // RFC 3848 and RFC 6531 name the protocols.
        let protocol = match (smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, _) => "SMTP",
        };
        header += &format!("\tby {} (relayd) with {protocol} id {id}", self.config.smtp.hostname);
        // Name the recipient only when there is one, so that a copy does not reveal the others.
        if let [only] = recipients {
            header += &format!("\r\n\tfor <{only}>");
        }
        header += &format!(";\r\n\t{}\r\n", chrono::Utc::now().to_rfc2822());
        header
    }
}
