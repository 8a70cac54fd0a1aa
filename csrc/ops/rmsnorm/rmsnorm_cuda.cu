#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "rmsnorm.h"

namespace mb {
namespace {
using namespace nn;

// One block per row (grid-stride over rows). Pass 1 forms h (fused: x + residual, stored rounded) and
// the sum of squares; pass 2 writes y. With NV > 0 the row stays in registers between the passes (NV
// vector slots per thread: rows up to 512 threads x NV x W elements), so it is read from memory once;
// NV == 0 (longer rows) re-reads it (h from the thread's own writes, or x) from L1/L2. Each thread touches
// the same columns in both passes, so no barrier is needed between them.
template <Dtype X, Dtype Wt, int W, bool RES, int NV>
__global__ void __launch_bounds__(512) rmsnorm_fwd_kernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t H = p.hidden;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int64_t base = row * H;
    float ss = 0.f;
    if constexpr (NV > 0) {
      float a[NV][W];
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int64_t c = ((int64_t)v * blockDim.x + threadIdx.x) * W;
        if (c < H) {
          ldv<X, W>(p.x, base + c, a[v]);
          if constexpr (RES) {
            float r[W];
            ldv<X, W>(p.residual, base + c, r);
#pragma unroll
            for (int k = 0; k < W; ++k) a[v][k] = round_to<X>(a[v][k] + r[k]);
            stv<X, W>(p.h, base + c, a[v]);
          }
#pragma unroll
          for (int k = 0; k < W; ++k) ss += a[v][k] * a[v][k];
        }
      }
      ss = block_sum(ss, scratch);
      const float rs = 1.0f / sqrtf(ss / (float)H + p.eps);
      if (threadIdx.x == 0) p.rstd[row] = rs;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int64_t c = ((int64_t)v * blockDim.x + threadIdx.x) * W;
        if (c < H) {
          float w[W];
          ldv<Wt, W>(p.weight, c, w);
#pragma unroll
          for (int k = 0; k < W; ++k) w[k] = a[v][k] * rs * w[k];
          stv<X, W>(p.y, base + c, w);
        }
      }
    } else {
      const void* src = RES ? p.h : p.x;
      for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
        float a[W];
        ldv<X, W>(p.x, base + c, a);
        if constexpr (RES) {
          float r[W];
          ldv<X, W>(p.residual, base + c, r);
#pragma unroll
          for (int k = 0; k < W; ++k) a[k] = round_to<X>(a[k] + r[k]);
          stv<X, W>(p.h, base + c, a);
        }
#pragma unroll
        for (int k = 0; k < W; ++k) ss += a[k] * a[k];
      }
      ss = block_sum(ss, scratch);
      const float rs = 1.0f / sqrtf(ss / (float)H + p.eps);
      if (threadIdx.x == 0) p.rstd[row] = rs;
      for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
        float a[W], w[W];
        ldv<X, W>(src, base + c, a);
        ldv<Wt, W>(p.weight, c, w);
#pragma unroll
        for (int k = 0; k < W; ++k) a[k] = a[k] * rs * w[k];
        stv<X, W>(p.y, base + c, a);
      }
    }
  }
}

// Blocks take fixed row ranges (row blocks as on the CPU); each thread owns its columns of the block's
// dweight partial in shared memory (no atomics), written out at the end and reduced by the next kernel.
template <Dtype X, Dtype Wt, Dtype DX, int W, bool ACC>
__global__ void __launch_bounds__(512) rmsnorm_bwd_kernel(RmsNormBwdParams p, int64_t nb) {
  // dw holds column c + k of vector slot c / W at dw[k * S + c / W]: a warp's 32 consecutive slots hit 32
  // consecutive banks (column-major would put 8 threads on each of 4 banks for W = 8).
  extern __shared__ float dw[];
  __shared__ float scratch[32];
  const int64_t H = p.hidden, S = H / W;  // W = 8 only when H % 8 == 0
  for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W)
#pragma unroll
    for (int k = 0; k < W; ++k) dw[k * S + c / W] = 0.f;
  const int64_t r0 = p.rows * blockIdx.x / nb, r1 = p.rows * (blockIdx.x + 1) / nb;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t base = row * H;
    const float rs = p.rstd[row];
    float dot = 0.f;
    for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
      float dy[W], x[W], w[W];
      ldv<X, W>(p.dy, base + c, dy);
      ldv<X, W>(p.x, base + c, x);
      ldv<Wt, W>(p.weight, c, w);
#pragma unroll
      for (int k = 0; k < W; ++k) dot += dy[k] * w[k] * x[k];
    }
    dot = block_sum(dot, scratch);
    const float m = dot * rs / (float)H;
    for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W) {
      float dy[W], x[W], w[W], d[W];
      ldv<X, W>(p.dy, base + c, dy);
      ldv<X, W>(p.x, base + c, x);
      ldv<Wt, W>(p.weight, c, w);
      if constexpr (ACC) ldv<DX, W>(p.dx, base + c, d);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float xhat = x[k] * rs;
        const float v = rs * (dy[k] * w[k] - xhat * m);
        d[k] = ACC ? d[k] + v : v;
        dw[k * S + c / W] += dy[k] * xhat;
      }
      stv<DX, W>(p.dx, base + c, d);
    }
  }
  float* out = p.partial + (int64_t)blockIdx.x * H;
  for (int64_t c = (int64_t)threadIdx.x * W; c < H; c += (int64_t)blockDim.x * W)
#pragma unroll
    for (int k = 0; k < W; ++k) out[c + k] = dw[k * S + c / W];
}

// dweight[c] += sum over the nb block partials of column c. A block takes 32 columns; its 32 rows of
// threads each sum a fixed stride-32 subset of the partials (coalesced 128-byte rows), then one thread per
// column adds the 32 subtotals in order: fixed association, so the result is bit-reproducible.
__global__ void __launch_bounds__(1024) rmsnorm_dw_reduce(const float* partial, float* dweight, int64_t nb, int64_t H) {
  __shared__ float sub[32][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (c < H)
    for (int64_t b = threadIdx.y; b < nb; b += 32) s += partial[b * H + c];
  sub[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < H) {
    float t = 0.f;
    for (int y = 0; y < 32; ++y) t += sub[y][threadIdx.x];
    dweight[c] += t;
  }
}

int threads_for(int64_t H, int W) {
  int64_t per = (H + W - 1) / W;     // vector slots in a row
  int64_t t = (per + 3) / 4;         // ~4 slots per thread
  t = (t + 31) / 32 * 32;
  return (int)std::min<int64_t>(512, std::max<int64_t>(64, t));
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

template <Dtype X, Dtype Wt, int W>
void fwd_launch(const RmsNormParams& p, cudaStream_t s) {
  const int t = threads_for(p.hidden, W);
  const unsigned grid = (unsigned)std::min<int64_t>(p.rows, 1 << 20);
  constexpr int NV = 4;  // threads_for aims at ~4 slots per thread: rows up to 512*4*W stay in registers
  const bool regs = (p.hidden + W - 1) / W <= (int64_t)t * NV;
  if (regs) {
    if (p.residual) rmsnorm_fwd_kernel<X, Wt, W, true, NV><<<grid, t, 0, s>>>(p);
    else rmsnorm_fwd_kernel<X, Wt, W, false, NV><<<grid, t, 0, s>>>(p);
  } else {
    if (p.residual) rmsnorm_fwd_kernel<X, Wt, W, true, 0><<<grid, t, 0, s>>>(p);
    else rmsnorm_fwd_kernel<X, Wt, W, false, 0><<<grid, t, 0, s>>>(p);
  }
}

template <Dtype X, Dtype Wt, Dtype DX, int W, bool ACC>
void bwd_launch(const RmsNormBwdParams& p, cudaStream_t s) {
  const int64_t nb = rmsnorm_bwd_blocks(p.rows, true);
  const size_t smem = (size_t)p.hidden * sizeof(float);
  auto k = rmsnorm_bwd_kernel<X, Wt, DX, W, ACC>;
  if (smem + 256 > 48 * 1024) {  // static scratch + dynamic must fit the default 48 KiB
    cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky: clear it so later launches do not report it
      throw Error("ERR_UNSUPPORTED", "rmsNormBackward: hidden size " + std::to_string(p.hidden) +
                                         " needs more shared memory than the device has (max about 56K)");
    }
  }
  k<<<(unsigned)nb, threads_for(p.hidden, W), smem, s>>>(p, nb);
  check_launch("rmsNormBackward");
  rmsnorm_dw_reduce<<<(unsigned)((p.hidden + 31) / 32), dim3(32, 32), 0, s>>>(p.partial, p.dweight, nb, p.hidden);
}

template <Dtype X, Dtype Wt, Dtype DX>
void bwd_dispatch(const RmsNormBwdParams& p, cudaStream_t s) {
  const bool vec = p.hidden % 8 == 0 && aligned16(p.dy) && aligned16(p.x) && aligned16(p.weight) && aligned16(p.dx);
  if (vec) {
    if (p.dx_accumulate) bwd_launch<X, Wt, DX, 8, true>(p, s); else bwd_launch<X, Wt, DX, 8, false>(p, s);
  } else {
    if (p.dx_accumulate) bwd_launch<X, Wt, DX, 1, true>(p, s); else bwd_launch<X, Wt, DX, 1, false>(p, s);
  }
}
}  // namespace

void rmsnorm_cuda(const RmsNormParams& p, cudaStream_t s) {
  if (p.rows == 0) return;
  const bool vec = p.hidden % 8 == 0 && aligned16(p.x) && aligned16(p.weight) && aligned16(p.y) &&
                   (!p.residual || (aligned16(p.residual) && aligned16(p.h)));
  MB_DISPATCH_FLOAT(p.dtype, X, {
    if (p.w_dtype == Dtype::F32) {
      if (vec) fwd_launch<X, Dtype::F32, 8>(p, s); else fwd_launch<X, Dtype::F32, 1>(p, s);
    } else {
      if (vec) fwd_launch<X, X, 8>(p, s); else fwd_launch<X, X, 1>(p, s);
    }
  });
  check_launch("rmsNorm");
}

void rmsnorm_bwd_cuda(const RmsNormBwdParams& p, cudaStream_t s) {
  if (p.rows == 0) return;
  MB_DISPATCH_FLOAT(p.dtype, X, {
    const bool wf = p.w_dtype == Dtype::F32, df = p.dx_dtype == Dtype::F32;
    if (wf && df) bwd_dispatch<X, Dtype::F32, Dtype::F32>(p, s);
    else if (wf) bwd_dispatch<X, Dtype::F32, X>(p, s);
    else if (df) bwd_dispatch<X, X, Dtype::F32>(p, s);
    else bwd_dispatch<X, X, X>(p, s);
  });
  check_launch("rmsNormBackward");
}

}  // namespace mb
