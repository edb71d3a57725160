// norm.cu — RMSNorm and fused residual-add + RMSNorm.
//
// One block per row (rows are independent and a row of 1K-8K values fits one block's pass);
// 256 threads stride over the row in 16-byte packs. Pass 1 computes the sum of squares (the
// fused op first adds x into the residual and stores the rounded sum, so the norm is taken
// of exactly what the residual stream holds); pass 2 re-reads the row, which is still in
// L1/L2, and writes x / rms * w. The block reduction has a fixed order: deterministic.
// The residual stream may be kept in fp32 (TR = float) while x and out are 16-bit: the
// residual then accumulates every layer's output without rounding, as the fp32 reference.
#include "pack.cuh"
#include "pdl.cuh"

namespace {

using msg::Pack;

/** V consecutive values of T as floats: 16-byte packs when V fills whole packs. */
template <int V, typename T>
__device__ __forceinline__ void load_v(float* dst, const T* src) {
  constexpr int P = Pack<T>::N;
  if constexpr (V % P == 0) {
#pragma unroll
    for (int j = 0; j < V; j += P) msg::load_pack(dst + j, src + j);
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) dst[j] = msg::to_f(src[j]);
  }
}
template <int V, typename T>
__device__ __forceinline__ void store_v(T* dst, const float* src) {
  constexpr int P = Pack<T>::N;
  if constexpr (V % P == 0) {
#pragma unroll
    for (int j = 0; j < V; j += P) msg::store_pack(dst + j, src + j);
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) dst[j] = msg::from_f<T>(src[j]);
  }
}

template <typename T, typename TR, typename TW, bool ADD, bool PACKED>
__global__ void rmsnorm_kernel(T* out, TR* res, const T* x, const TW* w, int hidden, float eps) {
  __shared__ float sh[33];
  msg::pdl_wait();
  msg::pdl_trigger();
  constexpr int V = PACKED ? Pack<T>::N : 1;
  size_t base = (size_t)blockIdx.x * hidden;
  TR* r = ADD ? res + base : nullptr;
  const T* xr = x + base;
  float ss = 0.f;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    load_v<V>(a, xr + i);
    if (ADD) {
      float b[V];
      load_v<V>(b, r + i);
#pragma unroll
      for (int k = 0; k < V; k++) a[k] = msg::to_f(msg::from_f<TR>(a[k] + b[k]));
      store_v<V>(r + i, a);
    }
#pragma unroll
    for (int k = 0; k < V; k++) ss += a[k] * a[k];
  }
  ss = msg::block_sum(ss, sh);
  float inv = rsqrtf(ss / (float)hidden + eps);
  T* o = out + base;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    if (ADD) load_v<V>(a, r + i); else load_v<V>(a, xr + i);
#pragma unroll
    for (int k = 0; k < V; k++) a[k] = a[k] * inv * msg::to_f(w[i + k]);
    if (PACKED) msg::store_pack(o + i, a); else o[i] = msg::from_f<T>(a[0]);
  }
}

template <bool ADD, typename T, typename TR, typename TW>
int launch_typed(void* out, void* residual, const void* x, const void* w, int rows, int hidden,
                 float eps, cudaStream_t st) {
  bool packed = hidden % Pack<T>::N == 0 && msg::aligned16(out) && msg::aligned16(x) &&
                (!ADD || msg::aligned16(residual));
  if (packed) {
    MSG_CUDA(msg::launch_pdl(rmsnorm_kernel<T, TR, TW, ADD, true>, dim3(rows), dim3(256), 0, st,
                             (T*)out, (TR*)residual, (const T*)x, (const TW*)w, hidden, eps));
  } else {
    MSG_CUDA(msg::launch_pdl(rmsnorm_kernel<T, TR, TW, ADD, false>, dim3(rows), dim3(256), 0, st,
                             (T*)out, (TR*)residual, (const T*)x, (const TW*)w, hidden, eps));
  }
  return 0;
}

template <bool ADD>
int launch(void* out, void* residual, const void* x, const void* w, int rows, int hidden,
           float eps, int act_dtype, int res_dtype, int w_dtype, void* stream) {
  MSG_REQUIRE(rows >= 0 && hidden > 0, "rmsnorm: bad sizes rows=%d hidden=%d", rows, hidden);
  MSG_REQUIRE(res_dtype == act_dtype || res_dtype == MSG_F32,
              "add_rmsnorm: residual dtype %s must be the act dtype or f32",
              msg::dtype_name(res_dtype));
  if (rows == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_FLOAT(act_dtype, T, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    if (res_dtype == act_dtype) {
      return launch_typed<ADD, T, T, TW>(out, residual, x, w, rows, hidden, eps, st);
    }
    return launch_typed<ADD, T, float, TW>(out, residual, x, w, rows, hidden, eps, st);););
}

}  // namespace

extern "C" {

int msg_rmsnorm(void* out, const void* x, const void* w, int rows, int hidden, float eps,
                int act_dtype, int w_dtype, void* stream) {
  return launch<false>(out, nullptr, x, w, rows, hidden, eps, act_dtype, act_dtype, w_dtype,
                       stream);
}

int msg_add_rmsnorm(void* out, void* residual, const void* x, const void* w, int rows,
                    int hidden, float eps, int act_dtype, int res_dtype, int w_dtype,
                    void* stream) {
  return launch<true>(out, residual, x, w, rows, hidden, eps, act_dtype, res_dtype, w_dtype,
                      stream);
}

}  // extern "C"
