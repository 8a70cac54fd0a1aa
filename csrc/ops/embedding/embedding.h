// Embedding lookup and its backward.
//   forward:  out[t, :] = weight[ids[t], :]             (rounded to out's dtype, normally weight's)
//   backward: dweight[ids[t], :] += dy[t, :]             (f32 accumulation)
// Ids outside [0, V):
//   CPU  the queued op fails with ERR_ARG naming the first bad position and id (nothing is written);
//        it surfaces at the next sync point like any queued CPU error.
//   CUDA the kernel never touches memory out of bounds: a bad token's output row is zeroed (forward) or
//        its gradient dropped (backward), and the smallest bad position is recorded with atomicMin into
//        `bad` (an i32 device word holding INT32_MAX when clean), which lib/nn reads on request
//        (nn.checkIds). Positions >= 2^31 are recorded as INT32_MAX - 1.
// CPU backward is deterministic (each thread owns a column range and walks the tokens in order); the
// CUDA backward uses f32 atomics (order-dependent rounding).
#pragma once
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct EmbeddingParams {
  const int32_t* ids = nullptr;  // [n]
  int64_t n = 0;                 // tokens
  int64_t vocab = 0, hidden = 0;
  const void* weight = nullptr;  // forward: [vocab, hidden]
  Dtype w_dtype = Dtype::F32;
  void* out = nullptr;           // forward: [n, hidden]
  Dtype out_dtype = Dtype::F32;
  const void* dy = nullptr;      // backward: [n, hidden]
  Dtype dy_dtype = Dtype::F32;
  float* dweight = nullptr;      // backward: f32 [vocab, hidden]
  int32_t* bad = nullptr;        // CUDA: first bad position (atomicMin); may be null
};

void embedding_check(const EmbeddingParams& p, bool backward);
void embedding_cpu(const EmbeddingParams& p);
void embedding_bwd_cpu(const EmbeddingParams& p);
#if defined(MEGABEAM_CUDA)
void embedding_cuda(const EmbeddingParams& p, cudaStream_t s);
void embedding_bwd_cuda(const EmbeddingParams& p, cudaStream_t s);
#endif

}  // namespace mb
