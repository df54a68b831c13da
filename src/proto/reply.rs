//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes (RFC 3463).

use std::borrow::Cow;
use std::fmt;

/// One reply: a code, an optional enhanced status code, and one or more lines of text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<&'static str>,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply { code, status: Some(status), lines: vec![text.into()] }
    }

    /// A reply without an enhanced status code (the greeting, EHLO, HELO).
    pub fn plain(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        Reply { code, status: None, lines }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply on the wire, every line CRLF-terminated.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(separator as u8);
            if let Some(status) = self.status {
                out.extend_from_slice(status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    /// The reply's first line without CRLF, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        if let Some(line) = self.lines.first() {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_replies_use_dashes_until_the_last_line() {
        let mut out = Vec::new();
        Reply::plain(250, vec!["mx.test".into(), "PIPELINING".into(), "SIZE 10".into()])
            .write_to(&mut out);
        assert_eq!(out, b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        out.clear();
        Reply::new(550, "5.7.1", "relaying denied").write_to(&mut out);
        assert_eq!(out, b"550 5.7.1 relaying denied\r\n");
    }
}
