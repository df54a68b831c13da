#!/usr/bin/env bash
# Prints a relayd config from FIELD=VALUE arguments: the one node-config template of the tests
# (tests/it/common: Node, the cluster sections, the witness), the failover drill
# (scripts/drill.sh) and the benchmarks (bench/), so that a key they all write is written in
# one place. Each section is printed when its first field is given, each key when its field is.
#
#   [node]      data_dir=DIR name=NAME role=ROLE              node_keys=TOML
#   [smtp]      smtp=ADDR (listen) hostname=NAME              smtp_keys=TOML
#   [relay]     relay=DOMAIN (domains) trusted=NET (trusted_networks)
#   [[route]]   route=NEXT_HOP route_domain=DOMAIN (default "*"), tls "none"
#   [delivery]  retry=TOML_ARRAY resolver=ADDR (resolvers)        delivery_keys=TOML
#   [admin]     admin=ADDR (listen)
#   [log]       log=LEVEL
#   [cluster]   cluster=ADDR (listen) peer=ADDR witness=ADDR certs=DIR (NAME.pem, NAME.key and
#               ca.pem of `relayd certs init DIR`)                cluster_keys=TOML
#   sections=TOML: more sections, printed last.
#
# Example: scripts/node-config.sh data_dir=/tmp/d name=a role=primary smtp=127.0.0.1:2525
set -euo pipefail
declare -A f=()
for arg in "$@"; do
  field=${arg%%=*}
  case $field in
    data_dir | name | role | node_keys | smtp | hostname | smtp_keys | relay | trusted | route | \
      route_domain | retry | resolver | delivery_keys | admin | log | cluster | peer | witness | \
      certs | cluster_keys | sections) f[$field]=${arg#*=} ;;
    *) echo "node-config.sh: unknown field in $arg" >&2; exit 2 ;;
  esac
done
# key NAME FIELD [FORMAT]: `NAME = VALUE` when FIELD is given; FORMAT wraps the value (%s).
key() {
  [ -n "${f[$2]:-}" ] || return 0
  # shellcheck disable=SC2059 # the format is this script's own
  printf "%s = ${3:-\"%s\"}\n" "$1" "${f[$2]}"
}
# more FIELD: the raw TOML lines of FIELD, when given.
more() { [ -z "${f[$1]:-}" ] || printf '%s\n' "${f[$1]}"; }

if [ -n "${f[data_dir]:-}" ]; then
  echo "[node]"; key name name; key role role; key data_dir data_dir; more node_keys; echo
fi
if [ -n "${f[smtp]:-}" ]; then
  echo "[smtp]"; key listen smtp '["%s"]'; key hostname hostname; more smtp_keys; echo
fi
if [ -n "${f[relay]:-}" ]; then
  echo "[relay]"; key domains relay '["%s"]'; key trusted_networks trusted '["%s"]'; echo
fi
if [ -n "${f[route]:-}" ]; then
  printf '[[route]]\ndomain = "%s"\n' "${f[route_domain]:-*}"
  key next_hop route; echo 'tls = "none"'; echo
fi
if [ -n "${f[retry]:-}${f[resolver]:-}${f[delivery_keys]:-}" ]; then
  echo "[delivery]"; key retry retry %s; key resolvers resolver '["%s"]'; more delivery_keys; echo
fi
if [ -n "${f[admin]:-}" ]; then
  echo "[admin]"; key listen admin; echo
fi
if [ -n "${f[log]:-}" ]; then
  echo "[log]"; key level log; echo
fi
if [ -n "${f[cluster]:-}" ]; then
  echo "[cluster]"; key listen cluster; key peer peer; key witness witness
  if [ -n "${f[certs]:-}" ]; then
    printf 'tls_cert = "%s"\ntls_key = "%s"\ntls_ca = "%s"\n' \
      "${f[certs]}/${f[name]:?certs= needs name=}.pem" "${f[certs]}/${f[name]}.key" "${f[certs]}/ca.pem"
  fi
  more cluster_keys; echo
fi
more sections
