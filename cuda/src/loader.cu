// loader.cu — opens cuBLASLt and NCCL with dlopen on first use and resolves the entry points
// declared in dynload.cuh. No kernels. Where the real headers exist (the GPU machine),
// static_asserts prove that our hand-written enum values and struct layouts match them.
#include <dlfcn.h>
#include <stdlib.h>

#include <mutex>
#include <string>

#include "common.cuh"
#include "dynload.cuh"

#if defined(__has_include)
#if __has_include(<cublasLt.h>)
#include <cublasLt.h>
static_assert(msg::lt::STATUS_SUCCESS == CUBLAS_STATUS_SUCCESS, "cublas status");
static_assert(msg::lt::COMPUTE_32F == CUBLAS_COMPUTE_32F, "compute type");
static_assert(msg::lt::OP_N == CUBLAS_OP_N && msg::lt::OP_T == CUBLAS_OP_T, "ops");
static_assert(msg::lt::DESC_TRANSA == CUBLASLT_MATMUL_DESC_TRANSA, "transa");
static_assert(msg::lt::DESC_TRANSB == CUBLASLT_MATMUL_DESC_TRANSB, "transb");
static_assert(msg::lt::DESC_EPILOGUE == CUBLASLT_MATMUL_DESC_EPILOGUE, "epilogue attr");
static_assert(msg::lt::DESC_BIAS_POINTER == CUBLASLT_MATMUL_DESC_BIAS_POINTER, "bias attr");
static_assert(msg::lt::EPILOGUE_DEFAULT == CUBLASLT_EPILOGUE_DEFAULT, "epilogue default");
static_assert(msg::lt::EPILOGUE_BIAS == CUBLASLT_EPILOGUE_BIAS, "epilogue bias");
static_assert(msg::lt::PREF_MAX_WORKSPACE_BYTES == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
              "workspace pref");
static_assert(sizeof(msg::lt::HeuristicResult) == sizeof(cublasLtMatmulHeuristicResult_t),
              "heuristic result size");
static_assert(sizeof(msg::lt::MatmulAlgo) == sizeof(cublasLtMatmulAlgo_t), "algo size");
static_assert(offsetof(msg::lt::HeuristicResult, state) ==
                  offsetof(cublasLtMatmulHeuristicResult_t, state), "state offset");
#define MSG_CHECKED_CUBLASLT 1
#endif
#if __has_include(<nccl.h>)
#include <nccl.h>
static_assert(msg::nccl::SUCCESS == ncclSuccess, "nccl success");
static_assert(msg::nccl::INT32 == ncclInt32 && msg::nccl::FLOAT16 == ncclFloat16 &&
                  msg::nccl::FLOAT32 == ncclFloat32 && msg::nccl::BFLOAT16 == ncclBfloat16,
              "nccl dtypes");
static_assert(msg::nccl::SUM == ncclSum, "nccl sum");
static_assert(sizeof(msg::nccl::UniqueId) == sizeof(ncclUniqueId), "nccl unique id");
#define MSG_CHECKED_NCCL 1
#endif
#endif

namespace msg {
namespace {

// Tries each name, then the same names under $CUDA_HOME/lib64 and /usr/local/cuda/lib64.
void* open_first(const char* const* names, int n, std::string* tried) {
  const char* home = getenv("CUDA_HOME");
  const char* dirs[] = {"", home ? home : nullptr, "/usr/local/cuda"};
  for (const char* dir : dirs) {
    if (!dir) continue;
    for (int i = 0; i < n; i++) {
      std::string path = dir[0] ? std::string(dir) + "/lib64/" + names[i] : names[i];
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h) return h;
      const char* err = dlerror();
      if (tried->empty() && err) *tried = err;
    }
  }
  return nullptr;
}

template <typename F>
bool sym(void* h, const char* name, F* out, std::string* missing) {
  *out = (F)dlsym(h, name);
  if (!*out && missing->empty()) *missing = name;
  return *out != nullptr;
}

}  // namespace

namespace lt {

const Api* api() {
  static std::once_flag once;
  static Api a;
  static bool ok = false;
  static std::string why;
  std::call_once(once, [] {
    const char* names[] = {"libcublasLt.so.13", "libcublasLt.so", "libcublasLt.so.12"};
    void* h = open_first(names, 3, &why);
    if (!h) {
      why = "cannot load cuBLASLt: " + why;
      return;
    }
    std::string miss;
    sym(h, "cublasLtCreate", &a.create, &miss);
    sym(h, "cublasLtMatmulDescCreate", &a.matmulDescCreate, &miss);
    sym(h, "cublasLtMatmulDescDestroy", &a.matmulDescDestroy, &miss);
    sym(h, "cublasLtMatmulDescSetAttribute", &a.matmulDescSetAttribute, &miss);
    sym(h, "cublasLtMatrixLayoutCreate", &a.matrixLayoutCreate, &miss);
    sym(h, "cublasLtMatrixLayoutDestroy", &a.matrixLayoutDestroy, &miss);
    sym(h, "cublasLtMatmulPreferenceCreate", &a.preferenceCreate, &miss);
    sym(h, "cublasLtMatmulPreferenceDestroy", &a.preferenceDestroy, &miss);
    sym(h, "cublasLtMatmulPreferenceSetAttribute", &a.preferenceSetAttribute, &miss);
    sym(h, "cublasLtMatmulAlgoGetHeuristic", &a.algoGetHeuristic, &miss);
    sym(h, "cublasLtMatmulAlgoCheck", &a.algoCheck, &miss);
    sym(h, "cublasLtMatmul", &a.matmul, &miss);
    sym(h, "cublasLtGetStatusString", &a.getStatusString, &miss);
    if (!miss.empty()) {
      why = "cuBLASLt lacks " + miss;
      return;
    }
    ok = true;
  });
  if (!ok) {
    fail(ERR_UNSUPPORTED, "%s", why.c_str());
    return nullptr;
  }
  return &a;
}

}  // namespace lt

namespace nccl {

const Api* api() {
  static std::once_flag once;
  static Api a;
  static bool ok = false;
  static std::string why;
  std::call_once(once, [] {
    const char* names[] = {"libnccl.so.2", "libnccl.so"};
    void* h = open_first(names, 2, &why);
    if (!h) {
      why = "cannot load NCCL: " + why;
      return;
    }
    std::string miss;
    sym(h, "ncclGetUniqueId", &a.getUniqueId, &miss);
    sym(h, "ncclCommInitRank", &a.commInitRank, &miss);
    sym(h, "ncclCommDestroy", &a.commDestroy, &miss);
    sym(h, "ncclAllReduce", &a.allReduce, &miss);
    sym(h, "ncclAllGather", &a.allGather, &miss);
    sym(h, "ncclGetErrorString", &a.getErrorString, &miss);
    if (!miss.empty()) {
      why = "NCCL lacks " + miss;
      return;
    }
    ok = true;
  });
  if (!ok) {
    fail(ERR_UNSUPPORTED, "%s", why.c_str());
    return nullptr;
  }
  return &a;
}

}  // namespace nccl
}  // namespace msg
