// dynload.cuh — our own declarations of the few cuBLASLt and NCCL types, enum values and
// functions we call, so that every .cu compiles without their headers. The libraries are
// opened at run time with dlopen (loader.cu). Values were taken from cublasLt.h (CUDA 12/13)
// and nccl.h (2.x); loader.cu static_asserts them against the real headers when present.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType (part of the CUDA runtime headers)

namespace msg {
namespace lt {

typedef int Status;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
typedef struct Context* Handle;
typedef struct { uint64_t data[32]; } MatmulDescOpaque;
typedef MatmulDescOpaque* MatmulDesc;
typedef struct { uint64_t data[8]; } MatrixLayoutOpaque;
typedef MatrixLayoutOpaque* MatrixLayout;
typedef struct { uint64_t data[8]; } PreferenceOpaque;
typedef PreferenceOpaque* Preference;
typedef struct { uint64_t data[8]; } MatmulAlgo;
typedef struct {
  MatmulAlgo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
} HeuristicResult;

enum : int { STATUS_SUCCESS = 0 };
enum : int { COMPUTE_32F = 68 };                        // cublasComputeType_t
enum : int { OP_N = 0, OP_T = 1 };                      // cublasOperation_t
enum : int {                                            // cublasLtMatmulDescAttributes_t
  DESC_TRANSA = 3,
  DESC_TRANSB = 4,
  DESC_EPILOGUE = 7,
  DESC_BIAS_POINTER = 8,
};
enum : uint32_t { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4 };  // cublasLtEpilogue_t
enum : int { PREF_MAX_WORKSPACE_BYTES = 1 };            // cublasLtMatmulPreferenceAttributes_t

/** The cuBLASLt entry points we use (NULL until loaded). */
struct Api {
  Status (*create)(Handle*);
  Status (*matmulDescCreate)(MatmulDesc*, int computeType, cudaDataType_t scaleType);
  Status (*matmulDescDestroy)(MatmulDesc);
  Status (*matmulDescSetAttribute)(MatmulDesc, int attr, const void* buf, size_t size);
  Status (*matrixLayoutCreate)(MatrixLayout*, cudaDataType_t, uint64_t rows, uint64_t cols,
                               int64_t ld);
  Status (*matrixLayoutDestroy)(MatrixLayout);
  Status (*preferenceCreate)(Preference*);
  Status (*preferenceDestroy)(Preference);
  Status (*preferenceSetAttribute)(Preference, int attr, const void* buf, size_t size);
  Status (*algoGetHeuristic)(Handle, MatmulDesc, MatrixLayout a, MatrixLayout b,
                             MatrixLayout c, MatrixLayout d, Preference, int requested,
                             HeuristicResult* results, int* returned);
  Status (*algoCheck)(Handle, MatmulDesc, MatrixLayout a, MatrixLayout b, MatrixLayout c,
                      MatrixLayout d, const MatmulAlgo* algo, HeuristicResult* result);
  Status (*matmul)(Handle, MatmulDesc, const void* alpha, const void* A, MatrixLayout,
                   const void* B, MatrixLayout, const void* beta, const void* C, MatrixLayout,
                   void* D, MatrixLayout, const MatmulAlgo* algo, void* workspace,
                   size_t workspaceSize, cudaStream_t stream);
  const char* (*getStatusString)(Status);
};

/** Loads cuBLASLt once; returns NULL (with msg_last_error set) when it is not there. */
const Api* api();

}  // namespace lt

namespace nccl {

typedef int Result;  // ncclResult_t; 0 = ncclSuccess
typedef struct Comm* CommHandle;
typedef struct { char internal[128]; } UniqueId;
enum : int { SUCCESS = 0 };
enum : int { INT32 = 2, FLOAT16 = 6, FLOAT32 = 7, BFLOAT16 = 9 };  // ncclDataType_t
enum : int { SUM = 0 };                                          // ncclRedOp_t

/** The NCCL entry points we use (NULL until loaded). */
struct Api {
  Result (*getUniqueId)(UniqueId*);
  Result (*commInitRank)(CommHandle*, int nranks, UniqueId id, int rank);
  Result (*commDestroy)(CommHandle);
  Result (*allReduce)(const void* send, void* recv, size_t count, int dtype, int op,
                      CommHandle, cudaStream_t);
  Result (*allGather)(const void* send, void* recv, size_t sendcount, int dtype, CommHandle,
                      cudaStream_t);
  const char* (*getErrorString)(Result);
};

/** Loads NCCL once; returns NULL (with msg_last_error set) when it is not there. */
const Api* api();

}  // namespace nccl
}  // namespace msg
