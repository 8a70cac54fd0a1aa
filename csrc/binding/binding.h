// Shared N-API glue: the native tensor handle, argument helpers, error conversion, op registration.
// How to add an op: see csrc/README.md.
#pragma once
#define NAPI_VERSION 8
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "../common/dtype.h"
#include "../common/error.h"
#include "../core/runtime.h"

namespace mb {

// The native side of a JS Tensor: shape, dtype, device and a shared reference to its storage.
// dispose() drops the reference; the memory goes back when queued work holding it has run.
class TensorImpl : public Napi::ObjectWrap<TensorImpl> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::FunctionReference* ctor;
  // Makes a new JS handle around a fresh storage.
  static Napi::Object Create(Napi::Env env, std::vector<int64_t> shape, Dtype dtype, int device);

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
  int64_t external_ = 0;  // bytes reported to V8 as external memory
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
};

// Unwraps argument `v` as a live tensor handle; throws ERR_ARG / ERR_DISPOSED.
TensorImpl* tensor_arg(const Napi::Value& v, const char* name);
// Number helpers that throw ERR_ARG for non-numbers / non-integers.
double number_arg(const Napi::Value& v, const char* name);
int64_t int_arg(const Napi::Value& v, const char* name);
bool bool_arg(const Napi::Value& v, const char* name);
Dtype dtype_arg(const Napi::Value& v, const char* name);
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
