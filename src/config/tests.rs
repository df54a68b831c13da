use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "t.toml".to_string())
}

#[track_caller]
fn parse_err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted: {text}\n{c:#?}"),
        Err(e) => e,
    }
}

/// Asserts the error's line and key, and that its message contains every one of `words`.
#[track_caller]
fn assert_err(text: &str, line: Option<usize>, key: Option<&str>, words: &[&str]) {
    let e = parse_err(text);
    assert_eq!(e.file, "t.toml", "{e}");
    assert_eq!((e.line, e.key.as_deref()), (line, key), "{e}");
    for w in words {
        assert!(e.message.contains(w), "{e:?} lacks {w:?}");
    }
}

/// A valid [smtp] section, so that the tests do not depend on the system's host name.
const SMTP: &str = "[smtp]\nhostname = \"mx.example.net\"\n";

const CLUSTER: &str = "\
[cluster]
peer = \"10.0.0.2:7400\"
tls_cert = \"c.pem\"
tls_key = \"c.key\"
tls_ca = \"ca.pem\"
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn embedded_default_loads() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.source, "<embedded default>");
    assert_eq!(c.node.role, Role::Primary);
    assert_eq!(c.node.data_dir, PathBuf::from("./relayd-data"));
    assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
    assert_eq!(c.admin.listen, "127.0.0.1:8025".parse().unwrap());
    assert_eq!(c.admin.token_file, None);
    assert_eq!(c.cluster, None);
    assert!(c.relay.domains.is_empty());
    assert!(c.relay.is_trusted(ip("127.0.0.1")));
    assert!(c.relay.is_trusted(ip("127.9.8.7")));
    assert!(c.relay.is_trusted(ip("::1")));
    assert!(!c.relay.is_trusted(ip("10.0.0.1")));
    assert_eq!(
        c.routes,
        vec![RouteConfig {
            domain: "*".into(),
            next_hop: NextHop::Mx,
            tls: RouteTls::Opportunistic
        }]
    );
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = parse("").unwrap();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    assert_eq!(c.node.name, host);
    assert_eq!(c.smtp.hostname, host);
    assert_eq!(c.smtp.max_message_size, 25 * 1024 * 1024);
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.smtp.max_connections, 1000);
    assert_eq!(c.smtp.max_connections_per_ip, 20);
    assert_eq!(c.smtp.command_timeout, Duration::from_secs(300));
    assert_eq!(c.smtp.data_timeout, Duration::from_secs(300));
    assert_eq!(c.smtp.min_data_rate, 500);
    assert_eq!(c.smtp.max_bad_commands, 20);
    assert_eq!(c.smtp.max_junk_commands, 100);
    assert_eq!(c.smtp.max_received_headers, 50);
    assert_eq!(c.smtp.tls_cert, None);
    assert_eq!(c.node.min_free_space, 64 * 1024 * 1024);
    let mins = |m: u64| Duration::from_secs(m * 60);
    assert_eq!(c.delivery.retry, vec![mins(1), mins(5), mins(15), mins(60), mins(240)]);
    assert_eq!(c.delivery.max_queue_lifetime, Duration::from_secs(5 * 86400));
    assert_eq!(c.delivery.delay_warning_time, Duration::from_secs(4 * 3600));
    assert_eq!(c.delivery.concurrency_per_host, 10);
    // The embedded file spells out some defaults; it must agree with the built-in ones.
    // (It has an [admin] section, which an empty file has not.)
    let embedded = Config::embedded_default().unwrap();
    assert!(!c.admin.section && embedded.admin.section);
    let admin = AdminConfig { section: true, ..c.admin.clone() };
    assert_eq!(Config { source: embedded.source.clone(), admin, ..c }, embedded);
}

#[test]
fn cluster_defaults() {
    let c = parse(&format!("{SMTP}{CLUSTER}")).unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(cl.listen, "0.0.0.0:7400".parse().unwrap());
    assert_eq!(cl.peer.as_deref(), Some("10.0.0.2:7400"));
    assert_eq!(cl.witness, None);
    assert_eq!(cl.replication, ReplicationMode::Sync);
    assert_eq!(cl.sync_timeout, Duration::from_secs(2));
    assert_eq!(cl.on_standby_loss, StandbyLoss::Degrade);
    assert_eq!(cl.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(cl.failover_timeout, Duration::from_millis(2500));
    assert!(cl.auto_failover);
    assert_eq!(cl.on_promote, None);
}

#[test]
fn example_primary_loads() {
    let c = Config::load(&example("primary.toml")).unwrap();
    assert!(c.source.ends_with("primary.toml"));
    assert_eq!(c.node.name, "mx1");
    assert_eq!(c.node.role, Role::Primary);
    assert_eq!(c.smtp.hostname, "mx1.example.net");
    assert_eq!(c.smtp.tls_key, Some(PathBuf::from("/etc/relayd/tls/smtp.key")));
    assert_eq!(c.routes.len(), 2);
    let cl = c.cluster.unwrap();
    assert_eq!(cl.listen, "10.0.0.1:7400".parse().unwrap());
    assert_eq!(cl.peer.as_deref(), Some("10.0.0.2:7400"));
    assert_eq!(cl.witness.as_deref(), Some("10.0.0.3:7400"));
    assert_eq!(cl.tls_ca, PathBuf::from("/etc/relayd/cluster/ca.pem"));
    assert_eq!(cl.on_demote, Some(PathBuf::from("/etc/relayd/hooks/demote")));
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn example_standby_loads() {
    let c = Config::load(&example("standby.toml")).unwrap();
    assert_eq!(c.node.name, "mx2");
    assert_eq!(c.node.role, Role::Standby);
    let cl = c.cluster.unwrap();
    assert_eq!(cl.listen, "10.0.0.2:7400".parse().unwrap());
    assert_eq!(cl.peer.as_deref(), Some("10.0.0.1:7400"));
    assert_eq!(cl.witness.as_deref(), Some("10.0.0.3:7400"));
}

#[test]
fn example_witness_loads() {
    let c = Config::load(&example("witness.toml")).unwrap();
    assert_eq!(c.node.name, "w1");
    assert_eq!(c.node.role, Role::Witness);
    let cl = c.cluster.unwrap();
    assert_eq!(cl.listen, "10.0.0.3:7400".parse().unwrap());
    assert_eq!(cl.peer, None);
    assert!(c.admin.section, "the example witness serves its admin endpoint");
    assert_eq!(c.admin.listen, "127.0.0.1:8025".parse().unwrap());
}

/// A witness serves the admin endpoint only when its file has an `[admin]` section (with a
/// data node's keys and defaults); a witness file from before is read as before.
#[test]
fn a_witness_admin_endpoint_is_the_admin_section_of_its_file() {
    const WITNESS: &str = "[node]\nrole = \"witness\"\n[cluster]\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"a\"\n";
    let without = parse(WITNESS).unwrap();
    assert!(!without.admin.section);
    let empty = parse(&format!("{WITNESS}[admin]\n")).unwrap();
    assert!(empty.admin.section);
    assert_eq!(empty.admin.listen, "127.0.0.1:8025".parse().unwrap());
    let keys =
        parse(&format!("{WITNESS}[admin]\nlisten = \"127.0.0.1:9025\"\ntoken_file = \"t\"\n"))
            .unwrap();
    assert!(keys.admin.section);
    assert_eq!(keys.admin.listen, "127.0.0.1:9025".parse().unwrap());
    assert_eq!(keys.admin.token_file.as_deref(), Some(Path::new("t")));
    assert_err(&format!("{WITNESS}[admin]\nport = 1\n"), Some(8), Some("admin.port"), &["unknown"]);
}

#[test]
fn missing_file() {
    let e = Config::load(Path::new("/nonexistent/relayd.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/relayd.toml");
    assert_eq!((e.line, e.key.as_deref()), (None, None));
    assert!(e.message.starts_with("cannot read: "), "{e}");
    assert!(e.to_string().starts_with("/nonexistent/relayd.toml: cannot read: "));
}

#[test]
fn error_display_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayd.toml");
    std::fs::write(&path, "[smtp]\n\nmax_message_size = \"25 parsecs\"\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3: smtp.max_message_size: invalid size \"25 parsecs\": expected a number with a \
             unit such as \"25MiB\" or \"512KiB\"",
            path.display()
        )
    );
}

#[test]
fn syntax_errors() {
    assert_err("[smtp]\nlisten = [\n", Some(3), None, &[]);
    assert_err("[node]\nname = \"a\"\nname = \"b\"\n", Some(3), None, &["duplicate"]);
    assert_err("[node\n", Some(1), None, &[]);
}

#[test]
fn unknown_keys() {
    assert_err(
        "[smtp]\nlisten = []\nmax_msg_size = 5\n",
        Some(3),
        Some("smtp.max_msg_size"),
        &["unknown key", "max_message_size", "max_bad_commands"],
    );
    assert_err("[node]\n[smpt]\n", Some(2), Some("smpt"), &["unknown key", "smtp", "cluster"]);
    assert_err(
        "[[route]]\ndomain = \"*\"\n[[route]]\ndomain = \"a.example\"\nhop = \"mx\"\n",
        Some(5),
        Some("route[2].hop"),
        &["unknown key", "next_hop"],
    );
    assert_err(
        "[cluster]\nauto_failover = true\nleese = \"2s\"\n",
        Some(3),
        Some("cluster.leese"),
        &["unknown key", "lease"],
    );
}

#[test]
fn wrong_types() {
    assert_err(
        "[smtp]\nmax_recipients = \"many\"\n",
        Some(2),
        Some("smtp.max_recipients"),
        &["invalid type"],
    );
    assert_err("[smtp]\nmax_connections = -1\n", Some(2), Some("smtp.max_connections"), &[]);
    assert_err(
        "[cluster]\nauto_failover = \"yes\"\n",
        Some(2),
        Some("cluster.auto_failover"),
        &["invalid type", "true or false"],
    );
    assert_err(
        "[smtp]\ncommand_timeout = 300\n",
        Some(2),
        Some("smtp.command_timeout"),
        &["invalid type", "duration"],
    );
    assert_err("smtp = 5\n", Some(1), Some("smtp"), &["invalid type"]);
    assert_err("[route]\ndomain = \"*\"\n", Some(1), Some("route"), &["invalid type"]);
}

#[test]
fn bad_values() {
    assert_err(
        "[node]\nrole = \"boss\"\n",
        Some(2),
        Some("node.role"),
        &["invalid role \"boss\": expected one of primary, standby, witness"],
    );
    assert_err(
        "[delivery]\nretry = [\"1m\", \"5 parsecs\"]\n",
        Some(2),
        Some("delivery.retry[2]"),
        &["invalid duration \"5 parsecs\"", "\"5m\""],
    );
    assert_err(
        "[smtp]\nlisten = [\"127.0.0.1:25\",\n  \"localhost:25\"]\n",
        Some(3),
        Some("smtp.listen[2]"),
        &["invalid address \"localhost:25\"", "IP:PORT"],
    );
    assert_err(
        "[relay]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
        Some(2),
        Some("relay.trusted_networks[1]"),
        &["invalid network"],
    );
    assert_err(
        "[relay]\ndomains = [\"exa mple.com\"]\n",
        Some(2),
        Some("relay.domains[1]"),
        &["invalid domain name"],
    );
    assert_err(
        "[[route]]\ndomain = \"*\"\n\n[[route]]\ndomain = \"a.example\"\nnext_hop = \"a.example\"\n",
        Some(6),
        Some("route[2].next_hop"),
        &["HOST:PORT", "\"mx\""],
    );
    assert_err(
        "[[route]]\ndomain = \"a.example\"\nnext_hop = \"a.example:0\"\n",
        Some(3),
        Some("route[1].next_hop"),
        &["1 to 65535"],
    );
    assert_err(
        "[[route]]\ndomain = \"a.example\"\ntls = \"always\"\n",
        Some(3),
        Some("route[1].tls"),
        &["expected one of none, opportunistic, required"],
    );
    assert_err(
        "[cluster]\nreplication = \"semi\"\n",
        Some(2),
        Some("cluster.replication"),
        &["expected one of sync, async"],
    );
    assert_err("[cluster]\npeer = \"10.0.0.2\"\n", Some(2), Some("cluster.peer"), &["HOST:PORT"]);
    assert_err(
        "[log]\nformat = \"xml\"\n",
        Some(2),
        Some("log.format"),
        &["expected one of text, json"],
    );
    assert_err("[node]\ndata_dir = \"\"\n", Some(2), Some("node.data_dir"), &["empty"]);
}

#[test]
fn sizes_and_durations_in_files() {
    let c = parse(&format!(
        "{SMTP}max_message_size = 2048\ncommand_timeout = \"90s\"\ndata_timeout = \"1m 30s\"\n\
         [delivery]\nretry = [\"200ms\", \"5d\"]\n"
    ))
    .unwrap();
    assert_eq!(c.smtp.max_message_size, 2048);
    assert_eq!(c.smtp.command_timeout, Duration::from_secs(90));
    assert_eq!(c.smtp.data_timeout, Duration::from_secs(90));
    assert_eq!(c.delivery.retry, vec![Duration::from_millis(200), Duration::from_secs(5 * 86400)]);
    let c = parse(&format!("{SMTP}max_message_size = \"512KiB\"\n")).unwrap();
    assert_eq!(c.smtp.max_message_size, 512 * 1024);
    let c = parse("[node]\nmin_free_space = \"1GiB\"\n").unwrap();
    assert_eq!(c.node.min_free_space, 1 << 30);
    assert_eq!(parse("[node]\nmin_free_space = 0\n").unwrap().node.min_free_space, 0);
    assert_err(
        "[smtp]\nmax_message_size = -5\n",
        Some(2),
        Some("smtp.max_message_size"),
        &["negative"],
    );
}

#[test]
fn smtp_rules() {
    assert_err(
        &format!("{SMTP}max_recipients = 5000\n"),
        Some(3),
        Some("smtp.max_recipients"),
        &["1 to 1000", "inline"],
    );
    assert_err(
        &format!("{SMTP}max_recipients = 0\n"),
        Some(3),
        Some("smtp.max_recipients"),
        &["1 to 1000"],
    );
    assert_err(
        &format!("{SMTP}max_connections = 0\nmax_connections_per_ip = 0\n"),
        Some(3),
        Some("smtp.max_connections"),
        &["at least 1"],
    );
    assert_err(
        &format!("{SMTP}max_connections = 10\n\nmax_connections_per_ip = 11\n"),
        Some(5),
        Some("smtp.max_connections_per_ip"),
        &["1 to smtp.max_connections (10)"],
    );
    assert_err(
        &format!("{SMTP}max_message_size = \"512B\"\n"),
        Some(3),
        Some("smtp.max_message_size"),
        &["at least 1KiB"],
    );
    assert_err(
        &format!("{SMTP}data_timeout = \"0s\"\n"),
        Some(3),
        Some("smtp.data_timeout"),
        &["longer than 0s"],
    );
    assert_err(
        &format!("{SMTP}command_timeout = \"0s\"\n"),
        Some(3),
        Some("smtp.command_timeout"),
        &["longer than 0s"],
    );
    for key in ["max_bad_commands", "max_junk_commands", "max_received_headers", "min_data_rate"] {
        let key_path = format!("smtp.{key}");
        assert_err(&format!("{SMTP}{key} = 0\n"), Some(3), Some(&key_path), &["at least 1"]);
    }
    assert_err(
        "[smtp]\nhostname = \"mx_1.example.net\"\n",
        Some(2),
        Some("smtp.hostname"),
        &["invalid domain name"],
    );
    assert_err(&format!("{SMTP}listen = []\n"), Some(3), Some("smtp.listen"), &["role primary"]);
    assert_err(&format!("{SMTP}tls_cert = \"a.pem\"\n"), Some(1), Some("smtp.tls_key"), &["both"]);
    assert_err(&format!("{SMTP}tls_key = \"a.key\"\n"), Some(1), Some("smtp.tls_cert"), &["both"]);
    assert_err("[node]\nname = \"mx 1\"\n", Some(2), Some("node.name"), &["invalid node name"]);
}

#[test]
fn route_rules() {
    assert_err(
        &format!("{SMTP}[[route]]\ndomain = \"a.example\"\n[[route]]\ndomain = \"A.example.\"\n"),
        Some(6),
        Some("route[2].domain"),
        &["route[1]", "unique"],
    );
    assert_err(
        &format!("{SMTP}[[route]]\ndomain = \"*\"\n[[route]]\ndomain = \"*\"\n"),
        Some(6),
        Some("route[2].domain"),
        &["at most one"],
    );
    assert_err(
        &format!("{SMTP}[[route]]\nnext_hop = \"mx\"\n"),
        Some(3),
        Some("route[1].domain"),
        &["missing"],
    );
    assert_err(
        &format!("{SMTP}[[route]]\ndomain = \".example.com\"\n"),
        Some(4),
        Some("route[1].domain"),
        &["\"*\""],
    );
}

#[test]
fn delivery_rules() {
    assert_err(
        &format!("{SMTP}[delivery]\nretry = []\n"),
        Some(4),
        Some("delivery.retry"),
        &["at least one"],
    );
    assert_err(
        &format!("{SMTP}[delivery]\nretry = [\"1m\",\n \"0s\"]\n"),
        Some(5),
        Some("delivery.retry[2]"),
        &["longer than 0s"],
    );
    assert_err(
        &format!("{SMTP}[delivery]\nconcurrency_per_host = 0\n"),
        Some(4),
        Some("delivery.concurrency_per_host"),
        &["at least 1"],
    );
    assert_err(
        &format!("{SMTP}[delivery]\nmax_queue_lifetime = \"0s\"\n"),
        Some(4),
        Some("delivery.max_queue_lifetime"),
        &["longer than 0s"],
    );
    assert_err(
        &format!("{SMTP}[delivery]\nretry = [\"1m\"]\ndelay_warning_time = \"0s\"\n"),
        Some(5),
        Some("delivery.delay_warning_time"),
        &["longer than 0s"],
    );
    let c = parse(&format!("{SMTP}[delivery]\ndelay_warning_time = \"30m\"\n")).unwrap();
    assert_eq!(c.delivery.delay_warning_time, Duration::from_secs(30 * 60));
}

#[test]
fn log_rules() {
    let c = parse(&format!("{SMTP}[log]\nlevel = \"relayd=debug,warn\"\n")).unwrap();
    assert_eq!(c.log.level, "relayd=debug,warn");
    assert_err(
        &format!("{SMTP}[log]\nlevel = \"infoo\"\n"),
        Some(4),
        Some("log.level"),
        &["\"infoo\"", "trace, debug, info, warn, error, off"],
    );
}

#[test]
fn cluster_rules() {
    assert_err(
        &format!(
            "{SMTP}\n[cluster]\npeer = \"10.0.0.2:7400\"\ntls_cert = \"c\"\ntls_key = \"k\"\n"
        ),
        Some(4),
        Some("cluster.tls_ca"),
        &["missing", "tls_ca"],
    );
    assert_err(
        &format!("{SMTP}{}", CLUSTER.replace("peer = \"10.0.0.2:7400\"\n", "")),
        Some(3),
        Some("cluster.peer"),
        &["missing", "primary"],
    );
    assert_err(
        &format!("{SMTP}{CLUSTER}lease = \"2300ms\"\n"),
        Some(8),
        Some("cluster.lease"),
        &["must be shorter than failover_timeout (2s 500ms)", "still be serving"],
    );
    assert_err(
        &format!("{SMTP}{CLUSTER}heartbeat_interval = \"2500ms\"\n"),
        Some(8),
        Some("cluster.heartbeat_interval"),
        &["shorter than cluster.failover_timeout (2s 500ms)"],
    );
    assert_err(
        &format!("{SMTP}{CLUSTER}heartbeat_interval = \"0s\"\n"),
        Some(8),
        Some("cluster.heartbeat_interval"),
        &["longer than 0s"],
    );
    assert_err(
        &format!("{SMTP}{CLUSTER}sync_timeout = \"0ms\"\n"),
        Some(8),
        Some("cluster.sync_timeout"),
        &["longer than 0s"],
    );
    assert_err("[node]\nrole = \"witness\"\n", None, Some("cluster"), &["witness", "[cluster]"]);
    // A witness needs no peer, and its (defaulted) SMTP settings are not checked.
    let c = parse(
        "[node]\nrole = \"witness\"\n[cluster]\ntls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"a\"\n",
    )
    .unwrap();
    assert_eq!(c.node.role, Role::Witness);
}

#[test]
fn relay_domains() {
    let c = parse(&format!("{SMTP}[relay]\ndomains = [\"Example.com.\", \".sub.example.org\"]\n"))
        .unwrap();
    assert_eq!(c.relay.domains, vec!["example.com", ".sub.example.org"]);
    let r = &c.relay;
    assert!(r.is_relay_domain("example.com"));
    assert!(r.is_relay_domain("EXAMPLE.COM"));
    assert!(r.is_relay_domain("example.com."));
    assert!(!r.is_relay_domain("mail.example.com"));
    assert!(!r.is_relay_domain("notexample.com"));
    assert!(!r.is_relay_domain("example.co"));
    assert!(r.is_relay_domain("a.sub.example.org"));
    assert!(r.is_relay_domain("A.B.Sub.Example.Org."));
    assert!(!r.is_relay_domain("sub.example.org"));
    assert!(!r.is_relay_domain("asub.example.org"));
    assert!(!r.is_relay_domain(".sub.example.org"));
    assert!(!r.is_relay_domain(""));
    assert!(!r.is_relay_domain("."));
    assert!(!r.is_relay_domain("ü.sub.example.or"));
}

#[test]
fn trusted_networks() {
    let c = parse(&format!(
        "{SMTP}[relay]\ntrusted_networks = [\"192.0.2.0/24\", \"2001:db8::/32\", \"198.51.100.7\"]\n"
    ))
    .unwrap();
    let r = &c.relay;
    assert!(r.is_trusted(ip("192.0.2.1")));
    assert!(r.is_trusted(ip("::ffff:192.0.2.200")));
    assert!(r.is_trusted(ip("2001:db8::25")));
    assert!(r.is_trusted(ip("198.51.100.7")));
    assert!(!r.is_trusted(ip("198.51.100.8")));
    assert!(!r.is_trusted(ip("127.0.0.1")));
    assert!(!r.is_trusted(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert!(!r.is_trusted(ip("::ffff:10.0.0.1")));

    let d = Config::embedded_default().unwrap();
    assert!(d.relay.is_trusted(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())));
}

#[test]
fn routes() {
    let c = parse(&format!(
        "{SMTP}[[route]]\ndomain = \"Example.com\"\nnext_hop = \"mail.example.com:25\"\n\
         tls = \"required\"\n[[route]]\ndomain = \"v6.example\"\nnext_hop = \"[::1]:2525\"\n"
    ))
    .unwrap();
    // No "*" route in the file: the default MX route is appended.
    assert_eq!(c.routes.len(), 3);
    let r = c.route_for("EXAMPLE.com.").unwrap();
    assert_eq!(r.domain, "example.com");
    assert_eq!(r.next_hop, NextHop::Host { host: "mail.example.com".into(), port: 25 });
    assert_eq!(r.tls, RouteTls::Required);
    let r = c.route_for("v6.example").unwrap();
    assert_eq!(r.next_hop, NextHop::Host { host: "::1".into(), port: 2525 });
    assert_eq!(r.tls, RouteTls::Opportunistic);
    let r = c.route_for("sub.example.com").unwrap();
    assert_eq!((r.domain.as_str(), &r.next_hop), ("*", &NextHop::Mx));

    // A "*" route in the file is used as written, wherever it stands.
    let c = parse(&format!(
        "{SMTP}[[route]]\ndomain = \"*\"\nnext_hop = \"smarthost.example.net:587\"\n\
         [[route]]\ndomain = \"example.com\"\nnext_hop = \"mx\"\n"
    ))
    .unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.route_for("example.com").unwrap().next_hop, NextHop::Mx);
    assert_eq!(
        c.route_for("other.example").unwrap().next_hop.to_string(),
        "smarthost.example.net:587"
    );

    // Inline-table form, with errors located inside it.
    let c = parse(&format!("route = [{{ domain = \"a.example\", next_hop = \"mx\" }}]\n{SMTP}"))
        .unwrap();
    assert_eq!(c.route_for("a.example").unwrap().domain, "a.example");
    assert_err(
        "route = [{ domain = \"*\" },\n  { domain = \"*\" }]\n",
        Some(2),
        Some("route[2].domain"),
        &["at most one"],
    );
}

#[test]
fn with_role() {
    // The primary's file serves as a standby or a witness too.
    let c = Config::load(&example("primary.toml")).unwrap();
    let c = c.with_role(Role::Standby).unwrap();
    assert_eq!(c.node.role, Role::Standby);
    let c = c.with_role(Role::Witness).unwrap();
    assert_eq!(c.node.role, Role::Witness);

    // A witness's file lacks the peer a data node needs: named with the [cluster] line.
    let path = example("witness.toml");
    let e = Config::load(&path).unwrap().with_role(Role::Primary).unwrap_err();
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.key.as_deref(), Some("cluster.peer"));
    let text = std::fs::read_to_string(&path).unwrap();
    let cluster_line = text.lines().position(|l| l == "[cluster]").unwrap() + 1;
    assert_eq!(e.line, Some(cluster_line));

    // The embedded default has no [cluster], which a witness needs.
    let e = Config::embedded_default().unwrap().with_role(Role::Witness).unwrap_err();
    assert_eq!(e.file, "<embedded default>");
    assert_eq!((e.line, e.key.as_deref()), (None, Some("cluster")));
    assert!(Config::embedded_default().unwrap().with_role(Role::Standby).is_ok());
}

#[test]
fn roles_parse_for_the_command_line() {
    assert_eq!("standby".parse::<Role>(), Ok(Role::Standby));
    assert_eq!("Witness".parse::<Role>(), Ok(Role::Witness));
    assert_eq!(Role::Primary.to_string(), "primary");
    assert_eq!(
        "boss".parse::<Role>().unwrap_err().to_string(),
        "invalid role \"boss\": expected one of primary, standby, witness"
    );
}

#[test]
fn relay_domain_tables_are_relay_domains_with_recipient_checks() {
    let c = parse(&format!(
        "{SMTP}[relay]\ndomains = [\"plain.test\"]\nverify_timeout = \"2s\"\n\
         [[relay.domain]]\nname = \"Example.com\"\nrecipients = [\"Alice@Example.com\"]\n\
         recipients_file = \"/etc/relayd/example.com\"\nverify = true\n\
         [[relay.domain]]\nname = \".example.org\"\nrecipients = [\"@sales.example.org\"]\n"
    ))
    .unwrap();
    let r = &c.relay;
    assert_eq!(r.domains, vec!["plain.test", "example.com", ".example.org"]);
    assert!(r.is_relay_domain("EXAMPLE.com") && r.is_relay_domain("sales.example.org"));
    assert!(r.recipient_check("plain.test").is_none());
    let first = r.recipient_check("example.COM.").expect("the example.com table");
    assert_eq!(
        first.recipients,
        vec![RecipientEntry::Address { local: "Alice".into(), domain: "example.com".into() }]
    );
    assert_eq!(first.recipients_file, Some(PathBuf::from("/etc/relayd/example.com")));
    assert!(first.verify);
    let second = r.recipient_check("x.example.org").expect("the .example.org table");
    assert!(!second.verify && second.has_list());
    assert_eq!(r.verify.timeout, Duration::from_secs(2));
    assert_eq!(r.verify.positive_expire, Duration::from_secs(7 * 86_400));
    assert_eq!(r.verify.negative_expire, Duration::from_secs(3600));
    assert_eq!(r.verify.cache_size, 100_000);
}

#[test]
fn relay_domain_tables_that_cannot_work_are_refused() {
    assert_err(
        "[[relay.domain]]\nverify = true\n",
        Some(1),
        Some("relay.domain[1].name"),
        &["missing"],
    );
    assert_err(
        "[[relay.domain]]\nname = \"example.com\"\n",
        Some(2),
        Some("relay.domain[1].name"),
        &["checks nothing"],
    );
    assert_err(
        "[[relay.domain]]\nname = \"example.com\"\nrecipients = [\"a@example.com\", \"b@other.test\"]\n",
        Some(3),
        Some("relay.domain[1].recipients[2]"),
        &["\"other.test\" is not \"example.com\""],
    );
    assert_err(
        "[[relay.domain]]\nname = \"example.com\"\nrecipients = [\"nobody\"]\n",
        Some(3),
        Some("relay.domain[1].recipients[1]"),
        &["invalid recipient \"nobody\""],
    );
    assert_err(
        "[[relay.domain]]\nname = \"a.test\"\nverify = true\n[[relay.domain]]\nname = \"A.test\"\nverify = true\n",
        Some(5),
        Some("relay.domain[2].name"),
        &["a second [[relay.domain]] for \"a.test\""],
    );
    assert_err(
        "[relay]\nverify_timeout = \"0s\"\n",
        Some(2),
        Some("relay.verify_timeout"),
        &["longer than 0s"],
    );
}

#[test]
fn log_retention_keys() {
    let c = parse(SMTP).unwrap();
    assert_eq!(c.node.log_retention_bytes, 512 * 1024 * 1024);
    assert_eq!(c.node.log_retention_age, Duration::from_secs(86_400));
    let c = parse(&format!(
        "[node]\nlog_retention_bytes = \"2GiB\"\nlog_retention_age = \"6h\"\n{SMTP}"
    ))
    .unwrap();
    assert_eq!(c.node.log_retention_bytes, 2 << 30);
    assert_eq!(c.node.log_retention_age, Duration::from_secs(6 * 3600));
    assert_err(
        "[node]\nname = \"a\"\nlog_retention_bytes = \"512KiB\"\n",
        Some(3),
        Some("node.log_retention_bytes"),
        &["at least 1MiB"],
    );
    assert_err(
        "[node]\nlog_retention_age = \"500ms\"\n",
        Some(2),
        Some("node.log_retention_age"),
        &["at least 1s"],
    );
    assert_err(
        "[node]\nlog_retention_age = 60\n",
        Some(2),
        Some("node.log_retention_age"),
        &["duration string"],
    );
}
