//! Replication: the primary streams its spool's change log to the standby over one mutually
//! authenticated TLS connection; the standby applies each record through the same staging code
//! as the primary, makes it durable, and acknowledges its position.
//!
//! * [`frame`]: the wire format. [`link`]: mutual TLS.
//! * [`ship`]: the primary's side — dial the peer, agree where to resume (or send a snapshot),
//!   stream records with the bodies they need, collect acks.
//! * [`follow`]: the standby's side — accept the primary, apply, ack.
//! * [`error`]: why a link ended, and why a handover did not happen.
//!
//! With `replication = "sync"` a session's 250 waits for the standby's ack of its record
//! ([`Replicator::confirm`]); many sessions' records travel in one frame and share one fsync
//! on each side.

pub mod error;
mod follow;
pub mod frame;
pub mod link;
mod ship;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot, watch};

pub use self::error::{HandoverError, LinkError};
use self::frame::{Frame, Hello};
use crate::config::{
    ClusterConfig, Config, ConfigError, ReplicationMode as Mode, Role, StandbyLoss,
};
use crate::delivery::DeliveryHandle;
use crate::role::{Data, Peer, Reporter, RoleWatch};
use crate::spool::{EpochStart, LogPosition, QueueId, Retention, Spool, SpoolError, Trimmed};

/// Log records a node keeps when nobody needs them (for `relayd`'s own inspection), within
/// the retention bounds.
const MIN_RETAINED: u64 = 10_000;

/// This node's end of replication, shared by the sessions (`confirm`), the admin endpoint
/// (`status`), the switchover (`caught_up`, `hand_over`) and the link tasks it starts.
#[derive(Clone)]
pub struct Replicator {
    state: Arc<State>,
}

struct State {
    /// None on a single node.
    cluster: Option<ClusterConfig>,
    /// Primary: the last sequence number durable on the standby.
    acked: watch::Sender<u64>,
    /// Standby: how far the primary's log went, as it last said.
    primary_last: AtomicU64,
    connected: AtomicBool,
    /// Sync mode lost its standby and accepts without it until the standby has caught up.
    degraded: AtomicBool,
    peer: Mutex<Option<String>>,
    /// Since when the standby has been missing records (None: caught up).
    behind_since: Mutex<Option<Instant>>,
    /// A planned switchover waiting for the link: our epoch, and where the new one goes.
    handover: Mutex<Option<Handover>>,
    handover_asked: Notify,
    /// Told of salvaged messages so that it delivers them.
    delivery: DeliveryHandle,
}

/// A planned switchover asked of the shipper.
struct Handover {
    /// Our epoch, which the standby succeeds.
    epoch: u64,
    /// The Handover frame went out: it is not sent twice.
    sent: bool,
    /// Where the standby's new epoch goes.
    done: oneshot::Sender<u64>,
}

/// What the link tasks know of their node: its name and cluster config, its role (read), and
/// the way to report to `ha`.
#[derive(Clone)]
struct Context {
    node: String,
    cluster: ClusterConfig,
    role: RoleWatch,
    reporter: Reporter,
}

/// Where a confirmed message is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// On this node's disk only (a single node, async replication, or a degraded sync).
    Local,
    /// On the standby's disk too: it acknowledged the record.
    Standby,
}

/// Why a message may not be acknowledged: `replication = "sync"` with
/// `on_standby_loss = "refuse"`, and the standby did not confirm in time.
#[derive(Debug)]
pub struct NotReplicated;

/// The peer and the lag, for `/status` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicationStatus {
    pub peer: Option<PeerStatus>,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    pub node: Option<String>,
    pub address: Option<String>,
    pub connected: bool,
    /// `sync`, `async`, or `degraded` (sync mode running without its standby).
    pub mode: String,
}

impl Replicator {
    /// Starts this node's side of the link (if the config has a `[cluster]`): both tasks run
    /// on every data node, and each acts while the node's role is its own: the shipper dials
    /// the peer while this node is primary, the follower accepts a primary while it is standby.
    /// Neither changes the role: they report what they see to `ha` through `reporter`, and for
    /// a Hello wait for its decision.
    pub async fn start(
        config: &Config,
        spool: &Spool,
        link: Option<link::Link>,
        role: RoleWatch,
        reporter: Reporter,
        delivery: DeliveryHandle,
    ) -> Result<Replicator, ConfigError> {
        let replication = Replicator {
            state: Arc::new(State {
                cluster: config.cluster.clone(),
                acked: watch::Sender::new(0),
                primary_last: AtomicU64::new(0),
                connected: AtomicBool::new(false),
                degraded: AtomicBool::new(false),
                peer: Mutex::new(None),
                behind_since: Mutex::new(None),
                handover: Mutex::new(None),
                handover_asked: Notify::new(),
                delivery,
            }),
        };
        let retention = Retention {
            bytes: config.node.log_retention_bytes,
            age: config.node.log_retention_age,
        };
        tokio::spawn(trim(replication.clone(), spool.clone(), role.clone(), retention));
        let (Some(cluster), Some(link)) = (&config.cluster, link) else { return Ok(replication) };
        let listener = tokio::net::TcpListener::bind(cluster.listen).await.map_err(|e| {
            config.error_at("cluster.listen", format!("cannot listen on {}: {e}", cluster.listen))
        })?;
        tracing::info!(address = %cluster.listen, "cluster link listening");
        let context =
            Context { node: config.node.name.clone(), cluster: cluster.clone(), role, reporter };
        let peer = cluster.peer.clone().unwrap_or_default();
        tokio::spawn(ship::run(
            replication.clone(),
            spool.clone(),
            link.clone(),
            context.clone(),
            peer,
        ));
        tokio::spawn(follow::run(replication.clone(), spool.clone(), link, context, listener));
        Ok(replication)
    }

    /// Waits until the standby holds record `seq`.
    pub async fn caught_up(&self, seq: u64, limit: Duration) -> bool {
        let mut acked = self.state.acked.subscribe();
        tokio::time::timeout(limit, acked.wait_for(|&acked| acked >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Asks the standby to take over (a planned switchover) and returns the epoch it took.
    pub async fn hand_over(&self, epoch: u64, limit: Duration) -> Result<u64, HandoverError> {
        let (done, taken) = oneshot::channel();
        *self.state.handover.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Handover { epoch, sent: false, done });
        self.state.handover_asked.notify_one();
        match tokio::time::timeout(limit, taken).await {
            Ok(Ok(epoch)) => Ok(epoch),
            Ok(Err(_)) => Err(HandoverError::LinkDown),
            Err(_) => Err(HandoverError::TimedOut),
        }
    }

    /// The switchover the shipper should send, if one is asked and not sent yet: marked sent.
    fn handover_to_send(&self) -> Option<u64> {
        let mut handover = self.state.handover.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = handover.as_mut().filter(|h| !h.sent)?;
        pending.sent = true;
        Some(pending.epoch)
    }

    /// Resolves when a switchover is asked.
    async fn handover_wanted(&self) {
        self.state.handover_asked.notified().await;
    }

    /// The standby took over in `epoch`.
    fn took_over(&self, epoch: u64) {
        if let Some(Handover { done, .. }) =
            self.state.handover.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            let _ = done.send(epoch);
        }
    }

    /// Refuse mode with the standby known to be gone: say 451 before the client sends a body.
    pub fn refusing(&self) -> bool {
        self.sync_cluster().is_some_and(|c| {
            c.on_standby_loss == StandbyLoss::Refuse
                && !self.state.connected.load(Ordering::Relaxed)
        })
    }

    /// Waits, in sync mode, until the standby holds `position`; what happens when it does not
    /// within `sync_timeout` is `on_standby_loss`'s to say. Async mode and single nodes return
    /// at once.
    pub async fn confirm(&self, position: LogPosition) -> Result<Copies, NotReplicated> {
        let Some(cluster) = self.sync_cluster() else { return Ok(Copies::Local) };
        let state = &self.state;
        let gone = !state.connected.load(Ordering::Relaxed);
        if gone && state.degraded.load(Ordering::Relaxed) {
            // Already degraded and the standby is not there: no need to wait for it again.
            return Ok(Copies::Local);
        }
        let mut acked = state.acked.subscribe();
        let wait = acked.wait_for(|&seq| seq >= position.seq);
        if !gone && tokio::time::timeout(cluster.sync_timeout, wait).await.is_ok_and(|r| r.is_ok())
        {
            return Ok(Copies::Standby);
        }
        match cluster.on_standby_loss {
            StandbyLoss::Refuse => Err(NotReplicated),
            StandbyLoss::Degrade => {
                if !state.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "standby lost: accepting without it until it has caught up (on_standby_loss = degrade)"
                    );
                }
                Ok(Copies::Local)
            }
        }
    }

    /// Whether [`Self::confirm`] waits for the standby (sync mode): the sessions time that wait.
    pub fn waits_for_acks(&self) -> bool {
        self.sync_cluster().is_some()
    }

    /// The peer and the lag, as this node sees them in its current role.
    pub fn status(&self, spool: &Spool, role: Role) -> ReplicationStatus {
        let state = &self.state;
        let Some(cluster) = &state.cluster else {
            return ReplicationStatus {
                peer: None,
                lag_records: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
            };
        };
        let last = spool.last_position().seq;
        let (behind_from, ahead_to) = match role {
            // A primary measures the standby against its own log.
            Role::Primary => (*state.acked.borrow(), last),
            // A standby measures itself against what the primary last said.
            _ => (last, state.primary_last.load(Ordering::Relaxed).max(last)),
        };
        let lag_records = ahead_to.saturating_sub(behind_from);
        let lag_bytes =
            if lag_records == 0 { 0 } else { spool.log_bytes(behind_from + 1, ahead_to) };
        let lag_seconds = match *state.behind_since.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(since) if lag_records > 0 => since.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        let mode = if state.degraded.load(Ordering::Relaxed) {
            "degraded"
        } else {
            cluster.replication.as_str()
        };
        let peer = PeerStatus {
            node: state.peer.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            address: cluster.peer.clone(),
            connected: state.connected.load(Ordering::Relaxed),
            mode: mode.to_string(),
        };
        ReplicationStatus { peer: Some(peer), lag_records, lag_bytes, lag_seconds }
    }

    fn sync_cluster(&self) -> Option<&ClusterConfig> {
        self.state.cluster.as_ref().filter(|c| c.replication == Mode::Sync)
    }

    /// The link is up with `peer`.
    fn linked(&self, peer: &str) {
        *self.state.peer.lock().unwrap_or_else(PoisonError::into_inner) = Some(peer.to_string());
        self.state.connected.store(true, Ordering::Relaxed);
    }

    fn unlinked(&self) {
        self.state.connected.store(false, Ordering::Relaxed);
    }

    /// Primary: the standby holds everything up to `seq`.
    fn acked(&self, seq: u64, last: u64) {
        self.state.acked.send_if_modified(|acked| {
            let advanced = seq > *acked;
            *acked = (*acked).max(seq);
            advanced
        });
        if seq >= last {
            *self.state.behind_since.lock().unwrap_or_else(PoisonError::into_inner) = None;
            if self.state.degraded.swap(false, Ordering::Relaxed) {
                tracing::info!("standby caught up: synchronous replication again");
            }
        }
    }

    /// Primary: a new link starts with the standby holding our log up to `seq`.
    fn reset_acked(&self, seq: u64) {
        self.state.acked.send_replace(seq);
    }

    /// Primary: records up to `last` exist that the standby may not have yet.
    fn behind(&self) {
        self.state
            .behind_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
    }

    /// Standby: the primary's log goes up to `seq`.
    fn primary_at(&self, seq: u64, applied: u64) {
        self.state.primary_last.store(seq, Ordering::Relaxed);
        let mut since = self.state.behind_since.lock().unwrap_or_else(PoisonError::into_inner);
        if applied >= seq {
            *since = None;
        } else {
            since.get_or_insert_with(Instant::now);
        }
    }

    fn acked_seq(&self) -> u64 {
        *self.state.acked.borrow()
    }
}

/// Where a node's log must go back to for its peer: a primary keeps its standby's last
/// acknowledged record (the resume check reads it) and what follows; a standby keeps all it
/// may (promoted, it may have a rejoining node to resume); a single node nothing. Each keeps its
/// last [`MIN_RETAINED`] records besides. The retention bounds still apply over this.
fn wanted_from(role: Role, clustered: bool, acked: u64, last: u64) -> u64 {
    let wanted = match (role, clustered) {
        (Role::Primary, true) => acked,
        (_, true) => 0,
        (_, false) => last,
    };
    wanted.min(last.saturating_sub(MIN_RETAINED))
}

/// Housekeeping: drops log records nobody needs, and those past the retention bounds
/// (`[node].log_retention_bytes`, `log_retention_age`), every few seconds. A standby whose
/// position goes that way is rebuilt from a snapshot when it comes back: said once.
async fn trim(replication: Replicator, spool: Spool, role: RoleWatch, retention: Retention) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut warned_for = None;
    loop {
        tick.tick().await;
        let last = spool.last_position().seq;
        let current = role.borrow().role;
        let clustered = replication.state.cluster.is_some();
        let acked = replication.acked_seq();
        let wanted = wanted_from(current, clustered, acked, last);
        match spool.trim_log(wanted, crate::spool::now_ms(), &retention) {
            Ok(Trimmed { removed: 0, .. }) => {}
            Ok(Trimmed { removed, keep_from }) => {
                tracing::debug!(removed, keep_from, "change log trimmed");
                let standby_lost = current == Role::Primary && clustered && acked > 0;
                if standby_lost && keep_from > acked && warned_for != Some(acked) {
                    warned_for = Some(acked);
                    tracing::warn!(
                        standby_at = acked,
                        keep_from,
                        "change log trimmed past the standby's last record \
                         (node.log_retention_bytes / log_retention_age): it will be rebuilt \
                         from a snapshot"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "change log trim failed"),
        }
    }
}

/// The last epoch of a history (0: none, an empty spool).
pub fn last_epoch(history: &[EpochStart]) -> u64 {
    history.last().map_or(0, |e| e.epoch)
}

/// How far our spool goes, as ha compares it with the peer's.
fn data_of(spool: &Spool) -> Result<Data, SpoolError> {
    Ok(Data { epoch: last_epoch(&spool.epoch_history()?), seq: spool.last_position().seq })
}

/// The peer as its Hello describes it, for ha's verdict.
fn peer_of(hello: &Hello) -> Peer {
    Peer {
        node: hello.node.clone(),
        primary: hello.role == Role::Primary.as_str(),
        data: Data { epoch: last_epoch(&hello.history), seq: hello.last.seq },
    }
}

/// Our Hello in `role`: who we are and where our log ends.
fn hello(node: &str, role: Role, spool: &Spool) -> Result<Hello, SpoolError> {
    Ok(Hello {
        node: node.to_string(),
        role: role.as_str().into(),
        history: spool.epoch_history()?,
        last: spool.last_position(),
        rewind: None,
    })
}

/// Sends a message's body as chunk frames, unflushed (the frame that needs the body follows);
/// returns its size. A body already gone (the message was delivered and removed since) sends
/// nothing.
async fn send_body(
    writer: &mut (impl AsyncWrite + Unpin),
    spool: &Spool,
    id: QueueId,
) -> Result<usize, LinkError> {
    let mut size = 0;
    for chunk in spool.body(id) {
        let data = chunk?;
        size += data.len();
        frame::write(writer, &Frame::Chunk { id, data }).await?;
    }
    Ok(size)
}

/// Sends the DSN requests of those of `ids` that have one (RFC 3461's parameters, kept beside
/// the message record), in one [`Frame::Dsn`] before the frame that carries the messages.
async fn send_dsn(
    writer: &mut (impl AsyncWrite + Unpin),
    spool: &Spool,
    ids: &[QueueId],
) -> Result<(), LinkError> {
    let mut requests = Vec::new();
    for &id in ids {
        if let Some(dsn) = spool.dsn(id)? {
            requests.push((id, dsn));
        }
    }
    if !requests.is_empty() {
        frame::write(writer, &Frame::Dsn(requests)).await?;
    }
    Ok(())
}

async fn flush(writer: &mut (impl AsyncWrite + Unpin)) -> Result<(), LinkError> {
    writer.flush().await.map_err(LinkError::Flush)
}

/// Writes a frame and flushes it to the peer.
async fn send_now(writer: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> Result<(), LinkError> {
    frame::write(writer, frame).await?;
    flush(writer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_keeps_what_its_standby_has_not_acknowledged() {
        assert_eq!(wanted_from(Role::Primary, true, 5, 100_000), 5);
        // A standby caught up: the last records are kept anyway.
        assert_eq!(wanted_from(Role::Primary, true, 100_000, 100_000), 90_000);
    }

    #[test]
    fn a_standby_keeps_what_the_bounds_allow_and_a_single_node_its_last_records() {
        assert_eq!(wanted_from(Role::Standby, true, 0, 100_000), 0);
        assert_eq!(wanted_from(Role::Primary, false, 0, 100_000), 90_000);
        assert_eq!(wanted_from(Role::Primary, false, 0, 10), 0);
    }
}
