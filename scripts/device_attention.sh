#!/usr/bin/env bash
# The GPU machine's attention run: build, the extend kernels against the CPU twin (one test per
# entry point: native, fa3 v5, v6 (each also at 1 and 5 blocks); then mixed
# batches), then bench/attention.ts timing
# native and every fa3 variant that passed beside PyTorch SDPA in one run. Records go to
# $OUT/attention.json, the log to $OUT/attention.log.
#
#   source .device/env.sh && bash scripts/device_attention.sh [STEP...]
#
# Steps (default: all, in this order; estimated wall time on one H200 in brackets):
#   build   CUDA library for sm_90a only ($MINISGL_CUDA_ARCHS) + CPU library   [~2 min]
#   test    tests/device/attention_extend_test.ts, attention_mixed_test.ts and the decode
#           kernel's attention_test.ts (every case on the balanced and the grid kernels, one and
#           two tiles in flight, then their timings) and attention_pdl_test.ts (loads before the PDL wait) [~3 min]
#   bench   deno task bench attention: native and fa3 auto, v5, v6 in one run (each only when
#           its test passed in the test step; all when the step did not run), and the decode
#           kernels (auto; grid and grid-pf at their own splits and at 16 and 64; balanced-pf
#           at its own grid size and at 2 blocks per SM); then prefill alone at page sizes 16
#           and 64  [~3.5 min]
# A variant whose kernel hangs is bounded by the timeouts below (an mbarrier wait gives up by
# itself; a named-barrier deadlock does not): its test then fails and the bench skips it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/attention.log"
export MINISGL_CUDA_ARCHS=${MINISGL_CUDA_ARCHS:-90a} NO_COLOR=1
steps=${*:-build test bench}
SMOKE=0
source scripts/device_common.sh

if has build; then
  say build
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
  run 300 deno task build
  tail -3 "$LOG"
fi
variants="5 6"
if has test; then
  say test
  MINISGL_REQUIRE_CUDA=1 run 480 deno test -A tests/device/attention_extend_test.ts
  MINISGL_REQUIRE_CUDA=1 run 240 deno test -A tests/device/attention_mixed_test.ts
  MINISGL_REQUIRE_CUDA=1 run 420 deno test -A tests/device/attention_test.ts
  MINISGL_REQUIRE_CUDA=1 run 120 deno test -A tests/device/attention_pdl_test.ts
  grep -E "^attention .*(ok|FAILED)|cases failed|relative L2" "$LOG" | tail -28
  variants=""
  for v in 5 6; do
    if grep -qE "msg_attention_extend_hopper_v$v = CPU .* ok" "$LOG"; then variants="$variants $v"; fi
  done
fi
if has bench; then
  fa3=$(echo $variants | tr " " ",")
  # auto (what the engine runs: v6 or v5 by length) only when both passed.
  [ "$fa3" = "5,6" ] && fa3="auto,5,6"
  say "bench (fa3 variants: ${fa3:-none})"
  run 480 deno task bench attention --fa3 "${fa3:-none}" --decode-kernels auto,grid,grid-pf,balanced-pf --decode-splits 0,16,64 --decode-blocks 0,264 --decode-keys 0 \
    --out "$OUT/attention.json"
  # Paged prefill: page 16 (the benchmarks' setting: tiles gathered from 8 pages each) and 64
  # (a tile from one page), beside page 1 above; PyTorch's figures are the same shapes.
  for ps in 16 64; do
    run 240 deno task bench attention --fa3 "${fa3:-none}" --only prefill --page $ps \
      --out "$OUT/attention.json"
  done
  grep -E "^attn_" "$LOG" | tail -20
fi
