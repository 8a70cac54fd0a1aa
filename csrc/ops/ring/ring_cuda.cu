#include <string>

#include "../../common/error.h"
#include "../tensor/tensor_ops.h"
#include "ring.h"

namespace mb {
namespace {

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 32) blocks = 65535 * 32;
  return (unsigned)(blocks < 1 ? 1 : blocks);
}

// One warp per (b, i, h) row: every lane reads both lse values before lane 0 writes the new one.
__global__ void ring_merge_kernel(RingMergeParams p) {
  const int64_t nrows = p.batch * p.rows * p.heads;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32; r < nrows; r += warps) {
    const int64_t h = r % p.heads, i = (r / p.heads) % p.rows, b = r / (p.heads * p.rows);
    const int64_t li = (b * p.heads + h) * p.rows + i;
    const float la = p.lse_acc[li], lb = p.lse_blk[li];
    if (lb == -INFINITY) continue;  // uniform across the warp
    float wa, wb, l;
    ring_merge_weights(la, lb, &wa, &wb, &l);
    float* o = p.out_acc + r * p.dim;
    const int64_t base = r * p.dim;
    for (int64_t d = lane; d < p.dim; d += 32)
      o[d] = __fadd_rn(__fmul_rn(wa, o[d]), __fmul_rn(wb, load_as_f32(p.out_blk, p.out_dtype, base + d)));
    __syncwarp();
    if (lane == 0) p.lse_acc[li] = l;
  }
}

__global__ void row_convert_kernel(RowCopyParams p) {
  const int64_t n = p.rows * p.inner, total = p.outer * n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t o = i / n, k = i % n;
    store_from_f32(p.dst, p.dst_dtype, (o * p.dst_rows + p.dst_row0) * p.inner + k,
                   load_as_f32(p.src, p.src_dtype, (o * p.src_rows + p.src_row0) * p.inner + k));
  }
}

__global__ void maximum_kernel(MaximumParams p) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x) {
    const float x = load_as_f32(p.a, p.a_dtype, i), y = load_as_f32(p.b, p.b_dtype, i);
    store_from_f32(p.out, p.out_dtype, i, (x != x || x > y) ? x : y);
  }
}

}  // namespace

void ring_merge_cuda(const RingMergeParams& p, cudaStream_t s) {
  const int64_t nrows = p.batch * p.rows * p.heads;
  if (nrows == 0) return;
  const int threads = 256;  // 8 rows per block
  ring_merge_kernel<<<grid_for(nrows * 32, threads), threads, 0, s>>>(p);
  check_launch("ring merge");
}

void row_copy_cuda(const RowCopyParams& p, cudaStream_t s) {
  if (p.rows == 0 || p.inner == 0 || p.outer == 0) return;
  if (p.src_dtype == p.dst_dtype) {
    const size_t es = dtype_size(p.src_dtype);
    const size_t width = (size_t)(p.rows * p.inner) * es;
    const size_t spitch = (size_t)(p.src_rows * p.inner) * es, dpitch = (size_t)(p.dst_rows * p.inner) * es;
    const char* src = static_cast<const char*>(p.src) + (size_t)(p.src_row0 * p.inner) * es;
    char* dst = static_cast<char*>(p.dst) + (size_t)(p.dst_row0 * p.inner) * es;
    cudaError_t e = cudaSuccess;
    // cudaMemcpy2D rejects pitches above cudaDevAttrMaxPitch (2^31 − 1 bytes): a 512K-token
    // [1, S, 32, 128] bf16 tensor is 4 GiB, so one outer index is a plain copy, and huge pitches
    // are copied row block by row block.
    constexpr size_t kMaxPitch = 2147483647u;
    if (p.outer == 1) {
      e = cudaMemcpyAsync(dst, src, width, cudaMemcpyDeviceToDevice, s);
    } else if (spitch <= kMaxPitch && dpitch <= kMaxPitch) {
      e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, (size_t)p.outer, cudaMemcpyDeviceToDevice, s);
    } else {
      for (int64_t o = 0; o < p.outer && e == cudaSuccess; ++o)
        e = cudaMemcpyAsync(dst + o * dpitch, src + o * spitch, width, cudaMemcpyDeviceToDevice, s);
    }
    if (e != cudaSuccess) throw Error("ERR_CUDA", std::string("row copy: ") + cudaGetErrorString(e));
    return;
  }
  row_convert_kernel<<<grid_for(p.outer * p.rows * p.inner, 256), 256, 0, s>>>(p);
  check_launch("row copy");
}

void maximum_cuda(const MaximumParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  maximum_kernel<<<grid_for(p.n, 256), 256, 0, s>>>(p);
  check_launch("maximum");
}

}  // namespace mb
