//! Running a node: open the spool, start the listeners, stop cleanly on a signal.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigError, LiveConfig, Role};
use crate::delivery::{self, DeliveryHandle};
use crate::ha::Ha;
use crate::ha::error::{OpenError, WitnessServeError};
use crate::metrics::Metrics;
use crate::recipients::{self, Recipients};
use crate::replication::Replicator;
use crate::replication::link;
use crate::smtp::{Server, Services};
use crate::spool::{Spool, SpoolError};

/// What `check-config` checks beyond the file itself: the files the config points to.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    crate::smtp::starttls_acceptor(config)?;
    Recipients::check(config)
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

/// Why a node could not start, or stopped with a failure (logged once, as it is).
#[derive(Debug)]
enum NodeError {
    /// The signal handlers could not be installed.
    Signals(std::io::Error),
    OpenSpool {
        dir: PathBuf,
        source: SpoolError,
    },
    /// The cluster link's certificates, its listener, or the SMTP TLS files.
    Config(ConfigError),
    Ha(OpenError),
    Delivery(delivery::StartError),
    /// A recipients file, or the prober's resolver.
    Recipients(recipients::OpenError),
    /// The SMTP or admin listeners could not be bound.
    Listen(std::io::Error),
    SyncAtShutdown(SpoolError),
    Witness(WitnessServeError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Signals(e) | NodeError::Listen(e) => write!(f, "{e}"),
            NodeError::OpenSpool { dir, source } => {
                write!(f, "cannot open the spool in {}: {source}", dir.display())
            }
            NodeError::Config(e) => write!(f, "{e}"),
            NodeError::Ha(e) => write!(f, "{e}"),
            NodeError::Delivery(e) => write!(f, "{e}"),
            NodeError::Recipients(e) => write!(f, "{e}"),
            NodeError::SyncAtShutdown(e) => write!(f, "spool sync at shutdown: {e}"),
            NodeError::Witness(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Signals(e) | NodeError::Listen(e) => Some(e),
            NodeError::OpenSpool { source: e, .. } | NodeError::SyncAtShutdown(e) => Some(e),
            NodeError::Config(e) => Some(e),
            NodeError::Ha(e) => Some(e),
            NodeError::Delivery(e) => Some(e),
            NodeError::Recipients(e) => Some(e),
            NodeError::Witness(e) => Some(e),
        }
    }
}

impl From<ConfigError> for NodeError {
    fn from(e: ConfigError) -> NodeError {
        NodeError::Config(e)
    }
}

/// The signals a node acts on. Taken over first thing: until then their default action ends
/// the process (SIGHUP's too), and a signal that comes once the listeners are up must drain.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn take() -> Result<Signals, NodeError> {
        let take = |kind| signal(kind).map_err(NodeError::Signals);
        Ok(Signals {
            terminate: take(SignalKind::terminate())?,
            interrupt: take(SignalKind::interrupt())?,
            hangup: take(SignalKind::hangup())?,
        })
    }
}

async fn serve(config: Arc<Config>) -> Result<(), NodeError> {
    let signals = Signals::take()?;
    if config.node.role == Role::Witness {
        return witness(&config, signals).await;
    }
    let data_dir = &config.node.data_dir;
    let spool = Spool::open(data_dir)
        .map_err(|source| NodeError::OpenSpool { dir: data_dir.clone(), source })?;
    let link = match &config.cluster {
        Some(cluster) => Some(link::load(&config, cluster)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let (ha, reporter) =
        Ha::open(&config, &spool, link.as_ref().map(|l| l.connector.clone()), metrics.clone())
            .await
            .map_err(NodeError::Ha)?;
    let status = ha.status();
    tracing::info!(
        node = %config.node.name,
        role = %status.role,
        epoch = status.epoch,
        queued = spool.queue_len(),
        data_dir = %data_dir.display(),
        "relayd started"
    );
    let live: LiveConfig = Arc::new(ArcSwap::new(config.clone()));
    // Every data node runs the queue runner; it delivers only while the node serves.
    let delivery = delivery::start(live.clone(), spool.clone(), metrics.clone(), ha.role())
        .map_err(NodeError::Delivery)?;
    let replication =
        Replicator::start(&config, &spool, link, ha.role(), reporter, delivery.clone()).await?;
    tokio::spawn(crate::ha::monitor::run(ha.clone()));
    let recipients = Arc::new(Recipients::open(&config).map_err(NodeError::Recipients)?);
    let services = Services {
        role: ha.role(),
        spool: spool.clone(),
        delivery: delivery.clone(),
        replication: replication.clone(),
        metrics: metrics.clone(),
        recipients,
    };
    let server = Server::new(live.clone(), services)?;
    crate::smtp::limits::raise_descriptor_limit(config.smtp.max_connections);
    let listeners = server.bind().await.map_err(NodeError::Listen)?;
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(server.clone().serve(listener));
    }
    let admin_listener = crate::admin::bind(&config.admin).await.map_err(NodeError::Listen)?;
    let admin = crate::admin::AdminContext {
        config: config.clone(),
        spool: spool.clone(),
        delivery: delivery.clone(),
        metrics: metrics.clone(),
        sessions: server.limiter(),
        replication,
        ha,
    };
    tasks.spawn(crate::admin::serve(admin_listener, admin));
    // The cluster link's listener was bound by `Replicator::start`, the SMTP and admin ones
    // above: everything a peer or a client connects to accepts from here on.
    crate::service::ready();
    tasks.spawn(crate::service::watchdog(Some(spool.clone())));
    let Signals { mut terminate, mut interrupt, mut hangup } = signals;
    loop {
        tokio::select! {
            _ = terminate.recv() => break tracing::info!("SIGTERM: draining"),
            _ = interrupt.recv() => break tracing::info!("SIGINT: draining"),
            _ = hangup.recv() => reload(&live, &server),
        }
    }
    crate::service::stopping();
    drain(&server, &delivery, config.node.drain_timeout).await;
    tasks.abort_all();
    spool.sync().map_err(NodeError::SyncAtShutdown)?;
    tracing::info!("stopped");
    Ok(())
}

/// A witness: grants epochs until SIGTERM or SIGINT, and serves its admin endpoint when its
/// file has an `[admin]` section. The endpoint is bound first, so that the witness's
/// "listening" line means that both listen.
async fn witness(config: &Config, signals: Signals) -> Result<(), NodeError> {
    tracing::info!(node = %config.node.name, "relayd started as a witness");
    let admin = if config.admin.section {
        Some(crate::admin::bind(&config.admin).await.map_err(NodeError::Listen)?)
    } else {
        None
    };
    let witness = crate::ha::witness::Witness::bind(config).await.map_err(NodeError::Witness)?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = admin {
        let context = crate::admin::witness::WitnessContext {
            node: config.node.name.clone(),
            witness: witness.view(),
        };
        tasks.spawn(crate::admin::witness::serve(listener, context));
    }
    tasks.spawn(witness.serve());
    crate::service::ready();
    tasks.spawn(crate::service::watchdog(None));
    let Signals { mut terminate, mut interrupt, mut hangup } = signals;
    loop {
        tokio::select! {
            _ = terminate.recv() => break tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => break tracing::info!("SIGINT: stopping"),
            _ = hangup.recv() => tracing::info!("SIGHUP: a witness has nothing to reload"),
        }
    }
    crate::service::stopping();
    tasks.abort_all();
    tracing::info!("stopped");
    Ok(())
}

/// Lets open sessions and deliveries in flight finish, within `limit`: new connections and
/// idle sessions get 421 meanwhile, and no new delivery starts. What is cut at the limit was not
/// acknowledged (a session without its 250) or not recorded (a delivery, tried again at the
/// next start): nothing is lost.
async fn drain(server: &Server, delivery: &DeliveryHandle, limit: Duration) {
    server.drain();
    delivery.drain();
    let sessions = server.limiter();
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let (open, busy) = (sessions.active(), delivery.in_flight());
        if open == 0 && busy == 0 {
            return tracing::info!("drained");
        }
        if tokio::time::Instant::now() >= deadline {
            return tracing::warn!(
                sessions = open,
                deliveries = busy,
                "drain timed out; cutting them"
            );
        }
        tick.tick().await;
    }
}

/// SIGHUP: reads the config file again and applies what can change while running (routes,
/// relay domains, limits, TLS certificates, delivery settings). Open sessions keep the config
/// they started with. What needs a restart (the node, listen addresses, admin, cluster, log)
/// keeps its running value, with a warning. A file that does not load changes nothing.
fn reload(live: &LiveConfig, server: &Server) {
    let running = live.load_full();
    if running.source == crate::config::EMBEDDED_SOURCE {
        return tracing::info!("SIGHUP: running on the embedded default; nothing to reload");
    }
    let loaded =
        Config::load(Path::new(&running.source)).and_then(|c| c.with_role(running.node.role));
    let mut fresh = match loaded {
        Ok(fresh) => fresh,
        Err(e) => return tracing::error!("SIGHUP: {e}; the running config is kept"),
    };
    let fixed = [
        ("node", fresh.node != running.node),
        ("smtp.listen", fresh.smtp.listen != running.smtp.listen),
        ("admin", fresh.admin != running.admin),
        ("cluster", fresh.cluster != running.cluster),
        ("log", fresh.log != running.log),
    ];
    for (key, changed) in fixed {
        if changed {
            tracing::warn!(key, "SIGHUP: changed in the file; takes effect at the next restart");
        }
    }
    fresh.node = running.node.clone();
    fresh.smtp.listen = running.smtp.listen.clone();
    fresh.admin = running.admin.clone();
    fresh.cluster = running.cluster.clone();
    fresh.log = running.log.clone();
    match server.reload(fresh) {
        Ok(()) => tracing::info!(config = %running.source, "SIGHUP: config reloaded"),
        Err(e) => tracing::error!("SIGHUP: {e}; the running config is kept"),
    }
}
