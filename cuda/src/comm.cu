// comm.cu — collectives through NCCL (loaded at run time, see loader.cu). One communicator
// per rank; all-reduce sums in place on the caller's stream, so it can be captured into a
// CUDA graph like any kernel. A single-rank communicator needs no library and no work.
#include <string.h>

#include "common.cuh"
#include "dynload.cuh"

namespace {

struct Comm {
  int nranks;
  int rank;
  msg::nccl::CommHandle nccl;  // NULL when nranks == 1
};

// Rank r's block [rows, cols] of the gathered [nranks, rows, cols] lands at columns
// r * cols of dst [rows, dst_cols]; one thread per destination element (grid-stride).
template <typename T>
__global__ void place_cols_kernel(T* dst, int dst_cols, const T* gathered, int rows, int cols) {
  uint64_t total = (uint64_t)rows * dst_cols;
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total;
       i += (uint64_t)gridDim.x * blockDim.x) {
    int row = (int)(i / dst_cols), col = (int)(i % dst_cols);
    int r = col / cols, c = col % cols;
    dst[i] = gathered[((uint64_t)r * rows + row) * cols + c];
  }
}

int fail_nccl(const msg::nccl::Api* a, msg::nccl::Result r, const char* what) {
  return msg::fail(msg::ERR_CUDA, "%s: NCCL error %d (%s)", what, r,
                   a->getErrorString ? a->getErrorString(r) : "?");
}

}  // namespace

extern "C" {

int msg_comm_unique_id(uint8_t* id128) {
  MSG_REQUIRE(id128, "msg_comm_unique_id: NULL pointer");
  const msg::nccl::Api* a = msg::nccl::api();
  if (!a) return msg::ERR_UNSUPPORTED;
  msg::nccl::UniqueId id;
  msg::nccl::Result r = a->getUniqueId(&id);
  if (r != msg::nccl::SUCCESS) return fail_nccl(a, r, "ncclGetUniqueId");
  memcpy(id128, id.internal, 128);
  return 0;
}

int msg_comm_init(void** comm, int nranks, int rank, const uint8_t* id128) {
  MSG_REQUIRE(comm, "msg_comm_init: NULL pointer");
  MSG_REQUIRE(nranks >= 1 && rank >= 0 && rank < nranks, "msg_comm_init: rank %d of %d", rank,
              nranks);
  *comm = nullptr;
  Comm* c = new Comm{nranks, rank, nullptr};
  if (nranks > 1) {
    MSG_REQUIRE(id128, "msg_comm_init: NULL unique id");
    const msg::nccl::Api* a = msg::nccl::api();
    if (!a) {
      delete c;
      return msg::ERR_UNSUPPORTED;
    }
    msg::nccl::UniqueId id;
    memcpy(id.internal, id128, 128);
    msg::nccl::Result r = a->commInitRank(&c->nccl, nranks, id, rank);
    if (r != msg::nccl::SUCCESS) {
      delete c;
      return fail_nccl(a, r, "ncclCommInitRank");
    }
  }
  *comm = c;
  return 0;
}

int msg_comm_destroy(void* comm) {
  Comm* c = (Comm*)comm;
  if (!c) return 0;
  int rc = 0;
  if (c->nccl) {
    const msg::nccl::Api* a = msg::nccl::api();
    msg::nccl::Result r = a->commDestroy(c->nccl);
    if (r != msg::nccl::SUCCESS) rc = fail_nccl(a, r, "ncclCommDestroy");
  }
  delete c;
  return rc;
}

int msg_all_reduce(void* buf, uint64_t n, int dtype, void* comm, void* stream) {
  Comm* c = (Comm*)comm;
  MSG_REQUIRE(c, "msg_all_reduce: NULL communicator");
  if (c->nranks == 1 || n == 0) return 0;
  int nd;
  switch (dtype) {
    case MSG_F32: nd = msg::nccl::FLOAT32; break;
    case MSG_F16: nd = msg::nccl::FLOAT16; break;
    case MSG_BF16: nd = msg::nccl::BFLOAT16; break;
    case MSG_I32: nd = msg::nccl::INT32; break;
    default: return msg::fail(msg::ERR_UNSUPPORTED, "msg_all_reduce: dtype %s",
                              msg::dtype_name(dtype));
  }
  const msg::nccl::Api* a = msg::nccl::api();
  msg::nccl::Result r =
      a->allReduce(buf, buf, (size_t)n, nd, msg::nccl::SUM, c->nccl, msg::as_stream(stream));
  if (r != msg::nccl::SUCCESS) return fail_nccl(a, r, "ncclAllReduce");
  return 0;
}

int msg_all_gather_cols(void* dst, int dst_cols, const void* src, void* scratch, int rows,
                        int cols, int dtype, void* comm, void* stream) {
  Comm* c = (Comm*)comm;
  MSG_REQUIRE(c, "msg_all_gather_cols: NULL communicator");
  MSG_REQUIRE(rows >= 0 && cols > 0 && dst_cols > 0 && dst_cols <= c->nranks * cols,
              "msg_all_gather_cols: bad sizes rows %d cols %d dst_cols %d", rows, cols,
              dst_cols);
  if (rows == 0) return 0;
  int nd;
  switch (dtype) {
    case MSG_F32: nd = msg::nccl::FLOAT32; break;
    case MSG_F16: nd = msg::nccl::FLOAT16; break;
    case MSG_BF16: nd = msg::nccl::BFLOAT16; break;
    default: return msg::fail(msg::ERR_UNSUPPORTED, "msg_all_gather_cols: dtype %s",
                              msg::dtype_name(dtype));
  }
  cudaStream_t st = msg::as_stream(stream);
  const void* gathered = src;
  if (c->nranks > 1) {
    MSG_REQUIRE(scratch, "msg_all_gather_cols: NULL scratch");
    const msg::nccl::Api* a = msg::nccl::api();
    msg::nccl::Result r =
        a->allGather(src, scratch, (size_t)rows * cols, nd, c->nccl, st);
    if (r != msg::nccl::SUCCESS) return fail_nccl(a, r, "ncclAllGather");
    gathered = scratch;
  }
  uint64_t total = (uint64_t)rows * dst_cols, blocks = (total + 255) / 256;
  unsigned grid = (unsigned)(blocks > 4096 ? 4096 : blocks);
  return MSG_DISPATCH_FLOAT(dtype, T,
    place_cols_kernel<T><<<grid, 256, 0, st>>>((T*)dst, dst_cols, (const T*)gathered, rows, cols);
    MSG_LAUNCHED("place_cols_kernel");
    return 0;);
}

}  // extern "C"
