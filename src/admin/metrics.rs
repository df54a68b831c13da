//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//! The names are the contract's (docs/contract.md, "Metrics"); `relayd_spool_syncs_total`, `relayd_spool_reopens_total` and
//! `relayd_smtp_storage_refusals_total` are additions.

use std::fmt::Write;

use crate::config::Role;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every value the page shows, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub role: Option<Role>,
    pub epoch: u64,
    pub serving: bool,
    pub queue_messages: u64,
    pub smtp_sessions_active: u64,
    pub messages_accepted: u64,
    pub recipients_delivered: u64,
    pub recipients_deferred: u64,
    pub recipients_bounced: u64,
    pub replication_lag_records: u64,
    pub replication_lag_seconds: u64,
    pub failovers: u64,
    pub spool_syncs: u64,
    pub spool_reopens: u64,
    pub storage_refusals: u64,
}

/// Renders the page.
pub fn render(s: &Snapshot) -> String {
    let mut page = Page(String::with_capacity(2048));
    page.role(s.role);
    page.gauge("relayd_epoch", "The current epoch (0: none yet).", s.epoch);
    page.gauge(
        "relayd_serving",
        "1 while this node accepts and delivers mail (a primary, not fenced).",
        u64::from(s.serving),
    );
    page.gauge("relayd_queue_messages", "Messages in the queue.", s.queue_messages);
    page.gauge("relayd_smtp_sessions_active", "Open SMTP sessions.", s.smtp_sessions_active);
    page.counter(
        "relayd_messages_accepted_total",
        "Messages acknowledged with 250.",
        s.messages_accepted,
    );
    page.counter(
        "relayd_recipients_delivered_total",
        "Recipients delivered to their next hop.",
        s.recipients_delivered,
    );
    page.counter(
        "relayd_recipients_deferred_total",
        "Recipient delivery attempts deferred for a retry.",
        s.recipients_deferred,
    );
    page.counter(
        "relayd_recipients_bounced_total",
        "Recipients bounced (permanent failure or expiry).",
        s.recipients_bounced,
    );
    page.gauge(
        "relayd_replication_lag_records",
        "Change-log records the standby has not acknowledged.",
        s.replication_lag_records,
    );
    page.gauge(
        "relayd_replication_lag_seconds",
        "Age of the oldest record the standby has not acknowledged.",
        s.replication_lag_seconds,
    );
    page.counter("relayd_failovers_total", "Promotions of this node to primary.", s.failovers);
    page.counter(
        "relayd_spool_syncs_total",
        "Group commits made durable (one flush and one fdatasync each).",
        s.spool_syncs,
    );
    page.counter(
        "relayd_spool_reopens_total",
        "Times the spool was reopened after a failed write (a full disk).",
        s.spool_reopens,
    );
    page.counter(
        "relayd_smtp_storage_refusals_total",
        "Transactions and messages refused with 452 4.3.1: the spool's disk low or full.",
        s.storage_refusals,
    );
    page.0
}

/// A page being written (also the witness's, `super::witness`).
pub(super) struct Page(pub(super) String);

impl Page {
    /// `relayd_role`: 1 for `role`, 0 for the others.
    pub(super) fn role(&mut self, role: Option<Role>) {
        let roles = [Role::Primary, Role::Standby, Role::Witness]
            .map(|each| (format!("{{role=\"{each}\"}}"), u64::from(role == Some(each))));
        self.family("relayd_role", "gauge", "1 for this node's role, 0 for the others.", &roles);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[(String::new(), value)]);
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[(String::new(), value)]);
    }

    /// One metric family: its HELP and TYPE lines, then a sample per label set (`labels` in
    /// braces, or empty).
    pub(super) fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(String, V)],
    ) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_type_and_a_sample() {
        let page = render(&Snapshot {
            role: Some(Role::Standby),
            epoch: 3,
            messages_accepted: 7,
            ..Snapshot::default()
        });
        assert!(page.contains("# TYPE relayd_role gauge\n"));
        assert!(page.contains("relayd_role{role=\"primary\"} 0\n"));
        assert!(page.contains("relayd_role{role=\"standby\"} 1\n"));
        assert!(page.contains("relayd_role{role=\"witness\"} 0\n"));
        assert!(page.contains("relayd_epoch 3\n"));
        assert!(page.contains("relayd_serving 0\n"));
        assert!(page.contains(
            "# TYPE relayd_messages_accepted_total counter\nrelayd_messages_accepted_total 7\n"
        ));
        let families: Vec<&str> = page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), 15);
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap_or(name);
            assert!(page.contains(&format!("# HELP {base} ")), "{line}");
        }
    }
}
