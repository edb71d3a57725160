// comm.cpp — collectives of the CPU backend: a communicator of one rank, whose all-reduce
// is the identity. Tensor parallelism over several ranks needs the CUDA backend (NCCL).
#include <random>

#include "common.h"

using namespace msg;

namespace {
struct Comm {
  int nranks = 1, rank = 0;
};
}  // namespace

extern "C" {

int msg_comm_unique_id(uint8_t* id128) {
  MSG_REQUIRE(id128, "msg_comm_unique_id: id is NULL");
  MSG_TRY
  std::random_device rd;
  for (int i = 0; i < 128; i += 4) {
    uint32_t r = rd();
    std::memcpy(id128 + i, &r, 4);
  }
  return 0;
  MSG_CATCH
}

int msg_comm_init(void** comm, int nranks, int rank, const uint8_t*) {
  MSG_REQUIRE(comm, "msg_comm_init: comm is NULL");
  MSG_REQUIRE(nranks == 1 && rank == 0,
              "msg_comm_init: the CPU backend supports only nranks == 1 (got nranks %d, "
              "rank %d); tensor parallelism needs the CUDA backend",
              nranks, rank);
  MSG_TRY
  *comm = new Comm();
  return 0;
  MSG_CATCH
}

int msg_comm_destroy(void* comm) {
  delete (Comm*)comm;
  return 0;
}

int msg_all_reduce(void* buf, uint64_t n, int dtype, void* comm, void*) {
  MSG_REQUIRE(comm, "msg_all_reduce: comm is NULL");
  MSG_REQUIRE(is_float_dtype(dtype) || dtype == MSG_I32,
              "msg_all_reduce: unsupported dtype %d", dtype);
  MSG_REQUIRE(buf || n == 0, "msg_all_reduce: buf is NULL");
  return 0;  // a sum over one rank
}

}  // extern "C"
