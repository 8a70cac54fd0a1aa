// A fixed pool of worker threads for parallel_for. The CPU queue thread is the usual caller and
// runs one chunk itself; nested calls (from inside a chunk) run serially to avoid deadlock.
#include <cstdlib>
#include "../common/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace mb {
namespace {

thread_local bool t_in_parallel = false;

class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    { std::lock_guard<std::mutex> l(m_); stop_ = true; }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  void submit(std::function<void()> f) {
    { std::lock_guard<std::mutex> l(m_); q_.push_back(std::move(f)); }
    cv_.notify_one();
  }
  int size() const { return (int)workers_.size(); }

 private:
  void loop() {
    t_in_parallel = true;
    for (;;) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [this] { return stop_ || !q_.empty(); });
        if (stop_ && q_.empty()) return;
        f = std::move(q_.front());
        q_.pop_front();
      }
      f();
    }
  }
  std::vector<std::thread> workers_;
  std::deque<std::function<void()>> q_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
};

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock.
  static Pool* p = new Pool(std::max(0, cpu_threads() - 1));
  return *p;
}

}  // namespace

int cpu_threads() {
  // MEGABEAM_CPU_THREADS caps the pool (like OMP_NUM_THREADS): containers with a CPU quota see every
  // core of the host in hardware_concurrency(), and each thread costs stack and malloc-arena address space.
  static int n = [] {
    unsigned h = std::thread::hardware_concurrency();
    if (const char* e = std::getenv("MEGABEAM_CPU_THREADS")) {
      char* end = nullptr;
      long v = std::strtol(e, &end, 10);
      if (end != e && *end == 0 && v >= 1) h = (unsigned)std::min<long>(v, 64);
    }
    return (int)std::max(1u, std::min(h, 64u));
  }();
  return n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks = std::min<int64_t>((n + grain - 1) / grain, (int64_t)cpu_threads());
  if (max_chunks <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  Pool& p = pool();
  int64_t chunks = max_chunks;
  int64_t step = (n + chunks - 1) / chunks;
  std::mutex m;
  std::condition_variable cv;
  int64_t pending = 0;
  std::exception_ptr err;
  auto run = [&](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> l(m);
      if (!err) err = std::current_exception();
    }
  };
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t b = c * step, e = std::min(n, b + step);
    if (b >= e) break;
    { std::lock_guard<std::mutex> l(m); ++pending; }
    p.submit([&, b, e] {
      run(b, e);
      std::lock_guard<std::mutex> l(m);
      if (--pending == 0) cv.notify_all();
    });
  }
  t_in_parallel = true;
  run(0, std::min(n, step));
  t_in_parallel = false;
  std::unique_lock<std::mutex> l(m);
  cv.wait(l, [&] { return pending == 0; });
  if (err) std::rethrow_exception(err);
}

}  // namespace mb
