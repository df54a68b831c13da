//! The queue runner: decides what to try when, hands the work to per-destination workers,
//! and records every result in the spool's change log.
//!
//! One task owns the schedule (due time → message). A due message's pending recipients are
//! grouped by destination; each group is one job. A destination runs at most
//! `concurrency_per_host` workers; a worker keeps its connection open for the next job of the
//! same destination (RSET between messages) and closes it when the destination has no more
//! work. A message is not dispatched again while a job of it is in flight: when its last job
//! is done, it is rescheduled from what the spool then says.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

use super::client::{self, Connection};
use super::dsn::{self, Kind, Notice, Returned};
use super::outcome::{EnhancedStatus, Outcome, Reply};
use super::route::{self, Destination, Resolver};
use super::{Batch, Requeue, RunnerRequest};
use crate::config::{Config, LiveConfig};
use crate::metrics::Metrics;
use crate::proto::dsn::{Orcpt, Ret};
use crate::role::RoleWatch;
use crate::spool::{
    BodyWriter, Change, Dsn, Envelope, MessageRecord, QueueId, RecipientState, Spool, SpoolError,
    now_ms,
};

/// Everything the runner and its workers share.
pub(super) struct Shared {
    pub config: LiveConfig,
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    pub resolver: Resolver,
    pub tls: TlsConnector,
    /// Back to the runner: jobs done, DSNs queued.
    pub requests: mpsc::UnboundedSender<RunnerRequest>,
    pub done: mpsc::UnboundedSender<JobDone>,
    pub activity: Arc<Activity>,
    /// Only a serving primary delivers.
    pub role: RoleWatch,
}

/// What a draining node waits for.
#[derive(Default)]
pub(super) struct Activity {
    /// Set on SIGTERM: no new job starts.
    pub draining: AtomicBool,
    /// Jobs being attempted now.
    pub busy: AtomicUsize,
}

/// One transaction's worth of work: some recipients of one message, all to one destination.
struct Job {
    id: QueueId,
    rcpts: Vec<u32>,
}

/// A job's end, reported to the runner.
pub(super) struct JobDone {
    id: QueueId,
    /// The recorded results left no recipient pending: the message has left the queue.
    finished: bool,
}

/// A destination's jobs and how many workers serve it.
#[derive(Default)]
struct Lane {
    jobs: VecDeque<Job>,
    workers: usize,
}

pub(super) struct Runner {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<RunnerRequest>,
    done: mpsc::UnboundedReceiver<JobDone>,
    /// (due in Unix ms, id), and each scheduled id's due time.
    schedule: BTreeSet<(u64, QueueId)>,
    due: HashMap<QueueId, u64>,
    /// Jobs in flight per message.
    in_flight: HashMap<QueueId, usize>,
    /// Messages flushed by an operator: their next dispatch tries every pending recipient,
    /// whatever its retry time says.
    flushed: HashSet<QueueId>,
    /// Messages an operator's bounce is changing: not dispatched until resumed.
    paused: HashSet<QueueId>,
    /// Pauses waiting for deliveries: the messages still in flight, and whom to tell.
    pauses: Vec<(HashSet<QueueId>, oneshot::Sender<()>)>,
    lanes: Arc<Mutex<HashMap<Destination, Lane>>>,
}

impl Runner {
    pub(super) fn new(
        shared: Arc<Shared>,
        requests: mpsc::UnboundedReceiver<RunnerRequest>,
        done: mpsc::UnboundedReceiver<JobDone>,
    ) -> Runner {
        Runner {
            shared,
            requests,
            done,
            schedule: BTreeSet::new(),
            due: HashMap::new(),
            in_flight: HashMap::new(),
            flushed: HashSet::new(),
            paused: HashSet::new(),
            pauses: Vec::new(),
            lanes: Arc::default(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut roles = self.shared.role.clone();
        let mut serving = roles.borrow_and_update().serving_now();
        let mut reopens = self.shared.spool.watch_reopens();
        if serving {
            self.load();
        }
        loop {
            self.dispatch_due();
            let sleep = match self.schedule.first() {
                Some(&(due, _)) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                request = self.requests.recv() => match request {
                    Some(RunnerRequest::Queued(id)) => self.schedule_at(id, 0),
                    Some(RunnerRequest::Requeue(which)) => self.requeue(which),
                    Some(RunnerRequest::Forget(id)) => {
                        self.flushed.remove(&id);
                        self.unschedule(id);
                    }
                    Some(RunnerRequest::Pause(ids, done)) => self.pause(ids, done),
                    Some(RunnerRequest::Resume(ids)) => {
                        for id in ids {
                            if self.paused.remove(&id) && !self.in_flight.contains_key(&id) {
                                self.reschedule(id);
                            }
                        }
                    }
                    None => return,
                },
                Some(JobDone { id, finished }) = self.done.recv() => {
                    let left = self.in_flight.get_mut(&id).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if finished {
                        // Nothing left to schedule: no need to read the spool again.
                        self.in_flight.remove(&id);
                        self.unschedule(id);
                        self.landed(id);
                    } else if left == Some(0) {
                        self.in_flight.remove(&id);
                        self.reschedule(id);
                        self.landed(id);
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                Ok(()) = reopens.changed() => {
                    // The spool was reopened after a failed write. Results that could not be
                    // recorded meanwhile left their messages unscheduled (their reschedule found
                    // no spool), and a message whose commit failed may be on disk after all:
                    // the queue is what the disk holds now.
                    if serving {
                        self.load();
                    }
                }
                Ok(()) = roles.changed() => {
                    // A standby promoted (or a primary unfenced) takes over the queue it holds.
                    let now = roles.borrow_and_update().serving_now();
                    if now && !serving {
                        self.load();
                    }
                    serving = now;
                }
            }
        }
    }

    /// An operator's bounce is about to change `ids`: none of them is dispatched until they are
    /// resumed, and `done` is answered once no delivery of theirs is in flight (at once when
    /// none is), so that the bounce never reports a recipient a delivery is sending.
    fn pause(&mut self, ids: Vec<QueueId>, done: oneshot::Sender<()>) {
        let mut busy = HashSet::new();
        for id in ids {
            self.unschedule(id);
            self.flushed.remove(&id);
            if self.in_flight.contains_key(&id) {
                busy.insert(id);
            }
            self.paused.insert(id);
        }
        if busy.is_empty() {
            let _ = done.send(());
        } else {
            tracing::info!(messages = busy.len(), "bounce waits for the deliveries in flight");
            self.pauses.push((busy, done));
        }
    }

    /// Message `id` has no delivery in flight any more: a pause waiting for it may be over.
    fn landed(&mut self, id: QueueId) {
        for (busy, _) in &mut self.pauses {
            busy.remove(&id);
        }
        for (_, done) in self.pauses.extract_if(.., |(busy, _)| busy.is_empty()) {
            let _ = done.send(());
        }
    }

    /// Schedules every queued message at its recipients' next attempt: at start, and when the
    /// node begins to serve (the spool was filled by replication meanwhile).
    fn load(&mut self) {
        let ids: Vec<QueueId> =
            self.shared.spool.messages().filter_map(|m| m.ok()).map(|m| m.envelope.id).collect();
        for id in ids {
            if !self.in_flight.contains_key(&id) {
                self.reschedule(id);
            }
        }
    }

    /// `relayd queue requeue` (and `flush`, its every-message case): the messages are tried
    /// now with the current routes, without waiting for their retry time. A message whose
    /// delivery is in flight is left to it.
    fn requeue(&mut self, which: Requeue) {
        let ids: Vec<QueueId> = match which {
            Requeue::All => {
                let due: Vec<QueueId> = self.due.keys().copied().collect();
                for id in due {
                    self.schedule_at(id, 0);
                }
                self.shared.spool.messages().filter_map(|m| m.ok()).map(|m| m.envelope.id).collect()
            }
            Requeue::Only(ids) => ids,
        };
        for id in ids {
            if self.in_flight.contains_key(&id) {
                continue;
            }
            self.flushed.insert(id);
            self.schedule_at(id, 0);
        }
    }

    fn schedule_at(&mut self, id: QueueId, at: u64) {
        self.unschedule(id);
        self.schedule.insert((at, id));
        self.due.insert(id, at);
    }

    fn unschedule(&mut self, id: QueueId) {
        if let Some(at) = self.due.remove(&id) {
            self.schedule.remove(&(at, id));
        }
    }

    /// Schedules `id` at its earliest pending recipient's next attempt, or forgets it.
    fn reschedule(&mut self, id: QueueId) {
        self.unschedule(id);
        let Ok(Some(message)) = self.shared.spool.get(id) else { return };
        let next = message
            .recipients
            .iter()
            .filter_map(|state| match state {
                RecipientState::Pending { next_attempt_ms, .. } => Some(*next_attempt_ms),
                _ => None,
            })
            .min();
        if let Some(at) = next {
            self.schedule_at(id, at);
        }
    }

    fn dispatch_due(&mut self) {
        if self.shared.activity.draining.load(Ordering::Relaxed)
            || !crate::role::current(&self.shared.role).serving_now()
        {
            return;
        }
        let config = self.shared.config.load();
        let now = now_ms();
        while let Some(&(at, id)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.unschedule(id);
            if self.in_flight.contains_key(&id) || self.paused.contains(&id) {
                continue;
            }
            // Held by an operator: not dispatched, and so never expired, until released (the
            // release requeues it). Whatever scheduled it (a reload, a requeue, the end of a
            // job that was in flight at the hold) stops here, so the spool's `held` table is
            // the one word on it, on every node.
            let spool = &self.shared.spool;
            let message = match spool.held_since(id).and_then(|held| match held {
                Some(_) => Ok(None),
                None => spool.get(id),
            }) {
                Ok(Some(message)) => message,
                Ok(None) => {
                    self.flushed.remove(&id);
                    continue;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "cannot read a queued message; retrying in a minute");
                    self.schedule_at(id, now + 60_000);
                    continue;
                }
            };
            // Without this, a flush would schedule the message now and then find none of its
            // recipients due before their retry time: nothing would be tried.
            let flushed = self.flushed.remove(&id);
            let mut groups: HashMap<Destination, Vec<u32>> = HashMap::new();
            for (index, (address, state)) in
                message.envelope.recipients.iter().zip(&message.recipients).enumerate()
            {
                if matches!(state, RecipientState::Pending { next_attempt_ms, .. } if flushed || *next_attempt_ms <= now)
                {
                    let destination = route::destination(&config, address);
                    groups.entry(destination).or_default().push(index as u32);
                }
            }
            if groups.is_empty() {
                self.reschedule(id);
                continue;
            }
            self.in_flight.insert(id, groups.len());
            for (destination, rcpts) in groups {
                self.submit(&config, destination, Job { id, rcpts });
            }
        }
    }

    fn submit(&self, config: &Config, destination: Destination, job: Job) {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let lane = lanes.entry(destination.clone()).or_default();
        lane.jobs.push_back(job);
        if lane.workers < config.delivery.concurrency_per_host {
            lane.workers += 1;
            tokio::spawn(work(self.shared.clone(), self.lanes.clone(), destination));
        }
    }
}

/// A worker: takes its destination's jobs one by one over one connection, until none is left.
async fn work(
    shared: Arc<Shared>,
    lanes: Arc<Mutex<HashMap<Destination, Lane>>>,
    destination: Destination,
) {
    let mut connection: Option<Connection> = None;
    loop {
        let job = {
            let mut lanes = lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(lane) = lanes.get_mut(&destination) else { break };
            // Draining, or no longer serving (fenced, demoted): the jobs not started are handed
            // back to the runner (they stay queued in the spool) and the worker stops.
            if shared.activity.draining.load(Ordering::Relaxed)
                || !crate::role::current(&shared.role).serving_now()
            {
                for job in lane.jobs.drain(..) {
                    let _ = shared.done.send(JobDone { id: job.id, finished: false });
                }
            }
            match lane.jobs.pop_front() {
                Some(job) => {
                    shared.activity.busy.fetch_add(1, Ordering::Relaxed);
                    job
                }
                None => {
                    lane.workers -= 1;
                    if lane.workers == 0 {
                        lanes.remove(&destination);
                    }
                    break;
                }
            }
        };
        let finished = attempt(&shared, &destination, &mut connection, &job).await;
        shared.activity.busy.fetch_sub(1, Ordering::Relaxed);
        let _ = shared.done.send(JobDone { id: job.id, finished });
    }
    if let Some(connection) = connection {
        connection.quit().await;
    }
}

/// One job: deliver, then record what happened. True when the message is finished.
async fn attempt(
    shared: &Shared,
    destination: &Destination,
    connection: &mut Option<Connection>,
    job: &Job,
) -> bool {
    let message = match shared.spool.get(job.id) {
        Ok(Some(message)) => message,
        // Deleted by an operator meanwhile: finished.
        Ok(None) => return true,
        // Unreadable: the runner rereads it when it reschedules, and logs the error.
        Err(_) => return false,
    };
    let rcpts: Vec<u32> = job
        .rcpts
        .iter()
        .copied()
        .filter(|&i| message.recipients.get(i as usize).is_some_and(RecipientState::is_pending))
        .collect();
    if rcpts.is_empty() {
        return false;
    }
    // Only a message accepted with DSN parameters has a request (the lookup of one without
    // finds nothing); unreadable, the message is delivered as one without.
    let dsn = shared.spool.dsn(job.id).ok().flatten();
    let started = Instant::now();
    let (results, passed_on) =
        deliver(shared, destination, connection, &message, dsn.as_ref(), &rcpts).await;
    let finished = record(shared, &message, dsn.as_ref(), passed_on, results).await;
    shared.metrics.delivery_attempt.observe(started.elapsed());
    finished
}

/// Sends over the open connection if there is one (reconnecting once if it turned out dead),
/// else over a new one. Also says whether the DSN request went with the message (the next hop
/// offers DSN): then reporting success is that hop's job.
async fn deliver(
    shared: &Shared,
    destination: &Destination,
    connection: &mut Option<Connection>,
    message: &MessageRecord,
    dsn: Option<&Dsn>,
    rcpts: &[u32],
) -> (Vec<(u32, Outcome)>, bool) {
    let all = |outcome: Outcome| (rcpts.iter().map(|&i| (i, outcome.clone())).collect(), false);
    if let Some(open) = connection.as_mut() {
        match open.send(message, dsn, rcpts, &shared.spool).await {
            Ok(results) => return (results, open.offers_dsn()),
            // A cached connection may have been closed by the other side: try a fresh one.
            Err(_) => *connection = None,
        }
    }
    let config = shared.config.load_full();
    let hops = match shared.resolver.hops(&destination.target).await {
        Ok(hops) => route::without_self(&destination.target, hops, &config.smtp.listen),
        Err(outcome) => Err(outcome),
    };
    let hops = match hops {
        Ok(hops) => hops,
        Err(outcome) => return all(outcome),
    };
    let helo = &config.smtp.hostname;
    let mut open = match client::connect(&hops, destination.tls, helo, &shared.tls).await {
        Ok(open) => open,
        Err(outcome) => return all(outcome),
    };
    match open.send(message, dsn, rcpts, &shared.spool).await {
        Ok(results) => {
            let passed_on = open.offers_dsn();
            *connection = Some(open);
            (results, passed_on)
        }
        Err(outcome) => all(outcome),
    }
}

/// Turns outcomes into recipient states, logs and counts them, and commits them with the
/// reports they call for, in one batch: a failure report (a bounce) for the recipients given
/// up on, and, where the sender asked with DSN parameters (`dsn`), a delay report for those
/// deferred past `delay_warning_time` (once) and a "relayed" report for those delivered to a
/// next hop the request was not `passed_on` to. True when, as far as `message` (read before the
/// attempt) and these results show, no recipient is left pending. A recipient's state only
/// ever leaves Pending, so a true here is never wrong; a false may be, and costs one reread.
async fn record(
    shared: &Shared,
    message: &MessageRecord,
    dsn: Option<&Dsn>,
    passed_on: bool,
    results: Vec<(u32, Outcome)>,
) -> bool {
    let config = shared.config.load_full();
    let envelope = &message.envelope;
    let now = now_ms();
    let expired = is_expired(envelope.received_at_ms, now, config.delivery.max_queue_lifetime);
    let warn_delay = is_expired(envelope.received_at_ms, now, config.delivery.delay_warning_time);
    let mut states = Vec::with_capacity(results.len());
    let mut reports = Reports::default();
    let mut bounces = Vec::new();
    for (index, outcome) in &results {
        let rcpt = envelope.recipients.get(*index as usize).map_or("", String::as_str);
        let attempts = match message.recipients.get(*index as usize) {
            Some(RecipientState::Pending { attempts, .. }) => attempts + 1,
            _ => 1,
        };
        let retry = &config.delivery.retry;
        let state = state_after(outcome, attempts, expired, now, retry, fastrand::f64());
        // Bounced after a temporary failure: expired, as the DSN reports it.
        let expired_now = matches!(
            (&state, outcome),
            (RecipientState::Bounced { .. }, Outcome::Temporary { .. })
        );
        let status = dsn::status(outcome.reply(), expired_now);
        let delay = Delay { received_at_ms: envelope.received_at_ms, now };
        // What the sender asked for this recipient; without DSN parameters, failure reports.
        let wanted = dsn.and_then(|dsn| dsn.recipient(*index));
        let notify = wanted.and_then(|w| w.request.notify);
        let orcpt = wanted.and_then(|w| w.request.orcpt.as_ref());
        let (reply, relay) = match outcome {
            Outcome::Delivered { reply, relay } => (reply, Some(relay.as_str())),
            Outcome::Permanent { reply, relay } | Outcome::Temporary { reply, relay } => {
                (reply, relay.as_deref())
            }
        };
        let about = dsn::Failed { recipient: rcpt, reply, relay, expired: false };
        match &state {
            RecipientState::Delivered { reply, relay } => {
                tracing::info!(id = %envelope.id, rcpt = %format_args!("<{rcpt}>"), relay = %relay, %delay, dsn = %status, reply = ?reply, "delivered");
                Metrics::count(&shared.metrics.recipients_delivered);
                if notify.is_some_and(|n| n.success) && !passed_on {
                    reports.relayed.push(about, orcpt);
                }
            }
            RecipientState::Pending { next_attempt_ms, last_reply, .. } => {
                let next_text = chrono::DateTime::from_timestamp_millis(*next_attempt_ms as i64)
                    .map_or_else(String::new, |t| {
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    });
                let reply = last_reply.as_deref().unwrap_or_default();
                tracing::info!(id = %envelope.id, rcpt = %format_args!("<{rcpt}>"), %delay, dsn = %status, reply = ?reply, next_attempt = %next_text, "deferred");
                Metrics::count(&shared.metrics.recipients_deferred);
                let reported = wanted.is_some_and(|w| w.delay_reported);
                if notify.is_some_and(|n| n.delay) && !reported && warn_delay {
                    reports.delayed.push(about, orcpt);
                    reports.delayed_indexes.push(*index);
                }
            }
            RecipientState::Bounced { reply: recorded } => {
                // NOTIFY=NEVER, or a list without FAILURE: no failure report.
                if notify.is_none_or(|n| n.failure) {
                    let expired = matches!(outcome, Outcome::Temporary { .. });
                    reports.failed.push(dsn::Failed { expired, ..about }, orcpt);
                }
                bounces.push((rcpt, recorded.clone(), delay, status));
            }
        }
        states.push((*index, state));
    }
    for (rcpt, reply, delay, status) in &bounces {
        bounced(shared, envelope.id, rcpt, reply, *delay, *status);
    }
    let mut after = message.recipients.clone();
    for (index, state) in &states {
        if let Some(slot) = after.get_mut(*index as usize) {
            *slot = state.clone();
        }
    }
    let finished = !after.iter().any(RecipientState::is_pending);
    let changes = vec![Change::Attempted { id: envelope.id, results: states }];
    let mut batch = Batch { changes, bodies: Vec::new(), then: Vec::new() };
    let queued = sender_reports(shared, &config, message, dsn, &reports, now, &mut batch);
    match shared.spool.commit(batch.changes, batch.bodies).await {
        Ok(_) => {
            for report in queued {
                report.log(envelope.id);
                let _ = shared.requests.send(RunnerRequest::Queued(report.id));
            }
            finished
        }
        // Not recorded: the recipients stay pending and are tried again (a duplicate at worst).
        Err(e) => {
            tracing::error!(id = %envelope.id, error = %e, "cannot record delivery results");
            false
        }
    }
}

/// The `bounced` log line of one recipient, and its count.
fn bounced(
    shared: &Shared,
    id: QueueId,
    rcpt: &str,
    reply: &str,
    delay: Delay,
    status: EnhancedStatus,
) {
    tracing::info!(id = %id, rcpt = %format_args!("<{rcpt}>"), %delay, dsn = %status, reply = ?reply, "bounced");
    Metrics::count(&shared.metrics.recipients_bounced);
}

/// A report queued with the results it is about (the `accepted DSN` line).
struct Queued {
    id: QueueId,
    kind: Kind,
    size: usize,
}

impl Queued {
    fn log(&self, original: QueueId) {
        let (id, size, report) = (self.id, self.size, self.kind.name());
        tracing::info!(id = %id, from = "<>", rcpts = 1, size, orig_id = %original, report, "accepted DSN");
    }
}

/// The reports `reports` calls for to `message`'s sender, as its DSN request (`dsn`; none:
/// failure reports as relayd has always written them) asks, added to `batch`, which commits
/// them with the results they report: so a report is never lost nor made twice. None of any
/// kind for the null sender (a bounce is never bounced). The reports queued.
fn sender_reports(
    shared: &Shared,
    config: &Config,
    message: &MessageRecord,
    dsn: Option<&Dsn>,
    reports: &Reports<'_>,
    now: u64,
    batch: &mut Batch,
) -> Vec<Queued> {
    let envelope = &message.envelope;
    let mut queued = Vec::new();
    if envelope.sender.is_empty() {
        return queued;
    }
    let ret = dsn.and_then(|dsn| dsn.ret);
    let envid = dsn.and_then(|dsn| dsn.envid.as_deref());
    for (kind, about) in [
        (Kind::Failure, &reports.failed),
        (Kind::Delay, &reports.delayed),
        (Kind::Relayed, &reports.relayed),
    ] {
        if about.recipients.is_empty() {
            continue;
        }
        let hostname = &config.smtp.hostname;
        let headers = dsn::original_headers(message, &shared.spool);
        let content = if dsn.is_none() {
            // No DSN parameters: a failure report, as relayd has always written it.
            dsn::build(hostname, message, &about.recipients, &headers, now)
        } else {
            let whole = (kind == Kind::Failure && ret == Some(Ret::Full))
                .then(|| dsn::original_message(message, &shared.spool))
                .flatten();
            let returned = match &whole {
                Some(whole) => Returned::Message(whole),
                None => Returned::Headers(&headers),
            };
            let notice = Notice { kind, envid, orcpts: about.orcpts.clone(), returned };
            dsn::report(hostname, message, &notice, &about.recipients, now)
        };
        let Some((change, body)) = report_message(shared, config, envelope, &content) else {
            continue;
        };
        if kind == Kind::Delay {
            let recipients = reports.delayed_indexes.clone();
            batch.changes.push(Change::DelayReported { id: envelope.id, recipients });
        }
        queued.push(Queued { id: body.id(), kind, size: content.len() });
        batch.changes.push(change);
        batch.bodies.push(body);
    }
    queued
}

/// The recipients one report is about, with their ORCPTs in the same order.
#[derive(Default)]
struct Reported<'a> {
    recipients: Vec<dsn::Failed<'a>>,
    orcpts: Vec<Option<&'a Orcpt>>,
}

impl<'a> Reported<'a> {
    fn push(&mut self, about: dsn::Failed<'a>, orcpt: Option<&'a Orcpt>) {
        self.recipients.push(about);
        self.orcpts.push(orcpt);
    }
}

/// The reports one attempt's results call for.
#[derive(Default)]
struct Reports<'a> {
    failed: Reported<'a>,
    delayed: Reported<'a>,
    /// The indexes of the delayed recipients: marked reported with the report.
    delayed_indexes: Vec<u32>,
    relayed: Reported<'a>,
}

/// A report about `envelope`'s message, `content`, as a message of its own from the null
/// sender to the original sender: the change that accepts it and its body; None (logged) when
/// its body cannot be written, and the results are recorded without it.
fn report_message(
    shared: &Shared,
    config: &Config,
    envelope: &Envelope,
    content: &[u8],
) -> Option<(Change, BodyWriter)> {
    let id = QueueId::new();
    let mut body = shared.spool.body_writer(id);
    if let Err(e) = body.write(content) {
        tracing::error!(id = %envelope.id, error = %e, "cannot write the DSN; the results are recorded without it");
        return None;
    }
    let accepted = Change::Accepted(Envelope {
        id,
        sender: String::new(),
        recipients: vec![envelope.sender.clone()],
        received_at_ms: now_ms(),
        client: "127.0.0.1".into(),
        helo: config.smtp.hostname.clone(),
        size: content.len() as u64,
        eight_bit: true,
        // The DSN needs SMTPUTF8 only to reach a sender whose address needs it (RFC 6533): a
        // UTF-8 recipient inside the report is fine in 8-bit text.
        smtputf8: !envelope.sender.is_ascii(),
    });
    Some((accepted, body))
}

/// What an operator's bounce records for each pending recipient, and its DSN reports.
fn operator_bounce() -> Reply {
    Reply::ours([5, 0, 0], "message bounced by the mail system's operator")
}

/// `relayd queue bounce`'s commit for `ids` at `now`: each queued message's pending recipients
/// bounced ([`operator_bounce`]), with the failure report to its sender that its DSN request
/// allows (none for a recipient with NOTIFY=NEVER, or without FAILURE), in one batch; the
/// runner forgets the messages (gone with the commit) and delivers the reports.
pub(super) fn bounce_now(shared: &Shared, ids: &[QueueId], now: u64) -> Result<Batch, SpoolError> {
    let config = shared.config.load_full();
    let reply = operator_bounce();
    let recorded = reply.to_string();
    let status = dsn::status(&reply, false);
    let mut batch = Batch { changes: Vec::new(), bodies: Vec::new(), then: Vec::new() };
    for &id in ids {
        let Some(message) = shared.spool.get(id)? else { continue };
        let request = shared.spool.dsn(id)?;
        let envelope = &message.envelope;
        let delay = Delay { received_at_ms: envelope.received_at_ms, now };
        let pending: Vec<(u32, &str)> = (0u32..)
            .zip(envelope.recipients.iter().zip(&message.recipients))
            .filter(|(_, (_, state))| state.is_pending())
            .map(|(index, (rcpt, _))| (index, rcpt.as_str()))
            .collect();
        let mut reports = Reports::default();
        for &(index, recipient) in &pending {
            bounced(shared, id, recipient, &recorded, delay, status);
            let wanted = request.as_ref().and_then(|dsn| dsn.recipient(index));
            let notify = wanted.and_then(|w| w.request.notify);
            if notify.is_none_or(|n| n.failure) {
                let about = dsn::Failed { recipient, reply: &reply, relay: None, expired: false };
                reports.failed.push(about, wanted.and_then(|w| w.request.orcpt.as_ref()));
            }
        }
        let results = pending
            .iter()
            .map(|&(index, _)| (index, RecipientState::Bounced { reply: recorded.clone() }))
            .collect();
        batch.changes.push(Change::Attempted { id, results });
        batch.then.push(RunnerRequest::Forget(id));
        let queued =
            sender_reports(shared, &config, &message, request.as_ref(), &reports, now, &mut batch);
        for report in queued {
            // Said before the commit: an operator's bounce is a batch of many messages.
            report.log(id);
            batch.then.push(RunnerRequest::Queued(report.id));
        }
    }
    Ok(batch)
}

/// The `delay=` of a delivery log line: the seconds since the message was accepted, with two
/// decimals (Postfix's `delay=`); zero when the clock is behind the arrival time.
#[derive(Clone, Copy, Debug)]
struct Delay {
    received_at_ms: u64,
    now: u64,
}

impl std::fmt::Display for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.now.saturating_sub(self.received_at_ms);
        write!(f, "{}.{:02}", ms / 1000, ms % 1000 / 10)
    }
}

/// Whether a message received at `received_at_ms` has outlived `lifetime` at `now` (Unix ms):
/// its recipients that fail temporarily now are bounced instead of retried.
fn is_expired(received_at_ms: u64, now: u64, lifetime: Duration) -> bool {
    let lifetime = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
    now.saturating_sub(received_at_ms) >= lifetime
}

/// A recipient's state after attempt number `attempts` ended in `outcome` at `now`: delivered;
/// bounced (refused for good, or failed temporarily once the message `expired`); or pending
/// again, until `retry_delay` (`draw`, in [0, 1), picks the jitter).
fn state_after(
    outcome: &Outcome,
    attempts: u32,
    expired: bool,
    now: u64,
    retry: &[Duration],
    draw: f64,
) -> RecipientState {
    match outcome {
        Outcome::Delivered { reply, relay } => {
            RecipientState::Delivered { reply: reply.to_string(), relay: relay.clone() }
        }
        Outcome::Permanent { reply, .. } => RecipientState::Bounced { reply: reply.to_string() },
        Outcome::Temporary { reply, .. } if expired => {
            RecipientState::Bounced { reply: Reply::expired(reply).to_string() }
        }
        Outcome::Temporary { reply, .. } => RecipientState::Pending {
            attempts,
            next_attempt_ms: now.saturating_add(retry_delay(retry, attempts, draw)),
            last_reply: Some(reply.to_string()),
        },
    }
}

/// The wait before attempt `attempts + 1`: the retry schedule's interval for this attempt (the
/// last one again and again), with ±10% jitter so that a backlog does not retry in lockstep;
/// `draw`, in [0, 1), picks where in that range.
fn retry_delay(schedule: &[Duration], attempts: u32, draw: f64) -> u64 {
    let index = (attempts as usize).saturating_sub(1).min(schedule.len().saturating_sub(1));
    let base =
        schedule.get(index).map_or(60_000, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let jitter = 0.9 + draw * 0.2;
    (base as f64 * jitter) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn schedule() -> Vec<Duration> {
        [1, 5, 15].map(|m| Duration::from_secs(m * 60)).to_vec()
    }

    #[test]
    fn the_delay_is_seconds_since_acceptance_with_two_decimals() {
        let delay = |received_at_ms, now| Delay { received_at_ms, now }.to_string();
        assert_eq!(delay(1_000, 1_000), "0.00");
        assert_eq!(delay(1_000, 1_529), "0.52");
        assert_eq!(delay(0, 3_723_004), "3723.00");
        assert_eq!(delay(5_000, 1_000), "0.00");
    }

    #[test]
    fn retries_follow_the_schedule_then_repeat_its_last_interval() {
        let schedule = schedule();
        // The middle of the jitter range: the interval itself.
        let delays: Vec<u64> = (1..=5).map(|n| retry_delay(&schedule, n, 0.5)).collect();
        assert_eq!(delays, [MINUTE, 5 * MINUTE, 15 * MINUTE, 15 * MINUTE, 15 * MINUTE]);
        // An untried recipient (0 attempts) waits the first interval too.
        assert_eq!(retry_delay(&schedule, 0, 0.5), MINUTE);
    }

    #[test]
    fn retry_jitter_stays_within_ten_percent() {
        let schedule = schedule();
        assert_eq!(retry_delay(&schedule, 2, 0.0), 270_000);
        assert!(retry_delay(&schedule, 2, 0.999_999) <= 330_000);
        assert!(retry_delay(&schedule, 2, 0.999_999) > 329_000);
        // A schedule of absurd length does not overflow.
        assert!(retry_delay(&[Duration::MAX], 1, 0.5) > 0);
    }

    #[test]
    fn a_message_expires_once_its_lifetime_has_passed() {
        let lifetime = Duration::from_secs(5 * 86_400);
        let received = 1_700_000_000_000;
        let lifetime_ms = 5 * 86_400_000;
        assert!(!is_expired(received, received, lifetime));
        assert!(!is_expired(received, received + lifetime_ms - 1, lifetime));
        assert!(is_expired(received, received + lifetime_ms, lifetime));
        // A clock behind the arrival time expires nothing.
        assert!(!is_expired(received, received - MINUTE, lifetime));
        assert!(!is_expired(received, u64::MAX, Duration::MAX));
    }

    #[test]
    fn a_temporary_failure_is_retried_until_the_message_expires() {
        let schedule = schedule();
        let now = 1_700_000_000_000;
        let failure =
            Outcome::temporary([4, 4, 1], "connect to mx: refused").at("mx[192.0.2.1]:25");
        assert_eq!(
            state_after(&failure, 2, false, now, &schedule, 0.5),
            RecipientState::Pending {
                attempts: 2,
                next_attempt_ms: now + 5 * MINUTE,
                last_reply: Some("4.4.1 connect to mx: refused".into()),
            }
        );
        assert_eq!(
            state_after(&failure, 2, true, now, &schedule, 0.5),
            RecipientState::Bounced {
                reply: "4.4.7 message expired; last reply: 4.4.1 connect to mx: refused".into()
            }
        );
    }

    #[test]
    fn refusals_bounce_and_acceptances_deliver_whatever_the_age() {
        let schedule = schedule();
        let refused =
            smtp_proto::Response { code: 550, esc: [5, 1, 1], message: "no such user".to_string() };
        let at = "mx[192.0.2.1]:25";
        let permanent = Outcome::refused(&refused, at);
        for expired in [false, true] {
            assert_eq!(
                state_after(&permanent, 1, expired, 0, &schedule, 0.5),
                RecipientState::Bounced { reply: "550 5.1.1 no such user".into() }
            );
        }
        let accepted =
            smtp_proto::Response { code: 250, esc: [2, 0, 0], message: "queued".to_string() };
        assert_eq!(
            state_after(&Outcome::from_final_reply(&accepted, at), 3, true, 0, &schedule, 0.5),
            RecipientState::Delivered { reply: "250 2.0.0 queued".into(), relay: at.into() }
        );
    }
}
