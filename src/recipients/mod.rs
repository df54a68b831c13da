//! Recipient checks at RCPT, for the relay domains with a `[[relay.domain]]` table: a list of
//! the valid recipients ([`list`]), and verification at the route's next hop (Postfix's
//! address_verify: MAIL FROM:<> and RCPT TO there, with a cache of the answers, decided in
//! [`verify`]), so that relayd refuses an unknown recipient at RCPT instead of bouncing it later
//! to a sender who may be forged (backscatter).
//!
//! The lists are read at start and at each SIGHUP (a file that cannot be read then keeps its
//! old list). The cache is this node's, in memory: lost at a restart, and a standby warms its
//! own once it serves.

pub mod list;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::delivery::{Prober, StartError};
use crate::proto::{Address, Reply};
use list::RecipientList;
use verify::{Cache, Probe, Verdict};

/// The lists, by `[[relay.domain]]` name.
type Lists = HashMap<String, Arc<RecipientList>>;

/// The node's recipient checks; shared by every session.
pub struct Recipients {
    lists: ArcSwap<Lists>,
    prober: Arc<Prober>,
    state: Arc<Mutex<VerifyState>>,
}

/// The answers remembered, and the probes under way (which later RCPTs for the same address
/// wait for instead of probing again).
struct VerifyState {
    cache: Cache,
    pending: HashMap<String, watch::Receiver<Option<Verdict>>>,
}

/// Why the recipient checks could not start.
#[derive(Debug)]
pub enum OpenError {
    /// A recipients file could not be used (the error names the file and the key).
    Config(ConfigError),
    /// The prober's resolver or TLS client.
    Prober(StartError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(e) => e.fmt(f),
            OpenError::Prober(e) => write!(f, "recipient verification: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Config(e) => Some(e),
            OpenError::Prober(e) => Some(e),
        }
    }
}

impl Recipients {
    /// Reads every list of `config`; a file that cannot be read or parsed is a config error
    /// naming it.
    pub fn open(config: &Config) -> Result<Recipients, OpenError> {
        let lists = load_lists(config, &Lists::new()).map_err(OpenError::Config)?;
        Ok(Recipients {
            lists: ArcSwap::from_pointee(lists),
            prober: Arc::new(Prober::new(config).map_err(OpenError::Prober)?),
            state: Arc::new(Mutex::new(VerifyState {
                cache: Cache::new(config.relay.verify.cache_size),
                pending: HashMap::new(),
            })),
        })
    }

    /// What `check-config` verifies: every list loads.
    pub fn check(config: &Config) -> Result<(), ConfigError> {
        load_lists(config, &Lists::new()).map(drop)
    }

    /// SIGHUP: reads the lists of `config` again. A file that cannot be used keeps the list it
    /// gave before, with a warning; one that never loaded is an error (nothing changes).
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let lists = load_lists(config, &self.lists.load())?;
        self.lists.store(Arc::new(lists));
        self.state().cache.resize(config.relay.verify.cache_size);
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, VerifyState> {
        lock(&self.state)
    }

    /// The refusal for `recipient`, or `None` when it may be accepted: unlisted in its
    /// domain's list, `550 5.1.1`; then, for a domain that verifies, the next hop's word (or
    /// `450 4.1.1` while it is not known). A domain without a table is not checked.
    pub async fn refusal(&self, config: &Arc<Config>, recipient: &Address) -> Option<Reply> {
        let check = config.relay.recipient_check(&recipient.domain)?;
        if check.has_list() {
            let listed = self
                .lists
                .load()
                .get(&check.name)
                // None only for a session older than a SIGHUP that dropped the table's list:
                // the newer config checks no list there.
                .is_none_or(|list| list.contains(&recipient.local, &recipient.domain));
            if !listed {
                return Some(Reply::new(550, "5.1.1", format!("<{recipient}>: recipient unknown")));
            }
        }
        if !check.verify {
            return None;
        }
        match self.verify(config, recipient).await {
            Verdict::Accept => None,
            Verdict::Refuse(reply) => Some(reply),
        }
    }

    /// The next hop's word on `recipient`: from the cache, from a probe under way for the same
    /// address, or from a new probe (run in a task of its own, so that it fills the cache for
    /// the next RCPT even if this client goes away).
    async fn verify(&self, config: &Arc<Config>, recipient: &Address) -> Verdict {
        // The cache's key: the local part as written, the domain in lower case.
        let key = format!("{}@{}", recipient.local, recipient.domain.to_ascii_lowercase());
        let mut waiting = {
            let mut state = self.state();
            if let Some(verdict) = verify::from_cache(state.cache.get(&key), Instant::now()) {
                return verdict;
            }
            // A probe whose task ended without removing itself (it cannot, short of a panic)
            // is no probe under way: its sender is gone, and a new one starts.
            match state.pending.get(&key).filter(|probe| probe.has_changed().is_ok()) {
                Some(probe) => probe.clone(),
                None => {
                    let (done, waiting) = watch::channel(None);
                    state.pending.insert(key.clone(), waiting.clone());
                    tokio::spawn(probe(
                        self.prober.clone(),
                        self.state.clone(),
                        config.clone(),
                        key,
                        done,
                    ));
                    waiting
                }
            }
        };
        let address = recipient.to_string();
        match waiting.wait_for(Option::is_some).await {
            Ok(verdict) => verdict.clone().unwrap_or_else(|| lost(&address)),
            // The probe's task ended without a word (the runtime is shutting down).
            Err(_) => lost(&address),
        }
    }
}

/// The state, even if a thread panicked holding it: the cache and the probes under way stay
/// consistent at every point a panic could leave them.
fn lock(state: &Mutex<VerifyState>) -> MutexGuard<'_, VerifyState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The verdict when the probe's task gave none.
fn lost(address: &str) -> Verdict {
    verify::unverified(address, "the probe ended without an answer")
}

/// One probe of `key` at its next hop, within `[relay].verify_timeout`: its answer is
/// remembered (when it is one to remember) and told to every RCPT waiting for it.
async fn probe(
    prober: Arc<Prober>,
    state: Arc<Mutex<VerifyState>>,
    config: Arc<Config>,
    key: String,
    done: watch::Sender<Option<Verdict>>,
) {
    let settings = &config.relay.verify;
    let probe = match tokio::time::timeout(settings.timeout, prober.probe(&config, &key)).await {
        Ok(outcome) => Probe::Answered(outcome),
        Err(_) => Probe::TimedOut(settings.timeout),
    };
    let now = Instant::now();
    let (verdict, answer) = verify::from_probe(&key, &probe, now, settings);
    let said = match &probe {
        Probe::Answered(outcome) => outcome.reply().to_string(),
        Probe::TimedOut(_) => "no answer in time".to_string(),
    };
    tracing::info!(rcpt = %format_args!("<{key}>"), next_hop = %said, "recipient verification probe");
    {
        let mut state = lock(&state);
        if let Some(answer) = answer {
            state.cache.insert(key.clone(), answer);
        }
        state.pending.remove(&key);
    }
    done.send_replace(Some(verdict));
}

/// The lists of `config`'s tables. A file that cannot be used keeps its table's list in `old`
/// (with a warning), or is an error naming the key and the file when there is none.
fn load_lists(config: &Config, old: &Lists) -> Result<Lists, ConfigError> {
    let mut lists = Lists::new();
    for (i, check) in config.relay.recipient_checks.iter().enumerate() {
        if !check.has_list() {
            continue;
        }
        let list = match RecipientList::load(check) {
            Ok(list) => {
                tracing::info!(domain = %check.name, recipients = list.entries(), "recipient list loaded");
                Arc::new(list)
            }
            Err(e) => match old.get(&check.name) {
                Some(kept) => {
                    tracing::warn!(domain = %check.name, error = %e, "recipients file not reloaded; its old list stays");
                    kept.clone()
                }
                None => {
                    let key = format!("relay.domain[{}].recipients_file", i + 1);
                    return Err(config.error_at(&key, e.to_string()));
                }
            },
        };
        lists.insert(check.name.clone(), list);
    }
    Ok(lists)
}
