// gemm_skinny.cu — out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]) for 1 <= M <= 256 on Hopper:
// a split-K tensor-core GEMM that streams a small weight matrix with every SM.
//
// Why: at batch 8-256 a decode step's GEMMs are weight streams of a few MB (qwen3-0.6b: 2-12 MB
// a matrix). cuBLASLt's tiles of 128+ output columns give such a matrix 8-48 blocks, so a few
// dozen SMs pull the whole stream (H100, 2026-12-05, cold L2: 9-11 us each, 0.2-1.2 TB/s). Here
// a block owns NT = 64 output columns (128 from M > 128) and a 1/split slice of K, so a 1024 x
// 3072 matrix is 16 x 8 blocks, and the `split` blocks of one column tile form a thread-block
// cluster that sums their fp32 partials through distributed shared memory: no workspace, no
// second kernel, and a fixed order of the sum (results are deterministic).
//
// Block: 8 warps over all M rows (padded to MT m16 tiles) x NT columns. The K slice goes through
// a cp.async ring of STAGES tiles of 64 K values (128-byte rows, XOR-swizzled so ldmatrix reads
// are conflict-free); each warp runs mma.sync m16n8k16 (fp32 accumulation) on its m16 x n8 tiles.
// The activation rows past M are zero-filled by the copy (src-size 0), never read. With PDL the
// first stages' weight loads are issued before the wait on the previous kernel (weights are
// never written by a kernel); the activation loads after it.
//
// Sizes it takes (skinny_takes): a and w of one 16-bit dtype, out in it or fp32, K a multiple
// of 64 x split, a and w 16-byte aligned, compute capability 9+ (clusters). msg_gemm (gemm.cu)
// runs it where its tuning timed it faster than every cuBLASLt candidate (cold L2), or always
// with MSG_GEMM_SKINNY / msg_gemm_skinny() set to a split (tests).
#include <cooperative_groups.h>
#include <stdlib.h>

#include <atomic>

#include "common.cuh"
#include "pdl.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kBK = 64;                  // K values per stage (128-byte rows)
constexpr int kThreads = 256;            // 8 warps
constexpr int kSmemTarget = 112 * 1024;  // two blocks an SM where the ring allows it
constexpr int kMaxRows = 256;

constexpr int cmin(int a, int b) { return a < b ? a : b; }
constexpr int cmax(int a, int b) { return a > b ? a : b; }

/** Layout of a block for MT m16 tiles of rows (M <= 16 * MT). */
template <int MT>
struct Cfg {
  static constexpr int NT = MT == 16 ? 128 : 64;     // output columns per block
  static constexpr int WM = MT < 8 ? MT : 8;         // warps along M
  static constexpr int WN = 8 / WM;                  // warps along N
  static constexpr int MI = MT / WM;                 // m16 tiles per warp
  static constexpr int NI = NT / 8 / WN;             // n8 tiles per warp
  static constexpr int MPAD = MT * 16;
  static constexpr int A_BYTES = MPAD * kBK * 2;
  static constexpr int W_BYTES = NT * kBK * 2;
  static constexpr int STAGE = A_BYTES + W_BYTES;
  static constexpr int STAGES = cmax(3, cmin(8, kSmemTarget / STAGE));
  static constexpr int RS = NT + 4;                  // floats per row of the reduction tile
  static constexpr int SMEM = cmax(STAGES * STAGE, MPAD * RS * 4);
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// Byte offset of 16-byte chunk c (0..7) of row r in a tile of 128-byte rows, XOR-swizzled: the
// 8 rows one ldmatrix phase reads (same chunk) land in 8 different 16-byte bank groups.
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                        const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Grid (ceil(N / NT), split), clusters of (1, split): block y sums K slice y of column tile x.
template <typename T, typename TO, int MT>
__global__ void __launch_bounds__(kThreads)
    skinny_kernel(TO* __restrict__ out, const T* __restrict__ a, const T* __restrict__ w,
                  const T* __restrict__ bias, int M, int N, int K, int split) {
  using C = Cfg<MT>;
  constexpr int S = C::STAGES, NT = C::NT;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % C::WM, wn = warp / C::WM;
  const int n0 = blockIdx.x * NT;
  const int kslice = K / split, kbeg = blockIdx.y * kslice, nk = kslice / kBK;
  const uint32_t sbase = smem_u32(smem);

  auto load_w = [&](int kt, int s) {
    const uint32_t dst = sbase + s * C::STAGE + C::A_BYTES;
    const int k0 = kbeg + kt * kBK;
#pragma unroll
    for (int i = tid; i < NT * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7, n = n0 + r;
      const bool ok = n < N;
      cp_async16(dst + swz(r, c), w + (size_t)(ok ? n : 0) * K + k0 + c * 8, ok);
    }
  };
  auto load_a = [&](int kt, int s) {
    const uint32_t dst = sbase + s * C::STAGE;
    const int k0 = kbeg + kt * kBK;
#pragma unroll
    for (int i = tid; i < C::MPAD * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7;
      const bool ok = r < M;
      cp_async16(dst + swz(r, c), a + (size_t)(ok ? r : 0) * K + k0 + c * 8, ok);
    }
  };

  // Prologue: the weights of the first S - 1 stages before the wait, then their activations
  // (one commit group a stage: a stage's group holds its activations, the first also holds
  // every prologue weight load, so waiting for a stage's group waits for its weights too).
#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    if (s < nk) load_w(s, s);
  }
  msg::pdl_wait();
  msg::pdl_trigger();
#pragma unroll
  for (int s = 0; s < S - 1; s++) {
    if (s < nk) load_a(s, s);
    cp_commit();
  }

  float acc[C::MI][C::NI][4];
#pragma unroll
  for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
    for (int ni = 0; ni < C::NI; ni++)
#pragma unroll
      for (int j = 0; j < 4; j++) acc[mi][ni][j] = 0.f;

  for (int kt = 0; kt < nk; kt++) {
    cp_wait<S - 2>();  // stage kt has landed (this thread's copies) ...
    __syncthreads();   // ... everyone's, and stage kt - 1 is no longer read
    const int next = kt + S - 1;
    if (next < nk) {
      load_w(next, next % S);
      load_a(next, next % S);
    }
    cp_commit();
    const uint32_t sa = sbase + (kt % S) * C::STAGE, sw = sa + C::A_BYTES;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; kk++) {
      uint32_t af[C::MI][4], bf[C::NI][2];
#pragma unroll
      for (int mi = 0; mi < C::MI; mi++) {
        const int r = (wm * C::MI + mi) * 16 + (lane & 15);
        ldsm_x4(af[mi], sa + swz(r, kk * 2 + (lane >> 4)));
      }
      if constexpr (C::NI % 2 == 0) {  // two n8 tiles a load
#pragma unroll
        for (int ni = 0; ni < C::NI; ni += 2) {
          uint32_t b4[4];
          const int r = (wn * C::NI + ni) * 8 + (lane & 7) + ((lane >> 4) << 3);
          ldsm_x4(b4, sw + swz(r, kk * 2 + ((lane >> 3) & 1)));
          bf[ni][0] = b4[0];
          bf[ni][1] = b4[1];
          bf[ni + 1][0] = b4[2];
          bf[ni + 1][1] = b4[3];
        }
      } else {
#pragma unroll
        for (int ni = 0; ni < C::NI; ni++) {
          const int r = (wn * C::NI + ni) * 8 + (lane & 7);
          ldsm_x2(bf[ni], sw + swz(r, kk * 2 + ((lane >> 3) & 1)));
        }
      }
#pragma unroll
      for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
        for (int ni = 0; ni < C::NI; ni++) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }

  // The block's fp32 partial tile [MPAD, NT] into shared memory (over the ring).
  cp_wait<0>();
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);
  {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < C::MI; mi++)
#pragma unroll
      for (int ni = 0; ni < C::NI; ni++) {
        const int r = (wm * C::MI + mi) * 16 + g, c = (wn * C::NI + ni) * 8 + 2 * t;
        *reinterpret_cast<float2*>(red + r * C::RS + c) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
        *reinterpret_cast<float2*>(red + (r + 8) * C::RS + c) =
            make_float2(acc[mi][ni][2], acc[mi][ni][3]);
      }
  }
  // Block `rank` of the cluster sums rows [rank, rank + 1) * MPAD / split of every block's
  // tile, in rank order.
  int rank = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  if (split > 1) {
    cluster.sync();
    rank = (int)cluster.block_rank();
  } else {
    __syncthreads();
  }
#else
  __syncthreads();
#endif
  const int rows = C::MPAD / split, r0 = rank * rows;
  for (int i = tid; i < rows * (NT / 4); i += kThreads) {
    const int r = r0 + i / (NT / 4), c = (i % (NT / 4)) * 4, col = n0 + c;
    if (r >= M || col >= N) continue;
    // All the blocks' loads issued before any is summed (remote reads are latency-bound).
    float4 v[8];
#pragma unroll
    for (int q = 0; q < 8; q++) {
      if (q < split) {
        const float* src = red;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (split > 1) src = cluster.map_shared_rank(red, q);
#endif
        v[q] = *reinterpret_cast<const float4*>(src + r * C::RS + c);
      }
    }
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int q = 0; q < 8; q++) {
      if (q < split) {
        s[0] += v[q].x;
        s[1] += v[q].y;
        s[2] += v[q].z;
        s[3] += v[q].w;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
      if (col + j < N) {
        const float b = bias ? msg::to_f(bias[col + j]) : 0.f;
        out[(size_t)r * N + col + j] = msg::from_f<TO>(s[j] + b);
      }
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (split > 1) cluster.sync();  // the others' tiles stay alive until every block has read
#endif
}

template <typename T, typename TO, int MT>
int launch_mt(TO* out, const T* a, const T* w, const T* bias, int M, int N, int K, int split,
              cudaStream_t st) {
  using C = Cfg<MT>;
  auto kern = skinny_kernel<T, TO, MT>;
  // One worker thread per device (as gemm.cu's plans): set once per kernel and thread.
  thread_local bool smem_set = false;
  if (!smem_set) {
    MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
    smem_set = true;
  }
  const dim3 grid((N + C::NT - 1) / C::NT, split);
  MSG_CUDA(msg::launch_pdl_cluster(kern, grid, dim3(kThreads), dim3(1, split, 1), C::SMEM, st,
                                   out, a, w, bias, M, N, K, split));
  return 0;
}

template <typename T, typename TO>
int launch(void* out, const void* a, const void* w, const void* bias, int M, int N, int K,
           int split, cudaStream_t st) {
  TO* o = (TO*)out;
  const T *x = (const T*)a, *wt = (const T*)w, *b = (const T*)bias;
  if (M <= 16) return launch_mt<T, TO, 1>(o, x, wt, b, M, N, K, split, st);
  if (M <= 32) return launch_mt<T, TO, 2>(o, x, wt, b, M, N, K, split, st);
  if (M <= 64) return launch_mt<T, TO, 4>(o, x, wt, b, M, N, K, split, st);
  if (M <= 128) return launch_mt<T, TO, 8>(o, x, wt, b, M, N, K, split, st);
  return launch_mt<T, TO, 16>(o, x, wt, b, M, N, K, split, st);
}

/** Compute capability major of the current device (cached per device). */
int cc_major() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> major[kMaxDevices];  // 0: not read yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return 0;
  }
  int v = major[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    if (cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      v = -1;
    }
    major[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

std::atomic<int> g_mode{-2};  // -2: MSG_GEMM_SKINNY not read yet

int valid_mode(int m) { return m == 0 || m == 1 || m == 2 || m == 4 || m == 8 ? m : -1; }

}  // namespace

namespace msg {

/** -1: msg_gemm runs the skinny kernel where its tuning chose it (default); 0: never; a split
 *  (1, 2, 4, 8): on every call it takes, with that split (MSG_GEMM_SKINNY, msg_gemm_skinny). */
int skinny_mode() {
  int v = g_mode.load(std::memory_order_relaxed);
  if (v != -2) return v;
  const char* e = getenv("MSG_GEMM_SKINNY");
  v = e && *e ? valid_mode(atoi(e)) : -1;
  g_mode.store(v, std::memory_order_relaxed);
  return v;
}

/** True when skinny_gemm takes this call with this split (see the top of the file). */
bool skinny_takes(int M, int N, int K, int split, int a_dtype, int w_dtype, int out_dtype,
                  const void* a, const void* w) {
  return M >= 1 && M <= kMaxRows && N > 0 && (split == 1 || split == 2 || split == 4 ||
                                              split == 8) &&
         K % (kBK * split) == 0 && a_dtype == w_dtype &&
         (w_dtype == MSG_BF16 || w_dtype == MSG_F16) &&
         (out_dtype == w_dtype || out_dtype == MSG_F32) && aligned16_ptr(a) &&
         aligned16_ptr(w) && cc_major() >= 9;
}

/** out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]); only where skinny_takes. */
int skinny_gemm(void* out, int out_dtype, const void* a, const void* w, int w_dtype,
                const void* bias, int M, int N, int K, int split, cudaStream_t st) {
  return MSG_DISPATCH_HALF(w_dtype, T,
    if (out_dtype == MSG_F32) return launch<T, float>(out, a, w, bias, M, N, K, split, st);
    return launch<T, T>(out, a, w, bias, M, N, K, split, st););
}

}  // namespace msg

/** Tuning knob (minisgl.h): mode >= -1 sets the skinny GEMM's use (-1 tuned, 0 never, 1/2/4/8
 *  always with that split where it takes the call; other values mean -1); returns the previous
 *  mode. mode < -1 only returns the current one. Process-wide. On a device it cannot run on
 *  (compute capability < 9) it sets nothing and returns 0. */
extern "C" MSG_API int msg_gemm_skinny(int mode) {
  if (cc_major() < 9) return 0;
  const int prev = msg::skinny_mode();
  if (mode >= -1) g_mode.store(mode == -1 ? -1 : valid_mode(mode), std::memory_order_relaxed);
  return prev;
}
