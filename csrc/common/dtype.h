// Element types shared by every op, and exact host/device conversions between them.
// Conversions are hand-written (not cuda_fp16.h) so CPU and CUDA code round identically.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MB_HD __host__ __device__ __forceinline__
#else
#define MB_HD inline
#endif

namespace mb {

enum class Dtype : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3 };

inline int dtype_size(Dtype d) { return d == Dtype::F16 || d == Dtype::BF16 ? 2 : 4; }
inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::F32: return "f32";
    case Dtype::F16: return "f16";
    case Dtype::BF16: return "bf16";
    case Dtype::I32: return "i32";
  }
  return "?";
}

MB_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
MB_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

// bf16: upper half of an f32, round-to-nearest-even; NaN stays a (quiet) NaN.
MB_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
MB_HD float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

// IEEE binary16, round-to-nearest-even, with subnormals, overflow to inf, NaN kept.
MB_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520 -> inf
  if (a < 0x38800000u) {                                    // below 2^-14: subnormal or zero
    if (a < 0x33000000u) return (uint16_t)sign;             // < 2^-25 rounds to 0 (2^-25 ties to even 0)
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                               // 14 + (127 - e) - 1 ... bits to drop from 24-bit m
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = a - 0x38000000u;                             // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return (uint16_t)(sign | (r >> 13));
}
MB_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_f32(sign);
    // subnormal: m * 2^-24, exact in f32
    float v = (float)m * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Doubles to 16-bit floats, rounded ONCE to nearest even (host only). Going through f32 would round
// twice: 1.00390625 + 2^-40 is just above a bf16 tie, but its f32 rounding is the tie itself, which
// then rounds to even (1) instead of up (1.0078125).
// Rounds |x| to p significant bits with exponent at least emin (subnormals), overflow past max to
// inf; the result is exactly representable in the target format (and in f32).
inline float round_f64_to_format(double x, int p, int emin, double max) {
  if (!(x == x) || x == 0 || std::isinf(x)) return (float)x;
  double a = std::fabs(x);
  int e = 0;
  std::frexp(a, &e);          // a = m * 2^e, m in [0.5, 1): leading bit at 2^(e-1)
  int lead = e - 1 < emin ? emin : e - 1;
  double ulp = std::ldexp(1.0, lead - (p - 1));
  double v = std::nearbyint(a / ulp) * ulp;  // exact scaling; nearbyint rounds to nearest even
  if (v > max) v = (double)INFINITY;
  return (float)(x < 0 ? -v : v);
}
inline uint16_t f64_to_bf16(double x) { return f32_to_bf16(round_f64_to_format(x, 8, -126, std::ldexp(255.0, 120))); }
inline uint16_t f64_to_f16(double x) { return f32_to_f16(round_f64_to_format(x, 11, -14, 65504.0)); }

// Load/store one element of a float dtype as f32 (compile-time dtype).
template <Dtype D> struct Elem;
template <> struct Elem<Dtype::F32> {
  using T = float;
  static MB_HD float load(T v) { return v; }
  static MB_HD T store(float f) { return f; }
};
template <> struct Elem<Dtype::F16> {
  using T = uint16_t;
  static MB_HD float load(T v) { return f16_to_f32(v); }
  static MB_HD T store(float f) { return f32_to_f16(f); }
};
template <> struct Elem<Dtype::BF16> {
  using T = uint16_t;
  static MB_HD float load(T v) { return bf16_to_f32(v); }
  static MB_HD T store(float f) { return f32_to_bf16(f); }
};

}  // namespace mb

// Dispatch on a float dtype at run time: MB_DISPATCH_FLOAT(dtype, D, { use D as a constexpr Dtype });
#define MB_DISPATCH_FLOAT(dtype, NAME, ...)                              \
  switch (dtype) {                                                       \
    case ::mb::Dtype::F32: { constexpr ::mb::Dtype NAME = ::mb::Dtype::F32; __VA_ARGS__; } break;   \
    case ::mb::Dtype::F16: { constexpr ::mb::Dtype NAME = ::mb::Dtype::F16; __VA_ARGS__; } break;   \
    case ::mb::Dtype::BF16: { constexpr ::mb::Dtype NAME = ::mb::Dtype::BF16; __VA_ARGS__; } break; \
    default: throw ::mb::Error("ERR_DTYPE", "float dtype expected");     \
  }
