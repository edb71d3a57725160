// runtime.cu — library, device, memory, stream, event and graph functions of the ABI, plus
// the error and scratch helpers of common.cuh. No kernels here: every function is a thin,
// checked wrapper over the CUDA runtime. Errors are stored per thread and returned as codes;
// the process never aborts (a missing driver or GPU is an ordinary error).
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <mutex>

#include "common.cuh"

namespace msg {

static thread_local char g_error[1024];

int fail(int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof(g_error), fmt, ap);
  va_end(ap);
  return code;
}

int fail_cuda(cudaError_t e, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so later launch checks do not see it
  return fail(ERR_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

const char* dtype_name(int d) {
  switch (d) {
    case MSG_F32: return "f32";
    case MSG_F16: return "f16";
    case MSG_BF16: return "bf16";
    case MSG_I32: return "i32";
    case MSG_I64: return "i64";
    case MSG_U8: return "u8";
    default: return "unknown";
  }
}

// Devices the per-device tables below hold.
static const int kMaxDevices = 64;

int sm_count() {
  static std::atomic<int> counts[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return 0;
  }
  int c = counts[dev].load(std::memory_order_relaxed);
  if (c > 0) return c;
  if (cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || c <= 0) {
    cudaGetLastError();
    return 0;
  }
  counts[dev].store(c, std::memory_order_relaxed);
  return c;
}

// Scratch buffers per (device, slot); never freed (they back captured graphs).
static std::mutex g_scratch_mu;
static void* g_scratch[kMaxDevices][SCRATCH_COUNT];
static size_t g_scratch_size[kMaxDevices][SCRATCH_COUNT];

int device_scratch(int slot, size_t bytes, void** ptr) {
  int dev = 0;
  MSG_CUDA(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return fail(ERR_INTERNAL, "device %d out of range", dev);
  std::lock_guard<std::mutex> lock(g_scratch_mu);
  if (g_scratch_size[dev][slot] < bytes) {
    // The old buffer is not freed: a captured graph may still use it. Growth is rare
    // (callers size generously), so the leak is bounded.
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return fail(ERR_MEM, "scratch buffer of %zu bytes: %s (run the op once before graph "
                  "capture so that its scratch is allocated)", bytes, cudaGetErrorString(e));
    }
    g_scratch[dev][slot] = p;
    g_scratch_size[dev][slot] = bytes;
  }
  *ptr = g_scratch[dev][slot];
  return 0;
}

}  // namespace msg

using namespace msg;

extern "C" {

int msg_backend(void) { return 1; }

const char* msg_last_error(void) { return g_error; }

int msg_device_count(int* count) {
  MSG_REQUIRE(count, "msg_device_count: NULL pointer");
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return fail(ERR_CUDA, "no CUDA device: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  if (*count == 0) return fail(ERR_CUDA, "no CUDA device: the driver reports 0 devices");
  return 0;
}

int msg_set_device(int device) {
  MSG_CUDA(cudaSetDevice(device));
  return 0;
}

int msg_device_name(int device, char* buf, int len) {
  MSG_REQUIRE(buf && len > 0, "msg_device_name: bad buffer");
  cudaDeviceProp p;
  MSG_CUDA(cudaGetDeviceProperties(&p, device));
  snprintf(buf, (size_t)len, "%s", p.name);
  return 0;
}

int msg_mem_info(uint64_t* free_bytes, uint64_t* total_bytes) {
  size_t f = 0, t = 0;
  MSG_CUDA(cudaMemGetInfo(&f, &t));
  if (free_bytes) *free_bytes = f;
  if (total_bytes) *total_bytes = t;
  return 0;
}

int msg_set_num_threads(int) { return 0; }

int msg_malloc(void** ptr, uint64_t bytes) {
  MSG_REQUIRE(ptr, "msg_malloc: NULL pointer");
  *ptr = nullptr;
  if (bytes == 0) return 0;
  cudaError_t e = cudaMalloc(ptr, bytes);
  if (e != cudaSuccess) {
    *ptr = nullptr;
    cudaGetLastError();
    return fail(ERR_MEM, "msg_malloc(%llu bytes): %s", (unsigned long long)bytes,
                cudaGetErrorString(e));
  }
  return 0;
}

int msg_free(void* ptr) {
  if (ptr) MSG_CUDA(cudaFree(ptr));
  return 0;
}

int msg_host_alloc(void** ptr, uint64_t bytes) {
  MSG_REQUIRE(ptr, "msg_host_alloc: NULL pointer");
  *ptr = nullptr;
  if (bytes == 0) return 0;
  cudaError_t e = cudaMallocHost(ptr, bytes);
  if (e != cudaSuccess) {
    *ptr = nullptr;
    cudaGetLastError();
    return fail(ERR_MEM, "msg_host_alloc(%llu bytes): %s", (unsigned long long)bytes,
                cudaGetErrorString(e));
  }
  return 0;
}

int msg_host_free(void* ptr) {
  if (ptr) MSG_CUDA(cudaFreeHost(ptr));
  return 0;
}

int msg_memcpy_h2d(void* dst, const void* src, uint64_t bytes, void* stream) {
  if (bytes) MSG_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)));
  return 0;
}
int msg_memcpy_d2h(void* dst, const void* src, uint64_t bytes, void* stream) {
  if (bytes) MSG_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)));
  return 0;
}
int msg_memcpy_d2d(void* dst, const void* src, uint64_t bytes, void* stream) {
  if (bytes) {
    MSG_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(stream)));
  }
  return 0;
}
int msg_memset(void* dst, int value, uint64_t bytes, void* stream) {
  if (bytes) MSG_CUDA(cudaMemsetAsync(dst, value, bytes, as_stream(stream)));
  return 0;
}

int msg_stream_create(void** stream) {
  MSG_REQUIRE(stream, "msg_stream_create: NULL pointer");
  cudaStream_t s = nullptr;
  MSG_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *stream = s;
  return 0;
}
int msg_stream_destroy(void* stream) {
  if (stream) MSG_CUDA(cudaStreamDestroy(as_stream(stream)));
  return 0;
}
int msg_stream_sync(void* stream) {
  MSG_CUDA(cudaStreamSynchronize(as_stream(stream)));
  return 0;
}
int msg_device_sync(void) {
  MSG_CUDA(cudaDeviceSynchronize());
  return 0;
}

int msg_event_create(void** event) {
  MSG_REQUIRE(event, "msg_event_create: NULL pointer");
  cudaEvent_t e = nullptr;
  MSG_CUDA(cudaEventCreate(&e));
  *event = e;
  return 0;
}
int msg_event_destroy(void* event) {
  if (event) MSG_CUDA(cudaEventDestroy((cudaEvent_t)event));
  return 0;
}
int msg_event_record(void* event, void* stream) {
  MSG_CUDA(cudaEventRecord((cudaEvent_t)event, as_stream(stream)));
  return 0;
}
int msg_event_sync(void* event) {
  MSG_CUDA(cudaEventSynchronize((cudaEvent_t)event));
  return 0;
}
int msg_event_query(void* event, int* done) {
  MSG_REQUIRE(done, "msg_event_query: NULL pointer");
  cudaError_t e = cudaEventQuery((cudaEvent_t)event);
  if (e == cudaErrorNotReady) {
    cudaGetLastError();  // not an error: keep it out of the next launch check
    *done = 0;
    return 0;
  }
  if (e != cudaSuccess) return fail_cuda(e, "cudaEventQuery");
  *done = 1;
  return 0;
}
int msg_event_elapsed_ms(void* start, void* end, float* ms) {
  MSG_REQUIRE(ms, "msg_event_elapsed_ms: NULL pointer");
  MSG_CUDA(cudaEventElapsedTime(ms, (cudaEvent_t)start, (cudaEvent_t)end));
  return 0;
}
int msg_stream_wait_event(void* stream, void* event) {
  MSG_CUDA(cudaStreamWaitEvent(as_stream(stream), (cudaEvent_t)event, 0));
  return 0;
}

int msg_graph_begin(void* stream) {
  MSG_REQUIRE(stream, "msg_graph_begin: capture needs a stream from msg_stream_create");
  MSG_CUDA(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal));
  return 0;
}
int msg_graph_end(void* stream, void** graph_exec) {
  MSG_REQUIRE(graph_exec, "msg_graph_end: NULL pointer");
  cudaGraph_t g = nullptr;
  MSG_CUDA(cudaStreamEndCapture(as_stream(stream), &g));
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  if (e != cudaSuccess) return fail_cuda(e, "cudaGraphInstantiate");
  *graph_exec = exec;
  return 0;
}
int msg_graph_launch(void* graph_exec, void* stream) {
  MSG_CUDA(cudaGraphLaunch((cudaGraphExec_t)graph_exec, as_stream(stream)));
  return 0;
}
int msg_graph_destroy(void* graph_exec) {
  if (graph_exec) MSG_CUDA(cudaGraphExecDestroy((cudaGraphExec_t)graph_exec));
  return 0;
}

}  // extern "C"
