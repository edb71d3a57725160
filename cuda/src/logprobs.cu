// logprobs.cu — log-probabilities of chosen tokens, top-k log-probabilities and the
// OpenAI/vLLM penalties, over fp32 logits [rows, vocab].
//
// One block (512 threads) per row: a row is one softmax, so one block keeps every reduction
// inside shared memory with a fixed order (deterministic). top_logprobs takes the k best
// tokens one at a time (k block argmax passes, each excluding what came before in the
// order value desc, index asc): k is small (<= 20 in the API), so k passes over the row
// beat a sort. Penalties: one block per row marks distinct tokens in a shared-memory bitmap
// of the vocabulary (atomicOr picks one owner per token), and the owner counts the token's
// occurrences in the row's list and rewrites its logit once — exactly the CPU formula.
#include "common.cuh"

namespace {

const int kThreads = 512;

__device__ __forceinline__ float clean(float x) { return x != x ? -INFINITY : x; }

/** log(sum(exp(x))) of a row, block-wide (every thread gets it). */
__device__ float row_logsumexp(const float* x, int V, float* sh) {
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, clean(x[i]));
  m = msg::block_max(m, sh);
  if (m == -INFINITY) return -INFINITY;
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(clean(x[i]) - m);
  s = msg::block_sum(s, sh);
  return m + logf(s);
}

__global__ void token_logprobs_kernel(float* out, const float* logits, const int32_t* targets,
                                      int V) {
  __shared__ float sh[33];
  const float* x = logits + (size_t)blockIdx.x * V;
  float lse = row_logsumexp(x, V, sh);
  if (threadIdx.x == 0) {
    int t = targets[blockIdx.x];
    out[blockIdx.x] = (t >= 0 && t < V) ? clean(x[t]) - lse : -INFINITY;
  }
}

// a before b in the order (value desc, index asc)?
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

__global__ void top_logprobs_kernel(int32_t* out_ids, float* out_lp, const float* logits, int V,
                                    int k) {
  __shared__ float sh[33];
  __shared__ float shv[32];
  __shared__ int shi[32];
  const float* x = logits + (size_t)blockIdx.x * V;
  float lse = row_logsumexp(x, V, sh);
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float pv = INFINITY;
  int pi = -1;  // previous pick: candidates come strictly after it in the order
  for (int j = 0; j < k; j++) {
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      float v = clean(x[i]);
      if (before(pv, pi, v, i) && before(v, i, bv, bi)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      float v2 = __shfl_xor_sync(0xffffffffu, bv, o);
      int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
      if (before(v2, i2, bv, bi)) { bv = v2; bi = i2; }
    }
    __syncthreads();
    if (lane == 0) { shv[wid] = bv; shi[wid] = bi; }
    __syncthreads();
    bv = shv[0];
    bi = shi[0];
    for (int w = 1; w < nw; w++) {
      if (before(shv[w], shi[w], bv, bi)) { bv = shv[w]; bi = shi[w]; }
    }
    if (bi >= V) bi = 0;  // cannot happen for k <= vocab
    if (threadIdx.x == 0) {
      out_ids[(size_t)blockIdx.x * k + j] = bi;
      out_lp[(size_t)blockIdx.x * k + j] = bv - lse;
    }
    pv = bv;
    pi = bi;
  }
}

__global__ void penalties_kernel(float* logits, int V, const int32_t* tokens,
                                 const int32_t* token_starts, const float* presence,
                                 const float* frequency, const float* repetition) {
  extern __shared__ unsigned bitmap[];
  int r = blockIdx.x;
  int words = (V + 31) / 32;
  for (int i = threadIdx.x; i < words; i += blockDim.x) bitmap[i] = 0;
  __syncthreads();
  int s0 = token_starts[r], s1 = token_starts[r + 1];
  float pres = presence ? presence[r] : 0.f;
  float freq = frequency ? frequency[r] : 0.f;
  float rep = repetition ? repetition[r] : 1.f;
  float* row = logits + (size_t)r * V;
  for (int j = s0 + threadIdx.x; j < s1; j += blockDim.x) {
    int t = tokens[j];
    if (t < 0 || t >= V) continue;
    unsigned bit = 1u << (t & 31);
    if (atomicOr(&bitmap[t >> 5], bit) & bit) continue;  // another thread owns t
    int c = 0;
    for (int i = s0; i < s1; i++) c += tokens[i] == t;
    float v = __fsub_rn(row[t], __fadd_rn(__fmul_rn(freq, (float)c), pres));
    if (rep != 1.f) v = v > 0.f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
    row[t] = v;
  }
}

}  // namespace

extern "C" {

int msg_token_logprobs(float* out, const float* logits, const int32_t* targets, int rows,
                       int vocab, void* stream) {
  MSG_REQUIRE(rows >= 0 && vocab > 0, "msg_token_logprobs: bad sizes rows=%d vocab=%d", rows,
              vocab);
  if (rows == 0) return 0;
  token_logprobs_kernel<<<rows, kThreads, 0, msg::as_stream(stream)>>>(out, logits, targets,
                                                                        vocab);
  MSG_LAUNCHED("token_logprobs_kernel");
  return 0;
}

int msg_top_logprobs(int32_t* out_ids, float* out_logprobs, const float* logits, int rows,
                     int vocab, int k, void* stream) {
  MSG_REQUIRE(rows >= 0 && vocab > 0 && k >= 0 && k <= vocab,
              "msg_top_logprobs: bad sizes rows=%d vocab=%d k=%d", rows, vocab, k);
  if (rows == 0 || k == 0) return 0;
  top_logprobs_kernel<<<rows, kThreads, 0, msg::as_stream(stream)>>>(out_ids, out_logprobs,
                                                                      logits, vocab, k);
  MSG_LAUNCHED("top_logprobs_kernel");
  return 0;
}

int msg_apply_penalties(float* logits, int vocab, const int32_t* tokens,
                        const int32_t* token_starts, const float* presence,
                        const float* frequency, const float* repetition, int rows,
                        void* stream) {
  MSG_REQUIRE(rows >= 0 && vocab > 0, "msg_apply_penalties: bad sizes rows=%d vocab=%d", rows,
              vocab);
  if (rows == 0) return 0;
  size_t smem = (size_t)((vocab + 31) / 32) * 4;
  MSG_REQUIRE(smem <= 200 * 1024, "msg_apply_penalties: vocab %d too large", vocab);
  if (smem > 48 * 1024) {
    MSG_CUDA(cudaFuncSetAttribute(penalties_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)smem));
  }
  penalties_kernel<<<rows, kThreads, smem, msg::as_stream(stream)>>>(
      logits, vocab, tokens, token_starts, presence, frequency, repetition);
  MSG_LAUNCHED("penalties_kernel");
  return 0;
}

}  // extern "C"
