# Shared by the benchmark scripts: source it.

# The config sections of a node whose mail stays queued: relayed for example.test (and for
# anything from loopback, the default trusted network), routed to a closed loopback port so
# that nothing leaves the machine, retried hourly.
queued_mail_sections() {
  cat <<'CONF'
[relay]
domains = ["example.test"]

[[route]]
domain = "*"
next_hop = "127.0.0.1:9"
tls = "none"

[delivery]
retry = ["1h"]
CONF
}
