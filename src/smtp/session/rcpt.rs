//! RCPT TO: adds a recipient, if we relay for it.

use super::{Address, Reply, Session};

impl Session {
    pub(super) fn rcpt(&mut self, recipient: Address) -> Reply {
        let relay = &self.config.relay;
        let client = self.peer.ip();
        let max_recipients = self.config.smtp.max_recipients;
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, "5.5.1", "Error: need MAIL command");
        };
        if transaction.chunked.is_some() {
            return Reply::new(503, "5.5.1", "Error: BDAT in progress");
        }
        if transaction.recipients.len() >= max_recipients {
            return Reply::new(452, "4.5.3", "Error: too many recipients");
        }
        if recipient.is_utf8() && !transaction.mail.smtputf8 {
            return Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
        }
        // From an outsider: only our customers' domains, and no routing hidden in the local part.
        let outsider = !relay.is_trusted(client);
        if outsider && (!relay.is_relay_domain(&recipient.domain) || recipient.has_routing()) {
            tracing::info!(rcpt = %format_args!("<{recipient}>"), %client, "rejected: relaying denied");
            return Reply::new(550, "5.7.1", "relaying denied");
        }
        transaction.recipients.push(recipient);
        Reply::new(250, "2.1.5", "Ok")
    }
}
