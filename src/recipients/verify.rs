//! Recipient verification's decisions, with no I/O and the time passed in: what a cached answer
//! or a probe's outcome means for the client's RCPT, and the bounded cache of answers.
//!
//! Only the next hop's own 5xx reply to RCPT refuses a recipient for good (550 5.1.1); a 4xx,
//! a failure to reach the next hop, a 5xx of ours (a DNS answer, say) or no answer in time are
//! 450 4.1.1, never cached: the client tries again later, and nothing is refused on a guess.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::VerifyConfig;
use crate::delivery::Outcome;
use crate::proto::Reply;

/// What the session does with a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Refuse(Reply),
}

/// A probe's result, as the decision sees it.
#[derive(Debug)]
pub enum Probe {
    /// The probe ended with this outcome.
    Answered(Outcome),
    /// No outcome within `verify_timeout`.
    TimedOut(Duration),
}

/// A remembered answer of the next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// `None`: the next hop accepted the recipient; else its refusal, as the client is told.
    refusal: Option<Reply>,
    expires: Instant,
}

/// The verdict a cached answer gives at `now`, if it has not expired.
pub fn from_cache(answer: Option<&Answer>, now: Instant) -> Option<Verdict> {
    let answer = answer.filter(|a| now < a.expires)?;
    Some(match &answer.refusal {
        None => Verdict::Accept,
        Some(reply) => Verdict::Refuse(reply.clone()),
    })
}

/// The verdict for `address` after a probe, and the answer to remember (for a 2xx or the
/// next hop's 5xx only).
pub fn from_probe(
    address: &str,
    probe: &Probe,
    now: Instant,
    config: &VerifyConfig,
) -> (Verdict, Option<Answer>) {
    let remember = |refusal: Option<Reply>, lifetime: Duration| {
        let expires = now.checked_add(lifetime).unwrap_or(now);
        Some(Answer { refusal, expires })
    };
    match probe {
        Probe::Answered(Outcome::Delivered { .. }) => {
            (Verdict::Accept, remember(None, config.positive_expire))
        }
        Probe::Answered(Outcome::Permanent { reply, .. }) if reply.code.is_some() => {
            let refusal =
                Reply::new(550, "5.1.1", format!("<{address}>: recipient unknown ({reply})"));
            (Verdict::Refuse(refusal.clone()), remember(Some(refusal), config.negative_expire))
        }
        Probe::Answered(outcome) => (unverified(address, &outcome.reply().to_string()), None),
        Probe::TimedOut(after) => {
            let why = format!(
                "no answer from the next hop within {}",
                humantime::format_duration(*after)
            );
            (unverified(address, &why), None)
        }
    }
}

/// `450 4.1.1`: not known now; the client tries again later.
pub fn unverified(address: &str, why: &str) -> Verdict {
    Verdict::Refuse(Reply::new(450, "4.1.1", format!("<{address}>: recipient not verified: {why}")))
}

/// The answers remembered, at most `capacity` of them: when full, the one stored longest ago
/// goes first (expired or not), so that a flood of new addresses cannot grow it.
#[derive(Debug)]
pub struct Cache {
    answers: HashMap<String, (Answer, u64)>,
    /// Keys in the order they were stored, with the store's number: an entry whose number is
    /// no longer its key's was replaced since, and is skipped.
    order: VecDeque<(String, u64)>,
    stored: u64,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache { answers: HashMap::new(), order: VecDeque::new(), stored: 0, capacity }
    }

    pub fn get(&self, key: &str) -> Option<&Answer> {
        self.answers.get(key).map(|(answer, _)| answer)
    }

    pub fn insert(&mut self, key: String, answer: Answer) {
        self.stored += 1;
        self.answers.insert(key.clone(), (answer, self.stored));
        self.order.push_back((key, self.stored));
        self.evict();
        // Replaced entries' places in the order are dropped once they outnumber the live ones.
        if self.order.len() > 2 * self.capacity.max(self.answers.len()) {
            let answers = &self.answers;
            self.order.retain(|(key, number)| answers.get(key).is_some_and(|(_, n)| n == number));
        }
    }

    /// A new capacity (SIGHUP): the oldest answers go if it shrank.
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict();
    }

    /// Forgets the oldest answers until no more than `capacity` are left.
    fn evict(&mut self) {
        while self.answers.len() > self.capacity {
            let Some((oldest, number)) = self.order.pop_front() else { break };
            if self.answers.get(&oldest).is_some_and(|(_, n)| *n == number) {
                self.answers.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Reply as HopReply;

    const ADDRESS: &str = "bob@example.com";

    fn config() -> VerifyConfig {
        VerifyConfig {
            timeout: Duration::from_secs(5),
            positive_expire: Duration::from_secs(7 * 86_400),
            negative_expire: Duration::from_secs(3600),
            cache_size: 3,
        }
    }

    fn hop(code: u16, status: [u8; 3], text: &str) -> HopReply {
        HopReply {
            code: Some(code),
            status: Some(crate::delivery::EnhancedStatus(status)),
            text: text.into(),
        }
    }

    fn text(verdict: &Verdict) -> String {
        match verdict {
            Verdict::Accept => "accept".into(),
            Verdict::Refuse(reply) => reply.to_string().trim_end().to_string(),
        }
    }

    #[test]
    fn a_2xx_accepts_and_is_remembered_for_the_positive_lifetime() {
        let now = Instant::now();
        let delivered = Outcome::Delivered { reply: hop(250, [2, 1, 5], "ok"), relay: "h".into() };
        let (verdict, answer) = from_probe(ADDRESS, &Probe::Answered(delivered), now, &config());
        assert_eq!(verdict, Verdict::Accept);
        let answer = answer.expect("remembered");
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(
            from_cache(Some(&answer), now + week - Duration::from_secs(1)),
            Some(Verdict::Accept)
        );
        assert_eq!(from_cache(Some(&answer), now + week), None);
    }

    #[test]
    fn the_next_hops_5xx_refuses_with_its_text_for_the_negative_lifetime() {
        let now = Instant::now();
        let refused = Outcome::Permanent {
            reply: hop(550, [5, 1, 1], "no such user"),
            relay: Some("h".into()),
        };
        let (verdict, answer) = from_probe(ADDRESS, &Probe::Answered(refused), now, &config());
        let expected = "550 5.1.1 <bob@example.com>: recipient unknown (550 5.1.1 no such user)";
        assert_eq!(text(&verdict), expected);
        let answer = answer.expect("remembered");
        let hour = Duration::from_secs(3600);
        assert_eq!(from_cache(Some(&answer), now + hour - Duration::from_millis(1)), Some(verdict));
        assert_eq!(from_cache(Some(&answer), now + hour), None);
    }

    #[test]
    fn anything_short_of_the_next_hops_answer_is_a_450_and_not_remembered() {
        let now = Instant::now();
        let cases = [
            (
                Probe::Answered(Outcome::Temporary {
                    reply: hop(451, [4, 3, 0], "try later"),
                    relay: Some("h".into()),
                }),
                "450 4.1.1 <bob@example.com>: recipient not verified: 451 4.3.0 try later",
            ),
            (
                Probe::Answered(Outcome::temporary([4, 4, 1], "connect to h: refused")),
                "450 4.1.1 <bob@example.com>: recipient not verified: 4.4.1 connect to h: refused",
            ),
            // A 5xx of our own (here, a null MX) is no word of the next hop's.
            (
                Probe::Answered(Outcome::permanent([5, 1, 10], "example.com accepts no mail")),
                "450 4.1.1 <bob@example.com>: recipient not verified: 5.1.10 example.com accepts no mail",
            ),
            (
                Probe::TimedOut(Duration::from_secs(5)),
                "450 4.1.1 <bob@example.com>: recipient not verified: no answer from the next hop within 5s",
            ),
        ];
        for (probe, expected) in cases {
            let (verdict, answer) = from_probe(ADDRESS, &probe, now, &config());
            assert_eq!(text(&verdict), expected);
            assert_eq!(answer, None, "{probe:?} remembered");
        }
    }

    #[test]
    fn nothing_cached_means_a_probe() {
        assert_eq!(from_cache(None, Instant::now()), None);
    }

    #[test]
    fn the_cache_forgets_the_oldest_answer_beyond_its_capacity() {
        let now = Instant::now();
        let answer = Answer { refusal: None, expires: now + Duration::from_secs(60) };
        let mut cache = Cache::new(3);
        for key in ["a", "b", "c"] {
            cache.insert(key.into(), answer.clone());
        }
        // Storing "a" again makes it the newest: "b" is the oldest now.
        cache.insert("a".into(), answer.clone());
        cache.insert("d".into(), answer.clone());
        assert_eq!(cache.answers.len(), 3);
        assert!(cache.get("b").is_none());
        for key in ["a", "c", "d"] {
            assert!(cache.get(key).is_some(), "{key} forgotten");
        }
        // Many replacements of one key keep the order bounded.
        for _ in 0..100 {
            cache.insert("a".into(), answer.clone());
        }
        assert!(cache.order.len() <= 6, "{}", cache.order.len());
        assert_eq!(cache.answers.len(), 3);
        cache.resize(1);
        assert_eq!(cache.answers.len(), 1);
        assert!(cache.get("a").is_some());
    }
}
