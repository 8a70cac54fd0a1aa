#include "baton.h"

#include <algorithm>
#include <cmath>

namespace mb {

Baton::Baton(const Napi::CallbackInfo& info, const char* op) : op_(op) {
  if (info.Length() < 1 || !info[0].IsObject() || info[0].IsArray() || info[0].IsFunction())
    throw Error("ERR_ARG", op_ + ": expects one options object");
  obj_ = info[0].As<Napi::Object>();
}

void Baton::fail(const char* code, const std::string& msg) const { throw Error(code, op_ + ": " + msg); }

Napi::Value Baton::get(const char* key) {
  if (std::find(read_.begin(), read_.end(), key) == read_.end()) read_.emplace_back(key);
  return obj_.Get(key);
}

bool Baton::has(const char* key) { return !obj_.Get(key).IsUndefined(); }

Napi::Value Baton::raw(const char* key) { return get(key); }

TensorImpl* Baton::tensor(const char* key) { return tensor_arg(get(key), name(key).c_str()); }

TensorImpl* Baton::tensor_or_null(const char* key) {
  Napi::Value v = get(key);
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  return tensor_arg(v, name(key).c_str());
}

double Baton::number(const char* key) {
  Napi::Value v = get(key);
  if (!v.IsNumber()) fail("ERR_ARG", std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
double Baton::number(const char* key, double def) { return has(key) ? number(key) : (get(key), def); }

int64_t Baton::integer(const char* key) {
  double d = number(key);
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    fail("ERR_ARG", std::string(key) + " must be a safe integer");
  return (int64_t)d;
}
int64_t Baton::integer(const char* key, int64_t def) { return has(key) ? integer(key) : (get(key), def); }

bool Baton::flag(const char* key, bool def) {
  Napi::Value v = get(key);
  if (v.IsUndefined()) return def;
  if (!v.IsBoolean()) fail("ERR_ARG", std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string Baton::string(const char* key) {
  Napi::Value v = get(key);
  if (!v.IsString()) fail("ERR_ARG", std::string(key) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}
std::string Baton::string(const char* key, const std::string& def) { return has(key) ? string(key) : (get(key), def); }

int Baton::choice(const char* key, std::initializer_list<const char*> names) {
  std::string s = string(key);
  int i = 0;
  std::string all;
  for (const char* n : names) {
    if (s == n) return i;
    all += (i ? ", " : "") + std::string("'") + n + "'";
    ++i;
  }
  fail("ERR_ARG", std::string(key) + " must be one of " + all + ", got '" + s + "'");
}
int Baton::choice(const char* key, std::initializer_list<const char*> names, int def) {
  return has(key) ? choice(key, names) : (get(key), def);
}

Dtype Baton::dtype(const char* key) {
  Napi::Value v = get(key);
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    for (Dtype d : {Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::I32})
      if (s == dtype_name(d)) return d;
  }
  fail("ERR_DTYPE", std::string(key) + " must be 'f32', 'f16', 'bf16' or 'i32'");
}
Dtype Baton::dtype(const char* key, Dtype def) { return has(key) ? dtype(key) : (get(key), def); }

std::vector<double> Baton::f64_array(const char* key) {
  Napi::Value v = get(key);
  std::vector<double> out;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    Napi::Float64Array a = v.As<Napi::Float64Array>();
    out.assign(a.Data(), a.Data() + a.ElementLength());
  } else if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber()) fail("ERR_ARG", std::string(key) + " must hold numbers");
      out.push_back(e.As<Napi::Number>().DoubleValue());
    }
  } else {
    fail("ERR_ARG", std::string(key) + " must be a Float64Array or an array of numbers");
  }
  return out;
}

std::vector<int64_t> Baton::shape(const char* key) {
  Napi::Value v = get(key);
  if (!v.IsArray()) fail("ERR_SHAPE", std::string(key) + " must be an array of dimensions");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > 64) fail("ERR_SHAPE", std::string(key) + " has too many dimensions");
  std::vector<int64_t> s;
  int64_t n = 1;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
      fail("ERR_SHAPE", std::string(key) + " must hold non-negative integers");
    if (d > 0 && n > (int64_t(1) << 50) / (int64_t)d) fail("ERR_SHAPE", std::string(key) + ": too many elements");
    n *= (int64_t)d;
    s.push_back((int64_t)d);
  }
  return s;
}

void Baton::finish() {
  Napi::Array keys = obj_.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).ToString().Utf8Value();
    if (std::find(read_.begin(), read_.end(), k) == read_.end()) fail("ERR_ARG", "unknown option '" + k + "'");
  }
}

bool overlaps(const TensorImpl* a, const TensorImpl* b) {
  const char* pa = static_cast<const char*>(a->data());
  const char* pb = static_cast<const char*>(b->data());
  if (!pa || !pb || a->nbytes() == 0 || b->nbytes() == 0) return false;
  return pa < pb + b->nbytes() && pb < pa + a->nbytes();
}

bool same_memory(const TensorImpl* a, const TensorImpl* b) {
  return a->data() == b->data() && a->nbytes() == b->nbytes();
}

void no_partial_overlap(const Baton& b, const TensorImpl* out, const char* name,
                        std::initializer_list<const TensorImpl*> ins) {
  for (const TensorImpl* in : ins)
    if (in && overlaps(out, in) && !same_memory(out, in)) b.fail("ERR_ARG", std::string(name) + " partially overlaps an input");
}

Output new_output(Napi::Env env, const std::vector<int64_t>& shape, Dtype dt, int device) {
  Napi::Object h = TensorImpl::Create(env, shape, dt, device);
  return {h, TensorImpl::Unwrap(h)};
}

Output out_or_new(Baton& b, const char* key, TensorImpl* given, const std::vector<int64_t>& shape, Dtype dt,
                  int device) {
  if (given) return {b.raw(key), given};
  return new_output(b.env(), shape, dt, device);
}

Napi::Object result(Napi::Env env, std::initializer_list<std::pair<const char*, Napi::Value>> kv) {
  Napi::Object o = Napi::Object::New(env);
  for (auto& [k, v] : kv) o.Set(k, v);
  return o;
}

}  // namespace mb
