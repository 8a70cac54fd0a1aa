// SwiGLU, element-wise over same-shaped contiguous gate/up (fp32 math, one rounding per output):
//   forward:  y = silu(g)·u,  silu(g) = g·σ(g)
//   backward: dup = dy·silu(g),  dgate = dy·u·σ(g)·(1 + g·(1 − σ(g)))
// One pass over memory each way (the unfused version reads gate twice and writes silu(g) in between).
// Outputs may be exactly an input (in place: every element is read before it is written).
#pragma once
#include <cmath>
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct SwigluParams {
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* dy = nullptr;  // backward only
  void* y = nullptr;         // forward output
  void* dgate = nullptr;     // backward outputs
  void* dup = nullptr;
  Dtype dtype = Dtype::F32;  // every tensor
  int64_t n = 0;
};

void swiglu_check(const SwigluParams& p, bool backward);
void swiglu_cpu(const SwigluParams& p);
void swiglu_bwd_cpu(const SwigluParams& p);
#if defined(MEGABEAM_CUDA)
void swiglu_cuda(const SwigluParams& p, cudaStream_t s);
void swiglu_bwd_cuda(const SwigluParams& p, cudaStream_t s);
#endif

// Shared math (host and device): sigma computed as 1 / (1 + exp(-g)), which is exact enough for fp32 and
// saturates correctly (g → −inf: σ → 0, silu → −0; g → +inf: σ → 1).
MB_HD float swiglu_sigmoid(float g) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + expf(-g));
#else
  return 1.0f / (1.0f + std::exp(-g));
#endif
}

}  // namespace mb
