#include <cmath>
#include <vector>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "../../common/parallel.h"
#include "rmsnorm.h"

namespace mb {

namespace {
bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }

// Sum of squares with 8 independent accumulators (the compiler can keep them in one vector register).
template <Dtype X> float sumsq(const void* p, int64_t base, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) { float v = nn::ld<X>(p, base + i + k); acc[k] += v * v; }
  for (; i < n; ++i) { float v = nn::ld<X>(p, base + i); acc[0] += v * v; }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <Dtype X, Dtype Wt> void fwd(const RmsNormParams& p) {
  const int64_t H = p.hidden;
  parallel_for(p.rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t base = r * H;
      const void* src = p.x;
      if (p.residual) {
        for (int64_t c = 0; c < H; ++c)
          nn::st<X>(p.h, base + c, nn::ld<X>(p.x, base + c) + nn::ld<X>(p.residual, base + c));
        src = p.h;
      }
      const float rs = 1.0f / std::sqrt(sumsq<X>(src, base, H) / (float)H + p.eps);
      p.rstd[r] = rs;
      for (int64_t c = 0; c < H; ++c) nn::st<X>(p.y, base + c, nn::ld<X>(src, base + c) * rs * nn::ld<Wt>(p.weight, c));
    }
  });
}

template <Dtype X, Dtype Wt, Dtype DX> void bwd(const RmsNormBwdParams& p) {
  const int64_t H = p.hidden, R = p.rows, NB = rmsnorm_bwd_blocks(R, false);
  std::vector<float> partial((size_t)(NB * H), 0.f);
  // Row blocks are fixed (independent of the thread count), so dweight is bit-reproducible.
  parallel_for(NB, 1, [&](int64_t bb, int64_t be) {
    for (int64_t b = bb; b < be; ++b) {
      float* dw = partial.data() + b * H;
      const int64_t r0 = R * b / NB, r1 = R * (b + 1) / NB;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = r * H;
        const float rs = p.rstd[r];
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t c = 0; c < H; ++c)
          acc[c & 7] += nn::ld<X>(p.dy, base + c) * nn::ld<Wt>(p.weight, c) * nn::ld<X>(p.x, base + c);
        const float dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        const float m = dot * rs / (float)H;  // mean(g·xhat)
        for (int64_t c = 0; c < H; ++c) {
          const float dy = nn::ld<X>(p.dy, base + c), xhat = nn::ld<X>(p.x, base + c) * rs;
          float d = rs * (dy * nn::ld<Wt>(p.weight, c) - xhat * m);
          if (p.dx_accumulate) d += nn::ld<DX>(p.dx, base + c);
          nn::st<DX>(p.dx, base + c, d);
          dw[c] += dy * xhat;
        }
      }
    }
  });
  parallel_for(H, 256, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      float s = 0.f;
      for (int64_t b = 0; b < NB; ++b) s += partial[(size_t)(b * H + c)];
      p.dweight[c] += s;
    }
  });
}
}  // namespace

int64_t rmsnorm_bwd_blocks(int64_t rows, bool cuda) { return std::min<int64_t>(rows, cuda ? 1024 : 64); }

void rmsnorm_check(const RmsNormParams& p) {
  if (!is_float(p.dtype)) throw Error("ERR_DTYPE", "rmsNorm: x must be f32, f16 or bf16");
  if (p.w_dtype != p.dtype && p.w_dtype != Dtype::F32)
    throw Error("ERR_DTYPE", std::string("rmsNorm: weight must have x's dtype (") + dtype_name(p.dtype) + ") or f32");
  if (p.rows < 0 || p.hidden <= 0) throw Error("ERR_SHAPE", "rmsNorm: the hidden size must be positive");
  if (nn::mul_overflows(p.rows, p.hidden)) throw Error("ERR_SHAPE", "rmsNorm: tensor too large");
  if (!(p.eps >= 0.f) || !std::isfinite(p.eps)) throw Error("ERR_ARG", "rmsNorm: eps must be a finite number >= 0");
  if ((p.residual == nullptr) != (p.h == nullptr)) throw Error("ERR_ARG", "rmsNorm: residual and h go together");
  if (!p.rstd) throw Error("ERR_ARG", "rmsNorm: rstd missing");
}

void rmsnorm_bwd_check(const RmsNormBwdParams& p) {
  if (!is_float(p.dtype)) throw Error("ERR_DTYPE", "rmsNormBackward: x and dy must be f32, f16 or bf16");
  if (p.w_dtype != p.dtype && p.w_dtype != Dtype::F32)
    throw Error("ERR_DTYPE", "rmsNormBackward: weight must have x's dtype or be f32");
  if (p.dx_dtype != p.dtype && p.dx_dtype != Dtype::F32)
    throw Error("ERR_DTYPE", "rmsNormBackward: dx must have x's dtype or be f32");
  if (p.rows < 0 || p.hidden <= 0) throw Error("ERR_SHAPE", "rmsNormBackward: the hidden size must be positive");
  if (nn::mul_overflows(p.rows, p.hidden) || nn::mul_overflows(rmsnorm_bwd_blocks(p.rows, true), p.hidden))
    throw Error("ERR_SHAPE", "rmsNormBackward: tensor too large");
  if (!p.dweight || !p.rstd || !p.dx) throw Error("ERR_ARG", "rmsNormBackward: dweight, rstd and dx are required");
}

void rmsnorm_cpu(const RmsNormParams& p) {
  if (p.rows == 0) return;
  MB_DISPATCH_FLOAT(p.dtype, X, {
    if (p.w_dtype == Dtype::F32) fwd<X, Dtype::F32>(p);
    else fwd<X, X>(p);
  });
}

void rmsnorm_bwd_cpu(const RmsNormBwdParams& p) {
  if (p.rows == 0) return;
  MB_DISPATCH_FLOAT(p.dtype, X, {
    const bool wf = p.w_dtype == Dtype::F32, df = p.dx_dtype == Dtype::F32;
    if (wf && df) bwd<X, Dtype::F32, Dtype::F32>(p);
    else if (wf) bwd<X, Dtype::F32, X>(p);
    else if (df) bwd<X, X, Dtype::F32>(p);
    else bwd<X, X, X>(p);
  });
}

}  // namespace mb
