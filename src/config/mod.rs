//! The configuration file: TOML, serde, unknown keys rejected.
//!
//! `Config::load` reads a file, `Config::embedded_default` parses `config/default.toml` (built
//! in), both through the same path: serde into the private raw structs of `raw.rs` (which
//! reject unknown keys and bad values, with the line from the TOML span), defaults applied in
//! `RawConfig::resolve`, then the rules between values in `validate.rs`. Every error names the
//! file, the line and the key; see `docs/configuration.md`.

mod error;
mod raw;
mod validate;
mod values;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
pub use values::ValueError;
use values::keyword_enum;

/// `Config::source` of the embedded default.
pub const EMBEDDED_SOURCE: &str = "<embedded default>";

/// The embedded default config, the one used without --config.
const EMBEDDED_TOML: &str = include_str!("../../config/default.toml");

/// A loaded and validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file path, or "<embedded default>".
    pub source: String,
    pub node: NodeConfig,
    pub smtp: SmtpConfig,
    pub relay: RelayConfig,
    /// The `[[route]]` tables in file order. When none of them is "*", a default route
    /// `"*" -> mx` (opportunistic TLS) is appended.
    pub routes: Vec<RouteConfig>,
    pub delivery: DeliveryConfig,
    /// Absent: a single node, no replication.
    pub cluster: Option<ClusterConfig>,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// The role given with `--role`, if any: it wins over the role a node persisted.
    pub role_override: Option<Role>,
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Standby,
    /// A third voter that holds no mail.
    Witness,
}

keyword_enum!(Role, "role", {
    Primary => "primary",
    Standby => "standby",
    Witness => "witness",
});

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    /// The spool and the node's persisted state.
    pub data_dir: PathBuf,
    /// On SIGTERM, how long open sessions and deliveries in flight may take to finish.
    pub drain_timeout: Duration,
    /// Bytes that must stay free on the spool's file system for a new transaction to start
    /// (452 4.3.1 below): room kept for the mail already accepted (delivery results, bounces).
    pub min_free_space: u64,
    /// The change log is kept at most this many bytes of records: beyond, the oldest go, even
    /// those a standby has not acknowledged (it is then rebuilt from a snapshot).
    pub log_retention_bytes: u64,
    /// ... and records older than this go, on the same terms.
    pub log_retention_age: Duration,
}

/// The config a running node uses now: swapped whole on SIGHUP, read where it is used, so that
/// a session or a delivery sees one consistent config from its start to its end.
pub type LiveConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub hostname: String,
    /// Bytes.
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The longest a command line may take to arrive, whole (from the wait for its first byte).
    pub command_timeout: Duration,
    /// Inactivity limit while reading DATA/BDAT.
    pub data_timeout: Duration,
    /// Bytes per second: a body (or BDAT chunk) may take `data_timeout` plus the time its
    /// bytes need at this rate, and no longer.
    pub min_data_rate: u64,
    /// Bad commands in one session before a 421 and the close.
    pub max_bad_commands: u32,
    /// Commands that move no mail (NOOP, RSET, EHLO, ...) between accepted messages before a
    /// 421 and the close.
    pub max_junk_commands: u32,
    /// More Received: headers than this in a message's header section: a mail loop, refused
    /// with 554 5.4.6 (Postfix's `hopcount_limit`).
    pub max_received_headers: u32,
    /// Both set (validated): STARTTLS offered.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `[relay]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Lowercased, trailing dot removed; ".example.com" stands for the subdomains. Holds the
    /// names of the `[[relay.domain]]` tables too.
    pub domains: Vec<String>,
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// The `[[relay.domain]]` tables: relay domains whose recipients are checked at RCPT.
    pub recipient_checks: Vec<RecipientCheck>,
    /// How recipients are verified at the next hop, for the tables with `verify = true`.
    pub verify: VerifyConfig,
}

/// A `[[relay.domain]]` table: which recipients of a relay domain exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientCheck {
    /// As in [`RelayConfig::domains`]: "example.com", or ".example.com" for its subdomains.
    pub name: String,
    /// The valid recipients written in the file. With `recipients_file`, the two are one list;
    /// with neither, no list is checked.
    pub recipients: Vec<RecipientEntry>,
    /// A file of more entries, one a line (read at start and at each SIGHUP).
    pub recipients_file: Option<PathBuf>,
    /// Ask the route's next hop about each recipient (after the list, when there is one).
    pub verify: bool,
}

impl RecipientCheck {
    /// Whether this table has a list of recipients (inline, in a file, or both).
    pub fn has_list(&self) -> bool {
        !self.recipients.is_empty() || self.recipients_file.is_some()
    }
}

/// An entry of a recipient list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecipientEntry {
    /// "alice@example.com": that address; the local part compared exactly, the domain
    /// (lowercased here) without regard to case.
    Address { local: String, domain: String },
    /// "@example.com": every address of that domain.
    CatchAll { domain: String },
}

impl RecipientEntry {
    pub fn domain(&self) -> &str {
        match self {
            RecipientEntry::Address { domain, .. } | RecipientEntry::CatchAll { domain } => domain,
        }
    }
}

/// `[relay]`'s verification keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// How long a client's RCPT waits for the next hop's answer; then `450 4.1.1`.
    pub timeout: Duration,
    /// How long a recipient the next hop accepted is remembered as valid.
    pub positive_expire: Duration,
    /// How long a recipient the next hop refused (5xx) is remembered as unknown.
    pub negative_expire: Duration,
    /// The most addresses remembered; the oldest answer is forgotten first.
    pub cache_size: usize,
}

/// Whether a domain `pattern` ("example.com", or ".example.com" for every subdomain but not
/// example.com itself, Postfix style) covers `domain`. Case-insensitive, a trailing dot of
/// `domain` ignored.
pub fn domain_matches(pattern: &str, domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return false;
    }
    if pattern.starts_with('.') {
        domain.len() > pattern.len()
            && domain.is_char_boundary(domain.len() - pattern.len())
            && domain[domain.len() - pattern.len()..].eq_ignore_ascii_case(pattern)
    } else {
        domain.eq_ignore_ascii_case(pattern)
    }
}

impl RelayConfig {
    /// Whether mail for `domain` is accepted from anyone (see [`domain_matches`]).
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|entry| domain_matches(entry, domain))
    }

    /// The `[[relay.domain]]` table that checks the recipients of `domain`: the one named
    /// exactly, else the first ".parent" one that covers it.
    pub fn recipient_check(&self, domain: &str) -> Option<&RecipientCheck> {
        let exact = self
            .recipient_checks
            .iter()
            .find(|c| !c.name.starts_with('.') && domain_matches(&c.name, domain));
        exact.or_else(|| self.recipient_checks.iter().find(|c| domain_matches(&c.name, domain)))
    }

    /// Whether a client at `ip` may relay to any domain. An IPv4-mapped IPv6 address
    /// (`::ffff:127.0.0.1`) is checked as its IPv4 address.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_networks.iter().any(|net| net.contains(&ip))
    }
}

/// A `[[route]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lowercased, trailing dot removed; "*" is the default route.
    pub domain: String,
    pub next_hop: NextHop,
    pub tls: RouteTls,
}

/// Where a route sends mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// Look up the recipient domain's MX records.
    Mx,
    /// A fixed host. An IPv6 address is kept without brackets (`Display` adds them).
    Host { host: String, port: u16 },
}

/// TLS towards a route's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTls {
    /// Plain text, STARTTLS is not tried.
    None,
    /// STARTTLS when the next hop offers it, plain text otherwise.
    Opportunistic,
    /// STARTTLS must succeed, or the delivery is deferred.
    Required,
}

keyword_enum!(RouteTls, "tls mode", {
    None => "none",
    Opportunistic => "opportunistic",
    Required => "required",
});

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Waits between attempts; after the last one, the last interval again and again.
    pub retry: Vec<Duration>,
    /// Then a bounce (DSN) to the sender.
    pub max_queue_lifetime: Duration,
    /// A recipient whose sender asked for delay reports (DSN NOTIFY=DELAY) and that is still
    /// deferred once its message has been queued this long gets one (Postfix's
    /// delay_warning_time).
    pub delay_warning_time: Duration,
    pub concurrency_per_host: usize,
    /// DNS servers (IP:port) for MX and address lookups; empty = the system's (/etc/resolv.conf).
    pub resolvers: Vec<SocketAddr>,
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's cluster address.
    pub listen: SocketAddr,
    /// The other data node, HOST:PORT (validated). Required for primary and standby.
    pub peer: Option<String>,
    /// The witness, HOST:PORT (validated).
    pub witness: Option<String>,
    pub replication: ReplicationMode,
    pub sync_timeout: Duration,
    pub on_standby_loss: StandbyLoss,
    pub heartbeat_interval: Duration,
    pub failover_timeout: Duration,
    /// How long a primary serves after it last heard the standby or the witness; then it
    /// fences itself. Must end before a standby may promote (see `check_cluster`).
    pub lease: Duration,
    pub auto_failover: bool,
    /// Automatic failover with no witness configured: the standby promotes on silence alone,
    /// which a cut link between two live nodes turns into two primaries. Off unless set.
    pub allow_failover_without_witness: bool,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_ca: PathBuf,
    pub on_promote: Option<PathBuf>,
    pub on_demote: Option<PathBuf>,
}

/// `[cluster].replication`: when a 250 may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicationMode {
    /// Only once the standby has the message on disk too.
    Sync,
    /// Once this node has it on disk; the standby follows.
    Async,
}

keyword_enum!(ReplicationMode, "replication mode", {
    Sync => "sync",
    Async => "async",
});

/// What a sync primary does while its standby is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StandbyLoss {
    /// Accept anyway and replicate later.
    Degrade,
    /// Answer 451.
    Refuse,
}

keyword_enum!(StandbyLoss, "on_standby_loss mode", {
    Degrade => "degrade",
    Refuse => "refuse",
});

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, requests need this bearer token.
    pub token_file: Option<PathBuf>,
    /// Whether the file has an `[admin]` section. A data node serves the endpoint in any case;
    /// a witness only then, so that a witness configured before it had one does not take the
    /// default port from a data node on the same host.
    pub section: bool,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive string (validated), such as "info" or "relayd=debug,warn".
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    Text,
    Json,
}

keyword_enum!(LogFormat, "log format", {
    Text => "text",
    Json => "json",
});

impl Config {
    /// Reads and validates a file. Errors name file, line and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(&source, format!("cannot read: {e}")))?;
        Self::parse(&text, source)
    }

    /// The embedded default (`config/default.toml`): one primary, SMTP on 127.0.0.1:2525,
    /// spool in ./relayd-data, admin on 127.0.0.1:8025, mail from loopback relayed by MX lookup.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(EMBEDDED_TOML, EMBEDDED_SOURCE.to_string())
    }

    /// --role overrides [node].role; re-runs the validation, which depends on the role.
    pub fn with_role(mut self, role: Role) -> Result<Config, ConfigError> {
        self.node.role = role;
        self.role_override = Some(role);
        if let Err(invalid) = validate::validate(&self) {
            return Err(self.error_at(&invalid.key, invalid.message));
        }
        Ok(self)
    }

    /// An error about `key` (a path such as `smtp.tls_cert`) found after loading, for example
    /// a certificate file that cannot be read: names the file and the key's line like any
    /// other config error.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        // The text is needed only to name the line; the file was read moments ago.
        let text: Option<Cow<'_, str>> = if self.source == EMBEDDED_SOURCE {
            Some(Cow::Borrowed(EMBEDDED_TOML))
        } else {
            std::fs::read_to_string(&self.source).ok().map(Cow::Owned)
        };
        error::Invalid::new(key, message).locate(&self.source, text.as_deref())
    }

    /// Finds the route for a recipient domain: the exact domain first, then "*".
    /// Case-insensitive, a trailing dot ignored.
    pub fn route_for(&self, domain: &str) -> Option<&RouteConfig> {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.routes
            .iter()
            .find(|r| r.domain != "*" && r.domain.eq_ignore_ascii_case(domain))
            .or_else(|| self.routes.iter().find(|r| r.domain == "*"))
    }

    /// Parses and validates TOML text; `source` names it in errors. What `load` does after
    /// reading the file; public so that the fuzz targets (`fuzz/`) reach the whole loader
    /// without a file per input.
    pub fn parse(text: &str, source: String) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| ConfigError::from_serde(&source, text, e))?;
        let config = raw
            .resolve(source.clone())
            .and_then(|c| validate::validate(&c).map(|()| c))
            .map_err(|invalid| invalid.locate(&source, Some(text)))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
