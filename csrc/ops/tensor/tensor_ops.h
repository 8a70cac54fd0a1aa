// Element-wise tensor primitives: fill, dtype conversion, random fill. Contiguous buffers.
#pragma once
#include <cstdint>
#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

enum class RandKind : int { Normal = 0, Uniform = 1 };

struct FillParams { void* dst; Dtype dtype; int64_t n; double value; };
struct CastParams { const void* src; Dtype src_dtype; void* dst; Dtype dst_dtype; int64_t n; };
// out[i] = a + b·normal_at(seed, i)  (Normal: a = mean, b = std)
// out[i] = a + (b − a)·uniform_at(seed, i)  (Uniform: [a, b))
struct RandParams { void* dst; Dtype dtype; int64_t n; uint64_t seed; RandKind kind; float a, b; };

void fill_cpu(const FillParams& p);
void cast_cpu(const CastParams& p);
void rand_cpu(const RandParams& p);
#if defined(MEGABEAM_CUDA)
void fill_cuda(const FillParams& p, cudaStream_t s);
void cast_cuda(const CastParams& p, cudaStream_t s);
void rand_cuda(const RandParams& p, cudaStream_t s);
#endif

// Shared element conversions (host and device).
MB_HD float load_as_f32(const void* p, Dtype d, int64_t i) {
  switch (d) {
    case Dtype::F32: return ((const float*)p)[i];
    case Dtype::F16: return f16_to_f32(((const uint16_t*)p)[i]);
    case Dtype::BF16: return bf16_to_f32(((const uint16_t*)p)[i]);
    default: return (float)((const int32_t*)p)[i];
  }
}
// float -> int32 truncates toward zero (like a C cast / PyTorch), NaN -> 0, saturating.
MB_HD int32_t f32_to_i32(float v) {
  if (!(v == v)) return 0;
  if (v >= 2147483647.0f) return 2147483647;
  if (v <= -2147483648.0f) return (-2147483647 - 1);
  return (int32_t)v;
}
MB_HD void store_from_f32(void* p, Dtype d, int64_t i, float v) {
  switch (d) {
    case Dtype::F32: ((float*)p)[i] = v; break;
    case Dtype::F16: ((uint16_t*)p)[i] = f32_to_f16(v); break;
    case Dtype::BF16: ((uint16_t*)p)[i] = f32_to_bf16(v); break;
    default: ((int32_t*)p)[i] = f32_to_i32(v); break;
  }
}

}  // namespace mb
