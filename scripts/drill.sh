#!/usr/bin/env bash
# The failover drill (issue 6): the data-centre failure, replayed with real parts on one
# machine, ending in a report.
#
# Hosts are network namespaces on one Linux bridge (10.77.0.0/24, nothing routed to or from the
# machine itself):
#
#   rdd-dc1   10.77.0.11  relayd, the primary            MX 10 for customer.test
#   rdd-dc2   10.77.0.12  relayd, the standby            MX 20
#   rdd-wit   10.77.0.13  relayd, the witness
#   rdd-dns   10.77.0.14  dnsmasq: the MX and A records
#   rdd-snd   10.77.0.15  Postfix, the sending MTA, resolving MX through rdd-dns
#   rdd-sink  10.77.0.16  smtp-sink, the customer's mail server, keeping every message
#
# Steady load goes into the sending Postfix, which relays by MX. Each drill: dc1 fails (kill:
# kill -9 of its relayd; cut: its link goes down while the process lives on); a prober sends
# one message every 20 ms straight to dc2 and times the first 250 (RTO); the drill waits for
# the sending Postfix to deliver through MX 20 by itself; dc2 takes a backlog; dc1 comes back
# (restarted, or its link up) and must rejoin as the standby and catch up; `relayd demote` on
# dc2 switches the primary role back to dc1. At the end the load stops, everything drains, and
# drill.py prints the report and writes it as JSON: exit status 1 when a guarantee of
# docs/guarantees.md is broken (or the drill could not finish), 2 for bad usage.
#
# Usage (root):
#   scripts/drill.sh --short [--relayd PATH]               CI: one kill drill, one cut drill
#   scripts/drill.sh [--drills N] [--rate MSGS_PER_SEC] [--backlog N] [--kinds kill,cut]
#                    [--relayd PATH] [--json FILE (default ./drill-report.json)] [--keep]
# --drills N runs N rounds of each kind; --keep keeps the work directory (logs of every part).
# Everything it installs comes from Debian's packages (scripts/test.sh installs them):
# iproute2, postfix, dnsmasq-base, python3, util-linux.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
tool="$here/drill/drill.py"

usage() { sed -n '/^# Usage/,/^# Everything/p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "drill: $*" >&2; exit 2; }          # bad usage, or a machine without what it needs
abort() { echo "drill: $*" >&2; exit 1; }        # a failure while it runs

relayd="" drills=1 rate=50 backlog=1000 kinds="kill,cut" json="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --short) drills=1 rate=20 backlog=200 ;;
    --drills) drills=${2:?}; shift ;;
    --rate) rate=${2:?}; shift ;;
    --backlog) backlog=${2:?}; shift ;;
    --kinds) kinds=${2:?}; shift ;;
    --relayd) relayd=${2:?}; shift ;;
    --json) json=${2:?}; shift ;;
    --keep) keep=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "drill: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for number in "$drills" "$rate" "$backlog"; do
  [[ $number =~ ^[1-9][0-9]*$ ]] || die "--drills, --rate and --backlog take whole numbers from 1, not $number"
done
[ "$(id -u)" = 0 ] || die "needs root: it builds its hosts from network namespaces, veth links and a bridge"
if [ -z "$relayd" ]; then
  for candidate in "$repo/target/release/relayd" "$repo/target/debug/relayd"; do
    [ -x "$candidate" ] && { relayd=$candidate; break; }
  done
fi
[ -n "$relayd" ] && [ -x "$relayd" ] || die "no relayd binary: build one (cargo build --release) or name it with --relayd"
relayd=$(readlink -f "$relayd")
for tool_name in ip postfix postqueue smtp-sink dnsmasq python3 nsenter flock; do
  command -v "$tool_name" >/dev/null || die "$tool_name is missing (scripts/test.sh installs the drill's Debian packages)"
done
for kind in ${kinds//,/ }; do
  [ "$kind" = kill ] || [ "$kind" = cut ] || die "--kinds: kill and cut are the drills there are, not $kind"
done

# The names it owns. One drill at a time on a machine: they would share these names, so a
# second one waits for the first (and tears down what a crashed one left only once it has the
# lock, never what a running one uses).
P=rdd
NODES=(dc1 dc2 wit dns snd sink)
declare -A ip=([dc1]=10.77.0.11 [dc2]=10.77.0.12 [wit]=10.77.0.13 [dns]=10.77.0.14 [snd]=10.77.0.15 [sink]=10.77.0.16)
# relayd's default failover_timeout (docs/configuration.md), written into the nodes' configs so
# that the report can state it and hold the RTO to guarantee 3 against it.
FAILOVER_TIMEOUT=2.5
mkdir -p /run/lock
exec 9>/run/lock/relayd-drill.lock
if ! flock -n 9; then
  echo "drill: another drill is running on this machine; waiting for it (at most 30 min)" >&2
  flock -w 1800 9 || abort "the other drill did not finish within 30 min"
fi

ns_exec() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }

# Ends every process in the drill's namespaces (all it starts runs in one), then removes the
# namespaces, the bridge and the sending MTA's resolv.conf. Safe to run at any point, and on
# what a crashed run left behind.
teardown() {
  local n pids deadline
  for signal in TERM KILL; do
    for n in "${NODES[@]}"; do
      pids=$(ip netns pids "$P-$n" 2>/dev/null)
      # (CONT: a process stopped by the drill, the sink, gets its TERM only once running.)
      [ -n "$pids" ] && kill -s "$signal" $pids 2>/dev/null && kill -s CONT $pids 2>/dev/null
    done
    deadline=$(( $(date +%s) + 10 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      pids=$(for n in "${NODES[@]}"; do ip netns pids "$P-$n" 2>/dev/null; done)
      [ -z "$pids" ] && break
      sleep 0.1
    done
  done
  wait 2>/dev/null
  for n in "${NODES[@]}"; do
    ip netns del "$P-$n" 2>/dev/null
    ip link del "$P-$n" 2>/dev/null
  done
  ip link del "$P-br" 2>/dev/null
  rm -rf "/etc/netns/$P-snd"
  rmdir /etc/netns 2>/dev/null  # only if nothing else uses it
}

W=""
status=1
finish() {
  teardown
  if [ -n "$W" ]; then
    if [ "$keep" = 1 ] || [ "$status" != 0 ]; then echo "drill: logs kept in $W" >&2
    else rm -rf "$W"; fi
  fi
}
trap finish EXIT
trap 'exit 130' INT TERM
teardown

W=$(mktemp -d -p /var/tmp relayd-drill.XXXXXX)
# The Postfix daemons and smtp-sink run as unprivileged users and must get through to their
# directories.
chmod 755 "$W"
[ -n "$json" ] || json="$PWD/drill-report.json"
now() { date +%s.%N; }
# One line per moment of the run, for the report: event DRILL KIND NAME [KEY VALUE]...
event() {
  local extra="" value
  local drill=$1 kind=$2 name=$3; shift 3
  while [ $# -ge 2 ]; do
    # A JSON string without escapes: quotes become ', backslashes and control characters
    # (a log excerpt's newlines) spaces.
    value=$(printf '%s' "$2" | tr '"\\\n\t\r' "'   " )
    if [[ $value =~ ^[0-9]+$ ]]; then extra+=", \"$1\": $value"; else extra+=", \"$1\": \"$value\""; fi
    shift 2
  done
  if [ "$drill" = - ]; then
    printf '{"t": %s, "event": "%s"%s}\n' "$(now)" "$name" "$extra" >> "$W/events.jsonl"
  else
    printf '{"t": %s, "drill": %s, "kind": "%s", "event": "%s"%s}\n' "$(now)" "$drill" "$kind" "$name" "$extra" >> "$W/events.jsonl"
  fi
}
event - - start
log() { printf '[drill %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- the network ------------------------------------------------------------------------------
ip link add "$P-br" type bridge || abort "cannot create the bridge $P-br"
ip link set "$P-br" up
for n in "${NODES[@]}"; do
  ip netns add "$P-$n" &&
    ip link add "$P-$n" type veth peer name eth0 netns "$P-$n" &&
    ip link set "$P-$n" master "$P-br" up &&
    ip -n "$P-$n" addr add "${ip[$n]}/24" dev eth0 &&
    ip -n "$P-$n" link set eth0 up &&
    ip -n "$P-$n" link set lo up || abort "cannot build the host $P-$n"
done
# ip netns exec bind-mounts this over /etc/resolv.conf for everything run in rdd-snd.
mkdir -p "/etc/netns/$P-snd"
echo "nameserver ${ip[dns]}" > "/etc/netns/$P-snd/resolv.conf"

# --- DNS: the customer's MX records -----------------------------------------------------------
ns_exec dns dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --pid-file= \
  --listen-address="${ip[dns]}" --bind-interfaces --log-facility=- --local=/test/ \
  --mx-host=customer.test,dc1.drill.test,10 --mx-host=customer.test,dc2.drill.test,20 \
  --host-record=dc1.drill.test,"${ip[dc1]}" --host-record=dc2.drill.test,"${ip[dc2]}" \
  --host-record=sink.customer.test,"${ip[sink]}" > "$W/dns.log" 2>&1 &

# --- the customer's mail server -----------------------------------------------------------------
mkdir -p "$W/sink" && chown nobody "$W/sink"
ip netns exec "$P-sink" smtp-sink -u nobody -d "$W/sink/%H/%M." "${ip[sink]}:25" 1024 > "$W/sink.log" 2>&1 &
sink_pid=$!

# --- relayd: the witness, dc1 and dc2 -----------------------------------------------------------
"$relayd" certs init "$W/certs" --nodes dc1,dc2,wit > /dev/null || abort "relayd certs init failed"
node_conf() { # name role peer
  # The sending Postfix stands for every sender on the Internet, all from one address: its
  # sessions and cached connections together pass relayd's default of 20 per address. A short
  # retry, so that what a failure leaves deferred is delivered before the drill's deadline.
  "$repo/scripts/node-config.sh" data_dir="$W/$1" name="$1" role="$2" \
    smtp="${ip[$1]}:25" hostname="$1.drill.test" smtp_keys="max_connections_per_ip = 100" \
    relay=customer.test trusted=127.0.0.0/8 route_domain=customer.test route="${ip[sink]}:25" \
    retry='["2s"]' admin=127.0.0.1:8025 log=info \
    cluster="${ip[$1]}:7400" peer="${ip[$3]}:7400" witness="${ip[wit]}:7400" certs="$W/certs" \
    cluster_keys="replication = \"sync\"
on_standby_loss = \"degrade\"
heartbeat_interval = \"200ms\"
failover_timeout = \"${FAILOVER_TIMEOUT}s\"
lease = \"2s\"
auto_failover = true"
}
node_conf dc1 primary dc2 > "$W/dc1.toml"
node_conf dc2 standby dc1 > "$W/dc2.toml"
"$repo/scripts/node-config.sh" data_dir="$W/wit" name=wit role=witness cluster="${ip[wit]}:7400" \
  certs="$W/certs" > "$W/wit.toml"
for n in dc1 dc2 wit; do
  "$relayd" check-config --config "$W/$n.toml" > /dev/null || abort "relayd check-config refused $W/$n.toml"
done

declare -A pid
start_node() { # name
  # Not through ns_exec: a function run in the background is a subshell of its own, and $!
  # would be that shell's pid, not relayd's (ip netns exec execs the command in place).
  ip netns exec "$P-$1" "$relayd" --config "$W/$1.toml" >> "$W/$1.log" 2>&1 &
  pid[$1]=$!
  # Its end is awaited through the pollers, never with wait; disowned, bash does not report
  # the kill -9 of the kill drill as a crash.
  disown "${pid[$1]}"
}
start_node wit
start_node dc2
start_node dc1
# (ip netns exec itself, never ns_exec, for what runs in the background: see start_node.)
for n in dc1 dc2; do
  ip netns exec "$P-$n" python3 "$tool" poll --node "$n" --admin 127.0.0.1:8025 --out "$W/$n.poll" --latest "$W/$n.latest" &
done

# --- the sending MTA: a private Postfix instance in rdd-snd -------------------------------------
# As tests/it/common/postfix.rs, plus an smtpd for the load, MX lookups through rdd-dns (its smtp
# client is not chrooted, so it reads the namespace's resolv.conf), and short timers so that it
# moves to MX 20 quickly and retries soon. It never bounces during a drill: a bounce would hide
# a loss.
S=$W/snd
mkdir -p "$S/conf" "$S/queue" "$S/data"
{
  cat "$repo/tests/peers/postfix-main.cf"
  cat <<CONF
queue_directory = $S/queue
data_directory = $S/data
mail_owner = postfix
setgid_group = postdrop
myhostname = snd.drill.test
mydomain = drill.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
smtp_host_lookup = dns
smtp_dns_support_level = enabled
maillog_file = $S/maillog
maillog_file_prefixes = $W
# Queue ids that are never reused: the report maps each to its Message-ID.
enable_long_queue_ids = yes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 1d
bounce_queue_lifetime = 1d
# An unreachable MX 10 (its link cut) costs a second before MX 20 is tried; a session that
# dies half-way is given up in seconds, not Postfix's default minutes.
smtp_connect_timeout = 1s
smtp_helo_timeout = 5s
smtp_mail_timeout = 5s
smtp_rcpt_timeout = 5s
smtp_data_init_timeout = 5s
smtp_data_xfer_timeout = 5s
smtp_data_done_timeout = 5s
smtp_quit_timeout = 5s
CONF
} > "$S/conf/main.cf"
# The services of the tests' private Postfix, plus an smtpd that takes the load.
{
  echo "smtp       inet  n       -       n       -       -       smtpd"
  cat "$repo/tests/peers/postfix-master.cf"
} > "$S/conf/master.cf"
postfix -c "$S/conf" check > "$W/postfix-check.log" 2>&1 || abort "postfix check: $(cat "$W/postfix-check.log")"
chown postfix "$S/data"
ns_exec snd postfix -c "$S/conf" start > "$W/postfix-start.log" 2>&1 || abort "postfix start: $(cat "$W/postfix-start.log")"

# --- waiting for conditions -------------------------------------------------------------------
# The node's latest state as its poller saw it: role epoch serving connected lag queue seen_at
# (or down in place of the role).
state() { cat "$W/$1.latest" 2>/dev/null || echo "down - - - - - 0.000"; }

# await WHAT SECONDS COMMAND...: polls COMMAND every 50 ms until it succeeds; 1 (after saying
# what it waited for, and the nodes' states) when SECONDS pass first.
await() {
  local what=$1 seconds=$2; shift 2
  local deadline=$(( $(date +%s%N) + seconds * 1000000000 ))
  until "$@"; do
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      echo "drill: timed out after ${seconds} s waiting for $what (dc1: $(state dc1); dc2: $(state dc2))" >&2
      return 1
    fi
    sleep 0.05
  done
}

# PRIMARY serves with its standby connected and caught up; STANDBY is the standby.
settled() { # primary standby
  local role epoch serving connected lag srole
  read -r role epoch serving connected lag _ < <(state "$1")
  read -r srole _ < <(state "$2")
  [ "$role" = primary ] && [ "$serving" = 1 ] && [ "$connected" = 1 ] && [ "$lag" = 0 ] && [ "$srole" = standby ]
}
sent_via() { grep -c "status=sent .*relay=$1\.drill\.test\|relay=$1\.drill\.test.*status=sent" "$S/maillog" 2>/dev/null; }
answers() { ns_exec snd python3 -c "import socket,sys; socket.create_connection(('$1', $2), 1).close()" 2>/dev/null; }
resolves() { [ "$(ns_exec snd python3 -c "import socket; print(socket.gethostbyname('dc1.drill.test'))" 2>/dev/null)" = "${ip[dc1]}" ]; }
sender_ready() { grep -q "daemon started" "$S/maillog" 2>/dev/null && answers 127.0.0.1 25; }

# A failure of the drill itself: recorded for the report, which then fails.
failed=0
fail() { # drill kind what
  echo "drill: $3" >&2
  event "$1" "$2" failure what "$3"
  failed=1
}

await "dnsmasq to answer for dc1.drill.test in $P-snd" 30 resolves \
  || { fail - - "DNS: $(tail -3 "$W/dns.log")"; exit 1; }
await "the sink on ${ip[sink]}:25 (bridged traffic blocked? see net.bridge.bridge-nf-call-iptables)" 30 answers "${ip[sink]}" 25 \
  || { fail - - "the sink does not answer: $(tail -3 "$W/sink.log")"; exit 1; }
await "the sending Postfix" 60 sender_ready || { fail - - "Postfix did not start: $(tail -3 "$S/maillog")"; exit 1; }
await "dc1 primary and dc2 its standby, caught up" 60 settled dc1 dc2 \
  || { tail -5 "$W/dc1.log" "$W/dc2.log" "$W/wit.log" >&2; exit 1; }
log "dc1 primary, dc2 standby, witness up; load: $rate msgs/s through the sending Postfix"
ip netns exec "$P-snd" python3 "$tool" load --to 127.0.0.1:25 --rate "$rate" --out "$W/load.acked" 2> "$W/load.log" &
load_pid=$!
event - - load

# --- the drills -------------------------------------------------------------------------------
caught_up() { settled dc2 dc1; }
switched_back() { settled dc1 dc2; }
# The previous drill's backlog is delivered: what dc1 holds is the steady load's (at most a
# second's worth, or 10), the mail whose delivery a failure may repeat.
drained_to_load() {
  local queue
  read -r _ _ _ _ _ queue _ < <(state dc1)
  [ "$queue" != - ] && [ "$queue" -le $(( rate > 10 ? rate : 10 )) ]
}
ready() { drained_to_load && switched_back; }
via_dc2_since() { [ "$(sent_via dc2)" -ge $(( $1 + 5 )) ]; }
via_dc1_since() { [ "$(sent_via dc1)" -ge $(( $1 + 5 )) ]; }

drill() { # number kind
  local d=$1 kind=$2 fault base rc how
  # The failure strikes the steady state: the previous backlog delivered, and the standby
  # holding every record, delivery results included (those are replicated after the fact).
  await "the cluster to settle before drill $d" 120 ready || { fail "$d" "$kind" "the cluster did not settle"; return 1; }
  # The failure strikes a cluster under load: mail flows through dc1 when it comes.
  base=$(sent_via dc1)
  await "the sending Postfix to deliver through dc1 (MX 10)" 60 via_dc1_since "$base" \
    || { fail "$d" "$kind" "no mail flows through dc1"; return 1; }
  if [ "$kind" = kill ]; then
    fault="kill -9 ${pid[dc1]}"
  else
    # The host end of dc1's veth: dc1 loses its link, and its process lives on, unaware.
    fault="nsenter --net=/proc/$$/ns/net ip link set $P-dc1 down"
  fi
  base=$(sent_via dc2)
  event "$d" "$kind" fault
  log "drill $d ($kind): $fault"
  ns_exec snd python3 "$tool" probe --to "${ip[dc2]}:25" --fault "$fault" --id "probe-$d" --out "$W/probe-$d.json" \
    || fail "$d" "$kind" "dc2 never answered 250 within 60 s of the failure"
  event "$d" "$kind" first_250
  # The sending Postfix moves to MX 20 by itself: nothing here tells it to.
  await "the sending Postfix to deliver through dc2 (MX 20)" 60 via_dc2_since "$base" \
    || fail "$d" "$kind" "the sending Postfix did not move to MX 20"
  # The backlog dc1 misses stays queued at dc2 until dc1 has caught up: the customer's server
  # stalls meanwhile (SIGSTOP: sessions wait, none is cut half-way, so the hold itself makes
  # no duplicate), and catching up means copying every message of it, not only the records
  # of mail delivered long ago.
  kill -STOP "$sink_pid"
  log "drill $d: dc2 serves; the sender delivers through MX 20; the sink held; a backlog of $backlog messages into dc2"
  ns_exec snd python3 "$tool" backlog --to "${ip[dc2]}:25" --count "$backlog" --prefix "backlog-$d" --out "$W/backlog-$d.acked" \
    || fail "$d" "$kind" "dc2 did not take the backlog"
  local snapshots
  snapshots=$(grep -c "sending a snapshot" "$W/dc2.log")
  event "$d" "$kind" back via_dc2 "$(( $(sent_via dc2) - base ))"
  if [ "$kind" = kill ]; then start_node dc1; else ip link set "$P-dc1" up; fi
  if await "dc1 to rejoin as the standby and catch up" 120 caught_up; then
    how=resumed
    [ "$(grep -c "sending a snapshot" "$W/dc2.log")" -gt "$snapshots" ] && how=snapshot
    event "$d" "$kind" caught_up how "$how"
  else
    fail "$d" "$kind" "dc1 did not catch up within 120 s"; return 1
  fi
  kill -CONT "$sink_pid"
  event "$d" "$kind" sink_back
  log "drill $d: dc1 caught up ($how); the sink back; switchover back to dc1"
  event "$d" "$kind" switchover
  timeout 60 ip netns exec "$P-dc2" "$relayd" demote --config "$W/dc2.toml" > "$W/demote-$d.out" 2>&1
  rc=$?
  if [ "$rc" = 0 ] && await "dc1 to serve again after the switchover" 60 switched_back; then
    event "$d" "$kind" switched by demote
  else
    # A failed switchover is a failure of the drill; dc1 takes its role back by force so that
    # the drills after this one can still run.
    fail "$d" "$kind" "relayd demote on dc2 failed (exit $rc): $(tr '\n' ' ' < "$W/demote-$d.out")"
    ns_exec dc1 "$relayd" promote --force --config "$W/dc1.toml" >> "$W/demote-$d.out" 2>&1
    await "dc1 to serve after promote --force" 60 switched_back || return 1
    event "$d" "$kind" recovered by "promote --force"
  fi
}

d=0
for round in $(seq 1 "$drills"); do
  for kind in ${kinds//,/ }; do
    d=$((d + 1))
    drill "$d" "$kind" || break 2
  done
done

# --- drain and report -------------------------------------------------------------------------
kill -TERM "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null
event - - load_stopped
log "load stopped; waiting for every message to reach the sink"
ns_exec snd postqueue -c "$S/conf" -f 2>/dev/null
# postqueue says so in words; an error (no output) must not pass for an empty queue.
sender_empty() { postqueue -c "$S/conf" -p 2>&1 | grep -q "^Mail queue is empty"; }
# The primary's queue is empty in a state its poller saw after the sender's queue emptied:
# everything the sender handed over is in that queue or delivered by then.
primary_empty() { # since
  local role queue seen
  for n in dc1 dc2; do
    read -r role _ _ _ _ queue seen < <(state "$n")
    [ "$role" = primary ] && [ "$queue" = 0 ] && [ "${seen%.*}${seen#*.}" -gt "$1" ] && return 0
  done
  return 1
}
await "the sending Postfix's queue to empty" 180 sender_empty || fail - - "mail stayed in the sending Postfix's queue"
since=$(date +%s%3N)
await "the primary's queue to empty" 180 primary_empty "$since" || fail - - "mail stayed in relayd's queue"
event - - drained
# Every part stops before the report reads what they wrote.
teardown
log "report"
settings=$(printf '{"drills_per_kind": %s, "kinds": "%s", "rate_per_s": %s, "backlog": %s, "failover_timeout_s": %s, "relayd": "%s"}' \
  "$drills" "$kinds" "$rate" "$backlog" "$FAILOVER_TIMEOUT" "$relayd")
python3 "$tool" report --work "$W" --json "$json" --failover-timeout "$FAILOVER_TIMEOUT" --settings "$settings"
status=$?
[ "$failed" = 1 ] && status=1
exit "$status"
