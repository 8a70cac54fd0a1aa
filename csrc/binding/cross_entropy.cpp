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
    need_shape(b, dl, x->shape, "dlogits");
    need_dtype(b, dl, x->dtype, "dlogits");
    no_overlap(b, dl, "dlogits", {x, labels, count}, x);
  }
  if (count) {
    need_dtype(b, count, Dtype::I32, "count");
    need_shape(b, count, {1}, "count");
  }
  if (bad) {
    need_dtype(b, bad, Dtype::I32, "bad");
    if (bad->numel() < 1) b.fail("ERR_SHAPE", "bad must hold at least one element");
  }
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
  Napi::Value lv = losses ? b.raw("losses") : TensorImpl::Create(env, {R}, Dtype::F32, x->device);
  TensorImpl* li = losses ? losses : TensorImpl::Unwrap(lv.As<Napi::Object>());
  Napi::Value dv = env.Undefined();
  TensorImpl* di = nullptr;
  if (grad) {
    dv = dl ? b.raw("dlogits") : TensorImpl::Create(env, x->shape, x->dtype, x->device);
    di = dl ? dl : TensorImpl::Unwrap(dv.As<Napi::Object>());
  }
  p.losses = static_cast<float*>(li->data());
  p.dlogits = di ? di->data() : nullptr;
  std::vector<StoragePtr> ins, outs;
  keep_all(ins, {x, labels});
  keep_all(outs, {li, di, count, bad});
  run_on_device(x->device, std::move(ins), std::move(outs), [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { cross_entropy_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    cross_entropy_cpu(p);
  });
  return result(env, {{"losses", lv}, {"dlogits", dv}});
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
  run_on_device(out->device, {labels->storage}, {out->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { loss_count_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    loss_count_cpu(p);
  });
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
  std::vector<StoragePtr> ins;
  keep_all(ins, {losses, count});
  run_on_device(out->device, std::move(ins), {out->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { loss_mean_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    loss_mean_cpu(p);
  });
  return info.Env().Undefined();
}
MB_EXPORT("lossMean", LossMean);

}  // namespace
}  // namespace mb
