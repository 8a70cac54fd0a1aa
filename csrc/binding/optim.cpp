// Optimizer natives (baton style).
//   adamw({ param, grad, m, v, master?, masterLo?, lr, beta1, beta2, eps, weightDecay, step, gradScale?, sumsq?, maxNorm? })
//     updates param (and master, m, v) in place; m/v/master are f32 with param's element count.
//     masterLo (bf16 param, no master): the split master's low half, any 16-bit dtype (raw bits; optim.h).
//   sumsq({ x, out })   out (f32, one element) += Σ x²
#include <cmath>

#include "../ops/optim/optim.h"
#include "baton.h"

namespace mb {
namespace {

void need_f32_like(Baton& b, const TensorImpl* t, const TensorImpl* param, const char* name) {
  if (t->dtype != Dtype::F32) b.fail("ERR_DTYPE", std::string(name) + " must be f32");
  if (t->numel() != param->numel()) b.fail("ERR_SHAPE", std::string(name) + " must have param's element count");
}

Napi::Value AdamW(const Napi::CallbackInfo& info) {
  Baton b(info, "adamw");
  TensorImpl* param = b.tensor("param");
  TensorImpl* grad = b.tensor("grad");
  TensorImpl* m = b.tensor("m");
  TensorImpl* v = b.tensor("v");
  TensorImpl* master = b.tensor_or_null("master");
  TensorImpl* masterLo = b.tensor_or_null("masterLo");
  TensorImpl* sumsq = b.tensor_or_null("sumsq");
  AdamWParams p;
  p.lr = (float)b.number("lr");
  p.beta1 = (float)b.number("beta1", 0.9);
  p.beta2 = (float)b.number("beta2", 0.999);
  p.eps = (float)b.number("eps", 1e-8);
  p.weight_decay = (float)b.number("weightDecay", 0.0);
  const int64_t step = b.integer("step");
  p.grad_scale = (float)b.number("gradScale", 1.0);
  p.max_norm = (float)b.number("maxNorm", 0.0);
  b.finish();
  if (step < 1) b.fail("ERR_ARG", "step must be >= 1");
  // Bias corrections in double: 1 − β^t loses everything in f32 for β2 = 0.999 at small t.
  p.bias1 = (float)(1.0 - std::pow((double)p.beta1, (double)step));
  p.bias2 = (float)(1.0 - std::pow((double)p.beta2, (double)step));
  if (grad->numel() != param->numel()) b.fail("ERR_SHAPE", "grad must have param's element count");
  need_f32_like(b, m, param, "m");
  need_f32_like(b, v, param, "v");
  if (master) need_f32_like(b, master, param, "master");
  if (masterLo) {
    if (master) b.fail("ERR_ARG", "give master or masterLo, not both");
    if (param->dtype != Dtype::BF16) b.fail("ERR_DTYPE", "masterLo (split master) needs a bf16 param");
    if (dtype_size(masterLo->dtype) != 2) b.fail("ERR_DTYPE", "masterLo must be a 16-bit tensor (its bits are used)");
    if (masterLo->numel() != param->numel()) b.fail("ERR_SHAPE", "masterLo must have param's element count");
  }
  if (sumsq && (sumsq->dtype != Dtype::F32 || sumsq->numel() != 1)) b.fail("ERR_SHAPE", "sumsq must be one f32 element");
  if (sumsq && !(p.max_norm > 0)) b.fail("ERR_ARG", "sumsq needs maxNorm > 0");
  std::vector<const TensorImpl*> all{param, grad, m, v};
  if (master) all.push_back(master);
  if (masterLo) all.push_back(masterLo);
  if (sumsq) all.push_back(sumsq);
  check_same_device(all, "adamw");
  // Every buffer is written element by element from the same index: distinct buffers only.
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t j = i + 1; j < all.size(); ++j)
      if (overlaps(all[i], all[j])) b.fail("ERR_ARG", "param, grad, m, v, master, masterLo and sumsq must not share memory");
  p.param = param->data(); p.param_dtype = param->dtype;
  p.grad = grad->data(); p.grad_dtype = grad->dtype;
  p.m = static_cast<float*>(m->data());
  p.v = static_cast<float*>(v->data());
  p.master = master ? static_cast<float*>(master->data()) : nullptr;
  p.master_lo = masterLo ? static_cast<uint16_t*>(masterLo->data()) : nullptr;
  p.sumsq = sumsq ? static_cast<const float*>(sumsq->data()) : nullptr;
  p.n = param->numel();
  adamw_check(p);
  launch_op(param->device, {grad, sumsq}, {param, m, v, master, masterLo}, p, adamw_cpu, MB_CUDA_FN(adamw_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("adamw", AdamW);

Napi::Value Sumsq(const Napi::CallbackInfo& info) {
  Baton b(info, "sumsq");
  TensorImpl* x = b.tensor("x");
  TensorImpl* out = b.tensor("out");
  b.finish();
  if (out->dtype != Dtype::F32 || out->numel() != 1) b.fail("ERR_SHAPE", "out must be one f32 element");
  if (overlaps(x, out)) b.fail("ERR_ARG", "out must not overlap x");
  check_same_device({x, out}, "sumsq");
  SumsqParams p{x->data(), x->dtype, x->numel(), static_cast<float*>(out->data())};
  sumsq_check(p);
  launch_op(x->device, {x}, {out}, p, sumsq_cpu, MB_CUDA_FN(sumsq_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("sumsq", Sumsq);

}  // namespace
}  // namespace mb
