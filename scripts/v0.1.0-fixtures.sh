#!/usr/bin/env bash
# Regenerates the golden fixtures of relayd 0.1.0 in tests/fixtures/v0.1.0 (see its README):
# builds 0.1.0 from the git history (scripts/previous-release.sh), takes its frames from its
# tree and has its binary write its files. Run it only to rebuild the fixtures from scratch:
# they are 0.1.0's bytes, which this tree must go on reading, never rewritten to suit a change.
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fixtures/v0.1.0
rev=$(scripts/previous-release.sh --rev v0.1.0)
scripts/previous-release.sh v0.1.0 >/dev/null

# Every frame kind as 0.1.0 encodes it: its committed fuzz seeds, which its own test
# (frame.rs, fuzz_seeds_are_the_frames_encoded_today) checked to be exactly that.
mkdir -p "$out/frames"
for seed in $(git ls-tree --name-only "$rev" fuzz/corpus/cluster_frame/); do
    git show "$rev:$seed" >"$out/frames/$(basename "$seed")"
done

# Its files, written by the 0.1.0 binary: a spool with mail, an epoch change, the grant file.
cargo test --locked --test it upgrade::write_the_files_of_0_1_0 -- --ignored --exact
echo "written: $out"
