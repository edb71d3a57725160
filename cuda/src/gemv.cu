// gemv.cu — out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]) for decode-sized M (1..8) with
// 16-bit a and w of the same dtype: a memory-bound weight stream, so the whole design is
// about keeping enough weight bytes in flight on every SM and touching each weight once.
//
// Work split
// - A "group" is R consecutive output rows (R = 1 for M = 1, 2 for M = 2, 4 for M >= 3):
//   all M activation rows are dotted with the group's R weight rows at once, so each
//   activation vector loaded (and widened to fp32) is reused R times and each weight vector
//   M times. R grows with M because the activation loads (L1 hits) and their conversion
//   would otherwise cost more than the weight stream itself at M = 8.
// - A group is owned by wk warps of one 8-warp block (wk = 1 normally). Each lane loads
//   16-byte vectors (8 values) of the weight rows, U = 8 / R vectors per row per step, all
//   issued before any is used (so 8 x 512 B per warp are in flight), with
//   ld.global.nc.L1::no_allocate: weights are read once, they must not evict the
//   activations from L1. Activations go through the read-only cache (__ldg): they are
//   tiny and re-read by every warp of the SM.
// - wk > 1 (split-K inside the block) only when there are too few groups to give every SM
//   ~16 warps (small N, e.g. N = 1024 or M = 8 with N = 4096): the wk warps take
//   interleaved 512-byte slices of K and their partial sums meet in shared memory.
// - fp32 accumulation (several independent accumulators when M * R is small, so the FMA
//   chain does not serialize), xor-shuffle warp reduction, then a fixed-order sum of the wk
//   partials: results are deterministic. No atomics, no allocation, no host sync: the
//   launch can be captured into a CUDA graph.
// - K not a multiple of 8 or pointers not 16-byte aligned: a scalar kernel (warp per row).
// - Gated (msg_gemm_silu, a gated MLP's gate_up): a group holds gate rows and the up rows of
//   the same output columns, and the epilogue writes silu(gate) * up from the fp32 sums, so
//   the activation needs no kernel of its own (H100: 7.6 -> 6.4 us a qwen3-0.6b layer at M = 1).
//
// msg_gemm (gemm.cu) routes here when msg::gemv_takes() says so: M <= 4 by default (H100,
// 2026-11-27, bf16, graph replays over > 200 MB of weights: vs cuBLASLt 1.06-1.25x at M = 1
// on the Llama-3-8B shapes, 0.97-1.12x at M = 4, 0.76-0.80x at M = 8, where R = 4 needs
// 138 registers and leaves one block per SM). MINISGL_GEMV_MAX_M (read once) or
// msg_gemv_max_m() (a tuning knob of the ABI, also used by the tests) moves the threshold within
// 0..8; 0 sends everything to cuBLASLt.
#include <stdlib.h>

#include <atomic>

#include "common.cuh"
#include "pdl.cuh"

namespace {

constexpr int kMaxM = 8;      // largest M the kernels are compiled for
constexpr int kDefaultM = 4;  // default threshold (measured, see above)
constexpr int kWarps = 8;  // warps per block
// Weight bytes prefetched before the PDL wait (the first blocks' first step), any matrix size.
// H100, bs1 decode (bench/results/2026-12-05-h100-gemv-prefetch-kb-ab.json): qwen3-0.6b 1,030
// tok/s with whole matrices of <= 16 MB prefetched, 1,062 with none, 1,059 with 2 MB; llama-3-8b
// (none prefetched before: all > 16 MB) 178.3, 179.3 with 2 MB, 179.6 with 4 MB; 64 MB
// and 128 MB caps on whole matrices 176.7 and 174.1. A large prefetch queues ahead of the loads
// of the kernel still running before the wait, which is on the critical path.
constexpr size_t kPrefetchBytes = 2u << 20;

std::atomic<int> g_max_m{-1};  // -1: not read yet from MINISGL_GEMV_MAX_M

int gemv_max_m() {
  int v = g_max_m.load(std::memory_order_relaxed);
  if (v >= 0) return v;
  const char* e = getenv("MINISGL_GEMV_MAX_M");
  v = e && *e ? atoi(e) : kDefaultM;
  v = v < 0 ? 0 : v > kMaxM ? kMaxM : v;
  g_max_m.store(v, std::memory_order_relaxed);
  return v;
}

// Streaming 16-byte weight load: read-only path, no L1 allocation, 256-byte L2 fetches.
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// 8 packed 16-bit values widened to fp32.
template <typename T>
__device__ __forceinline__ void widen8(const uint4& v, float* f);
template <>
__device__ __forceinline__ void widen8<__nv_bfloat16>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
template <>
__device__ __forceinline__ void widen8<__half>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    __half2 h;
    memcpy(&h, &u[i], 4);
    float2 t = __half22float2(h);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// One 8-value step: acc[m][r][p] += x[m, 8v..8v+8) . w[r][8v..8v+8).
template <typename T, int M, int R, int P>
__device__ __forceinline__ void fma_step(float (&acc)[M][R][P], const uint4 (&wq)[R],
                                         const uint4* __restrict__ xv, size_t v, int K8) {
  float wf[R][8];
#pragma unroll
  for (int r = 0; r < R; r++) widen8<T>(wq[r], wf[r]);
#pragma unroll
  for (int m = 0; m < M; m++) {
    float xf[8];
    widen8<T>(__ldg(xv + (size_t)m * K8 + v), xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
      for (int i = 0; i < 8; i++) acc[m][r][i % P] = fmaf(xf[i], wf[r][i], acc[m][r][i % P]);
    }
  }
}

// GATED: w is [2N, K] (N gate rows, then N up rows) and out[m, j] = silu(g) * u of output
// column j's gate row j and up row N + j: a group's R rows are R/2 gate rows and the R/2 up
// rows of the same columns, so the product is formed in fp32 in the epilogue (no bias).
template <typename T, typename TO, int M, int R, int U, bool GATED>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_vec_kernel(TO* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ bias, int N, int K, int wk, int pf_blocks) {
  constexpr int P = M * R >= 4 ? 1 : 4 / (M * R);  // independent accumulators per output
  constexpr int C = GATED ? R / 2 : R;              // output columns per group
  static_assert(!GATED || R % 2 == 0, "a gated group pairs gate and up rows");
  __shared__ float part[kWarps][M * R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col0 = (blockIdx.x * (kWarps / wk) + warp / wk) * C;
  const int kw = warp % wk, K8 = K >> 3, stride = wk * 32;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    // Columns past N (last group) read column N-1 and are never written: no divergence in
    // the loop.
    const int c = col0 + r % C < N ? col0 + r % C : N - 1;
    const int row = GATED && r >= C ? N + c : c;
    wr[r] = reinterpret_cast<const uint4*>(w) + (size_t)row * K8;
  }
  // Weights are never written by a kernel, so they may be fetched before the previous kernel
  // on the stream completes: the first step's lines go to L2 while it drains (PDL only, blocks
  // below pf_blocks; one prefetch per 128-byte line).
  if ((int)blockIdx.x < pf_blocks && (lane & 7) == 0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = kw * 32 + lane + u * stride;
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (v < K8) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr[r] + v));
      }
    }
  }
  msg::pdl_wait();
  msg::pdl_trigger();
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc[M][R][P];
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int p = 0; p < P; p++) acc[m][r][p] = 0.f;

  int v = kw * 32 + lane;
  for (; v + (U - 1) * stride < K8; v += U * stride) {
    uint4 wq[U][R];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int r = 0; r < R; r++) wq[u][r] = ld_weight(wr[r] + v + u * stride);
#pragma unroll
    for (int u = 0; u < U; u++) fma_step<T, M, R, P>(acc, wq[u], xv, v + u * stride, K8);
  }
  if (v < K8) {  // fewer than U vectors left per lane: one predicated step, loads still batched
    uint4 wq[U][R];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int r = 0; r < R; r++) {
        wq[u][r] = v + u * stride < K8 ? ld_weight(wr[r] + v + u * stride) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (v + u * stride < K8) fma_step<T, M, R, P>(acc, wq[u], xv, v + u * stride, K8);
    }
  }

#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float s = acc[m][r][0];
#pragma unroll
      for (int p = 1; p < P; p++) s += acc[m][r][p];
      s = msg::warp_sum(s);
      if (lane == 0) part[warp][m * R + r] = s;
    }
  __syncthreads();
  if (kw != 0) return;
  for (int i = lane; i < M * C; i += 32) {
    const int m = i / C, c = i % C, col = col0 + c;
    if (col >= N) continue;
    float s = part[warp][m * R + c];
    for (int j = 1; j < wk; j++) s += part[warp + j][m * R + c];  // fixed order: deterministic
    if (GATED) {
      float u = part[warp][m * R + C + c];
      for (int j = 1; j < wk; j++) u += part[warp + j][m * R + C + c];
      s = s / (1.f + __expf(-s)) * u;
    } else if (bias) {
      s += msg::to_f(bias[col]);
    }
    out[(size_t)m * N + col] = msg::from_f<TO>(s);
  }
}

// Any K and alignment: warp per row, scalar loads. Correct, not tuned (never hit by the
// models: their K are multiples of 8 and tensors 16-byte aligned).
template <typename T, typename TO>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_scalar_kernel(TO* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ bias, int M, int N, int K) {
  msg::pdl_wait();
  msg::pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= N) return;
  const T* wr = w + (size_t)row * K;
  float acc[kMaxM];
#pragma unroll
  for (int m = 0; m < kMaxM; m++) acc[m] = 0.f;
  for (int k = lane; k < K; k += 32) {
    float wv = msg::to_f(wr[k]);
#pragma unroll
    for (int m = 0; m < kMaxM; m++) {
      if (m < M) acc[m] = fmaf(msg::to_f(x[(size_t)m * K + k]), wv, acc[m]);
    }
  }
  float b = bias ? msg::to_f(bias[row]) : 0.f;
#pragma unroll
  for (int m = 0; m < kMaxM; m++) {
    if (m >= M) break;
    float s = msg::warp_sum(acc[m]);
    if (lane == 0) out[(size_t)m * N + row] = msg::from_f<TO>(s + b);
  }
}

// N: output columns (for GATED, w has 2N rows).
template <typename T, typename TO, int M, bool GATED>
int launch_vec(TO* out, const T* x, const T* w, const T* bias, int N, int K, cudaStream_t st) {
  constexpr int R = M == 1 ? (GATED ? 2 : 1) : M == 2 ? 2 : 4;
  constexpr int U = 8 / R;
  constexpr int C = GATED ? R / 2 : R;
  const long groups = (N + C - 1) / C;
  const int sms = msg::sm_count();
  const long want = (long)(sms > 0 ? sms : 132) * 16;  // warps that keep every SM's loads busy
  const int K8 = K / 8;
  int wk = 1;
  // Split K only while each warp still keeps >= 2 vectors per lane.
  while (wk < kWarps && groups * wk < want && K8 >= 2 * wk * 32 * 2) wk *= 2;
  const long gpb = kWarps / wk;
  const unsigned blocks = (unsigned)((groups + gpb - 1) / gpb);
  // The first blocks prefetch, about kPrefetchBytes in all (see kPrefetchBytes).
  const size_t bytes = (GATED ? 2 : 1) * (size_t)N * K * sizeof(T);
  int pf_blocks = 0;
  if (msg::pdl_enabled()) {
    pf_blocks = bytes <= kPrefetchBytes ? (int)blocks : (int)(blocks * kPrefetchBytes / bytes);
  }
  MSG_CUDA(msg::launch_pdl(gemv_vec_kernel<T, TO, M, R, U, GATED>, dim3(blocks),
                           dim3(kWarps * 32), 0, st, out, x, w, bias, N, K, wk, pf_blocks));
  return 0;
}

template <typename T, typename TO, bool GATED>
int launch_m(TO* o, const T* x, const T* wt, const T* b, int M, int N, int K, cudaStream_t st) {
  switch (M) {
    case 1: return launch_vec<T, TO, 1, GATED>(o, x, wt, b, N, K, st);
    case 2: return launch_vec<T, TO, 2, GATED>(o, x, wt, b, N, K, st);
    case 3: return launch_vec<T, TO, 3, GATED>(o, x, wt, b, N, K, st);
    case 4: return launch_vec<T, TO, 4, GATED>(o, x, wt, b, N, K, st);
    case 5: return launch_vec<T, TO, 5, GATED>(o, x, wt, b, N, K, st);
    case 6: return launch_vec<T, TO, 6, GATED>(o, x, wt, b, N, K, st);
    case 7: return launch_vec<T, TO, 7, GATED>(o, x, wt, b, N, K, st);
    case 8: return launch_vec<T, TO, 8, GATED>(o, x, wt, b, N, K, st);
    default: return msg::fail(msg::ERR_INTERNAL, "gemv: M=%d out of range", M);
  }
}

template <typename T, typename TO>
int launch(void* out, const void* a, const void* w, const void* bias, int M, int N, int K,
           cudaStream_t st) {
  TO* o = (TO*)out;
  const T *x = (const T*)a, *wt = (const T*)w, *b = (const T*)bias;
  if (K % 8 != 0 || !msg::aligned16_ptr(a) || !msg::aligned16_ptr(w)) {
    MSG_CUDA(msg::launch_pdl(gemv_scalar_kernel<T, TO>, dim3((N + kWarps - 1) / kWarps),
                             dim3(kWarps * 32), 0, st, o, x, wt, b, M, N, K));
    return 0;
  }
  return launch_m<T, TO, false>(o, x, wt, b, M, N, K, st);
}

}  // namespace

namespace msg {

/** True when msg_gemm should run this call on the GEMV kernels: 1 <= M <= the threshold
 *  (default 4), a and w both bf16 or both f16, any float output dtype. */
bool gemv_takes(int M, int a_dtype, int w_dtype, int out_dtype) {
  return M >= 1 && M <= gemv_max_m() && a_dtype == w_dtype &&
         (w_dtype == MSG_BF16 || w_dtype == MSG_F16) && is_float_dtype(out_dtype);
}

/** out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]) for M <= 8 (a, w, bias in w_dtype). */
int gemv(void* out, int out_dtype, const void* a, const void* w, int w_dtype, const void* bias,
         int M, int N, int K, cudaStream_t st) {
  MSG_REQUIRE(M >= 1 && M <= kMaxM && N > 0 && K > 0, "gemv: bad sizes M=%d N=%d K=%d", M, N,
              K);
  return MSG_DISPATCH_HALF(w_dtype, T, return MSG_DISPATCH_FLOAT(out_dtype, TO,
    return launch<T, TO>(out, a, w, bias, M, N, K, st);););
}

/** True when gemv_silu takes this call: what gemv_takes takes (a, w and out of one 16-bit
 *  dtype), K a multiple of 8, a and w 16-byte aligned. */
bool gemv_silu_takes(int M, int dtype, const void* a, const void* w, int K) {
  return gemv_takes(M, dtype, dtype, dtype) && K % 8 == 0 && aligned16_ptr(a) &&
         aligned16_ptr(w);
}

/** out[M, N] = silu(a @ w[:N]^T) * (a @ w[N:]^T) for w [2N, K] (see GATED); only where
 *  gemv_silu_takes. */
int gemv_silu(void* out, const void* a, const void* w, int dtype, int M, int N, int K,
              cudaStream_t st) {
  return MSG_DISPATCH_HALF(dtype, T,
    return launch_m<T, T, true>((T*)out, (const T*)a, (const T*)w, nullptr, M, N, K, st););
}

}  // namespace msg

/** Tuning knob (minisgl.h): m >= 0 sets the largest M that msg_gemm sends
 *  to the GEMV kernels (clamped to 0..8; 0 = always cuBLASLt); returns the previous value.
 *  m < 0 only returns the current one. Process-wide. */
extern "C" MSG_API int msg_gemv_max_m(int m) {
  int prev = gemv_max_m();
  if (m >= 0) g_max_m.store(m > kMaxM ? kMaxM : m, std::memory_order_relaxed);
  return prev;
}
