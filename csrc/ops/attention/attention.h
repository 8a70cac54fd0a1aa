// Flash attention: plain parameter structs (pointers + strides in elements) filled by the binding,
// and the launchers for each device. Layout: q [b, sq, hq, d], k/v [b, sk, hkv, d], lse f32 [b, hq, sq].
#pragma once
#include <cstddef>
#include <cstdint>
#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct AttnFwdParams {
  const void* q; const void* k; const void* v;
  void* out;                 // same layout and dtype as q
  float* lse;                // [b, hq, sq], natural log; -inf for a fully masked row
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  float scale;               // softmax scale, usually 1/sqrt(head_dim)
  bool causal;               // query i sees key j iff k_offset + j <= q_offset + i
  int64_t q_offset, k_offset;
  Dtype dtype;               // F16 or BF16 on CUDA; F32, F16, BF16 on the CPU
};

struct AttnBwdParams : AttnFwdParams {
  const void* dout;          // same layout as out
  void* dq; void* dk; void* dv;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
  void* workspace;           // attention_bwd_workspace_bytes() bytes, device memory, uninitialised
};

// CPU (runs on the calling thread, uses parallel_for inside). Same semantics as CUDA.
void attention_fwd_cpu(const AttnFwdParams& p);
void attention_bwd_cpu(const AttnBwdParams& p);

#if defined(MEGABEAM_CUDA)
// Enqueue on `stream`; never synchronises. Throw mb::Error("ERR_UNSUPPORTED"/"ERR_CUDA", ...) on bad config.
size_t attention_bwd_workspace_bytes(const AttnBwdParams& p);
void attention_fwd_cuda(const AttnFwdParams& p, cudaStream_t stream);
void attention_bwd_cuda(const AttnBwdParams& p, cudaStream_t stream);
#endif

}  // namespace mb
