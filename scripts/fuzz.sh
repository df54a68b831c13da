#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ and runs each for a bounded time: scripts/fuzz.sh [--quick]
# [SECONDS_PER_TARGET] [TARGET...] (default 20 s, every target; --quick: an unoptimised build,
# quicker to make and slower to run, for CI's short runs). Exits non-zero on any crash
# (a panic, a failed property, an allocation over fuzz/src/lib.rs's MAX_ALLOCATION), a run
# over the memory limit or a hang; the input is saved in fuzz/artifacts/TARGET/. Ends with
# one line: "fuzz: N targets, N runs, N failed (S s each)". See docs/security.md, Fuzzing.
#
# No cargo-fuzz, no nightly: cargo builds the targets with the flags cargo-fuzz would pass for
# "-s none" (libFuzzer's coverage instrumentation is stable rustc), so nothing is installed
# and CI starts from a clean clone. `cargo fuzz run TARGET` works on fuzz/ too, for who has it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

profile=fuzz
if [ "${1:-}" = --quick ]; then
  profile=fuzz-quick
  shift
fi
seconds=${1:-20}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(smtp_command smtp_data smtp_bdat cluster_frame config)
fi

# Only the target code gets the flags (hence --target): build scripts and proc macros run
# on the host uninstrumented. --cfg fuzzing is what cargo-fuzz sets too.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# Not --locked: fuzz/Cargo.lock pins what it holds, and a dependency the main crate gained since
# it was last written is added rather than failing the build. To bring it back in line with
# the main lock: `cp Cargo.lock fuzz/ && cargo metadata --manifest-path fuzz/Cargo.toml`.
cargo build --profile "$profile" --target "$host" --bins -q

runs=0
failed=0
for target in "${targets[@]}"; do
  binary="${CARGO_TARGET_DIR:-target}/$host/$profile/$target"
  # New inputs go to a scratch corpus under target/ (ignored by git); the committed seeds in
  # corpus/ are only read.
  scratch="target/corpus/$target"
  mkdir -p "$scratch" "artifacts/$target"
  log="target/$target.log"
  status=0
  # -max_len: inputs up to 64 KiB (MAX_ALLOCATION is reasoned against it); -rss_limit_mb: the
  # process's memory; -timeout: one input taking over 10 s is a hang.
  "$binary" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=512 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" "$scratch" "corpus/$target" \
    >"$log" 2>&1 || status=$?
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  runs=$((runs + ${executed:-0}))
  if [ "$status" -ne 0 ]; then
    failed=$((failed + 1))
    echo "fuzz: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/:"
    grep -E "panicked at|^fuzz:|ERROR: libFuzzer|SUMMARY" "$log" | head -20 || true
    echo "  full log: fuzz/$log"
  else
    echo "fuzz: $target ok, ${executed:-0} runs, $(find "$scratch" -type f | wc -l) inputs in fuzz/$scratch"
  fi
done
echo "fuzz: ${#targets[@]} targets, $runs runs, $failed failed ($seconds s each)"
[ "$failed" -eq 0 ]
