//! What one delivery attempt did for one recipient.

use smtp_proto::Response;

/// The result of an attempt, with the reply text that explains it: the next hop's reply when
/// there was one ("550 5.1.1 <u@example.com>: user unknown"), else our own account of the
/// failure, starting with its enhanced status code ("4.4.1 connect to ...: refused").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted the message for this recipient.
    Delivered { reply: String, relay: String },
    /// Try again later.
    Temporary { reply: String, relay: Option<String> },
    /// Give up: bounce.
    Permanent { reply: String, relay: Option<String> },
}

impl Outcome {
    pub fn temporary(reply: impl Into<String>) -> Outcome {
        Outcome::Temporary { reply: reply.into(), relay: None }
    }

    pub fn permanent(reply: impl Into<String>) -> Outcome {
        Outcome::Permanent { reply: reply.into(), relay: None }
    }

    /// Classifies the next hop's reply to the end of the message: only a 2xx delivers.
    pub fn from_final_reply(response: &Response<String>, relay: &str) -> Outcome {
        match response.code {
            200..=299 => {
                Outcome::Delivered { reply: reply_text(response), relay: relay.to_string() }
            }
            _ => Outcome::refused(response, relay),
        }
    }

    /// Classifies a refusal (of MAIL, a RCPT, DATA or the message): 5xx is permanent; anything
    /// else, an unexpected positive reply included, is tried again later.
    pub fn refused(response: &Response<String>, relay: &str) -> Outcome {
        let reply = reply_text(response);
        let relay = Some(relay.to_string());
        match response.code {
            500..=599 => Outcome::Permanent { reply, relay },
            _ => Outcome::Temporary { reply, relay },
        }
    }

    pub fn reply(&self) -> &str {
        match self {
            Outcome::Delivered { reply, .. }
            | Outcome::Temporary { reply, .. }
            | Outcome::Permanent { reply, .. } => reply,
        }
    }
}

/// The most of a next hop's reply text that is kept (logged, stored, replicated).
const MAX_REPLY: usize = 512;

/// "550 5.1.1 text" (the enhanced code only when the server gave one), on one line, at most
/// [`MAX_REPLY`] bytes of text.
pub fn reply_text(response: &Response<String>) -> String {
    let [class, subject, detail] = response.esc;
    let mut message = response.message.replace(['\r', '\n'], " ");
    if message.len() > MAX_REPLY {
        let mut end = MAX_REPLY;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    if class > 0 {
        format!("{} {class}.{subject}.{detail} {message}", response.code)
    } else {
        format!("{} {message}", response.code)
    }
}
