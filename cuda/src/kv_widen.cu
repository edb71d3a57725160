// kv_widen.cu — pages of fp8 (e4m3) KV caches widened to bf16/f16 in a dense buffer, for the
// extend kernels, which read 16-bit caches (msg_kv_widen_pages).
//
// Grid (page blocks, batch): block (x, b) copies request b's pages x, x + gridDim.x, ... below
// ceil(seq_lens[b] / page_size). The lengths are read on the device, so the launch depends
// only on the arguments and the device (graph-safe, no host sync); launched with PDL, it reads
// everything after its wait. A block's threads stride over a page's K and V 16 e4m3 bytes at
// a time (one 16-byte load, two 16-byte stores each), widened exactly (fp8.cuh); pages whose
// size is not a multiple of 16 elements, or unaligned buffers, take the same loop one element
// at a time.
#include <cstring>

#include "common.cuh"
#include "fp8.cuh"
#include "pdl.cuh"

namespace {

const int kMaxThreads = 256;

// One e4m3 byte as a T.
template <typename T>
__device__ __forceinline__ T widen1(uint8_t x) {
  uint32_t lo, hi;
  msg::e4m3x4_to<T>(x, lo, hi);
  T r;
  const uint16_t bits = (uint16_t)lo;
  memcpy(&r, &bits, sizeof(r));
  return r;
}

// VEC: elements per step, 16 (uint4 of e4m3 in, two uint4 of T out) or 1. per_page: steps per
// page (page_size * hkv * head_dim / VEC).
template <typename T, int VEC>
__global__ void kv_widen_kernel(T* dst_k, T* dst_v, const uint8_t* k_cache,
                                const uint8_t* v_cache, const int32_t* page_table,
                                int pt_stride, const int32_t* rows, const int32_t* seq_lens,
                                int pages_per_row, int page_size, int per_page) {
  // Everything is read after the wait (the newest keys come from the kernel just before).
  msg::pdl_wait();
  msg::pdl_trigger();
  const int b = blockIdx.y;
  const int seq = seq_lens[b];
  // Pages in use; never past the destination row (seq_lens[b] <= pages_per_row * page_size).
  const int np = seq > 0 ? min(seq / page_size + (seq % page_size != 0), pages_per_row) : 0;
  const int32_t* pt = page_table + (size_t)rows[b] * pt_stride;
  for (int j = blockIdx.x; j < np; j += gridDim.x) {
    const size_t src = (size_t)pt[j] * per_page;
    const size_t dst = ((size_t)b * pages_per_row + j) * per_page;
    for (int i = threadIdx.x; i < per_page; i += blockDim.x) {
      if constexpr (VEC == 16) {
        const uint4 k = __ldg(reinterpret_cast<const uint4*>(k_cache) + src + i);
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(v_cache) + src + i);
        uint4* dk = reinterpret_cast<uint4*>(dst_k) + 2 * (dst + i);
        uint4* dv = reinterpret_cast<uint4*>(dst_v) + 2 * (dst + i);
        dk[0] = msg::e4m3x8_to<T>(make_uint2(k.x, k.y));
        dk[1] = msg::e4m3x8_to<T>(make_uint2(k.z, k.w));
        dv[0] = msg::e4m3x8_to<T>(make_uint2(v.x, v.y));
        dv[1] = msg::e4m3x8_to<T>(make_uint2(v.z, v.w));
      } else {
        dst_k[dst + i] = widen1<T>(k_cache[src + i]);
        dst_v[dst + i] = widen1<T>(v_cache[src + i]);
      }
    }
  }
}

template <typename T, int VEC>
int launch(void* dst_k, void* dst_v, const void* k_cache, const void* v_cache,
           const int32_t* page_table, int pt_stride, const int32_t* rows,
           const int32_t* seq_lens, int batch, int pages_per_row, int page_size, int per_page,
           cudaStream_t st) {
  // Threads: a page's steps rounded up to warps, at most kMaxThreads. Blocks: about one full
  // wave of resident blocks over the batch, at most a row's pages per request.
  int threads = (per_page + 31) / 32 * 32;
  if (threads > kMaxThreads) threads = kMaxThreads;
  int per_sm = 2048 / threads;
  if (per_sm > 32) per_sm = 32;
  int sms = msg::sm_count();
  if (sms <= 0) sms = 100;
  long long gx = ((long long)sms * per_sm + batch - 1) / batch;
  if (gx > pages_per_row) gx = pages_per_row;
  if (gx < 1) gx = 1;
  MSG_CUDA(msg::launch_pdl(kv_widen_kernel<T, VEC>, dim3((unsigned)gx, batch), dim3(threads), 0,
                           st, (T*)dst_k, (T*)dst_v, (const uint8_t*)k_cache,
                           (const uint8_t*)v_cache, page_table, pt_stride, rows, seq_lens,
                           pages_per_row, page_size, per_page));
  return 0;
}

}  // namespace

extern "C" int msg_kv_widen_pages(void* dst_k, void* dst_v, const void* k_cache,
                                  const void* v_cache, const int32_t* page_table, int pt_stride,
                                  const int32_t* rows, const int32_t* seq_lens, int batch,
                                  int pages_per_row, int page_size, int hkv, int head_dim,
                                  int src_dtype, int dtype, void* stream) {
  MSG_REQUIRE(batch >= 0 && batch <= 65535 && pages_per_row >= 0 && page_size > 0 && hkv > 0 &&
                  head_dim > 0 && pt_stride >= 0,
              "msg_kv_widen_pages: bad sizes batch=%d pages_per_row=%d page_size=%d hkv=%d "
              "head_dim=%d pt_stride=%d",
              batch, pages_per_row, page_size, hkv, head_dim, pt_stride);
  const long long page_elems = (long long)page_size * hkv * head_dim;
  MSG_REQUIRE(page_elems <= 0x7fffffffLL,
              "msg_kv_widen_pages: a page of %lld elements (page_size %d, hkv %d, head_dim %d)",
              page_elems, page_size, hkv, head_dim);
  if (src_dtype != MSG_FP8_E4M3) {
    return msg::fail(msg::ERR_UNSUPPORTED, "msg_kv_widen_pages: src_dtype %s (fp8 e4m3 only)",
                     msg::dtype_name(src_dtype));
  }
  cudaStream_t st = msg::as_stream(stream);
  const bool vec = page_elems % 16 == 0 && msg::aligned16_ptr(dst_k) &&
                   msg::aligned16_ptr(dst_v) && msg::aligned16_ptr(k_cache) &&
                   msg::aligned16_ptr(v_cache);
  return MSG_DISPATCH_HALF(dtype, T,
    if (batch == 0 || pages_per_row == 0) return 0;
    if (vec) {
      return launch<T, 16>(dst_k, dst_v, k_cache, v_cache, page_table, pt_stride, rows,
                           seq_lens, batch, pages_per_row, page_size, (int)(page_elems / 16),
                           st);
    }
    return launch<T, 1>(dst_k, dst_v, k_cache, v_cache, page_table, pt_stride, rows, seq_lens,
                        batch, pages_per_row, page_size, (int)page_elems, st););
}
