#!/usr/bin/env bash
# Failover drills on loopback, with relayd's default timings (heartbeat 200ms, lease 2s,
# failover_timeout 2.5s): a witness w, a primary a and a standby b (sync replication), and a
# steady trickle of mail (one message every 100 ms, sent as an MTA does: a, else b).
#
# Per drill: kill -9 the primary and measure the time from the kill to the first 250 on the
# standby (polled every 10 ms with Python's smtplib, one message per poll); then start the old
# primary again (it rejoins as the standby) and switch back with `relayd demote`, so that the
# next drill starts the same way. Prints each drill, then the median and the maximum.
#
# Usage: bench/failover.sh PATH/TO/relayd [DRILLS=10]
# Mail is routed to a closed loopback port (it stays queued): nothing leaves the machine.
set -u
. "$(dirname "$(readlink -f "$0")")/lib.sh"
relayd=$(readlink -f "${1:?usage: failover.sh PATH/TO/relayd [DRILLS]}")
DRILLS=${2:-10}
W=$(mktemp -d -p /var/tmp); pids=()
declare -A pid
cleanup() {
  for p in "${pids[@]}" "${pid[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null; rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }

# Ports: SMTP, admin and cluster of a and b; the witness's cluster port.
declare -A smtp=([a]=2647 [b]=2657) admin=([a]=8647 [b]=8657) cluster=([a]=7461 [b]=7462)
witness=7463
for port in "${smtp[@]}" "${admin[@]}" "${cluster[@]}" "$witness"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is taken" >&2; exit 1; fi
done

"$relayd" certs init "$W/certs" --nodes a,b,w >/dev/null || exit 1
conf() { # name role peer
  node_config data_dir="$W/$1" name="$1" role="$2" smtp="127.0.0.1:${smtp[$1]}" \
    hostname="$1.bench.test" "${queued_mail[@]}" admin="127.0.0.1:${admin[$1]}" log=info \
    cluster="127.0.0.1:${cluster[$1]}" peer="127.0.0.1:${cluster[$3]}" \
    witness="127.0.0.1:$witness" certs="$W/certs" cluster_keys='replication = "sync"'
}
conf a primary b > "$W/a.toml"
conf b standby a > "$W/b.toml"
node_config data_dir="$W/w" name=w role=witness cluster="127.0.0.1:$witness" certs="$W/certs" \
  > "$W/w.toml"

start() { # name
  "$relayd" --config "$W/$1.toml" >> "$W/$1.log" 2>&1 & pid[$1]=$!
}

# role epoch connected lag_records of a node, or "down".
state() {
  python3 - "${admin[$1]}" <<'PY' 2>/dev/null || echo down
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=2))
peer = s.get("peer") or {}
print(s["role"], s["epoch"], int(bool(peer.get("connected"))), s["replication"]["lag_records"])
PY
}

# Waits (up to 60 s) until `primary` is primary, serving, with its standby connected and
# caught up, and `standby` is a standby.
settle() { # primary standby
  local deadline=$(( $(date +%s) + 60 ))
  while :; do
    read -r role _ connected lag < <(state "$1")
    read -r srole _ < <(state "$2")
    healthy=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:${admin[$1]}/healthz")
    if [ "$role" = primary ] && [ "$connected" = 1 ] && [ "$lag" = 0 ] \
       && [ "$srole" = standby ] && [ "$healthy" = 200 ]; then return 0; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "the cluster did not settle ($1: $role $connected $lag; $2: $srole; healthz $healthy)" >&2
      tail -5 "$W/a.log" "$W/b.log" >&2; exit 1
    fi
    sleep 0.05
  done
}

"$relayd" --config "$W/w.toml" > "$W/w.log" 2>&1 & pids+=($!)
until grep -q "witness listening" "$W/w.log" 2>/dev/null; do sleep 0.05; done
start b; sleep 0.2; start a
settle a b

# The trickle: one message every 100 ms, to a, else to b, as a sending MTA does.
python3 - "${smtp[a]}" "${smtp[b]}" > "$W/trickle.out" 2>&1 <<'PY' & pids+=($!)
import smtplib, sys, time
ports = [int(p) for p in sys.argv[1:]]
n = 0
while True:
    start = time.monotonic()
    for port in ports:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("trickle@src.test", ["rcpt@example.test"], f"Subject: trickle {n}\r\n\r\nhi\r\n")
            n += 1
            break
        except Exception:
            continue
    time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))
PY

# Kills the primary's process and polls the standby every 10 ms until it answers 250; prints
# the time from the kill to that 250 in ms.
drill() { # primary-pid standby-port
  python3 - "$1" "$2" <<'PY'
import os, signal, smtplib, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
os.kill(pid, signal.SIGKILL)
killed = time.monotonic()
tick = killed
while time.monotonic() - killed < 60:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            s.sendmail("probe@src.test", ["rcpt@example.test"], "Subject: probe\r\n\r\nprobe\r\n")
        print(round((time.monotonic() - killed) * 1000))
        sys.exit(0)
    except Exception:
        pass
    tick += 0.01
    time.sleep(max(0.0, tick - time.monotonic()))
print("none")
PY
}

results=()
forced=0
for i in $(seq 1 "$DRILLS"); do
  settle a b
  ms=$(drill "${pid[a]}" "${smtp[b]}"); wait "${pid[a]}" 2>/dev/null
  [ "$ms" = none ] && { echo "drill $i: the standby never answered 250 within 60 s" >&2; exit 1; }
  results+=("$ms")
  read -r _ epoch _ < <(state b)
  # The old primary rejoins as the standby, then the cluster switches back.
  start a
  settle b a
  if timeout 10 "$relayd" demote --config "$W/b.toml" > "$W/demote.out" 2>&1; then
    back="relayd demote"
  else
    # relayd demote can fail when the standby's claim reaches the witness before the fenced
    # primary's next ping: then the old primary takes its place back by force.
    forced=$((forced + 1))
    why=$(grep -o 'the witness refused epoch [^"]*' "$W/a.log" | tail -1)
    back="promote --force on a (relayd demote did not finish in 10 s: ${why:-see b.log})"
    "$relayd" promote --force --config "$W/a.toml" > /dev/null 2>&1 \
      || { echo "drill $i: cannot switch back" >&2; exit 1; }
  fi
  settle a b
  printf 'drill %2d: kill -9 of the primary -> first 250 on the standby in %5d ms (epoch %s); switched back with %s\n' \
    "$i" "$ms" "$epoch" "$back"
done

sorted=($(printf '%s\n' "${results[@]}" | sort -n))
n=${#sorted[@]}
if (( n % 2 )); then median=${sorted[$((n / 2))]}
else median=$(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
printf 'failover (default timings: heartbeat 200ms, lease 2s, failover_timeout 2.5s), %d drills: median %d ms, max %d ms\n' \
  "$n" "$median" "${sorted[$((n - 1))]}"
[ "$forced" -gt 0 ] && printf '%d of %d switch-backs needed promote --force (relayd demote failed)\n' "$forced" "$n"
exit 0
