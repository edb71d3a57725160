#!/usr/bin/env bash
# Tensor parallelism on a two-GPU machine (kind nvidia-h200-x2): the figures of issue 9.
# Records go to $OUT/results.json through bench/tp.ts, the log to $OUT/tp.log.
#
#   source .device/env.sh && bash scripts/device_tp.sh [STEP...]
#
# Steps (default: all, in this order; estimated wall time on two H200s in brackets):
#   build     CUDA library for sm_90a ($MINISGL_CUDA_ARCHS) + CPU library          [~2 min]
#   kernels   tests/device/tp_test.ts: shard ops vs CPU bits; NCCL, one-shot peer
#             all-reduce (direct and graph-replayed), column all-gather on 2 GPUs  [~0.5 min]
#   fidelity  llama-3-8b: TP=2 logits vs TP=1, 512-token prompt + 64 decode steps  [~3 min]
#   decode8b  llama-3-8b: decode tok/s at batch 1, TP=2 and TP=1 (speedup)         [~2 min]
#   decode70b llama-3-70b (--dummy-weight): decode tok/s at batch 1, TP=2          [~2 min]
#   offline   llama-3-70b (--dummy-weight): 128 offline requests at TP=2           [~4 min]
#   nccl-only decode8b again with MINISGL_PEER_ALL_REDUCE=0 (NCCL for every size)  [~2 min]
#   sockets   llama-3-8b: --tp 2 --nnodes 2 as two processes, one GPU each, NCCL on
#             sockets (bench/tp_nodes.ts), vs one process --tp 2: equal logprobs? [~3 min]
# TP_SMOKE=1 runs the same command lines on the CPU backend with tiny models (how the
# script is tested without GPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/tp.log"
RES="$OUT/results.json"
export MINISGL_CUDA_ARCHS=${MINISGL_CUDA_ARCHS:-90a} NO_COLOR=1
steps=${*:-build kernels fidelity decode8b decode70b offline nccl-only sockets}
models=${MINISGL_MODELS:-/tmp/minisgl-models}
mkdir -p "$models"
SMOKE=${TP_SMOKE:-0}
source scripts/device_common.sh
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
card="${card:-cpu} x2"
preset() { if [ "$SMOKE" = 1 ]; then echo tiny-llama; else echo "$1"; fi; }
make() {
  local p
  p=$(preset "$1")
  [ -f "$models/$p/config.json" ] || deno task make-model --preset "$p" --out "$models/$p" >>"$LOG" 2>&1
  echo "$models/$p"
}
tp() { run "$1" deno run -A bench/tp.ts "${@:2}" --card "$card" --out "$RES" $(small --device cpu); }

if has build; then
  say build
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$LOG"
  run 300 deno task build
fi
if has kernels; then
  say kernels
  MINISGL_REQUIRE_CUDA=$((SMOKE == 1 ? 0 : 1)) run 180 deno test -A tests/device/tp_test.ts
fi
if has fidelity; then
  say fidelity
  tp 300 fidelity --model "$(make llama-3-8b)" --name llama-3-8b $(small --prompt 32 --steps 4)
fi
if has decode8b; then
  say decode8b
  tp 300 decode --model "$(make llama-3-8b)" --name llama-3-8b $(small --tokens 16)
fi
if has decode70b; then
  say decode70b
  tp 300 decode --model "$(make llama-3-70b)" --name llama-3-70b --dummy $(small --tokens 16)
fi
if has offline; then
  say offline
  tp 480 offline --model "$(make llama-3-70b)" --name llama-3-70b --dummy \
    $(small --requests 4 --max-len 24)
fi
if has nccl-only; then
  say "nccl-only (MINISGL_PEER_ALL_REDUCE=0)"
  MINISGL_PEER_ALL_REDUCE=0 tp 300 decode --model "$(make llama-3-8b)" --name llama-3-8b-nccl-only \
    $(small --tokens 16)
fi
if has sockets; then
  say "sockets (two processes, NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1)"
  run 420 deno run -A bench/tp_nodes.ts --model "$(make llama-3-8b)" --name llama-3-8b \
    --card "$card" --out "$RES" $(small --device cpu --tokens 8)
fi
grep -h '^{' "$LOG" | tail -20
