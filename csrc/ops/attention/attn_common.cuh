// Shared device helpers for the flash attention kernels: cp.async, ldmatrix, mma.sync (m16n8k16),
// swizzled shared-memory addressing and host-side parameter checks. CUDA only.
#pragma once
#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#include <cstdint>
#include <string>
#include "attention.h"
#include "../../common/error.h"

namespace mb {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// 16-byte async copy; pred=false zero-fills the destination (src-size 0 reads nothing).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  int sz = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool pred) {
  int sz = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(sz) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// D += A(16x16, row) * B(16x8, col), fp32 accumulate.
template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> packed pair (lo in the low half), round to nearest even (same as dtype.h).
template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <bool BF16>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
  float2 f;
  if constexpr (BF16) {
    f.x = __uint_as_float(v << 16);
    f.y = __uint_as_float(v & 0xffff0000u);
  } else {
    unsigned short lo = (unsigned short)(v & 0xffff), hi = (unsigned short)(v >> 16);
    asm("cvt.f32.f16 %0, %1;" : "=f"(f.x) : "h"(lo));
    asm("cvt.f32.f16 %0, %1;" : "=f"(f.y) : "h"(hi));
  }
  return f;
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Byte offset of 16-byte chunk `ch` of row `r` in a tile with ROWB bytes per row (>= 128):
// chunk index XOR (row & 7) so that 8 rows read by one ldmatrix phase hit 8 distinct bank groups.
template <int ROWB>
__device__ __forceinline__ uint32_t swz(int r, int ch) {
  return (uint32_t)(r * ROWB + ((ch ^ (r & 7)) << 4));
}

// Copy a ROWS x D tile (16-bit elements, rows `row_stride` elements apart) into swizzled smem.
// Rows >= valid are zero-filled so that padding never injects NaN/Inf into the matmuls.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(uint32_t s, const uint16_t* g, int64_t row_stride, int valid, int tid) {
  constexpr int CH = D / 8;
  constexpr int RSTEP = NT / CH;  // rows covered per pass; a multiple of 8 keeps (row & 7) fixed per thread
  static_assert(NT % CH == 0 && RSTEP % 8 == 0 && ROWS % RSTEP == 0, "bad tile shape");
  const int r0 = tid / CH, ch = tid % CH;
  const uint16_t* src = g + (int64_t)r0 * row_stride + ch * 8;
  const uint32_t dst = s + swz<D * 2>(r0, ch);
#pragma unroll
  for (int i = 0; i < ROWS / RSTEP; ++i) {
    bool ok = r0 + i * RSTEP < valid;
    cp_async16(dst + i * RSTEP * D * 2, ok ? src : g, ok);
    src += (int64_t)RSTEP * row_stride;
  }
}

// The key blocks (BC keys each) a forward CTA visits for query rows [m0, m0 + q_valid): blocks
// [0, n_blocks) hold every key visible to some row (causal: up to the last valid row's diagonal), and
// blocks [0, n_unmasked) are visible to every row and lie inside sk, so they need no mask. Shared by the
// mma.sync and the wgmma forward.
struct FwdKeyRange {
  int n_blocks, n_unmasked;
};
__host__ __device__ inline FwdKeyRange fwd_key_range(int m0, int q_valid, int sk, bool causal, int delta, int bc) {
  int n_end = sk;
  if (causal) {
    const int64_t lim = (int64_t)m0 + q_valid - 1 + delta + 1;
    n_end = (int)(lim < 0 ? 0 : lim > sk ? sk : lim);
  }
  const int n_blocks = (n_end + bc - 1) / bc;
  int n_unmasked = sk / bc;
  if (causal) {
    const int64_t t = (int64_t)m0 + delta + 1;  // key block nb is unmasked iff (nb+1)*bc <= m0 + delta + 1
    const int64_t u = t <= 0 ? 0 : t / bc;
    if (u < n_unmasked) n_unmasked = (int)u;
  }
  return {n_blocks, n_unmasked < n_blocks ? n_unmasked : n_blocks};
}

// q_offset - k_offset clamped so it fits an int without changing any mask decision for valid rows:
// delta >= sk masks nothing, delta <= -sq masks every valid row.
inline int clamp_delta(int64_t q_offset, int64_t k_offset, int sq, int sk) {
  // Offsets are arbitrary int64; compute the difference without overflow.
  int64_t lo = -(int64_t)sq - 1, hi = (int64_t)sk + 1;
  if (q_offset >= 0 && k_offset < 0 && q_offset > INT64_MAX + k_offset) return (int)hi;
  if (q_offset < 0 && k_offset > 0 && q_offset < INT64_MIN + k_offset) return (int)lo;
  int64_t d = q_offset - k_offset;
  if (d < lo) d = lo;
  if (d > hi) d = hi;
  return (int)d;
}

inline void check_cuda(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string(what) + ": " + cudaGetErrorString(e));
}

inline bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

// Shared by fwd and bwd launchers.
inline void check_common(const AttnFwdParams& p, const char* who) {
  std::string w(who);
  if (p.dtype != Dtype::BF16 && p.dtype != Dtype::F16)
    throw Error("ERR_UNSUPPORTED", w + ": CUDA flash attention supports bf16 and f16 only, got " + dtype_name(p.dtype));
  if (p.head_dim != 64 && p.head_dim != 128)
    throw Error("ERR_UNSUPPORTED", w + ": CUDA flash attention supports head_dim 64 and 128, got " + std::to_string(p.head_dim));
  if (p.batch < 0 || p.seqlen_q < 0 || p.seqlen_k < 0 || p.heads_q <= 0 || p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0)
    throw Error("ERR_SHAPE", w + ": heads_q must be a positive multiple of heads_kv");
  if (p.seqlen_q >= (1 << 30) || p.seqlen_k >= (1 << 30))
    throw Error("ERR_UNSUPPORTED", w + ": sequence length must be below 2^30");
  if (p.heads_q > 65535 || p.batch > 65535)
    throw Error("ERR_UNSUPPORTED", w + ": batch and heads must be at most 65535");
}

inline void check_rows(const void* ptr, int64_t bs, int64_t rs, int64_t hs, const char* who, const char* name) {
  if (!aligned16(ptr) || bs % 8 || rs % 8 || hs % 8)
    throw Error("ERR_UNSUPPORTED", std::string(who) + ": " + name +
                                       " must be 16-byte aligned with batch/row/head strides that are multiples of 8 elements");
}

}  // namespace attn
}  // namespace mb
#endif  // MEGABEAM_CUDA
