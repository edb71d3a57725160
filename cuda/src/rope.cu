// rope.cu — per-head q/k RMSNorm + neox rotary embedding + KV-cache store in one pass, and
// the slot/position computation from the page table.
//
// rope_store_kv: grid (ceil(heads / 4), n tokens), 4 warps a block, one warp per head of a
// token, where heads = hq (q) + hkv (k) + hkv (v). A warp loads its head (head_dim <= 256,
// so <= 8 values per lane), reduces the sum of squares with shuffles for the optional
// per-head norm, parks the normalized head in shared memory so each lane can read the
// partner element i +- rot_dim/2 of any layout, and writes the rotated head back in place
// (q, k) and into the cache (k, v). Every byte of qkv is read once and written once. An fp8
// cache (MSG_FP8_E4M3) gets the e4m3 bytes of the act-dtype values that a 16-bit cache would
// hold (fp8.cuh).
// compute_slots: grid (q-tiles of 256, batch), one thread per new token; lengths are read on
// the device, so the launch does not depend on them.
#include <type_traits>

#include "common.cuh"
#include "fp8.cuh"
#include "pdl.cuh"

namespace {

const int kWarps = 4;
const int kMaxPerLane = 8;  // head_dim <= 256

// A value of the act dtype as stored in a cache of KT: itself, or its e4m3 byte (KT uint8_t).
template <typename KT, typename T>
__device__ __forceinline__ KT to_cache(T v) {
  if constexpr (std::is_same<KT, T>::value) {
    return v;
  } else {
    static_assert(std::is_same<KT, uint8_t>::value, "cache of the act dtype or e4m3 bytes");
    return msg::e4m3_from_f(msg::to_f(v));
  }
}

// KT: the cache element, T (a cache of the act dtype) or uint8_t (e4m3 bytes).
template <typename T, typename TW, typename KT>
__global__ void rope_store_kv_kernel(T* qkv, const int32_t* positions, const TW* q_norm,
                                     const TW* k_norm, float eps, const float* cos_sin,
                                     int rot_dim, const int32_t* slots, KT* k_cache,
                                     KT* v_cache, int hq, int hkv, int head_dim) {
  extern __shared__ float sh[];
  msg::pdl_wait();
  msg::pdl_trigger();
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int h = blockIdx.x * kWarps + warp;
  int t = blockIdx.y;
  int heads = hq + 2 * hkv;
  if (h >= heads) return;
  float* hs = sh + warp * head_dim;
  T* row = qkv + (size_t)t * heads * head_dim + (size_t)h * head_dim;
  int slot = slots ? slots[t] : -1;
  bool is_q = h < hq, is_k = !is_q && h < hq + hkv;
  if (!is_q && !is_k) {  // v: copy into the cache
    if (slot >= 0) {
      KT* dst = v_cache + ((size_t)slot * hkv + (h - hq - hkv)) * head_dim;
      for (int i = lane; i < head_dim; i += 32) dst[i] = to_cache<KT>(row[i]);
    }
    return;
  }
  float x[kMaxPerLane];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; j++) {
    int i = lane + 32 * j;
    x[j] = i < head_dim ? msg::to_f(row[i]) : 0.f;
    ss += x[j] * x[j];
  }
  const TW* nw = is_q ? q_norm : k_norm;
  if (nw) {
    ss = msg::warp_sum(ss);
    float inv = rsqrtf(ss / (float)head_dim + eps);
#pragma unroll
    for (int j = 0; j < kMaxPerLane; j++) {
      int i = lane + 32 * j;
      // Round to the act dtype as a separate norm op would, then rotate.
      if (i < head_dim) x[j] = msg::to_f(msg::from_f<T>(x[j] * inv * msg::to_f(nw[i])));
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; j++) {
    int i = lane + 32 * j;
    if (i < head_dim) hs[i] = x[j];
  }
  __syncwarp();
  int pos = positions[t];
  int half = rot_dim / 2;
  const float* cs = cos_sin + (size_t)pos * rot_dim;
  KT* kdst = (is_k && slot >= 0) ? k_cache + ((size_t)slot * hkv + (h - hq)) * head_dim : nullptr;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; j++) {
    int i = lane + 32 * j;
    if (i >= head_dim) continue;
    float y = x[j];
    if (i < half) {
      y = x[j] * cs[i] - hs[i + half] * cs[half + i];
    } else if (i < rot_dim) {
      int f = i - half;
      y = x[j] * cs[f] + hs[f] * cs[half + f];
    }
    T v = msg::from_f<T>(y);
    row[i] = v;
    if (kdst) kdst[i] = to_cache<KT>(v);
  }
}

__global__ void compute_slots_kernel(int32_t* slots, int32_t* positions,
                                     const int32_t* page_table, int pt_stride,
                                     const int32_t* rows, const int32_t* seq_lens,
                                     const int32_t* q_starts, int page_size) {
  msg::pdl_wait();
  msg::pdl_trigger();
  int b = blockIdx.y;
  int q0 = q_starts[b], q_len = q_starts[b + 1] - q0;
  int seq = seq_lens[b];
  const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < q_len; i += gridDim.x * blockDim.x) {
    int p = seq - q_len + i;
    if (slots) slots[q0 + i] = pt[p / page_size] * page_size + p % page_size;
    if (positions) positions[q0 + i] = p;
  }
}

}  // namespace

extern "C" {

int msg_rope_store_kv(void* qkv, const int32_t* positions, const void* q_norm,
                      const void* k_norm, float eps, const float* cos_sin, int rot_dim,
                      const int32_t* slots, void* k_cache, void* v_cache, int n, int hq,
                      int hkv, int head_dim, int act_dtype, int w_dtype, int kv_dtype,
                      void* stream) {
  MSG_REQUIRE(n >= 0 && n <= 65535 && hq > 0 && hkv >= 0 && head_dim > 0 &&
                  head_dim <= 32 * kMaxPerLane,
              "msg_rope_store_kv: bad sizes n=%d hq=%d hkv=%d head_dim=%d", n, hq, hkv,
              head_dim);
  MSG_REQUIRE(rot_dim >= 0 && rot_dim <= head_dim && rot_dim % 2 == 0,
              "msg_rope_store_kv: rot_dim=%d (head_dim %d)", rot_dim, head_dim);
  if (kv_dtype != act_dtype && kv_dtype != MSG_FP8_E4M3) {
    return msg::fail(msg::ERR_UNSUPPORTED,
                     "msg_rope_store_kv: kv_dtype %d (the act dtype %s, or fp8 e4m3)", kv_dtype,
                     msg::dtype_name(act_dtype));
  }
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  const bool fp8 = kv_dtype == MSG_FP8_E4M3;
  int heads = hq + 2 * hkv;
  dim3 grid((heads + kWarps - 1) / kWarps, n);
  size_t smem = (size_t)kWarps * head_dim * sizeof(float);
  int wd = (q_norm || k_norm) ? w_dtype : act_dtype;
  return MSG_DISPATCH_FLOAT(act_dtype, T, return MSG_DISPATCH_FLOAT(wd, TW,
    if (fp8) {
      MSG_CUDA(msg::launch_pdl(rope_store_kv_kernel<T, TW, uint8_t>, grid, dim3(32 * kWarps),
                               smem, st, (T*)qkv, positions, (const TW*)q_norm,
                               (const TW*)k_norm, eps, cos_sin, rot_dim, slots,
                               (uint8_t*)k_cache, (uint8_t*)v_cache, hq, hkv, head_dim));
    } else {
      MSG_CUDA(msg::launch_pdl(rope_store_kv_kernel<T, TW, T>, grid, dim3(32 * kWarps), smem,
                               st, (T*)qkv, positions, (const TW*)q_norm, (const TW*)k_norm,
                               eps, cos_sin, rot_dim, slots, (T*)k_cache, (T*)v_cache, hq,
                               hkv, head_dim));
    }
    return 0;););
}

int msg_compute_slots(int32_t* slots, int32_t* positions, const int32_t* page_table,
                      int pt_stride, const int32_t* rows, const int32_t* seq_lens,
                      const int32_t* q_starts, int batch, int page_size, int max_q_len,
                      void* stream) {
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && page_size > 0 && max_q_len >= 0,
              "msg_compute_slots: bad sizes batch=%d page_size=%d max_q_len=%d", batch,
              page_size, max_q_len);
  if (batch == 0 || max_q_len == 0) return 0;
  int bx = (max_q_len + 255) / 256;
  dim3 grid(bx > 64 ? 64 : bx, batch);
  MSG_CUDA(msg::launch_pdl(compute_slots_kernel, grid, dim3(256), 0, msg::as_stream(stream), slots,
                           positions, page_table, pt_stride, rows, seq_lens, q_starts, page_size));
  return 0;
}

}  // extern "C"
