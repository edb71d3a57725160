// prefetch.cu — msg_prefetch_l2: start loading a weight matrix into L2 while other kernels run.
//
// Why: at decode a small model's step is a chain of short kernels, and a GEMV of a few MB
// spends most of its time ramping up (the first loads' latency, then the tail), not
// streaming: on an H200 Qwen3-0.6B's 8 MB qkv GEMV runs at half of copy bandwidth. The
// weights are known long before they are read, so the forward pass prefetches the next
// matrix while the current one and the small kernels between them run; the GEMV then reads
// L2. Launched with PDL (pdl.cuh), the kernel becomes resident as soon as the kernel before
// it has started, issues one prefetch per 128-byte line, and only then waits for that kernel,
// so that its own completion still implies the completion of everything before it on the
// stream (the next kernel's pdl_wait waits for this one alone). Weights are never written by
// a kernel, so reading them before the wait is safe. Without PDL (sm < 90, MINISGL_PDL=0) it
// still runs, in stream order, and costs a short kernel.
#include <algorithm>

#include "common.cuh"
#include "pdl.cuh"

namespace {

__global__ void __launch_bounds__(256) prefetch_l2_kernel(const char* p, uint64_t bytes) {
  msg::pdl_trigger();
  const uint64_t step = (uint64_t)gridDim.x * blockDim.x * 128;
  for (uint64_t off = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) * 128; off < bytes;
       off += step) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off));
  }
  msg::pdl_wait();
}

}  // namespace

extern "C" MSG_API int msg_prefetch_l2(const void* p, uint64_t bytes, void* stream) {
  if (bytes == 0) return 0;
  MSG_REQUIRE(p, "prefetch_l2: NULL pointer");
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    sms = 132;
  }
  const uint64_t lines = (bytes + 127) / 128;
  const uint64_t blocks = std::min<uint64_t>((lines + 255) / 256, (uint64_t)sms * 2);
  MSG_CUDA(msg::launch_pdl(prefetch_l2_kernel, dim3((unsigned)blocks), dim3(256), 0,
                           msg::as_stream(stream), (const char*)p, bytes));
  return 0;
}
