#!/usr/bin/env bash
# Builds the relayd binary of a past release from the git history, once, and prints its path:
#
#     scripts/previous-release.sh [TAG]        (default: v0.1.0)
#     scripts/previous-release.sh --rev [TAG]  prints the commit it builds instead
#
# The release's tree comes from `git archive` of its tag (or, where the tag was not fetched, of
# the commit it names, listed below), so nothing in the checkout changes. It is built in a
# target directory of its own whose dependencies are hard links of the ones this checkout's
# target/ already built (the releases share Cargo.lock's versions), so that only relayd itself
# compiles; the binary is kept as target/releases/TAG/relayd, and a second run just prints it.
# The rolling-upgrade test (tests/it/upgrade.rs) and scripts/v0.1.0-fixtures.sh use it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rev_only=false
if [[ ${1:-} == --rev ]]; then
    rev_only=true
    shift
fi
tag=${1:-v0.1.0}
# The commit of each release, for a clone that lacks the tags.
declare -A commits=([v0.1.0]=f3a0a80)

rev=$tag
if ! git -C "$root" rev-parse -q --verify "$tag^{commit}" >/dev/null 2>&1; then
    rev=${commits[$tag]:-}
    if [[ -z $rev ]] || ! git -C "$root" rev-parse -q --verify "$rev^{commit}" >/dev/null 2>&1; then
        echo "previous-release.sh: neither the tag $tag nor its commit ${rev:-(unknown)} is in" \
            "the git history of $root: fetch them (git fetch --tags) to build relayd $tag" >&2
        exit 1
    fi
fi
if $rev_only; then
    git -C "$root" rev-parse "$rev^{commit}"
    exit 0
fi

target=${CARGO_TARGET_DIR:-$root/target}
out=$target/releases/$tag
bin=$out/relayd
mkdir -p "$out"
# One build at a time: a second caller waits for the first's binary instead of removing its
# tree under it.
exec 9>"$out.lock"
flock 9
if [[ -x $bin ]]; then
    echo "$bin"
    exit 0
fi

src=$out/src
build=$out/target
rm -rf "$src" "$build"
mkdir -p "$src" "$build/debug"
git -C "$root" archive "$rev" | tar -x -C "$src"

# The dependencies built already, less this workspace's own crates, which the release builds
# from its own tree: the compiled libraries as hard links (gigabytes, never written: cargo
# finds them fresh), the build scripts' outputs and the fingerprints as copies (a build script
# run again must not write through a link into this checkout's target/).
if [[ -d $target/debug/deps ]]; then
    cp -al "$target/debug/deps" "$build/debug/"
    for dir in build .fingerprint; do
        if [[ -d $target/debug/$dir ]]; then cp -a "$target/debug/$dir" "$build/debug/"; fi
    done
    find "$build/debug" -mindepth 2 -maxdepth 2 \
        \( -name 'relayd-*' -o -name 'librelayd-*' -o -name 'it-*' -o -name 'cutfs-*' \
           -o -name 'libcutfs-*' \) -exec rm -rf {} +
fi

echo "previous-release.sh: building relayd $tag ($rev) in $out" >&2
# GIT_CEILING_DIRECTORIES: the release's build.rs asks git for its commit; the archive is no
# checkout, and the one around target/ is not the release's.
(cd "$src" && GIT_CEILING_DIRECTORIES=$out CARGO_TARGET_DIR=$build \
    cargo build --locked --bin relayd >&2)
cp "$build/debug/relayd" "$bin.partial"
mv "$bin.partial" "$bin"
rm -rf "$src" "$build"
echo "$bin"
