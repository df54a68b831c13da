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

    /// Classifies a reply of the next hop at `relay`.
    pub fn from_reply(response: &Response<String>, relay: &str) -> Outcome {
        let reply = reply_text(response);
        let relay = relay.to_string();
        match response.code {
            200..=399 => Outcome::Delivered { reply, relay },
            500..=599 => Outcome::Permanent { reply, relay: Some(relay) },
            _ => Outcome::Temporary { reply, relay: Some(relay) },
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

/// "550 5.1.1 text" (the enhanced code only when the server gave one), on one line.
pub fn reply_text(response: &Response<String>) -> String {
    let [class, subject, detail] = response.esc;
    let message = response.message.replace(['\r', '\n'], " ");
    if class > 0 {
        format!("{} {class}.{subject}.{detail} {message}", response.code)
    } else {
        format!("{} {message}", response.code)
    }
}
