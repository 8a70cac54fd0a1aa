#include "../../common/error.h"
#include "../../common/philox.h"
#include "tensor_ops.h"

namespace mb {
namespace {

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return (unsigned)(b < 65535 * 64 ? (b < 1 ? 1 : b) : 65535 * 64);  // grid-stride beyond this
}

__global__ void fill_kernel(FillParams p, float fv, int32_t iv) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x) {
    if (p.dtype == Dtype::I32) ((int32_t*)p.dst)[i] = iv;
    else store_from_f32(p.dst, p.dtype, i, fv);
  }
}

__global__ void cast_kernel(CastParams p) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x)
    store_from_f32(p.dst, p.dst_dtype, i, load_as_f32(p.src, p.src_dtype, i));
}

__global__ void rand_kernel(RandParams p) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x) {
    float v;
    if (p.kind == RandKind::Normal) v = rng::fma(p.b, rng::normal_at(p.seed, (uint64_t)i), p.a);
    else v = rng::fma(rng::add(p.b, -p.a), rng::uniform_at(p.seed, (uint64_t)i), p.a);
    store_from_f32(p.dst, p.dtype, i, v);
  }
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

void fill_cuda(const FillParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  fill_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p, (float)p.value, (int32_t)p.value);
  check_launch("fill");
}

void cast_cuda(const CastParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  if (p.src_dtype == p.dst_dtype) {
    cudaError_t e = cudaMemcpyAsync(p.dst, p.src, (size_t)p.n * dtype_size(p.src_dtype), cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) throw Error("ERR_CUDA", std::string("copy: ") + cudaGetErrorString(e));
    return;
  }
  cast_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  check_launch("cast");
}

void rand_cuda(const RandParams& p, cudaStream_t s) {
  if (p.n == 0) return;
  rand_kernel<<<blocks_for(p.n), kThreads, 0, s>>>(p);
  check_launch("rand");
}

}  // namespace mb
