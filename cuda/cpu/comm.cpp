// comm.cpp — collectives of the CPU backend over shared host memory, so that CI runs tensor
// parallelism with ranks as Workers of one process, or as processes of one host.
//
// The ranks of one communicator map one POSIX shared-memory segment named from the unique
// id: a header (a barrier) and one staging slot per rank. A collective goes chunk by chunk:
// every rank copies its chunk into its slot, all meet at the barrier, every rank reads all
// slots in rank order, all meet again (so no slot is overwritten while being read). The sum
// runs in fp32 in rank order 0..n-1 and rounds once, so every rank gets bit-identical
// results. Rank 0 unlinks the name once all have joined; the mapping lives on.
// An id that carries a hub address (ranks on several hosts) selects comm_tcp.cpp instead.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <string>

#include "comm_tcp.h"
#include "common.h"

using namespace msg;

namespace {

const size_t kSlotBytes = 4u << 20;
const double kTimeoutSeconds = 600;  // a rank that never arrives is dead, not slow

struct Header {
  std::atomic<uint32_t> arrived;
  std::atomic<uint32_t> generation;
  char pad[56];
};

struct Comm {
  int nranks = 1, rank = 0;
  Header* hdr = nullptr;
  uint8_t* slots = nullptr;  // nranks * kSlotBytes
  size_t map_bytes = 0;
  std::vector<float> acc;
  TcpComm* tcp = nullptr;  // set when the ranks span hosts

  uint8_t* slot(int r) const { return slots + (size_t)r * kSlotBytes; }
};

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Sense by generation: the last to arrive resets the count and bumps the generation.
int barrier(Comm* c, const char* what) {
  Header* h = c->hdr;
  uint32_t gen = h->generation.load(std::memory_order_acquire);
  if (h->arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == (uint32_t)c->nranks) {
    h->arrived.store(0, std::memory_order_relaxed);
    h->generation.fetch_add(1, std::memory_order_acq_rel);
    return 0;
  }
  double start = 0;
  for (uint64_t spin = 0; h->generation.load(std::memory_order_acquire) == gen; spin++) {
    if (spin < 2000) continue;
    if (spin == 2000) start = now_s();
    if (spin < 20000) {
      sched_yield();
      continue;
    }
    timespec ts{0, 20000};
    nanosleep(&ts, nullptr);
    if ((spin & 1023) == 0 && now_s() - start > kTimeoutSeconds) {
      return fail(ERR_INTERNAL, "%s: rank %d waited %.0f s for the other ranks", what,
                  c->rank, kTimeoutSeconds);
    }
  }
  return 0;
}

std::string shm_name(const uint8_t* id) {
  static const char* hex = "0123456789abcdef";
  std::string s = "/minisgl-";
  for (int i = 0; i < 16; i++) s += hex[id[i] >> 4], s += hex[id[i] & 15];
  return s;
}

}  // namespace

extern "C" {

int msg_comm_unique_id(uint8_t* id128) {
  MSG_REQUIRE(id128, "msg_comm_unique_id: id is NULL");
  MSG_TRY
  // 16 random bytes name the segment; the rest stays zero (no hub address, see minisgl.h).
  std::memset(id128, 0, 128);
  std::random_device rd;
  for (int i = 0; i < 16; i += 4) {
    uint32_t r = rd();
    std::memcpy(id128 + i, &r, 4);
  }
  return 0;
  MSG_CATCH
}

int msg_comm_init(void** comm, int nranks, int rank, const uint8_t* id128) {
  MSG_REQUIRE(comm, "msg_comm_init: comm is NULL");
  MSG_REQUIRE(nranks >= 1 && nranks <= 64 && rank >= 0 && rank < nranks,
              "msg_comm_init: rank %d of %d", rank, nranks);
  MSG_REQUIRE(nranks == 1 || id128, "msg_comm_init: NULL unique id");
  MSG_TRY
  Comm* c = new Comm();
  c->nranks = nranks;
  c->rank = rank;
  std::string host, port;
  if (nranks > 1 && tcp_hub_address(id128, &host, &port)) {
    if (int rc = tcp_comm_open(&c->tcp, nranks, rank, id128, host, port)) {
      delete c;
      return rc;
    }
  } else if (nranks > 1) {
    std::string name = shm_name(id128);
    int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0) {
      delete c;
      return fail(ERR_INTERNAL, "msg_comm_init: shm_open %s failed", name.c_str());
    }
    // Every rank sizes it the same; a new segment reads as zeros (arrived 0, generation 0).
    c->map_bytes = sizeof(Header) + (size_t)nranks * kSlotBytes;
    void* p = MAP_FAILED;
    if (ftruncate(fd, (off_t)c->map_bytes) == 0) {
      p = mmap(nullptr, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    close(fd);
    if (p == MAP_FAILED) {
      delete c;
      return fail(ERR_MEM, "msg_comm_init: cannot map %zu bytes of shared memory",
                  (size_t)nranks * kSlotBytes);
    }
    c->hdr = (Header*)p;
    c->slots = (uint8_t*)p + sizeof(Header);
    int rc = barrier(c, "msg_comm_init");
    if (rank == 0) shm_unlink(name.c_str());  // everyone has it mapped (or timed out)
    if (rc) {
      munmap(p, c->map_bytes);
      delete c;
      return rc;
    }
  }
  *comm = c;
  return 0;
  MSG_CATCH
}

int msg_comm_destroy(void* comm) {
  Comm* c = (Comm*)comm;
  if (!c) return 0;
  if (c->hdr) munmap(c->hdr, c->map_bytes);
  tcp_comm_close(c->tcp);
  delete c;
  return 0;
}

int msg_all_reduce(void* buf, uint64_t n, int dtype, void* comm, void*) {
  Comm* c = (Comm*)comm;
  MSG_REQUIRE(c, "msg_all_reduce: comm is NULL");
  MSG_REQUIRE(is_float_dtype(dtype) || dtype == MSG_I32,
              "msg_all_reduce: unsupported dtype %d", dtype);
  MSG_REQUIRE(buf || n == 0, "msg_all_reduce: buf is NULL");
  if (c->nranks == 1 || n == 0) return 0;
  MSG_TRY
  if (c->tcp) return tcp_all_reduce(c->tcp, buf, n, dtype);
  const size_t esz = (size_t)dtype_size(dtype);
  const uint64_t chunk = kSlotBytes / esz;
  uint8_t* bytes = (uint8_t*)buf;
  if (dtype != MSG_I32) c->acc.resize((size_t)chunk);
  for (uint64_t at = 0; at < n; at += chunk) {
    const int64_t m = (int64_t)(n - at < chunk ? n - at : chunk);
    std::memcpy(c->slot(c->rank), bytes + at * esz, (size_t)m * esz);
    if (int rc = barrier(c, "msg_all_reduce")) return rc;
    if (dtype == MSG_I32) {
      int32_t* out = (int32_t*)(bytes + at * esz);
      for (int64_t i = 0; i < m; i++) {
        int32_t s = 0;
        for (int r = 0; r < c->nranks; r++) s += ((const int32_t*)c->slot(r))[i];
        out[i] = s;
      }
    } else {
      float* acc = c->acc.data();
      load_f32(acc, c->slot(0), dtype, 0, m);
      float* tmp = scratch(1, (size_t)m);
      for (int r = 1; r < c->nranks; r++) {
        load_f32(tmp, c->slot(r), dtype, 0, m);
        for (int64_t i = 0; i < m; i++) acc[i] += tmp[i];
      }
      store_f32(bytes, dtype, (int64_t)at, acc, m);
    }
    if (int rc = barrier(c, "msg_all_reduce")) return rc;
  }
  return 0;
  MSG_CATCH
}

int msg_all_gather_cols(void* dst, int dst_cols, const void* src, void*, int rows, int cols,
                        int dtype, void* comm, void*) {
  Comm* c = (Comm*)comm;
  MSG_REQUIRE(c, "msg_all_gather_cols: comm is NULL");
  const int esz = dtype_size(dtype);
  MSG_REQUIRE(esz > 0, "msg_all_gather_cols: unsupported dtype %d", dtype);
  MSG_REQUIRE(rows >= 0 && cols > 0 && dst_cols > 0 && dst_cols <= c->nranks * cols,
              "msg_all_gather_cols: bad sizes rows %d cols %d dst_cols %d", rows, cols,
              dst_cols);
  MSG_REQUIRE((size_t)cols * esz <= kSlotBytes, "msg_all_gather_cols: rows of %d too wide",
              cols);
  if (rows == 0) return 0;
  MSG_REQUIRE(dst && src, "msg_all_gather_cols: NULL pointer");
  MSG_TRY
  if (c->tcp) return tcp_all_gather_cols(c->tcp, dst, dst_cols, src, rows, cols, dtype);
  const size_t row_bytes = (size_t)cols * esz;
  const int per_chunk = (int)(kSlotBytes / row_bytes);
  for (int at = 0; at < rows; at += per_chunk) {
    const int m = rows - at < per_chunk ? rows - at : per_chunk;
    if (c->nranks == 1) {
      for (int i = 0; i < m; i++) {
        std::memcpy((uint8_t*)dst + ((size_t)(at + i) * dst_cols) * esz,
                    (const uint8_t*)src + (size_t)(at + i) * row_bytes, (size_t)dst_cols * esz);
      }
      continue;
    }
    std::memcpy(c->slot(c->rank), (const uint8_t*)src + (size_t)at * row_bytes,
                (size_t)m * row_bytes);
    if (int rc = barrier(c, "msg_all_gather_cols")) return rc;
    for (int r = 0; r < c->nranks; r++) {
      const int col0 = r * cols;
      const int w = dst_cols - col0 < cols ? dst_cols - col0 : cols;
      if (w <= 0) break;
      for (int i = 0; i < m; i++) {
        std::memcpy((uint8_t*)dst + ((size_t)(at + i) * dst_cols + col0) * esz,
                    c->slot(r) + (size_t)i * row_bytes, (size_t)w * esz);
      }
    }
    if (int rc = barrier(c, "msg_all_gather_cols")) return rc;
  }
  return 0;
  MSG_CATCH
}

// Peer memory is a CUDA feature; the CPU's shared-memory all-reduce is already one-shot.
int msg_peer_buffer_alloc(void**, uint64_t, uint8_t*) {
  return fail(ERR_UNSUPPORTED, "msg_peer_buffer_alloc: peer memory needs the CUDA backend");
}
int msg_peer_all_reduce_create(void**, int, int, void*, uint64_t, const uint64_t*,
                               const uint8_t*, const int32_t*) {
  return fail(ERR_UNSUPPORTED, "msg_peer_all_reduce_create: peer memory needs the CUDA backend");
}
int msg_peer_all_reduce_destroy(void*) { return 0; }
int msg_peer_all_reduce(void*, uint64_t, int, void*, void*) {
  return fail(ERR_UNSUPPORTED, "msg_peer_all_reduce: peer memory needs the CUDA backend");
}

}  // extern "C"
