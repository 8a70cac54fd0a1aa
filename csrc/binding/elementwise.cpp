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
    for (const TensorImpl* in : {a, y})
      if (in && overlaps(out, in) && !same_memory(out, in)) b.fail("ERR_ARG", "out partially overlaps an input");
  }
  check_same_device(all, "axpby");
  p.a = a->data(); p.a_dtype = a->dtype;
  if (y) { p.b = y->data(); p.b_dtype = y->dtype; }
  p.out_dtype = dt;
  p.n = a->numel();
  axpby_check(p);

  Napi::Value result = out ? b.raw("out") : TensorImpl::Create(info.Env(), a->shape, dt, a->device);
  TensorImpl* o = out ? out : TensorImpl::Unwrap(result.As<Napi::Object>());
  p.out = o->data();
  std::vector<StoragePtr> inputs{a->storage};
  if (y) inputs.push_back(y->storage);
  run_on_device(a->device, std::move(inputs), {o->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { axpby_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    axpby_cpu(p);
  });
  return result;
}
MB_EXPORT("axpby", Axpby);

}  // namespace
}  // namespace mb
