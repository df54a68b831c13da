//! High availability: the node's live role and epoch, and the moves between roles.
//!
//! * [`Ha`] holds what this node is now ([`NodeStatus`]: role, epoch, fenced) and is the one
//!   way to change it: `promote` (a new epoch, persisted before use), `step_down` (a higher
//!   epoch was seen, or a planned switchover), `fence`/`unfence` (the lease).
//! * [`monitor`] watches the clock: a primary fences itself when its lease runs out; a standby
//!   promotes itself when the primary has been silent for `failover_timeout` and the witness
//!   grants the next epoch.
//! * [`witness`]: the third voter, and the data nodes' client for it.
//!
//! The rule that keeps two primaries from ever serving at once: a primary serves only while it
//! has heard the standby or the witness within its lease, the lease ends before
//! `failover_timeout` (checked by `check-config`), a standby promotes only after
//! `failover_timeout` of silence and only with the witness's grant, and the witness grants each
//! epoch once, only when it has not heard a serving primary for `failover_timeout` itself.

pub mod core;
pub mod grants;
pub mod monitor;
#[cfg(test)]
mod sim;
pub mod witness;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{ClusterConfig, Config, Role};
use crate::metrics::Metrics;
use crate::replication::frame::Frame;
use crate::spool::Spool;

/// What this node is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub role: Role,
    pub epoch: u64,
    /// A primary that cannot show it still holds a majority: it answers 421, delivers nothing.
    pub fenced: bool,
}

impl NodeStatus {
    /// Accepting and delivering mail.
    pub fn serving(&self) -> bool {
        self.role == Role::Primary && !self.fenced
    }
}

/// The node's role and its transitions; cheap to clone.
#[derive(Clone)]
pub struct Ha {
    inner: Arc<Inner>,
}

struct Inner {
    status: watch::Sender<NodeStatus>,
    spool: Spool,
    node: String,
    cluster: Option<ClusterConfig>,
    /// The cluster link's client side (for the witness), when in a cluster.
    connector: Option<tokio_rustls::TlsConnector>,
    metrics: Arc<Metrics>,
    /// Standby: when a frame of the primary last arrived. Primary: when the standby or the
    /// witness last answered (the lease runs from here). None: never since this start.
    heard: Mutex<Option<Instant>>,
    /// One role change at a time.
    transition: tokio::sync::Mutex<()>,
}

impl Ha {
    /// The role this node starts in: the one it persisted (it may have been promoted or
    /// demoted since its config was written), else the configured one. A cluster primary
    /// starts fenced: it serves once it has heard the standby or the witness, so that an old
    /// primary coming back never serves before it has learnt of a newer epoch.
    pub async fn start(
        config: &Config,
        spool: &Spool,
        connector: Option<tokio_rustls::TlsConnector>,
        metrics: Arc<Metrics>,
    ) -> Result<Ha, String> {
        let persisted = spool.persisted_role().map_err(|e| e.to_string())?;
        let role = match (config.role_override, persisted, config.node.role) {
            // The command line's --role is the operator's word: it wins.
            (Some(role), ..) => role,
            (None, Some(role), configured) if role != configured => {
                tracing::info!(persisted = %role, configured = %configured, "starting in the role this node last held");
                role
            }
            (None, _, configured) => configured,
        };
        if role != Role::Witness {
            spool.persist_role(role).await.map_err(|e| format!("cannot persist the role: {e}"))?;
        }
        spool.set_writable(role == Role::Primary);
        let epoch = match role {
            Role::Primary => {
                spool.ensure_epoch().await.map_err(|e| format!("cannot start an epoch: {e}"))?
            }
            _ => spool.epoch_history().map_err(|e| e.to_string())?.last().map_or(0, |e| e.epoch),
        };
        let fenced = role == Role::Primary && config.cluster.as_ref().is_some_and(can_fail_over);
        Ok(Ha {
            inner: Arc::new(Inner {
                status: watch::Sender::new(NodeStatus { role, epoch, fenced }),
                spool: spool.clone(),
                node: config.node.name.clone(),
                cluster: config.cluster.clone(),
                connector,
                metrics,
                // A standby gives the primary a full failover_timeout to show up; a primary has
                // heard nobody yet, so it serves only once it has (when it needs a lease).
                heard: Mutex::new((role != Role::Primary).then(Instant::now)),
                transition: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn status(&self) -> NodeStatus {
        *self.inner.status.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.inner.status.subscribe()
    }

    pub fn serving(&self) -> bool {
        self.status().serving()
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.inner.cluster.as_ref()
    }

    /// Whether a standby may promote itself: only then does a primary need a lease (and fence
    /// itself without one). With failover left to an operator, a primary that lost its standby
    /// keeps serving.
    pub fn leased(&self) -> bool {
        self.inner.cluster.as_ref().is_some_and(can_fail_over)
    }

    /// The cluster link's client config (a witness claim is made with it).
    pub fn connector(&self) -> Option<&tokio_rustls::TlsConnector> {
        self.inner.connector.as_ref()
    }

    /// A sign of life from the other side: the primary (on a standby), or the standby or the
    /// witness (on a primary, renewing its lease).
    pub fn heard(&self) {
        *self.inner.heard.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// A sign of life that answered something sent at `sent`: the lease runs from then, not
    /// from the answer's arrival, so a late answer cannot stretch it.
    pub fn heard_at(&self, sent: Instant) {
        let mut heard = self.inner.heard.lock().unwrap_or_else(PoisonError::into_inner);
        if heard.is_none_or(|at| at < sent) {
            *heard = Some(sent);
        }
    }

    /// Time since [`Self::heard`] (`Duration::MAX` when nothing was heard since this start).
    pub fn silence(&self) -> Duration {
        self.inner
            .heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    /// Becomes primary in `epoch` (granted by the witness, or taken on an operator's order):
    /// the epoch is committed to the log and the role persisted before the node serves.
    pub async fn promote(&self, epoch: u64, reason: &str) -> Result<(), String> {
        let _one = self.inner.transition.lock().await;
        let current = self.status();
        if current.role == Role::Primary && current.epoch >= epoch {
            return Ok(());
        }
        let spool = &self.inner.spool;
        if spool.snapshot_incomplete().map_err(|e| e.to_string())? {
            return Err("this node holds a partial snapshot: it cannot take over".into());
        }
        spool.begin_epoch(epoch).await.map_err(|e| format!("cannot start epoch {epoch}: {e}"))?;
        spool.set_writable(true);
        spool
            .persist_role(Role::Primary)
            .await
            .map_err(|e| format!("cannot persist the role: {e}"))?;
        self.heard();
        self.inner.status.send_replace(NodeStatus { role: Role::Primary, epoch, fenced: false });
        Metrics::count(&self.inner.metrics.failovers);
        tracing::warn!(epoch, reason, "promoted");
        self.run_hook(|c| c.on_promote.clone(), "on_promote", epoch);
        Ok(())
    }

    /// Stops being primary: persisted first, then no more serving. `epoch` is the newer epoch
    /// that was seen (or ours, for a planned switchover).
    pub async fn step_down(&self, epoch: u64, reason: &str) {
        let _one = self.inner.transition.lock().await;
        let current = self.status();
        if current.role != Role::Primary {
            return;
        }
        self.inner.spool.set_writable(false);
        if let Err(e) = self.inner.spool.persist_role(Role::Standby).await {
            // Not persisted: stop serving all the same; at the next start the node finds the
            // newer epoch again before it may serve (it starts fenced).
            tracing::error!(error = %e, "cannot persist the standby role");
        }
        self.heard();
        self.inner.status.send_replace(NodeStatus {
            role: Role::Standby,
            epoch: current.epoch,
            fenced: false,
        });
        tracing::warn!(epoch, reason, "demoted");
        self.run_hook(|c| c.on_demote.clone(), "on_demote", epoch);
    }

    /// A standby applied the primary's epoch history up to `epoch`: its own epoch follows.
    pub fn follow_epoch(&self, epoch: u64) {
        self.inner.status.send_if_modified(|status| {
            let newer = status.role == Role::Standby && epoch > status.epoch;
            if newer {
                status.epoch = epoch;
            }
            newer
        });
    }

    /// A primary without its majority stops serving.
    pub fn fence(&self, reason: &str) {
        let changed = self.inner.status.send_if_modified(|status| {
            let fence = status.role == Role::Primary && !status.fenced;
            status.fenced |= fence;
            fence
        });
        if changed {
            tracing::warn!(reason, "fenced");
        }
    }

    /// The lease is back: serve again.
    pub fn unfence(&self, reason: &str) {
        let changed = self.inner.status.send_if_modified(|status| {
            let unfence = status.role == Role::Primary && status.fenced;
            status.fenced &= !unfence;
            unfence
        });
        if changed {
            tracing::info!(reason, "serving");
        }
    }

    /// Runs a promotion or demotion hook in the background, logging how it ended.
    fn run_hook(
        &self,
        path: impl Fn(&ClusterConfig) -> Option<std::path::PathBuf>,
        name: &'static str,
        epoch: u64,
    ) {
        let Some(program) = self.inner.cluster.as_ref().and_then(path) else { return };
        let node = self.inner.node.clone();
        tokio::spawn(async move {
            let status = tokio::process::Command::new(&program)
                .env("RELAYD_NODE", &node)
                .env("RELAYD_EPOCH", epoch.to_string())
                .status()
                .await;
            match status {
                Ok(status) if status.success() => {
                    tracing::info!(hook = name, program = %program.display(), "hook done")
                }
                Ok(status) => {
                    tracing::error!(hook = name, program = %program.display(), %status, "hook failed")
                }
                Err(e) => {
                    tracing::error!(hook = name, program = %program.display(), error = %e, "hook could not run")
                }
            }
        });
    }
}

/// Two primaries met (on the link, or in the witness's answer): does the other one win? The
/// newer epoch does; a witness never grants an epoch twice, and without one the lower node name
/// wins, so that both sides reach the same verdict.
pub fn other_primary_wins(
    their_epoch: u64,
    their_node: &str,
    our_epoch: u64,
    our_node: &str,
) -> bool {
    their_epoch > our_epoch || (their_epoch == our_epoch && their_node < our_node)
}

fn can_fail_over(cluster: &ClusterConfig) -> bool {
    cluster.auto_failover && (cluster.witness.is_some() || cluster.allow_failover_without_witness)
}

/// `relayd promote [--force]` on a standby: refused while the primary is alive (heard within
/// `failover_timeout`) unless forced; with a witness, the witness must grant the next epoch
/// (forcing also overrides its view of the primary).
pub async fn promote_by_operator(ha: &Ha, force: bool) -> Result<u64, String> {
    let status = ha.status();
    if status.role != Role::Standby {
        return Err(format!("this node is a {}, not a standby", status.role));
    }
    let Some(cluster) = ha.cluster() else { return Err("this node is not in a cluster".into()) };
    if !force && ha.silence() < cluster.failover_timeout {
        return Err(format!(
            "the primary is alive (heard {} ms ago): promoting now would make two primaries; use --force if it is not",
            ha.silence().as_millis()
        ));
    }
    let epoch = status.epoch + 1;
    if let (Some(address), Some(connector)) = (&cluster.witness, ha.connector()) {
        let (granted, why) =
            witness::claim(address, connector, ha.node(), epoch, force, cluster.failover_timeout)
                .await?;
        if !granted {
            return Err(format!("the witness refused epoch {epoch}: {why}"));
        }
    }
    let reason =
        if force { "operator: relayd promote --force" } else { "operator: relayd promote" };
    ha.promote(epoch, reason).await?;
    Ok(epoch)
}

/// Before a handover: the witness hears from us that we stopped serving, so that it grants the
/// standby's claim at once instead of refusing it until our next ping reaches it. Best effort:
/// the standby repeats its claim for a while in any case.
async fn tell_witness_not_serving(ha: &Ha, epoch: u64) {
    let (Some(cluster), Some(connector)) = (ha.cluster(), ha.connector()) else { return };
    let Some(address) = &cluster.witness else { return };
    let ping = Frame::Ping {
        node: ha.node().to_string(),
        role: Role::Primary.as_str().to_string(),
        epoch,
        serving: false,
    };
    if let Err(e) = witness::ask_once(address, connector, &ping).await {
        tracing::info!(error = %e, "could not tell the witness that this node stopped serving");
    }
}

/// `relayd demote` on a primary: a planned switchover with zero loss and zero duplicates. Stop
/// accepting (421) and delivering; let the deliveries in flight finish and the standby catch
/// up; hand over; follow. On failure the node serves again (at the next lease check).
pub async fn switchover(
    ha: &Ha,
    hold: &monitor::Hold,
    replication: &crate::replication::Replication,
    delivery: &crate::delivery::DeliveryHandle,
    spool: &Spool,
) -> Result<u64, String> {
    let status = ha.status();
    if status.role != Role::Primary {
        return Err(format!("this node is a {}, not the primary", status.role));
    }
    if ha.cluster().is_none() {
        return Err("this node is not in a cluster: there is nobody to hand over to".into());
    }
    hold.store(true, std::sync::atomic::Ordering::Relaxed);
    ha.fence("demoting: planned switchover");
    let result = async {
        let deadline = tokio::time::Instant::now() + monitor::SWITCHOVER_STEP;
        while delivery.in_flight() > 0 {
            if tokio::time::Instant::now() > deadline {
                return Err("deliveries in flight did not finish in time".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = spool.last_position().seq;
        if !replication.caught_up(last, monitor::SWITCHOVER_STEP).await {
            return Err(format!("the standby did not catch up to record {last} in time"));
        }
        tell_witness_not_serving(ha, status.epoch).await;
        // The standby's TookOver, or the witness telling us of its new epoch first (which
        // steps us down by itself): either way the standby took over.
        let mut roles = ha.subscribe();
        tokio::select! {
            taken = replication.hand_over(status.epoch, monitor::SWITCHOVER_STEP) => {
                let epoch = taken?;
                ha.step_down(epoch, "planned switchover: the standby took over").await;
                Ok(epoch)
            }
            _ = async { roles.wait_for(|now| now.role != Role::Primary).await.is_ok() } => {
                Ok(status.epoch + 1)
            }
        }
    }
    .await;
    hold.store(false, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = &result {
        tracing::error!(error = %e, "switchover abandoned; serving again");
    }
    result
}
