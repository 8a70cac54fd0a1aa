#!/usr/bin/env python3
"""Variant "d64-st-early" of csrc/ops/attention/attention_bwd_wgmma.cu (d = 64 only), written as edits of the
product file (each asserted to match exactly once). Prepared in the sixth session (2026-12-02), compile-checked.

One change, the d = 64 form of the d = 128 one that measured +8-11 %: a consumer issues the next step's
S^T = K_c Q^T and dP^T = V_c dO^T (m64n128, 64 registers each) right after it has stored this step's dQ boxes,
so they run under the dQ reductions' issue and the step's turn-around instead of after it. Live at the issue:
dV + dK (64), the next S^T and dP^T (128) = 192 of 240 (the A fragments and dQ are dead by then). The loop top
waits for both (wait<1> there, with the groups carried round the loop, made ptxas serialise the wgmma: C7514),
so exp2 no longer runs under the same consumer's dP^T GEMM, only under the other consumer's GEMMs.
Prediction: -3 to +6 % at d = 64 (gain: the turn-around; loss: the exp2 overlap within the consumer).

usage: bwd_d64_st_early.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''    static_assert(BR == 128, "d = 64 steps are 128 q rows");
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
''', '''    static_assert(BR == 128, "d = 64 steps are 128 q rows");
    // ---- 1. S^T = K_c Q^T (issued a step ahead, before the previous step's dQ flush), dP^T = V_c dO^T
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
'''),
    ('''      const int krow = c * 64 + wi * 16 + lr;
      wg_wait<1>();
      fence_regs(st_);''', '''      const int krow = c * 64 + wi * 16 + lr;
      wg_wait<0>();  // S^T and dP^T, issued at the previous step (wait<1> here: ptxas serialised the wgmma, C7514)
      fence_regs(st_);'''),
    ('''      fence_regs(pf);
      fence_regs(sf);
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done

      // ---- 6.''', '''      fence_regs(pf);
      fence_regs(sf);
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done

      // ---- 6.'''),
    ('''          dq_store(2 + (j >> 2), j, h, dq1[j * 4 + 2 * h], dq1[j * 4 + 2 * h + 1]);
        }
''', '''          dq_store(2 + (j >> 2), j, h, dq1[j * 4 + 2 * h], dq1[j * 4 + 2 * h + 1]);
        }
      // the next step's S^T (after the last step a discarded one on this step's Q: no branch around the issue)
      const bool more = t + 1 < total;
      if (more) mbar_wait(full0 + 8 * (st ^ 1), ((t + 1) >> 1) & 1);  // step t + 1 landed
      issue_st(more ? sQ0 + (st ^ 1) * C::Q_TILE : sQ, more ? sO0 + (st ^ 1) * C::Q_TILE : sO);
'''),
    ('''          tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, (box & 1) * 32, r0 + (box >> 1) * 64 + wi * 16, plane0 + t / nm);
        bulk_commit();
      }
    }
''', '''          tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, (box & 1) * 32, r0 + (box >> 1) * 64 + wi * 16, plane0 + t / nm);
        bulk_commit();
      }
    }
    wg_wait<0>();
    fence_regs(st_);
'''),
]

if __name__ == '__main__':
    write_variant('bwd_d64_st_early', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
