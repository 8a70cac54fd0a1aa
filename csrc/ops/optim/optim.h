// Optimizer kernels.
//   adamw: one fused pass per parameter tensor (decoupled weight decay, PyTorch's AdamW order):
//     g  = grad · grad_scale · clip            clip = min(1, max_norm / (sqrt(*sumsq) + 1e-6)) when sumsq is set
//     p  = (master ? master : param) · (1 − lr·wd)
//     m  = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g²
//     p −= lr · (m / bias1) / (sqrt(v / bias2) + eps)     bias1 = 1−β1^t, bias2 = 1−β2^t (host, in double)
//     master = p (f32) ; param = round(p) to its dtype
//   The clip coefficient is read on the device from a sum of squares that `sumsq` accumulated, so a global
//   gradient-norm clip needs no host round trip.
//   sumsq: *out += Σ x² (f32 result; f64 partial sums on the CPU, f32 block sums + atomicAdd on CUDA).
#pragma once
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct AdamWParams {
  void* param = nullptr;
  Dtype param_dtype = Dtype::F32;
  float* master = nullptr;  // f32 master weights, or null (then the update is computed from param itself)
  const void* grad = nullptr;
  Dtype grad_dtype = Dtype::F32;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  float lr = 0, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0;
  float bias1 = 1, bias2 = 1;
  float grad_scale = 1;
  const float* sumsq = nullptr;  // device/host scalar with Σg² over all gradients, or null (no clipping)
  float max_norm = 0;
};

struct SumsqParams {
  const void* x = nullptr;
  Dtype dtype = Dtype::F32;
  int64_t n = 0;
  float* out = nullptr;  // one f32, accumulated into
};

void adamw_check(const AdamWParams& p);
void adamw_cpu(const AdamWParams& p);
void sumsq_check(const SumsqParams& p);
void sumsq_cpu(const SumsqParams& p);
#if defined(MEGABEAM_CUDA)
void adamw_cuda(const AdamWParams& p, cudaStream_t s);
void sumsq_cuda(const SumsqParams& p, cudaStream_t s);
#endif

// Shared by both implementations so CPU and CUDA compute the same rounding steps.
MB_HD float adamw_clip(const float* sumsq, float max_norm) {
  if (!sumsq || !(max_norm > 0)) return 1.f;
  float norm = sqrtf(*sumsq);
  float c = max_norm / (norm + 1e-6f);
  return c < 1.f ? c : 1.f;
}

}  // namespace mb
