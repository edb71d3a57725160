// fp8.cuh — the fp8 e4m3 KV cache (MSG_FP8_E4M3, OCP E4M3FN: bias 7, max 448, 0x7F/0xFF NaN):
// the store conversion from float (rope.cu) and the exact widening of e4m3 bytes to bf16/f16
// pairs (attention_decode.cu reads fp8 K/V through it, kv_widen.cu copies pages with it).
#pragma once

#include <cuda_fp8.h>

#include "common.cuh"

namespace msg {

/** The e4m3 byte of x: round to nearest even, saturating to +-448 (infinities included); NaN
 *  gives 0x7F with x's sign bit (0x7F or 0xFF). */
__device__ __forceinline__ uint8_t e4m3_from_f(float x) {
  // cuda_fp8.h: cvt.rn.satfinite.e4m3x2.f32 on sm_89+, an exact integer emulation below that.
  // Either may drop the sign of a NaN (the emulation does), so NaN is mapped here.
  uint8_t r = (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
  return isnan(x) ? (uint8_t)(0x7Fu | ((__float_as_uint(x) >> 24) & 0x80u)) : r;
}

// Widening. An e4m3 byte's exponent and mantissa bits shifted into place in a 16-bit float
// with a wider exponent field give the same value times 2^-(bias difference), exactly
// (subnormal e4m3 values become subnormal f16/bf16 ones); a multiply by 2^(bias difference)
// then restores it, exactly. A NaN byte (0x7F/0xFF) widens to +-480 this way, to NaN by the
// hardware f16 conversion of sm_89+ (stores write NaN bytes only for NaN inputs). `x` holds
// two bytes at bits 8..15 and 24..31, the rest zero; the result holds the two values, the one
// from bits 8..15 in the low half.

/** Bytes (bits 8..15, 24..31) to f16x2: f16 bias 15 = 7 + 8. */
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2_soft(uint32_t x) {
  uint32_t y = ((x >> 1) & 0x3F803F80u) | (x & 0x80008000u), r;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(y), "r"(0x5C005C00u));  // 2^8
  return r;
}
/** Bytes (bits 8..15, 24..31) to bf16x2: bf16 bias 127 = 7 + 120. The product is formed by
 *  fma.rn.bf16x2 with a -0 addend (sm_80 has no bf16x2 mul), which keeps signed zeros. */
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2_soft(uint32_t x) {
  uint32_t y = ((x >> 4) & 0x07F007F0u) | (x & 0x80008000u), r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(y), "r"(0x7B807B80u), "r"(0x80008000u));
  return r;
}

/** The 4 e4m3 bytes of w (byte 0 first) as 4 values of T: lo = (byte 0, byte 1), hi = (byte 2,
 *  byte 3), each pair packed as T's x2 type (first value in the low half). */
template <typename T>
__device__ __forceinline__ void e4m3x4_to(uint32_t w, uint32_t& lo, uint32_t& hi);
template <>
__device__ __forceinline__ void e4m3x4_to<__half>(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  // Hardware conversion; the byte at bits 8..15 of each 16-bit half goes to the high f16.
  asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\n"
      "cvt.rn.f16x2.e4m3x2 %1, h;\n}"
      : "=r"(lo), "=r"(hi)
      : "r"(w));
#else
  lo = e4m3x2_to_f16x2_soft(__byte_perm(w, 0u, 0x1404));
  hi = e4m3x2_to_f16x2_soft(__byte_perm(w, 0u, 0x3424));
#endif
}
template <>
__device__ __forceinline__ void e4m3x4_to<__nv_bfloat16>(uint32_t w, uint32_t& lo,
                                                         uint32_t& hi) {
  lo = e4m3x2_to_bf16x2_soft(__byte_perm(w, 0u, 0x1404));
  hi = e4m3x2_to_bf16x2_soft(__byte_perm(w, 0u, 0x3424));
}

/** 8 e4m3 bytes (v.x byte 0 first) as 8 values of T in a uint4 (the layout of 16 bytes of T). */
template <typename T>
__device__ __forceinline__ uint4 e4m3x8_to(uint2 v) {
  uint4 r;
  e4m3x4_to<T>(v.x, r.x, r.y);
  e4m3x4_to<T>(v.y, r.z, r.w);
  return r;
}

}  // namespace msg
