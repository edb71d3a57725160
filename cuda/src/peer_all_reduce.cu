// peer_all_reduce.cu — a one-shot all-reduce over peer memory for small messages (decode:
// a few rows of hidden), where NCCL's launch and protocol cost dominate. Graph-capturable:
// nothing on the host changes between calls; the barrier counters live on the device.
//
// Each rank owns one peer-visible buffer: [signals | data]. Launch: G blocks, each owning
// the same slice of the message on every rank. Block b (1) copies its slice of the input
// into its own data area, (2) fences, then thread t < nranks raises flag[b][rank] in rank
// t's signal area to 2k+1 and waits until its own flag[b][t] reaches 2k+1 (every rank has
// its slice in place), (3) sums the slice over ranks in rank order 0..n-1 in fp32 (the same
// order on every rank: bit-identical results) into the output, (4) raises and waits for
// 2k+2 so that no rank overwrites its slice while a peer still reads it. k is the block's
// launch count, kept in device memory. NVLink multicast is not used.
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "common.cuh"

namespace {

const int kMaxRanks = 8;
const int kBlocks = 32;
const int kThreads = 512;

struct Signals {
  uint32_t flag[kBlocks][kMaxRanks];  // written by peers
  uint32_t count[kBlocks];            // launches of block b (this rank only)
};
const size_t kSignalBytes = (sizeof(Signals) + 255) / 256 * 256;

struct PeerPtrs {
  uint8_t* buf[kMaxRanks];  // every rank's buffer, as this rank addresses it
};

__device__ __forceinline__ void store_flag(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_flag(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// All ranks' block b meet at value v.
__device__ void block_barrier(const PeerPtrs& peers, int nranks, int rank, uint32_t v) {
  __syncthreads();
  if (threadIdx.x < nranks) {
    Signals* peer = (Signals*)peers.buf[threadIdx.x];
    store_flag(&peer->flag[blockIdx.x][rank], v);
    Signals* own = (Signals*)peers.buf[rank];
    while (load_flag(&own->flag[blockIdx.x][threadIdx.x]) < v) {
    }
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    one_shot_kernel(T* io, uint64_t n, PeerPtrs peers, int nranks, int rank) {
  uint64_t per = (n + gridDim.x - 1) / gridDim.x;
  uint64_t lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
  Signals* own = (Signals*)peers.buf[rank];
  T* mine = (T*)(peers.buf[rank] + kSignalBytes);
  for (uint64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) mine[i] = io[i];
  __threadfence_system();
  __shared__ uint32_t k;
  if (threadIdx.x == 0) k = ++own->count[blockIdx.x];
  __syncthreads();
  block_barrier(peers, nranks, rank, 2 * k - 1);
  for (uint64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < nranks; r++) {
      const volatile T* src = (const volatile T*)(peers.buf[r] + kSignalBytes);
      T v;
      memcpy((void*)&v, (const void*)&src[i], sizeof(T));
      s += msg::to_f(v);
    }
    io[i] = msg::from_f<T>(s);
  }
  block_barrier(peers, nranks, rank, 2 * k);
}

struct PeerAllReduce {
  int nranks, rank;
  uint64_t max_bytes;
  PeerPtrs peers;
  bool opened[kMaxRanks];
};

}  // namespace

extern "C" {

int msg_peer_buffer_alloc(void** buf, uint64_t data_bytes, uint8_t* handle64) {
  MSG_REQUIRE(buf && handle64, "msg_peer_buffer_alloc: NULL pointer");
  size_t bytes = kSignalBytes + (size_t)data_bytes;
  MSG_CUDA(cudaMalloc(buf, bytes));
  MSG_CUDA(cudaMemset(*buf, 0, bytes));
  cudaIpcMemHandle_t h;
  MSG_CUDA(cudaIpcGetMemHandle(&h, *buf));
  static_assert(sizeof(h) == 64, "cudaIpcMemHandle_t is 64 bytes");
  memcpy(handle64, &h, 64);
  return 0;
}

int msg_peer_all_reduce_create(void** ar, int nranks, int rank, void* own_buf,
                               uint64_t data_bytes, const uint64_t* peer_ptrs,
                               const uint8_t* peer_handles, const int32_t* peer_pids) {
  MSG_REQUIRE(ar && own_buf && peer_ptrs && peer_handles && peer_pids,
              "msg_peer_all_reduce_create: NULL pointer");
  MSG_REQUIRE(nranks >= 2 && nranks <= kMaxRanks && rank >= 0 && rank < nranks,
              "msg_peer_all_reduce_create: rank %d of %d (at most %d ranks)", rank, nranks,
              kMaxRanks);
  PeerAllReduce* p = new PeerAllReduce{};
  p->nranks = nranks;
  p->rank = rank;
  p->max_bytes = data_bytes;
  int self = getpid();
  for (int r = 0; r < nranks; r++) {
    if (r == rank) {
      p->peers.buf[r] = (uint8_t*)own_buf;
      continue;
    }
    if (peer_pids[r] == self) {
      // Same process (ranks as Workers): the pointer works once peer access is on.
      cudaPointerAttributes attr;
      cudaError_t e = cudaPointerGetAttributes(&attr, (void*)peer_ptrs[r]);
      if (e != cudaSuccess) {
        delete p;
        return msg::fail_cuda(e, "cudaPointerGetAttributes(peer buffer)");
      }
      e = cudaDeviceEnablePeerAccess(attr.device, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();
      } else if (e != cudaSuccess) {
        delete p;
        return msg::fail_cuda(e, "cudaDeviceEnablePeerAccess");
      }
      p->peers.buf[r] = (uint8_t*)peer_ptrs[r];
    } else {
      cudaIpcMemHandle_t h;
      memcpy(&h, peer_handles + 64 * r, 64);
      void* q = nullptr;
      cudaError_t e = cudaIpcOpenMemHandle(&q, h, cudaIpcMemLazyEnablePeerAccess);
      if (e != cudaSuccess) {
        delete p;
        return msg::fail_cuda(e, "cudaIpcOpenMemHandle");
      }
      p->peers.buf[r] = (uint8_t*)q;
      p->opened[r] = true;
    }
  }
  *ar = p;
  return 0;
}

int msg_peer_all_reduce_destroy(void* ar) {
  PeerAllReduce* p = (PeerAllReduce*)ar;
  if (!p) return 0;
  for (int r = 0; r < p->nranks; r++) {
    if (p->opened[r]) cudaIpcCloseMemHandle(p->peers.buf[r]);
  }
  delete p;
  return 0;
}

int msg_peer_all_reduce(void* buf, uint64_t n, int dtype, void* ar, void* stream) {
  PeerAllReduce* p = (PeerAllReduce*)ar;
  MSG_REQUIRE(p, "msg_peer_all_reduce: NULL handle");
  MSG_REQUIRE(n * (uint64_t)msg::dtype_size(dtype) <= p->max_bytes,
              "msg_peer_all_reduce: %llu elements exceed the %llu-byte buffer",
              (unsigned long long)n, (unsigned long long)p->max_bytes);
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_FLOAT(dtype, T,
    one_shot_kernel<T><<<kBlocks, kThreads, 0, st>>>((T*)buf, n, p->peers, p->nranks, p->rank);
    MSG_LAUNCHED("one_shot_kernel");
    return 0;);
}

}  // extern "C"
