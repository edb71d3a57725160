// runtime.cpp — library/device queries, memory, streams, events and graphs of the CPU
// backend. "Device" memory is host memory and every op runs synchronously, so streams and
// events are trivial objects: an event only remembers the host time it was recorded at.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "common.h"

namespace msg {
const char* last_error();
void set_num_threads(int n);
}  // namespace msg

using namespace msg;

namespace {

struct Stream {
  int id = 0;  // no state: work on the CPU is synchronous
};

struct Event {
  double ms = 0;
  bool recorded = false;
};

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// Value in kB of a "Key:   123 kB" line of /proc/meminfo, or -1.
int64_t meminfo_kb(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string line;
  size_t klen = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, klen, key) == 0 && line.size() > klen && line[klen] == ':') {
      return std::strtoll(line.c_str() + klen + 1, nullptr, 10);
    }
  }
  return -1;
}

// A cgroup v2 limit file ("max" or a number of bytes), or -1.
int64_t read_cgroup_bytes(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return -1;
  return std::strtoll(s.c_str(), nullptr, 10);
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.compare(0, 10, "model name") == 0) {
      size_t c = line.find(':');
      if (c != std::string::npos) return line.substr(c + 2);
    }
  }
  return "unknown CPU";
}

}  // namespace

extern "C" {

int msg_backend(void) { return 0; }

const char* msg_last_error(void) { return msg::last_error(); }

int msg_device_count(int* count) {
  MSG_REQUIRE(count, "msg_device_count: count is NULL");
  *count = 1;
  return 0;
}

int msg_set_device(int device) {
  MSG_REQUIRE(device == 0, "msg_set_device: device %d does not exist (the CPU backend has 1)",
              device);
  return 0;
}

int msg_device_name(int device, char* buf, int len) {
  MSG_REQUIRE(device == 0, "msg_device_name: device %d does not exist", device);
  MSG_REQUIRE(buf && len > 0, "msg_device_name: empty buffer");
  MSG_TRY
  std::string name = "CPU: " + cpu_model_name() + " (" + std::to_string(num_threads()) +
                     " threads)";
  std::snprintf(buf, (size_t)len, "%s", name.c_str());
  return 0;
  MSG_CATCH
}

int msg_mem_info(uint64_t* free_bytes, uint64_t* total_bytes) {
  MSG_REQUIRE(free_bytes && total_bytes, "msg_mem_info: NULL output pointer");
  MSG_TRY
  int64_t total = meminfo_kb("MemTotal"), avail = meminfo_kb("MemAvailable");
  if (avail < 0) avail = meminfo_kb("MemFree");
  MSG_REQUIRE(total > 0 && avail >= 0, "msg_mem_info: cannot read /proc/meminfo");
  uint64_t t = (uint64_t)total * 1024, a = (uint64_t)avail * 1024;
  // A container's memory limit is the real ceiling when it is lower than the host's.
  int64_t lim = read_cgroup_bytes("/sys/fs/cgroup/memory.max");
  int64_t cur = read_cgroup_bytes("/sys/fs/cgroup/memory.current");
  if (lim > 0 && (uint64_t)lim < t) {
    t = (uint64_t)lim;
    uint64_t left = cur >= 0 && cur < lim ? (uint64_t)(lim - cur) : 0;
    if (left < a) a = left;
  }
  *free_bytes = a;
  *total_bytes = t;
  return 0;
  MSG_CATCH
}

int msg_set_num_threads(int n) {
  MSG_REQUIRE(n >= 0, "msg_set_num_threads: n = %d is negative", n);
  MSG_TRY
  msg::set_num_threads(n);
  return 0;
  MSG_CATCH
}

// ---------------------------------------------------------------- memory

static int host_alloc(void** ptr, uint64_t bytes, const char* what) {
  MSG_REQUIRE(ptr, "%s: ptr is NULL", what);
  // 64-byte alignment (a cache line, and what vector loads like); size rounded up to it.
  uint64_t sz = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, (size_t)sz);
  if (!p) return fail(ERR_MEM, "%s: cannot allocate %llu bytes", what, (unsigned long long)bytes);
  *ptr = p;
  return 0;
}

int msg_malloc(void** ptr, uint64_t bytes) { return host_alloc(ptr, bytes, "msg_malloc"); }
int msg_free(void* ptr) {
  std::free(ptr);
  return 0;
}
int msg_host_alloc(void** ptr, uint64_t bytes) {
  return host_alloc(ptr, bytes, "msg_host_alloc");
}
int msg_host_free(void* ptr) {
  std::free(ptr);
  return 0;
}

static int copy(void* dst, const void* src, uint64_t bytes, const char* what) {
  if (bytes == 0) return 0;
  MSG_REQUIRE(dst && src, "%s: NULL pointer", what);
  std::memmove(dst, src, (size_t)bytes);
  return 0;
}

int msg_memcpy_h2d(void* dst, const void* src, uint64_t bytes, void*) {
  return copy(dst, src, bytes, "msg_memcpy_h2d");
}
int msg_memcpy_d2h(void* dst, const void* src, uint64_t bytes, void*) {
  return copy(dst, src, bytes, "msg_memcpy_d2h");
}
int msg_memcpy_d2d(void* dst, const void* src, uint64_t bytes, void*) {
  return copy(dst, src, bytes, "msg_memcpy_d2d");
}
int msg_memset(void* dst, int value, uint64_t bytes, void*) {
  if (bytes == 0) return 0;
  MSG_REQUIRE(dst, "msg_memset: dst is NULL");
  std::memset(dst, value, (size_t)bytes);
  return 0;
}

// ---------------------------------------------------------------- streams, events, graphs

int msg_stream_create(void** stream) {
  MSG_REQUIRE(stream, "msg_stream_create: stream is NULL");
  MSG_TRY
  *stream = new Stream();
  return 0;
  MSG_CATCH
}
int msg_stream_destroy(void* stream) {
  delete (Stream*)stream;
  return 0;
}
int msg_stream_sync(void*) { return 0; }
int msg_device_sync(void) { return 0; }

int msg_event_create(void** event) {
  MSG_REQUIRE(event, "msg_event_create: event is NULL");
  MSG_TRY
  *event = new Event();
  return 0;
  MSG_CATCH
}
int msg_event_destroy(void* event) {
  delete (Event*)event;
  return 0;
}
int msg_event_record(void* event, void*) {
  MSG_REQUIRE(event, "msg_event_record: event is NULL");
  Event* e = (Event*)event;
  e->ms = now_ms();
  e->recorded = true;
  return 0;
}
int msg_event_sync(void* event) {
  MSG_REQUIRE(event, "msg_event_sync: event is NULL");
  return 0;
}
int msg_event_query(void* event, int* done) {
  MSG_REQUIRE(event && done, "msg_event_query: NULL pointer");
  *done = 1;  // work is synchronous: everything before the event has finished
  return 0;
}
int msg_event_elapsed_ms(void* start, void* end, float* ms) {
  MSG_REQUIRE(start && end && ms, "msg_event_elapsed_ms: NULL pointer");
  Event* a = (Event*)start;
  Event* b = (Event*)end;
  MSG_REQUIRE(a->recorded && b->recorded, "msg_event_elapsed_ms: event not recorded");
  *ms = (float)(b->ms - a->ms);
  return 0;
}
int msg_stream_wait_event(void*, void* event) {
  MSG_REQUIRE(event, "msg_stream_wait_event: event is NULL");
  return 0;
}

static const char* kNoGraphs = "CUDA graphs are not available on the CPU backend";
int msg_graph_begin(void*) { return fail(ERR_UNSUPPORTED, "msg_graph_begin: %s", kNoGraphs); }
int msg_graph_end(void*, void** graph_exec) {
  if (graph_exec) *graph_exec = nullptr;
  return fail(ERR_UNSUPPORTED, "msg_graph_end: %s", kNoGraphs);
}
int msg_graph_launch(void*, void*) {
  return fail(ERR_UNSUPPORTED, "msg_graph_launch: %s", kNoGraphs);
}
int msg_graph_destroy(void* graph_exec) {
  // Nothing can have been created; destroying NULL is fine, anything else is a bug.
  MSG_REQUIRE(!graph_exec, "msg_graph_destroy: %s", kNoGraphs);
  return 0;
}

}  // extern "C"
