//! The endpoint's handlers, one per route (docs/contract.md, "Admin endpoint").

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::{Message, QueueSummary, ReplicationLag, Status, parse_queue_id};
use super::error::ApiError;
use super::metrics::{self, Snapshot};
use super::{AdminContext, node_state};
use crate::config::Role;
use crate::metrics::Metrics;
use crate::spool::{QueueId, Spool, SpoolError, now_ms};

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

/// `GET /status`.
pub async fn status(State(context): Context) -> Result<Json<Status>, ApiError> {
    blocking(move || {
        let state = node_state(&context);
        let replication = context.replication.status(&context.spool, state.role);
        Ok(Json(Status {
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
            smtp_commit: counters.smtp_commit.snapshot(),
            replication_ack: counters.replication_ack.snapshot(),
            delivery_attempt: counters.delivery_attempt.snapshot(),
        }))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], page).into_response())
}

/// `GET /queue`: every queued message, oldest first.
pub async fn queue_list(State(context): Context) -> Result<Json<Vec<Message>>, ApiError> {
    blocking(move || {
        let mut messages = Vec::new();
        for record in context.spool.messages() {
            messages.push(Message::from_record(&record?));
        }
        Ok(Json(messages))
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
        Some(record) => Ok(Json(Message::from_record(&record))),
        None => Err(ApiError::not_found(format!("no message {id} in the queue"))),
    })
    .await
}

/// `POST /queue/flush`: every deferred message is tried now.
pub async fn queue_flush(State(context): Context) -> Result<Response, ApiError> {
    if !context.ha.status().serving_now() || !context.delivery.flush() {
        return Err(ApiError::conflict("this node does not deliver mail: nothing to flush"));
    }
    tracing::info!("queue flush requested");
    let body = serde_json::json!({ "flush": "requested" });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `DELETE /queue/{id}`: removes a message without delivering it. Only a primary changes its
/// queue: a standby's spool is a copy of the primary's.
pub async fn queue_delete(
    State(context): Context,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = queue_id(id)?;
    let state = node_state(&context);
    if state.role != Role::Primary || !state.serving {
        return Err(ApiError::conflict(format!(
            "this node is a {}{}: delete the message on the serving primary",
            state.role,
            if context.ha.status().serving_now() { "" } else { " that does not serve now" }
        )));
    }
    if !context.delivery.delete(id).await? {
        return Err(ApiError::not_found(format!("no message {id} in the queue")));
    }
    tracing::info!(%id, "deleted by the operator");
    Ok(Json(serde_json::json!({ "deleted": id.to_string() })))
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
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
