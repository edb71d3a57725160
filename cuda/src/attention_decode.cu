// attention_decode.cu — one query per request over its paged KV cache (flash-decoding).
//
// Split-K: grid (splits, kv heads x head-chunks, requests). A block owns one KV head of one
// request, all the q heads that share it (GQA: up to 8 per block, so K/V are read once per
// group), and one contiguous 1/splits share of the keys. The share is computed on the device
// from seq_lens, and `splits` only from max_seq_len and the batch shape, so the launch is the
// same for every replay of a captured graph; splits with no keys exit early. Inside a block
// each key row (head_dim values = head_dim/8 16-byte vectors) is read by a group of
// head_dim/8 lanes, one vector each; the q.k partial sums are reduced with shuffles inside the
// group; each group keeps its own online-softmax state (max, sum, fp32 accumulator of its 8
// dims) and issues the loads of 4 keys per step before using them (memory-level
// parallelism: a first version that converted each load at once ran at ~30% of copy
// bandwidth on an H100). States are merged across groups with shuffles, across warps in shared memory, and across splits by a combine kernel
// (log-sum-exp weights) — or written directly when there is one split.
#include "pack.cuh"

namespace {

const int kWarps = 4;
const int kUnroll = 4;
const int kMaxSplits = 64;
const size_t kScratch = 64u << 20;
const float kLog2e = 1.4426950408889634f;

struct State {
  float m, l;
};

__device__ __forceinline__ float safe_exp2(float x, float m) {
  return x == -INFINITY ? 0.f : exp2f(x - m);
}

template <typename T, int D, int G>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(
    T* out, float* part_o, float* part_lse, const T* q, int q_row_stride, const T* k_cache,
    const T* v_cache, const int32_t* page_table, int pt_stride, const int32_t* rows,
    const int32_t* seq_lens, int hq, int hkv, int page_size, float scale, int splits) {
  const int TPK = D / 8;         // lanes per key row
  const int KPW = 32 / TPK;      // keys per warp per step
  const int KPB = KPW * kWarps;  // keys per block per step
  int split = blockIdx.x, b = blockIdx.z;
  int group = hq / hkv;
  int chunks = (group + G - 1) / G;
  int kvh = blockIdx.y / chunks;
  int h0 = kvh * group + (blockIdx.y % chunks) * G;
  int nh = min(G, kvh * group + group - h0);
  int seq = seq_lens[b];
  int per = (seq + splits - 1) / splits;
  int start = split * per, end = min(start + per, seq);
  int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  int sub = lane % TPK;

  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; g++) {
    if (g < nh) {
      msg::load_pack(qf[g], q + (size_t)b * q_row_stride + (size_t)(h0 + g) * D + sub * 8);
#pragma unroll
      for (int e = 0; e < 8; e++) qf[g][e] *= scale * kLog2e;
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) qf[g][e] = 0.f;
    }
  }
  float acc[G][8];
  State st[G];
#pragma unroll
  for (int g = 0; g < G; g++) {
    st[g].m = -INFINITY;
    st[g].l = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[g][e] = 0.f;
  }
  const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;

  // The loop bound is the same for all lanes of a warp (shuffles below need the whole
  // warp); a lane group whose key is past the end computes a dummy score and skips it.
  for (int jw = start + warp * KPW; jw < end; jw += KPB * kUnroll) {
    // Issue every load of the step before using any (keys past the end re-read key
    // `start`, which exists), so kUnroll x 2 loads are in flight per thread.
    msg::Pack<T> kr[kUnroll], vr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      int j = jw + lane / TPK + u * KPB;
      if (j >= end) j = start;
      size_t off = ((size_t)(pt[j / page_size] * page_size + j % page_size) * hkv + kvh) * D +
                   sub * 8;
      kr[u] = *reinterpret_cast<const msg::Pack<T>*>(k_cache + off);
      vr[u] = *reinterpret_cast<const msg::Pack<T>*>(v_cache + off);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      bool valid = jw + lane / TPK + u * KPB < end;
      float kv[8], vv[8];
#pragma unroll
      for (int e = 0; e < 8; e++) {
        kv[e] = msg::to_f(kr[u].v[e]);
        vv[e] = msg::to_f(vr[u].v[e]);
      }
#pragma unroll
      for (int g = 0; g < G; g++) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) s += qf[g][e] * kv[e];
#pragma unroll
        for (int o = TPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid) {
          float m_new = fmaxf(st[g].m, s);
          float c = safe_exp2(st[g].m, m_new), p = exp2f(s - m_new);
          st[g].l = st[g].l * c + p;
          st[g].m = m_new;
#pragma unroll
          for (int e = 0; e < 8; e++) acc[g][e] = acc[g][e] * c + p * vv[e];
        }
      }
    }
  }

  // Merge the key groups of a warp (lanes sub, sub + TPK, ...).
#pragma unroll
  for (int o = TPK; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; g++) {
      float m2 = __shfl_xor_sync(0xffffffffu, st[g].m, o);
      float l2 = __shfl_xor_sync(0xffffffffu, st[g].l, o);
      float m = fmaxf(st[g].m, m2);
      float c1 = safe_exp2(st[g].m, m), c2 = safe_exp2(m2, m);
      st[g].l = st[g].l * c1 + l2 * c2;
      st[g].m = m;
#pragma unroll
      for (int e = 0; e < 8; e++) {
        float a2 = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * c1 + a2 * c2;
      }
    }
  }
  // Merge the warps in shared memory: [warp][g][D] accumulators and [warp][g] stats.
  __shared__ float sh_acc[kWarps][G][D];
  __shared__ State sh_st[kWarps][G];
  if (lane < TPK) {
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
      for (int e = 0; e < 8; e++) sh_acc[warp][g][sub * 8 + e] = acc[g][e];
      if (sub == 0) sh_st[warp][g] = st[g];
    }
  }
  __syncthreads();
  for (int i = tid; i < nh * D; i += kWarps * 32) {
    int g = i / D, d = i % D;
    float m = -INFINITY;
    for (int w = 0; w < kWarps; w++) m = fmaxf(m, sh_st[w][g].m);
    float l = 0.f, a = 0.f;
    for (int w = 0; w < kWarps; w++) {
      float c = safe_exp2(sh_st[w][g].m, m);
      l += sh_st[w][g].l * c;
      a += sh_acc[w][g][d] * c;
    }
    int h = h0 + g;
    if (splits == 1) {
      out[((size_t)b * hq + h) * D + d] = msg::from_f<T>(l > 0.f ? a / l : 0.f);
    } else {
      size_t idx = ((size_t)b * hq + h) * splits + split;
      part_o[idx * D + d] = l > 0.f ? a / l : 0.f;
      if (d == 0) part_lse[idx] = l > 0.f ? m + log2f(l) : -INFINITY;
    }
  }
}

template <typename T, int D>
__global__ void combine_kernel(T* out, const float* part_o, const float* part_lse, int hq,
                               int splits) {
  __shared__ float w[kMaxSplits];
  __shared__ float total;
  int b = blockIdx.y, h = blockIdx.x;
  size_t base = ((size_t)b * hq + h) * splits;
  if (threadIdx.x == 0) {
    float m = -INFINITY;
    for (int s = 0; s < splits; s++) m = fmaxf(m, part_lse[base + s]);
    float t = 0.f;
    for (int s = 0; s < splits; s++) {
      w[s] = safe_exp2(part_lse[base + s], m);
      t += w[s];
    }
    total = t;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < splits; s++) {
      if (w[s] > 0.f) a += w[s] * part_o[(base + s) * D + d];
    }
    out[((size_t)b * hq + h) * D + d] = msg::from_f<T>(total > 0.f ? a / total : 0.f);
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

template <typename T, int D, int G>
int launch(void* out, const void* q, int q_row_stride, const void* k_cache, const void* v_cache,
           const int32_t* page_table, int pt_stride, const int32_t* rows,
           const int32_t* seq_lens, int batch, int max_seq_len, int hq, int hkv, int page_size,
           float scale, cudaStream_t st) {
  int group = hq / hkv;
  int chunks = (group + G - 1) / G;
  int base_blocks = batch * hkv * chunks;
  int sms = sm_count();
  cudaGetLastError();
  // About 4 blocks per SM, so that the last wave is a small part of the work.
  int want = sms > 0 ? (4 * sms + base_blocks - 1) / base_blocks : 1;
  int by_len = (max_seq_len + 63) / 64;  // at least 64 keys per split
  int splits = want < by_len ? want : by_len;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits < 1) splits = 1;
  size_t per_split = (size_t)batch * hq * (D + 1) * sizeof(float);
  if ((size_t)splits * per_split > kScratch) splits = (int)(kScratch / per_split);
  if (splits < 1) splits = 1;
  float* part_o = nullptr;
  float* part_lse = nullptr;
  if (splits > 1) {
    void* ws = nullptr;
    int rc = msg::device_scratch(msg::SCRATCH_DECODE, kScratch, &ws);
    if (rc) return rc;
    part_o = (float*)ws;
    part_lse = part_o + (size_t)batch * hq * splits * D;
  }
  dim3 grid(splits, hkv * chunks, batch);
  decode_kernel<T, D, G><<<grid, kWarps * 32, 0, st>>>(
      (T*)out, part_o, part_lse, (const T*)q, q_row_stride, (const T*)k_cache,
      (const T*)v_cache, page_table, pt_stride, rows, seq_lens, hq, hkv, page_size, scale,
      splits);
  MSG_LAUNCHED("decode_kernel");
  if (splits > 1) {
    combine_kernel<T, D><<<dim3(hq, batch), D < 128 ? D : 128, 0, st>>>(
        (T*)out, part_o, part_lse, hq, splits);
    MSG_LAUNCHED("combine_kernel");
  }
  return 0;
}

template <typename T, int D>
int by_group(int group, void* out, const void* q, int q_row_stride, const void* k_cache,
             const void* v_cache, const int32_t* page_table, int pt_stride, const int32_t* rows,
             const int32_t* seq_lens, int batch, int max_seq_len, int hq, int hkv,
             int page_size, float scale, cudaStream_t st) {
#define MSG_DECODE_ARGS out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, rows, \
                        seq_lens, batch, max_seq_len, hq, hkv, page_size, scale, st
  if (group <= 1) return launch<T, D, 1>(MSG_DECODE_ARGS);
  if (group <= 2) return launch<T, D, 2>(MSG_DECODE_ARGS);
  if (group <= 4) return launch<T, D, 4>(MSG_DECODE_ARGS);
  return launch<T, D, 8>(MSG_DECODE_ARGS);
#undef MSG_DECODE_ARGS
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
  cudaStream_t st = msg::as_stream(stream);
  int group = hq / hkv;
  return MSG_DISPATCH_HALF(dtype, T,
    switch (head_dim) {
      case 64: return by_group<T, 64>(group, out, q, q_row_stride, k_cache, v_cache, page_table,
                                      pt_stride, rows, seq_lens, batch, max_seq_len, hq, hkv,
                                      page_size, scale, st);
      case 128: return by_group<T, 128>(group, out, q, q_row_stride, k_cache, v_cache,
                                        page_table, pt_stride, rows, seq_lens, batch,
                                        max_seq_len, hq, hkv, page_size, scale, st);
      case 256: return by_group<T, 256>(group, out, q, q_row_stride, k_cache, v_cache,
                                        page_table, pt_stride, rows, seq_lens, batch,
                                        max_seq_len, hq, hkv, page_size, scale, st);
      default: return msg::fail(msg::ERR_UNSUPPORTED,
                                "msg_attention_decode: head_dim %d (64, 128, 256)", head_dim);
    });
}
