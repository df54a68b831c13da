#!/usr/bin/env bash
# Replication benchmarks on loopback, with the disk's own sequential write rate for scale.
#
#   catchup:  a primary accepts N messages (SIZE bytes) while its standby is down; the standby
#             starts and resumes from its last record: time until the primary sees lag 0.
#   snapshot: a primary holds about GIB GiB of mail; a standby with an empty data_dir starts and
#             is rebuilt by snapshot: time until the primary sees lag 0.
#
# Usage: bench/replication.sh PATH/TO/relayd catchup|snapshot
# Knobs: N=10000 SIZE=4096 (catchup), GIB=1 (snapshot: 256 KiB messages). Runs as root.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: replication.sh PATH/TO/relayd catchup|snapshot}")
mode=${2:?catchup or snapshot}
N=${N:-10000}; SIZE=${SIZE:-4096}; GIB=${GIB:-1}
W=$(mktemp -d -p /var/tmp); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
export PATH=$PATH:/usr/sbin
if [ "$mode" = snapshot ]; then SIZE=262144; N=$((GIB * 4096)); fi

"$relayd" certs init "$W/certs" --nodes a,b >/dev/null || exit 1
conf() { # name role smtp cluster peer admin
  node_config data_dir="$W/$1" name="$1" role="$2" smtp="127.0.0.1:$3" hostname="$1.bench.test" \
    smtp_keys='max_message_size = "1MiB"' "${queued_mail[@]}" admin="127.0.0.1:$6" log=warn \
    cluster="127.0.0.1:$4" peer="127.0.0.1:$5" certs="$W/certs" \
    cluster_keys=$'replication = "async"\nauto_failover = false'
}
conf a primary 2547 7451 7452 2548 > "$W/a.toml"
conf b standby 2557 7452 7451 2558 > "$W/b.toml"
lag() { curl -s "127.0.0.1:2548/status" | jq -r '"\(.replication.lag_records) \(.replication.lag_bytes) \(if .peer.connected then 1 else 0 end)"'; }
now() { date +%s.%N; }

# The disk's sequential write rate, synced, on the same filesystem.
disk=$(dd if=/dev/zero of="$W/dd.test" bs=1M count=1024 oflag=direct conv=fdatasync 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
rm -f "$W/dd.test"

"$relayd" --config "$W/a.toml" > "$W/a.log" 2>&1 & pids+=($!)
for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/2547) 2>/dev/null && break; sleep 0.1; done
# The standby is known, in sync with an empty log (the cluster's first epoch needs both
# nodes), then goes away; for a snapshot its data_dir goes too.
"$relayd" --config "$W/b.toml" > "$W/b.log" 2>&1 & b=$!
until [ "$(lag | cut -d' ' -f3)" = 1 ]; do sleep 0.05; done
kill "$b"; wait "$b" 2>/dev/null
if [ "$mode" = snapshot ]; then rm -rf "${W:?}/b"; fi
t0=$(now)
smtp-source -s 20 -m "$N" -l "$SIZE" -f bench@src.test -t rcpt@example.test 127.0.0.1:2547 > "$W/src.out" 2>&1
t1=$(now)
read -r records bytes _ < <(lag)
printf '%s: %d messages of %d bytes accepted in %.1f s; backlog %d records, %.1f MiB\n' \
  "$mode" "$N" "$SIZE" "$(echo "$t1 - $t0" | bc -l)" "$records" "$(echo "$bytes / 1048576" | bc -l)"

t2=$(now)
"$relayd" --config "$W/b.toml" > "$W/b.log" 2>&1 & pids+=($!)
# Link up: the primary sees the standby connected (its reconnect backoff and the handshake lie
# before it); caught up: connected, and the standby's acknowledged position is the primary's.
until [ "$(lag | cut -d' ' -f3)" = 1 ]; do sleep 0.01; done
t3=$(now)
until read -r r _ c < <(lag) && [ "$c" = 1 ] && [ "$r" = 0 ]; do sleep 0.01; done
t4=$(now)
secs=$(echo "$t4 - $t2" | bc -l); linked=$(echo "$t4 - $t3" | bc -l)
# The standby's durable commits (one fsync each) since its start: how the catch-up was batched.
syncs=$(curl -s 127.0.0.1:2558/metrics | awk '$1 == "relayd_spool_syncs_total" {print $2}')
printf '%s: standby caught up in %.2f s from its start, %.2f s from link up: %.0f messages/s, %.1f MB/s from link up, %s durable commits | disk sequential write %s\n' \
  "$mode" "$secs" "$linked" "$(echo "$N / $linked" | bc -l)" "$(echo "$bytes / $linked / 1000000" | bc -l)" "$syncs" "$disk"
