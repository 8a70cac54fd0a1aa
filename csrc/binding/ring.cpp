// Ring attention helpers and the local backend's max (csrc/ops/ring/ring.h).
//   ringMerge({ outAcc, lseAcc, out, lse })   outAcc f32 [b, rows, h, d], lseAcc f32 [b, h, rows] updated in place
//   rowCopy({ src, dst, outer, inner, srcRows, dstRows, srcRow, dstRow, rows })
//   maximum({ a, b, out })                    out = max(a, b), fp32 math; out may be exactly a or b
#include "../ops/ring/ring.h"
#include "baton.h"

namespace mb {
namespace {

Napi::Value RingMerge(const Napi::CallbackInfo& info) {
  Baton b(info, "ringMerge");
  TensorImpl* oa = b.tensor("outAcc");
  TensorImpl* la = b.tensor("lseAcc");
  TensorImpl* ob = b.tensor("out");
  TensorImpl* lb = b.tensor("lse");
  b.finish();
  if (oa->shape.size() != 4) b.fail("ERR_SHAPE", "outAcc must be [batch, rows, heads, dim]");
  if (oa->dtype != Dtype::F32 || la->dtype != Dtype::F32 || lb->dtype != Dtype::F32)
    b.fail("ERR_DTYPE", "outAcc, lseAcc and lse must be f32");
  RingMergeParams p;
  p.batch = oa->shape[0]; p.rows = oa->shape[1]; p.heads = oa->shape[2]; p.dim = oa->shape[3];
  check_shape(ob, oa->shape, "out");
  check_shape(la, {p.batch, p.heads, p.rows}, "lseAcc");
  check_shape(lb, {p.batch, p.heads, p.rows}, "lse");
  check_same_device({oa, la, ob, lb}, "ringMerge");
  for (const TensorImpl* in : {ob, lb})
    for (const TensorImpl* acc : {oa, la})
      if (overlaps(in, acc)) b.fail("ERR_ARG", "the accumulators overlap the block's out or lse");
  if (overlaps(oa, la)) b.fail("ERR_ARG", "outAcc and lseAcc overlap");
  p.out_acc = static_cast<float*>(oa->data());
  p.lse_acc = static_cast<float*>(la->data());
  p.out_blk = ob->data();
  p.out_dtype = ob->dtype;
  p.lse_blk = static_cast<const float*>(lb->data());
  ring_merge_check(p);
  launch_op(oa->device, {ob, lb}, {oa, la}, p, ring_merge_cpu, MB_CUDA_FN(ring_merge_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("ringMerge", RingMerge);

Napi::Value RowCopy(const Napi::CallbackInfo& info) {
  Baton b(info, "rowCopy");
  TensorImpl* src = b.tensor("src");
  TensorImpl* dst = b.tensor("dst");
  RowCopyParams p;
  p.outer = b.integer("outer");
  p.inner = b.integer("inner");
  p.src_rows = b.integer("srcRows");
  p.dst_rows = b.integer("dstRows");
  p.src_row0 = b.integer("srcRow", 0);
  p.dst_row0 = b.integer("dstRow", 0);
  p.rows = b.integer("rows");
  b.finish();
  p.src = src->data(); p.src_dtype = src->dtype;
  p.dst = dst->data(); p.dst_dtype = dst->dtype;
  row_copy_check(p);
  if (p.outer * p.src_rows * p.inner != src->numel()) b.fail("ERR_SHAPE", "outer·srcRows·inner must be src's element count");
  if (p.outer * p.dst_rows * p.inner != dst->numel()) b.fail("ERR_SHAPE", "outer·dstRows·inner must be dst's element count");
  check_same_device({src, dst}, "rowCopy");
  if (overlaps(src, dst)) b.fail("ERR_ARG", "src and dst overlap");
  launch_op(dst->device, {src}, {dst}, p, row_copy_cpu, MB_CUDA_FN(row_copy_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("rowCopy", RowCopy);

Napi::Value Maximum(const Napi::CallbackInfo& info) {
  Baton b(info, "maximum");
  TensorImpl* a = b.tensor("a");
  TensorImpl* y = b.tensor("b");
  TensorImpl* out = b.tensor("out");
  b.finish();
  if (y->numel() != a->numel() || out->numel() != a->numel()) b.fail("ERR_SHAPE", "a, b and out have different element counts");
  check_same_device({a, y, out}, "maximum");
  no_partial_overlap(b, out, "out", {a, y});
  MaximumParams p;
  p.a = a->data(); p.a_dtype = a->dtype;
  p.b = y->data(); p.b_dtype = y->dtype;
  p.out = out->data(); p.out_dtype = out->dtype;
  p.n = a->numel();
  maximum_check(p);
  launch_op(a->device, {a, y}, {out}, p, maximum_cpu, MB_CUDA_FN(maximum_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("maximum", Maximum);

}  // namespace
}  // namespace mb
