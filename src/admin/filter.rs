//! Which queued messages an operator means (`GET /queue?…`, `DELETE /queue?…`, `POST
//! /queue/requeue?…`), and the listing's pages: pure functions of a message record, a filter and
//! the time, so that they are tested without a spool or a clock.

use std::time::Duration;

use serde::Deserialize;

use crate::spool::{MessageRecord, QueueId, RecipientState};

use super::api::parse_queue_id;

/// The page size of `GET /queue` when a query asks for pages without a `limit`.
pub const DEFAULT_LIMIT: usize = 100;

/// The query parameters of the queue endpoints, as sent (docs/contract.md, "Admin endpoint").
#[derive(Debug, Default, Clone, Deserialize)]
pub struct QueueQuery {
    pub state: Option<String>,
    pub domain: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub older_than: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
    pub id: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// Where a queued message stands, as `state=` selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// A recipient is due now: never tried, or its retry time has come (Postfix's active and
    /// incoming queues).
    Active,
    /// Every pending recipient waits for a later retry (Postfix's deferred queue).
    Deferred,
    /// An operator holds it (Postfix's hold queue): neither active nor deferred until released.
    Held,
}

/// The messages a query selects; every condition given must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub state: Option<QueueState>,
    /// A recipient still to be delivered is at this domain (lower case).
    pub domain: Option<String>,
    /// The reverse path (lower case; empty for the null sender).
    pub sender: Option<String>,
    /// A recipient still to be delivered has this address (lower case).
    pub recipient: Option<String>,
    /// Received at least this long ago.
    pub older_than: Option<Duration>,
}

/// A query that cannot be read; the message says which parameter and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

impl std::fmt::Display for BadQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadQuery {}

impl QueueQuery {
    /// The filter the query's parameters describe.
    pub fn filter(&self) -> Result<Filter, BadQuery> {
        let state = match self.state.as_deref() {
            None => None,
            Some("active") => Some(QueueState::Active),
            Some("deferred") => Some(QueueState::Deferred),
            Some("held") => Some(QueueState::Held),
            Some(other) => {
                return Err(BadQuery(format!(
                    "state={other:?}: expected \"active\", \"deferred\" or \"held\""
                )));
            }
        };
        let older_than = match self.older_than.as_deref() {
            None => None,
            Some(text) => Some(humantime::parse_duration(text.trim()).map_err(|_| {
                BadQuery(format!("older_than={text:?}: expected a duration such as 30m or 2h"))
            })?),
        };
        let lower = |value: &Option<String>| value.as_deref().map(|v| v.trim().to_lowercase());
        Ok(Filter {
            state,
            domain: lower(&self.domain).map(|d| d.trim_start_matches('@').to_string()),
            sender: lower(&self.sender).map(|s| s.trim_matches(['<', '>']).to_string()),
            recipient: lower(&self.recipient).map(|r| r.trim_matches(['<', '>']).to_string()),
            older_than,
        })
    }

    /// The `after=` cursor: the last queue id of the previous page.
    pub fn after(&self) -> Result<Option<QueueId>, BadQuery> {
        self.after
            .as_deref()
            .map(|text| parse_queue_id(text).map_err(|e| BadQuery(format!("after={text:?}: {e}"))))
            .transpose()
    }

    /// The `id=` parameter (requeue one message).
    pub fn id(&self) -> Result<Option<QueueId>, BadQuery> {
        self.id
            .as_deref()
            .map(|text| parse_queue_id(text).map_err(|e| BadQuery(format!("id={text:?}: {e}"))))
            .transpose()
    }

    /// Whether the query asks for anything: without it, `GET /queue` answers the whole queue
    /// as a bare array, as it did before pages.
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.domain.is_none()
            && self.sender.is_none()
            && self.recipient.is_none()
            && self.older_than.is_none()
            && self.limit.is_none()
            && self.after.is_none()
    }
}

impl Filter {
    /// No condition: every message matches (a bulk change then needs an explicit `all=true`).
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `record` (`held` by an operator or not) is one of the messages the filter
    /// selects, at `now_ms` (Unix ms).
    pub fn matches(&self, record: &MessageRecord, held: bool, now_ms: u64) -> bool {
        let envelope = &record.envelope;
        let pending = || {
            envelope
                .recipients
                .iter()
                .zip(&record.recipients)
                .filter(|(_, state)| state.is_pending())
                .map(|(address, state)| (address.to_lowercase(), state))
        };
        if let Some(state) = self.state {
            let due = pending().any(|(_, s)| {
                matches!(s, RecipientState::Pending { next_attempt_ms, .. } if *next_attempt_ms <= now_ms)
            });
            let wanted = match state {
                QueueState::Held => held,
                QueueState::Active => !held && due,
                QueueState::Deferred => !held && !due && pending().next().is_some(),
            };
            if !wanted {
                return false;
            }
        }
        if let Some(domain) = &self.domain {
            let at_domain =
                |address: &str| address.rsplit_once('@').is_some_and(|(_, d)| d == domain.as_str());
            if !pending().any(|(address, _)| at_domain(&address)) {
                return false;
            }
        }
        if let Some(recipient) = &self.recipient
            && !pending().any(|(address, _)| address == *recipient)
        {
            return false;
        }
        if let Some(sender) = &self.sender
            && envelope.sender.to_lowercase() != *sender
        {
            return false;
        }
        if let Some(older_than) = self.older_than {
            let age_ms = now_ms.saturating_sub(envelope.received_at_ms);
            if u128::from(age_ms) < older_than.as_millis() {
                return false;
            }
        }
        true
    }
}

/// One page of a listing, and the cursor of the next one (None on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<QueueId>,
}

/// The page of `items` (in ascending queue id order, as the spool lists them) that follows
/// `after`, at most `limit` long. Reads at most one item past the page, so that a page of a
/// large queue never holds more than `limit + 1` items.
pub fn page<T, E>(
    items: impl IntoIterator<Item = Result<T, E>>,
    id: impl Fn(&T) -> QueueId,
    after: Option<QueueId>,
    limit: usize,
) -> Result<Page<T>, E> {
    let mut taken = Vec::new();
    for item in items {
        let item = item?;
        if after.is_some_and(|after| id(&item) <= after) {
            continue;
        }
        if taken.len() == limit {
            let next_after = taken.last().map(&id);
            return Ok(Page { items: taken, next_after });
        }
        taken.push(item);
    }
    Ok(Page { items: taken, next_after: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, LogPosition};

    const NOW: u64 = 1_700_000_000_000;

    fn record(sender: &str, recipients: &[(&str, RecipientState)], age: Duration) -> MessageRecord {
        MessageRecord {
            envelope: Envelope {
                id: QueueId::new(),
                sender: sender.into(),
                recipients: recipients.iter().map(|(a, _)| (*a).to_string()).collect(),
                received_at_ms: NOW - u64::try_from(age.as_millis()).expect("age"),
                client: "127.0.0.1".into(),
                helo: "client.test".into(),
                size: 100,
                eight_bit: false,
                smtputf8: false,
            },
            recipients: recipients.iter().map(|(_, s)| s.clone()).collect(),
            accepted_at: LogPosition { epoch: 1, seq: 1 },
        }
    }

    fn deferred() -> RecipientState {
        RecipientState::Pending {
            attempts: 1,
            next_attempt_ms: NOW + 60_000,
            last_reply: Some("451 4.4.1 later".into()),
        }
    }

    /// Query parameters as key and value.
    type Parameters<'a> = &'a [(&'a str, &'a str)];

    /// The query of these parameters, as axum's `Query` would fill it.
    fn parameters(pairs: &[(&str, &str)]) -> QueueQuery {
        let mut query = QueueQuery::default();
        for (key, value) in pairs {
            let value = Some((*value).to_string());
            match *key {
                "state" => query.state = value,
                "domain" => query.domain = value,
                "sender" => query.sender = value,
                "recipient" => query.recipient = value,
                "older_than" => query.older_than = value,
                "after" => query.after = value,
                other => panic!("no parameter {other}"),
            }
        }
        query
    }

    fn query(pairs: &[(&str, &str)]) -> Filter {
        parameters(pairs).filter().expect("filter")
    }

    #[test]
    fn each_condition_selects_on_its_own() {
        let hour = Duration::from_secs(3600);
        let fresh =
            record("a@Example.org", &[("b@customer.test", RecipientState::new())], hour / 60);
        let old = record("", &[("c@other.test", deferred())], 3 * hour);
        let done = record(
            "a@example.org",
            &[("d@customer.test", RecipientState::Bounced { reply: "550 no".into() })],
            hour,
        );
        let cases: &[(Parameters, [bool; 3])] = &[
            (&[], [true, true, true]),
            (&[("state", "active")], [true, false, false]),
            (&[("state", "deferred")], [false, true, false]),
            // Only recipients still to be delivered count: `done`'s bounced one does not.
            (&[("domain", "CUSTOMER.test")], [true, false, false]),
            (&[("domain", "@other.test")], [false, true, false]),
            (&[("sender", "<a@example.org>")], [true, false, true]),
            (&[("sender", "")], [false, true, false]),
            (&[("recipient", "c@other.test")], [false, true, false]),
            (&[("older_than", "2h")], [false, true, false]),
            (&[("older_than", "1h")], [false, true, true]),
            (&[("older_than", "1h"), ("sender", "a@example.org")], [false, false, true]),
        ];
        for (pairs, expected) in cases {
            let filter = query(pairs);
            let got = [&fresh, &old, &done].map(|r| filter.matches(r, false, NOW));
            assert_eq!(&got, expected, "{pairs:?}");
        }
        // The same deferred message is active once its retry time has come.
        assert!(query(&[("state", "active")]).matches(&old, false, NOW + 60_000));
        // Held, a message is neither active nor deferred, and matches the other conditions
        // as before.
        for (record, at) in [(&fresh, NOW), (&old, NOW), (&old, NOW + 60_000)] {
            assert!(query(&[("state", "held")]).matches(record, true, at));
            assert!(!query(&[("state", "held")]).matches(record, false, at));
            assert!(!query(&[("state", "active")]).matches(record, true, at));
            assert!(!query(&[("state", "deferred")]).matches(record, true, at));
        }
        assert!(query(&[("domain", "other.test")]).matches(&old, true, NOW));
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        let bad = |pairs: &[(&str, &str)]| {
            let query = parameters(pairs);
            (query.filter().err(), query.after().err())
        };
        assert!(bad(&[("state", "frozen")]).0.is_some_and(|e| e.0.starts_with("state=")));
        assert!(bad(&[("older_than", "soon")]).0.is_some_and(|e| e.0.starts_with("older_than=")));
        assert!(bad(&[("after", "12")]).1.is_some_and(|e| e.0.starts_with("after=")));
        assert!(query(&[]).is_empty());
        assert!(parameters(&[]).is_empty());
        assert!(!parameters(&[("after", "x")]).is_empty());
        assert!(!query(&[("domain", "x.test")]).is_empty());
    }

    #[test]
    fn pages_see_each_item_once_and_end() {
        let mut ids: Vec<QueueId> = (0..25).map(|_| QueueId::new()).collect();
        ids.sort();
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let result: Result<Page<QueueId>, ()> =
                page(ids.iter().copied().map(Ok), |id| *id, after, 10);
            let result = result.expect("page");
            pages += 1;
            seen.extend(result.items.iter().copied());
            match result.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids);
        // A queue of exactly one page has no next page.
        let one: Result<Page<QueueId>, ()> =
            page(ids[..10].iter().copied().map(Ok), |id| *id, None, 10);
        assert_eq!(one.expect("page").next_after, None);
        // An error is passed on.
        let failed: Result<Page<QueueId>, &str> = page([Err("disk")], |id| *id, None, 10);
        assert_eq!(failed, Err("disk"));
    }
}
