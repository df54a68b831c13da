//! The witness: a third voter that holds no mail. It hears every data node's pings, remembers
//! when it last heard a serving primary, and grants each new epoch at most once — persisted
//! before it answers — and only when no primary has been heard serving for the claimant's
//! `failover_timeout`
//! (unless an operator forces it). The data nodes' client for it is here too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::config::Config;
use crate::replication::frame::{self, Frame};
use crate::replication::link::{self, PEER_NAME};

const GRANTS_FILE: &str = "witness-grant";
/// The witness's own patience with a connection that says nothing.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What the witness knows.
struct Witness {
    /// The highest epoch granted, and to whom (persisted).
    granted: u64,
    granted_to: String,
    /// The last primary heard serving, its epoch, and when.
    primary: Option<(String, u64, Instant)>,
    grants: PathBuf,
}

/// Runs a witness until the process stops.
pub async fn serve(config: &Config) -> Result<(), String> {
    let Some(cluster) = &config.cluster else {
        return Err("a witness needs a [cluster] section".into());
    };
    let link = link::load(config, cluster).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&config.node.data_dir)
        .map_err(|e| format!("{}: {e}", config.node.data_dir.display()))?;
    let grants = config.node.data_dir.join(GRANTS_FILE);
    let (granted, granted_to) = read_grant(&grants)?;
    let witness = Arc::new(Mutex::new(Witness { granted, granted_to, primary: None, grants }));
    let listener = TcpListener::bind(cluster.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cluster.listen))?;
    tracing::info!(address = %cluster.listen, granted, "witness listening");
    loop {
        let Ok((tcp, address)) = listener.accept().await else { continue };
        let (acceptor, witness) = (link.acceptor.clone(), witness.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return tracing::warn!(peer = %address, error = %e, "cluster peer refused: TLS handshake failed");
                }
                Err(_) => {
                    return tracing::warn!(peer = %address, "cluster peer refused: no TLS handshake in time");
                }
            };
            let mut stream = BufStream::new(tls);
            while let Ok(request) = frame::read(&mut stream).await {
                let Some(answer) = answer(&witness, request, address) else { break };
                if frame::write(&mut stream, &answer).await.is_err()
                    || stream.flush().await.is_err()
                {
                    break;
                }
            }
        });
    }
}

fn answer(witness: &Mutex<Witness>, request: Frame, from: SocketAddr) -> Option<Frame> {
    // Held across the grant's fsync on purpose: a grant must be on disk before the next claim
    // is judged. Grants are rare (one per epoch); pings and refusals write nothing.
    let mut w = witness.lock().unwrap_or_else(PoisonError::into_inner);
    match request {
        Frame::Ping { node, role, epoch, serving } => {
            if role == "primary" && epoch > w.granted {
                // A primary in an epoch the witness never granted (the cluster's first, taken
                // by the configured primary itself): no claim may reuse it.
                match write_grant(&w.grants, epoch, &node) {
                    Ok(()) => {
                        w.granted = epoch;
                        w.granted_to = node.clone();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot persist an observed epoch"),
                }
            }
            if role == "primary" && serving && epoch >= w.granted {
                w.primary = Some((node, epoch, Instant::now()));
            } else if w.primary.as_ref().is_some_and(|(primary, ..)| *primary == node) {
                // The primary itself says it no longer serves (fenced, or handing over).
                w.primary = None;
            }
            Some(Frame::Pong {
                granted: w.granted,
                primary: w.primary.as_ref().map(|(node, ..)| node.clone()),
            })
        }
        Frame::Claim { node, epoch, force, failover_timeout_ms } => {
            let window = Duration::from_millis(failover_timeout_ms);
            let refuse = |reason: String| Frame::Verdict { granted: false, epoch, reason };
            // The same claim again (the claimant crashed before it could use the grant): the
            // answer is the same, which grants nothing new.
            if epoch == w.granted && node == w.granted_to {
                return Some(Frame::Verdict {
                    granted: true,
                    epoch,
                    reason: "granted before".into(),
                });
            }
            if epoch <= w.granted {
                return Some(refuse(format!(
                    "epoch {epoch} is not newer than {} (granted to {})",
                    w.granted, w.granted_to
                )));
            }
            if let Some((primary, primary_epoch, at)) = &w.primary
                && !force
                && primary != &node
                && at.elapsed() < window
            {
                let ago = at.elapsed().as_millis();
                return Some(refuse(format!(
                    "primary {primary} (epoch {primary_epoch}) was heard {ago} ms ago"
                )));
            }
            if let Err(e) = write_grant(&w.grants, epoch, &node) {
                tracing::error!(error = %e, "cannot persist a grant; refusing it");
                return Some(refuse(format!("the witness cannot persist the grant: {e}")));
            }
            w.granted = epoch;
            w.granted_to = node.clone();
            w.primary = None;
            tracing::warn!(epoch, to = %node, force, "granted epoch");
            Some(Frame::Verdict { granted: true, epoch, reason: "granted".into() })
        }
        other => {
            tracing::warn!(peer = %from, frame = ?other, "unexpected frame at the witness");
            None
        }
    }
}

fn read_grant(path: &Path) -> Result<(u64, String), String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (epoch, node) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            let epoch =
                epoch.parse().map_err(|_| format!("{}: not an epoch: {text:?}", path.display()))?;
            Ok((epoch, node.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, String::new())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the grant to a new file, syncs it, renames it over the old one, syncs the directory.
fn write_grant(path: &Path, epoch: u64, node: &str) -> std::io::Result<()> {
    let fresh = path.with_extension("new");
    let mut file = std::fs::File::create(&fresh)?;
    std::io::Write::write_all(&mut file, format!("{epoch} {node}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A data node's connection to the witness.
pub struct WitnessClient {
    address: String,
    connector: TlsConnector,
    /// How long one request may take: the monitor keeps it under a heartbeat, so that a slow
    /// witness never delays its lease check.
    patience: Duration,
    stream: Option<BufStream<tokio_rustls::client::TlsStream<TcpStream>>>,
}

impl WitnessClient {
    pub fn new(address: String, connector: TlsConnector, patience: Duration) -> WitnessClient {
        WitnessClient { address, connector, patience, stream: None }
    }

    /// One request, one answer, over the kept connection (re-opened when it failed).
    pub async fn ask(&mut self, request: &Frame) -> Result<Frame, String> {
        let result = tokio::time::timeout(self.patience, self.exchange(request)).await;
        let answer = match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the witness did not answer in time".into()),
        };
        if answer.is_err() {
            self.stream = None;
        }
        answer
    }

    async fn exchange(&mut self, request: &Frame) -> Result<Frame, String> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(&self.address)
                .await
                .map_err(|e| format!("connect to the witness: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(PEER_NAME).map_err(|e| e.to_string())?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with the witness: {e}"))?;
            self.stream = Some(BufStream::new(tls));
        }
        let Some(stream) = self.stream.as_mut() else { return Err("no connection".into()) };
        frame::write(stream, request).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        frame::read(stream).await.map_err(|e| e.to_string())
    }
}

/// One request to the witness at `address`, on a new connection (for the rare requests:
/// claims, and a switchover's word that the primary stopped serving).
pub async fn ask_once(
    address: &str,
    connector: &TlsConnector,
    request: &Frame,
) -> Result<Frame, String> {
    WitnessClient::new(address.to_string(), connector.clone(), IO_TIMEOUT).ask(request).await
}

/// Asks the witness at `address` for `epoch`.
pub async fn claim(
    address: &str,
    connector: &TlsConnector,
    node: &str,
    epoch: u64,
    force: bool,
    failover_timeout: Duration,
) -> Result<(bool, String), String> {
    let request = Frame::Claim {
        node: node.to_string(),
        epoch,
        force,
        failover_timeout_ms: u64::try_from(failover_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    match ask_once(address, connector, &request).await? {
        Frame::Verdict { granted, reason, .. } => Ok((granted, reason)),
        other => Err(format!("unexpected answer from the witness: {other:?}")),
    }
}
