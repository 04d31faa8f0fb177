#!/usr/bin/env bash
# One device call for the staged attention (this branch): its parity on the GPU's
# cooperative matrices (srd: rope keys loaded where multiplied; srh: also the query blocks'
# hi parts held), then, for the builds that pass, prefill and decode beside main (m) on a
# 12-layer full-width Q4_K_M; when srd fails, the diagnostic builds instead (sr, snr, n0,
# n1, sn: the branches diag-rope-direct, diag-scores-rope-from-cache, diag-no-staging,
# diag-no-sides, diag-scores-from-cache). Builds first, with tools/build-one-for-gpu.sh:
#   srh = staged-land, srd = staged-rope-direct (bin and test each), m = main (bin),
#   and the diagnostics' tests. Then, with tests/fixtures moved out of the checkout (the
#   call carries 64 MiB), run(command="tools/staged-call.sh 300", carry=[".bin", ".gl"]).
cd "$(dirname "$0")/.."
START=$(date +%s); TOTAL=${1:-380}
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
mkdir -p $OUT/t
B=$(mktemp -d)
pass=()
test_build() {
  local n=$1 t0=$(date +%s)
  gunzip -c .bin/gpu_batched-$n.gz > $B/t-$n; chmod +x $B/t-$n
  timeout 60 $B/t-$n cooperative --test-threads 1 --nocapture > $OUT/t/$n.txt 2>&1
  local rc=$?
  echo "tests $n: rc $rc, $(( $(date +%s) - t0 )) s: $(grep -E '^test result' $OUT/t/$n.txt)" | tee -a $OUT/summary.txt
  grep -E "differs|FAILED|panicked" $OUT/t/$n.txt | head -6 | tee -a $OUT/summary.txt
  return $rc
}
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > $OUT/gpu.txt 2>&1
test_build srd && pass+=(srd)
test_build srh && pass+=(srh)
if [ ${#pass[@]} -eq 0 ] || [ "${pass[0]}" != srd ]; then
  for n in sr snr n0 n1 sn; do [ $(( $(date +%s) - START )) -lt $(( TOTAL - 60 )) ] && test_build $n; done
fi
echo "after tests: $(( $(date +%s) - START )) s; passing: ${pass[*]}" | tee -a $OUT/summary.txt
if [ ${#pass[@]} -gt 0 ]; then
  mkdir -p $OUT/p
  for n in m "${pass[@]}"; do gunzip -c .bin/glm-flash-$n.gz > $B/$n; chmod +x $B/$n; done
  $B/m devices > $OUT/p/devices.txt 2>&1
  t0=$(date +%s)
  $B/m synth --preset full --layers 12 --ftype q4_k_m --out /tmp/m.gguf > $OUT/p/synth.txt 2>&1
  echo "synth: $(( $(date +%s) - t0 )) s" | tee -a $OUT/summary.txt
  for round in 1 2; do
    for n in m "${pass[@]}"; do
      [ $(( $(date +%s) - START )) -lt $(( TOTAL - 35 )) ] || break 2
      prof=""; [ $round = 1 ] && prof=--profile
      log=$OUT/p/r$round-$n.txt
      timeout 90 $B/$n bench -m /tmp/m.gguf --backend gpu --matmul f16 --prefill 512,4096 \
        --prefill-depth 0 --depth 2048,4096,32768 --decode 48 --warmup 4 $prof > $log 2>&1
      echo "round $round $n: $(awk '/^prefill/ {printf "%s ", $7} /^decode/ {printf "%s ", $5}' $log)" | tee -a $OUT/summary.txt
    done
  done
fi
echo "ended at $(( $(date +%s) - START )) s" | tee -a $OUT/summary.txt
