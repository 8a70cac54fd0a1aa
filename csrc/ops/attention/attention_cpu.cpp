// Flash attention on the CPU: same semantics as the CUDA kernels (see attention.h).
// Blocked over keys with an online softmax, so memory is O(seq) and tiles stay in cache.
// Tiles are converted to f32 in per-worker scratch; all accumulation is f32.
//
// The arithmetic lives in three tile kernels (gemm, softmax_rows, probs_grads) written once on a
// generic vector type V. They are built for the baseline target and, on x86-64 with GCC/Clang,
// also for AVX2+FMA and picked at run time: prebuilt binaries target plain x86-64 (SSE2), where
// the AVX2 build is ~2.5x faster.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../common/error.h"
#include "../../common/parallel.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments of internal always-inline helpers
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MB_VEC 1
#define MB_AI __attribute__((always_inline)) inline
#if defined(__clang__)
#define MB_UNROLL _Pragma("unroll")
#else
#define MB_UNROLL _Pragma("GCC unroll 16")
#endif
#if defined(__x86_64__) && !defined(__AVX2__)
#define MB_AVX2_DISPATCH 1
#include <immintrin.h>
#endif
#else
#define MB_AI inline
#define MB_UNROLL
#endif

namespace mb {
namespace {

constexpr int VW = 16;  // column block of every tile product; head_dim is padded to a multiple
constexpr int BM = 64;  // query rows per tile
constexpr int BN = 64;  // keys per tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- vector helpers: V is a GCC/Clang vector of floats, or plain float -------------------------
template <class V> struct VecTraits;
template <> struct VecTraits<float> { using I = int32_t; };
#if MB_VEC
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
template <> struct VecTraits<vf4> { using I = vi4; };
template <> struct VecTraits<vf8> { using I = vi8; };
#if defined(__AVX2__)
typedef vf8 VBase;
constexpr int kMrBase = 4;
#else
typedef vf4 VBase;
constexpr int kMrBase = 2;
#endif
#else
typedef float VBase;
constexpr int kMrBase = 1;
#endif

template <class V> constexpr int lanes() { return (int)(sizeof(V) / sizeof(float)); }
template <class V> MB_AI V vld(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
template <class V> MB_AI void vst(float* p, const V& v) { std::memcpy(p, &v, sizeof v); }
template <class V> MB_AI V vsp(float x) {
  float t[lanes<V>()];
  for (int i = 0; i < lanes<V>(); ++i) t[i] = x;
  return vld<V>(t);
}
template <class V> MB_AI V viota(float base) {
  float t[lanes<V>()];
  for (int i = 0; i < lanes<V>(); ++i) t[i] = base + (float)i;
  return vld<V>(t);
}
template <class V, class I = typename VecTraits<V>::I> MB_AI I vspi(int32_t x) {
  int32_t t[lanes<V>()];
  for (int i = 0; i < lanes<V>(); ++i) t[i] = x;
  I v;
  std::memcpy(&v, t, sizeof v);
  return v;
}
template <class V, class I = typename VecTraits<V>::I> MB_AI I vlt(const V& a, const V& b) { return a < b; }
template <class V, class I = typename VecTraits<V>::I> MB_AI I vne(const V& a, const V& b) { return a != b; }
template <class V, class I = typename VecTraits<V>::I> MB_AI V vsel(const I& m, const V& a, const V& b) {  // m ? a : b
  I ai, bi;
  std::memcpy(&ai, &a, sizeof a);
  std::memcpy(&bi, &b, sizeof b);
  const I r = (m & ai) | (~m & bi);
  V out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}
#if MB_VEC
template <class V, class I = typename VecTraits<V>::I> MB_AI I vtoi(const V& a) { return __builtin_convertvector(a, I); }
#endif
template <class V, class I = typename VecTraits<V>::I> MB_AI V vbits(const I& a) {
  V v;
  std::memcpy(&v, &a, sizeof v);
  return v;
}
// Scalar overloads (lanes = 1): masks are 0 / -1 like vector comparisons.
template <> MB_AI int32_t vlt<float>(const float& a, const float& b) { return a < b ? -1 : 0; }
template <> MB_AI int32_t vne<float>(const float& a, const float& b) { return a != b ? -1 : 0; }
MB_AI int32_t vtoi(float a) { return (int32_t)a; }
template <class V> MB_AI float vhmax(const V& v) {  // NaN lanes may be dropped; exp() shows them anyway
  float t[lanes<V>()];
  std::memcpy(t, &v, sizeof v);
  float m = t[0];
  for (int i = 1; i < lanes<V>(); ++i) m = t[i] > m ? t[i] : m;
  return m;
}
template <class V> MB_AI float vhsum(const V& v) {
  float t[lanes<V>()];
  std::memcpy(t, &v, sizeof v);
  float s = 0.f;
  for (int i = 0; i < lanes<V>(); ++i) s += t[i];
  return s;
}

// e^x to ~2 ulp (Cody-Waite reduction + Cephes polynomial). -inf and anything below the f32
// range give 0, NaN stays NaN. Branch-free, so it runs on whole vectors; inputs here are <= ~0.
template <class V> MB_AI V vexp(const V& x) {
  const V lo = vsp<V>(-87.3365447505531f), hi = vsp<V>(88.3762626647949f);
  V xc = vsel<V>(vlt<V>(hi, x), hi, x);
  xc = vsel<V>(vlt<V>(xc, lo), lo, xc);
  // n = round(x / ln2) via the 1.5*2^23 trick (exact for |n| < 2^22).
  const V magic = vsp<V>(12582912.f);
  const V n = (xc * vsp<V>(1.44269504088896341f) + magic) - magic;
  V r = xc - n * vsp<V>(0.693359375f);
  r = r + n * vsp<V>(2.12194440e-4f);
  const V z = r * r;
  V y = vsp<V>(1.9875691500e-4f);
  y = y * r + vsp<V>(1.3981999507e-3f);
  y = y * r + vsp<V>(8.3334519073e-3f);
  y = y * r + vsp<V>(4.1665795894e-2f);
  y = y * r + vsp<V>(1.6666665459e-1f);
  y = y * r + vsp<V>(5.0000001201e-1f);
  y = y * z + r + vsp<V>(1.f);
  V out = y * vbits<V>((vtoi(n) + vspi<V>(127)) << 23);
  out = vsel<V>(vlt<V>(x, lo), vsp<V>(0.f), out);
  return vsel<V>(vne<V>(x, x), x, out);
}

// Keys visible to query row i (exclusive upper bound) under the causal rule
// k_offset + j <= q_offset + i, i.e. j <= diag + i with diag = q_offset - k_offset.
inline int key_limit(bool causal, int64_t diag, int64_t i, int sk) {
  if (!causal) return sk;
  return (int)std::max<int64_t>(0, std::min<int64_t>(diag + i + 1, sk));
}

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Where a tile sits in the attention matrix; n_visible(r) = keys of this tile row r may see.
// Only the first ncols() = round_up(nk, VW) columns of a tile's scores are computed and read: a
// short last tile (or a short sequence) costs what it holds, not a full BN.
struct TilePos {
  bool causal;
  int64_t diag, i0;
  int j0, nk, sk;
  int n_visible(int r) const { return std::min(key_limit(causal, diag, i0 + r, sk) - j0, nk); }
  int ncols() const { return round_up(nk, VW); }
};

// ---- tile kernels ----------------------------------------------------------------------------

// C[m][n] (=|+=) A[m][k] * B[k][n] on f32 tiles. A is read as A[i*ai + kk*ak], so it may be
// transposed; rows of B (ldb) and C (ldc) are contiguous; n is a multiple of VW. An MR x 16
// block of C stays in registers for the whole k loop (arrays + unroll so it is not on the stack).
template <class V, int MR>
MB_AI void gemm_block(int k, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool accumulate) {
  constexpr int W = lanes<V>(), NV = VW / W;
  V c[MR][NV];
  MB_UNROLL for (int r = 0; r < MR; ++r)
    MB_UNROLL for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? vld<V>(C + r * ldc + v * W) : vsp<V>(0.f);
  for (int kk = 0; kk < k; ++kk) {
    V b[NV];
    MB_UNROLL for (int v = 0; v < NV; ++v) b[v] = vld<V>(B + kk * ldb + v * W);
    const float* a = A + kk * ak;
    MB_UNROLL for (int r = 0; r < MR; ++r) {
      const V av = vsp<V>(a[r * ai]);
      MB_UNROLL for (int v = 0; v < NV; ++v) c[r][v] += av * b[v];
    }
  }
  MB_UNROLL for (int r = 0; r < MR; ++r)
    MB_UNROLL for (int v = 0; v < NV; ++v) vst<V>(C + r * ldc + v * W, c[r][v]);
}

template <class V, int MR>
MB_AI void gemm_t(int m, int n, int k, const float* A, int64_t ai, int64_t ak, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int j = 0; j < n; j += VW) {  // one 16-column panel of B (k x 64 bytes) stays in L1
    int i = 0;
    for (; i + MR <= m; i += MR) gemm_block<V, MR>(k, A + i * ai, ai, ak, B + j, ldb, C + i * ldc + j, ldc, accumulate);
    for (; i < m; ++i) gemm_block<V, 1>(k, A + i * ai, ai, ak, B + j, ldb, C + i * ldc + j, ldc, accumulate);
  }
}

// Forward online-softmax step for one key tile. S (nq x BN) holds q.k; it becomes
// P = exp(scale*s - m_new) (0 where not visible). Updates running max m and sum l and rescales
// the output rows O (stride dp) by exp(m_old - m_new).
template <class V>
MB_AI void softmax_rows_t(float* S, int nq, const TilePos& tp, float scale, float* m, float* l,
                          float* O, int dp) {
  constexpr int W = lanes<V>();
  const int nc = tp.ncols();
  for (int r = 0; r < nq; ++r) {
    float* srow = S + r * BN;
    const int n = tp.n_visible(r);
    if (n <= 0) {  // row sees nothing in this tile: P = 0, state unchanged
      for (int c = 0; c < nc; c += W) vst<V>(srow + c, vsp<V>(0.f));
      continue;
    }
    const V vscale = vsp<V>(scale), vn = vsp<V>((float)n), ninf = vsp<V>(kNegInf);
    V mx = ninf;
    for (int c = 0; c < nc; c += W) {
      V s = vsel<V>(vlt<V>(viota<V>((float)c), vn), vld<V>(srow + c) * vscale, ninf);
      vst<V>(srow + c, s);
      mx = vsel<V>(vlt<V>(mx, s), s, mx);
    }
    const float mnew = std::max(m[r], vhmax(mx));
    // All visible scores -inf (inf inputs): use 0 as reference so P = 0 instead of NaN.
    const float ref = mnew == kNegInf ? 0.f : mnew;
    const float alpha = std::exp(m[r] - ref);
    const V vref = vsp<V>(ref);
    V sum = vsp<V>(0.f);
    for (int c = 0; c < nc; c += W) {
      const V e = vexp(vld<V>(srow + c) - vref);
      vst<V>(srow + c, e);
      sum += e;
    }
    l[r] = l[r] * alpha + vhsum(sum);
    m[r] = mnew;
    if (alpha != 1.f) {
      const V va = vsp<V>(alpha);
      for (int x = 0; x < dp; x += W) vst<V>(O + r * dp + x, vld<V>(O + r * dp + x) * va);
    }
  }
}

// Backward, one (q tile, key tile): S holds q.k, dP holds dout.v (nq x BN). S becomes
// P = exp(scale*s - L) and dP becomes dS = P (dP - Dr); both 0 where not visible. L is lse with
// -inf (masked row) replaced by +inf, so such rows get P = 0.
template <class V>
MB_AI void probs_grads_t(float* S, float* dP, int nq, const TilePos& tp, float scale, const float* L,
                         const float* Dr) {
  constexpr int W = lanes<V>();
  const int nc = tp.ncols();
  const V vscale = vsp<V>(scale), zero = vsp<V>(0.f);
  for (int r = 0; r < nq; ++r) {
    float* srow = S + r * BN;
    float* drow = dP + r * BN;
    const V vn = vsp<V>((float)tp.n_visible(r)), Lr = vsp<V>(L[r]), Dv = vsp<V>(Dr[r]);
    for (int c = 0; c < nc; c += W) {
      const auto vis = vlt<V>(viota<V>((float)c), vn);
      const V P = vsel<V>(vis, vexp(vld<V>(srow + c) * vscale - Lr), zero);
      vst<V>(srow + c, P);
      vst<V>(drow + c, vsel<V>(vis, P * (vld<V>(drow + c) - Dv), zero));
    }
  }
}

using GemmFn = void (*)(int, int, int, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, bool);
using SoftmaxFn = void (*)(float*, int, const TilePos&, float, float*, float*, float*, int);
using ProbsFn = void (*)(float*, float*, int, const TilePos&, float, const float*, const float*);
struct Kernels {
  GemmFn gemm;
  SoftmaxFn softmax_rows;
  ProbsFn probs_grads;
};

void gemm_base(int m, int n, int k, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
               float* C, int64_t ldc, bool acc) {
  gemm_t<VBase, kMrBase>(m, n, k, A, ai, ak, B, ldb, C, ldc, acc);
}
void softmax_base(float* S, int nq, const TilePos& tp, float scale, float* m, float* l, float* O, int dp) {
  softmax_rows_t<VBase>(S, nq, tp, scale, m, l, O, dp);
}
void probs_base(float* S, float* dP, int nq, const TilePos& tp, float scale, const float* L, const float* Dr) {
  probs_grads_t<VBase>(S, dP, nq, tp, scale, L, Dr);
}

#if MB_AVX2_DISPATCH
// Written with intrinsics so the multiply-adds are fused even under -ffp-contract=off (the build's
// default); same blocking as gemm_t with 4 rows x 2 vectors of 8.
template <int MR>
__attribute__((target("avx2,fma"), always_inline)) inline void gemm_block_avx2(
    int k, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {
  __m256 c[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) c[r][v] = acc ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
  for (int kk = 0; kk < k; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(B + kk * ldb), b1 = _mm256_loadu_ps(B + kk * ldb + 8);
    const float* a = A + kk * ak;
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * ai);
      c[r][0] = _mm256_fmadd_ps(av, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(av, b1, c[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, c[r][v]);
}
__attribute__((target("avx2,fma"))) void gemm_avx2(int m, int n, int k, const float* A, int64_t ai, int64_t ak,
                                                   const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {
  for (int j = 0; j < n; j += VW) {
    int i = 0;
    for (; i + 4 <= m; i += 4) gemm_block_avx2<4>(k, A + i * ai, ai, ak, B + j, ldb, C + i * ldc + j, ldc, acc);
    for (; i < m; ++i) gemm_block_avx2<1>(k, A + i * ai, ai, ak, B + j, ldb, C + i * ldc + j, ldc, acc);
  }
}
__attribute__((target("avx2,fma"))) void softmax_avx2(float* S, int nq, const TilePos& tp, float scale, float* m,
                                                      float* l, float* O, int dp) {
  softmax_rows_t<vf8>(S, nq, tp, scale, m, l, O, dp);
}
__attribute__((target("avx2,fma"))) void probs_avx2(float* S, float* dP, int nq, const TilePos& tp, float scale,
                                                    const float* L, const float* Dr) {
  probs_grads_t<vf8>(S, dP, nq, tp, scale, L, Dr);
}
#endif

const Kernels& kernels() {
  static const Kernels k = [] {
#if MB_AVX2_DISPATCH
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return Kernels{gemm_avx2, softmax_avx2, probs_avx2};
#endif
    return Kernels{gemm_base, softmax_base, probs_base};
  }();
  return k;
}

// ---- scheduling, loading, validation --------------------------------------------------------

// Runs task(t, scratch) for t in [0, ntasks) with dynamic scheduling: causal tiles differ a lot in
// cost, and parallel_for hands out fixed contiguous chunks. Tasks are numbered heaviest first.
template <class Init, class Task>
void run_tasks(int64_t ntasks, Init&& init, Task&& task) {
  if (ntasks <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(ntasks, std::max(1, cpu_threads()));
  parallel_for(workers, 1, [&](int64_t w0, int64_t w1) {
    if (w0 >= w1) return;
    auto scratch = init();  // one per chunk; a chunk that holds several workers just runs longer
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < ntasks;) task(t, scratch);
  });
}

// One row of a [.., d] tensor into f32 scratch, row-major (dst[x]) or as a column (dst[x * ld]).
template <Dtype D>
inline void load_row(float* dst, const typename Elem<D>::T* src, int d) {
  for (int x = 0; x < d; ++x) dst[x] = Elem<D>::load(src[x]);
}
template <Dtype D>
inline void load_col(float* dst, int64_t ld, const typename Elem<D>::T* src, int d) {
  for (int x = 0; x < d; ++x) dst[x * ld] = Elem<D>::load(src[x]);
}

constexpr int64_t kMaxOffset = int64_t(1) << 60;  // keeps q_offset - k_offset + i far from overflow

void check_common(const AttnFwdParams& p, const char* who) {
  const std::string w = who;
  MB_CHECK(p.batch >= 0 && p.seqlen_q >= 0 && p.seqlen_k >= 0, "ERR_SHAPE",
           w + ": batch and sequence lengths must be >= 0");
  MB_CHECK(p.heads_q >= 1 && p.heads_kv >= 1, "ERR_SHAPE", w + ": head counts must be >= 1");
  MB_CHECK(p.heads_q % p.heads_kv == 0, "ERR_SHAPE",
           w + ": heads_q (" + std::to_string(p.heads_q) + ") must be a multiple of heads_kv (" +
               std::to_string(p.heads_kv) + ")");
  MB_CHECK(p.head_dim >= 1, "ERR_SHAPE", w + ": head_dim must be >= 1");
  MB_CHECK(p.dtype == Dtype::F32 || p.dtype == Dtype::F16 || p.dtype == Dtype::BF16, "ERR_DTYPE",
           w + ": dtype must be f32, f16 or bf16, got " + dtype_name(p.dtype));
  MB_CHECK(std::isfinite(p.scale) && p.scale > 0.f, "ERR_ARG", w + ": scale must be finite and > 0");
  MB_CHECK(p.q_offset >= -kMaxOffset && p.q_offset <= kMaxOffset && p.k_offset >= -kMaxOffset &&
               p.k_offset <= kMaxOffset,
           "ERR_ARG", w + ": offsets out of range");
  const bool has_q = (int64_t)p.batch * p.seqlen_q > 0;
  const bool has_k = (int64_t)p.batch * p.seqlen_k > 0;
  MB_CHECK(!has_q || (p.q && p.out && p.lse), "ERR_ARG", w + ": null q/out/lse pointer");
  MB_CHECK(!has_k || (p.k && p.v), "ERR_ARG", w + ": null k/v pointer");
}

// ---------------------------------------------------------------------------------------------
// Forward. One task = (batch, q head, block of BM query rows); it streams the visible key tiles
// of the matching kv head, keeping a running max m, sum l and unnormalised output O per row.

template <Dtype D>
void fwd_impl(const AttnFwdParams& p) {
  using T = typename Elem<D>::T;
  const Kernels& K = kernels();
  const int d = p.head_dim, dp = round_up(d, VW);
  const int sq = p.seqlen_q, sk = p.seqlen_k, hq = p.heads_q, group = p.heads_q / p.heads_kv;
  const int64_t diag = p.q_offset - p.k_offset;
  const int nqb = (sq + BM - 1) / BM;
  const int64_t nbh = (int64_t)p.batch * hq;
  const T* qp = static_cast<const T*>(p.q);
  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  T* op = static_cast<T*>(p.out);

  struct Scratch {
    std::vector<float> q, kt, v, o, s, m, l;
  };
  // Scratch follows the work: rows for at most sq queries, key columns for at most sk keys (a head dim
  // of 2^20 with one key must not cost BN rows of it). Score tiles keep their BN row pitch.
  const int bm = std::min(BM, sq), bn = std::min(BN, round_up(sk, VW));
  auto init = [&] {
    Scratch sc;
    sc.q.assign((size_t)bm * dp, 0.f);  // padding columns stay 0 forever
    sc.kt.assign((size_t)d * bn, 0.f);
    sc.v.assign((size_t)bn * dp, 0.f);
    sc.o.assign((size_t)bm * dp, 0.f);
    sc.s.assign((size_t)bm * BN, 0.f);
    sc.m.assign(BM, 0.f);
    sc.l.assign(BM, 0.f);
    return sc;
  };
  auto task = [&](int64_t t, Scratch& sc) {
    // Heaviest first: for causal attention later query blocks see more keys.
    const int qb = nqb - 1 - (int)(t / nbh);
    const int64_t bh = t % nbh;
    const int b = (int)(bh / hq), h = (int)(bh % hq), hk = h / group;
    const int i0 = qb * BM, nq = std::min(BM, sq - i0);
    float* Q = sc.q.data();
    float* Kt = sc.kt.data();
    float* V = sc.v.data();
    float* O = sc.o.data();
    float* S = sc.s.data();
    float* m = sc.m.data();
    float* l = sc.l.data();

    for (int r = 0; r < nq; ++r) {
      load_row<D>(Q + r * dp, qp + b * p.q_batch_stride + (i0 + r) * p.q_row_stride + h * p.q_head_stride, d);
      std::fill(O + r * dp, O + (r + 1) * dp, 0.f);
      m[r] = kNegInf;
      l[r] = 0.f;
    }
    const int kend = key_limit(p.causal, diag, i0 + nq - 1, sk);  // keys any row of the block sees
    for (int j0 = 0; j0 < kend; j0 += BN) {
      const int nk = std::min(BN, kend - j0);
      const TilePos tp{p.causal, diag, i0, j0, nk, sk};
      for (int c = 0; c < tp.ncols(); ++c) {
        if (c < nk) {
          const int64_t j = j0 + c;
          load_col<D>(Kt + c, bn, kp + b * p.k_batch_stride + j * p.k_row_stride + hk * p.k_head_stride, d);
          load_row<D>(V + c * dp, vp + b * p.v_batch_stride + j * p.v_row_stride + hk * p.v_head_stride, d);
        } else {
          for (int x = 0; x < d; ++x) Kt[x * bn + c] = 0.f;
        }
      }
      K.gemm(nq, tp.ncols(), d, Q, dp, 1, Kt, bn, S, BN, false);  // S = Q K^T
      K.softmax_rows(S, nq, tp, p.scale, m, l, O, dp);
      K.gemm(nq, dp, nk, S, BN, 1, V, dp, O, dp, true);   // O += P V
    }
    for (int r = 0; r < nq; ++r) {
      const int64_t i = i0 + r;
      T* dst = op + b * p.o_batch_stride + i * p.o_row_stride + h * p.o_head_stride;
      float* lse = p.lse + (b * (int64_t)hq + h) * sq + i;
      if (l[r] > 0.f) {
        const float inv = 1.f / l[r];
        for (int x = 0; x < d; ++x) dst[x] = Elem<D>::store(O[r * dp + x] * inv);
        *lse = m[r] + std::log(l[r]);
      } else if (l[r] == 0.f) {  // fully masked row
        for (int x = 0; x < d; ++x) dst[x] = Elem<D>::store(0.f);
        *lse = kNegInf;
      } else {  // NaN from NaN inputs: propagate rather than hide
        for (int x = 0; x < d; ++x) dst[x] = Elem<D>::store(l[r]);
        *lse = l[r];
      }
    }
  };
  run_tasks((int64_t)nqb * nbh, init, task);
}

// ---------------------------------------------------------------------------------------------
// Backward. P = exp(scale * q.k - lse) is recomputed from the saved lse, Dr = rowsum(dout * out).
//   dv_j = sum_i P_ij dout_i        dS_ij = P_ij (dout_i . v_j - Dr_i)
//   dq_i = scale sum_j dS_ij k_j    dk_j = scale sum_i dS_ij q_i
// Pass 1: tasks (b, q head, q block) own their dq rows. Pass 2: tasks (b, kv head, k block) own
// their dk/dv rows and loop over the group's q heads. No two tasks write the same output.

template <Dtype D>
void bwd_impl(const AttnBwdParams& p) {
  using T = typename Elem<D>::T;
  const Kernels& K = kernels();
  const int d = p.head_dim, dp = round_up(d, VW);
  const int sq = p.seqlen_q, sk = p.seqlen_k, hq = p.heads_q, hkv = p.heads_kv;
  const int group = hq / hkv;
  const int64_t diag = p.q_offset - p.k_offset;
  const float scale = p.scale;
  const T* qp = static_cast<const T*>(p.q);
  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  const T* op = static_cast<const T*>(p.out);
  const T* dop = static_cast<const T*>(p.dout);
  T* dqp = static_cast<T*>(p.dq);
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
  const int nqb = (sq + BM - 1) / BM, nkb = (sk + BN - 1) / BN;

  // Per (b, h, i), written in pass 1 and read in pass 2: Dr, and lse with -inf (masked row) stored
  // as +inf so exp(s - lse) gives P = 0 without a special case.
  std::vector<float> Dr((size_t)p.batch * hq * sq), Lse((size_t)p.batch * hq * sq);
  auto row_index = [&](int b, int h, int64_t i) { return ((size_t)b * hq + h) * sq + i; };
  auto q_row = [&](int b, int64_t i, int h) { return qp + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride; };
  auto do_row = [&](int b, int64_t i, int h) { return dop + b * p.do_batch_stride + i * p.do_row_stride + h * p.do_head_stride; };
  auto k_row = [&](int b, int64_t j, int hk) { return kp + b * p.k_batch_stride + j * p.k_row_stride + hk * p.k_head_stride; };
  auto v_row = [&](int b, int64_t j, int hk) { return vp + b * p.v_batch_stride + j * p.v_row_stride + hk * p.v_head_stride; };

  struct Scratch {
    std::vector<float> q, dO, acc1, acc2, kt, vt, k, s, dp;
  };
  // Scratch follows the work (as in the forward): at most sq query rows, at most sk key columns.
  const int bm = std::min(BM, std::max(sq, 1)), bn = std::min(BN, round_up(sk, VW));
  auto init = [&] {
    Scratch sc;
    sc.q.assign((size_t)bm * dp, 0.f);  // padding columns stay 0 forever
    sc.dO.assign((size_t)bm * dp, 0.f);
    sc.acc1.assign((size_t)std::max(bm, bn) * dp, 0.f);
    sc.acc2.assign((size_t)bn * dp, 0.f);
    sc.kt.assign((size_t)d * bn, 0.f);
    sc.vt.assign((size_t)d * bn, 0.f);
    sc.k.assign((size_t)bn * dp, 0.f);
    sc.s.assign((size_t)bm * BN, 0.f);
    sc.dp.assign((size_t)bm * BN, 0.f);
    return sc;
  };
  // K^T and V^T of keys [j0, j0 + nk) of (b, hk); columns [nk, round_up(nk, VW)) zeroed.
  auto load_kv_t = [&](Scratch& sc, int b, int hk, int j0, int nk) {
    for (int c = 0; c < round_up(nk, VW); ++c) {
      if (c < nk) {
        load_col<D>(sc.kt.data() + c, bn, k_row(b, j0 + c, hk), d);
        load_col<D>(sc.vt.data() + c, bn, v_row(b, j0 + c, hk), d);
      } else {
        for (int x = 0; x < d; ++x) sc.kt[x * bn + c] = sc.vt[x * bn + c] = 0.f;
      }
    }
  };

  // ---- pass 1: dq (and Dr, Lse) ----
  {
    const int64_t nbh = (int64_t)p.batch * hq;
    auto task = [&](int64_t t, Scratch& sc) {
      const int qb = nqb - 1 - (int)(t / nbh);  // heaviest first
      const int64_t bh = t % nbh;
      const int b = (int)(bh / hq), h = (int)(bh % hq), hk = h / group;
      const int i0 = qb * BM, nq = std::min(BM, sq - i0);
      float* Q = sc.q.data();
      float* dO = sc.dO.data();
      float* dQ = sc.acc1.data();
      float* Kr = sc.k.data();
      float* S = sc.s.data();
      float* dPm = sc.dp.data();
      float Lr[BM], Dv[BM];
      for (int r = 0; r < nq; ++r) {
        const int64_t i = i0 + r;
        const T* os = op + b * p.o_batch_stride + i * p.o_row_stride + h * p.o_head_stride;
        load_row<D>(Q + r * dp, q_row(b, i, h), d);
        load_row<D>(dO + r * dp, do_row(b, i, h), d);
        float acc = 0.f;
        for (int x = 0; x < d; ++x) acc += dO[r * dp + x] * Elem<D>::load(os[x]);
        std::fill(dQ + r * dp, dQ + (r + 1) * dp, 0.f);
        const size_t ri = row_index(b, h, i);
        const float L = p.lse[ri];
        Dr[ri] = Dv[r] = acc;
        Lse[ri] = Lr[r] = L == kNegInf ? kInf : L;
      }
      const int kend = key_limit(p.causal, diag, i0 + nq - 1, sk);
      for (int j0 = 0; j0 < kend; j0 += BN) {
        const int nk = std::min(BN, kend - j0);
        load_kv_t(sc, b, hk, j0, nk);
        for (int c = 0; c < nk; ++c) load_row<D>(Kr + c * dp, k_row(b, j0 + c, hk), d);
        const TilePos tp{p.causal, diag, i0, j0, nk, sk};
        K.gemm(nq, tp.ncols(), d, Q, dp, 1, sc.kt.data(), bn, S, BN, false);     // S = Q K^T
        K.gemm(nq, tp.ncols(), d, dO, dp, 1, sc.vt.data(), bn, dPm, BN, false);  // dP = dO V^T
        K.probs_grads(S, dPm, nq, tp, scale, Lr, Dv);
        K.gemm(nq, dp, nk, dPm, BN, 1, Kr, dp, dQ, dp, true);            // dQ += dS K
      }
      for (int r = 0; r < nq; ++r) {
        T* dst = dqp + b * p.dq_batch_stride + (i0 + r) * p.dq_row_stride + h * p.dq_head_stride;
        for (int x = 0; x < d; ++x) dst[x] = Elem<D>::store(dQ[r * dp + x] * scale);
      }
    };
    run_tasks((int64_t)nqb * nbh, init, task);
  }

  // ---- pass 2: dk, dv ----
  {
    const int64_t nbh = (int64_t)p.batch * hkv;
    auto task = [&](int64_t t, Scratch& sc) {
      const int kb = (int)(t / nbh);  // heaviest first: early key blocks are seen by more queries
      const int64_t bh = t % nbh;
      const int b = (int)(bh / hkv), hk = (int)(bh % hkv);
      const int j0 = kb * BN, nk = std::min(BN, sk - j0);
      float* Q = sc.q.data();
      float* dO = sc.dO.data();
      float* dK = sc.acc1.data();
      float* dV = sc.acc2.data();
      float* S = sc.s.data();
      float* dPm = sc.dp.data();
      float Lr[BM], Dv[BM];
      load_kv_t(sc, b, hk, j0, nk);
      std::fill(dK, dK + (size_t)nk * dp, 0.f);
      std::fill(dV, dV + (size_t)nk * dp, 0.f);
      // First query row that sees key j0: diag + i >= j0.
      const int64_t ifirst = p.causal ? std::max<int64_t>(0, j0 - diag) : 0;
      for (int g = 0; g < group; ++g) {
        const int h = hk * group + g;
        for (int64_t i0 = ifirst / BM * BM; i0 < sq; i0 += BM) {
          const int nq = (int)std::min<int64_t>(BM, sq - i0);
          for (int r = 0; r < nq; ++r) {
            load_row<D>(Q + r * dp, q_row(b, i0 + r, h), d);
            load_row<D>(dO + r * dp, do_row(b, i0 + r, h), d);
            const size_t ri = row_index(b, h, i0 + r);
            Lr[r] = Lse[ri];
            Dv[r] = Dr[ri];
          }
          const TilePos tp{p.causal, diag, i0, j0, nk, sk};
          K.gemm(nq, tp.ncols(), d, Q, dp, 1, sc.kt.data(), bn, S, BN, false);
          K.gemm(nq, tp.ncols(), d, dO, dp, 1, sc.vt.data(), bn, dPm, BN, false);
          K.probs_grads(S, dPm, nq, tp, scale, Lr, Dv);
          K.gemm(nk, dp, nq, S, 1, BN, dO, dp, dV, dp, true);    // dV += P^T dO
          K.gemm(nk, dp, nq, dPm, 1, BN, Q, dp, dK, dp, true);   // dK += dS^T Q
        }
      }
      for (int c = 0; c < nk; ++c) {
        const int64_t j = j0 + c;
        T* dks = dkp + b * p.dk_batch_stride + j * p.dk_row_stride + hk * p.dk_head_stride;
        T* dvs = dvp + b * p.dv_batch_stride + j * p.dv_row_stride + hk * p.dv_head_stride;
        for (int x = 0; x < d; ++x) dks[x] = Elem<D>::store(dK[c * dp + x] * scale);
        for (int x = 0; x < d; ++x) dvs[x] = Elem<D>::store(dV[c * dp + x]);
      }
    };
    run_tasks((int64_t)nkb * nbh, init, task);
  }
}

}  // namespace

void attention_fwd_check(const AttnFwdParams& p, bool cuda) {
  check_common(p, "attention");
#if defined(MEGABEAM_CUDA)
  if (cuda) attention_fwd_cuda_check(p);
#else
  MB_CHECK(!cuda, "ERR_NO_CUDA", "attention: this build has no CUDA kernels");
#endif
}

void attention_bwd_check(const AttnBwdParams& p, bool cuda, AttnBwdKernel kernel) {
  check_common(p, "attention");
  const bool has_q = (int64_t)p.batch * p.seqlen_q > 0;
  const bool has_k = (int64_t)p.batch * p.seqlen_k > 0;
  MB_CHECK(!has_q || (p.dout && p.dq), "ERR_ARG", "attention: null dout/dq pointer");
  MB_CHECK(!has_k || (p.dk && p.dv), "ERR_ARG", "attention: null dk/dv pointer");
  MB_CHECK(kernel == AttnBwdKernel::Auto || kernel == AttnBwdKernel::Mma || kernel == AttnBwdKernel::MmaSmall,
           "ERR_ARG", "attention: unknown backward kernel choice");
#if defined(MEGABEAM_CUDA)
  if (cuda) attention_bwd_cuda_check(p, kernel);
#else
  MB_CHECK(!cuda, "ERR_NO_CUDA", "attention: this build has no CUDA kernels");
#endif
}

void attention_fwd_cpu(const AttnFwdParams& p) {
  if ((int64_t)p.batch * p.seqlen_q == 0) return;  // nothing to write: no scratch, no tasks
  MB_DISPATCH_FLOAT(p.dtype, D, fwd_impl<D>(p));
}

void attention_bwd_cpu(const AttnBwdParams& p) {
  // workspace is unused on the CPU (it may be null); scratch is allocated per call, sized by the work.
  if ((int64_t)p.batch * (p.seqlen_q + p.seqlen_k) == 0) return;
  MB_DISPATCH_FLOAT(p.dtype, D, bwd_impl<D>(p));
}

}  // namespace mb
