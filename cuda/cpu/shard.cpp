// shard.cpp — the ops of tensor parallelism that are not collectives, on the host: the
// vocab-parallel embedding (a masked gather) and the seeded fill of dummy weights. The
// CUDA twin is cuda/src/shard.cu.
#include <cmath>

#include "common.h"

using namespace msg;

namespace {

// Uniform in [-1, 1) from element i of stream `seed`: the top 24 bits of splitmix64, so
// the float is exact and the GPU computes the same value.
inline float uniform_pm1(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

}  // namespace

extern "C" {

int msg_embedding_range(void* out, const void* table, const int32_t* ids, int n, int hidden,
                        int vocab_start, int vocab_rows, int act_dtype, int w_dtype, void*) {
  MSG_REQUIRE(is_float_dtype(act_dtype) && is_float_dtype(w_dtype),
              "msg_embedding_range: unsupported dtypes act %s, weight %s",
              dtype_name(act_dtype), dtype_name(w_dtype));
  MSG_REQUIRE(n >= 0 && hidden > 0 && vocab_start >= 0 && vocab_rows > 0,
              "msg_embedding_range: bad sizes n=%d hidden=%d rows %d+%d", n, hidden,
              vocab_start, vocab_rows);
  if (n == 0) return 0;
  MSG_REQUIRE(out && table && ids, "msg_embedding_range: NULL pointer");
  MSG_TRY
  parallel_for(n, 1, [&](int64_t b, int64_t e) {
    float* tmp = scratch(0, (size_t)hidden);
    for (int64_t r = b; r < e; r++) {
      int64_t local = (int64_t)ids[r] - vocab_start;
      if (local >= 0 && local < vocab_rows) {
        load_f32(tmp, table, w_dtype, local * hidden, hidden);
      } else {
        std::memset(tmp, 0, sizeof(float) * (size_t)hidden);
      }
      store_f32(out, act_dtype, r * hidden, tmp, hidden);
    }
  });
  return 0;
  MSG_CATCH
}

int msg_fill_random(void* p, uint64_t n, int dtype, uint64_t seed, float mean, float scale,
                    void*) {
  MSG_REQUIRE(is_float_dtype(dtype), "msg_fill_random: unsupported dtype %d", dtype);
  MSG_REQUIRE(p || n == 0, "msg_fill_random: NULL pointer");
  MSG_TRY
  const int64_t chunk = 1 << 16;
  parallel_for((int64_t)n, chunk, [&](int64_t b, int64_t e) {
    float* tmp = scratch(0, (size_t)(e - b));
    // One rounding (std::fma), as the CUDA twin's __fmaf_rn: the same bits on both.
    for (int64_t i = b; i < e; i++) tmp[i - b] = std::fma(scale, uniform_pm1(seed, (uint64_t)i), mean);
    store_f32(p, dtype, b, tmp, e - b);
  });
  return 0;
  MSG_CATCH
}

}  // extern "C"
