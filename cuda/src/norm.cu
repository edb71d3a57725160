// norm.cu — RMSNorm and fused residual-add + RMSNorm.
//
// One block per row (rows are independent and a row of 1K-8K values fits one block's pass);
// 256 threads stride over the row in 16-byte packs. The row's two passes are
// msg::rmsnorm_row (norm.cuh), shared with the GEMV's fused epilogue (msg_gemm_add_rmsnorm).
#include "norm.cuh"
#include "pdl.cuh"

namespace {

template <typename T, typename TR, typename TW, bool ADD, bool PACKED>
__global__ void rmsnorm_kernel(T* out, TR* res, const T* x, const TW* w, int hidden, float eps) {
  __shared__ float sh[33];
  msg::pdl_wait();
  msg::pdl_trigger();
  const size_t base = (size_t)blockIdx.x * hidden;
  msg::rmsnorm_row<ADD, PACKED, false>(out + base, ADD ? res + base : nullptr, x + base, w,
                                       hidden, eps, sh);
}

template <bool ADD, typename T, typename TR, typename TW>
int launch_typed(void* out, void* residual, const void* x, const void* w, int rows, int hidden,
                 float eps, cudaStream_t st) {
  bool packed = hidden % msg::Pack<T>::N == 0 && msg::aligned16(out) && msg::aligned16(x) &&
                (!ADD || msg::aligned16(residual));
  if (packed) {
    MSG_CUDA(msg::launch_pdl(rmsnorm_kernel<T, TR, TW, ADD, true>, dim3(rows), dim3(256), 0, st,
                             (T*)out, (TR*)residual, (const T*)x, (const TW*)w, hidden, eps));
  } else {
    MSG_CUDA(msg::launch_pdl(rmsnorm_kernel<T, TR, TW, ADD, false>, dim3(rows), dim3(256), 0, st,
                             (T*)out, (TR*)residual, (const T*)x, (const TW*)w, hidden, eps));
  }
  return 0;
}

template <bool ADD>
int launch(void* out, void* residual, const void* x, const void* w, int rows, int hidden,
           float eps, int act_dtype, int res_dtype, int w_dtype, void* stream) {
  MSG_REQUIRE(rows >= 0 && hidden > 0, "rmsnorm: bad sizes rows=%d hidden=%d", rows, hidden);
  MSG_REQUIRE(res_dtype == act_dtype || res_dtype == MSG_F32,
              "add_rmsnorm: residual dtype %s must be the act dtype or f32",
              msg::dtype_name(res_dtype));
  if (rows == 0) return 0;
  cudaStream_t st = msg::as_stream(stream);
  return MSG_DISPATCH_FLOAT(act_dtype, T, return MSG_DISPATCH_FLOAT(w_dtype, TW,
    if (res_dtype == act_dtype) {
      return launch_typed<ADD, T, T, TW>(out, residual, x, w, rows, hidden, eps, st);
    }
    return launch_typed<ADD, T, float, TW>(out, residual, x, w, rows, hidden, eps, st);););
}

}  // namespace

extern "C" {

int msg_rmsnorm(void* out, const void* x, const void* w, int rows, int hidden, float eps,
                int act_dtype, int w_dtype, void* stream) {
  return launch<false>(out, nullptr, x, w, rows, hidden, eps, act_dtype, act_dtype, w_dtype,
                       stream);
}

int msg_add_rmsnorm(void* out, void* residual, const void* x, const void* w, int rows,
                    int hidden, float eps, int act_dtype, int res_dtype, int w_dtype,
                    void* stream) {
  return launch<true>(out, residual, x, w, rows, hidden, eps, act_dtype, res_dtype, w_dtype,
                      stream);
}

}  // extern "C"
