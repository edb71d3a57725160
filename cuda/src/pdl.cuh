// pdl.cuh — programmatic dependent launch (Hopper and later). A kernel launched with
// msg::launch_pdl may be scheduled while the kernel before it on the stream is still running;
// msg::pdl_wait() returns once that kernel has completed and its writes are visible. Then it
// calls msg::pdl_trigger(), letting the next kernel's blocks become resident and wait in
// turn: the launch latency and block scheduling of each kernel hide behind the one before.
// Both are no-ops below sm_90 and for kernels launched without the attribute; the attribute is
// set only on devices of compute capability >= 9, on created streams (not the legacy default
// one), and unless MINISGL_PDL=0. Works inside CUDA graphs (captured as programmatic edges).
// Kernels launched the ordinary way (cuBLASLt, attention extend, sampling) keep full
// serialization before and after them.
//
// The rule (every launch_pdl kernel keeps it): no pdl_trigger() before pdl_wait() in the same
// thread, and a block either waits before it triggers or exits without triggering only when
// some block of its grid waits first (a grid whose every block exits unwaited triggers its
// successor early). Invariant it gives: when any block of kernel i runs, kernel i-1 has
// started AND passed a wait (its blocks all triggered, and a trigger follows a wait) or was
// launched without the attribute (it started after i-2 completed); either way kernel i-2 and
// everything before it on the stream have completed and their writes are visible. Hence a
// kernel may read BEFORE its wait what kernels at least two back wrote, and nothing the
// kernel just before may write (nor write anything the kernel before reads). Users:
// - gemv.cu reads its weights (never written by a kernel);
// - attention_decode.cu reads seq_lens, rows, the page table (written at the start of the
//   step) and the K/V of every key but the newest (written by earlier steps); q and the newest
//   key's K/V come from rope_store_kv, the kernel just before, and are read after the wait.
//   In a mixed batch the extend kernel (plain launch) may come between: it started only after
//   rope_store_kv completed. A plain-launched predecessor never overlaps at all.
// A new kernel that triggers before its wait (or never waits) breaks every pre-wait read of
// the kernel after it: keep the wait first, or launch it without the attribute.
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
