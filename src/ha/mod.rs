//! High availability: the failover controller.
//!
//! * [`core`]: every decision that changes this node's role or epoch, with no I/O:
//!   `(state, event, now) -> actions`.
//! * [`grants`]: the witness's decisions, with no I/O.
//! * [`Ha`] (here) runs the core: one driver task takes the events in order (the clock, the
//!   witness's answers, the replication link's [`Report`]s, the operator), steps the core,
//!   and carries out its actions: persist the role and the highest epoch seen, commit a new
//!   epoch (and only then serve), claim an epoch from the witness, ping it, publish the role
//!   ([`crate::role`]), log, run the hooks. What an action comes to is fed back as an event.
//! * [`monitor`]: the clock, and the pings to the witness.
//! * [`witness`]: the witness server, and the data nodes' client for it.
//! * [`error`]: the errors of all of these.
//!
//! `ha` sits above `replication`, `delivery` and `smtp`: they read the role from
//! [`crate::role`] and the link reports to `ha`; none of them imports `ha`.

pub mod core;
pub mod error;
pub mod grants;
pub mod monitor;
#[cfg(test)]
mod sim;
pub mod witness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use self::core::{Action, Core, Disk, Event, Ms, Note, Refusal, Serve, Setup, Status, Why};
use self::error::{EpochError, MaintenanceError, OpenError, PromoteError, SwitchoverError};
use crate::config::{ClusterConfig, Config, Role};
use crate::metrics::Metrics;
use crate::replication::frame::Frame;
use crate::replication::last_epoch;
use crate::role::{Report, Reporter, RoleStatus, RoleWatch, ServeUntil};
use crate::spool::{EpochCause, EpochNote, Spool, now_ms};

/// The node's failover controller; cheap to clone.
#[derive(Clone)]
pub struct Ha {
    inner: Arc<Inner>,
}

struct Inner {
    /// Core time is milliseconds since then.
    origin: Instant,
    core: Mutex<Core>,
    status: watch::Sender<RoleStatus>,
    events: mpsc::UnboundedSender<Input>,
    spool: Spool,
    node: String,
    cluster: Option<ClusterConfig>,
    /// The cluster link's client side (for the witness), when in a cluster.
    connector: Option<tokio_rustls::TlsConnector>,
    metrics: Arc<Metrics>,
    /// The operator's promote waiting for its answer.
    operator: Mutex<Option<oneshot::Sender<Result<u64, Refusal>>>>,
    /// Pings for the pinger task (one at a time: a ping that finds it busy is skipped).
    pings: Mutex<Option<mpsc::Sender<(Frame, Instant)>>>,
    /// Core time of the witness's last answer to a ping (0, the start, until it answers).
    witness_answered: AtomicU64,
    /// The witness's grant as its last answer said: (epoch, grantee); None until it answers.
    witness_grant: Mutex<Option<(u64, String)>>,
}

/// The witness as this node's pings know it, for `/status`'s members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessView {
    pub address: String,
    /// Its highest grant and the grantee, as its last answer said; None: it never answered.
    pub grant: Option<(u64, String)>,
    /// Since its last answer (since this node started, when it never answered).
    pub silence: Duration,
}

/// What the driver takes.
enum Input {
    Event(Event),
    Report(Report),
}

/// How long an operator's promote may take (a claim, and the epoch's commit).
const OPERATOR_PATIENCE: Duration = Duration::from_secs(30);

impl Ha {
    /// The controller, opened on what the spool persisted: the role comes from the persisted
    /// one (or `--role`, or the config), except that a node with an empty spool in a cluster
    /// never serves by itself (see [`core`]). What the role needs at once (persisting it; a
    /// single node's first epoch) is done before this returns, so that the listeners open on
    /// the right role; the driver then takes events and the link's reports, through the
    /// returned reporter. The clock and the witness's pings are [`monitor::run`]'s.
    pub async fn open(
        config: &Config,
        spool: &Spool,
        connector: Option<tokio_rustls::TlsConnector>,
        metrics: Arc<Metrics>,
    ) -> Result<(Ha, Reporter), OpenError> {
        let disk = Disk {
            role: spool.persisted_role()?,
            role_override: config.role_override,
            configured: config.node.role,
            epoch: last_epoch(&spool.epoch_history()?),
            highest: spool.highest_epoch()?,
            paused: spool.failover_paused()?,
        };
        let cluster = config.cluster.as_ref();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let setup = Setup {
            node: config.node.name.clone(),
            cluster: cluster.is_some(),
            witness: cluster.is_some_and(|c| c.witness.is_some()),
            auto_failover: cluster.is_some_and(|c| c.auto_failover),
            without_witness: cluster.is_some_and(|c| c.allow_failover_without_witness),
            heartbeat: cluster.map_or(200, |c| ms(c.heartbeat_interval)),
            lease: cluster.map_or(2000, |c| ms(c.lease)),
            failover: cluster.map_or(3000, |c| ms(c.failover_timeout)),
        };
        spool.set_writable(false);
        let origin = Instant::now();
        let (core, actions) = Core::start(setup, disk, 0);
        let status = to_role_status(origin, core.status());
        let (events, inputs) = mpsc::unbounded_channel();
        let ha = Ha {
            inner: Arc::new(Inner {
                origin,
                core: Mutex::new(core),
                status: watch::Sender::new(status),
                events,
                spool: spool.clone(),
                node: config.node.name.clone(),
                cluster: config.cluster.clone(),
                connector,
                metrics,
                operator: Mutex::new(None),
                pings: Mutex::new(None),
                witness_answered: AtomicU64::new(0),
                witness_grant: Mutex::new(None),
            }),
        };
        // The start's own actions, inline: a single node's first epoch is committed here.
        let mut pending = actions;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for action in pending {
                match action {
                    Action::BeginEpoch { epoch, why, reason } => {
                        ha.begin_epoch(epoch, why, reason).await.map_err(OpenError::FirstEpoch)?;
                        next.extend(ha.step(Event::EpochBegun { epoch }));
                    }
                    other => ha.execute(other, None).await,
                }
            }
            pending = next;
        }
        let (reports_tx, reports) = mpsc::unbounded_channel();
        tokio::spawn(drive(ha.clone(), inputs, reports));
        Ok((ha, Reporter::new(reports_tx)))
    }

    pub fn status(&self) -> RoleStatus {
        *self.inner.status.borrow()
    }

    /// The role's watch, for the parts that read it.
    pub fn role(&self) -> RoleWatch {
        self.inner.status.subscribe()
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.inner.cluster.as_ref()
    }

    /// The witness's address and the cluster link's client config to reach it with, when
    /// this node has a witness.
    pub fn witness(&self) -> Option<(&str, &tokio_rustls::TlsConnector)> {
        let address = self.inner.cluster.as_ref()?.witness.as_deref()?;
        Some((address, self.inner.connector.as_ref()?))
    }

    /// How long since the witness last answered a ping (since the controller opened, when it
    /// never has), on a node that has a witness: what `/metrics` shows an alert.
    pub fn witness_silence(&self) -> Option<Duration> {
        self.witness()?;
        let answered = self.inner.witness_answered.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(answered)))
    }

    /// The pinger's note that the witness answered, naming its grant.
    fn witness_answered(&self, granted: u64, granted_to: &str) {
        self.inner.witness_answered.store(self.now_ms(), Ordering::Relaxed);
        *self.inner.witness_grant.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((granted, granted_to.to_string()));
    }

    /// The witness as the pings know it, on a node that has one.
    pub fn witness_view(&self) -> Option<WitnessView> {
        let silence = self.witness_silence()?;
        let (address, _) = self.witness()?;
        let grant = self.inner.witness_grant.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Some(WitnessView { address: address.to_string(), grant, silence })
    }

    /// Standby: how long since the primary showed a sign of life (None on a primary).
    pub fn primary_silence(&self) -> Option<Duration> {
        let core = self.inner.core.lock().unwrap_or_else(PoisonError::into_inner);
        (core.status().role == Role::Standby)
            .then(|| Duration::from_millis(core.silence(self.now_ms())))
    }

    /// Hands an event to the driver.
    pub fn submit(&self, event: Event) {
        let _ = self.inner.events.send(Input::Event(event));
    }

    /// Core time of `at`.
    pub fn ms(&self, at: Instant) -> Ms {
        u64::try_from(at.saturating_duration_since(self.inner.origin).as_millis())
            .unwrap_or(u64::MAX)
    }

    fn now_ms(&self) -> Ms {
        self.ms(Instant::now())
    }

    /// One step of the core (the lock is held for the step only, never across I/O).
    fn step(&self, event: Event) -> Vec<Action> {
        let now = self.now_ms();
        self.inner.core.lock().unwrap_or_else(PoisonError::into_inner).step(event, now)
    }

    /// The pinger task's queue (set by the monitor).
    fn set_pinger(&self, pings: mpsc::Sender<(Frame, Instant)>) {
        *self.inner.pings.lock().unwrap_or_else(PoisonError::into_inner) = Some(pings);
    }

    /// Carries out one action. `verdict`: where a Hello's decision goes.
    async fn execute(
        &self,
        action: Action,
        verdict: Option<&mut Option<oneshot::Sender<crate::role::LinkVerdict>>>,
    ) {
        let inner = &self.inner;
        match action {
            Action::Publish(status) => {
                inner.status.send_replace(to_role_status(inner.origin, status));
            }
            Action::Persist { role, highest } => {
                // A standby appends nothing of its own from here on; a primary's epoch is
                // already committed when it is persisted as primary.
                inner.spool.set_writable(role == Role::Primary);
                if let Err(e) = inner.spool.persist_role(role).await {
                    // Not persisted: act all the same; at the next start the node finds the
                    // newer epoch again before it may serve (a primary starts fenced).
                    tracing::error!(error = %e, %role, "cannot persist the role");
                }
                if let Err(e) = inner.spool.persist_highest_epoch(highest).await {
                    tracing::error!(error = %e, highest, "cannot persist the highest epoch seen");
                }
            }
            Action::BeginEpoch { epoch, why, reason } => {
                let ha = self.clone();
                tokio::spawn(async move {
                    let event = match ha.begin_epoch(epoch, why, reason).await {
                        Ok(()) => Event::EpochBegun { epoch },
                        Err(error) => Event::EpochFailed { epoch, error: error.to_string() },
                    };
                    ha.submit(event);
                });
            }
            Action::Claim { epoch, force } => self.claim(epoch, force),
            Action::Ping { role, epoch, serving } => {
                let ping = self.ping(role, epoch, serving);
                let pings = inner.pings.lock().unwrap_or_else(PoisonError::into_inner).clone();
                if let Some(pings) = pings {
                    // Busy with the previous ping (a slow witness): this one is skipped.
                    let _ = pings.try_send((ping, Instant::now()));
                }
            }
            Action::Link(decided) => {
                if let Some(sender) = verdict.and_then(Option::take) {
                    let _ = sender.send(decided);
                }
            }
            // The follower watches the role for its promotion and says so on the link.
            Action::TookOver { .. } => {}
            Action::Answer(answer) => {
                let waiting = inner.operator.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(waiting) = waiting {
                    let _ = waiting.send(answer);
                }
            }
            Action::Note(note) => self.note(note),
        }
    }

    /// Commits `EpochStarted` for `epoch` with its note (this node, now, why: `relayd
    /// history`), making the spool writable.
    async fn begin_epoch(&self, epoch: u64, why: Why, reason: String) -> Result<(), EpochError> {
        let spool = &self.inner.spool;
        if spool.snapshot_incomplete().map_err(EpochError::Spool)? {
            return Err(EpochError::PartialSnapshot);
        }
        let cause = match why {
            Why::Bootstrap => EpochCause::Bootstrap,
            Why::Failover => EpochCause::Failover,
            Why::Handover => EpochCause::Switchover,
            Why::Operator { force: false } => EpochCause::Promote,
            Why::Operator { force: true } => EpochCause::ForcedPromote,
        };
        let note =
            EpochNote { epoch, node: self.inner.node.clone(), cause, reason, at_ms: now_ms() };
        spool
            .begin_epoch(epoch, Some(note))
            .await
            .map_err(|source| EpochError::Commit { epoch, source })?;
        spool.set_writable(true);
        Ok(())
    }

    /// The ping that tells the witness what this node is.
    fn ping(&self, role: Role, epoch: u64, serving: bool) -> Frame {
        Frame::Ping {
            node: self.inner.node.clone(),
            role: role.as_str().to_string(),
            epoch,
            serving,
        }
    }

    /// Asks the witness for `epoch`, in the background; the verdict comes back as an event.
    fn claim(&self, epoch: u64, force: bool) {
        let (Some(cluster), Some((address, connector))) = (self.cluster(), self.witness()) else {
            return self.submit(Event::ClaimFailed { epoch, error: "no witness".into() });
        };
        let (address, connector) = (address.to_string(), connector.clone());
        let (ha, window) = (self.clone(), cluster.failover_timeout);
        tokio::spawn(async move {
            let node = ha.node().to_string();
            let event =
                match witness::claim(&address, &connector, &node, epoch, force, window).await {
                    Ok(verdict) => Event::Verdict {
                        epoch,
                        granted: verdict.granted,
                        highest: verdict.highest,
                        reason: verdict.reason,
                    },
                    Err(error) => {
                        tracing::debug!(%error, "cannot ask the witness");
                        Event::ClaimFailed { epoch, error: error.to_string() }
                    }
                };
            ha.submit(event);
        });
    }

    fn note(&self, note: Note) {
        match note {
            Note::Promoted { epoch, reason, first } => {
                tracing::warn!(epoch, reason, "promoted");
                if !first {
                    Metrics::count(&self.inner.metrics.failovers);
                    self.run_hook(|c| c.on_promote.clone(), "on_promote", epoch);
                }
            }
            Note::Demoted { epoch, reason } => {
                tracing::warn!(epoch, reason, "demoted");
                self.run_hook(|c| c.on_demote.clone(), "on_demote", epoch);
            }
            Note::Fenced { reason } => tracing::warn!(reason, "fenced"),
            Note::Serving { reason } => tracing::info!(reason, "serving"),
            Note::Refused { epoch, reason } => {
                tracing::info!(epoch, reason, "the witness refused to grant an epoch")
            }
            Note::Info(what) => tracing::info!("{what}"),
            Note::Error(what) => tracing::error!("{what}"),
        }
    }

    /// `relayd promote [--force]`: the core decides (refused while the primary is alive,
    /// unless forced; an empty spool only when forced); with a witness, the witness must
    /// grant the epoch, which is above every epoch seen.
    pub async fn promote(&self, force: bool) -> Result<u64, PromoteError> {
        let (answer, answered) = oneshot::channel();
        {
            let mut waiting = self.inner.operator.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.as_ref().is_some_and(|w| !w.is_closed()) {
                return Err(PromoteError::AlreadyUnderWay);
            }
            *waiting = Some(answer);
        }
        self.submit(Event::Promote { force });
        match tokio::time::timeout(OPERATOR_PATIENCE, answered).await {
            Ok(Ok(answer)) => answer.map_err(PromoteError::Refused),
            Ok(Err(_)) => Err(PromoteError::Stopped),
            Err(_) => Err(PromoteError::TimedOut),
        }
    }

    /// Whether an operator paused automatic failover on this node.
    pub fn failover_paused(&self) -> bool {
        self.inner.core.lock().unwrap_or_else(PoisonError::into_inner).paused()
    }

    /// `relayd failover pause|resume`. On the primary it is a log record
    /// ([`crate::spool::Change::FailoverPaused`]), which the standby applies and persists too,
    /// and which a node promoted later holds; on a standby it is persisted on this node alone
    /// (its log takes only the primary's records). The core decides from it: a paused standby
    /// never promotes itself (`relayd promote` still does). Returns whether it was replicated.
    pub async fn pause_failover(&self, paused: bool) -> Result<bool, MaintenanceError> {
        if self.inner.cluster.is_none() {
            return Err(MaintenanceError::NotClustered);
        }
        let spool = &self.inner.spool;
        // A primary with an epoch writes it to its log; a configured primary still waiting to
        // bootstrap has no log to write to, and keeps it as a standby does.
        let status = self.status();
        let replicated = status.role == Role::Primary && status.epoch > 0;
        if replicated {
            spool.commit(vec![crate::spool::Change::FailoverPaused { paused }], Vec::new()).await?;
        } else {
            spool.persist_failover_paused(paused).await?;
        }
        self.submit(Event::Pause(paused));
        let scope = if replicated { "this node and its standby" } else { "this node" };
        tracing::warn!(paused, scope, "automatic failover {} by the operator", pause_word(paused));
        Ok(replicated)
    }

    /// `relayd rebuild` on a standby: its spool is emptied (durably: a partial snapshot, so
    /// that a crash before the primary's snapshot is installed resumes the rebuild at the next
    /// start), the core told that it holds nothing (it is not promotable until it has
    /// followed again), and the link to the primary restarted, whose next Hello shows an empty
    /// spool: the primary sends a full snapshot.
    pub async fn rebuild(
        &self,
        replication: &crate::replication::Replicator,
    ) -> Result<(), MaintenanceError> {
        if self.inner.cluster.is_none() {
            return Err(MaintenanceError::NotClustered);
        }
        let status = self.status();
        if status.role != Role::Standby {
            return Err(MaintenanceError::NotStandby(status.role));
        }
        if status.claiming {
            return Err(MaintenanceError::Promoting);
        }
        self.inner.spool.wipe().await?;
        self.submit(Event::Emptied);
        replication.restart_following();
        tracing::warn!(
            epoch = status.epoch,
            "rebuild requested by the operator: spool emptied, waiting for the primary's snapshot"
        );
        Ok(())
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

/// What a log line calls a pause or a resume.
fn pause_word(paused: bool) -> &'static str {
    if paused { "paused" } else { "resumed" }
}

/// The core's status as the rest of the node reads it.
fn to_role_status(origin: Instant, status: Status) -> RoleStatus {
    let serve = match status.serve {
        Serve::Never => ServeUntil::Never,
        Serve::Always => ServeUntil::Always,
        Serve::Until(ms) => ServeUntil::Until(origin + Duration::from_millis(ms)),
    };
    RoleStatus { role: status.role, epoch: status.epoch, serve, claiming: status.claiming }
}

/// The driver: events and reports, one at a time, each stepped and carried out in order (a
/// role is persisted before it is published).
async fn drive(
    ha: Ha,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    mut reports: mpsc::UnboundedReceiver<Report>,
) {
    loop {
        let input = tokio::select! {
            Some(input) = inputs.recv() => input,
            Some(report) = reports.recv() => Input::Report(report),
            else => return,
        };
        let (event, mut verdict) = match input {
            Input::Event(event) => (event, None),
            Input::Report(report) => match report {
                Report::Hello { side, ours, theirs, verdict } => {
                    (Event::Hello { side, ours, theirs }, Some(verdict))
                }
                Report::PrimaryFrame => (Event::PrimaryFrame, None),
                Report::StandbyAck { sent } => (Event::StandbyAck { sent: ha.ms(sent) }, None),
                Report::Followed { epoch } => (Event::Followed { epoch }, None),
                Report::HandoverAsked { epoch } => (Event::HandoverAsked { epoch }, None),
                Report::TookOver { epoch } => (Event::TookOver { epoch }, None),
                Report::FailoverPaused(paused) => {
                    // Said when it changes (every snapshot repeats it).
                    if ha.failover_paused() != paused {
                        let word = pause_word(paused);
                        tracing::warn!(paused, "automatic failover {word}, as the primary says");
                    }
                    (Event::Pause(paused), None)
                }
            },
        };
        for action in ha.step(event) {
            ha.execute(action, Some(&mut verdict)).await;
        }
    }
}

/// Before a handover: the witness hears from us that we stopped serving, so that it grants the
/// standby's claim at once instead of refusing it until our next ping reaches it. Best effort:
/// the standby repeats its claim for a while in any case.
async fn tell_witness_not_serving(ha: &Ha, epoch: u64) {
    let Some((address, connector)) = ha.witness() else { return };
    let ping = ha.ping(Role::Primary, epoch, false);
    if let Err(e) = witness::ask_once(address, connector, &ping).await {
        tracing::info!(error = %e, "could not tell the witness that this node stopped serving");
    }
}

/// `relayd demote` on a primary: a planned switchover with zero loss and zero duplicates. Stop
/// accepting (421) and delivering; let the deliveries in flight finish and the standby catch
/// up; hand over; follow. On failure the node serves again (at the next lease renewal).
pub async fn switchover(
    ha: &Ha,
    replication: &crate::replication::Replicator,
    delivery: &crate::delivery::DeliveryHandle,
    spool: &Spool,
) -> Result<u64, SwitchoverError> {
    let status = ha.status();
    if status.role != Role::Primary {
        return Err(SwitchoverError::NotPrimary(status.role));
    }
    if ha.cluster().is_none() {
        return Err(SwitchoverError::NotClustered);
    }
    ha.submit(Event::Hold(true));
    let result = async {
        let deadline = tokio::time::Instant::now() + monitor::SWITCHOVER_STEP;
        while delivery.in_flight() > 0 {
            if tokio::time::Instant::now() > deadline {
                return Err(SwitchoverError::DeliveriesInFlight);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = spool.last_position().seq;
        if !replication.caught_up(last, monitor::SWITCHOVER_STEP).await {
            return Err(SwitchoverError::StandbyBehind { last });
        }
        tell_witness_not_serving(ha, status.epoch).await;
        // The standby's TookOver (reported by the link, which steps us down), or the witness
        // telling us of its new epoch first: either way the standby took over.
        let mut roles = ha.role();
        tokio::select! {
            taken = replication.hand_over(status.epoch, monitor::SWITCHOVER_STEP) => {
                let epoch = taken.map_err(SwitchoverError::Handover)?;
                let stepped = tokio::time::timeout(
                    monitor::SWITCHOVER_STEP,
                    roles.wait_for(|now| now.role != Role::Primary),
                );
                let _ = stepped.await;
                Ok(epoch)
            }
            _ = async { roles.wait_for(|now| now.role != Role::Primary).await.is_ok() } => {
                Ok(status.epoch + 1)
            }
        }
    }
    .await;
    ha.submit(Event::Hold(false));
    if let Err(e) = &result {
        tracing::error!(error = %e, "switchover abandoned; serving again");
    }
    result
}
