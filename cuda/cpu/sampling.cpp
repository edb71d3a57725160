// sampling.cpp — sampling, logprobs and penalties over fp32 logits on the host; rows are
// spread over the thread pool.
//
// msg_sample follows the rule documented in minisgl.h bit for bit, like the CUDA kernels:
// the weights come from sample_exp (explicit fmaf steps, no libm exp), every filter and the
// draw are integer arithmetic on 40-bit fixed-point weights, so both backends pick the same
// token (tests compare them exactly). A row costs O(vocab): top-k is an nth_element, top-p
// buckets the weights by z and sorts only the bucket that holds the cut, and the draw is one
// walk in index order.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"

using namespace msg;

namespace {

const float kNegInf = -std::numeric_limits<float>::infinity();

// Descending by value, ties by lower index (values are NaN-free).
struct Desc {
  const float* v;
  bool operator()(int a, int b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

// Copy of a row with NaN replaced by -inf (so that comparisons are a strict weak order)
// and -0 by +0 (the rank order compares values, the GPU their bit patterns).
float* clean_row(const float* x, int V, int which) {
  float* c = scratch(which, (size_t)V);
  for (int i = 0; i < V; i++) c[i] = std::isnan(x[i]) ? kNegInf : (x[i] == 0.0f ? 0.0f : x[i]);
  return c;
}

// log(sum exp(x)) of a NaN-free row (-inf if every entry is -inf).
float logsumexp(const float* x, int V) {
  float m = kNegInf;
  for (int i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
  if (m == kNegInf) return kNegInf;
  float s = 0.0f;
  for (int i = 0; i < V; i++) s += std::exp(x[i] - m);
  return m + std::log(s);
}

int argmax(const float* x, int V) {
  int best = 0;
  for (int i = 1; i < V; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

// exp(d) for d <= 0 in fp32, the same bits as sampling.cu's: d * log2(e) = n + f with
// n = rint, f = fma(d, log2e, -n); 2^f by a degree-7 polynomial (Horner, fmaf); times 2^n.
// 0 below 2^-64 (such weights are 0 in fixed point anyway).
float sample_exp(float d) {
  const float kLog2e = 1.44269504088896341f;
  const float y = d * kLog2e;
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
  return p * bits_to_f32((uint32_t)((int)n + 127) << 23);
}

// Fixed-point weight of a token: floor(w * 2^40).
inline uint64_t fixed_weight(float w) { return (uint64_t)(w * 1099511627776.0f); }

// Top-p bucket of z (higher bucket = higher rank): 16 buckets per unit of zmax - z.
inline int zbucket(float z, float zmax) {
  const float d = zmax - z;
  return 511 - (d < 32.0f ? (int)(d * 16.0f) : 511);
}

struct RowScratch {
  std::vector<uint64_t> q;
  std::vector<float> w;
  std::vector<int> idx;
};

int sample_row(const float* x, int V, const msg_sampling_params& sp) {
  const int top = argmax(x, V);
  const float T = sp.temperature;
  if (!(T > 0.0f)) return top;
  const float zmax = x[top] / T;
  if (!std::isfinite(zmax)) return top;  // all -inf, or an infinite logit
  static thread_local RowScratch rs;
  rs.q.resize(V);
  rs.w.resize(V);
  uint64_t* q = rs.q.data();
  float* w = rs.w.data();
  for (int i = 0; i < V; i++) {
    w[i] = sample_exp(x[i] / T - zmax);
    q[i] = fixed_weight(w[i]);
  }
  const Desc better{x};
  // The kept ranks are a prefix of the rank order: i is kept iff i == cut or i ranks above.
  int cut = -1;
  auto in_cut = [&](int i) { return cut < 0 || i == cut || better(i, cut); };
  if (sp.top_k > 0 && sp.top_k < V) {
    rs.idx.resize(V);
    for (int i = 0; i < V; i++) rs.idx[i] = i;
    std::nth_element(rs.idx.begin(), rs.idx.begin() + (sp.top_k - 1), rs.idx.end(), better);
    cut = rs.idx[sp.top_k - 1];
  }
  if (sp.top_p < 1.0f) {
    uint64_t S = 0, hist[512] = {0};
    for (int i = 0; i < V; i++) {
      if (!q[i] || !in_cut(i)) continue;
      S += q[i];
      hist[zbucket(x[i] / T, zmax)] += q[i];
    }
    const double tp = std::ceil((double)sp.top_p * (double)S) - 1.0;
    uint64_t t = tp <= 0.0 ? 0 : (uint64_t)tp;
    if (t >= S) t = S - 1;
    // The bucket whose weight interval (walking down from the top) contains t, then the
    // token inside it, in rank order.
    int b = 511;
    uint64_t cum = 0;
    while (b > 0 && cum + hist[b] <= t) cum += hist[b--];
    rs.idx.clear();
    for (int i = 0; i < V; i++)
      if (q[i] && in_cut(i) && zbucket(x[i] / T, zmax) == b) rs.idx.push_back(i);
    std::sort(rs.idx.begin(), rs.idx.end(), better);
    int found = rs.idx.empty() ? top : rs.idx.back();
    for (int i : rs.idx) {
      if (t < cum + q[i]) {
        found = i;
        break;
      }
      cum += q[i];
    }
    cut = found;
  }
  const bool use_minp = sp.min_p > 0.0f;
  auto kept = [&](int i) { return in_cut(i) && (!use_minp || w[i] >= sp.min_p || i == top); };
  uint64_t Q = 0;
  for (int i = 0; i < V; i++)
    if (kept(i)) Q += q[i];
  uint64_t t = (uint64_t)(msg_uniform(sp.seed, sp.step) * (double)Q);
  if (t >= Q) t = Q - 1;  // Q >= 2^40: the top token is always kept with weight 1
  uint64_t cum = 0;
  for (int i = 0; i < V; i++) {
    if (!kept(i)) continue;
    cum += q[i];
    if (cum > t) return i;
  }
  return top;
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
               const msg_sampling_params* params, int rows, int vocab, void*) {
  MSG_REQUIRE(rows >= 0 && vocab > 0, "msg_sample: bad sizes rows=%d vocab=%d", rows, vocab);
  if (rows == 0) return 0;
  MSG_REQUIRE(out_tokens && logits, "msg_sample: NULL pointer");
  const msg_sampling_params greedy{0.0f, 1.0f, 0.0f, 0, 0, 0, 0};
  MSG_TRY
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* x = clean_row(logits + r * vocab, vocab, 0);
      const int tok = sample_row(x, vocab, params ? params[r] : greedy);
      out_tokens[r] = tok;
      if (out_logprobs) {
        const float lse = logsumexp(x, vocab);
        out_logprobs[r] = lse == kNegInf ? kNegInf : x[tok] - lse;
      }
    }
  });
  return 0;
  MSG_CATCH
}

int msg_apply_penalties(float* logits, int vocab, const int32_t* tokens,
                        const int32_t* token_starts, const float* presence,
                        const float* frequency, const float* repetition, int rows, void*) {
  MSG_REQUIRE(rows >= 0 && vocab > 0, "msg_apply_penalties: bad sizes rows=%d vocab=%d", rows,
              vocab);
  if (rows == 0) return 0;
  MSG_REQUIRE(logits && token_starts, "msg_apply_penalties: NULL pointer");
  for (int r = 0; r < rows; r++) {
    MSG_REQUIRE(token_starts[r] >= 0 && token_starts[r + 1] >= token_starts[r],
                "msg_apply_penalties: token_starts must be non-decreasing from 0");
  }
  MSG_REQUIRE(tokens || token_starts[rows] == token_starts[0], "msg_apply_penalties: tokens NULL");
  for (int i = token_starts[0]; i < token_starts[rows]; i++) {
    MSG_REQUIRE(tokens[i] >= 0 && tokens[i] < vocab, "msg_apply_penalties: token %d at %d is "
                "outside the vocabulary (%d)", tokens[i], i, vocab);
  }
  MSG_TRY
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    static thread_local std::vector<int32_t> toks;
    for (int64_t r = r0; r < r1; r++) {
      const float pres = presence ? presence[r] : 0.0f;
      const float freq = frequency ? frequency[r] : 0.0f;
      const float rep = repetition ? repetition[r] : 1.0f;
      toks.assign(tokens + token_starts[r], tokens + token_starts[r + 1]);
      std::sort(toks.begin(), toks.end());
      float* row = logits + r * vocab;
      for (size_t i = 0; i < toks.size();) {
        size_t j = i;
        while (j < toks.size() && toks[j] == toks[i]) j++;
        float v = row[toks[i]] - (freq * (float)(j - i) + pres);
        if (rep != 1.0f) v = v > 0.0f ? v / rep : v * rep;
        row[toks[i]] = v;
        i = j;
      }
    }
  });
  return 0;
  MSG_CATCH
}

int msg_token_logprobs(float* out, const float* logits, const int32_t* targets, int rows,
                       int vocab, void*) {
  MSG_REQUIRE(rows >= 0 && vocab > 0, "msg_token_logprobs: bad sizes rows=%d vocab=%d", rows,
              vocab);
  if (rows == 0) return 0;
  MSG_REQUIRE(out && logits && targets, "msg_token_logprobs: NULL pointer");
  for (int r = 0; r < rows; r++) {
    MSG_REQUIRE(targets[r] >= 0 && targets[r] < vocab,
                "msg_token_logprobs: target %d of row %d is outside the vocabulary (%d)",
                targets[r], r, vocab);
  }
  MSG_TRY
  parallel_for(rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* x = clean_row(logits + r * vocab, vocab, 0);
      out[r] = x[targets[r]] - logsumexp(x, vocab);
    }
  });
  return 0;
  MSG_CATCH
}

int msg_top_logprobs(int32_t* out_ids, float* out_logprobs, const float* logits, int rows,
                     int vocab, int k, void*) {
  MSG_REQUIRE(rows >= 0 && vocab > 0 && k >= 0 && k <= vocab,
              "msg_top_logprobs: bad sizes rows=%d vocab=%d k=%d", rows, vocab, k);
  if (rows == 0 || k == 0) return 0;
  MSG_REQUIRE(out_ids && out_logprobs && logits, "msg_top_logprobs: NULL pointer");
  MSG_TRY
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    static thread_local std::vector<int> idx;
    for (int64_t r = r0; r < r1; r++) {
      const float* x = clean_row(logits + r * vocab, vocab, 0);
      const float lse = logsumexp(x, vocab);
      idx.resize(vocab);
      for (int i = 0; i < vocab; i++) idx[i] = i;
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), Desc{x});
      for (int j = 0; j < k; j++) {
        out_ids[r * k + j] = idx[j];
        out_logprobs[r * k + j] = x[idx[j]] - lse;
      }
    }
  });
  return 0;
  MSG_CATCH
}

}  // extern "C"
