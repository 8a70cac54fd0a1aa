// CPU GEMM: packed panels (converted to f32 once per block), an MR x 16 register-blocked micro-kernel,
// and parallel_for over output tiles. Each tile keeps an f32 accumulator across the whole K loop, so the
// output is read (beta) and rounded exactly once.
//
// The micro-kernel is built for the baseline target (GCC/Clang vector extensions; plain floats
// elsewhere) and, on x86-64, also with AVX2+FMA intrinsics, picked at run time like
// ops/attention/attention_cpu.cpp does: prebuilt binaries target plain x86-64.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "gemm.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if (defined(__GNUC__) || defined(__clang__))
#define MB_GEMM_VEC 1
#if defined(__x86_64__) && !defined(MB_GEMM_NO_AVX2)
#define MB_GEMM_AVX2 1
#include <immintrin.h>
#endif
#endif

namespace mb {
namespace {

constexpr int NR = 16;   // columns per micro-tile (two AVX2 vectors)
constexpr int KC = 256;  // depth of one packed block
constexpr int MC = 96;   // rows of one task tile (multiple of 6 and of 4)
constexpr int NC = 256;  // columns of one task tile (multiple of NR)

using Ukr = void (*)(int kc, const float* a, const float* b, float* c, int64_t ldc);
struct Kernel { int mr; Ukr fn; const char* name; };

// ---- micro-kernels: c[mr x 16] += a-panel (kc x mr) · b-panel (kc x 16) --------------------------
#if MB_GEMM_VEC
typedef float vf4 __attribute__((vector_size(16)));
inline vf4 ld4(const float* p) { vf4 v; std::memcpy(&v, p, 16); return v; }
inline void st4(float* p, vf4 v) { std::memcpy(p, &v, 16); }
void ukr_base(int kc, const float* a, const float* b, float* c, int64_t ldc) {
  constexpr int MR = 4;
  vf4 acc[MR][4] = {};
  for (int k = 0; k < kc; ++k) {
    const vf4 b0 = ld4(b), b1 = ld4(b + 4), b2 = ld4(b + 8), b3 = ld4(b + 12);
    for (int r = 0; r < MR; ++r) {
      const float s = a[r];
      acc[r][0] += s * b0; acc[r][1] += s * b1; acc[r][2] += s * b2; acc[r][3] += s * b3;
    }
    a += MR; b += NR;
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) st4(c + r * ldc + 4 * v, ld4(c + r * ldc + 4 * v) + acc[r][v]);
}
#else
void ukr_base(int kc, const float* a, const float* b, float* c, int64_t ldc) {
  constexpr int MR = 4;
  float acc[MR][NR] = {};
  for (int k = 0; k < kc; ++k, a += MR, b += NR)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] += acc[r][j];
}
#endif

#if MB_GEMM_AVX2
// 6 x 16: 12 accumulators + 2 B vectors + 1 broadcast fit the 16 ymm registers. Intrinsics so the
// multiply-adds are fused even under the build's -ffp-contract=off.
__attribute__((target("avx2,fma"))) void ukr_avx2(int kc, const float* a, const float* b, float* c, int64_t ldc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 s;
    s = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(s, b0, c00); c01 = _mm256_fmadd_ps(s, b1, c01);
    s = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(s, b0, c10); c11 = _mm256_fmadd_ps(s, b1, c11);
    s = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(s, b0, c20); c21 = _mm256_fmadd_ps(s, b1, c21);
    s = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(s, b0, c30); c31 = _mm256_fmadd_ps(s, b1, c31);
    s = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(s, b0, c40); c41 = _mm256_fmadd_ps(s, b1, c41);
    s = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(s, b0, c50); c51 = _mm256_fmadd_ps(s, b1, c51);
    a += 6; b += NR;
  }
#define MB_UPD(r, x0, x1)                                                  \
  {                                                                        \
    float* q = c + (r) * ldc;                                              \
    _mm256_storeu_ps(q, _mm256_add_ps(_mm256_loadu_ps(q), x0));            \
    _mm256_storeu_ps(q + 8, _mm256_add_ps(_mm256_loadu_ps(q + 8), x1));    \
  }
  MB_UPD(0, c00, c01) MB_UPD(1, c10, c11) MB_UPD(2, c20, c21) MB_UPD(3, c30, c31) MB_UPD(4, c40, c41) MB_UPD(5, c50, c51)
#undef MB_UPD
}
#endif

const Kernel& kernel() {
  static const Kernel k = [] {
#if MB_GEMM_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Kernel{6, ukr_avx2, "avx2"};
#endif
    return Kernel{4, ukr_base, "base"};
  }();
  return k;
}

// ---- packing: op(A) rows [i0, i0+rows) x cols [k0, k0+kc) into panels of mr rows (zero padded) ------
template <Dtype D>
void pack_a(const void* A, int64_t lda, bool trans, int64_t i0, int rows, int64_t k0, int kc, int mr, float* dst) {
  using T = typename Elem<D>::T;
  const T* a = static_cast<const T*>(A);
  for (int p0 = 0; p0 < rows; p0 += mr, dst += (int64_t)kc * mr) {
    const int pr = std::min(mr, rows - p0);
    if (!trans) {
      for (int r = 0; r < pr; ++r) {
        const T* src = a + (i0 + p0 + r) * lda + k0;
        for (int kk = 0; kk < kc; ++kk) dst[kk * mr + r] = Elem<D>::load(src[kk]);
      }
    } else {
      for (int kk = 0; kk < kc; ++kk) {
        const T* src = a + (k0 + kk) * lda + i0 + p0;
        for (int r = 0; r < pr; ++r) dst[kk * mr + r] = Elem<D>::load(src[r]);
      }
    }
    if (pr < mr)
      for (int kk = 0; kk < kc; ++kk)
        for (int r = pr; r < mr; ++r) dst[kk * mr + r] = 0.f;
  }
}
// op(B) rows [k0, k0+kc) x cols [j0, j0+cols) into panels of NR columns (zero padded).
template <Dtype D>
void pack_b(const void* B, int64_t ldb, bool trans, int64_t k0, int kc, int64_t j0, int cols, float* dst) {
  using T = typename Elem<D>::T;
  const T* b = static_cast<const T*>(B);
  for (int p0 = 0; p0 < cols; p0 += NR, dst += (int64_t)kc * NR) {
    const int pc = std::min(NR, cols - p0);
    if (!trans) {
      for (int kk = 0; kk < kc; ++kk) {
        const T* src = b + (k0 + kk) * ldb + j0 + p0;
        float* d = dst + kk * NR;
        for (int j = 0; j < pc; ++j) d[j] = Elem<D>::load(src[j]);
        for (int j = pc; j < NR; ++j) d[j] = 0.f;
      }
    } else {
      for (int j = 0; j < pc; ++j) {
        const T* src = b + (j0 + p0 + j) * ldb + k0;
        for (int kk = 0; kk < kc; ++kk) dst[kk * NR + j] = Elem<D>::load(src[kk]);
      }
      for (int kk = 0; kk < kc; ++kk)
        for (int j = pc; j < NR; ++j) dst[kk * NR + j] = 0.f;
    }
  }
}

template <Dtype D>
void store_tile(void* O, int64_t ldo, int64_t i0, int64_t j0, int rows, int cols, const float* acc, int64_t ldc,
                float alpha, float beta) {
  using T = typename Elem<D>::T;
  T* o = static_cast<T*>(O);
  for (int r = 0; r < rows; ++r) {
    T* dst = o + (i0 + r) * ldo + j0;
    const float* src = acc + r * ldc;
    if (beta == 0.f)
      for (int j = 0; j < cols; ++j) dst[j] = Elem<D>::store(alpha * src[j]);
    else
      for (int j = 0; j < cols; ++j) dst[j] = Elem<D>::store(alpha * src[j] + beta * Elem<D>::load(dst[j]));
  }
}

struct Scratch { std::vector<float> a, b, c; };

}  // namespace

void gemm_cpu(const GemmParams& p0) {
  const GemmParams p = gemm_fold(p0);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  const Kernel& kr = kernel();
  const int mr = kr.mr;
  const int64_t mt = (p.m + MC - 1) / MC, nt = (p.n + NC - 1) / NC;
  const int64_t tiles = p.batch * mt * nt;
  const int ea = dtype_size(p.a_dtype), eb = dtype_size(p.b_dtype), eo = dtype_size(p.out_dtype);
  // Grain: one tile is >= ~MC*NC*K*2 flops; hand out single tiles unless they are tiny.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, std::min<int64_t>(p.k, 4096) * 8));
  parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
    thread_local Scratch s;
    s.a.resize((size_t)MC * KC);
    s.b.resize((size_t)NC * KC);
    s.c.resize((size_t)MC * NC);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / (mt * nt), rem = t % (mt * nt);
      const int64_t i0 = (rem / nt) * MC, j0 = (rem % nt) * NC;
      const int rows = (int)std::min<int64_t>(MC, p.m - i0), cols = (int)std::min<int64_t>(NC, p.n - j0);
      const int rp = (rows + mr - 1) / mr, cp = (cols + NR - 1) / NR;
      const char* A = static_cast<const char*>(p.a) + bi * p.stride_a * ea;
      const char* B = static_cast<const char*>(p.b) + bi * p.stride_b * eb;
      char* O = static_cast<char*>(p.out) + bi * p.stride_out * eo;
      float* acc = s.c.data();
      for (int r = 0; r < rp * mr; ++r) std::memset(acc + (int64_t)r * NC, 0, sizeof(float) * cp * NR);
      for (int64_t k0 = 0; k0 < p.k; k0 += KC) {
        const int kc = (int)std::min<int64_t>(KC, p.k - k0);
        MB_DISPATCH_FLOAT(p.a_dtype, DA, pack_a<DA>(A, p.lda, p.trans_a, i0, rows, k0, kc, mr, s.a.data()));
        MB_DISPATCH_FLOAT(p.b_dtype, DB, pack_b<DB>(B, p.ldb, p.trans_b, k0, kc, j0, cols, s.b.data()));
        // B panel (kc x 16) stays in L1 while the A panels stream from L2.
        for (int jp = 0; jp < cp; ++jp)
          for (int ip = 0; ip < rp; ++ip)
            kr.fn(kc, s.a.data() + (int64_t)ip * kc * mr, s.b.data() + (int64_t)jp * kc * NR,
                  acc + (int64_t)ip * mr * NC + jp * NR, NC);
      }
      MB_DISPATCH_FLOAT(p.out_dtype, DO, store_tile<DO>(O, p.ldo, i0, j0, rows, cols, acc, NC, p.alpha, p.beta));
    }
  });
}

}  // namespace mb
