// comm_tcp.h — the CPU backend's collectives over TCP, for ranks on several hosts
// (--nnodes > 1). comm.cpp picks them when the unique id carries a hub address.
#pragma once

#include <cstdint>
#include <string>

namespace msg {

struct TcpComm;

/** True when a CPU unique id names a TCP hub ("tcp:HOST:PORT" from byte 16, see
 *  minisgl.h); fills host and port. */
bool tcp_hub_address(const uint8_t* id128, std::string* host, std::string* port);

/** Joins the star of `nranks` ranks around rank 0, which listens at host:port; blocks until
 *  every rank is connected. Returns a status (fail() on error). */
int tcp_comm_open(TcpComm** out, int nranks, int rank, const uint8_t* id128,
                  const std::string& host, const std::string& port);
void tcp_comm_close(TcpComm* c);

/** msg_all_reduce over the star: the same fp32 sum in rank order as the shared-memory path
 *  (so both give bit-identical results), computed by rank 0 and sent back. */
int tcp_all_reduce(TcpComm* c, void* buf, uint64_t n, int dtype);
/** msg_all_gather_cols over the star: rank 0 assembles dst and sends it to every rank. */
int tcp_all_gather_cols(TcpComm* c, void* dst, int dst_cols, const void* src, int rows,
                        int cols, int dtype);

}  // namespace msg
