// norm.cuh — one row of RMSNorm (optionally after the residual add), as a block-wide device
// function: norm.cu's kernels run it on a row per block, and the GEMV's fused epilogue
// (gemv.cu, msg_gemm_add_rmsnorm) on each of its M rows in the grid's last block. The two thus
// give bitwise-equal results for equal inputs.
//
// Pass 1 computes the sum of squares (the fused op first adds x into the residual and stores
// the rounded sum, so the norm is taken of exactly what the residual stream holds); pass 2
// re-reads the row, which is still in L1/L2, and writes x / rms * w. The block reduction has a
// fixed order: deterministic. The residual stream may be kept in fp32 (TR = float) while x and
// out are 16-bit: the residual then accumulates every layer's output without rounding, as the
// fp32 reference.
#pragma once

#include "pack.cuh"

namespace msg {

/** V consecutive values of T as floats: 16-byte packs when V fills whole packs; CG reads
 *  through L2 only (data other blocks of the running grid wrote). */
template <int V, bool CG = false, typename T>
__device__ __forceinline__ void load_v(float* dst, const T* src) {
  constexpr int P = Pack<T>::N;
  if constexpr (V % P == 0) {
#pragma unroll
    for (int j = 0; j < V; j += P) {
      if constexpr (CG) {
        Pack<T> p;
        *reinterpret_cast<uint4*>(&p) = __ldcg(reinterpret_cast<const uint4*>(src + j));
#pragma unroll
        for (int i = 0; i < P; i++) dst[j + i] = to_f(p.v[i]);
      } else {
        load_pack(dst + j, src + j);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) dst[j] = to_f(CG ? __ldcg(src + j) : src[j]);
  }
}
template <int V, typename T>
__device__ __forceinline__ void store_v(T* dst, const float* src) {
  constexpr int P = Pack<T>::N;
  if constexpr (V % P == 0) {
#pragma unroll
    for (int j = 0; j < V; j += P) store_pack(dst + j, src + j);
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) dst[j] = from_f<T>(src[j]);
  }
}

/** out[i] = r[i] / rms(r) * w[i] over one row of `hidden` values, where r = x, or with ADD
 *  r = res += x (stored rounded to TR first). Every thread of the block calls it; PACKED:
 *  hidden is a multiple of the pack size and out, res, x are 16-byte aligned. CG: x is read
 *  through L2 only. sh: 33 floats of shared memory. */
template <bool ADD, bool PACKED, bool CG, typename T, typename TR, typename TW>
__device__ __forceinline__ void rmsnorm_row(T* out, TR* res, const T* x, const TW* w, int hidden,
                                            float eps, float* sh) {
  constexpr int V = PACKED ? Pack<T>::N : 1;
  float ss = 0.f;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    load_v<V, CG>(a, x + i);
    if (ADD) {
      float b[V];
      load_v<V>(b, res + i);
#pragma unroll
      for (int k = 0; k < V; k++) a[k] = to_f(from_f<TR>(a[k] + b[k]));
      store_v<V>(res + i, a);
    }
#pragma unroll
    for (int k = 0; k < V; k++) ss += a[k] * a[k];
  }
  ss = block_sum(ss, sh);
  const float inv = rsqrtf(ss / (float)hidden + eps);
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    if (ADD) load_v<V>(a, res + i); else load_v<V, CG>(a, x + i);
#pragma unroll
    for (int k = 0; k < V; k++) a[k] = a[k] * inv * to_f(w[i + k]);
    if (PACKED) store_pack(out + i, a); else out[i] = from_f<T>(a[0]);
  }
}

}  // namespace msg
