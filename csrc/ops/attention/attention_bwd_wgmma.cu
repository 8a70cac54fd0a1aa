// Flash attention backward with Hopper wgmma and TMA (sm_90a): the default backward on sm_90 GPUs for head_dim
// 64 and 128 (attention_bwd_cuda dispatches here; the backward option kernel: 'mma' | 'mma-small' selects the
// mma.sync kernels instead, and so does a problem TMA cannot describe). Checked on an H200 against the naive GPU
// reference over the harness's whole matrix. bench/NOTES.md has the design notes and numbers.
//
// Same interface and semantics as attention_bwd_cuda (csrc/ops/attention/attention_bwd.cu): dq/dk/dv,
// GQA sums, causal with q/k offsets, any lengths, fully masked rows -> zero grads, fp32 dq accumulation in
// the workspace, workspace <= ~1.2 GiB (same plan: Dsum + dq_acc for a chunk of (batch, kv head) units).
// Restricted to head_dim 64/128, bf16/f16, a device of compute capability 9.0 running the sm_90a SASS.
//
// Design (FA3's backward, warp-specialised like the forward):
//   A preprocess kernel writes Dsum = rowsum(dO * O) and lse * log2(e) (+inf for a row that saw no key)
//   into the workspace, rows padded to a multiple of BR with zeros, so that a step's rows are one aligned
//   1-D bulk copy each.
//   CTA per (kv block of BC=128 keys, (batch, kv head) unit): d=128 4 warpgroups, d=64 3. Warpgroup 0 is the
//   producer (setmaxnreg 24): one thread issues TMA loads of K and V once, and per step of Q and dO (tiles) and
//   of the lse and Dsum rows (1-D bulk copies) into two stages guarded by full/empty mbarriers. Warpgroups 1-2
//   are consumers (setmaxnreg d=128: 208, d=64: 240); consumer w owns keys 64w..64w+63. At d=128 warpgroup 3
//   is the dQ warpgroup (setmaxnreg 72). The CTA walks the group's q heads x q blocks of BR rows (d=128: 64;
//   d=64: 128, below). Per step, consumer w (d=128):
//     1. S^T  = K_w Q^T   (wgmma m64n64k16, A = K smem K-major, B = Q smem K-major, D/16 k-steps), issued
//        at the end of the previous step, right behind its dK GEMM and before its dS^T stores (+10-13 % over
//        issuing it here: no gap in the consumer's tensor work between steps)
//     2. P^T = exp2(S^T*scale*log2e - lse*log2e) (masked where needed), packed to 16-bit A fragments
//        (fp32 accumulator layout == 16-bit A-fragment layout after packing pairs, as in FA3's P).
//     3. dV_w += P^T dO   (wgmma m64n{D}k16, A = registers, B = dO smem N-major (trans-b), 4 k-steps);
//        dP^T = V_w dO^T  (as 1, issued after the pack: with the fp32 P^T and dP^T live together the
//        consumer does not fit 208 registers); dS^T = P^T (dP^T - Dsum) with the 16-bit P^T;
//        dK_w += dS^T Q   (as dV, with Q), and right behind it the next step's S^T (1).
//     4. dS^T -> smem [key][q] (16-bit, swizzled; two buffers, mbarriers dsready (both consumers stored it)
//        and dsfree (the dQ warpgroup read it)); dK waited for, the stage released (empty mbarrier). The
//        consumers never wait for dQ, nor for each other.
//   The dQ warpgroup (d=128), per step: waits for dsready, dQ = dS K for all 128 columns (two m64n64k16
//   GEMMs of 8 k-steps over the 128 keys, A = dS^T smem read M-major (trans-a), B = K read N-major
//   (trans-b)), arrives on dsfree, and writes dQ (fp32) to smem: each warp owns 16 rows x 128 columns as four
//   128-byte-swizzled boxes of 16 x 32, which one lane adds into dq_acc with TMA reduce-adds (a tensor map
//   over dq_acc); it waits only for its own reductions before overwriting them a step later. On an H200 this
//   measured +11-14 % over the consumers doing dQ themselves after a barrier between them (413 -> 469 TF/s at
//   16K, 434 -> 481 at 128K; bench/NOTES.md). Per-row 1-D bulk reductions (128 of 256 B per step) instead of
//   the TMA boxes took a quarter of the step time.
//   d=64 steps are 128 q rows (half the steps, so half the per-step waits, barriers and flushes; S^T and
//   dP^T become m64n128; no dQ warpgroup: at 208 registers the d=64 consumer spills); +45 % over 64-row steps
//   on an H200 (245 -> 355 TF/s at 128K, bench/NOTES.md); at d=128 the registers do not allow 128 rows (dV + dK
//   alone are 128 per thread). dS^T lives in two [128 keys][64 q] halves, one buffer behind a warpgroup
//   barrier; dV is issued after dS (with it in flight while dS is computed the consumer needed 224 registers and
//   ptxas serialised the wgmma: C7512); dQ_w is two m64n64 GEMMs (q rows 0-63, 64-127) over the consumer's own
//   keys, and each consumer warp reduces its four boxes (rows 16wi.. and 64 + 16wi.., 64 columns). The next
//   step's S^T and dP^T are issued after the dQ stores (+6-7 %), so the loop top waits for both (exp2 no longer
//   overlaps the same consumer's dP^T: a wait<1> on groups carried round the loop made ptxas serialise the
//   wgmma, C7514).
//   Accumulators per consumer thread (d=128): dV 64 + dK 64 fp32 (persistent), S^T 32, dP^T 32; dQ-warpgroup
//   thread: dQ 32. Shared memory (d=128): K 32K + V 32K + Q 2x16K + dO 2x16K + dS^T 2x16K + lse/Dsum 1K + dQ
//   tile 32K;
//   (d=64): K 16K + V 16K + Q 2x16K + dO 2x16K + dS^T 32K + lse/Dsum 2K + two dQ tiles 2x32K = 194K.
//   A producer with more than one thread (lse/Dsum by plain loads, a dQ-writer warp) spilled at setmaxnreg 24,
//   and 40/232 made ptxas serialise the d=128 consumers' wgmma (C7512).
//   The previous version (2 warpgroups, cp.async issued by all threads, two CTA barriers per step) measured
//   367-392 TF/s at d=128 and 245 at d=64 on an H200 (bench/NOTES.md).
#include <algorithm>
#include <cmath>
#include <string>
#include "ops/attention/attention_wgmma.h"
#include "ops/attention/attn_bwd_common.cuh"
#include "ops/attention/attn_wgmma.cuh"

namespace mb {
namespace attn_wg {

using attn::bulk_wait_all;
using attn::bulk_wait_read;
using attn::ex2;
using attn::kLog2e;
using attn::pack2;
using attn::smem_u32;

struct BwdTmaArgs {
  CUtensorMap tm_q, tm_do, tm_k, tm_v;  // 64-byte aligned (CUtensorMap is declared so)
  CUtensorMap tm_dq;                    // dq_acc as [units x group][sq][D] fp32, boxes of 16 rows x 32 columns
  attn::BwdArgs a;
  int perm_q[3], perm_do[3], perm_k[3], perm_v[3];  // tensor-map dims 1..3 -> logical (0 row, 1 head, 2 batch)
};

template <int D>
struct Cfg {
  static constexpr int NT = D == 128 ? 512 : 384;  // producer + 2 consumers (+ the dQ warpgroup at d=128)
  static constexpr int BC = 128;     // keys per CTA (64 per consumer)
  static constexpr int BR = D == 64 ? 128 : 64;  // q rows per step
  static constexpr int KV_TILE = BC * D * 2;
  static constexpr int Q_TILE = BR * D * 2;
  static constexpr int S_TILE = BC * BR * 2;
  static constexpr int OFF_K = 0;
  static constexpr int OFF_V = OFF_K + KV_TILE;
  static constexpr int OFF_Q = OFF_V + KV_TILE;      // [2] stages
  static constexpr int OFF_O = OFF_Q + 2 * Q_TILE;   // [2] stages
  static constexpr int OFF_S = OFF_O + 2 * Q_TILE;   // dS^T [2] buffers of [BC][BR] 16-bit, 128-B rows
  static constexpr int OFF_L = OFF_S + (D == 64 ? 1 : 2) * S_TILE;  // lse [2][BR] then Dsum [2][BR]
  static constexpr int OFF_DQ = OFF_L + 4 * BR * 4;  // fp32 dQ tile(s), as boxes (below)
  // d=128: one dQ tile over all 128 keys, computed by the dQ warpgroup; d=64: one tile per consumer over its
  // own 64 keys (N=32 column halves would not be whole 128-byte swizzle atoms), both added into dq_acc.
  // A warp that writes dQ owns the boxes of its rows: 16 rows x 32 fp32 columns, 128-byte swizzled rows
  // (2 KB, the TMA reduce's box), 4 per warp: d=128, dQ-warpgroup warp wi: rows 16wi.. x 128 columns;
  // d=64, consumer warp wi: rows 16wi.. and 64 + 16wi.. x the 64 columns of its consumer's tile.
  static constexpr int DQ_WARP = 4 * 2048;
  static constexpr int DQ_WARPS = D == 128 ? 4 : 8;
  static constexpr int OFF_BAR = OFF_DQ + DQ_WARPS * DQ_WARP;  // barKV, full[2], empty[2], dsready[2], dsfree[2]
  static constexpr int SMEM = OFF_BAR + 96 + 1024;             // + slack to align the base to 1024 B
  static_assert(OFF_Q % 1024 == 0 && OFF_O % 1024 == 0 && OFF_S % 1024 == 0 && S_TILE % 1024 == 0 && Q_TILE % 1024 == 0 &&
                    OFF_DQ % 1024 == 0,
                "swizzle atoms need 1024-B alignment");
  static_assert(OFF_BAR % 8 == 0, "mbarriers need 8-byte alignment");
};

// ---------------------------------------------------------------------------------------------
template <bool BF16, int D>
__global__ void __launch_bounds__(Cfg<D>::NT, 1) attn_bwd_wgmma_kernel(const __grid_constant__ BwdTmaArgs A) {
#if MB_WG_ENABLED
  using C = Cfg<D>;
  constexpr int BC = C::BC, BR = C::BR;
  static_assert(D == 128 || D == 64, "wgmma backward: head_dim 64 or 128");
  const attn::BwdArgs& a = A.a;
  const AttnBwdParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* const gbase = smem_raw + (base - raw);
  const uint32_t sK = base + C::OFF_K, sV = base + C::OFF_V, sQ0 = base + C::OFF_Q, sO0 = base + C::OFF_O;
  const uint32_t sS0 = base + C::OFF_S, sDQ = base + C::OFF_DQ;
  uint8_t* const sSp0 = gbase + C::OFF_S;
  uint8_t* const sDQp = gbase + C::OFF_DQ;
  const uint32_t sL = base + C::OFF_L;
  float* const sLse = (float*)(gbase + C::OFF_L);  // [2][BR]
  float* const sDs = sLse + 2 * BR;                // [2][BR]
  const uint32_t barKV = base + C::OFF_BAR, full0 = barKV + 8, empty0 = barKV + 24;
  const uint32_t dsready0 = barKV + 40, dsfree0 = barKV + 56;  // d=128: dS^T buffer b written / read by dQ

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2;
  const int n_block = blockIdx.x;
  const int unit = a.unit0 + (int)blockIdx.y;
  const int b = unit / p.heads_kv, kvh = unit % p.heads_kv;
  const int sq = p.seqlen_q, sk = p.seqlen_k, group = a.group;
  const int n0 = n_block * BC;

  int m_begin = 0;
  if (p.causal) {
    const int64_t first = (int64_t)n0 - a.delta;
    m_begin = first <= 0 ? 0 : first >= sq ? (sq + BR - 1) / BR : (int)(first / BR);
  }
  const int m_end = (sq + BR - 1) / BR;
  const int nm = max(0, m_end - m_begin);
  const int total = group * nm;

  if (tid == 0) {
    mbar_init(barKV, 1);
    for (int i = 0; i < 2; ++i) {
      mbar_init(full0 + 8 * i, 1);   // the TMA thread's expect_tx arrival
      mbar_init(empty0 + 8 * i, 8);  // lane 0 of each consumer warp
      if constexpr (D == 128) {
        mbar_init(dsready0 + 8 * i, 256);  // every consumer thread, after its dS^T stores
        mbar_init(dsfree0 + 8 * i, 128);   // every dQ-warpgroup thread, after its GEMMs read the buffer
      }
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer warpgroup: one thread
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
    // total == 0: nothing to load (and no TMA may be left in flight when the CTA exits)
    if (tid == 0 && total > 0) {
      mbar_expect_tx(barKV, 2 * C::KV_TILE);
      tma_tile<BC, D>(sK, &A.tm_k, A.perm_k, barKV, n0, kvh, b);
      tma_tile<BC, D>(sV, &A.tm_v, A.perm_v, barKV, n0, kvh, b);
      for (int t = 0; t < total; ++t) {
        const int st = t & 1;
        const int h = kvh * group + t / nm, r0 = (m_begin + t % nm) * BR;
        const int64_t row = ((int64_t)b * p.heads_q + h) * a.sq_pad + r0;
        const uint32_t full = full0 + 8 * st;
        mbar_wait(empty0 + 8 * st, ((t >> 1) & 1) ^ 1);  // a fresh barrier passes the "previous phase" wait
        mbar_expect_tx(full, 2 * C::Q_TILE + 2 * BR * 4);
        tma_tile<BR, D>(sQ0 + st * C::Q_TILE, &A.tm_q, A.perm_q, full, r0, h, b);
        tma_tile<BR, D>(sO0 + st * C::Q_TILE, &A.tm_do, A.perm_do, full, r0, h, b);
        bulk_load(sL + st * BR * 4, a.lse2 + row, BR * 4, full);
        bulk_load(sL + (2 + st) * BR * 4, a.dsum + row, BR * 4, full);
      }
    }
    return;
  }

  const int wi = warp & 3;          // warp in warpgroup: accumulator rows 16*wi ..
  const int lr = lane >> 2;         // accumulator row within the warp's 16 (and +8)
  const int lc = (lane & 3) * 2;    // accumulator column pair within an n8 block
  // This warp's dQ boxes (Cfg::DQ_WARP; d=128: the dQ warpgroup's warps, d=64: the consumers'); a dq fragment
  // pair (row lr + 8h, columns 8j + lc, +1) goes to box `box`, row lr + 8h, 16-byte unit (2 (j % 4) + lc / 4) ^ lr
  // (the 128-byte swizzle; rows are 128 bytes, so 8 rows x 4 lanes of one store hit every bank twice: 2
  // wavefronts, the minimum).
  const int dq_warp = D == 128 ? wi : (wg - 1) * 4 + wi;
  const uint32_t sDQw = sDQ + (uint32_t)dq_warp * C::DQ_WARP;
  uint8_t* const sDQwp = sDQp + dq_warp * C::DQ_WARP;
  auto dq_store = [&](int box, int j, int h, float x, float y) {
    const int u = ((j & 3) << 1) | (lc >> 2);
    *(float2*)(sDQwp + box * 2048 + (lr + 8 * h) * 128 + ((u ^ lr) << 4) + ((lc & 2) << 2)) = make_float2(x, y);
  };
  // The dq_acc plane of q head t / nm of this CTA's unit (dq_acc is [units in chunk][group][sq][D]).
  const int plane0 = (int)blockIdx.y * group;

  if constexpr (D == 128) {
    if (wg == 3) {  // ---- the dQ warpgroup (d=128; see the header)
      asm volatile("setmaxnreg.dec.sync.aligned.u32 72;\n");
      if (total > 0) mbar_wait(barKV, 0);  // K landed
      for (int t = 0; t < total; ++t) {
        const int st = t & 1;
        const int r0 = (m_begin + t % nm) * BR;
        const uint32_t sS = sS0 + st * C::S_TILE;
        mbar_wait(dsready0 + 8 * st, (t >> 1) & 1);  // both consumers' dS^T of step t
        if (t > 0) {
          bulk_wait_read();  // this warp's reductions of step t - 1 have read its boxes
          __syncwarp();
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {  // dQ[:, 64hh..] = dS K[:, 64hh..] (8 k-steps over the 128 keys)
          float dq[32];
          fence_regs(dq);
          wg_fence();
#pragma unroll
          for (int k = 0; k < BC / 16; ++k)
            wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + k * 16 * 128, BC * BR * 2, 1024),
                                     make_desc(sK + hh * (BC * 128) + k * 16 * 128, BC * 128, 1024), k > 0);
          wg_commit();
          wg_wait<0>();
          fence_regs(dq);
          if (hh == 1) mbar_arrive(dsfree0 + 8 * st);  // dS^T buffer st read
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) dq_store(2 * hh + (j >> 2), j, h, dq[j * 4 + 2 * h], dq[j * 4 + 2 * h + 1]);
        }
        fence_proxy_async();  // generic writes -> the bulk copy reads
        __syncwarp();
        if (lane == 0) {
#pragma unroll
          for (int box = 0; box < 4; ++box)
            tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, box * 32, r0 + wi * 16, plane0 + t / nm);
          bulk_commit();
        }
      }
      bulk_wait_all();
      return;
    }
  }

  // ---- consumers
  if constexpr (D == 128) asm volatile("setmaxnreg.inc.sync.aligned.u32 208;\n");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n");
  const int c = wg - 1;             // keys 64c ..
  const bool ragged_k = n0 + BC > sk;
  const int64_t mask_before = (int64_t)n0 + BC - 1 - a.delta;

  float dv[D / 2], dk[D / 2];  // 64 keys x D per consumer: n8 block j -> regs 4j..4j+3
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  const uint32_t kw = (uint32_t)c * 64 * 128;  // byte offset of this consumer's 64 key rows in a K/V half
  if (total > 0) mbar_wait(barKV, 0);

  // The element-wise part of a step, over the consumer's 64 keys x the step's q rows (s: S^T accumulators,
  // n8 block j of q rows -> regs 4j..4j+3; both head dims). P^T = exp2(S^T scale log2e - lse log2e) in place,
  // zero where masked; lse * log2(e) is +inf for a row that saw no key, so its P is 0 (never exp2(+inf)).
  auto p_inplace = [&](auto& s, const float* lse_b, int r0, bool masked, int krow) {
    constexpr int NJ = sizeof(s) / sizeof(s[0]) / 4;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int ql = j * 8 + lc;
      const float2 L = *(const float2*)(lse_b + ql);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pv = ex2(s[j * 4 + e] * a.scale_log2 - ((e & 1) ? L.y : L.x));
        if (masked) {
          const int key = n0 + krow + (e >> 1) * 8, q = r0 + ql + (e & 1);
          if (key >= sk || (p.causal && key - q > a.delta)) pv = 0.f;
        }
        s[j * 4 + e] = pv;
      }
    }
  };
  // dS^T = P^T (dP^T - Dsum) in place in dp (d=64; d=128 takes P^T from its 16-bit fragments, 2b below).
  auto ds_inplace = [&](auto& dp, const auto& pt, const float* ds_b) {
    constexpr int NJ = sizeof(dp) / sizeof(dp[0]) / 4;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const float2 Dd = *(const float2*)(ds_b + j * 8 + lc);
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[j * 4 + e] = pt[j * 4 + e] * (dp[j * 4 + e] - ((e & 1) ? Dd.y : Dd.x));
    }
  };
  // fp32 accumulators -> 16-bit A fragments, k-step kq over q (16 each): the accumulator layout is the
  // A-fragment layout once pairs are packed (as in FA3's P).
  auto pack_frags = [&](auto& f, const auto& x) {
    constexpr int NK = sizeof(f) / sizeof(f[0]);
#pragma unroll
    for (int kq = 0; kq < NK; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) f[kq][i] = pack2<BF16>(x[kq * 8 + 2 * i], x[kq * 8 + 2 * i + 1]);
  };

  if constexpr (D == 64) {
    // ---- d = 64: 128 q rows per step (see the header); the d = 128 loop is the else branch
    static_assert(BR == 128, "d = 64 steps are 128 q rows");
    // ---- 1. S^T = K_c Q^T and dP^T = V_c dO^T, issued a step ahead (after the previous step's dQ stores, so they
    //         run under its reductions' issue and the turn-around; +6-7 % on an H200)
    //         (64 keys x 128 q: m64n128k16, 4 k-steps)
    float st_[64], dpt[64];
    auto issue_st = [&](uint32_t sQx, uint32_t sOx) {
      fence_regs(st_);
      fence_regs(dpt);
      wg_fence();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n128<BF16, 0, 0>(st_, make_desc(sK + kw + k * 32, 16, 1024), make_desc(sQx + k * 32, 16, 1024), k > 0);
      wg_commit();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n128<BF16, 0, 0>(dpt, make_desc(sV + kw + k * 32, 16, 1024), make_desc(sOx + k * 32, 16, 1024), k > 0);
      wg_commit();
    };
    if (total > 0) {
      mbar_wait(full0, 0);  // Q, dO, lse, Dsum of step 0 landed
      issue_st(sQ0, sO0);
    }
    for (int t = 0; t < total; ++t) {
      const int st = t & 1;
      const int r0 = (m_begin + t % nm) * BR;
      const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE;

      // ---- 2a. P^T
      const float* lse_b = sLse + st * BR;
      const float* ds_b = sDs + st * BR;
      const bool masked = ragged_k || (p.causal && (int64_t)r0 < mask_before);
      const int krow = c * 64 + wi * 16 + lr;
      wg_wait<0>();  // S^T and dP^T, issued at the previous step (wait<1> here: ptxas serialised the wgmma, C7514)
      fence_regs(st_);
      p_inplace(st_, lse_b, r0, masked, krow);

      // ---- 2b. dS^T = P^T (dP^T - Dsum), then both as 16-bit A fragments (k-steps over q, 16 each). dV is
      //          issued after dS, not while it is computed: with P^T, its fragments and dP^T live at once the
      //          consumer needs 224 registers and ptxas spilled and serialised the wgmma (C7512).
      wg_wait<0>();
      fence_regs(dpt);
      ds_inplace(dpt, st_, ds_b);
      uint32_t pf[8][4], sf[8][4];
      pack_frags(pf, st_);
      pack_frags(sf, dpt);

      // ---- 3. dV += P^T dO, dK += dS^T Q (8 k-steps over the 128 q each)
      fence_regs(pf);
      fence_regs(sf);
      fence_regs(dv);
      fence_regs(dk);
      wg_fence();
#pragma unroll
      for (int kq = 0; kq < 8; ++kq) wgmma_rs_n64<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
#pragma unroll
      for (int kq = 0; kq < 8; ++kq) wgmma_rs_n64<BF16, 1>(dk, sf[kq], make_desc(sQ + kq * 16 * 128, BR * 128, 1024), 1);
      wg_commit();

      // ---- 4. dS^T -> smem, half kq / 4 = q rows 64h..: [128 keys][64 q] 16-bit, 128-B swizzled rows. One
      //         buffer: every warp of this warpgroup must have finished the previous step's dQ GEMM first.
      named_sync(2 + c, 128);
#pragma unroll
      for (int kq = 0; kq < 8; ++kq)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = krow + (i & 1) * 8;
          const int ch = (kq & 3) * 2 + (i >> 1);
          *(uint32_t*)(sSp0 + (kq >> 2) * (BC * 128) + r * 128 + ((ch ^ (r & 7)) << 4) + lc * 2) = sf[kq][i];
        }
      fence_proxy_async();  // generic stores -> wgmma reads
      named_sync(2 + c, 128);

      // ---- 5. dQ_c = dS[:, keys of c] K_c: q rows 0-63 and 64-127 (m64n64k16, 4 k-steps each)
      float dq0[32], dq1[32];
      fence_regs(dq0);
      fence_regs(dq1);
      wg_fence();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq0, make_desc(sS0 + (c * 64 + k * 16) * 128, BC * 128, 1024),
                                 make_desc(sK + (c * 64 + k * 16) * 128, BC * 128, 1024), k > 0);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq1, make_desc(sS0 + BC * 128 + (c * 64 + k * 16) * 128, BC * 128, 1024),
                                 make_desc(sK + (c * 64 + k * 16) * 128, BC * 128, 1024), k > 0);
      wg_commit();
      wg_wait<0>();  // dV, dK and dQ of this step
      fence_regs(dq0);
      fence_regs(dq1);
      fence_regs(dv);
      fence_regs(dk);
      fence_regs(pf);
      fence_regs(sf);
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done

      // ---- 6. dQ -> this warp's boxes (rows 16wi.. and 64 + 16wi..), once its reductions of the previous step
      //         have read them; then lane 0 adds the four boxes into dq_acc (TMA reduce; rows past sq dropped).
      if (t > 0) {
        bulk_wait_read();
        __syncwarp();
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          dq_store(j >> 2, j, h, dq0[j * 4 + 2 * h], dq0[j * 4 + 2 * h + 1]);
          dq_store(2 + (j >> 2), j, h, dq1[j * 4 + 2 * h], dq1[j * 4 + 2 * h + 1]);
        }
      // the next step's S^T and dP^T (1; after the last step discarded ones on this step's tiles: no branch
      // around the issue)
      const bool more = t + 1 < total;
      if (more) mbar_wait(full0 + 8 * (st ^ 1), ((t + 1) >> 1) & 1);  // step t + 1 landed
      issue_st(more ? sQ0 + (st ^ 1) * C::Q_TILE : sQ, more ? sO0 + (st ^ 1) * C::Q_TILE : sO);
      fence_proxy_async();  // generic writes -> the bulk copy reads
      __syncwarp();
      if (lane == 0) {
#pragma unroll
        for (int box = 0; box < 4; ++box)
          tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, (box & 1) * 32, r0 + (box >> 1) * 64 + wi * 16, plane0 + t / nm);
        bulk_commit();
      }
    }
    wg_wait<0>();
    fence_regs(st_);
  } else {
    // ---- 1. S^T = K_w Q^T (64 keys x 64 q per consumer), issued a step ahead (at the end of the previous step,
    //         behind its dK GEMM); dP^T = V_w dO^T is issued in 3a
    // acc = X_w Y^T for this consumer's 64 key rows of X (K or V) and the step's 64 rows of Y (Q or dO): S^T, dP^T
    auto issue_t = [&](float (&acc)[32], uint32_t sX, uint32_t sY) {
      fence_regs(acc);
      wg_fence();
#pragma unroll
      for (int k = 0; k < D / 16; ++k) {
        const uint32_t xo = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
        const uint32_t yo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
        wgmma_ss_n64<BF16, 0, 0>(acc, make_desc(sX + xo, 16, 1024), make_desc(sY + yo, 16, 1024), k > 0);
      }
      wg_commit();
    };
    float st_[32];
    auto issue_st = [&](uint32_t sQx) { issue_t(st_, sK, sQx); };
    if (total > 0) {
      mbar_wait(full0, 0);  // Q, dO, lse, Dsum of step 0 landed
      issue_st(sQ0);
    }
    for (int t = 0; t < total; ++t) {  // ---- d = 128: 64 q rows per step
      const int st = t & 1;
      const int r0 = (m_begin + t % nm) * BR;
      const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE;
      uint8_t* const sSp = sSp0 + st * C::S_TILE;
      float dpt[32];

      // ---- 2a. P^T
      const float* lse_b = sLse + st * BR;
      const float* ds_b = sDs + st * BR;
      const bool masked = ragged_k || (p.causal && (int64_t)r0 < mask_before);
      const int krow = c * 64 + wi * 16 + lr;  // local key of accumulator rows (e >> 1 == 0); +8 for the others
      wg_wait<0>();
      fence_regs(st_);
      p_inplace(st_, lse_b, r0, masked, krow);
      uint32_t pf[4][4];  // A fragments of P^T for k-steps over q (16 each)
      pack_frags(pf, st_);

      // ---- 3a. dV += P^T dO (A from registers, B = dO [q][d] read N-major), then dP^T = V_w dO^T: issued only
      //          now, so the fp32 P^T and dP^T never live together (the consumer has 208 registers)
      fence_regs(pf);
      fence_regs(dv);
      wg_fence();
#pragma unroll
      for (int kq = 0; kq < 4; ++kq)
        wgmma_rs_n128<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
      wg_commit();
      issue_t(dpt, sV, sO);

      // ---- 2b. dS^T = P^T (dP^T - Dsum), P^T taken from its 16-bit fragments (the fp32 P^T died at the pack)
      wg_wait<0>();  // dP^T (and dV) done
      fence_regs(dpt);
      uint32_t sf[4][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 Dd = *(const float2*)(ds_b + j * 8 + lc);
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const float2 pp = attn::unpack2<BF16>(pf[j >> 1][(j & 1) * 2 + (e >> 1)]);
          dpt[j * 4 + e] = pp.x * (dpt[j * 4 + e] - Dd.x);
          dpt[j * 4 + e + 1] = pp.y * (dpt[j * 4 + e + 1] - Dd.y);
        }
      }
      pack_frags(sf, dpt);

      // ---- 3b. dK += dS^T Q
      fence_regs(sf);
      fence_regs(dk);
      wg_fence();
#pragma unroll
      for (int kq = 0; kq < 4; ++kq)
        wgmma_rs_n128<BF16, 1>(dk, sf[kq], make_desc(sQ + kq * 16 * 128, BR * 128, 1024), 1);
      wg_commit();
      // ---- the next step's S^T (1), right behind dK and before the dS^T stores (+2 % over after them); after the
      //      last step a discarded S^T on this step's Q (a branch around the issue made ptxas serialise the wgmma
      //      and spill). The stores below only read sf, an operand of the dK GEMM in flight, not an accumulator.
      const bool more = t + 1 < total;
      if (more) mbar_wait(full0 + 8 * (st ^ 1), ((t + 1) >> 1) & 1);  // step t + 1 landed
      issue_st(more ? sQ0 + (st ^ 1) * C::Q_TILE : sQ);

      // ---- 4. dS^T -> smem [key][q]: A fragment reg i of k-step kq holds rows krow (+8 for odd i),
      //         columns kq*16 + (i >> 1)*8 + lc. Buffer st was last read by the dQ warpgroup at step t - 2.
      if (t >= 2) mbar_wait(dsfree0 + 8 * st, ((t >> 1) - 1) & 1);
#pragma unroll
      for (int kq = 0; kq < 4; ++kq)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = krow + (i & 1) * 8;
          const int ch = kq * 2 + (i >> 1);
          *(uint32_t*)(sSp + r * 128 + ((ch ^ (r & 7)) << 4) + lc * 2) = sf[kq][i];
        }
      fence_proxy_async();  // generic stores -> wgmma reads (the dQ warpgroup's)
      mbar_arrive(dsready0 + 8 * st);
      wg_wait<1>();  // dK of this step (wgmma groups complete in order: the next S^T may run on)
      fence_regs(dv);
      fence_regs(dk);
      fence_regs(sf);
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done
    }
    wg_wait<0>();
    fence_regs(st_);
  }
  bulk_wait_all();

  // dK = scale * dS^T Q, dV = P^T dO: consumer rows = keys 64c + 16wi + lr (+8), columns 8j + lc.
  uint16_t* gdK = (uint16_t*)p.dk + b * p.dk_batch_stride + kvh * p.dk_head_stride + lc;
  uint16_t* gdV = (uint16_t*)p.dv + b * p.dv_batch_stride + kvh * p.dv_head_stride + lc;
  const float scale = p.scale;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = n0 + c * 64 + wi * 16 + lr + h * 8;
    if (key < sk) {
      uint16_t* rk = gdK + (int64_t)key * p.dk_row_stride;
      uint16_t* rv = gdV + (int64_t)key * p.dv_row_stride;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *(uint32_t*)(rk + j * 8) = pack2<BF16>(dk[j * 4 + 2 * h] * scale, dk[j * 4 + 2 * h + 1] * scale);
        *(uint32_t*)(rv + j * 8) = pack2<BF16>(dv[j * 4 + 2 * h], dv[j * 4 + 2 * h + 1]);
      }
    }
  }
#else
  __trap();  // not sm_90a SASS: the launcher refuses this case before launching
#endif
}

// Dsum = rowsum(dO * O) and lse * log2(e) (+inf where lse = -inf) into [b, hq, sq_pad], rows sq.. zero
// (their Q and dO tiles are zero-filled by TMA, so they add nothing): one warp per row.
template <bool BF16, int D>
__global__ void attn_bwd_wgmma_pre_kernel(const AttnBwdParams p, float* dsum, float* lse2, int sq_pad) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = (int64_t)p.batch * p.heads_q * sq_pad;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  for (int64_t w = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < rows; w += warps) {
    const int i = (int)(w % sq_pad);
    const int64_t bh = w / sq_pad;
    const int h = (int)(bh % p.heads_q), b = (int)(bh / p.heads_q);
    float acc = 0.f, l2 = 0.f;
    if (i < p.seqlen_q) {
      acc = attn::row_dot<BF16, D>(p, b, h, i, lane);
      const float x = p.lse[bh * p.seqlen_q + i];
      l2 = x == -INFINITY ? INFINITY : x * kLog2e;
    }
    if (lane == 0) {
      dsum[w] = acc;
      lse2[w] = l2;
    }
  }
}

// Workspace: Dsum and lse2 [b, hq, sq_pad] each, then dq_acc (attn::plan_bwd).
template <int D>
static int sq_padded(const AttnBwdParams& p) { return (p.seqlen_q + Cfg<D>::BR - 1) / Cfg<D>::BR * Cfg<D>::BR; }
static attn::BwdPlan wg_plan(const AttnBwdParams& p) {
  const int sq_pad = p.head_dim == 64 ? sq_padded<64>(p) : sq_padded<128>(p);
  return attn::plan_bwd(p, 2 * (size_t)p.batch * p.heads_q * sq_pad * 4);
}

static void check_supported(const AttnBwdParams& p, const char* who) {
  attn::check_common(p, who);
  if (p.head_dim != 128 && p.head_dim != 64)
    throw Error("ERR_UNSUPPORTED", std::string(who) + ": the wgmma backward supports head_dim 64 and 128, got " +
                                       std::to_string(p.head_dim));
}

// false: TMA descriptors cannot be made for these tensors (nothing launched).
template <bool BF16, int D>
static bool launch(const AttnBwdParams& p, cudaStream_t stream) {
  using C = Cfg<D>;
  auto kern = attn_bwd_wgmma_kernel<BF16, D>;
  if (!wgmma_runs_here((const void*)kern, C::SMEM))
    throw Error("ERR_UNSUPPORTED", "attention_bwd_cuda_wgmma: needs an sm_90 GPU, sm_90a SASS in the binary and " +
                                       std::to_string(C::SMEM) + " bytes of shared memory per block");
  BwdTmaArgs A;
  if (p.seqlen_q > 0 && p.seqlen_k > 0 &&
      (!make_map(&A.tm_q, A.perm_q, p.q, BF16, D, p.seqlen_q, p.heads_q, p.batch, p.q_row_stride, p.q_head_stride, p.q_batch_stride, C::BR) ||
       !make_map(&A.tm_do, A.perm_do, p.dout, BF16, D, p.seqlen_q, p.heads_q, p.batch, p.do_row_stride, p.do_head_stride, p.do_batch_stride,
                 C::BR) ||
       !make_map(&A.tm_k, A.perm_k, p.k, BF16, D, p.seqlen_k, p.heads_kv, p.batch, p.k_row_stride, p.k_head_stride, p.k_batch_stride, C::BC) ||
       !make_map(&A.tm_v, A.perm_v, p.v, BF16, D, p.seqlen_k, p.heads_kv, p.batch, p.v_row_stride, p.v_head_stride, p.v_batch_stride, C::BC)))
    return false;
  const attn::BwdPlan pl = wg_plan(p);
  attn::BwdArgs& a = A.a;
  a = attn::bwd_args(p, pl);
  if (p.seqlen_q > 0 && p.seqlen_k > 0 &&
      !make_acc_map(&A.tm_dq, a.dq_acc, D, p.seqlen_q, (int64_t)pl.units_per_chunk * a.group, 16))
    return false;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
  attn::check_cuda("attention_bwd_wgmma: cudaFuncSetAttribute");
  a.sq_pad = sq_padded<D>(p);
  float* dsum = (float*)p.workspace;
  float* lse2 = dsum + (size_t)p.batch * p.heads_q * a.sq_pad;
  a.lse2 = lse2;
  if (p.seqlen_q > 0) {
    const int64_t rows = (int64_t)p.batch * p.heads_q * a.sq_pad;
    const int64_t blocks = std::min<int64_t>((rows + 7) / 8, attn::sm_count() * 64);
    attn_bwd_wgmma_pre_kernel<BF16, D><<<(unsigned)blocks, 256, 0, stream>>>(p, dsum, lse2, a.sq_pad);
    attn::check_cuda("attention_bwd_wgmma preprocess launch");
  }
  // No q rows: the kernel still runs (dk = dv = 0) but loads nothing, so the maps are never read.
  attn::run_bwd_chunks<BF16, D>(p, pl, a, C::BC, stream, [&](dim3 grid) { kern<<<grid, C::NT, C::SMEM, stream>>>(A); });
  return true;
}

}  // namespace attn_wg

bool attention_bwd_wgmma_usable(const AttnBwdParams& p) {
  if (p.dtype != Dtype::BF16 && p.dtype != Dtype::F16) return false;
  if (p.head_dim == 128) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_bwd_wgmma_kernel<true, 128>, attn_wg::Cfg<128>::SMEM);
  if (p.head_dim == 64) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_bwd_wgmma_kernel<true, 64>, attn_wg::Cfg<64>::SMEM);
  return false;
}

size_t attention_bwd_wgmma_workspace_bytes(const AttnBwdParams& p) {
  attn_wg::check_supported(p, "attention_bwd_wgmma_workspace_bytes");
  // Also enough for the mma.sync backward, which runs in this workspace when TMA cannot describe the tensors.
  return std::max(attn_wg::wg_plan(p).total, attn::plan_bwd(p).total);
}

bool attention_bwd_cuda_wgmma(const AttnBwdParams& p, cudaStream_t stream) {
  using namespace attn;
  const char* who = "attention_bwd_cuda_wgmma";
  attn_wg::check_supported(p, who);
  if (p.batch == 0) return true;
  check_bwd_tensors(p, who);
  if (!aligned16(p.workspace)) throw Error("ERR_UNSUPPORTED", std::string(who) + ": workspace must be 16-byte aligned");
  if (p.seqlen_q == 0 && p.seqlen_k == 0) return true;
  const bool bf16 = p.dtype == Dtype::BF16;
  if (p.head_dim == 128) return bf16 ? attn_wg::launch<true, 128>(p, stream) : attn_wg::launch<false, 128>(p, stream);
  return bf16 ? attn_wg::launch<true, 64>(p, stream) : attn_wg::launch<false, 64>(p, stream);
}

}  // namespace mb
