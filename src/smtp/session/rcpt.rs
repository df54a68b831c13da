//! RCPT TO: adds a recipient, if we relay for it and its domain's checks know it.

use super::{Address, RcptTo, Reply, Session};

impl Session {
    pub(super) async fn rcpt(&mut self, rcpt: RcptTo) -> Reply {
        let RcptTo { address: recipient, dsn } = rcpt;
        if let Some(refusal) = self.rcpt_refusal(&recipient) {
            return refusal;
        }
        // A relay domain's recipient checks (lists, verification at the next hop) hold for
        // every client, trusted ones too, as Postfix's smtpd_reject_unlisted_recipient does.
        let recipients = self.services.recipients.clone();
        if let Some(refusal) = recipients.refusal(&self.config, &recipient).await {
            let client = self.peer.ip();
            tracing::info!(rcpt = %format_args!("<{recipient}>"), %client, reply = %refusal, "rejected: recipient");
            return refusal;
        }
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        transaction.recipients.push(recipient);
        transaction.rcpt_dsn.push(dsn);
        Reply::new(250, "2.1.5", "Ok")
    }

    /// What refuses `recipient` before its domain's checks: the transaction's state, its
    /// limits, and relay control.
    fn rcpt_refusal(&self, recipient: &Address) -> Option<Reply> {
        let relay = &self.config.relay;
        let client = self.peer.ip();
        let Some(transaction) = self.transaction.as_ref() else {
            return Some(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if transaction.chunked.is_some() {
            return Some(Reply::new(503, "5.5.1", "Error: BDAT in progress"));
        }
        if transaction.recipients.len() >= self.config.smtp.max_recipients {
            return Some(Reply::new(452, "4.5.3", "Error: too many recipients"));
        }
        if recipient.is_utf8() && !transaction.mail.smtputf8 {
            return Some(Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"));
        }
        // From an outsider: only our customers' domains, and no routing hidden in the local part.
        let outsider = !relay.is_trusted(client);
        if outsider && (!relay.is_relay_domain(&recipient.domain) || recipient.has_routing()) {
            tracing::info!(rcpt = %format_args!("<{recipient}>"), %client, "rejected: relaying denied");
            return Some(Reply::new(550, "5.7.1", "relaying denied"));
        }
        None
    }
}
