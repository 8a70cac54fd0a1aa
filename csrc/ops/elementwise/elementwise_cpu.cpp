#include <cmath>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "../tensor/tensor_ops.h"
#include "elementwise.h"

namespace mb {

void axpby_check(const AxpbyParams& p) {
  auto is_float = [](Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; };
  if (!is_float(p.a_dtype) || (p.b && !is_float(p.b_dtype)) || !is_float(p.out_dtype))
    throw Error("ERR_DTYPE", "element-wise ops take f32, f16 or bf16 tensors");
  if (p.n < 0) throw Error("ERR_SHAPE", "negative element count");
  if (!std::isfinite(p.alpha) || !std::isfinite(p.beta)) throw Error("ERR_ARG", "alpha and beta must be finite f32 values");
}

void axpby_cpu(const AxpbyParams& p) {
  parallel_for(p.n, 1 << 15, [&](int64_t b, int64_t e) {
    if (p.b) {
      for (int64_t i = b; i < e; ++i)
        store_from_f32(p.out, p.out_dtype, i,
                       p.alpha * load_as_f32(p.a, p.a_dtype, i) + p.beta * load_as_f32(p.b, p.b_dtype, i));
    } else {
      for (int64_t i = b; i < e; ++i) store_from_f32(p.out, p.out_dtype, i, p.alpha * load_as_f32(p.a, p.a_dtype, i));
    }
  });
}

}  // namespace mb
