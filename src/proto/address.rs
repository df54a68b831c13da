//! Envelope addresses: the Path grammar of RFC 5321 section 4.1.2, with the UTF-8 extension of
//! RFC 6531. Parsing is lenient where Postfix is (a space after the colon, a bare address
//! without angle brackets, a source route, which is ignored as RFC 5321 asks) and strict where
//! a mistake would change where mail goes (quoting, the domain's syntax, the lengths).

use std::fmt;

/// RFC 5321 section 4.5.3.1: limits on the parts of a path, in octets.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// A mailbox: `local@domain`. The local part is kept as written (quotes included), because only
/// the destination may interpret it; the domain is kept as written and compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    /// True when the local part routes further: the "percent hack" (`user%host`), a bang path
    /// (`host!user`), or an "@" inside a quoted local part. A relay must not let an outsider
    /// route through it that way (Postfix's `allow_untrusted_routing = no`).
    pub fn has_routing(&self) -> bool {
        self.local.contains(['%', '!', '@'])
    }

    /// True when any part needs SMTPUTF8 (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Why an address was refused; the session turns it into a 501 or 553 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    Syntax,
    TooLong,
}

/// Splits a path off the start of `input` (text after `FROM:` or `TO:`). Returns the mailbox,
/// `None` for the null path `<>`, and the rest of the input (the parameters).
pub fn parse_path(input: &str) -> Result<(Option<Address>, &str), AddressError> {
    let input = input.trim_start_matches(' ');
    let (inner, rest) = match input.strip_prefix('<') {
        Some(after) => {
            let close = closing_bracket(after).ok_or(AddressError::Syntax)?;
            (&after[..close], &after[close + 1..])
        }
        // Postfix accepts an address without brackets; so do we, up to the first space.
        None => match input.find(' ') {
            Some(space) => (&input[..space], &input[space..]),
            None => (input, ""),
        },
    };
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::Syntax);
    }
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if inner.is_empty() {
        return Ok((None, rest));
    }
    let mailbox = strip_source_route(inner)?;
    parse_mailbox(mailbox).map(|address| (Some(address), rest))
}

/// The index of the `>` that closes a path, skipping quoted strings.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@relay1,@relay2:user@domain` -> `user@domain` (RFC 5321 section 4.1.2 and appendix C:
/// source routes are accepted and ignored).
fn strip_source_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let colon = path.find(':').ok_or(AddressError::Syntax)?;
    for hop in path[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::Syntax)?;
        if !is_domain(domain) {
            return Err(AddressError::Syntax);
        }
    }
    Ok(&path[colon + 1..])
}

fn parse_mailbox(mailbox: &str) -> Result<Address, AddressError> {
    let local_end = if mailbox.starts_with('"') {
        quoted_string_end(mailbox).ok_or(AddressError::Syntax)?
    } else {
        mailbox.find('@').ok_or(AddressError::Syntax)?
    };
    let (local, at_domain) = mailbox.split_at(local_end);
    let domain = at_domain.strip_prefix('@').ok_or(AddressError::Syntax)?;
    // A fully qualified "example.com." is example.com (as Postfix reads it).
    let domain = match domain.strip_suffix('.') {
        Some(bare) if !bare.ends_with('.') && !bare.starts_with('[') => bare,
        _ => domain,
    };
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    let local_ok = if local.starts_with('"') { true } else { is_dot_string(local) };
    if !local_ok || !(is_domain(domain) || is_address_literal(domain)) {
        return Err(AddressError::Syntax);
    }
    Ok(Address { local: local.to_string(), domain: domain.to_string() })
}

/// The index just past the closing quote of a quoted string at the start of `s`.
fn quoted_string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => {
                if !(' '..='~').contains(&c) {
                    return None;
                }
                escaped = false
            }
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            c if c.is_ascii_control() => return None,
            _ => {}
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain name: dot-separated labels of letters, digits and hyphens (or UTF-8, RFC 6531),
/// no empty label, so no trailing dot.
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(input: &str) -> Address {
        match parse_path(input) {
            Ok((Some(address), _)) => address,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    #[test]
    fn plain_quoted_literal_and_utf8_mailboxes() {
        assert_eq!(mailbox("<a.b@Example.COM>").to_string(), "a.b@Example.COM");
        assert_eq!(mailbox("<\"x@y z\"@example.com>").local, "\"x@y z\"");
        assert_eq!(mailbox("<\"a\\\"b\"@example.com>").local, "\"a\\\"b\"");
        assert_eq!(mailbox("<u@[192.0.2.1]>").domain, "[192.0.2.1]");
        assert_eq!(mailbox("<u@Example.COM.>").domain, "Example.COM", "a trailing dot is dropped");
        assert!(mailbox("<u%elsewhere.test@example.com>").has_routing());
        assert!(mailbox("<elsewhere.test!u@example.com>").has_routing());
        assert!(mailbox("<\"u@elsewhere.test\"@example.com>").has_routing());
        assert!(!mailbox("<u.v@example.com>").has_routing());
        assert_eq!(mailbox("<u@[IPv6:2001:db8::1]>").domain, "[IPv6:2001:db8::1]");
        assert!(mailbox("<jöran@bücher.de>").is_utf8());
        assert!(!mailbox("<a@b.c>").is_utf8());
    }

    #[test]
    fn null_path_bare_address_and_source_route() {
        assert_eq!(parse_path("<>"), Ok((None, "")));
        assert_eq!(parse_path("<> SIZE=10").map(|(_, rest)| rest), Ok(" SIZE=10"));
        assert_eq!(mailbox(" a@b.c").to_string(), "a@b.c");
        assert_eq!(parse_path("a@b.c SIZE=1").map(|(_, rest)| rest), Ok(" SIZE=1"));
        assert_eq!(mailbox("<@hop1.test,@hop2.test:u@d.test>").to_string(), "u@d.test");
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "<a@b.c",
            "<a@b.c>x",
            "<a@>",
            "<@b.c>",
            "<a>",
            "<a..b@c.d>",
            "<.a@c.d>",
            "<a@b..c>",
            "<a@b.c..>",
            "<a@-b.c>",
            "<a@[300.1.1.1]>",
            "<\"unterminated@b.c>",
            "<a b@c.d>",
            "<@hop:>",
            "<@:a@b.c>",
        ] {
            assert_eq!(parse_path(bad).map(|_| ()), Err(AddressError::Syntax), "{bad}");
        }
        let long_local = format!("<{}@b.c>", "x".repeat(65));
        assert_eq!(parse_path(&long_local).map(|_| ()), Err(AddressError::TooLong));
        let long_path = format!("<a@{}.c>", "b.".repeat(130));
        assert_eq!(parse_path(&long_path).map(|_| ()), Err(AddressError::TooLong));
    }
}
