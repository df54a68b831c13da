#!/usr/bin/env bash
# relayd's side of the side-by-side benchmark, alone: smtp-source -> relayd -> smtp-sink on
# loopback, accept rate and end-to-end rate (until the sink has every message), and peak RSS.
# The full comparison with Postfix is ../shared/bench/side-by-side.sh.
#
# Usage: bench/relay.sh PATH/TO/relayd
# Knobs (environment): RUNS=3 N=20000 SESS=20 SIZE=4096 SRC_OPTS="" (-d: keep the connection)
# Runs as root (installs postfix for smtp-source/smtp-sink when missing). Leaves nothing running.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: relay.sh PATH/TO/relayd}")
RUNS=${RUNS:-3}; N=${N:-20000}; SESS=${SESS:-20}; SIZE=${SIZE:-4096}; SRC_OPTS=${SRC_OPTS:-}
W=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
need_postfix_tools

node_config data_dir="$W/data" name=bench smtp=127.0.0.1:2537 hostname=bench.test \
  relay=example.test trusted=127.0.0.0/8 route=127.0.0.1:2535 admin=127.0.0.1:2538 log=warn \
  > "$W/relayd.toml"
"$relayd" --config "$W/relayd.toml" > "$W/relayd.log" 2>&1 & relayd_pid=$!; pids+=($relayd_pid)
wait_port 2537

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
: > "$W/res"
for r in $(seq 1 "$RUNS"); do
  smtp-sink -u nobody -c 127.0.0.1:2535 1024 > "$W/sink.out" 2>&1 & sink=$!
  wait_port 2535
  t0=$(now)
  smtp-source -s "$SESS" -m "$N" -l "$SIZE" $SRC_OPTS -f bench@src.test -t rcpt@example.test 127.0.0.1:2537 > "$W/src.out" 2>&1
  t1=$(now)
  while :; do
    m=$(tail -c 200 "$W/sink.out" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
    [ "${m:-0}" -ge "$N" ] && break
    if [ "$(echo "$(now) - $t0 > 600" | bc)" = 1 ]; then echo "timeout: sink saw ${m:-0} of $N" >&2; break; fi
    sleep 0.05
  done
  t2=$(now); kill "$sink"; wait "$sink" 2>/dev/null
  a=$(echo "$N / ($t1 - $t0)" | bc -l); e=$(echo "$N / ($t2 - $t0)" | bc -l)
  printf 'run %d: relayd accept %.0f/s e2e %.0f/s (sink saw %s)\n' "$r" "$a" "$e" "${m:-0}"
  echo "$a $e" >> "$W/res"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$relayd_pid/status")
printf 'median: relayd accept %.0f/s e2e %.0f/s | peak RSS %d MiB | %s cores\n' \
  "$(cut -d' ' -f1 "$W/res" | median)" "$(cut -d' ' -f2 "$W/res" | median)" "$((rss / 1024))" "$(nproc)"
