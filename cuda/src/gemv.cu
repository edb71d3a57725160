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
//
// msg_gemm (gemm.cu) routes here when msg::gemv_takes() says so: M <= 4 by default (H100,
// 2026-11-27, bf16, graph replays over > 200 MB of weights: vs cuBLASLt 1.06-1.25x at M = 1
// on the Llama-3-8B shapes, 0.97-1.12x at M = 4, 0.76-0.80x at M = 8, where R = 4 needs
// 138 registers and leaves one block per SM). MINISGL_GEMV_MAX_M (read once) or
// msg_gemv_max_m() (a tuning knob of the ABI, also used by the tests) moves the threshold within
// 0..8; 0 sends everything to cuBLASLt.
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <initializer_list>

#include "pack.cuh"
#include "pdl.cuh"

namespace {

constexpr int kMaxM = 8;      // largest M the kernels are compiled for
constexpr int kDefaultM = 4;  // default threshold (measured, see above)
constexpr int kWarps = 8;  // warps per block
constexpr size_t kPrefetchMaxBytes = 16u << 20;  // largest weight prefetched before the wait
constexpr int kFusedMaxM = 4;                    // largest M of the fused prologues
constexpr size_t kFusedMaxSmem = 96u << 10;      // their activations in shared memory, at most

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

int sm_count() {
  static std::atomic<int> counts[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  int c = counts[dev].load(std::memory_order_relaxed);
  if (c > 0) return c;
  if (cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || c <= 0) {
    cudaGetLastError();
    c = 132;
  }
  counts[dev].store(c, std::memory_order_relaxed);
  return c;
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
template <typename T, int M, int R, int P, bool SMEM_X>
__device__ __forceinline__ void fma_step(float (&acc)[M][R][P], const uint4 (&wq)[R],
                                         const uint4* __restrict__ xv, size_t v, int K8) {
  float wf[R][8];
#pragma unroll
  for (int r = 0; r < R; r++) widen8<T>(wq[r], wf[r]);
#pragma unroll
  for (int m = 0; m < M; m++) {
    float xf[8];
    widen8<T>(SMEM_X ? xv[(size_t)m * K8 + v] : __ldg(xv + (size_t)m * K8 + v), xf);
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
      for (int i = 0; i < 8; i++) acc[m][r][i % P] = fmaf(xf[i], wf[r][i], acc[m][r][i % P]);
    }
  }
}

// What a GEMV reads as its activations. kPlain: x itself (global memory, through the
// read-only cache). The fused prologues compute the activations into shared memory first,
// once per block, so that the op before the GEMV needs no kernel (and no round trip through
// global memory) of its own:
// - kAddNorm: h = x + residual_in (rounded to the residual dtype; no residual_in = zero),
//   stored to residual_out (each block stores its share of the 16-byte vectors), and the
//   activations are rmsnorm(h) * norm_w, as msg_add_rmsnorm computes them;
// - kSiluMul: the activations are silu(gate) * up of a [M, 2K] gate_up, as msg_silu_mul.
enum class Pro { kPlain, kAddNorm, kSiluMul };

struct Prologue {
  const void* x;         // kAddNorm: [M, K] act dtype; kSiluMul: gate_up [M, 2K]
  const void* res_in;    // kAddNorm: [M, K] residual dtype, or null (zero)
  void* res_out;         // kAddNorm: [M, K] residual dtype
  const void* norm_w;    // kAddNorm: [K] act dtype
  float eps;
};

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

/** 8 values of T (16 bytes) or of float (two 16-byte loads) at p, as floats. */
template <typename T>
__device__ __forceinline__ void load8(float* f, const T* p) {
  if constexpr (sizeof(T) == 4) {
    float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z,
    f[7] = b.w;
  } else {
    widen8<T>(*reinterpret_cast<const uint4*>(p), f);
  }
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float* f) {
  msg::Pack<T> a;
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
  } else {
#pragma unroll
    for (int i = 0; i < 8; i++) a.v[i] = msg::from_f<T>(f[i]);
    *reinterpret_cast<msg::Pack<T>*>(p) = a;
  }
}

/** h[0..8) = x + residual_in at vector v of row m, rounded to TR (what the stream holds). */
template <typename T, typename TR>
__device__ __forceinline__ void residual8(float* h, const Prologue& p, int m, int v, int K) {
  const size_t at = (size_t)m * K + 8 * (size_t)v;
  load8<T>(h, (const T*)p.x + at);
  if (p.res_in) {
    float r[8];
    load8<TR>(r, (const TR*)p.res_in + at);
#pragma unroll
    for (int i = 0; i < 8; i++) h[i] = msg::to_f(msg::from_f<TR>(h[i] + r[i]));
  }
}

/** Fills xs ([M][K/8] 16-byte vectors of T) with the prologue's activations; every thread of
 *  the block takes part. Deterministic and the same in every block (fixed-order sums). */
template <typename T, typename TR, Pro PRO, int M>
__device__ void run_prologue(uint4* xs, const Prologue& p, int K) {
  const int K8 = K >> 3;
  if constexpr (PRO == Pro::kSiluMul) {
    for (int i = threadIdx.x; i < M * K8; i += blockDim.x) {
      const int m = i / K8, v = i - m * K8;
      const T* g = (const T*)p.x + (size_t)m * 2 * K + 8 * (size_t)v;
      float a[8], b[8];
      load8<T>(a, g);
      load8<T>(b, g + K);
#pragma unroll
      for (int j = 0; j < 8; j++) a[j] = silu(a[j]) * b[j];
      store8<T>(reinterpret_cast<T*>(xs + i), a);
    }
  } else if constexpr (PRO == Pro::kAddNorm) {
    __shared__ float red[33];
    for (int m = 0; m < M; m++) {
      float ss = 0.f;
      for (int v = threadIdx.x; v < K8; v += blockDim.x) {
        float h[8];
        residual8<T, TR>(h, p, m, v, K);
#pragma unroll
        for (int j = 0; j < 8; j++) ss += h[j] * h[j];
      }
      const float inv = rsqrtf(msg::block_sum(ss, red) / (float)K + p.eps);
      for (int v = threadIdx.x; v < K8; v += blockDim.x) {
        float h[8], w[8];
        residual8<T, TR>(h, p, m, v, K);
        if (v % gridDim.x == blockIdx.x) store8<TR>((TR*)p.res_out + (size_t)m * K + 8 * v, h);
        load8<T>(w, (const T*)p.norm_w + 8 * (size_t)v);
#pragma unroll
        for (int j = 0; j < 8; j++) h[j] = h[j] * inv * w[j];
        store8<T>(reinterpret_cast<T*>(xs + m * K8 + v), h);
      }
    }
  }
}

// The block loop: block b takes the group blocks b, b + gridDim.x, ... (one pass when the
// grid covers every group; the fused prologues run a smaller grid, so that the prologue is
// paid once per resident block, not once per 8 groups).
template <typename T, typename TO, typename TR, Pro PRO, int M, int R, int U>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_vec_kernel(TO* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ bias, int N, int K, int wk, int prefetch,
                    Prologue pro) {
  constexpr int P = M * R >= 4 ? 1 : 4 / (M * R);  // independent accumulators per output
  constexpr bool kFused = PRO != Pro::kPlain;
  extern __shared__ uint4 xs[];  // fused prologues: [M][K/8] activations
  __shared__ float part[kWarps][M * R];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kw = warp % wk, K8 = K >> 3, stride = wk * 32, gpb = kWarps / wk;
  const int n_blk = ((N + R - 1) / R + gpb - 1) / gpb;
  // Weights are never written by a kernel, so they may be fetched before the previous kernel
  // on the stream completes: the first step's lines go to L2 while it drains (PDL only; one
  // prefetch per 128-byte line).
  if (prefetch && (lane & 7) == 0) {
    const int row0 = (blockIdx.x * gpb + warp / wk) * R;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = kw * 32 + lane + u * stride;
#pragma unroll
      for (int r = 0; r < R; r++) {
        const int row = row0 + r < N ? row0 + r : N - 1;
        if (v < K8) asm volatile("prefetch.global.L2 [%0];" ::"l"(
            reinterpret_cast<const uint4*>(w) + (size_t)row * K8 + v));
      }
    }
  }
  msg::pdl_wait();
  msg::pdl_trigger();
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  if constexpr (kFused) {
    run_prologue<T, TR, PRO, M>(xs, pro, K);
    __syncthreads();
    xv = xs;
  }
  for (int blk = blockIdx.x; blk < n_blk; blk += gridDim.x) {
    const int row0 = (blk * gpb + warp / wk) * R;
    const uint4* wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
      // Rows past N (last group) read row N-1 and are never written: no divergence.
      int row = row0 + r < N ? row0 + r : N - 1;
      wr[r] = reinterpret_cast<const uint4*>(w) + (size_t)row * K8;
    }
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
      for (int u = 0; u < U; u++)
        fma_step<T, M, R, P, kFused>(acc, wq[u], xv, v + u * stride, K8);
    }
    if (v < K8) {  // fewer than U vectors left per lane: one predicated step, loads batched
      uint4 wq[U][R];
#pragma unroll
      for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++) {
          wq[u][r] =
              v + u * stride < K8 ? ld_weight(wr[r] + v + u * stride) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
      for (int u = 0; u < U; u++) {
        if (v + u * stride < K8) fma_step<T, M, R, P, kFused>(acc, wq[u], xv, v + u * stride, K8);
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
    if (kw == 0) {
      for (int i = lane; i < M * R; i += 32) {
        int m = i / R, row = row0 + i % R;
        if (row >= N) continue;
        float s = part[warp][i];
        for (int j = 1; j < wk; j++) s += part[warp + j][i];  // fixed order: deterministic
        if (bias) s += msg::to_f(bias[row]);
        out[(size_t)m * N + row] = msg::from_f<TO>(s);
      }
    }
    if (blk + gridDim.x < n_blk) __syncthreads();  // part[] is rewritten by the next pass
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

template <typename T, typename TO, typename TR, Pro PRO, int M>
int launch_vec(TO* out, const T* x, const T* w, const T* bias, int N, int K, const Prologue& pro,
               cudaStream_t st) {
  constexpr int R = M == 1 ? 1 : M == 2 ? 2 : 4;
  constexpr int U = 8 / R;
  auto kern = gemv_vec_kernel<T, TO, TR, PRO, M, R, U>;
  const long groups = (N + R - 1) / R;
  const long want = (long)sm_count() * 16;  // warps that keep every SM's loads busy
  const int K8 = K / 8;
  int wk = 1;
  // Split K only while each warp still keeps >= 2 vectors per lane.
  while (wk < kWarps && groups * wk < want && K8 >= 2 * wk * 32 * 2) wk *= 2;
  const long gpb = kWarps / wk;
  long blocks = (groups + gpb - 1) / gpb;
  size_t smem = 0;
  if constexpr (PRO != Pro::kPlain) {
    // One pass of resident blocks: each computes the prologue once, then loops over groups.
    smem = (size_t)M * K * sizeof(T);
    static std::atomic<bool> big_smem{false};
    if (smem > (48u << 10) && !big_smem.load(std::memory_order_relaxed)) {
      MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)kFusedMaxSmem));
      big_smem.store(true, std::memory_order_relaxed);
    }
    int per_sm = 0;
    MSG_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kWarps * 32, smem));
    if (per_sm < 1) per_sm = 1;
    blocks = std::min(blocks, (long)per_sm * sm_count());
  }
  // Prefetch only what L2 (50 MB on an H100/H200) holds next to the running kernel's stream:
  // a larger matrix's prefetched lines could be evicted before use and read twice.
  const int prefetch = msg::pdl_enabled() && (size_t)N * K * sizeof(T) <= kPrefetchMaxBytes;
  MSG_CUDA(msg::launch_pdl(kern, dim3((unsigned)blocks), dim3(kWarps * 32), smem, st, out, x, w,
                           bias, N, K, wk, prefetch, pro));
  return 0;
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
  switch (M) {
#define MSG_GEMV_CASE(m) \
  case m: return launch_vec<T, TO, T, Pro::kPlain, m>(o, x, wt, b, N, K, Prologue{}, st);
    MSG_GEMV_CASE(1) MSG_GEMV_CASE(2) MSG_GEMV_CASE(3) MSG_GEMV_CASE(4)
    MSG_GEMV_CASE(5) MSG_GEMV_CASE(6) MSG_GEMV_CASE(7) MSG_GEMV_CASE(8)
#undef MSG_GEMV_CASE
    default: return msg::fail(msg::ERR_INTERNAL, "gemv: M=%d out of range", M);
  }
}

/** One fused launch for M <= kFusedMaxM (the caller checked fused_takes). */
template <typename T, typename TR, Pro PRO>
int launch_fused(void* out, const Prologue& p, const void* w, const void* bias, int M, int N,
                 int K, cudaStream_t st) {
  T* o = (T*)out;
  const T *wt = (const T*)w, *b = (const T*)bias;
  switch (M) {
#define MSG_FUSED_CASE(m) \
  case m: return launch_vec<T, T, TR, PRO, m>(o, nullptr, wt, b, N, K, p, st);
    MSG_FUSED_CASE(1) MSG_FUSED_CASE(2) MSG_FUSED_CASE(3) MSG_FUSED_CASE(4)
#undef MSG_FUSED_CASE
    default: return msg::fail(msg::ERR_INTERNAL, "fused gemv: M=%d out of range", M);
  }
}

int fused_max_m() { return std::min(gemv_max_m(), kFusedMaxM); }

/** True when the fused kernels take a call: decode-sized M, 16-bit act == weight dtype, K a
 *  multiple of 8, the activations fit shared memory, every pointer 16-byte aligned. */
bool fused_takes(int M, int K, int act_dtype, int w_dtype, std::initializer_list<const void*> ps) {
  if (M < 1 || M > fused_max_m() || act_dtype != w_dtype || K % 8 != 0) return false;
  if (w_dtype != MSG_BF16 && w_dtype != MSG_F16) return false;
  if ((size_t)M * K * 2 > kFusedMaxSmem) return false;
  for (const void* p : ps) {
    if (!msg::aligned16_ptr(p)) return false;
  }
  return true;
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

}  // namespace msg

/** Tuning knob (minisgl.h): m >= 0 sets the largest M that msg_gemm sends
 *  to the GEMV kernels (clamped to 0..8; 0 = always cuBLASLt); returns the previous value.
 *  m < 0 only returns the current one. Process-wide. */
extern "C" MSG_API int msg_gemv_max_m(int m) {
  int prev = gemv_max_m();
  if (m >= 0) g_max_m.store(m > kMaxM ? kMaxM : m, std::memory_order_relaxed);
  return prev;
}

/** The largest M the fused norm/activation + GEMV entries run as one kernel (minisgl.h). */
extern "C" MSG_API int msg_fused_max_m(void) { return fused_max_m(); }

extern "C" MSG_API int msg_add_rmsnorm_gemm(void* out, void* residual_out,
                                            const void* residual_in, const void* x,
                                            const void* norm_w, const void* w, const void* bias,
                                            void* scratch, int M, int N, int K, float eps,
                                            int act_dtype, int res_dtype, int w_dtype,
                                            void* stream) {
  MSG_REQUIRE(M >= 0 && N > 0 && K > 0, "add_rmsnorm_gemm: bad sizes M=%d N=%d K=%d", M, N, K);
  if (M == 0) return 0;
  MSG_REQUIRE(out && residual_out && x && norm_w && w && scratch,
              "add_rmsnorm_gemm: NULL pointer");
  MSG_REQUIRE(residual_out != residual_in && residual_out != x,
              "add_rmsnorm_gemm: residual_out must not alias residual_in or x");
  MSG_REQUIRE(res_dtype == act_dtype || res_dtype == MSG_F32,
              "add_rmsnorm_gemm: residual dtype %s must be the act dtype or f32",
              msg::dtype_name(res_dtype));
  cudaStream_t st = msg::as_stream(stream);
  if (fused_takes(M, K, act_dtype, w_dtype, {out, residual_out, residual_in, x, norm_w, w})) {
    const Prologue p{x, residual_in, residual_out, norm_w, eps};
    return MSG_DISPATCH_HALF(w_dtype, T,
      if (res_dtype == MSG_F32) return launch_fused<T, float, Pro::kAddNorm>(out, p, w, bias, M, N, K, st);
      return launch_fused<T, T, Pro::kAddNorm>(out, p, w, bias, M, N, K, st););
  }
  // The composition: the residual copied (or zeroed), then the two ops through scratch.
  const size_t rbytes = (size_t)M * K * msg::dtype_size(res_dtype);
  if (residual_in) {
    MSG_CUDA(cudaMemcpyAsync(residual_out, residual_in, rbytes, cudaMemcpyDeviceToDevice, st));
  } else {
    MSG_CUDA(cudaMemsetAsync(residual_out, 0, rbytes, st));
  }
  int rc = msg_add_rmsnorm(scratch, residual_out, x, norm_w, M, K, eps, act_dtype, res_dtype,
                           w_dtype, stream);
  if (rc != 0) return rc;
  return msg_gemm(out, act_dtype, scratch, act_dtype, w, w_dtype, bias, M, N, K, stream);
}

extern "C" MSG_API int msg_silu_mul_gemm(void* out, const void* gate_up, const void* w,
                                         void* scratch, int M, int N, int K, int act_dtype,
                                         int w_dtype, void* stream) {
  MSG_REQUIRE(M >= 0 && N > 0 && K > 0, "silu_mul_gemm: bad sizes M=%d N=%d K=%d", M, N, K);
  if (M == 0) return 0;
  MSG_REQUIRE(out && gate_up && w && scratch, "silu_mul_gemm: NULL pointer");
  if (fused_takes(M, K, act_dtype, w_dtype, {out, gate_up, w})) {
    const Prologue p{gate_up, nullptr, nullptr, nullptr, 0.f};
    return MSG_DISPATCH_HALF(w_dtype, T,
      return launch_fused<T, T, Pro::kSiluMul>(out, p, w, nullptr, M, N, K, msg::as_stream(stream)););
  }
  int rc = msg_silu_mul(scratch, gate_up, M, K, act_dtype, stream);
  if (rc != 0) return rc;
  return msg_gemm(out, act_dtype, scratch, act_dtype, w, w_dtype, nullptr, M, N, K, stream);
}
