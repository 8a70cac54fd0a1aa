// Hopper (sm_90a) plumbing shared by the wgmma attention kernels (attention_fwd_wgmma.cu,
// attention_bwd_wgmma.cu): wgmma fence/commit/wait, shared-memory matrix descriptors for the 128-byte
// swizzle, the swizzled tile layout, mbarriers, TMA tile loads and their host-side
// descriptors, named barriers and TMA reductions. The wgmma wrappers themselves are generated
// (attn_wgmma_ops.cuh, scripts/gen-wgmma.py).
//
// Tile layout: a tile of R rows x D 16-bit columns is stored as D/64 blocks [R][64] (128 bytes per row),
// 16-byte chunk index ^= row & 7, 1024-byte atoms of 8 rows: the canonical SW128 layout wgmma reads
// K-major (rows = M or N, columns = K) or MN-major (rows = K, columns = M or N).
#pragma once
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the runtime's driver entry point
#include <algorithm>
#include <cstdint>
#include <mutex>
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

// mbarriers, TMA tile loads and named barriers (the warp-specialised kernels: a producer warp issues TMA
// into stages guarded by full/empty mbarriers).
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred P1;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra WAIT;\nDONE:\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void named_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void named_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

// A ROWS x D tile at logical (row, head, batch) -> the swizzled layout: one TMA box per 64 columns.
template <int ROWS, int D>
__device__ __forceinline__ void tma_tile(uint32_t dst, const CUtensorMap* map, const int (&perm)[3], uint32_t bar, int row, int head,
                                         int batch) {
  const int lg[3] = {row, head, batch};
  const int c1 = lg[perm[0]], c2 = lg[perm[1]], c3 = lg[perm[2]];
#pragma unroll
  for (int hcol = 0; hcol < D / 64; ++hcol) tma_load_4d(dst + hcol * ROWS * 128, map, bar, hcol * 64, c1, c2, c3);
}


// 1-D bulk copy global -> shared (16-byte aligned addresses, bytes a multiple of 16), completing on `bar`.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst), "l"(src),
               "r"(bytes), "r"(bar)
               : "memory");
}
// TMA reduce-add of a box from shared memory into a rank-3 fp32 tensor (the box's layout is the map's:
// 128-byte swizzled rows); out-of-bounds elements of the box are dropped. Issued into the thread's bulk group:
// bulk_commit() closes it; attn::bulk_wait_read / bulk_wait_all (attn_bwd_common.cuh) wait for it.
__device__ __forceinline__ void tma_red_add_3d(const CUtensorMap* map, uint32_t src, int c0, int c1, int c2) {
  asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"((uint64_t)map),
               "r"(src), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

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

// Host: TMA descriptors. cuTensorMapEncodeTiled is a driver function; the runtime hands out its entry
// point (the addon links the runtime statically and never links libcuda itself).
typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                  const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                  CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
inline EncodeTiledFn encode_fn() {
  static EncodeTiledFn fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = (EncodeTiledFn)f;
    cudaGetLastError();
  });
  return fn;
}

// [rows, heads, batch] with element strides -> a rank-4 map (columns, then the three in increasing
// stride order, as TMA wants), box = 64 columns x box_rows rows, 128-byte swizzle, zero fill outside.
inline bool make_map(CUtensorMap* m, int (&perm)[3], const void* ptr, bool bf16, int d, int rows, int heads, int batch, int64_t rs,
                     int64_t hs, int64_t bs, int box_rows) {
  if (attention_debug_no_tma()) {  // test hook: as on a driver without the encoder
    attention_debug_count_tma_refusal();
    return false;
  }
  EncodeTiledFn enc = encode_fn();
  if (!enc || rows <= 0) return false;
  const int64_t size[3] = {rows, heads, batch}, stride[3] = {rs, hs, bs};
  int idx[3] = {0, 1, 2};
  std::stable_sort(idx, idx + 3, [&](int x, int y) { return stride[x] < stride[y]; });
  cuuint64_t gdim[4] = {(cuuint64_t)d, 0, 0, 0}, gstride[3];
  cuuint32_t box[4] = {64, 1, 1, 1}, estride[4] = {1, 1, 1, 1};
  for (int i = 0; i < 3; ++i) {
    perm[i] = idx[i];
    gdim[1 + i] = (cuuint64_t)size[idx[i]];
    gstride[i] = (cuuint64_t)stride[idx[i]] * 2;
    if (idx[i] == 0) box[1 + i] = (cuuint32_t)box_rows;
  }
  return enc(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<void*>(ptr), gdim, gstride, box,
             estride, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// A fp32 accumulator [planes][rows][d] (contiguous) -> a rank-3 map whose box is 32 columns (128 bytes) x
// box_rows rows, 128-byte swizzle: what tma_red_add_3d reduces into. Same test hook as make_map.
inline bool make_acc_map(CUtensorMap* m, float* ptr, int d, int rows, int64_t planes, int box_rows) {
  if (attention_debug_no_tma()) {
    attention_debug_count_tma_refusal();
    return false;
  }
  EncodeTiledFn enc = encode_fn();
  if (!enc || rows <= 0 || planes <= 0) return false;
  cuuint64_t gdim[3] = {(cuuint64_t)d, (cuuint64_t)rows, (cuuint64_t)planes};
  cuuint64_t gstride[2] = {(cuuint64_t)d * 4, (cuuint64_t)d * 4 * (cuuint64_t)rows};
  cuuint32_t box[3] = {32, (cuuint32_t)box_rows, 1}, estride[3] = {1, 1, 1};
  return enc(m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, ptr, gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}  // namespace attn_wg
}  // namespace mb
