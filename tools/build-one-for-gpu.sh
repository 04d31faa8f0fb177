#!/usr/bin/env bash
# One binary of a commit for a device call, as tools/build-for-gpu.sh builds all three:
# glm-flash (WHAT = bin) or a test binary (WHAT = test: tests/TEST.rs, gpu_batched unless
# named), stripped into .bin/glm-flash-NAME.gz or .bin/TEST-NAME.gz.
#
#   tools/build-one-for-gpu.sh REV NAME bin|test [TEST]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REV=$1 NAME=$2 WHAT=$3 TEST_NAME=${4:-gpu_batched}
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
  TEST=$(cd "$TREE" && CARGO_TARGET_DIR=$TARGET cargo test --release --test "$TEST_NAME" --no-run --message-format=json 2>/dev/null | sed -n "s/.*\"executable\":\"\([^\"]*$TEST_NAME[^\"]*\)\".*/\1/p" | tail -1) || true
  [ -n "$TEST" ] || { echo "build-one-for-gpu.sh: no test binary tests/$TEST_NAME.rs at $REV" >&2; exit 1; }
  pack "$TEST" "$TEST_NAME"
fi
echo "$NAME: $COMMIT ($(git -C "$TREE" log -1 --format=%s | cut -c1-80))" >> .bin/COMMIT
ls -la .bin/*-"$NAME".gz
