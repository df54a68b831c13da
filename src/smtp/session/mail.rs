//! MAIL FROM: opens a transaction.

use super::{MailFrom, Reply, Session, Transaction};

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
        self.transaction = Some(Transaction { mail, recipients: Vec::new(), chunked: None });
        Reply::new(250, "2.1.0", "Ok")
    }
}
