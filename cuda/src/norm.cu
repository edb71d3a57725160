// norm.cu — RMSNorm and fused residual-add + RMSNorm.
//
// One block per row (rows are independent and a row of 1K-8K values fits one block's pass);
// 256 threads stride over the row in 16-byte packs. Pass 1 computes the sum of squares (the
// fused op first adds x into the residual and stores the rounded sum, so the norm is taken
// of exactly what the residual stream holds); pass 2 re-reads the row, which is still in
// L1/L2, and writes x / rms * w. The block reduction has a fixed order: deterministic.
#include "pack.cuh"

namespace {

using msg::Pack;

template <typename T, typename TW, bool ADD, bool PACKED>
__global__ void rmsnorm_kernel(T* out, T* res, const T* x, const TW* w, int hidden, float eps) {
  __shared__ float sh[33];
  const int V = PACKED ? Pack<T>::N : 1;
  size_t base = (size_t)blockIdx.x * hidden;
  T* r = ADD ? res + base : nullptr;
  const T* xr = x + base;
  float ss = 0.f;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    if (PACKED) msg::load_pack(a, xr + i); else a[0] = msg::to_f(xr[i]);
    if (ADD) {
      float b[V];
      if (PACKED) msg::load_pack(b, r + i); else b[0] = msg::to_f(r[i]);
      T rounded[V];
#pragma unroll
      for (int k = 0; k < V; k++) {
        rounded[k] = msg::from_f<T>(a[k] + b[k]);
        a[k] = msg::to_f(rounded[k]);
      }
      if (PACKED) *reinterpret_cast<Pack<T>*>(r + i) = *reinterpret_cast<Pack<T>*>(rounded);
      else r[i] = rounded[0];
    }
#pragma unroll
    for (int k = 0; k < V; k++) ss += a[k] * a[k];
  }
  ss = msg::block_sum(ss, sh);
  float inv = rsqrtf(ss / (float)hidden + eps);
  const T* src = ADD ? r : xr;
  T* o = out + base;
  for (int i = threadIdx.x * V; i < hidden; i += blockDim.x * V) {
    float a[V];
    if (PACKED) msg::load_pack(a, src + i); else a[0] = msg::to_f(src[i]);
#pragma unroll
    for (int k = 0; k < V; k++) a[k] = a[k] * inv * msg::to_f(w[i + k]);
    if (PACKED) msg::store_pack(o + i, a); else o[i] = msg::from_f<T>(a[0]);
  }
}

template <bool ADD>
int launch(void* out, void* residual, const void* x, const void* w, int rows, int hidden,
           float eps, int act_dtype, int w_dtype, void* stream) {
  MSG_REQUIRE(rows >= 0 && hidden > 0, "rmsnorm: bad sizes rows=%d hidden=%d", rows, hidden);
  if (rows == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_FLOAT(act_dtype, T, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    bool packed = hidden % Pack<T>::N == 0 && msg::aligned16(out) && msg::aligned16(x) &&
                  (!ADD || msg::aligned16(residual));
    if (packed) {
      rmsnorm_kernel<T, TW, ADD, true><<<rows, 256, 0, st>>>(
          (T*)out, (T*)residual, (const T*)x, (const TW*)w, hidden, eps);
    } else {
      rmsnorm_kernel<T, TW, ADD, false><<<rows, 256, 0, st>>>(
          (T*)out, (T*)residual, (const T*)x, (const TW*)w, hidden, eps);
    }
    MSG_LAUNCHED("rmsnorm_kernel");
    return 0;););
}

}  // namespace

extern "C" {

int msg_rmsnorm(void* out, const void* x, const void* w, int rows, int hidden, float eps,
                int act_dtype, int w_dtype, void* stream) {
  return launch<false>(out, nullptr, x, w, rows, hidden, eps, act_dtype, w_dtype, stream);
}

int msg_add_rmsnorm(void* out, void* residual, const void* x, const void* w, int rows,
                    int hidden, float eps, int act_dtype, int w_dtype, void* stream) {
  return launch<true>(out, residual, x, w, rows, hidden, eps, act_dtype, w_dtype, stream);
}

}  // extern "C"
