// attention_extend_hopper_v2.cu — fa3 v2 (MINISGL_FA3_VARIANT=2): the v1 Hopper extend kernel
// (attention_extend_hopper.cu: 64 query rows per warpgroup, 64-key tiles, ss-wgmma
// S = Q K^T, rs-wgmma O += P V, cp.async gathers from the pages; here 3 warpgroups per block
// at head_dim 128, see Shape) with the FlashAttention-3 overlap inside each warpgroup: at
// step j it issues S(j) = Q K(j)^T and O += P(j-1) V(j-1) back to back, then runs the
// softmax of S(j) while the PV wgmma is still in the tensor pipe, and rescales O only after
// that wgmma has retired. K and V have their own two-stage rings, loaded one step apart:
// step j loads K(j+1) and V(j), so each copy has a whole step to land (K(j) and V(j-1) are
// the ones read at step j).
#include "attention_hopper.cuh"

extern "C" int msg_attention_extend_hopper(void* out, const void* q, int q_row_stride,
                                           const void* k_cache, const void* v_cache,
                                           const int32_t* page_table, int pt_stride,
                                           const int32_t* rows, const int32_t* seq_lens,
                                           const int32_t* q_starts, int batch, int total_q,
                                           int max_q_len, int max_seq_len, int hq, int hkv,
                                           int head_dim, int page_size, float scale, int dtype,
                                           void* stream);

namespace {

using namespace msg::hopper;

/** Warpgroups (64 query rows each) of a block: hd64 fits 2 blocks of 2 per SM at 128
 *  registers; hd128 needs ~147 registers, so 1 block per SM, of 3 (147 x 384 fits). */
template <int D>
struct Shape {
  static const int wgs = D == 64 ? 2 : 3, rows = 64 * wgs, threads = 128 * wgs;
  static const int blocks_per_sm = D == 64 ? 2 : 1;
};

template <typename T, int D>
__global__ void __launch_bounds__(Shape<D>::threads, Shape<D>::blocks_per_sm)
    extend_hopper_v2_kernel(
    T* out, const T* q, int q_row_stride, const T* k_cache, const T* v_cache,
    const int32_t* page_table, int pt_stride, const int32_t* rows, const int32_t* seq_lens,
    const int32_t* q_starts, int hq, int hkv, int page_size, float scale) {
#ifdef MSG_HAS_WGMMA
  typedef Layout<D, Shape<D>::rows> L;
  const int BQ = Shape<D>::rows, NT = Shape<D>::threads;
  const int CH = D / 8;  // 16-byte chunks per row
  extern __shared__ unsigned char smem_raw[];
  uint32_t base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  base += ((base + 1023) & ~1023u) - base;  // swizzled tiles on 1024-byte boundaries

  int b = blockIdx.z, h = blockIdx.y, tile = gridDim.x - 1 - blockIdx.x;
  int qs = q_starts[b], q_len = q_starts[b + 1] - qs;
  int q0 = tile * BQ;
  if (q0 >= q_len) return;
  int seq = seq_lens[b], prefix = seq - q_len;
  int kvh = h / (hq / hkv);
  const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;
  int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127, warp = wtid >> 5, lane = tid & 31;

  for (int i = tid; i < BQ * CH; i += NT) {
    int r = i / CH, c = i % CH;
    int qi = q0 + r;
    const T* src = q + (size_t)(qs + min(qi, q_len - 1)) * q_row_stride + (size_t)h * D + c * 8;
    cp_async16(base + L::q + swz(r, c, L::q_blk), src, qi < q_len);
  }
  int block_last = prefix + min(q0 + BQ, q_len) - 1;
  int n_tiles = block_last / BK + 1;
  // One 64-key tile of K or V (cache) into a stage at `dst` (L::k or L::v).
  auto load = [&](const T* cache, uint32_t dst, int kt, int stage) {
    for (int i = tid; i < BK * CH; i += NT) {
      int r = i / CH, c = i % CH;
      int j = kt * BK + r;
      bool ok = j < seq;
      int jj = ok ? j : 0;
      size_t off = ((size_t)(pt[jj / page_size] * page_size + jj % page_size) * hkv + kvh) * D + c * 8;
      cp_async16(base + dst + stage * L::kv_tile + swz(r, c, L::kv_blk), cache + off, ok);
    }
  };
  load(k_cache, L::k, 0, 0);
  cp_async_commit();

  int wg_q0 = q0 + wg * 64;
  int row_a = warp * 16 + (lane >> 2);
  int pos_a = prefix + wg_q0 + row_a, pos_b = pos_a + 8;
  int col = 2 * (lane & 3);
  float sl2 = scale * kLog2e;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) o[i] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  float alpha_a = 1.f, alpha_b = 1.f;
  uint32_t p[4][4];  // P(j-1), the A operand of the PV wgmma issued at step j

  // Both warpgroups run all n_tiles steps, whatever their own causal limit: a tile past a
  // warpgroup's last key is fully masked (P = 0, max and sum unchanged), and no wgmma sits
  // on a divergent path (which would make ptxas serialize them all).
  auto loads = [&](int j) {  // step j loads K(j+1) and V(j), then K(j) and V(j-1) are in
    if (j + 1 < n_tiles) load(k_cache, L::k, j + 1, (j + 1) & 1);
    if (j < n_tiles) load(v_cache, L::v, j, j & 1);
    cp_async_commit();
    cp_async_wait<1>();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
  };
  auto issue_s = [&](float* s, int j) {
    int stage = j & 1;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa = base + L::q + (kk >> 2) * L::q_blk + wg * 64 * 128 + (kk & 3) * 32;
      uint32_t ka = base + L::k + stage * L::kv_tile + (kk >> 2) * L::kv_blk + (kk & 3) * 32;
      mma_qk<T>(s, msg::wgmma::desc_sw128(qa, 16, 1024), msg::wgmma::desc_sw128(ka, 16, 1024),
                kk > 0);
    }
    msg::wgmma::commit();
  };
  auto issue_pv = [&](int j) {  // O += P(j) V(j)
    int stage = j & 1;
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      uint32_t va = base + L::v + stage * L::kv_tile + ks * 16 * 128;
      mma_pv<T, D>(o, p[ks], msg::wgmma::desc_sw128(va, L::kv_blk, 1024));
    }
    msg::wgmma::commit();
  };
  // Softmax of S(j) in place: masks, new maxima, alpha, exponentials, row sums.
  auto softmax = [&](float* s, int j) {
    int k0 = j * BK;
    if (k0 + BK - 1 > prefix + wg_q0 || k0 + BK > seq) {
#pragma unroll
      for (int i = 0; i < 32; i++) {
        int key = k0 + (i >> 2) * 8 + col + (i & 1);
        int pos = (i & 2) ? pos_b : pos_a;
        if (key > pos || key >= seq) s[i] = -INFINITY;
      }
    }
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int i = 0; i < 32; i += 4) {
      mx_a = fmaxf(mx_a, fmaxf(s[i], s[i + 1]));
      mx_b = fmaxf(mx_b, fmaxf(s[i + 2], s[i + 3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, off));
    }
    float mn_a = fmaxf(m_a, mx_a * sl2), mn_b = fmaxf(m_b, mx_b * sl2);
    // A row with no key yet keeps max -inf: exponents from 0 then.
    float base_a = mn_a == -INFINITY ? 0.f : mn_a, base_b = mn_b == -INFINITY ? 0.f : mn_b;
    alpha_a = exp2f(m_a - base_a);
    alpha_b = exp2f(m_b - base_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int i = 0; i < 32; i += 4) {
      s[i] = exp2f(s[i] * sl2 - base_a);
      s[i + 1] = exp2f(s[i + 1] * sl2 - base_a);
      s[i + 2] = exp2f(s[i + 2] * sl2 - base_b);
      s[i + 3] = exp2f(s[i + 3] * sl2 - base_b);
      sum_a += s[i] + s[i + 1];
      sum_b += s[i + 2] + s[i + 3];
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
  };
  auto rescale_pack = [&](const float* s) {
#pragma unroll
    for (int i = 0; i < D / 2; i += 4) {
      o[i] *= alpha_a;
      o[i + 1] *= alpha_a;
      o[i + 2] *= alpha_b;
      o[i + 3] *= alpha_b;
    }
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      p[ks][0] = pack2<T>(s[8 * ks + 0], s[8 * ks + 1]);
      p[ks][1] = pack2<T>(s[8 * ks + 2], s[8 * ks + 3]);
      p[ks][2] = pack2<T>(s[8 * ks + 4], s[8 * ks + 5]);
      p[ks][3] = pack2<T>(s[8 * ks + 6], s[8 * ks + 7]);
    }
  };

  // Keeps the compiler from moving reads of wgmma results above the wait that makes them
  // valid (the wgmma asm writes them at issue, as far as the compiler knows).
  auto pin = [](float* r, int n) {
#pragma unroll
    for (int i = 0; i < n; i++) asm volatile("" : "+f"(r[i])::"memory");
  };

  {  // step 0: S(0) only
    float s[32];
    loads(0);
    msg::wgmma::fence();
    issue_s(s, 0);
    msg::wgmma::wait<0>();
    pin(s, 32);
    softmax(s, 0);
    rescale_pack(s);
    __syncthreads();  // K(0) is reloaded (K(2)) at step 1
  }
  for (int j = 1; j < n_tiles; j++) {
    float s[32];
    loads(j);
    msg::wgmma::fence();
    issue_s(s, j);
    issue_pv(j - 1);
    msg::wgmma::wait<1>();  // S(j) (the older group) is done; PV(j-1) keeps running
    pin(s, 32);
    softmax(s, j);
    msg::wgmma::wait<0>();  // O and P(j-1) are the PV wgmma's until it retires
    pin(o, D / 2);
    rescale_pack(s);
    __syncthreads();  // K(j) and V(j-1) stages are reloaded at the next step
  }
  loads(n_tiles);  // V(n_tiles - 1)
  msg::wgmma::fence();
  issue_pv(n_tiles - 1);
  msg::wgmma::wait<0>();
  pin(o, D / 2);

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffff, l_a, off);
    l_b += __shfl_xor_sync(0xffffffff, l_b, off);
  }
  float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
  int qa = wg_q0 + row_a, qb = qa + 8;
#pragma unroll
  for (int j = 0; j < D / 8; j++) {
    int d = 8 * j + col;
    if (qa < q_len)
      *(uint32_t*)(out + ((size_t)(qs + qa) * hq + h) * D + d) =
          pack2<T>(o[4 * j] * inv_a, o[4 * j + 1] * inv_a);
    if (qb < q_len)
      *(uint32_t*)(out + ((size_t)(qs + qb) * hq + h) * D + d) =
          pack2<T>(o[4 * j + 2] * inv_b, o[4 * j + 3] * inv_b);
  }
#else
  __trap();  // launched only on sm_90 (checked on the host)
#endif
}

template <typename T, int D>
int launch(void* out, const void* q, int q_row_stride, const void* k_cache, const void* v_cache,
           const int32_t* page_table, int pt_stride, const int32_t* rows,
           const int32_t* seq_lens, const int32_t* q_starts, int batch, int max_q_len, int hq,
           int hkv, int page_size, float scale, cudaStream_t st) {
  int smem = Layout<D, Shape<D>::rows>::total + 1024;  // + alignment slack
  auto kern = extend_hopper_v2_kernel<T, D>;
  static thread_local int configured_device = -1;
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  if (configured_device != dev) {
    MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured_device = dev;
  }
  const int rows_per_block = Shape<D>::rows;
  dim3 grid((max_q_len + rows_per_block - 1) / rows_per_block, hq, batch);
  kern<<<grid, Shape<D>::threads, smem, st>>>((T*)out, (const T*)q, q_row_stride, (const T*)k_cache,
                               (const T*)v_cache, page_table, pt_stride, rows, seq_lens,
                               q_starts, hq, hkv, page_size, scale);
  MSG_LAUNCHED("extend_hopper_v2_kernel");
  return 0;
}

}  // namespace

extern "C" int msg_attention_extend_hopper_v2(void* out, const void* q, int q_row_stride,
                                              const void* k_cache, const void* v_cache,
                                              const int32_t* page_table, int pt_stride,
                                              const int32_t* rows, const int32_t* seq_lens,
                                              const int32_t* q_starts, int batch, int total_q,
                                              int max_q_len, int max_seq_len, int hq, int hkv,
                                              int head_dim, int page_size, float scale,
                                              int dtype, void* stream) {
  bool takes = hopper_device() && (head_dim == 64 || head_dim == 128) &&
               (dtype == MSG_BF16 || dtype == MSG_F16);
  if (!takes) {
    return msg_attention_extend_hopper(out, q, q_row_stride, k_cache, v_cache, page_table,
                                       pt_stride, rows, seq_lens, q_starts, batch, total_q,
                                       max_q_len, max_seq_len, hq, hkv, head_dim, page_size,
                                       scale, dtype, stream);
  }
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && hq > 0 && hkv > 0 && hq % hkv == 0 &&
                  page_size > 0 && max_q_len >= 0,
              "msg_attention_extend_hopper_v2: bad sizes batch=%d hq=%d hkv=%d page_size=%d",
              batch, hq, hkv, page_size);
  MSG_REQUIRE(q_row_stride % 8 == 0 && msg::aligned16_ptr(q) && msg::aligned16_ptr(k_cache) &&
                  msg::aligned16_ptr(v_cache),
              "msg_attention_extend_hopper_v2: q rows and caches must be 16-byte aligned");
  if (batch == 0 || max_q_len == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
#define MSG_HOPPER_ARGS out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, rows, \
                        seq_lens, q_starts, batch, max_q_len, hq, hkv, page_size, scale, st
  return MSG_DISPATCH_HALF(dtype, T,
    if (head_dim == 64) return launch<T, 64>(MSG_HOPPER_ARGS);
    return launch<T, 128>(MSG_HOPPER_ARGS);
  );
#undef MSG_HOPPER_ARGS
}
