// common.cuh — shared helpers of the CUDA backend: error reporting (thread-local message,
// never abort), dtype conversion on the device, dispatch over float dtypes, block
// reductions, and the per-device scratch buffers that graph-captured ops reuse.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../include/minisgl.h"

namespace msg {

/** Status codes (same meaning as the CPU backend's). */
enum { ERR_ARG = 1, ERR_MEM = 2, ERR_UNSUPPORTED = 3, ERR_INTERNAL = 4, ERR_CUDA = 5 };

/** Stores a printf-style message as this thread's last error; returns `code`. */
int fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/** Records a CUDA error for `what` (clears CUDA's non-sticky last error); returns ERR_CUDA. */
int fail_cuda(cudaError_t e, const char* what);
/** Scratch device buffer of at least `bytes` for `slot` on the current device, kept for
 *  the life of the process (so that graph replays see the same address). Allocates only
 *  when it must grow; callers warm up outside capture with the largest shape. */
int device_scratch(int slot, size_t bytes, void** ptr);
/** Multiprocessors of the current device, read once per device; 0 when they cannot be read
 *  (the CUDA error is cleared). */
int sm_count();
/** Scratch slots. */
enum { SCRATCH_GEMM = 0, SCRATCH_DECODE = 1, SCRATCH_SAMPLE = 2, SCRATCH_COUNT = 3 };

inline bool is_float_dtype(int d) { return d == MSG_F32 || d == MSG_F16 || d == MSG_BF16; }
inline int dtype_size(int d) {
  switch (d) {
    case MSG_F32: case MSG_I32: return 4;
    case MSG_F16: case MSG_BF16: return 2;
    case MSG_I64: return 8;
    case MSG_U8: return 1;
    default: return 0;
  }
}
const char* dtype_name(int d);

inline cudaStream_t as_stream(void* s) { return (cudaStream_t)s; }
/** True when p is 16-byte aligned (128-bit loads allowed). */
inline bool aligned16_ptr(const void* p) { return ((uintptr_t)p & 15) == 0; }

// ---------------------------------------------------------------- device conversion

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/** Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it. The
 *  order of additions is fixed, so results are deterministic. `sh` holds 33 floats. */
__device__ __forceinline__ float block_sum(float v, float* sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? sh[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) sh[32] = t;
  }
  __syncthreads();
  return sh[32];
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? sh[lane] : -INFINITY;
    t = warp_max(t);
    if (lane == 0) sh[32] = t;
  }
  __syncthreads();
  return sh[32];
}

}  // namespace msg

/** Returns from the calling API function with a message when a CUDA call fails. */
#define MSG_CUDA(call)                                         \
  do {                                                         \
    cudaError_t e_ = (call);                                   \
    if (e_ != cudaSuccess) return msg::fail_cuda(e_, #call);   \
  } while (0)
/** After a kernel launch: reports a bad launch configuration. */
#define MSG_LAUNCHED(what) MSG_CUDA(cudaGetLastError())
#define MSG_REQUIRE(cond, ...)                                 \
  do {                                                         \
    if (!(cond)) return msg::fail(msg::ERR_ARG, __VA_ARGS__);  \
  } while (0)

/** Runs the body with T = the C++ type of float dtype `d` (f32, f16, bf16). */
#define MSG_DISPATCH_FLOAT(d, T, ...)                          \
  [&]() -> int {                                               \
    switch (d) {                                               \
      case MSG_F32: { using T = float; __VA_ARGS__ }           \
      case MSG_F16: { using T = __half; __VA_ARGS__ }          \
      case MSG_BF16: { using T = __nv_bfloat16; __VA_ARGS__ }  \
      default: return msg::fail(msg::ERR_UNSUPPORTED, "unsupported dtype %s", msg::dtype_name(d)); \
    }                                                          \
  }()
/** Same, for 16-bit activation dtypes only (attention, rope). */
#define MSG_DISPATCH_HALF(d, T, ...)                           \
  [&]() -> int {                                               \
    switch (d) {                                               \
      case MSG_F16: { using T = __half; __VA_ARGS__ }          \
      case MSG_BF16: { using T = __nv_bfloat16; __VA_ARGS__ }  \
      default: return msg::fail(msg::ERR_UNSUPPORTED, "unsupported dtype %s (f16/bf16 only)",    \
                                msg::dtype_name(d));           \
    }                                                          \
  }()
