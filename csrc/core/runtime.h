// Devices, memory and execution queues.
// device -1 is the CPU; 0..N-1 are CUDA devices. Every op runs in issue order on its device:
// CPU ops on one worker thread (the CPU queue), CUDA ops on one stream per device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

constexpr int kCpu = -1;

// A block of device or host memory. Freed (returned to its device's allocator) when the last owner
// drops it: JS tensors own one reference, queued CPU tasks another, so disposal while work is
// pending is safe.
struct Storage {
  void* ptr = nullptr;
  size_t nbytes = 0;   // as requested
  size_t block = 0;    // as allocated (rounded)
  int device = kCpu;
  ~Storage();
};
using StoragePtr = std::shared_ptr<Storage>;

// Throws mb::Error("ERR_OOM") when the memory cannot be had (after emptying the cache, for CUDA).
StoragePtr alloc_storage(int device, size_t nbytes);

struct MemoryStats {
  uint64_t allocated = 0, reserved = 0, peak = 0, num_allocs = 0, num_frees = 0, cuda_mallocs = 0;
};
MemoryStats memory_stats(int device);
void reset_peak(int device);
void empty_cache(int device);  // CUDA: frees cached blocks not in use

// ---- CPU queue -------------------------------------------------------------
// Tasks run in order on one worker thread. A task that throws records the first error; the error
// is reported (and cleared) at the next sync point, as CUDA reports asynchronous errors.
void cpu_enqueue(std::function<void()> task);
// Blocks the calling thread until every task queued so far has run. Returns the pending error
// ("" when none) and clears it.
std::string cpu_wait_idle(std::string* code);
void cpu_queue_shutdown();

// ---- CUDA -------------------------------------------------------------------
bool cuda_available();
int cuda_device_count();
std::string cuda_unavailable_reason();
std::string cuda_device_name(int device);
size_t cuda_total_memory(int device);
#if defined(MEGABEAM_CUDA)
cudaStream_t cuda_stream(int device);     // creates it (and sets the device) on first use
void cuda_check(cudaError_t e, const char* what);  // throws ERR_CUDA (ERR_OOM for allocation errors)
struct CudaDeviceGuard {
  int prev = -1;
  explicit CudaDeviceGuard(int device);
  ~CudaDeviceGuard();
};
#endif

// Runs fn on the device in issue order: on the CPU queue (keeping `keep` alive until it ran), or,
// for CUDA, right away on the calling thread with the device current; fn gets the stream (or null).
void run_on_device(int device, std::vector<StoragePtr> keep, std::function<void(void* stream)> fn);

}  // namespace mb
