// Ring attention helpers (sequence parallelism; lib/ring.ts), plus the element-wise max the local
// process-group backend needs for allReduce('max').
//
//   ring_merge:  merges one block's partial attention (out_blk, lse_blk) into fp32 accumulators by
//                log-sum-exp, in place:  L = logaddexp(L_acc, L_blk);
//                O_acc = exp(L_acc − L)·O_acc + exp(L_blk − L)·O_blk.   A row whose block lse is −inf
//                (fully masked in that block) is left as is; a row masked everywhere keeps O = 0, L = −inf.
//                Layout: out [batch, rows, heads, dim], lse [batch, heads, rows] (attention's layouts).
//                Why fp32: merging in bf16 rounds the running output once per ring step, so the error
//                grows with the ring size (ring-flash-attention's known failure).
//   row_copy:    copies `rows` rows of `inner` elements from a [outer, src_rows, inner] tensor (starting
//                at src_row0) into a [outer, dst_rows, inner] tensor (at dst_row0), converting the dtype
//                (fp32 in between) when they differ. Shards/unshards sequences and packs chunks of a
//                [batch, seq, heads, dim] tensor (inner = heads·dim) or of an lse [batch·heads, seq, 1].
//   maximum:     out[i] = max(a[i], b[i]) in fp32 (NaN propagates), out may be exactly a or b.
#pragma once
#include <cmath>
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct RingMergeParams {
  float* out_acc = nullptr;       // f32 [batch, rows, heads, dim], contiguous
  float* lse_acc = nullptr;       // f32 [batch, heads, rows]
  const void* out_blk = nullptr;  // out_dtype [batch, rows, heads, dim]
  Dtype out_dtype = Dtype::F32;
  const float* lse_blk = nullptr; // f32 [batch, heads, rows]
  int64_t batch = 0, rows = 0, heads = 0, dim = 0;
};

struct RowCopyParams {
  const void* src = nullptr;
  Dtype src_dtype = Dtype::F32;
  void* dst = nullptr;
  Dtype dst_dtype = Dtype::F32;
  int64_t outer = 0, inner = 0;
  int64_t src_rows = 0, dst_rows = 0;  // row counts of the whole src / dst tensors (per outer index)
  int64_t src_row0 = 0, dst_row0 = 0, rows = 0;
};

struct MaximumParams {
  const void* a = nullptr;
  Dtype a_dtype = Dtype::F32;
  const void* b = nullptr;
  Dtype b_dtype = Dtype::F32;
  void* out = nullptr;
  Dtype out_dtype = Dtype::F32;
  int64_t n = 0;
};

// Validity, decided here only (no GPU needed). Throw mb::Error with a code.
void ring_merge_check(const RingMergeParams& p);
void row_copy_check(const RowCopyParams& p);
void maximum_check(const MaximumParams& p);

void ring_merge_cpu(const RingMergeParams& p);
void row_copy_cpu(const RowCopyParams& p);
void maximum_cpu(const MaximumParams& p);
#if defined(MEGABEAM_CUDA)
void ring_merge_cuda(const RingMergeParams& p, cudaStream_t s);
void row_copy_cuda(const RowCopyParams& p, cudaStream_t s);
void maximum_cuda(const MaximumParams& p, cudaStream_t s);
#endif

// The merge weights of one row (host and device share the formula).
MB_HD void ring_merge_weights(float la, float lb, float* wa, float* wb, float* l) {
  if (la == -INFINITY) { *wa = 0.f; *wb = 1.f; *l = lb; return; }
  const float m = la > lb ? la : lb;
  const float lnew = m + log1pf(expf(-fabsf(la - lb)));
  *wa = expf(la - lnew);
  *wb = expf(lb - lnew);
  *l = lnew;
}

}  // namespace mb
