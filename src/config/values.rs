//! The value types of the config file and their parsers: durations, sizes, addresses,
//! networks, domains, next hops and keyword enums.
//!
//! Each parser returns a [`ValueError`], whose message names the bad value and says what is
//! allowed. The serde wrappers below run these parsers during deserialization, so that a bad
//! value is reported with the key path and the line of the value (the TOML deserializer
//! attaches the span).

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{NextHop, RecipientEntry};

/// A value the config file cannot use, and what is allowed instead. Its `Display` is the
/// message a `ConfigError` gives after the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    Duration {
        input: String,
    },
    Size {
        input: String,
    },
    SizeTooLarge {
        input: String,
    },
    EmptyDomain,
    DomainTooLong {
        input: String,
    },
    DomainNotAscii {
        input: String,
    },
    DomainLabels {
        input: String,
    },
    /// Digits and dots that are no IPv4 address ("999.1.2.3"), or no HOST:PORT at all.
    Address {
        input: String,
    },
    HostPort {
        input: String,
    },
    Ipv6 {
        inside: String,
        input: String,
    },
    Ipv6Unbracketed {
        input: String,
    },
    Port {
        port: String,
        input: String,
    },
    /// The host of a HOST:PORT is no domain name.
    Host(Box<ValueError>),
    /// Neither "mx" nor a HOST:PORT.
    NextHop(Box<ValueError>),
    /// Not one of a keyword enum's words.
    Keyword {
        what: &'static str,
        input: String,
        allowed: &'static [&'static str],
    },
    Listen {
        input: String,
    },
    Network {
        input: String,
    },
    RouteDomainPattern {
        input: String,
    },
    EmptyPath,
    /// A recipient list's entry that is neither "local@domain" nor "@domain".
    RecipientEntry {
        input: String,
    },
}

const HOST_PORT_HINT: &str =
    "expected HOST:PORT such as \"mail.example.com:25\", \"10.0.0.2:7400\" or \"[2001:db8::1]:25\"";

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Duration { input } => write!(
                f,
                "invalid duration {input:?}: expected a number with a unit such as \
                 \"200ms\", \"3s\", \"5m\", \"1h\" or \"5d\""
            ),
            ValueError::Size { input } => write!(
                f,
                "invalid size {input:?}: expected a number with a unit such as \"25MiB\" or \
                 \"512KiB\""
            ),
            ValueError::SizeTooLarge { input } => write!(f, "invalid size {input:?}: too large"),
            ValueError::EmptyDomain => f.write_str("a domain name must not be empty"),
            ValueError::DomainTooLong { input } => {
                write!(f, "domain name {input:?} is longer than 253 characters")
            }
            ValueError::DomainNotAscii { input } => write!(
                f,
                "invalid domain name {input:?}: write internationalized names in their ASCII \
                 (\"xn--\") form"
            ),
            ValueError::DomainLabels { input } => write!(
                f,
                "invalid domain name {input:?}: expected labels of letters, digits and hyphens \
                 separated by dots, such as \"mail.example.com\""
            ),
            ValueError::Address { input } => write!(f, "invalid address {input:?}"),
            ValueError::HostPort { input } => {
                write!(f, "invalid address {input:?}: {HOST_PORT_HINT}")
            }
            ValueError::Ipv6 { inside, input } => {
                write!(f, "invalid IPv6 address {inside:?} in {input:?}")
            }
            ValueError::Ipv6Unbracketed { input } => write!(
                f,
                "invalid address {input:?}: write an IPv6 address in brackets, such as \
                 \"[2001:db8::1]:25\""
            ),
            ValueError::Port { port, input } => {
                write!(f, "invalid port {port:?} in {input:?}: expected a number from 1 to 65535")
            }
            ValueError::Host(e) => write!(f, "{e}: {HOST_PORT_HINT}"),
            ValueError::NextHop(e) => write!(f, "{e} (or \"mx\" for a DNS MX lookup)"),
            ValueError::Keyword { what, input, allowed } => {
                write!(f, "invalid {what} {input:?}: expected one of {}", allowed.join(", "))
            }
            ValueError::Listen { input } => write!(
                f,
                "invalid address {input:?}: expected IP:PORT such as \"0.0.0.0:25\", \
                 \"127.0.0.1:2525\" or \"[::1]:2525\""
            ),
            ValueError::Network { input } => write!(
                f,
                "invalid network {input:?}: expected ADDRESS/PREFIX such as \"10.0.0.0/8\" or \
                 \"::1/128\", or a single address"
            ),
            ValueError::RouteDomainPattern { input } => write!(
                f,
                "invalid route domain {input:?}: a route names one domain exactly, or \"*\" for \
                 the default route"
            ),
            ValueError::EmptyPath => f.write_str("a path must not be empty"),
            ValueError::RecipientEntry { input } => write!(
                f,
                "invalid recipient {input:?}: expected an address such as \"alice@example.com\", \
                 or \"@example.com\" for every address of a domain"
            ),
        }
    }
}

impl std::error::Error for ValueError {}

/// Parses a duration such as "200ms", "3s", "5m", "1h 30m" or "5d".
pub(crate) fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(s.trim()).map_err(|_| ValueError::Duration { input: s.into() })
}

/// Parses a size such as "25MiB", "512KiB", "10MB" or a bare number of bytes ("1048576").
pub(crate) fn parse_size(s: &str) -> Result<u64, ValueError> {
    match s.trim().parse::<bytesize::ByteSize>().map(|b| b.as_u64()) {
        // bytesize saturates on overflow.
        Ok(u64::MAX) => Err(ValueError::SizeTooLarge { input: s.into() }),
        Ok(n) => Ok(n),
        Err(_) => Err(ValueError::Size { input: s.into() }),
    }
}

/// Formats a duration for messages: "3s", "200ms", "1h 30m".
pub(crate) fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Checks DNS name syntax: dot-separated labels of ASCII letters, digits and hyphens, a label
/// neither starting nor ending with a hyphen and at most 63 characters, the whole at most 253.
/// A single label ("localhost") is allowed. The caller strips a trailing dot first.
pub(crate) fn check_domain(s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::EmptyDomain);
    }
    if s.len() > 253 {
        return Err(ValueError::DomainTooLong { input: s.into() });
    }
    if !s.is_ascii() {
        return Err(ValueError::DomainNotAscii { input: s.into() });
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(ValueError::DomainLabels { input: s.into() });
        }
    }
    // "999.1.2.3" is label syntax but clearly meant as an address.
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && s.parse::<Ipv4Addr>().is_err() {
        return Err(ValueError::Address { input: s.into() });
    }
    Ok(())
}

/// Lowercases a domain and removes one trailing dot.
pub(crate) fn normalize_domain(s: &str) -> String {
    s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase()
}

/// Parses "host:port" or "[ipv6]:port"; the returned host has no brackets.
pub(crate) fn parse_host_port(s: &str) -> Result<(String, u16), ValueError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, port) =
            rest.split_once("]:").ok_or_else(|| ValueError::HostPort { input: s.into() })?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| ValueError::Ipv6 { inside: inside.into(), input: s.into() })?;
        (inside.to_string(), port)
    } else {
        let (host, port) =
            s.rsplit_once(':').ok_or_else(|| ValueError::HostPort { input: s.into() })?;
        if host.contains(':') {
            return Err(ValueError::Ipv6Unbracketed { input: s.into() });
        }
        check_domain(host).map_err(|e| ValueError::Host(Box::new(e)))?;
        (host.to_ascii_lowercase(), port)
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p >= 1 => p,
        _ => return Err(ValueError::Port { port: port.into(), input: s.into() }),
    };
    Ok((host, port))
}

impl FromStr for NextHop {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.eq_ignore_ascii_case("mx") {
            return Ok(NextHop::Mx);
        }
        let (host, port) = parse_host_port(s).map_err(|e| ValueError::NextHop(Box::new(e)))?;
        Ok(NextHop::Host { host, port })
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Mx => f.write_str("mx"),
            NextHop::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            NextHop::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Deserializes a string through `FromStr`, the error message being the parser's.
pub(crate) fn from_str_value<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = ValueError>,
{
    struct StrVisitor<T>(&'static str, PhantomData<T>);

    impl<T: FromStr<Err = ValueError>> Visitor<'_> for StrVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            v.parse().map_err(E::custom)
        }
    }

    d.deserialize_str(StrVisitor(expecting, PhantomData))
}

/// Implements `Deserialize` for a value written as a string, through its `FromStr`;
/// `expecting` is what serde says a value of another type should have been.
macro_rules! string_value {
    ($ty:ty, $expecting:expr) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::values::from_str_value(d, $expecting)
            }
        }
    };
}
pub(crate) use string_value;

string_value!(NextHop, "\"mx\" or a HOST:PORT string");

/// Implements `as_str`, `Display`, `FromStr` (ASCII case-insensitive) and `Deserialize` for a
/// field-less enum whose config words are given; the error lists the allowed words.
macro_rules! keyword_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word for this value in the config file.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::config::ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(
                    if s.eq_ignore_ascii_case($word) {
                        return Ok($ty::$variant);
                    }
                )+
                Err($crate::config::ValueError::Keyword {
                    what: $what,
                    input: s.to_string(),
                    allowed: &[$($word),+],
                })
            }
        }

        $crate::config::values::string_value!($ty, concat!("a ", $what, " string"));
    };
}
pub(crate) use keyword_enum;

/// A duration string ("5m").
pub(crate) struct Dur(pub Duration);

string_value!(Dur, "a duration string such as \"5m\"");

impl FromStr for Dur {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_duration(s).map(Dur)
    }
}

/// A size: a string with a unit ("25MiB") or a bare number of bytes.
pub(crate) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size string such as \"25MiB\", or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
        }

        d.deserialize_any(SizeVisitor)
    }
}

/// A socket address to listen on: "IP:PORT".
pub(crate) struct Listen(pub SocketAddr);

string_value!(Listen, "an address string such as \"127.0.0.1:2525\"");

impl FromStr for Listen {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        s.parse().map(Listen).map_err(|_| ValueError::Listen { input: s.into() })
    }
}

/// A network: "10.0.0.0/8", "::1/128", or a single address (a /32 or /128).
pub(crate) struct Net(pub IpNet);

string_value!(Net, "a network string such as \"10.0.0.0/8\"");

impl FromStr for Net {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Net(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Net(IpNet::from(ip)))
            .map_err(|_| ValueError::Network { input: s.into() })
    }
}

/// The address of another cluster node: "HOST:PORT", kept as written.
pub(crate) struct PeerAddr(pub String);

string_value!(PeerAddr, "a HOST:PORT string such as \"10.0.0.2:7400\"");

impl FromStr for PeerAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_host_port(s).map(|_| PeerAddr(s.to_string()))
    }
}

/// A relay domain: "example.com" or ".example.com" (any subdomain); normalized.
pub(crate) struct RelayDomain(pub String);

string_value!(RelayDomain, "a domain string such as \"example.com\"");

impl FromStr for RelayDomain {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let d = normalize_domain(s);
        check_domain(d.strip_prefix('.').unwrap_or(&d))?;
        Ok(RelayDomain(d))
    }
}

/// A route's domain: "example.com" or "*"; normalized.
pub(crate) struct RouteDomain(pub String);

string_value!(RouteDomain, "a domain string such as \"example.com\", or \"*\"");

impl FromStr for RouteDomain {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s == "*" {
            return Ok(RouteDomain(s.to_string()));
        }
        let d = normalize_domain(s);
        if d.starts_with('.') {
            return Err(ValueError::RouteDomainPattern { input: s.into() });
        }
        check_domain(&d)?;
        Ok(RouteDomain(d))
    }
}

/// A file or directory path; must not be empty.
pub(crate) struct FilePath(pub PathBuf);

string_value!(FilePath, "a path string");

impl FromStr for FilePath {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::EmptyPath);
        }
        Ok(FilePath(PathBuf::from(s)))
    }
}

/// An entry of a recipient list (`[[relay.domain]]`'s `recipients`, or a line of its
/// `recipients_file`): "local@domain" or "@domain"; the domain normalized, the local part kept
/// as written (it is compared exactly, as Postfix does).
impl FromStr for RecipientEntry {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::RecipientEntry { input: s.into() };
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        if local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>') {
            return Err(bad());
        }
        let domain = normalize_domain(domain);
        check_domain(&domain).map_err(|_| bad())?;
        Ok(if local.is_empty() {
            RecipientEntry::CatchAll { domain }
        } else {
            RecipientEntry::Address { local: local.to_string(), domain }
        })
    }
}

string_value!(RecipientEntry, "an address string such as \"alice@example.com\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "5 parsecs", "-1s", "soon"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid duration {bad:?}")), "{e}");
            assert!(e.contains("\"200ms\""), "{e}");
        }
        assert_eq!(show_duration(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(
            parse_size("25 parsecs").unwrap_err().to_string(),
            "invalid size \"25 parsecs\": expected a number with a unit such as \"25MiB\" or \
             \"512KiB\""
        );
        assert!(parse_size("").is_err());
        assert!(parse_size("-5MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999EiB").unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn domains() {
        assert!(check_domain("example.com").is_ok());
        assert!(check_domain("localhost").is_ok());
        assert!(check_domain("xn--bcher-kva.example").is_ok());
        assert!(check_domain("10.0.0.2").is_ok());
        for bad in [
            "",
            "exa mple.com",
            "-a.example",
            "a-.example",
            "a..b",
            "ex_ample.com",
            "bücher.example",
            "999.1.2.3",
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_domain(&"a".repeat(64)).is_err());
        assert!(check_domain(&["a"; 128].join(".")).is_err());
        assert_eq!(normalize_domain("Example.COM."), "example.com");
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            parse_host_port("Mail.Example.com:25"),
            Ok(("mail.example.com".to_string(), 25))
        );
        assert_eq!(parse_host_port("[::1]:25"), Ok(("::1".to_string(), 25)));
        assert_eq!(parse_host_port("10.0.0.2:7400"), Ok(("10.0.0.2".to_string(), 7400)));
        assert_eq!(parse_host_port("h:65535"), Ok(("h".to_string(), 65535)));
        for bad in [
            "mail.example.com",
            "mail.example.com:0",
            "mail.example.com:65536",
            "mail.example.com:smtp",
            "::1:25",
            "[::1]25",
            "[nope]:25",
            ":25",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_host_port("h:0").unwrap_err().to_string().contains("1 to 65535"));
    }

    #[test]
    fn next_hops() {
        assert_eq!("mx".parse::<NextHop>(), Ok(NextHop::Mx));
        assert_eq!("MX".parse::<NextHop>(), Ok(NextHop::Mx));
        let hop: NextHop = "[2001:db8::1]:2525".parse().unwrap();
        assert_eq!(hop, NextHop::Host { host: "2001:db8::1".to_string(), port: 2525 });
        assert_eq!(hop.to_string(), "[2001:db8::1]:2525");
        assert_eq!(
            "mail.example.com:25".parse::<NextHop>().map(|h| h.to_string()),
            Ok("mail.example.com:25".to_string())
        );
        assert!("mail.example.com".parse::<NextHop>().unwrap_err().to_string().contains("\"mx\""));
    }

    #[test]
    fn networks() {
        let Net(n) = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        let Net(n) = "192.0.2.7".parse().unwrap();
        assert_eq!(n.to_string(), "192.0.2.7/32");
        let Net(n) = "::1".parse().unwrap();
        assert_eq!(n.to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("localhost".parse::<Net>().is_err());
    }

    #[test]
    fn recipient_entries() {
        assert_eq!(
            RecipientEntry::from_str("Alice@Example.COM.").unwrap(),
            RecipientEntry::Address { local: "Alice".into(), domain: "example.com".into() }
        );
        assert_eq!(
            RecipientEntry::from_str("@Sales.Example.com").unwrap(),
            RecipientEntry::CatchAll { domain: "sales.example.com".into() }
        );
        for bad in ["", "alice", "alice@", "a b@example.com", "@", "alice@exa mple.com"] {
            let e = RecipientEntry::from_str(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid recipient {bad:?}")), "{e}");
        }
    }

    #[test]
    fn relay_and_route_domains() {
        assert_eq!(RelayDomain::from_str(".Example.COM.").unwrap().0, ".example.com");
        assert!(RelayDomain::from_str("..example.com").is_err());
        assert!(RelayDomain::from_str(".").is_err());
        assert_eq!(RouteDomain::from_str("*").unwrap().0, "*");
        assert_eq!(RouteDomain::from_str("Example.com.").unwrap().0, "example.com");
        assert!(RouteDomain::from_str(".example.com").is_err());
        assert!(RouteDomain::from_str("*.example.com").is_err());
    }
}
