//! Config errors, and finding the line of a key in the source text.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

/// A config file that cannot be used. Displayed as `FILE:LINE: KEY: MESSAGE`, leaving out the
/// parts that are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file path, or "<embedded default>".
    pub file: String,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// The key path, such as `smtp.max_message_size` or `route[2].next_hop` (1-based index).
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
        }
        if let Some(key) = &self.key {
            write!(f, " {key}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about the file as a whole (cannot read it).
    pub(crate) fn file(file: &str, message: String) -> Self {
        ConfigError { file: file.to_string(), line: None, key: None, message }
    }

    /// An error from deserializing the TOML text: syntax, unknown key, wrong type, bad value.
    pub(crate) fn from_serde(
        file: &str,
        text: &str,
        err: serde_path_to_error::Error<toml::de::Error>,
    ) -> Self {
        let mut key = String::new();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    key.push_str(&format!("[{}]", index + 1));
                }
                serde_path_to_error::Segment::Map { key: k } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(k);
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(variant);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = err.into_inner();
        let mut message = toml_words(inner.message());
        if key == "route" && message.contains("expected an array") {
            message.push_str("; write each route as a [[route]] table");
        }
        ConfigError {
            file: file.to_string(),
            line: inner.span().map(|span| line_of(text, span.start)),
            key: (!key.is_empty()).then_some(key),
            message,
        }
    }
}

/// Rewords a message from the TOML parser or serde for a TOML file's reader: one line, keys
/// rather than fields, tables and arrays rather than maps and sequences.
fn toml_words(message: &str) -> String {
    let mut m =
        message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
    if let Some(rest) = m.strip_prefix("unknown field") {
        let rest = rest.replacen(", expected one of", "; allowed keys:", 1).replacen(
            ", expected",
            "; the only allowed key is",
            1,
        );
        m = format!("unknown key{rest}");
    }
    if let Some(i) = m.find("expected struct ") {
        m.replace_range(i.., "expected a table");
    }
    for (serde, toml) in [
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a sequence", "expected an array"),
        ("expected usize", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(serde, toml);
    }
    m
}

/// A semantic problem found after parsing: the key path and the message. Turned into a
/// `ConfigError` by [`Invalid::locate`], which looks up the key's line in the source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid { key: key.into(), message: message.into() }
    }

    /// Names the file and, when `text` is given, the line of the key (or of the nearest
    /// enclosing table that is written in the file, when the key itself is absent).
    pub(crate) fn locate(self, file: &str, text: Option<&str>) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: text.and_then(|t| line_of_key(t, &self.key)),
            key: Some(self.key),
            message: self.message,
        }
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A step of a key path: a key, or a 0-based index into an array.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `route[2].next_hop` into `Key("route"), Index(1), Key("next_hop")` (paths count from 1).
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((n, after)) = inner.split_once(']') else {
                break;
            };
            if let Some(i) = n.parse::<usize>().ok().and_then(|n| n.checked_sub(1)) {
                out.push(Step::Index(i));
            }
            rest = after;
        }
    }
    out
}

/// Where the walk through the document stands.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn index(self, i: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let array = match self {
            Node::Item(Item::ArrayOfTables(tables)) => {
                let table = tables.get(i)?;
                return Some((Node::Table(table), table.span()));
            }
            Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                array
            }
            _ => return None,
        };
        let value = array.get(i)?;
        Some((Node::Value(value), value.span()))
    }
}

/// The line of the key at `path`, or of the deepest part of the path present in the file.
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut found: Option<Range<usize>> = None;
    for step in steps(path) {
        let next = match step {
            Step::Key(k) => node
                .table_like()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| (Node::Item(item), key.span().or_else(|| item.span()))),
            Step::Index(i) => node.index(i),
        };
        let Some((next, span)) = next else { break };
        node = next;
        found = span.or(found);
    }
    found.map(|span| line_of(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_leaves_out_missing_parts() {
        let mut e = ConfigError {
            file: "/etc/relayd.toml".into(),
            line: Some(12),
            key: Some("smtp.max_message_size".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/etc/relayd.toml:12: smtp.max_message_size: bad");
        e.line = None;
        assert_eq!(e.to_string(), "/etc/relayd.toml: smtp.max_message_size: bad");
        e.key = None;
        assert_eq!(e.to_string(), "/etc/relayd.toml: bad");
    }

    #[test]
    fn lines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn key_paths() {
        assert_eq!(
            steps("route[2].next_hop"),
            vec![Step::Key("route"), Step::Index(1), Step::Key("next_hop")]
        );
        assert_eq!(steps("smtp.listen"), vec![Step::Key("smtp"), Step::Key("listen")]);
    }

    #[test]
    fn finds_key_lines() {
        let text = "\
# comment
[smtp]
listen = [
  \"127.0.0.1:25\",
  \"[::1]:25\",
]

[[route]]
domain = \"a.example\"

[[route]]
domain = \"b.example\"
next_hop = \"mx\"

[cluster]
peer = \"x:1\"
inline = { a = 1, b = 2 }
";
        assert_eq!(line_of_key(text, "smtp"), Some(2));
        assert_eq!(line_of_key(text, "smtp.listen"), Some(3));
        assert_eq!(line_of_key(text, "smtp.listen[2]"), Some(5));
        assert_eq!(line_of_key(text, "route[1].domain"), Some(9));
        assert_eq!(line_of_key(text, "route[2].next_hop"), Some(13));
        // An absent key: the enclosing table's header.
        assert_eq!(line_of_key(text, "route[2].tls"), Some(11));
        assert_eq!(line_of_key(text, "cluster.tls_ca"), Some(15));
        assert_eq!(line_of_key(text, "cluster.inline.b"), Some(17));
        assert_eq!(line_of_key(text, "admin.listen"), None);
    }
}
