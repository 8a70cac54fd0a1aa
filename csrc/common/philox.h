// Counter-based random numbers (Philox4x32-10) and the float math that turns them into uniform and
// normal values. Every float operation is an explicitly rounded IEEE op (no contraction, no libm;
// host code is also built with -ffp-contract=off),
// so the CPU and CUDA produce the same bits for the same seed and index.
#pragma once
#include <cstdint>
#include <cmath>
#include "dtype.h"

namespace mb {
namespace rng {

#if defined(__CUDA_ARCH__)
MB_HD float add(float a, float b) { return __fadd_rn(a, b); }
MB_HD float mul(float a, float b) { return __fmul_rn(a, b); }
MB_HD float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
MB_HD float div(float a, float b) { return __fdiv_rn(a, b); }
MB_HD float sqrt(float a) { return __fsqrt_rn(a); }
MB_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) { lo = a * b; hi = __umulhi(a, b); }
#else
// volatile keeps the compiler from fusing or reassociating host float ops.
inline float add(float a, float b) { volatile float r = a + b; return r; }
inline float mul(float a, float b) { volatile float r = a * b; return r; }
inline float fma(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float div(float a, float b) { volatile float r = a / b; return r; }
inline float sqrt(float a) { return std::sqrt(a); }
inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = (uint64_t)a * b; lo = (uint32_t)p; hi = (uint32_t)(p >> 32);
}
#endif

struct U4 { uint32_t x, y, z, w; };

MB_HD U4 philox(uint64_t seed, uint64_t counter) {
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return U4{c0, c1, c2, c3};
}

// (0, 1], 24 random bits, exact.
MB_HD float uniform_open0(uint32_t x) { return (float)((x >> 8) + 1) * 5.9604644775390625e-8f; }
// [0, 1), exact.
MB_HD float uniform(uint32_t x) { return (float)(x >> 8) * 5.9604644775390625e-8f; }

// ln(u) for u in (0, 1]: u = m·2^e with m in [√½, √2), ln m = 2·atanh(s), s = (m−1)/(m+1).
MB_HD float log01(float u) {
  uint32_t b = f32_bits(u);
  int e = (int)((b >> 23) & 0xff) - 127;
  float m = bits_f32((b & 0x7fffffu) | 0x3f800000u);
  if (m > 1.41421356f) { m = mul(m, 0.5f); e += 1; }
  float s = div(add(m, -1.0f), add(m, 1.0f));
  float s2 = mul(s, s);
  float p = fma(s2, 1.0f / 11.0f, 1.0f / 9.0f);
  p = fma(s2, p, 1.0f / 7.0f);
  p = fma(s2, p, 1.0f / 5.0f);
  p = fma(s2, p, 1.0f / 3.0f);
  p = fma(s2, p, 1.0f);
  float lnm = mul(mul(2.0f, s), p);
  float fe = (float)e;
  return fma(fe, 0.693145751953125f, fma(fe, 1.42860677e-06f, lnm));  // ln2 split hi + lo
}

// sin and cos of 2π·a for a in [0, 1): reduce to a quarter turn, then Taylor polynomials.
MB_HD void sincos_turns(float a, float& s, float& c) {
  float t = mul(a, 4.0f);
  float q = floorf(add(t, 0.5f));
  float f = add(t, -q);                      // [-0.5, 0.5] quarter turns, exact
  float x = mul(f, 1.57079632679f);          // radians in [-π/4, π/4]
  float x2 = mul(x, x);
  float ps = fma(x2, -2.5052108e-08f, 2.7557319e-06f);
  ps = fma(x2, ps, -1.9841270e-04f);
  ps = fma(x2, ps, 8.3333333e-03f);
  ps = fma(x2, ps, -1.6666667e-01f);
  float sn = fma(mul(x2, x), ps, x);
  float pc = fma(x2, 2.0876757e-09f, -2.7557319e-07f);
  pc = fma(x2, pc, 2.4801587e-05f);
  pc = fma(x2, pc, -1.3888889e-03f);
  pc = fma(x2, pc, 4.1666667e-02f);
  pc = fma(x2, pc, -0.5f);
  float cs = fma(x2, pc, 1.0f);
  int qi = ((int)q) & 3;
  if (qi == 0) { s = sn; c = cs; }
  else if (qi == 1) { s = cs; c = -sn; }
  else if (qi == 2) { s = -sn; c = -cs; }
  else { s = -cs; c = sn; }
}

// Element i of randn(seed): Box–Muller on the pair (i & ~1, i | 1), both from one Philox call.
MB_HD float normal_at(uint64_t seed, uint64_t i) {
  U4 r = philox(seed, i >> 1);
  float u1 = uniform_open0(r.x), u2 = uniform(r.y);
  float rad = sqrt(mul(-2.0f, log01(u1)));
  float s, c;
  sincos_turns(u2, s, c);
  return mul(rad, (i & 1) ? s : c);
}
// Element i of rand(seed) in [0, 1).
MB_HD float uniform_at(uint64_t seed, uint64_t i) {
  U4 r = philox(seed, i >> 2);
  uint32_t w = (i & 3) == 0 ? r.x : (i & 3) == 1 ? r.y : (i & 3) == 2 ? r.z : r.w;
  return uniform(w);
}

}  // namespace rng
}  // namespace mb
