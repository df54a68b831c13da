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
use tokio::io::AsyncWrite;
use tokio::sync::{Notify, oneshot, watch};

pub use self::error::{HandoverError, LinkError};
use self::frame::{Frame, Hello, Sender};
use crate::config::{
    ClusterConfig, Config, ConfigError, ReplicationMode as Mode, Role, StandbyLoss,
};
use crate::delivery::DeliveryHandle;
use crate::role::{Data, Peer, Reporter, RoleWatch};
use crate::spool::{EpochStart, LogPosition, QueueId, Retention, Spool, SpoolError, Trimmed};

/// Log records a node keeps when nobody needs them (for `relayd`'s own inspection), within
/// the retention bounds.
const MIN_RETAINED: u64 = 10_000;

/// How often the refusal of a peer of an incompatible version is logged again while it keeps
/// reconnecting.
const REFUSAL_REPEAT: Duration = Duration::from_secs(600);

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
    /// The release and protocol the peer's last Hello named.
    peer_version: Mutex<Option<(String, u32)>>,
    /// The last refusal of an incompatible peer logged: what it was, and when.
    refused: Mutex<Option<(String, Instant)>>,
    /// Since when the standby has been missing records (None: caught up).
    behind_since: Mutex<Option<Instant>>,
    /// A planned switchover waiting for the link: our epoch, and where the new one goes.
    handover: Mutex<Option<Handover>>,
    handover_asked: Notify,
    /// Told of salvaged messages so that it delivers them.
    delivery: DeliveryHandle,
    /// The peer as the link last saw it (None until a link came up).
    seen: Mutex<Option<Seen>>,
    /// Bumped by `relayd rebuild`: the follower's session ends, and the primary's next one
    /// finds the emptied spool.
    restarts: watch::Sender<u64>,
}

/// The peer as the link last saw it: its Hello, and when a frame of it last arrived.
struct Seen {
    node: String,
    role: String,
    epoch: u64,
    heard: Instant,
}

/// The peer as this node's link knows it, for `/status`'s members.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub node: String,
    /// The role its Hello said.
    pub role: String,
    /// Its epoch: its Hello's, or, for a standby that holds our current epoch's records, ours.
    pub epoch: u64,
    pub connected: bool,
    /// Since its last frame (an ack, a record, a heartbeat).
    pub silence: Duration,
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
    /// The peer's release and cluster protocol, as its last Hello named them (also when it
    /// was refused for them).
    pub release: Option<String>,
    pub protocol: Option<u32>,
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
                peer_version: Mutex::new(None),
                refused: Mutex::new(None),
                behind_since: Mutex::new(None),
                handover: Mutex::new(None),
                handover_asked: Notify::new(),
                delivery,
                seen: Mutex::new(None),
                restarts: watch::Sender::new(0),
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
        let version = state.peer_version.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (release, protocol) = version.map_or((None, None), |(r, p)| (Some(r), Some(p)));
        let peer = PeerStatus {
            node: state.peer.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            address: cluster.peer.clone(),
            connected: state.connected.load(Ordering::Relaxed),
            mode: mode.to_string(),
            release,
            protocol,
        };
        ReplicationStatus { peer: Some(peer), lag_records, lag_bytes, lag_seconds }
    }

    fn sync_cluster(&self) -> Option<&ClusterConfig> {
        self.state.cluster.as_ref().filter(|c| c.replication == Mode::Sync)
    }

    /// The link is up with `peer`.
    fn linked(&self, theirs: &Hello) {
        *self.state.peer.lock().unwrap_or_else(PoisonError::into_inner) = Some(theirs.node.clone());
        *self.state.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Seen {
            node: theirs.node.clone(),
            role: theirs.role.clone(),
            epoch: last_epoch(&theirs.history),
            heard: Instant::now(),
        });
        self.state.connected.store(true, Ordering::Relaxed);
    }

    /// A frame of the peer arrived.
    fn heard(&self) {
        if let Some(seen) = self.state.seen.lock().unwrap_or_else(PoisonError::into_inner).as_mut()
        {
            seen.heard = Instant::now();
        }
    }

    /// The peer as the link last saw it; None until a link came up. `ours`: this node's epoch
    /// history, by which a standby that acknowledged our current epoch is in it.
    pub fn peer_view(&self, ours: &[EpochStart]) -> Option<PeerView> {
        let seen = self.state.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = seen.as_ref()?;
        let connected = self.state.connected.load(Ordering::Relaxed);
        let in_ours = ours.last().filter(|current| {
            connected
                && seen.role == Role::Standby.as_str()
                && self.acked_seq() >= current.first_seq
        });
        Some(PeerView {
            node: seen.node.clone(),
            role: seen.role.clone(),
            epoch: in_ours.map_or(seen.epoch, |current| current.epoch.max(seen.epoch)),
            connected,
            silence: seen.heard.elapsed(),
        })
    }

    /// `relayd rebuild`: the follower's session ends (its spool was just emptied); the
    /// primary dials again and finds it empty.
    pub fn restart_following(&self) {
        self.state.restarts.send_modify(|generation| *generation += 1);
    }

    /// Resolves at the next [`Self::restart_following`].
    fn restarted(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut restarts = self.state.restarts.subscribe();
        restarts.mark_unchanged();
        async move {
            let _ = restarts.changed().await;
        }
    }

    /// Whether we talk to the peer that said `theirs` (its protocol within one of ours, see
    /// [`frame::compatible`]); noted for `/status` either way.
    fn check_peer(&self, theirs: &Hello) -> Result<(), LinkError> {
        *self.state.peer_version.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((theirs.release.clone(), theirs.protocol));
        if frame::compatible(theirs.protocol) {
            return Ok(());
        }
        Err(LinkError::Incompatible {
            peer: theirs.node.clone(),
            release: theirs.release.clone(),
            protocol: theirs.protocol,
        })
    }

    /// Logs why a link to `peer` ended: once per link, but a peer refused for its version
    /// (which reconnects every second or so) once per [`REFUSAL_REPEAT`] for the same version.
    fn link_ended(&self, peer: &impl std::fmt::Display, error: &LinkError) {
        let Some(theirs) = error.refused_version() else {
            tracing::warn!(peer = %peer, error = %error, "replication link down");
            return;
        };
        let mut refused = self.state.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if !said_lately(refused.as_ref(), &theirs, now) {
            let ours = format!("relayd {} (protocol {})", frame::RELEASE, frame::PROTOCOL);
            tracing::error!(
                peer = %peer,
                theirs = %theirs,
                ours = %ours,
                error = %error,
                "cluster peer refused: incompatible version; this node goes on without it"
            );
            *refused = Some((theirs, now));
        }
    }

    fn unlinked(&self) {
        self.state.connected.store(false, Ordering::Relaxed);
    }

    /// Primary: the standby holds everything up to `seq`.
    fn acked(&self, seq: u64, last: u64) {
        self.heard();
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

/// Whether the refusal of a peer of version `theirs` was logged within [`REFUSAL_REPEAT`]
/// before `now` (`last`: the last one logged, and when).
fn said_lately(last: Option<&(String, Instant)>, theirs: &str, now: Instant) -> bool {
    last.is_some_and(|(said, at)| said == theirs && now.duration_since(*at) < REFUSAL_REPEAT)
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
    Ok(hello_at(node, role, spool.epoch_history()?, spool.last_position(), None))
}

/// Our Hello in `role`, saying our log ends at `last` with `history` (and, for a rejoining old
/// primary, the messages of the branch it asks to drop), with our protocol and release.
fn hello_at(
    node: &str,
    role: Role,
    history: Vec<EpochStart>,
    last: LogPosition,
    rewind: Option<Vec<QueueId>>,
) -> Hello {
    Hello {
        node: node.to_string(),
        role: role.as_str().into(),
        history,
        last,
        rewind,
        protocol: frame::PROTOCOL,
        release: frame::RELEASE.into(),
    }
}

/// Sends a message's body as chunk frames, unflushed (the frame that needs the body follows);
/// returns its size. A body already gone (the message was delivered and removed since) sends
/// nothing.
async fn send_body(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    spool: &Spool,
    id: QueueId,
) -> Result<usize, LinkError> {
    let mut size = 0;
    for chunk in spool.body(id) {
        let data = chunk?;
        size += data.len();
        writer.send(Frame::Chunk { id, data }).await?;
    }
    Ok(size)
}

/// Sends the DSN requests of those of `ids` that have one (RFC 3461's parameters, kept beside
/// the message record), in one [`Frame::Dsn`] before the frame that carries the messages.
async fn send_dsn(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
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
        writer.send(Frame::Dsn(requests)).await?;
    }
    Ok(())
}

async fn flush(writer: &mut Sender<impl AsyncWrite + Unpin>) -> Result<(), LinkError> {
    writer.flush().await.map_err(LinkError::Flush)
}

/// Sends a frame (as the peer's protocol has it) and flushes it to the peer.
async fn send_now(
    writer: &mut Sender<impl AsyncWrite + Unpin>,
    frame: Frame,
) -> Result<(), LinkError> {
    writer.send(frame).await?;
    flush(writer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_said_again_only_for_another_version_or_after_the_repeat_interval() {
        let at = Instant::now();
        let last = ("relayd 9.0.0 (protocol 9)".to_string(), at);
        assert!(!said_lately(None, &last.0, at), "the first refusal is logged");
        assert!(said_lately(Some(&last), &last.0, at + Duration::from_secs(5)));
        assert!(!said_lately(Some(&last), "relayd 4.0.0 (protocol 4)", at));
        assert!(!said_lately(Some(&last), &last.0, at + REFUSAL_REPEAT));
    }

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
