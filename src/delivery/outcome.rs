//! What one delivery attempt did for one recipient, and the reply that says why, kept as its
//! parts (code, enhanced status code, text) from the wire to the spool, the logs and the DSN.

use std::fmt;

use smtp_proto::Response;

/// An enhanced status code (RFC 3463): class, subject, detail, as in "5.1.1".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedStatus(pub [u8; 3]);

impl EnhancedStatus {
    /// 4.4.7: the message expired in the queue (RFC 3463, "Delivery time expired").
    pub const EXPIRED: EnhancedStatus = EnhancedStatus([4, 4, 7]);

    /// The class alone ("2.0.0", "4.0.0" or "5.0.0"), for a reply that gave no enhanced code.
    fn of_class(code: u16) -> EnhancedStatus {
        let class = match code {
            200..=299 => 2,
            400..=499 => 4,
            _ => 5,
        };
        EnhancedStatus([class, 0, 0])
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [class, subject, detail] = self.0;
        write!(f, "{class}.{subject}.{detail}")
    }
}

/// Why a recipient's attempt ended as it did: the next hop's reply ("550 5.1.1 <u@example.com>:
/// user unknown"), or, when there was none to quote, our own account of the failure, which has
/// an enhanced status code and no reply code ("4.4.1 connect to ...: refused").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The next hop's reply code; `None` for our own account.
    pub code: Option<u16>,
    /// The enhanced status code, when the next hop gave one (ours always do).
    pub status: Option<EnhancedStatus>,
    /// One line, at most [`MAX_REPLY`] bytes of the next hop's text.
    pub text: String,
}

/// The most of a next hop's reply text that is kept (logged, stored, replicated).
const MAX_REPLY: usize = 512;

impl Reply {
    /// Our own account of a failure.
    pub fn ours(status: [u8; 3], text: impl Into<String>) -> Reply {
        Reply { code: None, status: Some(EnhancedStatus(status)), text: text.into() }
    }

    /// A next hop's reply, on one line, its text cut at [`MAX_REPLY`] bytes.
    pub fn from_response(response: &Response<String>) -> Reply {
        let mut text = response.message.replace(['\r', '\n'], " ");
        if text.len() > MAX_REPLY {
            let mut end = MAX_REPLY;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        // smtp-proto reads a missing enhanced code as 0.0.0.
        let status = (response.esc[0] > 0).then_some(EnhancedStatus(response.esc));
        Reply { code: Some(response.code), status, text }
    }

    /// What a recipient bounced for expiry is recorded with: 4.4.7 and the last reply.
    pub fn expired(last: &Reply) -> Reply {
        Reply::ours(EnhancedStatus::EXPIRED.0, format!("message expired; last reply: {last}"))
    }

    /// The enhanced status code a DSN reports for this reply: its own when it has one of the
    /// classes RFC 3463 defines, else the class of its reply code.
    pub fn dsn_status(&self) -> EnhancedStatus {
        match (self.status, self.code) {
            (Some(status), _) if matches!(status.0[0], 2 | 4 | 5) => status,
            (_, Some(code)) => EnhancedStatus::of_class(code),
            // Our own accounts always carry a status; a bare text is a permanent failure.
            (_, None) => EnhancedStatus::of_class(500),
        }
    }
}

impl fmt::Display for Reply {
    /// "550 5.1.1 text", "554 text" (no enhanced code given) or "4.4.1 text" (our own).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = self.code {
            write!(f, "{code} ")?;
        }
        if let Some(status) = self.status {
            write!(f, "{status} ")?;
        }
        f.write_str(&self.text)
    }
}

/// The result of an attempt, with the reply that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted the message for this recipient.
    Delivered { reply: Reply, relay: String },
    /// Try again later.
    Temporary { reply: Reply, relay: Option<String> },
    /// Give up: bounce.
    Permanent { reply: Reply, relay: Option<String> },
}

impl Outcome {
    /// A temporary failure of ours, with no next hop to name.
    pub fn temporary(status: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Temporary { reply: Reply::ours(status, text), relay: None }
    }

    /// A permanent failure of ours, with no next hop to name.
    pub fn permanent(status: [u8; 3], text: impl Into<String>) -> Outcome {
        Outcome::Permanent { reply: Reply::ours(status, text), relay: None }
    }

    /// The same failure, at the next hop `relay` (which the DSN names).
    pub fn at(self, relay: &str) -> Outcome {
        let relay = Some(relay.to_string());
        match self {
            Outcome::Temporary { reply, .. } => Outcome::Temporary { reply, relay },
            Outcome::Permanent { reply, .. } => Outcome::Permanent { reply, relay },
            delivered @ Outcome::Delivered { .. } => delivered,
        }
    }

    /// Classifies the next hop's reply to the end of the message: only a 2xx delivers.
    pub fn from_final_reply(response: &Response<String>, relay: &str) -> Outcome {
        match response.code {
            200..=299 => Outcome::Delivered {
                reply: Reply::from_response(response),
                relay: relay.to_string(),
            },
            _ => Outcome::refused(response, relay),
        }
    }

    /// Classifies a refusal (of MAIL, a RCPT, DATA or the message): 5xx is permanent; anything
    /// else, an unexpected positive reply included, is tried again later.
    pub fn refused(response: &Response<String>, relay: &str) -> Outcome {
        let reply = Reply::from_response(response);
        let relay = Some(relay.to_string());
        match response.code {
            500..=599 => Outcome::Permanent { reply, relay },
            _ => Outcome::Temporary { reply, relay },
        }
    }

    /// Classifies a refusal of RCPT: as [`Outcome::refused`], except that a 552 is temporary,
    /// taken as the 452 it should have been (RFC 5321 section 4.5.3.1.10: servers answered "too
    /// many recipients" with 552, which clients are to treat as temporary). It is recorded as
    /// a 452 with a class-4 status, as Postfix does, so that the log, the retry and a later
    /// expiry report all read as the temporary failure it is taken for.
    pub fn refused_recipient(response: &Response<String>, relay: &str) -> Outcome {
        if response.code != 552 {
            return Outcome::refused(response, relay);
        }
        let mut reply = Reply::from_response(response);
        reply.code = Some(452);
        reply.status = reply
            .status
            .map(|EnhancedStatus([_, subject, detail])| EnhancedStatus([4, subject, detail]));
        Outcome::Temporary { reply, relay: Some(relay.to_string()) }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            Outcome::Delivered { reply, .. }
            | Outcome::Temporary { reply, .. }
            | Outcome::Permanent { reply, .. } => reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: u16, esc: [u8; 3], message: &str) -> Response<String> {
        Response { code, esc, message: message.to_string() }
    }

    #[test]
    fn replies_keep_their_parts_and_read_as_on_the_wire() {
        let reply = Reply::from_response(&response(550, [5, 1, 1], "<u@x>: user\r\nunknown"));
        assert_eq!(reply.code, Some(550));
        assert_eq!(reply.status, Some(EnhancedStatus([5, 1, 1])));
        assert_eq!(reply.to_string(), "550 5.1.1 <u@x>: user  unknown");
        let bare = Reply::from_response(&response(554, [0, 0, 0], "no thanks"));
        assert_eq!((bare.status, bare.to_string()), (None, "554 no thanks".to_string()));
        let ours = Reply::ours([4, 4, 1], "connect to mx: refused");
        assert_eq!(ours.to_string(), "4.4.1 connect to mx: refused");
        assert_eq!(
            Reply::expired(&ours).to_string(),
            "4.4.7 message expired; last reply: 4.4.1 connect to mx: refused"
        );
    }

    #[test]
    fn long_replies_are_cut_on_a_character_boundary() {
        let reply = Reply::from_response(&response(451, [4, 3, 0], &"é".repeat(400)));
        assert_eq!(reply.text.len(), MAX_REPLY + "...".len());
        assert!(reply.text.ends_with("..."));
    }

    #[test]
    fn a_dsn_status_is_the_replys_own_or_its_class() {
        let dsn = |code, esc| Reply::from_response(&response(code, esc, "x")).dsn_status();
        assert_eq!(dsn(550, [5, 1, 1]).to_string(), "5.1.1");
        assert_eq!(dsn(554, [0, 0, 0]).to_string(), "5.0.0");
        assert_eq!(dsn(451, [0, 0, 0]).to_string(), "4.0.0");
        assert_eq!(dsn(250, [0, 0, 0]).to_string(), "2.0.0");
        assert_eq!(dsn(250, [2, 1, 5]).to_string(), "2.1.5");
        // A class RFC 3463 does not define is no status to report.
        assert_eq!(dsn(550, [3, 1, 1]).to_string(), "5.0.0");
        assert_eq!(Reply::ours([5, 1, 2], "no such domain").dsn_status().to_string(), "5.1.2");
    }

    #[test]
    fn only_a_2xx_delivers_and_only_a_5xx_bounces() {
        let at = "mx.test[192.0.2.1]:25";
        assert!(matches!(
            Outcome::from_final_reply(&response(250, [2, 0, 0], "ok"), at),
            Outcome::Delivered { .. }
        ));
        assert!(matches!(
            Outcome::from_final_reply(&response(552, [5, 3, 4], "too big"), at),
            Outcome::Permanent { relay: Some(_), .. }
        ));
        assert!(matches!(
            Outcome::refused(&response(421, [4, 3, 2], "later"), at),
            Outcome::Temporary { relay: Some(_), .. }
        ));
        // A positive reply where a refusal was expected is no delivery: try again.
        assert!(matches!(
            Outcome::refused(&response(250, [0, 0, 0], "?"), at),
            Outcome::Temporary { .. }
        ));
    }

    #[test]
    fn a_552_to_rcpt_is_temporary_and_recorded_as_452() {
        let at = "mx.test[192.0.2.1]:25";
        let full = response(552, [5, 2, 2], "mailbox full");
        let outcome = Outcome::refused_recipient(&full, at);
        assert!(matches!(outcome, Outcome::Temporary { relay: Some(_), .. }), "{outcome:?}");
        assert_eq!(outcome.reply().to_string(), "452 4.2.2 mailbox full");
        assert_eq!(outcome.reply().dsn_status().to_string(), "4.2.2");
        let bare = Outcome::refused_recipient(&response(552, [0, 0, 0], "too many"), at);
        assert_eq!(bare.reply().to_string(), "452 too many");
        assert_eq!(bare.reply().dsn_status().to_string(), "4.0.0");
        // Any other 5xx to RCPT bounces, any 4xx defers.
        let unknown = Outcome::refused_recipient(&response(550, [5, 1, 1], "no such user"), at);
        assert!(matches!(unknown, Outcome::Permanent { .. }), "{unknown:?}");
        let later = Outcome::refused_recipient(&response(451, [4, 3, 0], "later"), at);
        assert!(matches!(later, Outcome::Temporary { .. }), "{later:?}");
        // At the end of the message, a 552 is what it says: exceeded storage, for good.
        assert!(matches!(Outcome::from_final_reply(&full, at), Outcome::Permanent { .. }));
    }
}
