// elementwise.cu — cast, embedding gather, row/int gathers and scatters, add, SiLU-and-mul.
//
// All are memory-bound: flat ops use a grid-stride loop over 16-byte packs (8 bf16 values
// per thread per step) when pointers allow, else scalars; row ops (embedding, gather_rows,
// silu_mul) use one block row per output row (blockIdx.y) with threads over the row, so each
// block streams contiguous memory and needs no index math per element beyond the row base.
#include "pack.cuh"
#include "pdl.cuh"

namespace {

using msg::Pack;

int flat_blocks(uint64_t work, int threads) {
  uint64_t b = (work + threads - 1) / threads;
  return (int)(b < 8192 ? (b > 0 ? b : 1) : 8192);
}

template <typename TO, typename TI>
__global__ void cast_kernel(TO* out, const TI* in, uint64_t n) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)gridDim.x * blockDim.x) {
    out[i] = msg::from_f<TO>(msg::to_f(in[i]));
  }
}

template <typename TO, typename TW>
__global__ void embedding_kernel(TO* out, const TW* table, const int32_t* ids, int hidden) {
  msg::pdl_wait();
  msg::pdl_trigger();
  int r = blockIdx.y;
  int64_t id = ids[r];
  TO* o = out + (size_t)r * hidden;
  const TW* t = table + (size_t)(id < 0 ? 0 : id) * hidden;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x) {
    o[i] = msg::from_f<TO>(id < 0 ? 0.f : msg::to_f(t[i]));
  }
}

// Rows of `words` 16-byte words (aligned) or `row_bytes` bytes (not aligned).
__global__ void gather_rows16_kernel(uint4* out, const uint4* in, const int32_t* idx,
                                     uint64_t words) {
  int r = blockIdx.y;
  int64_t src = idx[r];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < words;
       i += (uint64_t)gridDim.x * blockDim.x) {
    out[r * words + i] = src < 0 ? make_uint4(0, 0, 0, 0) : in[src * words + i];
  }
}
__global__ void gather_rows1_kernel(uint8_t* out, const uint8_t* in, const int32_t* idx,
                                    uint64_t row_bytes) {
  int r = blockIdx.y;
  int64_t src = idx[r];
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < row_bytes;
       i += (uint64_t)gridDim.x * blockDim.x) {
    out[r * row_bytes + i] = src < 0 ? 0 : in[src * row_bytes + i];
  }
}

__global__ void gather_i32_kernel(int32_t* out, const int32_t* src, const int32_t* idx, int n) {
  msg::pdl_wait();
  msg::pdl_trigger();
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = idx[i] < 0 ? 0 : src[idx[i]];
}
__global__ void scatter_i32_kernel(int32_t* dst, const int32_t* idx, const int32_t* src, int n) {
  msg::pdl_wait();
  msg::pdl_trigger();
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && idx[i] >= 0) dst[idx[i]] = src[i];
}

template <typename T, bool PACKED>
__global__ void add_kernel(T* out, const T* x, const T* y, uint64_t n) {
  const int V = PACKED ? Pack<T>::N : 1;
  uint64_t units = n / V;
  for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < units;
       u += (uint64_t)gridDim.x * blockDim.x) {
    if (PACKED) {
      float a[Pack<T>::N], b[Pack<T>::N];
      msg::load_pack(a, x + u * V);
      msg::load_pack(b, y + u * V);
#pragma unroll
      for (int k = 0; k < Pack<T>::N; k++) a[k] += b[k];
      msg::store_pack(out + u * V, a);
    } else {
      out[u] = msg::from_f<T>(msg::to_f(x[u]) + msg::to_f(y[u]));
    }
  }
  if (PACKED && blockIdx.x == 0) {  // tail
    for (uint64_t i = units * V + threadIdx.x; i < n; i += blockDim.x) {
      out[i] = msg::from_f<T>(msg::to_f(x[i]) + msg::to_f(y[i]));
    }
  }
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

template <typename T, bool PACKED>
__global__ void silu_mul_kernel(T* out, const T* gu, int inter) {
  msg::pdl_wait();
  msg::pdl_trigger();
  const int V = PACKED ? Pack<T>::N : 1;
  int r = blockIdx.y;
  const T* g = gu + (size_t)r * 2 * inter;
  const T* u = g + inter;
  T* o = out + (size_t)r * inter;
  for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * V; i < inter;
       i += gridDim.x * blockDim.x * V) {
    if (PACKED) {
      float a[Pack<T>::N], b[Pack<T>::N];
      msg::load_pack(a, g + i);
      msg::load_pack(b, u + i);
#pragma unroll
      for (int k = 0; k < Pack<T>::N; k++) a[k] = silu(a[k]) * b[k];
      msg::store_pack(o + i, a);
    } else {
      o[i] = msg::from_f<T>(silu(msg::to_f(g[i])) * msg::to_f(u[i]));
    }
  }
}

}  // namespace

extern "C" {

int msg_cast(void* out, int out_dtype, const void* in, int in_dtype, uint64_t n, void* stream) {
  MSG_REQUIRE(msg::is_float_dtype(out_dtype) && msg::is_float_dtype(in_dtype),
              "msg_cast: unsupported dtypes %s -> %s", msg::dtype_name(in_dtype),
              msg::dtype_name(out_dtype));
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  if (out_dtype == in_dtype) {
    MSG_CUDA(cudaMemcpyAsync(out, in, n * msg::dtype_size(in_dtype), cudaMemcpyDeviceToDevice,
                             st));
    return 0;
  }
  int blocks = flat_blocks(n, 256);
  return MSG_DISPATCH_FLOAT(out_dtype, TO, return MSG_DISPATCH_FLOAT(in_dtype, TI,
    cast_kernel<TO, TI><<<blocks, 256, 0, st>>>((TO*)out, (const TI*)in, n);
    MSG_LAUNCHED("cast_kernel");
    return 0;););
}

int msg_embedding(void* out, const void* table, const int32_t* ids, int n, int hidden,
                  int act_dtype, int w_dtype, void* stream) {
  MSG_REQUIRE(n >= 0 && n <= 65535 && hidden > 0, "msg_embedding: bad sizes n=%d hidden=%d", n,
              hidden);
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  int bx = (hidden + 255) / 256;
  dim3 grid(bx > 8 ? 8 : bx, n);
  return MSG_DISPATCH_FLOAT(act_dtype, TO, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    MSG_CUDA(msg::launch_pdl(embedding_kernel<TO, TW>, grid, dim3(256), 0, st, (TO*)out,
                             (const TW*)table, ids, hidden));
    return 0;););
}

int msg_gather_rows(void* out, const void* in, const int32_t* idx, int n, uint64_t row_bytes,
                    void* stream) {
  MSG_REQUIRE(n >= 0 && n <= 65535, "msg_gather_rows: n=%d out of range", n);
  if (n == 0 || row_bytes == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  if (row_bytes % 16 == 0 && msg::aligned16(out) && msg::aligned16(in)) {
    uint64_t words = row_bytes / 16;
    uint64_t bx = (words + 255) / 256;
    dim3 grid((unsigned)(bx > 16 ? 16 : bx), n);
    gather_rows16_kernel<<<grid, 256, 0, st>>>((uint4*)out, (const uint4*)in, idx, words);
  } else {
    uint64_t bx = (row_bytes + 255) / 256;
    dim3 grid((unsigned)(bx > 16 ? 16 : bx), n);
    gather_rows1_kernel<<<grid, 256, 0, st>>>((uint8_t*)out, (const uint8_t*)in, idx, row_bytes);
  }
  MSG_LAUNCHED("gather_rows");
  return 0;
}

int msg_gather_i32(int32_t* out, const int32_t* src, const int32_t* idx, int n, void* stream) {
  MSG_REQUIRE(n >= 0, "msg_gather_i32: n=%d", n);
  if (n == 0) return 0;
  MSG_CUDA(msg::launch_pdl(gather_i32_kernel, dim3((n + 255) / 256), dim3(256), 0,
                           msg::as_stream(stream), out, src, idx, n));
  return 0;
}

int msg_scatter_i32(int32_t* dst, const int32_t* idx, const int32_t* src, int n, void* stream) {
  MSG_REQUIRE(n >= 0, "msg_scatter_i32: n=%d", n);
  if (n == 0) return 0;
  MSG_CUDA(msg::launch_pdl(scatter_i32_kernel, dim3((n + 255) / 256), dim3(256), 0,
                           msg::as_stream(stream), dst, idx, src, n));
  return 0;
}

int msg_add(void* out, const void* x, const void* y, uint64_t n, int dtype, void* stream) {
  if (n == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  bool packed = msg::aligned16(out) && msg::aligned16(x) && msg::aligned16(y);
  return MSG_DISPATCH_FLOAT(dtype, T,
    if (packed) {
      add_kernel<T, true><<<flat_blocks(n / Pack<T>::N + 1, 256), 256, 0, st>>>(
          (T*)out, (const T*)x, (const T*)y, n);
    } else {
      add_kernel<T, false><<<flat_blocks(n, 256), 256, 0, st>>>((T*)out, (const T*)x,
                                                                  (const T*)y, n);
    }
    MSG_LAUNCHED("add_kernel");
    return 0;);
}

int msg_silu_mul(void* out, const void* gate_up, int rows, int inter, int dtype, void* stream) {
  MSG_REQUIRE(rows >= 0 && rows <= 65535 && inter > 0, "msg_silu_mul: bad sizes rows=%d inter=%d",
              rows, inter);
  if (rows == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_FLOAT(dtype, T,
    bool packed = inter % Pack<T>::N == 0 && msg::aligned16(out) && msg::aligned16(gate_up);
    int V = packed ? Pack<T>::N : 1;
    int bx = (inter / V + 255) / 256;
    dim3 grid(bx > 32 ? 32 : bx, rows);
    if (packed) {
      MSG_CUDA(msg::launch_pdl(silu_mul_kernel<T, true>, grid, dim3(256), 0, st, (T*)out,
                               (const T*)gate_up, inter));
    } else {
      MSG_CUDA(msg::launch_pdl(silu_mul_kernel<T, false>, grid, dim3(256), 0, st, (T*)out,
                               (const T*)gate_up, inter));
    }
    return 0;);
}

}  // extern "C"
