//! The command side of an SMTP session: a client's byte stream cut into lines (however the
//! reads are split) and each line parsed, MAIL and RCPT parameters and paths included.
//!
//! Checked beyond "no panic": the lines, and so the commands, do not depend on how the stream
//! was split; every refusal is a 4xx/5xx whose text cannot break the reply line; what a parsed
//! command carries holds no ASCII control character, and written back out it parses to the
//! same command.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relayd::proto::{Command, LineReader, MailFrom, Reply, command};
use relayd_fuzz::same_however_split;

fuzz_target!(|data: &[u8]| {
    let lines = same_however_split(data, read_lines);
    for line in lines {
        match line.and_then(|line| command::parse(&line)) {
            Ok(parsed) => check_round_trip(&parsed),
            Err(reply) => check_refusal(&reply),
        }
    }
});

/// The complete lines (or their refusals) in the stream, fed in `pieces`.
fn read_lines(pieces: &[&[u8]]) -> Vec<Result<Vec<u8>, Reply>> {
    let mut reader = LineReader::default();
    let mut lines = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let pushed = reader.push(rest);
            assert!(pushed.consumed > 0 && pushed.consumed <= rest.len(), "no progress");
            rest = &rest[pushed.consumed..];
            lines.extend(pushed.line);
        }
    }
    lines
}

fn check_refusal(reply: &Reply) {
    assert!((400..600).contains(&reply.code), "{reply:?}");
    for line in &reply.lines {
        assert!(!line.chars().any(char::is_control), "control character in {reply:?}");
    }
}

/// Writes `parsed` back as a command line and parses that again.
fn check_round_trip(parsed: &Command) {
    let line = match parsed {
        Command::Ehlo(name) => format!("EHLO {name}"),
        Command::Helo(name) => format!("HELO {name}"),
        Command::Mail(mail) => mail_line(mail),
        Command::Rcpt(rcpt) => format!("RCPT TO:<{}>{}", rcpt.address, rcpt.dsn.params()),
        Command::Bdat { size, last: true } => format!("BDAT {size} LAST"),
        Command::Bdat { size, last: false } => format!("BDAT {size}"),
        // The rest carry nothing that could be written differently.
        _ => return,
    };
    // Names and addresses go into our Received: header and our logs.
    assert!(!line.bytes().any(|b| b.is_ascii_control()), "control character in {parsed:?}");
    match command::parse(line.as_bytes()) {
        Ok(again) => assert_eq!(&again, parsed, "{line:?}"),
        Err(reply) => panic!("{parsed:?} written as {line:?} is refused: {reply}"),
    }
}

fn mail_line(mail: &MailFrom) -> String {
    let sender = mail.sender.as_ref().map(ToString::to_string).unwrap_or_default();
    let mut line = format!("MAIL FROM:<{sender}>");
    if let Some(size) = mail.size {
        line.push_str(&format!(" SIZE={size}"));
    }
    if mail.eight_bit {
        line.push_str(" BODY=8BITMIME");
    }
    if mail.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    line.push_str(&relayd::proto::dsn::MailDsn::params(mail.dsn.ret, mail.dsn.envid.as_deref()));
    line
}
