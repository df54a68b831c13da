//! The SMTP listener: accepts connections, enforces the connection limits before the greeting,
//! and runs a [`session::Session`] for each client.
//!
//! The grammar it speaks is [`crate::proto`] (no I/O, shared with the delivery client);
//! `session` is the state machine over a socket.

pub mod limits;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, LiveConfig};
use crate::delivery::DeliveryHandle;
use crate::metrics::Metrics;
use crate::proto::Reply;
use crate::recipients::Recipients;
use crate::replication::Replicator;
use crate::role::RoleWatch;
use crate::spool::Spool;
use limits::{ConnectionLimiter, LimitExceeded};
use session::Session;

/// The listen queue: connections the kernel has completed and relayd has not accepted yet. The
/// usual default, 128, drops the SYNs of a burst whenever accepting lags (a flood, many senders
/// back after an outage, a moment out of descriptors), and each client dropped retries only a
/// second or more later. The kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

/// Why this node sends a client to the next MX: it takes no mail now, another node may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elsewhere {
    /// Draining on SIGTERM (421, before a transaction or between them).
    ShuttingDown,
    /// Not the serving primary (421 at the greeting or before a command).
    NotPrimary,
    /// Stopped serving while the message was being committed, with no standby holding it
    /// (451: the message was withdrawn).
    NoLongerPrimary,
}

impl Elsewhere {
    /// The reply, naming `hostname`: "421 4.3.2 mx1 not primary, try another MX".
    pub fn reply(self, hostname: &str) -> Reply {
        let (code, why) = match self {
            Elsewhere::ShuttingDown => (421, "shutting down"),
            Elsewhere::NotPrimary => (421, "not primary"),
            Elsewhere::NoLongerPrimary => (451, "not primary now"),
        };
        Reply::new(code, "4.3.2", format!("{hostname} {why}, try another MX"))
    }
}

/// The parts of the node a session works with.
#[derive(Clone)]
pub struct Services {
    /// The node's live role: only a serving primary takes mail (its lease is checked at
    /// each use).
    pub role: RoleWatch,
    pub spool: Spool,
    pub delivery: DeliveryHandle,
    pub replication: Replicator,
    pub metrics: Arc<Metrics>,
    /// The recipient lists and verification of the `[[relay.domain]]` tables.
    pub recipients: Arc<Recipients>,
}

/// Everything a listener needs to serve connections.
#[derive(Clone)]
pub struct Server {
    config: LiveConfig,
    /// The STARTTLS acceptor, swapped with the config on reload.
    tls: Arc<ArcSwap<Option<TlsAcceptor>>>,
    services: Services,
    limiter: ConnectionLimiter,
    /// Set on SIGTERM: new connections get 421, idle sessions are closed.
    draining: Arc<watch::Sender<bool>>,
}

impl Server {
    /// Prepares the server; fails if the TLS certificate or key cannot be loaded.
    pub fn new(config: LiveConfig, services: Services) -> Result<Server, ConfigError> {
        let tls = Arc::new(ArcSwap::from_pointee(starttls_acceptor(&config.load())?));
        Ok(Server {
            config,
            tls,
            services,
            limiter: ConnectionLimiter::default(),
            draining: Arc::new(watch::Sender::new(false)),
        })
    }

    /// Makes `config` the one new sessions use (SIGHUP). Sessions already open keep the config
    /// they started with. Fails, changing nothing, if the new TLS files cannot be used or a
    /// new recipients file cannot be read (one read before keeps its old list).
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let tls = starttls_acceptor(&config)?;
        self.services.recipients.reload(&config)?;
        self.tls.store(Arc::new(tls));
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// SIGTERM: from now on new connections get 421, and sessions waiting for a command with
    /// no transaction open are closed with 421; a transaction in progress may finish.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// The open-connection counter (for the admin endpoint's metrics).
    pub fn limiter(&self) -> ConnectionLimiter {
        self.limiter.clone()
    }

    /// Binds every address in `[smtp].listen`.
    pub async fn bind(&self) -> std::io::Result<Vec<TcpListener>> {
        let mut listeners = Vec::new();
        for &address in &self.config.load().smtp.listen {
            let listener = listen(address).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))
            })?;
            tracing::info!(%address, "SMTP listening");
            listeners.push(listener);
        }
        Ok(listeners)
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        // Accept errors in a row: out of descriptors, typically, which lasts until sessions
        // end. The connection stays in the listen queue meanwhile; we wait a little between
        // tries instead of spinning, and say so once, not ten times a second.
        let mut failures = 0u64;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if failures > 0 {
                        tracing::info!(failures, "accepting connections again");
                        failures = 0;
                    }
                    let server = self.clone();
                    tokio::spawn(async move { server.handle(stream, peer).await });
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "accept failed; trying again every 100ms");
                    }
                    failures += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let config = self.config.load_full();
        let smtp = &config.smtp;
        let hostname = &smtp.hostname;
        let acquired =
            self.limiter.try_acquire(peer.ip(), smtp.max_connections, smtp.max_connections_per_ip);
        let draining = *self.draining.borrow();
        let refusal = match (acquired, crate::role::current(&self.services.role).serving_now()) {
            (Ok(_), _) if draining => Elsewhere::ShuttingDown.reply(hostname),
            (Ok(slot), true) => {
                tracing::debug!(client = %peer, "connect");
                let session = Session::new(
                    config.clone(),
                    self.services.clone(),
                    self.tls.load_full().as_ref().clone(),
                    peer,
                    self.draining.subscribe(),
                );
                session.run(Box::new(stream), slot).await;
                tracing::debug!(client = %peer, "disconnect");
                return;
            }
            (Ok(_), false) => Elsewhere::NotPrimary.reply(hostname),
            (Err(LimitExceeded::Total), _) => {
                Reply::new(421, "4.7.0", format!("{hostname} Error: too many connections"))
            }
            (Err(LimitExceeded::PerIp), _) => Reply::new(
                421,
                "4.7.0",
                format!("{hostname} Error: too many connections from {}", peer.ip()),
            ),
        };
        tracing::info!(client = %peer.ip(), reply = %refusal, "connection refused");
        let mut out = Vec::new();
        refusal.write_to(&mut out);
        let _ = tokio::time::timeout(smtp.command_timeout, stream.write_all(&out)).await;
    }
}

/// A listening socket on `address`, as `TcpListener::bind` makes it (SO_REUSEADDR, so that a
/// restart finds its port free at once) but with a longer listen queue.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The STARTTLS acceptor for `[smtp].tls_cert` and `tls_key`, if both are set. A file that
/// cannot be used is a config error naming the key (check-config runs this too).
pub fn starttls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.smtp.tls_cert, &config.smtp.tls_key) else {
        return Ok(None);
    };
    tls::acceptor(cert, key).map(Some).map_err(|e| config.error_at(e.key(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_sent_elsewhere_is_told_to_try_another_mx() {
        let text = |why: Elsewhere| why.reply("mx1.test").to_string();
        assert_eq!(
            text(Elsewhere::ShuttingDown),
            "421 4.3.2 mx1.test shutting down, try another MX"
        );
        assert_eq!(text(Elsewhere::NotPrimary), "421 4.3.2 mx1.test not primary, try another MX");
        assert_eq!(
            text(Elsewhere::NoLongerPrimary),
            "451 4.3.2 mx1.test not primary now, try another MX"
        );
    }
}
