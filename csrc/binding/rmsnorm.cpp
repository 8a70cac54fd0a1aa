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
  if (res) need_like(b, res, x, "residual");
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
  Output y = new_output(env, x->shape, x->dtype, x->device);
  Output rstd = new_output(env, rshape, Dtype::F32, x->device);
  Output h = res ? new_output(env, x->shape, x->dtype, x->device) : Output{env.Undefined()};
  p.y = y.t->data(); p.rstd = static_cast<float*>(rstd.t->data()); p.h = h.t ? h.t->data() : nullptr;
  launch_op(x->device, {x, w, res}, {y.t, rstd.t, h.t}, p, rmsnorm_cpu, MB_CUDA_FN(rmsnorm_cuda));
  return result(env, {{"y", y.handle}, {"rstd", rstd.handle}, {"h", h.handle}});
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
  need_like(b, dy, x, "dy");
  need_shape(b, w, {H}, "weight");
  std::vector<int64_t> rshape(x->shape.begin(), x->shape.end() - 1);
  need_like(b, rstd, rshape, Dtype::F32, "rstd");
  need_like(b, dw, {H}, Dtype::F32, "dweight");
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

  Output dxo = out_or_new(b, "dx", dx, x->shape, x->dtype, x->device);
  p.dx = dxo.t->data();
  // CUDA's per-block partial sums: held until the launch returns (this function's end); later work on
  // the stream is ordered after the kernels that use the block.
  StoragePtr ws;
  if (x->device != kCpu && p.rows > 0) {
    ws = alloc_storage(x->device, (size_t)(rmsnorm_bwd_blocks(p.rows, true) * H) * sizeof(float));
    p.partial = static_cast<float*>(ws->ptr);
  }
  launch_op(x->device, {dy, x, w, rstd}, {dw, dxo.t}, p, rmsnorm_bwd_cpu, MB_CUDA_FN(rmsnorm_bwd_cuda));
  return result(info.Env(), {{"dx", dxo.handle}});
}
MB_EXPORT("rmsNormBackward", RmsNormBackward);

}  // namespace
}  // namespace mb
