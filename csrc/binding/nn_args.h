// Argument helpers shared by the layer-op bindings (rmsnorm, swiglu, embedding, cross_entropy, attention).
#pragma once
#include <string>
#include <vector>

#include "baton.h"

namespace mb {
namespace nnb {

inline bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

inline void need_float(Baton& b, const TensorImpl* t, const char* name) {
  if (!is_float(t->dtype))
    b.fail("ERR_DTYPE", std::string(name) + " must be f32, f16 or bf16, got " + dtype_name(t->dtype));
}
inline void need_dtype(Baton& b, const TensorImpl* t, Dtype d, const char* name) {
  if (t->dtype != d)
    b.fail("ERR_DTYPE", std::string(name) + " must be " + dtype_name(d) + ", got " + dtype_name(t->dtype));
}
inline void need_shape(Baton& b, const TensorImpl* t, const std::vector<int64_t>& s, const char* name) {
  if (t->shape != s) b.fail("ERR_SHAPE", std::string(name) + " must have shape " + shape_str(s) + ", got " + shape_str(t->shape));
}
// Shape, then dtype (the order of the checks decides the code when both are wrong).
inline void need_like(Baton& b, const TensorImpl* t, const std::vector<int64_t>& s, Dtype d, const char* name) {
  need_shape(b, t, s, name);
  need_dtype(b, t, d, name);
}
inline void need_like(Baton& b, const TensorImpl* t, const TensorImpl* ref, const char* name) {
  need_like(b, t, ref->shape, ref->dtype, name);
}
// The optional `bad` tensor (embedding.cpp): i32, at least one element.
inline void need_bad(Baton& b, const TensorImpl* bad) {
  if (!bad) return;
  need_dtype(b, bad, Dtype::I32, "bad");
  if (bad->numel() < 1) b.fail("ERR_SHAPE", "bad must hold at least one element");
}
inline void same_device(Baton& b, const std::vector<const TensorImpl*>& ts) {
  for (auto* t : ts)
    if (t && t->device != ts[0]->device) b.fail("ERR_DEVICE", "tensors are on different devices");
}
// An output must not overlap any input, except an exact alias where the op allows in-place use.
inline void no_overlap(Baton& b, const TensorImpl* out, const char* oname, const std::vector<const TensorImpl*>& ins,
                       const TensorImpl* may_alias = nullptr) {
  for (auto* in : ins) {
    if (!in || !overlaps(out, in)) continue;
    if (in == may_alias || (may_alias && same_memory(in, may_alias) && same_memory(out, in))) continue;
    b.fail("ERR_ARG", std::string(oname) + " overlaps an input");
  }
}
inline int64_t rows_of(const std::vector<int64_t>& s) {
  int64_t r = 1;
  for (size_t i = 0; i + 1 < s.size(); ++i) r *= s[i];
  return r;
}

}  // namespace nnb
}  // namespace mb
