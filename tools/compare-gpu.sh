#!/usr/bin/env bash
# Builds of glm-flash timed in turn in one call on a GPU machine, beside llama.cpp. Machines
# of one kind differ by up to a quarter, so two builds are only compared within one call,
# round by round. Set-up as tools/bench-gpu.sh: the Vulkan loader and glvnd .debs in .gl/;
# each build a stripped binary .bin/glm-flash-NAME, or .bin/glm-flash-NAME.gz (and, for
# its kernels' registers, .bin/pipeline_stats-NAME[.gz]; for its parity on this GPU's
# cooperative matrices, its tests/gpu_batched.rs binary as .bin/gpu_batched-NAME[.gz]).
# tools/build-for-gpu.sh REV NAME builds all three for a commit.
#
#   tools/compare-gpu.sh [--ftype T] [--layers N] [--preset P] [--rounds R] [--seconds S]
#                        [--decode-depths D,D] [--decode-matmul M,M]
#                        [--prefill-matmul M,M] [--no-prefill]
#                        [--no-checks] [--tests-only] [--roles R,R] [--llama DIR] NAME...
#
# The first build writes the synthetic model (default: full size, q4_k_m). Each round runs
# every build in turn: prefill of 512 and 4096 tokens with `--matmul split` and `f16` (or
# each of --prefill-matmul; the first round with --profile; none with --no-prefill), then decode at depths 128 and 4096
# (or --decode-depths) with `--matmul f16` (or each of --decode-matmul: the tile math picks
# the decode attention's kernel at long contexts). Before the model, each build's register
# counts and GPU tests run (longer than writing the model; --no-checks skips them for builds
# already checked on this kind of card; --tests-only runs only those tests, for builds that
# may have nothing but their .bin/gpu_batched-NAME[.gz]). No new run starts after
# S seconds (default 450), so the call ends inside its limit. With --llama (a copy of the
# llama.cpp peer bundle, holding llama.sh), llama-bench runs on the same file last.
# --roles names profile roles (e.g. kq_partial,ffn_gate_up) whose lines from each profiled
# run (the first round's) go to the summary under it, depth by depth.
# Writes $OUT/summary.txt (a line per run: round, build, test, tok/s) and every log in
# $OUT/runs.tgz: a call brings back only a few files.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glm-flash-compare}
FTYPE=q4_k_m LAYERS="" PRESET=full ROUNDS=3 SECONDS_MAX=450 LLAMA="" DECODE_DEPTHS=128,4096
PREFILL_MATMUL="split f16" DECODE_MATMUL=f16 CHECKS=1 TESTS_ONLY=0 ROLES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ftype) FTYPE=$2; shift 2 ;;
        --layers) LAYERS=$2; shift 2 ;;
        --preset) PRESET=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECONDS_MAX=$2; shift 2 ;;
        --llama) LLAMA=$2; shift 2 ;;
        --decode-depths) DECODE_DEPTHS=$2; shift 2 ;;
        --decode-matmul) DECODE_MATMUL=$2; shift 2 ;;
        --prefill-matmul) PREFILL_MATMUL=${2//,/ }; shift 2 ;;
        --no-prefill) PREFILL_MATMUL=""; shift ;;
        --no-checks) CHECKS=0; shift ;;
        --tests-only) TESTS_ONLY=1; shift ;;
        --roles) ROLES=$2; shift 2 ;;
        -*) echo "compare-gpu.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "compare-gpu.sh: name at least one build (.bin/glm-flash-NAME)" >&2; exit 2; }
BUILDS=("$@")

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

RUNS=$(mktemp -d)
BIN=$(mktemp -d)
for name in "${BUILDS[@]}"; do
    [ "$TESTS_ONLY" = 1 ] && break
    if [ -f ".bin/glm-flash-$name.gz" ]; then
        gunzip -c ".bin/glm-flash-$name.gz" > "$BIN/$name"
    elif [ -f ".bin/glm-flash-$name" ]; then
        cp ".bin/glm-flash-$name" "$BIN/$name"
    else
        echo "compare-gpu.sh: no .bin/glm-flash-$name[.gz]" >&2; exit 2
    fi
    chmod +x "$BIN/$name"
done
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
cp .bin/COMMIT "$RUNS/commit.txt" 2>/dev/null || true
[ "$TESTS_ONLY" = 1 ] || "$BIN/${BUILDS[0]}" devices > "$RUNS/devices.txt" 2>&1 || true
# Copies .bin/TOOL-NAME[.gz] to $BIN/TOOL-NAME; false where the build has none.
unpack() {
    local from=".bin/$1-$2" to="$BIN/$1-$2"
    if [ -f "$from.gz" ]; then
        gunzip -c "$from.gz" > "$to"
    elif [ -f "$from" ]; then
        cp "$from" "$to"
    else
        return 1
    fi
    chmod +x "$to"
}
if [ "$CHECKS" = 1 ]; then
    for name in "${BUILDS[@]}"; do
        # Its kernels as the driver compiles them (registers, memory): examples/pipeline_stats.rs.
        if unpack pipeline_stats "$name"; then
            timeout 120 "$BIN/pipeline_stats-$name" > "$RUNS/pipeline-stats-$name.txt" 2>&1 || true
        fi
        # Its batched kernels against their CPU twins on this GPU (the tests that need no
        # fixture files: mat-muls, routing, the cooperative attention); the test binary finds
        # its crate's tests/ folder by the path it was built in.
        if unpack gpu_batched "$name"; then
            log="$RUNS/tests-$name.txt"
            timeout 300 "$BIN/gpu_batched-$name" matmul moe cooperative > "$log" 2>&1 || true
            echo "tests $name: $(grep -E '^test result' "$log" || echo "no result (see $(basename "$log"))")" >> "$SUMMARY"
            grep -E "differs|FAILED" "$log" >> "$SUMMARY" || true
        elif [ "$TESTS_ONLY" = 1 ]; then
            echo "tests $name: no .bin/gpu_batched-$name[.gz]" >> "$SUMMARY"
        fi
    done
fi
if [ "$TESTS_ONLY" = 1 ]; then
    echo "ended at $(elapsed) s" >> "$SUMMARY"
    tar czf "$OUT/runs.tgz" -C "$RUNS" .
    exit 0
fi

MODEL=$(mktemp -u /tmp/compare-XXXXXX.gguf)
synth=("$BIN/${BUILDS[0]}" synth --preset "$PRESET" --ftype "$FTYPE" --out "$MODEL")
[ -n "$LAYERS" ] && synth+=(--layers "$LAYERS")
BEFORE_SYNTH=$(elapsed)
"${synth[@]}" > "$RUNS/synth.txt" 2>&1
echo "model: $PRESET ${LAYERS:+$LAYERS layers }$FTYPE, written in $(( $(elapsed) - BEFORE_SYNTH )) s" \
    "($(elapsed) s since the start: the builds' register counts and tests before it)" >> "$SUMMARY"

# One bench run; its tok/s figures (column 7 of prefill lines, 5 of decode lines) go to the
# summary.
bench() {
    local round=$1 name=$2 test=$3; shift 3
    local log="$RUNS/r$round-$name-$test.txt"
    timeout 120 "$BIN/$name" bench -m "$MODEL" --backend gpu "$@" > "$log" 2>&1 || true
    local rates
    rates=$(awk '/^prefill/ {printf "%s ", $7} /^decode/ {printf "%s ", $5}' "$log")
    echo "round $round  $name  $test: ${rates:-failed (see $(basename "$log"))}" >> "$SUMMARY"
    if [ -n "$ROLES" ] && [[ " $* " == *" --profile "* ]]; then
        # Each depth's (or prompt's) rate, then the named roles of its profile.
        awk -v roles="${ROLES//,/|}" '/^(prefill|decode)/ {print "    " $0} \
            $1 ~ "^(" roles ")$" {print "        " $0}' "$log" >> "$SUMMARY"
    fi
}

for round in $(seq 1 "$ROUNDS"); do
    profile=""
    [ "$round" = 1 ] && profile=--profile
    for name in "${BUILDS[@]}"; do
        for math in $PREFILL_MATMUL; do
            [ "$(elapsed)" -lt "$SECONDS_MAX" ] || break 3
            bench "$round" "$name" "prefill-$math" --prefill 512,4096 --prefill-depth 0 \
                --depth 0 --decode 2 --warmup 1 --matmul "$math" $profile
        done
        for math in ${DECODE_MATMUL//,/ }; do
            [ "$(elapsed)" -lt "$SECONDS_MAX" ] || break 3
            bench "$round" "$name" "decode-$math" --prefill 0 --depth "$DECODE_DEPTHS" --decode 64 \
                --warmup 4 --matmul "$math" $profile
        done
    done
done

if [ -n "$LLAMA" ] && [ "$(elapsed)" -lt "$SECONDS_MAX" ]; then
    timeout 150 "$LLAMA/llama.sh" llama-bench -m "$MODEL" -ngl 99 -r 2 -p 512,4096 -n 128 \
        > "$RUNS/llama.txt" 2>&1 || true
    grep -E '^\|' "$RUNS/llama.txt" >> "$SUMMARY" || echo "llama.cpp: failed (see llama.txt)" >> "$SUMMARY"
fi
echo "ended at $(elapsed) s" >> "$SUMMARY"
rm -f "$MODEL"
tar czf "$OUT/runs.tgz" -C "$RUNS" .
cat "$SUMMARY"
