//! The witness: a third voter that holds no mail. This is its server (TLS, frames, the grant
//! file); what it answers is decided by [`super::grants`], the same code the simulation runs:
//! each new epoch is granted at most once — persisted before the answer — and only when the
//! grantee of the current epoch has not been heard serving for the claimant's
//! `failover_timeout` (unless an operator forces it). The data nodes' client for it is here too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::error::{WitnessError, WitnessServeError};
use super::grants::{Answer, GRANTED, Grants, Request};
use crate::config::{Config, Role};
use crate::replication::frame::{self, Frame};
use crate::replication::link::{self, PEER_NAME};

const GRANTS_FILE: &str = "witness-grant";
/// The witness's own patience with a connection that says nothing.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a witness until the process stops.
pub async fn serve(config: &Config) -> Result<(), WitnessServeError> {
    let Some(cluster) = &config.cluster else {
        return Err(WitnessServeError::NoCluster);
    };
    let link = link::load(config, cluster).map_err(WitnessServeError::Config)?;
    crate::spool::create_dir_durable(&config.node.data_dir).map_err(|source| {
        WitnessServeError::DataDir { path: config.node.data_dir.clone(), source }
    })?;
    let grants = config.node.data_dir.join(GRANTS_FILE);
    let (granted, granted_to) = read_grant(&grants)?;
    let origin = Instant::now();
    let witness = Arc::new(Mutex::new(Server {
        grants: Grants::new(granted, granted_to, 0),
        file: grants,
        origin,
    }));
    let listener = TcpListener::bind(cluster.listen)
        .await
        .map_err(|source| WitnessServeError::Listen { address: cluster.listen, source })?;
    tracing::info!(address = %cluster.listen, granted, "witness listening");
    loop {
        let Ok((tcp, address)) = listener.accept().await else { continue };
        let (acceptor, witness) = (link.acceptor.clone(), witness.clone());
        tokio::spawn(async move {
            let Some(tls) = link::accept(&acceptor, tcp, address, IO_TIMEOUT).await else {
                return;
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

/// The witness's state and where its grant is persisted.
struct Server {
    grants: Grants,
    file: PathBuf,
    /// Decision time is milliseconds since then.
    origin: Instant,
}

fn answer(witness: &Mutex<Server>, request: Frame, from: SocketAddr) -> Option<Frame> {
    // Held across the grant's fsync on purpose: a grant must be on disk before the next claim
    // is judged. Grants are rare (one per epoch); pings and refusals write nothing.
    let mut server = witness.lock().unwrap_or_else(PoisonError::into_inner);
    let now = u64::try_from(server.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (request, claimant) = match request {
        Frame::Ping { node, role, epoch, serving } => {
            (Request::Ping { node, primary: role == Role::Primary.as_str(), epoch, serving }, None)
        }
        Frame::Claim { node, epoch, force, failover_timeout_ms } => {
            let claim =
                Request::Claim { node: node.clone(), epoch, force, window: failover_timeout_ms };
            (claim, Some((node, force)))
        }
        other => {
            tracing::warn!(peer = %from, frame = ?other, "unexpected frame at the witness");
            return None;
        }
    };
    let Server { grants, file, .. } = &mut *server;
    let answer = grants.answer(request, now, |epoch, node| {
        write_grant(file, epoch, node).inspect_err(
            |e| tracing::error!(error = %e, epoch, "cannot persist a grant; refusing it"),
        )
    });
    Some(match answer {
        Answer::Pong { granted, granted_to, serving } => {
            Frame::Pong { granted, granted_to, serving }
        }
        Answer::Verdict { granted, epoch, highest, reason } => {
            if let Some((node, force)) = claimant.filter(|_| granted && reason == GRANTED) {
                tracing::warn!(epoch, to = %node, force, "granted epoch");
            }
            Frame::Verdict { granted, epoch, highest, reason }
        }
    })
}

fn read_grant(path: &Path) -> Result<(u64, String), WitnessServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (epoch, node) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
            let Ok(epoch) = epoch.parse() else {
                return Err(WitnessServeError::BadGrant { path: path.to_path_buf(), text });
            };
            Ok((epoch, node.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, String::new())),
        Err(source) => Err(WitnessServeError::ReadGrant { path: path.to_path_buf(), source }),
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
    pub async fn ask(&mut self, request: &Frame) -> Result<Frame, WitnessError> {
        let result = tokio::time::timeout(self.patience, self.exchange(request)).await;
        let answer = result.unwrap_or(Err(WitnessError::TimedOut));
        if answer.is_err() {
            self.stream = None;
        }
        answer
    }

    async fn exchange(&mut self, request: &Frame) -> Result<Frame, WitnessError> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let tcp = TcpStream::connect(&self.address).await.map_err(WitnessError::Connect)?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(PEER_NAME).map_err(WitnessError::PeerName)?;
                let tls = self.connector.connect(name, tcp).await.map_err(WitnessError::Tls)?;
                self.stream.insert(BufStream::new(tls))
            }
        };
        frame::write(stream, request).await.map_err(WitnessError::Frame)?;
        stream.flush().await.map_err(WitnessError::Flush)?;
        frame::read(stream).await.map_err(WitnessError::Frame)
    }
}

/// One request to the witness at `address`, on a new connection (for the rare requests:
/// claims, and a switchover's word that the primary stopped serving).
pub async fn ask_once(
    address: &str,
    connector: &TlsConnector,
    request: &Frame,
) -> Result<Frame, WitnessError> {
    WitnessClient::new(address.to_string(), connector.clone(), IO_TIMEOUT).ask(request).await
}

/// The witness's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVerdict {
    pub granted: bool,
    /// The witness's highest grant after its answer: a refused claimant claims above it.
    pub highest: u64,
    pub reason: String,
}

/// Asks the witness at `address` for `epoch`.
pub async fn claim(
    address: &str,
    connector: &TlsConnector,
    node: &str,
    epoch: u64,
    force: bool,
    failover_timeout: Duration,
) -> Result<ClaimVerdict, WitnessError> {
    let request = Frame::Claim {
        node: node.to_string(),
        epoch,
        force,
        failover_timeout_ms: u64::try_from(failover_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    match ask_once(address, connector, &request).await? {
        Frame::Verdict { granted, highest, reason, .. } => {
            Ok(ClaimVerdict { granted, highest, reason })
        }
        other => Err(WitnessError::Unexpected(Box::new(other))),
    }
}
