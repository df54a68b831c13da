//! The endpoint's handlers, one per route (docs/contract.md, "Admin endpoint").

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{
    HistoryEntry, Member, Message, QueuePage, QueueSummary, ReplicationLag, Status, parse_queue_id,
};
use super::error::ApiError;
use super::filter::{self, BadQuery, QueueQuery};
use super::metrics::{self, Snapshot};
use super::{AdminContext, node_state};
use crate::config::Role;
use crate::delivery::{QueueChange, Requeue};
use crate::ha::error::MaintenanceError;
use crate::metrics::Metrics;
use crate::replication::frame;
use crate::spool::{MessageRecord, QueueId, Spool, SpoolError, now_ms};

type Context = State<Arc<AdminContext>>;

/// `GET /healthz`: 200 while the node serves its role (a fenced primary does not: 503). Open
/// even when a token is required.
pub async fn healthz(State(context): Context) -> Response {
    let status = context.ha.status();
    if status.role == Role::Primary && !status.serving_now() {
        return (StatusCode::SERVICE_UNAVAILABLE, "fenced").into_response();
    }
    // Closed after a failed write (a full disk): every sender gets 452 until it reopens.
    if !context.spool.is_open() {
        return (StatusCode::SERVICE_UNAVAILABLE, "spool closed after a failed write")
            .into_response();
    }
    "ok".into_response()
}

/// What a forced promotion risks, said to the operator who asked for it.
pub const FORCED_PROMOTION_RISK: &str = "forced: mail that the previous primary acknowledged \
and did not replicate here stays on its disk until it rejoins (it is then handed over, \
salvaged); if that node is alive and serving, it steps down as soon as it hears of this epoch";

/// `POST /promote[?force=true]`: make this standby the primary.
pub async fn promote(
    State(context): Context,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let force = query.get("force").is_some_and(|v| v == "true" || v == "1");
    tracing::warn!(force, "promotion requested by the operator");
    let epoch = context.ha.promote(force).await.map_err(|e| ApiError::conflict(e.to_string()))?;
    let mut answer = serde_json::json!({ "role": "primary", "epoch": epoch });
    if force {
        answer["warning"] = serde_json::Value::from(FORCED_PROMOTION_RISK);
    }
    Ok(Json(answer))
}

/// `POST /demote`: planned switchover from this primary to its standby.
pub async fn demote(State(context): Context) -> Result<Json<serde_json::Value>, ApiError> {
    tracing::warn!("switchover requested by the operator");
    let epoch =
        crate::ha::switchover(&context.ha, &context.replication, &context.delivery, &context.spool)
            .await
            .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok(Json(serde_json::json!({ "role": "standby", "new_primary_epoch": epoch })))
}

/// `POST /failover/pause` and `/failover/resume`: automatic failover off or on (replicated
/// from a primary to its standby; a standby's own otherwise).
pub async fn failover_pause(State(context): Context) -> Result<Json<serde_json::Value>, ApiError> {
    set_failover_paused(&context, true).await
}

pub async fn failover_resume(State(context): Context) -> Result<Json<serde_json::Value>, ApiError> {
    set_failover_paused(&context, false).await
}

async fn set_failover_paused(
    context: &AdminContext,
    paused: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let replicated = context.ha.pause_failover(paused).await.map_err(|e| match e {
        MaintenanceError::Spool(e) => ApiError::internal(e.to_string()),
        other => ApiError::conflict(other.to_string()),
    })?;
    let scope = if replicated { "cluster" } else { "node" };
    Ok(Json(serde_json::json!({ "failover_paused": paused, "scope": scope })))
}

/// `POST /rebuild`: this standby drops its spool and takes a full snapshot from the primary;
/// refused (409) on a primary.
pub async fn rebuild(State(context): Context) -> Result<Json<serde_json::Value>, ApiError> {
    context.ha.rebuild(&context.replication).await.map_err(|e| match e {
        MaintenanceError::Spool(e) => ApiError::internal(e.to_string()),
        other => ApiError::conflict(other.to_string()),
    })?;
    Ok(Json(serde_json::json!({ "rebuilding": true })))
}

/// `GET /history`: who was primary in each epoch, from when, and why.
pub async fn history(State(context): Context) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    blocking(move || {
        let spool = &context.spool;
        Ok(Json(HistoryEntry::list(&spool.epoch_history()?, spool.epoch_notes()?)))
    })
    .await
}

/// The members `/status` shows: this node, its peer, its witness.
fn members(context: &AdminContext, state: &super::NodeState, lag_records: u64) -> Vec<Member> {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut members = vec![Member {
        name: context.config.node.name.clone(),
        role: state.role.to_string(),
        epoch: Some(state.epoch),
        serving: Some(state.serving),
        state: "self".into(),
        lag_records: (state.role == Role::Standby).then_some(lag_records),
        last_heard_ms: Some(0),
        granted_to: None,
    }];
    if let Some(cluster) = context.ha.cluster() {
        let history = context.spool.epoch_history().unwrap_or_default();
        let peer = context.replication.peer_view(&history);
        // A standby's silence of its primary is what its failover decision counts.
        let heard = match (&peer, context.ha.primary_silence()) {
            (Some(peer), Some(silence)) if peer.role == Role::Primary.as_str() => {
                Some(silence.min(peer.silence))
            }
            (Some(peer), _) => Some(peer.silence),
            (None, _) => None,
        };
        members.push(Member {
            name: peer.as_ref().map_or_else(
                || cluster.peer.clone().unwrap_or_else(|| "peer".into()),
                |p| p.node.clone(),
            ),
            role: peer.as_ref().map_or_else(|| "unknown".into(), |p| p.role.clone()),
            epoch: peer.as_ref().map(|p| p.epoch),
            serving: None,
            state: if peer.as_ref().is_some_and(|p| p.connected) {
                "linked"
            } else {
                "unreachable"
            }
            .into(),
            lag_records: (state.role == Role::Primary).then_some(lag_records),
            last_heard_ms: heard.map(ms),
            granted_to: None,
        });
    }
    if let Some(witness) = context.ha.witness_view() {
        let answering = witness.grant.is_some()
            && context.ha.cluster().is_some_and(|c| witness.silence < c.failover_timeout);
        members.push(Member {
            name: witness.address,
            role: Role::Witness.as_str().into(),
            epoch: witness.grant.as_ref().map(|g| g.0),
            serving: None,
            state: if answering { "answering" } else { "unreachable" }.into(),
            lag_records: None,
            last_heard_ms: witness.grant.as_ref().map(|_| ms(witness.silence)),
            granted_to: witness.grant.map(|g| g.1),
        });
    }
    members
}

/// `GET /status`.
pub async fn status(State(context): Context) -> Result<Json<Status>, ApiError> {
    blocking(move || {
        let state = node_state(&context);
        let replication = context.replication.status(&context.spool, state.role);
        Ok(Json(Status {
            failover_paused: context.ha.failover_paused(),
            members: members(&context, &state, replication.lag_records),
            role: state.role.to_string(),
            epoch: state.epoch,
            serving: state.serving,
            node: context.config.node.name.clone(),
            peer: replication.peer.and_then(|peer| serde_json::to_value(peer).ok()),
            replication: ReplicationLag {
                lag_records: replication.lag_records,
                lag_bytes: replication.lag_bytes,
                lag_seconds: replication.lag_seconds as u64,
            },
            queue: summarize(&context.spool)?,
            release: Some(frame::RELEASE.to_string()),
            protocol: Some(frame::PROTOCOL),
        }))
    })
    .await
}

/// `GET /metrics`.
pub async fn metrics(State(context): Context) -> Result<Response, ApiError> {
    let page = blocking(move || {
        let state = node_state(&context);
        let counters = &context.metrics;
        let replication = context.replication.status(&context.spool, state.role);
        Ok(metrics::render(&Snapshot {
            role: Some(state.role),
            epoch: state.epoch,
            serving: state.serving,
            queue_messages: context.spool.queue_len(),
            smtp_sessions_active: u64::try_from(context.sessions.active()).unwrap_or(u64::MAX),
            messages_accepted: Metrics::read(&counters.messages_accepted),
            recipients_delivered: Metrics::read(&counters.recipients_delivered),
            recipients_deferred: Metrics::read(&counters.recipients_deferred),
            recipients_bounced: Metrics::read(&counters.recipients_bounced),
            replication_lag_records: replication.lag_records,
            replication_lag_seconds: replication.lag_seconds,
            failovers: Metrics::read(&counters.failovers),
            spool_syncs: context.spool.syncs(),
            spool_reopens: context.spool.reopens(),
            storage_refusals: Metrics::read(&counters.storage_refusals),
            // Unreadable (the directory gone): the page shows no disk gauges, and the
            // spool's own errors say why.
            spool_disk: context.spool.disk_usage().ok(),
            witness_silence: context.ha.witness_silence(),
            failover_paused: context.ha.failover_paused(),
            smtp_commit: counters.smtp_commit.snapshot(),
            replication_ack: counters.replication_ack.snapshot(),
            delivery_attempt: counters.delivery_attempt.snapshot(),
        }))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], page).into_response())
}

/// `GET /queue[?state=&domain=&sender=&recipient=&older_than=&limit=&after=]`. Without a
/// parameter: every queued message, oldest first, as a bare array (the shape older scripts
/// read). With any: a [`QueuePage`] of the messages the filter selects, at most `limit`
/// ([`filter::DEFAULT_LIMIT`]), and the cursor of the next page.
pub async fn queue_list(State(context): Context, query: QueryResult) -> Result<Response, ApiError> {
    let query = queue_query(query)?;
    blocking(move || {
        if query.is_empty() {
            let mut messages = Vec::new();
            for queued in with_holds(&context.spool, None) {
                let (record, held) = queued?;
                messages.push(Message::from_record(&record, held));
            }
            return Ok(Json(messages).into_response());
        }
        let filter = query.filter().map_err(bad_query)?;
        let after = query.after().map_err(bad_query)?;
        let limit = query.limit.unwrap_or(filter::DEFAULT_LIMIT).max(1);
        let now = now_ms();
        let selected = with_holds(&context.spool, after).filter(|queued| {
            queued.as_ref().map_or(true, |(r, held)| filter.matches(r, held.is_some(), now))
        });
        let page = filter::page(selected, |(record, _)| record.envelope.id, after, limit)?;
        Ok(Json(QueuePage {
            messages: page.items.iter().map(|(r, held)| Message::from_record(r, *held)).collect(),
            next_after: page.next_after.map(|id| id.to_string()),
        })
        .into_response())
    })
    .await
}

/// `GET /queue/{id}`.
pub async fn queue_show(
    State(context): Context,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Message>, ApiError> {
    let id = queue_id(id)?;
    blocking(move || match context.spool.get(id)? {
        Some(record) => Ok(Json(Message::from_record(&record, context.spool.held_since(id)?))),
        None => Err(ApiError::not_found(format!("no message {id} in the queue"))),
    })
    .await
}

/// `POST /queue/flush`: every queued message is tried now (`requeue?all=true`).
pub async fn queue_flush(State(context): Context) -> Result<Response, ApiError> {
    requeue(&context, Requeue::All)?;
    tracing::info!("queue flush requested");
    let body = serde_json::json!({ "flush": "requested" });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /queue/requeue?id=ID | ?domain=D (or any filter) | ?all=true`: those messages are
/// tried now with the current routes. Answers how many were asked for.
pub async fn queue_requeue(
    State(context): Context,
    query: QueryResult,
) -> Result<Response, ApiError> {
    let query = queue_query(query)?;
    let which = match query.id().map_err(bad_query)? {
        Some(id) => {
            require_queued(&context, id).await?;
            Requeue::Only(vec![id])
        }
        None if query.all => Requeue::All,
        None => Requeue::Only(selected_ids(&context, &query, |_| true).await?),
    };
    let count = match &which {
        Requeue::All => context.spool.queue_len(),
        Requeue::Only(ids) => u64::try_from(ids.len()).unwrap_or(u64::MAX),
    };
    requeue(&context, which)?;
    tracing::info!(count, "requeue requested by the operator");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "requeued": count }))).into_response())
}

/// The answer of [`queue_change`], boxed: the handler [`change`] makes names its type.
pub type ChangeAnswer =
    std::pin::Pin<Box<dyn Future<Output = Result<Json<serde_json::Value>, ApiError>> + Send>>;

/// The handler of one bulk change of the queue ([`queue_change`]), for the router.
pub fn change(
    change: QueueChange,
) -> impl Fn(Context, QueryResult) -> ChangeAnswer + Clone + Send + Sync + 'static {
    move |State(context), query| Box::pin(queue_change(context, query, change))
}

/// `DELETE /queue?<filter>[&dry_run=true]` or `DELETE /queue?all=true`, and `POST
/// /queue/hold`, `/queue/release` and `/queue/bounce` with the same parameters (or `id=ID`):
/// makes `change` to the messages the filter selects (a hold those not held yet, a release
/// the held ones), and answers their count and ids. A dry run only answers (on any node); a
/// real one is the serving primary's, as `DELETE /queue/{id}`. A hold keeps a message from
/// delivery and expiry until its release, which tries it at once; a bounce makes every pending
/// recipient bounced by the operator (5.0.0), with a DSN to the sender (none to the null
/// sender), and the message leaves the queue.
pub async fn queue_change(
    context: Arc<AdminContext>,
    query: QueryResult,
    change: QueueChange,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = queue_query(query)?;
    if !query.dry_run {
        serving_primary(&context, &format!("{} the messages", change.verb()))?;
    }
    let ids = match query.id().map_err(bad_query)? {
        Some(id) => {
            require_queued(&context, id).await?;
            let spool = context.spool.clone();
            let held = blocking(move || Ok(spool.held_since(id)?.is_some())).await?;
            if change.applies_to(held) { vec![id] } else { vec![] }
        }
        None => selected_ids(&context, &query, move |held| change.applies_to(held)).await?,
    };
    // A message delivered or deleted since the scan is not counted.
    let changed = match query.dry_run {
        true => ids,
        false => context.delivery.change_all(change, &ids).await?,
    };
    let changed: Vec<String> = changed.iter().map(QueueId::to_string).collect();
    if !query.dry_run {
        tracing::info!(count = changed.len(), "{} by the operator", change.done());
    }
    Ok(Json(serde_json::json!({
        "dry_run": query.dry_run,
        change.done(): changed.len(),
        "ids": changed,
    })))
}

/// `DELETE /queue/{id}`: removes a message without delivering it. Only a primary changes its
/// queue: a standby's spool is a copy of the primary's.
pub async fn queue_delete(
    State(context): Context,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = queue_id(id)?;
    serving_primary(&context, "delete the message")?;
    if !context.delivery.delete(id).await? {
        return Err(ApiError::not_found(format!("no message {id} in the queue")));
    }
    tracing::info!(%id, "deleted by the operator");
    Ok(Json(serde_json::json!({ "deleted": id.to_string() })))
}

/// `GET /queue/{id}/content`: the message as stored (our Received: header, the client's
/// headers and body), as `message/rfc822`, streamed from the spool chunk by chunk.
pub async fn queue_content(
    State(context): Context,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = queue_id(id)?;
    require_queued(&context, id).await?;
    // A few chunks in flight: the reader waits for a slow client instead of reading ahead.
    let (chunks, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        for chunk in context.spool.body(id) {
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if chunks.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(ChunkStream(receiver));
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], body).into_response())
}

/// The body's chunks as the spool's reader hands them over.
struct ChunkStream(tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>);

impl futures_core::Stream for ChunkStream {
    type Item = std::io::Result<Vec<u8>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

pub type QueryResult = Result<Query<QueueQuery>, QueryRejection>;

fn queue_query(query: QueryResult) -> Result<QueueQuery, ApiError> {
    query.map(|Query(query)| query).map_err(|e| ApiError::bad_request(e.body_text()))
}

fn bad_query(e: BadQuery) -> ApiError {
    ApiError::bad_request(e.0)
}

/// The ids of the messages a bulk change's query selects, of those `eligible` by whether they
/// are held: at least one filter, or `all=true` (a bare `DELETE /queue` is refused rather than
/// taken to mean every message).
async fn selected_ids(
    context: &Arc<AdminContext>,
    query: &QueueQuery,
    eligible: impl Fn(bool) -> bool + Send + 'static,
) -> Result<Vec<QueueId>, ApiError> {
    let filter = query.filter().map_err(bad_query)?;
    if filter.is_empty() && !query.all {
        return Err(ApiError::bad_request(
            "no filter: give state, domain, sender, recipient or older_than, or all=true",
        ));
    }
    let context = Arc::clone(context);
    blocking(move || {
        let now = now_ms();
        let mut ids = Vec::new();
        for queued in with_holds(&context.spool, None) {
            let (record, held) = queued?;
            if eligible(held.is_some()) && filter.matches(&record, held.is_some(), now) {
                ids.push(record.envelope.id);
            }
        }
        Ok(ids)
    })
    .await
}

/// The queued messages after `after` (every one without it), each with since when an
/// operator holds it. The holds are read first, in one go: there are few, and a listing of a
/// large queue then costs no read per message.
fn with_holds(
    spool: &Spool,
    after: Option<QueueId>,
) -> impl Iterator<Item = Result<(MessageRecord, Option<u64>), SpoolError>> + '_ {
    let holds = spool.held().map(|held| held.into_iter().collect::<HashMap<QueueId, u64>>());
    let (holds, failed) = match holds {
        Ok(holds) => (holds, None),
        Err(e) => (HashMap::new(), Some(Err(e))),
    };
    failed.into_iter().chain(spool.messages_after(after).map(move |record| {
        let record = record?;
        let held = holds.get(&record.envelope.id).copied();
        Ok((record, held))
    }))
}

/// 404 unless message `id` is queued.
async fn require_queued(context: &Arc<AdminContext>, id: QueueId) -> Result<(), ApiError> {
    let context = Arc::clone(context);
    if blocking(move || Ok(context.spool.get(id)?.is_some())).await? {
        return Ok(());
    }
    Err(ApiError::not_found(format!("no message {id} in the queue")))
}

/// Refuses a change on any node but the serving primary: a standby's spool is a copy of the
/// primary's, and a fenced primary may no longer be the primary.
fn serving_primary(context: &AdminContext, what: &str) -> Result<(), ApiError> {
    let state = node_state(context);
    if state.role != Role::Primary || !state.serving {
        return Err(ApiError::conflict(format!(
            "this node is a {}{}: {what} on the serving primary",
            state.role,
            if context.ha.status().serving_now() { "" } else { " that does not serve now" }
        )));
    }
    Ok(())
}

/// Hands a requeue to the runner of a node that delivers.
fn requeue(context: &AdminContext, which: Requeue) -> Result<(), ApiError> {
    if !context.ha.status().serving_now() || !context.delivery.requeue(which) {
        return Err(ApiError::conflict("this node does not deliver mail: nothing to requeue"));
    }
    Ok(())
}

/// A queue id from the path ([`parse_queue_id`]).
fn queue_id(path: Result<Path<String>, PathRejection>) -> Result<QueueId, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    parse_queue_id(&text).map_err(|_| {
        ApiError::bad_request(format!(
            "malformed queue id {text:?}: expected 32 hexadecimal digits"
        ))
    })
}

/// The queue's figures for `/status`.
fn summarize(spool: &Spool) -> Result<QueueSummary, SpoolError> {
    let mut summary = QueueSummary::default();
    let mut oldest_ms: Option<u64> = None;
    for record in spool.messages() {
        let record = record?;
        summary.messages += 1;
        let pending = record.recipients.iter().filter(|r| r.is_pending()).count();
        summary.recipients_pending += u64::try_from(pending).unwrap_or(u64::MAX);
        let received = record.envelope.received_at_ms;
        oldest_ms = Some(oldest_ms.map_or(received, |oldest| oldest.min(received)));
    }
    if let Some(oldest_ms) = oldest_ms {
        summary.oldest_age_seconds = now_ms().saturating_sub(oldest_ms) / 1000;
    }
    Ok(summary)
}

/// Runs spool reads (they are synchronous) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))?
}
