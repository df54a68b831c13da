//! Running a node: open the spool, start the listeners, stop cleanly on a signal.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigError, Role};
use crate::delivery::{self, DeliveryHandle};
use crate::metrics::Metrics;
use crate::smtp::Server;
use crate::spool::Spool;

/// What `check-config` checks beyond the file itself: the files the config points to.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    crate::smtp::starttls_acceptor(config).map(|_| ())
}

/// Runs the node until SIGTERM or SIGINT; returns the exit status.
pub fn run(config: Config) -> ExitCode {
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(Arc::new(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Arc<Config>) -> Result<(), String> {
    if config.node.role == Role::Witness {
        return Err("the witness role is not implemented in this version".into());
    }
    let data_dir = &config.node.data_dir;
    let spool = Spool::open(data_dir)
        .map_err(|e| format!("cannot open the spool in {}: {e}", data_dir.display()))?;
    let epoch = match config.node.role {
        Role::Primary => {
            Some(spool.ensure_epoch().await.map_err(|e| format!("cannot start an epoch: {e}"))?)
        }
        _ => None,
    };
    let queued = spool.messages().count();
    tracing::info!(
        node = %config.node.name,
        role = %config.node.role,
        epoch = epoch.unwrap_or(0),
        queued,
        data_dir = %data_dir.display(),
        "relayd started"
    );
    let metrics = Arc::new(Metrics::default());
    // Only a primary delivers.
    let delivery = match config.node.role {
        Role::Primary => delivery::start(config.clone(), spool.clone(), metrics.clone())?,
        _ => DeliveryHandle::inactive(spool.clone()),
    };
    let server = Server::new(config.clone(), spool.clone(), delivery.clone(), metrics.clone())
        .map_err(|e| e.to_string())?;
    let listeners = server.bind().await.map_err(|e| e.to_string())?;
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(server.clone().serve(listener));
    }
    let admin_listener = crate::admin::bind(&config.admin).await.map_err(|e| e.to_string())?;
    let admin = crate::admin::AdminContext {
        config: config.clone(),
        spool: spool.clone(),
        delivery: delivery.clone(),
        metrics: metrics.clone(),
        sessions: server.limiter(),
    };
    tasks.spawn(crate::admin::serve(admin_listener, admin));
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
    }
    // Stop accepting. Sessions still open lose their connection before any 250 they were
    // not given yet: nothing acknowledged is at stake.
    tasks.abort_all();
    spool.sync().map_err(|e| format!("spool sync at shutdown: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}
