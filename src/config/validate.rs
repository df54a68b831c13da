//! The rules between values, checked after parsing. `Config::load` and `Config::with_role` both
//! run all of them, so a role given on the command line is held to the same rules as the file.

use std::fmt;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use super::error::Invalid;
use super::values::{check_domain, show_duration};
use super::{ClusterConfig, Config, Role, SmtpConfig};

/// The most recipients one message may have. An envelope is stored as one spool record, and
/// with more recipients it would outgrow the spool's inline record limit.
const MAX_RECIPIENTS_LIMIT: usize = 1000;

/// The smallest max_message_size worth running with.
const MIN_MESSAGE_SIZE: u64 = 1024;

/// Checks every rule; returns the first broken one.
pub(super) fn validate(c: &Config) -> Result<(), Invalid> {
    check_node_name(&c.node.name)?;
    positive("node.drain_timeout", c.node.drain_timeout)?;
    check_log_retention(c)?;
    check_smtp(&c.smtp, c.node.role)?;
    check_recipient_checks(c)?;
    check_routes(c)?;
    check_delivery(c)?;
    check_cluster(c.cluster.as_ref(), c.node.role)?;
    check_log_level(&c.log.level).map_err(|e| Invalid::new("log.level", e.to_string()))
}

fn is_data_node(role: Role) -> bool {
    matches!(role, Role::Primary | Role::Standby)
}

fn positive(key: &str, d: Duration) -> Result<(), Invalid> {
    if d.is_zero() {
        return Err(Invalid::new(key, "must be longer than 0s"));
    }
    Ok(())
}

/// The smallest log_retention_bytes: below it, a standby that misses a moment of traffic
/// would need a snapshot (and the log's size is only known to a quarter of a MiB).
const MIN_LOG_RETENTION_BYTES: u64 = 1024 * 1024;

fn check_log_retention(c: &Config) -> Result<(), Invalid> {
    if c.node.log_retention_bytes < MIN_LOG_RETENTION_BYTES {
        return Err(Invalid::new(
            "node.log_retention_bytes",
            format!(
                "{} bytes is too small: at least 1MiB (the change log a standby resumes from)",
                c.node.log_retention_bytes
            ),
        ));
    }
    if c.node.log_retention_age < Duration::from_secs(1) {
        return Err(Invalid::new(
            "node.log_retention_age",
            "must be at least 1s (the change log's age is kept to the second)",
        ));
    }
    Ok(())
}

fn check_node_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(Invalid::new(
            "node.name",
            format!(
                "invalid node name {name:?}: expected 1 to 253 letters, digits, '.', '-' or '_' \
                 (it names the node's certificate too)"
            ),
        ));
    }
    Ok(())
}

fn check_smtp(s: &SmtpConfig, role: Role) -> Result<(), Invalid> {
    if is_data_node(role) {
        if s.listen.is_empty() {
            return Err(Invalid::new(
                "smtp.listen",
                format!("must name at least one address for role {role}"),
            ));
        }
        // A witness serves no SMTP, so its (possibly defaulted) hostname does not matter.
        check_domain(&s.hostname).map_err(|e| {
            Invalid::new(
                "smtp.hostname",
                format!("{e}; it is the name relayd gives in its greeting and EHLO"),
            )
        })?;
    }
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => {
            return Err(Invalid::new(
                "smtp.tls_key",
                "missing: smtp.tls_cert is set, and STARTTLS needs both tls_cert and tls_key \
                 (or neither, for no STARTTLS)",
            ));
        }
        (None, Some(_)) => {
            return Err(Invalid::new(
                "smtp.tls_cert",
                "missing: smtp.tls_key is set, and STARTTLS needs both tls_cert and tls_key \
                 (or neither, for no STARTTLS)",
            ));
        }
        _ => {}
    }
    if s.max_message_size < MIN_MESSAGE_SIZE {
        return Err(Invalid::new(
            "smtp.max_message_size",
            format!("{} bytes is too small: expected at least 1KiB", s.max_message_size),
        ));
    }
    if !(1..=MAX_RECIPIENTS_LIMIT).contains(&s.max_recipients) {
        return Err(Invalid::new(
            "smtp.max_recipients",
            format!(
                "{} is out of range: expected 1 to {MAX_RECIPIENTS_LIMIT} (an envelope is one \
                 spool record, and more recipients would make it larger than the spool's inline \
                 record limit)",
                s.max_recipients
            ),
        ));
    }
    if s.max_connections < 1 {
        return Err(Invalid::new("smtp.max_connections", "must be at least 1"));
    }
    if !(1..=s.max_connections).contains(&s.max_connections_per_ip) {
        return Err(Invalid::new(
            "smtp.max_connections_per_ip",
            format!(
                "{} is out of range: expected 1 to smtp.max_connections ({})",
                s.max_connections_per_ip, s.max_connections
            ),
        ));
    }
    positive("smtp.command_timeout", s.command_timeout)?;
    positive("smtp.data_timeout", s.data_timeout)?;
    if s.min_data_rate < 1 {
        return Err(Invalid::new("smtp.min_data_rate", "must be at least 1 (bytes per second)"));
    }
    if s.max_bad_commands < 1 {
        return Err(Invalid::new("smtp.max_bad_commands", "must be at least 1"));
    }
    if s.max_junk_commands < 1 {
        return Err(Invalid::new("smtp.max_junk_commands", "must be at least 1"));
    }
    if s.max_received_headers < 1 {
        return Err(Invalid::new("smtp.max_received_headers", "must be at least 1"));
    }
    Ok(())
}

fn check_recipient_checks(c: &Config) -> Result<(), Invalid> {
    let relay = &c.relay;
    for (i, check) in relay.recipient_checks.iter().enumerate() {
        let key = |what: &str| format!("relay.domain[{}].{what}", i + 1);
        if let Some(first) = relay.recipient_checks[..i].iter().position(|o| o.name == check.name) {
            return Err(Invalid::new(
                key("name"),
                format!(
                    "a second [[relay.domain]] for {:?} (the first is relay.domain[{}])",
                    check.name,
                    first + 1
                ),
            ));
        }
        if !check.has_list() && !check.verify {
            return Err(Invalid::new(
                key("name"),
                format!(
                    "{:?} checks nothing: give recipients, recipients_file or verify = true (or \
                     list the domain in relay.domains)",
                    check.name
                ),
            ));
        }
        for (j, entry) in check.recipients.iter().enumerate() {
            if !super::domain_matches(&check.name, entry.domain()) {
                return Err(Invalid::new(
                    format!("relay.domain[{}].recipients[{}]", i + 1, j + 1),
                    format!(
                        "the domain {:?} is not {:?}: a table lists the recipients of its own \
                         domain",
                        entry.domain(),
                        check.name
                    ),
                ));
            }
        }
    }
    let verify = &relay.verify;
    positive("relay.verify_timeout", verify.timeout)?;
    positive("relay.verify_positive_expire", verify.positive_expire)?;
    positive("relay.verify_negative_expire", verify.negative_expire)?;
    if verify.cache_size < 1 {
        return Err(Invalid::new("relay.verify_cache_size", "must be at least 1"));
    }
    Ok(())
}

fn check_routes(c: &Config) -> Result<(), Invalid> {
    for (i, route) in c.routes.iter().enumerate() {
        if let Some(first) = c.routes[..i].iter().position(|r| r.domain == route.domain) {
            let message = if route.domain == "*" {
                format!(
                    "a second default route \"*\" (the first is route[{}]): at most one is allowed",
                    first + 1
                )
            } else {
                format!(
                    "a second route for {:?} (the first is route[{}]): route domains must be unique",
                    route.domain,
                    first + 1
                )
            };
            return Err(Invalid::new(format!("route[{}].domain", i + 1), message));
        }
    }
    Ok(())
}

fn check_delivery(c: &Config) -> Result<(), Invalid> {
    let d = &c.delivery;
    if d.retry.is_empty() {
        return Err(Invalid::new(
            "delivery.retry",
            "must list at least one interval, such as [\"1m\", \"5m\", \"15m\", \"1h\", \"4h\"]",
        ));
    }
    for (i, interval) in d.retry.iter().enumerate() {
        positive(&format!("delivery.retry[{}]", i + 1), *interval)?;
    }
    positive("delivery.max_queue_lifetime", d.max_queue_lifetime)?;
    positive("delivery.delay_warning_time", d.delay_warning_time)?;
    if d.concurrency_per_host < 1 {
        return Err(Invalid::new("delivery.concurrency_per_host", "must be at least 1"));
    }
    Ok(())
}

fn check_cluster(cluster: Option<&ClusterConfig>, role: Role) -> Result<(), Invalid> {
    let Some(c) = cluster else {
        if role == Role::Witness {
            return Err(Invalid::new(
                "cluster",
                "missing: a node with role witness needs a [cluster] section with listen, \
                 tls_cert, tls_key and tls_ca",
            ));
        }
        return Ok(());
    };
    if is_data_node(role) && c.peer.is_none() {
        return Err(Invalid::new(
            "cluster.peer",
            format!(
                "missing: a {role} in a cluster needs the other data node's HOST:PORT as peer \
                 (remove [cluster] to run a single node)"
            ),
        ));
    }
    positive("cluster.sync_timeout", c.sync_timeout)?;
    positive("cluster.heartbeat_interval", c.heartbeat_interval)?;
    positive("cluster.failover_timeout", c.failover_timeout)?;
    if c.heartbeat_interval >= c.failover_timeout {
        return Err(Invalid::new(
            "cluster.heartbeat_interval",
            format!(
                "{} must be shorter than cluster.failover_timeout ({}), or one late heartbeat \
                 would start a failover",
                show_duration(c.heartbeat_interval),
                show_duration(c.failover_timeout)
            ),
        ));
    }
    positive("cluster.lease", c.lease)?;
    // A primary must stop serving before a standby can take over: its lease, plus one
    // heartbeat (the last one it heard may be that old), plus 5% for clocks that run at
    // different rates, must end before the failover timeout does.
    let margin = c.heartbeat_interval + c.failover_timeout / 20;
    if c.lease + margin >= c.failover_timeout {
        return Err(Invalid::new(
            "cluster.lease",
            format!(
                "{} plus heartbeat_interval ({}) plus 5% of failover_timeout must be shorter \
                 than failover_timeout ({}): otherwise a primary cut off from the cluster could \
                 still be serving when the standby takes over",
                show_duration(c.lease),
                show_duration(c.heartbeat_interval),
                show_duration(c.failover_timeout)
            ),
        ));
    }
    Ok(())
}

/// A `[log].level` that is refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogLevelError {
    Empty,
    /// A span field's value (`[span{field=value}]`).
    FieldValue {
        level: String,
    },
    /// A bare word that is no level.
    NotALevel {
        directive: String,
        level: String,
    },
    /// Refused by `EnvFilter` itself, in its words.
    Filter {
        level: String,
        reason: String,
    },
}

const LOG_LEVELS_ALLOWED: &str = "expected a level (trace, debug, info, warn, error, off) or \
                                  directives such as \"relayd=debug,warn\"";

impl fmt::Display for LogLevelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALLOWED: &str = LOG_LEVELS_ALLOWED;
        match self {
            LogLevelError::Empty => write!(f, "must not be empty: {ALLOWED}"),
            LogLevelError::FieldValue { level } => write!(
                f,
                "span field values ({{field=value}}) are not supported in {level:?}: {ALLOWED}"
            ),
            LogLevelError::NotALevel { directive, level } => write!(
                f,
                "invalid log level {directive:?} in {level:?}: {ALLOWED} (write TARGET=LEVEL to \
                 set a target's level)"
            ),
            LogLevelError::Filter { level, reason } => {
                write!(f, "invalid log level {level:?} ({reason}): {ALLOWED}")
            }
        }
    }
}

impl std::error::Error for LogLevelError {}

/// Accepts what `EnvFilter` accepts, except that a directive without '=' must be a level: a
/// bare word is otherwise taken as a target name, so a typo such as "infoo" would silently
/// turn logging off for everything else.
fn check_log_level(level: &str) -> Result<(), LogLevelError> {
    if level.trim().is_empty() {
        return Err(LogLevelError::Empty);
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // A span field's value (`[span{field=value}]`) is compiled by EnvFilter into a DFA,
        // which a pattern of a few dozen characters can make take minutes and hundreds of MiB
        // (found by the config fuzz target: check-config hung). Field names alone are cheap.
        let field_value = directive
            .split('{')
            .skip(1)
            .any(|fields| fields.split('}').next().is_some_and(|f| f.contains('=')));
        if field_value {
            return Err(LogLevelError::FieldValue { level: level.into() });
        }
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(LogLevelError::NotALevel {
                directive: directive.into(),
                level: level.into(),
            });
        }
    }
    EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| LogLevelError::Filter { level: level.into(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        for ok in ["info", "WARN", "off", "relayd=debug,warn", "relayd::smtp=trace"] {
            assert_eq!(check_log_level(ok), Ok(()), "{ok}");
        }
        for bad in ["", " ", "infoo", "relayd", "relayd=loud", "info,nope"] {
            assert!(check_log_level(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn span_field_values_are_refused_before_envfilter_compiles_them() {
        assert_eq!(check_log_level("relayd[session{client}]=debug"), Ok(()));
        // Found by the config fuzz target: EnvFilter took minutes over this one.
        let slow = format!("x[s{{f=.*a{}}}]=debug", ".".repeat(60));
        let started = std::time::Instant::now();
        for bad in [slow.as_str(), "relayd[session{client=1}]=debug", "[{a=1,b=x}]"] {
            assert!(check_log_level(bad).is_err(), "{bad:?} accepted");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
