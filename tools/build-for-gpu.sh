#!/usr/bin/env bash
# Builds a commit for tools/compare-gpu.sh on a machine with the Rust toolchain: its
# glm-flash, examples/pipeline_stats and tests/gpu_batched.rs binaries, stripped and
# compressed into .bin/glm-flash-NAME.gz, .bin/pipeline_stats-NAME.gz and
# .bin/gpu_batched-NAME.gz (about 11 MB together), and a line in .bin/COMMIT. The commit
# is checked out in a worktree beside this one and shares this checkout's target folder
# (target/gpu-builds), so a second build of nearby commits recompiles little.
#
#   tools/build-for-gpu.sh REV NAME
#
# The test binary is built where the worktree lies and finds its tests/ folder by that
# path: compare-gpu.sh runs only its tests that need no fixture files.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: tools/build-for-gpu.sh REV NAME" >&2; exit 2; }
REV=$1 NAME=$2
ROOT=$(pwd)
TARGET=$ROOT/target/gpu-builds
TREE=$(mktemp -d /tmp/glm-flash-build-XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$TREE" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$TREE" "$REV" >/dev/null
COMMIT=$(git -C "$TREE" rev-parse --short HEAD)

(cd "$TREE" && CARGO_TARGET_DIR=$TARGET cargo build --release --bin glm-flash \
    --example pipeline_stats)
TEST=$(cd "$TREE" && CARGO_TARGET_DIR=$TARGET cargo test --release --test gpu_batched \
    --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*gpu_batched[^"]*\)".*/\1/p' | tail -1)
[ -n "$TEST" ] || { echo "build-for-gpu.sh: no gpu_batched test binary" >&2; exit 1; }

mkdir -p .bin
pack() {
    local tmp
    tmp=$(mktemp)
    strip -o "$tmp" "$1"
    gzip -c "$tmp" > ".bin/$2-$NAME.gz"
    rm -f "$tmp"
}
pack "$TARGET/release/glm-flash" glm-flash
pack "$TARGET/release/examples/pipeline_stats" pipeline_stats
pack "$TEST" gpu_batched
echo "$NAME: $COMMIT ($(git -C "$TREE" log -1 --format=%s | cut -c1-80))" >> .bin/COMMIT
ls -la .bin/*-"$NAME".gz
