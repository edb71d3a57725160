// rope.cpp — rotary embedding + KV-cache store, and the slot/position computation from the
// page table. Tokens are split over the thread pool; every head of a token is converted to
// fp32, optionally RMS-normalized (Qwen3's q_norm/k_norm), rotated (neox: halves) and
// stored back; k and v then go to the token's cache slot (as stored, or converted to fp8).
#include <cmath>

#include "common.h"

using namespace msg;

namespace {

// Neox rotation of the first rot_dim dims of x with the cos/sin row of one position.
void rotate(float* x, const float* cs, int rot_dim) {
  const int half = rot_dim / 2;
  for (int i = 0; i < half; i++) {
    float c = cs[i], s = cs[half + i];
    float x1 = x[i], x2 = x[half + i];
    x[i] = x1 * c - x2 * s;
    x[half + i] = x2 * c + x1 * s;
  }
}

void head_rmsnorm(float* x, const float* w, int d, float eps) {
  float inv = 1.0f / std::sqrt(sumsq(x, d) / (float)d + eps);
  for (int i = 0; i < d; i++) x[i] = x[i] * inv * w[i];
}

}  // namespace

extern "C" {

int msg_rope_store_kv(void* qkv, const int32_t* positions, const void* q_norm,
                      const void* k_norm, float eps, const float* cos_sin, int rot_dim,
                      const int32_t* slots, void* k_cache, void* v_cache, int n, int hq,
                      int hkv, int head_dim, int act_dtype, int w_dtype, int kv_dtype, void*) {
  MSG_REQUIRE(is_float_dtype(act_dtype), "msg_rope_store_kv: unsupported act dtype %s",
              dtype_name(act_dtype));
  MSG_REQUIRE(kv_dtype == act_dtype || kv_dtype == MSG_FP8_E4M3,
              "msg_rope_store_kv: unsupported KV cache dtype %s (act dtype %s)",
              dtype_name(kv_dtype), dtype_name(act_dtype));
  MSG_REQUIRE(!(q_norm || k_norm) || is_float_dtype(w_dtype),
              "msg_rope_store_kv: unsupported weight dtype %s", dtype_name(w_dtype));
  MSG_REQUIRE(n >= 0 && hq > 0 && hkv > 0 && head_dim > 0,
              "msg_rope_store_kv: bad sizes n=%d hq=%d hkv=%d head_dim=%d", n, hq, hkv,
              head_dim);
  MSG_REQUIRE(rot_dim >= 0 && rot_dim <= head_dim && rot_dim % 2 == 0,
              "msg_rope_store_kv: rot_dim %d must be even and <= head_dim %d", rot_dim,
              head_dim);
  if (n == 0) return 0;
  MSG_REQUIRE(qkv && positions && (rot_dim == 0 || cos_sin), "msg_rope_store_kv: NULL pointer");
  MSG_REQUIRE(!slots || (k_cache && v_cache), "msg_rope_store_kv: slots given without a cache");
  for (int t = 0; t < n; t++) {
    MSG_REQUIRE(positions[t] >= 0, "msg_rope_store_kv: negative position %d", positions[t]);
  }
  MSG_TRY
  float* qn = nullptr;
  float* kn = nullptr;
  if (q_norm) load_f32(qn = scratch(4, (size_t)head_dim), q_norm, w_dtype, 0, head_dim);
  if (k_norm) load_f32(kn = scratch(5, (size_t)head_dim), k_norm, w_dtype, 0, head_dim);
  const int64_t row = (int64_t)(hq + 2 * hkv) * head_dim;
  const int64_t kv_row = (int64_t)hkv * head_dim;
  // cache[dst + i] = qkv[src + i] for i < cnt: the stored (rounded) act values, so that cache
  // and qkv agree bit for bit, or those values converted to fp8.
  auto store_kv = [&](void* cache, int64_t dst, int64_t src, int64_t cnt) {
    if (kv_dtype == act_dtype) {
      const int sz = dtype_size(act_dtype);
      std::memcpy((char*)cache + dst * sz, (const char*)qkv + src * sz, (size_t)(cnt * sz));
    } else {
      float* y = scratch(1, (size_t)cnt);
      load_f32(y, qkv, act_dtype, src, cnt);
      store_f32(cache, kv_dtype, dst, y, cnt);
    }
  };
  parallel_for(n, 8, [&](int64_t b, int64_t e) {
    float* x = scratch(0, (size_t)head_dim);
    for (int64_t t = b; t < e; t++) {
      const float* cs = cos_sin + (int64_t)positions[t] * rot_dim;
      const int32_t slot = slots ? slots[t] : -1;
      for (int h = 0; h < hq + hkv; h++) {
        const int64_t off = t * row + (int64_t)h * head_dim;
        load_f32(x, qkv, act_dtype, off, head_dim);
        const float* nw = h < hq ? qn : kn;
        if (nw) head_rmsnorm(x, nw, head_dim, eps);
        if (rot_dim > 0) rotate(x, cs, rot_dim);
        store_f32(qkv, act_dtype, off, x, head_dim);
        if (h >= hq && slot >= 0) {
          store_kv(k_cache, (int64_t)slot * kv_row + (int64_t)(h - hq) * head_dim, off,
                   head_dim);
        }
      }
      if (slot >= 0) {
        store_kv(v_cache, (int64_t)slot * kv_row, t * row + (int64_t)(hq + hkv) * head_dim,
                 kv_row);
      }
    }
  });
  return 0;
  MSG_CATCH
}

int msg_compute_slots(int32_t* slots, int32_t* positions, const int32_t* page_table,
                      int pt_stride, const int32_t* rows, const int32_t* seq_lens,
                      const int32_t* q_starts, int batch, int page_size, int max_q_len, void*) {
  MSG_REQUIRE(batch >= 0 && page_size > 0 && pt_stride > 0,
              "msg_compute_slots: bad sizes batch=%d page_size=%d pt_stride=%d", batch,
              page_size, pt_stride);
  (void)max_q_len;  // a launch bound on CUDA; here every query is computed
  if (batch == 0) return 0;
  MSG_REQUIRE(slots && page_table && rows && seq_lens && q_starts,
              "msg_compute_slots: NULL pointer");
  for (int b = 0; b < batch; b++) {
    const int q_len = q_starts[b + 1] - q_starts[b];
    MSG_REQUIRE(q_len >= 0 && q_len <= seq_lens[b] && rows[b] >= 0,
                "msg_compute_slots: request %d has q_len %d, seq_len %d, row %d", b, q_len,
                seq_lens[b], rows[b]);
    MSG_REQUIRE((seq_lens[b] + page_size - 1) / page_size <= pt_stride,
                "msg_compute_slots: seq_len %d does not fit a page-table row of %d pages",
                seq_lens[b], pt_stride);
  }
  for (int b = 0; b < batch; b++) {
    const int q_len = q_starts[b + 1] - q_starts[b];
    const int32_t* pt = page_table + (int64_t)rows[b] * pt_stride;
    for (int i = 0; i < q_len; i++) {
      const int p = seq_lens[b] - q_len + i;
      slots[q_starts[b] + i] = pt[p / page_size] * page_size + p % page_size;
      if (positions) positions[q_starts[b] + i] = p;
    }
  }
  return 0;
}

}  // extern "C"
