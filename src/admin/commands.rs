//! The subcommands that talk to a running node: `relayd status` and `relayd queue ...`.
//! Each returns the exit status (docs/contract.md, "Command line"): 0 done, 1 failed at run time (the node cannot be
//! reached, or refused: its JSON error is shown), 2 bad config (e.g. an unreadable token file).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use bytesize::ByteSize;

use super::api::{HistoryEntry, Member, Message, QueuePage, Recipient, Status};
use super::client::{Client, ClientError};
use super::witness::WitnessStatus;
use crate::config::{Config, Role};
use crate::delivery::QueueChange;
use crate::spool::QueueId;

/// `relayd status [--json]`, of a data node or a witness (its `/status` says which).
pub fn status(config: &Config, json: bool) -> ExitCode {
    if config.node.role == Role::Witness && !config.admin.section {
        eprintln!(
            "relayd: {}: this witness has no [admin] section, so it serves no admin endpoint \
             (add one, and restart it)",
            config.source
        );
        return ExitCode::from(2);
    }
    run(config, |client| {
        let status: serde_json::Value = client.get("/status")?;
        if json {
            return Ok(pretty(&status));
        }
        let invalid = |e: serde_json::Error| ClientError::Invalid {
            address: client.address(),
            reason: e.to_string(),
        };
        if status["role"] == Role::Witness.as_str() {
            let status: WitnessStatus = serde_json::from_value(status).map_err(invalid)?;
            return Ok(super::witness::status_table(&status));
        }
        let status: Status = serde_json::from_value(status).map_err(invalid)?;
        Ok(status_table(&status))
    })
}

/// Which messages a `relayd queue` subcommand means (every flag given must hold), sent as the
/// endpoint's query parameters, which check them.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Selection {
    /// "active" (a recipient is due now), "deferred" (all wait for a retry) or "held" (by an
    /// operator: `relayd queue hold`).
    #[arg(long)]
    pub state: Option<String>,
    /// A recipient still to be delivered is at this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The sender's address ("" for the null sender).
    #[arg(long)]
    pub sender: Option<String>,
    /// A recipient still to be delivered has this address.
    #[arg(long)]
    pub recipient: Option<String>,
    /// Received at least this long ago (30m, 2h, 1d).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
}

impl Selection {
    fn parameters(&self) -> Vec<(&'static str, &str)> {
        [
            ("state", &self.state),
            ("domain", &self.domain),
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("older_than", &self.older_than),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|value| (key, value)))
        .collect()
    }

    /// The parameters that select messages for a change: one `id`, these filters, or `all`.
    fn with<'a>(&'a self, id: Option<&'a str>, all: bool) -> Vec<(&'static str, &'a str)> {
        let mut parameters = self.parameters();
        parameters.extend(id.map(|id| ("id", id)));
        if all {
            parameters.push(("all", "true"));
        }
        parameters
    }
}

/// `path?key=value&…`, the values percent-encoded; `path` alone without parameters.
fn with_query(path: &str, parameters: &[(&str, &str)]) -> String {
    let mut url = path.to_string();
    for (i, (key, value)) in parameters.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(key);
        url.push('=');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                let _ = write!(url, "%{byte:02X}");
            }
        }
    }
    url
}

/// `relayd queue list [--json] [filters] [--limit N] [--after ID]`. Without a filter or a page
/// flag, the whole queue (as before pages); with one, a page and the command for the next.
pub fn queue_list(
    config: &Config,
    selection: &Selection,
    limit: Option<usize>,
    after: Option<QueueId>,
    json: bool,
) -> ExitCode {
    let limit = limit.map(|n| n.to_string());
    let after = after.map(|id| id.to_string());
    let mut parameters = selection.parameters();
    parameters.extend(limit.as_deref().map(|n| ("limit", n)));
    parameters.extend(after.as_deref().map(|id| ("after", id)));
    let path = with_query("/queue", &parameters);
    run(config, |client| {
        if json {
            let list: serde_json::Value = client.get(&path)?;
            return Ok(pretty(&list));
        }
        if parameters.is_empty() {
            let list: Vec<Message> = client.get(&path)?;
            return Ok(queue_table(&list, now()));
        }
        let page: QueuePage = client.get(&path)?;
        let mut out = queue_table(&page.messages, now());
        if let Some(next) = page.next_after {
            let _ = writeln!(out, "more: the next page with --after {next}");
        }
        Ok(out)
    })
}

/// `relayd queue show ID [--json | --content]`.
pub fn queue_show(config: &Config, id: QueueId, json: bool) -> ExitCode {
    run(config, |client| {
        let path = format!("/queue/{id}");
        if json {
            let message: serde_json::Value = client.get(&path)?;
            return Ok(pretty(&message));
        }
        let message: Message = client.get(&path)?;
        Ok(message_details(&message, now()))
    })
}

/// `relayd queue show ID --content`: the message as stored, streamed to standard output.
pub fn queue_content(config: &Config, id: QueueId) -> ExitCode {
    run(config, |client| {
        client.get_to(&format!("/queue/{id}/content"), &mut std::io::stdout().lock())?;
        Ok(String::new())
    })
}

/// `relayd queue flush`.
pub fn queue_flush(config: &Config) -> ExitCode {
    run(config, |client| {
        client.post("/queue/flush")?;
        Ok("flush requested: every deferred message is tried now\n".into())
    })
}

/// `relayd queue requeue ID | --all | [filters]`: the messages are tried now.
pub fn queue_requeue(
    config: &Config,
    id: Option<QueueId>,
    selection: &Selection,
    all: bool,
) -> ExitCode {
    let id = id.map(|id| id.to_string());
    let parameters = selection.with(id.as_deref(), all);
    run(config, |client| {
        let answer = client.post(&with_query("/queue/requeue", &parameters))?;
        let count = answer["requeued"].as_u64().unwrap_or(0);
        Ok(format!("requeued {count} {}\n", plural(count, "message", "messages")))
    })
}

/// `relayd queue delete ID`.
pub fn queue_delete(config: &Config, id: QueueId) -> ExitCode {
    run(config, |client| {
        client.delete(&format!("/queue/{id}"))?;
        Ok(format!("deleted {id}\n"))
    })
}

/// Asks the endpoint for `change` of the messages `parameters` select: `DELETE /queue`, or
/// `POST /queue/hold` (`release`, `bounce`).
fn request_change(
    client: &Client,
    change: QueueChange,
    parameters: &[(&str, &str)],
) -> Result<serde_json::Value, ClientError> {
    match change {
        QueueChange::Delete => client.delete(&with_query("/queue", parameters)),
        _ => client.post(&with_query(&format!("/queue/{}", change.verb()), parameters)),
    }
}

/// `relayd queue delete|hold|release|bounce [ID] [filters] [--all] [--dry-run]`: prints the count,
/// and with --dry-run the ids that would change.
pub fn queue_bulk(
    config: &Config,
    change: QueueChange,
    id: Option<QueueId>,
    selection: &Selection,
    all: bool,
    dry_run: bool,
) -> ExitCode {
    let id = id.map(|id| id.to_string());
    let mut parameters = selection.with(id.as_deref(), all);
    if dry_run {
        parameters.push(("dry_run", "true"));
    }
    run(config, |client| {
        let answer = request_change(client, change, &parameters)?;
        let count = answer[change.done()].as_u64().unwrap_or(0);
        let messages = plural(count, "message", "messages");
        let mut out = String::new();
        if dry_run {
            for id in answer["ids"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{}", id.as_str().unwrap_or_default());
            }
            let _ = writeln!(out, "dry run: {count} {messages} would be {}", change.done());
        } else {
            let _ = writeln!(out, "{} {count} {messages}", change.done());
        }
        Ok(out)
    })
}

/// `relayd promote [--force]`.
pub fn promote(config: &Config, force: bool) -> ExitCode {
    run(config, |client| {
        let answer = client.post(if force { "/promote?force=true" } else { "/promote" })?;
        let mut out = format!("promoted: primary in epoch {}\n", answer["epoch"]);
        if let Some(warning) = answer["warning"].as_str() {
            out.push_str(&format!("warning: {warning}\n"));
        }
        Ok(out)
    })
}

/// `relayd demote`: planned switchover.
pub fn demote(config: &Config) -> ExitCode {
    run(config, |client| {
        let answer = client.post("/demote")?;
        Ok(format!(
            "demoted: the standby took over in epoch {}; this node follows it\n",
            answer["new_primary_epoch"]
        ))
    })
}

/// `relayd history [--json]`.
pub fn history(config: &Config, json: bool) -> ExitCode {
    run(config, |client| {
        let entries: serde_json::Value = client.get("/history")?;
        if json {
            return Ok(pretty(&entries));
        }
        let entries: Vec<HistoryEntry> = serde_json::from_value(entries).map_err(|e| {
            ClientError::Invalid { address: client.address(), reason: e.to_string() }
        })?;
        Ok(history_table(&entries))
    })
}

/// The epoch history as `relayd history` prints it: a row an epoch, oldest first.
fn history_table(entries: &[HistoryEntry]) -> String {
    let unknown = || "?".to_string();
    let header = ["EPOCH", "FROM RECORD", "PRIMARY", "SINCE", "CAUSE", "REASON"].map(String::from);
    let rows = entries.iter().map(|e| {
        [
            e.epoch.to_string(),
            e.first_seq.map_or_else(|| "-".into(), |seq| seq.to_string()),
            e.node.clone().unwrap_or_else(unknown),
            e.started_at.clone().unwrap_or_else(unknown),
            e.cause.clone().unwrap_or_else(unknown),
            e.reason.clone().unwrap_or_else(|| "(begun by relayd 0.1.0: not noted)".into()),
        ]
    });
    columns(std::iter::once(header).chain(rows).collect())
}

/// `relayd failover pause|resume`.
pub fn failover(config: &Config, paused: bool) -> ExitCode {
    run(config, |client| {
        let answer = client.post(if paused { "/failover/pause" } else { "/failover/resume" })?;
        let what = if paused { "paused" } else { "resumed" };
        let scope = if answer["scope"] == "cluster" {
            "on this primary and its standby (replicated)"
        } else {
            "on this node only (a standby: run it on the primary for both)"
        };
        Ok(format!("automatic failover {what} {scope}\n"))
    })
}

/// `relayd rebuild`.
pub fn rebuild(config: &Config) -> ExitCode {
    run(config, |client| {
        client.post("/rebuild")?;
        Ok("rebuilding: spool emptied; the primary sends a full snapshot (relayd status shows \
            the lag)\n"
            .to_string())
    })
}

fn run(config: &Config, command: impl FnOnce(&Client) -> Result<String, ClientError>) -> ExitCode {
    let client = match Client::new(config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("relayd: {e}");
            return ExitCode::from(2);
        }
    };
    match command(&client) {
        Ok(output) => {
            // A closed pipe (`relayd queue list | head`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relayd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn status_table(status: &Status) -> String {
    let peer = match &status.peer {
        None | Some(serde_json::Value::Null) => "none".to_string(),
        Some(serde_json::Value::Object(fields)) => fields
            .iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => format!("{key}={text}"),
                other => format!("{key}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => other.to_string(),
    };
    let lag = &status.replication;
    let queue = &status.queue;
    let mut out = String::new();
    let _ = writeln!(out, "node   {}", status.node);
    let fenced = status.role == "primary" && !status.serving;
    let _ = writeln!(
        out,
        "role   {}{}",
        status.role,
        if fenced { " (fenced: not serving)" } else { "" }
    );
    let _ = writeln!(out, "epoch  {}", status.epoch);
    if let (Some(release), Some(protocol)) = (&status.release, status.protocol) {
        let _ = writeln!(out, "release {release} (cluster protocol {protocol})");
    }
    let _ = writeln!(out, "peer   {peer}");
    let _ = writeln!(
        out,
        "lag    {} records, {}, {}",
        lag.lag_records,
        ByteSize::b(lag.lag_bytes).display().iec(),
        age(lag.lag_seconds)
    );
    let _ = write!(
        out,
        "queue  {} {}, {} {} pending",
        queue.messages,
        plural(queue.messages, "message", "messages"),
        queue.recipients_pending,
        plural(queue.recipients_pending, "recipient", "recipients"),
    );
    if queue.messages > 0 {
        let _ = write!(out, ", oldest {}", age(queue.oldest_age_seconds));
    }
    out.push('\n');
    if status.failover_paused {
        out.push_str("failover paused (relayd failover resume turns it on)\n");
    }
    if !status.members.is_empty() {
        out.push('\n');
        out.push_str(&members_table(&status.members));
    }
    out
}

/// The cluster's members as `relayd status` prints them, a row each, in columns.
fn members_table(members: &[Member]) -> String {
    let unknown = || "-".to_string();
    let mut rows =
        vec![["MEMBER", "ROLE", "EPOCH", "STATE", "LAG", "LAST HEARD"].map(String::from)];
    for member in members {
        let state = match (member.serving, &member.granted_to) {
            (Some(true), _) => format!("{}, serving", member.state),
            (Some(false), _) if member.role == "primary" => format!("{}, fenced", member.state),
            (_, Some(grantee)) => format!("{}, granted to {grantee}", member.state),
            _ => member.state.clone(),
        };
        let heard = match member.last_heard_ms {
            Some(0) if member.state == "self" => "-".to_string(),
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "never".to_string(),
        };
        rows.push([
            member.name.clone(),
            member.role.clone(),
            member.epoch.map_or_else(unknown, |e| e.to_string()),
            state,
            member.lag_records.map_or_else(unknown, |l| l.to_string()),
            heard,
        ]);
    }
    columns(rows)
}

/// Rows of six cells in left-aligned columns, two spaces apart.
fn columns(rows: Vec<[String; 6]>) -> String {
    let widths: Vec<usize> =
        (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn queue_table(list: &[Message], now: chrono::DateTime<chrono::Utc>) -> String {
    if list.is_empty() {
        return "the queue is empty\n".into();
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|m| {
            let recipients = m
                .recipients
                .iter()
                .map(|r| format!("<{}> {}", r.address, short_state(r, m.held_since.is_some())))
                .collect::<Vec<_>>()
                .join(", ");
            [
                m.id.clone(),
                received_age(&m.received_at, now),
                ByteSize::b(m.size).display().iec().to_string(),
                format!("<{}>", m.sender),
                recipients,
            ]
        })
        .collect();
    let header = ["ID", "AGE", "SIZE", "SENDER", "RECIPIENTS"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let [id, age, size, sender, recipients] = row;
        let _ = writeln!(
            out,
            "{id:<w0$}  {age:>w1$}  {size:>w2$}  {sender:<w3$}  {recipients}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
    }
    let _ = writeln!(out, "{} {}", list.len(), plural(list.len() as u64, "message", "messages"));
    out
}

fn message_details(m: &Message, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id          {}", m.id);
    let _ = writeln!(out, "sender      <{}>", m.sender);
    let _ = writeln!(
        out,
        "received    {} ({} ago) from {} (helo {})",
        m.received_at,
        received_age(&m.received_at, now),
        m.client,
        m.helo
    );
    let _ = writeln!(out, "size        {} bytes", m.size);
    if let Some(since) = &m.held_since {
        let _ = writeln!(out, "held        since {since} (relayd queue release {})", m.id);
    }
    let _ = writeln!(out, "recipients  {}", m.recipients.len());
    for r in &m.recipients {
        let _ = write!(out, "  <{}>  {}", r.address, r.state);
        if let Some(attempts) = r.attempts {
            let _ = write!(out, "  attempts {attempts}");
        }
        if r.state == "pending" {
            let _ = write!(out, "  next attempt {}", r.next_attempt.as_deref().unwrap_or("now"));
        }
        if let Some(relay) = &r.relay {
            let _ = write!(out, "  relay {relay}");
        }
        if let Some(reply) = &r.last_reply {
            let _ = write!(out, "  reply {reply:?}");
        }
        out.push('\n');
    }
    out
}

/// A recipient's state in the listing: a pending one of a held message reads "held".
fn short_state(r: &Recipient, held: bool) -> String {
    let state = if held && r.state == "pending" { "held" } else { r.state.as_str() };
    match r.attempts {
        Some(attempts) if attempts > 0 => {
            format!("{state} ({attempts} {})", plural(u64::from(attempts), "attempt", "attempts"))
        }
        _ => state.to_string(),
    }
}

fn received_age(received_at: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    match chrono::DateTime::parse_from_rfc3339(received_at) {
        Ok(at) => {
            let seconds = now.signed_duration_since(at).num_seconds();
            age(u64::try_from(seconds).unwrap_or(0))
        }
        Err(_) => "?".into(),
    }
}

/// A duration, coarsely: "42s", "5m 3s", "2h 10m", "3d 4h".
fn age(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn plural<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::{QueueSummary, ReplicationLag};

    #[test]
    fn queries_are_percent_encoded_and_only_what_is_given() {
        let selection = Selection {
            sender: Some("a+b@example.org".into()),
            older_than: Some("1h 30m".into()),
            ..Selection::default()
        };
        assert_eq!(
            with_query("/queue", &selection.parameters()),
            "/queue?sender=a%2Bb%40example.org&older_than=1h%2030m"
        );
        assert_eq!(with_query("/queue", &Selection::default().parameters()), "/queue");
    }

    #[test]
    fn ages_are_coarse() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(303), "5m 3s");
        assert_eq!(age(7800), "2h 10m");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn status_and_queue_tables_read_well() {
        let status = Status {
            role: "primary".into(),
            epoch: 2,
            serving: true,
            node: "mx1".into(),
            peer: None,
            replication: ReplicationLag::default(),
            queue: QueueSummary { messages: 1, recipients_pending: 2, oldest_age_seconds: 65 },
            release: Some("0.2.0".into()),
            protocol: Some(2),
            failover_paused: true,
            members: vec![
                Member {
                    name: "mx1".into(),
                    role: "primary".into(),
                    epoch: Some(2),
                    serving: Some(true),
                    state: "self".into(),
                    lag_records: None,
                    last_heard_ms: Some(0),
                    granted_to: None,
                },
                Member {
                    name: "127.0.0.1:7000".into(),
                    role: "witness".into(),
                    epoch: None,
                    serving: None,
                    state: "unreachable".into(),
                    lag_records: None,
                    last_heard_ms: None,
                    granted_to: None,
                },
            ],
        };
        let table = status_table(&status);
        assert!(table.contains("role   primary\n"), "{table}");
        assert!(table.contains("failover paused"), "{table}");
        assert!(
            table.contains("MEMBER          ROLE     EPOCH  STATE          LAG  LAST HEARD\n"),
            "{table}"
        );
        assert!(
            table.contains("mx1             primary  2      self, serving  -    -\n"),
            "{table}"
        );
        assert!(
            table.contains("127.0.0.1:7000  witness  -      unreachable    -    never\n"),
            "{table}"
        );
        assert!(table.contains("release 0.2.0 (cluster protocol 2)\n"), "{table}");
        assert!(table.contains("peer   none\n"), "{table}");
        // A 0.1.0 node says neither: no line.
        let older = status_table(&Status { release: None, protocol: None, ..status.clone() });
        assert!(!older.contains("release"), "{older}");
        assert!(
            table.contains("queue  1 message, 2 recipients pending, oldest 1m 5s\n"),
            "{table}"
        );

        let message = Message {
            id: "0190A1B2C3D4E5F60718293A4B5C6D7E".into(),
            sender: "a@example.org".into(),
            recipients: vec![Recipient {
                address: "b@example.com".into(),
                state: "pending".into(),
                attempts: Some(2),
                next_attempt: Some("2030-01-01T00:00:00Z".into()),
                last_reply: Some("451 4.3.0 try later".into()),
                relay: None,
            }],
            size: 2048,
            received_at: "2030-01-01T00:00:00Z".into(),
            client: "127.0.0.1".into(),
            helo: "client.test".into(),
            held_since: None,
        };
        let at = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:02:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let list = queue_table(std::slice::from_ref(&message), at);
        assert!(list.starts_with("ID "), "{list}");
        assert!(
            list.contains("0190A1B2C3D4E5F60718293A4B5C6D7E  2m 0s  2.0 KiB  <a@example.org>  <b@example.com> pending (2 attempts)"),
            "{list}"
        );
        let held = Message { held_since: Some("2030-01-01T00:01:00Z".into()), ..message.clone() };
        let list = queue_table(std::slice::from_ref(&held), at);
        assert!(list.contains("<b@example.com> held (2 attempts)"), "{list}");
        let details = message_details(&held, at);
        assert!(details.contains("held        since 2030-01-01T00:01:00Z"), "{details}");
        let details = message_details(&message, at);
        assert!(details.contains("<b@example.com>  pending  attempts 2  next attempt 2030-01-01T00:00:00Z  reply \"451 4.3.0 try later\""), "{details}");
    }
}
