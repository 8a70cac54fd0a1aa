// General matrix multiply, row-major, batched, with fp32 accumulation:
//   out[b] = alpha · op(A[b]) · op(B[b]) + beta · out[b]        b in [0, batch)
// op(A) is [m, k]: A stored [m, k] (lda >= k), or [k, m] with trans_a (lda >= m); likewise op(B) is
// [k, n]: B stored [k, n], or [n, k] with trans_b. out is [m, n] (ldo >= n). Batch strides are in
// elements; a stride of 0 broadcasts that operand over the batch (out's must be non-zero when batch > 1).
// A, B and out may each be f32, f16 or bf16 (independently); inputs are widened to f32, products summed
// in f32, and each output element is rounded once. beta == 0 means out is not read (NaN in it is
// ignored, as in BLAS).
//
// Backends: CPU (blocked, packed, AVX2+FMA micro-kernel picked at run time, parallel_for); CUDA via
// cuBLASLt loaded at run time (gemm_cublaslt.cu), else the builtin kernels (gemm_cuda.cu: mma.sync
// tensor cores for bf16/f16, SIMT for the rest). MEGABEAM_GEMM=builtin forces the builtin.
#pragma once
#include <cstdint>
#include <string>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

enum class GemmBackend : int { Auto = 0, Builtin = 1, CublasLt = 2 };

struct GemmParams {
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
  Dtype a_dtype = Dtype::F32, b_dtype = Dtype::F32, out_dtype = Dtype::F32;
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  int64_t lda = 0, ldb = 0, ldo = 0;  // row strides in elements
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_out = 0;  // batch strides in elements (0 = broadcast)
  float alpha = 1.f, beta = 0.f;
  int device = -1;  // -1 CPU, else the CUDA device (handles and workspace are per device)
  // CUDA backend: auto (cuBLASLt when loaded and it takes the problem, else builtin), or forced (tests,
  // benchmarks). Forcing cuBLASLt where it is missing or cannot take the problem is ERR_UNSUPPORTED.
  GemmBackend backend = GemmBackend::Auto;
};

// The one validity check (no GPU needed): dtypes, sizes, leading dimensions, strides, overflow,
// finite alpha/beta, and that out overlaps neither input. Throws mb::Error (ERR_DTYPE/ERR_SHAPE/ERR_ARG).
// out_allocated = false: out is still to be allocated (p.out is null; no pointer or overlap checks on it).
void gemm_check(const GemmParams& p, bool out_allocated = true);
// Rewrites an equivalent problem with fewer, larger GEMMs (a broadcast B over a contiguous batch of
// A rows is one [batch·m, k] x [k, n] product). Only call after gemm_check.
GemmParams gemm_fold(const GemmParams& p);

// Element extent [first, last] touched by an operand (for overlap checks and bounds). rows x cols with
// row stride ld, batch with stride; returns last+1 (0 when empty).
int64_t gemm_extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride);

void gemm_cpu(const GemmParams& p);
#if defined(MEGABEAM_CUDA)
void gemm_cuda(const GemmParams& p, cudaStream_t s);  // cuBLASLt or builtin (see gemm_backend)
void gemm_builtin_cuda(const GemmParams& p, cudaStream_t s);
// cuBLASLt (gemm_cublaslt.cu). gemm_cublaslt returns false when it cannot take this problem (then the
// caller falls back to the builtin, or reports `why` when cuBLASLt was forced).
bool gemm_cublaslt(const GemmParams& p, cudaStream_t s, std::string* why = nullptr);
#endif

struct GemmInfo {
  bool found = false;        // cuBLASLt loaded
  std::string backend;       // "cublaslt" | "builtin" | "cpu"
  std::string path;          // the library file that was loaded
  std::string version;       // cublasLtGetVersion(), e.g. "13.0.2" (major*10000 + minor*100 + patch)
  std::string error;         // why it was not found / forced builtin
};
GemmInfo gemm_info();  // loads cuBLASLt on first call (CUDA builds); "cpu" without CUDA

}  // namespace mb
