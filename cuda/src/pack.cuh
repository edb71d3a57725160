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

}  // namespace msg
