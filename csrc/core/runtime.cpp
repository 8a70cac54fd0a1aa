#include "runtime.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "../common/error.h"

namespace mb {

// ---- CPU memory ----------------------------------------------------------------
namespace {
struct Counter {
  std::mutex m;
  MemoryStats s;
  void on_alloc(size_t b) {
    std::lock_guard<std::mutex> l(m);
    s.allocated += b; s.reserved += b; s.num_allocs++;
    if (s.allocated > s.peak) s.peak = s.allocated;
  }
  void on_free(size_t b) {
    std::lock_guard<std::mutex> l(m);
    s.allocated -= b; s.reserved -= b; s.num_frees++;
  }
};
Counter& cpu_counter() { static Counter* c = new Counter(); return *c; }

size_t physical_memory() {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? (size_t)pages * (size_t)size : (size_t)1 << 40;
}

StoragePtr cpu_alloc(size_t nbytes) {
  size_t block = (nbytes + 63) / 64 * 64;
  if (block == 0) block = 64;
  // Refuse what the machine cannot hold: with overcommit, malloc would succeed and the first
  // touch would kill the process instead of raising an error.
  if (block > physical_memory())
    throw Error("ERR_OOM", "cannot allocate " + std::to_string(nbytes) + " bytes on the CPU: more than physical memory");
  void* p = std::aligned_alloc(64, block);
  if (!p) throw Error("ERR_OOM", "cannot allocate " + std::to_string(nbytes) + " bytes on the CPU");
  auto s = std::make_shared<Storage>();
  s->ptr = p; s->nbytes = nbytes; s->block = block; s->device = kCpu;
  cpu_counter().on_alloc(block);
  return s;
}
}  // namespace

// ---- CUDA caching allocator ------------------------------------------------------
#if defined(MEGABEAM_CUDA)
namespace {
// Blocks are cached by rounded size and handed out again best-fit. One stream per device, so a
// block freed after its last use was enqueued can be reused by later work on that stream safely.
struct CudaAllocator {
  std::mutex m;
  MemoryStats s;
  std::multimap<size_t, void*> free_blocks;  // size -> ptr

  static size_t round(size_t n) {
    if (n <= (1u << 20)) return n <= 512 ? 512 : (n + 511) / 512 * 512;
    return (n + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  }
  void release_cached_locked() {
    for (auto& kv : free_blocks) { cudaFree(kv.second); s.reserved -= kv.first; }
    free_blocks.clear();
  }
};
CudaAllocator* cuda_allocators() {
  static CudaAllocator* a = new CudaAllocator[64];
  return a;
}

StoragePtr cuda_alloc(int device, size_t nbytes) {
  CudaAllocator& A = cuda_allocators()[device];
  size_t block = CudaAllocator::round(nbytes == 0 ? 1 : nbytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> l(A.m);
    // Best fit, but don't hand out a block much larger than asked (it would strand memory).
    auto it = A.free_blocks.lower_bound(block);
    if (it != A.free_blocks.end() && it->first <= block + block / 4 + (2u << 20)) {
      block = it->first; p = it->second; A.free_blocks.erase(it);
    }
  }
  if (!p) {
    CudaDeviceGuard g(device);
    cudaError_t e = cudaMalloc(&p, block);
    if (e != cudaSuccess) {
      cudaGetLastError();  // allocation failures are not sticky; clear them
      std::lock_guard<std::mutex> l(A.m);
      cudaDeviceSynchronize();  // cached blocks may still be in use by queued work
      A.release_cached_locked();
      e = cudaMalloc(&p, block);
      if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw Error("ERR_OOM", "CUDA out of memory on cuda:" + std::to_string(device) + ": tried to allocate " +
                                   std::to_string(nbytes) + " bytes; " + std::to_string(free_b) + " free of " +
                                   std::to_string(total_b) + ", " + std::to_string(A.s.allocated) +
                                   " allocated by megabeam");
      }
    }
    std::lock_guard<std::mutex> l(A.m);
    A.s.reserved += block; A.s.cuda_mallocs++;
  }
  std::lock_guard<std::mutex> l(A.m);
  A.s.allocated += block; A.s.num_allocs++;
  if (A.s.allocated > A.s.peak) A.s.peak = A.s.allocated;
  auto s = std::make_shared<Storage>();
  s->ptr = p; s->nbytes = nbytes; s->block = block; s->device = device;
  return s;
}
}  // namespace
#endif

Storage::~Storage() {
  delete failed.load();
  if (!ptr) return;
  if (device == kCpu) {
    std::free(ptr);
    cpu_counter().on_free(block);
    return;
  }
#if defined(MEGABEAM_CUDA)
  CudaAllocator& A = cuda_allocators()[device];
  std::lock_guard<std::mutex> l(A.m);
  A.s.allocated -= block; A.s.num_frees++;
  A.free_blocks.emplace(block, ptr);
#endif
}

StoragePtr alloc_storage(int device, size_t nbytes) {
  if (device == kCpu) return cpu_alloc(nbytes);
#if defined(MEGABEAM_CUDA)
  if (device < 0 || device >= cuda_device_count())
    throw Error("ERR_DEVICE", "no such CUDA device: cuda:" + std::to_string(device));
  return cuda_alloc(device, nbytes);
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}

MemoryStats memory_stats(int device) {
  if (device == kCpu) {
    std::lock_guard<std::mutex> l(cpu_counter().m);
    return cpu_counter().s;
  }
#if defined(MEGABEAM_CUDA)
  CudaAllocator& A = cuda_allocators()[device];
  std::lock_guard<std::mutex> l(A.m);
  return A.s;
#else
  return MemoryStats{};
#endif
}

void reset_peak(int device) {
  if (device == kCpu) {
    std::lock_guard<std::mutex> l(cpu_counter().m);
    cpu_counter().s.peak = cpu_counter().s.allocated;
    return;
  }
#if defined(MEGABEAM_CUDA)
  CudaAllocator& A = cuda_allocators()[device];
  std::lock_guard<std::mutex> l(A.m);
  A.s.peak = A.s.allocated;
#endif
}

void empty_cache(int device) {
#if defined(MEGABEAM_CUDA)
  if (device == kCpu) return;
  CudaDeviceGuard g(device);
  CudaAllocator& A = cuda_allocators()[device];
  std::lock_guard<std::mutex> l(A.m);
  cudaStreamSynchronize(cuda_stream(device));
  A.release_cached_locked();
#else
  (void)device;
#endif
}

// ---- failures ------------------------------------------------------------------
void mark_failed(Storage& s, const std::string& code, const std::string& message) {
  if (s.failed.load(std::memory_order_acquire)) return;
  Failure* f = new Failure{code, message};
  Failure* expected = nullptr;
  if (!s.failed.compare_exchange_strong(expected, f, std::memory_order_acq_rel)) delete f;
}

void throw_if_failed(const Storage& s) {
  if (const Failure* f = storage_failure(s)) throw Error(f->code, f->message);
}

// ---- CPU queue ---------------------------------------------------------------
namespace {
thread_local bool t_on_queue_worker = false;
std::atomic<uint64_t> g_next_owner{1};
thread_local uint64_t t_owner = 0;

struct Queued {
  CpuTask task;
  uint64_t seq = 0, owner = 0;
};

struct CpuQueue {
  std::mutex m;
  std::condition_variable cv, done_cv, space_cv;
  std::deque<Queued> q;
  size_t bytes = 0;
  uint64_t issued = 0, completed = 0, blocked = 0;
  bool stop = false;
  std::map<uint64_t, Failure> errors;  // owner -> first error since its last synchronize
  std::thread worker;

  CpuQueue() { worker = std::thread([this] { loop(); }); }
  void loop() {
    t_on_queue_worker = true;
    for (;;) {
      Queued item;
      {
        std::unique_lock<std::mutex> l(m);
        cv.wait(l, [this] { return stop || !q.empty(); });
        if (q.empty()) return;
        item = std::move(q.front());
        q.pop_front();
      }
      run(item.task, item.owner);
      size_t staged = item.task.staged_bytes;
      item = Queued();  // drop captured storages on the worker, before reporting completion
      {
        std::lock_guard<std::mutex> l(m);
        bytes -= staged;
        completed++;
      }
      done_cv.notify_all();
      space_cv.notify_all();
    }
  }
  void run(CpuTask& t, uint64_t owner) {
    const Failure* in_failed = nullptr;
    for (auto& s : t.inputs)
      if (s && (in_failed = storage_failure(*s))) break;
    if (in_failed && !t.handles_failure) {
      // The inputs hold no data, so neither will the outputs: pass the original error on.
      for (auto& s : t.outputs)
        if (s) mark_failed(*s, in_failed->code, in_failed->message);
      return;
    }
    std::string e, code;
    try {
      t.fn(in_failed);
    } catch (const Error& x) {
      e = x.what(); code = x.code;
    } catch (const std::bad_alloc&) {
      e = "out of memory in a CPU task"; code = "ERR_OOM";
    } catch (const std::exception& x) {
      e = x.what(); code = "ERR_NATIVE";
    } catch (...) {
      e = "unknown failure in a CPU task"; code = "ERR_NATIVE";
    }
    if (e.empty()) return;
    for (auto& s : t.outputs)
      if (s) mark_failed(*s, code, e);
    std::lock_guard<std::mutex> l(m);
    errors.emplace(owner, Failure{code, e});  // keeps the first one
  }
};
std::atomic<CpuQueue*> g_cpu_queue{nullptr};
int g_cpu_queue_users = 0;
std::mutex g_cpu_queue_m;
CpuQueue& cpu_queue() {
  if (CpuQueue* q = g_cpu_queue.load(std::memory_order_acquire)) return *q;
  std::lock_guard<std::mutex> l(g_cpu_queue_m);
  if (!g_cpu_queue.load()) g_cpu_queue.store(new CpuQueue(), std::memory_order_release);
  return *g_cpu_queue.load();
}
}  // namespace

uint64_t cpu_owner_id() {
  if (!t_owner) t_owner = g_next_owner.fetch_add(1);
  return t_owner;
}

uint64_t cpu_submit(CpuTask task) {
  CpuQueue& Q = cpu_queue();
  uint64_t owner = cpu_owner_id();
  uint64_t seq;
  {
    std::unique_lock<std::mutex> l(Q.m);
    auto full = [&] {
      return Q.q.size() >= kCpuQueueMaxTasks ||
             (Q.bytes > 0 && Q.bytes + task.staged_bytes > kCpuQueueMaxBytes);
    };
    // Backpressure. The worker itself must never wait for room it alone can make.
    if (!t_on_queue_worker && full()) {
      Q.blocked++;
      Q.space_cv.wait(l, [&] { return !full(); });
    }
    seq = ++Q.issued;
    Q.bytes += task.staged_bytes;
    Q.q.push_back(Queued{std::move(task), seq, owner});
  }
  Q.cv.notify_one();
  return seq;
}

uint64_t cpu_enqueue(std::function<void()> task) {
  CpuTask t;
  t.fn = [f = std::move(task)](const Failure*) { f(); };
  return cpu_submit(std::move(t));
}

uint64_t cpu_last_issued() {
  CpuQueue& Q = cpu_queue();
  std::lock_guard<std::mutex> l(Q.m);
  return Q.issued;
}

void cpu_wait(uint64_t seq) {
  CpuQueue& Q = cpu_queue();
  std::unique_lock<std::mutex> l(Q.m);
  Q.done_cv.wait(l, [&] { return Q.completed >= seq; });
}

std::string cpu_take_error(uint64_t owner, std::string* code) {
  CpuQueue& Q = cpu_queue();
  std::lock_guard<std::mutex> l(Q.m);
  auto it = Q.errors.find(owner);
  if (it == Q.errors.end()) {
    if (code) code->clear();
    return "";
  }
  std::string e = it->second.message;
  if (code) *code = it->second.code;
  Q.errors.erase(it);
  return e;
}

std::string cpu_wait_idle(std::string* code) {
  cpu_wait(cpu_last_issued());
  return cpu_take_error(cpu_owner_id(), code);
}

CpuQueueStats cpu_queue_stats() {
  CpuQueue& Q = cpu_queue();
  std::lock_guard<std::mutex> l(Q.m);
  CpuQueueStats s;
  s.pending = Q.q.size();
  s.pending_bytes = Q.bytes;
  s.issued = Q.issued;
  s.completed = Q.completed;
  s.blocked_enqueues = Q.blocked;
  return s;
}

void cpu_queue_attach() {
  std::lock_guard<std::mutex> l(g_cpu_queue_m);
  g_cpu_queue_users++;
}

void cpu_queue_detach() {
  {
    std::lock_guard<std::mutex> l(g_cpu_queue_m);
    if (--g_cpu_queue_users > 0) return;
  }
  cpu_queue_shutdown();
}

void cpu_queue_shutdown() {
  CpuQueue* q;
  {
    std::lock_guard<std::mutex> l(g_cpu_queue_m);
    q = g_cpu_queue.load();
    if (!q || g_cpu_queue_users > 0) return;
    std::lock_guard<std::mutex> l2(q->m);
    q->stop = true;
  }
  q->cv.notify_all();
  // Runs what is queued, then exits. The queue stays reachable meanwhile: its tasks may use it.
  q->worker.join();
  std::lock_guard<std::mutex> l(g_cpu_queue_m);
  if (g_cpu_queue_users > 0) {
    // An environment arrived while we were joining: keep serving it on a fresh worker.
    q->stop = false;
    q->worker = std::thread([q] { q->loop(); });
    return;
  }
  g_cpu_queue.store(nullptr);
  delete q;
}

// ---- CUDA ----------------------------------------------------------------------
#if defined(MEGABEAM_CUDA)
namespace {
struct CudaInfo {
  int count = 0;
  std::string reason;
};
const CudaInfo& cuda_info() {
  static CudaInfo info = [] {
    CudaInfo i;
    cudaError_t e = cudaGetDeviceCount(&i.count);
    if (e != cudaSuccess) {
      i.count = 0;
      // cudaErrorInsufficientDriver also means "no driver at all" (the static runtime finds no libcuda and
      // reports driver version 0): say which, so a machine without a GPU does not read as "driver too old".
      int drv = 0, rt = 0;
      if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = 0;
      if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
      if (e == cudaErrorInsufficientDriver && drv == 0) {
        i.reason = "no NVIDIA driver installed (libcuda.so.1 not found): CUDA is not usable";
      } else if (e == cudaErrorInsufficientDriver) {
        i.reason = "the NVIDIA driver supports CUDA " + std::to_string(drv / 1000) + "." + std::to_string(drv % 1000 / 10) +
                   ", older than this addon's CUDA runtime " + std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10) +
                   ": update the driver";
      } else {
        i.reason = std::string("CUDA is not usable: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
      }
      cudaGetLastError();
    } else if (i.count == 0) {
      i.reason = "no CUDA device found";
    }
    if (i.count > 64) i.count = 64;
    return i;
  }();
  return info;
}
std::mutex g_stream_m;
cudaStream_t g_streams[64] = {};
}  // namespace

void cuda_check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw Error("ERR_OOM", std::string(what) + ": " + cudaGetErrorString(e));
  }
  throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

CudaDeviceGuard::CudaDeviceGuard(int device) {
  cudaGetDevice(&prev);
  if (prev != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
}
CudaDeviceGuard::~CudaDeviceGuard() {
  int cur = -1;
  cudaGetDevice(&cur);
  if (prev >= 0 && cur != prev) cudaSetDevice(prev);
}

cudaStream_t cuda_stream(int device) {
  std::lock_guard<std::mutex> l(g_stream_m);
  if (!g_streams[device]) {
    CudaDeviceGuard g(device);
    cuda_check(cudaStreamCreateWithFlags(&g_streams[device], cudaStreamNonBlocking), "cudaStreamCreate");
  }
  return g_streams[device];
}

namespace {
struct HostWaiter {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::function<void()>> q;
  std::thread worker;
  HostWaiter() {
    worker = std::thread([this] {
      for (;;) {
        std::function<void()> f;
        {
          std::unique_lock<std::mutex> l(m);
          cv.wait(l, [this] { return !q.empty(); });
          f = std::move(q.front());
          q.pop_front();
        }
        try { f(); } catch (...) {}  // jobs report their own errors
      }
    });
    worker.detach();  // lives for the process, like the device
  }
};
std::mutex g_waiter_m;
HostWaiter* g_waiters[64] = {};
}  // namespace

void cuda_host_enqueue(int device, std::function<void()> fn) {
  HostWaiter* w;
  {
    std::lock_guard<std::mutex> l(g_waiter_m);
    if (!g_waiters[device]) g_waiters[device] = new HostWaiter();
    w = g_waiters[device];
  }
  {
    std::lock_guard<std::mutex> l(w->m);
    w->q.push_back(std::move(fn));
  }
  w->cv.notify_one();
}

namespace {
struct PinnedCache {
  std::mutex m;
  std::multimap<size_t, void*> free_blocks;
  size_t cached = 0;
  static constexpr size_t kMaxCached = size_t(256) << 20;
};
PinnedCache& pinned_cache() {
  static PinnedCache* c = new PinnedCache();
  return *c;
}
// cudaFreeHost may synchronize the device: never on a JS thread or a waiter that reads wait behind.
HostWaiter& pinned_reaper() {
  static HostWaiter* w = new HostWaiter();
  return *w;
}
}  // namespace

PinnedBuffer pinned_acquire(size_t bytes) {
  size_t want = bytes < 4096 ? 4096 : bytes < (1u << 20) ? size_t(1) << (64 - __builtin_clzll(bytes - 1)) : (bytes + (1u << 20) - 1) / (1u << 20) * (1u << 20);
  PinnedCache& C = pinned_cache();
  {
    std::lock_guard<std::mutex> l(C.m);
    auto it = C.free_blocks.lower_bound(want);
    if (it != C.free_blocks.end() && it->first <= 2 * want) {
      PinnedBuffer b{it->second, it->first};
      C.cached -= it->first;
      C.free_blocks.erase(it);
      return b;
    }
  }
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, want, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error("ERR_OOM", "cannot allocate " + std::to_string(want) + " bytes of page-locked staging memory: " +
                               cudaGetErrorString(e));
  }
  return PinnedBuffer{p, want};
}

void pinned_release(PinnedBuffer b) {
  if (!b.ptr) return;
  PinnedCache& C = pinned_cache();
  {
    std::lock_guard<std::mutex> l(C.m);
    if (C.cached + b.bytes <= PinnedCache::kMaxCached) {
      C.free_blocks.emplace(b.bytes, b.ptr);
      C.cached += b.bytes;
      return;
    }
  }
  HostWaiter& r = pinned_reaper();
  {
    std::lock_guard<std::mutex> l(r.m);
    r.q.push_back([p = b.ptr] { cudaFreeHost(p); });
  }
  r.cv.notify_one();
}

void pinned_release_after(int device, cudaEvent_t ev, PinnedBuffer b) {
  cuda_host_enqueue(device, [ev, b] {
    cudaEventSynchronize(ev);  // on failure the device is unusable anyway; the buffer is idle either way
    cudaEventDestroy(ev);
    pinned_release(b);
  });
}

bool cuda_available() { return cuda_info().count > 0; }
int cuda_device_count() { return cuda_info().count; }
std::string cuda_unavailable_reason() { return cuda_info().reason; }
std::string cuda_device_name(int device) {
  cudaDeviceProp p;
  cuda_check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return p.name;
}
size_t cuda_total_memory(int device) {
  cudaDeviceProp p;
  cuda_check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return p.totalGlobalMem;
}
#else
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() { return "megabeam was built without CUDA (no nvcc at build time)"; }
std::string cuda_device_name(int) { return ""; }
size_t cuda_total_memory(int) { return 0; }
#endif

void run_on_device(int device, std::vector<StoragePtr> inputs, std::vector<StoragePtr> outputs,
                   std::function<void(void*)> fn) {
  if (device == kCpu) {
    CpuTask t;
    t.inputs = std::move(inputs);
    t.outputs = std::move(outputs);
    t.fn = [fn = std::move(fn)](const Failure*) { fn(nullptr); };
    cpu_submit(std::move(t));
    return;
  }
#if defined(MEGABEAM_CUDA)
  CudaDeviceGuard g(device);
  cudaStream_t s = cuda_stream(device);
  fn((void*)s);
  cuda_check(cudaGetLastError(), "kernel launch");
#else
  (void)inputs; (void)outputs;
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}

void run_on_device(int device, std::vector<StoragePtr> keep, std::function<void(void*)> fn) {
  std::vector<StoragePtr> outputs = keep;
  run_on_device(device, std::move(keep), std::move(outputs), std::move(fn));
}

}  // namespace mb
