#!/usr/bin/env bash
# device_ab.sh — an A/B of one native source file on one machine, in one device call: builds
# the library as the tree has it (variant a) and with SRC replaced by ALT (variant b), then runs
# each command with a's and b's library in turn (a b a b: alternated, so drift in the card's
# clocks shows as a spread, not as a difference). SRC is restored at the end.
#
#   source .device/env.sh && bash scripts/device_ab.sh SRC ALT 'CMD' ['CMD'...]
#
# Each CMD runs under bash with MINISGL_LIB_DIR set to the variant's library and AB set to a or
# b (use it in record names: --name llama-3-8b-$AB). Its output goes to $OUT/ab.log, and a line
# per run to stdout. ALT is a file in the tree (untracked files travel to the device machine),
# e.g. `git show main:cuda/src/attention_decode.cu > alt.cu` on a branch.
# Benchmarks and `deno test` load the libraries from MINISGL_LIB_DIR (ffi/lib.ts); a server's
# start would rebuild stale ones there, hence the touched objects below. Not `deno task test`:
# it builds build/ first.
# Where nvcc or cuBLASLt is missing only the CPU library is built (how the script was tested:
# an ALT that breaks the CPU attention failed native_cpu_test in b only, also after a build
# into each directory).
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: device_ab.sh SRC ALT CMD..." >&2; exit 2; }
src=$1 alt=$2
shift 2
[ -f "$src" ] && [ -f "$alt" ] || { echo "device_ab.sh: $src or $alt is missing" >&2; exit 2; }
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/ab.log"
export MINISGL_CUDA_ARCHS=${MINISGL_CUDA_ARCHS:-90a} NO_COLOR=1
libs=$(mktemp -d)
keep=$(mktemp)
cp "$src" "$keep"
# Copies SRC back only when it differs: a copy makes it newer than build/'s objects again.
restore() { cmp -s "$keep" "$src" || cp "$keep" "$src"; }
trap 'restore; rm -rf "$libs" "$keep"' EXIT
build() {
  deno task build >>"$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
  mkdir -p "$libs/$1" && cp -r build/. "$libs/$1/"
}
# b first, so that build/ ends as the tree has it.
cp "$alt" "$src"
build b
restore
build a
# Objects newer than every source, then the libraries newer than the objects: a command that
# does build (the server's start, src/cli/native_lib.ts) finds nothing stale in either copy.
for v in a b; do
  find "$libs/$v/obj" -name '*.o' -exec touch {} +
  touch "$libs/$v"/*.so
done
for cmd in "$@"; do
  for v in a b a b; do
    t0=$SECONDS
    echo "== $v: $cmd" >>"$LOG"
    MINISGL_LIB_DIR="$libs/$v" AB=$v bash -c "$cmd" >>"$LOG" 2>&1
    echo "$v rc=$? $((SECONDS - t0)) s: $cmd"
  done
done
