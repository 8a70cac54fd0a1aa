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

// ---- per-environment state ------------------------------------------------------------
namespace {
// Marks every TensorHandle made by this addon (any environment, any copy of the addon).
const napi_type_tag kHandleTag = {0x6d656761'6265616dULL, 0x7465'6e73'6f72'0001ULL};

void call_js(napi_env env, napi_value /*js_cb*/, void* context, void* data) {
  Completion* c = static_cast<Completion*>(data);
  if (!env) {  // the environment is being torn down: only free
    delete c;
    return;
  }
  try {
    c->settle(env);
  } catch (...) {
    // settle() does not throw; never let anything escape into N-API.
  }
  delete c;
  static_cast<EnvState*>(context)->end();
}

void link_finalize(napi_env, void* data, void*) {
  // Normally the cleanup hook got here first; in any order, never post to a finalized function.
  EnvLink* link = static_cast<EnvLink*>(data);
  std::lock_guard<std::mutex> l(link->m_);
  link->alive_ = false;
  link->tsfn_ = nullptr;
}

void env_cleanup(void* arg) {
  // Before the thread-safe function is closed (hooks run in reverse order of registration): from
  // now on megabeam's threads drop what they would have posted here.
  EnvState* st = static_cast<EnvState*>(arg);
  st->link_close();
  std::string code;
  cpu_take_error(cpu_owner_id(), &code);  // nobody will synchronize for this thread any more
  cpu_queue_detach();
}
}  // namespace

void EnvLink::post(Completion* c) {
  std::lock_guard<std::mutex> l(m_);
  if (alive_ && tsfn_ && napi_call_threadsafe_function(tsfn_, c, napi_tsfn_nonblocking) == napi_ok) return;
  // The environment is gone (or going): nobody can receive it.
  try { c->settle(nullptr); } catch (...) {}
  delete c;
}

void EnvState::link_close() {
  std::lock_guard<std::mutex> l(link->m_);
  link->alive_ = false;
}

EnvState& EnvState::of(Napi::Env env) {
  EnvState* st = env.GetInstanceData<EnvState>();
  if (!st) throw Error("ERR_NATIVE", "megabeam is not initialised in this environment");
  return *st;
}

// tsfn_ changes only on this (the JS) thread, so reading it here without the lock is fine.
void EnvState::begin() {
  if (pending++ == 0 && link->tsfn_) napi_ref_threadsafe_function(env, link->tsfn_);
}
void EnvState::end() {
  if (pending > 0 && --pending == 0 && link->tsfn_) napi_unref_threadsafe_function(env, link->tsfn_);
}

void settle_reject(napi_env env, napi_deferred d, const std::string& code, const std::string& msg) {
  if (!env) return;
  napi_value c = nullptr, m = nullptr, err = nullptr;
  std::string full = code + ": " + msg;
  if (napi_create_string_utf8(env, code.c_str(), code.size(), &c) != napi_ok) return;
  if (napi_create_string_utf8(env, full.c_str(), full.size(), &m) != napi_ok) return;
  if (napi_create_error(env, c, m, &err) != napi_ok) return;
  napi_reject_deferred(env, d, err);
}

void settle_resolve_undefined(napi_env env, napi_deferred d) {
  if (!env) return;
  napi_value u = nullptr;
  if (napi_get_undefined(env, &u) != napi_ok) return;
  napi_resolve_deferred(env, d, u);
}

// ---- TensorImpl --------------------------------------------------------------------
Napi::Function TensorImpl::Init(Napi::Env env) {
  return DefineClass(env, "TensorHandle",
                     {InstanceMethod("dispose", &TensorImpl::Dispose),
                      InstanceMethod("isDisposed", &TensorImpl::IsDisposed)});
}

TensorImpl::TensorImpl(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorImpl>(info), env_(info.Env()) {}

TensorImpl::~TensorImpl() {
  // Reached through GC for a handle nobody disposed (or at environment teardown): plain N-API,
  // status ignored, since throwing from a finalizer aborts the process.
  if (external_) {
    int64_t r = 0;
    napi_adjust_external_memory(env_, -external_, &r);
  }
}

int64_t TensorImpl::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void TensorImpl::dispose(Napi::Env env) {
  storage.reset();
  if (external_) {
    int64_t r = 0;
    napi_adjust_external_memory(env, -external_, &r);
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

Napi::Object TensorImpl::NewHandle(Napi::Env env) {
  Napi::Object obj = EnvState::of(env).ctor.New({});
  if (napi_type_tag_object(env, obj, &kHandleTag) != napi_ok) throw Error("ERR_NATIVE", "cannot tag a tensor handle");
  return obj;
}

void TensorImpl::track(Napi::Env env) {
  // Every handle, view or not, reports the whole block it keeps alive: a forgotten view of a disposed
  // tensor holds all of it, and GC must feel that.
  if (device == kCpu && storage && storage->block > 0) {
    external_ = (int64_t)storage->block;
    int64_t r = 0;
    napi_adjust_external_memory(env, external_, &r);
  }
}

Napi::Object TensorImpl::Create(Napi::Env env, std::vector<int64_t> shape, Dtype dtype, int device) {
  int64_t n = 1;
  if (shape.size() > kMaxDims) throw Error("ERR_SHAPE", "more than " + std::to_string(kMaxDims) + " dimensions");
  for (int64_t d : shape) {
    if (d < 0) throw Error("ERR_SHAPE", "negative dimension");
    if (d > 0 && n > (int64_t(1) << 50) / d) throw Error("ERR_OOM", "tensor too large");
    n *= d;
  }
  Napi::Object obj = NewHandle(env);
  StoragePtr s = alloc_storage(device, (size_t)n * dtype_size(dtype));
  TensorImpl* t = Unwrap(obj);
  t->storage = std::move(s);
  t->shape = std::move(shape);
  t->dtype = dtype;
  t->device = device;
  t->track(env);
  return obj;
}

Napi::Object TensorImpl::View(Napi::Env env, const TensorImpl* base, std::vector<int64_t> shape, int64_t offset) {
  if (!base->storage) throw Error("ERR_DISPOSED", "view of a disposed tensor");
  int64_t n = checked_numel(shape, "view");
  int64_t have = base->numel();
  if (offset < 0 || offset > have || n > have - offset)
    throw Error("ERR_SHAPE", "view: shape and offset exceed the tensor");
  Napi::Object obj = NewHandle(env);
  TensorImpl* v = Unwrap(obj);
  v->storage = base->storage;
  v->shape = std::move(shape);
  v->dtype = base->dtype;
  v->device = base->device;
  v->offset = base->offset + offset;
  v->track(env);
  return obj;
}

// ---- argument helpers ----------------------------------------------------------------
TensorImpl* tensor_arg(const Napi::Value& v, const char* name) {
  bool tagged = false;
  if (!v.IsObject() || napi_check_object_type_tag(v.Env(), v, &kHandleTag, &tagged) != napi_ok || !tagged)
    throw Error("ERR_ARG", std::string(name) + " must be a tensor");
  TensorImpl* t = TensorImpl::Unwrap(v.As<Napi::Object>());
  if (!t) throw Error("ERR_ARG", std::string(name) + " must be a tensor");
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

std::vector<int64_t> shape_arg(const Napi::Value& v, const char* name) {
  if (!v.IsArray()) throw Error("ERR_SHAPE", std::string(name) + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  uint32_t nd = a.Length();
  if (nd > kMaxDims) throw Error("ERR_SHAPE", std::string(name) + ": more than " + std::to_string(kMaxDims) + " dimensions");
  std::vector<int64_t> s;
  for (uint32_t i = 0; i < nd; ++i) {
    Napi::Value d = a.Get(i);
    if (!d.IsNumber()) throw Error("ERR_SHAPE", std::string(name) + ": dimensions must be numbers");
    double x = d.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(x) || x != std::floor(x) || x < 0 || x > 9007199254740991.0)
      throw Error("ERR_SHAPE", std::string(name) + ": dimensions must be non-negative safe integers");
    s.push_back((int64_t)x);
  }
  return s;
}

int64_t checked_numel(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("ERR_SHAPE", std::string(what) + ": negative dimension");
    if (d > 0 && n > (int64_t(1) << 50) / d) throw Error("ERR_SHAPE", std::string(what) + ": too many elements");
    n *= d;
  }
  return n;
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
// Context-aware: runs once per environment (main thread, each worker). Everything JS-facing lives in
// that environment's EnvState; the CPU queue, the thread pool and the allocators are process-wide and
// outlive any one environment.
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* st = new EnvState();
  st->env = env;
  Napi::Function handle = TensorImpl::Init(env);
  st->ctor = Napi::Persistent(handle);
  env.SetInstanceData<EnvState>(st);  // deleted with the environment
  napi_value name;
  napi_create_string_utf8(env, "megabeam", NAPI_AUTO_LENGTH, &name);
  napi_threadsafe_function tsfn = nullptr;
  if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, st->link.get(), link_finalize, st, call_js,
                                      &tsfn) != napi_ok)
    throw Napi::Error::New(env, "megabeam: cannot create the completion channel");
  napi_unref_threadsafe_function(env, tsfn);  // only pending completions keep the loop alive
  {
    std::lock_guard<std::mutex> l(st->link->m_);
    st->link->tsfn_ = tsfn;
    st->link->alive_ = true;
  }
  cpu_queue_attach();
  napi_add_env_cleanup_hook(env, env_cleanup, st);  // after the tsfn's own hook, so it runs before it

  exports.Set("TensorHandle", handle);
  for (auto& [name, fn] : registry())
    exports.Set(name, Napi::Function::New(env, trampoline, name, reinterpret_cast<void*>(fn)));
  return exports;
}

}  // namespace mb

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return mb::Init(env, exports); }
NODE_API_MODULE(megabeam, InitModule)
