// Flash attention forward with Hopper wgmma and TMA (sm_90a): what attention_fwd_cuda runs on sm_90 GPUs
// (head_dim 64 and 128, bf16/f16) unless the caller asks for the mma.sync kernel. Same semantics as the
// mma.sync forward (attention_fwd.cu): GQA without expansion, causal with q/k offsets, any lengths, fully
// masked rows -> out 0 and lse -inf. bench/NOTES.md has the design notes and numbers.
//
// Design (FA3's forward):
//   CTA = 1 + NC warpgroups per (64 NC query rows, q head, batch); NC = 2 consumers at d=128, 3 at d=64.
//   Warpgroup 0 is the producer: one thread issues TMA loads of the Q tile once and of K/V per key block into
//   two-stage buffers, synchronised by mbarriers (full: the bytes landed; empty: every consumer is done
//   reading); its registers go to the consumers (setmaxnreg 24 / 240, d=64: 24 / 160). The other warpgroups
//   are consumers owning 64 query rows each.
//   Key blocks are visited from the last to the first, so the masked (diagonal or ragged) blocks come first
//   and the rest carry no mask arithmetic; CTAs with the most blocks start first.
//   Per key block n (128 keys), each consumer:
//     1. issues S_n = Q_w K_n^T            (wgmma m64n128k16, both operands K-major from smem)
//     2. issues O += P_{n+1} V_{n+1}       (wgmma m64n{D}k16, P from registers, V read N-major)
//     3. waits for S_n only; the online softmax of S_n (mask, max, exp2, row sums) runs while the
//        tensor cores still work on step 2 (intra-warpgroup overlap)
//     4. waits for step 2, rescales O by exp2(m_old - m_new), packs P_n into 16-bit A fragments.
//   The consumers take turns issuing steps 1-2 (named barriers: FA3's ping-pong, round-robin over three at
//   d=64), so one's softmax runs under the others' GEMMs. At d=64 a consumer's GEMMs per block take about as
//   long as its softmax's exp2, so two consumers' GEMMs are needed to cover one softmax: three consumers
//   measured +13 % over two on an H200 (435 -> 492 TF/s at 128K, bench/NOTES.md). The last block's PV runs
//   after the loop.
//   Accumulators per consumer thread: S 64, O D/2 fp32; P 32 registers.
//   Shared memory: Q 64 NC x D + 2 x K + 2 x V tiles of 128 x D (d=128: 160 KB, d=64: 88 KB) + barriers.
//   The cp.async variant without a producer (2 warpgroups, CTA barrier per block) measured 475-488 TF/s
//   at d=128 against this one's 590-650 (bench/NOTES.md) and was removed.
#if defined(MEGABEAM_CUDA)
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the runtime's driver entry point
#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>
#include "ops/attention/attention_wgmma.h"
#include "ops/attention/attn_wgmma.cuh"

namespace mb {
namespace attn_wg {

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
  static constexpr int NC = D == 64 ? 3 : 2;  // consumer warpgroups
  static constexpr int NT = 128 * (NC + 1);  // producer warpgroup + NC consumer warpgroups
  static constexpr int BR = 64 * NC;  // query rows per CTA (64 per consumer)
  static constexpr int BC = 128;  // keys per block
  static constexpr int Q_TILE = BR * D * 2;
  static constexpr int KV_TILE = BC * D * 2;
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_K = OFF_Q + Q_TILE;       // [2] stages
  static constexpr int OFF_V = OFF_K + 2 * KV_TILE;  // [2] stages
  static constexpr int OFF_BAR = OFF_V + 2 * KV_TILE;  // barQ, fullK[2], fullV[2], emptyK[2], emptyV[2]
  static constexpr int SMEM = OFF_BAR + 128 + 1024;    // + slack to align the base to 1024 B
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

struct FwdTmaArgs {
  CUtensorMap tm_q, tm_k, tm_v;  // 64-byte aligned (CUtensorMap is declared so)
  FwdArgs f;
  int perm_q[3], perm_k[3];      // tensor-map dims 1..3 -> logical coordinate (0 row, 1 head, 2 batch)
};

template <bool BF16, int D>
__global__ void __launch_bounds__(FwdCfg<D>::NT, 1) attn_fwd_wgmma_kernel(const __grid_constant__ FwdTmaArgs A) {
#if MB_WG_ENABLED
  using C = FwdCfg<D>;
  constexpr int BR = C::BR, BC = C::BC;
  constexpr int NJ = BC / 8, NO = D / 8;
  const FwdArgs& a = A.f;
  const AttnFwdParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sQ = base + C::OFF_Q, sK0 = base + C::OFF_K, sV0 = base + C::OFF_V;
  const uint32_t barQ = base + C::OFF_BAR, fullK = barQ + 8, fullV = barQ + 24, emptyK = barQ + 40, emptyV = barQ + 56;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2;
  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / a.group;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int m0 = m_block * BR;
  uint16_t* gO = (uint16_t*)p.out + b * p.o_batch_stride + h * p.o_head_stride;
  float* gL = p.lse + ((int64_t)b * p.heads_q + h) * sq;

  const int q_valid = min(BR, sq - m0);
  const attn::FwdKeyRange kr = attn::fwd_key_range(m0, q_valid, sk, p.causal, a.delta, BC);
  const int n_blocks = kr.n_blocks, n_unmasked = kr.n_unmasked;

  if (n_blocks == 0) {  // no key visible to any row: out = 0, lse = -inf
    constexpr int CH = D / 8;
    for (int c = tid; c < BR * CH; c += C::NT) {
      const int r = c / CH, ch = c % CH;
      if (r < q_valid) *(uint4*)(gO + (int64_t)(m0 + r) * p.o_row_stride + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    for (int r = tid; r < q_valid; r += C::NT) gL[m0 + r] = -INFINITY;
    return;
  }

  if (tid == 0) {
    mbar_init(barQ, 1);
    for (int i = 0; i < 2; ++i) {
      mbar_init(fullK + 8 * i, 1);
      mbar_init(fullV + 8 * i, 1);
      mbar_init(emptyK + 8 * i, 4 * C::NC);  // lane 0 of each consumer warp
      mbar_init(emptyV + 8 * i, 4 * C::NC);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
    if (tid == 0) {
      mbar_expect_tx(barQ, C::Q_TILE);
      tma_tile<BR, D>(sQ, &A.tm_q, A.perm_q, barQ, m0, h, b);
      for (int it = 0; it < n_blocks; ++it) {
        const int nb = n_blocks - 1 - it, st = it & 1;
        const uint32_t ph = ((it >> 1) & 1) ^ 1;  // a fresh barrier passes the "previous phase" wait
        mbar_wait(emptyK + 8 * st, ph);
        mbar_expect_tx(fullK + 8 * st, C::KV_TILE);
        tma_tile<BC, D>(sK0 + st * C::KV_TILE, &A.tm_k, A.perm_k, fullK + 8 * st, nb * BC, kvh, b);
        mbar_wait(emptyV + 8 * st, ph);
        mbar_expect_tx(fullV + 8 * st, C::KV_TILE);
        tma_tile<BC, D>(sV0 + st * C::KV_TILE, &A.tm_v, A.perm_k, fullV + 8 * st, nb * BC, kvh, b);
      }
    }
    return;
  }

  // ---- consumers
  if constexpr (C::NC == 3) asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
  const int c = wg - 1;  // consumer index: query rows 64*c ..
  const int wi = warp & 3, lr = lane >> 2, lc = (lane & 3) * 2;
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float s[BC / 2];
  uint32_t pf[BC / 16][4];
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
  float corr[2], sum[2];
  const int row0 = m0 + c * 64 + wi * 16 + lr;
  const uint32_t qw = (uint32_t)c * 64 * 128;

  auto issue_s = [&](int st) {
    const uint32_t sK = sK0 + st * C::KV_TILE;
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
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
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
  // Ping-pong (d=128) / round-robin (d=64, three consumers): named barrier 1 + c is "consumer c may issue" and
  // passes to c + 1 (mod NC); the last consumer lets consumer 0 go first and skips its arrival after its last
  // issue, so each barrier gets exactly one arrival (128 threads) per sync (128 threads).
  constexpr int NC = C::NC;
  const int my_turn = 1 + c, other_turn = 1 + (c + 1) % NC;
  auto pass_turn = [&](int it) {
    if (!(c == NC - 1 && it == n_blocks - 1)) named_arrive(other_turn, 256);
  };
  if (c == NC - 1) named_arrive(1, 256);

  mbar_wait(barQ, 0);
  mbar_wait(fullK, 0);
  named_sync(my_turn, 256);
  issue_s(0);
  pass_turn(0);
  wg_wait<0>();
  fence_regs(s);
  if (lane == 0) mbar_arrive(emptyK);
  softmax(n_blocks - 1);
  rescale_pack();
  for (int it = 1; it < n_blocks; ++it) {
    const int nb = n_blocks - 1 - it, st = it & 1, pst = st ^ 1;
    mbar_wait(fullK + 8 * st, (it >> 1) & 1);
    mbar_wait(fullV + 8 * pst, ((it - 1) >> 1) & 1);
    named_sync(my_turn, 256);
    issue_s(st);
    pv_gemm<BF16, D>(o, pf, sV0 + pst * C::KV_TILE);
    wg_commit();
    pass_turn(it);
    wg_wait<1>();
    fence_regs(s);
    if (lane == 0) mbar_arrive(emptyK + 8 * st);
    softmax(nb);
    wg_wait<0>();
    fence_regs(o);
    fence_regs(pf);
    if (lane == 0) mbar_arrive(emptyV + 8 * pst);
    rescale_pack();
  }
  {
    const int pst = (n_blocks - 1) & 1;
    mbar_wait(fullV + 8 * pst, ((n_blocks - 1) >> 1) & 1);
    fence_regs(o);
    fence_regs(pf);
    wg_fence();
    pv_gemm<BF16, D>(o, pf, sV0 + pst * C::KV_TILE);
    wg_commit();
    wg_wait<0>();
    fence_regs(o);
  }

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
  __trap();
#endif
}

template <bool BF16, int D>
static bool launch(const AttnFwdParams& p, cudaStream_t stream) {
  using C = FwdCfg<D>;
  FwdTmaArgs A;
  A.f.p = p;
  A.f.delta = attn::clamp_delta(p.q_offset, p.k_offset, p.seqlen_q, p.seqlen_k);
  A.f.group = p.heads_q / p.heads_kv;
  A.f.scale_log2 = p.scale * kLog2e;
  if (!make_map(&A.tm_q, A.perm_q, p.q, BF16, D, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride, p.q_head_stride, p.q_batch_stride, C::BR) ||
      !make_map(&A.tm_k, A.perm_k, p.k, BF16, D, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride, p.k_head_stride, p.k_batch_stride, C::BC))
    return false;
  int perm_v[3];
  if (!make_map(&A.tm_v, perm_v, p.v, BF16, D, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride, p.v_head_stride, p.v_batch_stride, C::BC) ||
      perm_v[0] != A.perm_k[0] || perm_v[1] != A.perm_k[1] || perm_v[2] != A.perm_k[2])
    return false;  // V is loaded with K's coordinate order
  auto kern = attn_fwd_wgmma_kernel<BF16, D>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
  attn::check_cuda("attention_fwd_wgmma: cudaFuncSetAttribute");
  dim3 grid((unsigned)((p.seqlen_q + C::BR - 1) / C::BR), (unsigned)p.heads_q, (unsigned)p.batch);
  kern<<<grid, C::NT, C::SMEM, stream>>>(A);
  attn::check_cuda("attention_fwd_wgmma kernel launch");
  return true;
}

}  // namespace attn_wg

bool attention_fwd_wgmma_usable(const AttnFwdParams& p) {
  if (p.dtype != Dtype::BF16 && p.dtype != Dtype::F16) return false;
  if (p.head_dim == 128) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_fwd_wgmma_kernel<true, 128>, attn_wg::FwdCfg<128>::SMEM);
  if (p.head_dim == 64) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_fwd_wgmma_kernel<true, 64>, attn_wg::FwdCfg<64>::SMEM);
  return false;
}

// Checked by attention_fwd_check (the same row/alignment rules as the mma.sync forward) and
// attention_fwd_wgmma_usable before this is called. Returns false (nothing launched) when TMA
// descriptors cannot be made for these tensors (no encoder in the driver, an empty key range, strides TMA
// does not take); the caller then runs the mma.sync forward.
bool attention_fwd_cuda_wgmma(const AttnFwdParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.seqlen_q == 0) return true;
  const bool bf16 = p.dtype == Dtype::BF16;
  if (p.head_dim == 128) return bf16 ? attn_wg::launch<true, 128>(p, stream) : attn_wg::launch<false, 128>(p, stream);
  return bf16 ? attn_wg::launch<true, 64>(p, stream) : attn_wg::launch<false, 64>(p, stream);
}

}  // namespace mb
#endif  // MEGABEAM_CUDA
