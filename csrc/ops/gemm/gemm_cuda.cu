// CUDA GEMM: cuBLASLt when it was found (gemm_cublaslt.cu), else megabeam's own kernels:
//  - bf16/f16 inputs (same dtype): tensor cores through mma.sync m16n8k16 (f32 accumulate), 128x128x32
//    CTA tiles, 8 warps of 64x32, a 4-stage cp.async pipeline and ldmatrix (.trans for the operand
//    layouts whose contiguous dimension is not K). Any M/N/K: edge chunks are loaded element-wise
//    with zero fill; unaligned operands (ld or pointer not a multiple of 16 bytes) take that path
//    everywhere (slower, still correct).
//  - anything else (f32, mixed input dtypes): a SIMT kernel, 64x64 tiles, 4x4 per thread.
// The epilogue reads out only when beta != 0 and rounds once to out's dtype.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../../common/error.h"
#include "../attention/attn_common.cuh"
#include "../tensor/tensor_ops.h"
#include "gemm.h"

namespace mb {
namespace {
using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::ldsm_x4;
using attn::ldsm_x4_t;
using attn::mma16816;
using attn::smem_u32;

__host__ __device__ __forceinline__ int esz(Dtype d) { return d == Dtype::F32 || d == Dtype::I32 ? 4 : 2; }

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256, PAD = 8;  // 80 KB smem: 2 CTAs per SM
// Shared tile of one operand per stage: K-contiguous [rows][BK+PAD] or MN-contiguous [BK][cols+PAD].
constexpr int kTileK = 128 * (BK + PAD);  // elements, rows = 128
constexpr int kTileMN = BK * (128 + PAD);
constexpr int kTile = kTileK > kTileMN ? kTileK : kTileMN;
constexpr int kSmem = STAGES * 2 * kTile * 2;  // bytes

struct TcArgs {
  const uint16_t* a;
  const uint16_t* b;
  void* out;
  int64_t m, n, k, lda, ldb, ldo, sa, sb, so;
  float alpha, beta;
  Dtype out_dtype;
  int tiles_m, tiles_n;
  bool vec;  // every 8-element chunk along the contiguous dimension is 16-byte aligned
};

// Loads one operand tile (128 x BK of op(X)) into shared memory.
// KMAJ: X's contiguous dimension is K (rows index M or N). Otherwise it is M/N (rows index K).
// rows0: first M/N index of the tile, k0: first K index; R: extent of M/N, K: extent of K.
template <bool KMAJ>
__device__ __forceinline__ void load_tile(uint16_t* s, const uint16_t* x, int64_t ld, int64_t rows0, int64_t R,
                                          int64_t k0, int64_t K, bool vec) {
  // 512 chunks of 8 elements per tile; 2 per thread.
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int c = threadIdx.x + it * THREADS;
    int64_t r, col;  // r: row in memory (strided), col: contiguous index of the chunk start
    int srow, scol, sld;
    int64_t rmax, cmax;
    if (KMAJ) {  // 128 rows x 4 chunks
      srow = c >> 2; scol = (c & 3) * 8; sld = BK + PAD;
      r = rows0 + srow; col = k0 + scol; rmax = R; cmax = K;
    } else {     // 32 rows (k) x 16 chunks
      srow = c >> 4; scol = (c & 15) * 8; sld = 128 + PAD;
      r = k0 + srow; col = rows0 + scol; rmax = K; cmax = R;
    }
    uint16_t* dst = s + srow * sld + scol;
    const bool in_row = r < rmax;
    if (vec && (!in_row || col + 8 <= cmax || col >= cmax)) {
      const bool pred = in_row && col + 8 <= cmax;
      cp_async16(smem_u32(dst), pred ? (const void*)(x + r * ld + col) : (const void*)x, pred);
    } else {
      uint16_t v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = (in_row && col + e < cmax) ? x[r * ld + col + e] : (uint16_t)0;
      uint4 pk;
      pk.x = v[0] | ((uint32_t)v[1] << 16); pk.y = v[2] | ((uint32_t)v[3] << 16);
      pk.z = v[4] | ((uint32_t)v[5] << 16); pk.w = v[6] | ((uint32_t)v[7] << 16);
      *reinterpret_cast<uint4*>(dst) = pk;
    }
  }
}

// A_K: A is stored [M, K] (not transposed); B_K: B is stored [N, K] (transposed).
template <bool BF16, bool A_K, bool B_K>
__global__ void __launch_bounds__(THREADS) gemm_tc_kernel(TcArgs p) {
  extern __shared__ __align__(128) uint16_t smem[];
  uint16_t* sA = smem;
  uint16_t* sB = smem + STAGES * kTile;
  // Grouped tile order (8 M-tiles per group) so concurrently running CTAs share B panels in L2.
  const int pid = blockIdx.x;
  constexpr int G = 8;
  const int per_group = G * p.tiles_n;
  const int group = pid / per_group;
  const int first_m = group * G;
  const int gsize = min(p.tiles_m - first_m, G);
  const int tm = first_m + (pid % per_group) % gsize;
  const int tn = (pid % per_group) / gsize;
  const int64_t m0 = (int64_t)tm * BM, n0 = (int64_t)tn * BN;
  const int64_t bz = blockIdx.y;
  const uint16_t* A = p.a + bz * p.sa;
  const uint16_t* B = p.b + bz * p.sb;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;  // 2 x 4 warps, 64 x 32 each
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int64_t ktiles = (p.k + BK - 1) / BK;
  auto load_stage = [&](int stage, int64_t kt) {
    load_tile<A_K>(sA + stage * kTile, A, p.lda, m0, p.m, kt * BK, p.k, p.vec);
    load_tile<B_K>(sB + stage * kTile, B, p.ldb, n0, p.n, kt * BK, p.k, p.vec);
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    // Prefetch the tile STAGES-1 ahead into the stage consumed last iteration.
    if (kt + STAGES - 1 < ktiles) load_stage((int)((kt + STAGES - 1) % STAGES), kt + STAGES - 1);
    cp_async_commit();
    const uint16_t* a_s = sA + (kt % STAGES) * kTile;
    const uint16_t* b_s = sB + (kt % STAGES) * kTile;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mrow = wm + i * 16;
        if (A_K) {  // [m][k]: lanes 0-15 rows 0-15 at k, lanes 16-31 rows 0-15 at k+8
          const uint16_t* ptr = a_s + (mrow + (lane & 15)) * (BK + PAD) + kk + (lane >> 4) * 8;
          ldsm_x4(af[i], smem_u32(ptr));
        } else {    // [k][m]: matrix j = lane/8: k rows +8*(j/2), m offset 8*(j%2)
          const int j = lane >> 3, r = lane & 7;
          const uint16_t* ptr = a_s + (kk + r + (j >> 1) * 8) * (128 + PAD) + mrow + (j & 1) * 8;
          ldsm_x4_t(af[i], smem_u32(ptr));
        }
      }
#pragma unroll
      for (int jn = 0; jn < 4; jn += 2) {  // two n8 tiles per ldmatrix.x4
        const int ncol = wn + jn * 8;
        uint32_t r4[4];
        const int j = lane >> 3, r = lane & 7;
        if (B_K) {  // [n][k]: matrices (n0-7,k0),(n0-7,k8),(n8-15,k0),(n8-15,k8)
          const uint16_t* ptr = b_s + (ncol + r + (j >> 1) * 8) * (BK + PAD) + kk + (j & 1) * 8;
          ldsm_x4(r4, smem_u32(ptr));
        } else {    // [k][n]: matrices (k0-7,n0),(k8-15,n0),(k0-7,n8),(k8-15,n8), transposed
          const uint16_t* ptr = b_s + (kk + r + (j & 1) * 8) * (128 + PAD) + ncol + (j >> 1) * 8;
          ldsm_x4_t(r4, smem_u32(ptr));
        }
        bf[jn][0] = r4[0]; bf[jn][1] = r4[1];
        bf[jn + 1][0] = r4[2]; bf[jn + 1][1] = r4[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int jn = 0; jn < 4; ++jn) mma16816<BF16>(acc[i][jn], af[i], bf[jn][0], bf[jn][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: c0,c1 at (g, 2q..2q+1), c2,c3 at (g+8, ...), g = lane/4, q = lane%4.
  char* O = static_cast<char*>(p.out) + bz * p.so * esz(p.out_dtype);
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jn = 0; jn < 4; ++jn)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + wm + i * 16 + g + h * 8;
        if (row >= p.m) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t col = n0 + wn + jn * 8 + q * 2 + e;
          if (col >= p.n) continue;
          const int64_t idx = row * p.ldo + col;
          float v = __fmul_rn(p.alpha, acc[i][jn][h * 2 + e]);
          if (p.beta != 0.f) v = __fadd_rn(v, __fmul_rn(p.beta, load_as_f32(O, p.out_dtype, idx)));
          store_from_f32(O, p.out_dtype, idx, v);
        }
      }
}

template <bool BF16, bool A_K, bool B_K>
void launch_tc(const TcArgs& a, int64_t batch, cudaStream_t s) {
  auto kern = gemm_tc_kernel<BF16, A_K, B_K>;
  // > 48 KB of dynamic shared memory needs an opt-in, per device.
  static std::atomic<uint64_t> opted{0};
  int dev = 0;
  cudaGetDevice(&dev);
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(opted.load() & bit)) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (e != cudaSuccess) throw Error("ERR_CUDA", std::string("gemm: shared memory opt-in: ") + cudaGetErrorString(e));
    opted.fetch_or(bit);
  }
  const int64_t tiles = (int64_t)a.tiles_m * a.tiles_n;
  for (int64_t b0 = 0; b0 < batch; b0 += 65535) {
    TcArgs c = a;
    const int64_t nb = std::min<int64_t>(65535, batch - b0);
    c.a += b0 * a.sa; c.b += b0 * a.sb;
    c.out = static_cast<char*>(a.out) + b0 * a.so * esz(a.out_dtype);
    kern<<<dim3((unsigned)tiles, (unsigned)nb), THREADS, kSmem, s>>>(c);
  }
}

// ---- SIMT fallback: any float dtypes ----------------------------------------------------------
struct SimtArgs {
  const void* a;
  const void* b;
  void* out;
  Dtype ad, bd, od;
  int64_t m, n, k, lda, ldb, ldo, sa, sb, so;
  bool ta, tb;
  float alpha, beta;
};

__global__ void __launch_bounds__(256) gemm_simt_kernel(SimtArgs p) {
  constexpr int T = 64, TK = 16;
  __shared__ float As[TK][T + 4], Bs[TK][T + 4];
  const int64_t bz = blockIdx.z;
  const int64_t m0 = (int64_t)blockIdx.x * T, n0 = (int64_t)blockIdx.y * T;
  const char* A = static_cast<const char*>(p.a) + bz * p.sa * esz(p.ad);
  const char* B = static_cast<const char*>(p.b) + bz * p.sb * esz(p.bd);
  char* O = static_cast<char*>(p.out) + bz * p.so * esz(p.od);
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += TK) {
    for (int e = threadIdx.x; e < T * TK; e += 256) {
      const int kk = e / T, r = e % T;  // r fastest: coalesced when the contiguous index is m/n
      const int kk2 = e % TK, r2 = e / TK;  // kk fastest: coalesced when the contiguous index is k
      {
        const int rr = p.ta ? r : r2, kx = p.ta ? kk : kk2;
        const int64_t i = m0 + rr, kq = k0 + kx;
        float v = 0.f;
        if (i < p.m && kq < p.k) v = load_as_f32(A, p.ad, p.ta ? kq * p.lda + i : i * p.lda + kq);
        As[kx][rr] = v;
      }
      {
        const int rr = p.tb ? r2 : r, kx = p.tb ? kk2 : kk;
        const int64_t j = n0 + rr, kq = k0 + kx;
        float v = 0.f;
        if (j < p.n && kq < p.k) v = load_as_f32(B, p.bd, p.tb ? j * p.ldb + kq : kq * p.ldb + j);
        Bs[kx][rr] = v;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = m0 + ty * 4 + i, col = n0 + tx * 4 + j;
      if (row >= p.m || col >= p.n) continue;
      const int64_t idx = row * p.ldo + col;
      float v = __fmul_rn(p.alpha, acc[i][j]);
      if (p.beta != 0.f) v = __fadd_rn(v, __fmul_rn(p.beta, load_as_f32(O, p.od, idx)));
      store_from_f32(O, p.od, idx, v);
    }
}

bool aligned16(const void* p, int64_t ld, int64_t stride, int64_t batch) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0 && ld % 8 == 0 && (batch <= 1 || stride % 8 == 0);
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

void gemm_builtin_cuda(const GemmParams& p, cudaStream_t s) {
  const bool tc = p.a_dtype == p.b_dtype && (p.a_dtype == Dtype::BF16 || p.a_dtype == Dtype::F16) && p.k > 0;
  const int64_t tiles_m = (p.m + BM - 1) / BM, tiles_n = (p.n + BN - 1) / BN;
  if (tc && tiles_m * tiles_n < 0x7fffffffLL) {
    TcArgs a;
    a.a = static_cast<const uint16_t*>(p.a);
    a.b = static_cast<const uint16_t*>(p.b);
    a.out = p.out;
    a.m = p.m; a.n = p.n; a.k = p.k; a.lda = p.lda; a.ldb = p.ldb; a.ldo = p.ldo;
    a.sa = p.stride_a; a.sb = p.stride_b; a.so = p.stride_out;
    a.alpha = p.alpha; a.beta = p.beta; a.out_dtype = p.out_dtype;
    a.tiles_m = (int)tiles_m; a.tiles_n = (int)tiles_n;
    a.vec = aligned16(p.a, p.lda, p.stride_a, p.batch) && aligned16(p.b, p.ldb, p.stride_b, p.batch);
    const bool ak = !p.trans_a, bk = p.trans_b;
    const bool bf = p.a_dtype == Dtype::BF16;
#define MB_TC(BF, AK, BK_)                                          \
  if (bf == BF && ak == AK && bk == BK_) launch_tc<BF, AK, BK_>(a, p.batch, s)
    MB_TC(true, true, true); MB_TC(true, true, false); MB_TC(true, false, true); MB_TC(true, false, false);
    MB_TC(false, true, true); MB_TC(false, true, false); MB_TC(false, false, true); MB_TC(false, false, false);
#undef MB_TC
    check_launch("gemm (tensor cores)");
    return;
  }
  SimtArgs a;
  a.a = p.a; a.b = p.b; a.out = p.out; a.ad = p.a_dtype; a.bd = p.b_dtype; a.od = p.out_dtype;
  a.m = p.m; a.n = p.n; a.k = p.k; a.lda = p.lda; a.ldb = p.ldb; a.ldo = p.ldo;
  a.sa = p.stride_a; a.sb = p.stride_b; a.so = p.stride_out; a.ta = p.trans_a; a.tb = p.trans_b;
  a.alpha = p.alpha; a.beta = p.beta;
  const int64_t gm = (p.m + 63) / 64, gn = (p.n + 63) / 64;
  if (gn > 65535) throw Error("ERR_UNSUPPORTED", "gemm: n too large for the builtin SIMT kernel");
  for (int64_t b0 = 0; b0 < p.batch; b0 += 65535) {
    SimtArgs c = a;
    const int64_t nb = std::min<int64_t>(65535, p.batch - b0);
    c.a = static_cast<const char*>(a.a) + b0 * a.sa * esz(a.ad);
    c.b = static_cast<const char*>(a.b) + b0 * a.sb * esz(a.bd);
    c.out = static_cast<char*>(a.out) + b0 * a.so * esz(a.od);
    gemm_simt_kernel<<<dim3((unsigned)gm, (unsigned)gn, (unsigned)nb), 256, 0, s>>>(c);
  }
  check_launch("gemm (SIMT)");
}

void gemm_cuda(const GemmParams& p0, cudaStream_t s) {
  const GemmParams p = gemm_fold(p0);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  static const bool use_lt = gemm_info().backend == "cublaslt";  // MEGABEAM_GEMM is read once
  // K = 0 is out = beta·out: no library call needed (cuBLASLt refuses it), the builtin kernels write it.
  if (p.k == 0) { gemm_builtin_cuda(p, s); return; }
  if (p.backend == GemmBackend::CublasLt) {
    std::string why;
    if (!gemm_cublaslt(p, s, &why)) throw Error("ERR_UNSUPPORTED", "gemm: backend 'cublaslt': " + why);
    return;
  }
  if (p.backend == GemmBackend::Auto && use_lt && gemm_cublaslt(p, s)) return;
  gemm_builtin_cuda(p, s);
}

}  // namespace mb
