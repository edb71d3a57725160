// attention_decode.cu — one query per request over its paged KV cache (flash-decoding on
// tensor cores).
//
// Work split. A "segment" is one request's keys for one group of q heads sharing a KV head
// (GQA: up to 8 heads, or 16 when the group is larger, so K/V are read once per group). The
// keys are cut into chunks of kRound = 64. Two kernels share the per-block math below:
// - balanced (MSG_DECODE_KERNEL=balanced or balanced-pf; not the default, see the figures
//   below): a grid of at most the resident block count; block i takes the chunks
//   [i C / G, (i + 1) C / G) of the concatenation of every segment's chunks (C in all, counted
//   on the device from the real seq_lens, before the PDL wait), so every block streams the
//   same number of keys whatever the lengths: no wave tail (512 equal blocks over 396 resident
//   slots ran 1.3 waves before), no idle blocks for short requests under a long max_seq_len,
//   and long segments spread over many blocks at batch 1. A block walks its range segment by
//   segment. A segment inside one block's range is written directly; a segment cut by block
//   boundaries leaves one (o, lse) partial per piece (slot 2 i + 1 for the piece of the block
//   where it starts, slot 2 i for a piece that started before block i's range) and the LAST
//   piece to arrive (an atomic counter per segment, reset by that block) merges them. G
//   depends only on the batch shape and max_seq_len, so graph replays launch the same grid.
// - grid (the default, auto): the earlier launch, grid (splits, head groups, requests);
//   the active splits of a request come from its real length, the others exit at once. Where
//   the grid has at most 2 blocks per SM (batch 1 in practice), auto runs it with two tiles per
//   warp in flight (grid-pf, as balanced-pf) for requests of at least kPfMinSeq keys.
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
// exp2 per (head, key) instead of one per lane. Page lookups for tile i+1 are issued before
// tile i's math so their latency hides behind it. (A variant that copied K/V through a
// cp.async ring in shared memory lost in every shape on an H200 and was removed, 2026-12-05.)
//
// fp8 cache (kv_dtype MSG_FP8_E4M3, template parameter KT = uint8_t): each of those loads
// reads the same 8 dims as 8 e4m3 bytes (8-byte loads, same element offsets), kept as loaded
// until the tile's math, where they are widened exactly (fp8.cuh) to f16, whatever T: the
// mma inputs are then f16 (MmaT), q rounded to f16 once per block, P packed as f16. Widening
// to f16 is one instruction a pair on sm_89+ (cvt.rn.f16x2.e4m3x2), to bf16 five: with bf16
// the fp8 kernel issued 1.5x the instructions of the 16-bit one and, at 3 warps per
// scheduler, stalled on them (ncu, H100, 2026-12-05, 256 ragged contexts: 48% of issue slots
// busy, 0.69 of copy bandwidth). Its tiles as loaded take half the registers, so the grid
// kernel runs 4 blocks per SM for fp8 (3 for 16-bit). Splits and block counts are planned in
// keys, as for 16-bit caches. Of copy bandwidth (bench/attention.ts --kv-cache-dtype fp8_e4m3,
// H100, page 1; bf16 widening, 3 blocks -> f16, 3 blocks -> f16, 4 blocks): bs1-ctx32k 0.55 ->
// 0.59 -> 0.59, bs64-ctx1k 0.60 -> 0.66 -> 0.77, bs64-ctx8k 0.87 -> 0.90 -> 0.81 (balanced:
// 0.91), bs256-ctx100-2k 0.69 -> 0.76 -> 0.82; qwen3-0.6b offline 23.0-23.5k -> 24.5k -> 25.5k
// tok/s. (Loading two tiles per warp at once, the bf16 widening, lost: 0.67 at bs256.)
//
// Measured, 32 q / 8 kv heads, hd 128, bf16, page 1, of copy bandwidth (bench/attention.ts):
// the grid kernel on an H200 (16 splits at batch 1), 2026-12-05: bs1-ctx32k 0.54, bs64-ctx1k
// 0.73, bs64-ctx8k 1.0. On an H100, 2026-12-05, grid / balanced / balanced-pf: bs1-ctx32k 0.741 /
// 0.706 / 0.772, bs64-ctx1k 0.894 / 0.867 / 0.886, bs64-ctx8k 0.983 / 0.966 / 0.973, 256 ragged
// contexts of 100-2048 keys 0.941 / 0.922 / 0.936; qwen3-0.6b end to end, batch 1 decode 1,035
// tok/s with grid and 977 with balanced-pf, offline 19.9k and 20.3k. So grid stays auto. With
// two tiles in flight at small grids (grid-pf, H100, session 23): bs1-ctx32k 0.819 (grid 0.772),
// the other shapes as grid; qwen3-0.6b batch 1 -0.3% (1,034-1,038 against 1,038-1,040).

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "fp8.cuh"
#include "pack.cuh"
#include "pdl.cuh"

namespace {

const int kWarps = 4;
const int kThreads = kWarps * 32;
const int kTile = 16;                  // keys per warp per step
const int kRound = kWarps * kTile;     // keys per block per step = one chunk
const int kMaxSplits = 64;             // grid kernel
const int kDefaultMinKeys = 128;       // grid: keys per active split; balanced: per block
// grid: requests of fewer keys take one split whatever min_keys allows: there the split merge
// costs more than the parallelism buys. qwen3-0.6b decode on an H100 (2026-12-05, bench latency
// --steps 128, one split for all against min_keys splits), tok/s at batch 1 / 8 / 32: contexts
// 16-160 1,157 / 6,616 / 24,399 against 1,137 / 6,492 / 24,508; 200-344 1,016 / 5,970 / 20,643
// against 1,001 / 5,859 / 20,663; 330-474 954 / 5,646 / 18,804 against 989 / 5,607 / 18,744;
// 450-594 899 / 5,337 / 17,217 against 965 / 5,544 / 17,247; 600-744 843 / 5,039 / 15,818 against
// 949 / 5,329 / 15,776.
const int kDefaultOneSplitBelow = 320;
// grid-pf: requests of fewer keys take the one-tile loop (H100, bs1 graph replays of 128 keys
// per block: seq 512 9.5 us one tile / 9.7 two, seq 4096 16.5 / 15.9; qwen3-0.6b batch 1
// decode ~0.6% slower with two tiles at its ~300-key contexts).
const int kPfMinSeq = 2048;
const int kBlockCostKeys = 64;         // grid: fixed cost of a block, in keys' worth of time
const int kMergeCostKeys = 2;          // grid: cost of merging one more split, in keys
// grid: splits at most when blocks <= 2 per SM (batch 1 in practice). H200, bs1-ctx32k, of copy
// bandwidth: 8 splits 0.33, 16 0.54, 32 0.61, 64 0.50 (two runs, 2026-12-05). Splits past a
// request's own length (min_keys each) exit at once, so short contexts keep their few splits.
const int kSmallMaxSplits = 32;
const size_t kScratch = 64u << 20;
const size_t kCounterBytes = 1u << 20; // per-segment arrival counters
const float kLog2e = 1.4426950408889634f;

struct Params {
  void* out;
  float* part_o;     // [pieces, HPB, D]
  float* part_lse;   // [pieces, HPB] (log2 units)
  int* counters;     // [batch * groups], zero between launches
  const void* q;
  const void* k;
  const void* v;
  const int32_t* page_table;
  const int32_t* rows;
  const int32_t* seq_lens;
  int q_row_stride, pt_stride, hq, hkv, page_size, page_shift;
  int batch;
  int groups;    // head groups (segments) per request: hkv x chunks of HPB heads
  int splits;    // grid kernel: splits per segment
  int min_keys;  // grid: keys per active split; balanced: keys per block (at least)
  int one_split_below;  // grid: requests of fewer keys take one split
  float scale;   // softmax scale * log2(e)
};

// Grid kernel: active splits of a request of `seq` keys and the keys of each (a multiple of
// kRound).
__device__ __forceinline__ void split_plan(int seq, int splits, int min_keys, int one_below,
                                           int* n, int* per) {
  int want = seq < one_below ? 1 : (seq + min_keys - 1) / min_keys;
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
__device__ __forceinline__ uint2 ld_stream8(const void* p) {
  uint2 r;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}
// 8 consecutive cache elements of KT as loaded: 16 bytes of T (KT = T) or 8 e4m3 bytes
// (KT = uint8_t), and (vec8) as the 16-byte vector of the mma element type E (MmaT below).
template <typename KT>
using Raw8 = typename std::conditional<sizeof(KT) == 1, uint2, uint4>::type;
template <typename KT>
__device__ __forceinline__ Raw8<KT> ld_kv8(const KT* p) {
  if constexpr (sizeof(KT) == 1) {
    return ld_stream8(p);
  } else {
    return ld_stream(p);
  }
}
template <typename E>
__device__ __forceinline__ uint4 vec8(const uint4& v) { return v; }
template <typename E>
__device__ __forceinline__ uint4 vec8(const uint2& v) { return msg::e4m3x8_to<E>(v); }

template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);

// The element type of the mma inputs: T, or f16 for an fp8 cache (top of the file). q is
// rounded to f16 saturating (|q| > 65504 is clamped; below 2^-14 it keeps fewer bits); P in
// [0, 1] as f16 is finer than as bf16.
template <typename T, typename KT>
using MmaT = typename std::conditional<sizeof(KT) == 1, __half, T>::type;
/** Two values of T (a packed pair) as two values of E. */
template <typename E, typename T>
__device__ __forceinline__ uint32_t pair_as(uint32_t x) {
  if constexpr (std::is_same<E, T>::value) {
    return x;
  } else {
    auto sat = [](float v) { return isnan(v) ? v : fminf(fmaxf(v, -65504.f), 65504.f); };
    return pack2<E>(sat(msg::to_f(reinterpret_cast<const T*>(&x)[0])),
                    sat(msg::to_f(reinterpret_cast<const T*>(&x)[1])));
  }
}
template <typename R>
__device__ __forceinline__ R zero8() {
  R z;
  z.x = z.y = 0;
  if constexpr (sizeof(R) == 16) z.z = z.w = 0;
  return z;
}
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

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

// Slots of the tile at key kb of a share ending at `end`, for lane (r, t): K keys r, 8 + r;
// V keys 2t, 2t+1, 2t+8, 2t+9 (-1: past end).
__device__ __forceinline__ void tile_slots(const int32_t* pt, int kb, int end, int ps, int shift,
                                           int r, int t, int* sk, int* sv) {
#pragma unroll
  for (int j = 0; j < 2; j++) {
    int key = kb + 8 * j + r;
    sk[j] = key < end ? slot_of(pt, key, ps, shift) : -1;
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int key = kb + 2 * t + (i & 1) + 8 * (i >> 1);
    sv[i] = key < end ? slot_of(pt, key, ps, shift) : -1;
  }
}

// Shared memory of a block: the warps' states for the in-block merge, the piece merge's
// weights.
template <int D, int HPB>
struct Smem {
  float acc[kWarps][HPB][D];
  float m[kWarps][HPB], l[kWarps][HPB];
  float mu[HPB], tot[HPB];
  float w[HPB][32];
  long long scan[kWarps];
  long long found_base;
  int found;
  int last;
};

// The keys [start, end) of request b for the q heads h0 .. h0 + nh - 1 (sharing KV head kvh),
// with the first tile's slots in sk/sv. Writes out (whole) or the partial `pidx`, then
// returns after a __syncthreads (shared memory free again). Called after the PDL wait. PF
// compiles the loop with two tiles per warp in flight, taken where `pf` (uniform per block).
// KT: the cache element, T or uint8_t (e4m3 bytes, widened to T at the tile's math).
template <typename T, typename KT, int D, int NT, bool PF>
__device__ __forceinline__ void attend(const Params& a, Smem<D, 8 * NT>& sh, int b, int kvh,
                                       int h0, int nh, int start, int end, int* sk, int* sv,
                                       bool whole, size_t pidx, bool pf = PF) {
  constexpr int KC = D / 32, VC = D / 64, MT = D / 16, HPB = 8 * NT;
  using E = MmaT<T, KT>;
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
  const KT* kbase = (const KT*)a.k + (size_t)kvh * D;
  const KT* vbase = (const KT*)a.v + (size_t)kvh * D;
  const size_t sstride = (size_t)a.hkv * D;

  // Q fragments: qa[rb][ks][0] = dims (2t, 2t+1) of k-step ks for head r + 8 rb, [1] = +8.
  uint32_t qa[NT][MT][2];
#pragma unroll
  for (int rb = 0; rb < NT; rb++) {
    const T* qrow = (const T*)a.q + (size_t)b * a.q_row_stride + (size_t)(h0 + r + 8 * rb) * D;
#pragma unroll
    for (int c = 0; c < KC; c++) {
      uint4 v = r + 8 * rb < nh ? *reinterpret_cast<const uint4*>(qrow + 32 * c + 8 * t)
                                : make_uint4(0, 0, 0, 0);
      qa[rb][2 * c][0] = pair_as<E, T>(v.x);
      qa[rb][2 * c][1] = pair_as<E, T>(v.y);
      qa[rb][2 * c + 1][0] = pair_as<E, T>(v.z);
      qa[rb][2 * c + 1][1] = pair_as<E, T>(v.w);
    }
  }

  // A tile as loaded (8 elements of KT per entry; vec8 gives 16 bytes of E).
  using R = Raw8<KT>;
  using KRegs = R[2][KC];
  using VRegs = R[4][VC];
  auto load_tile = [&](KRegs& kr, VRegs& vr, const int* sk, const int* sv) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
      const KT* p = kbase + (size_t)sk[j] * sstride + 8 * t;
#pragma unroll
      for (int c = 0; c < KC; c++) kr[j][c] = sk[j] >= 0 ? ld_kv8(p + 32 * c) : zero8<R>();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const KT* p = vbase + (size_t)sv[i] * sstride + 8 * r;
#pragma unroll
      for (int c = 0; c < VC; c++) vr[i][c] = sv[i] >= 0 ? ld_kv8(p + 64 * c) : zero8<R>();
    }
  };
  auto compute = [&](const KRegs& kr, const VRegs& vr, int kb) {
    // S: s[j][0..1] = head r, keys kb + 8j + 2t + {0,1}; s[j][2..3] = head r + 8.
    float s[2][4];
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
      for (int e = 0; e < 4; e++) s[j][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < MT; ks++) {
        const uint4 kv = vec8<E>(kr[j][ks / 2]);
        uint32_t b0 = word(kv, 2 * (ks & 1)), b1 = word(kv, 2 * (ks & 1) + 1);
        mma<E>(s[j], qa[0][ks][0], NT > 1 ? qa[NT - 1][ks][0] : 0u, qa[0][ks][1],
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
      pb[rb][0] = pack2<E>(p[0][0], p[0][1]);
      pb[rb][1] = pack2<E>(p[1][0], p[1][1]);
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
    for (int c = 0; c < VC; c++) {
      const uint4 v0 = vec8<E>(vr[0][c]), v1 = vec8<E>(vr[1][c]);
      const uint4 v2 = vec8<E>(vr[2][c]), v3 = vec8<E>(vr[3][c]);
#pragma unroll
      for (int w = 0; w < 4; w++) {
        const int i = 4 * c + w;
        uint32_t x0 = word(v0, w), x1 = word(v1, w), x2 = word(v2, w), x3 = word(v3, w);
        uint32_t a0 = __byte_perm(x0, x1, 0x5410), a1 = __byte_perm(x0, x1, 0x7632);
        uint32_t a2 = __byte_perm(x2, x3, 0x5410), a3 = __byte_perm(x2, x3, 0x7632);
#pragma unroll
        for (int rb = 0; rb < NT; rb++) mma<E>(acc[i][rb], a0, a1, a2, a3, pb[rb][0], pb[rb][1]);
      }
    }
  };
  const int kb0 = start + warp * kTile;
  if (PF && pf) {
    // Two tiles per warp in flight: tile i + 1's loads are issued before tile i's math, and
    // the slots of tile i + 2 are looked up then (a load's address must not wait on its
    // page-table read at issue).
    KRegs kr;
    VRegs vr;
    if (kb0 < end) load_tile(kr, vr, sk, sv);
    if (kb0 + kRound < end) tile_slots(pt, kb0 + kRound, end, a.page_size, a.page_shift, r, t, sk, sv);
    for (int kb = kb0; kb < end; kb += kRound) {
      KRegs kn;
      VRegs vn;
      const bool more = kb + kRound < end;
      if (more) {
        load_tile(kn, vn, sk, sv);
        if (kb + 2 * kRound < end) {
          tile_slots(pt, kb + 2 * kRound, end, a.page_size, a.page_shift, r, t, sk, sv);
        }
      }
      compute(kr, vr, kb);
      if (more) {
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
          for (int c = 0; c < KC; c++) kr[j][c] = kn[j][c];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int c = 0; c < VC; c++) vr[i][c] = vn[i][c];
      }
    }
  } else {
    for (int kb = kb0; kb < end; kb += kRound) {
      KRegs kr;
      VRegs vr;
      load_tile(kr, vr, sk, sv);
      if (kb + kRound < end) tile_slots(pt, kb + kRound, end, a.page_size, a.page_shift, r, t, sk, sv);
      compute(kr, vr, kb);
    }
  }

  // Merge the 4 warps in shared memory.
#pragma unroll
  for (int rb = 0; rb < NT; rb++) {
    l[rb] += __shfl_xor_sync(0xffffffffu, l[rb], 1);
    l[rb] += __shfl_xor_sync(0xffffffffu, l[rb], 2);
    if (t == 0) {
      sh.m[warp][r + 8 * rb] = m[rb];
      sh.l[warp][r + 8 * rb] = l[rb];
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
      int d = 64 * (i / 4) + 8 * r + 2 * (i % 4);
      int h = 8 * rb + 2 * t;
      sh.acc[warp][h][d] = acc[i][rb][0];
      sh.acc[warp][h + 1][d] = acc[i][rb][1];
      sh.acc[warp][h][d + 1] = acc[i][rb][2];
      sh.acc[warp][h + 1][d + 1] = acc[i][rb][3];
    }
  }
  __syncthreads();
  for (int i = tid; i < nh * D; i += kThreads) {
    int g = i / D, d = i % D;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) mm = fmaxf(mm, sh.m[w][g]);
    float mu = mm == -INFINITY ? 0.f : mm, ls = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      float c = exp2f(sh.m[w][g] - mu);
      ls += sh.l[w][g] * c;
      o += sh.acc[w][g][d] * c;
    }
    if (whole) {
      size_t row = (size_t)b * a.hq + h0 + g;
      ((T*)a.out)[row * D + d] = msg::from_f<T>(ls > 0.f ? o / ls : 0.f);
    } else {
      size_t idx = pidx * HPB + g;
      a.part_o[idx * D + d] = ls > 0.f ? o / ls : 0.f;
      if (d == 0) a.part_lse[idx] = ls > 0.f ? mm + log2f(ls) : -INFINITY;
    }
  }
  __syncthreads();
}

// After a partial of segment `seg` was written: counts this piece in and, when it is the last
// of the segment's `np` pieces to arrive, merges them (piece p at partial slot pidx(p)) into
// out rows of request b, heads h0 .. h0 + nh - 1. Every thread of the block calls it.
template <typename T, int D, int NT, typename Slot>
__device__ __forceinline__ void arrive_and_merge(const Params& a, Smem<D, 8 * NT>& sh, size_t seg,
                                                 int np, int b, int h0, int nh, Slot pidx) {
  constexpr int HPB = 8 * NT;
  const int tid = threadIdx.x;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int* cnt = a.counters + seg;
    int old = atomicAdd(cnt, 1);
    sh.last = old == np - 1;
    if (sh.last) *cnt = 0;  // every piece has arrived: ready for the next launch
  }
  __syncthreads();
  if (!sh.last) return;
  __threadfence();
  // The partials are in L2 (__ldcg). Head g's weights: 2^(lse_p - max) over the pieces.
  for (int g = tid; g < nh; g += kThreads) {
    float mm = -INFINITY;
#pragma unroll 8
    for (int p = 0; p < np; p++) mm = fmaxf(mm, __ldcg(a.part_lse + pidx(p) * HPB + g));
    float mu = mm == -INFINITY ? 0.f : mm, tot = 0.f;
#pragma unroll 8
    for (int p = 0; p < np; p++) tot += exp2f(__ldcg(a.part_lse + pidx(p) * HPB + g) - mu);
    sh.mu[g] = mu;
    sh.tot[g] = tot;
  }
  // Each thread owns float4s tid, tid + kThreads, ... of the nh x D outputs (at most
  // HPB * D / 4 / kThreads of them); pieces go 32 at a time through shared memory weights, their
  // loads 8 pieces deep (16-byte loads: a segment of batch 1 can have ~50 pieces).
  constexpr int kPer = (HPB * D / 4 + kThreads - 1) / kThreads;
  const int n4 = nh * D / 4;
  float4 o[kPer];
#pragma unroll
  for (int e = 0; e < kPer; e++) o[e] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int p0 = 0; p0 < np; p0 += 32) {
    const int n = min(32, np - p0);
    __syncthreads();
    for (int i = tid; i < nh * 32; i += kThreads) {
      int g = i / 32, j = i % 32;
      sh.w[g][j] = j < n ? exp2f(__ldcg(a.part_lse + pidx(p0 + j) * HPB + g) - sh.mu[g]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kPer; e++) {
      const int f = tid + e * kThreads, g = f / (D / 4);
      if (f >= n4) continue;
#pragma unroll 8
      for (int j = 0; j < n; j++) {
        const float4 x =
            __ldcg(reinterpret_cast<const float4*>(a.part_o + pidx(p0 + j) * HPB * D) + f);
        const float w = sh.w[g][j];
        o[e].x += w * x.x;
        o[e].y += w * x.y;
        o[e].z += w * x.z;
        o[e].w += w * x.w;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kPer; e++) {
    const int f = tid + e * kThreads, g = f / (D / 4);
    if (f >= n4) continue;
    const float inv = sh.tot[g] > 0.f ? 1.f / sh.tot[g] : 0.f;
    T* dst = (T*)a.out + ((size_t)b * a.hq + h0) * D + (size_t)f * 4;
    dst[0] = msg::from_f<T>(o[e].x * inv);
    dst[1] = msg::from_f<T>(o[e].y * inv);
    dst[2] = msg::from_f<T>(o[e].z * inv);
    dst[3] = msg::from_f<T>(o[e].w * inv);
  }
  __syncthreads();
}

// The q heads of head group y (of a.groups per request): KV head, first head, head count.
__device__ __forceinline__ void group_heads(const Params& a, int y, int* kvh, int* h0, int* nh,
                                            int hpb) {
  const int group = a.hq / a.hkv, chunks = (group + hpb - 1) / hpb;
  *kvh = y / chunks;
  *h0 = *kvh * group + (y % chunks) * hpb;
  *nh = min(hpb, *kvh * group + group - *h0);
}

// The grid kernel: block (split, y, b). PF: two tiles per warp in flight (attend), at two
// blocks per SM; otherwise 3 (4 for fp8 caches) at head_dim <= 128 and one row block.
template <typename T, typename KT, int D, int NT, bool PF>
__global__ void __launch_bounds__(kThreads,
                                  PF ? 2 : D >= 256 ? 1 : (NT == 1 ? (sizeof(KT) == 1 ? 4 : 3) : 2))
    decode_grid_kernel(Params a) {
  // Launched with programmatic dependent launch (pdl.cuh): resident while the kernel before it
  // (rope + KV store) finishes. Before the wait it reads only what kernels at least two back
  // wrote (pdl.cuh's rule): seq_lens, rows and the page table. q and every K/V (the newest key's
  // are written by the kernel just before) are read after the wait.
  __shared__ Smem<D, 8 * NT> sh;
  const int split = blockIdx.x, y = blockIdx.y, b = blockIdx.z;
  int kvh, h0, nh;
  group_heads(a, y, &kvh, &h0, &nh, 8 * NT);
  const int seq = a.seq_lens[b];
  int nact, per;
  split_plan(seq, a.splits, a.min_keys, a.one_split_below, &nact, &per);
  if (split >= nact) return;  // split 0 always waits (pdl.cuh's rule)
  const int start = split * per, end = min(start + per, seq);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int sk[2], sv[4];
  tile_slots(a.page_table + (size_t)a.rows[b] * a.pt_stride, start + warp * kTile, end,
             a.page_size, a.page_shift, lane >> 2, lane & 3, sk, sv);
  msg::pdl_wait();
  msg::pdl_trigger();
  // ld_stream(8) is a plain asm (no memory clobber), free to move above the wait while its
  // address depends only on pre-wait values: the first tile's slots pass through an empty
  // volatile asm here so that its K/V loads stay after the wait.
#pragma unroll
  for (int j = 0; j < 2; j++) asm volatile("" : "+r"(sk[j])::"memory");
#pragma unroll
  for (int i = 0; i < 4; i++) asm volatile("" : "+r"(sv[i])::"memory");
  const size_t seg = (size_t)b * a.groups + y;
  attend<T, KT, D, NT, PF>(a, sh, b, kvh, h0, nh, start, end, sk, sv, nact == 1,
                           seg * a.splits + split, seq >= kPfMinSeq);
  if (nact == 1) return;
  arrive_and_merge<T, D, NT>(a, sh, seg, nact, b, h0, nh,
                             [&](int p) { return seg * a.splits + p; });
}

// Requests of no keys get zeros (they have no chunks): blocks take them in turn. After the wait.
template <typename T, int D>
__device__ __forceinline__ void zero_empty_rows(const Params& a) {
  for (int i = blockIdx.x; i < a.batch; i += gridDim.x) {
    if (a.seq_lens[i] != 0) continue;
    T* o = (T*)a.out + (size_t)i * a.hq * D;
    for (int e = threadIdx.x; e < a.hq * D; e += kThreads) o[e] = msg::from_f<T>(0.f);
  }
}

// Chunks of a request of `seq` keys per head group.
__device__ __forceinline__ int chunks_of(int seq) { return (seq + kRound - 1) / kRound; }

// Block-wide exclusive scan of v over the block's threads; returns the prefix, total in *sum.
__device__ __forceinline__ long long block_scan(long long v, long long* scan, long long* sum) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  long long x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    long long y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) scan[warp] = x;
  __syncthreads();
  long long before = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; w++) {
    before += w < warp ? scan[w] : 0;
    total += scan[w];
  }
  __syncthreads();
  *sum = total;
  return before + x - v;
}

// The balanced kernel: blocks 0 .. gridDim.x - 1 share the chunks evenly (top of the file).
// PF: two tiles per warp in flight (attend), at two blocks per SM.
template <typename T, typename KT, int D, int NT, bool PF>
__global__ void __launch_bounds__(kThreads, PF ? 2 : D >= 256 ? 1 : (NT == 1 ? 3 : 2))
    decode_balanced_kernel(Params a) {
  // PDL as in the grid kernel: seq_lens, rows and the page table before the wait.
  __shared__ Smem<D, 8 * NT> sh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int Y = a.groups;
  // Total chunks C and requests with keys: one pass over seq_lens.
  long long c_all = 0, busy = 0;
  for (int i0 = 0; i0 < a.batch; i0 += kThreads) {
    int i = i0 + tid;
    int n = i < a.batch ? chunks_of(a.seq_lens[i]) : 0;
    long long s1, s2;
    block_scan((long long)n * Y, sh.scan, &s1);
    block_scan(n > 0 ? 1 : 0, sh.scan, &s2);
    c_all += s1;
    busy += s2;
  }
  // Blocks in use: at least min_keys keys each, but no fewer than the busy segments.
  long long want = (c_all * kRound + a.min_keys - 1) / a.min_keys;
  if (want < busy * Y) want = busy * Y;
  if (want > c_all) want = c_all;
  const long long G = want < (long long)gridDim.x ? want : (long long)gridDim.x;
  const long long blk = blockIdx.x;
  if (blk >= G) {  // no chunks for this block
    msg::pdl_wait();
    zero_empty_rows<T, D>(a);
    return;
  }
  const long long c0 = blk * c_all / G, c1 = (blk + 1) * c_all / G;
  // The request holding chunk c0: exclusive prefix P[b] <= c0 < P[b] + n_b Y.
  if (tid == 0) sh.found = -1;
  long long carry = 0;
  for (int i0 = 0; i0 < a.batch; i0 += kThreads) {
    int i = i0 + tid;
    long long n = i < a.batch ? (long long)chunks_of(a.seq_lens[i]) * Y : 0, tile;
    long long pre = carry + block_scan(n, sh.scan, &tile);
    if (n > 0 && pre <= c0 && c0 < pre + n) {
      sh.found = i;
      sh.found_base = pre;
    }
    carry += tile;
    __syncthreads();
    if (sh.found >= 0) break;
  }
  int b = sh.found;
  long long pb = sh.found_base;  // first chunk of request b
  int seq = a.seq_lens[b], nc = chunks_of(seq);
  int y = (int)((c0 - pb) / nc), cs = (int)((c0 - pb) % nc);
  long long c = c0;
  // The piece of the current segment in this block's range: chunks [cs, ce), keys [.., kend).
  int ce, kend, kvh, h0, nh, sk[2], sv[4];
  auto next_piece = [&]() {
    ce = (int)min((long long)nc, cs + (c1 - c));
    kend = min(ce * kRound, seq);
    group_heads(a, y, &kvh, &h0, &nh, 8 * NT);
    tile_slots(a.page_table + (size_t)a.rows[b] * a.pt_stride, cs * kRound + warp * kTile, kend,
               a.page_size, a.page_shift, lane >> 2, lane & 3, sk, sv);
  };
  next_piece();
  msg::pdl_wait();
  msg::pdl_trigger();
  zero_empty_rows<T, D>(a);
  // See the grid kernel: the first tile's K/V loads stay after the wait.
#pragma unroll
  for (int j = 0; j < 2; j++) asm volatile("" : "+r"(sk[j])::"memory");
#pragma unroll
  for (int i = 0; i < 4; i++) asm volatile("" : "+r"(sv[i])::"memory");
  // Block i's first chunk: i C / G; the block holding chunk c is the last i with that <= c.
  auto block_of = [&](long long c) {
    long long i = ((c + 1) * G - 1) / c_all;
    return i < G ? i : G - 1;
  };
  for (;;) {
    const long long s0 = pb + (long long)y * nc;  // the segment's first chunk
    const long long i0 = block_of(s0), i1 = block_of(s0 + nc - 1);
    const int np = (int)(i1 - i0 + 1);
    const size_t slot = 2 * (size_t)blk + (s0 < c0 ? 0 : 1);
    attend<T, KT, D, NT, PF>(a, sh, b, kvh, h0, nh, cs * kRound, kend, sk, sv, np == 1, slot);
    if (np > 1) {
      arrive_and_merge<T, D, NT>(a, sh, (size_t)b * Y + y, np, b, h0, nh, [&](int p) {
        return 2 * (size_t)(i0 + p) + (p == 0 ? 1 : 0);
      });
    }
    c += ce - cs;
    if (c >= c1) break;
    // The next segment: the next head group, or the next request with keys.
    cs = 0;
    if (++y == Y) {
      y = 0;
      pb += (long long)nc * Y;
      do {
        seq = a.seq_lens[++b];
        nc = chunks_of(seq);
      } while (nc == 0);
    }
    next_piece();
  }
}

// Scratch buffers whose counters were zeroed (per device): the counters then stay zero
// between launches because the last block of each segment resets its own.
std::mutex g_zero_mu;
void* g_zeroed[64];

// Tuning knobs for benchmarks and tests, read per call: MSG_DECODE_KERNEL (balanced |
// balanced-pf: two tiles per warp in flight, head_dim <= 128 and at most 8 heads per block,
// else balanced | grid | grid-pf: the same for grid | unset or auto: grid, grid-pf at small
// batches), MSG_DECODE_SPLIT_KEYS (grid: minimum keys per active split;
// balanced: per block; default kDefaultMinKeys), MSG_DECODE_ONE_SPLIT_BELOW (grid: requests
// of fewer keys take one split; default kDefaultOneSplitBelow, 0 = none), MSG_DECODE_SPLITS
// (grid: force the splits), MSG_DECODE_BLOCKS (balanced: force the grid size).
int env_int(const char* name) {
  const char* e = getenv(name);
  return e ? atoi(e) : 0;
}

// Resident blocks per SM of a kernel (computed once; 0 when it cannot run).
template <typename K>
int blocks_per_sm(K kernel) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// The per-device scratch (counters zeroed on first use, outside graph capture).
int scratch(Params* p, size_t bytes, cudaStream_t st) {
  void* ws = nullptr;
  if (bytes > kScratch) return msg::fail(msg::ERR_ARG, "msg_attention_decode: scratch too small");
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
  p->counters = (int*)ws;
  return 0;
}

template <typename T, typename KT, int D, int NT>
int launch(Params p, int batch, int max_seq_len, cudaStream_t st) {
  constexpr int HPB = 8 * NT;
  // Two tiles in flight per warp (balanced-pf) only where the registers allow.
  constexpr bool kPrefetchable = NT == 1 && D <= 128;
  const int group = p.hq / p.hkv, chunks = (group + HPB - 1) / HPB;
  p.groups = p.hkv * chunks;
  p.batch = batch;
  const long long segments = (long long)batch * p.groups;
  const size_t piece_bytes = (size_t)HPB * (D + 1) * sizeof(float);
  static const int per_sm_grid = blocks_per_sm(decode_grid_kernel<T, KT, D, NT, false>);
  static const int per_sm_bal = blocks_per_sm(decode_balanced_kernel<T, KT, D, NT, false>);
  static const int per_sm_pf =
      blocks_per_sm(decode_balanced_kernel<T, KT, D, NT, kPrefetchable>);
  const int sms = msg::sm_count();
  int keys = env_int("MSG_DECODE_SPLIT_KEYS");
  if (keys < 16) keys = kDefaultMinKeys;
  p.min_keys = keys;
  const char* one = getenv("MSG_DECODE_ONE_SPLIT_BELOW");
  p.one_split_below = one && *one ? atoi(one) : kDefaultOneSplitBelow;
  // auto runs the grid kernel, with two tiles in flight at small batches (the figures at the
  // top of the file).
  const char* kind = getenv("MSG_DECODE_KERNEL");
  const bool is_auto = kind == nullptr || *kind == 0 || strcmp(kind, "auto") == 0;
  const bool grid_pf = kind != nullptr && strcmp(kind, "grid-pf") == 0;
  bool grid = is_auto || grid_pf || strcmp(kind, "grid") == 0;
  const bool bal_pf = kind != nullptr && strcmp(kind, "balanced-pf") == 0;
  if (!grid && strcmp(kind, "balanced") != 0 && !bal_pf) {
    return msg::fail(msg::ERR_ARG,
                     "MSG_DECODE_KERNEL=%s: auto, balanced, balanced-pf, grid or grid-pf", kind);
  }
  const bool pf = kPrefetchable && bal_pf;
  // Counters of more segments than fit: the grid kernel at one split (no merge).
  if ((size_t)segments * sizeof(int) > kCounterBytes) grid = true;

  if (!grid) {
    // As many blocks as are resident at once, never more than there are chunks.
    const int per_sm = pf ? per_sm_pf : per_sm_bal;
    long long g = (long long)sms * (per_sm > 0 ? per_sm : 1);
    long long upper = segments * ((max_seq_len + kRound - 1) / kRound);
    if (g > upper) g = upper;
    int forced = env_int("MSG_DECODE_BLOCKS");
    if (forced > 0) g = forced;
    if (g > 65535) g = 65535;
    if (g < 1) g = 1;
    int rc = scratch(&p, kCounterBytes + 2 * (size_t)g * piece_bytes, st);
    if (rc) return rc;
    p.part_o = (float*)((char*)p.counters + kCounterBytes);
    p.part_lse = p.part_o + 2 * (size_t)g * HPB * D;
    if (pf) {
      MSG_CUDA(msg::launch_pdl(decode_balanced_kernel<T, KT, D, NT, kPrefetchable>,
                               dim3((unsigned)g), dim3(kThreads), 0, st, p));
    } else {
      MSG_CUDA(msg::launch_pdl(decode_balanced_kernel<T, KT, D, NT, false>, dim3((unsigned)g),
                               dim3(kThreads), 0, st, p));
    }
    return 0;
  }

  // Grid kernel. Up to 2 blocks per SM: as many splits as give about 2 blocks per SM, at most
  // kSmallMaxSplits. Larger batches: blocks of equal lengths do equal work, so time ~ waves x
  // (keys per split + a fixed cost per block, in keys) with waves = ceil(blocks / resident
  // blocks), plus the merge's reads per split. Never more splits than the longest sequence
  // can use with `keys` keys each.
  const int base_blocks = (int)segments;
  int cap = sms * (per_sm_grid > 0 ? per_sm_grid : 2);
  if (cap < 1) cap = 1;
  int by_len = (max_seq_len + keys - 1) / keys;
  if (by_len > kMaxSplits) by_len = kMaxSplits;
  int splits = 1;
  // Few blocks (batch 1 in practice): they stream long shares, so two tiles per warp in flight
  // pay; auto then runs the PF kernel (at most 2 blocks per SM are launched here anyway).
  const bool small = base_blocks <= 2 * sms;
  const bool gpf = kPrefetchable && (grid_pf || (is_auto && small));
  if (small) {
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
  int forced = env_int("MSG_DECODE_SPLITS");
  if (forced > 0) splits = forced < kMaxSplits ? forced : kMaxSplits;
  if ((size_t)segments * sizeof(int) > kCounterBytes) splits = 1;
  if (splits > 1 && kCounterBytes + (size_t)segments * splits * piece_bytes > kScratch) {
    splits = (int)((kScratch - kCounterBytes) / ((size_t)segments * piece_bytes));
  }
  if (splits < 1) splits = 1;
  p.splits = splits;
  if (splits > 1) {
    int rc = scratch(&p, kCounterBytes + (size_t)segments * splits * piece_bytes, st);
    if (rc) return rc;
    p.part_o = (float*)((char*)p.counters + kCounterBytes);
    p.part_lse = p.part_o + (size_t)segments * splits * HPB * D;
  }
  dim3 grid_dim(splits, p.groups, batch);
  if (gpf) {
    MSG_CUDA(msg::launch_pdl(decode_grid_kernel<T, KT, D, NT, kPrefetchable>, grid_dim,
                             dim3(kThreads), 0, st, p));
  } else {
    MSG_CUDA(msg::launch_pdl(decode_grid_kernel<T, KT, D, NT, false>, grid_dim, dim3(kThreads),
                             0, st, p));
  }
  return 0;
}

template <typename T, typename KT, int D>
int by_group(Params p, int batch, int max_seq_len, cudaStream_t st) {
  // 16 heads per block when the group is larger than 8 (the 32 KB of merge buffers of
  // head_dim 256 would not fit twice).
  if constexpr (D <= 128) {
    if (p.hq / p.hkv > 8) return launch<T, KT, D, 2>(p, batch, max_seq_len, st);
  }
  return launch<T, KT, D, 1>(p, batch, max_seq_len, st);
}

template <typename T, typename KT>
int by_head_dim(Params p, int head_dim, int batch, int max_seq_len, cudaStream_t st) {
  switch (head_dim) {
    case 64: return by_group<T, KT, 64>(p, batch, max_seq_len, st);
    case 128: return by_group<T, KT, 128>(p, batch, max_seq_len, st);
    case 256: return by_group<T, KT, 256>(p, batch, max_seq_len, st);
    default: return msg::fail(msg::ERR_UNSUPPORTED,
                              "msg_attention_decode: head_dim %d (64, 128, 256)", head_dim);
  }
}

}  // namespace

extern "C" int msg_attention_decode(void* out, const void* q, int q_row_stride,
                                    const void* k_cache, const void* v_cache,
                                    const int32_t* page_table, int pt_stride,
                                    const int32_t* rows, const int32_t* seq_lens, int batch,
                                    int max_seq_len, int hq, int hkv, int head_dim,
                                    int page_size, float scale, int dtype, int kv_dtype,
                                    void* stream) {
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && hq > 0 && hkv > 0 && hq % hkv == 0 &&
                  page_size > 0 && max_seq_len >= 0,
              "msg_attention_decode: bad sizes batch=%d hq=%d hkv=%d page_size=%d", batch, hq,
              hkv, page_size);
  if (kv_dtype != dtype && kv_dtype != MSG_FP8_E4M3) {
    return msg::fail(msg::ERR_UNSUPPORTED,
                     "msg_attention_decode: kv_dtype %d (the dtype %s, or fp8 e4m3)", kv_dtype,
                     msg::dtype_name(dtype));
  }
  const bool fp8 = kv_dtype == MSG_FP8_E4M3;
  // Cache rows (hkv * head_dim elements, head_dim >= 64) keep the base's alignment; the loads
  // are 16 bytes (16-bit caches) or 8 bytes (fp8).
  const uintptr_t kv_align = fp8 ? 8 : 16;
  MSG_REQUIRE(q_row_stride % 8 == 0 && msg::aligned16_ptr(q) &&
                  ((uintptr_t)k_cache % kv_align) == 0 && ((uintptr_t)v_cache % kv_align) == 0,
              "msg_attention_decode: q rows must be 16-byte aligned, the caches %d-byte aligned",
              (int)kv_align);
  if (batch == 0) return 0;
  int shift = -1;
  if ((page_size & (page_size - 1)) == 0) {
    shift = 0;
    while ((1 << shift) < page_size) shift++;
  }
  Params p{out, nullptr, nullptr, nullptr, q, k_cache, v_cache, page_table, rows, seq_lens,
           q_row_stride, pt_stride, hq, hkv, page_size, shift, batch, 1, 1, kDefaultMinKeys,
           kDefaultOneSplitBelow, scale * kLog2e};
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_HALF(dtype, T,
    if (fp8) return by_head_dim<T, uint8_t>(p, head_dim, batch, max_seq_len, st);
    return by_head_dim<T, T>(p, head_dim, batch, max_seq_len, st););
}
