// warp_specialize.cuh — the Hopper (sm_90a) synchronisation a warp-specialised kernel needs,
// as inline-PTX wrappers: shared-memory mbarriers (init, arrive, parity wait, and the arrive
// that fires when a thread's earlier cp.async copies have landed), named barriers between
// warpgroups, the generic-to-async proxy fence, and setmaxnreg (moving registers from a
// producer warpgroup to the consumer warpgroups).
//
// mbarrier phases: a barrier starts in phase 0; wait(bar, parity) returns once the phase
// with that parity has completed. A consumer waiting for the n-th fill of a ring slot waits
// on parity n & 1; a producer refilling it for the n-th time (n >= 1) waits on the slot's
// empty barrier with parity (n - 1) & 1.
#pragma once
#include <cstdint>

namespace msg {
namespace ws {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

/** Initialises the mbarrier at shared address `bar` to expect `count` arrivals per phase. */
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/** Makes mbarrier initialisations visible before the barrier that follows them. */
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/** One arrival (release semantics: this thread's earlier memory operations are ordered
 *  before it). */
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar)
               : "memory");
}
/** One arrival, made when every cp.async this thread issued before it has completed; counts
 *  towards the barrier's expected arrivals (.noinc). */
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
/** One test of the phase of parity `parity` of `bar` (acquire semantics when it has completed);
 *  may suspend the thread for a system-dependent time before answering false. */
__device__ __forceinline__ bool mbar_test(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
/** Nanoseconds of the GPU's global timer. */
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
/** Blocks until the phase of parity `parity` of `bar` has completed (acquire semantics).
 *  A wait still open after ~1 s of %globaltimer (a protocol bug: a missing arrival; a correct
 *  wait here lasts microseconds) gives up and sets `gave_up`, a shared word of the block
 *  (zeroed before the first wait), after which every wait not complete at its first test gives
 *  up at once: each block of a broken kernel then ends about a second after its first stuck
 *  wait, with wrong output that the tests catch, instead of hanging the process. The bound is on time, not on tries: one try may
 *  suspend for a system-dependent time, so 2^24 tries could last minutes or hours. (Not
 *  __trap(): a trap path made ptxas cap the warp-specialised kernel's consumers at the launch
 *  register count, spilling and serialising their wgmmas.) */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity, uint32_t gave_up) {
  if (mbar_test(bar, parity)) return;
  uint64_t t0 = global_ns();
  while (!mbar_test(bar, parity)) {
    uint32_t flag;
    asm volatile("ld.volatile.shared.u32 %0, [%1];\n" : "=r"(flag) : "r"(gave_up) : "memory");
    if (flag != 0) return;
    if (global_ns() - t0 > (1ull << 30)) {
      asm volatile("st.volatile.shared.u32 [%0], %1;\n" ::"r"(gave_up), "r"(1u) : "memory");
      return;
    }
  }
}

/** Named barrier `id` (1..15; 0 is __syncthreads) over `count` threads: wait for all. */
__device__ __forceinline__ void named_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
/** Named barrier `id` over `count` threads: count this warp's threads in, do not wait. */
__device__ __forceinline__ void named_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

/** Orders this thread's view of shared memory written through the generic proxy (st.shared,
 *  cp.async) before its later async-proxy reads (wgmma operands). */
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/** setmaxnreg: executed by every thread of a warpgroup; N a multiple of 8 in [24, 256]. */
template <int N>
__device__ __forceinline__ void regs_dec() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void regs_inc() {
  static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

#endif  // sm_90a

}  // namespace ws
}  // namespace msg
