// attention_hopper.cuh — the building blocks of the Hopper extend kernel
// (attention_extend_hopper_v5.cu, _v6.cu): tile sizes, the swizzled shared-memory layout, cp.async,
// 16-bit packing, the two wgmma shapes (S = Q K^T, O += P V) and the device check.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "common.cuh"
#include "wgmma.cuh"

namespace msg {
namespace hopper {

const int BQ = 128, BK = 64, NT = 256;

/** Shared memory of one block: Q [D/64 blocks][ROWS rows][128 B], K and V [2 stages][D/64
 *  blocks][64 rows][128 B], each 128-byte row of 8 16-byte chunks swizzled (chunk ^ row%8). */
template <int D, int ROWS = BQ>
struct Layout {
  static const int q = 0;
  static const int q_blk = ROWS * 128;
  static const int kv_blk = BK * 128;
  static const int kv_tile = (D / 64) * kv_blk;
  static const int k = q + (D / 64) * q_blk;
  static const int v = k + 2 * kv_tile;
  static const int total = v + 2 * kv_tile;
};

#ifdef MSG_HAS_WGMMA
const float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ int swz(int row, int chunk, int blk_bytes) {
  return (chunk >> 3) * blk_bytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *(uint32_t*)&v;
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *(uint32_t*)&v;
}

template <typename T>
__device__ __forceinline__ void mma_qk(float* s, uint64_t da, uint64_t db, int acc) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) msg::wgmma::wgmma_ss_n64_bf16(s, da, db, acc);
  else msg::wgmma::wgmma_ss_n64_f16(s, da, db, acc);
}
/** S (64 x 128) = Q K^T for one k16 step, both operands in shared memory (fa3 v3's tiles). */
template <typename T>
__device__ __forceinline__ void mma_qk_n128(float* s, uint64_t da, uint64_t db, int acc) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) msg::wgmma::wgmma_ss_n128_bf16(s, da, db, acc);
  else msg::wgmma::wgmma_ss_n128_f16(s, da, db, acc);
}
template <typename T, int D>
__device__ __forceinline__ void mma_pv(float* o, const uint32_t* a, uint64_t db) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (D == 64) msg::wgmma::wgmma_rs_n64_bf16(o, a, db, 1);
    else msg::wgmma::wgmma_rs_n128_bf16(o, a, db, 1);
  } else {
    if constexpr (D == 64) msg::wgmma::wgmma_rs_n64_f16(o, a, db, 1);
    else msg::wgmma::wgmma_rs_n128_f16(o, a, db, 1);
  }
}
#endif

/** True when the current device is a Hopper (compute capability 9.x); cached per device. */
inline bool hopper_device() {
  static thread_local int cached_device = -1;
  static thread_local bool cached = false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev != cached_device) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return false;
    cached = major == 9;
    cached_device = dev;
  }
  return cached;
}

}  // namespace hopper
}  // namespace msg
