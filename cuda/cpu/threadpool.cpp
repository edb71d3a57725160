// threadpool.cpp — a small persistent pool for parallel_for.
//
// One parallel region at a time: the caller publishes (fn, n, grain), bumps a generation
// counter and wakes the workers; everybody (caller included) takes chunks from an atomic
// counter until none is left; the caller waits for the workers to check out. Workers spin
// briefly before sleeping so that the many small ops of a decode step do not pay a futex
// wake-up each. A region started while the pool is busy (another host thread, or a nested
// call from inside a chunk) simply runs serially on its caller.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common.h"

namespace msg {

namespace {

thread_local bool t_in_pool = false;

struct Pool {
  std::mutex region_mu;  // held by the thread that runs a parallel region
  std::mutex mu;
  std::condition_variable wake, done;
  std::vector<std::thread> workers;
  int want_threads = 0;  // 0 = hardware concurrency
  bool started = false;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> generation{0};
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0, grain = 1;
  std::atomic<int64_t> next{0};
  std::atomic<int> busy{0};
  std::exception_ptr error;
  std::mutex error_mu;

  int total_threads() const {
    int hw = (int)std::thread::hardware_concurrency();
    int t = want_threads > 0 ? want_threads : (hw > 0 ? hw : 1);
    return t < 1 ? 1 : t;
  }

  void run_chunks() {
    for (;;) {
      int64_t b = next.fetch_add(grain);
      if (b >= n) break;
      int64_t e = b + grain < n ? b + grain : n;
      try {
        (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mu);
        if (!error) error = std::current_exception();
        next.store(n);  // stop handing out work
      }
    }
  }

  // `seen` is the generation at creation: a region published before this thread got to
  // run must still be picked up.
  void worker_loop(uint64_t seen) {
    t_in_pool = true;
    for (;;) {
      // Spin a little: consecutive ops of one forward pass arrive microseconds apart.
      bool got = false;
      for (int i = 0; i < 200; i++) {
        if (generation.load(std::memory_order_acquire) != seen || stop) {
          got = true;
          break;
        }
        std::this_thread::yield();
      }
      if (!got) {
        std::unique_lock<std::mutex> lk(mu);
        wake.wait(lk, [&] { return stop || generation.load() != seen; });
      }
      if (stop) return;
      seen = generation.load(std::memory_order_acquire);
      run_chunks();
      if (busy.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lk(mu);
        done.notify_all();
      }
    }
  }

  void start_locked() {
    int t = total_threads();
    stop = false;
    uint64_t g0 = generation.load();
    for (int i = 1; i < t; i++) workers.emplace_back([this, g0] { worker_loop(g0); });
    started = true;
  }

  void stop_locked() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    wake.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
    started = false;
    stop = false;
  }

  ~Pool() {
    if (started) stop_locked();
  }
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int num_threads() { return pool().total_threads(); }

void set_num_threads(int n) {
  Pool& p = pool();
  std::lock_guard<std::mutex> g(p.region_mu);
  if (p.started) p.stop_locked();
  p.want_threads = n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  Pool& p = pool();
  if (n <= grain || t_in_pool || p.total_threads() == 1) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> region(p.region_mu, std::try_to_lock);
  if (!region.owns_lock()) {
    fn(0, n);
    return;
  }
  if (!p.started) p.start_locked();
  p.fn = &fn;
  p.n = n;
  p.grain = grain;
  p.error = nullptr;
  p.next.store(0);
  p.busy.store((int)p.workers.size());
  {
    std::lock_guard<std::mutex> lk(p.mu);
    p.generation.fetch_add(1, std::memory_order_release);
  }
  p.wake.notify_all();
  t_in_pool = true;
  p.run_chunks();
  t_in_pool = false;
  // Wait for every worker to leave run_chunks (they still read fn and n).
  for (int i = 0; i < 2000 && p.busy.load() != 0; i++) std::this_thread::yield();
  if (p.busy.load() != 0) {
    std::unique_lock<std::mutex> lk(p.mu);
    p.done.wait(lk, [&] { return p.busy.load() == 0; });
  }
  p.fn = nullptr;
  if (p.error) std::rethrow_exception(p.error);
}

}  // namespace msg
