// Flash attention forward (FlashAttention-2 design) with mma.sync m16n8k16 tensor-core tiles.
// One CTA = BR query rows of one (batch, q head); 4 warps, each owning 32 rows (two m16 tiles), so
// every K/V fragment read from shared memory feeds two MMAs. K/V tiles stream through shared memory
// with cp.async: V[n] loads while S = Q K[n]^T runs, K[n-1] loads while softmax and P V run.
// Key blocks are visited from the last to the first, so the masked (diagonal / ragged) blocks come
// first and the common unmasked loop carries no mask arithmetic.
#if defined(MEGABEAM_CUDA)
#include <cmath>
#include "attn_common.cuh"
#include "attention_wgmma.h"

namespace mb {
namespace attn {

struct FwdArgs {
  AttnFwdParams p;
  int delta;         // clamped q_offset - k_offset
  int group;         // heads_q / heads_kv
  float scale_log2;  // scale * log2(e)
};

template <bool BF16, int D, int BC>
struct FwdCfg {
  static constexpr int NW = 4;
  static constexpr int BR = NW * 32;  // 32 rows per warp
  static constexpr int MT = 2;        // m16 tiles per warp
  static constexpr int NT = NW * 32;
  static constexpr int SMEM = (BR + 2 * BC) * D * 2;
};

template <bool BF16, int D, int BC>
__global__ void __launch_bounds__(128, 2) attn_fwd_kernel(const FwdArgs a) {
  using C = FwdCfg<BF16, D, BC>;
  constexpr int BR = C::BR, MT = C::MT, NT = C::NT;
  constexpr int ROWB = D * 2;
  constexpr int NST = BC / 8;  // n8 tiles of S per m-tile
  constexpr int NOT = D / 8;   // n8 tiles of O per m-tile
  const AttnFwdParams& p = a.p;

  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sQ = smem_u32(smem);
  const uint32_t sK = sQ + BR * ROWB;
  const uint32_t sV = sK + BC * ROWB;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) blocks first
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / a.group;
  const int sq = p.seqlen_q, sk = p.seqlen_k;
  const int m0 = m_block * BR;

  const uint16_t* gQ = (const uint16_t*)p.q + b * p.q_batch_stride + h * p.q_head_stride + (int64_t)m0 * p.q_row_stride;
  const uint16_t* gK = (const uint16_t*)p.k + b * p.k_batch_stride + kvh * p.k_head_stride;
  const uint16_t* gV = (const uint16_t*)p.v + b * p.v_batch_stride + kvh * p.v_head_stride;
  uint16_t* gO = (uint16_t*)p.out + b * p.o_batch_stride + h * p.o_head_stride + (int64_t)m0 * p.o_row_stride;
  float* gL = p.lse + ((int64_t)b * p.heads_q + h) * sq;

  const int q_valid = min(BR, sq - m0);
  const FwdKeyRange kr = fwd_key_range(m0, q_valid, sk, p.causal, a.delta, BC);
  const int n_blocks = kr.n_blocks, n_unmasked = kr.n_unmasked;

  if (n_blocks == 0) {  // no key visible to any row: out = 0, lse = -inf
    constexpr int CH = D / 8;
    for (int c = tid; c < BR * CH; c += NT) {
      int r = c / CH, ch = c % CH;
      if (r < q_valid) *(uint4*)(gO + (int64_t)r * p.o_row_stride + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    for (int r = tid; r < q_valid; r += NT) gL[m0 + r] = -INFINITY;
    return;
  }

  load_tile<BR, D, NT>(sQ, gQ, p.q_row_stride, q_valid, tid);
  {
    int nb = n_blocks - 1;
    load_tile<BC, D, NT>(sK, gK + (int64_t)nb * BC * p.k_row_stride, p.k_row_stride, sk - nb * BC, tid);
  }
  cp_async_commit();

  float o[MT][NOT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NOT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][j][e] = 0.f;
  float mrow[MT][2], lrow[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    mrow[mt][0] = mrow[mt][1] = -INFINITY;
    lrow[mt][0] = lrow[mt][1] = 0.f;
  }

  // Per-lane ldmatrix row/chunk pieces (row & 7 == lane & 7 for every access below).
  const int l7 = lane & 7;
  const int hi8 = (lane >> 3) & 1;  // matrices 1 and 3
  const int hi16 = lane >> 4;       // matrices 2 and 3
  const uint32_t qA = sQ + (warp * 32 + l7 + hi8 * 8) * ROWB;  // A rows of Q (m-tile 0)
  const uint32_t kB = sK + (l7 + hi16 * 8) * ROWB;             // B rows of K
  const uint32_t vB = sV + (l7 + hi8 * 8) * ROWB;              // B rows of V (trans)

  for (int nb = n_blocks - 1; nb >= 0; --nb) {
    float s[MT][NST][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NST; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] = 0.f;

    cp_async_wait<0>();
    __syncthreads();  // K[nb] landed; all warps are done with V[nb+1]
    load_tile<BC, D, NT>(sV, gV + (int64_t)nb * BC * p.v_row_stride, p.v_row_stride, sk - nb * BC, tid);
    cp_async_commit();

    // S = Q K^T
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldsm_x4(qa[mt], qA + mt * 16 * ROWB + (((kk * 2 + hi16) ^ l7) << 4));
#pragma unroll
      for (int np = 0; np < NST / 2; ++np) {
        uint32_t kb[4];
        ldsm_x4(kb, kB + np * 16 * ROWB + (((kk * 2 + hi8) ^ l7) << 4));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<BF16>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma16816<BF16>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    cp_async_wait<0>();
    __syncthreads();  // V[nb] landed; all warps are done with K[nb]
    if (nb > 0) {
      load_tile<BC, D, NT>(sK, gK + (int64_t)(nb - 1) * BC * p.k_row_stride, p.k_row_stride, sk - (nb - 1) * BC, tid);
      cp_async_commit();
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NST; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][j][e] *= a.scale_log2;

    if (nb >= n_unmasked) {
      const int col0 = nb * BC + (lane & 3) * 2;
      const int row0 = m0 + warp * 32 + (lane >> 2);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < NST; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            int col = col0 + j * 8 + (e & 1);
            int row = row0 + mt * 16 + (e >> 1) * 8;
            if (col >= sk || (p.causal && col - row > a.delta)) s[mt][j][e] = -INFINITY;
          }
    }

    // Online softmax in base 2.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NST; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * hh], s[mt][j][2 * hh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(mrow[mt][hh], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;  // avoids (-inf) - (-inf)
        const float corr = ex2(mrow[mt][hh] - m_use);
        mrow[mt][hh] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < NST; ++j) {
          float p0 = ex2(s[mt][j][2 * hh] - m_use);
          float p1 = ex2(s[mt][j][2 * hh + 1] - m_use);
          s[mt][j][2 * hh] = p0;
          s[mt][j][2 * hh + 1] = p1;
          sum += p0 + p1;
        }
        lrow[mt][hh] = lrow[mt][hh] * corr + sum;
#pragma unroll
        for (int j = 0; j < NOT; ++j) {
          o[mt][j][2 * hh] *= corr;
          o[mt][j][2 * hh + 1] *= corr;
        }
      }

    // O += P V, P straight from registers as the A operand.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<BF16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<BF16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<BF16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<BF16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldsm_x4_t(vb, vB + kk * 16 * ROWB + (((dp * 2 + hi16) ^ l7) << 4));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<BF16>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
          mma16816<BF16>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  // Epilogue: normalise, stage this warp's 32 rows in its own slice of sQ, write 16-byte chunks.
  uint8_t* sOw = smem + warp * 32 * ROWB;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = lrow[mt][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int rl = mt * 16 + (lane >> 2) + hh * 8;  // row within the warp's slice
      if ((lane & 3) == 0 && m0 + warp * 32 + rl < sq)
        gL[m0 + warp * 32 + rl] = l > 0.f ? (mrow[mt][hh] + log2f(l)) * kLn2 : -INFINITY;
#pragma unroll
      for (int j = 0; j < NOT; ++j) {
        uint32_t v = pack2<BF16>(o[mt][j][2 * hh] * inv, o[mt][j][2 * hh + 1] * inv);
        *(uint32_t*)(sOw + swz<ROWB>(rl, j) + (lane & 3) * 4) = v;
      }
    }
  __syncwarp();
  constexpr int CH = D / 8;
#pragma unroll
  for (int i = 0; i < CH; ++i) {
    int c = lane + i * 32;
    int rl = c / CH, ch = c % CH;
    int r = warp * 32 + rl;
    if (m0 + r < sq) {
      uint4 v = *(const uint4*)(sOw + swz<ROWB>(rl, ch));
      *(uint4*)(gO + (int64_t)r * p.o_row_stride + ch * 8) = v;
    }
  }
}

template <bool BF16, int D, int BC>
static void launch_fwd(const FwdArgs& a, cudaStream_t stream) {
  using C = FwdCfg<BF16, D, BC>;
  auto kern = attn_fwd_kernel<BF16, D, BC>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
  check_cuda("attention_fwd: cudaFuncSetAttribute");
  dim3 grid((unsigned)((a.p.seqlen_q + C::BR - 1) / C::BR), (unsigned)a.p.heads_q, (unsigned)a.p.batch);
  kern<<<grid, C::NT, C::SMEM, stream>>>(a);
  check_cuda("attention_fwd kernel launch");
}

}  // namespace attn

void attention_fwd_cuda_check(const AttnFwdParams& p) {
  using namespace attn;
  const char* who = "attention (CUDA)";
  check_common(p, who);
  if (p.batch == 0 || p.seqlen_q == 0) return;
  check_rows(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, who, "q");
  check_rows(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, who, "k");
  check_rows(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, who, "v");
  check_rows(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, who, "out");
}

void attention_fwd_cuda(const AttnFwdParams& p, cudaStream_t stream, AttnFwdKernel kernel) {
  using namespace attn;
  // attention_fwd_check(p, true) passed in the binding.
  if (p.batch == 0 || p.seqlen_q == 0) return;
  if (kernel == AttnFwdKernel::Auto && attention_fwd_wgmma_usable(p) && attention_fwd_cuda_wgmma(p, stream)) return;
  FwdArgs a;
  a.p = p;
  a.delta = clamp_delta(p.q_offset, p.k_offset, p.seqlen_q, p.seqlen_k);
  a.group = p.heads_q / p.heads_kv;
  a.scale_log2 = p.scale * kLog2e;
  const bool bf16 = p.dtype == Dtype::BF16;
  if (p.head_dim == 64) {
    if (bf16) launch_fwd<true, 64, 128>(a, stream);
    else launch_fwd<false, 64, 128>(a, stream);
  } else {
    if (bf16) launch_fwd<true, 128, 64>(a, stream);
    else launch_fwd<false, 128, 64>(a, stream);
  }
}

}  // namespace mb
#endif  // MEGABEAM_CUDA
