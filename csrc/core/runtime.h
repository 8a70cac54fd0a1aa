// Devices, memory and execution queues.
// device -1 is the CPU; 0..N-1 are CUDA devices. Every op runs in issue order on its device:
// CPU ops on one worker thread (the CPU queue), CUDA ops on one stream per device.
#pragma once
#include <cstddef>
#include <atomic>
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

// Why a storage holds no data: the queued op that was to write it failed (or one of its inputs had).
struct Failure {
  std::string code, message;
};

// A block of device or host memory. Freed (returned to its device's allocator) when the last owner
// drops it: JS tensors own one reference, queued CPU tasks another, so disposal while work is
// pending is safe.
struct Storage {
  void* ptr = nullptr;
  size_t nbytes = 0;   // as requested
  size_t block = 0;    // as allocated (rounded)
  int device = kCpu;
  // Set once, when an op writing this storage failed; never cleared (a failed tensor stays failed
  // until disposed, so it can never read as data). Reads and later ops using it report this error.
  std::atomic<Failure*> failed{nullptr};
  ~Storage();
};
using StoragePtr = std::shared_ptr<Storage>;

// First failure wins; later ones are ignored.
void mark_failed(Storage& s, const std::string& code, const std::string& message);
inline const Failure* storage_failure(const Storage& s) { return s.failed.load(std::memory_order_acquire); }

// Throws mb::Error("ERR_OOM") when the memory cannot be had (after emptying the cache, for CUDA).
StoragePtr alloc_storage(int device, size_t nbytes);

struct MemoryStats {
  uint64_t allocated = 0, reserved = 0, peak = 0, num_allocs = 0, num_frees = 0, cuda_mallocs = 0;
};
MemoryStats memory_stats(int device);
void reset_peak(int device);
void empty_cache(int device);  // CUDA: frees cached blocks not in use

// ---- CPU queue -------------------------------------------------------------
// One process-wide queue (shared by the main thread and every worker thread; it outlives any one
// isolate) with one worker thread. Tasks run in issue order and get increasing sequence numbers.
//
// Failures: a task that throws marks its outputs failed (Storage::failed) and records the error for
// its owner (the JS thread that queued it) until that owner's next synchronize(). A task whose input
// (or, for the legacy form, any kept storage) has failed does not run: its outputs are marked with the
// same failure.
//
// Backpressure: at most kCpuQueueMaxTasks tasks and kCpuQueueMaxBytes of staged host data may wait.
// Enqueueing beyond that blocks the calling thread until the worker has made room (as a CUDA launch
// blocks when the launch queue is full). Nothing else on the JS thread ever waits for queued work.
constexpr size_t kCpuQueueMaxTasks = 1024;
constexpr size_t kCpuQueueMaxBytes = size_t(256) << 20;

struct CpuTask {
  std::vector<StoragePtr> inputs;   // read by the task: kept alive; a failed one skips the task
  std::vector<StoragePtr> outputs;  // written by the task: kept alive; marked failed when it fails
  // Called on the worker. `failed_input` is null unless an input has failed; without
  // handles_failure such a task is skipped instead (its outputs get the input's failure).
  std::function<void(const Failure* failed_input)> fn;
  bool handles_failure = false;
  size_t staged_bytes = 0;          // host bytes the task holds (counted against kCpuQueueMaxBytes)
};
// Returns the task's sequence number.
uint64_t cpu_submit(CpuTask task);
// Legacy form: a task with no declared storages.
uint64_t cpu_enqueue(std::function<void()> task);
// Sequence number of the last task queued so far (0 before any).
uint64_t cpu_last_issued();
// Blocks the calling thread until task `seq` (and every task before it) has run. Never waits for
// later work. Not for the JS thread except at documented sync points (cross-device copies).
void cpu_wait(uint64_t seq);
// The first error of the calling thread's tasks since its last call ("" when none); clears it.
// Meant to be called from a task (synchronize), with the owner captured at enqueue time.
std::string cpu_take_error(uint64_t owner, std::string* code);
// Identifies the calling JS thread (one per Node environment).
uint64_t cpu_owner_id();
// Legacy: waits until everything queued so far has run, returns (and clears) the caller's error.
std::string cpu_wait_idle(std::string* code);
struct CpuQueueStats {
  size_t pending = 0, pending_bytes = 0, max_tasks = kCpuQueueMaxTasks, max_bytes = kCpuQueueMaxBytes;
  uint64_t issued = 0, completed = 0, blocked_enqueues = 0;
};
CpuQueueStats cpu_queue_stats();
// Environments using the queue: the worker thread is joined (after running what is queued) when the
// last one goes, and restarted by the next use.
void cpu_queue_attach();
void cpu_queue_detach();
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
// Runs fn, in order, on a megabeam thread dedicated to waiting for `device` (one per device, started
// on first use): reads and synchronize wait there, never on the JS thread or in libuv's pool.
void cuda_host_enqueue(int device, std::function<void()> fn);
// Page-locked staging for host -> device copies. An async copy from pageable memory may wait for the
// stream (CUDA's API synchronization rules), i.e. block the calling (JS) thread behind queued kernels;
// from pinned memory it does not. Buffers are cached (cudaFreeHost would synchronize the device).
struct PinnedBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
};
PinnedBuffer pinned_acquire(size_t bytes);  // throws ERR_OOM
// Returns the buffer once `ev` (recorded after the copy on `device`'s stream) has completed; the wait
// happens on the device's waiter thread. Takes ownership of ev.
void pinned_release_after(int device, cudaEvent_t ev, PinnedBuffer b);
void pinned_release(PinnedBuffer b);  // the buffer is not in use by the device
struct CudaDeviceGuard {
  int prev = -1;
  explicit CudaDeviceGuard(int device);
  ~CudaDeviceGuard();
};
#endif

// Runs fn on the device in issue order: on the CPU queue (keeping the storages alive until it ran), or,
// for CUDA, right away on the calling thread with the device current; fn gets the stream (or null).
// With inputs/outputs split, a CPU failure marks only the outputs, and a failed input skips the op.
void run_on_device(int device, std::vector<StoragePtr> inputs, std::vector<StoragePtr> outputs,
                   std::function<void(void* stream)> fn);
// Legacy form: every storage in `keep` counts as both input and output (a failure marks them all).
void run_on_device(int device, std::vector<StoragePtr> keep, std::function<void(void* stream)> fn);
// Throws the storage's failure (with its code), if it has one.
void throw_if_failed(const Storage& s);

}  // namespace mb
