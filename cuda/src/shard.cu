// shard.cu — the ops of tensor parallelism that are not collectives: the vocab-parallel
// embedding (a masked gather: one block row per token, threads striding over hidden) and
// the seeded fill of dummy weights (a grid-stride loop, one hash per element). CPU twin:
// cuda/cpu/shard.cpp, which computes the same values bit for bit.
#include "common.cuh"

namespace {

template <typename TO, typename TW>
__global__ void embedding_range_kernel(TO* out, const TW* table, const int32_t* ids, int hidden,
                                       int vocab_start, int vocab_rows) {
  int r = blockIdx.y;
  int64_t local = (int64_t)ids[r] - vocab_start;
  bool mine = local >= 0 && local < vocab_rows;
  TO* o = out + (size_t)r * hidden;
  const TW* t = table + (size_t)(mine ? local : 0) * hidden;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    o[i] = msg::from_f<TO>(mine ? msg::to_f(t[i]) : 0.f);
  }
}

// Same as the CPU's uniform_pm1: the top 24 bits of splitmix64(seed + (i + 1) * golden).
__device__ __forceinline__ float uniform_pm1(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

template <typename T>
__global__ void fill_random_kernel(T* p, uint64_t n, uint64_t seed, float mean, float scale) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    // One rounding, as std::fma on the CPU: both backends give the same bits.
    p[i] = msg::from_f<T>(__fmaf_rn(scale, uniform_pm1(seed, i), mean));
  }
}

}  // namespace

extern "C" {

int msg_embedding_range(void* out, const void* table, const int32_t* ids, int n, int hidden,
                        int vocab_start, int vocab_rows, int act_dtype, int w_dtype,
                        void* stream) {
  MSG_REQUIRE(n >= 0 && n <= 65535 && hidden > 0 && vocab_start >= 0 && vocab_rows > 0,
              "msg_embedding_range: bad sizes n=%d hidden=%d rows %d+%d", n, hidden,
              vocab_start, vocab_rows);
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  int bx = (hidden + 255) / 256;
  dim3 grid(bx > 8 ? 8 : bx, n);
  return MSG_DISPATCH_FLOAT(act_dtype, TO, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    embedding_range_kernel<TO, TW><<<grid, 256, 0, st>>>((TO*)out, (const TW*)table, ids,
                                                         hidden, vocab_start, vocab_rows);
    MSG_LAUNCHED("embedding_range_kernel");
    return 0;););
}

int msg_fill_random(void* p, uint64_t n, int dtype, uint64_t seed, float mean, float scale,
                    void* stream) {
  MSG_REQUIRE(p || n == 0, "msg_fill_random: NULL pointer");
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  uint64_t blocks = (n + 255) / 256;
  unsigned grid = (unsigned)(blocks > 65535 ? 65535 : blocks);
  return MSG_DISPATCH_FLOAT(dtype, T,
    fill_random_kernel<T><<<grid, 256, 0, st>>>((T*)p, n, seed, mean, scale);
    MSG_LAUNCHED("fill_random_kernel");
    return 0;);
}

}  // extern "C"
