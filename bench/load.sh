#!/usr/bin/env bash
# Load and slow clients (issue 7): one relayd (single node, no cluster) per scenario, on
# loopback, driven by bench/load.py (Python asyncio; the legitimate client is smtplib).
#
#   idle       1,000 sessions greeted and idle (EHLO, then nothing): all admitted, peak and
#              steady RSS, a legitimate client's latency meanwhile, then command_timeout fires.
#   idle-tls   the same, each session after STARTTLS (a certificate from `relayd certs init`).
#   busy       1,000 sessions in the middle of DATA, 16 KiB of content sent by each: RSS; then
#              all end their messages at once.
#   slowloris  50 clients trickling a command line, 50 whole NOOP lines, 50 a body, a byte a
#              second: when each is closed and with what reply; a legitimate client meanwhile.
#   flood      2,000 connections at once against max_connections = 100: the excess gets
#              421 4.7.0 at once, admitted sessions take mail, the per-IP limit, service after.
#   emfile     400 connections against a relayd limited to 256 descriptors (prlimit): no
#              spinning accept loop, and service once descriptors are free.
#
# Usage: bench/load.sh PATH/TO/relayd [SCENARIO...]   (default: all six, in that order)
# Knobs (environment): SESSIONS=1000 SLOW=50 FLOOD=2000
# Mail is routed to a closed loopback port (it stays queued): nothing leaves the machine.
# Runs as root or not; needs python3 and prlimit (util-linux). Leaves nothing running.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: load.sh PATH/TO/relayd [idle|idle-tls|busy|slowloris|flood|emfile]...}")
shift
scenarios=("$@"); [ ${#scenarios[@]} -gt 0 ] || scenarios=(idle idle-tls busy slowloris flood emfile)
SESSIONS=${SESSIONS:-1000}; SLOW=${SLOW:-50}; FLOOD=${FLOOD:-2000}
here=$(dirname "$(readlink -f "$0")")
W=$(mktemp -d -p /var/tmp); relayd_pid=
cleanup() { [ -n "$relayd_pid" ] && kill "$relayd_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
# The generator holds a descriptor per session, and so does relayd (it inherits this limit,
# except in the emfile scenario).
want=$((FLOOD + SESSIONS + 1024)); hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$hard" -ge "$want" ] || want=$hard
ulimit -n "$want" || exit 1
[ "$want" -ge $((FLOOD + 256)) ] || { echo "ulimit -n: $want descriptors are too few" >&2; exit 1; }
port=2661; admin=2662
for p in $port $admin; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is taken" >&2; exit 1; fi
done

start() { # SMTP_KEYS [WRAPPER...]: starts relayd with these [smtp] keys, waits until it listens
  local keys=$1; shift
  rm -rf "$W/data"
  node_config data_dir="$W/data" name=load role=primary smtp="127.0.0.1:$port" \
    hostname=load.bench.test smtp_keys="$keys" "${queued_mail[@]}" admin="127.0.0.1:$admin" \
    log=info > "$W/relayd.toml"
  : > "$W/relayd.log"
  "$@" "$relayd" --config "$W/relayd.toml" >> "$W/relayd.log" 2>&1 & relayd_pid=$!
  for _ in $(seq 1 100); do grep -q "SMTP listening" "$W/relayd.log" && return 0; sleep 0.1; done
  echo "relayd did not start:" >&2; cat "$W/relayd.log" >&2; exit 1
}
stop() {
  kill "$relayd_pid"; wait "$relayd_pid"; local status=$?
  echo "relayd exit status after SIGTERM: $status"
  relayd_pid=
}
load() { python3 "$here/load.py" "$@" --port "$port" --admin "$admin" --pid "$relayd_pid"; }

failed=0
for scenario in "${scenarios[@]}"; do
  echo "== $scenario"
  case $scenario in
  idle)
    start $'max_connections = 1100\nmax_connections_per_ip = 20\ncommand_timeout = "30s"'
    load idle --sessions "$SESSIONS" --per-ip 10 --command-timeout 30 || failed=1 ;;
  idle-tls)
    [ -f "$W/certs/load.pem" ] || "$relayd" certs init "$W/certs" --nodes load >/dev/null || exit 1
    start $'max_connections = 1100\nmax_connections_per_ip = 20\ncommand_timeout = "30s"'"
tls_cert = \"$W/certs/load.pem\"
tls_key = \"$W/certs/load.key\""
    load idle --tls --sessions "$SESSIONS" --per-ip 10 --command-timeout 30 || failed=1 ;;
  busy)
    start $'max_connections = 1100\nmax_connections_per_ip = 20'
    load busy --sessions "$SESSIONS" --per-ip 10 || failed=1 ;;
  slowloris)
    start $'command_timeout = "10s"\ndata_timeout = "10s"\nmax_junk_commands = 3'
    load slowloris --slow "$SLOW" --per-ip 10 --command-timeout 10 --data-timeout 10 --junk 3 || failed=1 ;;
  flood)
    start $'max_connections = 100\nmax_connections_per_ip = 20\ncommand_timeout = "30s"'
    load flood --flood "$FLOOD" --per-ip 10 --max-connections 100 --per-ip-limit 20 || failed=1
    echo "refusals logged: $(grep -c 'connection refused' "$W/relayd.log")" ;;
  emfile)
    start $'max_connections = 1000\nmax_connections_per_ip = 20' prlimit --nofile=256:256
    load emfile --sessions 400 --per-ip 10 || failed=1
    grep -E "open-files|accept failed|accepting connections again" "$W/relayd.log" | cut -c1-300 ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  stop
done
exit $failed
