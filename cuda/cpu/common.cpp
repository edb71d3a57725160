// common.cpp — errors, dtype conversion, row load/store and the small fp32 vector kernels
// every op of the CPU backend is built from.
#include "common.h"

#include <cstdarg>
#include <cstdio>
#include <string>

namespace msg {

static thread_local std::string g_last_error;

int fail(int code, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_last_error = buf;
  return code;
}

const char* last_error() { return g_last_error.c_str(); }

const char* dtype_name(int d) {
  switch (d) {
    case MSG_F32: return "f32";
    case MSG_F16: return "f16";
    case MSG_BF16: return "bf16";
    case MSG_I32: return "i32";
    case MSG_I64: return "i64";
    case MSG_U8: return "u8";
    case MSG_FP8_E4M3: return "fp8_e4m3";
    default: return "unknown";
  }
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in fp32.
    float f = (float)mant * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne).
uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  // NaN
  if (u >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (u < 0x38800000u) {
    // Subnormal or zero: adding 0.5 makes the FPU round at the f16 subnormal step 2^-24.
    float g = bits_to_f32(u) + 0.5f;
    return (uint16_t)(sign | (f32_to_bits(g) - 0x3f000000u));
  }
  uint32_t odd = (u >> 13) & 1u;
  u += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
  return (uint16_t)(sign | (u >> 13));
}

uint8_t f32_to_e4m3(float f) {
  uint32_t u = f32_to_bits(f);
  const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return (uint8_t)(sign | 0x7fu);   // NaN
  if (u >= 0x43e00000u) return (uint8_t)(sign | 0x7eu);  // >= 448 (inf too): 448
  if (u <= 0x3a800000u) return sign;  // <= 2^-10, half the smallest subnormal: zero (even)
  // |f| = mant * 2^(exp - 150); the e4m3 step is 2^-9 below 2^-6 (subnormals, exponent
  // field 0), else 2^(exp - 130): keep mant >> shift and round the dropped bits half-even.
  const uint32_t exp = u >> 23, mant = (u & 0x7fffffu) | 0x800000u;
  const uint32_t shift = exp < 121 ? 141 - exp : 20;
  const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
  uint32_t q = mant >> shift;  // subnormal: 0..7; normal: 8..15 (the implicit bit)
  if (rem > half || (rem == half && (q & 1u))) q++;
  // Normal: exponent field exp - 120 above the 3 mantissa bits; a carry out of the mantissa
  // (q == 16) moves to the next binade by itself. Subnormal: q == 8 is the smallest normal.
  const uint32_t e = exp < 121 ? 0 : exp - 121;
  return (uint8_t)(sign | ((e << 3) + q));
}

void load_f32(float* dst, const void* src, int dtype, int64_t off, int64_t n) {
  if (dtype == MSG_F32) {
    std::memcpy(dst, (const float*)src + off, (size_t)n * 4);
  } else if (dtype == MSG_FP8_E4M3) {
    const uint8_t* s = (const uint8_t*)src + off;
    for (int64_t i = 0; i < n; i++) dst[i] = e4m3_to_f32(s[i]);
  } else if (dtype == MSG_BF16) {
    const uint16_t* s = (const uint16_t*)src + off;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) storev(dst + i, load_bf16v(s + i));
    for (; i < n; i++) dst[i] = bf16_to_f32(s[i]);
  } else {
    const uint16_t* s = (const uint16_t*)src + off;
    for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
  }
}

void store_f32(void* dst, int dtype, int64_t off, const float* src, int64_t n) {
  if (dtype == MSG_F32) {
    std::memcpy((float*)dst + off, src, (size_t)n * 4);
  } else if (dtype == MSG_FP8_E4M3) {
    uint8_t* d = (uint8_t*)dst + off;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_e4m3(src[i]);
  } else if (dtype == MSG_BF16) {
    uint16_t* d = (uint16_t*)dst + off;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
  } else {
    uint16_t* d = (uint16_t*)dst + off;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
  }
}

float* scratch(int which, size_t n) {
  static thread_local std::vector<float> bufs[8];
  std::vector<float>& b = bufs[which & 7];
  if (b.size() < n) b.resize(n);
  return b.data();
}

float dot(const float* a, const float* b, int64_t n) {
  v8f s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 += loadv(a + i) * loadv(b + i);
    s1 += loadv(a + i + 8) * loadv(b + i + 8);
    s2 += loadv(a + i + 16) * loadv(b + i + 16);
    s3 += loadv(a + i + 24) * loadv(b + i + 24);
  }
  for (; i + 8 <= n; i += 8) s0 += loadv(a + i) * loadv(b + i);
  float s = hsum((s0 + s1) + (s2 + s3));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

float sumsq(const float* a, int64_t n) { return dot(a, a, n); }

void axpy(float* y, float alpha, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) storev(y + i, loadv(y + i) + alpha * loadv(x + i));
  for (; i < n; i++) y[i] += alpha * x[i];
}

void scale(float* y, float alpha, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) storev(y + i, loadv(y + i) * alpha);
  for (; i < n; i++) y[i] *= alpha;
}

}  // namespace msg
