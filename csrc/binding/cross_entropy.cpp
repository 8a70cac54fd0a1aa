// crossEntropy({ logits, labels, losses?, ignoreIndex?, gradScale?, dlogits?, count?, bad? })
//     -> { losses, dlogits? }
//   losses: f32 [rows] (given: written there). gradScale given -> dlogits computed: into `dlogits` if given
//   (may be exactly logits: in place), else a new tensor of logits' dtype. count: i32 [1] device tensor,
//   the gradient is divided by max(count, 1). bad: see embedding.cpp.
// lossCount({ labels, ignoreIndex?, out })  out: i32 [1]
// lossMean({ losses, out, count? | divisor? }) out: f32 [1] = Σ losses / (max(count,1) | divisor)
#include <cmath>

#include "../ops/cross_entropy/cross_entropy.h"
#include "nn_args.h"

namespace mb {
namespace {
using namespace nnb;

int32_t ignore_arg(Baton& b) {
  const int64_t v = b.integer("ignoreIndex", -100);
  if (v < INT32_MIN || v > INT32_MAX) b.fail("ERR_ARG", "ignoreIndex must be an i32");
  return (int32_t)v;
}

Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Baton b(info, "crossEntropy");
  TensorImpl* x = b.tensor("logits");
  TensorImpl* labels = b.tensor("labels");
  TensorImpl* losses = b.tensor_or_null("losses");
  const int32_t ignore = ignore_arg(b);
  const bool grad = b.has("gradScale");
  const double scale = b.number("gradScale", 1.0);
  TensorImpl* dl = b.tensor_or_null("dlogits");
  TensorImpl* count = b.tensor_or_null("count");
  TensorImpl* bad = b.tensor_or_null("bad");
  b.finish();
  need_float(b, x, "logits");
  if (x->shape.size() != 2) b.fail("ERR_SHAPE", "logits must be [rows, vocab], got " + shape_str(x->shape));
  const int64_t R = x->shape[0], V = x->shape[1];
  need_dtype(b, labels, Dtype::I32, "labels");
  need_shape(b, labels, {R}, "labels");
  if (losses) {
    need_dtype(b, losses, Dtype::F32, "losses");
    need_shape(b, losses, {R}, "losses");
    no_overlap(b, losses, "losses", {x, labels, dl, count});
  }
  if (dl && !grad) b.fail("ERR_ARG", "dlogits needs gradScale");
  if (dl) {
    need_like(b, dl, x, "dlogits");
    no_overlap(b, dl, "dlogits", {x, labels, count}, x);
  }
  if (count) {
    need_dtype(b, count, Dtype::I32, "count");
    need_shape(b, count, {1}, "count");
  }
  need_bad(b, bad);
  same_device(b, {x, labels, losses, dl, count, bad});
  CrossEntropyParams p;
  p.logits = x->data(); p.dtype = x->dtype; p.rows = R; p.vocab = V;
  p.labels = static_cast<const int32_t*>(labels->data());
  p.ignore_index = ignore;
  p.grad_scale = (float)scale;
  if (!std::isfinite(scale)) p.grad_scale = NAN;
  p.count = count ? static_cast<const int32_t*>(count->data()) : nullptr;
  p.bad = bad ? static_cast<int32_t*>(bad->data()) : nullptr;
  p.losses = reinterpret_cast<float*>(1);
  cross_entropy_check(p);

  Napi::Env env = info.Env();
  Output lo = out_or_new(b, "losses", losses, {R}, Dtype::F32, x->device);
  Output dlo = grad ? out_or_new(b, "dlogits", dl, x->shape, x->dtype, x->device) : Output{env.Undefined()};
  p.losses = static_cast<float*>(lo.t->data());
  p.dlogits = dlo.t ? dlo.t->data() : nullptr;
  launch_op(x->device, {x, labels}, {lo.t, dlo.t, count, bad}, p, cross_entropy_cpu, MB_CUDA_FN(cross_entropy_cuda));
  return result(env, {{"losses", lo.handle}, {"dlogits", dlo.handle}});
}
MB_EXPORT("crossEntropy", CrossEntropy);

Napi::Value LossCount(const Napi::CallbackInfo& info) {
  Baton b(info, "lossCount");
  TensorImpl* labels = b.tensor("labels");
  const int32_t ignore = ignore_arg(b);
  TensorImpl* out = b.tensor("out");
  b.finish();
  need_dtype(b, labels, Dtype::I32, "labels");
  need_dtype(b, out, Dtype::I32, "out");
  need_shape(b, out, {1}, "out");
  same_device(b, {labels, out});
  no_overlap(b, out, "out", {labels});
  LossReduceParams p;
  p.labels = static_cast<const int32_t*>(labels->data());
  p.ignore_index = ignore;
  p.n = labels->numel();
  p.count_out = static_cast<int32_t*>(out->data());
  launch_op(out->device, {labels}, {out}, p, loss_count_cpu, MB_CUDA_FN(loss_count_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("lossCount", LossCount);

Napi::Value LossMean(const Napi::CallbackInfo& info) {
  Baton b(info, "lossMean");
  TensorImpl* losses = b.tensor("losses");
  TensorImpl* out = b.tensor("out");
  TensorImpl* count = b.tensor_or_null("count");
  const double divisor = b.number("divisor", 1.0);
  b.finish();
  need_dtype(b, losses, Dtype::F32, "losses");
  need_dtype(b, out, Dtype::F32, "out");
  need_shape(b, out, {1}, "out");
  if (count) {
    need_dtype(b, count, Dtype::I32, "count");
    need_shape(b, count, {1}, "count");
  }
  if (!(divisor > 0) || !std::isfinite(divisor)) b.fail("ERR_ARG", "divisor must be a finite number > 0");
  same_device(b, {losses, out, count});
  no_overlap(b, out, "out", {losses, count});
  LossReduceParams p;
  p.losses = static_cast<const float*>(losses->data());
  p.n = losses->numel();
  p.count = count ? static_cast<const int32_t*>(count->data()) : nullptr;
  p.divisor = divisor;
  p.mean_out = static_cast<float*>(out->data());
  launch_op(out->device, {losses, count}, {out}, p, loss_mean_cpu, MB_CUDA_FN(loss_mean_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("lossMean", LossMean);

}  // namespace
}  // namespace mb
