// attention_extend_hopper_v6.cu — fa3 v6: fa3 v5 (attention_extend_hopper_v5.cu: v3 on a
// persistent grid over a global heavy-first work list; read its file comment first) with the
// output tile written through shared memory.
//
// v5 stores O straight from the wgmma accumulator layout: each thread writes 4-byte pairs, a
// warp's store instruction touches 8 rows x 16 bytes, so every 32-byte sector is half written
// and a consumer issues D/4 stores per thread per item. v6 has each consumer put its 64 x D
// tile (already divided by l and packed) into its own shared-memory area, 16-byte chunks
// XOR-swizzled by row so that neither the 4-byte writes nor the 16-byte reads conflict, then
// the warpgroup writes whole 16-byte chunks, a row's D*2 bytes by consecutive threads
// (coalesced 128-byte lines), D/64 x 8 stores per thread. The area is reused by the next item
// only after that item's BAR_Q sync, which every thread of the warpgroup reaches after its
// reads. Everything else is v5's. Output pointers not 16-byte aligned go to v5.
//
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "attention_hopper.cuh"
#include "warp_specialize.cuh"

#include <algorithm>
#include <cstdlib>

namespace {

using namespace msg::hopper;

/** Tile sizes, threads and the shared-memory map of one v6 block for head_dim D: Q [D/64
 *  blocks][128 rows][128 B]; K and V [STAGES][D/64 blocks][128 keys][128 B] (128-byte rows
 *  of 8 swizzled 16-byte chunks, see swz); O staging [2 consumers][64 rows][D * 2 B]; then
 *  4 x STAGES mbarriers (full K, full V, empty K, empty V) and the word an mbarrier wait sets
 *  when it gives up (see ws::mbar_wait). */
template <int D>
struct V6 {
  static const int BQ = 128, BK = 128, NT = 384;
  static const int STAGES = D == 64 ? 4 : 2;
  static const int PRODUCER_REGS = 40, CONSUMER_REGS = 232;
  static const int q_blk = BQ * 128;
  static const int kv_blk = BK * 128;
  static const int kv_tile = (D / 64) * kv_blk;
  static const int q = 0;
  static const int k = q + (D / 64) * q_blk;
  static const int v = k + STAGES * kv_tile;
  static const int o_stage = v + STAGES * kv_tile;  // [2 consumers][64 rows][D * 2 bytes]
  static const int bars = o_stage + 2 * 64 * D * 2;
  static const int gave_up = bars + 4 * STAGES * 8;
  static const int total = gave_up + 8;
  // Named barriers (0 is __syncthreads): Q loaded, per consumer; the ping-pong token, per
  // consumer; the O staging area written, per consumer.
  enum { BAR_Q = 1, BAR_TOKEN = 3, BAR_O = 5 };

  static_assert(D == 64 || D == 128, "v6 head_dim");
  static_assert(BQ == 2 * 64 && NT == 3 * 128, "one producer and two 64-row consumers");
  // setmaxnreg moves registers inside the block's allocation: 65536 / 384 threads rounds
  // down to 168 per thread at launch, and the split must not exceed it.
  static_assert(PRODUCER_REGS * 128 + CONSUMER_REGS * 256 <= 168 * NT, "register split");
  static_assert(total + 1024 <= 227 * 1024, "shared memory per block");
  static_assert(o_stage % 1024 == 0 && bars % 8 == 0 && q_blk % 1024 == 0 &&
                    kv_blk % 1024 == 0,
                "alignment");
  // The producer gather (see the kernel): CH chunks per row, RSTEP = 128 / CH rows between a
  // thread's chunks (a multiple of 8, so one swizzle phase), G = 32 / CH rows per warp step,
  // PER = BK / RSTEP chunks per thread; a warp's G * PER rows are one per lane.
  static const int CH = D / 8, RSTEP = 128 / CH, G = 32 / CH, PER = BK / RSTEP;
  static_assert(32 % CH == 0 && RSTEP % 8 == 0 && G * PER == 32, "gather mapping");
  // LBO of the V descriptor (distance between 64-dim blocks) has 14 bits of 16-byte units.
  static_assert((kv_blk >> 4) < (1 << 14), "V descriptor LBO");
};

#ifdef MSG_HAS_WGMMA  // the helpers of the kernel body (unused, and warned about, elsewhere)
/** 2^x in one instruction (flushes subnormal results to zero). */
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/** One work item: request b, head h, q tile `tile`, or none when item is past the list. */
struct Item {
  int b, h, tile;
};

/** The work list (see the file comment): the q tile slowest, counted from the last; then the
 *  request; the head fastest (q heads that share a KV head run side by side). */
__device__ __forceinline__ Item item_at(int i, int hq, int batch, int n_qtiles) {
  int per_tile = hq * batch;
  int t_rev = i / per_tile, rem = i - t_rev * per_tile;
  return Item{rem / hq, rem % hq, n_qtiles - 1 - t_rev};
}

/** The list index a block takes in round r: snake order over the G = gridDim.x blocks. */
__device__ __forceinline__ int item_index(int r) {
  int g = gridDim.x;
  return r * g + ((r & 1) ? g - 1 - (int)blockIdx.x : (int)blockIdx.x);
}

#endif

template <typename T, int D>
__global__ void __launch_bounds__(384, 1) extend_hopper_v6_kernel(
    T* out, const T* q, int q_row_stride, const T* k_cache, const T* v_cache,
    const int32_t* page_table, int pt_stride, const int32_t* rows, const int32_t* seq_lens,
    const int32_t* q_starts, int hq, int hkv, int page_size, float scale, int batch,
    int n_qtiles) {
#ifdef MSG_HAS_WGMMA
  typedef V6<D> L;
  const int BK = L::BK, STAGES = L::STAGES, CH = D / 8;  // CH: 16-byte chunks per row
  static_assert((STAGES & (STAGES - 1)) == 0, "ring slots: a power of two");
  extern __shared__ unsigned char smem_raw[];
  uint32_t base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  base = (base + 1023) & ~1023u;
  unsigned char* smem_o =
      smem_raw + (base - (uint32_t)__cvta_generic_to_shared(smem_raw)) + L::o_stage;
  // Ring index g (the block's g-th key tile over all its items) lives in slot g % STAGES.
  auto full_k = [&](int g) { return base + L::bars + 8 * (g % STAGES); };
  auto full_v = [&](int g) { return base + L::bars + 8 * (STAGES + g % STAGES); };
  auto empty_k = [&](int g) { return base + L::bars + 8 * (2 * STAGES + g % STAGES); };
  auto empty_v = [&](int g) { return base + L::bars + 8 * (3 * STAGES + g % STAGES); };
  auto fill_parity = [&](int g) { return (uint32_t)(g / STAGES) & 1; };
  const uint32_t gave_up = base + L::gave_up;
  const int n_items = n_qtiles * hq * batch;

  // The next non-empty item of this block from round r on (sets r to its round); false when
  // the block has no more. Every warpgroup walks the same sequence.
  auto next_item = [&](int& r, Item& it) {
    for (;; r++) {
      int i = item_index(r);
      if (r * (int)gridDim.x >= n_items) return false;
      if (i >= n_items) continue;
      it = item_at(i, hq, batch, n_qtiles);
      if (it.tile * L::BQ < q_starts[it.b + 1] - q_starts[it.b]) return true;
    }
  };
  // Key tiles item `it` needs (rows of the q tile against the causal limit).
  auto tiles_of = [&](const Item& it) {
    int qs = q_starts[it.b], q_len = q_starts[it.b + 1] - qs;
    int prefix = seq_lens[it.b] - q_len;
    int block_last = prefix + min((it.tile + 1) * L::BQ, q_len) - 1;
    return block_last / BK + 1;
  };

  int tid = threadIdx.x;
  int wg = __shfl_sync(0xffffffff, tid >> 7, 0);

  if (tid == 0) {
    for (int s = 0; s < STAGES; s++) {
      msg::ws::mbar_init(full_k(s), 128);
      msg::ws::mbar_init(full_v(s), 128);
      msg::ws::mbar_init(empty_k(s), 8);
      msg::ws::mbar_init(empty_v(s), 8);
    }
    msg::ws::mbar_init_fence();
    asm volatile("st.shared.u32 [%0], 0;\n" ::"r"(gave_up) : "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer: v3's gather (K(j) then V(j) per tile), item after item.
    msg::ws::regs_dec<L::PRODUCER_REGS>();
    const int RSTEP = L::RSTEP, G = L::G, PER = L::PER;
    int lane = tid & 31, warp = tid >> 5;
    int c = tid % CH, r0 = tid / CH;
    int my_row = G * warp + lane % G + RSTEP * (lane / G);
    int g0 = 0;  // ring index of the item's first key tile
    int r = 0;
    Item it;
    while (next_item(r, it)) {
      int n_tiles = tiles_of(it), seq = seq_lens[it.b];
      const int32_t* pt = page_table + (size_t)rows[it.b] * pt_stride;
      int kvh = it.h / (hq / hkv);
      auto slot_of = [&](int j) {
        int key = j * BK + my_row;
        return key < seq ? pt[key / page_size] * page_size + key % page_size : 0;
      };
      auto load = [&](int j, int slot, bool is_v) {
        int g = g0 + j;
        if (g >= STAGES)
          msg::ws::mbar_wait(is_v ? empty_v(g) : empty_k(g), fill_parity(g) ^ 1, gave_up);
        uint32_t dst = base + (is_v ? L::v : L::k) + (g % STAGES) * L::kv_tile +
                       swz(r0, c, L::kv_blk);
        const T* src = is_v ? v_cache : k_cache;
#pragma unroll
        for (int i = 0; i < PER; i++) {
          int sl = __shfl_sync(0xffffffff, slot, G * i + lane / CH);
          bool ok = j * BK + r0 + RSTEP * i < seq;
          size_t off = ((size_t)sl * hkv + kvh) * D + c * 8;
          cp_async16(dst + i * RSTEP * 128, src + off, ok);
        }
        msg::ws::mbar_arrive_cp_async(is_v ? full_v(g) : full_k(g));
      };
      int slot_cur = 0, slot_next = slot_of(0);
      for (int j = 0; j < n_tiles; j++) {
        slot_cur = slot_next;
        if (j + 1 < n_tiles) slot_next = slot_of(j + 1);
        load(j, slot_cur, false);
        load(j, slot_cur, true);
      }
      g0 += n_tiles;
      r++;
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }

  // ---- Consumers.
  msg::ws::regs_inc<L::CONSUMER_REGS>();
  int cw = wg - 1, wtid = tid & 127, warp = wtid >> 5, lane = tid & 31;
  int row_a = warp * 16 + (lane >> 2);
  int col = 2 * (lane & 3);
  float sl2 = scale * kLog2e;
  int my_token = L::BAR_TOKEN + cw, other_token = L::BAR_TOKEN + 1 - cw;

  // This warpgroup's 64 Q rows of item `it` (zeros past q_len), as one cp.async group.
  auto load_q = [&](const Item& it) {
    int qs = q_starts[it.b], q_len = q_starts[it.b + 1] - qs;
    int wg_q0 = it.tile * L::BQ + cw * 64;
    for (int i = wtid; i < 64 * CH; i += 128) {
      int rr = i / CH, cc = i % CH;
      int qi = wg_q0 + rr;
      const T* src =
          q + (size_t)(qs + min(qi, q_len - 1)) * q_row_stride + (size_t)it.h * D + cc * 8;
      cp_async16(base + L::q + swz(cw * 64 + rr, cc, L::q_blk), src, qi < q_len);
    }
    cp_async_commit();
  };
  auto wait_full = [&](uint32_t bar, int g) {
    msg::ws::mbar_wait(bar, fill_parity(g), gave_up);
    msg::ws::fence_proxy_async();
  };
  auto release = [&](uint32_t bar) {
    if (lane == 0) msg::ws::mbar_arrive(bar);
  };
  auto issue_s = [&](float* s, int g) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t qa = base + L::q + (kk >> 2) * L::q_blk + cw * 64 * 128 + (kk & 3) * 32;
      uint32_t ka = base + L::k + (g % STAGES) * L::kv_tile + (kk >> 2) * L::kv_blk + (kk & 3) * 32;
      mma_qk_n128<T>(s, msg::wgmma::desc_sw128(qa, 16, 1024),
                     msg::wgmma::desc_sw128(ka, 16, 1024), kk > 0);
    }
  };

  int r = 0, g0 = 0;
  bool first_item = true;
  Item it;
  bool have = next_item(r, it);
  if (!have) return;  // a block with no work leaves before the token protocol starts
  load_q(it);
  if (cw == 1) msg::ws::named_sync(my_token, 256);  // consumer 0 holds the token first
  float o[D / 2];
  float s[64];
  uint32_t p[8][4];
  while (have) {
    int qs = q_starts[it.b], q_len = q_starts[it.b + 1] - qs;
    int seq = seq_lens[it.b], prefix = seq - q_len;
    int n_tiles = tiles_of(it);
    int wg_q0 = it.tile * L::BQ + cw * 64;
    int pos_a = prefix + wg_q0 + row_a, pos_b = pos_a + 8;
    int h = it.h;
    // The next item, found now so that its Q can be prefetched during the last tile.
    int r_next = r + 1;
    Item nx;
    bool have_next = next_item(r_next, nx);

    cp_async_wait<0>();
    msg::ws::fence_proxy_async();
    msg::ws::named_sync(L::BAR_Q + cw, 128);
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;

    for (int j = 0; j < n_tiles; j++) {
      int g = g0 + j;
      wait_full(full_k(g), g);
      msg::wgmma::fence();
      issue_s(s, g);
      msg::wgmma::commit();
      // Hand-over after S, except at an item's first tile after the block's first item: that
      // one was made after the previous item's last P V.
      if (j > 0 || first_item) msg::ws::named_arrive(other_token, 256);
      msg::wgmma::wait<0>();
      release(empty_k(g));
      if (j == n_tiles - 1 && have_next) load_q(nx);  // this consumer's Q rows are read

      // Online softmax of S(j) (v3's, with ex2.approx and one FFMA per element).
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
      float base_a = mn_a == -INFINITY ? 0.f : mn_a, base_b = mn_b == -INFINITY ? 0.f : mn_b;
      float alpha_a = exp2_approx(m_a - base_a), alpha_b = exp2_approx(m_b - base_b);
      m_a = mn_a;
      m_b = mn_b;
      float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
      for (int i = 0; i < 64; i += 4) {
        s[i] = exp2_approx(fmaf(s[i], sl2, -base_a));
        s[i + 1] = exp2_approx(fmaf(s[i + 1], sl2, -base_a));
        s[i + 2] = exp2_approx(fmaf(s[i + 2], sl2, -base_b));
        s[i + 3] = exp2_approx(fmaf(s[i + 3], sl2, -base_b));
        sum_a += s[i] + s[i + 1];
        sum_b += s[i + 2] + s[i + 3];
      }
      l_a = l_a * alpha_a + sum_a;
      l_b = l_b * alpha_b + sum_b;
      // O (P V(j-1) completed) is rescaled only when a maximum of the warp moved.
      if (__any_sync(0xffffffff, alpha_a != 1.f || alpha_b != 1.f)) {
#pragma unroll
        for (int i = 0; i < D / 2; i += 4) {
          o[i] *= alpha_a;
          o[i + 1] *= alpha_a;
          o[i + 2] *= alpha_b;
          o[i + 3] *= alpha_b;
        }
      }
#pragma unroll
      for (int ks = 0; ks < 8; ks++) {
        p[ks][0] = pack2<T>(s[8 * ks + 0], s[8 * ks + 1]);
        p[ks][1] = pack2<T>(s[8 * ks + 2], s[8 * ks + 3]);
        p[ks][2] = pack2<T>(s[8 * ks + 4], s[8 * ks + 5]);
        p[ks][3] = pack2<T>(s[8 * ks + 6], s[8 * ks + 7]);
      }
      wait_full(full_v(g), g);
      msg::ws::named_sync(my_token, 256);
      msg::wgmma::fence();
#pragma unroll
      for (int ks = 0; ks < 8; ks++) {
        uint32_t va = base + L::v + (g % STAGES) * L::kv_tile + ks * 16 * 128;
        mma_pv<T, D>(o, p[ks], msg::wgmma::desc_sw128(va, L::kv_blk, 1024));
      }
      msg::wgmma::commit();
      msg::wgmma::wait<0>();
      release(empty_v(g));
    }
    // The early hand-over: to the other consumer's next item, or consumer 0's last one (the
    // other's final P V).
    if (have_next || cw == 0) msg::ws::named_arrive(other_token, 256);

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      l_a += __shfl_xor_sync(0xffffffff, l_a, off);
      l_b += __shfl_xor_sync(0xffffffff, l_b, off);
    }
    float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
    // O through this consumer's staging area (see the file comment): 16-byte chunk jj of
    // row rr sits at chunk jj ^ (rr & 7) of the row.
    unsigned char* stage = smem_o + cw * 64 * D * 2;
#pragma unroll
    for (int jj = 0; jj < D / 8; jj++) {
      int ra = row_a, rb = row_a + 8;
      *(uint32_t*)(stage + ra * D * 2 + ((jj ^ (ra & 7)) << 4) + col * 2) =
          pack2<T>(o[4 * jj] * inv_a, o[4 * jj + 1] * inv_a);
      *(uint32_t*)(stage + rb * D * 2 + ((jj ^ (rb & 7)) << 4) + col * 2) =
          pack2<T>(o[4 * jj + 2] * inv_b, o[4 * jj + 3] * inv_b);
    }
    msg::ws::named_sync(L::BAR_O + cw, 128);
#pragma unroll
    for (int i = wtid; i < 64 * CH; i += 128) {
      int rr = i / CH, cc = i % CH;
      if (wg_q0 + rr < q_len) {
        uint4 chunk = *(const uint4*)(stage + rr * D * 2 + ((cc ^ (rr & 7)) << 4));
        *(uint4*)(out + ((size_t)(qs + wg_q0 + rr) * hq + h) * D + cc * 8) = chunk;
      }
    }
    g0 += n_tiles;
    first_item = false;
    it = nx;
    r = r_next;
    have = have_next;
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
  typedef V6<D> L;
  int smem = L::total + 1024;  // + alignment slack
  auto kern = extend_hopper_v6_kernel<T, D>;
  static thread_local int configured_device = -1;
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  if (configured_device != dev) {
    MSG_CUDA(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    configured_device = dev;
  }
  int n_qtiles = (max_q_len + L::BQ - 1) / L::BQ;
  long long n_items = (long long)n_qtiles * hq * batch;
  MSG_REQUIRE(n_items < (1ll << 30), "msg_attention_extend_hopper_v6: %lld work items",
              n_items);
  // MINISGL_FA3_V6_BLOCKS caps the grid (tests force long item chains per block with it).
  const char* cap_env = getenv("MINISGL_FA3_V6_BLOCKS");
  int cap = cap_env && *cap_env ? atoi(cap_env) : 0;
  const int sms = std::max(1, msg::sm_count());
  int blocks = cap > 0 ? std::min(cap, sms) : sms;
  int grid = (int)std::min<long long>(n_items, blocks);
  kern<<<grid, L::NT, smem, st>>>((T*)out, (const T*)q, q_row_stride, (const T*)k_cache,
                                  (const T*)v_cache, page_table, pt_stride, rows, seq_lens,
                                  q_starts, hq, hkv, page_size, scale, batch, n_qtiles);
  MSG_LAUNCHED("extend_hopper_v6_kernel");
  return 0;
}

}  // namespace

/** fa3 v6: checks, the native fallback (v5 for an output not 16-byte aligned), dispatch on
 *  dtype and head_dim. */
extern "C" int msg_attention_extend_hopper_v6(void* out, const void* q, int q_row_stride,
                                              const void* k_cache, const void* v_cache,
                                              const int32_t* page_table, int pt_stride,
                                              const int32_t* rows, const int32_t* seq_lens,
                                              const int32_t* q_starts, int batch, int total_q,
                                              int max_q_len, int max_seq_len, int hq, int hkv,
                                              int head_dim, int page_size, float scale,
                                              int dtype, void* stream) {
  const char* name = "msg_attention_extend_hopper_v6";
  bool takes = hopper_device() && (head_dim == 64 || head_dim == 128) &&
               (dtype == MSG_BF16 || dtype == MSG_F16);
  if (takes && !msg::aligned16_ptr(out)) {
    return msg_attention_extend_hopper_v5(out, q, q_row_stride, k_cache, v_cache, page_table,
                                          pt_stride, rows, seq_lens, q_starts, batch, total_q,
                                          max_q_len, max_seq_len, hq, hkv, head_dim, page_size,
                                          scale, dtype, stream);
  }
  if (!takes) {
    return msg_attention_extend(out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride,
                                rows, seq_lens, q_starts, batch, total_q, max_q_len,
                                max_seq_len, hq, hkv, head_dim, page_size, scale, dtype, stream);
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
    if (head_dim == 64) return launch<T, 64>(MSG_HOPPER_ARGS);
    return launch<T, 128>(MSG_HOPPER_ARGS);
  );
#undef MSG_HOPPER_ARGS
}
