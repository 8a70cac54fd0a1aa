#!/usr/bin/env python3
"""Variant "d64-br128" of csrc/ops/attention/attention_bwd_wgmma.cu, written as edits of the product file
(each asserted to match exactly once, so a changed product kernel fails loudly instead of building something
else). bench/dev/attn_harness.sh runs it for VARIANT_SCRIPTS=bench/dev/variants/bwd_d64_br128.py and builds the
result in place of the product kernel for the A/B. The d = 128 kernel is left as it is.

One change, at head_dim 64 only: 128 q rows per step instead of 64 (BR = 128). The d = 64 step does half the GEMM
work of the d = 128 one per element of S, so per-step fixed costs (mbarrier waits, wgmma issue and waits, the
warpgroup barrier, the flush) weigh twice as much; 128 rows halve the number of steps, and S^T/dP^T become
m64n128 (6 KB of operands per 64 clk of tensor work instead of 4 KB per 32). Registers (consumer, peak at
dS = P (dP - Dsum)): dV 32 + dK 32 + P 64 + dP^T 64 = 192, which the d = 128 step (BR = 64) could not afford
at its dV/dK of 128; dV is issued after dS (with it in flight during dS, 224 registers: ptxas spilled, C7512). dQ = dS K_c is two m64n64 GEMMs (q rows 0-63, 64-127) over the consumer's own 64
keys into its own fp32 tile [128][D + 8]; dS^T lives in two halves [128 keys][64 q] (128-B swizzled rows, the
M-major A layout of one m64 half each).
Shared memory: K 16K + V 16K + Q 2x16K + dO 2x16K + dS^T 32K (one buffer: a second would not fit beside the two
36 KB dQ tiles) + lse/Dsum 2K + dQ 72K = 203 KB. With one dS^T buffer a warpgroup barrier before its stores
makes sure every warp of the warpgroup has finished the previous step's dQ GEMM (wgmma.wait_group is per warp).
Prediction and outcome: bench/NOTES.md ("Backward at d = 64: 128 q rows per step").

usage: bwd_d64_br128.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

D64_LOOP = '''  if constexpr (D == 64) {
    // ---- variant d64-br128: 128 q rows per step (BR = 128)
    static_assert(BR == 128, "d64-br128: BR");
    for (int t = 0; t < total; ++t) {
      const int st = t & 1;
      const int r0 = (m_begin + t % nm) * BR;
      mbar_wait(full0 + 8 * st, (t >> 1) & 1);  // Q, dO, lse, Dsum of step t landed
      const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE;

      // ---- 1. S^T = K_c Q^T, dP^T = V_c dO^T (64 keys x 128 q: m64n128k16, 4 k-steps)
      float st_[64], dpt[64];
      fence_regs(st_);
      fence_regs(dpt);
      wg_fence();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n128<BF16, 0, 0>(st_, make_desc(sK + kw + k * 32, 16, 1024), make_desc(sQ + k * 32, 16, 1024), k > 0);
      wg_commit();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n128<BF16, 0, 0>(dpt, make_desc(sV + kw + k * 32, 16, 1024), make_desc(sO + k * 32, 16, 1024), k > 0);
      wg_commit();

      // ---- 2a. P^T (while dP^T is still running)
      const float* lse_b = sLse + st * BR;
      const float* ds_b = sDs + st * BR;
      const bool masked = ragged_k || (p.causal && (int64_t)r0 < mask_before);
      const int krow = c * 64 + wi * 16 + lr;
      wg_wait<1>();
      fence_regs(st_);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int ql = j * 8 + lc;
        const float2 L = *(const float2*)(lse_b + ql);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pv = ex2(st_[j * 4 + e] * a.scale_log2 - ((e & 1) ? L.y : L.x));
          if (masked) {
            const int key = n0 + krow + (e >> 1) * 8, q = r0 + ql + (e & 1);
            if (key >= sk || (p.causal && key - q > a.delta)) pv = 0.f;
          }
          st_[j * 4 + e] = pv;
        }
      }

      // ---- 2b. dS^T = P^T (dP^T - Dsum), then both as 16-bit A fragments (k-steps over q, 16 each). dV is
      //          issued after dS, not while it is computed: with P^T, its fragments and dP^T live at once the
      //          consumer needs 224 registers and ptxas spilled and serialised the wgmma (C7512).
      wg_wait<0>();
      fence_regs(dpt);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float2 Dd = *(const float2*)(ds_b + j * 8 + lc);
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[j * 4 + e] = st_[j * 4 + e] * (dpt[j * 4 + e] - ((e & 1) ? Dd.y : Dd.x));
      }
      uint32_t pf[8][4], sf[8][4];
#pragma unroll
      for (int kq = 0; kq < 8; ++kq)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          pf[kq][i] = pack2<BF16>(st_[kq * 8 + 2 * i], st_[kq * 8 + 2 * i + 1]);
          sf[kq][i] = pack2<BF16>(dpt[kq * 8 + 2 * i], dpt[kq * 8 + 2 * i + 1]);
        }

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

      // ---- 6. dQ -> this warp's rows 16wi.. and 64 + 16wi.. of its tile, once this warp's copies of the previous
      //         step have read them; then each lane adds one of those 32 rows into dq_acc.
      if (t > 0) {
        bulk_wait_read();
        __syncwarp();
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = wi * 16 + lr + h * 8;
          *(float2*)(sDQp + dq_off + row * QP + (j * 8 + lc) * 4) = make_float2(dq0[j * 4 + 2 * h], dq0[j * 4 + 2 * h + 1]);
          *(float2*)(sDQp + dq_off + (row + 64) * QP + (j * 8 + lc) * 4) = make_float2(dq1[j * 4 + 2 * h], dq1[j * 4 + 2 * h + 1]);
        }
      fence_proxy_async();  // generic writes -> the bulk copy reads
      __syncwarp();
      const int row = (lane >> 4) * 64 + wi * 16 + (lane & 15);
      if (r0 + row < sq)
        bulk_red_add_f32(acc_unit + ((int64_t)(t / nm) * sq + r0 + row) * D, sDQ + dq_off + row * QP, D * 4);
    }
  } else
'''

EDITS = [
    ('''  static constexpr int BR = 64;      // q rows per step''',
     '''  static constexpr int BR = D == 64 ? 128 : 64;  // q rows per step'''),
    ('''  static constexpr int OFF_L = OFF_S + 2 * S_TILE;   // lse [2][BR] then Dsum [2][BR]''',
     '''  static constexpr int OFF_L = OFF_S + (D == 64 ? 1 : 2) * S_TILE;  // lse [2][BR] then Dsum [2][BR]'''),
    ('''  if (total > 0) mbar_wait(barKV, 0);

  for (int t = 0; t < total; ++t) {
''',
     '''  if (total > 0) mbar_wait(barKV, 0);

''' + D64_LOOP + '''  for (int t = 0; t < total; ++t) {
'''),
]


if __name__ == '__main__':
    write_variant('bwd_d64_br128', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
