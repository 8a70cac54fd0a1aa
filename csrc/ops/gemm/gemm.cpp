// GEMM validity (the one place that decides what is a valid problem) and the backend-independent
// problem folding. Compiled in every build.
#include <algorithm>
#include <cmath>
#include <string>

#include "../../common/error.h"
#include "gemm.h"

namespace mb {
namespace {
constexpr int64_t kMax = int64_t(1) << 60;  // element counts/offsets stay far from int64 overflow

int64_t mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r) || r > kMax) throw Error("ERR_SHAPE", std::string("gemm: ") + what + " overflows");
  return r;
}
int64_t add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r) || r > kMax) throw Error("ERR_SHAPE", std::string("gemm: ") + what + " overflows");
  return r;
}
bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }
}  // namespace

int64_t gemm_extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  if (rows <= 0 || cols <= 0 || batch <= 0) return 0;
  int64_t e = add(mul(rows - 1, ld, "extent"), cols, "extent");
  return add(e, mul(batch - 1, stride, "extent"), "extent");
}

void gemm_check(const GemmParams& p, bool out_allocated) {
  auto fail = [](const char* code, const std::string& m) { throw Error(code, "gemm: " + m); };
  if (!is_float(p.a_dtype)) fail("ERR_DTYPE", std::string("a must be f32, f16 or bf16 (got ") + dtype_name(p.a_dtype) + ")");
  if (!is_float(p.b_dtype)) fail("ERR_DTYPE", std::string("b must be f32, f16 or bf16 (got ") + dtype_name(p.b_dtype) + ")");
  if (!is_float(p.out_dtype)) fail("ERR_DTYPE", std::string("out must be f32, f16 or bf16 (got ") + dtype_name(p.out_dtype) + ")");
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.batch < 0) fail("ERR_SHAPE", "negative size");
  if (p.m > kMax || p.n > kMax || p.k > kMax || p.batch > kMax) fail("ERR_SHAPE", "size too large");
  if (p.device < 0 && p.backend == GemmBackend::CublasLt) fail("ERR_UNSUPPORTED", "backend 'cublaslt' needs a CUDA device");
  if (!std::isfinite(p.alpha) || !std::isfinite(p.beta)) fail("ERR_ARG", "alpha and beta must be finite");
  const int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  if (p.lda < std::max<int64_t>(1, a_cols)) fail("ERR_SHAPE", "lda " + std::to_string(p.lda) + " < row length " + std::to_string(a_cols));
  if (p.ldb < std::max<int64_t>(1, b_cols)) fail("ERR_SHAPE", "ldb " + std::to_string(p.ldb) + " < row length " + std::to_string(b_cols));
  if (p.ldo < std::max<int64_t>(1, p.n)) fail("ERR_SHAPE", "ldo " + std::to_string(p.ldo) + " < row length " + std::to_string(p.n));
  if (p.stride_a < 0 || p.stride_b < 0 || p.stride_out < 0) fail("ERR_SHAPE", "negative batch stride");
  const int64_t ea = gemm_extent(a_rows, a_cols, p.lda, p.batch, p.stride_a);
  const int64_t eb = gemm_extent(b_rows, b_cols, p.ldb, p.batch, p.stride_b);
  const int64_t eo = gemm_extent(p.m, p.n, p.ldo, p.batch, p.stride_out);
  // Batches of out must not overlap each other (every element is written exactly once).
  if (p.batch > 1 && p.m > 0 && p.n > 0 && p.stride_out < gemm_extent(p.m, p.n, p.ldo, 1, 0))
    fail("ERR_SHAPE", "out batch stride smaller than one output matrix");
  if (p.m > 0 && p.n > 0 && p.batch > 0) {
    if (!p.out && out_allocated) fail("ERR_ARG", "out is null");
    if (p.k > 0 && (!p.a || !p.b)) fail("ERR_ARG", "a or b is null");
  }
  // out must not overlap either input: the kernels read inputs while writing out.
  auto overlap = [](const void* x, int64_t nx, const void* y, int64_t ny) {
    if (!x || !y || nx == 0 || ny == 0) return false;
    const char *x0 = (const char*)x, *y0 = (const char*)y;
    return x0 < y0 + ny && y0 < x0 + nx;
  };
  const int64_t ob = eo * dtype_size(p.out_dtype);
  if (p.k > 0 && overlap(p.out, ob, p.a, ea * dtype_size(p.a_dtype))) fail("ERR_ARG", "out overlaps a");
  if (p.k > 0 && overlap(p.out, ob, p.b, eb * dtype_size(p.b_dtype))) fail("ERR_ARG", "out overlaps b");
}

GemmParams gemm_fold(const GemmParams& p) {
  GemmParams q = p;
  // A broadcast B with a batch of A row blocks laid end to end (and out likewise) is one taller GEMM.
  if (q.batch > 1 && q.stride_b == 0 && !q.trans_a && q.stride_a == q.m * q.lda && q.stride_out == q.m * q.ldo) {
    q.m *= q.batch;
    q.batch = 1;
    q.stride_a = q.stride_out = 0;
  }
  return q;
}

}  // namespace mb

#if !defined(MEGABEAM_CUDA)
namespace mb {
GemmInfo gemm_info() {
  GemmInfo g;
  g.backend = "cpu";
  g.error = "built without CUDA";
  return g;
}
}  // namespace mb
#endif
