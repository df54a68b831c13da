//! Delivery status notifications (RFC 3464): the reports a sender gets about its recipients,
//! as a multipart/report. A failure report (a bounce) for the recipients we gave up on; with
//! the DSN extension (RFC 3461), also a delay report for a recipient still being retried, and a
//! "relayed" report for one handed to a next hop that offers no DSN, when the sender asked.

use std::fmt::Write;

use super::outcome::{EnhancedStatus, Reply};
use crate::proto::dsn::Orcpt;
use crate::spool::{MessageRecord, Spool};

/// Headers of the original message copied into a DSN, at most.
const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;
/// The most of a message a failure report returns whole (RET=FULL); a larger one gets its
/// header section only (Postfix's bounce_size_limit).
pub const MAX_RETURNED_MESSAGE: usize = 50_000;

/// One recipient the DSN reports.
pub struct Failed<'a> {
    pub recipient: &'a str,
    /// The next hop's reply, or our account of the failure (the last one, for an expiry).
    pub reply: &'a Reply,
    pub relay: Option<&'a str>,
    /// True when the message expired in the queue rather than being refused.
    pub expired: bool,
}

impl Failed<'_> {
    fn status(&self) -> EnhancedStatus {
        status(self.reply, self.expired)
    }
}

/// The Status field (and the `dsn=` of a log line) of a recipient given up on after `reply`:
/// 4.4.7 for an expiry, else the reply's own (or its class).
pub fn status(reply: &Reply, expired: bool) -> EnhancedStatus {
    if expired { EnhancedStatus::EXPIRED } else { reply.dsn_status() }
}

/// What a report is about: its Action, its subject and its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Given up on (Action: failed).
    Failure,
    /// Still being retried (Action: delayed).
    Delay,
    /// Handed to a next hop that offers no DSN (Action: relayed): no report follows.
    Relayed,
}

impl Kind {
    /// The `report=` of the "accepted DSN" log line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Delay => "delay",
            Kind::Relayed => "relayed",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
            Kind::Relayed => "relayed",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::Failure => "Undelivered Mail Returned to Sender",
            Kind::Delay => "Delayed Mail (still being retried)",
            Kind::Relayed => "Successful Mail Delivery Report",
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Kind::Failure => {
                "Your message could not be delivered to one or more recipients.\r\n\
                 The reasons are given below."
            }
            Kind::Delay => {
                "Your message could not be delivered yet to one or more recipients.\r\n\
                 It is still being retried: you need not send it again."
            }
            Kind::Relayed => {
                "Your message was relayed to one or more recipients at a next hop that does\r\n\
                 not offer delivery reports: no further report about them will come from here."
            }
        }
    }
}

/// What of the original message a report carries.
pub enum Returned<'a> {
    /// Its header section (text/rfc822-headers).
    Headers(&'a [u8]),
    /// The whole message (message/rfc822): a failure report for RET=FULL.
    Message(&'a [u8]),
}

/// A report's kind, what the sender gave with the message (ENVID, each recipient's ORCPT, in
/// the order of the recipients reported), and what of the message it returns.
pub struct Notice<'a> {
    pub kind: Kind,
    pub envid: Option<&'a str>,
    pub orcpts: Vec<Option<&'a Orcpt>>,
    pub returned: Returned<'a>,
}

/// Builds the failure report (headers and body, CRLF line ends) for `message`'s `failed`
/// recipients, from `hostname`'s MAILER-DAEMON to the original sender, dated `now_ms` (Unix
/// ms), with `headers`, the original message's ([`original_headers`]), attached: a bounce for
/// a message without DSN parameters.
pub fn build(
    hostname: &str,
    message: &MessageRecord,
    failed: &[Failed<'_>],
    headers: &[u8],
    now_ms: u64,
) -> Vec<u8> {
    let notice = Notice {
        kind: Kind::Failure,
        envid: None,
        orcpts: Vec::new(),
        returned: Returned::Headers(headers),
    };
    report(hostname, message, &notice, failed, now_ms)
}

/// Builds the report `notice` describes for `message`'s recipients `about`.
pub fn report(
    hostname: &str,
    message: &MessageRecord,
    notice: &Notice<'_>,
    about: &[Failed<'_>],
    now_ms: u64,
) -> Vec<u8> {
    let envelope = &message.envelope;
    let id = envelope.id;
    let boundary = format!("{id}/{hostname}");
    let rfc2822 = |ms: u64| {
        i64::try_from(ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc2822())
    };
    let now = rfc2822(now_ms).unwrap_or_default();
    let arrival = rfc2822(envelope.received_at_ms).unwrap_or_else(|| now.clone());
    let kind = notice.kind;
    let mut out = String::new();
    // Writing to a String cannot fail. Each report of a message has a Message-ID of its own.
    let _ = write!(
        out,
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {now}\r\n\
         Message-ID: <{id}.{tag}@{hostname}>\r\n\
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
         {explanation}\r\n\
         \r\n",
        sender = envelope.sender,
        subject = kind.subject(),
        // A failure report keeps the Message-ID it always had; a delay or relayed report may
        // follow another about the same message.
        tag = match kind {
            Kind::Failure => "dsn".to_string(),
            Kind::Delay | Kind::Relayed => format!("{}{now_ms}", kind.name()),
        },
        explanation = kind.explanation(),
    );
    for f in about {
        let why = if f.expired { "message expired in the queue; last reply: " } else { "" };
        let _ = write!(out, "<{}>: {why}{}\r\n", f.recipient, f.reply);
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    );
    if let Some(envid) = notice.envid {
        let _ = write!(out, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(
        out,
        "Reporting-MTA: dns; {hostname}\r\n\
         X-Relayd-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n"
    );
    for (i, f) in about.iter().enumerate() {
        out += "\r\n";
        if let Some(orcpt) = notice.orcpts.get(i).copied().flatten() {
            let _ = write!(out, "Original-Recipient: {orcpt}\r\n");
        }
        // RFC 6533: an address that is not ASCII is reported as utf-8.
        let address_type = if f.recipient.is_ascii() { "rfc822" } else { "utf-8" };
        let _ = write!(
            out,
            "Final-Recipient: {address_type}; {}\r\n\
             Action: {}\r\n\
             Status: {}\r\n",
            f.recipient,
            kind.action(),
            f.status(),
        );
        if let Some(relay) = f.relay {
            let host = relay.split('[').next().unwrap_or(relay);
            let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
        }
        // What failed at a named next hop is reported as SMTP, our own accounts of it too
        // (a lost connection, a missing extension); what failed before any hop, as ours.
        if f.relay.is_some() {
            let _ = write!(out, "Diagnostic-Code: smtp; {}\r\n", f.reply);
        } else {
            let _ = write!(out, "Diagnostic-Code: X-Relayd; {}\r\n", f.reply);
        }
    }
    let (description, content_type, original) = match (&notice.returned, kind) {
        (Returned::Message(message), _) => ("Undelivered Message", "message/rfc822", message),
        (Returned::Headers(headers), Kind::Failure) => {
            ("Undelivered Message Headers", "text/rfc822-headers", headers)
        }
        (Returned::Headers(headers), _) => ("Message Headers", "text/rfc822-headers", headers),
    };
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: {description}\r\n\
         Content-Type: {content_type}\r\n\
         \r\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(original);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The header section of the stored message (up to the blank line), CRLF-terminated, at most
/// [`MAX_ORIGINAL_HEADERS`] bytes.
pub fn original_headers(message: &MessageRecord, spool: &Spool) -> Vec<u8> {
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

/// The whole stored message, for a failure report that returns it (RET=FULL): None when it is
/// larger than [`MAX_RETURNED_MESSAGE`] or cannot be read whole (its headers are returned
/// instead).
pub fn original_message(message: &MessageRecord, spool: &Spool) -> Option<Vec<u8>> {
    if message.envelope.size > MAX_RETURNED_MESSAGE as u64 {
        return None;
    }
    let mut whole = Vec::new();
    for chunk in spool.body(message.envelope.id) {
        whole.extend_from_slice(&chunk.ok()?);
        if whole.len() > MAX_RETURNED_MESSAGE {
            return None;
        }
    }
    Some(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, LogPosition, QueueId, RecipientState};

    fn message() -> MessageRecord {
        MessageRecord {
            envelope: Envelope {
                id: QueueId::new(),
                sender: "s@client.test".into(),
                recipients: vec!["a@x.test".into(), "b@y.test".into(), "ü@z.test".into()],
                received_at_ms: 1_700_000_000_000,
                client: "127.0.0.1".into(),
                helo: "client.test".into(),
                size: 100,
                eight_bit: false,
                smtputf8: false,
            },
            recipients: vec![RecipientState::new(); 3],
            accepted_at: LogPosition { epoch: 1, seq: 1 },
        }
    }

    /// The delivery-status fields of the DSN's report for `recipient`, up to the next blank line.
    fn fields<'a>(dsn: &'a str, recipient: &str) -> Vec<&'a str> {
        let start = dsn
            .find(&format!("Final-Recipient: rfc822; {recipient}\r\n"))
            .or_else(|| dsn.find(&format!("Final-Recipient: utf-8; {recipient}\r\n")));
        let Some(start) = start else { panic!("no report for {recipient} in {dsn}") };
        dsn[start..].split("\r\n\r\n").next().unwrap_or_default().split("\r\n").collect()
    }

    #[test]
    fn each_recipient_is_reported_with_the_status_and_text_of_its_reply() {
        let message = message();
        let refused = Reply::from_response(&smtp_proto::Response {
            code: 550,
            esc: [5, 1, 1],
            message: "<a@x.test>: no such user".to_string(),
        });
        let bare = Reply::from_response(&smtp_proto::Response {
            code: 554,
            esc: [0, 0, 0],
            message: "no thanks".to_string(),
        });
        let no_domain = Reply::ours([5, 1, 2], "Host or domain name not found: z.test");
        let failed = [
            Failed {
                recipient: "a@x.test",
                reply: &refused,
                relay: Some("mx.x.test[192.0.2.1]:25"),
                expired: false,
            },
            Failed {
                recipient: "b@y.test",
                reply: &bare,
                relay: Some("192.0.2.2:25"),
                expired: false,
            },
            Failed { recipient: "ü@z.test", reply: &no_domain, relay: None, expired: false },
        ];
        let headers = b"Subject: hello\r\nFrom: s@client.test\r\n";
        let dsn = build("mx1.test", &message, &failed, headers, 1_700_000_100_000);
        let text = String::from_utf8(dsn).expect("UTF-8");
        assert!(text.starts_with("From: MAILER-DAEMON@mx1.test (Mail Delivery System)\r\n"));
        assert!(text.contains("To: <s@client.test>\r\n"), "{text}");
        assert!(text.contains("Date: Tue, 14 Nov 2023 22:15:00 +0000\r\n"), "{text}");
        assert!(text.contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"), "{text}");
        assert!(text.contains("<a@x.test>: 550 5.1.1 <a@x.test>: no such user\r\n"), "{text}");
        assert_eq!(
            fields(&text, "a@x.test"),
            [
                "Final-Recipient: rfc822; a@x.test",
                "Action: failed",
                "Status: 5.1.1",
                "Remote-MTA: dns; mx.x.test",
                "Diagnostic-Code: smtp; 550 5.1.1 <a@x.test>: no such user",
            ]
        );
        // No enhanced code in the reply: its class.
        assert_eq!(fields(&text, "b@y.test")[2], "Status: 5.0.0");
        assert_eq!(fields(&text, "b@y.test")[4], "Diagnostic-Code: smtp; 554 no thanks");
        // Failed before any next hop (DNS): our own account, and no Remote-MTA.
        assert_eq!(
            fields(&text, "ü@z.test"),
            [
                "Final-Recipient: utf-8; ü@z.test",
                "Action: failed",
                "Status: 5.1.2",
                "Diagnostic-Code: X-Relayd; 5.1.2 Host or domain name not found: z.test",
            ]
        );
        let id = message.envelope.id;
        assert!(
            text.ends_with(&format!(
                "Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: s@client.test\r\n\
                 \r\n--{id}/mx1.test--\r\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn an_expired_recipient_is_reported_as_4_4_7_with_its_last_reply() {
        let message = message();
        let last = Reply::ours([4, 4, 1], "connect to 192.0.2.9:25: connection refused");
        let failed = [Failed { recipient: "a@x.test", reply: &last, relay: None, expired: true }];
        let text = String::from_utf8(build("mx1.test", &message, &failed, b"", 0)).expect("UTF-8");
        assert!(
            text.contains(
                "<a@x.test>: message expired in the queue; last reply: 4.4.1 connect to \
                 192.0.2.9:25: connection refused\r\n"
            ),
            "{text}"
        );
        assert_eq!(fields(&text, "a@x.test")[2], "Status: 4.4.7");
        assert_eq!(
            fields(&text, "a@x.test")[3],
            "Diagnostic-Code: X-Relayd; 4.4.1 connect to 192.0.2.9:25: connection refused"
        );
    }

    #[test]
    fn a_report_carries_envid_and_orcpt_its_action_and_what_it_returns() {
        let message = message();
        let orcpt = Orcpt { addr_type: "rfc822".into(), address: "A@x.test".into() };
        let later = Reply::ours([4, 4, 1], "connect to 192.0.2.9:25: connection refused");
        let about = [Failed { recipient: "a@x.test", reply: &later, relay: None, expired: false }];
        let notice = |kind, returned| Notice {
            kind,
            envid: Some("QQ314159"),
            orcpts: vec![Some(&orcpt)],
            returned,
        };
        let delayed =
            report("mx1.test", &message, &notice(Kind::Delay, Returned::Headers(b"")), &about, 0);
        let text = String::from_utf8(delayed).expect("UTF-8");
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: message/delivery-status\r\n\r\nOriginal-Envelope-Id: QQ314159\r\nReporting-MTA: dns; mx1.test\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nOriginal-Recipient: rfc822;A@x.test\r\nFinal-Recipient: rfc822; a@x.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n"),
            "{text}"
        );
        let whole = b"Subject: hello\r\n\r\nthe body\r\n";
        let failed = report(
            "mx1.test",
            &message,
            &notice(Kind::Failure, Returned::Message(whole)),
            &about,
            0,
        );
        let text = String::from_utf8(failed).expect("UTF-8");
        assert!(text.contains("Action: failed\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hello\r\n\r\nthe body\r\n"),
            "{text}"
        );
        let relayed =
            report("mx1.test", &message, &notice(Kind::Relayed, Returned::Headers(b"")), &about, 0);
        assert!(String::from_utf8_lossy(&relayed).contains("Action: relayed\r\n"));
    }
}
