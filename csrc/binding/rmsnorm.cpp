// rmsNorm({ x, weight, eps, residual? }) -> { y, rstd, h? }
// rmsNormBackward({ dy, x, weight, rstd, dweight, dx? }) -> { dx }   (dweight f32 [H], accumulated;
//   dx given: accumulated into, else a new tensor of x's dtype)
#include "../ops/rmsnorm/rmsnorm.h"
#include "nn_args.h"

namespace mb {
namespace {
using namespace nnb;

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Baton b(info, "rmsNorm");
  TensorImpl* x = b.tensor("x");
  TensorImpl* w = b.tensor("weight");
  TensorImpl* res = b.tensor_or_null("residual");
  const double eps = b.number("eps", 1e-6);
  b.finish();
  need_float(b, x, "x");
  need_float(b, w, "weight");
  if (x->shape.empty()) b.fail("ERR_SHAPE", "x must have at least one dimension");
  const int64_t H = x->shape.back();
  need_shape(b, w, {H}, "weight");
  if (res) {
    need_shape(b, res, x->shape, "residual");
    need_dtype(b, res, x->dtype, "residual");
  }
  same_device(b, {x, w, res});
  RmsNormParams p;
  p.x = x->data(); p.weight = w->data(); p.residual = res ? res->data() : nullptr;
  p.dtype = x->dtype; p.w_dtype = w->dtype;
  p.rows = rows_of(x->shape); p.hidden = H;
  p.eps = (float)eps;
  p.rstd = reinterpret_cast<float*>(1);  // placeholder for the check; set below
  p.h = res ? reinterpret_cast<void*>(1) : nullptr;
  rmsnorm_check(p);

  Napi::Env env = info.Env();
  std::vector<int64_t> rshape(x->shape.begin(), x->shape.end() - 1);
  Napi::Object y = TensorImpl::Create(env, x->shape, x->dtype, x->device);
  Napi::Object rstd = TensorImpl::Create(env, rshape, Dtype::F32, x->device);
  Napi::Value h = env.Undefined();
  TensorImpl* yi = TensorImpl::Unwrap(y);
  TensorImpl* ri = TensorImpl::Unwrap(rstd);
  TensorImpl* hi = nullptr;
  if (res) {
    Napi::Object ho = TensorImpl::Create(env, x->shape, x->dtype, x->device);
    hi = TensorImpl::Unwrap(ho);
    h = ho;
  }
  p.y = yi->data(); p.rstd = static_cast<float*>(ri->data()); p.h = hi ? hi->data() : nullptr;
  std::vector<StoragePtr> ins, outs;
  keep_all(ins, {x, w, res});
  keep_all(outs, {yi, ri, hi});
  run_on_device(x->device, std::move(ins), std::move(outs), [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { rmsnorm_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    rmsnorm_cpu(p);
  });
  return result(env, {{"y", y}, {"rstd", rstd}, {"h", h}});
}
MB_EXPORT("rmsNorm", RmsNorm);

Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  Baton b(info, "rmsNormBackward");
  TensorImpl* dy = b.tensor("dy");
  TensorImpl* x = b.tensor("x");
  TensorImpl* w = b.tensor("weight");
  TensorImpl* rstd = b.tensor("rstd");
  TensorImpl* dw = b.tensor("dweight");
  TensorImpl* dx = b.tensor_or_null("dx");
  b.finish();
  need_float(b, x, "x");
  need_float(b, w, "weight");
  if (x->shape.empty()) b.fail("ERR_SHAPE", "x must have at least one dimension");
  const int64_t H = x->shape.back();
  need_shape(b, dy, x->shape, "dy");
  need_dtype(b, dy, x->dtype, "dy");
  need_shape(b, w, {H}, "weight");
  std::vector<int64_t> rshape(x->shape.begin(), x->shape.end() - 1);
  need_shape(b, rstd, rshape, "rstd");
  need_dtype(b, rstd, Dtype::F32, "rstd");
  need_shape(b, dw, {H}, "dweight");
  need_dtype(b, dw, Dtype::F32, "dweight");
  if (dx) {
    need_shape(b, dx, x->shape, "dx");
    need_float(b, dx, "dx");
  }
  same_device(b, {dy, x, w, rstd, dw, dx});
  no_overlap(b, dw, "dweight", {dy, x, w, rstd, dx});
  if (dx) no_overlap(b, dx, "dx", {x, w, rstd, dy}, dy);

  RmsNormBwdParams p;
  p.dy = dy->data(); p.x = x->data(); p.weight = w->data(); p.rstd = static_cast<const float*>(rstd->data());
  p.dweight = static_cast<float*>(dw->data());
  p.dtype = x->dtype; p.w_dtype = w->dtype;
  p.dx_dtype = dx ? dx->dtype : x->dtype;
  p.dx_accumulate = dx != nullptr;
  p.rows = rows_of(x->shape); p.hidden = H;
  p.dx = reinterpret_cast<void*>(1);
  rmsnorm_bwd_check(p);

  Napi::Env env = info.Env();
  Napi::Value dxv = dx ? b.raw("dx") : TensorImpl::Create(env, x->shape, x->dtype, x->device);
  TensorImpl* dxi = dx ? dx : TensorImpl::Unwrap(dxv.As<Napi::Object>());
  p.dx = dxi->data();
  std::vector<StoragePtr> ins, outs;
  keep_all(ins, {dy, x, w, rstd});
  keep_all(outs, {dw, dxi});
  StoragePtr ws;
  if (x->device != kCpu && p.rows > 0) {
    ws = alloc_storage(x->device, (size_t)(rmsnorm_bwd_blocks(p.rows, true) * H) * sizeof(float));
    p.partial = static_cast<float*>(ws->ptr);
  }
  run_on_device(x->device, std::move(ins), std::move(outs), [p, ws](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { rmsnorm_bwd_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    rmsnorm_bwd_cpu(p);
  });
  return result(env, {{"dx", dxv}});
}
MB_EXPORT("rmsNormBackward", RmsNormBackward);

}  // namespace
}  // namespace mb
