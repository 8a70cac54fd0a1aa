// swiglu({ gate, up, out? }) -> y          (out may be exactly gate or up)
// swigluBackward({ dy, gate, up, dgate?, dup? }) -> { dgate, dup }
//   (dgate/dup given: written there; each may be exactly one of the inputs, never each other)
#include "../ops/swiglu/swiglu.h"
#include "nn_args.h"

namespace mb {
namespace {
using namespace nnb;

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Baton b(info, "swiglu");
  TensorImpl* g = b.tensor("gate");
  TensorImpl* u = b.tensor("up");
  TensorImpl* out = b.tensor_or_null("out");
  b.finish();
  need_float(b, g, "gate");
  need_shape(b, u, g->shape, "up");
  need_dtype(b, u, g->dtype, "up");
  if (out) {
    need_shape(b, out, g->shape, "out");
    need_dtype(b, out, g->dtype, "out");
    for (auto* in : {g, u})
      if (overlaps(out, in) && !same_memory(out, in)) b.fail("ERR_ARG", "out partially overlaps an input");
  }
  same_device(b, {g, u, out});
  SwigluParams p;
  p.gate = g->data(); p.up = u->data(); p.dtype = g->dtype; p.n = g->numel();
  p.y = reinterpret_cast<void*>(1);
  swiglu_check(p, false);
  Napi::Value yv = out ? b.raw("out") : TensorImpl::Create(info.Env(), g->shape, g->dtype, g->device);
  TensorImpl* y = out ? out : TensorImpl::Unwrap(yv.As<Napi::Object>());
  p.y = y->data();
  std::vector<StoragePtr> ins, outs;
  keep_all(ins, {g, u});
  keep_all(outs, {y});
  run_on_device(g->device, std::move(ins), std::move(outs), [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { swiglu_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    swiglu_cpu(p);
  });
  return yv;
}
MB_EXPORT("swiglu", Swiglu);

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  Baton b(info, "swigluBackward");
  TensorImpl* dy = b.tensor("dy");
  TensorImpl* g = b.tensor("gate");
  TensorImpl* u = b.tensor("up");
  TensorImpl* dg = b.tensor_or_null("dgate");
  TensorImpl* du = b.tensor_or_null("dup");
  b.finish();
  need_float(b, g, "gate");
  need_shape(b, u, g->shape, "up");
  need_dtype(b, u, g->dtype, "up");
  need_shape(b, dy, g->shape, "dy");
  need_dtype(b, dy, g->dtype, "dy");
  for (auto [t, name] : {std::pair<TensorImpl*, const char*>{dg, "dgate"}, {du, "dup"}}) {
    if (!t) continue;
    need_shape(b, t, g->shape, name);
    need_dtype(b, t, g->dtype, name);
    for (auto* in : {dy, g, u})
      if (overlaps(t, in) && !same_memory(t, in)) b.fail("ERR_ARG", std::string(name) + " partially overlaps an input");
  }
  if (dg && du && overlaps(dg, du)) b.fail("ERR_ARG", "dgate and dup overlap");
  same_device(b, {dy, g, u, dg, du});
  SwigluParams p;
  p.gate = g->data(); p.up = u->data(); p.dy = dy->data(); p.dtype = g->dtype; p.n = g->numel();
  p.dgate = p.dup = reinterpret_cast<void*>(1);
  swiglu_check(p, true);
  Napi::Env env = info.Env();
  Napi::Value dgv = dg ? b.raw("dgate") : TensorImpl::Create(env, g->shape, g->dtype, g->device);
  Napi::Value duv = du ? b.raw("dup") : TensorImpl::Create(env, g->shape, g->dtype, g->device);
  TensorImpl* dgi = dg ? dg : TensorImpl::Unwrap(dgv.As<Napi::Object>());
  TensorImpl* dui = du ? du : TensorImpl::Unwrap(duv.As<Napi::Object>());
  p.dgate = dgi->data(); p.dup = dui->data();
  std::vector<StoragePtr> ins, outs;
  keep_all(ins, {dy, g, u});
  keep_all(outs, {dgi, dui});
  run_on_device(g->device, std::move(ins), std::move(outs), [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { swiglu_bwd_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    swiglu_bwd_cpu(p);
  });
  return result(env, {{"dgate", dgv}, {"dup", duv}});
}
MB_EXPORT("swigluBackward", SwigluBackward);

}  // namespace
}  // namespace mb
