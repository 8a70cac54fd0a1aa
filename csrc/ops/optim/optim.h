// Optimizer kernels.
//   adamw: one fused pass per parameter tensor (decoupled weight decay, PyTorch's AdamW order):
//     g  = grad · grad_scale · clip            clip = min(1, max_norm / (sqrt(*sumsq) + 1e-6)) when sumsq is set
//     p  = (master ? master : param) · (1 − lr·wd)
//     m  = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g²
//     p −= lr · (m / bias1) / (sqrt(v / bias2) + eps)     bias1 = 1−β1^t, bias2 = 1−β2^t (host, in double)
//     master = p (f32) ; param = round(p) to its dtype
//   Split master (master_lo, bf16 params only): the f32 master is stored as the bf16 param (its high 16
//   bits, rounded to nearest) plus master_lo, a 16-bit signed correction of the bit pattern:
//     bits(master) = (bits(param) << 16) + (int16)master_lo      (exact: the same f32 master in 4 bytes)
//   so a bf16 parameter with an f32 master costs 4 bytes, not 6. The param is the nearest bf16 of the
//   master with ties away from zero (round-to-nearest-even otherwise): the correction of a tie must fit in
//   an int16 ([-0x8000, 0x7fff]).
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
  uint16_t* master_lo = nullptr;  // split master (bf16 param, no master): the low half, see above
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

MB_HD uint32_t adamw_f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u;
#endif
}
MB_HD float adamw_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  __builtin_memcpy(&x, &u, 4);
  return x;
#endif
}
/** The f32 master from the bf16 param's bits and the split correction. */
MB_HD float adamw_join_master(uint16_t hi, uint16_t lo) {
  return adamw_bits_f32(((uint32_t)hi << 16) + (uint32_t)(int32_t)(int16_t)lo);
}
/** Splits an f32 master into the bf16 param (nearest, ties away from zero) and the correction. */
MB_HD void adamw_split_master(float w, uint16_t* hi, uint16_t* lo) {
  const uint32_t u = adamw_f32_bits(w);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: a quiet NaN of the same sign, no correction
    *hi = (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
    *lo = 0;
    return;
  }
  // Adding half a bf16 ulp to the magnitude bits and truncating is round-to-nearest, ties away from zero
  // (a carry into the exponent is the right next binade; finite values above bf16's max become inf, as
  // with round-to-nearest-even). No carry reaches the sign bit: the magnitude is at most 0x7f800000.
  const uint32_t h = (u + 0x8000u) & 0xffff0000u;
  *hi = (uint16_t)(h >> 16);
  *lo = (uint16_t)(int16_t)(int32_t)(u - h);  // in [-0x8000, 0x7fff]
}

}  // namespace mb
