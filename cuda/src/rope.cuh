// rope.cuh — one head's optional RMSNorm + neox rotary embedding, done by one warp: the math
// of rope.cu's rope_store_kv and of the decode attention that folds it in
// (attention_decode.cu), shared so both give the same bits.
#pragma once

#include "common.cuh"

namespace msg {

constexpr int kRopeMaxPerLane = 8;  // head_dim <= 256

/** Warp-wide: src (head_dim values) normalized by nw (if not null; eps) then rotated by the
 *  cos/sin row cs (rot_dim: cos of the first rot_dim / 2 frequencies, then their sin) into dst
 *  and, when not null, dst2 (both in T). hs: head_dim floats of this warp's shared scratch. */
template <typename T, typename TW>
__device__ __forceinline__ void rope_head(const T* src, T* dst, T* dst2, const TW* nw, float eps,
                                          const float* cs, int rot_dim, int head_dim, float* hs,
                                          int lane) {
  float x[kRopeMaxPerLane];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    int i = lane + 32 * j;
    x[j] = i < head_dim ? to_f(src[i]) : 0.f;
    ss += x[j] * x[j];
  }
  if (nw) {
    ss = warp_sum(ss);
    float inv = rsqrtf(ss / (float)head_dim + eps);
#pragma unroll
    for (int j = 0; j < kRopeMaxPerLane; j++) {
      int i = lane + 32 * j;
      // Round to the act dtype as a separate norm op would, then rotate.
      if (i < head_dim) x[j] = to_f(from_f<T>(x[j] * inv * to_f(nw[i])));
    }
  }
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    int i = lane + 32 * j;
    if (i < head_dim) hs[i] = x[j];
  }
  __syncwarp();
  int half = rot_dim / 2;
#pragma unroll
  for (int j = 0; j < kRopeMaxPerLane; j++) {
    int i = lane + 32 * j;
    if (i >= head_dim) continue;
    float y = x[j];
    if (i < half) {
      y = x[j] * cs[i] - hs[i + half] * cs[half + i];
    } else if (i < rot_dim) {
      int f = i - half;
      y = x[j] * cs[f] + hs[f] * cs[half + f];
    }
    T v = from_f<T>(y);
    dst[i] = v;
    if (dst2) dst2[i] = v;
  }
  __syncwarp();  // hs is free again
}

}  // namespace msg
