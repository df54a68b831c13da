#!/usr/bin/env bash
# Acceptance benchmark: how fast relayd and Postfix answer 250 to the same smtp-source load,
# on loopback, in the same run. (Delivery is not measured here; see the side-by-side script in
# ../shared/bench once delivery exists.)
#
#   smtp-source --SMTP--> [Postfix 127.0.0.1:2526 -> smtp-sink 127.0.0.1:2525 | relayd 127.0.0.1:2527]
#
# Usage: bench/accept.sh PATH/TO/relayd
# Knobs (environment): RUNS=3 N=20000 SESS=20 SIZE=4096 SRC_OPTS="" (-d: keep the connection)
# Prints one line per run, then the medians, the ratio relayd/Postfix, and relayd's peak RSS.
# Runs as root (installs postfix from Debian when missing). Leaves nothing running.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: accept.sh PATH/TO/relayd}")
RUNS=${RUNS:-3}; N=${N:-20000}; SESS=${SESS:-20}; SIZE=${SIZE:-4096}; SRC_OPTS=${SRC_OPTS:-}
W=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; postfix stop >/dev/null 2>&1; rm -rf "$W"; }
trap cleanup EXIT
export PATH=$PATH:/usr/sbin

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi

# Postfix relays example.test to a sink, as in the side-by-side benchmark.
postfix stop >/dev/null 2>&1
{
  cat "$(dirname "$(readlink -f "$0")")/../tests/peers/postfix-main.cf"
  cat <<'PF'
myhostname = relay.local
inet_interfaces = 127.0.0.1
relay_domains = example.test
relayhost = [127.0.0.1]:2525
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = /var/log/postfix-bench.log
PF
} > /etc/postfix/main.cf
postconf -M# smtp/inet >/dev/null 2>&1
postconf -M "127.0.0.1:2526/inet=127.0.0.1:2526 inet n - n - - smtpd"
postconf -F '*/*/chroot = n'
postfix check && postfix start >/dev/null 2>&1
smtp-sink -u nobody -c 127.0.0.1:2525 1024 > /dev/null 2>&1 & pids+=($!)

node_config data_dir="$W/data" name=bench role=primary smtp=127.0.0.1:2527 hostname=bench.test \
  relay=example.test trusted=127.0.0.0/8 admin=127.0.0.1:2530 log=warn > "$W/relayd.toml"
"$relayd" --config "$W/relayd.toml" > "$W/relayd.log" 2>&1 & relayd_pid=$!; pids+=($relayd_pid)
for i in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/2526 && exec 4<>/dev/tcp/127.0.0.1/2527) 2>/dev/null && break; sleep 0.1
done

now() { date +%s.%N; }
accept_rate() { # port -> messages per second until smtp-source had every 250
  local t0 t1; t0=$(now)
  smtp-source -s "$SESS" -m "$N" -l "$SIZE" $SRC_OPTS -f bench@src.test -t rcpt@example.test "127.0.0.1:$1" > "$W/src.out" 2>&1
  t1=$(now)
  if grep -qiE 'error|fatal' "$W/src.out"; then echo "smtp-source reported: $(head -3 "$W/src.out")" >&2; fi
  # Let Postfix finish relaying to the sink before anything else is measured: its
  # delivery must not eat the CPU of the next run.
  while [ -n "$(postqueue -j 2>/dev/null | head -1)" ]; do sleep 0.2; done
  echo "$N / ($t1 - $t0)" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
: > "$W/res"
for r in $(seq 1 "$RUNS"); do
  p=$(accept_rate 2526); q=$(accept_rate 2527)
  printf 'run %d: postfix accept %.0f/s | relayd accept %.0f/s\n' "$r" "$p" "$q"
  echo "$p $q $(echo "$q / $p" | bc -l)" >> "$W/res"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$relayd_pid/status")
printf 'median: postfix accept %.0f/s | relayd accept %.0f/s | ratio %.2f | relayd peak RSS %d MiB | %s\n' \
  "$(cut -d' ' -f1 "$W/res" | median)" "$(cut -d' ' -f2 "$W/res" | median)" \
  "$(cut -d' ' -f3 "$W/res" | median)" "$((rss / 1024))" "$(nproc) cores, $(uname -r)"
