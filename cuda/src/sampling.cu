// sampling.cu — msg_sample and msg_uniform: greedy, temperature, top-k, top-p, min-p and a
// seeded inverse-CDF pick, on the GPU without sorting the vocabulary and without a host
// round trip (graph-safe: every decision is made on the device from the params array).
//
// One block of 1024 threads per row; every pass strides over the row (152K logits = 149
// loads a thread) and recomputes z = x / T and w = exp(z - zmax) on the fly, so nothing is
// written back. Tokens are ordered by z descending, ties by lower index (as cuda/cpu does);
// every filter keeps a prefix of that order, described by a cut (key, index). The cut of a
// weighted position t (the token whose running weight interval contains t) is found by a
// radix select over the 32-bit order-preserving key of z: 4 passes of a 256-bin histogram
// in shared memory, then one ordered pass (ballots + warp prefix counts) to resolve exact
// ties by index. Weights are summed in 40-bit fixed point (u64): integer atomics are
// associative, so results do not depend on scheduling. top-k = position k-1 with unit
// weights; top-p = position ceil(top_p * S) - 1; the sample = position floor(u * Q).
#include "common.cuh"

namespace {

const int kThreads = 1024;
const float kFix = 1099511627776.f;  // 2^40

__device__ __forceinline__ float clean(float x) { return x != x ? -INFINITY : x; }
__device__ __forceinline__ uint32_t order_key(float f) {
  uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_to_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ uint64_t block_sum_u64(uint64_t v, uint64_t* sh) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  if (wid == 0) {
    uint64_t t = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (lane == 0) sh[32] = t;
  }
  __syncthreads();
  return sh[32];
}

/** (value, index) max with lowest index on ties; every thread gets the winner. */
__device__ __forceinline__ void block_argmax(float& v, int& idx, float* shv, int* shi) {
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
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
    int nw = blockDim.x >> 5;
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

/** Prefix of the order: token i is in it iff key_i > key or (key_i == key and i <= idx). */
struct Cut {
  uint32_t key;
  int idx;
  __device__ bool has(uint32_t k, int i) const { return k > key || (k == key && i <= idx); }
};

struct Row {
  const float* x;
  int V;
  float temp, zmax, min_p;
  int top;     // first token of the order (always kept)
  float xcut;  // logits below it have z - zmax < -30: fixed-point weight 0
  /** True when token i has weight 0 in 40-bit fixed point: weighted passes skip it
   *  without the division and exp (most of a real LLM's vocabulary). */
  __device__ bool negligible(int i) const { return !(x[i] >= xcut); }
  __device__ float z(int i) const { return clean(x[i]) / temp; }
  __device__ float w(float z) const { return expf(z - zmax); }
  __device__ uint64_t wq(float w) const { return (uint64_t)__float2ull_rz(w * kFix); }
  /** Candidate test: inside `cut` and, with min-p, w >= min_p (the first always kept). */
  __device__ bool keep(const Cut& cut, bool use_minp, uint32_t k, float wv, int i) const {
    return cut.has(k, i) && (!use_minp || wv >= min_p || i == top);
  }
};

const int kMaxBins = 4096;

struct Shared {
  unsigned long long hist[kMaxBins];
  uint64_t red[33];
  float fv[33];
  int iv[33];
  int warp_count[32];
  uint32_t prefix;
  uint64_t base;
  int found;
  int last_tie;
};

/** Warp 0: the bin (scanning from the highest) whose interval contains t - base; updates
 *  sh.base (weight of higher bins) and sh.prefix. Parallel over lanes, then serial in one
 *  lane's chunk of bins. */
__device__ void pick_bin(Shared& sh, int nbins, int shift, uint64_t t) {
  int lane = threadIdx.x & 31;
  int chunk = nbins / 32;
  int hi = nbins - 1 - lane * chunk;  // this lane scans bins hi, hi-1, ..., hi-chunk+1
  uint64_t csum = 0;
  for (int k = 0; k < chunk; k++) csum += sh.hist[hi - k];
  uint64_t incl = csum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  uint64_t total = __shfl_sync(0xffffffffu, incl, 31);
  uint64_t base = sh.base;
  uint64_t tt = t >= base ? t - base : 0;
  if (total == 0) {
    if (lane == 0) sh.prefix |= 0u;  // no candidates: bin 0
    return;
  }
  if (tt >= total) tt = total - 1;  // rounding past the end: the last token
  uint64_t excl = incl - csum;
  if (tt >= excl && tt < incl) {
    uint64_t cum = excl;
    for (int k = 0; k < chunk; k++) {
      uint64_t hb = sh.hist[hi - k];
      if (tt < cum + hb) {
        sh.base = base + cum;
        sh.prefix |= (uint32_t)(hi - k) << shift;
        break;
      }
      cum += hb;
    }
  }
}

/** The cut whose last token's weight interval (unit weights if `unit`) contains t. */
__device__ Cut radix_pick(const Row& row, const Cut& cand, bool use_minp, bool unit, uint64_t t,
                          Shared& sh) {
  const int kShift[3] = {20, 10, 0}, kBits[3] = {12, 10, 10};
  int tid = threadIdx.x;
  __syncthreads();  // earlier readers of sh are done
  if (tid == 0) { sh.prefix = 0; sh.base = 0; sh.found = -1; sh.last_tie = -1; }
  uint32_t mask = 0;
  for (int pass = 0; pass < 3; pass++) {
    int shift = kShift[pass], nb = 1 << kBits[pass];
    for (int b = tid; b < nb; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    uint32_t prefix = sh.prefix;
    for (int i = tid; i < row.V; i += blockDim.x) {
      if (!unit && row.negligible(i)) continue;
      float z = row.z(i);
      uint32_t k = order_key(z);
      if ((k & mask) != prefix) continue;
      float wv = row.w(z);
      if (!row.keep(cand, use_minp, k, wv, i)) continue;
      atomicAdd(&sh.hist[(k >> shift) & (nb - 1)], (unsigned long long)(unit ? 1 : row.wq(wv)));
    }
    __syncthreads();
    if (tid < 32) pick_bin(sh, nb, shift, t);
    mask |= (uint32_t)(nb - 1) << shift;
    __syncthreads();
  }
  uint32_t key = sh.prefix;
  uint64_t base = sh.base;
  uint64_t wk = unit ? 1 : row.wq(row.w(key_to_float(key)));
  uint64_t c = wk > 0 ? (t >= base ? (t - base) / wk : 0) : 0;
  // c-th (0-based) candidate with this key, in index order; the last one if fewer.
  int lane = tid & 31, wid = tid >> 5, nw = blockDim.x >> 5;
  uint64_t before = 0;
  for (int i0 = 0; i0 < row.V; i0 += blockDim.x) {
    int i = i0 + tid;
    bool flag = false;
    if (i < row.V && (unit || !row.negligible(i))) {
      float z = row.z(i);
      uint32_t k = order_key(z);
      flag = k == key && row.keep(cand, use_minp, k, row.w(z), i);
    }
    unsigned bal = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) sh.warp_count[wid] = __popc(bal);
    __syncthreads();
    uint64_t wp = 0, total = 0;
    for (int w = 0; w < nw; w++) {
      if (w < wid) wp += sh.warp_count[w];
      total += sh.warp_count[w];
    }
    uint64_t rank = before + wp + __popc(bal & ((1u << lane) - 1));
    if (flag && rank == c) sh.found = i;
    if (flag) atomicMax(&sh.last_tie, i);
    before += total;
    __syncthreads();
    if (sh.found >= 0) break;
  }
  int found = sh.found >= 0 ? sh.found : sh.last_tie;
  return Cut{key, found};
}

/** Sum of fixed-point weights over the candidates. */
__device__ uint64_t mass(const Row& row, const Cut& cand, bool use_minp, Shared& sh) {
  uint64_t s = 0;
  for (int i = threadIdx.x; i < row.V; i += blockDim.x) {
    if (row.negligible(i)) continue;
    float z = row.z(i);
    float wv = row.w(z);
    if (row.keep(cand, use_minp, order_key(z), wv, i)) s += row.wq(wv);
  }
  return block_sum_u64(s, sh.red);
}

__device__ __forceinline__ double uniform(uint64_t seed, int32_t step) {
  uint64_t z = seed ^ ((uint64_t)(int64_t)step * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return (double)(z >> 11) * 0x1.0p-53;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(int32_t* out_tokens,
                                                          float* out_logprobs,
                                                          const float* logits,
                                                          const msg_sampling_params* params,
                                                          int V) {
  __shared__ Shared sh;
  int r = blockIdx.x, tid = threadIdx.x;
  const float* x = logits + (size_t)r * V;
  msg_sampling_params sp = params[r];

  // Pass 1: max and argmax of the logits (lowest index on ties).
  float mv = -INFINITY;
  int mi = 0x7fffffff;
  for (int i = tid; i < V; i += blockDim.x) {
    float v = clean(x[i]);
    if (v > mv || (v == mv && i < mi)) { mv = v; mi = i; }
  }
  block_argmax(mv, mi, sh.fv, sh.iv);
  if (mi >= V) mi = 0;
  float M = mv;
  int token = mi;

  float temp = sp.temperature;
  bool greedy = !(temp > 0.f);
  float zmax = greedy ? 0.f : M / temp;
  if (!greedy && (!(zmax > -INFINITY) || isinf(zmax))) greedy = true;
  if (!greedy) {
    Row row{x, V, temp, zmax, sp.min_p, 0, (zmax - 30.f) * temp};
    // First token of the order: lowest index with z == zmax.
    int ti = 0x7fffffff;
    for (int i = tid; i < V; i += blockDim.x) {
      if (row.z(i) == zmax && i < ti) ti = i;
    }
    float dummy = 0.f;
    block_argmax(dummy, ti, sh.fv, sh.iv);
    row.top = ti < V ? ti : 0;
    bool use_k = sp.top_k > 0 && sp.top_k < V;
    bool use_p = sp.top_p < 1.f;
    bool use_minp = sp.min_p > 0.f;
    Cut cut{0u, 0x7fffffff};  // everything
    if (use_k) cut = radix_pick(row, cut, false, true, (uint64_t)(sp.top_k - 1), sh);
    if (use_p) {
      uint64_t S = mass(row, cut, false, sh);
      double thr = (double)sp.top_p * (double)S;
      double tp = ceil(thr) - 1.0;
      uint64_t t = tp <= 0.0 ? 0 : (uint64_t)tp;
      if (t >= S) t = S > 0 ? S - 1 : 0;
      cut = radix_pick(row, cut, false, false, t, sh);
    }
    uint64_t Q = mass(row, cut, use_minp, sh);
    double u = uniform(sp.seed, sp.step);
    uint64_t t = (uint64_t)(u * (double)Q);
    if (Q > 0 && t >= Q) t = Q - 1;
    Cut pick = radix_pick(row, cut, use_minp, false, t, sh);
    token = pick.idx;
    if (token < 0 || token >= V) token = row.top;
  }
  if (out_logprobs) {
    float s = 0.f;
    if (M > -INFINITY) {
      for (int i = tid; i < V; i += blockDim.x) s += expf(clean(x[i]) - M);
    }
    s = msg::block_sum(s, sh.fv);
    if (tid == 0) {
      out_logprobs[r] = M > -INFINITY ? clean(x[token]) - (M + logf(s)) : -INFINITY;
    }
  }
  if (tid == 0) out_tokens[r] = token;
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
  MSG_REQUIRE(rows >= 0 && rows <= 65535 && vocab > 0, "msg_sample: bad sizes rows=%d vocab=%d",
              rows, vocab);
  if (rows == 0) return 0;
  sample_kernel<<<rows, kThreads, 0, msg::as_stream(stream)>>>(out_tokens, out_logprobs, logits,
                                                                params, vocab);
  MSG_LAUNCHED("sample_kernel");
  return 0;
}

}  // extern "C"
