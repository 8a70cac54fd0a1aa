// Element-wise ops. axpby({ a, b?, out?, alpha?, beta?, dtype? }) -> out handle
//   out = alpha·a + beta·b in fp32, rounded once; `out` given: written (may be exactly a or b);
//   else allocated with `dtype` (default a's). The first op written with the named-options baton.
#include "../ops/elementwise/elementwise.h"
#include "baton.h"

namespace mb {
namespace {

Napi::Value Axpby(const Napi::CallbackInfo& info) {
  Baton b(info, "axpby");
  TensorImpl* a = b.tensor("a");
  TensorImpl* y = b.tensor_or_null("b");
  TensorImpl* out = b.tensor_or_null("out");
  AxpbyParams p;
  p.alpha = (float)b.number("alpha", 1.0);
  p.beta = (float)b.number("beta", 1.0);
  const bool has_dtype = b.has("dtype");
  const Dtype want = b.dtype("dtype", a->dtype);
  b.finish();
  if (out && has_dtype) b.fail("ERR_ARG", "give either out or dtype");
  const Dtype dt = out ? out->dtype : want;
  if (y && y->numel() != a->numel()) b.fail("ERR_SHAPE", "a and b have different element counts");
  if (out && out->numel() != a->numel()) b.fail("ERR_SHAPE", "out and a have different element counts");
  std::vector<const TensorImpl*> all{a};
  if (y) all.push_back(y);
  if (out) {
    all.push_back(out);
    no_partial_overlap(b, out, "out", {a, y});
  }
  check_same_device(all, "axpby");
  p.a = a->data(); p.a_dtype = a->dtype;
  if (y) { p.b = y->data(); p.b_dtype = y->dtype; }
  p.out_dtype = dt;
  p.n = a->numel();
  axpby_check(p);

  Output o = out_or_new(b, "out", out, a->shape, dt, a->device);
  p.out = o.t->data();
  launch_op(a->device, {a, y}, {o.t}, p, axpby_cpu, MB_CUDA_FN(axpby_cuda));
  return o.handle;
}
MB_EXPORT("axpby", Axpby);

}  // namespace
}  // namespace mb
