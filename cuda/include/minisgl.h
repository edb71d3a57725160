/*
 * minisgl.h — the native ABI of minisgl.
 *
 * One C ABI, two implementations: cuda/src/*.cu (NVIDIA GPUs) and cuda/cpu/*.cpp (the
 * host, fp32 math). TypeScript reaches it only through ffi/ (Deno.dlopen).
 *
 * Conventions
 * - Every function returns 0 on success, or a non-zero code; msg_last_error() then gives
 *   a message (thread-local). Nothing aborts the process.
 * - Pointers named `dev`/tensors are device memory (host memory on the CPU backend).
 *   Integer index tensors are int32 unless said otherwise.
 * - `stream` is a handle from msg_stream_create, or NULL for the default stream. Every op
 *   is asynchronous with respect to the host on the CUDA backend; the CPU backend runs
 *   ops synchronously on the calling thread (using its own thread pool inside).
 * - Row-major everywhere. A linear layer's weight has Hugging Face's layout
 *   [out_features, in_features].
 * - dtype codes below. Activations ("act") are bf16/fp16 on the GPU and fp32 on the CPU;
 *   weights are bf16/fp16/fp32. Math is fp32 in both implementations.
 * - KV cache of one layer: k and v each [num_slots, n_kv_heads, head_dim] in the act dtype,
 *   where num_slots = num_pages * page_size; a token at position p of a request lives in
 *   slot page_table[row * pt_stride + p / page_size] * page_size + p % page_size.
 */
#ifndef MINISGL_H
#define MINISGL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MSG_API __declspec(dllexport)
#else
#define MSG_API __attribute__((visibility("default")))
#endif

enum msg_dtype {
  MSG_F32 = 0,
  MSG_F16 = 1,
  MSG_BF16 = 2,
  MSG_I32 = 3,
  MSG_I64 = 4,
  MSG_U8 = 5,
  /** fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, max 448, 0x7F/0xFF NaN): KV caches only.
   *  Stored from a float x by round-to-nearest-even, saturating finite values to +-448 (NaN
   *  stays NaN); read back exactly (every e4m3 value is a float, a bf16 and an f16). */
  MSG_FP8_E4M3 = 6,
};

/* ---------------------------------------------------------------- library, device */

/** 0 = CPU implementation, 1 = CUDA implementation. */
MSG_API int msg_backend(void);
/** Message of the last failed call on this thread ("" if none). */
MSG_API const char* msg_last_error(void);
/** Number of devices (1 on the CPU backend). */
MSG_API int msg_device_count(int* count);
MSG_API int msg_set_device(int device);
/** Device name into buf (NUL-terminated, at most len bytes). */
MSG_API int msg_device_name(int device, char* buf, int len);
/** Free and total device memory in bytes (host RAM on the CPU backend). */
MSG_API int msg_mem_info(uint64_t* free_bytes, uint64_t* total_bytes);
/** Number of worker threads the CPU backend uses (ignored by CUDA). 0 = all cores. */
MSG_API int msg_set_num_threads(int n);

/* ---------------------------------------------------------------- memory */

MSG_API int msg_malloc(void** ptr, uint64_t bytes);
MSG_API int msg_free(void* ptr);
/** Page-locked host memory (plain host memory on the CPU backend). */
MSG_API int msg_host_alloc(void** ptr, uint64_t bytes);
MSG_API int msg_host_free(void* ptr);
MSG_API int msg_memcpy_h2d(void* dst, const void* src, uint64_t bytes, void* stream);
MSG_API int msg_memcpy_d2h(void* dst, const void* src, uint64_t bytes, void* stream);
MSG_API int msg_memcpy_d2d(void* dst, const void* src, uint64_t bytes, void* stream);
/** Fill `bytes` bytes with the byte `value`. */
MSG_API int msg_memset(void* dst, int value, uint64_t bytes, void* stream);

/* ---------------------------------------------------------------- streams, events, graphs */

MSG_API int msg_stream_create(void** stream);
MSG_API int msg_stream_destroy(void* stream);
MSG_API int msg_stream_sync(void* stream);
MSG_API int msg_device_sync(void);
MSG_API int msg_event_create(void** event);
MSG_API int msg_event_destroy(void* event);
MSG_API int msg_event_record(void* event, void* stream);
MSG_API int msg_event_sync(void* event);
/** *done = 1 when all work before the event has finished, else 0. */
MSG_API int msg_event_query(void* event, int* done);
MSG_API int msg_event_elapsed_ms(void* start, void* end, float* ms);
MSG_API int msg_stream_wait_event(void* stream, void* event);
/** Begin capturing `stream` into a graph (thread-local capture mode). The CPU backend
 *  returns an error: graphs are a CUDA feature, callers fall back to plain launches. */
MSG_API int msg_graph_begin(void* stream);
/** End the capture and instantiate it. */
MSG_API int msg_graph_end(void* stream, void** graph_exec);
MSG_API int msg_graph_launch(void* graph_exec, void* stream);
MSG_API int msg_graph_destroy(void* graph_exec);

/* ---------------------------------------------------------------- elementwise, small ops */

/** out[i] = (dtype_out) in[i] for n elements (any float dtype pair). */
MSG_API int msg_cast(void* out, int out_dtype, const void* in, int in_dtype, uint64_t n,
                     void* stream);
/** out[i, :] = table[ids[i], :]; table [vocab, hidden] in w_dtype, out in act dtype. */
MSG_API int msg_embedding(void* out, const void* table, const int32_t* ids, int n,
                          int hidden, int act_dtype, int w_dtype, void* stream);
/** out[i, :] = in[idx[i], :] for rows of `row_bytes` bytes. */
MSG_API int msg_gather_rows(void* out, const void* in, const int32_t* idx, int n,
                            uint64_t row_bytes, void* stream);
/** out[i] = src[idx[i]] (int32). */
MSG_API int msg_gather_i32(int32_t* out, const int32_t* src, const int32_t* idx, int n,
                           void* stream);
/** dst[idx[i]] = src[i] (int32). */
MSG_API int msg_scatter_i32(int32_t* dst, const int32_t* idx, const int32_t* src, int n,
                            void* stream);
/** out = x + y, n elements of act dtype (out may alias x or y). */
MSG_API int msg_add(void* out, const void* x, const void* y, uint64_t n, int dtype,
                    void* stream);

/** out[r] = x[r] / rms(x[r]) * w, rows of `hidden`. */
MSG_API int msg_rmsnorm(void* out, const void* x, const void* w, int rows, int hidden,
                        float eps, int act_dtype, int w_dtype, void* stream);
/** residual += x (in place), then out = rmsnorm(residual) * w. x and out are in act_dtype;
 *  the residual in res_dtype, which is act_dtype or fp32 (an fp32 residual stream keeps
 *  16-bit models from rounding the sum of every layer's output). */
MSG_API int msg_add_rmsnorm(void* out, void* residual, const void* x, const void* w,
                            int rows, int hidden, float eps, int act_dtype, int res_dtype,
                            int w_dtype, void* stream);
/** out[r, i] = silu(gu[r, i]) * gu[r, inter + i]; gu is [rows, 2*inter]. */
MSG_API int msg_silu_mul(void* out, const void* gate_up, int rows, int inter, int dtype,
                         void* stream);

/* ---------------------------------------------------------------- GEMM */

/** out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]).
 *  a: act dtype (a_dtype); w and bias: w_dtype; out: out_dtype (act dtype or fp32, the
 *  latter for logits). bias may be NULL. fp32 accumulation. */
MSG_API int msg_gemm(void* out, int out_dtype, const void* a, int a_dtype, const void* w,
                     int w_dtype, const void* bias, int M, int N, int K, void* stream);

/** out[M, inter] = silu(a @ w[:inter]^T) * (a @ w[inter:]^T): a gated MLP's gate_up
 *  projection and activation in one call. w is [2 * inter, K] (the gate rows, then the up
 *  rows); a and out in a_dtype. gate_up [M, 2 * inter] (a_dtype) is the call's scratch: where
 *  msg_gemm would run its GEMV kernels the product is formed from fp32 sums and gate_up is
 *  not touched; otherwise it is msg_gemm into gate_up, then msg_silu_mul. The CPU backend
 *  always forms it from fp32 sums. */
MSG_API int msg_gemm_silu(void* out, void* gate_up, const void* a, int a_dtype, const void* w,
                          int w_dtype, int M, int inter, int K, void* stream);

/** Tuning knob: msg_gemm sends M <= m with 16-bit a and w to its GEMV kernels (CUDA;
 *  0 = always cuBLASLt, at most 8); m < 0 only reads it. Returns the previous value. The
 *  CPU backend has one GEMM path and returns 0. */
MSG_API int msg_gemv_max_m(int m);

/* ---------------------------------------------------------------- rotary + KV store */

/** Rotary embedding (neox style: rotate halves) and KV-cache store for n tokens.
 *  qkv: [n, (hq + 2*hkv) * head_dim] in act dtype, q then k then v per token; q and k
 *  are rotated in place.
 *  q_norm, k_norm: per-head RMSNorm weights [head_dim] in w_dtype applied to q and k
 *  before rotation (Qwen3), or NULL.
 *  cos_sin: fp32 [max_pos, rot_dim] with cos in [0, rot_dim/2) and sin in
 *  [rot_dim/2, rot_dim); rot_dim <= head_dim (the first rot_dim dims are rotated).
 *  positions: [n]; slots: [n] KV slot of each token (-1 = do not store).
 *  k_cache, v_cache: [num_slots, hkv, head_dim] in kv_dtype: act_dtype (the rotated k and v
 *  as written to qkv), or MSG_FP8_E4M3 (those same act-dtype values converted as the dtype's
 *  comment says). */
MSG_API int msg_rope_store_kv(void* qkv, const int32_t* positions, const void* q_norm,
                              const void* k_norm, float eps, const float* cos_sin,
                              int rot_dim, const int32_t* slots, void* k_cache,
                              void* v_cache, int n, int hq, int hkv, int head_dim,
                              int act_dtype, int w_dtype, int kv_dtype, void* stream);

/** Slot of each new token from the page table: for request b (row rows[b]) and its
 *  tokens at positions [seq_lens[b] - q_lens[b], seq_lens[b]), written at
 *  out[q_starts[b] + i]. q_starts is [batch + 1] (cumulative). Also writes positions. */
MSG_API int msg_compute_slots(int32_t* slots, int32_t* positions, const int32_t* page_table,
                              int pt_stride, const int32_t* rows, const int32_t* seq_lens,
                              const int32_t* q_starts, int batch, int page_size,
                              int max_q_len, void* stream);

/* ---------------------------------------------------------------- attention */

/** Extend (prefill over a cached prefix), ragged batch, causal, GQA.
 *  q: [total_q, hq, head_dim] (rows of the qkv buffer: q_row_stride elements apart);
 *  out: [total_q, hq, head_dim] contiguous.
 *  Request b has queries q_starts[b] .. q_starts[b+1]-1 which are the last q_len of its
 *  seq_lens[b] tokens; all its keys/values (the new ones included) are already in the
 *  cache, found through page_table row rows[b]. max_seq_len bounds seq_lens.
 *  q_starts[0] may be above 0 (a sub-batch of a larger batch: q and out keep the larger
 *  batch's base, total_q = q_starts[batch] - q_starts[0]). */
MSG_API int msg_attention_extend(void* out, const void* q, int q_row_stride,
                                 const void* k_cache, const void* v_cache,
                                 const int32_t* page_table, int pt_stride,
                                 const int32_t* rows, const int32_t* seq_lens,
                                 const int32_t* q_starts, int batch, int total_q,
                                 int max_q_len, int max_seq_len, int hq, int hkv,
                                 int head_dim, int page_size, float scale, int dtype,
                                 void* stream);
/** *has = 1 when the fa3 entries (msg_attention_extend_hopper_v5/_v6) run their wgmma kernels
 *  on the current device (compute capability 9.x), else 0 (always 0 on the CPU). */
MSG_API int msg_attention_has_hopper(int* has);
/** fa3 v5, same contract as msg_attention_extend, by the Hopper kernel (wgmma, sm_90a): a
 *  cp.async producer warpgroup feeding an mbarrier ring of 128-key tiles, two ping-pong consumer
 *  warpgroups, on a persistent grid (one block per SM walking a global heavy-first list of
 *  (q tile, request, head); attention_extend_hopper_v5.cu). Where it does not apply (compute
 *  capability other than 9.x, head_dim 256) it runs msg_attention_extend. The CPU library runs
 *  its one extend kernel. */
MSG_API int msg_attention_extend_hopper_v5(void* out, const void* q, int q_row_stride,
                                           const void* k_cache, const void* v_cache,
                                           const int32_t* page_table, int pt_stride,
                                           const int32_t* rows, const int32_t* seq_lens,
                                           const int32_t* q_starts, int batch, int total_q,
                                           int max_q_len, int max_seq_len, int hq, int hkv,
                                           int head_dim, int page_size, float scale,
                                           int dtype, void* stream);
/** fa3 v6, same contract: v5 with the output tile written through shared memory in
 *  16-byte coalesced stores (attention_extend_hopper_v6.cu). Where it does not apply it runs
 *  msg_attention_extend (v5 for an output not 16-byte aligned). */
MSG_API int msg_attention_extend_hopper_v6(void* out, const void* q, int q_row_stride,
                                           const void* k_cache, const void* v_cache,
                                           const int32_t* page_table, int pt_stride,
                                           const int32_t* rows, const int32_t* seq_lens,
                                           const int32_t* q_starts, int batch, int total_q,
                                           int max_q_len, int max_seq_len, int hq, int hkv,
                                           int head_dim, int page_size, float scale,
                                           int dtype, void* stream);
/** Decode: one query per request (q row b), keys 0..seq_lens[b]-1. Reads seq_lens on the
 *  device (graph-safe: max_seq_len is only an upper bound used to size splits; pass the
 *  captured maximum when capturing). q and out in dtype; the caches in kv_dtype (dtype, or
 *  MSG_FP8_E4M3 with any dtype the backend's decode takes: bf16 or f16 on CUDA, also f32 on
 *  the CPU). */
MSG_API int msg_attention_decode(void* out, const void* q, int q_row_stride,
                                 const void* k_cache, const void* v_cache,
                                 const int32_t* page_table, int pt_stride,
                                 const int32_t* rows, const int32_t* seq_lens, int batch,
                                 int max_seq_len, int hq, int hkv, int head_dim,
                                 int page_size, float scale, int dtype, int kv_dtype,
                                 void* stream);
/** The pages of `batch` requests out of fp8 caches, widened to dtype (bf16 or f16; also f32
 *  on the CPU), for the extend kernels (which read caches in the activation dtype): request
 *  b (page table row rows[b]) has its pages j < ceil(seq_lens[b] / page_size) copied to page
 *  b * pages_per_row + j of dst_k/dst_v ([batch * pages_per_row * page_size, hkv,
 *  head_dim]); the caller then runs
 *  the extend kernel on dst with a page table whose row b is b * pages_per_row + j (an iota
 *  of stride pages_per_row) and rows 0..batch-1. seq_lens are read on the device; each must
 *  be <= pages_per_row * page_size. src_dtype: MSG_FP8_E4M3. */
MSG_API int msg_kv_widen_pages(void* dst_k, void* dst_v, const void* k_cache,
                               const void* v_cache, const int32_t* page_table, int pt_stride,
                               const int32_t* rows, const int32_t* seq_lens, int batch,
                               int pages_per_row, int page_size, int hkv, int head_dim,
                               int src_dtype, int dtype, void* stream);

/* ---------------------------------------------------------------- logits, sampling */

/** Sampling parameters of one row, as laid out in memory (device memory on CUDA). */
typedef struct msg_sampling_params {
  float temperature; /* <= 0: greedy (argmax, lowest index on ties) */
  float top_p;       /* 1 = off */
  float min_p;       /* 0 = off */
  int32_t top_k;     /* <= 0 or >= vocab: off */
  uint64_t seed;     /* per-request key; the uniform of a step is derived from
                        (seed, step) only, so results do not depend on the batch */
  int32_t step;      /* index of the token being sampled within the request */
  int32_t pad;
} msg_sampling_params;

/** Sample one token per row of logits [rows, vocab] (fp32; read only). The rule, the same
 *  bits in both backends (x = the row's logits, NaN read as -inf):
 *  - temperature T <= 0, or max(x) / T not finite: greedy, argmax with ties to the lowest index.
 *  - z_i = fp32(x_i / T), zmax = max z; w_i = exp(z_i - zmax) in fp32 by a fixed polynomial
 *    (sample_exp in cuda/cpu/sampling.cpp); integer weights q_i = floor(w_i * 2^40).
 *  - Rank order: logit descending, ties by lower index. Each filter keeps a prefix of it:
 *    top-k (0 < k < vocab): the first k. top-p (< 1): with S = sum of q over the top-k set,
 *    the ranks whose preceding sum of q is < top_p * S (double). min-p (> 0): w_i >= min_p
 *    (the first rank always).
 *  - Draw: Q = sum of q over the kept tokens, t = floor(u * Q) (double), u = msg_uniform(seed,
 *    step); the token is the kept one, walking in INDEX order, whose interval of cumulated q
 *    contains t. This is the filtered softmax (weights below 2^-40 of the top are never
 *    drawn), and needs no sort: the GPU finds cuts by histograms and the draw by chunk sums.
 *  params may be NULL: every row greedy (on CUDA one pass over the logits instead of six
 *  kernels, most of which exit at once for greedy rows).
 *  out_logprobs (may be NULL) receives the log-probability of the chosen token under the
 *  unfiltered distribution at temperature 1 (what OpenAI reports). Graph-safe (per-device
 *  scratch; run it once outside capture with the largest row count); not concurrently on
 *  two streams of one device. */
MSG_API int msg_sample(int32_t* out_tokens, float* out_logprobs, float* logits,
                       const msg_sampling_params* params, int rows, int vocab,
                       void* stream);
/** The uniform in [0, 1) used by msg_sample, identical in both implementations:
 *    x = seed ^ ((uint64)step * 0x9E3779B97F4A7C15);  x = splitmix64_finalize(x);
 *    u = (x >> 11) * 2^-53
 *  where splitmix64_finalize(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *  z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31). */
MSG_API double msg_uniform(uint64_t seed, int32_t step);
/** OpenAI/vLLM penalties on fp32 logits [rows, vocab], in place, before sampling. Row r's
 *  penalty tokens are tokens[token_starts[r] .. token_starts[r+1]) (token_starts has
 *  rows + 1 entries; a token may repeat). For each distinct token t of the row with count
 *  c: logit -= frequency[r] * c + presence[r]; then repetition (if != 1): logit > 0 ?
 *  logit / repetition[r] : logit * repetition[r]. */
MSG_API int msg_apply_penalties(float* logits, int vocab, const int32_t* tokens,
                                const int32_t* token_starts, const float* presence,
                                const float* frequency, const float* repetition, int rows,
                                void* stream);
/** Structured outputs and logit_bias on fp32 logits [*, vocab], in place, before sampling,
 *  for n rows (row i of the op is logits row rows[i]). First the bias: for k in
 *  bias_starts[i] .. bias_starts[i+1], logits[rows[i], bias_ids[k]] += bias_values[k] (ids
 *  outside the vocabulary are skipped; bias_starts NULL = no bias). Then the mask: masks is
 *  [n, (vocab + 31) / 32] int32 words, bit v & 31 of word v >> 5 of row i clear =>
 *  logits[rows[i], v] = -inf (masks NULL = no mask). */
MSG_API int msg_apply_token_mask(float* logits, int vocab, const int32_t* rows,
                                 const int32_t* masks, const int32_t* bias_starts,
                                 const int32_t* bias_ids, const float* bias_values, int n,
                                 void* stream);
/** out[i] = log_softmax(logits[i, :])[targets[i]] for rows of fp32 logits. */
MSG_API int msg_token_logprobs(float* out, const float* logits, const int32_t* targets,
                               int rows, int vocab, void* stream);
/** Top-k log-probabilities of each row: ids [rows, k], logprobs [rows, k], descending. */
MSG_API int msg_top_logprobs(int32_t* out_ids, float* out_logprobs, const float* logits,
                             int rows, int vocab, int k, void* stream);

/* ---------------------------------------------------------------- collectives */

/* Tensor parallelism: every rank of a communicator calls the same collectives in the same
 * order. The CPU backend joins ranks of one host (threads or processes) through a shared
 * memory segment named from the unique id; its sum runs in rank order, so every rank gets
 * bit-identical results. Ranks on several hosts (--nnodes > 1) meet over TCP instead: a
 * CPU id whose bytes 16.. hold "tcp:HOST:PORT\0" makes rank 0 listen there and the others
 * connect, and every collective goes through rank 0 with the same sum in rank order. The
 * CUDA backend uses NCCL (its id names NCCL's bootstrap socket, which spans hosts), and for
 * small messages a one-shot all-reduce over peer memory (msg_ipc_*). */

/** Unique id for a communicator (128 bytes), made once and handed to every rank. */
MSG_API int msg_comm_unique_id(uint8_t* id128);
/** Communicator of `nranks` ranks; this thread's device must be set first. Blocks until
 *  every rank has joined. With nranks == 1 no library is needed. */
MSG_API int msg_comm_init(void** comm, int nranks, int rank, const uint8_t* id128);
MSG_API int msg_comm_destroy(void* comm);
/** In-place sum over ranks of n elements of dtype. */
MSG_API int msg_all_reduce(void* buf, uint64_t n, int dtype, void* comm, void* stream);
/** Column all-gather: rank r's src [rows, cols] lands in dst [rows, dst_cols] at columns
 *  r * cols .. min(dst_cols, (r + 1) * cols) (the last rank's padding is dropped). The CUDA
 *  backend needs `scratch` of nranks * rows * cols elements (NULL is fine on the CPU). */
MSG_API int msg_all_gather_cols(void* dst, int dst_cols, const void* src, void* scratch,
                                int rows, int cols, int dtype, void* comm, void* stream);
/** One-shot all-reduce over peer memory (CUDA; the CPU backend answers unsupported): each
 *  rank allocates a peer-visible buffer and hands (pointer, IPC handle, process id) to the
 *  others; ranks of one process use the pointer, others open the handle. Sums at most
 *  `data_bytes` in place, in rank order (bit-identical on every rank), graph-capturable.
 *  Every rank must make the same calls in the same order, like any collective. */
MSG_API int msg_peer_buffer_alloc(void** buf, uint64_t data_bytes, uint8_t* handle64);
MSG_API int msg_peer_all_reduce_create(void** ar, int nranks, int rank, void* own_buf,
                                       uint64_t data_bytes, const uint64_t* peer_ptrs,
                                       const uint8_t* peer_handles, const int32_t* peer_pids);
MSG_API int msg_peer_all_reduce_destroy(void* ar);
MSG_API int msg_peer_all_reduce(void* buf, uint64_t n, int dtype, void* ar, void* stream);
/** Vocab-parallel embedding: out[i, :] = table[ids[i] - vocab_start, :] when the id falls in
 *  [vocab_start, vocab_start + vocab_rows), else zeros (an all-reduce then sums the ranks). */
MSG_API int msg_embedding_range(void* out, const void* table, const int32_t* ids, int n,
                                int hidden, int vocab_start, int vocab_rows, int act_dtype,
                                int w_dtype, void* stream);
/** Dummy weights: p[i] = mean + scale * u_i with u_i uniform in [-1, 1) from
 *  splitmix64(seed + i) (the top 24 bits), identical on both backends. */
MSG_API int msg_fill_random(void* p, uint64_t n, int dtype, uint64_t seed, float mean,
                            float scale, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MINISGL_H */
