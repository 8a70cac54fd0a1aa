// cos/sin of pos * inv_freq for each precision mode, shared by the CPU and CUDA code so both
// compute the same angle the same way. Must not be built with fast-math: the exact mode relies
// on fma and on the fp64 products being rounded exactly once.
#pragma once
#include <cmath>
#include <cstdint>
#include "../../common/dtype.h"
#include "rope.h"

#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
#error "rope must be compiled without fast-math (-ffast-math / --use_fast_math): the exact angle reduction depends on IEEE fp64"
#endif

namespace mb {
namespace rope_detail {

// pi/2 = kPio2Hi + kPio2Lo to ~1e-33; k <= 2^31 keeps the neglected k * 1e-33 far below 1e-20.
constexpr double kPio2Hi = 1.5707963267948966192313216916397514;   // 0x3FF921FB54442D18
constexpr double kPio2Lo = 6.123233995736766035868820147291818e-17;  // pi/2 - kPio2Hi
constexpr double k2OverPi = 0.63661977236758134307553505349005744;

MB_HD double fma_d(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

MB_HD double rint_d(double a) {
#if defined(__CUDA_ARCH__)
  return rint(a);
#else
  return std::rint(a);
#endif
}

MB_HD float bf16r(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// sin and cos of |r| <= ~pi/4 + 1e-6 (Cephes sinf/cosf minimax kernels, ~1 ulp). No range reduction,
// no slow path, identical code on host and device.
MB_HD void sincos_reduced(float r, float& s, float& c) {
  const float z = r * r;
  s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
}

// Full-range IEEE fp32 sinf/cosf (for the emulation modes, whose angles can be ~1e6 rad).
MB_HD void sincos_f32(float a, float& s, float& c) {
#if defined(__CUDA_ARCH__)
  sincosf(a, &s, &c);
#else
  s = std::sin(a);
  c = std::cos(a);
#endif
}

// Exact mode: pos * theta == a + e exactly (two-product), a - k*pi/2 with k*kPio2Hi inside one fma,
// so the reduced angle r carries ~1e-16 absolute error before it is rounded to fp32 (|r| <= pi/4:
// rounding error <= 2^-25 ~ 3e-8 rad). Valid for |pos * theta| < 2^52.
MB_HD void cos_sin_exact(double pos, double theta, float& c, float& s) {
  const double a = pos * theta;
  const double e = fma_d(pos, theta, -a);
  const double k = rint_d(a * k2OverPi);
  double r = fma_d(-k, kPio2Hi, a);
  r = fma_d(-k, kPio2Lo, r);
  r += e;
  float sr, cr;
  sincos_reduced((float)r, sr, cr);
  switch ((int)((int64_t)k & 3)) {  // two's complement: also right for negative k
    case 0: s = sr; c = cr; break;
    case 1: s = cr; c = -sr; break;
    case 2: s = -sr; c = -cr; break;
    default: s = -cr; c = sr; break;
  }
}

// cos and sin (times the attention factor, sign-flipped sin for the inverse) for one (position, pair).
MB_HD void rope_cos_sin(RopePrecision prec, int64_t pos, double theta, float af, bool inverse,
                        float& c, float& s) {
  if (prec == RopePrecision::Exact) {
    cos_sin_exact((double)pos, theta, c, s);
    c *= af;
    s *= af;
  } else if (prec == RopePrecision::F32) {
    const float a = (float)pos * (float)theta;
    sincos_f32(a, s, c);
    c *= af;
    s *= af;
  } else {
    // bf16 model: pos and theta stored as bf16 (theta via its fp32 buffer), their product (exact in
    // fp32) rounded to bf16, cos/sin evaluated in fp32 then stored as bf16, scaled in bf16.
    const float a = bf16r(bf16r((float)pos) * bf16r((float)theta));
    sincos_f32(a, s, c);
    c = bf16r(bf16r(c) * af);
    s = bf16r(bf16r(s) * af);
  }
  if (inverse) s = -s;
}

}  // namespace rope_detail
}  // namespace mb
