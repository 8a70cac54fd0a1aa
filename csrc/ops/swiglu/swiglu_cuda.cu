#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "swiglu.h"

namespace mb {
namespace {
using namespace nn;

// Grid-stride over W-element groups (W = 8: 16-byte accesses); the tail (n % 8) is done element-wise.
template <Dtype X, int W> __global__ void swiglu_fwd_kernel(SwigluParams p, int64_t groups) {
  for (int64_t gi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; gi < groups; gi += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = gi * W;
    float g[W], u[W];
    ldv<X, W>(p.gate, i, g);
    ldv<X, W>(p.up, i, u);
#pragma unroll
    for (int k = 0; k < W; ++k) g[k] = g[k] * swiglu_sigmoid(g[k]) * u[k];
    stv<X, W>(p.y, i, g);
  }
}
template <Dtype X, int W> __global__ void swiglu_bwd_kernel(SwigluParams p, int64_t groups) {
  for (int64_t gi = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; gi < groups; gi += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = gi * W;
    float g[W], u[W], dy[W], dg[W], du[W];
    ldv<X, W>(p.gate, i, g);
    ldv<X, W>(p.up, i, u);
    ldv<X, W>(p.dy, i, dy);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float sg = swiglu_sigmoid(g[k]);
      du[k] = dy[k] * (g[k] * sg);
      dg[k] = dy[k] * u[k] * sg * (1.0f + g[k] * (1.0f - sg));
    }
    stv<X, W>(p.dup, i, du);
    stv<X, W>(p.dgate, i, dg);
  }
}

unsigned grid_for(int64_t groups) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((groups + 255) / 256, 132 * 32));
}

template <bool BWD> void launch(const SwigluParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  bool vec = aligned16(p.gate) && aligned16(p.up) && aligned16(BWD ? p.dy : p.gate);
  vec = vec && (BWD ? aligned16(p.dgate) && aligned16(p.dup) : aligned16(p.y));
  MB_DISPATCH_FLOAT(p.dtype, X, {
    int64_t done = 0;
    if (vec && p.n >= 8) {
      const int64_t groups = p.n / 8;
      if (BWD) swiglu_bwd_kernel<X, 8><<<grid_for(groups), 256, 0, s>>>(p, groups);
      else swiglu_fwd_kernel<X, 8><<<grid_for(groups), 256, 0, s>>>(p, groups);
      done = groups * 8;
    }
    if (done < p.n) {
      // Tail (or the unaligned case): shift every pointer by `done` elements, run element-wise.
      const int sz = dtype_size(p.dtype);
      SwigluParams q = p;
      auto sh = [&](const void* ptr) { return ptr ? (void*)((const char*)ptr + done * sz) : nullptr; };
      q.gate = sh(p.gate); q.up = sh(p.up); q.dy = sh(p.dy); q.y = sh(p.y); q.dgate = sh(p.dgate); q.dup = sh(p.dup);
      q.n = p.n - done;
      if (BWD) swiglu_bwd_kernel<X, 1><<<grid_for(q.n), 256, 0, s>>>(q, q.n);
      else swiglu_fwd_kernel<X, 1><<<grid_for(q.n), 256, 0, s>>>(q, q.n);
    }
  });
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(BWD ? "swigluBackward: " : "swiglu: ") + cudaGetErrorString(e));
}
}  // namespace

void swiglu_cuda(const SwigluParams& p, cudaStream_t s) { launch<false>(p, s); }
void swiglu_bwd_cuda(const SwigluParams& p, cudaStream_t s) { launch<true>(p, s); }

}  // namespace mb
