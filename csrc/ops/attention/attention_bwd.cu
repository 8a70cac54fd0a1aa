// Flash attention backward (FlashAttention-2 design) with mma.sync m16n8k16 tensor-core tiles.
//   1. attn_bwd_dot_kernel: Dsum = rowsum(dout * out) in fp32.
//   2. attn_bwd_kernel: one CTA per (kv block of BC keys, (batch, kv head) unit). K and V stay in shared
//      memory; the CTA walks the q heads of its group and their q blocks (BR rows, double-buffered with
//      cp.async). Three phases per q block, each with its own 2-D warp tiling so every fragment read
//      from shared memory feeds at least two MMAs (shared-memory bandwidth is what limits mma.sync here):
//        1. S^T = K Q^T and dP^T = V dO^T, warps 4 (32 keys) x 2 (32 q rows); P^T and dS^T -> smem (16-bit)
//        2. dV += P^T dO, dK += dS^T Q, warps 4 (32 keys) x 2 (D/2 columns), accumulated in registers
//        3. dQ += dS K, warps 2 (32 q rows) x 4 (D/4 columns), added into an fp32 accumulator with
//           vector atomics.
//   3. attn_bwd_dq_kernel: dq = scale * dq_accum in the output dtype.
// The warp counts above are those of the default ("big") tile configuration; a "small" one (64 keys per CTA,
// 4 warps, < 99 KB of shared memory) runs where big does not fit: see BwdCfg.
// dq_accum covers a chunk of (batch, kv head) units at a time, sized so the workspace stays near
// 1.2 GiB even at 512K tokens; chunks run one after another on the same stream.
#if defined(MEGABEAM_CUDA)
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include "attn_common.cuh"
#include "attn_bwd_common.cuh"
#include "attention_wgmma.h"

namespace mb {
namespace attn {

// Two tile configurations of the same kernel. Every warp tile is 32 x 32 in phase 1, 32 keys x D/(BR/32) in
// phase 2 and 32 q rows x D/(BC/32) in phase 3, so the warp count follows from BC and BR.
//   big (SMALL = false; the default): BC 128, BR 64, 8 warps, Q/dO/lse/Dsum double-buffered, dQ staged in
//     smem for bulk reductions on sm_90. d=128: 161 KB (+34 KB dQ tile on sm_90); d=64: 97 KB (+18 KB).
//   small (SMALL = true): BC 64, BR 64, 4 warps, no bulk dQ tile (red.v4 / atomicAdd into dq_accum),
//     Q/dO/lse/Dsum single-buffered at d=128 (80.5 KB; the next q block loads under phase 3) and
//     double-buffered at d=64 (65 KB). For GPUs whose per-block opt-in limit is below big's needs
//     (sm_86/sm_89: 99 KB, so d=128 there). Same workspace, same results up to fp32 summation order.
// launch_bwd picks big when it fits in cudaDevAttrMaxSharedMemoryPerBlockOptin, else small; the environment
// variable MEGABEAM_ATTN_BWD_CONFIG=small (read at every launch) forces small, to test it on big GPUs.
template <int D, bool SMALL>
struct BwdCfg {
  static constexpr int BC = SMALL ? 64 : 128;  // keys per CTA
  static constexpr int BR = 64;                // q rows per step
  static constexpr int KW = BC / 32;           // phases 1, 2: warps along keys; phase 3: warps along d
  static constexpr int QW = BR / 32;           // phase 1: warps along q; phase 2: along d; phase 3: along q
  static constexpr int NW = KW * QW;
  static constexpr int NT = NW * 32;
  static constexpr int STAGES = SMALL && D == 128 ? 1 : 2;  // buffers for Q, dO, lse, Dsum
  static constexpr bool BULK = !SMALL;                      // bulk dQ reductions where the SASS is sm_90+
  static constexpr int SMEM = 2 * BC * D * 2              // K, V
                              + STAGES * 2 * BR * D * 2   // Q, dO
                              + 2 * BC * BR * 2           // P^T, dS^T
                              + STAGES * 2 * BR * 4;      // lse, Dsum
  // sm_90: fp32 dQ tile staged for bulk reductions; rows padded by 32 B so fragment stores take 2 wavefronts.
  static constexpr int QP = D * 4 + 32;
  static constexpr int SMEM_BULK = SMEM + BR * QP;
  static_assert(BR == 64, "P^T / dS^T rows are 128 bytes (8 swizzled chunks)");
  static_assert(NT >= 2 * BR, "lse and Dsum are loaded by one thread per row");
  static_assert(!BULK || BR == NW * 8, "flush_dq: 8 rows per warp");
};


// Add a 16 x (8*NJ) fp32 fragment pair-row tile into dq_acc. sm_90: lanes swap halves with their
// neighbour so each issues one 16-byte vector reduction per n8 tile instead of two 8-byte ones.
template <int NJ>
__device__ __forceinline__ void red_tile(float* acc_rows, int64_t row_pitch, int row0, int sq, const float (&c)[NJ][4],
                                         int lane) {
#if __CUDA_ARCH__ >= 900
  const bool odd = lane & 1;
  const int row = row0 + (lane >> 2) + (odd ? 8 : 0);
  float* dst = acc_rows + (int64_t)row * row_pitch + ((lane & 3) >> 1) * 4;
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    const float s0 = odd ? c[j][0] : c[j][2], s1 = odd ? c[j][1] : c[j][3];
    const float r0 = __shfl_xor_sync(0xffffffffu, s0, 1), r1 = __shfl_xor_sync(0xffffffffu, s1, 1);
    float4 v = odd ? make_float4(r0, r1, c[j][2], c[j][3]) : make_float4(c[j][0], c[j][1], r0, r1);
    if (row < sq)
      asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst + j * 8), "f"(v.x), "f"(v.y), "f"(v.z),
                   "f"(v.w)
                   : "memory");
  }
#else
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = row0 + (lane >> 2) + hh * 8;
    if (row < sq) {
      float* dst = acc_rows + (int64_t)row * row_pitch + (lane & 3) * 2;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        atomicAdd(dst + j * 8, c[j][2 * hh]);
        atomicAdd(dst + j * 8 + 1, c[j][2 * hh + 1]);
      }
    }
  }
#endif
}

template <bool BF16, int D, bool SMALL>
__global__ void __launch_bounds__(BwdCfg<D, SMALL>::NT, 1) attn_bwd_kernel(const BwdArgs a) {
  using C = BwdCfg<D, SMALL>;
  constexpr int BC = C::BC, BR = C::BR, NT = C::NT, KW = C::KW, QW = C::QW, ST = C::STAGES;
  constexpr bool kBulk = MB_BULK_DQ && C::BULK;
  constexpr int ROWB = D * 2;    // bytes per K/V/Q/dO row
  constexpr int SROWB = BR * 2;  // bytes per P^T / dS^T row (128)
  constexpr int DH = D / QW;     // dK/dV columns per warp (phase 2)
  constexpr int DQ = D / KW;     // dQ columns per warp (phase 3)
  const AttnBwdParams& p = a.p;

  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t sK = smem_u32(smem);
  const uint32_t sV = sK + BC * ROWB;
  const uint32_t sQ0 = sV + BC * ROWB;
  const uint32_t sO0 = sQ0 + ST * BR * ROWB;  // dO buffers
  const uint32_t sP = sO0 + ST * BR * ROWB;   // P^T  [key][q]
  const uint32_t sS = sP + BC * SROWB;       // dS^T [key][q]
  uint8_t* const sPp = smem + (sP - sK);
  uint8_t* const sSp = smem + (sS - sK);
  float* const sLse = (float*)(smem + (sS - sK) + BC * SROWB);  // [ST][BR]
  float* const sDs = sLse + ST * BR;                             // [ST][BR]
  const uint32_t sDQ = sS + BC * SROWB + ST * 2 * BR * 4;        // [BR][QP bytes], bulk path only
  constexpr int QP = C::QP;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int n_block = blockIdx.x;
  const int unit_l = blockIdx.y, unit = a.unit0 + unit_l;
  const int b = unit / p.heads_kv, kvh = unit % p.heads_kv;
  const int sq = p.seqlen_q, sk = p.seqlen_k, group = a.group;
  const int n0 = n_block * BC;

  // q blocks that can see this kv block: rows i >= n0 - delta.
  int m_begin = 0;
  if (p.causal) {
    int64_t first = (int64_t)n0 - a.delta;
    m_begin = first <= 0 ? 0 : first >= sq ? (sq + BR - 1) / BR : (int)first / BR;
  }
  const int m_end = (sq + BR - 1) / BR;
  const int nm = max(0, m_end - m_begin);
  const int total = group * nm;
  const bool ragged_k = n0 + BC > sk;
  // q blocks starting before this row need the causal mask.
  const int64_t mask_before = (int64_t)n0 + BC - 1 - a.delta;

  const uint16_t* gK = (const uint16_t*)p.k + b * p.k_batch_stride + kvh * p.k_head_stride + (int64_t)n0 * p.k_row_stride;
  const uint16_t* gV = (const uint16_t*)p.v + b * p.v_batch_stride + kvh * p.v_head_stride + (int64_t)n0 * p.v_row_stride;
  load_tile<BC, D, NT>(sK, gK, p.k_row_stride, sk - n0, tid);
  load_tile<BC, D, NT>(sV, gV, p.v_row_stride, sk - n0, tid);

  auto prefetch = [&](int t, int buf) {
    const int g = t / nm, m = m_begin + t % nm;
    const int h = kvh * group + g;
    const int r0 = m * BR;
    const uint16_t* gQ = (const uint16_t*)p.q + b * p.q_batch_stride + h * p.q_head_stride + (int64_t)r0 * p.q_row_stride;
    const uint16_t* gO = (const uint16_t*)p.dout + b * p.do_batch_stride + h * p.do_head_stride + (int64_t)r0 * p.do_row_stride;
    load_tile<BR, D, NT>(sQ0 + buf * BR * ROWB, gQ, p.q_row_stride, sq - r0, tid);
    load_tile<BR, D, NT>(sO0 + buf * BR * ROWB, gO, p.do_row_stride, sq - r0, tid);
    if (tid < 2 * BR) {
      const int r = tid & (BR - 1);
      const bool ok = r0 + r < sq;
      const int64_t off = ((int64_t)b * p.heads_q + h) * sq + r0 + r;
      if (tid < BR) cp_async4(smem_u32(sLse + buf * BR + r), ok ? p.lse + off : p.lse, ok);
      else cp_async4(smem_u32(sDs + buf * BR + r), ok ? a.dsum + off : a.dsum, ok);
    }
  };
  if (total > 0) prefetch(0, 0);
  cp_async_commit();

  // Phase 2 accumulators: keys kg*32.. (two m16 tiles) x columns dh*DH..
  float dk[2][DH / 8][4], dv[2][DH / 8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < DH / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[mt][j][e] = dv[mt][j][e] = 0.f;

  const int l7 = lane & 7, hi8 = (lane >> 3) & 1, hi16 = lane >> 4;
  // KW and QW are powers of two: masks and shifts.
  constexpr int KWS = KW == 4 ? 2 : KW == 2 ? 1 : -1, QWS = QW == 2 ? 1 : -1;
  static_assert(KWS > 0 && QWS > 0, "warp grid: KW in {2, 4}, QW = 2");
  const int kg = warp & (KW - 1);  // phases 1 and 2: keys kg*32 .. kg*32+31
  const int qh = warp >> KWS;      // phase 1: q columns qh*32 .. +31
  const int dh = warp >> KWS;      // phase 2: d columns dh*DH ..
  const int qm = warp & (QW - 1);  // phase 3: q rows qm*32 .. +31
  const int dn = warp >> QWS;      // phase 3: d columns dn*DQ ..
  const uint32_t kA = sK + (kg * 32 + l7 + hi8 * 8) * ROWB;     // A rows (K, V; + mt*16 rows)
  const uint32_t vA = sV + (kg * 32 + l7 + hi8 * 8) * ROWB;
  const uint32_t bN = (qh * 32 + l7 + hi16 * 8) * ROWB;         // B rows, non-trans (Q, dO)
  const uint32_t bT = (l7 + hi8 * 8) * ROWB;                    // B rows, trans (Q, dO, K)
  const uint32_t pA = (kg * 32 + l7 + hi8 * 8) * SROWB;         // A rows of P^T / dS^T
  const uint32_t sA = sS + (l7 + hi16 * 8) * SROWB;             // dS^T read transposed as dS (A of dQ)

  float* const acc_unit = a.dq_acc + (int64_t)unit_l * group * sq * D;
  // Rows [warp*8, warp*8+8) of the staged dQ tile of step `tp` go out through lanes 0..7 of each warp.
  auto flush_dq = [&](int tp) {
    const int gp = tp / nm, rp = (m_begin + tp % nm) * BR;
    const int r = warp * 8 + lane;
    if (lane < 8 && rp + r < sq)
      bulk_red_add_f32(acc_unit + ((int64_t)gp * sq + rp + r) * D, sDQ + r * QP, D * 4);
  };

  for (int t = 0; t < total; ++t) {
    const int buf = ST == 2 ? t & 1 : 0;
    const int g = t / nm, m = m_begin + t % nm;
    const int r0 = m * BR;
    cp_async_wait<0>();
    __syncthreads();  // tiles for t landed; every warp finished step t-1 (buffers, P^T, dS^T, dQ tile)
    if constexpr (ST == 2) {
      if (t + 1 < total) prefetch(t + 1, buf ^ 1);
      cp_async_commit();
    }
    if constexpr (kBulk) {
      if (t > 0) flush_dq(t - 1);
    }

    const uint32_t sQ = sQ0 + buf * BR * ROWB, sO = sO0 + buf * BR * ROWB;
    // Phase 1: S^T = K Q^T, dP^T = V dO^T for 32 keys x 32 q rows per warp.
    {
      float st[2][4][4], dpt[2][4][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) st[mt][j][e] = dpt[mt][j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ka[2][4], va[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          ldsm_x4(ka[mt], kA + mt * 16 * ROWB + (((kk * 2 + hi16) ^ l7) << 4));
          ldsm_x4(va[mt], vA + mt * 16 * ROWB + (((kk * 2 + hi16) ^ l7) << 4));
        }
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t qb[4], ob[4];
          ldsm_x4(qb, sQ + bN + np * 16 * ROWB + (((kk * 2 + hi8) ^ l7) << 4));
          ldsm_x4(ob, sO + bN + np * 16 * ROWB + (((kk * 2 + hi8) ^ l7) << 4));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma16816<BF16>(st[mt][2 * np], ka[mt], qb[0], qb[1]);
            mma16816<BF16>(st[mt][2 * np + 1], ka[mt], qb[2], qb[3]);
            mma16816<BF16>(dpt[mt][2 * np], va[mt], ob[0], ob[1]);
            mma16816<BF16>(dpt[mt][2 * np + 1], va[mt], ob[2], ob[3]);
          }
        }
      }

      // P^T = exp2(S^T * scale*log2e - lse*log2e); dS^T = P^T (dP^T - Dsum); both to smem as 16-bit.
      const float* lse_b = sLse + buf * BR;
      const float* ds_b = sDs + buf * BR;
      const bool masked = ragged_k || (p.causal && (int64_t)r0 < mask_before);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int ql = qh * 32 + j * 8 + (lane & 3) * 2;
        const float2 L = *(const float2*)(lse_b + ql);
        const float2 Dd = *(const float2*)(ds_b + ql);
        // -inf lse: the row saw no key, so its P is 0 (never exp2(+inf)).
        const float l0 = L.x == -INFINITY ? INFINITY : L.x * kLog2e;
        const float l1 = L.y == -INFINITY ? INFINITY : L.y * kLog2e;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int kr = kg * 32 + mt * 16 + (lane >> 2);  // local key row
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float pv = ex2(st[mt][j][e] * a.scale_log2 - ((e & 1) ? l1 : l0));
            if (masked) {
              const int key = n0 + kr + (e >> 1) * 8, q = r0 + ql + (e & 1);
              if (key >= sk || (p.causal && key - q > a.delta)) pv = 0.f;
            }
            st[mt][j][e] = pv;
            dpt[mt][j][e] = pv * (dpt[mt][j][e] - ((e & 1) ? Dd.y : Dd.x));
          }
          const uint32_t cb = (lane & 3) * 4;
          const int ch = qh * 4 + j;
          *(uint32_t*)(sPp + swz<SROWB>(kr, ch) + cb) = pack2<BF16>(st[mt][j][0], st[mt][j][1]);
          *(uint32_t*)(sPp + swz<SROWB>(kr + 8, ch) + cb) = pack2<BF16>(st[mt][j][2], st[mt][j][3]);
          *(uint32_t*)(sSp + swz<SROWB>(kr, ch) + cb) = pack2<BF16>(dpt[mt][j][0], dpt[mt][j][1]);
          *(uint32_t*)(sSp + swz<SROWB>(kr + 8, ch) + cb) = pack2<BF16>(dpt[mt][j][2], dpt[mt][j][3]);
        }
      }
    }
    if constexpr (kBulk) bulk_wait_read();  // the dQ tile of step t-1 has been read out before phase 3 rewrites it
    __syncthreads();  // P^T and dS^T complete

    // Phase 2: dV += P^T dO, dK += dS^T Q for 32 keys x DH columns per warp.
#pragma unroll
    for (int kk = 0; kk < BR / 16; ++kk) {
      uint32_t pa[2][4], da[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        ldsm_x4(pa[mt], sP + pA + mt * 16 * SROWB + (((kk * 2 + hi16) ^ l7) << 4));
        ldsm_x4(da[mt], sS + pA + mt * 16 * SROWB + (((kk * 2 + hi16) ^ l7) << 4));
      }
#pragma unroll
      for (int dp = 0; dp < DH / 16; ++dp) {
        uint32_t ob[4], qb[4];
        const int ch = dh * (DH / 8) + dp * 2 + hi16;
        ldsm_x4_t(ob, sO + bT + kk * 16 * ROWB + ((ch ^ l7) << 4));
        ldsm_x4_t(qb, sQ + bT + kk * 16 * ROWB + ((ch ^ l7) << 4));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<BF16>(dv[mt][2 * dp], pa[mt], ob[0], ob[1]);
          mma16816<BF16>(dv[mt][2 * dp + 1], pa[mt], ob[2], ob[3]);
          mma16816<BF16>(dk[mt][2 * dp], da[mt], qb[0], qb[1]);
          mma16816<BF16>(dk[mt][2 * dp + 1], da[mt], qb[2], qb[3]);
        }
      }
    }

    if constexpr (ST == 1) {
      __syncthreads();  // every warp is done with Q, dO, lse, Dsum of step t: load step t+1 under phase 3
      if (t + 1 < total) prefetch(t + 1, 0);
      cp_async_commit();
    }

    // Phase 3: dQ (BR x D) += dS K: 32 q rows x DQ columns per warp, added into dq_acc.
    {
      float dq[2][DQ / 8][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < DQ / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) dq[mt][j][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t sa[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          ldsm_x4_t(sa[mt], sA + kk * 16 * SROWB + (((qm * 4 + mt * 2 + hi8) ^ l7) << 4));
#pragma unroll
        for (int dp = 0; dp < DQ / 16; ++dp) {
          uint32_t kb[4];
          ldsm_x4_t(kb, sK + bT + kk * 16 * ROWB + (((dn * (DQ / 8) + dp * 2 + hi16) ^ l7) << 4));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            mma16816<BF16>(dq[mt][2 * dp], sa[mt], kb[0], kb[1]);
            mma16816<BF16>(dq[mt][2 * dp + 1], sa[mt], kb[2], kb[3]);
          }
        }
      }
      if constexpr (kBulk) {
        uint8_t* const tile = smem + (sDQ - sK);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = qm * 32 + mt * 16 + (lane >> 2) + hh * 8;
#pragma unroll
            for (int j = 0; j < DQ / 8; ++j)
              *(float2*)(tile + row * QP + (dn * DQ + j * 8 + (lane & 3) * 2) * 4) =
                  make_float2(dq[mt][j][2 * hh], dq[mt][j][2 * hh + 1]);
          }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // generic writes -> copy engine reads
      } else {
        float* acc = acc_unit + (int64_t)g * sq * D + dn * DQ;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) red_tile<DQ / 8>(acc, D, r0 + qm * 32 + mt * 16, sq, dq[mt], lane);
      }
    }
  }
  if (kBulk && total > 0) {
    __syncthreads();
    flush_dq(total - 1);
    bulk_wait_all();
  }

  // dK = scale * dS^T Q, dV = P^T dO for keys kg*32.., columns dh*DH..
  uint16_t* gdK = (uint16_t*)p.dk + b * p.dk_batch_stride + kvh * p.dk_head_stride + dh * DH + (lane & 3) * 2;
  uint16_t* gdV = (uint16_t*)p.dv + b * p.dv_batch_stride + kvh * p.dv_head_stride + dh * DH + (lane & 3) * 2;
  const float scale = p.scale;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int key = n0 + kg * 32 + mt * 16 + (lane >> 2) + hh * 8;
      if (key < sk) {
        uint16_t* rk = gdK + (int64_t)key * p.dk_row_stride;
        uint16_t* rv = gdV + (int64_t)key * p.dv_row_stride;
#pragma unroll
        for (int j = 0; j < DH / 8; ++j) {
          *(uint32_t*)(rk + j * 8) = pack2<BF16>(dk[mt][j][2 * hh] * scale, dk[mt][j][2 * hh + 1] * scale);
          *(uint32_t*)(rv + j * 8) = pack2<BF16>(dv[mt][j][2 * hh], dv[mt][j][2 * hh + 1]);
        }
      }
    }
}

// Dynamic shared memory of one configuration as compiled for this GPU (the SASS that runs decides the
// dQ path: bulk reductions exist from sm_90 on).
template <bool BF16, int D, bool SMALL>
static int bwd_smem() {
  using C = BwdCfg<D, SMALL>;
  if (!C::BULK) return C::SMEM;
  cudaFuncAttributes fa;
  if (cudaFuncGetAttributes(&fa, attn_bwd_kernel<BF16, D, SMALL>) != cudaSuccess)
    check_cuda("attention_bwd: cudaFuncGetAttributes");
  return fa.binaryVersion >= 90 ? C::SMEM_BULK : C::SMEM;
}

// The wgmma kernel (attention_bwd_wgmma.cu) is the default where it runs (sm_90a, head_dim 64/128, tensors
// TMA can describe);
// AttnBwdKernel::Mma / MmaSmall keep the mma.sync kernels, for comparison and tests.
static bool bwd_use_wgmma(const AttnBwdParams& p, AttnBwdKernel kernel) {
  if (kernel != AttnBwdKernel::Auto) return false;
  return attention_bwd_wgmma_usable(p);
}

template <bool BF16, int D, bool SMALL>
static void launch_bwd_cfg(const AttnBwdParams& p, cudaStream_t stream, int smem) {
  using C = BwdCfg<D, SMALL>;
  const BwdPlan pl = plan_bwd(p);
  auto kern = attn_bwd_kernel<BF16, D, SMALL>;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  check_cuda("attention_bwd: cudaFuncSetAttribute");

  BwdArgs a = bwd_args(p, pl);
  if (p.seqlen_q > 0) {
    const int64_t rows = (int64_t)p.batch * p.seqlen_q * p.heads_q;
    const int64_t blocks = std::min<int64_t>((rows + 7) / 8, sm_count() * 64);
    attn_bwd_dot_kernel<BF16, D><<<(unsigned)blocks, 256, 0, stream>>>(p, (float*)p.workspace);
    check_cuda("attention_bwd preprocess launch");
  }
  run_bwd_chunks<BF16, D>(p, pl, a, C::BC, stream, [&](dim3 grid) { kern<<<grid, C::NT, smem, stream>>>(a); });
}

template <bool BF16, int D>
static void launch_bwd(const AttnBwdParams& p, cudaStream_t stream, bool force_small) {
  int dev = 0, optin = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (!force_small) {
    const int smem = bwd_smem<BF16, D, false>();
    if (smem <= optin) return launch_bwd_cfg<BF16, D, false>(p, stream, smem);
  }
  const int smem = bwd_smem<BF16, D, true>();
  if (smem > optin)
    throw Error("ERR_UNSUPPORTED", "attention_bwd_cuda: head_dim " + std::to_string(D) + " needs " + std::to_string(smem) +
                                       " bytes of shared memory per block, this GPU allows " + std::to_string(optin));
  launch_bwd_cfg<BF16, D, true>(p, stream, smem);
}

}  // namespace attn

size_t attention_bwd_workspace_bytes(const AttnBwdParams& p, AttnBwdKernel kernel) {
  attn::check_common(p, "attention_bwd_workspace_bytes");
  if (attn::bwd_use_wgmma(p, kernel)) return attention_bwd_wgmma_workspace_bytes(p);
  return attn::plan_bwd(p).total;
}

void attention_bwd_cuda_check(const AttnBwdParams& p, AttnBwdKernel kernel) {
  using namespace attn;
  const char* who = "attention (CUDA backward)";
  attention_bwd_workspace_bytes(p, kernel);  // the shape/dtype limits and the chosen kernels' configuration
  if (p.batch == 0) return;
  check_bwd_tensors(p, who);
}

void attention_bwd_cuda(const AttnBwdParams& p, cudaStream_t stream, AttnBwdKernel kernel) {
  using namespace attn;
  // attention_bwd_check(p, true, kernel) passed in the binding (or the dev harness's own checks).
  const char* who = "attention_bwd_cuda";
  if (p.batch == 0) return;
  if (bwd_use_wgmma(p, kernel) && attention_bwd_cuda_wgmma(p, stream)) return;
  if (!aligned16(p.workspace)) throw Error("ERR_UNSUPPORTED", std::string(who) + ": workspace must be 16-byte aligned");
  if (p.seqlen_q == 0 && p.seqlen_k == 0) return;
  const bool bf16 = p.dtype == Dtype::BF16;
  const bool small = kernel == AttnBwdKernel::MmaSmall;
  if (p.head_dim == 64) {
    if (bf16) launch_bwd<true, 64>(p, stream, small);
    else launch_bwd<false, 64>(p, stream, small);
  } else {
    if (bf16) launch_bwd<true, 128>(p, stream, small);
    else launch_bwd<false, 128>(p, stream, small);
  }
}

}  // namespace mb
#endif  // MEGABEAM_CUDA
