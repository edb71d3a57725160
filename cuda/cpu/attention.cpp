// attention.cpp — causal attention over the paged KV cache (extend and decode) on the host,
// and the widening of fp8 cache pages for the extend kernel.
//
// Work item = (request, block of up to kQBlock consecutive queries, range of keys), all
// heads at once: a key's cache slot holds every kv head contiguously (hkv * head_dim), so
// an item reads whole slot rows sequentially and shares each row among all its queries and
// the G = hq / hkv query heads of each kv head. Keys are visited in blocks of kKBlock with
// an online softmax in fp32 (running max m, running sum l, accumulator acc per query head).
// - A request with more than kQBlock queries (prefill) gives one item per query block,
//   each over all keys it can see; it writes its output directly.
// - A request with at most kQBlock queries (decode, short extend) has its keys split into
//   chunks of kKChunk (flash-decoding), so a long context still spreads over the threads;
//   the chunks' (m, l, acc) are merged afterwards. Chunk sizes do not depend on the number
//   of threads, so results are the same bits whatever the thread count.
#include <cmath>
#include <limits>

#include "common.h"

using namespace msg;

namespace {

constexpr int kQBlock = 8, kKBlock = 32, kKChunk = 256;
const float kNegInf = -std::numeric_limits<float>::infinity();

struct Ctx {
  const void* k;
  const void* v;
  const int32_t* page_table;
  int pt_stride, hq, hkv, d, page_size, dtype;
  float scale;
  int kv_dtype;  // of the caches: dtype, or fp8 e4m3 (decode)
};

struct Item {
  int b, t0, nq, pos0, k0, k1, row;
  int64_t part;  // offset of its partial state, or -1: write the output directly
};

// Pointers to the fp32 slot rows [hkv * d] of keys [p0, p0 + n) of one cache (converted
// into buf when the cache is 16-bit or fp8).
void fetch_rows(const Ctx& c, const void* cache, const int32_t* pt, int p0, int n, float* buf,
                const float** rows) {
  const int64_t kvd = (int64_t)c.hkv * c.d;
  for (int j = 0; j < n; j++) {
    const int p = p0 + j;
    const int64_t off = ((int64_t)pt[p / c.page_size] * c.page_size + p % c.page_size) * kvd;
    if (c.kv_dtype == MSG_F32) {
      rows[j] = (const float*)cache + off;
    } else {
      load_f32(buf + j * kvd, cache, c.kv_dtype, off, kvd);
      rows[j] = buf + j * kvd;
    }
  }
}

// sx[j] = dot(q, krows[j] + koff) * scale for j < n, four keys at a time: q is loaded once
// for four rows and the four chains run in parallel.
void scores(float* sx, const float* q, const float* const* krows, int64_t koff, int n, int d,
            float scale) {
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float *k0 = krows[j] + koff, *k1 = krows[j + 1] + koff, *k2 = krows[j + 2] + koff,
                *k3 = krows[j + 3] + koff;
    v8f s0 = {}, s1 = {}, s2 = {}, s3 = {};
    int c = 0;
    for (; c + 8 <= d; c += 8) {
      const v8f qv = loadv(q + c);
      s0 += qv * loadv(k0 + c);
      s1 += qv * loadv(k1 + c);
      s2 += qv * loadv(k2 + c);
      s3 += qv * loadv(k3 + c);
    }
    float r0 = hsum(s0), r1 = hsum(s1), r2 = hsum(s2), r3 = hsum(s3);
    for (; c < d; c++) {
      r0 += q[c] * k0[c];
      r1 += q[c] * k1[c];
      r2 += q[c] * k2[c];
      r3 += q[c] * k3[c];
    }
    sx[j] = r0 * scale;
    sx[j + 1] = r1 * scale;
    sx[j + 2] = r2 * scale;
    sx[j + 3] = r3 * scale;
  }
  for (; j < n; j++) sx[j] = dot(q, krows[j] + koff, d) * scale;
}

// acc[c0 .. c0 + 8 * NV) += sum_j e[j] * vrows[j][koff + c0 ..]: the accumulator slice
// stays in registers over all n keys.
template <int NV>
void accumulate_slice(float* acc, const float* e, const float* const* vrows, int64_t koff,
                      int n, int c0) {
  v8f a[NV];
  for (int u = 0; u < NV; u++) a[u] = loadv(acc + c0 + 8 * u);
  for (int j = 0; j < n; j++) {
    const float* v = vrows[j] + koff + c0;
    const float ej = e[j];
    for (int u = 0; u < NV; u++) a[u] += ej * loadv(v + 8 * u);
  }
  for (int u = 0; u < NV; u++) storev(acc + c0 + 8 * u, a[u]);
}

// acc[0 .. d) += sum_j e[j] * vrows[j][koff ..].
void accumulate(float* acc, const float* e, const float* const* vrows, int64_t koff, int n,
                int d) {
  int c = 0;
  for (; c + 64 <= d; c += 64) accumulate_slice<8>(acc, e, vrows, koff, n, c);
  for (; c + 16 <= d; c += 16) accumulate_slice<2>(acc, e, vrows, koff, n, c);
  for (; c + 8 <= d; c += 8) accumulate_slice<1>(acc, e, vrows, koff, n, c);
  for (; c < d; c++) {
    float t = acc[c];
    for (int j = 0; j < n; j++) t += e[j] * vrows[j][koff + c];
    acc[c] = t;
  }
}

// Online-softmax attention of queries q [nq][hq][d] (fp32; query i at position pos0 + i)
// over keys [k0, k1) of page-table row pt, into m, l [nq * hq] and acc [nq * hq][d].
void attend(const Ctx& c, const int32_t* pt, const float* q, int nq, int pos0, int k0, int k1,
            float* m, float* l, float* acc) {
  const int d = c.d, hq = c.hq, G = hq / c.hkv, nh = nq * hq;
  const int64_t kvd = (int64_t)c.hkv * d;  // floats of one slot row
  for (int x = 0; x < nh; x++) {
    m[x] = kNegInf;
    l[x] = 0.0f;
  }
  std::memset(acc, 0, sizeof(float) * nh * d);
  float* kbuf = scratch(1, (size_t)(kKBlock * kvd));
  float* vbuf = scratch(2, (size_t)(kKBlock * kvd));
  float* s = scratch(3, (size_t)nh * kKBlock);
  const float* krows[kKBlock];
  const float* vrows[kKBlock];
  for (int kb = k0; kb < k1; kb += kKBlock) {
    const int nb = k1 - kb < kKBlock ? k1 - kb : kKBlock;
    if (kb > pos0 + nq - 1) break;  // no query sees these keys (causal)
    fetch_rows(c, c.k, pt, kb, nb, kbuf, krows);
    fetch_rows(c, c.v, pt, kb, nb, vbuf, vrows);
    for (int i = 0; i < nq; i++) {
      // Keys kb .. pos0 + i are visible to query i.
      int lim = pos0 + i - kb + 1;
      if (lim <= 0) continue;
      if (lim > nb) lim = nb;
      for (int h = 0; h < hq; h++) {
        const int x = i * hq + h;
        const float* qx = q + (int64_t)x * d;
        const int64_t koff = (int64_t)(h / G) * d;
        float* sx = s + (int64_t)x * kKBlock;
        scores(sx, qx, krows, koff, lim, d, c.scale);
        float bm = m[x];
        for (int j = 0; j < lim; j++) bm = sx[j] > bm ? sx[j] : bm;
        const float corr = std::exp(m[x] - bm);  // 0 on the first visible block
        float* ax = acc + (int64_t)x * d;
        if (corr != 1.0f) msg::scale(ax, corr, d);
        float sum = 0.0f;
        for (int j = 0; j < lim; j++) {
          sx[j] = std::exp(sx[j] - bm);
          sum += sx[j];
        }
        accumulate(ax, sx, vrows, koff, lim, d);
        l[x] = l[x] * corr + sum;
        m[x] = bm;
      }
    }
  }
}

void store_out(const Ctx& c, void* out, int t0, int nq, const float* l, float* acc) {
  const int d = c.d;
  for (int x = 0; x < nq * c.hq; x++) {
    // No visible key (an empty padded row) gives zeros rather than NaN.
    msg::scale(acc + (int64_t)x * d, l[x] > 0 ? 1.0f / l[x] : 0.0f, d);
  }
  store_f32(out, c.dtype, (int64_t)t0 * c.hq * d, acc, (int64_t)nq * c.hq * d);
}

// Runs the items, then merges the key chunks of split requests.
void run(const Ctx& c, void* out, const void* q, int q_row_stride, const std::vector<Item>& items,
         int64_t part_floats) {
  const int d = c.d, hq = c.hq;
  const int64_t qd = (int64_t)hq * d;
  std::vector<float> parts((size_t)part_floats);
  parallel_for((int64_t)items.size(), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; it++) {
      const Item& I = items[it];
      float* qf = scratch(0, (size_t)(I.nq * qd));
      for (int i = 0; i < I.nq; i++)
        load_f32(qf + i * qd, q, c.dtype, (int64_t)(I.t0 + i) * q_row_stride, qd);
      const int nh = I.nq * hq;
      float* st = I.part >= 0 ? parts.data() + I.part : scratch(4, (size_t)nh * (d + 2));
      float *m = st, *l = st + nh, *acc = st + 2 * nh;
      attend(c, c.page_table + (int64_t)I.row * c.pt_stride, qf, I.nq, I.pos0, I.k0, I.k1, m, l,
             acc);
      if (I.part < 0) store_out(c, out, I.t0, I.nq, l, acc);
    }
  });
  if (part_floats == 0) return;
  // Merge the chunks of each split request (consecutive items with the same t0).
  std::vector<std::pair<size_t, size_t>> groups;
  for (size_t i = 0; i < items.size();) {
    size_t j = i;
    while (j < items.size() && items[j].part >= 0 && items[j].t0 == items[i].t0) j++;
    if (j > i) groups.push_back({i, j});
    i = j > i ? j : i + 1;
  }
  parallel_for((int64_t)groups.size(), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; g++) {
      const Item& first = items[groups[g].first];
      const int nh = first.nq * hq;
      float* acc = scratch(0, (size_t)nh * d);
      float* l = scratch(1, (size_t)nh);
      std::memset(acc, 0, sizeof(float) * nh * d);
      for (int x = 0; x < nh; x++) {
        float M = kNegInf;
        for (size_t it = groups[g].first; it < groups[g].second; it++) {
          const float mc = parts[items[it].part + x];
          M = mc > M ? mc : M;
        }
        l[x] = 0.0f;
        if (M == kNegInf) continue;
        for (size_t it = groups[g].first; it < groups[g].second; it++) {
          const float* st = parts.data() + items[it].part;
          const float w = std::exp(st[x] - M);
          l[x] += st[nh + x] * w;
          axpy(acc + (int64_t)x * d, w, st + 2 * nh + (int64_t)x * d, d);
        }
      }
      store_out(c, out, first.t0, first.nq, l, acc);
    }
  });
}

// Items of request b (queries t0 .. t0 + ql - 1 at positions seq_len - ql ...).
void add_items(std::vector<Item>& items, int64_t& part_floats, const Ctx& c, int b, int row,
               int t0, int ql, int seq_len) {
  const int pos0 = seq_len - ql;
  if (ql > kQBlock) {
    for (int i = 0; i < ql; i += kQBlock) {
      const int nq = ql - i < kQBlock ? ql - i : kQBlock;
      items.push_back({b, t0 + i, nq, pos0 + i, 0, pos0 + i + nq, row, -1});
    }
    return;
  }
  if (ql == 0) return;
  const int chunks = seq_len <= kKChunk ? 1 : (seq_len + kKChunk - 1) / kKChunk;
  for (int k = 0; k < chunks; k++) {
    const int k0 = k * kKChunk, k1 = chunks == 1 ? seq_len : std::min(seq_len, k0 + kKChunk);
    int64_t part = -1;
    if (chunks > 1) {
      part = part_floats;
      part_floats += (int64_t)ql * c.hq * (c.d + 2);
    }
    items.push_back({b, t0, ql, pos0, k0, k1, row, part});
  }
}

int check_common(const char* fn, int hq, int hkv, int head_dim, int page_size, int pt_stride,
                 int q_row_stride, int dtype) {
  MSG_REQUIRE(is_float_dtype(dtype), "%s: unsupported dtype %s", fn, dtype_name(dtype));
  MSG_REQUIRE(hq > 0 && hkv > 0 && head_dim > 0 && page_size > 0 && pt_stride > 0,
              "%s: bad sizes hq=%d hkv=%d head_dim=%d page_size=%d pt_stride=%d", fn, hq, hkv,
              head_dim, page_size, pt_stride);
  MSG_REQUIRE(hq % hkv == 0, "%s: hq %d is not a multiple of hkv %d", fn, hq, hkv);
  MSG_REQUIRE(q_row_stride >= hq * head_dim, "%s: q_row_stride %d < hq * head_dim %d", fn,
              q_row_stride, hq * head_dim);
  return 0;
}

int check_request(const char* fn, int b, int ql, int seq_len, int row, int page_size,
                  int pt_stride) {
  MSG_REQUIRE(ql >= 0 && ql <= seq_len && row >= 0,
              "%s: request %d has q_len %d, seq_len %d, row %d", fn, b, ql, seq_len, row);
  MSG_REQUIRE((seq_len + page_size - 1) / page_size <= pt_stride,
              "%s: seq_len %d does not fit a page-table row of %d pages", fn, seq_len, pt_stride);
  return 0;
}

}  // namespace

extern "C" {

int msg_attention_extend(void* out, const void* q, int q_row_stride, const void* k_cache,
                         const void* v_cache, const int32_t* page_table, int pt_stride,
                         const int32_t* rows, const int32_t* seq_lens, const int32_t* q_starts,
                         int batch, int total_q, int max_q_len, int max_seq_len, int hq,
                         int hkv, int head_dim, int page_size, float scale, int dtype, void*) {
  const char* fn = "msg_attention_extend";
  if (int rc = check_common(fn, hq, hkv, head_dim, page_size, pt_stride, q_row_stride, dtype))
    return rc;
  MSG_REQUIRE(batch >= 0 && total_q >= 0, "%s: bad sizes batch=%d total_q=%d", fn, batch,
              total_q);
  (void)max_q_len;
  (void)max_seq_len;  // launch bounds on CUDA
  if (batch == 0 || total_q == 0) return 0;
  MSG_REQUIRE(out && q && k_cache && v_cache && page_table && rows && seq_lens && q_starts,
              "%s: NULL pointer", fn);
  // q_starts[0] > 0: a sub-batch of a larger one (mixed batches), indexed from the same base.
  MSG_REQUIRE(q_starts[0] >= 0 && q_starts[batch] - q_starts[0] == total_q,
              "%s: q_starts must span total_q (%d) rows from 0 or more, got %d..%d", fn,
              total_q, q_starts[0], q_starts[batch]);
  for (int b = 0; b < batch; b++) {
    if (int rc = check_request(fn, b, q_starts[b + 1] - q_starts[b], seq_lens[b], rows[b],
                               page_size, pt_stride))
      return rc;
  }
  MSG_TRY
  const Ctx c{k_cache, v_cache, page_table, pt_stride, hq, hkv, head_dim, page_size, dtype,
              scale, dtype};
  std::vector<Item> items;
  int64_t part_floats = 0;
  for (int b = 0; b < batch; b++) {
    add_items(items, part_floats, c, b, rows[b], q_starts[b], q_starts[b + 1] - q_starts[b],
              seq_lens[b]);
  }
  run(c, out, q, q_row_stride, items, part_floats);
  return 0;
  MSG_CATCH
}

int msg_attention_has_hopper(int* has) {
  MSG_REQUIRE(has, "msg_attention_has_hopper: NULL pointer");
  *has = 0;
  return 0;
}

// The CPU has one extend kernel: the Hopper entry points (fa3 v1, v3, v4) are the same
// function.
#define MSG_EXTEND_ALIAS(name)                                                                  \
  int name(void* out, const void* q, int q_row_stride, const void* k_cache, const void* v_cache, \
           const int32_t* page_table, int pt_stride, const int32_t* rows,                      \
           const int32_t* seq_lens, const int32_t* q_starts, int batch, int total_q,            \
           int max_q_len, int max_seq_len, int hq, int hkv, int head_dim, int page_size,        \
           float scale, int dtype, void* stream) {                                              \
    return msg_attention_extend(out, q, q_row_stride, k_cache, v_cache, page_table, pt_stride, \
                                rows, seq_lens, q_starts, batch, total_q, max_q_len,            \
                                max_seq_len, hq, hkv, head_dim, page_size, scale, dtype,        \
                                stream);                                                        \
  }
MSG_EXTEND_ALIAS(msg_attention_extend_hopper_v5)
MSG_EXTEND_ALIAS(msg_attention_extend_hopper_v6)
#undef MSG_EXTEND_ALIAS

int msg_attention_decode(void* out, const void* q, int q_row_stride, const void* k_cache,
                         const void* v_cache, const int32_t* page_table, int pt_stride,
                         const int32_t* rows, const int32_t* seq_lens, int batch,
                         int max_seq_len, int hq, int hkv, int head_dim, int page_size,
                         float scale, int dtype, int kv_dtype, void*) {
  const char* fn = "msg_attention_decode";
  if (int rc = check_common(fn, hq, hkv, head_dim, page_size, pt_stride, q_row_stride, dtype))
    return rc;
  // fp8 caches come with bf16/f16 activations on CUDA; the CPU also takes them with fp32.
  MSG_REQUIRE(kv_dtype == dtype || kv_dtype == MSG_FP8_E4M3,
              "%s: unsupported KV cache dtype %s with dtype %s", fn, dtype_name(kv_dtype),
              dtype_name(dtype));
  MSG_REQUIRE(batch >= 0, "%s: batch %d is negative", fn, batch);
  (void)max_seq_len;
  if (batch == 0) return 0;
  MSG_REQUIRE(out && q && k_cache && v_cache && page_table && rows && seq_lens,
              "%s: NULL pointer", fn);
  for (int b = 0; b < batch; b++) {
    // seq_len 0 (a padded row) is allowed: its output is zeros.
    if (seq_lens[b] == 0) continue;
    if (int rc = check_request(fn, b, 1, seq_lens[b], rows[b], page_size, pt_stride)) return rc;
  }
  MSG_TRY
  const Ctx c{k_cache, v_cache, page_table, pt_stride, hq, hkv, head_dim, page_size, dtype,
              scale, kv_dtype};
  std::vector<Item> items;
  int64_t part_floats = 0;
  for (int b = 0; b < batch; b++) {
    if (seq_lens[b] == 0) {
      items.push_back({b, b, 1, -1, 0, 0, rows[b] >= 0 ? rows[b] : 0, -1});
    } else {
      add_items(items, part_floats, c, b, rows[b], b, 1, seq_lens[b]);
    }
  }
  run(c, out, q, q_row_stride, items, part_floats);
  return 0;
  MSG_CATCH
}

int msg_kv_widen_pages(void* dst_k, void* dst_v, const void* k_cache, const void* v_cache,
                       const int32_t* page_table, int pt_stride, const int32_t* rows,
                       const int32_t* seq_lens, int batch, int pages_per_row, int page_size,
                       int hkv, int head_dim, int src_dtype, int dtype, void*) {
  const char* fn = "msg_kv_widen_pages";
  MSG_REQUIRE(src_dtype == MSG_FP8_E4M3, "%s: unsupported source dtype %s", fn,
              dtype_name(src_dtype));
  // bf16/f16 on CUDA; the CPU also widens to fp32 (its activations).
  MSG_REQUIRE(is_float_dtype(dtype), "%s: unsupported dtype %s", fn, dtype_name(dtype));
  MSG_REQUIRE(batch >= 0 && pages_per_row > 0 && page_size > 0 && pt_stride > 0 && hkv > 0 &&
                  head_dim > 0,
              "%s: bad sizes batch=%d pages_per_row=%d page_size=%d pt_stride=%d hkv=%d "
              "head_dim=%d",
              fn, batch, pages_per_row, page_size, pt_stride, hkv, head_dim);
  if (batch == 0) return 0;
  MSG_REQUIRE(dst_k && dst_v && k_cache && v_cache && page_table && rows && seq_lens,
              "%s: NULL pointer", fn);
  for (int b = 0; b < batch; b++) {
    MSG_REQUIRE(seq_lens[b] >= 0 && seq_lens[b] <= (int64_t)pages_per_row * page_size,
                "%s: request %d has seq_len %d, more than %d pages of %d", fn, b, seq_lens[b],
                pages_per_row, page_size);
    if (seq_lens[b] == 0) continue;
    if (int rc = check_request(fn, b, 1, seq_lens[b], rows[b], page_size, pt_stride)) return rc;
  }
  MSG_TRY
  // (source page, destination page) of every page to widen.
  std::vector<std::pair<int64_t, int64_t>> pages;
  for (int b = 0; b < batch; b++) {
    const int np = (seq_lens[b] + page_size - 1) / page_size;
    const int32_t* pt = page_table + (int64_t)rows[b] * pt_stride;
    for (int j = 0; j < np; j++) pages.push_back({pt[j], (int64_t)b * pages_per_row + j});
  }
  const int64_t page_elems = (int64_t)page_size * hkv * head_dim;
  parallel_for((int64_t)pages.size(), 1, [&](int64_t i0, int64_t i1) {
    float* buf = scratch(0, (size_t)page_elems);
    for (int64_t i = i0; i < i1; i++) {
      const int64_t src = pages[i].first * page_elems, dst = pages[i].second * page_elems;
      load_f32(buf, k_cache, src_dtype, src, page_elems);
      store_f32(dst_k, dtype, dst, buf, page_elems);
      load_f32(buf, v_cache, src_dtype, src, page_elems);
      store_f32(dst_v, dtype, dst, buf, page_elems);
    }
  });
  return 0;
  MSG_CATCH
}

}  // extern "C"
