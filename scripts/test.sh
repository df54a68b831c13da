#!/usr/bin/env bash
# Runs every test of relayd on a fresh Debian machine: installs the test peers that are
# missing (swaks, Postfix for smtp-source/smtp-sink, curl, openssl, python3, strace, dnsmasq,
# iproute2 for ss and ip, procps for kill, util-linux for nsenter and flock: the failover drill,
# scripts/drill.sh, builds its hosts with them; g++ for libFuzzer; tar for the sled-spool
# fixture; prometheus for promtool (the metrics page's linter, and the alerting rules' checks
# and unit tests); fuse3 for fusermount3, which cutfs (tools/cutfs, the power-cut tests' file
# system) mounts with when not root: as root it needs only /dev/fuse, and no C library to
# build; systemd for systemd-analyze (the unit's check; installing it in a container starts
# nothing); git, which builds the previous release from the history for the rolling-upgrade
# test, and gzip for its golden spool), then runs cargo test, then the fuzz targets for a bounded time. Needs root for
# apt-get when something is missing (and for the drill, which tests/it/drill.rs runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for pair in swaks:swaks smtp-source:postfix postfix:postfix curl:curl openssl:openssl python3:python3 strace:strace dnsmasq:dnsmasq-base ss:iproute2 ip:iproute2 kill:procps \
            nsenter:util-linux flock:util-linux postqueue:postfix c++:g++ fusermount3:fuse3 tar:tar promtool:prometheus \
            systemd-analyze:systemd git:git gzip:gzip; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  apt-get update -qq
  # Postfix's installer asks how to configure it; "No configuration" leaves it stopped.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The power-cut tests (tests/it/powercut.rs) need /dev/fuse; without it they pass, saying "skipped".
[ -e /dev/fuse ] || echo "warning: /dev/fuse is absent: the power-cut tests will be skipped"
# --all-targets: the test binaries only (the crates have no doc-tests to run); relayd and
# tools/cutfs, the workspace's default members.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The sled import tool (its own workspace, tests/it/sled_import.rs runs it) is built first, into
# the main target directory: built there it reuses relayd's compiled dependencies (about 40 s
# instead of a cold build of its own), and no cargo holds that directory's lock meanwhile.
cargo build --locked --quiet --manifest-path tools/sled-import/Cargo.toml --target-dir target 2>&1 | tee "$log"
build_status=${PIPESTATUS[0]}
export RELAYD_SLED_IMPORT="$PWD/target/debug/relayd-sled-import"
status=$build_status
# Runs cargo test with the given arguments into the log; the first failure is the run's status.
run_tests() {
  cargo test --locked "$@" 2>&1 | tee -a "$log"
  local code=${PIPESTATUS[0]}
  [ "$status" -ne 0 ] || status=$code
}
# The integration tests are one binary, tests/it, whose tests share one process and its test
# threads. These of its modules load the machine (the campaign, the drill, the power cuts, the
# rolling upgrade, which also builds the previous release) or time failovers to the second
# (failover, faults, maintenance): each runs in a pass of its own after everything else, as each
# ran in a binary of its own when cargo ran one binary per test file, one after another.
alone=(campaign drill failover faults maintenance powercut upgrade)
for module in "${alone[@]}"; do
  # A module renamed or gone would leave its pass empty and run it among the rest unseen.
  grep -qx "mod $module;" tests/it/main.rs || { echo "test.sh: tests/it has no module $module" >&2; exit 2; }
done
if [ $# -gt 0 ]; then
  # A filter (arguments for cargo test): one pass, as the caller asked.
  run_tests --all-targets "$@"
else
  skips=()
  for module in "${alone[@]}"; do skips+=(--skip "$module::"); done
  run_tests --all-targets -- "${skips[@]}"
  for module in "${alone[@]}"; do run_tests --test it -- "$module::"; done
fi
# The scripts' own tests (tests/scripts: the drill's report judged on a recorded run); not
# with a filter, as the fuzzing below.
[ $# -gt 0 ] || for script_test in tests/scripts/test_*.py; do
  python3 "$script_test" 2>&1 | tee -a "$log"
  code=${PIPESTATUS[0]}
  [ "$status" -ne 0 ] || status=$code
done
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
awk '/^(test result:|python tests:)/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz: [0-9]+ targets, / { p += $2 - $6; f += $6 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
