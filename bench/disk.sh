#!/usr/bin/env bash
# The spool's disk use (issue 12, bounded disk): one node on loopback, smtp-source -> relayd ->
# smtp-sink. Two sizes of the spool file, read with stat: "file", its length, and "disk", the
# blocks it occupies. redb grows a file under 4 GiB by doubling its length (sparse until
# written) and gives back free space at its end by shrinking it, so the length jumps; the
# blocks are what the file system has given it, and what a reuse of free pages keeps flat.
#
#   burst:  N messages of SIZE bytes queued with the next hop down (no sink), then delivered
#           (the sink started, the queue flushed); WAIT seconds after the queue is empty, the
#           spool file's size against its peak (goal: at most 25 %). Then a second burst of N,
#           queued and delivered the same way: how much it grew the file past the first peak
#           (goal: at most 10 %). Either goal met is the issue's criterion; both are reported.
#   steady: M messages relayed with the queue held at about DEPTH: the source adds BATCH
#           messages whenever fewer than DEPTH are queued, and delivery runs CONC connections
#           to the sink (fewer than the source's SESS, so that the queue fills). The spool
#           file's size every EVERY seconds, and at each tenth of the run: it should level off.
# Each part starts relayd on an empty data_dir.
#
# Usage: bench/disk.sh PATH/TO/relayd [burst|steady|all]
# Knobs: N=50000 SIZE=4096 SESS=20 WAIT=60 M=200000 DEPTH=1000 BATCH=500 CONC=2 EVERY=10
# Runs as root (installs postfix for smtp-source/smtp-sink when missing). Leaves nothing running.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: disk.sh PATH/TO/relayd [burst|steady|all]}")
mode=${2:-all}
N=${N:-50000}; SIZE=${SIZE:-4096}; SESS=${SESS:-20}; WAIT=${WAIT:-60}
M=${M:-200000}; DEPTH=${DEPTH:-1000}; BATCH=${BATCH:-500}; CONC=${CONC:-2}; EVERY=${EVERY:-10}
W=$(mktemp -d -p /var/tmp); node=""; sink=""
cleanup() {
  [ -n "$sink" ] && kill "$sink" 2>/dev/null
  [ -n "$node" ] && kill "$node" 2>/dev/null
  wait 2>/dev/null; rm -rf "$W"
}
trap cleanup EXIT
need_postfix_tools
SMTP=2567; ADMIN=2568; HOP=2565

# relayd on an empty data_dir, delivering over CONCURRENCY connections at most.
start_relayd() { # concurrency
  [ -n "$node" ] && { kill "$node"; wait "$node" 2>/dev/null; }
  rm -rf "$W/data"
  node_config data_dir="$W/data" name=bench smtp=127.0.0.1:$SMTP hostname=bench.test \
    relay=example.test trusted=127.0.0.0/8 route=127.0.0.1:$HOP 'retry=["1h"]' \
    delivery_keys="concurrency_per_host = $1" admin=127.0.0.1:$ADMIN log=warn > "$W/relayd.toml"
  "$relayd" --config "$W/relayd.toml" >> "$W/relayd.log" 2>&1 & node=$!
  wait_port $SMTP
}

spool_file="$W/data/spool/spool.redb"
bytes() { stat -c %s "$spool_file"; }
blocks() { stat -c '%b %B' "$spool_file" | awk '{print $1 * $2}'; }
mib() { echo "scale=1; $1 / 1048576" | bc; }
queued() { curl -s "127.0.0.1:$ADMIN/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["messages"])'; }
now() { date +%s.%N; }
# The spool file's two sizes, every half second, into $W/sizes ("file disk" lines).
sampler() { while :; do echo "$(bytes) $(blocks)" >> "$W/sizes"; sleep 0.5; done; }
peak() { cut -d' ' -f"$1" "$W/sizes" | sort -n | tail -1; } # 1: file, 2: disk
sink_up() {
  smtp-sink -u nobody 127.0.0.1:$HOP 1024 > /dev/null 2>&1 & sink=$!
  wait_port $HOP
}
sink_down() { kill "$sink"; wait "$sink" 2>/dev/null; sink=""; }
source_mail() { # count
  smtp-source -s "$SESS" -m "$1" -l "$SIZE" -f bench@src.test -t rcpt@example.test \
    127.0.0.1:$SMTP > /dev/null 2>&1
}
wait_empty() {
  local t0; t0=$(now)
  while [ "$(queued)" != 0 ]; do
    if [ "$(echo "$(now) - $t0 > 1800" | bc)" = 1 ]; then echo "timeout: $(queued) still queued" >&2; return 1; fi
    sleep 0.5
  done
}

# One burst: N messages queued with the next hop down, then delivered. Prints what it saw.
burst() { # label
  : > "$W/sizes"; sampler & local sampling=$!
  local t0 t1 t2; t0=$(now)
  source_mail "$N"; t1=$(now)
  local held; held=$(queued)
  sink_up
  curl -s -X POST "127.0.0.1:$ADMIN/queue/flush" > /dev/null
  wait_empty; t2=$(now)
  kill "$sampling"; wait "$sampling" 2>/dev/null
  sink_down
  printf '%s: %d queued in %.0f s, delivered in %.0f s; peak file %s MiB, disk %s MiB; once empty file %s MiB, disk %s MiB\n' \
    "$1" "$held" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
    "$(mib "$(peak 1)")" "$(mib "$(peak 2)")" "$(mib "$(bytes)")" "$(mib "$(blocks)")"
  peak_file=$(peak 1); peak_disk=$(peak 2)
}
percent() { echo "100 * $1 / $2" | bc -l; }

if [ "$mode" = burst ] || [ "$mode" = all ]; then
  echo "== burst: $N messages of $SIZE bytes, next hop down, then up"
  start_relayd 10
  burst "first burst"; first_file=$peak_file; first_disk=$peak_disk
  sleep "$WAIT"
  printf 'first burst, %d s after the queue emptied: file %s MiB (%.1f %% of its peak), disk %s MiB (%.1f %%) (goal <= 25 %%)\n' \
    "$WAIT" "$(mib "$(bytes)")" "$(percent "$(bytes)" "$first_file")" \
    "$(mib "$(blocks)")" "$(percent "$(blocks)" "$first_disk")"
  burst "second burst"
  printf 'second burst over the first peak: file %+.1f %%, disk %+.1f %% (goal <= 10 %%)\n' \
    "$(percent "$((peak_file - first_file))" "$first_file")" \
    "$(percent "$((peak_disk - first_disk))" "$first_disk")"
fi

if [ "$mode" = steady ] || [ "$mode" = all ]; then
  echo "== steady: $M messages of $SIZE bytes, the queue held at about $DEPTH, $CONC connections out"
  start_relayd "$CONC"
  sink_up
  : > "$W/depths"; sent=0; t0=$(now); next=$EVERY; tenth=$((M / 10)); mark=$tenth
  printf '%8s %9s %7s %9s %9s\n' seconds sent queued "file MiB" "disk MiB"
  while [ "$sent" -lt "$M" ]; do
    depth=$(queued); echo "$depth" >> "$W/depths"
    if [ "$depth" -lt "$DEPTH" ]; then source_mail "$BATCH"; sent=$((sent + BATCH)); else sleep 0.1; fi
    elapsed=$(echo "$(now) - $t0" | bc)
    if [ "$(echo "$elapsed >= $next" | bc)" = 1 ] || [ "$sent" -ge "$mark" ]; then
      printf '%8.0f %9d %7d %9s %9s\n' "$elapsed" "$sent" "$depth" "$(mib "$(bytes)")" "$(mib "$(blocks)")"
      [ "$(echo "$elapsed >= $next" | bc)" = 1 ] && next=$((next + EVERY))
      [ "$sent" -ge "$mark" ] && mark=$((mark + tenth))
    fi
  done
  wait_empty
  printf 'steady: %d messages in %.0f s; queue depth median %s; once empty file %s MiB, disk %s MiB\n' \
    "$sent" "$(echo "$(now) - $t0" | bc)" "$(sort -n "$W/depths" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')" \
    "$(mib "$(bytes)")" "$(mib "$(blocks)")"
fi
