#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "embedding.h"

namespace mb {
namespace {
using namespace nn;

__device__ __forceinline__ void record_bad(int32_t* bad, int64_t t) {
  if (bad) atomicMin(bad, t < 2147483647 ? (int32_t)t : 2147483646);
}

// dst[0..W) += v (f32 atomics; on sm_90 as two float4 vector atomics, a quarter of the instructions).
template <int W> __device__ __forceinline__ void add_row(float* dst, const float* v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (W == 8) {
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
    atomicAdd(reinterpret_cast<float4*>(dst + 4), make_float4(v[4], v[5], v[6], v[7]));
    return;
  } else
#endif
  {
#pragma unroll
    for (int k = 0; k < W; ++k) atomicAdd(dst + k, v[k]);
  }
}

// One block per token (grid-stride); a bad id zeroes its row.
template <Dtype Wt, Dtype O, int W> __global__ void embedding_fwd_kernel(EmbeddingParams p) {
  const int64_t H = p.hidden;
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const int32_t id = p.ids[t];
    const bool ok = id >= 0 && id < p.vocab;
    if (!ok && threadIdx.x == 0) record_bad(p.bad, t);
    const int64_t src = (int64_t)(ok ? id : 0) * H, dst = t * H;
    for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
      float v[W];
      if (ok) ldv<Wt, W>(p.weight, src + c, v);
      else
#pragma unroll
        for (int k = 0; k < W; ++k) v[k] = 0.f;
      stv<O, W>(p.out, dst + c, v);
    }
  }
}

template <Dtype D, int W> __global__ void embedding_bwd_kernel(EmbeddingParams p) {
  const int64_t H = p.hidden;
  for (int64_t t = blockIdx.x; t < p.n; t += gridDim.x) {
    const int32_t id = p.ids[t];
    if (id < 0 || id >= p.vocab) {
      if (threadIdx.x == 0) record_bad(p.bad, t);
      continue;
    }
    float* dst = p.dweight + (int64_t)id * H;
    for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
      float v[W];
      ldv<D, W>(p.dy, t * H + c, v);
      add_row<W>(dst + c, v);
    }
  }
}

int threads_for(int64_t H, int W) {
  int64_t t = ((H + W - 1) / W + 31) / 32 * 32;
  return (int)std::min<int64_t>(256, std::max<int64_t>(32, t));
}
unsigned grid_for(int64_t n) { return (unsigned)std::max<int64_t>(1, std::min<int64_t>(n, 1 << 20)); }

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

void embedding_cuda(const EmbeddingParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  const bool vec = p.hidden % 8 == 0 && aligned16(p.weight) && aligned16(p.out);
  MB_DISPATCH_FLOAT(p.w_dtype, Wt, {
    MB_DISPATCH_FLOAT(p.out_dtype, O, {
      if (vec) embedding_fwd_kernel<Wt, O, 8><<<grid_for(p.n), threads_for(p.hidden, 8), 0, s>>>(p);
      else embedding_fwd_kernel<Wt, O, 1><<<grid_for(p.n), threads_for(p.hidden, 1), 0, s>>>(p);
    });
  });
  check_launch("embedding");
}

void embedding_bwd_cuda(const EmbeddingParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  const bool vec = p.hidden % 8 == 0 && aligned16(p.dy) && aligned16(p.dweight);
  MB_DISPATCH_FLOAT(p.dy_dtype, D, {
    if (vec) embedding_bwd_kernel<D, 8><<<grid_for(p.n), threads_for(p.hidden, 8), 0, s>>>(p);
    else embedding_bwd_kernel<D, 1><<<grid_for(p.n), threads_for(p.hidden, 1), 0, s>>>(p);
  });
  check_launch("embeddingBackward");
}

}  // namespace mb
