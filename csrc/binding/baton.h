// The native boundary: every op takes ONE named-options object (a "baton", as in sharp), never a list of
// positional arguments. `Baton` reads it: each getter reads one key, checks its JS type and records the
// key as used; finish() rejects keys nobody read, so a misspelt option is an error in C++ as well as in
// TypeScript. Enumerations cross as strings ("bf16", "neox"), so no code tables are mirrored by hand.
//
// Validity is decided in one place: the op's `*_check(const FooParams&)` next to its kernels (it needs no
// GPU, throws mb::Error with a code). TypeScript only coerces (defaults, friendly messages) and the
// launchers trust what the check passed. A binding is therefore: read the baton -> fill the params ->
// foo_check(p) -> allocate outputs (out_or_new) -> launch_op (binding.h).
//
//   Napi::Value Foo(const Napi::CallbackInfo& info) {
//     Baton b(info, "foo");
//     TensorImpl* x = b.tensor("x");
//     double alpha = b.number("alpha", 1.0);
//     b.finish();
//     ...
//   }
#pragma once
#include <initializer_list>
#include <string>
#include <vector>

#include "binding.h"

namespace mb {

class Baton {
 public:
  // info[0] must be a plain object; `op` prefixes every error message ("rope.apply: x must be ...").
  Baton(const Napi::CallbackInfo& info, const char* op);

  const std::string& op() const { return op_; }
  Napi::Env env() const { return obj_.Env(); }
  // Present: anything but undefined (does not mark it read). Only undefined takes a getter's default:
  // null is a value, and a wrong one for every getter except tensor_or_null.
  bool has(const char* key);

  TensorImpl* tensor(const char* key);             // required live tensor (ERR_ARG / ERR_DISPOSED)
  TensorImpl* tensor_or_null(const char* key);     // undefined / null -> nullptr
  double number(const char* key);                  // any JS number (NaN/inf allowed: the check decides)
  double number(const char* key, double def);
  int64_t integer(const char* key);                // safe integer
  int64_t integer(const char* key, int64_t def);
  bool flag(const char* key, bool def);
  std::string string(const char* key);
  std::string string(const char* key, const std::string& def);
  // One of `names`; returns its index. ERR_ARG lists the choices.
  int choice(const char* key, std::initializer_list<const char*> names);
  int choice(const char* key, std::initializer_list<const char*> names, int def);
  Dtype dtype(const char* key);                    // "f32" | "f16" | "bf16" | "i32" (ERR_DTYPE)
  Dtype dtype(const char* key, Dtype def);
  std::vector<double> f64_array(const char* key);  // Float64Array or array of numbers
  std::vector<int64_t> shape(const char* key);     // array of non-negative safe integers
  Napi::Value raw(const char* key);                // the value as is (marks it read)

  // Throws ERR_ARG naming the first key that no getter read.
  void finish();

  [[noreturn]] void fail(const char* code, const std::string& msg) const;

 private:
  Napi::Value get(const char* key);
  std::string name(const char* key) const { return op_ + ": " + key; }
  Napi::Object obj_;
  std::string op_;
  std::vector<std::string> read_;
};

// Element range of a tensor's bytes, for alias checks: outputs must not overlap inputs unless the op
// says in-place is fine (then only an exact alias is allowed).
bool overlaps(const TensorImpl* a, const TensorImpl* b);
bool same_memory(const TensorImpl* a, const TensorImpl* b);

// An output must not partially overlap an input: it may be exactly one of them (in place) or
// disjoint from all. Absent (null) inputs are skipped. ERR_ARG "<name> partially overlaps an input".
void no_partial_overlap(const Baton& b, const TensorImpl* out, const char* name,
                        std::initializer_list<const TensorImpl*> ins);

// An output tensor and the handle the op returns for it.
struct Output {
  Napi::Value handle;
  TensorImpl* t = nullptr;
};
// A new tensor.
Output new_output(Napi::Env env, const std::vector<int64_t>& shape, Dtype dt, int device);
// The tensor given as `key` (`given`: read with tensor_or_null and checked by the caller) or, when
// absent, a new one.
Output out_or_new(Baton& b, const char* key, TensorImpl* given, const std::vector<int64_t>& shape, Dtype dt,
                  int device);

// {key: handle, ...} result object for ops that return several tensors.
Napi::Object result(Napi::Env env, std::initializer_list<std::pair<const char*, Napi::Value>> kv);

}  // namespace mb
