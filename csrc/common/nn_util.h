// Helpers shared by the layer ops (rmsnorm, swiglu, embedding, cross_entropy): compile-time-dtype element
// access, 8-wide vector loads/stores for the CUDA kernels, and block reductions.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace mb {
namespace nn {

template <Dtype D> MB_HD float ld(const void* p, int64_t i) {
  return Elem<D>::load(static_cast<const typename Elem<D>::T*>(p)[i]);
}
template <Dtype D> MB_HD void st(void* p, int64_t i, float v) {
  static_cast<typename Elem<D>::T*>(p)[i] = Elem<D>::store(v);
}
// The value as stored in D and read back (what a consumer of a D tensor sees).
template <Dtype D> MB_HD float round_to(float v) { return Elem<D>::load(Elem<D>::store(v)); }

// Largest element offset of a [rows, cols] contiguous buffer must fit the int64 arithmetic we do.
inline bool mul_overflows(int64_t a, int64_t b) { return a != 0 && b > INT64_MAX / a; }

#if defined(__CUDACC__)
// W = 1: one element; W = 8: 16-byte (2-byte dtypes) or 2 x 16-byte (f32) accesses. The caller guarantees
// for W = 8 that p + i is 16-byte aligned (row length % 8 == 0 and base pointers aligned).
template <Dtype D, int W> __device__ __forceinline__ void ldv(const void* p, int64_t i, float* v) {
  if constexpr (W == 1) {
    v[0] = ld<D>(p, i);
  } else if constexpr (D == Dtype::F32) {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    float4 a = q[0], b = q[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    uint4 u = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(p) + i);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(&u);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = Elem<D>::load(h[k]);
  }
}
template <Dtype D, int W> __device__ __forceinline__ void stv(void* p, int64_t i, const float* v) {
  if constexpr (W == 1) {
    st<D>(p, i, v[0]);
  } else if constexpr (D == Dtype::F32) {
    float4* q = reinterpret_cast<float4*>(static_cast<float*>(p) + i);
    q[0] = make_float4(v[0], v[1], v[2], v[3]);
    q[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint4 u;
    uint16_t* h = reinterpret_cast<uint16_t*>(&u);
#pragma unroll
    for (int k = 0; k < 8; ++k) h[k] = Elem<D>::store(v[k]);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p) + i) = u;
  }
}
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. `scratch`
// holds 32 floats; the leading barrier makes back-to-back calls with the same scratch safe.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : 0.f;
  return warp_sum(v);
}
#endif

}  // namespace nn
}  // namespace mb
