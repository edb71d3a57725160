// attention_decode.cu — one query per request over its paged KV cache (flash-decoding on
// tensor cores).
//
// Work split. Grid (splits, kv heads x head-chunks, requests); a block (4 warps) owns one
// KV head of one request, all the q heads sharing it (GQA: up to 8, or 16 when the group is
// larger, so K/V are read once per group) and one share of the keys. `splits` (the grid)
// depends only on max_seq_len and the batch shape, so the launch is the same for every
// replay of a captured graph; the number of ACTIVE splits of a request is computed on the
// device from its real seq_len (at least `min_keys` keys per split, 128 by default, shares
// rounded to 64 keys), the other blocks exit at once. A request with one active split is
// written directly; otherwise every split writes (o, lse) partials and the LAST block of the
// request's head group to finish (an atomic counter per group in the scratch buffer, reset
// by that block) merges the active splits — no second kernel, and a short sequence under a
// large max_seq_len costs about what it costs under a small one.
//
// Inside a block each warp takes tiles of 16 consecutive keys (tile i of the block's share
// goes to warp i % 4) with its own online-softmax state; the 4 states are merged in shared
// memory at the end. Per tile, S = Q K^T is 2 x (head_dim/16) mma.m16n8k16 (M = q heads,
// padded to 16; N = 8 keys; K = head_dim) and O^T += V^T P^T is head_dim/16 (x2 for 16
// heads) mma (M = 16 dims, N = 8 heads, K = the 16 keys). Loads go straight from global
// memory into mma fragments, 16 bytes per lane: the dot product does not care in which
// order the dims are summed, so K rows are read in a permuted dim order (Q is loaded in the
// same order), and V is transposed in registers with byte permutes (lanes that share an
// mma row read the same 8 dims of 4 different keys). The score softmax thus costs one
// exp2 per (head, key) instead of one per lane, which is what made the previous CUDA-core
// kernel (one lane group per key, 16 shuffles per key) compute-bound at ~60% of copy
// bandwidth. Page lookups for tile i+1 are issued before tile i's math so their latency
// hides behind it.
//
// A pipelined variant (PIPE, MSG_DECODE_KERNEL=pipelined; slower than the direct one on an H200)
// copies each lane's K/V chunks through a cp.async ring of up to 8 tiles in shared memory
// instead, so several tiles per warp are in flight during the math (see the loop and
// bench/notes/attention.md). The figures below are the direct kernel's.
//
// Measured on an H100 SXM (tests/device/attention_test.ts: graph replays over > 256 MB of
// KV, median; Llama-3-8B shapes: 32 q / 8 kv heads, head_dim 128, bf16, page 16; d2d copy
// 2,993 GB/s). us and % of copy bandwidth for K+V read, at the splits chosen below:
//   seq 4096:  bs 1: 18.9 us (30%)  bs 8: 55.3 (81%)  bs 16: 100.7 (89%)  bs 32: 187.9 (95%)
//              bs 64: 377 (95%)  bs 128: 732 (98%)
//   seq 16384: bs 1: 38.5 (58%)  bs 8: 189 (95%)  bs 64: 1466 (98%)  bs 128: 2900 (99%)
//   seq 512:   bs 1: 10.4 (7%)  bs 8: 15.8 (35%)  bs 32: 29.5 (76%)  bs 128: 101 (89%)
//   300..900 keys under max_seq_len 8192 cost the same as under their own maximum
//   (bs 1: 11.7 vs 11.4 us, bs 8: 18.9 vs 18.9).
// The previous kernel (CUDA cores): seq 4096 bs 1: 26.7 us (21%), 8: 108 (41%), 32: 295
// (60%), 64: 617 (58%). Small batches are now latency-bound: a block's chain of dependent
// loads (seq_lens, page table, K/V, then partials). The merge now issues its partials' loads
// eight at a time (it read them one split after another when the figures above were taken),
// and the kernel is launched with programmatic dependent launch; neither is measured yet.

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "pack.cuh"
#include "pdl.cuh"

namespace {

const int kWarps = 4;
const int kTile = 16;                  // keys per warp per step
const int kRound = kWarps * kTile;     // keys per block per step; shares are multiples
const int kMaxSplits = 64;
const int kDefaultMinKeys = 128;       // keys per active split, at least
const int kBlockCostKeys = 64;         // fixed cost of a block, in keys' worth of time
const int kMergeCostKeys = 2;          // cost of merging one more split, in keys
const int kSmallMaxSplits = 16;        // splits at most when blocks <= 2 per SM
const size_t kScratch = 64u << 20;
const size_t kCounterBytes = 1u << 20; // per-(request, head group) arrival counters
const float kLog2e = 1.4426950408889634f;

struct Params {
  void* out;
  float* part_o;     // [batch * hq * splits, D]
  float* part_lse;   // [batch * hq * splits] (log2 units)
  int* counters;     // [batch * gridDim.y], zero between launches
  const void* q;
  const void* k;
  const void* v;
  const int32_t* page_table;
  const int32_t* rows;
  const int32_t* seq_lens;
  int q_row_stride, pt_stride, hq, hkv, page_size, page_shift, splits, min_keys;
  int stages;   // cp.async stages per warp (pipelined kernel only)
  float scale;  // softmax scale * log2(e)
};

// Active splits of a request of `seq` keys and the keys of each (a multiple of kRound).
__device__ __forceinline__ void split_plan(int seq, int splits, int min_keys, int* n, int* per) {
  int want = (seq + min_keys - 1) / min_keys;
  want = max(1, min(want, splits));
  int p = (seq + want - 1) / want;
  p = max(kRound, (p + kRound - 1) / kRound * kRound);
  *per = p;
  *n = max(1, (seq + p - 1) / p);
}

__device__ __forceinline__ int slot_of(const int32_t* pt, int key, int ps, int shift) {
  if (shift >= 0) return (pt[key >> shift] << shift) + (key & (ps - 1));
  int pg = key / ps;
  return pt[pg] * ps + (key - pg * ps);
}

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// 16 bytes global -> shared without registers (L2 only); `ok` false writes zeros and reads
// nothing (src must still be a valid address).
__device__ __forceinline__ void cp_async16(uint4* dst, const void* src, bool ok) {
  uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
               "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until at most n of this thread's groups are pending (n is a PTX immediate).
__device__ __forceinline__ void cp_async_wait_upto(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
}

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// c += a (16x16, row) * b (16x8, col); fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma(float* c, uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Fragment layouts of mma.m16n8k16 (lane = 4 r + t): A holds rows r, r+8 x cols 2t..2t+1,
// 2t+8..2t+9; B holds rows (k) 2t..2t+1, 2t+8..2t+9 x col (n) r; C holds rows r, r+8 x
// cols 2t..2t+1.
// - S (M = head, N = key, K = dim): B = K^T, lane (r, t) reads key r, 16 bytes at dims
//   32c + 8t (c < D/32), which serve k-steps 2c (words 0, 1) and 2c+1 (words 2, 3). Q (A)
//   is read at the same dims for heads r and r + 8.
// - O^T (M = dim, N = head, K = key): A = V^T, lane (r, t) reads keys 2t, 2t+1, 2t+8,
//   2t+9 at dims 64c + 8r .. +7 (c < D/64); m-tile 4c + w has row r = dim 64c + 8r + 2w,
//   row r + 8 = that dim + 1. B = P^T is exactly S's C fragment (head r, keys 2t.., 8+2t..).
template <typename T, int D, int NT, bool PIPE>
__global__ void __launch_bounds__(kWarps * 32, PIPE || D >= 256 ? 1 : (NT == 1 ? 3 : 2))
    decode_kernel(Params a) {
  constexpr int KC = D / 32, VC = D / 64, MT = D / 16, HPB = 8 * NT;
  constexpr int NCH = 2 * KC + 4 * VC;  // 16-byte chunks a lane loads per tile
  // Launched with programmatic dependent launch (pdl.cuh): resident while the kernel before
  // it (rope + KV store) finishes. Before the wait it reads only what kernels at least two
  // back wrote (pdl.cuh's rule): seq_lens, rows, the page table and the K/V of every key but
  // the newest (seq - 1), so the chain seq_lens -> page table -> K/V overlaps that kernel. q
  // and the newest key's K/V (written by the kernel just before) are read after the wait.
  const int split = blockIdx.x, b = blockIdx.z;
  const int group = a.hq / a.hkv, chunks = (group + HPB - 1) / HPB;
  const int kvh = blockIdx.y / chunks;
  const int h0 = kvh * group + (blockIdx.y % chunks) * HPB;
  const int nh = min(HPB, kvh * group + group - h0);
  const int seq = a.seq_lens[b];
  int nact, per;
  split_plan(seq, a.splits, a.min_keys, &nact, &per);
  if (split >= nact) return;
  const int start = split * per, end = min(start + per, seq);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, r = lane >> 2, t = lane & 3;

  float acc[MT][NT][4];
  float m[NT], l[NT];
#pragma unroll
  for (int rb = 0; rb < NT; rb++) {
    m[rb] = -INFINITY;
    l[rb] = 0.f;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][rb][e] = 0.f;
  }

  const int32_t* pt = a.page_table + (size_t)a.rows[b] * a.pt_stride;
  const T* kbase = (const T*)a.k + (size_t)kvh * D;
  const T* vbase = (const T*)a.v + (size_t)kvh * D;
  const size_t sstride = (size_t)a.hkv * D;
  // Slots of the current tile: K keys r, 8 + r; V keys 2t, 2t+1, 2t+8, 2t+9 (-1: past end).
  auto slots = [&](int kb, int* sk, int* sv) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
      int key = kb + 8 * j + r;
      sk[j] = key < end ? slot_of(pt, key, a.page_size, a.page_shift) : -1;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      int key = kb + 2 * t + (i & 1) + 8 * (i >> 1);
      sv[i] = key < end ? slot_of(pt, key, a.page_size, a.page_shift) : -1;
    }
  };
  int sk[2], sv[4];
  slots(start + warp * kTile, sk, sv);

  // Pipelined kernel: each lane copies the very 16-byte chunks it will feed to its mma
  // fragments into its own slots of a ring of `stages` tiles in shared memory (chunk ch of
  // stage st of thread tid at stage_buf[(st * NCH + ch) * 128 + tid]: consecutive lanes,
  // consecutive 16 bytes, no bank conflicts), `stages - 1` tiles ahead of the math. A thread
  // reads only what it copied itself, so cp.async.wait_group is the only synchronisation.
  // The page-table lookups of a tile are issued one step before its copies.
  extern __shared__ uint4 stage_buf[];
  const int S = PIPE ? a.stages : 1;
  auto issue = [&](int st) {
    uint4* dst = stage_buf + (size_t)st * NCH * (kWarps * 32) + tid;
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const T* p = kbase + (size_t)max(sk[j], 0) * sstride + 8 * t;
#pragma unroll
      for (int c = 0; c < KC; c++) {
        cp_async16(dst + (j * KC + c) * (kWarps * 32), p + 32 * c, sk[j] >= 0);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const T* p = vbase + (size_t)max(sv[i], 0) * sstride + 8 * r;
#pragma unroll
      for (int c = 0; c < VC; c++) {
        cp_async16(dst + (2 * KC + i * VC + c) * (kWarps * 32), p + 64 * c, sv[i] >= 0);
      }
    }
  };
  int kb_issue = start + warp * kTile, st_issue = 0;
  if constexpr (PIPE) {
    for (int s0 = 0; s0 < S - 1; s0++) {
      // A tile holding the newest key (seq - 1) is copied only after the wait.
      if (kb_issue + kTile >= seq) msg::pdl_wait();
      if (kb_issue < end) issue(st_issue);
      cp_async_commit();
      kb_issue += kRound;
      st_issue++;
      if (kb_issue < end) slots(kb_issue, sk, sv);
    }
  }
  int st_use = 0;
  // Every copy and load from here on may read what the kernel before wrote (a second wait
  // after one in the prologue returns at once). The trigger follows the wait (pdl.cuh).
  msg::pdl_wait();
  msg::pdl_trigger();
  // ld_stream is a plain asm (no memory clobber), free to move above the wait while its
  // address depends only on pre-wait values: the direct kernel's first-tile slots are passed
  // through an empty volatile asm here so its loads stay after the wait.
  if constexpr (!PIPE) {
#pragma unroll
    for (int j = 0; j < 2; j++) asm volatile("" : "+r"(sk[j])::"memory");
#pragma unroll
    for (int i = 0; i < 4; i++) asm volatile("" : "+r"(sv[i])::"memory");
  }

  // Q fragments: qa[rb][ks][0] = dims (2t, 2t+1) of k-step ks for head r + 8 rb, [1] = +8.
  uint32_t qa[NT][MT][2];
#pragma unroll
  for (int rb = 0; rb < NT; rb++) {
    const T* qrow = (const T*)a.q + (size_t)b * a.q_row_stride + (size_t)(h0 + r + 8 * rb) * D;
#pragma unroll
    for (int c = 0; c < KC; c++) {
      uint4 v = r + 8 * rb < nh ? *reinterpret_cast<const uint4*>(qrow + 32 * c + 8 * t)
                                : make_uint4(0, 0, 0, 0);
      qa[rb][2 * c][0] = v.x;
      qa[rb][2 * c][1] = v.y;
      qa[rb][2 * c + 1][0] = v.z;
      qa[rb][2 * c + 1][1] = v.w;
    }
  }

  for (int kb = start + warp * kTile; kb < end; kb += kRound) {
    uint4 kr[2][KC], vr[4][VC];
    if constexpr (PIPE) {
      if (kb_issue < end) issue(st_issue);
      cp_async_commit();
      kb_issue += kRound;
      st_issue = st_issue + 1 == S ? 0 : st_issue + 1;
      if (kb_issue < end) slots(kb_issue, sk, sv);
      // Tile kb's group is complete once at most S - 1 newer ones are pending. The stage
      // just reissued was read into registers last step (ld.shared before this cp.async in
      // program order, and its values already consumed by that step's mma).
      cp_async_wait_upto(S - 1);
      const uint4* src = stage_buf + (size_t)st_use * NCH * (kWarps * 32) + tid;
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int c = 0; c < KC; c++) kr[j][c] = src[(j * KC + c) * (kWarps * 32)];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int c = 0; c < VC; c++) vr[i][c] = src[(2 * KC + i * VC + c) * (kWarps * 32)];
      st_use = st_use + 1 == S ? 0 : st_use + 1;
    } else {
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const T* p = kbase + (size_t)sk[j] * sstride + 8 * t;
#pragma unroll
        for (int c = 0; c < KC; c++) {
          kr[j][c] = sk[j] >= 0 ? ld_stream(p + 32 * c) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const T* p = vbase + (size_t)sv[i] * sstride + 8 * r;
#pragma unroll
        for (int c = 0; c < VC; c++) {
          vr[i][c] = sv[i] >= 0 ? ld_stream(p + 64 * c) : make_uint4(0, 0, 0, 0);
        }
      }
      if (kb + kRound < end) slots(kb + kRound, sk, sv);
    }

    // S: s[j][0..1] = head r, keys kb + 8j + 2t + {0,1}; s[j][2..3] = head r + 8.
    float s[2][4];
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) s[j][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < MT; ks++) {
        uint32_t b0 = word(kr[j][ks / 2], 2 * (ks & 1)), b1 = word(kr[j][ks / 2], 2 * (ks & 1) + 1);
        mma<T>(s[j], qa[0][ks][0], NT > 1 ? qa[NT - 1][ks][0] : 0u, qa[0][ks][1],
               NT > 1 ? qa[NT - 1][ks][1] : 0u, b0, b1);
      }
    }
    // Online softmax per head row; P packed as the B fragment of the O^T mma.
    uint32_t pb[NT][2];
#pragma unroll
    for (int rb = 0; rb < NT; rb++) {
      float x[2][2], mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          x[j][e] = kb + 8 * j + 2 * t + e < end ? s[j][2 * rb + e] * a.scale : -INFINITY;
          mx = fmaxf(mx, x[j][e]);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      float mnew = fmaxf(m[rb], mx);
      float mu = mnew == -INFINITY ? 0.f : mnew;
      float corr = exp2f(m[rb] - mu);
      float p[2][2], sum = 0.f;
#pragma unroll
      for (int j = 0; j < 2; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
          p[j][e] = exp2f(x[j][e] - mu);
          sum += p[j][e];
        }
      l[rb] = l[rb] * corr + sum;
      m[rb] = mnew;
      pb[rb][0] = pack2<T>(p[0][0], p[0][1]);
      pb[rb][1] = pack2<T>(p[1][0], p[1][1]);
      // acc columns are heads 2t, 2t+1 of this row block: their factors live in lanes 8t, 8t+4.
      float c0 = __shfl_sync(0xffffffffu, corr, 8 * t);
      float c1 = __shfl_sync(0xffffffffu, corr, 8 * t + 4);
#pragma unroll
      for (int i = 0; i < MT; i++) {
        acc[i][rb][0] *= c0;
        acc[i][rb][1] *= c1;
        acc[i][rb][2] *= c0;
        acc[i][rb][3] *= c1;
      }
    }
    // O^T += V^T P^T.
#pragma unroll
    for (int i = 0; i < MT; i++) {
      const int c = i / 4, w = i % 4;
      uint32_t x0 = word(vr[0][c], w), x1 = word(vr[1][c], w);
      uint32_t x2 = word(vr[2][c], w), x3 = word(vr[3][c], w);
      uint32_t a0 = __byte_perm(x0, x1, 0x5410), a1 = __byte_perm(x0, x1, 0x7632);
      uint32_t a2 = __byte_perm(x2, x3, 0x5410), a3 = __byte_perm(x2, x3, 0x7632);
#pragma unroll
      for (int rb = 0; rb < NT; rb++) mma<T>(acc[i][rb], a0, a1, a2, a3, pb[rb][0], pb[rb][1]);
    }
  }

  // Merge the 4 warps in shared memory. The pipelined kernel puts the warps' accumulators in
  // its ring (free once every copy has landed and every warp has read its last tile), which
  // leaves room for a deeper ring or a second block per SM.
  __shared__ float sh_acc_own[PIPE ? 1 : kWarps * HPB * D];
  float(*sh_acc)[HPB][D] = reinterpret_cast<float(*)[HPB][D]>(sh_acc_own);
  if constexpr (PIPE) {
    static_assert(2 * NCH * kWarps * 32 * 16 >= sizeof(float) * kWarps * HPB * D,
                  "two stages hold the accumulators");
    cp_async_wait_upto(0);
    __syncthreads();
    sh_acc = reinterpret_cast<float(*)[HPB][D]>(stage_buf);
  }
  __shared__ float sh_m[kWarps][HPB], sh_l[kWarps][HPB];
  __shared__ float sh_w[HPB][kMaxSplits];
  __shared__ float sh_tot[HPB];
  __shared__ int sh_last;
#pragma unroll
  for (int rb = 0; rb < NT; rb++) {
    l[rb] += __shfl_xor_sync(0xffffffffu, l[rb], 1);
    l[rb] += __shfl_xor_sync(0xffffffffu, l[rb], 2);
    if (t == 0) {
      sh_m[warp][r + 8 * rb] = m[rb];
      sh_l[warp][r + 8 * rb] = l[rb];
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      int d = 64 * (i / 4) + 8 * r + 2 * (i % 4);
      int h = 8 * rb + 2 * t;
      sh_acc[warp][h][d] = acc[i][rb][0];
      sh_acc[warp][h + 1][d] = acc[i][rb][1];
      sh_acc[warp][h][d + 1] = acc[i][rb][2];
      sh_acc[warp][h + 1][d + 1] = acc[i][rb][3];
    }
  }
  __syncthreads();
  for (int i = tid; i < nh * D; i += kWarps * 32) {
    int g = i / D, d = i % D;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) mm = fmaxf(mm, sh_m[w][g]);
    float mu = mm == -INFINITY ? 0.f : mm, ls = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      float c = exp2f(sh_m[w][g] - mu);
      ls += sh_l[w][g] * c;
      o += sh_acc[w][g][d] * c;
    }
    size_t row = (size_t)b * a.hq + h0 + g;
    if (nact == 1) {
      ((T*)a.out)[row * D + d] = msg::from_f<T>(ls > 0.f ? o / ls : 0.f);
    } else {
      size_t idx = row * a.splits + split;
      a.part_o[idx * D + d] = ls > 0.f ? o / ls : 0.f;
      if (d == 0) a.part_lse[idx] = ls > 0.f ? mm + log2f(ls) : -INFINITY;
    }
  }
  if (nact == 1) return;

  // The last split of this (request, head group) to arrive merges all active splits.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int* cnt = a.counters + (size_t)b * gridDim.y + blockIdx.y;
    int old = atomicAdd(cnt, 1);
    sh_last = old == nact - 1;
    if (sh_last) *cnt = 0;  // every split has arrived: ready for the next launch
  }
  __syncthreads();
  if (!sh_last) return;
  __threadfence();
  // The partials are in L2. Their loads are independent: the split loops are unrolled 8 deep
  // so that eight are in flight at once instead of one L2 round trip per split.
  for (int g = tid; g < nh; g += kWarps * 32) {
    size_t base = ((size_t)b * a.hq + h0 + g) * a.splits;
    float mm = -INFINITY;
#pragma unroll 8
    for (int s2 = 0; s2 < nact; s2++) {
      float x = __ldcg(a.part_lse + base + s2);
      sh_w[g][s2] = x;
      mm = fmaxf(mm, x);
    }
    float mu = mm == -INFINITY ? 0.f : mm, tot = 0.f;
    for (int s2 = 0; s2 < nact; s2++) {
      float w = exp2f(sh_w[g][s2] - mu);
      sh_w[g][s2] = w;
      tot += w;
    }
    sh_tot[g] = tot;
  }
  __syncthreads();
  for (int i = tid; i < nh * D; i += kWarps * 32) {
    int g = i / D, d = i % D;
    size_t row = (size_t)b * a.hq + h0 + g;
    const float* po = a.part_o + row * a.splits * D + d;
    float o = 0.f;
#pragma unroll 8
    for (int s2 = 0; s2 < nact; s2++) o += sh_w[g][s2] * __ldcg(po + (size_t)s2 * D);
    ((T*)a.out)[row * D + d] = msg::from_f<T>(sh_tot[g] > 0.f ? o / sh_tot[g] : 0.f);
  }
}

int sm_count() {
  static thread_local int dev_cached = -1, count = 0;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (dev != dev_cached) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      count = 0;
    }
    dev_cached = dev;
  }
  return count;
}

// Scratch buffers whose counters were zeroed (per device): the counters then stay zero
// between launches because the last block of each group resets its own.
std::mutex g_zero_mu;
void* g_zeroed[64];

// Tuning knobs for benchmarks, read per call: MSG_DECODE_SPLIT_KEYS (minimum keys per active
// split, default kDefaultMinKeys) and MSG_DECODE_SPLITS (force the grid's splits).
int env_int(const char* name) {
  const char* e = getenv(name);
  return e ? atoi(e) : 0;
}

// Resident blocks per SM of a kernel at `smem` dynamic bytes (0 when it cannot run).
template <typename T, int D, int NT, bool PIPE>
int blocks_per_sm(size_t smem) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<T, D, NT, PIPE>,
                                                    kWarps * 32, smem) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Which kernel (MSG_DECODE_KERNEL, read per call): "direct" loads K/V straight into mma
// fragments, "pipelined" copies them through a cp.async ring in shared memory; unset or
// "auto": direct. On one H200 (2026-12-05, bench/attention.ts) the pipelined kernel lost in
// every shape: bs1-ctx32k 0.449 of copy bandwidth against 0.537, bs64-ctx1k 0.567 against
// 0.728, bs64-ctx8k 0.613 against 0.989.
enum class Kind { kAuto, kDirect, kPipelined };
Kind kernel_choice() {
  const char* e = getenv("MSG_DECODE_KERNEL");
  if (e == nullptr || *e == 0 || strcmp(e, "auto") == 0) return Kind::kAuto;
  return strcmp(e, "direct") == 0 ? Kind::kDirect : Kind::kPipelined;
}

template <typename T, int D, int NT>
int launch(Params p, int batch, int max_seq_len, cudaStream_t st) {
  int group = p.hq / p.hkv, chunks = (group + 8 * NT - 1) / (8 * NT);
  int base_blocks = batch * p.hkv * chunks;
  constexpr size_t kStageBytes = (size_t)kWarps * 32 * (2 * (D / 32) + 4 * (D / 64)) * 16;
  // Stages of the pipelined kernel (at least 2, at most 8): at one block per SM as many as
  // fit in 192 KB (the merge's few static buffers take < 5 KB more, a Hopper SM has 227 KB
  // for a block), at two blocks per SM as many as fit in 96 KB. Head_dim 128: 6 and 3 tiles
  // of 16 keys per warp, so 5 or 2 tiles in flight per warp.
  constexpr int kFitOne = (int)(192u * 1024 / kStageBytes);
  constexpr int kFitTwo = (int)(96u * 1024 / kStageBytes);
  constexpr int kStagesOne = kFitOne > 8 ? 8 : kFitOne < 2 ? 2 : kFitOne;
  constexpr int kStagesTwo = kFitTwo > 8 ? 8 : kFitTwo < 2 ? 2 : kFitTwo;
  // The shared-memory limit is an attribute of the function on each device: set it once per
  // device (resident blocks are then the same for every device of a process).
  static int per_sm_direct = 0, per_sm_pipe_one = 0, per_sm_pipe_two = 0;
  static bool attr_set[64];
  static std::mutex attr_mu;
  {
    int dev = 0;
    MSG_CUDA(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(attr_mu);
    if (dev >= 0 && dev < 64 && !attr_set[dev]) {
      attr_set[dev] = true;
      cudaFuncSetAttribute(decode_kernel<T, D, NT, true>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           (int)(kStagesOne * kStageBytes));
      cudaGetLastError();  // too large for this GPU: the occupancy below is 0, direct runs
      per_sm_direct = blocks_per_sm<T, D, NT, false>(0);
      per_sm_pipe_one = blocks_per_sm<T, D, NT, true>(kStagesOne * kStageBytes);
      per_sm_pipe_two = blocks_per_sm<T, D, NT, true>(kStagesTwo * kStageBytes);
    }
  }
  int sms = sm_count();
  Kind kind = kernel_choice();
  bool pipe = kind == Kind::kPipelined;
  if (per_sm_pipe_one < 1) pipe = false;  // the ring does not fit (should not happen)
  // The pipelined kernel runs a deep ring at one block per SM, or a ring half as deep at two
  // when the grid has more blocks than SMs (decided again below once the splits are known).
  bool two = pipe && base_blocks > sms && per_sm_pipe_two >= 2;
  int per_sm = pipe ? (two ? per_sm_pipe_two : per_sm_pipe_one) : per_sm_direct;
  if (per_sm < 1) per_sm = pipe ? 1 : 2;
  // Splits from a sweep on an H100 (see the top of the file). Up to 2 blocks per SM:
  // as many splits as give about 2 blocks per SM, at most kSmallMaxSplits (the merge of
  // the last block reads the splits' partials one after another, so more cost more than
  // they bring). Larger batches: blocks of equal lengths do equal work, so time ~ waves x
  // (keys per split + a fixed cost per block, in keys) with waves = ceil(blocks / resident
  // blocks), plus the merge's reads per split. Never more splits than the longest sequence
  // can use with `keys` keys each.
  int cap = sms * per_sm;
  if (cap < 1) cap = 1;
  int keys = env_int("MSG_DECODE_SPLIT_KEYS");
  if (keys < 16) keys = kDefaultMinKeys;
  int by_len = (max_seq_len + keys - 1) / keys;
  if (by_len > kMaxSplits) by_len = kMaxSplits;
  int splits = 1;
  if (base_blocks <= 2 * sms) {
    splits = 2 * sms / base_blocks;
    if (splits > kSmallMaxSplits) splits = kSmallMaxSplits;
    if (splits > by_len) splits = by_len;
  } else {
    long long best = -1;
    for (int s = 1; s <= by_len; s++) {
      long long waves = ((long long)base_blocks * s + cap - 1) / cap;
      long long cost =
          waves * ((max_seq_len + s - 1) / s + kBlockCostKeys) + kMergeCostKeys * s;
      if (best < 0 || cost < best) {
        best = cost;
        splits = s;
      }
    }
  }
  if (splits < 1) splits = 1;
  int forced = env_int("MSG_DECODE_SPLITS");
  if (forced > 0) splits = forced < kMaxSplits ? forced : kMaxSplits;
  if ((size_t)batch * p.hkv * chunks * sizeof(int) > kCounterBytes) splits = 1;
  size_t per_split = (size_t)batch * p.hq * (D + 1) * sizeof(float);
  if (splits > 1 && kCounterBytes + (size_t)splits * per_split > kScratch) {
    splits = (int)((kScratch - kCounterBytes) / per_split);
  }
  if (splits < 1) splits = 1;
  two = pipe && base_blocks * splits > sms && per_sm_pipe_two >= 2;
  const int stages = two ? kStagesTwo : kStagesOne;
  p.stages = stages;
  p.splits = splits;
  p.min_keys = keys;
  if (splits > 1) {
    void* ws = nullptr;
    int rc = msg::device_scratch(msg::SCRATCH_DECODE, kScratch, &ws);
    if (rc) return rc;
    int dev = 0;
    MSG_CUDA(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(g_zero_mu);
    if (dev < 64 && g_zeroed[dev] != ws) {
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      MSG_CUDA(cudaStreamIsCapturing(st, &cs));
      if (cs != cudaStreamCaptureStatusNone) {
        return msg::fail(msg::ERR_ARG, "msg_attention_decode: call it once with this shape "
                         "before graph capture (its scratch counters must be zeroed)");
      }
      MSG_CUDA(cudaMemsetAsync(ws, 0, kCounterBytes, st));
      g_zeroed[dev] = ws;
    }
    p.counters = (int*)ws;
    p.part_o = (float*)((char*)ws + kCounterBytes);
    p.part_lse = p.part_o + (size_t)batch * p.hq * splits * D;
  }
  dim3 grid(splits, p.hkv * chunks, batch);
  if (pipe) {
    MSG_CUDA(msg::launch_pdl(decode_kernel<T, D, NT, true>, grid, dim3(kWarps * 32),
                             (size_t)stages * kStageBytes, st, p));
  } else {
    MSG_CUDA(msg::launch_pdl(decode_kernel<T, D, NT, false>, grid, dim3(kWarps * 32), 0, st, p));
  }
  return 0;
}

template <typename T, int D>
int by_group(Params p, int batch, int max_seq_len, cudaStream_t st) {
  // 16 heads per block when the group is larger than 8 (the 32 KB of merge buffers of
  // head_dim 256 would not fit twice).
  if constexpr (D <= 128) {
    if (p.hq / p.hkv > 8) return launch<T, D, 2>(p, batch, max_seq_len, st);
  }
  return launch<T, D, 1>(p, batch, max_seq_len, st);
}

}  // namespace

extern "C" int msg_attention_decode(void* out, const void* q, int q_row_stride,
                                    const void* k_cache, const void* v_cache,
                                    const int32_t* page_table, int pt_stride,
                                    const int32_t* rows, const int32_t* seq_lens, int batch,
                                    int max_seq_len, int hq, int hkv, int head_dim,
                                    int page_size, float scale, int dtype, void* stream) {
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && hq > 0 && hkv > 0 && hq % hkv == 0 &&
                  page_size > 0 && max_seq_len >= 0,
              "msg_attention_decode: bad sizes batch=%d hq=%d hkv=%d page_size=%d", batch, hq,
              hkv, page_size);
  MSG_REQUIRE(q_row_stride % 8 == 0 && msg::aligned16_ptr(q) && msg::aligned16_ptr(k_cache) &&
                  msg::aligned16_ptr(v_cache),
              "msg_attention_decode: q rows and caches must be 16-byte aligned");
  if (batch == 0) return 0;
  int shift = -1;
  if ((page_size & (page_size - 1)) == 0) {
    shift = 0;
    while ((1 << shift) < page_size) shift++;
  }
  Params p{out, nullptr, nullptr, nullptr, q, k_cache, v_cache, page_table, rows, seq_lens,
           q_row_stride, pt_stride, hq, hkv, page_size, shift, 1, kDefaultMinKeys, 1,
           scale * kLog2e};
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_HALF(dtype, T,
    switch (head_dim) {
      case 64: return by_group<T, 64>(p, batch, max_seq_len, st);
      case 128: return by_group<T, 128>(p, batch, max_seq_len, st);
      case 256: return by_group<T, 256>(p, batch, max_seq_len, st);
      default: return msg::fail(msg::ERR_UNSUPPORTED,
                                "msg_attention_decode: head_dim %d (64, 128, 256)", head_dim);
    });
}
