// Hopper (sm_90a) plumbing shared by the wgmma attention kernels (attention_fwd_wgmma.cu,
// attention_bwd_wgmma.cu): wgmma fence/commit/wait, shared-memory matrix descriptors for the 128-byte
// swizzle, the swizzled tile layout and its cp.async loader, and bulk reductions. The wgmma wrappers
// themselves are generated (attn_wgmma_ops.cuh, scripts/gen-wgmma.py).
//
// Tile layout: a tile of R rows x D 16-bit columns is stored as D/64 blocks [R][64] (128 bytes per row),
// 16-byte chunk index ^= row & 7, 1024-byte atoms of 8 rows: the canonical SW128 layout wgmma reads
// K-major (rows = M or N, columns = K) or MN-major (rows = K, columns = M or N).
#pragma once
#include <cstdint>
#include "ops/attention/attn_common.cuh"
#include "ops/attention/attn_wgmma_ops.cuh"

// The kernels' bodies exist only in sm_90a SASS; other targets compile an empty body that traps, and
// the launchers refuse to launch there (cudaFuncGetAttributes().binaryVersion must be 90).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MB_WG_ENABLED 1
#else
#define MB_WG_ENABLED 0
#endif

namespace mb {
namespace attn_wg {

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keep the compiler from moving accumulator / fragment reads and writes across wgmma issue and wait
// points (cute's warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}
// Generic-proxy shared-memory writes (cp.async, st.shared) -> async-proxy reads (wgmma, bulk copies).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63). Addresses and
// offsets in bytes; the descriptor holds them >> 4. base_offset (bits 49-51) = 0: every tile is
// 1024-B aligned, sub-atom start offsets (K-major k-steps: +32/64/96 B) are the usual cute/DeepGEMM
// practice. K-major: LBO unused (16), SBO = 1024 (8 rows x 128 B). MN-major: LBO = byte distance
// between 64-element MN blocks, SBO = 1024 (8 K-rows x 128 B).
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo >> 4) & 0x3FFFu) << 16) |
         ((uint64_t)((sbo >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}

// Byte offset of element (r, c) (c a multiple of 8: the 16-byte chunk) of a ROWS x D tile.
template <int ROWS>
__device__ __forceinline__ uint32_t sw_off(int r, int c) {
  return (uint32_t)((c >> 6) * ROWS * 128 + r * 128 + ((((c >> 3) & 7) ^ (r & 7)) << 4));
}

// Copy a ROWS x D tile (rows row_stride elements apart) into the swizzled layout with cp.async issued by
// NT threads; rows >= valid are zero-filled (padding never injects NaN/Inf into the matmuls).
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(uint32_t s, const uint16_t* g, int64_t row_stride, int valid, int tid) {
  constexpr int CH = D / 8;
  constexpr int RSTEP = NT / CH;
  static_assert(NT % CH == 0 && RSTEP % 8 == 0 && ROWS % RSTEP == 0, "bad tile shape");
  const int r0 = tid / CH, c = (tid % CH) * 8;
  const uint16_t* src = g + (int64_t)r0 * row_stride + c;
  const uint32_t dst = s + sw_off<ROWS>(r0, c);  // (r & 7) is the same for r0 + i * RSTEP
#pragma unroll
  for (int i = 0; i < ROWS / RSTEP; ++i) {
    const bool ok = r0 + i * RSTEP < valid;
    attn::cp_async16(dst + i * RSTEP * 128, ok ? src : g, ok);
    src += (int64_t)RSTEP * row_stride;
  }
}

__device__ __forceinline__ void bulk_red_add_f32(float* g, uint32_t s, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(g), "r"(s), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

}  // namespace attn_wg
}  // namespace mb

// Host side: whether kernel `kern` (a wgmma kernel) runs on the current device: an sm_90 device, sm_90a
// SASS in the binary, and `smem` bytes of shared memory per block allowed. Never throws.
namespace mb {
namespace attn_wg {
inline bool wgmma_runs_here(const void* kern, int smem) {
  int dev = 0, major = 0, minor = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) { cudaGetLastError(); return false; }
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (major != 9 || minor != 0 || smem > optin) return false;
  cudaFuncAttributes fa;
  if (cudaFuncGetAttributes(&fa, kern) != cudaSuccess) { cudaGetLastError(); return false; }
  return fa.binaryVersion == 90;
}
}  // namespace attn_wg
}  // namespace mb
