#!/usr/bin/env bash
# The GPU machine's end-to-end run: build, kernel tests against the CPU twin, fidelity
# against Hugging Face transformers, decode speed at batch size 1. Results go to
# $OUT/results.json ({"card", "date", "results"}), logs to $OUT/*.log.
#   source .device/env.sh && bash scripts/device_e2e.sh [steps...]
# steps: build kernels broken-lib fidelity cpu-fidelity decode throughput (default: all)
# The device tests run with MINISGL_REQUIRE_CUDA=1: a CUDA library that does not load fails
# them instead of skipping them. broken-lib checks exactly that with a corrupt library.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
steps=${*:-build kernels broken-lib fidelity cpu-fidelity decode throughput}
models=/tmp/minisgl-models
mkdir -p $models
has() { [[ " $steps " == *" $1 "* ]]; }
make() { [ -d "$models/$1" ] || deno task make-model --preset "$1" --out "$models/$1"; }
if has build; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
  deno task build 2>&1 | tail -20 | tee "$OUT/build.log"
fi
if has kernels; then
  MINISGL_REQUIRE_CUDA=1 deno test -A tests/device/ 2>&1 | tee "$OUT/kernels.log" | tail -60
fi
if has broken-lib; then
  lib=build/libminisgl_cuda.so
  cp "$lib" "$lib.good" && head -c 4096 "$lib.good" > "$lib"
  if MINISGL_REQUIRE_CUDA=1 deno test -A tests/device/ > "$OUT/broken_lib.log" 2>&1; then
    echo "broken-lib: FAIL (device tests passed with a corrupt $lib)"
  else
    echo "broken-lib: ok (device tests fail with a corrupt $lib)"
  fi
  tail -3 "$OUT/broken_lib.log"
  mv "$lib.good" "$lib"
fi
if has fidelity; then
  for p in qwen3-0.6b llama-3.2-1b; do
    make $p && deno run -A bench/fidelity.ts --model $models/$p --name $p --out "$OUT/results.json" 2>&1 | tail -5
  done
fi
if has cpu-fidelity; then
  for p in tiny-qwen3 tiny-llama tiny-qwen2 tiny-mistral; do
    make $p && deno run -A bench/fidelity.ts --model $models/$p --name $p --device cpu \
      --prompt 96 --decode 8 --out "$OUT/results.json" 2>&1 | tail -3
  done
fi
if has decode; then
  make llama-3-8b && deno run -A bench/decode_bs1.ts --model $models/llama-3-8b --name llama-3-8b \
    --out "$OUT/results.json" 2>&1 | tail -5
fi
if has throughput; then
  make qwen3-0.6b && deno run -A bench/throughput.ts --model $models/qwen3-0.6b --name qwen3-0.6b \
    --out "$OUT/results.json" 2>&1 | tail -5
fi
cat "$OUT/results.json" 2>/dev/null
