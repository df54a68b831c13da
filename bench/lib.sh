# Shared by the benchmark scripts: source it.

# node_config FIELD=VALUE...: a node's config from the template the tests and the drill use too
# (scripts/node-config.sh says what each field is).
node_config() { "$(dirname "${BASH_SOURCE[0]}")/../scripts/node-config.sh" "$@"; }

# The fields of a node whose mail stays queued: relayed for example.test (and for anything from
# loopback, the default trusted network), routed to a closed loopback port so that nothing
# leaves the machine, retried hourly.
queued_mail=(relay=example.test route=127.0.0.1:9 'retry=["1h"]')
