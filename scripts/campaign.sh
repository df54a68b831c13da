#!/usr/bin/env bash
# The fault campaign's long form (docs/operations.md, "The fault campaign"): runs the
# fault_campaign test of tests/it/campaign.rs on many seeded schedules, one after the other, and
# leaves the report in the output directory: report.md (a table, then every broken invariant
# with its seed), report.json (the same per schedule, with the schedule itself), and for each
# failing schedule seed-N/ with the three nodes' logs and the run's details.
#
#   scripts/campaign.sh                       # 200 schedules from seed 1
#   scripts/campaign.sh --schedules 30 --first-seed 100
#   scripts/campaign.sh --seed 17             # replay one schedule
#
# Exit status: 0 when every schedule kept every invariant, 1 when one did not, 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

schedules=200
first_seed=1
seed=""
faults=3
out="target/campaign"
profile=()
usage() {
  echo "usage: $0 [--schedules N] [--first-seed S] [--seed S] [--faults K] [--out DIR] [--release]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --schedules) schedules=${2:?}; shift 2 ;;
    --first-seed) first_seed=${2:?}; shift 2 ;;
    --seed) seed=${2:?}; shift 2 ;;
    --faults) faults=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --release) profile=(--release); shift ;;
    *) usage ;;
  esac
done
for number in "$schedules" "$first_seed" "$faults" ${seed:+"$seed"}; do
  [[ "$number" =~ ^[0-9]+$ ]] || usage
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
export RELAYD_CAMPAIGN_SCHEDULES=$schedules RELAYD_CAMPAIGN_FIRST_SEED=$first_seed \
  RELAYD_CAMPAIGN_FAULTS=$faults RELAYD_CAMPAIGN_OUT=$out
[ -z "$seed" ] || export RELAYD_CAMPAIGN_SEED=$seed
set +e
cargo test "${profile[@]}" --test it campaign::fault_campaign -- --exact --nocapture
status=$?
set -e
echo
cat "$out/report.md"
echo
echo "report: $out/report.md, $out/report.json"
[ "$status" -eq 0 ] || exit 1
