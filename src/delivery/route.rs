//! Where a recipient's mail goes: its route ([[route]], exact domain then "*"), and the hosts
//! to try for it, found in DNS (MX by preference, then the addresses of each) or given as
//! `host:port`.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::outcome::Outcome;
use crate::config::{Config, NextHop, RouteTls};

/// One destination: the recipients that share it are delivered in one transaction, over
/// connections that are reused and counted against `concurrency_per_host`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub target: Target,
    pub tls: RouteTls,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The MX hosts of this domain (lower case).
    Mx(String),
    /// A fixed next hop.
    Host { host: String, port: u16 },
}

/// A host to try, with its addresses in the order to try them.
#[derive(Clone, Debug)]
pub struct Hop {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
}

/// The destination of a recipient address, from the config's routes.
pub fn destination(config: &Config, recipient: &str) -> Destination {
    let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d).to_lowercase();
    match config.route_for(&domain) {
        Some(route) => {
            let target = match &route.next_hop {
                NextHop::Mx => Target::Mx(domain),
                NextHop::Host { host, port } => Target::Host { host: host.clone(), port: *port },
            };
            Destination { target, tls: route.tls }
        }
        // The config always has a "*" route; this is only a safe answer if it did not.
        None => Destination { target: Target::Mx(domain), tls: RouteTls::Opportunistic },
    }
}

/// DNS for delivery.
pub struct Resolver {
    dns: TokioResolver,
}

impl Resolver {
    /// The system's resolver, or the given name servers.
    pub fn new(servers: &[SocketAddr]) -> Result<Resolver, String> {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS configuration: {e}"))?
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let dns = builder.build().map_err(|e| format!("building the DNS resolver: {e}"))?;
        Ok(Resolver { dns })
    }

    /// The hosts to try for `target`, in order. A failure is the outcome for every recipient.
    pub async fn hops(&self, target: &Target) -> Result<Vec<Hop>, Outcome> {
        match target {
            Target::Host { host, port } => Ok(vec![self.hop(host, *port).await?]),
            Target::Mx(domain) => self.mx_hops(domain).await,
        }
    }

    async fn mx_hops(&self, domain: &str) -> Result<Vec<Hop>, Outcome> {
        let fqdn = format!("{domain}.");
        let mut exchanges = match self.dns.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) if e.is_nx_domain() => {
                return Err(Outcome::permanent(format!(
                    "5.1.2 Host or domain name not found: {domain}"
                )));
            }
            // No MX records: the domain itself is the mail host (RFC 5321 section 5.1).
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(Outcome::temporary(format!(
                    "4.4.3 MX lookup for {domain} failed: {e}"
                )));
            }
        };
        if exchanges.is_empty() {
            return Ok(vec![self.hop(domain, 25).await?]);
        }
        // RFC 7505: a single MX of "." says the domain accepts no mail.
        if exchanges.iter().any(|(_, exchange)| exchange == ".") {
            return Err(Outcome::permanent(format!("5.1.10 {domain} accepts no mail (null MX)")));
        }
        exchanges.sort();
        let mut hops = Vec::new();
        let mut last_error = None;
        for (_, exchange) in exchanges {
            let host = exchange.trim_end_matches('.').to_string();
            match self.hop(&host, 25).await {
                Ok(hop) => hops.push(hop),
                Err(outcome) => last_error = Some(outcome),
            }
        }
        match (hops.is_empty(), last_error) {
            (true, Some(outcome)) => Err(outcome),
            _ => Ok(hops),
        }
    }

    /// The addresses of `host` (or `host` itself when it is an IP address).
    async fn hop(&self, host: &str, port: u16) -> Result<Hop, Outcome> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Hop { name: host.to_string(), addrs: vec![SocketAddr::new(ip, port)] });
        }
        match self.dns.lookup_ip(format!("{host}.").as_str()).await {
            Ok(ips) => {
                let addrs: Vec<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if addrs.is_empty() {
                    Err(Outcome::temporary(format!("4.4.4 no address for host {host}")))
                } else {
                    Ok(Hop { name: host.to_string(), addrs })
                }
            }
            Err(e) if e.is_nx_domain() => {
                Err(Outcome::permanent(format!("5.4.4 Host or domain name not found: {host}")))
            }
            Err(e) => {
                Err(Outcome::temporary(format!("4.4.3 address lookup for {host} failed: {e}")))
            }
        }
    }
}
