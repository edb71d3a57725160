// rope.cuh — one head of one token: the optional per-head q/k RMSNorm, the neox rotary
// embedding and the KV-cache store, as a warp-wide device function. rope.cu's
// rope_store_kv kernel runs it on a warp per head, and the qkv GEMV's fused epilogue (gemv.cu,
// msg_gemm_rope_store_kv) in the last block to finish each head's columns: the same bits.
#pragma once

#include "common.cuh"

namespace msg {

constexpr int kRopeMaxPerLane = 8;  // head_dim <= 256

/** What rope_store_head needs besides the head (see msg_rope_store_kv). */
template <typename T, typename TW>
struct RopeArgs {
  const int32_t* positions;  // [n]; nullptr: no rope epilogue (gemv.cu)
  const TW* q_norm;          // [head_dim] or nullptr
  const TW* k_norm;
  float eps;
  const float* cos_sin;  // [max_pos, rot_dim]
  int rot_dim;
  const int32_t* slots;  // [n]; -1: not stored
  T* k_cache;            // [slots, hkv, head_dim]
  T* v_cache;
  int hq, hkv, head_dim;
};

/** Head h of token t of qkv [n, (hq + 2 hkv) * head_dim]: q and k normalised (when their
 *  weight is given) and rotated in place, k and v stored at the token's slot. One warp calls
 *  it; hs: head_dim floats of shared memory of that warp. CG: the head is read through L2
 *  only (other blocks of the running grid wrote it). */
template <bool CG, typename T, typename TW>
__device__ __forceinline__ void rope_store_head(T* qkv, const RopeArgs<T, TW>& a, int t, int h,
                                                float* hs) {
  const int lane = threadIdx.x & 31, D = a.head_dim;
  const int heads = a.hq + 2 * a.hkv;
  T* row = qkv + (size_t)t * heads * D + (size_t)h * D;
  const int slot = a.slots ? a.slots[t] : -1;
  const bool is_q = h < a.hq, is_k = !is_q && h < a.hq + a.hkv;
  auto load = [&](int i) { return CG ? __ldcg(row + i) : row[i]; };
  if (!is_q && !is_k) {  // v: copy into the cache
    if (slot >= 0) {
      T* dst = a.v_cache + ((size_t)slot * a.hkv + (h - a.hq - a.hkv)) * D;
      for (int i = lane; i < D; i += 32) dst[i] = load(i);
    }
    return;
  }
  float x[kRopeMaxPerLane];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    const int i = lane + 32 * j;
    x[j] = i < D ? to_f(load(i)) : 0.f;
    ss += x[j] * x[j];
  }
  const TW* nw = is_q ? a.q_norm : a.k_norm;
  if (nw) {
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / (float)D + a.eps);
#pragma unroll
    for (int j = 0; j < kRopeMaxPerLane; j++) {
      const int i = lane + 32 * j;
      // Round to the act dtype as a separate norm op would, then rotate.
      if (i < D) x[j] = to_f(from_f<T>(x[j] * inv * to_f(nw[i])));
    }
  }
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    const int i = lane + 32 * j;
    if (i < D) hs[i] = x[j];
  }
  __syncwarp();
  const int half = a.rot_dim / 2;
  const float* cs = a.cos_sin + (size_t)a.positions[t] * a.rot_dim;
  T* kdst = (is_k && slot >= 0) ? a.k_cache + ((size_t)slot * a.hkv + (h - a.hq)) * D : nullptr;
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    const int i = lane + 32 * j;
    if (i >= D) continue;
    float y = x[j];
    if (i < half) {
      y = x[j] * cs[i] - hs[i + half] * cs[half + i];
    } else if (i < a.rot_dim) {
      const int f = i - half;
      y = x[j] * cs[f] + hs[f] * cs[half + f];
    }
    const T v = from_f<T>(y);
    row[i] = v;
    if (kdst) kdst[i] = v;
  }
}

}  // namespace msg
