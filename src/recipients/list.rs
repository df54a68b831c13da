//! A relay domain's list of valid recipients: exact addresses and `@domain` catch-alls, from
//! the config and from a file.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::{RecipientCheck, RecipientEntry, ValueError, domain_matches};

/// The valid recipients of one `[[relay.domain]]` table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecipientList {
    /// (local part as written, domain lowercased).
    addresses: HashSet<(String, String)>,
    /// Domains (lowercased) of which every address is valid.
    catch_all: HashSet<String>,
}

impl RecipientList {
    /// The table's inline entries and, when it names one, its file's.
    pub fn load(check: &RecipientCheck) -> Result<RecipientList, ListError> {
        let mut list = RecipientList::default();
        for entry in &check.recipients {
            list.insert(entry.clone());
        }
        if let Some(path) = &check.recipients_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ListError::Read { path: path.clone(), source })?;
            for entry in parse_file(&text, &check.name) {
                let entry = entry.map_err(|(line, error)| ListError::Entry {
                    path: path.clone(),
                    line,
                    error,
                })?;
                list.insert(entry);
            }
        }
        Ok(list)
    }

    fn insert(&mut self, entry: RecipientEntry) {
        match entry {
            RecipientEntry::Address { local, domain } => {
                self.addresses.insert((local, domain));
            }
            RecipientEntry::CatchAll { domain } => {
                self.catch_all.insert(domain);
            }
        }
    }

    /// Whether `local@domain` is listed: the domain without regard to case (or a trailing
    /// dot), the local part exactly as written.
    pub fn contains(&self, local: &str, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
        self.catch_all.contains(&domain) || self.addresses.contains(&(local.to_string(), domain))
    }

    /// How many entries (addresses and catch-alls) the list holds.
    pub fn entries(&self) -> usize {
        self.addresses.len() + self.catch_all.len()
    }
}

/// The entries of a recipients file: one a line, blank lines and `#` comments ignored. An
/// entry that is no address, or one of another domain than the table's, is an error with its
/// line number (1-based).
fn parse_file<'a>(
    text: &'a str,
    table: &'a str,
) -> impl Iterator<Item = Result<RecipientEntry, (usize, EntryError)>> + 'a {
    text.lines().enumerate().filter_map(move |(i, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return None;
        }
        let entry = match RecipientEntry::from_str(line) {
            Ok(entry) => entry,
            Err(e) => return Some(Err((i + 1, EntryError::Syntax(e)))),
        };
        if !domain_matches(table, entry.domain()) {
            let foreign =
                EntryError::Foreign { domain: entry.domain().into(), table: table.into() };
            return Some(Err((i + 1, foreign)));
        }
        Some(Ok(entry))
    })
}

/// What is wrong with a line of a recipients file.
#[derive(Debug)]
pub enum EntryError {
    Syntax(ValueError),
    /// An address of a domain the table does not cover.
    Foreign {
        domain: String,
        table: String,
    },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Syntax(e) => e.fmt(f),
            EntryError::Foreign { domain, table } => write!(
                f,
                "the domain {domain:?} is not {table:?}: a table lists the recipients of its own \
                 domain"
            ),
        }
    }
}

/// Why a recipients file could not be used.
#[derive(Debug)]
pub enum ListError {
    Read { path: PathBuf, source: std::io::Error },
    Entry { path: PathBuf, line: usize, error: EntryError },
}

impl ListError {
    pub fn path(&self) -> &Path {
        match self {
            ListError::Read { path, .. } | ListError::Entry { path, .. } => path,
        }
    }
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ListError::Entry { path, line, error } => {
                write!(f, "{} line {line}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ListError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListError::Read { source, .. } => Some(source),
            ListError::Entry { error: EntryError::Syntax(e), .. } => Some(e),
            ListError::Entry { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, recipients: &[&str], file: Option<PathBuf>) -> RecipientCheck {
        RecipientCheck {
            name: name.into(),
            recipients: recipients.iter().map(|r| r.parse().unwrap()).collect(),
            recipients_file: file,
            verify: false,
        }
    }

    #[test]
    fn exact_addresses_match_their_local_part_exactly_and_the_domain_in_any_case() {
        let list =
            RecipientList::load(&check("example.com", &["Alice@Example.com"], None)).unwrap();
        assert!(list.contains("Alice", "example.com"));
        assert!(list.contains("Alice", "EXAMPLE.COM."));
        assert!(!list.contains("alice", "example.com"));
        assert!(!list.contains("bob", "example.com"));
    }

    #[test]
    fn a_catch_all_takes_every_address_of_its_domain_only() {
        let list =
            RecipientList::load(&check(".example.com", &["@sales.example.com"], None)).unwrap();
        assert!(list.contains("anyone", "Sales.Example.com"));
        assert!(!list.contains("anyone", "support.example.com"));
    }

    #[test]
    fn a_file_adds_its_entries_and_names_its_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rcpts");
        std::fs::write(&path, "# customers\n\nbob@example.com  # the boss\n@example.com\n")
            .unwrap();
        let list =
            RecipientList::load(&check("example.com", &["alice@example.com"], Some(path.clone())))
                .unwrap();
        assert_eq!(list.entries(), 3);
        assert!(list.contains("zed", "example.com"));

        std::fs::write(&path, "bob@example.com\nbob@other.test\n").unwrap();
        let e = RecipientList::load(&check("example.com", &[], Some(path.clone()))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} line 2: the domain \"other.test\" is not \"example.com\": a table lists the recipients of its own domain",
                path.display()
            )
        );
        std::fs::write(&path, "bob\n").unwrap();
        let e = RecipientList::load(&check("example.com", &[], Some(path.clone()))).unwrap_err();
        assert!(e.to_string().contains("line 1: invalid recipient \"bob\""), "{e}");

        let missing = dir.path().join("missing");
        let e = RecipientList::load(&check("example.com", &[], Some(missing.clone()))).unwrap_err();
        assert!(matches!(e, ListError::Read { .. }));
        assert_eq!(e.path(), missing);
    }
}
