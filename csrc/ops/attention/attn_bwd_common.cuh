// Pieces shared by the two CUDA backward implementations (attention_bwd.cu: mma.sync; attention_bwd_wgmma.cu:
// wgmma): the kernel arguments, the Dsum preprocess, the fp32 dq accumulator -> output conversion, the
// workspace plan, the tensor checks and the per-chunk launch sequence.
#pragma once
#include <algorithm>
#include <atomic>
#include <string>

#include "attn_common.cuh"

namespace mb {
namespace attn {

// dQ tiles leave both backwards through cp.reduce.async.bulk (sm_90+: the copy engine adds a shared-memory row
// into global memory) instead of per-thread red instructions, which took ~20% of the mma.sync kernel on an H200.
// Below sm_90 these compile to nothing and the mma.sync kernel uses red instead (MB_BULK_DQ = 0).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MB_BULK_DQ 1
#else
#define MB_BULK_DQ 0
#endif

// 1-D bulk reduce-add of `bytes` (a multiple of 16) from shared memory into global fp32, one commit group.
__device__ __forceinline__ void bulk_red_add_f32(float* g, uint32_t s, uint32_t bytes) {
#if MB_BULK_DQ
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(g), "r"(s), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// This thread's bulk operations have read their shared-memory sources (which may then be overwritten).
__device__ __forceinline__ void bulk_wait_read() {
#if MB_BULK_DQ
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}
// This thread's bulk operations have completed (before the CTA exits).
__device__ __forceinline__ void bulk_wait_all() {
#if MB_BULK_DQ
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// Streaming multiprocessors of the current device, read once per device: the grid-stride helper
// kernels below are launched with a few waves' worth of blocks.
inline int sm_count() {
  constexpr int kMaxDevices = 128;
  static std::atomic<int> cache[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    dev = -1;
  }
  int n = dev >= 0 ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (n > 0) return n;
  if (dev < 0 || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return 1;  // still correct (grid-stride loops), only slower; a broken device fails at the launch anyway
  }
  cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

// Kernel arguments of both backwards (the mma.sync kernel reads dsum [b, hq, sq] and ignores lse2/sq_pad).
struct BwdArgs {
  AttnBwdParams p;
  const float* dsum;  // mma.sync: [b, hq, sq]; wgmma: [b, hq, sq_pad], rows sq.. zero
  const float* lse2;  // wgmma: [b, hq, sq_pad] lse * log2(e), +inf where lse = -inf, rows sq.. zero
  float* dq_acc;      // [units in chunk][group][sq][d]: one q block of one head is a contiguous tile
  int unit0;          // first (b * hkv + kvh) unit of this chunk
  int delta;          // clamped q_offset - k_offset
  int group;          // heads_q / heads_kv
  int sq_pad;         // wgmma: seqlen_q rounded up to its q block
  float scale_log2;   // scale * log2(e)
};

// sum_d dout[b, i, h, :] * out[b, i, h, :] in fp32 by one warp (every lane gets the sum).
template <bool BF16, int D>
__device__ __forceinline__ float row_dot(const AttnBwdParams& p, int b, int h, int i, int lane) {
  const uint16_t* o = (const uint16_t*)p.out + b * p.o_batch_stride + (int64_t)i * p.o_row_stride + h * p.o_head_stride;
  const uint16_t* d = (const uint16_t*)p.dout + b * p.do_batch_stride + (int64_t)i * p.do_row_stride + h * p.do_head_stride;
  float acc = 0.f;
#pragma unroll
  for (int c = lane * 2; c < D; c += 64) {
    const float2 x = unpack2<BF16>(*(const uint32_t*)(o + c));
    const float2 y = unpack2<BF16>(*(const uint32_t*)(d + c));
    acc += x.x * y.x + x.y * y.y;
  }
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  return acc;
}

// Dsum[b, h, i] = sum_d dout * out (fp32), one warp per row.
template <bool BF16, int D>
__global__ void attn_bwd_dot_kernel(const AttnBwdParams p, float* dsum) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = (int64_t)p.batch * p.seqlen_q * p.heads_q;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t w = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < rows; w += warps) {
    const int h = (int)(w % p.heads_q);
    const int64_t bi = w / p.heads_q;
    const int i = (int)(bi % p.seqlen_q);
    const int b = (int)(bi / p.seqlen_q);
    const float acc = row_dot<BF16, D>(p, b, h, i, lane);
    if (lane == 0) dsum[((int64_t)b * p.heads_q + h) * p.seqlen_q + i] = acc;
  }
}

// dq = scale * dq_acc for the units [unit0, unit0 + nu); 4 elements per thread.
template <bool BF16, int D>
__global__ void attn_bwd_dq_kernel(const AttnBwdParams p, const float* __restrict__ acc, int unit0, int nu, int group) {
  const int64_t total4 = (int64_t)nu * p.seqlen_q * group * (D / 4);
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total4; idx += stride) {
    const int c = (int)(idx % (D / 4)) * 4;
    int64_t r = idx / (D / 4);
    const int i = (int)(r % p.seqlen_q);
    r /= p.seqlen_q;
    const int g = (int)(r % group);
    const int ul = (int)(r / group);
    const int unit = unit0 + ul;
    const int b = unit / p.heads_kv, h = (unit % p.heads_kv) * group + g;
    const float4 v = *(const float4*)(acc + idx * 4);
    uint16_t* dst = (uint16_t*)p.dq + b * p.dq_batch_stride + (int64_t)i * p.dq_row_stride + h * p.dq_head_stride + c;
    uint2 o;
    o.x = pack2<BF16>(v.x * p.scale, v.y * p.scale);
    o.y = pack2<BF16>(v.z * p.scale, v.w * p.scale);
    *(uint2*)dst = o;
  }
}

// Workspace plan: the preprocess arrays (Dsum [b, hq, sq] for the mma.sync kernels; the wgmma kernel asks
// for more: pre_bytes), then dq_acc for `units` (batch, kv head) units at a time.
struct BwdPlan {
  size_t dsum_bytes, unit_bytes, total;
  int units_total, units_per_chunk;
};
inline constexpr size_t kWorkspaceCap = (size_t)1288490188;  // 1.2 GiB

inline BwdPlan plan_bwd(const AttnBwdParams& p, size_t pre_bytes) {
  BwdPlan pl;
  pl.dsum_bytes = (pre_bytes + 255) & ~(size_t)255;
  pl.unit_bytes = (size_t)p.seqlen_q * (p.heads_q / p.heads_kv) * p.head_dim * 4;
  pl.units_total = p.batch * p.heads_kv;
  size_t room = kWorkspaceCap > pl.dsum_bytes ? kWorkspaceCap - pl.dsum_bytes : 0;
  size_t n = pl.unit_bytes ? room / pl.unit_bytes : (size_t)pl.units_total;
  if (n < 1) n = 1;  // one unit is the minimum: beyond the cap only for a huge group or sequence
  if (n > (size_t)pl.units_total) n = (size_t)pl.units_total;
  if (n > 65535) n = 65535;  // units go on grid.y
  pl.units_per_chunk = (int)n;
  pl.total = pl.dsum_bytes + n * pl.unit_bytes;
  return pl;
}
inline BwdPlan plan_bwd(const AttnBwdParams& p) { return plan_bwd(p, (size_t)p.batch * p.heads_q * p.seqlen_q * 4); }

// The tensor checks both backwards make before anything is launched: rows readable with 16-byte loads,
// dq/dk/dv written with 4- and 8-byte stores.
inline void check_bwd_tensors(const AttnBwdParams& p, const char* who) {
  check_rows(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, who, "q");
  check_rows(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, who, "k");
  check_rows(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, who, "v");
  check_rows(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, who, "out");
  check_rows(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, who, "dout");
  if (((uintptr_t)p.dq & 7) || ((uintptr_t)p.dk & 3) || ((uintptr_t)p.dv & 3) || p.dq_row_stride % 4 ||
      p.dq_head_stride % 4 || p.dq_batch_stride % 4 || p.dk_row_stride % 2 || p.dk_head_stride % 2 ||
      p.dk_batch_stride % 2 || p.dv_row_stride % 2 || p.dv_head_stride % 2 || p.dv_batch_stride % 2)
    throw Error("ERR_UNSUPPORTED", std::string(who) + ": dq/dk/dv strides or pointers misaligned");
}

// What follows the preprocess in both backwards, per chunk of (batch, kv head) units: zero the chunk's
// dq_acc, the main kernel over (key blocks of bc keys, units) by `launch_main(grid)` (a.unit0 set), then
// dq = scale * dq_acc. Never synchronises.
template <bool BF16, int D, class LaunchMain>
void run_bwd_chunks(const AttnBwdParams& p, const BwdPlan& pl, BwdArgs& a, int bc, cudaStream_t stream, LaunchMain&& launch_main) {
  const unsigned n_kblocks = (unsigned)((p.seqlen_k + bc - 1) / bc);
  for (int u0 = 0; u0 < pl.units_total; u0 += pl.units_per_chunk) {
    const int nu = std::min(pl.units_per_chunk, pl.units_total - u0);
    const size_t acc_bytes = (size_t)nu * pl.unit_bytes;
    if (acc_bytes && cudaMemsetAsync(a.dq_acc, 0, acc_bytes, stream) != cudaSuccess) check_cuda("attention backward: memset");
    if (n_kblocks > 0) {
      a.unit0 = u0;
      launch_main(dim3(n_kblocks, (unsigned)nu, 1));
      check_cuda("attention backward: kernel launch");
    }
    if (acc_bytes) {
      const int64_t total4 = (int64_t)nu * p.seqlen_q * a.group * (D / 4);
      const int64_t blocks = std::min<int64_t>((total4 + 255) / 256, sm_count() * 32);
      attn_bwd_dq_kernel<BF16, D><<<(unsigned)blocks, 256, 0, stream>>>(p, a.dq_acc, u0, nu, a.group);
      check_cuda("attention backward: dq convert launch");
    }
  }
}

// The arguments both main kernels take, but for unit0 (run_bwd_chunks) and the wgmma-only lse2/sq_pad.
inline BwdArgs bwd_args(const AttnBwdParams& p, const BwdPlan& pl) {
  BwdArgs a{};
  a.p = p;
  a.dsum = (const float*)p.workspace;
  a.dq_acc = (float*)((char*)p.workspace + pl.dsum_bytes);
  a.delta = clamp_delta(p.q_offset, p.k_offset, p.seqlen_q, p.seqlen_k);
  a.group = p.heads_q / p.heads_kv;
  a.scale_log2 = p.scale * kLog2e;
  return a;
}

}  // namespace attn
}  // namespace mb
