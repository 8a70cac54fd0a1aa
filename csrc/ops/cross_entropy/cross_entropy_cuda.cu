#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "cross_entropy.h"

namespace mb {
namespace {
using namespace nn;

// Merge two (max, sum-of-exp relative to max) pairs; an empty side is (-inf, 0).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) { m = mm; s = 0.f; return; }
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

// One block per row (grid-stride over rows).
template <Dtype X, int W> __global__ void __launch_bounds__(512) ce_kernel(CrossEntropyParams p) {
  __shared__ float sm[32], ss[32];
  const int64_t V = p.vocab;
  float scale = p.grad_scale;
  if (p.count) scale /= (float)max(*p.count, 1);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = row * V;
    const int32_t label = p.labels[row];
    const bool bad = label != p.ignore_index && (label < 0 || label >= V);
    if (bad && threadIdx.x == 0 && p.bad) atomicMin(p.bad, row < 2147483647 ? (int32_t)row : 2147483646);
    if (label == p.ignore_index || bad) {
      if (threadIdx.x == 0) p.losses[row] = 0.f;
      if (p.dlogits) {
        float z[W];
#pragma unroll
        for (int k = 0; k < W; ++k) z[k] = 0.f;
        for (int64_t c = (int64_t)threadIdx.x * W; c < V; c += (int64_t)blockDim.x * W) stv<X, W>(p.dlogits, base + c, z);
      }
      continue;
    }
    // The label's logit is read before the reductions' barriers: after them the row may be overwritten.
    const float xl = threadIdx.x == 0 ? ld<X>(p.logits, base + label) : 0.f;
    float m = -INFINITY, s = 0.f;
    for (int64_t c = (int64_t)threadIdx.x * W; c < V; c += (int64_t)blockDim.x * W) {
      float v[W];
      ldv<X, W>(p.logits, base + c, v);
      float cm = v[0];
#pragma unroll
      for (int k = 1; k < W; ++k) cm = fmaxf(cm, v[k]);
      const float nm = fmaxf(m, cm);
      float cs = 0.f;
      if (nm != -INFINITY)  // an all -inf prefix contributes nothing (and -inf - -inf would be NaN)
#pragma unroll
        for (int k = 0; k < W; ++k) cs += __expf(v[k] - nm);
      s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + cs;
      m = nm;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // previous row's readers of sm/ss are done
    if (lane == 0) { sm[warp] = m; ss[warp] = s; }
    __syncthreads();
    m = lane < nw ? sm[lane] : -INFINITY;
    s = lane < nw ? ss[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
    }
    if (threadIdx.x == 0) p.losses[row] = (m + logf(s)) - xl;
    if (p.dlogits) {
      const float inv = 1.0f / s;
      for (int64_t c = (int64_t)threadIdx.x * W; c < V; c += (int64_t)blockDim.x * W) {
        float v[W];
        ldv<X, W>(p.logits, base + c, v);
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float q = __expf(v[k] - m) * inv;
          v[k] = scale * (c + k == label ? q - 1.0f : q);
        }
        stv<X, W>(p.dlogits, base + c, v);
      }
    }
  }
}

__global__ void loss_count_kernel(LossReduceParams p) {
  __shared__ int part[32];
  int c = 0;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) c += p.labels[i] != p.ignore_index;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += part[w];
    *p.count_out = (int32_t)(t < 2147483647 ? t : 2147483647);
  }
}

// One block, fixed thread->element assignment and a fixed tree: the same bits on every run.
__global__ void loss_mean_kernel(LossReduceParams p) {
  __shared__ double part[1024];
  double s = 0;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) s += p.losses[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double d = p.count ? (double)max(*p.count, 1) : p.divisor;
    *p.mean_out = (float)(part[0] / d);
  }
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

void cross_entropy_cuda(const CrossEntropyParams& p, cudaStream_t s) {
  if (p.rows == 0) return;
  const bool vec = p.vocab % 8 == 0 && aligned16(p.logits) && (!p.dlogits || aligned16(p.dlogits));
  const int W = vec ? 8 : 1;
  int64_t t = ((p.vocab + W - 1) / W + 7) / 8;  // ~8 vector slots per thread
  t = std::min<int64_t>(512, std::max<int64_t>(64, (t + 31) / 32 * 32));
  const unsigned grid = (unsigned)std::min<int64_t>(p.rows, 1 << 20);
  MB_DISPATCH_FLOAT(p.dtype, X, {
    if (vec) ce_kernel<X, 8><<<grid, (unsigned)t, 0, s>>>(p);
    else ce_kernel<X, 1><<<grid, (unsigned)t, 0, s>>>(p);
  });
  check_launch("crossEntropy");
}

void loss_count_cuda(const LossReduceParams& p, cudaStream_t s) {
  loss_count_kernel<<<1, 1024, 0, s>>>(p);
  check_launch("lossCount");
}

void loss_mean_cuda(const LossReduceParams& p, cudaStream_t s) {
  loss_mean_kernel<<<1, 1024, 0, s>>>(p);
  check_launch("lossMean");
}

}  // namespace mb
