//! Where a recipient's mail goes: its route ([[route]], exact domain then "*"), and the hosts
//! to try for it, found in DNS (MX by preference, then the addresses of each) or given as
//! `host:port`.

use std::fmt;
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

impl Target {
    /// The name a report gives it: the domain, or the fixed host.
    pub fn name(&self) -> &str {
        match self {
            Target::Mx(domain) => domain,
            Target::Host { host, .. } => host,
        }
    }
}

/// The MX hosts of `domain` to try, in order, from its MX records (preference, exchange):
/// lowest preference first, hosts of equal preference in the random order `rng` draws (RFC 5321
/// section 5.1, so that they share the load), names without their final dot; empty when there
/// are no records (the domain itself is then the mail host). A null MX (RFC 7505: "." alone)
/// refuses mail.
fn mx_order(
    domain: &str,
    mut exchanges: Vec<(u16, String)>,
    rng: &mut fastrand::Rng,
) -> Result<Vec<String>, Outcome> {
    if exchanges.iter().any(|(_, exchange)| exchange == ".") {
        return Err(Outcome::permanent([5, 1, 10], format!("{domain} accepts no mail (null MX)")));
    }
    exchanges.sort_by_key(|(preference, _)| *preference);
    for equal in exchanges.chunk_by_mut(|a, b| a.0 == b.0) {
        rng.shuffle(equal);
    }
    Ok(exchanges
        .into_iter()
        .map(|(_, exchange)| exchange.trim_end_matches('.').to_string())
        .collect())
}

/// `hops` without relayd itself: the list ends before the first host with an address relayd
/// listens on (`listen`), so that relayd never sends mail to itself, nor to a host it prefers
/// less than itself (as Postfix does with the MX hosts after its own). When that leaves nothing
/// to try, the mail loops back: a permanent failure (5.4.6), not a delivery in circles.
pub fn without_self(
    target: &Target,
    mut hops: Vec<Hop>,
    listen: &[SocketAddr],
) -> Result<Vec<Hop>, Outcome> {
    let Some(own) = hops.iter().position(|hop| hop.addrs.iter().any(|addr| is_own(*addr, listen)))
    else {
        return Ok(hops);
    };
    hops.truncate(own);
    if hops.is_empty() {
        return Err(loops_back(target.name()));
    }
    Ok(hops)
}

/// The failure of mail for `name` whose next hop is relayd itself (Postfix's words).
pub fn loops_back(name: &str) -> Outcome {
    Outcome::permanent([5, 4, 6], format!("mail for {name} loops back to myself"))
}

/// Whether `addr` reaches one of relayd's own listeners: the same address and port, or the port
/// of a wildcard listener (0.0.0.0, ::) at a loopback or wildcard address. (A wildcard listener
/// also takes the host's other addresses, which relayd does not enumerate: the next hop's
/// greeting still names relayd there, see `client::connect`.)
fn is_own(addr: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|own| {
        own.port() == addr.port()
            && (own.ip() == addr.ip()
                || (own.ip().is_unspecified()
                    && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    })
}

/// Why the delivery DNS resolver could not be made.
#[derive(Debug)]
pub enum ResolverError {
    /// /etc/resolv.conf (no name servers configured) could not be read.
    SystemConfig(hickory_resolver::net::NetError),
    Build(hickory_resolver::net::NetError),
}

impl fmt::Display for ResolverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolverError::SystemConfig(e) => {
                write!(f, "reading the system's DNS configuration: {e}")
            }
            ResolverError::Build(e) => write!(f, "building the DNS resolver: {e}"),
        }
    }
}

impl std::error::Error for ResolverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolverError::SystemConfig(e) | ResolverError::Build(e) => Some(e),
        }
    }
}

/// DNS for delivery.
pub struct Resolver {
    dns: TokioResolver,
}

impl Resolver {
    /// The system's resolver, or the given name servers.
    pub fn new(servers: &[SocketAddr]) -> Result<Resolver, ResolverError> {
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(ResolverError::SystemConfig)?
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
        let dns = builder.build().map_err(ResolverError::Build)?;
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
        let exchanges = match self.dns.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) if e.is_nx_domain() => {
                let text = format!("Host or domain name not found: {domain}");
                return Err(Outcome::permanent([5, 1, 2], text));
            }
            // No MX records: the domain itself is the mail host (RFC 5321 section 5.1).
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(Outcome::temporary(
                    [4, 4, 3],
                    format!("MX lookup for {domain} failed: {e}"),
                ));
            }
        };
        let hosts = mx_order(domain, exchanges, &mut fastrand::Rng::new())?;
        if hosts.is_empty() {
            return Ok(vec![self.hop(domain, 25).await?]);
        }
        let mut hops = Vec::new();
        let mut last_error = None;
        for host in hosts {
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
                    Err(Outcome::temporary([4, 4, 4], format!("no address for host {host}")))
                } else {
                    Ok(Hop { name: host.to_string(), addrs })
                }
            }
            Err(e) if e.is_nx_domain() => {
                Err(Outcome::permanent([5, 4, 4], format!("Host or domain name not found: {host}")))
            }
            Err(e) => {
                Err(Outcome::temporary([4, 4, 3], format!("address lookup for {host} failed: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Config {
        let text = format!(
            "[node]\nname = \"n\"\nrole = \"primary\"\ndata_dir = \"/tmp/d\"\n\
             [smtp]\nlisten = [\"127.0.0.1:2525\"]\nhostname = \"mx.test\"\n{routes}"
        );
        Config::parse(&text, "t.toml".into()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_recipient_takes_its_domains_route_else_the_default() {
        let config = config(
            "[[route]]\ndomain = \"Fixed.Example\"\nnext_hop = \"10.0.0.5:2525\"\ntls = \"none\"\n\
             [[route]]\ndomain = \"mx.example\"\nnext_hop = \"mx\"\ntls = \"required\"\n\
             [[route]]\ndomain = \"*\"\nnext_hop = \"smarthost.test:587\"\n",
        );
        let fixed = Destination {
            target: Target::Host { host: "10.0.0.5".into(), port: 2525 },
            tls: RouteTls::None,
        };
        assert_eq!(destination(&config, "u@fixed.example"), fixed);
        // Domains match without regard to case or a trailing dot.
        assert_eq!(destination(&config, "u@FIXED.example."), fixed);
        assert_eq!(
            destination(&config, "u@MX.Example"),
            Destination { target: Target::Mx("mx.example".into()), tls: RouteTls::Required }
        );
        // A subdomain is not the domain: the default route.
        let default = Destination {
            target: Target::Host { host: "smarthost.test".into(), port: 587 },
            tls: RouteTls::Opportunistic,
        };
        assert_eq!(destination(&config, "u@sub.fixed.example"), default);
        assert_eq!(destination(&config, "u@other.test"), default);
    }

    #[test]
    fn with_no_star_route_the_appended_default_sends_to_each_domains_mx() {
        let config = config("[[route]]\ndomain = \"a.example\"\nnext_hop = \"10.0.0.5:25\"\n");
        assert_eq!(
            destination(&config, "u@Other.Test"),
            Destination { target: Target::Mx("other.test".into()), tls: RouteTls::Opportunistic }
        );
    }

    #[test]
    fn mx_hosts_are_tried_by_preference_and_equal_ones_in_random_order() {
        let records = vec![
            (20, "mx2.example.".to_string()),
            (10, "mx1.example.".to_string()),
            (20, "mx0.example.".to_string()),
            (20, "mx3.example.".to_string()),
            (30, "backup.example".to_string()),
        ];
        let mut orders = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let order = mx_order("example", records.clone(), &mut fastrand::Rng::with_seed(seed))
                .expect("hosts");
            // Preference first, whatever the draw.
            assert_eq!(order[0], "mx1.example", "seed {seed}: {order:?}");
            assert_eq!(order[4], "backup.example", "seed {seed}: {order:?}");
            let mut middle = order[1..4].to_vec();
            orders.insert(middle.clone());
            middle.sort();
            assert_eq!(middle, ["mx0.example", "mx2.example", "mx3.example"], "seed {seed}");
            // The order is the draw's: the same seed, the same order.
            let again = mx_order("example", records.clone(), &mut fastrand::Rng::with_seed(seed));
            assert_eq!(again.expect("hosts"), order);
        }
        // Each of the 3! orders of the equal hosts comes up.
        assert_eq!(orders.len(), 6, "{orders:?}");
        // No records: the domain itself, which the caller looks up.
        let none = mx_order("example", Vec::new(), &mut fastrand::Rng::with_seed(1));
        assert_eq!(none.expect("no hosts"), Vec::<String>::new());
    }

    fn hop(name: &str, addrs: &[&str]) -> Hop {
        Hop {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().expect("address")).collect(),
        }
    }

    fn names(hops: &[Hop]) -> Vec<&str> {
        hops.iter().map(|hop| hop.name.as_str()).collect()
    }

    #[test]
    fn relayd_never_sends_to_itself_nor_to_hosts_after_itself() {
        let target = Target::Mx("loop.example".into());
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:2525".parse().expect("address")];
        let hops = vec![
            hop("mx1", &["127.0.0.2:2525"]),
            hop("mx2", &["192.0.2.9:25", "127.0.0.1:2525"]),
            hop("mx3", &["127.0.0.3:25"]),
        ];
        // mx2 has our address among its own: it is us, and mx3 is less preferred than us.
        let kept = without_self(&target, hops.clone(), &listen).expect("mx1 is left");
        assert_eq!(names(&kept), ["mx1"]);
        let Err(outcome) = without_self(&target, hops[1..].to_vec(), &listen) else {
            panic!("relayd itself is the best host")
        };
        assert!(matches!(outcome, Outcome::Permanent { .. }), "{outcome:?}");
        assert_eq!(outcome.reply().to_string(), "5.4.6 mail for loop.example loops back to myself");
        // Another port of the same address is someone else.
        let other = vec![hop("mx1", &["127.0.0.1:25"])];
        assert_eq!(names(&without_self(&target, other, &listen).expect("kept")), ["mx1"]);
    }

    #[test]
    fn a_wildcard_listener_is_reached_at_loopback_on_its_port() {
        let wildcard: Vec<SocketAddr> =
            vec!["0.0.0.0:25".parse().expect("v4"), "[::]:2525".parse().expect("v6")];
        let own = |addr: &str| is_own(addr.parse().expect("address"), &wildcard);
        assert!(own("127.0.0.1:25"));
        assert!(own("127.8.9.10:25"));
        assert!(own("[::1]:2525"));
        assert!(own("0.0.0.0:25"));
        assert!(!own("127.0.0.1:26"));
        assert!(!own("192.0.2.1:2526"));
        // A listener on one address is not reached at another.
        assert!(!is_own(
            "127.0.0.2:25".parse().expect("address"),
            &["127.0.0.1:25".parse().expect("address")]
        ));
    }

    #[test]
    fn a_null_mx_refuses_mail_for_good() {
        let null = vec![(0, ".".to_string())];
        let Err(outcome) = mx_order("nomail.example", null, &mut fastrand::Rng::with_seed(1))
        else {
            panic!("a null MX gave hosts")
        };
        assert!(matches!(outcome, Outcome::Permanent { relay: None, .. }), "{outcome:?}");
        assert_eq!(outcome.reply().to_string(), "5.1.10 nomail.example accepts no mail (null MX)");
    }
}
