// common.h — shared helpers of the CPU backend: errors, dtype conversion, row load/store,
// small vector kernels and the thread pool's interface.
//
// Storage dtypes are f32/f16/bf16 (and fp8 e4m3 for KV caches); every computation converts
// rows to fp32 first (into thread-local scratch), works in fp32 and converts back on store.
// Vector code uses GCC vector extensions (portable across g++/clang, no intrinsics) so that
// reductions are vectorized without -ffast-math: the summation order is explicit, the math
// exact fp32.
#pragma once

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <vector>

#include "../include/minisgl.h"

namespace msg {

// ---------------------------------------------------------------- errors

/** Stores a printf-style message as this thread's last error; returns `code` (non-zero). */
int fail(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

/** Status codes. */
enum { ERR_ARG = 1, ERR_MEM = 2, ERR_UNSUPPORTED = 3, ERR_INTERNAL = 4 };

// Wraps an API body so that no C++ exception crosses the C ABI.
#define MSG_TRY try {
#define MSG_CATCH                                                        \
  }                                                                      \
  catch (const std::bad_alloc&) {                                        \
    return msg::fail(msg::ERR_MEM, "%s: out of host memory", __func__);  \
  }                                                                      \
  catch (const std::exception& e) {                                      \
    return msg::fail(msg::ERR_INTERNAL, "%s: %s", __func__, e.what());   \
  }                                                                      \
  catch (...) {                                                          \
    return msg::fail(msg::ERR_INTERNAL, "%s: unknown error", __func__);  \
  }

#define MSG_REQUIRE(cond, ...) \
  do {                         \
    if (!(cond)) return msg::fail(msg::ERR_ARG, __VA_ARGS__); \
  } while (0)

/** True for the storage dtypes of activations and weights (f32, f16, bf16). */
inline bool is_float_dtype(int d) { return d == MSG_F32 || d == MSG_F16 || d == MSG_BF16; }
/** Bytes per element of a dtype, 0 if unknown. */
inline int dtype_size(int d) {
  switch (d) {
    case MSG_F32: case MSG_I32: return 4;
    case MSG_F16: case MSG_BF16: return 2;
    case MSG_I64: return 8;
    case MSG_U8: case MSG_FP8_E4M3: return 1;
    default: return 0;
  }
}
const char* dtype_name(int d);

// ---------------------------------------------------------------- scalar conversion

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }
/** Round to nearest even; NaN stays a (quiet) NaN. */
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/** fp8 e4m3 (OCP E4M3FN) byte -> float, exact; 0x7f/0xff give a quiet NaN of that sign. */
inline float e4m3_to_f32(uint8_t b) {
  const uint32_t sign = (uint32_t)(b & 0x80u) << 24;
  const uint32_t exp = (b >> 3) & 0xfu, mant = b & 7u;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-9, exact in fp32.
    const float f = (float)mant * 0.001953125f;
    return sign ? -f : f;
  }
  if (exp == 15 && mant == 7) return bits_to_f32(sign | 0x7fc00000u);
  return bits_to_f32(sign | ((exp + 120) << 23) | (mant << 20));
}
/** float -> fp8 e4m3 byte: round to nearest even at every step (subnormals m * 2^-9
 *  included), finite values and infinities past 448 saturate to +-448 (0x7e), NaN gives
 *  0x7f | sign. The bits of CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3). */
uint8_t f32_to_e4m3(float f);

// ---------------------------------------------------------------- row load/store

/** dst[i] = (float) src[off + i], i < n, for src of `dtype` (f32/f16/bf16/fp8 e4m3). */
void load_f32(float* dst, const void* src, int dtype, int64_t off, int64_t n);
/** dst[off + i] = (dtype) src[i], i < n (f32/f16/bf16/fp8 e4m3). */
void store_f32(void* dst, int dtype, int64_t off, const float* src, int64_t n);

/** Thread-local fp32 scratch of at least n floats; `which` picks one of 8 buffers
 *  (0-3 for work inside parallel chunks, 4-7 for the caller around them). */
float* scratch(int which, size_t n);

// ---------------------------------------------------------------- vector kernels

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h_u __attribute__((vector_size(16), aligned(2), may_alias));

inline v8f loadv(const float* p) { return *(const v8f_u*)p; }
inline void storev(float* p, v8f v) { *(v8f_u*)p = v; }
/** 8 bf16 values widened to fp32 (exact). */
inline v8f load_bf16v(const uint16_t* p) {
  v8u u = __builtin_convertvector(*(const v8h_u*)p, v8u) << 16;
  return (v8f)u;
}
inline float hsum(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/** sum_i a[i] * b[i] in fp32. */
float dot(const float* a, const float* b, int64_t n);
/** sum_i a[i]^2 in fp32. */
float sumsq(const float* a, int64_t n);
/** y[i] += alpha * x[i]. */
void axpy(float* y, float alpha, const float* x, int64_t n);
/** y[i] *= alpha. */
void scale(float* y, float alpha, int64_t n);

// ---------------------------------------------------------------- thread pool

/** Runs fn(begin, end) over [0, n) in chunks of at most `grain` on the pool (the calling
 *  thread takes part). Nested calls, and calls while another thread uses the pool, run
 *  serially on the caller. Rethrows the first exception of any chunk. */
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
/** Number of threads parallel_for uses (>= 1). */
int num_threads();

}  // namespace msg
