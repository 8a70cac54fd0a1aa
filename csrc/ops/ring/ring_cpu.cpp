#include <cmath>
#include <cstring>
#include <limits>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "../tensor/tensor_ops.h"
#include "ring.h"

namespace mb {

static bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }

static bool mul_ok(int64_t a, int64_t b) { return a >= 0 && b >= 0 && (b == 0 || a <= INT64_MAX / b); }

void ring_merge_check(const RingMergeParams& p) {
  if (!is_float(p.out_dtype)) throw Error("ERR_DTYPE", "ring merge: block out must be f32, f16 or bf16");
  if (p.batch < 0 || p.rows < 0 || p.heads < 0 || p.dim < 0) throw Error("ERR_SHAPE", "ring merge: negative size");
  if (!mul_ok(p.batch, p.rows) || !mul_ok(p.batch * p.rows, p.heads) || !mul_ok(p.batch * p.rows * p.heads, p.dim))
    throw Error("ERR_SHAPE", "ring merge: too many elements");
}

void row_copy_check(const RowCopyParams& p) {
  if (p.src_dtype != p.dst_dtype && (!is_float(p.src_dtype) || !is_float(p.dst_dtype)))
    throw Error("ERR_DTYPE", "row copy: dtypes differ and are not both float");
  if (p.outer < 0 || p.inner < 0 || p.rows < 0 || p.src_row0 < 0 || p.dst_row0 < 0 || p.src_rows < 0 || p.dst_rows < 0)
    throw Error("ERR_SHAPE", "row copy: negative size or start");
  if (p.src_row0 > p.src_rows - p.rows || p.dst_row0 > p.dst_rows - p.rows)
    throw Error("ERR_SHAPE", "row copy: rows run past the end of src or dst");
  if (!mul_ok(p.outer, p.src_rows) || !mul_ok(p.outer * p.src_rows, p.inner) || !mul_ok(p.outer, p.dst_rows) ||
      !mul_ok(p.outer * p.dst_rows, p.inner))
    throw Error("ERR_SHAPE", "row copy: too many elements");
}

void maximum_check(const MaximumParams& p) {
  if (!is_float(p.a_dtype) || !is_float(p.b_dtype) || !is_float(p.out_dtype))
    throw Error("ERR_DTYPE", "maximum takes f32, f16 or bf16 tensors");
  if (p.n < 0) throw Error("ERR_SHAPE", "maximum: negative element count");
}

void ring_merge_cpu(const RingMergeParams& p) {
  const int64_t nrows = p.batch * p.rows * p.heads;  // (b, i, h) in out's order
  parallel_for(nrows, 256, [&](int64_t b0, int64_t e0) {
    for (int64_t r = b0; r < e0; ++r) {
      const int64_t h = r % p.heads, i = (r / p.heads) % p.rows, b = r / (p.heads * p.rows);
      const int64_t li = (b * p.heads + h) * p.rows + i;
      const float la = p.lse_acc[li], lb = p.lse_blk[li];
      if (lb == -INFINITY) continue;
      float wa, wb, l;
      ring_merge_weights(la, lb, &wa, &wb, &l);
      float* o = p.out_acc + r * p.dim;
      const int64_t base = r * p.dim;
      for (int64_t d = 0; d < p.dim; ++d) o[d] = wa * o[d] + wb * load_as_f32(p.out_blk, p.out_dtype, base + d);
      p.lse_acc[li] = l;
    }
  });
}

void row_copy_cpu(const RowCopyParams& p) {
  if (p.rows == 0 || p.inner == 0 || p.outer == 0) return;
  const int64_t n = p.rows * p.inner;
  if (p.src_dtype == p.dst_dtype) {
    const size_t es = dtype_size(p.src_dtype);
    for (int64_t o = 0; o < p.outer; ++o)
      std::memcpy(static_cast<char*>(p.dst) + ((o * p.dst_rows + p.dst_row0) * p.inner) * es,
                  static_cast<const char*>(p.src) + ((o * p.src_rows + p.src_row0) * p.inner) * es, (size_t)n * es);
    return;
  }
  parallel_for(p.outer * n, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t o = i / n, k = i % n;
      store_from_f32(p.dst, p.dst_dtype, (o * p.dst_rows + p.dst_row0) * p.inner + k,
                     load_as_f32(p.src, p.src_dtype, (o * p.src_rows + p.src_row0) * p.inner + k));
    }
  });
}

void maximum_cpu(const MaximumParams& p) {
  parallel_for(p.n, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float x = load_as_f32(p.a, p.a_dtype, i), y = load_as_f32(p.b, p.b_dtype, i);
      store_from_f32(p.out, p.out_dtype, i, (x != x || x > y) ? x : y);
    }
  });
}

}  // namespace mb
