// gemm.cpp — out[M, N] = a[M, K] @ w[N, K]^T (+ bias) on the host, fp32 accumulation.
//
// Two paths:
// - M <= kGemvMaxM (decode): memory-bound. Threads split N; every weight row is streamed
//   once, widened to fp32 in registers and dotted with all M activation rows at once.
// - Larger M (prefill): blocked. Work is split into MC x NC output tiles over the threads.
//   A tile walks K in KC slices; each slice of W is converted (bf16/f16 -> fp32) and packed
//   into NR-column panels, k-major, so that the 6x16 register micro-kernel reads 16
//   contiguous floats per k and broadcasts 6 activations: 12 vector accumulators, 96 FMAs
//   per 2 vector loads. A panel (KC x 16 floats = 16 KB) stays in L1 while the tile's
//   MC rows of A (L2) stream past it. Partial sums live in an fp32 tile buffer until the
//   last slice, where the bias is added and the tile is stored in the output dtype.
#include <algorithm>
#include <cmath>

#include "common.h"

using namespace msg;

namespace {

constexpr int MR = 6, NR = 16, KC = 256, NC = 128, MC = 192;
constexpr int kGemvMaxM = 12;  // measured: the packed path wins from about here

// 8 consecutive weights at w[i..i+8) widened to fp32.
template <int WD>
inline v8f load_w8(const void* w, int64_t i) {
  if constexpr (WD == MSG_F32) {
    return loadv((const float*)w + i);
  } else if constexpr (WD == MSG_BF16) {
    return load_bf16v((const uint16_t*)w + i);
  } else {
    const uint16_t* h = (const uint16_t*)w + i;
    v8f r;
    for (int j = 0; j < 8; j++) r[j] = f16_to_f32(h[j]);
    return r;
  }
}

template <int WD>
inline float load_w1(const void* w, int64_t i) {
  if constexpr (WD == MSG_F32) return ((const float*)w)[i];
  if constexpr (WD == MSG_BF16) return bf16_to_f32(((const uint16_t*)w)[i]);
  return f16_to_f32(((const uint16_t*)w)[i]);
}

// acc[m * ldacc + (n - n0)] = dot(A[m], W[n]) for MB rows of A and n in [n0, n1).
// CH independent accumulator chains per row hide the FMA latency.
template <int MB, int WD>
void gemv_block(float* acc, int64_t ldacc, const float* A, int64_t lda, const void* w, int K,
                int64_t n0, int64_t n1) {
  constexpr int CH = MB <= 2 ? 4 : (MB <= 4 ? 2 : 1);
  for (int64_t n = n0; n < n1; n++) {
    const int64_t wbase = n * (int64_t)K;
    v8f s[MB][CH];
    for (int m = 0; m < MB; m++)
      for (int c = 0; c < CH; c++) s[m][c] = v8f{};
    int k = 0;
    for (; k + 8 * CH <= K; k += 8 * CH) {
      for (int c = 0; c < CH; c++) {
        v8f wv = load_w8<WD>(w, wbase + k + 8 * c);
        for (int m = 0; m < MB; m++) s[m][c] += loadv(A + m * lda + k + 8 * c) * wv;
      }
    }
    for (; k + 8 <= K; k += 8) {
      v8f wv = load_w8<WD>(w, wbase + k);
      for (int m = 0; m < MB; m++) s[m][0] += loadv(A + m * lda + k) * wv;
    }
    for (int m = 0; m < MB; m++) {
      v8f t = s[m][0];
      for (int c = 1; c < CH; c++) t += s[m][c];
      float r = hsum(t);
      for (int kk = k; kk < K; kk++) r += A[m * lda + kk] * load_w1<WD>(w, wbase + kk);
      acc[m * ldacc + (n - n0)] = r;
    }
  }
}

// Rows in groups of 8, then 4, then the rest: one pass over the weights per group.
template <int WD>
void gemv(float* acc, int64_t ldacc, const float* A, int64_t lda, int M, const void* w, int K,
          int64_t n0, int64_t n1) {
  int m = 0;
  for (; m + 8 <= M; m += 8)
    gemv_block<8, WD>(acc + m * ldacc, ldacc, A + m * lda, lda, w, K, n0, n1);
  if (M - m >= 4) {
    gemv_block<4, WD>(acc + m * ldacc, ldacc, A + m * lda, lda, w, K, n0, n1);
    m += 4;
  }
  float* c = acc + m * ldacc;
  const float* a = A + m * lda;
  switch (M - m) {
    case 3: gemv_block<3, WD>(c, ldacc, a, lda, w, K, n0, n1); break;
    case 2: gemv_block<2, WD>(c, ldacc, a, lda, w, K, n0, n1); break;
    case 1: gemv_block<1, WD>(c, ldacc, a, lda, w, K, n0, n1); break;
    default: break;
  }
}

// Packs w[n0 .. n0+nc) x [k0 .. k0+kc) into panels dst[(p * kc + k) * NR + j] (zero pad).
// k outer, j inner: 16 sequential read streams (one per weight row) and contiguous writes.
template <int WD>
void pack_w(float* dst, const void* w, int K, int64_t n0, int nc, int k0, int kc) {
  const int panels = (nc + NR - 1) / NR;
  for (int p = 0; p < panels; p++) {
    float* P = dst + (int64_t)p * kc * NR;
    const int cols = nc - p * NR < NR ? nc - p * NR : NR;
    const int64_t base = (n0 + p * NR) * (int64_t)K + k0;
    if (cols == NR) {
      for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++) P[k * NR + j] = load_w1<WD>(w, base + (int64_t)j * K + k);
    } else {
      for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++)
          P[k * NR + j] = j < cols ? load_w1<WD>(w, base + (int64_t)j * K + k) : 0.0f;
    }
  }
}

void pack_any(float* dst, const void* w, int wd, int K, int64_t n0, int nc, int k0, int kc) {
  if (wd == MSG_BF16) pack_w<MSG_BF16>(dst, w, K, n0, nc, k0, kc);
  else if (wd == MSG_F32) pack_w<MSG_F32>(dst, w, K, n0, nc, k0, kc);
  else pack_w<MSG_F16>(dst, w, K, n0, nc, k0, kc);
}

// C[i][0..16) += sum_k A[i][k] * P[k][0..16) for i < MRows.
template <int MRows>
void micro(const float* A, int64_t lda, const float* P, int kc, float* C, int ldc) {
  v8f c0[MRows], c1[MRows];
  for (int i = 0; i < MRows; i++) c0[i] = c1[i] = v8f{};
  for (int k = 0; k < kc; k++) {
    v8f b0 = loadv(P + k * NR), b1 = loadv(P + k * NR + 8);
    for (int i = 0; i < MRows; i++) {
      float a = A[i * lda + k];
      c0[i] += a * b0;
      c1[i] += a * b1;
    }
  }
  for (int i = 0; i < MRows; i++) {
    storev(C + i * ldc, loadv(C + i * ldc) + c0[i]);
    storev(C + i * ldc + 8, loadv(C + i * ldc + 8) + c1[i]);
  }
}

void micro_any(int mr, const float* A, int64_t lda, const float* P, int kc, float* C, int ldc) {
  switch (mr) {
    case 6: micro<6>(A, lda, P, kc, C, ldc); break;
    case 5: micro<5>(A, lda, P, kc, C, ldc); break;
    case 4: micro<4>(A, lda, P, kc, C, ldc); break;
    case 3: micro<3>(A, lda, P, kc, C, ldc); break;
    case 2: micro<2>(A, lda, P, kc, C, ldc); break;
    default: micro<1>(A, lda, P, kc, C, ldc); break;
  }
}

// Stores tile rows [m0, m0+mc) x cols [n0, n0+nc) of acc (ld = ldacc) + bias into out.
void store_tile(void* out, int out_dtype, int64_t N, const float* acc, int64_t ldacc,
                const float* bias, int64_t m0, int mc, int64_t n0, int nc) {
  float* row = scratch(2, (size_t)nc);
  for (int i = 0; i < mc; i++) {
    const float* a = acc + i * ldacc;
    for (int j = 0; j < nc; j++) row[j] = bias ? a[j] + bias[n0 + j] : a[j];
    store_f32(out, out_dtype, (m0 + i) * N + n0, row, nc);
  }
}

}  // namespace

extern "C" int msg_gemm(void* out, int out_dtype, const void* a, int a_dtype, const void* w,
                        int w_dtype, const void* bias, int M, int N, int K, void*) {
  MSG_REQUIRE(is_float_dtype(out_dtype) && is_float_dtype(a_dtype) && is_float_dtype(w_dtype),
              "msg_gemm: unsupported dtypes out %s, a %s, w %s", dtype_name(out_dtype),
              dtype_name(a_dtype), dtype_name(w_dtype));
  MSG_REQUIRE(M >= 0 && N >= 0 && K >= 0, "msg_gemm: negative size M=%d N=%d K=%d", M, N, K);
  if (M == 0 || N == 0) return 0;
  MSG_REQUIRE(out && (K == 0 || (a && w)), "msg_gemm: NULL pointer");
  MSG_TRY
  // Activations in fp32 (a copy only when they are stored in 16 bits).
  const float* A = (const float*)a;
  if (a_dtype != MSG_F32 && K > 0) {
    float* conv = scratch(4, (size_t)M * K);
    parallel_for((int64_t)M * K, 1 << 16, [&](int64_t b, int64_t e) {
      load_f32(conv + b, a, a_dtype, b, e - b);
    });
    A = conv;
  }
  const float* B = nullptr;
  if (bias) {
    float* bf = scratch(5, (size_t)N);
    load_f32(bf, bias, w_dtype, 0, N);
    B = bf;
  }
  if (M <= kGemvMaxM) {
    // Chunks of 16 output columns: enough chunks to balance, each one streams 16 rows of W.
    parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      float* acc = scratch(0, (size_t)M * (n1 - n0));
      if (K == 0) {
        std::memset(acc, 0, sizeof(float) * M * (n1 - n0));
      } else if (w_dtype == MSG_BF16) {
        gemv<MSG_BF16>(acc, n1 - n0, A, K, M, w, K, n0, n1);
      } else if (w_dtype == MSG_F32) {
        gemv<MSG_F32>(acc, n1 - n0, A, K, M, w, K, n0, n1);
      } else {
        gemv<MSG_F16>(acc, n1 - n0, A, K, M, w, K, n0, n1);
      }
      store_tile(out, out_dtype, N, acc, n1 - n0, B, 0, M, n0, (int)(n1 - n0));
    });
    return 0;
  }
  const int64_t mt = (M + MC - 1) / MC, nt = (N + NC - 1) / NC;
  parallel_for(mt * nt, 1, [&](int64_t t0, int64_t t1) {
    float* acc = scratch(0, (size_t)MC * NC);
    float* packed = scratch(1, (size_t)KC * NC);
    for (int64_t t = t0; t < t1; t++) {
      // N-major order: consecutive tiles share a W slice's columns (better L2 reuse).
      const int64_t m0 = (t % mt) * MC, n0 = (t / mt) * NC;
      const int mc = (int)(M - m0 < MC ? M - m0 : MC), nc = (int)(N - n0 < NC ? N - n0 : NC);
      std::memset(acc, 0, sizeof(float) * MC * NC);
      for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        pack_any(packed, w, w_dtype, K, n0, nc, k0, kc);
        const int panels = (nc + NR - 1) / NR;
        for (int p = 0; p < panels; p++) {
          const float* P = packed + (int64_t)p * kc * NR;
          for (int i = 0; i < mc; i += MR) {
            const int mr = mc - i < MR ? mc - i : MR;
            micro_any(mr, A + (m0 + i) * (int64_t)K + k0, K, P, kc, acc + i * NC + p * NR, NC);
          }
        }
      }
      store_tile(out, out_dtype, N, acc, NC, B, m0, mc, n0, nc);
    }
  });
  return 0;
  MSG_CATCH
}

// One GEMM path on the CPU: the GEMV threshold of the CUDA backend has no meaning here.
extern "C" int msg_gemv_max_m(int) { return 0; }

// The gated MLP's gate_up projection and activation: fp32 sums of a row chunk (msg_gemm into
// fp32), then silu(gate) * up rounded once into out. gate_up (the CUDA backend's scratch) is
// not used.
extern "C" int msg_gemm_silu(void* out, void*, const void* a, int a_dtype, const void* w,
                             int w_dtype, int M, int inter, int K, void* stream) {
  MSG_REQUIRE(is_float_dtype(a_dtype), "msg_gemm_silu: unsupported dtype %s",
              dtype_name(a_dtype));
  MSG_REQUIRE(M >= 0 && inter > 0 && K > 0, "msg_gemm_silu: bad sizes M=%d inter=%d K=%d", M,
              inter, K);
  if (M == 0) return 0;
  MSG_REQUIRE(out && a && w, "msg_gemm_silu: NULL pointer");
  MSG_TRY
  constexpr int kRows = 256;  // rows per chunk: bounds the fp32 buffer, keeps GEMM tiles whole
  thread_local std::vector<float> gu;
  const int64_t n2 = 2 * (int64_t)inter;
  gu.resize((size_t)std::min(M, kRows) * n2);
  float* buf = gu.data();  // not gu in the lambda: thread_local names the worker's own
  for (int m0 = 0; m0 < M; m0 += kRows) {
    const int mc = std::min(kRows, M - m0);
    const char* am = (const char*)a + (size_t)m0 * K * dtype_size(a_dtype);
    int rc = msg_gemm(buf, MSG_F32, am, a_dtype, w, w_dtype, nullptr, mc, (int)n2, K,
                      stream);
    if (rc) return rc;
    parallel_for(mc, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) {
        float* g = buf + r * n2;
        for (int64_t i = 0; i < inter; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * g[inter + i];
        store_f32(out, a_dtype, (m0 + r) * inter, g, inter);
      }
    });
  }
  return 0;
  MSG_CATCH
}
