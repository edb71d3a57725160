#!/usr/bin/env bash
# Runs on the GPU machine (see ../shared/device/README.md): builds the native libraries and
# runs the CUDA-vs-CPU kernel tests with timings. Logs go to $OUT (or ./build/device-logs).
#   source .device/env.sh && bash scripts/device_kernels.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/device-logs}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
if [ -f cuda/build.ts ]; then
  deno task build > "$OUT/build.log" 2>&1
else  # no build script yet: compile the CUDA library directly
  mkdir -p build/obj/cuda
  ls cuda/src/*.cu | xargs -P 16 -I{} sh -c 'nvcc -O3 -std=c++17 -Xcompiler -fPIC -Icuda/include \
    -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=sm_80 -c {} \
    -o build/obj/cuda/$(basename {}).o' > "$OUT/build.log" 2>&1
  nvcc -shared -o build/libminisgl_cuda.so build/obj/cuda/*.o -lcudart -ldl >> "$OUT/build.log" 2>&1
fi
build_rc=$?
ls -la build/*.so >> "$OUT/build.log" 2>&1
if [ ! -f build/libminisgl_cuda.so ]; then
  echo "no CUDA library (build rc $build_rc)"; tail -50 "$OUT/build.log"; exit 1
fi
MINISGL_REQUIRE_CUDA=1 deno test -A tests/device/kernels_test.ts 2>&1 | tee "$OUT/kernels_test.log"
exit "${PIPESTATUS[0]}"
