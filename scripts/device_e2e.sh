#!/usr/bin/env bash
# The GPU machine's end-to-end run: build, kernel tests against the CPU twin, fidelity against
# Hugging Face transformers, then the benchmarks of bench/ on random-weight models of the real
# shapes. Records go to $OUT/results.json ({"card", "date", "results"}), the log of every
# step to $OUT/e2e.log, plots to $OUT/*.svg (at most 8 files come back from the machine).
#
#   source .device/env.sh && bash scripts/device_e2e.sh [STEP...]
#
# Steps (default: all, in this order; each bounded by `timeout`, estimated wall time on one
# H200 in brackets, model creation included):
#   build       CUDA library for sm_90a only ($MINISGL_CUDA_ARCHS) + CPU library  [~2 min]
#   kernels     tests/device/: CUDA kernels against the CPU twin                  [~1 min]
#   broken-lib  the device tests fail (not skip) with a corrupt CUDA library      [~0.5 min]
#   fidelity    logits vs transformers: qwen3-0.6b, llama-3.2-1b                  [~1 min]
#   latency     decode tok/s at batch 1/8/32/128 + roofline: qwen3-0.6b, llama-3-8b [~1.5 min]
#   tune        decode at batch 1-128 and offline (qwen3-0.6b), GEMM tuning off then on
#               (MSG_GEMM_TUNE=0 / default; records named MODEL-tune-off/-on)     [~3 min]
#   ops         where a decode step's time goes: device time per op, eager, at batch 1 and 64
#               (bench latency --ops; records decode_ops): qwen3-0.6b, llama-3-8b, and
#               llama-3-8b at 256 rows of ~600 keys with the fp8 cache          [~1.5 min]
#   offline     256 requests: qwen3-0.6b (+ transformers on 64), llama-3-8b        [~3 min]
#   ttft        32 and 8k-token prompts: qwen3-0.6b (8192), llama-3-8b (8000)     [~1 min]
#   serving     qwen3-0.6b server: 128 prompts at once, then Poisson 8/16/32 req/s [~1 min]
#   ablations   overlap, CUDA graphs, page size, radix vs naive: qwen3-0.6b        [~1.5 min]
#   fp8         the fp8 KV cache: decode kernel, fidelity (and without), latency, offline, both models
#               (not in the default)                                              [~4 min]
#   structured  JSON-schema vs free decoding at batch 1 and 64 (bench/structured.ts), then the
#               Python openai client's checks where python3 has it                 [~2 min]
#   cpu-fidelity  tiny models on the CPU backend vs transformers (not in the default)
# Two calls of 8 minutes hold it all, e.g.:
#   bash scripts/device_e2e.sh build kernels broken-lib fidelity latency ops ttft  [~7.5 min]
#   bash scripts/device_e2e.sh build offline serving ablations                 [~5 min, +2 fresh]
# (build is a no-op when the library is up to date on a machine that stayed warm).
# MINISGL_PDL=0 turns programmatic dependent launch off (cuda/src/pdl.cuh), for a comparison or
# should a kernel test fail with it on.
# E2E_SMOKE=1 runs the same command lines on the CPU backend with tiny models and short
# settings (appended flags override the real ones): how the script is tested without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/e2e.log"
RES="$OUT/results.json"
export MINISGL_CUDA_ARCHS=${MINISGL_CUDA_ARCHS:-90a} NO_COLOR=1
steps=${*:-build kernels broken-lib fidelity latency tune ops offline ttft serving ablations structured}
models=${MINISGL_MODELS:-/tmp/minisgl-models}
mkdir -p "$models"
tiny_offline="--device cpu --requests 6 --input-min 10 --input-max 64 --output-min 4 --output-max 16 --hf-requests 2"
tiny_serving="--num-prompts 8 --input-min 20 --input-max 60 --output-len 8 --concurrency 4"
# make PRESET: the seeded random-weight model folder (made once per machine).
SMOKE=${E2E_SMOKE:-0}
source scripts/device_common.sh
preset() {
  if [ "$SMOKE" != 1 ]; then echo "$1"; elif [[ $1 == qwen* ]]; then echo tiny-qwen3; else echo tiny-llama; fi
}
make() {
  local p
  p=$(preset "$1")
  [ -f "$models/$p/config.json" ] || deno task make-model --preset "$p" --out "$models/$p" >>"$LOG" 2>&1
}
m() { echo "$models/$(preset "$1")"; }
bench() { run "$1" deno run -A bench/run.ts "${@:2}"; }

if has build; then
  say build
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
  run 300 deno task build
  tail -5 "$LOG"
fi
# MINISGL_REQUIRE_CUDA=1: a CUDA library that does not load fails the device tests instead of
# skipping them; broken-lib checks exactly that with a corrupt library.
if has kernels; then
  say kernels
  # (not in a smoke run: there is no CUDA library on the CPU machine to require)
  MINISGL_REQUIRE_CUDA=$((SMOKE == 1 ? 0 : 1)) run 240 deno test -A tests/device/
  grep -E "^(ok|FAILED)|passed|failed" "$LOG" | tail -5
fi
if has broken-lib; then
  say broken-lib
  lib=build/libminisgl_cuda.so
  cp "$lib" "$lib.good" && head -c 4096 "$lib.good" >"$lib"
  if MINISGL_REQUIRE_CUDA=1 run 120 deno test -A tests/device/; then
    say "broken-lib: FAIL (device tests passed with a corrupt $lib)"
  else
    say "broken-lib: ok (device tests fail with a corrupt $lib)"
  fi
  mv "$lib.good" "$lib"
fi
if has fidelity; then
  say fidelity
  for p in qwen3-0.6b llama-3.2-1b; do
    make $p && bench 150 fidelity --model "$(m $p)" --name $p --out "$RES"
  done
fi
if has cpu-fidelity; then
  say cpu-fidelity
  for p in tiny-qwen3 tiny-llama tiny-qwen2 tiny-mistral; do
    make $p && bench 120 fidelity --model "$(m $p)" --name $p --device cpu \
      --prompt 96 --decode 8 --out "$RES"
  done
fi
if has latency; then
  say latency
  for p in qwen3-0.6b llama-3-8b; do
    make $p && bench 180 latency --model "$(m $p)" --name $p --plot --out "$RES" \
      $(small --device cpu --steps 4 --batches 1,8 --num-pages 256)
  done
fi
if has tune; then
  say tune
  for p in qwen3-0.6b llama-3-8b; do
    make $p || continue
    for t in off:0 on:; do
      MSG_GEMM_TUNE=${t#*:} MSG_GEMM_TUNE_LOG=1 bench 180 latency --model "$(m $p)" \
        --name "$p-tune-${t%%:*}" --batches 1,8,32,64,128 --out "$RES" \
        $(small --device cpu --steps 4 --batches 1,8 --num-pages 256)
    done
  done
  for t in off:0 on:; do
    make qwen3-0.6b && MSG_GEMM_TUNE=${t#*:} bench 240 offline --model "$(m qwen3-0.6b)" \
      --name "qwen3-0.6b-tune-${t%%:*}" --out "$RES" $(small "$tiny_offline")
  done
fi
if has ops; then
  say ops
  for p in qwen3-0.6b llama-3-8b; do
    make $p && bench 150 latency --model "$(m $p)" --name $p --ops --batches 1,64 --steps 32 \
      --out "$RES" $(small --device cpu --batches 1,8 --steps 4 --ops-steps 2 --num-pages 256)
  done
  # An offline step at its widest: 256 rows of ~600 keys with the fp8 cache (eager past the
  # graphs' 160 rows on an 80 GB card), where llama-3-8b's count leaves ~3 ms of 14 unexplained.
  make llama-3-8b && bench 150 latency --model "$(m llama-3-8b)" --name llama-3-8b --ops \
    --batches 256 --prompt 600 --steps 16 --kv-cache-dtype fp8_e4m3 --out "$RES" \
    $(small --device cpu --batches 4 --prompt 16 --steps 4 --ops-steps 2 --num-pages 256)
fi
if has offline; then
  say offline
  make qwen3-0.6b && bench 330 offline --model "$(m qwen3-0.6b)" --name qwen3-0.6b \
    --hf --hf-requests 64 --out "$RES" $(small "$tiny_offline")
  make llama-3-8b && bench 240 offline --model "$(m llama-3-8b)" --name llama-3-8b --out "$RES" \
    $(small "$tiny_offline")
fi
# fp8 KV cache (--kv-cache-dtype fp8_e4m3): fidelity, decode kernel bandwidth, latency, offline;
# records carry kv_cache_dtype. Compare with the same steps run without it.
if has fp8; then
  say fp8
  fp8="--kv-cache-dtype fp8_e4m3"
  [ "$SMOKE" = 1 ] || bench 200 attention --only decode --decode-kernels auto $fp8 --out "$RES"
  for p in qwen3-0.6b llama-3-8b; do
    make $p || continue
    # With and without: the 16-bit cache's figure of the same model is the baseline.
    for kv in "$fp8" ""; do
      bench 150 fidelity --model "$(m $p)" --name $p $kv --out "$RES" \
        $(small --device cpu --prompt 96 --decode 8)
    done
    bench 180 latency --model "$(m $p)" --name $p $fp8 --out "$RES" \
      $(small --device cpu --steps 4 --batches 1,8 --num-pages 256)
    bench 240 offline --model "$(m $p)" --name $p $fp8 --out "$RES" $(small "$tiny_offline")
  done
fi
if has ttft; then
  say ttft
  make qwen3-0.6b && bench 150 ttft --model "$(m qwen3-0.6b)" --name qwen3-0.6b \
    --lengths 32,8192 --out "$RES" $(small --device cpu --lengths 32,512 --repeats 2)
  # Llama 3's context is 8192 tokens: an 8000-token prompt leaves room for the answer.
  make llama-3-8b && bench 180 ttft --model "$(m llama-3-8b)" --name llama-3-8b \
    --lengths 32,8000 --out "$RES" $(small --device cpu --lengths 32,512 --repeats 2)
fi
if has serving; then
  say serving
  q=$(m qwen3-0.6b)
  make qwen3-0.6b && bench 150 serving --tokenizer "$q" --name qwen3-0.6b --num-prompts 128 \
    --input-min 200 --input-max 800 --output-len 256 --concurrency 128 --rates inf \
    --out "$RES" $(small "$tiny_serving") -- --model "$q" --page-size 16 $(small --device cpu)
  make qwen3-0.6b && bench 150 serving --tokenizer "$q" --name qwen3-0.6b --num-prompts 128 \
    --input-min 200 --input-max 800 --output-len 256 --rates 8,16,32 --plot \
    --out "$RES" $(small "$tiny_serving") -- --model "$q" --page-size 16 $(small --device cpu)
fi
if has ablations; then
  say ablations
  make qwen3-0.6b && bench 300 ablations --model "$(m qwen3-0.6b)" --name qwen3-0.6b --out "$RES" \
    $(small --device cpu --requests 8 --input-min 16 --input-max 64 --output-min 4 --output-max 16 --prefix-len 128 --groups 2)
fi
if has structured; then
  say structured
  make qwen3-0.6b && bench 300 structured --model "$(m qwen3-0.6b)" --name qwen3-0.6b \
    --out "$RES" $(small --device cpu --batches 1,4 --bs1-rounds 1 --max-tokens 200)
  # Where batch 1's time goes: the GPU worker's host time per phase (no record; log only).
  MINISGL_WORKER_PROFILE=1 bench 120 structured --model "$(m qwen3-0.6b)" --name qwen3-0.6b \
    --batches 1 --bs1-rounds 2 --max-tokens 96 $(small --device cpu)
  grep "gpu worker host time" "$LOG" | tail -1
  # The official Python client too, where the machine has it (bench/peers/openai_structured.py).
  if python3 -c "import openai, pydantic" 2>/dev/null; then
    port=30123
    deno run -A main.ts --model "$(m qwen3-0.6b)" --served-model-name qwen3-0.6b \
      --port "$port" $(small --device cpu) >>"$LOG" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
      python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health')" \
        2>/dev/null && break
      sleep 1
    done
    run 180 python3 bench/peers/openai_structured.py --base-url "http://127.0.0.1:$port/v1" \
      --model qwen3-0.6b
    kill "$server"
    wait "$server" 2>/dev/null
  else
    say "structured: python3 has no openai/pydantic module, Python client check skipped"
  fi
fi
say done
grep -E "^\| " "$LOG" | tail -60
