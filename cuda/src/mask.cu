// mask.cu — msg_apply_token_mask: logit_bias and grammar token masks on the constrained rows
// of a batch, before sampling. Two launches on the stream:
//   bias (n blocks)          a block adds row i's few bias entries (a strided loop over k).
//   mask (n x chunks blocks) each thread reads one 32-bit mask word and writes -inf to the
//                            logits of the cleared bits: a word per thread keeps the mask
//                            reads coalesced, and rows with mostly-allowed tokens (a JSON
//                            string) touch few logits.
// The bias runs first so that a masked token stays -inf whatever its bias.
#include "common.cuh"

namespace {

constexpr int kThreads = 256;

__global__ void bias_kernel(float* __restrict__ logits, int vocab, const int32_t* __restrict__ rows,
                            const int32_t* __restrict__ starts, const int32_t* __restrict__ ids,
                            const float* __restrict__ values) {
  const int i = blockIdx.x;
  float* row = logits + (int64_t)rows[i] * vocab;
  for (int k = starts[i] + threadIdx.x; k < starts[i + 1]; k += blockDim.x) {
    const int t = ids[k];
    if (t >= 0 && t < vocab) row[t] += values[k];
  }
}

__global__ void mask_kernel(float* __restrict__ logits, int vocab, const int32_t* __restrict__ rows,
                            const int32_t* __restrict__ masks, int words) {
  const int i = blockIdx.y;
  const int w = blockIdx.x * blockDim.x + threadIdx.x;
  if (w >= words) return;
  uint32_t bits = (uint32_t)masks[(int64_t)i * words + w];
  if (bits == 0xffffffffu) return;
  float* row = logits + (int64_t)rows[i] * vocab;
  const int base = w * 32;
  const int lim = min(32, vocab - base);
  for (int b = 0; b < lim; b++) {
    if (!((bits >> b) & 1u)) row[base + b] = -INFINITY;
  }
}

}  // namespace

extern "C" {

int msg_apply_token_mask(float* logits, int vocab, const int32_t* rows, const int32_t* masks,
                         const int32_t* bias_starts, const int32_t* bias_ids,
                         const float* bias_values, int n, void* stream) {
  MSG_REQUIRE(n >= 0 && vocab > 0, "msg_apply_token_mask: bad sizes n=%d vocab=%d", n, vocab);
  if (n == 0) return 0;
  MSG_REQUIRE(logits && rows, "msg_apply_token_mask: NULL pointer");
  MSG_REQUIRE(!bias_starts || (bias_ids && bias_values),
              "msg_apply_token_mask: bias ids/values NULL");
  cudaStream_t s = msg::as_stream(stream);
  if (bias_starts) {
    bias_kernel<<<n, 64, 0, s>>>(logits, vocab, rows, bias_starts, bias_ids, bias_values);
    MSG_LAUNCHED("bias_kernel");
  }
  if (masks) {
    const int words = (vocab + 31) / 32;
    dim3 grid((words + kThreads - 1) / kThreads, n);
    mask_kernel<<<grid, kThreads, 0, s>>>(logits, vocab, rows, masks, words);
    MSG_LAUNCHED("mask_kernel");
  }
  return 0;
}

}  // extern "C"
