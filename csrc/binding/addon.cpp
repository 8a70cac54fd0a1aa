// Module init, the tensor handle, argument helpers and the error bridge.
#include <cmath>
#include <map>

#include "binding.h"

namespace mb {

// ---- registry --------------------------------------------------------------------
namespace {
std::vector<std::pair<const char*, OpFn>>& registry() {
  static auto* r = new std::vector<std::pair<const char*, OpFn>>();
  return *r;
}

Napi::Value trampoline(const Napi::CallbackInfo& info) {
  OpFn fn = reinterpret_cast<OpFn>(info.Data());
  try {
    return fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw to_js_error(info.Env(), e.code, e.what());
  } catch (const std::bad_alloc&) {
    throw to_js_error(info.Env(), "ERR_OOM", "out of host memory");
  } catch (const std::exception& e) {
    throw to_js_error(info.Env(), "ERR_NATIVE", e.what());
  }
}
}  // namespace

OpRegistrar::OpRegistrar(const char* name, OpFn fn) { registry().emplace_back(name, fn); }

Napi::Error to_js_error(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, code + ": " + msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// ---- TensorImpl --------------------------------------------------------------------
Napi::FunctionReference* TensorImpl::ctor = nullptr;

Napi::Function TensorImpl::Init(Napi::Env env) {
  Napi::Function f = DefineClass(env, "TensorHandle",
                                 {InstanceMethod("dispose", &TensorImpl::Dispose),
                                  InstanceMethod("isDisposed", &TensorImpl::IsDisposed)});
  ctor = new Napi::FunctionReference(Napi::Persistent(f));
  return f;
}

TensorImpl::TensorImpl(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorImpl>(info) {}

TensorImpl::~TensorImpl() {
  // Reached through GC for a handle nobody disposed.
  if (external_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -external_);
}

int64_t TensorImpl::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void TensorImpl::dispose(Napi::Env env) {
  storage.reset();
  if (external_) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -external_);
    external_ = 0;
  }
}

Napi::Value TensorImpl::Dispose(const Napi::CallbackInfo& info) {
  dispose(info.Env());
  return info.Env().Undefined();
}
Napi::Value TensorImpl::IsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !storage);
}

Napi::Object TensorImpl::Create(Napi::Env env, std::vector<int64_t> shape, Dtype dtype, int device) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("ERR_SHAPE", "negative dimension");
    if (d > 0 && n > (int64_t(1) << 50) / d) throw Error("ERR_OOM", "tensor too large");
    n *= d;
  }
  StoragePtr s = alloc_storage(device, (size_t)n * dtype_size(dtype));
  Napi::Object obj = ctor->New({});
  TensorImpl* t = Unwrap(obj);
  t->storage = std::move(s);
  t->shape = std::move(shape);
  t->dtype = dtype;
  t->device = device;
  if (device == kCpu && t->storage->block > 0) {
    t->external_ = (int64_t)t->storage->block;
    Napi::MemoryManagement::AdjustExternalMemory(env, t->external_);
  }
  return obj;
}

// ---- argument helpers ----------------------------------------------------------------
TensorImpl* tensor_arg(const Napi::Value& v, const char* name) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(TensorImpl::ctor->Value()))
    throw Error("ERR_ARG", std::string(name) + " must be a tensor");
  TensorImpl* t = TensorImpl::Unwrap(v.As<Napi::Object>());
  if (!t->storage) throw Error("ERR_DISPOSED", std::string(name) + " was disposed");
  return t;
}

double number_arg(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw Error("ERR_ARG", std::string(name) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t int_arg(const Napi::Value& v, const char* name) {
  double d = number_arg(v, name);
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    throw Error("ERR_ARG", std::string(name) + " must be a safe integer");
  return (int64_t)d;
}

bool bool_arg(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throw Error("ERR_ARG", std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

Dtype dtype_arg(const Napi::Value& v, const char* name) {
  int64_t d = int_arg(v, name);
  if (d < 0 || d > 3) throw Error("ERR_DTYPE", std::string(name) + ": unknown dtype code");
  return (Dtype)d;
}

int device_arg(const Napi::Value& v, const char* name) {
  int64_t d = int_arg(v, name);
  if (d == kCpu) return kCpu;
  if (d < 0) throw Error("ERR_DEVICE", std::string(name) + ": bad device index");
  if (!cuda_available()) throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
  if (d >= cuda_device_count())
    throw Error("ERR_DEVICE", "cuda:" + std::to_string(d) + " does not exist (" + std::to_string(cuda_device_count()) +
                                  " CUDA device(s))");
  return (int)d;
}

void check_same_device(const std::vector<const TensorImpl*>& ts, const char* op) {
  for (auto* t : ts)
    if (t->device != ts[0]->device) throw Error("ERR_DEVICE", std::string(op) + ": tensors are on different devices");
}

void check_shape(const TensorImpl* t, const std::vector<int64_t>& shape, const char* name) {
  if (t->shape != shape) {
    std::string want = "[", got = "[";
    for (auto d : shape) want += std::to_string(d) + ",";
    for (auto d : t->shape) got += std::to_string(d) + ",";
    throw Error("ERR_SHAPE", std::string(name) + ": expected shape " + want + "] got " + got + "]");
  }
}

// ---- init ---------------------------------------------------------------------------
namespace {
void cleanup(void*) { cpu_queue_shutdown(); }
}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("TensorHandle", TensorImpl::Init(env));
  for (auto& [name, fn] : registry())
    exports.Set(name, Napi::Function::New(env, trampoline, name, reinterpret_cast<void*>(fn)));
  napi_add_env_cleanup_hook(env, cleanup, nullptr);
  return exports;
}

}  // namespace mb

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return mb::Init(env, exports); }
NODE_API_MODULE(megabeam, InitModule)
