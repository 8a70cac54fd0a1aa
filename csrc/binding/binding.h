// Shared N-API glue: the native tensor handle, argument helpers, error conversion, op registration.
// How to add an op: see csrc/README.md.
#pragma once
#define NAPI_VERSION 8
#include <napi.h>

#include <memory>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "../common/dtype.h"
#include "../common/error.h"
#include "../core/runtime.h"

namespace mb {

// The native side of a JS Tensor: shape, dtype, device and a shared reference to its storage.
// dispose() drops the reference; the memory goes back when queued work holding it has run.
// Handles are type-tagged (napi_type_tag_object): tensor_arg() accepts only real handles, whatever
// their prototype says, and needs no per-environment constructor to check them.
class TensorImpl : public Napi::ObjectWrap<TensorImpl> {
 public:
  // Defines the TensorHandle class for one environment (kept in its EnvState).
  static Napi::Function Init(Napi::Env env);
  // Makes a new JS handle around a fresh storage.
  static Napi::Object Create(Napi::Env env, std::vector<int64_t> shape, Dtype dtype, int device);
  // A new handle sharing base's storage: `shape` elements starting `offset` elements into base
  // (checked: overflow, bounds). Views report the storage to V8 like owners do (they keep it alive).
  static Napi::Object View(Napi::Env env, const TensorImpl* base, std::vector<int64_t> shape, int64_t offset);

  explicit TensorImpl(const Napi::CallbackInfo& info);
  ~TensorImpl() override;

  StoragePtr storage;
  std::vector<int64_t> shape;
  Dtype dtype = Dtype::F32;
  int device = kCpu;
  int64_t offset = 0;  // in elements, for views into a larger storage
  int64_t numel() const;
  size_t nbytes() const { return (size_t)numel() * dtype_size(dtype); }
  void* data() const {
    return storage ? static_cast<char*>(storage->ptr) + offset * dtype_size(dtype) : nullptr;
  }
  void dispose(Napi::Env env);

 private:
  static Napi::Object NewHandle(Napi::Env env);
  void track(Napi::Env env);  // reports storage bytes to V8 as external memory
  napi_env env_ = nullptr;
  int64_t external_ = 0;  // bytes reported to V8 as external memory
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
};

// Something a megabeam thread finished for JS (a read, a synchronize): settle() runs on the JS thread
// of the environment that asked, with env == nullptr when that environment is going away (then it
// must only free what it holds). Must not throw.
struct Completion {
  virtual ~Completion() = default;
  virtual void settle(napi_env env) = 0;
};

// The way from megabeam's threads (CPU queue, CUDA waiters) into one environment: a thread-safe
// function owned by the environment. Shared with queued tasks, so it outlives the environment; once
// the environment is torn down, post() just deletes what it is given.
class EnvLink {
 public:
  void post(Completion* c);  // any thread; takes ownership
  // Set up and cleared by the environment (addon.cpp).
  std::mutex m_;
  napi_threadsafe_function tsfn_ = nullptr;
  bool alive_ = false;
};
using EnvLinkPtr = std::shared_ptr<EnvLink>;

// Per-environment state (the main thread and every worker thread each have one), as instance data.
struct EnvState {
  napi_env env = nullptr;
  Napi::FunctionReference ctor;  // TensorHandle of this environment
  EnvLinkPtr link = std::make_shared<EnvLink>();
  int pending = 0;               // promises a megabeam thread will settle (JS thread only)
  static EnvState& of(Napi::Env env);
  void link_close();  // the environment is going: stop posting to it
  // JS thread: one more pending completion; keeps the event loop alive until it is settled.
  void begin();
  void end();
};

// Promise helpers for Completion::settle (plain N-API: never throws, ignores a dying environment).
void settle_reject(napi_env env, napi_deferred d, const std::string& code, const std::string& msg);
void settle_resolve_undefined(napi_env env, napi_deferred d);

// Unwraps argument `v` as a live tensor handle (the environment comes from v); throws ERR_ARG / ERR_DISPOSED.
TensorImpl* tensor_arg(const Napi::Value& v, const char* name);
// Number helpers that throw ERR_ARG for non-numbers / non-integers.
double number_arg(const Napi::Value& v, const char* name);
int64_t int_arg(const Napi::Value& v, const char* name);
bool bool_arg(const Napi::Value& v, const char* name);
Dtype dtype_arg(const Napi::Value& v, const char* name);
// Shape array: at most kMaxDims non-negative safe integers whose product fits (ERR_SHAPE).
constexpr size_t kMaxDims = 64;
std::vector<int64_t> shape_arg(const Napi::Value& v, const char* name = "shape");
// Element count of a shape, checked against overflow (ERR_SHAPE when it exceeds 2^50).
int64_t checked_numel(const std::vector<int64_t>& shape, const char* what);
int device_arg(const Napi::Value& v, const char* name);  // -1 cpu, >=0 cuda (validated)

// Checks shared by ops: same device, expected dtype, exact shape.
void check_same_device(const std::vector<const TensorImpl*>& ts, const char* op);
void check_shape(const TensorImpl* t, const std::vector<int64_t>& shape, const char* name);

Napi::Error to_js_error(Napi::Env env, const std::string& code, const std::string& msg);

// ---- Queuing an op -----------------------------------------------------------
// Every op binding ends the same way: queue the op on its device (run_on_device), the CPU reference on
// the CPU queue or the CUDA launcher on the device's stream. launch_op is that tail:
//
//   launch_op(dev, {x, w}, {y}, p, foo_cpu, MB_CUDA_FN(foo_cuda));        // foo_cpu(p) / foo_cuda(p, stream)
//   launch_op(dev, {x}, {y}, [p] { foo_cpu(p); },                          // anything else: two callables
//             MB_CUDA_FN([p, k](cudaStream_t s) { foo_cuda(p, s, k); }));
//
// The tensor lists are what the op reads and what it writes (null entries, absent optional tensors, are
// skipped): run_on_device's per-task semantics, a CPU failure marks only the outputs and a failed input
// skips the op. Launchers never synchronise: CPU errors surface at the next sync point with their code,
// CUDA launch errors as ERR_CUDA from the call. The CUDA launchers are declared only in CUDA builds, so
// they are named through MB_CUDA_FN, which is nullptr in CPU-only builds (there run_on_device refuses a
// CUDA device with ERR_NO_CUDA before anything is called). A callable's captures go with the task: on
// the CPU until it ran, on CUDA until the launch returned (temporaries may be dropped right after it).
#if defined(MEGABEAM_CUDA)
#define MB_CUDA_FN(...) __VA_ARGS__
template <class P>
using CudaLauncher = void (*)(const P&, cudaStream_t);
#else
#define MB_CUDA_FN(...) nullptr
template <class P>
using CudaLauncher = std::nullptr_t;
#endif

using TensorList = std::vector<const TensorImpl*>;
inline std::vector<StoragePtr> storages_of(const TensorList& ts) {
  std::vector<StoragePtr> r;
  r.reserve(ts.size());
  for (const TensorImpl* t : ts)
    if (t) r.push_back(t->storage);
  return r;
}

// cpu() on the CPU queue, cuda(stream) on the device's stream.
template <class Cpu, class Cuda>
void launch_op(int device, const TensorList& inputs, const TensorList& outputs, Cpu cpu, Cuda cuda) {
  run_on_device(device, storages_of(inputs), storages_of(outputs),
                [cpu = std::move(cpu), cuda = std::move(cuda)](void* stream) mutable {
#if defined(MEGABEAM_CUDA)
                  if (stream) {
                    cuda((cudaStream_t)stream);
                    return;
                  }
#endif
                  (void)stream;
                  (void)cuda;
                  cpu();
                });
}

// cpu(p) / cuda(p, stream) with a copy of the checked params p.
template <class P>
void launch_op(int device, const TensorList& inputs, const TensorList& outputs, const P& p,
               void (*cpu)(const P&), CudaLauncher<P> cuda) {
  (void)cuda;  // nullptr in CPU-only builds
  launch_op(device, inputs, outputs, [p, cpu] { cpu(p); }, MB_CUDA_FN([p, cuda](cudaStream_t s) { cuda(p, s); }));
}

using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct OpRegistrar {
  OpRegistrar(const char* name, OpFn fn, bool test_hook = false);
};
// Registers an exported native function. Errors thrown inside (mb::Error, std::exception) reach JS
// as Error objects with `code` set; no exception escapes into N-API.
#define MB_EXPORT(name, fn) static ::mb::OpRegistrar mb_registrar_##fn(name, fn)
// Registers a test hook (a function that injects failures, sleeps, or reads V8 internals): exported
// only when MEGABEAM_TEST_HOOKS=1 is set in the process environment when the addon initialises in an
// environment (main thread or worker). See csrc/README.md ("Test hooks") for why this is not a build flag.
#define MB_TEST_HOOK(name, fn) static ::mb::OpRegistrar mb_registrar_##fn(name, fn, true)
// Whether this process exports the test hooks (MEGABEAM_TEST_HOOKS=1, read at each initialisation).
bool test_hooks_enabled();

}  // namespace mb
