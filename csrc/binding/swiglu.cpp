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
  need_like(b, u, g, "up");
  if (out) {
    need_like(b, out, g, "out");
    no_partial_overlap(b, out, "out", {g, u});
  }
  same_device(b, {g, u, out});
  SwigluParams p;
  p.gate = g->data(); p.up = u->data(); p.dtype = g->dtype; p.n = g->numel();
  p.y = reinterpret_cast<void*>(1);
  swiglu_check(p, false);
  Output y = out_or_new(b, "out", out, g->shape, g->dtype, g->device);
  p.y = y.t->data();
  launch_op(g->device, {g, u}, {y.t}, p, swiglu_cpu, MB_CUDA_FN(swiglu_cuda));
  return y.handle;
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
  need_like(b, u, g, "up");
  need_like(b, dy, g, "dy");
  for (auto [t, name] : {std::pair<TensorImpl*, const char*>{dg, "dgate"}, {du, "dup"}}) {
    if (!t) continue;
    need_like(b, t, g, name);
    no_partial_overlap(b, t, name, {dy, g, u});
  }
  if (dg && du && overlaps(dg, du)) b.fail("ERR_ARG", "dgate and dup overlap");
  same_device(b, {dy, g, u, dg, du});
  SwigluParams p;
  p.gate = g->data(); p.up = u->data(); p.dy = dy->data(); p.dtype = g->dtype; p.n = g->numel();
  p.dgate = p.dup = reinterpret_cast<void*>(1);
  swiglu_check(p, true);
  Output dgo = out_or_new(b, "dgate", dg, g->shape, g->dtype, g->device);
  Output duo = out_or_new(b, "dup", du, g->shape, g->dtype, g->device);
  p.dgate = dgo.t->data(); p.dup = duo.t->data();
  launch_op(g->device, {dy, g, u}, {dgo.t, duo.t}, p, swiglu_bwd_cpu, MB_CUDA_FN(swiglu_bwd_cuda));
  return result(info.Env(), {{"dgate", dgo.handle}, {"dup", duo.handle}});
}
MB_EXPORT("swigluBackward", SwigluBackward);

}  // namespace
}  // namespace mb
