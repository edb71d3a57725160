// pdl.cuh — programmatic dependent launch (Hopper and later). A kernel launched with
// msg::launch_pdl may be scheduled while the kernel before it on the stream is still running;
// it calls msg::pdl_wait() as its very first statement, which returns once that kernel has
// completed and its writes are visible, so nothing it reads or writes can race. It then calls
// msg::pdl_trigger() at once, letting the next kernel's blocks become resident and wait in
// turn: the launch latency and block scheduling of each kernel hide behind the one before.
// Both are no-ops below sm_90 and for kernels launched without the attribute; the attribute is
// set only on devices of compute capability >= 9, on created streams (not the legacy default
// one), and unless MINISGL_PDL=0. Works inside CUDA graphs (captured as programmatic edges).
// Kernels launched the ordinary way (cuBLASLt, attention extend, sampling) keep full
// serialization before and after them; the decode attention kernel is launched with it. A GEMV may also read its weights before the wait (gemv.cu): weights
// are never written by a kernel.
#pragma once

#include <cuda_runtime.h>
#include <stdlib.h>

#include <atomic>
#include <utility>

namespace msg {

/** Waits until the previous kernel on the stream has completed (first statement). */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/** Lets the next kernel on the stream be scheduled (right after pdl_wait). */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/** True when launches on the current device may carry the PDL attribute. */
inline bool pdl_enabled() {
  static std::atomic<int> env{-1};
  int e = env.load(std::memory_order_relaxed);
  if (e < 0) {
    const char* v = getenv("MINISGL_PDL");
    e = v && v[0] == '0' ? 0 : 1;
    env.store(e, std::memory_order_relaxed);
  }
  if (!e) return false;
  constexpr int kMaxDevices = 64;
  static std::atomic<int> state[kMaxDevices];  // 0 unknown, 1 no, 2 yes (static: zeroed)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  int s = state[dev].load(std::memory_order_relaxed);
  if (s == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      major = 0;
    }
    s = major >= 9 ? 2 : 1;
    state[dev].store(s, std::memory_order_relaxed);
  }
  return s == 2;
}

/** Launches `kernel` on `st` with programmatic stream serialization where enabled. The kernel
 *  must begin with pdl_wait() (see the top of this file). */
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                       cudaStream_t st, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cfg.attrs = attr;
  // Created streams only (the engine's): the legacy default stream keeps plain launches.
  const bool created = st != nullptr && st != cudaStreamLegacy && st != cudaStreamPerThread;
  cfg.numAttrs = created && pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace msg
