// embedding({ ids, weight, dtype?, bad? }) -> out [...ids.shape, H]   (dtype: out's, default weight's)
// embeddingBackward({ dy, ids, dweight, bad? })                       (dweight f32 [V, H], accumulated)
// bad: optional i32 tensor (>= 1 element, same device) where CUDA kernels record the first bad position.
#include "../ops/embedding/embedding.h"
#include "nn_args.h"

namespace mb {
namespace {
using namespace nnb;

TensorImpl* bad_arg(Baton& b) {
  TensorImpl* bad = b.tensor_or_null("bad");
  need_bad(b, bad);
  return bad;
}

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Baton b(info, "embedding");
  TensorImpl* ids = b.tensor("ids");
  TensorImpl* w = b.tensor("weight");
  const Dtype odt = b.dtype("dtype", w->dtype);
  TensorImpl* bad = bad_arg(b);
  b.finish();
  need_dtype(b, ids, Dtype::I32, "ids");
  need_float(b, w, "weight");
  if (!is_float(odt)) b.fail("ERR_DTYPE", "dtype must be f32, f16 or bf16");
  if (w->shape.size() != 2) b.fail("ERR_SHAPE", "weight must be [vocab, hidden], got " + shape_str(w->shape));
  same_device(b, {ids, w, bad});
  EmbeddingParams p;
  p.ids = static_cast<const int32_t*>(ids->data());
  p.n = ids->numel(); p.vocab = w->shape[0]; p.hidden = w->shape[1];
  p.weight = w->data(); p.w_dtype = w->dtype; p.out_dtype = odt;
  p.bad = bad ? static_cast<int32_t*>(bad->data()) : nullptr;
  p.out = reinterpret_cast<void*>(1);
  embedding_check(p, false);
  std::vector<int64_t> oshape = ids->shape;
  oshape.push_back(p.hidden);
  Output out = new_output(info.Env(), oshape, odt, w->device);
  p.out = out.t->data();
  launch_op(w->device, {ids, w}, {bad, out.t}, p, embedding_cpu, MB_CUDA_FN(embedding_cuda));
  return out.handle;
}
MB_EXPORT("embedding", Embedding);

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Baton b(info, "embeddingBackward");
  TensorImpl* dy = b.tensor("dy");
  TensorImpl* ids = b.tensor("ids");
  TensorImpl* dw = b.tensor("dweight");
  TensorImpl* bad = bad_arg(b);
  b.finish();
  need_dtype(b, ids, Dtype::I32, "ids");
  need_float(b, dy, "dy");
  need_dtype(b, dw, Dtype::F32, "dweight");
  if (dw->shape.size() != 2) b.fail("ERR_SHAPE", "dweight must be [vocab, hidden], got " + shape_str(dw->shape));
  std::vector<int64_t> dshape = ids->shape;
  dshape.push_back(dw->shape[1]);
  need_shape(b, dy, dshape, "dy");
  same_device(b, {dy, ids, dw, bad});
  no_overlap(b, dw, "dweight", {dy, ids, bad});
  EmbeddingParams p;
  p.ids = static_cast<const int32_t*>(ids->data());
  p.n = ids->numel(); p.vocab = dw->shape[0]; p.hidden = dw->shape[1];
  p.dy = dy->data(); p.dy_dtype = dy->dtype; p.dweight = static_cast<float*>(dw->data());
  p.bad = bad ? static_cast<int32_t*>(bad->data()) : nullptr;
  embedding_check(p, true);
  launch_op(dw->device, {dy, ids}, {dw, bad}, p, embedding_bwd_cpu, MB_CUDA_FN(embedding_bwd_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("embeddingBackward", EmbeddingBackward);

}  // namespace
}  // namespace mb
