// attention_extend.cu — causal attention of new tokens over a paged KV cache (prefill and
// chunked prefill with a cached prefix), ragged batch, GQA.
//
// Flash-attention style: grid (q-tiles of BQ, q heads, requests); a block owns BQ queries of
// one head and streams the request's keys in tiles of 64 through shared memory, keeping the
// running max, sum and fp32 output accumulator (online softmax), so memory is O(tile), not
// O(seq^2). Each warp owns 16 query rows; QK^T and PV run on tensor cores through WMMA
// (16x16x16, fp32 accumulate). The output accumulator lives in shared memory because WMMA
// fragments hide their element->row mapping: a warp rescales its rows there, then reloads
// them as accumulator fragments for PV. Keys past the causal limit of a row are masked with
// -inf; key rows past the tile's end are zero-filled so garbage never reaches a product.
// Tiles are sized from max_q_len (host), lengths are read on the device; surplus blocks exit.
// BQ = 64 for head_dim 64/128 (~104 KB smem at 128), 32 for 256 (~131 KB): fits sm_80/sm_90.
#include <mma.h>

#include "common.cuh"

namespace {

using namespace nvcuda;

const int BK = 64;
const float kLog2e = 1.4426950408889634f;

template <int D, int BQ>
struct Smem {
  static const int LDQ = D + 8, LDS = BK + 4, LDP = BK + 8, LDO = D + 4;
  static const size_t q = 0;
  static const size_t k = q + (size_t)BQ * LDQ * 2;
  static const size_t v = k + (size_t)BK * LDQ * 2;
  static const size_t s = v + (size_t)BK * LDQ * 2;
  static const size_t p = s + (size_t)BQ * LDS * 4;
  static const size_t o = p + (size_t)BQ * LDP * 2;
  static const size_t m = o + (size_t)BQ * LDO * 4;
  static const size_t l = m + (size_t)BQ * 4;
  static const size_t alpha = l + (size_t)BQ * 4;
  static const size_t slot = alpha + (size_t)BQ * 4;
  static const size_t total = slot + (size_t)BK * 4;
};

template <typename T, int D, int BQ>
__global__ void __launch_bounds__(BQ * 2) extend_kernel(
    T* out, const T* q, int q_row_stride, const T* k_cache, const T* v_cache,
    const int32_t* page_table, int pt_stride, const int32_t* rows, const int32_t* seq_lens,
    const int32_t* q_starts, int hq, int hkv, int page_size, float scale) {
  typedef Smem<D, BQ> S;
  const int NT = BQ * 2;  // BQ / 16 warps
  extern __shared__ __align__(128) unsigned char smem[];
  T* Qs = (T*)(smem + S::q);
  T* Ks = (T*)(smem + S::k);
  T* Vs = (T*)(smem + S::v);
  float* Ss = (float*)(smem + S::s);
  T* Ps = (T*)(smem + S::p);
  float* Os = (float*)(smem + S::o);
  float* row_m = (float*)(smem + S::m);
  float* row_l = (float*)(smem + S::l);
  float* row_alpha = (float*)(smem + S::alpha);
  int* slot_s = (int*)(smem + S::slot);

  int b = blockIdx.z, h = blockIdx.y, tile = blockIdx.x;
  int q0 = q_starts[b], q_len = q_starts[b + 1] - q0;
  if (tile * BQ >= q_len) return;
  int seq = seq_lens[b];
  int prefix = seq - q_len;
  int kvh = h / (hq / hkv);
  const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;
  int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int VPR = D / 8;  // 16-byte vectors per row

  // Load the Q tile (zeros past q_len), clear O, init stats.
  for (int i = tid; i < BQ * VPR; i += NT) {
    int r = i / VPR, c = i % VPR;
    int qi = tile * BQ + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (qi < q_len) v = *(const uint4*)(q + (size_t)(q0 + qi) * q_row_stride + (size_t)h * D + c * 8);
    *(uint4*)(Qs + r * S::LDQ + c * 8) = v;
  }
  for (int i = tid; i < BQ * S::LDO; i += NT) Os[i] = 0.f;
  for (int i = tid; i < BQ; i += NT) {
    row_m[i] = -INFINITY;
    row_l[i] = 0.f;
  }
  int last_q = min((tile + 1) * BQ, q_len) - 1;
  int kv_end = prefix + last_q + 1;
  float sl2 = scale * kLog2e;
  __syncthreads();

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    wmma::load_matrix_sync(qf[kk], Qs + warp * 16 * S::LDQ + kk * 16, S::LDQ);
  }

  for (int k0 = 0; k0 < kv_end; k0 += BK) {
    __syncthreads();  // previous tile fully consumed
    if (tid < BK) {
      int j = k0 + tid;
      slot_s[tid] = j < kv_end ? pt[j / page_size] * page_size + j % page_size : -1;
    }
    __syncthreads();
    for (int i = tid; i < BK * VPR; i += NT) {
      int r = i / VPR, c = i % VPR;
      int slot = slot_s[r];
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
      if (slot >= 0) {
        size_t off = ((size_t)slot * hkv + kvh) * D + c * 8;
        kv = *(const uint4*)(k_cache + off);
        vv = *(const uint4*)(v_cache + off);
      }
      *(uint4*)(Ks + r * S::LDQ + c * 8) = kv;
      *(uint4*)(Vs + r * S::LDQ + c * 8) = vv;
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows.
#pragma unroll
    for (int n = 0; n < BK / 16; n++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, Ks + n * 16 * S::LDQ + kk * 16, S::LDQ);
        wmma::mma_sync(acc, qf[kk], kf, acc);
      }
      wmma::store_matrix_sync(Ss + warp * 16 * S::LDS + n * 16, acc, S::LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over the warp's rows (2 columns per lane).
    for (int rr = 0; rr < 16; rr++) {
      int r = warp * 16 + rr;
      int qp = prefix + min(tile * BQ + r, q_len - 1);  // rows past q_len: harmless copy
      float s[2];
#pragma unroll
      for (int c = 0; c < 2; c++) {
        int j = k0 + lane + 32 * c;
        s[c] = j <= qp ? Ss[r * S::LDS + lane + 32 * c] * sl2 : -INFINITY;
      }
      float mx = msg::warp_max(fmaxf(s[0], s[1]));
      float m_old = row_m[r];
      float m_new = fmaxf(m_old, mx);
      float base = m_new == -INFINITY ? 0.f : m_new;
      float p0 = exp2f(s[0] - base), p1 = exp2f(s[1] - base);
      float sum = msg::warp_sum(p0 + p1);
      Ps[r * S::LDP + lane] = msg::from_f<T>(p0);
      Ps[r * S::LDP + lane + 32] = msg::from_f<T>(p1);
      if (lane == 0) {
        float alpha = exp2f(m_old - base);
        row_alpha[r] = alpha;
        row_l[r] = row_l[r] * alpha + sum;
        row_m[r] = m_new;
      }
    }
    __syncwarp();
    for (int rr = 0; rr < 16; rr++) {
      int r = warp * 16 + rr;
      float alpha = row_alpha[r];
      for (int d = lane; d < D; d += 32) Os[r * S::LDO + d] *= alpha;
    }
    __syncwarp();

    // O += P V.
#pragma unroll
    for (int dn = 0; dn < D / 16; dn++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* op = Os + warp * 16 * S::LDO + dn * 16;
      wmma::load_matrix_sync(acc, op, S::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, Ps + warp * 16 * S::LDP + kk * 16, S::LDP);
        wmma::load_matrix_sync(vf, Vs + kk * 16 * S::LDQ + dn * 16, S::LDQ);
        wmma::mma_sync(acc, pf, vf, acc);
      }
      wmma::store_matrix_sync(op, acc, S::LDO, wmma::mem_row_major);
    }
  }
  __syncthreads();

  for (int i = tid; i < BQ * D; i += NT) {
    int r = i / D, d = i % D;
    int qi = tile * BQ + r;
    if (qi >= q_len) continue;
    float l = row_l[r];
    out[((size_t)(q0 + qi) * hq + h) * D + d] = msg::from_f<T>(l > 0.f ? Os[r * S::LDO + d] / l : 0.f);
  }
}

template <typename T, int D, int BQ>
int launch(void* out, const void* q, int q_row_stride, const void* k_cache, const void* v_cache,
           const int32_t* page_table, int pt_stride, const int32_t* rows,
           const int32_t* seq_lens, const int32_t* q_starts, int batch, int max_q_len, int hq,
           int hkv, int page_size, float scale, cudaStream_t st) {
  size_t smem = Smem<D, BQ>::total;
  auto kern = extend_kernel<T, D, BQ>;
  static thread_local int configured_device = -1;
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  if (configured_device != dev) {
    MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured_device = dev;
  }
  dim3 grid((max_q_len + BQ - 1) / BQ, hq, batch);
  kern<<<grid, BQ * 2, smem, st>>>((T*)out, (const T*)q, q_row_stride, (const T*)k_cache,
                                   (const T*)v_cache, page_table, pt_stride, rows, seq_lens,
                                   q_starts, hq, hkv, page_size, scale);
  MSG_LAUNCHED("extend_kernel");
  return 0;
}

}  // namespace

extern "C" int msg_attention_extend(void* out, const void* q, int q_row_stride,
                                    const void* k_cache, const void* v_cache,
                                    const int32_t* page_table, int pt_stride,
                                    const int32_t* rows, const int32_t* seq_lens,
                                    const int32_t* q_starts, int batch, int total_q,
                                    int max_q_len, int max_seq_len, int hq, int hkv,
                                    int head_dim, int page_size, float scale, int dtype,
                                    void* stream) {
  (void)total_q;
  (void)max_seq_len;
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && hq > 0 && hkv > 0 && hq % hkv == 0 &&
                  page_size > 0 && max_q_len >= 0,
              "msg_attention_extend: bad sizes batch=%d hq=%d hkv=%d page_size=%d", batch, hq,
              hkv, page_size);
  MSG_REQUIRE(q_row_stride % 8 == 0 && msg::aligned16_ptr(q) && msg::aligned16_ptr(k_cache) &&
                  msg::aligned16_ptr(v_cache),
              "msg_attention_extend: q rows and caches must be 16-byte aligned");
  if (batch == 0 || max_q_len == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
#define MSG_EXTEND_ARGS out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, rows, \
                        seq_lens, q_starts, batch, max_q_len, hq, hkv, page_size, scale, st
  return MSG_DISPATCH_HALF(dtype, T,
    switch (head_dim) {
      case 64: return launch<T, 64, 64>(MSG_EXTEND_ARGS);
      case 128: return launch<T, 128, 64>(MSG_EXTEND_ARGS);
      case 256: return launch<T, 256, 32>(MSG_EXTEND_ARGS);
      default: return msg::fail(msg::ERR_UNSUPPORTED,
                                "msg_attention_extend: head_dim %d (64, 128, 256)", head_dim);
    });
#undef MSG_EXTEND_ARGS
}
