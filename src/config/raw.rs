//! The file as serde reads it: every key optional, unknown keys rejected. `RawConfig::resolve`
//! fills in the defaults and builds the public types; this is the one place defaults live.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::error::Invalid;
use super::values::{Dur, FilePath, Listen, Net, PeerAddr, RelayDomain, RouteDomain, Size};
use super::{
    AdminConfig, ClusterConfig, Config, DeliveryConfig, LogConfig, LogFormat, NextHop, NodeConfig,
    RecipientCheck, RecipientEntry, RelayConfig, ReplicationMode, Role, RouteConfig, RouteTls,
    SmtpConfig, StandbyLoss, VerifyConfig,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    node: RawNode,
    smtp: RawSmtp,
    relay: RawRelay,
    route: Option<Vec<RawRoute>>,
    delivery: RawDelivery,
    cluster: Option<RawCluster>,
    admin: Option<RawAdmin>,
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawNode {
    name: Option<String>,
    role: Option<Role>,
    data_dir: Option<FilePath>,
    drain_timeout: Option<Dur>,
    min_free_space: Option<Size>,
    log_retention_bytes: Option<Size>,
    log_retention_age: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    listen: Option<Vec<Listen>>,
    hostname: Option<String>,
    max_message_size: Option<Size>,
    max_recipients: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    command_timeout: Option<Dur>,
    data_timeout: Option<Dur>,
    min_data_rate: Option<Size>,
    max_bad_commands: Option<u32>,
    max_junk_commands: Option<u32>,
    max_received_headers: Option<u32>,
    tls_cert: Option<FilePath>,
    tls_key: Option<FilePath>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRelay {
    domains: Option<Vec<RelayDomain>>,
    trusted_networks: Option<Vec<Net>>,
    domain: Option<Vec<RawRecipientCheck>>,
    verify_timeout: Option<Dur>,
    verify_positive_expire: Option<Dur>,
    verify_negative_expire: Option<Dur>,
    verify_cache_size: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRecipientCheck {
    name: Option<RelayDomain>,
    recipients: Option<Vec<RecipientEntry>>,
    recipients_file: Option<FilePath>,
    verify: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRoute {
    domain: Option<RouteDomain>,
    next_hop: Option<NextHop>,
    tls: Option<RouteTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    retry: Option<Vec<Dur>>,
    max_queue_lifetime: Option<Dur>,
    delay_warning_time: Option<Dur>,
    concurrency_per_host: Option<usize>,
    resolvers: Option<Vec<Listen>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    listen: Option<Listen>,
    peer: Option<PeerAddr>,
    witness: Option<PeerAddr>,
    replication: Option<ReplicationMode>,
    sync_timeout: Option<Dur>,
    on_standby_loss: Option<StandbyLoss>,
    heartbeat_interval: Option<Dur>,
    failover_timeout: Option<Dur>,
    lease: Option<Dur>,
    auto_failover: Option<bool>,
    allow_failover_without_witness: Option<bool>,
    tls_cert: Option<FilePath>,
    tls_key: Option<FilePath>,
    tls_ca: Option<FilePath>,
    on_promote: Option<FilePath>,
    on_demote: Option<FilePath>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<Listen>,
    token_file: Option<FilePath>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

// Evaluated at compile time, so a bad prefix length would not build.
const LOOPBACK_V4: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8));
const LOOPBACK_V6: IpNet = IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128));

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn dur(d: Option<Dur>, default: Duration) -> Duration {
    d.map_or(default, |Dur(d)| d)
}

fn path(p: Option<FilePath>) -> Option<PathBuf> {
    p.map(|FilePath(p)| p)
}

/// The system's host name, the default for node.name and smtp.hostname.
fn system_hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

impl RawConfig {
    /// Applies the defaults and builds the public config. Checks only what the types need
    /// (required keys); the rules between values are in `validate`.
    pub(super) fn resolve(self, source: String) -> Result<Config, Invalid> {
        let RawConfig { node, smtp, relay, route, delivery, cluster, admin, log } = self;

        let node = NodeConfig {
            name: node.name.unwrap_or_else(system_hostname),
            role: node.role.unwrap_or(Role::Primary),
            data_dir: path(node.data_dir).unwrap_or_else(|| PathBuf::from("./relayd-data")),
            drain_timeout: dur(node.drain_timeout, secs(30)),
            min_free_space: node.min_free_space.map_or(64 * 1024 * 1024, |Size(s)| s),
            log_retention_bytes: node.log_retention_bytes.map_or(512 * 1024 * 1024, |Size(s)| s),
            log_retention_age: dur(node.log_retention_age, secs(24 * 3600)),
        };

        let smtp = SmtpConfig {
            listen: smtp.listen.map_or_else(
                || vec![addr([127, 0, 0, 1], 2525)],
                |l| l.into_iter().map(|Listen(a)| a).collect(),
            ),
            hostname: smtp.hostname.unwrap_or_else(system_hostname),
            max_message_size: smtp.max_message_size.map_or(25 * 1024 * 1024, |Size(s)| s),
            max_recipients: smtp.max_recipients.unwrap_or(100),
            max_connections: smtp.max_connections.unwrap_or(1000),
            max_connections_per_ip: smtp.max_connections_per_ip.unwrap_or(20),
            command_timeout: dur(smtp.command_timeout, secs(5 * MINUTE)),
            data_timeout: dur(smtp.data_timeout, secs(5 * MINUTE)),
            min_data_rate: smtp.min_data_rate.map_or(500, |Size(s)| s),
            max_bad_commands: smtp.max_bad_commands.unwrap_or(20),
            max_junk_commands: smtp.max_junk_commands.unwrap_or(100),
            max_received_headers: smtp.max_received_headers.unwrap_or(50),
            tls_cert: path(smtp.tls_cert),
            tls_key: path(smtp.tls_key),
        };

        let mut recipient_checks = Vec::new();
        for (i, table) in relay.domain.unwrap_or_default().into_iter().enumerate() {
            let Some(RelayDomain(name)) = table.name else {
                return Err(Invalid::new(
                    format!("relay.domain[{}].name", i + 1),
                    "missing: every [[relay.domain]] names the relay domain it checks",
                ));
            };
            recipient_checks.push(RecipientCheck {
                name,
                recipients: table.recipients.unwrap_or_default(),
                recipients_file: path(table.recipients_file),
                verify: table.verify.unwrap_or(false),
            });
        }
        let mut domains: Vec<String> = relay
            .domains
            .map(|d| d.into_iter().map(|RelayDomain(d)| d).collect())
            .unwrap_or_default();
        domains.extend(recipient_checks.iter().map(|c| c.name.clone()));
        let relay = RelayConfig {
            domains,
            trusted_networks: relay.trusted_networks.map_or_else(
                || vec![LOOPBACK_V4, LOOPBACK_V6],
                |n| n.into_iter().map(|Net(n)| n).collect(),
            ),
            recipient_checks,
            // A few seconds: the client's RCPT waits this long (RFC 5321 gives it 5 minutes,
            // but a sender's whole transaction should not hang on one slow customer server).
            // A week for a valid address and an hour for an unknown one: shorter than
            // Postfix's 31 and 3 days, because relayd has no refresh probes (Postfix asks
            // again after 7 days and 3 hours while still answering from its cache), so these
            // are how soon a mailbox deleted or created at the customer is noticed.
            verify: VerifyConfig {
                timeout: dur(relay.verify_timeout, secs(5)),
                positive_expire: dur(relay.verify_positive_expire, secs(7 * DAY)),
                negative_expire: dur(relay.verify_negative_expire, secs(HOUR)),
                cache_size: relay.verify_cache_size.unwrap_or(100_000),
            },
        };

        let mut routes = Vec::new();
        for (i, r) in route.unwrap_or_default().into_iter().enumerate() {
            let Some(RouteDomain(domain)) = r.domain else {
                return Err(Invalid::new(
                    format!("route[{}].domain", i + 1),
                    "missing: every [[route]] names a domain, or \"*\" for the default route",
                ));
            };
            routes.push(RouteConfig {
                domain,
                next_hop: r.next_hop.unwrap_or(NextHop::Mx),
                tls: r.tls.unwrap_or(RouteTls::Opportunistic),
            });
        }
        // Domains without a route of their own go by MX lookup, unless a "*" route says else.
        if !routes.iter().any(|r| r.domain == "*") {
            routes.push(RouteConfig {
                domain: "*".to_string(),
                next_hop: NextHop::Mx,
                tls: RouteTls::Opportunistic,
            });
        }

        let delivery = DeliveryConfig {
            retry: delivery.retry.map_or_else(
                || [MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 4 * HOUR].map(secs).to_vec(),
                |r| r.into_iter().map(|Dur(d)| d).collect(),
            ),
            max_queue_lifetime: dur(delivery.max_queue_lifetime, secs(5 * DAY)),
            delay_warning_time: dur(delivery.delay_warning_time, secs(4 * HOUR)),
            concurrency_per_host: delivery.concurrency_per_host.unwrap_or(10),
            resolvers: delivery
                .resolvers
                .unwrap_or_default()
                .into_iter()
                .map(|Listen(a)| a)
                .collect(),
        };

        let cluster = match cluster {
            None => None,
            Some(c) => {
                let required = |p: Option<FilePath>, key: &str| {
                    path(p).ok_or_else(|| {
                        Invalid::new(
                            format!("cluster.{key}"),
                            "missing: the cluster link uses mutual TLS, so [cluster] needs \
                             tls_cert, tls_key and tls_ca (see `relayd certs init`)",
                        )
                    })
                };
                Some(ClusterConfig {
                    listen: c.listen.map_or(addr([0, 0, 0, 0], 7400), |Listen(a)| a),
                    peer: c.peer.map(|PeerAddr(p)| p),
                    witness: c.witness.map(|PeerAddr(w)| w),
                    replication: c.replication.unwrap_or(ReplicationMode::Sync),
                    sync_timeout: dur(c.sync_timeout, secs(2)),
                    on_standby_loss: c.on_standby_loss.unwrap_or(StandbyLoss::Degrade),
                    heartbeat_interval: dur(c.heartbeat_interval, Duration::from_millis(200)),
                    failover_timeout: dur(c.failover_timeout, Duration::from_millis(2500)),
                    lease: dur(c.lease, secs(2)),
                    auto_failover: c.auto_failover.unwrap_or(true),
                    allow_failover_without_witness: c
                        .allow_failover_without_witness
                        .unwrap_or(false),
                    tls_cert: required(c.tls_cert, "tls_cert")?,
                    tls_key: required(c.tls_key, "tls_key")?,
                    tls_ca: required(c.tls_ca, "tls_ca")?,
                    on_promote: path(c.on_promote),
                    on_demote: path(c.on_demote),
                })
            }
        };

        let section = admin.is_some();
        let admin = admin.unwrap_or_default();
        let admin = AdminConfig {
            listen: admin.listen.map_or(addr([127, 0, 0, 1], 8025), |Listen(a)| a),
            token_file: path(admin.token_file),
            section,
        };

        let log = LogConfig {
            format: log.format.unwrap_or(LogFormat::Text),
            level: log.level.unwrap_or_else(|| "info".to_string()),
        };

        Ok(Config {
            source,
            node,
            smtp,
            relay,
            routes,
            delivery,
            cluster,
            admin,
            log,
            role_override: None,
        })
    }
}
