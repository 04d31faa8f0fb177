#!/usr/bin/env bash
# One binary of a commit for a device call, as tools/build-for-gpu.sh builds all three:
# glm-flash (WHAT = bin) or the tests/gpu_batched.rs binary (WHAT = test), stripped into
# .bin/glm-flash-NAME.gz or .bin/gpu_batched-NAME.gz.
#
#   tools/build-one-for-gpu.sh REV NAME bin|test
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REV=$1 NAME=$2 WHAT=$3
TARGET=$ROOT/target/gpu-builds
TREE=$(mktemp -d /tmp/glm-flash-build-XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$TREE" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$TREE" "$REV" >/dev/null
COMMIT=$(git -C "$TREE" rev-parse --short HEAD)
mkdir -p .bin
pack() { local tmp; tmp=$(mktemp); strip -o "$tmp" "$1"; gzip -c "$tmp" > ".bin/$2-$NAME.gz"; rm -f "$tmp"; }
if [ "$WHAT" = bin ]; then
  (cd "$TREE" && CARGO_TARGET_DIR=$TARGET cargo build --release --bin glm-flash)
  pack "$TARGET/release/glm-flash" glm-flash
else
  TEST=$(cd "$TREE" && CARGO_TARGET_DIR=$TARGET cargo test --release --test gpu_batched --no-run --message-format=json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*gpu_batched[^"]*\)".*/\1/p' | tail -1)
  pack "$TEST" gpu_batched
fi
echo "$NAME: $COMMIT ($(git -C "$TREE" log -1 --format=%s | cut -c1-80))" >> .bin/COMMIT
ls -la .bin/*-"$NAME".gz
