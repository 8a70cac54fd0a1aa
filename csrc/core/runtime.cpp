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

// ---- CPU queue ---------------------------------------------------------------
namespace {
struct CpuQueue {
  std::mutex m;
  std::condition_variable cv, idle_cv;
  std::deque<std::function<void()>> q;
  bool busy = false, stop = false;
  std::string err, err_code;
  std::thread worker;

  CpuQueue() { worker = std::thread([this] { loop(); }); }
  void loop() {
    for (;;) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> l(m);
        cv.wait(l, [this] { return stop || !q.empty(); });
        if (q.empty()) return;
        f = std::move(q.front());
        q.pop_front();
        busy = true;
      }
      std::string e, code;
      try {
        f();
      } catch (const Error& x) {
        e = x.what(); code = x.code;
      } catch (const std::bad_alloc&) {
        e = "out of memory in a CPU task"; code = "ERR_OOM";
      } catch (const std::exception& x) {
        e = x.what(); code = "ERR_NATIVE";
      }
      f = nullptr;  // drop captured storages on the worker, before reporting idle
      std::lock_guard<std::mutex> l(m);
      if (!e.empty() && err.empty()) { err = e; err_code = code; }
      busy = false;
      if (q.empty()) idle_cv.notify_all();
    }
  }
};
CpuQueue* g_cpu_queue = nullptr;
std::mutex g_cpu_queue_m;
CpuQueue& cpu_queue() {
  std::lock_guard<std::mutex> l(g_cpu_queue_m);
  if (!g_cpu_queue) g_cpu_queue = new CpuQueue();
  return *g_cpu_queue;
}
}  // namespace

void cpu_enqueue(std::function<void()> task) {
  CpuQueue& Q = cpu_queue();
  {
    std::lock_guard<std::mutex> l(Q.m);
    Q.q.push_back(std::move(task));
  }
  Q.cv.notify_one();
}

std::string cpu_wait_idle(std::string* code) {
  CpuQueue& Q = cpu_queue();
  std::unique_lock<std::mutex> l(Q.m);
  Q.idle_cv.wait(l, [&] { return Q.q.empty() && !Q.busy; });
  std::string e = Q.err;
  if (code) *code = Q.err_code;
  Q.err.clear(); Q.err_code.clear();
  return e;
}

void cpu_queue_shutdown() {
  std::lock_guard<std::mutex> l(g_cpu_queue_m);
  if (!g_cpu_queue) return;
  {
    std::lock_guard<std::mutex> l2(g_cpu_queue->m);
    g_cpu_queue->stop = true;
  }
  g_cpu_queue->cv.notify_all();
  g_cpu_queue->worker.join();  // runs what is queued, then exits
  delete g_cpu_queue;
  g_cpu_queue = nullptr;
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

void run_on_device(int device, std::vector<StoragePtr> keep, std::function<void(void*)> fn) {
  if (device == kCpu) {
    cpu_enqueue([keep = std::move(keep), fn = std::move(fn)]() { fn(nullptr); });
    return;
  }
#if defined(MEGABEAM_CUDA)
  CudaDeviceGuard g(device);
  cudaStream_t s = cuda_stream(device);
  fn((void*)s);
  cuda_check(cudaGetLastError(), "kernel launch");
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}

}  // namespace mb
