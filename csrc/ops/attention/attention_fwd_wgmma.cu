// Flash attention forward with Hopper wgmma (sm_90a): what attention_fwd_cuda runs on sm_90 GPUs (head_dim
// 64 and 128, bf16/f16) unless the caller asks for the mma.sync kernel. Same semantics as the mma.sync
// forward (attention_fwd.cu): GQA without expansion, causal with q/k offsets, any lengths, fully masked
// rows -> out 0 and lse -inf. bench/NOTES.md has the design notes and numbers.
//
// Design (FA3's consumer mainloop without a producer warp):
//   CTA = 2 warpgroups (256 threads) per (128 query rows, q head, batch); warpgroup w owns rows 64w..64w+63.
//   Q stays in shared memory; K and V stream through two buffers each with cp.async issued by all threads
//   one key block ahead. Key blocks are visited from the last to the first, so the masked (diagonal or
//   ragged) blocks come first and the rest carry no mask arithmetic; CTAs with the most blocks start first.
//   Per key block n (128 keys), each warpgroup:
//     1. issues S_n = Q_w K_n^T            (wgmma m64n128k16, both operands K-major from smem)
//     2. issues O += P_{n+1} V_{n+1}       (wgmma m64n{D}k16, P from registers, V read N-major)
//     3. waits for S_n only; the online softmax of S_n (mask, max, exp2, row sums) runs while the
//        tensor cores still work on step 2 (intra-warpgroup overlap of softmax and the PV GEMM)
//     4. waits for step 2, rescales O by exp2(m_old - m_new), packs P_n into bf16/f16 A fragments.
//   The last block's PV runs after the loop. Accumulators per thread: S 64, O D/2 fp32; P 32 registers.
//   Shared memory: Q BR x D + 2 x K + 2 x V tiles of BC x D (d=128: 160 KB, d=64: 80 KB) + 1 KB alignment.
#if defined(MEGABEAM_CUDA)
#include <cmath>
#include <string>
#include "ops/attention/attention_wgmma.h"
#include "ops/attention/attn_wgmma.cuh"

namespace mb {
namespace attn_wg {

using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::ex2;
using attn::kLn2;
using attn::kLog2e;
using attn::pack2;
using attn::smem_u32;

struct FwdArgs {
  AttnFwdParams p;
  int delta;         // clamped q_offset - k_offset
  int group;         // heads_q / heads_kv
  float scale_log2;  // scale * log2(e)
};

template <int D>
struct FwdCfg {
  static constexpr int NT = 256;  // 2 warpgroups
  static constexpr int BR = 128;  // query rows per CTA (64 per warpgroup)
  static constexpr int BC = 128;  // keys per block
  static constexpr int Q_TILE = BR * D * 2;
  static constexpr int KV_TILE = BC * D * 2;
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_K = OFF_Q + Q_TILE;    // [2] buffers
  static constexpr int OFF_V = OFF_K + 2 * KV_TILE;  // [2] buffers
  static constexpr int SMEM = OFF_V + 2 * KV_TILE + 1024;  // + slack to align the base to 1024 B
  static_assert(OFF_K % 1024 == 0 && OFF_V % 1024 == 0 && KV_TILE % 1024 == 0, "swizzle atoms need 1024-B alignment");
};

// O (+)= P V for one key block: P as 8 A fragments (16 keys each), V [BC keys][D] read N-major.
template <bool BF16, int D>
__device__ __forceinline__ void pv_gemm(float (&o)[D / 2], const uint32_t (&pf)[8][4], uint32_t sV) {
  constexpr int BC = FwdCfg<D>::BC;
#pragma unroll
  for (int kk = 0; kk < BC / 16; ++kk) {
    if constexpr (D == 128) wgmma_rs_n128<BF16, 1>(o, pf[kk], make_desc(sV + kk * 16 * 128, BC * 128, 1024), 1);
    else wgmma_rs_n64<BF16, 1>(o, pf[kk], make_desc(sV + kk * 16 * 128, BC * 128, 1024), 1);
  }
}

template <bool BF16, int D>
__global__ void __launch_bounds__(256, 1) attn_fwd_wgmma_kernel(const FwdArgs a) {
#if MB_WG_ENABLED
  using C = FwdCfg<D>;
  constexpr int BR = C::BR, BC = C::BC, NT = C::NT;
  constexpr int NJ = BC / 8;  // n8 column blocks of S
  constexpr int NO = D / 8;   // n8 column blocks of O
  const AttnFwdParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sQ = base + C::OFF_Q, sK0 = base + C::OFF_K, sV0 = base + C::OFF_V;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2;       // warpgroup: query rows 64*wg ..
  const int wi = warp & 3;        // warp in warpgroup: accumulator rows 16*wi ..
  const int lr = lane >> 2;       // accumulator row within the warp's 16 (and +8)
  const int lc = (lane & 3) * 2;  // accumulator column pair within an n8 block
  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / a.group;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int m0 = m_block * BR;

  const uint16_t* gQ = (const uint16_t*)p.q + b * p.q_batch_stride + h * p.q_head_stride + (int64_t)m0 * p.q_row_stride;
  const uint16_t* gK = (const uint16_t*)p.k + b * p.k_batch_stride + kvh * p.k_head_stride;
  const uint16_t* gV = (const uint16_t*)p.v + b * p.v_batch_stride + kvh * p.v_head_stride;
  uint16_t* gO = (uint16_t*)p.out + b * p.o_batch_stride + h * p.o_head_stride;
  float* gL = p.lse + ((int64_t)b * p.heads_q + h) * sq;

  const int q_valid = min(BR, sq - m0);
  // Keys visible to the last valid row of this block bound the key range.
  int n_end = sk;
  if (p.causal) {
    const int64_t lim = (int64_t)m0 + q_valid - 1 + a.delta + 1;
    n_end = (int)max((int64_t)0, min((int64_t)sk, lim));
  }
  const int n_blocks = (n_end + BC - 1) / BC;
  // Blocks [0, n_unmasked) are fully visible to every row of the block and lie inside sk.
  int n_unmasked = sk / BC;
  if (p.causal) {
    const int64_t t = (int64_t)m0 + a.delta + 1;  // key block nb is unmasked iff (nb+1)*BC <= m0 + delta + 1
    n_unmasked = (int)min((int64_t)n_unmasked, t <= 0 ? (int64_t)0 : t / BC);
  }
  n_unmasked = min(n_unmasked, n_blocks);

  if (n_blocks == 0) {  // no key visible to any row: out = 0, lse = -inf
    constexpr int CH = D / 8;
    for (int c = tid; c < BR * CH; c += NT) {
      const int r = c / CH, ch = c % CH;
      if (r < q_valid) *(uint4*)(gO + (int64_t)(m0 + r) * p.o_row_stride + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    for (int r = tid; r < q_valid; r += NT) gL[m0 + r] = -INFINITY;
    return;
  }

  load_tile<BR, D, NT>(sQ, gQ, p.q_row_stride, q_valid, tid);
  {
    const int nb = n_blocks - 1;
    load_tile<BC, D, NT>(sK0, gK + (int64_t)nb * BC * p.k_row_stride, p.k_row_stride, sk - nb * BC, tid);
  }
  cp_async_commit();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float s[BC / 2];
  uint32_t pf[BC / 16][4];  // P of the previous block (A fragments, 16 keys each)
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  const int row0 = m0 + wg * 64 + wi * 16 + lr;  // query row of accumulator rows 0/1 (+8 for 2/3)
  const uint32_t qw = (uint32_t)wg * 64 * 128;   // this warpgroup's 64 rows inside a Q column block

  // Top of step it (key block nb): wait for this step's tiles, then start the next step's loads.
  auto begin_step = [&](int it, int nb) {
    const int kb = it & 1;
    cp_async_wait<0>();
    fence_proxy_async();  // cp.async (generic proxy) writes -> wgmma (async proxy) reads
    __syncthreads();      // K[nb] and V[nb+1] landed; every warpgroup is done with K[nb+1] and V[nb+2]
    if (nb > 0)
      load_tile<BC, D, NT>(sK0 + (kb ^ 1) * C::KV_TILE, gK + (int64_t)(nb - 1) * BC * p.k_row_stride, p.k_row_stride,
                           sk - (nb - 1) * BC, tid);
    load_tile<BC, D, NT>(sV0 + kb * C::KV_TILE, gV + (int64_t)nb * BC * p.v_row_stride, p.v_row_stride, sk - nb * BC, tid);
    cp_async_commit();
  };
  // 1. S = Q_w K^T (issued, not waited).
  auto issue_s = [&](int it) {
    const uint32_t sK = sK0 + (it & 1) * C::KV_TILE;
    fence_regs(s);
    fence_regs(o);
    fence_regs(pf);
    wg_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + qw + (k & 3) * 32;
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + (k & 3) * 32;
      wgmma_ss_n128<BF16, 0, 0>(s, make_desc(sQ + qo, 16, 1024), make_desc(sK + ko, 16, 1024), k > 0);
    }
    wg_commit();
  };
  // 3. Online softmax of S in base 2: s becomes P; corr/sum for the running statistics.
  float corr[2], sum[2];
  auto softmax = [&](int nb) {
#pragma unroll
    for (int i = 0; i < BC / 2; ++i) s[i] *= a.scale_log2;
    if (nb >= n_unmasked) {
      const int col0 = nb * BC + lc;
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = col0 + j * 8 + (e & 1);
          const int row = row0 + (e >> 1) * 8;
          if (col >= sk || (p.causal && col - row > a.delta)) s[j * 4 + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < NJ; ++j) mx = fmaxf(mx, fmaxf(s[j * 4 + 2 * hh], s[j * 4 + 2 * hh + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(mrow[hh], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // avoids (-inf) - (-inf)
      corr[hh] = ex2(mrow[hh] - m_use);
      mrow[hh] = m_new;
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const float p0 = ex2(s[j * 4 + 2 * hh] - m_use);
        const float p1 = ex2(s[j * 4 + 2 * hh + 1] - m_use);
        s[j * 4 + 2 * hh] = p0;
        s[j * 4 + 2 * hh + 1] = p1;
        acc += p0 + p1;
      }
      sum[hh] = acc;
    }
  };
  // 4. (after the PV GEMM is done) rescale O; P becomes the next PV's A operand.
  auto rescale_pack = [&]() {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      lrow[hh] = lrow[hh] * corr[hh] + sum[hh];
#pragma unroll
      for (int j = 0; j < NO; ++j) {
        o[j * 4 + 2 * hh] *= corr[hh];
        o[j * 4 + 2 * hh + 1] *= corr[hh];
      }
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) pf[kk][i] = pack2<BF16>(s[kk * 8 + 2 * i], s[kk * 8 + 2 * i + 1]);
  };

  // The first block has no PV of a previous block to overlap; peeled so that every wgmma wait in the
  // loop has a fixed number of groups in flight (ptxas serialises wgmmas when it cannot tell).
  begin_step(0, n_blocks - 1);
  issue_s(0);
  wg_wait<0>();
  fence_regs(s);
  softmax(n_blocks - 1);
  rescale_pack();
  for (int it = 1; it < n_blocks; ++it) {
    const int nb = n_blocks - 1 - it;
    begin_step(it, nb);
    issue_s(it);
    // 2. O += P V of the previous block (V[nb+1], in the other buffer)
    pv_gemm<BF16, D>(o, pf, sV0 + ((it & 1) ^ 1) * C::KV_TILE);
    wg_commit();
    wg_wait<1>();  // S done; the PV GEMM keeps running under the softmax
    fence_regs(s);
    softmax(nb);
    wg_wait<0>();
    fence_regs(o);
    fence_regs(pf);
    rescale_pack();
  }

  // The last block's PV (V[0], loaded during the last iteration).
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  fence_regs(o);
  fence_regs(pf);
  wg_fence();
  pv_gemm<BF16, D>(o, pf, sV0 + ((n_blocks - 1) & 1) * C::KV_TILE);
  wg_commit();
  wg_wait<0>();
  fence_regs(o);

  // Epilogue: normalise; lse in natural log (-inf for a row that saw no key). Each quad of lanes writes
  // 16 contiguous bytes of a row per n8 block.
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float l = lrow[hh];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int row = row0 + hh * 8;
    if (row < sq) {
      if ((lane & 3) == 0) gL[row] = l > 0.f ? (mrow[hh] + log2f(l)) * kLn2 : -INFINITY;
      uint16_t* dst = gO + (int64_t)row * p.o_row_stride + lc;
#pragma unroll
      for (int j = 0; j < NO; ++j) *(uint32_t*)(dst + j * 8) = pack2<BF16>(o[j * 4 + 2 * hh] * inv, o[j * 4 + 2 * hh + 1] * inv);
    }
  }
#else
  __trap();  // not sm_90a SASS: the launcher refuses this case before launching
#endif
}

template <bool BF16, int D>
static void launch(const AttnFwdParams& p, cudaStream_t stream) {
  using C = FwdCfg<D>;
  auto kern = attn_fwd_wgmma_kernel<BF16, D>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
  attn::check_cuda("attention_fwd_wgmma: cudaFuncSetAttribute");
  FwdArgs a;
  a.p = p;
  a.delta = attn::clamp_delta(p.q_offset, p.k_offset, p.seqlen_q, p.seqlen_k);
  a.group = p.heads_q / p.heads_kv;
  a.scale_log2 = p.scale * kLog2e;
  dim3 grid((unsigned)((p.seqlen_q + C::BR - 1) / C::BR), (unsigned)p.heads_q, (unsigned)p.batch);
  kern<<<grid, C::NT, C::SMEM, stream>>>(a);
  attn::check_cuda("attention_fwd_wgmma kernel launch");
}

}  // namespace attn_wg

bool attention_fwd_wgmma_usable(const AttnFwdParams& p) {
  if (p.dtype != Dtype::BF16 && p.dtype != Dtype::F16) return false;
  if (p.head_dim == 128) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_fwd_wgmma_kernel<true, 128>, attn_wg::FwdCfg<128>::SMEM);
  if (p.head_dim == 64) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_fwd_wgmma_kernel<true, 64>, attn_wg::FwdCfg<64>::SMEM);
  return false;
}

// Checked by attention_fwd_check (the same row/alignment rules as the mma.sync forward) and
// attention_fwd_wgmma_usable before this is called.
void attention_fwd_cuda_wgmma(const AttnFwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return;
  const bool bf16 = p.dtype == Dtype::BF16;
  if (p.head_dim == 128) {
    if (bf16) attn_wg::launch<true, 128>(p, stream);
    else attn_wg::launch<false, 128>(p, stream);
  } else {
    if (bf16) attn_wg::launch<true, 64>(p, stream);
    else attn_wg::launch<false, 64>(p, stream);
  }
}

}  // namespace mb
#endif  // MEGABEAM_CUDA
