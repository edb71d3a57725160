// attention_extend_hopper_v3.cu — fa3 v3 and v4: causal extend attention over the paged KV
// cache on Hopper (sm_90a), warp-specialised as FlashAttention-3 is. v4 is v3 with OVERLAP.
//
// A block owns 128 query rows of one head and runs three warpgroups:
//   producer (warpgroup 0, setmaxnreg 40): gathers K and V tiles of 128 keys from the pages
//     with cp.async into a ring of STAGES slots; each slot has full and empty mbarriers for K
//     and for V. A thread's cp.async.mbarrier.arrive fires when its copies have landed, so
//     the full barrier completes when the whole tile is in shared memory.
//   consumers (warpgroups 1 and 2, setmaxnreg 232): 64 query rows each. S = Q K^T (ss-wgmma
//     m64n128), online softmax in registers, O += P V (rs-wgmma, P from registers). K is
//     released as soon as S is done, V after P V.
// Ping-pong: two named barriers pass a token between the consumers so that one issues its
// GEMMs (P V of tile j-1, then S of tile j) while the other runs its softmax; the token is
// taken before P V and handed over right after S is issued.
// OVERLAP (v4, FA3's intra-warpgroup overlap): a consumer issues S(j) and P V(j-1) together,
// waits for S(j) alone and runs its softmax while its own P V(j-1) is still in the tensor
// pipe (the producer then fills K one tile ahead of V, the order they are read in).
// Both consumers run every key tile of the block (their causal limits differ by at most one
// tile, and that tile is masked), so the barrier counts match and no wgmma sits on a
// warpgroup-divergent path. Heavy (late) q tiles are launched first.
//
// Same contract as msg_attention_extend_hopper (v1); shapes it does not take go there.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "attention_hopper.cuh"
#include "warp_specialize.cuh"

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

/** Tile sizes, threads and the shared-memory map of one v3 block for head_dim D: Q [D/64
 *  blocks][128 rows][128 B]; K and V [STAGES][D/64 blocks][128 keys][128 B] (128-byte rows
 *  of 8 swizzled 16-byte chunks, see swz); then 4 x STAGES mbarriers (full K, full V, empty K,
 *  empty V) and the word an mbarrier wait sets when it gives up (see ws::mbar_wait). */
template <int D>
struct V3 {
  static const int BQ = 128, BK = 128, NT = 384;
  static const int STAGES = D == 64 ? 4 : 2;
  static const int PRODUCER_REGS = 40, CONSUMER_REGS = 232;
  static const int q_blk = BQ * 128;
  static const int kv_blk = BK * 128;
  static const int kv_tile = (D / 64) * kv_blk;
  static const int q = 0;
  static const int k = q + (D / 64) * q_blk;
  static const int v = k + STAGES * kv_tile;
  static const int bars = v + STAGES * kv_tile;
  static const int gave_up = bars + 4 * STAGES * 8;
  static const int total = gave_up + 8;
  // Named barriers (0 is __syncthreads): Q loaded, per consumer; the ping-pong token, per
  // consumer.
  enum { BAR_Q = 1, BAR_TOKEN = 3 };

  static_assert(D == 64 || D == 128, "v3 head_dim");
  static_assert(BQ == 2 * 64 && NT == 3 * 128, "one producer and two 64-row consumers");
  // setmaxnreg moves registers inside the block's allocation: 65536 / 384 threads rounds
  // down to 168 per thread at launch, and the split must not exceed it.
  static_assert(PRODUCER_REGS * 128 + CONSUMER_REGS * 256 <= 168 * NT, "register split");
  static_assert(total + 1024 <= 227 * 1024, "shared memory per block");
  static_assert(bars % 8 == 0 && q_blk % 1024 == 0 && kv_blk % 1024 == 0, "alignment");
  // The producer gather (see the kernel): CH chunks per row, RSTEP = 128 / CH rows between a
  // thread's chunks (a multiple of 8, so one swizzle phase), G = 32 / CH rows per warp step,
  // PER = BK / RSTEP chunks per thread; a warp's G * PER rows are one per lane.
  static const int CH = D / 8, RSTEP = 128 / CH, G = 32 / CH, PER = BK / RSTEP;
  static_assert(32 % CH == 0 && RSTEP % 8 == 0 && G * PER == 32, "gather mapping");
  // LBO of the V descriptor (distance between 64-dim blocks) has 14 bits of 16-byte units.
  static_assert((kv_blk >> 4) < (1 << 14), "V descriptor LBO");
};

template <typename T, int D, bool OVERLAP>
__global__ void __launch_bounds__(384, 1) extend_hopper_v3_kernel(
    T* out, const T* q, int q_row_stride, const T* k_cache, const T* v_cache,
    const int32_t* page_table, int pt_stride, const int32_t* rows, const int32_t* seq_lens,
    const int32_t* q_starts, int hq, int hkv, int page_size, float scale) {
#ifdef MSG_HAS_WGMMA
  typedef V3<D> L;
  const int BK = L::BK, STAGES = L::STAGES, CH = D / 8;  // CH: 16-byte chunks per row
  static_assert((STAGES & (STAGES - 1)) == 0, "ring slots: a power of two");
  extern __shared__ unsigned char smem_raw[];
  // Swizzled tiles must start on 1024-byte boundaries (the swizzle reads address bits 7-9).
  uint32_t base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  base = (base + 1023) & ~1023u;
  // Key tile j lives in ring slot j % STAGES; it is that slot's (j / STAGES)-th fill.
  auto full_k = [&](int j) { return base + L::bars + 8 * (j % STAGES); };
  auto full_v = [&](int j) { return base + L::bars + 8 * (STAGES + j % STAGES); };
  auto empty_k = [&](int j) { return base + L::bars + 8 * (2 * STAGES + j % STAGES); };
  auto empty_v = [&](int j) { return base + L::bars + 8 * (3 * STAGES + j % STAGES); };
  auto fill_parity = [&](int j) { return (uint32_t)(j / STAGES) & 1; };
  const uint32_t gave_up = base + L::gave_up;

  int b = blockIdx.z, h = blockIdx.y, tile = gridDim.x - 1 - blockIdx.x;
  int qs = q_starts[b], q_len = q_starts[b + 1] - qs;
  int q0 = tile * L::BQ;
  if (q0 >= q_len) return;  // the whole block leaves, before any barrier
  int seq = seq_lens[b], prefix = seq - q_len;
  int block_last = prefix + min(q0 + L::BQ, q_len) - 1;  // last key any row here needs
  int n_tiles = block_last / BK + 1;
  int tid = threadIdx.x;
  // Warpgroup index, made visibly warp-uniform for the compiler.
  int wg = __shfl_sync(0xffffffff, tid >> 7, 0);

  if (tid == 0) {
    for (int s = 0; s < STAGES; s++) {
      msg::ws::mbar_init(full_k(s), 128);  // one cp.async arrival per producer thread
      msg::ws::mbar_init(full_v(s), 128);
      msg::ws::mbar_init(empty_k(s), 8);  // one arrival per consumer warp
      msg::ws::mbar_init(empty_v(s), 8);
    }
    msg::ws::mbar_init_fence();
    asm volatile("st.shared.u32 [%0], 0;\n" ::"r"(gave_up) : "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer: K/V gather. Thread t copies chunk c = t % CH of rows r0 + RSTEP*i; each
    // lane first resolves the cache slot of one of its warp's 32 rows, then the slots are
    // passed around with shuffles (one page-table read and division per lane per tile).
    // Tiles are filled in the order the consumers read them: K(j), V(j) without OVERLAP;
    // K(j), V(j-1) with it.
    msg::ws::regs_dec<L::PRODUCER_REGS>();
    const int RSTEP = L::RSTEP, G = L::G, PER = L::PER;
    int lane = tid & 31, warp = tid >> 5;
    int c = tid % CH, r0 = tid / CH;
    int my_row = G * warp + lane % G + RSTEP * (lane / G);  // the row whose slot lane resolves
    const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;
    int kvh = h / (hq / hkv);
    auto slot_of = [&](int j) {
      int key = j * BK + my_row;
      return key < seq ? pt[key / page_size] * page_size + key % page_size : 0;
    };
    // One tile of K or V: wait until both consumers released the slot's previous fill, copy
    // (zeros past seq), and arrive on the full barrier once this thread's copies landed.
    auto load = [&](int j, int slot, bool is_v) {
      if (j >= STAGES)
        msg::ws::mbar_wait(is_v ? empty_v(j) : empty_k(j), fill_parity(j) ^ 1, gave_up);
      uint32_t dst = base + (is_v ? L::v : L::k) + (j % STAGES) * L::kv_tile +
                     swz(r0, c, L::kv_blk);
      const T* src = is_v ? v_cache : k_cache;
#pragma unroll
      for (int i = 0; i < PER; i++) {
        int sl = __shfl_sync(0xffffffff, slot, G * i + lane / CH);
        bool ok = j * BK + r0 + RSTEP * i < seq;
        size_t off = ((size_t)sl * hkv + kvh) * D + c * 8;
        // Row r0 + RSTEP*i: RSTEP rows further down is RSTEP * 128 bytes, same swizzle phase.
        cp_async16(dst + i * RSTEP * 128, src + off, ok);
      }
      msg::ws::mbar_arrive_cp_async(is_v ? full_v(j) : full_k(j));
    };
    // slot_prev/cur/next: the cache slot of tile j-1, j, j+1 (read one tile ahead).
    int slot_prev = 0, slot_cur = 0, slot_next = slot_of(0);
    for (int j = 0; j < n_tiles; j++) {
      slot_prev = slot_cur;
      slot_cur = slot_next;
      if (j + 1 < n_tiles) slot_next = slot_of(j + 1);
      load(j, slot_cur, false);
      if (!OVERLAP) load(j, slot_cur, true);
      else if (j > 0) load(j - 1, slot_prev, true);
    }
    if (OVERLAP) load(n_tiles - 1, slot_cur, true);
    asm volatile("cp.async.wait_all;\n" ::: "memory");  // leave no copy in flight
    return;
  }

  // ---- Consumers.
  msg::ws::regs_inc<L::CONSUMER_REGS>();
  int cw = wg - 1, wtid = tid & 127, warp = wtid >> 5, lane = tid & 31;
  int wg_q0 = q0 + cw * 64;
  // This warpgroup's 64 Q rows, zeros past q_len.
  for (int i = wtid; i < 64 * CH; i += 128) {
    int r = i / CH, cc = i % CH;
    int qi = wg_q0 + r;
    const T* src = q + (size_t)(qs + min(qi, q_len - 1)) * q_row_stride + (size_t)h * D + cc * 8;
    cp_async16(base + L::q + swz(cw * 64 + r, cc, L::q_blk), src, qi < q_len);
  }
  cp_async_commit();
  cp_async_wait<0>();
  msg::ws::fence_proxy_async();
  msg::ws::named_sync(L::BAR_Q + cw, 128);

  int row_a = warp * 16 + (lane >> 2);  // this thread's rows: row_a and row_a + 8
  int pos_a = prefix + wg_q0 + row_a, pos_b = pos_a + 8;
  int col = 2 * (lane & 3);
  float sl2 = scale * kLog2e;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; i++) o[i] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  int my_token = L::BAR_TOKEN + cw, other_token = L::BAR_TOKEN + 1 - cw;

  // Waits for tile j's K (or V) and makes it visible to wgmma.
  auto wait_full = [&](uint32_t bar, int j) {
    msg::ws::mbar_wait(bar, fill_parity(j), gave_up);
    msg::ws::fence_proxy_async();
  };
  // Releases a slot: one arrival per warp, after this warpgroup's wgmmas on it completed.
  auto release = [&](uint32_t bar) {
    if (lane == 0) msg::ws::mbar_arrive(bar);
  };
  // S = Q K(j)^T (issue only; the caller fences before and commits after).
  auto issue_s = [&](float* s, int j) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa = base + L::q + (kk >> 2) * L::q_blk + cw * 64 * 128 + (kk & 3) * 32;
      uint32_t ka = base + L::k + (j % STAGES) * L::kv_tile + (kk >> 2) * L::kv_blk + (kk & 3) * 32;
      mma_qk_n128<T>(s, msg::wgmma::desc_sw128(qa, 16, 1024),
                     msg::wgmma::desc_sw128(ka, 16, 1024), kk > 0);
    }
  };
  // O += P V(j) (issue only). V [key][dim], MN-major: 8-key groups 1024 B apart (SBO), 64-dim
  // blocks kv_blk apart (LBO); 16 keys per step.
  auto issue_pv = [&](uint32_t (*p)[4], int j) {
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
      uint32_t va = base + L::v + (j % STAGES) * L::kv_tile + ks * 16 * 128;
      mma_pv<T, D>(o, p[ks], msg::wgmma::desc_sw128(va, L::kv_blk, 1024));
    }
  };
  // Online softmax of S(j) in place (s becomes exp2 of the scaled scores); updates the row
  // maxima and sums, returns the factors that rescale O.
  auto softmax = [&](float* s, int j, float& alpha_a, float& alpha_b) {
    // Mask only tiles that cross this warpgroup's diagonal or the end of the sequence.
    int k0 = j * BK;
    if (k0 + BK - 1 > prefix + wg_q0 || k0 + BK > seq) {
#pragma unroll
      for (int i = 0; i < 64; i++) {
        int key = k0 + (i >> 2) * 8 + col + (i & 1);
        int pos = (i & 2) ? pos_b : pos_a;
        if (key > pos || key >= seq) s[i] = -INFINITY;
      }
    }
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int i = 0; i < 64; i += 4) {
      mx_a = fmaxf(mx_a, fmaxf(s[i], s[i + 1]));
      mx_b = fmaxf(mx_b, fmaxf(s[i + 2], s[i + 3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, off));
    }
    float mn_a = fmaxf(m_a, mx_a * sl2), mn_b = fmaxf(m_b, mx_b * sl2);
    // A row with no key yet (all masked so far) keeps max -inf: use 0 as the base.
    float base_a = mn_a == -INFINITY ? 0.f : mn_a, base_b = mn_b == -INFINITY ? 0.f : mn_b;
    alpha_a = exp2f(m_a - base_a);
    alpha_b = exp2f(m_b - base_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int i = 0; i < 64; i += 4) {
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
  auto rescale_o = [&](float alpha_a, float alpha_b) {
#pragma unroll
    for (int i = 0; i < D / 2; i += 4) {
      o[i] *= alpha_a;
      o[i + 1] *= alpha_a;
      o[i + 2] *= alpha_b;
      o[i + 3] *= alpha_b;
    }
  };
  // P as the A fragments of eight k16 steps: keys 16ks.. are accumulator groups 2ks, 2ks+1.
  auto pack_p = [&](const float* s, uint32_t (*p)[4]) {
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
      p[ks][0] = pack2<T>(s[8 * ks + 0], s[8 * ks + 1]);
      p[ks][1] = pack2<T>(s[8 * ks + 2], s[8 * ks + 3]);
      p[ks][2] = pack2<T>(s[8 * ks + 4], s[8 * ks + 5]);
      p[ks][3] = pack2<T>(s[8 * ks + 6], s[8 * ks + 7]);
    }
  };

  // Token protocol (both schedules): consumer 0 holds it first, consumer 1 waits for
  // consumer 0's first S. A consumer takes it (named_sync on its own barrier) before each
  // P V and hands it over (named_arrive on the other's) right after issuing each S; consumer
  // 0 hands it over once more at the end. Per barrier: n_tiles (consumer 0's) or n_tiles + 1
  // (consumer 1's) syncs, matched by as many arrivals from the other consumer.
  float s[64];
  uint32_t p[8][4];
  float alpha_a, alpha_b;
  if (cw == 1) msg::ws::named_sync(my_token, 256);
  if constexpr (!OVERLAP) {
    // Per tile: S(j) -> hand over -> softmax(j) -> take -> P V(j) (waited).
    for (int j = 0; j < n_tiles; j++) {
      wait_full(full_k(j), j);
      msg::wgmma::fence();
      issue_s(s, j);
      msg::wgmma::commit();
      msg::ws::named_arrive(other_token, 256);
      msg::wgmma::wait<0>();
      release(empty_k(j));
      softmax(s, j, alpha_a, alpha_b);
      rescale_o(alpha_a, alpha_b);
      pack_p(s, p);
      wait_full(full_v(j), j);
      msg::ws::named_sync(my_token, 256);
      msg::wgmma::fence();
      issue_pv(p, j);
      msg::wgmma::commit();
      msg::wgmma::wait<0>();
      release(empty_v(j));
    }
  } else {
    // FA3's intra-warpgroup overlap: step j issues S(j) and P V(j-1) back to back, waits for
    // S(j) alone and runs its softmax while P V(j-1) is in the tensor pipe; O is rescaled
    // once P V(j-1) has completed.
    wait_full(full_k(0), 0);
    msg::wgmma::fence();
    issue_s(s, 0);
    msg::wgmma::commit();
    msg::ws::named_arrive(other_token, 256);
    msg::wgmma::wait<0>();
    release(empty_k(0));
    softmax(s, 0, alpha_a, alpha_b);
    pack_p(s, p);  // O is still zero: no rescale
    for (int j = 1; j < n_tiles; j++) {
      wait_full(full_k(j), j);
      wait_full(full_v(j - 1), j - 1);
      msg::ws::named_sync(my_token, 256);
      msg::wgmma::fence();
      issue_s(s, j);
      msg::wgmma::commit();
      issue_pv(p, j - 1);
      msg::wgmma::commit();
      msg::ws::named_arrive(other_token, 256);
      msg::wgmma::wait<1>();  // S(j) done; P V(j-1) may still run
      release(empty_k(j));
      softmax(s, j, alpha_a, alpha_b);
      msg::wgmma::wait<0>();
      release(empty_v(j - 1));
      rescale_o(alpha_a, alpha_b);
      pack_p(s, p);
    }
    wait_full(full_v(n_tiles - 1), n_tiles - 1);
    msg::ws::named_sync(my_token, 256);
    msg::wgmma::fence();
    issue_pv(p, n_tiles - 1);
    msg::wgmma::commit();
    msg::wgmma::wait<0>();
    release(empty_v(n_tiles - 1));
  }
  if (cw == 0) msg::ws::named_arrive(other_token, 256);  // the last hand-over

  // Row sums are per-thread partials over its columns: reduce across the quad.
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

template <typename T, int D, bool OVERLAP>
int launch(void* out, const void* q, int q_row_stride, const void* k_cache, const void* v_cache,
           const int32_t* page_table, int pt_stride, const int32_t* rows,
           const int32_t* seq_lens, const int32_t* q_starts, int batch, int max_q_len, int hq,
           int hkv, int page_size, float scale, cudaStream_t st) {
  typedef V3<D> L;
  int smem = L::total + 1024;  // + alignment slack
  auto kern = extend_hopper_v3_kernel<T, D, OVERLAP>;
  static thread_local int configured_device = -1;
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  if (configured_device != dev) {
    MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured_device = dev;
  }
  dim3 grid((max_q_len + L::BQ - 1) / L::BQ, hq, batch);
  kern<<<grid, L::NT, smem, st>>>((T*)out, (const T*)q, q_row_stride, (const T*)k_cache,
                                  (const T*)v_cache, page_table, pt_stride, rows, seq_lens,
                                  q_starts, hq, hkv, page_size, scale);
  MSG_LAUNCHED("extend_hopper_v3_kernel");
  return 0;
}

/** Both v3 entry points: checks, the v1 fallback, dispatch on dtype and head_dim. */
template <bool OVERLAP>
int extend_v3(const char* name, void* out, const void* q, int q_row_stride,
              const void* k_cache, const void* v_cache, const int32_t* page_table,
              int pt_stride, const int32_t* rows, const int32_t* seq_lens,
              const int32_t* q_starts, int batch, int total_q, int max_q_len, int max_seq_len,
              int hq, int hkv, int head_dim, int page_size, float scale, int dtype,
              void* stream) {
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
              "%s: bad sizes batch=%d hq=%d hkv=%d page_size=%d", name, batch, hq, hkv,
              page_size);
  MSG_REQUIRE(q_row_stride % 8 == 0 && msg::aligned16_ptr(q) && msg::aligned16_ptr(k_cache) &&
                  msg::aligned16_ptr(v_cache),
              "%s: q rows and caches must be 16-byte aligned", name);
  if (batch == 0 || max_q_len == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
#define MSG_HOPPER_ARGS out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, rows, \
                        seq_lens, q_starts, batch, max_q_len, hq, hkv, page_size, scale, st
  return MSG_DISPATCH_HALF(dtype, T,
    if (head_dim == 64) return launch<T, 64, OVERLAP>(MSG_HOPPER_ARGS);
    return launch<T, 128, OVERLAP>(MSG_HOPPER_ARGS);
  );
#undef MSG_HOPPER_ARGS
}

}  // namespace

#define MSG_V3_PARAMS                                                                        \
  void *out, const void *q, int q_row_stride, const void *k_cache, const void *v_cache,     \
      const int32_t *page_table, int pt_stride, const int32_t *rows, const int32_t *seq_lens, \
      const int32_t *q_starts, int batch, int total_q, int max_q_len, int max_seq_len, int hq, \
      int hkv, int head_dim, int page_size, float scale, int dtype, void *stream
#define MSG_V3_ARGS                                                                          \
  out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, rows, seq_lens, q_starts,  \
      batch, total_q, max_q_len, max_seq_len, hq, hkv, head_dim, page_size, scale, dtype,   \
      stream

extern "C" int msg_attention_extend_hopper_v3(MSG_V3_PARAMS) {
  return extend_v3<false>("msg_attention_extend_hopper_v3", MSG_V3_ARGS);
}

extern "C" int msg_attention_extend_hopper_v4(MSG_V3_PARAMS) {
  return extend_v3<true>("msg_attention_extend_hopper_v4", MSG_V3_ARGS);
}
#undef MSG_V3_PARAMS
#undef MSG_V3_ARGS
