// Matrix multiply. gemm({ a, b, out?, transA?, transB?, alpha?, beta?, dtype?, backend? }) -> out handle
//   a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with transB). Batch dims
//   (everything before the last two) must be equal, or one side is 2-D and is broadcast.
//   out = alpha·op(a)·op(b) + beta·out, shape [...batch, M, N]; beta != 0 needs out. f32 accumulation.
//   backend: 'auto' | 'builtin' | 'cublaslt' (CUDA; for tests and benchmarks).
// gemmInfo() -> { found, backend: 'cublaslt' | 'builtin' | 'cpu', path?, version?, error? }
#include "../ops/gemm/gemm.h"
#include "baton.h"

namespace mb {
namespace {

int64_t prod(const std::vector<int64_t>& s, size_t n) {
  int64_t r = 1;
  for (size_t i = 0; i < n; ++i) r *= s[i];  // shapes of live tensors: the product is their numel bound
  return r;
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Baton bt(info, "gemm");
  TensorImpl* a = bt.tensor("a");
  TensorImpl* b = bt.tensor("b");
  TensorImpl* out = bt.tensor_or_null("out");
  GemmParams p;
  p.trans_a = bt.flag("transA", false);
  p.trans_b = bt.flag("transB", false);
  p.alpha = (float)bt.number("alpha", 1.0);
  const double beta = bt.number("beta", 0.0);
  p.beta = (float)beta;
  p.backend = (GemmBackend)bt.choice("backend", {"auto", "builtin", "cublaslt"}, 0);
  const bool has_dtype = bt.has("dtype");
  const Dtype want = bt.dtype("dtype", a->dtype);
  bt.finish();
  if (out && has_dtype) bt.fail("ERR_ARG", "give either out or dtype");
  if (!out && beta != 0.0) bt.fail("ERR_ARG", "beta != 0 needs out (it accumulates into out)");
  std::vector<const TensorImpl*> all{a, b};
  if (out) all.push_back(out);
  check_same_device(all, "gemm");

  const auto& as = a->shape;
  const auto& bs = b->shape;
  if (as.size() < 2) bt.fail("ERR_SHAPE", "a must have at least 2 dimensions");
  if (bs.size() < 2) bt.fail("ERR_SHAPE", "b must have at least 2 dimensions");
  const size_t ra = as.size(), rb = bs.size();
  std::vector<int64_t> batch_shape;
  if (rb == 2) batch_shape.assign(as.begin(), as.end() - 2);
  else if (ra == 2) batch_shape.assign(bs.begin(), bs.end() - 2);
  else {
    if (ra != rb || !std::equal(as.begin(), as.end() - 2, bs.begin()))
      bt.fail("ERR_SHAPE", "batch dimensions of a and b differ (and neither is 2-D)");
    batch_shape.assign(as.begin(), as.end() - 2);
  }
  const int64_t a0 = as[ra - 2], a1 = as[ra - 1], b0 = bs[rb - 2], b1 = bs[rb - 1];
  p.m = p.trans_a ? a1 : a0;
  p.k = p.trans_a ? a0 : a1;
  const int64_t kb = p.trans_b ? b1 : b0;
  p.n = p.trans_b ? b0 : b1;
  if (kb != p.k)
    bt.fail("ERR_SHAPE", "inner dimensions differ: op(a) is [" + std::to_string(p.m) + ", " + std::to_string(p.k) +
                             "], op(b) is [" + std::to_string(kb) + ", " + std::to_string(p.n) + "]");
  std::vector<int64_t> oshape = batch_shape;
  oshape.push_back(p.m);
  oshape.push_back(p.n);
  if (out) check_shape(out, oshape, "gemm: out");
  p.batch = prod(batch_shape, batch_shape.size());
  p.lda = std::max<int64_t>(1, a1);
  p.ldb = std::max<int64_t>(1, b1);
  p.ldo = std::max<int64_t>(1, p.n);
  p.stride_a = ra == 2 ? 0 : a0 * a1;
  p.stride_b = rb == 2 ? 0 : b0 * b1;
  p.stride_out = p.m * p.n;
  p.a = a->data(); p.a_dtype = a->dtype;
  p.b = b->data(); p.b_dtype = b->dtype;
  p.out_dtype = out ? out->dtype : want;
  p.out = out ? out->data() : nullptr;
  p.device = a->device;
  gemm_check(p, /*out_allocated=*/out != nullptr);  // before allocating a new output

  Output o = out_or_new(bt, "out", out, oshape, p.out_dtype, a->device);
  p.out = o.t->data();
  launch_op(a->device, {a, b}, {o.t}, p, gemm_cpu, MB_CUDA_FN(gemm_cuda));
  return o.handle;
}
MB_EXPORT("gemm", Gemm);

Napi::Value GemmInfoFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const GemmInfo g = gemm_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("found", Napi::Boolean::New(env, g.found));
  o.Set("backend", Napi::String::New(env, g.backend));
  if (!g.path.empty()) o.Set("path", Napi::String::New(env, g.path));
  if (!g.version.empty()) o.Set("version", Napi::String::New(env, g.version));
  if (!g.error.empty()) o.Set("error", Napi::String::New(env, g.error));
  return o;
}
MB_EXPORT("gemmInfo", GemmInfoFn);

}  // namespace
}  // namespace mb
