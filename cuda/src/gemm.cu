// gemm.cu — out[M, N] = a[M, K] @ w[N, K]^T (+ bias[N]) through cuBLASLt (fp32 compute).
//
// Row-major out[M, N] is column-major out^T[N, M] = w[N, K] @ a^T, so cuBLASLt runs
// D(N x M) = op_T(W: K x N, ld K) * op_N(A: K x M, ld K) with no copy. The bias is a
// per-row vector of D and goes through the BIAS epilogue when it has D's dtype, else a small
// add kernel follows. Descriptors are cached per (device, M, N, K, dtypes, bias, alignment)
// in thread-local state (one worker thread per GPU), and the 32 MB workspace is a per-device
// scratch, so a call allocates nothing and can be captured into a CUDA graph. The heuristic's
// algorithm is cached per M *bucket* (M rounded up to 1/8 of its power of two, from 64 on):
// every prefill or mixed batch has a new token count, and asking the heuristic (and loading
// the kernel it picks, on first use) for each one cost milliseconds of host time a step in
// serving, while the device waited (MINISGL_STEP_TRACE). A bucket's algorithm is checked for
// the exact M (cublasLtMatmulAlgoCheck), with the exact heuristic as the fallback. Small
// buckets (M <= 256, MSG_GEMM_TUNE) are tuned: the heuristic's first answer is a guess (on an
// H100, 2026-12-05, another of its first 8 answers was kept in 37 of 224 decode-sized buckets,
// 1-10% faster, llama-3-8b's down projection from M = 88 most; batch-128 decode +4%). When a
// new small bucket is first called outside graph capture (the model runner's warm-up calls
// every bucket at start), up to kTuneCandidates of the heuristic's answers are each run
// 1 + kTuneReps times on the call's own buffers and the fastest is kept (the first within 5% of
// it, see tune()); the call's result is then computed again by it. Dtype pairs cuBLASLt does
// not take (a_dtype != w_dtype) use a plain tiled kernel (32x32 tiles, one thread per output
// element, fp32 accumulation): correct, not fast. A cuBLASLt that does not load is an error
// (never a silent slow path); a shape the heuristic has no algorithm for runs on that kernel
// with one warning on stderr per shape. Decode-sized calls (M <= 4 by default, a and w both
// bf16 or both f16) go to the memory-roofline GEMV kernels of gemv.cu instead.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>

#include "common.cuh"
#include "dynload.cuh"

namespace {

const size_t kWorkspace = 32u << 20;
const int kTuneCandidates = 8;
const int kTuneReps = 5;
const float kTuneMargin = 1.05f;  // a later candidate must beat the earlier ones by 5%
const int kTuneMaxM = 256;  // default of MSG_GEMM_TUNE (0: no tuning)

cudaDataType_t cuda_type(int d) {
  return d == MSG_F32 ? CUDA_R_32F : d == MSG_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

// dev M N K a w out bias align
typedef std::tuple<int, int, int, int, int, int, int, int, int> Key;

// cublasLtMatmulPreferenceAttributes_t values: minimum alignment (bytes) of A, B, C, D.
// The heuristic assumes 256 unless told; an algorithm it picks for that may refuse less
// aligned pointers at matmul time (seen: status 15 with pointers 2 bytes off).
const int kPrefMinAlignment[4] = {5, 6, 7, 8};

/** Largest power of two <= 256 dividing every pointer. */
uint32_t alignment_of(const void* a, const void* b, const void* c) {
  uintptr_t bits = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | 256;
  return (uint32_t)(bits & (~bits + 1));
}

struct Plan {
  msg::lt::MatmulDesc desc = nullptr;
  msg::lt::MatrixLayout la = nullptr, lb = nullptr, ld = nullptr;
  msg::lt::MatmulAlgo algo;
  bool epilogue_bias = false;
  bool ok = false;  // false: cuBLASLt has no algorithm, use the fallback kernel
};

struct Algo {
  msg::lt::MatmulAlgo algo;
  bool ok = false;
};

struct State {
  msg::lt::Handle handle = nullptr;
  std::map<Key, Plan> plans;
  std::map<Key, Algo> algos;  // by bucket_m(M)
};

/** The M whose heuristic answer serves M: M rounded up to a multiple of 8 up to 64, then to a
 *  multiple of 1/8 of its power of two (at most 12.5% above M, 8 buckets an octave). The
 *  model runner warms every bucket at start (src/runtime/model_runner.ts, gemmWarmSizes). */
int bucket_m(int M) {
  if (M <= 64) return (M + 7) / 8 * 8;
  int p = 1;
  while (p * 2 <= M) p *= 2;
  const int g = p / 8;
  return (M + g - 1) / g * g;
}
thread_local std::map<int, State> t_states;

int fail_lt(const msg::lt::Api* a, msg::lt::Status s, const char* what) {
  return msg::fail(msg::ERR_CUDA, "%s: cuBLAS status %d (%s)", what, s,
                   a->getStatusString ? a->getStatusString(s) : "?");
}
#define LT(call)                                                        \
  do {                                                                  \
    msg::lt::Status s_ = (call);                                        \
    if (s_ != msg::lt::STATUS_SUCCESS) return fail_lt(lt_, s_, #call);    \
  } while (0)

// Builds the descriptors of an M x N x K matmul (p->ok is left false).
int make_descs(const msg::lt::Api* lt_, Plan* p, int M, int N, int K, int a_dtype, int w_dtype,
               int out_dtype, bool epilogue_bias) {
  LT(lt_->matmulDescCreate(&p->desc, msg::lt::COMPUTE_32F, CUDA_R_32F));
  int ta = msg::lt::OP_T, tb = msg::lt::OP_N;
  LT(lt_->matmulDescSetAttribute(p->desc, msg::lt::DESC_TRANSA, &ta, sizeof(ta)));
  LT(lt_->matmulDescSetAttribute(p->desc, msg::lt::DESC_TRANSB, &tb, sizeof(tb)));
  uint32_t epi = epilogue_bias ? msg::lt::EPILOGUE_BIAS : msg::lt::EPILOGUE_DEFAULT;
  LT(lt_->matmulDescSetAttribute(p->desc, msg::lt::DESC_EPILOGUE, &epi, sizeof(epi)));
  LT(lt_->matrixLayoutCreate(&p->la, cuda_type(w_dtype), (uint64_t)K, (uint64_t)N, K));
  LT(lt_->matrixLayoutCreate(&p->lb, cuda_type(a_dtype), (uint64_t)K, (uint64_t)M, K));
  LT(lt_->matrixLayoutCreate(&p->ld, cuda_type(out_dtype), (uint64_t)N, (uint64_t)M, N));
  p->epilogue_bias = epilogue_bias;
  return 0;
}

void destroy_descs(const msg::lt::Api* lt_, Plan* p) {
  if (p->la) lt_->matrixLayoutDestroy(p->la);
  if (p->lb) lt_->matrixLayoutDestroy(p->lb);
  if (p->ld) lt_->matrixLayoutDestroy(p->ld);
  if (p->desc) lt_->matmulDescDestroy(p->desc);
  *p = Plan{};
}

// Asks the heuristic for up to `want` algorithms of plan p's descriptors, best guess first
// (returns how many in *got; p->ok, p->algo: the first).
int run_heuristic(const msg::lt::Api* lt_, msg::lt::Handle h, Plan* p, int M, int N, int K,
                  int a_dtype, int w_dtype, int out_dtype, uint32_t align,
                  msg::lt::HeuristicResult* res = nullptr, int want = 1, int* got_out = nullptr) {
  msg::lt::Preference pref = nullptr;
  LT(lt_->preferenceCreate(&pref));
  uint64_t ws = kWorkspace;
  lt_->preferenceSetAttribute(pref, msg::lt::PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (align < 256) {
    for (int attr : kPrefMinAlignment) {
      lt_->preferenceSetAttribute(pref, attr, &align, sizeof(align));
    }
  }
  msg::lt::HeuristicResult one[1];
  if (!res) {
    res = one;
    want = 1;
  }
  int got = 0;
  msg::lt::Status s =
      lt_->algoGetHeuristic(h, p->desc, p->la, p->lb, p->ld, p->ld, pref, want, res, &got);
  lt_->preferenceDestroy(pref);
  p->ok = s == msg::lt::STATUS_SUCCESS && got > 0;
  if (got_out) *got_out = p->ok ? got : 0;
  if (p->ok) {
    p->algo = res[0].algo;
  } else {
    fprintf(stderr,
            "minisgl: cuBLASLt has no algorithm for gemm M=%d N=%d K=%d (a %s, w %s, out %s, "
            "alignment %u, status %d): this shape runs on the slow fallback kernel\n",
            M, N, K, msg::dtype_name(a_dtype), msg::dtype_name(w_dtype),
            msg::dtype_name(out_dtype), align, (int)s);
  }
  return 0;
}

/** The largest bucket MSG_GEMM_TUNE lets be tuned (0: none). */
int tune_max_m() {
  const char* e = getenv("MSG_GEMM_TUNE");
  return e && *e ? atoi(e) : kTuneMaxM;
}

/** The buffers and stream of the call that makes a plan (its matmuls, for tuning). */
struct Call {
  const void* a;
  const void* w;
  void* out;
  const void* bias;  // set on the descriptor when the plan has the bias epilogue
  cudaStream_t st;
};

// Times each of the n candidates that runs plan p's exact M within the workspace (1 warm-up +
// kTuneReps runs on the call's buffers, each after an L2 flush) and returns in *best_out the
// first one (in the heuristic's order) within kTuneMargin of the fastest, or -1 when none could
// be timed: close calls go to the heuristic's order, so timing noise rarely changes the choice
// (and with it the rounding of the results) from one start to the next. Only outside graph
// capture.
int tune(const msg::lt::Api* lt_, msg::lt::Handle h, Plan* p, const msg::lt::HeuristicResult* c,
         int n, const Call& call, int M, int N, int K, int* best_out) {
  *best_out = -1;
  void* ws = nullptr;
  int rc = msg::device_scratch(msg::SCRATCH_GEMM, kWorkspace, &ws);
  if (rc) return rc;
  if (p->epilogue_bias) {
    LT(lt_->matmulDescSetAttribute(p->desc, msg::lt::DESC_BIAS_POINTER, &call.bias,
                                   sizeof(call.bias)));
  }
  // Each timed run starts with the L2 cache flushed (a memset of twice its size): in a model
  // the weights come from memory, and a candidate timed with them resident in L2 (a qwen3-0.6b
  // matrix is 4-12 MB) wins by what does not happen in a decode step. Without the flush buffer
  // (no memory left) the runs are timed warm.
  int l2 = 0, dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
  const size_t flush_bytes = 2 * (size_t)l2;
  void* flush = nullptr;
  if (flush_bytes == 0 || cudaMalloc(&flush, flush_bytes) != cudaSuccess) {
    cudaGetLastError();
    flush = nullptr;
  }
  cudaEvent_t e0, e1;
  MSG_CUDA(cudaEventCreate(&e0));
  MSG_CUDA(cudaEventCreate(&e1));
  float ms_of[kTuneCandidates];
  float fastest = -1.f;
  const float alpha = 1.f, beta = 0.f;
  auto run = [&](int i) {
    return lt_->matmul(h, p->desc, &alpha, call.w, p->la, call.a, p->lb, &beta, call.out, p->ld,
                       call.out, p->ld, &c[i].algo, ws, kWorkspace, call.st) ==
           msg::lt::STATUS_SUCCESS;
  };
  for (int i = 0; i < n && i < kTuneCandidates; i++) {
    ms_of[i] = -1.f;
    msg::lt::HeuristicResult check;
    if (lt_->algoCheck(h, p->desc, p->la, p->lb, p->ld, p->ld, &c[i].algo, &check) !=
            msg::lt::STATUS_SUCCESS ||
        check.workspaceSize > kWorkspace || !run(i)) {  // the first run loads the kernel
      continue;
    }
    float total = 0.f;
    for (int r = 0; r < kTuneReps && total >= 0.f; r++) {
      if (flush) cudaMemsetAsync(flush, r, flush_bytes, call.st);
      cudaEventRecord(e0, call.st);
      const bool ran = run(i);
      cudaEventRecord(e1, call.st);
      float ms = 0.f;
      if (!ran || cudaEventSynchronize(e1) != cudaSuccess ||
          cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) {
        total = -1.f;
      } else {
        total += ms;
      }
    }
    if (total < 0.f) {
      cudaGetLastError();
      continue;
    }
    ms_of[i] = total / kTuneReps;
    if (fastest < 0.f || ms_of[i] < fastest) fastest = ms_of[i];
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (flush) cudaFree(flush);
  for (int i = 0; i < n && i < kTuneCandidates && *best_out < 0; i++) {
    if (ms_of[i] >= 0.f && ms_of[i] <= kTuneMargin * fastest) *best_out = i;
  }
  const char* log = getenv("MSG_GEMM_TUNE_LOG");
  if (log && *log == '1' && *best_out >= 0) {
    fprintf(stderr, "gemm tune M=%d N=%d K=%d: %d candidates, heuristic's first %.2f us, "
            "chosen #%d %.2f us (L2 %s)\n", M, N, K, n, 1e3f * ms_of[0], *best_out,
            1e3f * ms_of[*best_out], flush ? "flushed" : "warm");
  }
  return 0;
}

// The plan of `key`: its descriptors, and the algorithm of its M bucket where that one runs
// this exact M within the workspace; else (or for a new bucket) the heuristic's answer. A new
// bucket up to tune_max_m() first called outside graph capture is tuned on this call.
int make_plan(const msg::lt::Api* lt_, State& state, Plan* p, const Key& key, const Call& call) {
  const auto [dev, M, N, K, a_dtype, w_dtype, out_dtype, epi, align] = key;
  int rc = make_descs(lt_, p, M, N, K, a_dtype, w_dtype, out_dtype, epi != 0);
  if (rc) return rc;
  const int Mb = bucket_m(M);
  Key bkey(dev, Mb, N, K, a_dtype, w_dtype, out_dtype, epi, align);
  auto bit = state.algos.find(bkey);
  if (bit == state.algos.end()) {
    // A new bucket: the heuristic at the bucket's M (its descriptors only for this).
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    MSG_CUDA(cudaStreamIsCapturing(call.st, &cs));
    const bool tuning = Mb <= tune_max_m() && cs == cudaStreamCaptureStatusNone;
    Plan bp;
    msg::lt::HeuristicResult cand[kTuneCandidates];
    int got = 0;
    rc = make_descs(lt_, &bp, Mb, N, K, a_dtype, w_dtype, out_dtype, epi != 0);
    if (rc == 0) rc = run_heuristic(lt_, state.handle, &bp, Mb, N, K, a_dtype, w_dtype,
                                    out_dtype, (uint32_t)align, cand,
                                    tuning ? kTuneCandidates : 1, &got);
    Algo a;
    a.ok = bp.ok;
    a.algo = bp.algo;
    destroy_descs(lt_, &bp);
    if (rc) return rc;
    if (got > 1) {
      int best = -1;
      rc = tune(lt_, state.handle, p, cand, got, call, M, N, K, &best);
      if (rc) return rc;
      if (best >= 0) a.algo = cand[best].algo;
    }
    bit = state.algos.emplace(bkey, a).first;
  }
  if (bit->second.ok) {
    msg::lt::HeuristicResult check;
    if (lt_->algoCheck(state.handle, p->desc, p->la, p->lb, p->ld, p->ld, &bit->second.algo,
                       &check) == msg::lt::STATUS_SUCCESS &&
        check.workspaceSize <= kWorkspace) {
      p->algo = bit->second.algo;
      p->ok = true;
      return 0;
    }
  }
  return run_heuristic(lt_, state.handle, p, M, N, K, a_dtype, w_dtype, out_dtype,
                       (uint32_t)align);
}

template <typename TA, typename TW, typename TO>
__global__ void gemm_fallback_kernel(TO* out, const TA* a, const TW* w, const TW* bias, int M,
                                     int N, int K) {
  __shared__ float as[32][33];
  __shared__ float ws[32][33];
  int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8 threads, 4 rows each
  int n = blockIdx.x * 32 + tx;
  int m0 = blockIdx.y * 32;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int k0 = 0; k0 < K; k0 += 32) {
    for (int r = ty; r < 32; r += 8) {
      int m = m0 + r, nn = blockIdx.x * 32 + r, k = k0 + tx;
      as[r][tx] = (m < M && k < K) ? msg::to_f(a[(size_t)m * K + k]) : 0.f;
      ws[r][tx] = (nn < N && k < K) ? msg::to_f(w[(size_t)nn * K + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < 32; k++) {
      float wv = ws[tx][k];
#pragma unroll
      for (int i = 0; i < 4; i++) acc[i] += as[ty + 8 * i][k] * wv;
    }
    __syncthreads();
  }
  if (n >= N) return;
  float b = bias ? msg::to_f(bias[n]) : 0.f;
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int m = m0 + ty + 8 * i;
    if (m < M) out[(size_t)m * N + n] = msg::from_f<TO>(acc[i] + b);
  }
}

template <typename TO, typename TW>
__global__ void add_bias_kernel(TO* out, const TW* bias, int M, int N) {
  size_t total = (size_t)M * N;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
       i += (size_t)gridDim.x * blockDim.x) {
    out[i] = msg::from_f<TO>(msg::to_f(out[i]) + msg::to_f(bias[i % N]));
  }
}

int gemm_fallback(void* out, int out_dtype, const void* a, int a_dtype, const void* w,
                  int w_dtype, const void* bias, int M, int N, int K, cudaStream_t st) {
  dim3 grid((N + 31) / 32, (M + 31) / 32), block(32, 8);
  return MSG_DISPATCH_FLOAT(a_dtype, TA, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    return MSG_DISPATCH_FLOAT(out_dtype, TO,
      gemm_fallback_kernel<TA, TW, TO><<<grid, block, 0, st>>>(
          (TO*)out, (const TA*)a, (const TW*)w, (const TW*)bias, M, N, K);
      MSG_LAUNCHED("gemm_fallback_kernel");
      return 0;);););
}

}  // namespace

namespace msg {
bool gemv_takes(int M, int a_dtype, int w_dtype, int out_dtype);
int gemv(void* out, int out_dtype, const void* a, const void* w, int w_dtype, const void* bias,
         int M, int N, int K, cudaStream_t st);
bool gemv_silu_takes(int M, int dtype, const void* a, const void* w, int K);
int gemv_silu(void* out, const void* a, const void* w, int dtype, int M, int N, int K,
              cudaStream_t st);
}  // namespace msg

extern "C" int msg_gemm(void* out, int out_dtype, const void* a, int a_dtype, const void* w,
                        int w_dtype, const void* bias, int M, int N, int K, void* stream) {
  MSG_REQUIRE(M >= 0 && N > 0 && K > 0, "msg_gemm: bad sizes M=%d N=%d K=%d", M, N, K);
  MSG_REQUIRE(msg::is_float_dtype(out_dtype) && msg::is_float_dtype(a_dtype) &&
                  msg::is_float_dtype(w_dtype),
              "msg_gemm: unsupported dtypes a %s, w %s, out %s", msg::dtype_name(a_dtype),
              msg::dtype_name(w_dtype), msg::dtype_name(out_dtype));
  if (M == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  if (msg::gemv_takes(M, a_dtype, w_dtype, out_dtype)) {
    return msg::gemv(out, out_dtype, a, w, w_dtype, bias, M, N, K, st);
  }
  if (a_dtype != w_dtype) {
    return gemm_fallback(out, out_dtype, a, a_dtype, w, w_dtype, bias, M, N, K, st);
  }
  const msg::lt::Api* lt_ = msg::lt::api();
  if (!lt_) return msg::ERR_UNSUPPORTED;  // msg_last_error says why it did not load
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  State& state = t_states[dev];
  if (!state.handle) LT(lt_->create(&state.handle));
  bool epi_bias = bias && w_dtype == out_dtype;
  uint32_t align = alignment_of(a, w, out);
  Key key(dev, M, N, K, a_dtype, w_dtype, out_dtype, epi_bias ? 1 : 0, (int)align);
  auto it = state.plans.find(key);
  if (it == state.plans.end()) {
    Plan p;
    int rc = make_plan(lt_, state, &p, key, Call{a, w, out, bias, st});
    if (rc) return rc;
    it = state.plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  if (!p.ok) return gemm_fallback(out, out_dtype, a, a_dtype, w, w_dtype, bias, M, N, K, st);
  void* ws = nullptr;
  int rc = msg::device_scratch(msg::SCRATCH_GEMM, kWorkspace, &ws);
  if (rc) return rc;
  if (epi_bias) {
    LT(lt_->matmulDescSetAttribute(p.desc, msg::lt::DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  float alpha = 1.f, beta = 0.f;
  LT(lt_->matmul(state.handle, p.desc, &alpha, w, p.la, a, p.lb, &beta, out, p.ld, out, p.ld,
               &p.algo, ws, kWorkspace, st));
  if (bias && !epi_bias) {
    size_t total = (size_t)M * N;
    int blocks = (int)((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
    return MSG_DISPATCH_FLOAT(out_dtype, TO, return MSG_DISPATCH_FLOAT(w_dtype, TW,
      add_bias_kernel<TO, TW><<<blocks, 256, 0, st>>>((TO*)out, (const TW*)bias, M, N);
      MSG_LAUNCHED("add_bias_kernel");
      return 0;););
  }
  return 0;
}

extern "C" int msg_gemm_silu(void* out, void* gate_up, const void* a, int a_dtype,
                             const void* w, int w_dtype, int M, int inter, int K,
                             void* stream) {
  MSG_REQUIRE(M >= 0 && inter > 0 && K > 0, "msg_gemm_silu: bad sizes M=%d inter=%d K=%d", M,
              inter, K);
  if (M == 0) return 0;
  // The GEMV forms silu(gate) * up from its fp32 sums; past its range, the GEMM writes
  // gate_up in the activation dtype and silu_mul reads it back.
  if (a_dtype == w_dtype && msg::gemv_silu_takes(M, w_dtype, a, w, K)) {
    return msg::gemv_silu(out, a, w, w_dtype, M, inter, K, msg::as_stream(stream));
  }
  int rc = msg_gemm(gate_up, a_dtype, a, a_dtype, w, w_dtype, nullptr, M, 2 * inter, K, stream);
  return rc ? rc : msg_silu_mul(out, gate_up, M, inter, a_dtype, stream);
}
