//! The admin endpoint (docs/contract.md, "Admin endpoint"): HTTP and JSON on `[admin].listen`, for
//! operators, their tools and the `relayd status` / `relayd queue ...` subcommands.
//!
//! `routes` holds the handlers, `api` the JSON documents (shared with the CLI's `client`),
//! `metrics` the Prometheus page, `auth` the optional bearer token, `error` the JSON errors.
//! `witness` is a witness's smaller endpoint, on the same listener, token and page writer.

pub mod api;
mod auth;
pub mod client;
pub mod commands;
mod error;
pub mod filter;
pub mod metrics;
mod routes;
pub mod witness;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use auth::{Token, TokenError};

use crate::config::{AdminConfig, Config, Role};
use crate::delivery::{DeliveryHandle, QueueChange};
use crate::metrics::Metrics;
use crate::smtp::limits::ConnectionLimiter;
use crate::spool::Spool;

/// What the endpoint reads and acts on.
pub struct AdminContext {
    pub config: Arc<Config>,
    pub spool: Spool,
    pub delivery: DeliveryHandle,
    pub metrics: Arc<Metrics>,
    /// The SMTP listener's limiter: its count is the number of open sessions.
    pub sessions: ConnectionLimiter,
    /// The peer and the replication lag.
    pub replication: crate::replication::Replicator,
    /// The live role and epoch, and the way to change them.
    pub ha: crate::ha::Ha,
}

/// The node's place in the cluster, as the endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    /// The failover controller's epoch now, 0 before the first one.
    pub epoch: u64,
    /// A primary within its lease (not fenced), asked at the moment of the request.
    pub serving: bool,
}

/// Where `/status`, `/metrics` and the queue's changes learn the role and the epoch: from the
/// failover controller's live status, never from what the spool last persisted.
pub fn node_state(context: &AdminContext) -> NodeState {
    let status = context.ha.status();
    NodeState { role: status.role, epoch: status.epoch, serving: status.serving_now() }
}

/// The endpoint's socket, bound, and the token its requests must carry.
pub struct Listener {
    socket: TcpListener,
    token: Option<Token>,
}

/// Binds `[admin].listen`. The error names the address. When a token file is set, it is read
/// here, once, so that a node whose token cannot be read stops at start with an error naming
/// it, and never serves unprotected.
pub async fn bind(config: &AdminConfig) -> std::io::Result<Listener> {
    let token = match &config.token_file {
        Some(path) => Some(Token::read(path).map_err(std::io::Error::other)?),
        None => None,
    };
    let address = config.listen;
    let socket = TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {address} (admin endpoint): {e}"))
    })?;
    tracing::info!(%address, token = token.is_some(), "admin endpoint listening");
    Ok(Listener { socket, token })
}

/// Serves the endpoint on `listener` until the task is dropped or aborted.
pub async fn serve(listener: Listener, context: AdminContext) {
    let Listener { socket, token } = listener;
    serve_router(socket, router(context, token)).await;
}

/// Serves `router`, whose handlers may read the client's address
/// ([`axum::extract::ConnectInfo`]: the token check logs refusals with it).
async fn serve_router(socket: TcpListener, router: Router) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(socket, service).await {
        tracing::error!(error = %e, "admin endpoint stopped");
    }
}

/// The routes, behind the token check when there is a token.
pub fn router(context: AdminContext, token: Option<Token>) -> Router {
    let router = Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/status", get(routes::status))
        .route("/metrics", get(routes::metrics))
        .route("/queue", get(routes::queue_list).delete(routes::change(QueueChange::Delete)))
        .route("/queue/flush", post(routes::queue_flush))
        .route("/queue/requeue", post(routes::queue_requeue))
        .route("/queue/hold", post(routes::change(QueueChange::Hold)))
        .route("/queue/release", post(routes::change(QueueChange::Release)))
        .route("/queue/bounce", post(routes::change(QueueChange::Bounce)))
        .route("/promote", post(routes::promote))
        .route("/demote", post(routes::demote))
        .route("/failover/pause", post(routes::failover_pause))
        .route("/failover/resume", post(routes::failover_resume))
        .route("/rebuild", post(routes::rebuild))
        .route("/history", get(routes::history))
        .route("/queue/{id}", get(routes::queue_show).delete(routes::queue_delete))
        .route("/queue/{id}/content", get(routes::queue_content))
        .with_state(Arc::new(context));
    finish(router, token)
}

/// What every endpoint's routes share: the answers to unknown paths and methods, and the token
/// check when there is a token (`/healthz` stays open).
fn finish(router: Router, token: Option<Token>) -> Router {
    let router =
        router.fallback(routes::not_found).method_not_allowed_fallback(routes::method_not_allowed);
    match token {
        Some(token) => {
            router.layer(axum::middleware::from_fn_with_state(token, auth::require_token))
        }
        None => router,
    }
}
