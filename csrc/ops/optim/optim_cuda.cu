#include "../../common/error.h"
#include "../tensor/tensor_ops.h"
#include "optim.h"

namespace mb {
namespace {

// Explicit round-to-nearest ops: -ffp-contract=off on the host, so no FMA here either, and the CPU and
// CUDA updates agree bit for bit on the same inputs.
__global__ void adamw_kernel(AdamWParams p) {
  const float clip = adamw_clip(p.sumsq, p.max_norm);
  const float decay = __fsub_rn(1.f, __fmul_rn(p.lr, p.weight_decay));
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x) {
    float g = __fmul_rn(__fmul_rn(load_as_f32(p.grad, p.grad_dtype, i), p.grad_scale), clip);
    uint16_t* hi = static_cast<uint16_t*>(p.param);
    float w = p.master ? p.master[i] : p.master_lo ? adamw_join_master(hi[i], p.master_lo[i]) : load_as_f32(p.param, p.param_dtype, i);
    w = __fmul_rn(w, decay);
    float m = __fadd_rn(__fmul_rn(p.beta1, p.m[i]), __fmul_rn(__fsub_rn(1.f, p.beta1), g));
    float v = __fadd_rn(__fmul_rn(p.beta2, p.v[i]), __fmul_rn(__fsub_rn(1.f, p.beta2), __fmul_rn(g, g)));
    p.m[i] = m;
    p.v[i] = v;
    float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, p.bias2)), p.eps);
    w = __fsub_rn(w, __fmul_rn(p.lr, __fdiv_rn(__fdiv_rn(m, p.bias1), den)));
    if (p.master_lo) { adamw_split_master(w, &hi[i], &p.master_lo[i]); continue; }
    if (p.master) p.master[i] = w;
    store_from_f32(p.param, p.param_dtype, i, w);
  }
}

// Σx² into *out, deterministically: a float atomicAdd per block would make the sum (and every clipped
// update after it) depend on block completion order, so two runs of the same step could differ in the last
// bit. Each block writes its partial; the last block to finish adds them in index order. The scratch is
// per device (module globals) and launches on a device are serialised on its stream.
constexpr int kSumsqMaxBlocks = 4096;
__device__ float g_sumsq_part[kSumsqMaxBlocks];
__device__ unsigned int g_sumsq_done;

__device__ float block_sum(float s, float* warp_sums) {
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < (blockDim.x >> 5) ? warp_sums[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  }
  return s;  // valid in thread 0
}

__global__ void sumsq_kernel(SumsqParams p) {
  __shared__ float warp_sums[32];
  __shared__ bool last;
  float s = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x) {
    float x = load_as_f32(p.x, p.dtype, i);
    s += x * x;
  }
  s = block_sum(s, warp_sums);
  if (threadIdx.x == 0) {
    g_sumsq_part[blockIdx.x] = s;
    __threadfence();  // the partial is visible before the count says so
    last = atomicAdd(&g_sumsq_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  float t = 0;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) t += ((volatile float*)g_sumsq_part)[b];
  __syncthreads();  // warp_sums is reused
  t = block_sum(t, warp_sums);
  if (threadIdx.x == 0) {
    *p.out += t;
    g_sumsq_done = 0;  // ready for the next launch on this device
  }
}

unsigned grid_for(int64_t n, int threads, int64_t cap) {
  int64_t b = (n + threads - 1) / threads;
  if (b > cap) b = cap;
  return (unsigned)(b < 1 ? 1 : b);
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

void adamw_cuda(const AdamWParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  adamw_kernel<<<grid_for(p.n, 256, 65535 * 16), 256, 0, s>>>(p);
  check_launch("adamw");
}

void sumsq_cuda(const SumsqParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  sumsq_kernel<<<grid_for(p.n, 256, kSumsqMaxBlocks), 256, 0, s>>>(p);
  check_launch("sumsq");
}

}  // namespace mb
