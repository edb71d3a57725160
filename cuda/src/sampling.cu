// sampling.cu — msg_sample and msg_uniform: greedy, temperature, top-k, top-p, min-p and a
// seeded inverse-CDF draw in index order, with no sort and no host round trip (graph-safe:
// every decision is made on the device from the params array; scratch is per device).
//
// The rule (minisgl.h) is integer arithmetic on 40-bit fixed-point weights q_i, so any
// split of the work gives the same sums. Each row is cut into C chunks (a block of 256
// threads each; C grows when rows are few, so that ~600 blocks fill the GPU):
//   scan    (C x rows)  max/argmax, logsumexp parts and, with top-k, a count histogram of the
//                       top 11 bits of the logit's order key; the last block of a row (ticket)
//                       reduces them, finishes greedy rows and picks the top-k boundary bin.
//   gather  (C x rows)  top-k rows: indices of the boundary bin (and above, when that set
//                       fits the 8192-entry buffer) into the row's buffer.
//   finish_k (rows)     small top-k sets: everything (top-k, top-p, min-p, draw) by radix
//                       selection over the buffer; larger ones: only the top-k cut.
//   weigh   (C x rows)  other rows: per-chunk sums of q (the draw's mass) or, with top-p, a
//                       histogram of q over 512 z-buckets (u32 limbs in shared memory: no
//                       64-bit shared atomics); the last block finds the top-p bucket.
//   split   (C x rows)  top-p rows: chunk sums of the kept tokens above that bucket, and the
//                       bucket's tokens into the buffer.
//   draw    (rows)      top-p cut inside the bucket, then the chunk that holds u * Q, then an
//                       ordered scan of that chunk.
// Greedy = 1 pass (params NULL: only scan is launched; otherwise the other kernels exit at
// once for greedy rows); temperature only = 2 passes over the logits; top-p = 3; small
// top-k = 2. A buffer that overflows (huge ties) falls back to scanning the whole row in one
// block: slow, exact.
// Weights use sample_exp (explicit fmaf), identical to cuda/cpu/sampling.cpp.
#include <mutex>

#include "common.cuh"

namespace {

const int kThreads = 256;       // chunk kernels
const int kRowThreads = 1024;   // per-row kernels
const int kCap = 8192;          // buffer entries per row
const int kKBins = 2048;        // top-k histogram: top 11 bits of the order key
const int kPBins = 512;         // top-p histogram: z buckets
const int kMaxChunks = 1024;
enum { MODE_DONE = 0, MODE_SMALL = 1, MODE_KGATHER = 2, MODE_LARGE = 3 };

/** Per-row state in scratch; zero-initialized once, and the fields that later calls rely
 *  on being zero (gcount, ticket) are reset by the kernels that use them. */
struct RowState {
  float M, lse, zmax;
  int top, mode, bk, bp, gcount;
  unsigned ticket, pad;
  unsigned long long above, cut_k, tp, base;
};

/** Where a row's scratch lies: RowState | hk[2048] u32 | hp[512] u64 | buf[kCap] i32 |
 *  cq[kMaxChunks] u64 | cm, cs (f32), ci (i32) [kMaxChunks]. The stride depends on nothing,
 *  so calls with other shapes find zeroed histograms where they expect them. */
const size_t kOffHk = 256, kOffHp = kOffHk + kKBins * 4, kOffBuf = kOffHp + kPBins * 8,
             kOffCq = kOffBuf + kCap * 4, kOffCm = kOffCq + kMaxChunks * 8,
             kOffCs = kOffCm + kMaxChunks * 4, kOffCi = kOffCs + kMaxChunks * 4,
             kStride = kOffCi + kMaxChunks * 4;
static_assert(sizeof(RowState) <= kOffHk, "RowState too large");

struct Args {
  int32_t* out_tokens;
  float* out_logprobs;
  const float* logits;
  const msg_sampling_params* params;
  char* scratch;
  int V, cs, ib;  // vocab, chunk size (multiple of 1024), index bits of the rank key
};

struct RowPtrs {
  RowState* st;
  unsigned* hk;
  unsigned long long* hp;
  int* buf;
  unsigned long long* cq;
  float* cm;
  float* cs;
  int* ci;
};
__device__ __forceinline__ RowPtrs row_ptrs(const Args& a, int r) {
  char* b = a.scratch + (size_t)r * kStride;
  return RowPtrs{(RowState*)b, (unsigned*)(b + kOffHk), (unsigned long long*)(b + kOffHp),
                 (int*)(b + kOffBuf), (unsigned long long*)(b + kOffCq), (float*)(b + kOffCm),
                 (float*)(b + kOffCs), (int*)(b + kOffCi)};
}

// ---------------------------------------------------------------- the rule's pieces

/** NaN -> -inf, -0 -> +0 (as the CPU twin's clean_row). */
__device__ __forceinline__ float canon(float x) { return x != x ? -INFINITY : (x == 0.f ? 0.f : x); }
__device__ __forceinline__ uint32_t order_key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
/** exp(d), d <= 0, with the CPU twin's exact steps (see cuda/cpu/sampling.cpp). */
__device__ __forceinline__ float sample_exp(float d) {
  const float kLog2e = 1.44269504088896341f;
  const float y = __fmul_rn(d, kLog2e);
  if (!(y >= -64.0f)) return 0.0f;
  const float n = rintf(y);
  const float f = fmaf(d, kLog2e, -n);
  float p = 1.52527338040598e-05f;
  p = fmaf(p, f, 1.54035303933816e-04f);
  p = fmaf(p, f, 1.33335581464284e-03f);
  p = fmaf(p, f, 9.61812910762848e-03f);
  p = fmaf(p, f, 5.55041086648216e-02f);
  p = fmaf(p, f, 2.40226506959101e-01f);
  p = fmaf(p, f, 6.93147180559945e-01f);
  p = fmaf(p, f, 1.0f);
  return __fmul_rn(p, __int_as_float(((int)n + 127) << 23));
}
__device__ __forceinline__ uint64_t fixed_weight(float w) {
  return (uint64_t)__fmul_rn(w, 1099511627776.0f);
}
__device__ __forceinline__ int zbucket(float z, float zmax) {
  const float d = __fsub_rn(zmax, z);
  return 511 - (d < 32.0f ? (int)__fmul_rn(d, 16.0f) : 511);
}

/** A token as the filters see it. */
struct Tok {
  uint64_t key;  // rank key: order_key(logit) << ib | (2^ib - 1 - index); larger = ranks higher
  uint64_t q;    // fixed-point weight
  float w;
  int zb;        // z bucket
};
struct RowCtx {
  const float* x;
  float T, zmax, min_p;
  int top, ib;
  bool use_minp;
  __device__ Tok tok(int i) const {
    float v = canon(x[i]);
    float z = __fdiv_rn(v, T);
    Tok t;
    t.key = ((uint64_t)order_key(v) << ib) | (uint64_t)(((1u << ib) - 1u) - (unsigned)i);
    t.w = sample_exp(__fsub_rn(z, zmax));
    t.q = fixed_weight(t.w);
    t.zb = zbucket(z, zmax);
    return t;
  }
  __device__ bool minp_ok(const Tok& t, int i) const {
    return !use_minp || t.w >= min_p || i == top;
  }
};

__device__ __forceinline__ uint64_t topp_target(float top_p, uint64_t S) {
  double tp = ceil((double)top_p * (double)S) - 1.0;
  uint64_t t = tp <= 0.0 ? 0 : (uint64_t)tp;
  return t >= S ? (S ? S - 1 : 0) : t;
}
__device__ __forceinline__ uint64_t draw_target(const msg_sampling_params& sp, uint64_t Q) {
  uint64_t z = sp.seed ^ ((uint64_t)(int64_t)sp.step * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  double u = (double)(z >> 11) * 0x1.0p-53;
  uint64_t t = (uint64_t)(u * (double)Q);
  return t >= Q ? (Q ? Q - 1 : 0) : t;
}

// ---------------------------------------------------------------- block helpers

__device__ __forceinline__ uint64_t block_sum_u64(uint64_t v, unsigned long long* sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  if (wid == 0) {
    uint64_t t = lane < nw ? sh[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (lane == 0) sh[32] = t;
  }
  __syncthreads();
  return sh[32];
}

/** (value, index) max with the lowest index on ties; every thread gets the winner. */
__device__ __forceinline__ void block_argmax(float& v, int& idx, float* shv, int* shi) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
    if (v2 > v || (v2 == v && i2 < idx)) { v = v2; idx = i2; }
  }
  __syncthreads();
  if (lane == 0) { shv[wid] = v; shi[wid] = idx; }
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? shv[lane] : -INFINITY;
    idx = lane < nw ? shi[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float v2 = __shfl_xor_sync(0xffffffffu, v, o);
      int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
      if (v2 > v || (v2 == v && i2 < idx)) { v = v2; idx = i2; }
    }
    if (lane == 0) { shv[32] = v; shi[32] = idx; }
  }
  __syncthreads();
  v = shv[32];
  idx = shi[32];
}

/** One warp: the bin whose interval of cumulated h (walking bins from nb-1 down when
 *  `desc`, else up) contains t; writes it and the mass before it. t past the end: the last
 *  bin with mass. */
template <typename H>
__device__ void find_interval(const H* h, int nb, bool desc, uint64_t t, int* out_bin,
                              unsigned long long* out_base) {
  int lane = threadIdx.x & 31;
  int per = (nb + 31) >> 5, p0 = min(nb, lane * per), p1 = min(nb, p0 + per);
  uint64_t sum = 0;
  for (int p = p0; p < p1; p++) sum += h[desc ? nb - 1 - p : p];
  uint64_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  uint64_t total = __shfl_sync(0xffffffffu, incl, 31);
  if (total == 0) {
    if (lane == 0) { *out_bin = desc ? nb - 1 : 0; *out_base = 0; }
    return;
  }
  if (t >= total) t = total - 1;
  uint64_t excl = incl - sum;
  if (t >= excl && t < incl) {
    uint64_t cum = excl;
    for (int p = p0; p < p1; p++) {
      int b = desc ? nb - 1 - p : p;
      uint64_t hb = h[b];
      if (t < cum + hb) { *out_bin = b; *out_base = cum; break; }
      cum += hb;
    }
  }
}

/** Warp-aggregated append of index i (where flag) to a row buffer of kCap entries; the
 *  count keeps growing past kCap so that readers see the overflow. */
__device__ __forceinline__ void append(bool flag, int i, int* count, int* buf) {
  int lane = threadIdx.x & 31;
  unsigned bal = __ballot_sync(0xffffffffu, flag);
  if (!bal) return;
  int leader = __ffs(bal) - 1, pos = 0;
  if (lane == leader) pos = atomicAdd(count, __popc(bal));
  pos = __shfl_sync(0xffffffffu, pos, leader) + __popc(bal & ((1u << lane) - 1u));
  if (flag && pos < kCap) buf[pos] = i;
}

/** Last-block detection over the C blocks of a row (all threads call it). */
__device__ __forceinline__ bool last_block(unsigned* ticket, bool* sh_last) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) *sh_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  __syncthreads();
  if (*sh_last) __threadfence();
  return *sh_last;
}

// ---------------------------------------------------------------- selection in one block

/** The candidates of a selection: the row's buffer (n <= kCap) or the whole row. */
struct Src {
  const int* buf;
  int n;
  __device__ int idx(int j) const { return buf ? __ldcg(buf + j) : j; }
};

struct SelShared {
  unsigned long long hw[2048];
  unsigned hc[2048];
  int hi[2048];
  unsigned long long red[33], base;
  int bin;
};

/** Radix selection over a 64-bit key (nbits wide, distinct per token): the candidate whose
 *  weight interval, walking keys downward, contains t. f(i, &key, &w) says whether token i
 *  is a candidate. 11-bit digits; stops as soon as the chosen bin holds one candidate. */
template <class F>
__device__ int select(const Src& src, int nbits, int ib, uint64_t t, F f, SelShared& sh) {
  uint64_t prefix = 0, mask = 0, base = 0;
  for (int hi = nbits; hi > 0;) {
    int bits = min(11, hi), shift = hi - bits, nb = 1 << bits;
    for (int b = threadIdx.x; b < nb; b += blockDim.x) { sh.hw[b] = 0; sh.hc[b] = 0; }
    __syncthreads();
    for (int j = threadIdx.x; j < src.n; j += blockDim.x) {
      int i = src.idx(j);
      uint64_t key, w;
      if (!f(i, key, w) || (key & mask) != prefix) continue;
      int b = (int)((key >> shift) & (uint64_t)(nb - 1));
      atomicAdd(&sh.hc[b], 1u);
      sh.hi[b] = i;
      if (w) atomicAdd(&sh.hw[b], (unsigned long long)w);
    }
    __syncthreads();
    if (threadIdx.x < 32) find_interval(sh.hw, nb, true, t - base, &sh.bin, &sh.base);
    __syncthreads();
    int b = sh.bin;
    base += sh.base;
    prefix |= (uint64_t)b << shift;
    mask |= (uint64_t)(nb - 1) << shift;
    hi = shift;
    bool single = sh.hc[b] == 1;
    int only = sh.hi[b];
    __syncthreads();
    if (single) return only;
  }
  return (int)(((1u << ib) - 1u) - (unsigned)(prefix & ((1ull << ib) - 1)));
}

template <class F>
__device__ uint64_t src_sum(const Src& src, F f, unsigned long long* red) {
  uint64_t s = 0;
  for (int j = threadIdx.x; j < src.n; j += blockDim.x) {
    int i = src.idx(j);
    uint64_t key, w;
    if (f(i, key, w)) s += w;
  }
  return block_sum_u64(s, red);
}

__device__ __forceinline__ RowCtx row_ctx(const Args& a, int r, const RowState& st,
                                          const msg_sampling_params& sp) {
  return RowCtx{a.logits + (size_t)r * a.V, sp.temperature, st.zmax, sp.min_p, st.top, a.ib,
                sp.min_p > 0.f};
}

__device__ __forceinline__ void write_token(const Args& a, int r, const RowState& st, int tok) {
  a.out_tokens[r] = tok;
  if (a.out_logprobs) {
    float v = canon(a.logits[(size_t)r * a.V + tok]);
    a.out_logprobs[r] = st.lse > -INFINITY ? v - st.lse : -INFINITY;
  }
}

// ---------------------------------------------------------------- kernels

__global__ void __launch_bounds__(kThreads) scan_kernel(Args a) {
  __shared__ unsigned hist[kKBins];
  __shared__ float fv[33];
  __shared__ int iv[33];
  __shared__ bool last;
  __shared__ int sh_bin;
  __shared__ unsigned long long sh_base;
  const int r = blockIdx.y, c = blockIdx.x, tid = threadIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  // No params: every row greedy (msg_sample then launches this kernel alone).
  const msg_sampling_params sp = a.params ? a.params[r] : msg_sampling_params{0.f, 1.f, 0.f, 0,
                                                                             0, 0, 0};
  const float* x = a.logits + (size_t)r * a.V;
  const bool sampled = sp.temperature > 0.f;
  const bool use_k = sampled && sp.top_k > 0 && sp.top_k < a.V;
  const bool lp = a.out_logprobs != nullptr;
  if (use_k) {
    for (int b = tid; b < kKBins; b += kThreads) hist[b] = 0;
    __syncthreads();
  }
  const int i0 = c * a.cs, i1 = min(a.V, i0 + a.cs);
  float m = -INFINITY, s = 0.f;
  int mi = 0x7fffffff;
#pragma unroll 4
  for (int i = i0 + tid; i < i1; i += kThreads) {
    float v = canon(x[i]);
    if (v > m) {
      if (lp) s = s * expf(m - v) + 1.f;
      m = v;
      mi = i;
    } else if (lp && v > -INFINITY) {
      s += expf(v - m);
    }
    if (use_k) atomicAdd(&hist[order_key(v) >> 21], 1u);
  }
  float bm = m;
  int bi = mi;
  block_argmax(bm, bi, fv, iv);
  float bs = lp ? msg::block_sum(m > -INFINITY ? s * expf(m - bm) : 0.f, fv) : 0.f;
  if (tid == 0) { P.cm[c] = bm; P.ci[c] = bi; P.cs[c] = bs; }
  if (use_k) {
    __syncthreads();
    for (int b = tid; b < kKBins; b += kThreads)
      if (hist[b]) atomicAdd(&P.hk[b], hist[b]);
  }
  if (!last_block(&P.st->ticket, &last)) return;

  // Last block of the row: reduce the chunks (fixed order: deterministic).
  const int C = gridDim.x;
  m = -INFINITY;
  mi = 0x7fffffff;
  for (int k = tid; k < C; k += kThreads) {
    float v = __ldcg(P.cm + k);
    int ii = __ldcg(P.ci + k);
    if (v > m || (v == m && ii < mi)) { m = v; mi = ii; }
  }
  block_argmax(m, mi, fv, iv);
  const float M = m;
  const int top = mi < a.V ? mi : 0;
  float lse = -INFINITY;
  if (lp) {
    float part = 0.f;
    if (M > -INFINITY)
      for (int k = tid; k < C; k += kThreads) {
        float cmk = __ldcg(P.cm + k);
        if (cmk > -INFINITY) part += __ldcg(P.cs + k) * expf(cmk - M);
      }
    float S = msg::block_sum(part, fv);
    lse = M > -INFINITY ? M + logf(S) : -INFINITY;
  }
  const float zmax = M / sp.temperature;
  const bool greedy = !sampled || !isfinite(zmax);
  int mode = greedy ? MODE_DONE : (use_k ? MODE_KGATHER : MODE_LARGE);
  if (use_k) {
    for (int b = tid; b < kKBins; b += kThreads) {
      hist[b] = __ldcg(P.hk + b);
      P.hk[b] = 0;  // clean for the next call
    }
    __syncthreads();
    if (tid < 32) find_interval(hist, kKBins, true, (uint64_t)(sp.top_k - 1), &sh_bin, &sh_base);
    __syncthreads();
    if (sh_base + hist[sh_bin] <= (unsigned long long)kCap) mode = greedy ? MODE_DONE : MODE_SMALL;
  }
  if (tid == 0) {
    RowState* st = P.st;
    st->M = M;
    st->lse = lse;
    st->zmax = zmax;
    st->top = top;
    st->mode = mode;
    st->bk = use_k ? sh_bin : 0;
    st->above = use_k ? sh_base : 0;
    st->cut_k = 0;
    st->gcount = 0;
    st->ticket = 0;
    if (greedy) write_token(a, r, *st, top);
  }
}

__global__ void __launch_bounds__(kThreads) gather_kernel(Args a) {
  const int r = blockIdx.y, c = blockIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  const int mode = P.st->mode;
  if (mode != MODE_SMALL && mode != MODE_KGATHER) return;
  const unsigned bk = (unsigned)P.st->bk;
  const float* x = a.logits + (size_t)r * a.V;
  const int i0 = c * a.cs, i1 = min(a.V, i0 + a.cs);
  for (int base = i0; base < i1; base += kThreads) {
    int i = base + threadIdx.x;
    bool flag = false;
    if (i < i1) {
      unsigned b = order_key(canon(x[i])) >> 21;
      flag = mode == MODE_SMALL ? b >= bk : b == bk;
    }
    append(flag, i, &P.st->gcount, P.buf);
  }
}

__global__ void __launch_bounds__(kRowThreads) finish_k_kernel(Args a) {
  __shared__ SelShared sh;
  const int r = blockIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  const RowState st = *P.st;
  if (st.mode != MODE_SMALL && st.mode != MODE_KGATHER) return;
  const msg_sampling_params sp = a.params[r];
  const RowCtx R = row_ctx(a, r, st, sp);
  const int nkey = 32 + a.ib;
  const unsigned bk = (unsigned)st.bk;
  const Src src = st.gcount <= kCap ? Src{P.buf, st.gcount} : Src{nullptr, a.V};
  if (st.mode == MODE_KGATHER) {
    // Only the top-k cut: the token of rank k-1, inside the boundary bin.
    uint64_t t = (uint64_t)(sp.top_k - 1) - st.above;
    int e = select(src, nkey, a.ib, t, [&](int i, uint64_t& key, uint64_t& w) {
      float v = canon(R.x[i]);
      key = ((uint64_t)order_key(v) << a.ib) | (uint64_t)(((1u << a.ib) - 1u) - (unsigned)i);
      w = 1;
      return (order_key(v) >> 21) == bk;
    }, sh);
    if (threadIdx.x == 0) {
      P.st->cut_k = R.tok(e).key;
      P.st->mode = MODE_LARGE;
    }
    return;
  }
  // The whole top-k set is in the buffer: top-k, top-p, min-p and the draw happen here.
  int e = select(src, nkey, a.ib, (uint64_t)(sp.top_k - 1), [&](int i, uint64_t& key, uint64_t& w) {
    float v = canon(R.x[i]);
    key = ((uint64_t)order_key(v) << a.ib) | (uint64_t)(((1u << a.ib) - 1u) - (unsigned)i);
    w = 1;
    return true;
  }, sh);
  uint64_t cut = R.tok(e).key;
  if (sp.top_p < 1.f) {
    auto in_k = [&](int i, uint64_t& key, uint64_t& w) {
      Tok t = R.tok(i);
      key = t.key;
      w = t.q;
      return t.key >= cut;
    };
    uint64_t S = src_sum(src, in_k, sh.red);
    e = select(src, nkey, a.ib, topp_target(sp.top_p, S), in_k, sh);
    cut = R.tok(e).key;
  }
  auto kept_by_index = [&](int i, uint64_t& key, uint64_t& w) {
    Tok t = R.tok(i);
    key = (uint64_t)(((1u << a.ib) - 1u) - (unsigned)i);
    w = t.q;
    return t.key >= cut && R.minp_ok(t, i);
  };
  uint64_t Q = src_sum(src, kept_by_index, sh.red);
  int tok = select(src, a.ib, a.ib, draw_target(sp, Q), kept_by_index, sh);
  if (threadIdx.x == 0) {
    write_token(a, r, st, tok);
    P.st->mode = MODE_DONE;
  }
}

__global__ void __launch_bounds__(kThreads) weigh_kernel(Args a) {
  __shared__ unsigned h0[kPBins], h1[kPBins], h2[kPBins];
  __shared__ unsigned long long red[33], hs[kPBins];
  __shared__ bool last;
  __shared__ int sh_bin;
  __shared__ unsigned long long sh_base;
  const int r = blockIdx.y, c = blockIdx.x, tid = threadIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  const RowState st = *P.st;
  if (st.mode != MODE_LARGE) return;
  const msg_sampling_params sp = a.params[r];
  const RowCtx R = row_ctx(a, r, st, sp);
  const bool use_p = sp.top_p < 1.f;
  if (use_p) {
    for (int b = tid; b < kPBins; b += kThreads) { h0[b] = 0; h1[b] = 0; h2[b] = 0; }
    __syncthreads();
  }
  const int i0 = c * a.cs, i1 = min(a.V, i0 + a.cs);
  uint64_t acc = 0;
#pragma unroll 2
  for (int i = i0 + tid; i < i1; i += kThreads) {
    Tok t = R.tok(i);
    if (t.key < st.cut_k || !t.q) continue;
    if (use_p) {
      // q < 2^41 in three 19-bit limbs: a chunk of <= 8192 tokens cannot overflow a u32.
      acc += t.q;
      atomicAdd(&h0[t.zb], (unsigned)(t.q & 0x7ffff));
      uint64_t hi = t.q >> 19;
      if (hi) {
        atomicAdd(&h1[t.zb], (unsigned)(hi & 0x7ffff));
        if (hi >> 19) atomicAdd(&h2[t.zb], (unsigned)(hi >> 19));
      }
    } else if (R.minp_ok(t, i)) {
      acc += t.q;
    }
  }
  acc = block_sum_u64(acc, red);
  if (tid == 0) P.cq[c] = acc;
  if (!use_p) return;
  for (int b = tid; b < kPBins; b += kThreads) {
    uint64_t h = (uint64_t)h0[b] + ((uint64_t)h1[b] << 19) + ((uint64_t)h2[b] << 38);
    if (h) atomicAdd(&P.hp[b], (unsigned long long)h);
  }
  if (!last_block(&P.st->ticket, &last)) return;
  uint64_t S = 0;
  for (int k = tid; k < (int)gridDim.x; k += kThreads) S += __ldcg(P.cq + k);
  S = block_sum_u64(S, red);
  const uint64_t tp = topp_target(sp.top_p, S);
  for (int b = tid; b < kPBins; b += kThreads) {
    hs[b] = __ldcg(P.hp + b);
    P.hp[b] = 0;  // clean for the next call
  }
  __syncthreads();
  if (tid < 32) find_interval(hs, kPBins, true, tp, &sh_bin, &sh_base);
  __syncthreads();
  if (tid == 0) {
    P.st->tp = tp;
    P.st->bp = sh_bin;
    P.st->base = sh_base;
    P.st->gcount = 0;
    P.st->ticket = 0;
  }
}

__global__ void __launch_bounds__(kThreads) split_kernel(Args a) {
  __shared__ unsigned long long red[33];
  const int r = blockIdx.y, c = blockIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  const RowState st = *P.st;
  const msg_sampling_params sp = a.params[r];
  if (st.mode != MODE_LARGE || !(sp.top_p < 1.f)) return;
  const RowCtx R = row_ctx(a, r, st, sp);
  const int i0 = c * a.cs, i1 = min(a.V, i0 + a.cs);
  uint64_t acc = 0;
  for (int base = i0; base < i1; base += kThreads) {
    int i = base + threadIdx.x;
    bool flag = false;
    if (i < i1) {
      Tok t = R.tok(i);
      if (t.key >= st.cut_k && t.q) {
        if (t.zb > st.bp) {
          if (R.minp_ok(t, i)) acc += t.q;
        } else if (t.zb == st.bp) {
          flag = true;
        }
      }
    }
    append(flag, i, &P.st->gcount, P.buf);
  }
  acc = block_sum_u64(acc, red);
  if (threadIdx.x == 0) P.cq[c] = acc;
}

__global__ void __launch_bounds__(kRowThreads) draw_kernel(Args a, int C) {
  __shared__ SelShared sh;
  __shared__ unsigned long long wsum[32];
  __shared__ int sh_tok;
  const int r = blockIdx.x, tid = threadIdx.x;
  const RowPtrs P = row_ptrs(a, r);
  const RowState st = *P.st;
  if (st.mode != MODE_LARGE) return;
  const msg_sampling_params sp = a.params[r];
  const RowCtx R = row_ctx(a, r, st, sp);
  uint64_t cut = st.cut_k;
  if (sp.top_p < 1.f) {
    // The top-p cut inside bucket bp, then the bucket's kept tokens into the chunk sums.
    const Src src = st.gcount <= kCap ? Src{P.buf, st.gcount} : Src{nullptr, a.V};
    auto in_bucket = [&](int i, uint64_t& key, uint64_t& w) {
      Tok t = R.tok(i);
      key = t.key;
      w = t.q;
      return t.key >= st.cut_k && t.q && t.zb == st.bp;
    };
    int e = select(src, 32 + a.ib, a.ib, st.tp - st.base, in_bucket, sh);
    cut = R.tok(e).key;
    for (int j = tid; j < src.n; j += blockDim.x) {
      int i = src.idx(j);
      Tok t = R.tok(i);
      if (t.key >= cut && t.q && t.zb == st.bp && R.minp_ok(t, i))
        atomicAdd(P.cq + i / a.cs, (unsigned long long)t.q);
    }
    __syncthreads();
  }
  // The chunk whose mass interval holds t = floor(u * Q).
  for (int k = tid; k < C; k += blockDim.x) sh.hw[k] = __ldcg(P.cq + k);
  __syncthreads();
  uint64_t part = 0;
  for (int k = tid; k < C; k += blockDim.x) part += sh.hw[k];
  const uint64_t Q = block_sum_u64(part, sh.red);
  const uint64_t t = draw_target(sp, Q);
  if (tid < 32) find_interval(sh.hw, C, false, t, &sh.bin, &sh.base);
  __syncthreads();
  const int c = sh.bin;
  const uint64_t tc = t - sh.base;
  // Ordered scan of the chunk: each thread a contiguous segment, exclusive prefix of u64.
  const int seg = a.cs / kRowThreads;
  const int j0 = c * a.cs + tid * seg, j1 = min(a.V, j0 + seg);
  uint64_t mine = 0;
  for (int i = j0; i < j1; i++) {
    Tok tk = R.tok(i);
    if (tk.key >= cut && R.minp_ok(tk, i)) mine += tk.q;
  }
  const int lane = tid & 31, wid = tid >> 5;
  uint64_t incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) wsum[wid] = incl;
  if (tid == 0) sh_tok = -1;
  __syncthreads();
  uint64_t before = incl - mine;
  for (int w = 0; w < wid; w++) before += wsum[w];
  if (mine && tc >= before && tc < before + mine) {
    uint64_t cum = before;
    for (int i = j0; i < j1; i++) {
      Tok tk = R.tok(i);
      if (!(tk.key >= cut && R.minp_ok(tk, i))) continue;
      cum += tk.q;
      if (cum > tc) { sh_tok = i; break; }
    }
  }
  __syncthreads();
  if (tid == 0) write_token(a, r, st, sh_tok >= 0 ? sh_tok : st.top);
}

}  // namespace

extern "C" {

double msg_uniform(uint64_t seed, int32_t step) {
  uint64_t z = seed ^ ((uint64_t)(int64_t)step * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return (double)(z >> 11) * 0x1.0p-53;
}

int msg_sample(int32_t* out_tokens, float* out_logprobs, float* logits,
               const msg_sampling_params* params, int rows, int vocab, void* stream) {
  MSG_REQUIRE(rows >= 0 && rows <= 65535 && vocab > 0 && vocab <= kMaxChunks * 8192,
              "msg_sample: bad sizes rows=%d vocab=%d", rows, vocab);
  if (rows == 0) return 0;
  // Chunk size: a multiple of 1024 in [1024, 8192], about 600 blocks in all, <= 1024 chunks.
  long long want = ((long long)vocab * rows + 600LL * 1024 - 1) / (600LL * 1024);
  int cs = 1024 * (int)(want < 1 ? 1 : want > 8 ? 8 : want);
  while ((vocab + cs - 1) / cs > kMaxChunks) cs += 1024;
  const int C = (vocab + cs - 1) / cs;
  int ib = 1;
  while (ib < 31 && (1u << ib) < (unsigned)vocab) ib++;
  const size_t bytes = (size_t)rows * kStride;
  void* scratch = nullptr;
  int rc = msg::device_scratch(msg::SCRATCH_SAMPLE, bytes, &scratch);
  if (rc) return rc;
  cudaStream_t s = msg::as_stream(stream);
  {
    // Zero what no call has used yet (new buffer, or rows beyond the zeroed extent): the
    // kernels then keep histograms and counters at zero between calls.
    static std::mutex mu;
    static void* seen_ptr[64];
    static size_t seen_bytes[64];
    int dev = 0;
    MSG_CUDA(cudaGetDevice(&dev));
    std::lock_guard<std::mutex> lock(mu);
    if (dev >= 0 && dev < 64) {
      if (seen_ptr[dev] != scratch) { seen_ptr[dev] = scratch; seen_bytes[dev] = 0; }
      if (seen_bytes[dev] < bytes) {
        MSG_CUDA(cudaMemsetAsync((char*)scratch + seen_bytes[dev], 0, bytes - seen_bytes[dev], s));
        seen_bytes[dev] = bytes;
      }
    }
  }
  Args a{out_tokens, out_logprobs, logits, params, (char*)scratch, vocab, cs, ib};
  dim3 grid(C, rows);
  scan_kernel<<<grid, kThreads, 0, s>>>(a);
  MSG_LAUNCHED("sample scan");
  if (params == nullptr) return 0;  // all greedy: scan finished every row (the rest would exit)
  gather_kernel<<<grid, kThreads, 0, s>>>(a);
  MSG_LAUNCHED("sample gather");
  finish_k_kernel<<<rows, kRowThreads, 0, s>>>(a);
  MSG_LAUNCHED("sample finish_k");
  weigh_kernel<<<grid, kThreads, 0, s>>>(a);
  MSG_LAUNCHED("sample weigh");
  split_kernel<<<grid, kThreads, 0, s>>>(a);
  MSG_LAUNCHED("sample split");
  draw_kernel<<<rows, kRowThreads, 0, s>>>(a, C);
  MSG_LAUNCHED("sample draw");
  return 0;
}

}  // extern "C"
