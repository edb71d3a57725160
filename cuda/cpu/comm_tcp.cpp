// comm_tcp.cpp — collectives of the CPU backend over TCP, for tensor-parallel ranks that
// span hosts (--nnodes > 1), where the shared-memory segment of comm.cpp cannot reach.
//
// A star around rank 0: rank 0 listens at the hub address the unique id carries, every
// other rank connects once and says who it is. A collective goes chunk by chunk: every rank
// sends its chunk to rank 0, rank 0 combines them in rank order (the fp32 sum of comm.cpp,
// rounded once, so a run over TCP is bit-identical to one over shared memory) and sends the
// result back to every rank. Simple and exact; the hub's link carries (n - 1) chunks each
// way, which is fine for the CPU backend this serves. Blocking sockets: a rank is a worker
// thread blocked in this call anyway, as it is at the shared-memory barrier.
#include "comm_tcp.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common.h"

namespace msg {

namespace {

const size_t kChunkBytes = 4u << 20;
const int kTimeoutSeconds = 600;  // a rank that never arrives or answers is dead, not slow
const uint32_t kHelloMagic = 0x4d534754;  // "MSGT"
const char kPrefix[] = "tcp:";

struct Hello {
  uint32_t magic;
  int32_t rank;
  uint8_t tag[16];  // the id's random bytes: a connection of another run is turned away
};

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

void set_socket_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{kTimeoutSeconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// 0, or fail() naming `what` and the peer rank.
int send_all(int fd, const void* p, size_t n, const char* what, int peer) {
  const uint8_t* b = (const uint8_t*)p;
  while (n > 0) {
    ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      return fail(ERR_INTERNAL, "%s: sending to rank %d failed (%s)", what, peer,
                  k < 0 ? strerror(errno) : "closed");
    }
    b += k, n -= (size_t)k;
  }
  return 0;
}

int recv_all(int fd, void* p, size_t n, const char* what, int peer) {
  uint8_t* b = (uint8_t*)p;
  while (n > 0) {
    ssize_t k = recv(fd, b, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) return fail(ERR_INTERNAL, "%s: rank %d closed the connection", what, peer);
    if (k < 0) {
      return fail(ERR_INTERNAL, "%s: receiving from rank %d failed (%s)", what, peer,
                  errno == EAGAIN ? "no answer for 600 s" : strerror(errno));
    }
    b += k, n -= (size_t)k;
  }
  return 0;
}

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

addrinfo* resolve(const std::string& host, const std::string& port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return nullptr;
  return res;
}

}  // namespace

struct TcpComm {
  int nranks = 1, rank = 0;
  std::vector<int> fds;  // rank 0: one socket per rank (fds[0] unused); others: fds[0] = hub
  std::vector<uint8_t> in;
  std::vector<float> acc, tmp;
  int hub() const { return fds[0]; }
};

bool tcp_hub_address(const uint8_t* id, std::string* host, std::string* port) {
  if (!id || std::memcmp(id + 16, kPrefix, 4) != 0) return false;
  std::string addr((const char*)id + 20, strnlen((const char*)id + 20, 108));
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = addr.substr(0, colon);
  *port = addr.substr(colon + 1);
  if (host->size() > 2 && (*host)[0] == '[') *host = host->substr(1, host->size() - 2);
  return true;
}

namespace {

// Rank 0: listen, accept nranks - 1 ranks that present the right tag, then ack them all.
int open_hub(TcpComm* c, const uint8_t* id, const std::string& host, const std::string& port) {
  addrinfo* ai = resolve(host, port, true);
  if (!ai) return fail(ERR_INTERNAL, "msg_comm_init: cannot resolve %s", host.c_str());
  int lfd = -1;
  for (addrinfo* a = ai; a && lfd < 0; a = a->ai_next) {
    lfd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (lfd < 0) continue;
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, a->ai_addr, a->ai_addrlen) != 0 || listen(lfd, c->nranks) != 0) close_fd(lfd);
  }
  freeaddrinfo(ai);
  if (lfd < 0) {
    return fail(ERR_INTERNAL, "msg_comm_init: cannot listen at %s:%s (%s)", host.c_str(),
                port.c_str(), strerror(errno));
  }
  int joined = 1;
  const double deadline = now_s() + kTimeoutSeconds;
  while (joined < c->nranks) {
    pollfd p{lfd, POLLIN, 0};
    int left_ms = (int)((deadline - now_s()) * 1000);
    if (left_ms <= 0 || poll(&p, 1, left_ms) == 0) {
      close_fd(lfd);
      return fail(ERR_INTERNAL, "msg_comm_init: %d of %d ranks joined within %d s", joined,
                  c->nranks, kTimeoutSeconds);
    }
    int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) continue;
    set_socket_options(fd);
    Hello h{};
    if (recv_all(fd, &h, sizeof h, "msg_comm_init", -1) != 0 || h.magic != kHelloMagic ||
        std::memcmp(h.tag, id, 16) != 0 || h.rank <= 0 || h.rank >= c->nranks ||
        c->fds[h.rank] >= 0) {
      close(fd);  // not one of ours (another run, a port scan): keep waiting
      continue;
    }
    c->fds[h.rank] = fd;
    joined++;
  }
  close_fd(lfd);
  const uint8_t ack = 1;
  for (int r = 1; r < c->nranks; r++) {
    if (int rc = send_all(c->fds[r], &ack, 1, "msg_comm_init", r)) return rc;
  }
  return 0;
}

// Other ranks: connect (rank 0 may not listen yet: retry), say hello, wait for the ack.
int join_hub(TcpComm* c, const uint8_t* id, const std::string& host, const std::string& port) {
  const double deadline = now_s() + kTimeoutSeconds;
  int fd = -1;
  while (fd < 0) {
    if (addrinfo* ai = resolve(host, port, false)) {
      for (addrinfo* a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) close_fd(fd);
      }
      freeaddrinfo(ai);
    }
    if (fd >= 0) break;
    if (now_s() > deadline) {
      return fail(ERR_INTERNAL, "msg_comm_init: rank %d cannot reach rank 0 at %s:%s", c->rank,
                  host.c_str(), port.c_str());
    }
    timespec ts{0, 50 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  set_socket_options(fd);
  c->fds[0] = fd;
  Hello h{kHelloMagic, c->rank, {}};
  std::memcpy(h.tag, id, 16);
  uint8_t ack = 0;
  if (int rc = send_all(fd, &h, sizeof h, "msg_comm_init", 0)) return rc;
  return recv_all(fd, &ack, 1, "msg_comm_init", 0);
}

}  // namespace

int tcp_comm_open(TcpComm** out, int nranks, int rank, const uint8_t* id,
                  const std::string& host, const std::string& port) {
  TcpComm* c = new TcpComm();
  c->nranks = nranks;
  c->rank = rank;
  c->fds.assign(rank == 0 ? nranks : 1, -1);
  int rc = rank == 0 ? open_hub(c, id, host, port) : join_hub(c, id, host, port);
  if (rc) {
    tcp_comm_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

void tcp_comm_close(TcpComm* c) {
  if (!c) return;
  for (int& fd : c->fds) close_fd(fd);
  delete c;
}

int tcp_all_reduce(TcpComm* c, void* buf, uint64_t n, int dtype) {
  const char* what = "msg_all_reduce";
  const size_t esz = (size_t)dtype_size(dtype);
  const uint64_t chunk = kChunkBytes / esz;
  uint8_t* bytes = (uint8_t*)buf;
  for (uint64_t at = 0; at < n; at += chunk) {
    const int64_t m = (int64_t)(n - at < chunk ? n - at : chunk);
    uint8_t* mine = bytes + at * esz;
    const size_t nbytes = (size_t)m * esz;
    if (c->rank != 0) {
      if (int rc = send_all(c->hub(), mine, nbytes, what, 0)) return rc;
      if (int rc = recv_all(c->hub(), mine, nbytes, what, 0)) return rc;
      continue;
    }
    c->in.resize(nbytes);
    if (dtype == MSG_I32) {
      int32_t* out = (int32_t*)mine;
      for (int r = 1; r < c->nranks; r++) {
        if (int rc = recv_all(c->fds[r], c->in.data(), nbytes, what, r)) return rc;
        const int32_t* v = (const int32_t*)c->in.data();
        for (int64_t i = 0; i < m; i++) out[i] += v[i];
      }
    } else {
      c->acc.resize((size_t)m);
      c->tmp.resize((size_t)m);
      load_f32(c->acc.data(), mine, dtype, 0, m);
      for (int r = 1; r < c->nranks; r++) {
        if (int rc = recv_all(c->fds[r], c->in.data(), nbytes, what, r)) return rc;
        load_f32(c->tmp.data(), c->in.data(), dtype, 0, m);
        for (int64_t i = 0; i < m; i++) c->acc[i] += c->tmp[i];
      }
      store_f32(mine, dtype, 0, c->acc.data(), m);
    }
    for (int r = 1; r < c->nranks; r++) {
      if (int rc = send_all(c->fds[r], mine, nbytes, what, r)) return rc;
    }
  }
  return 0;
}

int tcp_all_gather_cols(TcpComm* c, void* dst, int dst_cols, const void* src, int rows,
                        int cols, int dtype) {
  const char* what = "msg_all_gather_cols";
  const size_t esz = (size_t)dtype_size(dtype);
  const size_t src_bytes = (size_t)rows * cols * esz, dst_bytes = (size_t)rows * dst_cols * esz;
  if (c->rank != 0) {
    if (int rc = send_all(c->hub(), src, src_bytes, what, 0)) return rc;
    return recv_all(c->hub(), dst, dst_bytes, what, 0);
  }
  c->in.resize(src_bytes);
  for (int r = 0; r < c->nranks; r++) {
    const int col0 = r * cols;
    const int w = dst_cols - col0 < cols ? dst_cols - col0 : cols;
    const uint8_t* part = (const uint8_t*)src;
    if (r > 0) {
      // Every rank sends its whole block, padding included; only w columns are kept.
      if (int rc = recv_all(c->fds[r], c->in.data(), src_bytes, what, r)) return rc;
      part = c->in.data();
    }
    for (int i = 0; w > 0 && i < rows; i++) {
      std::memcpy((uint8_t*)dst + ((size_t)i * dst_cols + col0) * esz,
                  part + (size_t)i * cols * esz, (size_t)w * esz);
    }
  }
  for (int r = 1; r < c->nranks; r++) {
    if (int rc = send_all(c->fds[r], dst, dst_bytes, what, r)) return rc;
  }
  return 0;
}

}  // namespace msg
