// RMSNorm over the last dimension of a contiguous [rows, hidden] tensor, forward and backward, fp32 math.
//   forward:  h = x (+ residual, rounded once to x's dtype when fused)
//             rstd = 1 / sqrt(mean(h²) + eps)            (f32, saved per row for the backward)
//             y = h · rstd · w                           (fp32, rounded once to x's dtype)
//   backward: xhat = x·rstd, g = dy·w
//             dx = rstd · (g − xhat · mean(g·xhat))      (written, or added to dx when accumulating)
//             dweight += Σ_rows dy·xhat                  (f32)
// The statistics are taken over the *rounded* h, so the backward given h (as stored) is consistent
// with the forward. dweight is reduced deterministically on both devices: fixed row blocks write
// per-block partial sums, which are then added column by column in block order.
#pragma once
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct RmsNormParams {
  const void* x = nullptr;
  const void* residual = nullptr;  // optional: fused h = x + residual
  const void* weight = nullptr;    // [hidden]
  void* y = nullptr;
  void* h = nullptr;               // required iff residual
  float* rstd = nullptr;           // [rows]
  Dtype dtype = Dtype::F32;        // x, residual, y, h
  Dtype w_dtype = Dtype::F32;      // weight: x's dtype or f32
  int64_t rows = 0, hidden = 0;
  float eps = 1e-6f;
};

struct RmsNormBwdParams {
  const void* dy = nullptr;        // [rows, hidden], x's dtype
  const void* x = nullptr;         // the normalised input (h when fused)
  const void* weight = nullptr;
  const float* rstd = nullptr;
  void* dx = nullptr;
  Dtype dx_dtype = Dtype::F32;     // x's dtype or f32
  bool dx_accumulate = false;      // dx += (instead of dx =)
  float* dweight = nullptr;        // f32 [hidden], accumulated (+=)
  Dtype dtype = Dtype::F32;
  Dtype w_dtype = Dtype::F32;
  int64_t rows = 0, hidden = 0;
  float* partial = nullptr;        // CUDA workspace: rmsnorm_bwd_blocks(rows, true) x hidden f32 (set by the caller)
};

// Number of row blocks of the deterministic dweight reduction. Fixed per device kind (never derived from
// the thread or SM count), so results are bit-reproducible. CUDA uses many blocks (one block per 128
// threads would leave the GPU idle otherwise); the CPU only needs enough to balance its threads.
int64_t rmsnorm_bwd_blocks(int64_t rows, bool cuda);

void rmsnorm_check(const RmsNormParams& p);       // ERR_DTYPE / ERR_SHAPE / ERR_ARG
void rmsnorm_bwd_check(const RmsNormBwdParams& p);
void rmsnorm_cpu(const RmsNormParams& p);
void rmsnorm_bwd_cpu(const RmsNormBwdParams& p);
#if defined(MEGABEAM_CUDA)
void rmsnorm_cuda(const RmsNormParams& p, cudaStream_t s);
void rmsnorm_bwd_cuda(const RmsNormBwdParams& p, cudaStream_t s);
#endif

}  // namespace mb
