#!/usr/bin/env bash
# Full-size benchmark on a GPU machine without a Rust toolchain or a Vulkan loader:
#   - prebuilt binaries in .bin/: cargo build --release && mkdir -p .bin &&
#     cp target/release/glm-flash .bin/ && strip .bin/glm-flash && git rev-parse HEAD > .bin/COMMIT
#     (and, for the dispatch floor, cargo build --release --example dispatch_floor &&
#     cp target/release/examples/dispatch_floor .bin/ && strip .bin/dispatch_floor)
#   - the Vulkan loader (libvulkan1) and glvnd .debs in .gl/ (the NVIDIA ICD lives in
#     libGLX_nvidia, which needs glvnd's dispatch libraries); they are unpacked into / below.
# Writes a synthetic full-size GLM-4.7-Flash Q8_0 file, then runs decode at depths 128,
# 4096, 32768 and 131072 (the cache filled with synthetic rows, not prefilled) and a
# 512-token prefill on the GPU, leaving JSON and logs under $OUT. The f16 cache of 131072+
# positions takes 7.1 GB beside the 31.8 GB of weights.
#
#   tools/bench-gpu.sh [MODEL_PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/glm-flash-bench}
mkdir -p "$OUT"
MODEL=${1:-/tmp/glm-flash-full.gguf}
BIN=.bin/glm-flash

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

"$BIN" devices | tee "$OUT/devices.txt"
if [ -x .bin/dispatch_floor ]; then
    .bin/dispatch_floor 470 30 | tee "$OUT/dispatch-floor.txt"
fi
cp .bin/COMMIT "$OUT/commit.txt" 2>/dev/null || echo "unknown (no .bin/COMMIT)" > "$OUT/commit.txt"

if [ ! -f "$MODEL" ]; then
    start=$(date +%s)
    "$BIN" synth --preset full --out "$MODEL"
    echo "synth: $(( $(date +%s) - start )) s"
fi
ls -la "$MODEL"

"$BIN" bench -m "$MODEL" --backend gpu \
    --depth 128,4096,32768,131072 --decode 64 --warmup 4 --prefill 512 --profile \
    --json "$OUT/bench-gpu-full.json" 2>&1 | tee "$OUT/bench-gpu-full.txt"
