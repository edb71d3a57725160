// elementwise.cpp — cast, embedding, gathers/scatters, add, RMSNorm, fused add+RMSNorm and
// SiLU-and-mul on the host. Rows are split over the thread pool; each row is converted to
// fp32 scratch, computed in fp32 and stored back in its dtype.
#include <cmath>

#include "common.h"

using namespace msg;

namespace {

// Rows per chunk so that a chunk is about 32K elements: small enough to spread a decode
// step over the threads, large enough that the hand-off costs nothing.
int64_t row_grain(int64_t row_elems) {
  int64_t g = 32768 / (row_elems > 0 ? row_elems : 1);
  return g < 1 ? 1 : g;
}

const int64_t kFlatChunk = 1 << 16;

// x / rms(x) * w over one fp32 row, into `out`.
void rmsnorm_row(float* out, const float* x, const float* w, int64_t h, float eps) {
  float inv = 1.0f / std::sqrt(sumsq(x, h) / (float)h + eps);
  for (int64_t i = 0; i < h; i++) out[i] = x[i] * inv * w[i];
}

}  // namespace

extern "C" {

int msg_cast(void* out, int out_dtype, const void* in, int in_dtype, uint64_t n, void*) {
  MSG_REQUIRE(is_float_dtype(out_dtype) && is_float_dtype(in_dtype),
              "msg_cast: unsupported dtypes %s -> %s (f32/f16/bf16 only)", dtype_name(in_dtype),
              dtype_name(out_dtype));
  if (n == 0) return 0;
  MSG_REQUIRE(out && in, "msg_cast: NULL pointer");
  MSG_TRY
  if (out_dtype == in_dtype) {
    std::memmove(out, in, (size_t)n * dtype_size(in_dtype));
    return 0;
  }
  parallel_for((int64_t)n, kFlatChunk, [&](int64_t b, int64_t e) {
    float* tmp = scratch(0, (size_t)(e - b));
    load_f32(tmp, in, in_dtype, b, e - b);
    store_f32(out, out_dtype, b, tmp, e - b);
  });
  return 0;
  MSG_CATCH
}

int msg_embedding(void* out, const void* table, const int32_t* ids, int n, int hidden,
                  int act_dtype, int w_dtype, void*) {
  MSG_REQUIRE(is_float_dtype(act_dtype) && is_float_dtype(w_dtype),
              "msg_embedding: unsupported dtypes act %s, weight %s", dtype_name(act_dtype),
              dtype_name(w_dtype));
  MSG_REQUIRE(n >= 0 && hidden > 0, "msg_embedding: bad sizes n=%d hidden=%d", n, hidden);
  if (n == 0) return 0;
  MSG_REQUIRE(out && table && ids, "msg_embedding: NULL pointer");
  for (int i = 0; i < n; i++) {
    MSG_REQUIRE(ids[i] >= 0, "msg_embedding: negative id %d at %d", ids[i], i);
  }
  MSG_TRY
  parallel_for(n, row_grain(hidden), [&](int64_t b, int64_t e) {
    float* tmp = scratch(0, (size_t)hidden);
    for (int64_t r = b; r < e; r++) {
      load_f32(tmp, table, w_dtype, (int64_t)ids[r] * hidden, hidden);
      store_f32(out, act_dtype, r * hidden, tmp, hidden);
    }
  });
  return 0;
  MSG_CATCH
}

int msg_gather_rows(void* out, const void* in, const int32_t* idx, int n, uint64_t row_bytes,
                    void*) {
  MSG_REQUIRE(n >= 0, "msg_gather_rows: n = %d is negative", n);
  if (n == 0 || row_bytes == 0) return 0;
  MSG_REQUIRE(out && in && idx, "msg_gather_rows: NULL pointer");
  for (int i = 0; i < n; i++) MSG_REQUIRE(idx[i] >= 0, "msg_gather_rows: negative index");
  for (int i = 0; i < n; i++) {
    std::memmove((char*)out + i * row_bytes, (const char*)in + (uint64_t)idx[i] * row_bytes,
                 (size_t)row_bytes);
  }
  return 0;
}

int msg_gather_i32(int32_t* out, const int32_t* src, const int32_t* idx, int n, void*) {
  MSG_REQUIRE(n >= 0, "msg_gather_i32: n = %d is negative", n);
  if (n == 0) return 0;
  MSG_REQUIRE(out && src && idx, "msg_gather_i32: NULL pointer");
  for (int i = 0; i < n; i++) MSG_REQUIRE(idx[i] >= 0, "msg_gather_i32: negative index");
  for (int i = 0; i < n; i++) out[i] = src[idx[i]];
  return 0;
}

int msg_scatter_i32(int32_t* dst, const int32_t* idx, const int32_t* src, int n, void*) {
  MSG_REQUIRE(n >= 0, "msg_scatter_i32: n = %d is negative", n);
  if (n == 0) return 0;
  MSG_REQUIRE(dst && src && idx, "msg_scatter_i32: NULL pointer");
  for (int i = 0; i < n; i++) MSG_REQUIRE(idx[i] >= 0, "msg_scatter_i32: negative index");
  for (int i = 0; i < n; i++) dst[idx[i]] = src[i];
  return 0;
}

int msg_add(void* out, const void* x, const void* y, uint64_t n, int dtype, void*) {
  MSG_REQUIRE(is_float_dtype(dtype), "msg_add: unsupported dtype %s", dtype_name(dtype));
  if (n == 0) return 0;
  MSG_REQUIRE(out && x && y, "msg_add: NULL pointer");
  MSG_TRY
  parallel_for((int64_t)n, kFlatChunk, [&](int64_t b, int64_t e) {
    float* a = scratch(0, (size_t)(e - b));
    float* c = scratch(1, (size_t)(e - b));
    load_f32(a, x, dtype, b, e - b);
    load_f32(c, y, dtype, b, e - b);
    for (int64_t i = 0; i < e - b; i++) a[i] += c[i];
    store_f32(out, dtype, b, a, e - b);
  });
  return 0;
  MSG_CATCH
}

int msg_rmsnorm(void* out, const void* x, const void* w, int rows, int hidden, float eps,
                int act_dtype, int w_dtype, void*) {
  MSG_REQUIRE(is_float_dtype(act_dtype) && is_float_dtype(w_dtype),
              "msg_rmsnorm: unsupported dtypes act %s, weight %s", dtype_name(act_dtype),
              dtype_name(w_dtype));
  MSG_REQUIRE(rows >= 0 && hidden > 0, "msg_rmsnorm: bad sizes rows=%d hidden=%d", rows, hidden);
  if (rows == 0) return 0;
  MSG_REQUIRE(out && x && w, "msg_rmsnorm: NULL pointer");
  MSG_TRY
  float* wf = scratch(4, (size_t)hidden);  // the caller's scratch: read-only in chunks
  load_f32(wf, w, w_dtype, 0, hidden);
  parallel_for(rows, row_grain(hidden), [&](int64_t b, int64_t e) {
    float* xr = scratch(0, (size_t)hidden);
    float* o = scratch(1, (size_t)hidden);
    for (int64_t r = b; r < e; r++) {
      load_f32(xr, x, act_dtype, r * hidden, hidden);
      rmsnorm_row(o, xr, wf, hidden, eps);
      store_f32(out, act_dtype, r * hidden, o, hidden);
    }
  });
  return 0;
  MSG_CATCH
}

int msg_add_rmsnorm(void* out, void* residual, const void* x, const void* w, int rows,
                    int hidden, float eps, int act_dtype, int res_dtype, int w_dtype, void*) {
  MSG_REQUIRE(is_float_dtype(act_dtype) && is_float_dtype(res_dtype) && is_float_dtype(w_dtype),
              "msg_add_rmsnorm: unsupported dtypes act %s, residual %s, weight %s",
              dtype_name(act_dtype), dtype_name(res_dtype), dtype_name(w_dtype));
  MSG_REQUIRE(rows >= 0 && hidden > 0, "msg_add_rmsnorm: bad sizes rows=%d hidden=%d", rows,
              hidden);
  if (rows == 0) return 0;
  MSG_REQUIRE(out && residual && x && w, "msg_add_rmsnorm: NULL pointer");
  MSG_TRY
  float* wf = scratch(4, (size_t)hidden);
  load_f32(wf, w, w_dtype, 0, hidden);
  parallel_for(rows, row_grain(hidden), [&](int64_t b, int64_t e) {
    float* res = scratch(0, (size_t)hidden);
    float* xr = scratch(1, (size_t)hidden);
    for (int64_t r = b; r < e; r++) {
      load_f32(res, residual, res_dtype, r * hidden, hidden);
      load_f32(xr, x, act_dtype, r * hidden, hidden);
      for (int64_t i = 0; i < hidden; i++) res[i] += xr[i];
      store_f32(residual, res_dtype, r * hidden, res, hidden);
      // Normalize what was stored (as the GPU does), so rounding is the same on both.
      if (res_dtype != MSG_F32) load_f32(res, residual, res_dtype, r * hidden, hidden);
      rmsnorm_row(xr, res, wf, hidden, eps);
      store_f32(out, act_dtype, r * hidden, xr, hidden);
    }
  });
  return 0;
  MSG_CATCH
}

int msg_silu_mul(void* out, const void* gate_up, int rows, int inter, int dtype, void*) {
  MSG_REQUIRE(is_float_dtype(dtype), "msg_silu_mul: unsupported dtype %s", dtype_name(dtype));
  MSG_REQUIRE(rows >= 0 && inter > 0, "msg_silu_mul: bad sizes rows=%d inter=%d", rows, inter);
  if (rows == 0) return 0;
  MSG_REQUIRE(out && gate_up, "msg_silu_mul: NULL pointer");
  MSG_TRY
  parallel_for(rows, row_grain(2 * (int64_t)inter), [&](int64_t b, int64_t e) {
    float* gu = scratch(0, 2 * (size_t)inter);
    for (int64_t r = b; r < e; r++) {
      load_f32(gu, gate_up, dtype, r * 2 * inter, 2 * (int64_t)inter);
      for (int64_t i = 0; i < inter; i++) {
        float g = gu[i];
        gu[i] = g / (1.0f + std::exp(-g)) * gu[inter + i];
      }
      store_f32(out, dtype, r * inter, gu, inter);
    }
  });
  return 0;
  MSG_CATCH
}

}  // extern "C"
