#!/usr/bin/env bash
# Runs every test of relayd on a fresh Debian machine: installs the test peers that are
# missing (swaks, Postfix for smtp-source/smtp-sink, curl, openssl, python3, strace, dnsmasq,
# iproute2 for ss and ip, procps for kill, util-linux for nsenter and flock: the failover drill,
# scripts/drill.sh, builds its hosts with them; g++ for libFuzzer; tar for the sled-spool
# fixture; fuse3 for fusermount3, which cutfs (tools/cutfs, the power-cut tests' file system)
# mounts with when not root: as root it needs only /dev/fuse, and no C library to build), then runs cargo test, then the fuzz targets for
# a bounded time. Needs root for apt-get when something is missing (and for the drill, which
# tests/drill.rs runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for pair in swaks:swaks smtp-source:postfix postfix:postfix curl:curl openssl:openssl python3:python3 strace:strace dnsmasq:dnsmasq-base ss:iproute2 ip:iproute2 kill:procps \
            nsenter:util-linux flock:util-linux postqueue:postfix c++:g++ fusermount3:fuse3 tar:tar; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  apt-get update -qq
  # Postfix's installer asks how to configure it; "No configuration" leaves it stopped.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The power-cut tests (tests/powercut.rs) need /dev/fuse; without it they pass, saying "skipped".
[ -e /dev/fuse ] || echo "warning: /dev/fuse is absent: the power-cut tests will be skipped"
# --all-targets: the test binaries only (the crates have no doc-tests to run); relayd and
# tools/cutfs, the workspace's default members.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The sled import tool (its own workspace, tests/sled_import.rs runs it) is built first, into
# the main target directory: built there it reuses relayd's compiled dependencies (about 40 s
# instead of a cold build of its own), and no cargo holds that directory's lock meanwhile.
cargo build --locked --quiet --manifest-path tools/sled-import/Cargo.toml --target-dir target 2>&1 | tee "$log"
build_status=${PIPESTATUS[0]}
export RELAYD_SLED_IMPORT="$PWD/target/debug/relayd-sled-import"
cargo test --locked --all-targets "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$build_status
# Then each fuzz target for a bounded time (docs/security.md, Fuzzing); a finding fails the
# run. RELAYD_FUZZ_SECONDS=0 skips it, and so does a test filter (arguments for cargo test).
fuzz_seconds=${RELAYD_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" -gt 0 ] && [ $# -eq 0 ]; then
  bash scripts/fuzz.sh --quick "$fuzz_seconds" 2>&1 | tee -a "$log"
  fuzz_status=${PIPESTATUS[0]}
  [ "$status" -ne 0 ] || status=$fuzz_status
fi
set -e
# One closing line for the whole run; each fuzz target counts as a test.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz: [0-9]+ targets, / { p += $2 - $6; f += $6 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
