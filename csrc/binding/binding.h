// Shared N-API glue: the native tensor handle, argument helpers, error conversion, op registration.
// How to add an op: see csrc/README.md.
#pragma once
#define NAPI_VERSION 8
#include <napi.h>

#include <memory>
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

using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct OpRegistrar {
  OpRegistrar(const char* name, OpFn fn);
};
// Registers an exported native function. Errors thrown inside (mb::Error, std::exception) reach JS
// as Error objects with `code` set; no exception escapes into N-API.
#define MB_EXPORT(name, fn) static ::mb::OpRegistrar mb_registrar_##fn(name, fn)

}  // namespace mb
