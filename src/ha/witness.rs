//! The witness: a third voter that holds no mail. This is its server (TLS, frames, the grant
//! file); what it answers is decided by [`super::grants`], the same code the simulation runs:
//! each new epoch is granted at most once — persisted before the answer — and only when the
//! grantee of the current epoch has not been heard serving for the claimant's
//! `failover_timeout` (unless an operator forces it). It also remembers when it last heard each
//! data node and what that node said, for its admin endpoint ([`WitnessView`]). The data nodes'
//! client for it is here too.

use std::collections::BTreeMap;
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

/// The grant file in `data_dir`: one line, `EPOCH NODE` (format 1, relayd 0.1.0's). Its name is
/// its version: a later format takes another name (and reads this one), so that an older
/// witness never misreads a newer file.
const GRANTS_FILE: &str = "witness-grant";
/// The witness's own patience with a connection that says nothing.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The witness, bound: its listener and its state.
pub struct Witness {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<Server>>,
}

impl Witness {
    /// Reads the grant file and binds `[cluster].listen`.
    pub async fn bind(config: &Config) -> Result<Witness, WitnessServeError> {
        let Some(cluster) = &config.cluster else {
            return Err(WitnessServeError::NoCluster);
        };
        let link = link::load(config, cluster).map_err(WitnessServeError::Config)?;
        crate::spool::create_dir_durable(&config.node.data_dir).map_err(|source| {
            WitnessServeError::DataDir { path: config.node.data_dir.clone(), source }
        })?;
        let grants = config.node.data_dir.join(GRANTS_FILE);
        let (granted, granted_to) = read_grant(&grants)?;
        let state = Arc::new(Mutex::new(Server {
            grants: Grants::new(granted, granted_to, 0),
            file: grants,
            origin: Instant::now(),
            granted_since_start: 0,
            heard: BTreeMap::new(),
        }));
        let listener = TcpListener::bind(cluster.listen)
            .await
            .map_err(|source| WitnessServeError::Listen { address: cluster.listen, source })?;
        tracing::info!(address = %cluster.listen, granted, "witness listening");
        Ok(Witness { listener, acceptor: link.acceptor, state })
    }

    /// What the admin endpoint reads.
    pub fn view(&self) -> WitnessView {
        WitnessView(self.state.clone())
    }

    /// Answers the data nodes until the task is dropped.
    pub async fn serve(self) {
        loop {
            let Ok((tcp, address)) = self.listener.accept().await else { continue };
            let (acceptor, witness) = (self.acceptor.clone(), self.state.clone());
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
}

/// The witness's state and where its grant is persisted.
struct Server {
    grants: Grants,
    file: PathBuf,
    /// Decision time is milliseconds since then.
    origin: Instant,
    /// First grants made since this process started (a repeated claim's answer is not one).
    granted_since_start: u64,
    /// What each data node said last, by the node name its requests carry.
    heard: BTreeMap<String, Heard>,
}

/// The most data nodes the witness remembers: a cluster has two; names beyond that (a renamed
/// node, a misconfigured one) push out the one heard longest ago, so that memory stays bounded.
const MAX_HEARD: usize = 8;

/// A data node's last request.
#[derive(Clone, Debug)]
struct Heard {
    at: Instant,
    /// What its last ping said (a claim says none of it).
    role: String,
    epoch: u64,
    serving: bool,
}

impl Server {
    /// Records a request of `node`'s: a ping says what it is; a claim only that it is alive.
    fn hear(&mut self, node: &str, ping: Option<(&str, u64, bool)>) {
        let at = Instant::now();
        if let Some(heard) = self.heard.get_mut(node) {
            heard.at = at;
            if let Some((role, epoch, serving)) = ping {
                (heard.role, heard.epoch, heard.serving) = (role.to_string(), epoch, serving);
            }
            return;
        }
        if self.heard.len() >= MAX_HEARD
            && let Some(oldest) =
                self.heard.iter().min_by_key(|(_, heard)| heard.at).map(|(name, _)| name.clone())
        {
            self.heard.remove(&oldest);
        }
        let (role, epoch, serving) = ping.unwrap_or((Role::Standby.as_str(), 0, false));
        let heard = Heard { at, role: role.to_string(), epoch, serving };
        self.heard.insert(node.to_string(), heard);
    }
}

/// A handle on a running witness's state, for the admin endpoint (which reads it; only the
/// witness server changes it).
#[derive(Clone)]
pub struct WitnessView(Arc<Mutex<Server>>);

/// What a witness knows, read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessReport {
    /// The highest epoch granted (or taken in from a primary's ping), 0 for none.
    pub granted: u64,
    /// Its grantee ("" for none).
    pub granted_to: String,
    /// First grants since this witness started.
    pub grants_since_start: u64,
    /// The data nodes heard since it started, by name.
    pub nodes: Vec<NodeHeard>,
}

/// A data node as the witness last heard it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeHeard {
    pub node: String,
    /// Since its last ping or claim.
    pub silent_for: Duration,
    /// The role, epoch and serving state its last ping gave ("standby", 0, false before one).
    pub role: String,
    pub epoch: u64,
    pub serving: bool,
}

impl WitnessView {
    pub fn report(&self) -> WitnessReport {
        let server = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (granted, granted_to) = server.grants.granted();
        let nodes = server
            .heard
            .iter()
            .map(|(node, heard)| NodeHeard {
                node: node.clone(),
                silent_for: heard.at.elapsed(),
                role: heard.role.clone(),
                epoch: heard.epoch,
                serving: heard.serving,
            })
            .collect();
        WitnessReport {
            granted,
            granted_to: granted_to.to_string(),
            grants_since_start: server.granted_since_start,
            nodes,
        }
    }
}

fn answer(witness: &Mutex<Server>, request: Frame, from: SocketAddr) -> Option<Frame> {
    // Held across the grant's fsync on purpose: a grant must be on disk before the next claim
    // is judged. Grants are rare (one per epoch); pings and refusals write nothing.
    let mut server = witness.lock().unwrap_or_else(PoisonError::into_inner);
    let now = u64::try_from(server.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (request, claimant) = match request {
        Frame::Ping { node, role, epoch, serving } => {
            server.hear(&node, Some((&role, epoch, serving)));
            (Request::Ping { node, primary: role == Role::Primary.as_str(), epoch, serving }, None)
        }
        Frame::Claim { node, epoch, force, failover_timeout_ms } => {
            server.hear(&node, None);
            let claim =
                Request::Claim { node: node.clone(), epoch, force, window: failover_timeout_ms };
            (claim, Some((node, force)))
        }
        other => {
            tracing::warn!(peer = %from, frame = ?other, "unexpected frame at the witness");
            return None;
        }
    };
    let Server { grants, file, granted_since_start, .. } = &mut *server;
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
                *granted_since_start += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server {
            grants: Grants::new(0, String::new(), 0),
            file: PathBuf::from("unused"),
            origin: Instant::now(),
            granted_since_start: 0,
            heard: BTreeMap::new(),
        }
    }

    #[test]
    fn a_claim_keeps_what_the_last_ping_said_and_a_first_claim_is_a_standby() {
        let mut server = server();
        server.hear("a", Some(("primary", 3, true)));
        server.hear("a", None);
        server.hear("b", None);
        let report = WitnessView(Arc::new(Mutex::new(server))).report();
        let said: Vec<_> = report
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.role.as_str(), n.epoch, n.serving))
            .collect();
        assert_eq!(said, [("a", "primary", 3, true), ("b", "standby", 0, false)]);
    }

    #[test]
    fn the_witness_remembers_a_bounded_number_of_names_dropping_the_one_heard_longest_ago() {
        let mut server = server();
        for i in 0..MAX_HEARD {
            server.hear(&format!("n{i}"), None);
        }
        // n0 is heard again, so n1 is now the one heard longest ago.
        server.hear("n0", Some(("standby", 1, false)));
        server.hear("newcomer", None);
        assert_eq!(server.heard.len(), MAX_HEARD);
        assert!(server.heard.contains_key("n0") && server.heard.contains_key("newcomer"));
        assert!(!server.heard.contains_key("n1"));
    }

    /// The golden grant file: relayd 0.1.0's witness wrote it (tests/fixtures/v0.1.0, after a
    /// switchover granted epoch 2 to b), and it reads as that grant.
    #[test]
    fn the_grant_file_relayd_0_1_0_wrote_reads_as_its_grant() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0/witness-grant");
        assert_eq!(read_grant(&path).expect("0.1.0's grant file"), (2, "b".to_string()));
    }
}
