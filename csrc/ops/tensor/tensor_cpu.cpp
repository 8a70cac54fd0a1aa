#include <cstring>

#include "../../common/parallel.h"
#include "../../common/philox.h"
#include "tensor_ops.h"

namespace mb {

void fill_cpu(const FillParams& p) {
  parallel_for(p.n, 1 << 16, [&](int64_t b, int64_t e) {
    if (p.dtype == Dtype::I32) {
      int32_t v = (int32_t)p.value;
      for (int64_t i = b; i < e; ++i) ((int32_t*)p.dst)[i] = v;
    } else {
      float v = (float)p.value;
      for (int64_t i = b; i < e; ++i) store_from_f32(p.dst, p.dtype, i, v);
    }
  });
}

void cast_cpu(const CastParams& p) {
  if (p.src_dtype == p.dst_dtype) {
    std::memcpy(p.dst, p.src, (size_t)p.n * dtype_size(p.src_dtype));
    return;
  }
  parallel_for(p.n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store_from_f32(p.dst, p.dst_dtype, i, load_as_f32(p.src, p.src_dtype, i));
  });
}

void rand_cpu(const RandParams& p) {
  parallel_for(p.n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float v;
      if (p.kind == RandKind::Normal) {
        v = rng::fma(p.b, rng::normal_at(p.seed, (uint64_t)i), p.a);
      } else {
        v = rng::fma(rng::add(p.b, -p.a), rng::uniform_at(p.seed, (uint64_t)i), p.a);
      }
      store_from_f32(p.dst, p.dtype, i, v);
    }
  });
}

}  // namespace mb
