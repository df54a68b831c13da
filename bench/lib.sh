# Shared by the benchmark scripts: source it.

# node_config FIELD=VALUE...: a node's config from the template the tests and the drill use too
# (scripts/node-config.sh says what each field is).
node_config() { "$(dirname "${BASH_SOURCE[0]}")/../scripts/node-config.sh" "$@"; }

# The fields of a node whose mail stays queued: relayed for example.test (and for anything from
# loopback, the default trusted network), routed to a closed loopback port so that nothing
# leaves the machine, retried hourly.
queued_mail=(relay=example.test route=127.0.0.1:9 'retry=["1h"]')

# smtp-source and smtp-sink (Postfix's test tools) on the PATH, installed when missing.
need_postfix_tools() {
  export PATH=$PATH:/usr/sbin
  if ! command -v smtp-source >/dev/null; then
    apt-get update -qq
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
  fi
}

# Waits (up to 10 s) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
