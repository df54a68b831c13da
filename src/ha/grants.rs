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
    }
}
