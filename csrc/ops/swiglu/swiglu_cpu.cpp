#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "../../common/parallel.h"
#include "swiglu.h"

namespace mb {

namespace {
template <Dtype X> void fwd(const SwigluParams& p) {
  parallel_for(p.n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = nn::ld<X>(p.gate, i), u = nn::ld<X>(p.up, i);
      nn::st<X>(p.y, i, g * swiglu_sigmoid(g) * u);
    }
  });
}
template <Dtype X> void bwd(const SwigluParams& p) {
  parallel_for(p.n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = nn::ld<X>(p.gate, i), u = nn::ld<X>(p.up, i), dy = nn::ld<X>(p.dy, i);
      const float sg = swiglu_sigmoid(g);
      nn::st<X>(p.dup, i, dy * (g * sg));
      nn::st<X>(p.dgate, i, dy * u * sg * (1.0f + g * (1.0f - sg)));
    }
  });
}
}  // namespace

void swiglu_check(const SwigluParams& p, bool backward) {
  if (p.dtype != Dtype::F32 && p.dtype != Dtype::F16 && p.dtype != Dtype::BF16)
    throw Error("ERR_DTYPE", "swiglu: tensors must be f32, f16 or bf16");
  if (p.n < 0) throw Error("ERR_SHAPE", "swiglu: negative element count");
  if (backward && (!p.dgate || !p.dup || !p.dy)) throw Error("ERR_ARG", "swigluBackward: dy, dgate and dup are required");
  if (!backward && !p.y) throw Error("ERR_ARG", "swiglu: y is required");
}

void swiglu_cpu(const SwigluParams& p) { MB_DISPATCH_FLOAT(p.dtype, X, fwd<X>(p)); }
void swiglu_bwd_cpu(const SwigluParams& p) { MB_DISPATCH_FLOAT(p.dtype, X, bwd<X>(p)); }

}  // namespace mb
