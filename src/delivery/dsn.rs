//! Delivery status notifications (RFC 3464): the bounce a sender gets for the recipients we
//! gave up on, as a multipart/report with the original message's headers attached.

use std::fmt::Write;

use crate::spool::{MessageRecord, Spool};

/// Headers of the original message copied into a DSN, at most.
const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// One recipient the DSN reports.
pub struct Failed<'a> {
    pub recipient: &'a str,
    pub reply: &'a str,
    pub relay: Option<&'a str>,
    /// True when the message expired in the queue rather than being refused.
    pub expired: bool,
}

/// The enhanced status code in a reply ("550 5.1.1 ..." or "4.4.1 ..."), or one derived from
/// its class when it has none.
pub fn status_of(reply: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".into();
    }
    let code = reply
        .split_whitespace()
        .take(2)
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string);
    code.unwrap_or_else(|| if reply.starts_with('4') { "4.0.0".into() } else { "5.0.0".into() })
}

/// Builds the DSN message (headers and body, CRLF line ends) for `message`'s `failed`
/// recipients, from `hostname`'s MAILER-DAEMON to the original sender.
pub fn build(
    hostname: &str,
    message: &MessageRecord,
    failed: &[Failed<'_>],
    spool: &Spool,
) -> Vec<u8> {
    let envelope = &message.envelope;
    let id = envelope.id;
    let boundary = format!("{id}/{hostname}");
    let now = chrono::Utc::now().to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp_millis(envelope.received_at_ms as i64)
        .map_or_else(|| now.clone(), |t| t.to_rfc2822());
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {now}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         The reasons are given below.\r\n\
         \r\n",
        sender = envelope.sender,
    );
    for f in failed {
        let why = if f.expired { "message expired in the queue; last reply: " } else { "" };
        let _ = write!(out, "<{}>: {why}{}\r\n", f.recipient, f.reply);
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Relayd-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n"
    );
    for f in failed {
        // RFC 6533: an address that is not ASCII is reported as utf-8.
        let address_type = if f.recipient.is_ascii() { "rfc822" } else { "utf-8" };
        let _ = write!(
            out,
            "\r\nFinal-Recipient: {address_type}; {}\r\n\
             Action: failed\r\n\
             Status: {}\r\n",
            f.recipient,
            status_of(f.reply, f.expired),
        );
        if let Some(relay) = f.relay {
            let host = relay.split('[').next().unwrap_or(relay);
            let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
        }
        if f.reply.chars().next().is_some_and(|c| c.is_ascii_digit()) && f.relay.is_some() {
            let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", f.reply);
        } else {
            let _ = write!(out, "Diagnostic-Code: X-Relayd; {}\r\n", f.reply);
        }
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&original_headers(message, spool));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The header section of the stored message (up to the blank line), CRLF-terminated.
fn original_headers(message: &MessageRecord, spool: &Spool) -> Vec<u8> {
    let mut headers = Vec::new();
    for chunk in spool.body(message.envelope.id) {
        let Ok(chunk) = chunk else { break };
        headers.extend_from_slice(&chunk);
        if let Some(end) = headers.windows(4).position(|w| w == b"\r\n\r\n") {
            headers.truncate(end + 2);
            return headers;
        }
        if headers.len() >= MAX_ORIGINAL_HEADERS {
            break;
        }
    }
    headers.truncate(MAX_ORIGINAL_HEADERS);
    if !headers.ends_with(b"\r\n") {
        headers.extend_from_slice(b"\r\n");
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_come_from_the_reply_or_its_class() {
        assert_eq!(status_of("550 5.1.1 <u@x>: unknown", false), "5.1.1");
        assert_eq!(status_of("5.1.2 Host or domain name not found", false), "5.1.2");
        assert_eq!(status_of("554 no thanks", false), "5.0.0");
        assert_eq!(status_of("451 4.3.0 try later", true), "4.4.7");
    }
}
