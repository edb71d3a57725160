// sampling.cpp — sampling, logprobs and penalties over fp32 logits on the host; rows are
// spread over the thread pool.
//
// Exact semantics of msg_sample (the CUDA kernel follows the same steps):
//  - temperature <= 0: argmax of the logits, lowest index on ties.
//  - else z_i = logit_i / temperature, weights w_i = exp(z_i - max z) (unnormalized: every
//    filter below is a ratio, so normalization is not needed). Tokens are ordered by z
//    descending, ties by lower index; every filter keeps a prefix of that order:
//    top-k  (0 < k < vocab): the first k.
//    top-p  (< 1): with S = sum of w over the top-k set, token j of the order is kept iff
//           the sum of w of tokens before it is < top_p * S (the first is always kept).
//    min-p  (> 0): kept while w_j >= min_p * w_max (w_max = 1).
//  - u = msg_uniform(seed, step); with T = sum of w over the kept prefix, the token is the
//    first j whose running sum of w exceeds u * T (the last kept one if rounding says none).
// Nothing sorts the whole vocabulary: tokens fall into kBuckets buckets of equal z width
// (bucket order = rank order); every walk skips whole buckets by their weight sums and
// sorts only the few buckets it stops in. A row costs O(vocab) whatever the filters.
#include <algorithm>
#include <cmath>
#include <deque>
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

// Tokens in rank order (z descending, ties by lower index), grouped into buckets of equal
// z width; a bucket is sorted only when a walk needs the order inside it.
class Ranked {
 public:
  static constexpr int kBuckets = 2048;

  Ranked(const float* z, const float* w, int V, float zmax) : z_(z), w_(w), V_(V) {
    // Weights below exp(-104) are 0 in fp32: such tokens all share the last bucket.
    float zmin = zmax;
    for (int i = 0; i < V; i++)
      if (z[i] < zmin && z[i] > zmax - 104.0f) zmin = z[i];
    const float span = zmax - zmin;
    const float inv = span > 0 ? (float)kBuckets / span : 0.0f;
    bucket_ = tls_u16(V);
    start_.assign(kBuckets + 1, 0);
    bw_.assign(kBuckets, 0.0f);
    for (int i = 0; i < V; i++) {
      const float d = (zmax - z[i]) * inv;  // monotone in z; -inf z gives +inf
      const int bi = d < (float)(kBuckets - 1) ? (int)d : kBuckets - 1;
      bucket_[i] = (uint16_t)bi;
      start_[bi + 1]++;
      bw_[bi] += w[i];
    }
    for (int bi = 0; bi < kBuckets; bi++) start_[bi + 1] += start_[bi];
  }

  /** Rank of the first token whose running weight (in rank order, ranks < limit) is
   *  > thr (strict) or >= thr; -1 if none. */
  int walk(float thr, bool strict, int limit) {
    float cum = 0.0f;
    for (int bi = 0; bi < kBuckets; bi++) {
      const int b0 = start_[bi], b1 = start_[bi + 1];
      if (b0 >= limit) return -1;
      if (b0 == b1) continue;
      if (b1 <= limit) {
        const float c2 = cum + bw_[bi];
        if (!(strict ? c2 > thr : c2 >= thr)) {
          cum = c2;
          continue;
        }
      }
      const std::vector<int>& toks = members(bi);
      // Token by token (if rounding makes the bucket fall short, go on to the next one).
      for (int r = b0; r < b1 && r < limit; r++) {
        cum += w_[toks[r - b0]];
        if (strict ? cum > thr : cum >= thr) return r;
      }
    }
    return -1;
  }

  /** Sum of the weights of ranks [0, n). */
  float prefix_sum(int n) {
    float cum = 0.0f;
    for (int bi = 0; bi < kBuckets && start_[bi] < n; bi++) {
      if (start_[bi + 1] <= n) {
        cum += bw_[bi];
      } else {
        const std::vector<int>& toks = members(bi);
        for (int r = start_[bi]; r < n; r++) cum += w_[toks[r - start_[bi]]];
      }
    }
    return cum;
  }

  /** Number of leading ranks whose weight is >= thr (a prefix: w is monotone in z). */
  int count_at_least(float thr, int V) const {
    int c = 0;
    for (int i = 0; i < V; i++) c += w_[i] >= thr;
    return c;
  }

  /** Token of rank r. */
  int token(int r) {
    int bi = (int)(std::upper_bound(start_.begin(), start_.end(), r) - start_.begin()) - 1;
    return members(bi)[r - start_[bi]];
  }

 private:
  static uint16_t* tls_u16(int n) {
    static thread_local std::vector<uint16_t> buf;
    if ((int)buf.size() < n) buf.resize(n);
    return buf.data();
  }
  // The tokens of bucket bi in rank order: found by one scan (a walk enters only a few
  // buckets, so this beats a counting sort of the whole row), then sorted.
  const std::vector<int>& members(int bi) {
    for (auto& m : cache_)
      if (m.first == bi) return m.second;
    std::vector<int> toks;
    toks.reserve(start_[bi + 1] - start_[bi]);
    for (int i = 0; i < V_; i++)
      if (bucket_[i] == bi) toks.push_back(i);
    std::sort(toks.begin(), toks.end(), Desc{z_});
    cache_.emplace_back(bi, std::move(toks));
    return cache_.back().second;
  }
  const float* z_;
  const float* w_;
  int V_;
  uint16_t* bucket_;
  std::vector<int> start_;
  std::vector<float> bw_;
  std::deque<std::pair<int, std::vector<int>>> cache_;  // deque: references stay valid
};

// Copy of a row with NaN replaced by -inf (so that comparisons are a strict weak order).
float* clean_row(const float* x, int V, int which) {
  float* c = scratch(which, (size_t)V);
  for (int i = 0; i < V; i++) c[i] = std::isnan(x[i]) ? kNegInf : x[i];
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

int sample_row(const float* x, int V, const msg_sampling_params& sp) {
  if (!(sp.temperature > 0.0f)) return argmax(x, V);
  float* z = scratch(1, (size_t)V);
  float* w = scratch(2, (size_t)V);
  float zmax = kNegInf;
  for (int i = 0; i < V; i++) {
    z[i] = x[i] / sp.temperature;
    zmax = z[i] > zmax ? z[i] : zmax;
  }
  if (std::isinf(zmax)) return argmax(x, V);  // all -inf, or an infinite logit
  float s_all = 0.0f;
  for (int i = 0; i < V; i++) {
    w[i] = std::exp(z[i] - zmax);
    s_all += w[i];
  }
  Ranked order(z, w, V, zmax);
  const int K = sp.top_k > 0 && sp.top_k < V ? sp.top_k : V;
  const float S = K < V ? order.prefix_sum(K) : s_all;
  int L = K;
  if (sp.top_p < 1.0f) {
    // Keep rank j iff j == 0 or the weight before it is < top_p * S.
    const int r = order.walk(sp.top_p * S, false, K);
    L = r < 0 ? K : r + 1;
  }
  if (sp.min_p > 0.0f) {
    // Keep while w >= min_p * w_max (w_max = exp(0) = 1); the first token always.
    const int c = order.count_at_least(sp.min_p, V);
    L = std::min(L, std::max(c, 1));
  }
  const float total = L == V ? s_all : order.prefix_sum(L);
  const float target = (float)msg_uniform(sp.seed, sp.step) * total;
  const int r = order.walk(target, true, L);
  return order.token(r < 0 ? L - 1 : r);
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
  MSG_REQUIRE(out_tokens && logits && params, "msg_sample: NULL pointer");
  MSG_TRY
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const float* x = clean_row(logits + r * vocab, vocab, 0);
      const int tok = sample_row(x, vocab, params[r]);
      out_tokens[r] = tok;
      if (out_logprobs) out_logprobs[r] = x[tok] - logsumexp(x, vocab);
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
