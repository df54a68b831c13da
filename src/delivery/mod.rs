//! The delivery engine: the queue runner that relays each accepted message to its route,
//! retries temporary failures, and bounces permanent and expired ones with a DSN.
//!
//! Only a primary runs it. [`DeliveryHandle`] is how the rest of the node talks to it.

mod client;
mod dsn;
mod outcome;
mod probe;
mod queue;
mod route;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

pub use outcome::{EnhancedStatus, Outcome, Reply};
pub use probe::Prober;
pub use route::ResolverError;

use crate::config::LiveConfig;
use crate::metrics::Metrics;
use crate::role::RoleWatch;
use crate::spool::{BodyWriter, Change, ErrorKind, QueueId, Spool, SpoolError};

/// Starts the queue runner on the current tokio runtime. It delivers while the node serves
/// (a primary that is not fenced), loading the queue from the spool each time it starts to.
pub fn start(
    config: LiveConfig,
    spool: Spool,
    metrics: Arc<Metrics>,
    role: RoleWatch,
) -> Result<DeliveryHandle, StartError> {
    let resolver = route::Resolver::new(&config.load().delivery.resolvers)?;
    let tls = tls_connector()?;
    let (requests, request_rx) = mpsc::unbounded_channel();
    let (done, done_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(queue::Shared {
        config,
        spool,
        metrics,
        resolver,
        tls,
        requests,
        done,
        activity: Arc::default(),
        role,
    });
    tokio::spawn(queue::Runner::new(shared.clone(), request_rx, done_rx).run());
    Ok(DeliveryHandle { shared })
}

/// The outbound TLS client. Certificates are not verified, as with Postfix's "may" and
/// "encrypt" levels: MX certificates are rarely valid for the MX name, and refusing them would
/// only push the mail to plain text. Authentication of the next hop (DANE, MTA-STS) is future
/// work.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, StartError> {
    mail_send::smtp::tls::build_tls_connector(true).map_err(StartError::Tls)
}

/// Why the queue runner (or the recipient prober) could not start.
#[derive(Debug)]
pub enum StartError {
    Dns(ResolverError),
    /// The outbound TLS client configuration (mail-send says why only in words).
    Tls(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Dns(e) => e.fmt(f),
            StartError::Tls(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Dns(e) => Some(e),
            StartError::Tls(_) => None,
        }
    }
}

impl From<ResolverError> for StartError {
    fn from(e: ResolverError) -> StartError {
        StartError::Dns(e)
    }
}

/// What the queue runner is asked from outside.
#[derive(Debug)]
pub(crate) enum RunnerRequest {
    /// A message was just accepted: try it now.
    Queued(QueueId),
    /// An operator asked for messages to be tried now.
    Requeue(Requeue),
    /// An operator deleted (or held) a message: drop it from the schedule.
    Forget(QueueId),
    /// An operator's bounce is about to change these messages: dispatch none of them, and
    /// answer once none has a delivery in flight.
    Pause(Vec<QueueId>, tokio::sync::oneshot::Sender<()>),
    /// The bounce is done: those still queued are scheduled again.
    Resume(Vec<QueueId>),
}

/// Messages per commit of a bulk change (delete, hold, release): one write transaction stays
/// small however many messages a filter selects.
const BATCH: usize = 1000;

/// What an operator does to a selection of queued messages (`relayd queue delete|hold|release|
/// bounce`, [`DeliveryHandle::change_all`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChange {
    Delete,
    Hold,
    Release,
    Bounce,
}

impl QueueChange {
    /// The operation's verb ("hold").
    pub fn verb(self) -> &'static str {
        match self {
            QueueChange::Delete => "delete",
            QueueChange::Hold => "hold",
            QueueChange::Release => "release",
            QueueChange::Bounce => "bounce",
        }
    }

    /// Its past participle ("held"), as the admin endpoint's answer counts the messages.
    pub fn done(self) -> &'static str {
        match self {
            QueueChange::Delete => "deleted",
            QueueChange::Hold => "held",
            QueueChange::Release => "released",
            QueueChange::Bounce => "bounced",
        }
    }

    /// Whether it changes a message that is (or is not) `held`: a hold only one that is not, a
    /// release only one that is, the others any.
    pub fn applies_to(self, held: bool) -> bool {
        match self {
            QueueChange::Hold => !held,
            QueueChange::Release => held,
            QueueChange::Delete | QueueChange::Bounce => true,
        }
    }
}

/// One commit of a bulk change: its changes, the bodies they accept, and what the runner is
/// told once it is durable.
struct Batch {
    changes: Vec<Change>,
    bodies: Vec<BodyWriter>,
    then: Vec<RunnerRequest>,
}

/// A batch of `changes` after which the runner forgets the messages of `ids` (removed, or
/// held: not to be dispatched).
fn forgotten(ids: &[QueueId], changes: Vec<Change>) -> Batch {
    let then = ids.iter().map(|&id| RunnerRequest::Forget(id)).collect();
    Batch { changes, bodies: Vec::new(), then }
}

/// Which messages an operator's requeue tries now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Every queued message (`relayd queue flush`, `relayd queue requeue --all`).
    All,
    /// These messages (one, or those of a recipient domain); ids no longer queued are skipped.
    Only(Vec<QueueId>),
}

/// A handle on the queue runner; cheap to clone.
#[derive(Clone)]
pub struct DeliveryHandle {
    shared: Arc<queue::Shared>,
}

impl DeliveryHandle {
    /// SIGTERM: no new delivery starts; the ones in flight finish ([`Self::in_flight`]).
    pub fn drain(&self) {
        self.shared.activity.draining.store(true, Ordering::Relaxed);
    }

    /// Deliveries being attempted right now.
    pub fn in_flight(&self) -> usize {
        self.shared.activity.busy.load(Ordering::Relaxed)
    }

    /// A message was accepted: the runner tries it at once.
    pub fn queued(&self, id: QueueId) {
        self.send(RunnerRequest::Queued(id));
    }

    /// The messages are tried now with the current routes (`relayd queue requeue`, `relayd
    /// queue flush`). False when the runner is gone (the node is stopping).
    pub fn requeue(&self, which: Requeue) -> bool {
        self.send(RunnerRequest::Requeue(which))
    }

    /// Removes a message from the queue without delivering it (`relayd queue delete ID`).
    /// Returns false when no such message is queued. A delivery already in flight for it
    /// finishes, but its results are ignored.
    pub async fn delete(&self, id: QueueId) -> Result<bool, SpoolError> {
        Ok(!self.delete_all(&[id]).await?.is_empty())
    }

    /// Removes these messages ([`Self::delete`]) and returns those that were queued. The
    /// removals are committed [`BATCH`] to a commit (one fdatasync each, not one per
    /// message), each a `Removed` record of the change log like a single delete's.
    pub async fn delete_all(&self, ids: &[QueueId]) -> Result<Vec<QueueId>, SpoolError> {
        let spool = &self.shared.spool;
        let changes = |batch: &[QueueId]| batch.iter().map(|&id| Change::Removed { id }).collect();
        self.in_batches(
            ids,
            |id| Ok(spool.get(id)?.is_some()),
            |batch| Ok(forgotten(batch, changes(batch))),
        )
        .await
    }

    /// Makes `change` to these messages; those it changed.
    pub async fn change_all(
        &self,
        change: QueueChange,
        ids: &[QueueId],
    ) -> Result<Vec<QueueId>, SpoolError> {
        match change {
            QueueChange::Delete => self.delete_all(ids).await,
            QueueChange::Hold => self.hold_all(ids).await,
            QueueChange::Release => self.release_all(ids).await,
            QueueChange::Bounce => self.bounce_all(ids).await,
        }
    }

    /// Holds these messages (`relayd queue hold`): none is delivered, nor expired, until it
    /// is released. Returns those that were queued and not held yet. A delivery in flight
    /// for one of them finishes; it is not tried again. One `Held` record per [`BATCH`].
    pub async fn hold_all(&self, ids: &[QueueId]) -> Result<Vec<QueueId>, SpoolError> {
        let spool = &self.shared.spool;
        let since_ms = crate::spool::now_ms();
        self.in_batches(
            ids,
            |id| Ok(spool.held_since(id)?.is_none() && spool.get(id)?.is_some()),
            |batch| Ok(forgotten(batch, vec![Change::Held { ids: batch.to_vec(), since_ms }])),
        )
        .await
    }

    /// Releases these held messages (`relayd queue release`), and returns those that were
    /// held: each is tried at once, as a requeue does; one older than
    /// `max_queue_lifetime` gets that one attempt, then bounces if it fails temporarily. One
    /// `Released` record per [`BATCH`].
    pub async fn release_all(&self, ids: &[QueueId]) -> Result<Vec<QueueId>, SpoolError> {
        let spool = &self.shared.spool;
        self.in_batches(
            ids,
            |id| Ok(spool.held_since(id)?.is_some()),
            |batch| {
                Ok(Batch {
                    changes: vec![Change::Released { ids: batch.to_vec() }],
                    bodies: Vec::new(),
                    then: vec![RunnerRequest::Requeue(Requeue::Only(batch.to_vec()))],
                })
            },
        )
        .await
    }

    /// Bounces these messages now (`relayd queue bounce`): every pending recipient becomes
    /// bounced, "5.0.0 bounced by the operator", and the sender (unless null) gets a DSN, in
    /// the same commit; the message leaves the queue with it, held or not. Returns those that
    /// were queued. The runner first stops dispatching them and waits for their deliveries in
    /// flight (what those record stands: a recipient delivered is not bounced). [`BATCH`]
    /// messages to a commit.
    pub async fn bounce_all(&self, ids: &[QueueId]) -> Result<Vec<QueueId>, SpoolError> {
        // A task of its own: a caller that goes away (an HTTP client that hangs up) must not
        // leave the messages paused.
        let (handle, ids) = (self.clone(), ids.to_vec());
        let bounce = tokio::spawn(async move {
            let (paused, landed) = tokio::sync::oneshot::channel();
            // A runner gone (the node stopping) delivers nothing more: nothing to wait for.
            if handle.send(RunnerRequest::Pause(ids.clone(), paused)) {
                let _ = landed.await;
            }
            let spool = &handle.shared.spool;
            let now = crate::spool::now_ms();
            let bounced = handle
                .in_batches(
                    &ids,
                    |id| Ok(spool.get(id)?.is_some()),
                    |batch| queue::bounce_now(&handle.shared, batch, now),
                )
                .await;
            // Bounced or not (a failed commit, a message gone meanwhile), the pause ends.
            handle.send(RunnerRequest::Resume(ids));
            bounced
        });
        bounce
            .await
            .map_err(|e| SpoolError::new(ErrorKind::Io, format!("the bounce failed: {e}")))?
    }

    /// A bulk change: of `ids`, those `selected` now, [`BATCH`] to a commit of the [`Batch`]
    /// made of them, whose requests go to the runner once it is durable. Returns the ids
    /// changed.
    async fn in_batches(
        &self,
        ids: &[QueueId],
        selected: impl Fn(QueueId) -> Result<bool, SpoolError>,
        make: impl Fn(&[QueueId]) -> Result<Batch, SpoolError>,
    ) -> Result<Vec<QueueId>, SpoolError> {
        let mut changed = Vec::new();
        for batch in ids.chunks(BATCH) {
            let mut chosen = Vec::with_capacity(batch.len());
            for &id in batch {
                if selected(id)? {
                    chosen.push(id);
                }
            }
            if chosen.is_empty() {
                continue;
            }
            let Batch { changes, bodies, then } = make(&chosen)?;
            self.shared.spool.commit(changes, bodies).await?;
            for request in then {
                self.send(request);
            }
            changed.extend(chosen);
        }
        Ok(changed)
    }

    fn send(&self, request: RunnerRequest) -> bool {
        self.shared.requests.send(request).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_changes_only_messages_not_held_and_a_release_only_held_ones() {
        let changes =
            [QueueChange::Delete, QueueChange::Hold, QueueChange::Release, QueueChange::Bounce];
        let applies = changes.map(|c| (c.applies_to(false), c.applies_to(true)));
        assert_eq!(applies, [(true, true), (true, false), (false, true), (true, true)]);
        let words = changes.map(|c| (c.verb(), c.done()));
        assert_eq!(
            words,
            [
                ("delete", "deleted"),
                ("hold", "held"),
                ("release", "released"),
                ("bounce", "bounced")
            ]
        );
    }
}
