// pack.cuh — 16-byte packs of activations, so that memory-bound kernels move data with
// 128-bit loads and stores (8 bf16/f16 or 4 f32 values per access).
#pragma once

#include "common.cuh"

namespace msg {

template <typename T>
struct alignas(16) Pack {
  static const int N = 16 / sizeof(T);
  T v[N];
};

/** True when every pointer is 16-byte aligned (so packs can be used). */
__host__ __device__ inline bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

template <typename T>
__device__ __forceinline__ void load_pack(float* dst, const T* src) {
  Pack<T> p = *reinterpret_cast<const Pack<T>*>(src);
#pragma unroll
  for (int i = 0; i < Pack<T>::N; i++) dst[i] = to_f(p.v[i]);
}
template <typename T>
__device__ __forceinline__ void store_pack(T* dst, const float* src) {
  Pack<T> p;
#pragma unroll
  for (int i = 0; i < Pack<T>::N; i++) p.v[i] = from_f<T>(src[i]);
  *reinterpret_cast<Pack<T>*>(dst) = p;
}

/** V consecutive values of T as floats: 16-byte packs when V fills whole packs. */
template <int V, typename T>
__device__ __forceinline__ void load_v(float* dst, const T* src) {
  constexpr int P = Pack<T>::N;
  if constexpr (V % P == 0) {
#pragma unroll
    for (int j = 0; j < V; j += P) load_pack(dst + j, src + j);
  } else {
#pragma unroll
    for (int j = 0; j < V; j++) dst[j] = to_f(src[j]);
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

}  // namespace msg
