// mask.cpp — msg_apply_token_mask on the host: logit_bias, then grammar token masks, on the
// constrained rows (the reference for cuda/src/mask.cu); rows over the thread pool.
#include <limits>

#include "common.h"

using namespace msg;

extern "C" {

int msg_apply_token_mask(float* logits, int vocab, const int32_t* rows, const int32_t* masks,
                         const int32_t* bias_starts, const int32_t* bias_ids,
                         const float* bias_values, int n, void*) {
  MSG_REQUIRE(n >= 0 && vocab > 0, "msg_apply_token_mask: bad sizes n=%d vocab=%d", n, vocab);
  if (n == 0) return 0;
  MSG_REQUIRE(logits && rows, "msg_apply_token_mask: NULL pointer");
  MSG_REQUIRE(!bias_starts || (bias_ids && bias_values),
              "msg_apply_token_mask: bias ids/values NULL");
  for (int i = 0; i < n; i++) {
    MSG_REQUIRE(rows[i] >= 0, "msg_apply_token_mask: row %d of entry %d", rows[i], i);
    if (bias_starts) {
      MSG_REQUIRE(bias_starts[i] >= 0 && bias_starts[i + 1] >= bias_starts[i],
                  "msg_apply_token_mask: bias_starts must be non-decreasing from 0");
    }
  }
  const int words = (vocab + 31) / 32;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  MSG_TRY
  parallel_for(n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      float* row = logits + (int64_t)rows[i] * vocab;
      if (bias_starts) {
        for (int k = bias_starts[i]; k < bias_starts[i + 1]; k++) {
          const int t = bias_ids[k];
          if (t >= 0 && t < vocab) row[t] += bias_values[k];
        }
      }
      if (masks) {
        const int32_t* m = masks + i * words;
        for (int v = 0; v < vocab; v++) {
          if (!(((uint32_t)m[v >> 5] >> (v & 31)) & 1u)) row[v] = neg_inf;
        }
      }
    }
  });
  return 0;
  MSG_CATCH
}

}  // extern "C"
