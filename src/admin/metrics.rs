//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//! The names are the contract's (docs/contract.md, "Metrics"); `relayd_spool_syncs_total`, `relayd_spool_reopens_total` and
//! `relayd_smtp_storage_refusals_total` are additions.

use std::fmt::{Display, Write};
use std::time::Duration;

use crate::config::Role;
use crate::metrics::{BUCKETS, HistogramSnapshot};
use crate::spool::DiskUsage;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every value the page shows, read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Seconds, with the fraction (`/status` shows them whole).
    pub replication_lag_seconds: f64,
    pub failovers: u64,
    pub spool_syncs: u64,
    pub spool_reopens: u64,
    pub storage_refusals: u64,
    /// The spool's file system and file; none when they could not be read (no gauges then).
    pub spool_disk: Option<DiskUsage>,
    /// Since the witness last answered a ping (since the node started, when it never has);
    /// none on a node without a witness.
    pub witness_silence: Option<Duration>,
    /// An operator paused automatic failover.
    pub failover_paused: bool,
    pub smtp_commit: HistogramSnapshot,
    pub replication_ack: HistogramSnapshot,
    pub delivery_attempt: HistogramSnapshot,
}

/// Renders the page.
pub fn render(s: &Snapshot) -> String {
    let mut page = Page(String::with_capacity(8192));
    page.build_info();
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
    page.histogram(
        "relayd_replication_ack_seconds",
        "Sync mode: a session's wait for the standby's acknowledgement of its message.",
        &s.replication_ack,
    );
    page.counter("relayd_failovers_total", "Promotions of this node to primary.", s.failovers);
    page.gauge(
        "relayd_failover_paused",
        "1 while automatic failover is paused (relayd failover pause): no standby promotes itself.",
        u64::from(s.failover_paused),
    );
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
    page.histogram(
        "relayd_smtp_commit_seconds",
        "From the end of DATA (or BDAT LAST) to the 250: the durable commit (and the standby's ack in sync mode).",
        &s.smtp_commit,
    );
    page.histogram(
        "relayd_delivery_attempt_seconds",
        "One delivery attempt of a job of recipients: connection, transaction, results recorded.",
        &s.delivery_attempt,
    );
    if let Some(disk) = s.spool_disk {
        page.gauge(
            "relayd_spool_disk_free_bytes",
            "Bytes free for relayd on the spool's file system (min_free_space is compared with it).",
            disk.free,
        );
        page.gauge("relayd_spool_disk_size_bytes", "Size of the spool's file system.", disk.size);
        page.gauge("relayd_spool_file_bytes", "Size of the spool file.", disk.file);
    }
    if let Some(silence) = s.witness_silence {
        page.gauge(
            "relayd_witness_last_answer_seconds",
            "Seconds since the witness last answered a ping (since the start when it never has).",
            silence.as_secs_f64(),
        );
    }
    page.0
}

/// A page being written (also the witness's, `super::witness`).
pub(super) struct Page(pub(super) String);

impl Page {
    /// `relayd_build_info`: always 1, the package version and the commit build.rs found
    /// (empty when it could not tell) in its labels.
    pub(super) fn build_info(&mut self) {
        let (version, commit) = (env!("CARGO_PKG_VERSION"), env!("RELAYD_GIT_COMMIT"));
        let labels = format!("{{version=\"{version}\",commit=\"{commit}\"}}");
        let help = "Always 1; the version and the git commit (empty when unknown) in its labels.";
        self.family("relayd_build_info", "gauge", help, &[(labels, 1)]);
    }

    /// `relayd_role`: 1 for `role`, 0 for the others.
    pub(super) fn role(&mut self, role: Option<Role>) {
        let roles = [Role::Primary, Role::Standby, Role::Witness]
            .map(|each| (format!("{{role=\"{each}\"}}"), u64::from(role == Some(each))));
        self.family("relayd_role", "gauge", "1 for this node's role, 0 for the others.", &roles);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help, &[(String::new(), value)]);
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[(String::new(), value)]);
    }

    /// One metric family: its HELP and TYPE lines, then a sample per label set (`labels` in
    /// braces, or empty).
    pub(super) fn family<V: Display>(
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

    /// A histogram family: a cumulative `_bucket` per bound and `+Inf`, `_sum` and `_count`.
    fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} histogram");
        let bounds = BUCKETS.iter().map(f64::to_string).chain(["+Inf".to_string()]);
        for (index, bound) in bounds.enumerate() {
            let count = histogram.cumulative.get(index).copied().unwrap_or(0);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(self.0, "{name}_sum {}", histogram.sum_seconds);
        let _ = writeln!(self.0, "{name}_count {}", histogram.count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn every_family_has_help_type_and_a_sample() {
        let page = render(&Snapshot {
            role: Some(Role::Standby),
            epoch: 3,
            messages_accepted: 7,
            replication_lag_seconds: 0.25,
            spool_disk: Some(DiskUsage { free: 10, size: 20, file: 5 }),
            witness_silence: Some(Duration::from_millis(1500)),
            failover_paused: true,
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
        let version = format!(
            "relayd_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            env!("RELAYD_GIT_COMMIT")
        );
        assert!(page.contains(&version), "{page}");
        assert!(page.contains("relayd_replication_lag_seconds 0.25\n"));
        assert!(page.contains("relayd_spool_disk_free_bytes 10\n"));
        assert!(page.contains("relayd_spool_disk_size_bytes 20\n"));
        assert!(page.contains("relayd_spool_file_bytes 5\n"));
        assert!(page.contains("relayd_witness_last_answer_seconds 1.5\n"));
        assert!(page.contains("relayd_failover_paused 1\n"));
        let families: Vec<&str> = page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), 24);
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("sample line");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap_or(name);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| base.strip_suffix(suffix))
                .filter(|family| page.contains(&format!("# TYPE {family} histogram\n")))
                .unwrap_or(base);
            assert!(page.contains(&format!("# HELP {family} ")), "{line}");
        }
    }

    #[test]
    fn gauges_a_node_cannot_read_are_left_out() {
        let page = render(&Snapshot::default());
        assert!(!page.contains("relayd_spool_disk_free_bytes"));
        assert!(!page.contains("relayd_witness_last_answer_seconds"));
    }

    #[test]
    fn a_histogram_shows_cumulative_buckets_its_sum_and_its_count() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_millis(700));
        let page = render(&Snapshot { smtp_commit: histogram.snapshot(), ..Snapshot::default() });
        let name = "relayd_smtp_commit_seconds";
        assert!(page.contains(&format!("# TYPE {name} histogram\n")));
        for (le, count) in
            [("0.001", 0), ("0.0025", 2), ("0.5", 2), ("1", 3), ("60", 3), ("+Inf", 3)]
        {
            let sample = format!("{name}_bucket{{le=\"{le}\"}} {count}\n");
            assert!(page.contains(&sample), "{sample} in {page}");
        }
        assert!(page.contains(&format!("{name}_sum 0.704\n")), "{page}");
        assert!(page.contains(&format!("{name}_count 3\n")));
        let buckets = page.lines().filter(|l| l.starts_with(&format!("{name}_bucket"))).count();
        assert_eq!(buckets, BUCKETS.len() + 1);
        // A histogram never observed still shows every bucket, at zero.
        assert!(page.contains("relayd_delivery_attempt_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(page.contains("relayd_delivery_attempt_seconds_count 0\n"));
    }
}
