//! The DSN extension's parameters (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT,
//! and xtext, the encoding ENVID and ORCPT travel in. Parsed here, with no I/O; written back
//! here too, for the next hop that offers DSN, so that what we read and what we send agree.
//!
//! The types derive serde because the spool stores them with the message (postcard): their
//! encoding is part of the spool's format and the cluster protocol, and must not change.

use std::fmt;

use serde::{Deserialize, Serialize};

/// RFC 3461 section 4.3: at most 100 characters of ENVID, decoded.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 section 4.2: at most 500 characters of ORCPT's address, decoded.
pub const MAX_ORCPT: usize = 500;

/// RET: what of the message a failure report returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Headers,
}

impl Ret {
    fn parse(value: &str) -> Result<Ret, DsnError> {
        match value.to_ascii_uppercase().as_str() {
            "FULL" => Ok(Ret::Full),
            "HDRS" => Ok(Ret::Headers),
            _ => Err(DsnError::Ret),
        }
    }

    /// The parameter's value as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Headers => "HDRS",
        }
    }
}

/// NOTIFY: which reports a recipient's sender wants. All false is NEVER.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify { success: false, failure: false, delay: false };

    /// `NEVER`, or a comma-separated list of SUCCESS, FAILURE and DELAY, each at most once
    /// (case-insensitive). NEVER with anything else is an error (RFC 3461 section 4.1).
    pub fn parse(value: &str) -> Result<Notify, DsnError> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify::NEVER);
        }
        let mut notify = Notify::NEVER;
        for word in value.split(',') {
            let slot = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => &mut notify.success,
                "FAILURE" => &mut notify.failure,
                "DELAY" => &mut notify.delay,
                _ => return Err(DsnError::Notify),
            };
            if *slot {
                return Err(DsnError::Notify);
            }
            *slot = true;
        }
        Ok(notify)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> =
            [(self.success, "SUCCESS"), (self.failure, "FAILURE"), (self.delay, "DELAY")]
                .into_iter()
                .filter_map(|(on, word)| on.then_some(word))
                .collect();
        if words.is_empty() { f.write_str("NEVER") } else { f.write_str(&words.join(",")) }
    }
}

/// ORCPT: the recipient as the original sender gave it, `addr-type;address` (decoded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orcpt {
    /// "rfc822", in the case the client sent it.
    pub addr_type: String,
    pub address: String,
}

impl Orcpt {
    fn parse(value: &str) -> Result<Orcpt, DsnError> {
        let (addr_type, address) = value.split_once(';').ok_or(DsnError::Orcpt)?;
        // An atom (RFC 5322): what the report's Original-Recipient field repeats.
        let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        if addr_type.is_empty() || !addr_type.chars().all(atom) {
            return Err(DsnError::Orcpt);
        }
        let address = xtext_decode(address).map_err(|_| DsnError::Orcpt)?;
        if address.is_empty() || address.len() > MAX_ORCPT {
            return Err(DsnError::Orcpt);
        }
        Ok(Orcpt { addr_type: addr_type.to_string(), address })
    }
}

impl fmt::Display for Orcpt {
    /// As a report's Original-Recipient field has it: `rfc822;user@example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.address)
    }
}

/// Text that is not xtext, or decodes to a character a report field or a command line may not
/// carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotXtext;

/// What a bad DSN parameter was; each is refused with `501 5.5.4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnError {
    Ret,
    Envid,
    Notify,
    Orcpt,
    /// A parameter given twice.
    Repeated(&'static str),
}

impl fmt::Display for DsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsnError::Ret => f.write_str("Bad RET parameter: FULL or HDRS"),
            DsnError::Envid => f.write_str("Bad ENVID parameter: xtext of at most 100 characters"),
            DsnError::Notify => {
                f.write_str("Bad NOTIFY parameter: NEVER, or a list of SUCCESS, FAILURE, DELAY")
            }
            DsnError::Orcpt => f.write_str("Bad ORCPT parameter: addr-type;xtext"),
            DsnError::Repeated(name) => write!(f, "Repeated {name} parameter"),
        }
    }
}

/// Decodes xtext (RFC 3461 section 4): printable ASCII but `+` and `=` stand for themselves,
/// `+XX` (two upper-case hex digits) for any other character. The result must be printable
/// ASCII or space: it is written into report fields and command lines, where a control
/// character could start a line of its own.
pub fn xtext_decode(text: &str) -> Result<String, NotXtext> {
    let mut out = String::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        let decoded = match byte {
            b'+' => {
                let hex = |b: Option<u8>| match b {
                    Some(b @ b'0'..=b'9') => Ok(b - b'0'),
                    Some(b @ b'A'..=b'F') => Ok(b - b'A' + 10),
                    _ => Err(NotXtext),
                };
                hex(bytes.next())? << 4 | hex(bytes.next())?
            }
            b'=' => return Err(NotXtext),
            b'!'..=b'~' => byte,
            _ => return Err(NotXtext),
        };
        if !(b' '..=b'~').contains(&decoded) {
            return Err(NotXtext);
        }
        out.push(char::from(decoded));
    }
    Ok(out)
}

/// Encodes `text` as xtext: the inverse of [`xtext_decode`].
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'!'..=b'~' if byte != b'+' && byte != b'=' => out.push(char::from(byte)),
            _ => out.push_str(&format!("+{byte:02X}")),
        }
    }
    out
}

/// Sets `slot` to what `parse` makes of a parameter `name` seen for the first time: `Ok(true)`,
/// the parameter is taken. A second one is an error, whatever its value.
fn set_once<T>(
    slot: &mut Option<T>,
    name: &'static str,
    parse: impl FnOnce() -> Result<T, DsnError>,
) -> Result<bool, DsnError> {
    if slot.is_some() {
        return Err(DsnError::Repeated(name));
    }
    *slot = Some(parse()?);
    Ok(true)
}

/// MAIL's DSN parameters: RET and ENVID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailDsn {
    pub ret: Option<Ret>,
    /// Decoded.
    pub envid: Option<String>,
}

impl MailDsn {
    /// Takes `name=value` if it is RET or ENVID: `Ok(false)` when it is neither.
    pub fn take(&mut self, name: &str, value: Option<&str>) -> Result<bool, DsnError> {
        match name.to_ascii_uppercase().as_str() {
            "RET" => set_once(&mut self.ret, "RET", || Ret::parse(value.ok_or(DsnError::Ret)?)),
            "ENVID" => set_once(&mut self.envid, "ENVID", || {
                let envid = xtext_decode(value.unwrap_or_default()).map_err(|_| DsnError::Envid)?;
                if envid.is_empty() || envid.len() > MAX_ENVID {
                    return Err(DsnError::Envid);
                }
                Ok(envid)
            }),
            _ => Ok(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }

    /// The parameters as MAIL FROM sends them on (" RET=HDRS ENVID=..."), or nothing.
    pub fn params(ret: Option<Ret>, envid: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(ret) = ret {
            out += &format!(" RET={}", ret.as_str());
        }
        if let Some(envid) = envid {
            out += &format!(" ENVID={}", xtext_encode(envid));
        }
        out
    }
}

/// RCPT's DSN parameters: NOTIFY and ORCPT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

impl RcptDsn {
    /// Takes `name=value` if it is NOTIFY or ORCPT: `Ok(false)` when it is neither.
    pub fn take(&mut self, name: &str, value: Option<&str>) -> Result<bool, DsnError> {
        match name.to_ascii_uppercase().as_str() {
            "NOTIFY" => set_once(&mut self.notify, "NOTIFY", || {
                Notify::parse(value.ok_or(DsnError::Notify)?)
            }),
            "ORCPT" => {
                set_once(&mut self.orcpt, "ORCPT", || Orcpt::parse(value.ok_or(DsnError::Orcpt)?))
            }
            _ => Ok(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// The parameters as RCPT TO sends them on (" NOTIFY=... ORCPT=rfc822;..."), or nothing.
    pub fn params(&self) -> String {
        let mut out = String::new();
        if let Some(notify) = self.notify {
            out += &format!(" NOTIFY={notify}");
        }
        if let Some(orcpt) = &self.orcpt {
            out += &format!(" ORCPT={};{}", orcpt.addr_type, xtext_encode(&orcpt.address));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_decodes_hex_pairs_and_refuses_what_is_not_xtext() {
        assert_eq!(xtext_decode("a+2Bb+3Dc"), Ok("a+b=c".to_string()));
        assert_eq!(xtext_decode("user+40host"), Ok("user@host".to_string()));
        assert_eq!(xtext_decode("two+20words"), Ok("two words".to_string()));
        for bad in ["a=b", "a+2", "a+2b", "a+G0", "a b", "a+0D+0Ab", "a+7F", "é"] {
            assert!(xtext_decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn xtext_encoding_round_trips() {
        for text in ["plain", "a+b=c", "with space", "~!{}"] {
            let encoded = xtext_encode(text);
            assert!(!encoded.contains(' ') && !encoded.contains('='), "{encoded}");
            assert_eq!(xtext_decode(&encoded).as_deref(), Ok(text));
        }
    }

    #[test]
    fn notify_is_never_alone_or_a_list_of_distinct_words() {
        assert_eq!(Notify::parse("never"), Ok(Notify::NEVER));
        assert_eq!(
            Notify::parse("SUCCESS,delay"),
            Ok(Notify { success: true, failure: false, delay: true })
        );
        assert_eq!(Notify::parse("FAILURE").map(|n| n.to_string()).as_deref(), Ok("FAILURE"));
        assert_eq!(Notify::NEVER.to_string(), "NEVER");
        for bad in ["NEVER,SUCCESS", "SUCCESS,NEVER", "SUCCESS,SUCCESS", "", "SUCCESS,", "ALWAYS"] {
            assert_eq!(Notify::parse(bad), Err(DsnError::Notify), "{bad:?}");
        }
    }

    #[test]
    fn orcpt_is_an_address_type_and_an_xtext_address() {
        let mut rcpt = RcptDsn::default();
        assert_eq!(rcpt.take("orcpt", Some("rfc822;first+2Blast@example.com")), Ok(true));
        let orcpt = rcpt.orcpt.clone().expect("taken");
        assert_eq!(orcpt.to_string(), "rfc822;first+last@example.com");
        assert_eq!(rcpt.params(), " ORCPT=rfc822;first+2Blast@example.com");
        assert_eq!(rcpt.take("ORCPT", Some("rfc822;b@c")), Err(DsnError::Repeated("ORCPT")));
        for bad in
            [Some("user@example.com"), Some(";a@b"), Some("rfc 822;a@b"), Some("rfc822;"), None]
        {
            assert_eq!(RcptDsn::default().take("ORCPT", bad), Err(DsnError::Orcpt), "{bad:?}");
        }
        let long = format!("rfc822;{}", "a".repeat(MAX_ORCPT + 1));
        assert_eq!(RcptDsn::default().take("ORCPT", Some(&long)), Err(DsnError::Orcpt));
    }

    #[test]
    fn ret_and_envid_are_taken_once_each() {
        let mut mail = MailDsn::default();
        assert_eq!(mail.take("ret", Some("hdrs")), Ok(true));
        assert_eq!(mail.take("ENVID", Some("QQ+2B1")), Ok(true));
        assert_eq!(mail, MailDsn { ret: Some(Ret::Headers), envid: Some("QQ+1".into()) });
        assert_eq!(MailDsn::params(mail.ret, mail.envid.as_deref()), " RET=HDRS ENVID=QQ+2B1");
        assert_eq!(mail.take("RET", Some("FULL")), Err(DsnError::Repeated("RET")));
        assert_eq!(mail.take("ENVID", Some("x")), Err(DsnError::Repeated("ENVID")));
        assert_eq!(mail.take("SIZE", Some("1")), Ok(false));
        assert_eq!(MailDsn::default().take("RET", Some("BODY")), Err(DsnError::Ret));
        assert_eq!(MailDsn::default().take("RET", None), Err(DsnError::Ret));
        let long = "e".repeat(MAX_ENVID + 1);
        assert_eq!(MailDsn::default().take("ENVID", Some(&long)), Err(DsnError::Envid));
    }
}
