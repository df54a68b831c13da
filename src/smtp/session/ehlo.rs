//! EHLO and HELO: the client names itself; EHLO lists the extensions we offer.

use super::{Reply, Session};

impl Session {
    pub(super) fn ehlo(&mut self, name: String, extended: bool) -> Reply {
        // RFC 5321 section 4.1.4: EHLO/HELO resets any transaction.
        self.transaction = None;
        self.helo = Some(name);
        self.esmtp = extended;
        let hostname = self.config.smtp.hostname.clone();
        if !extended {
            return Reply::plain(250, vec![hostname.into()]);
        }
        let mut lines = vec![
            hostname.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.smtp.max_message_size).into(),
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.tls_acceptor.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        Reply::plain(250, lines)
    }
}
