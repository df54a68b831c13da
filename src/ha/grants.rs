//! The witness's decisions, with no I/O: what it answers to a ping or a claim, given what it
//! knows and the time. The witness server (`ha::witness`) and the simulation (`ha::sim`) both
//! run this code; persisting a grant is the caller's, through the `persist` callback, which
//! runs before the answer is given (a grant the witness cannot persist is refused).

use super::core::Ms;

/// The reason of a first grant (a repeated claim's answer says "granted before").
pub const GRANTED: &str = "granted";

/// What the witness knows.
#[derive(Clone, Debug)]
pub struct Grants {
    /// The highest epoch granted (or seen from a primary), and to whom: persisted.
    granted: u64,
    granted_to: String,
    /// The grantee of the current epoch, last heard serving, and when.
    serving_heard: Option<Ms>,
    /// When this witness started: a witness that lost its memory of who serves (a restart)
    /// grants nothing until a whole failover window has passed, as a lease given before the
    /// restart may still run.
    started: Ms,
}

/// A data node's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping {
        node: String,
        primary: bool,
        epoch: u64,
        serving: bool,
    },
    /// `window`: the claimant's failover_timeout; `force`: an operator's promote --force.
    Claim {
        node: String,
        epoch: u64,
        force: bool,
        window: Ms,
    },
}

/// The witness's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The highest grant and its grantee, and whether that grantee was last heard serving.
    Pong { granted: u64, granted_to: String, serving: bool },
    /// Granted or not; `highest`: the highest grant after this answer.
    Verdict { granted: bool, epoch: u64, highest: u64, reason: String },
}

impl Grants {
    /// A witness that starts at `now` with its persisted grant.
    pub fn new(granted: u64, granted_to: String, now: Ms) -> Grants {
        Grants { granted, granted_to, serving_heard: None, started: now }
    }

    pub fn granted(&self) -> (u64, &str) {
        (self.granted, &self.granted_to)
    }

    pub fn answer<E: std::fmt::Display>(
        &mut self,
        request: Request,
        now: Ms,
        persist: impl FnOnce(u64, &str) -> Result<(), E>,
    ) -> Answer {
        match request {
            Request::Ping { node, primary, epoch, serving } => {
                if primary && epoch > self.granted {
                    // A primary in an epoch this witness never granted (one taken without a
                    // witness, or before this witness lost its file): no claim may reuse it.
                    if persist(epoch, &node).is_ok() {
                        self.granted = epoch;
                        self.granted_to = node.clone();
                        self.serving_heard = None;
                    }
                }
                let grantee = epoch == self.granted && node == self.granted_to;
                if primary && serving && grantee {
                    self.serving_heard = Some(now);
                } else if primary && grantee {
                    // The grantee itself, as primary, says it does not serve (fenced, or
                    // handing over). Not a ping of the grantee as a standby: it may not have
                    // had the verdict yet, and serves on it when it comes.
                    self.serving_heard = None;
                }
                Answer::Pong {
                    granted: self.granted,
                    granted_to: self.granted_to.clone(),
                    serving: self.serving_heard.is_some(),
                }
            }
            Request::Claim { node, epoch, force, window } => {
                self.claim(node, epoch, force, window, now, persist)
            }
        }
    }

    fn claim<E: std::fmt::Display>(
        &mut self,
        node: String,
        epoch: u64,
        force: bool,
        window: Ms,
        now: Ms,
        persist: impl FnOnce(u64, &str) -> Result<(), E>,
    ) -> Answer {
        let refuse = |this: &Grants, reason: String| Answer::Verdict {
            granted: false,
            epoch,
            highest: this.granted,
            reason,
        };
        // The same claim again (the claimant crashed before it could use the grant): the
        // same answer, which grants nothing new. Never for epoch 1: only a node with an empty
        // spool claims it, and a node that was granted it and comes back empty lost its disk,
        // whose epoch 1 its peer may hold (the bootstrap is then the operator's, with --force).
        if epoch == self.granted && node == self.granted_to && epoch > 1 {
            // It serves from this answer on, as from a first grant.
            self.serving_heard = Some(now);
            return Answer::Verdict {
                granted: true,
                epoch,
                highest: self.granted,
                reason: "granted before".into(),
            };
        }
        if epoch <= self.granted {
            let reason = format!(
                "epoch {epoch} is not newer than {} (granted to {})",
                self.granted, self.granted_to
            );
            return refuse(self, reason);
        }
        if !force {
            if let Some(at) = self.serving_heard
                && node != self.granted_to
                && now < at + window
            {
                let reason = format!(
                    "primary {} (epoch {}) was heard {} ms ago",
                    self.granted_to,
                    self.granted,
                    now - at
                );
                return refuse(self, reason);
            }
            if self.granted > 0 && now < self.started + window {
                let reason = format!(
                    "the witness restarted {} ms ago: a lease it gave before may still run",
                    now - self.started
                );
                return refuse(self, reason);
            }
        }
        if let Err(e) = persist(epoch, &node) {
            return refuse(self, format!("the witness cannot persist the grant: {e}"));
        }
        self.granted = epoch;
        self.granted_to = node;
        // The grantee serves from now on, on a lease that runs from its claim: as good as
        // heard serving, or a second claimant would be granted the next epoch at once.
        self.serving_heard = Some(now);
        Answer::Verdict { granted: true, epoch, highest: epoch, reason: GRANTED.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: u64, _: &str) -> Result<(), std::convert::Infallible> {
        Ok(())
    }

    fn claim(node: &str, epoch: u64) -> Request {
        Request::Claim { node: node.into(), epoch, force: false, window: 3000 }
    }

    fn granted(answer: &Answer) -> bool {
        matches!(answer, Answer::Verdict { granted: true, .. })
    }

    #[test]
    fn each_epoch_is_granted_once_and_a_refusal_names_the_highest_grant() {
        let mut w = Grants::new(0, String::new(), 0);
        assert!(granted(&w.answer(claim("a", 1), 10, ok)));
        assert!(!granted(&w.answer(claim("a", 1), 20, ok)), "epoch 1 again: a lost its disk");
        let refused = w.answer(claim("b", 1), 5000, ok);
        assert!(
            matches!(refused, Answer::Verdict { granted: false, highest: 1, .. }),
            "{refused:?}"
        );
        assert!(granted(&w.answer(claim("b", 2), 5000, ok)));
        assert!(granted(&w.answer(claim("b", 2), 5000, ok)), "the same claim again");
        // The fresh grantee counts as serving: nobody else is granted the next epoch within
        // the window.
        assert!(!granted(&w.answer(claim("a", 3), 5001, ok)));
        assert!(granted(&w.answer(claim("a", 3), 8001, ok)));
    }

    #[test]
    fn a_restarted_witness_waits_a_failover_window_before_granting() {
        let mut w = Grants::new(2, "b".into(), 1000);
        let early = w.answer(claim("a", 3), 2000, ok);
        assert!(!granted(&early), "{early:?}");
        assert!(granted(&w.answer(claim("a", 3), 4001, ok)));
        // A fresh witness (nothing granted ever) has no lease to wait out.
        let mut fresh = Grants::new(0, String::new(), 1000);
        assert!(granted(&fresh.answer(claim("a", 1), 1001, ok)));
    }

    #[test]
    fn only_the_grantee_counts_as_the_serving_primary() {
        let mut w = Grants::new(1, "b".into(), 0);
        let ping = |node: &str| Request::Ping {
            node: node.into(),
            primary: true,
            epoch: 1,
            serving: true,
        };
        // a says it is primary in epoch 1, which was granted to b: it does not hold off claims.
        w.answer(ping("a"), 4000, ok);
        assert!(granted(&w.answer(claim("b", 2), 4001, ok)), "a's ping is not the grantee's");
        let mut w = Grants::new(1, "b".into(), 0);
        w.answer(ping("b"), 4000, ok);
        assert!(!granted(&w.answer(claim("a", 2), 4001, ok)), "b, the grantee, serves");
        let forced = Request::Claim { node: "a".into(), epoch: 2, force: true, window: 3000 };
        assert!(granted(&w.answer(forced, 4002, ok)), "unless forced");
    }

    /// The simulation's finding 3: the grantee, its verdict still on the way, pings as the
    /// standby it was; that ping must not clear the witness's memory of it as serving, or the
    /// next epoch goes to the other node before the grantee has even begun.
    #[test]
    fn a_late_grantee_pinging_as_a_standby_still_holds_off_the_next_claim() {
        let mut w = Grants::new(1, "a".into(), 0);
        assert!(granted(&w.answer(claim("b", 2), 5000, ok)));
        let stale = Request::Ping { node: "b".into(), primary: false, epoch: 1, serving: false };
        w.answer(stale, 5100, ok);
        assert!(!granted(&w.answer(claim("a", 3), 5200, ok)), "b's grant still holds");
    }

    #[test]
    fn a_grant_that_cannot_be_persisted_is_refused() {
        let mut w = Grants::new(0, String::new(), 0);
        let answer = w.answer(claim("a", 1), 1, |_, _| Err("disk full"));
        assert!(!granted(&answer));
        assert_eq!(w.granted(), (0, ""));
        // Refused with the grant it still holds as the highest.
        let mut w = Grants::new(2, "b".into(), 0);
        let answer = w.answer(claim("a", 3), 5000, |_, _| Err("disk full"));
        assert_eq!(
            answer,
            Answer::Verdict {
                granted: false,
                epoch: 3,
                highest: 2,
                reason: "the witness cannot persist the grant: disk full".into()
            }
        );
        assert_eq!(w.granted(), (2, "b"));
    }

    fn ping(node: &str, primary: bool, epoch: u64, serving: bool) -> Request {
        Request::Ping { node: node.into(), primary, epoch, serving }
    }

    fn pong(granted: u64, granted_to: &str, serving: bool) -> Answer {
        Answer::Pong { granted, granted_to: granted_to.into(), serving }
    }

    /// The refusal's reason and highest grant; panics on a grant or a pong.
    fn refusal(answer: Answer) -> (String, u64) {
        match answer {
            Answer::Verdict { granted: false, reason, highest, .. } => (reason, highest),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn a_pong_names_the_highest_grant_and_whether_its_grantee_serves() {
        let mut w = Grants::new(0, String::new(), 0);
        assert_eq!(w.answer(ping("b", false, 0, false), 10, ok), pong(0, "", false));
        assert!(granted(&w.answer(claim("a", 1), 20, ok)));
        // A fresh grant counts as serving until the grantee says otherwise.
        assert_eq!(w.answer(ping("b", false, 1, false), 30, ok), pong(1, "a", true));
        assert_eq!(w.answer(ping("a", true, 1, false), 40, ok), pong(1, "a", false));
        assert_eq!(w.answer(ping("a", true, 1, true), 50, ok), pong(1, "a", true));
        // A standby's ping, or a primary's in an older epoch, changes nothing.
        assert_eq!(w.answer(ping("b", false, 1, false), 60, ok), pong(1, "a", true));
        assert_eq!(w.answer(ping("b", true, 0, false), 70, ok), pong(1, "a", true));
    }

    #[test]
    fn the_grantee_saying_it_stopped_serving_lets_the_next_claim_through_at_once() {
        let mut w = Grants::new(1, "a".into(), 0);
        w.answer(ping("a", true, 1, true), 4000, ok);
        let (reason, highest) = refusal(w.answer(claim("b", 2), 4100, ok));
        assert_eq!(reason, "primary a (epoch 1) was heard 100 ms ago");
        assert_eq!(highest, 1);
        // A switchover: the primary tells the witness it no longer serves.
        w.answer(ping("a", true, 1, false), 4200, ok);
        assert!(granted(&w.answer(claim("b", 2), 4300, ok)));
        assert_eq!(w.granted(), (2, "b"));
    }

    #[test]
    fn a_primary_in_an_epoch_never_granted_is_taken_in_and_its_epoch_never_granted_again() {
        let mut w = Grants::new(1, "a".into(), 0);
        // b took epoch 3 without this witness (allow_failover_without_witness).
        assert_eq!(w.answer(ping("b", true, 3, true), 10, ok), pong(3, "b", true));
        assert_eq!(w.granted(), (3, "b"));
        let (reason, highest) = refusal(w.answer(claim("a", 3), 5000, ok));
        assert_eq!(reason, "epoch 3 is not newer than 3 (granted to b)");
        assert_eq!(highest, 3);
        // Not taken in when it cannot be persisted: the pong says what the witness holds.
        let mut w = Grants::new(1, "a".into(), 0);
        let answer = w.answer(ping("b", true, 3, true), 10, |_, _| Err("disk full"));
        assert_eq!(answer, pong(1, "a", false));
        assert_eq!(w.granted(), (1, "a"));
    }

    #[test]
    fn every_refusal_names_the_highest_grant() {
        let mut w = Grants::new(5, "a".into(), 0);
        // Not newer, and older: the highest grant, 5.
        for epoch in [5, 2] {
            let (reason, highest) = refusal(w.answer(claim("b", epoch), 10_000, ok));
            assert_eq!(reason, format!("epoch {epoch} is not newer than 5 (granted to a)"));
            assert_eq!(highest, 5);
        }
        // The restart wait.
        let mut w = Grants::new(5, "a".into(), 1000);
        let (reason, highest) = refusal(w.answer(claim("b", 6), 1500, ok));
        assert_eq!(
            reason,
            "the witness restarted 500 ms ago: a lease it gave before may still run"
        );
        assert_eq!(highest, 5);
        // The grantee heard serving.
        let mut w = Grants::new(5, "a".into(), 0);
        w.answer(ping("a", true, 5, true), 9000, ok);
        assert_eq!(refusal(w.answer(claim("b", 9), 9001, ok)).1, 5);
        // Epoch 1 claimed again by its grantee (a node that lost its disk).
        let mut w = Grants::new(0, String::new(), 0);
        w.answer(claim("a", 1), 10, ok);
        assert_eq!(refusal(w.answer(claim("a", 1), 20, ok)).1, 1);
        // A grant's highest is the epoch granted.
        let mut w = Grants::new(5, "a".into(), 0);
        let answer = w.answer(claim("b", 8), 10_000, ok);
        assert_eq!(
            answer,
            Answer::Verdict { granted: true, epoch: 8, highest: 8, reason: GRANTED.into() }
        );
    }

    #[test]
    fn a_repeated_claim_is_granted_again_without_persisting_and_renews_the_grantee() {
        let mut w = Grants::new(1, "a".into(), 0);
        assert!(granted(&w.answer(claim("b", 2), 5000, ok)));
        let mut persisted = false;
        let again = w.answer(claim("b", 2), 9000, |_, _| {
            persisted = true;
            Ok::<(), std::convert::Infallible>(())
        });
        assert_eq!(
            again,
            Answer::Verdict {
                granted: true,
                epoch: 2,
                highest: 2,
                reason: "granted before".into()
            }
        );
        assert!(!persisted, "nothing new to persist");
        // The repeat counts as heard serving from its answer: a's claim within the window of
        // it (but past the window of the first grant) is refused.
        let (reason, _) = refusal(w.answer(claim("a", 3), 9500, ok));
        assert_eq!(reason, "primary b (epoch 2) was heard 500 ms ago");
    }

    #[test]
    fn the_grantee_may_claim_the_next_epoch_while_it_serves_and_force_skips_the_waits() {
        let mut w = Grants::new(1, "a".into(), 0);
        w.answer(ping("a", true, 1, true), 4000, ok);
        assert!(granted(&w.answer(claim("a", 2), 4001, ok)), "its own serving does not count");
        // A restarted witness grants a forced claim at once.
        let mut w = Grants::new(2, "b".into(), 1000);
        let forced = Request::Claim { node: "a".into(), epoch: 3, force: true, window: 3000 };
        assert!(granted(&w.answer(forced, 1001, ok)));
        // Force never grants an epoch that is not newer.
        let stale = Request::Claim { node: "b".into(), epoch: 3, force: true, window: 3000 };
        assert_eq!(refusal(w.answer(stale, 1002, ok)).1, 3);
    }
}
