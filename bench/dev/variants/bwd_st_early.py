#!/usr/bin/env python3
"""Variant "st-early" of csrc/ops/attention/attention_bwd_wgmma.cu (d = 128 only), written as edits of the product
file (each asserted to match exactly once). Prepared in the sixth session (2026-12-02), compile-checked.

One change: a consumer issues the next step's S^T = K_w Q^T right after this step's dS^T is stored, behind its
dK GEMM, and only then waits for dK (wgmma groups complete in order: wait<1> = dK done, S^T may run on). Today it
waits for dK, releases the stage, goes round the loop, waits for the next stage and only then issues S^T, so the
tensor pipe sees a gap of one issue and fill latency per step and consumer, and the consumer's first wait of the
step (for S^T) starts cold. Registers: with the dQ GEMM gone from the consumers (the dQ warpgroup), dV + dK (128)
+ the next S^T (32) + the dK GEMM's A fragments (16) are live at the issue: 176 of 208.
Prediction: +0-5 % at d = 128 (the other consumer and the dQ warpgroup fill most of the gap today).

usage: bwd_st_early.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''  } else
  for (int t = 0; t < total; ++t) {  // ---- d = 128: 64 q rows per step
    const int st = t & 1;
    const int r0 = (m_begin + t % nm) * BR;
    mbar_wait(full0 + 8 * st, (t >> 1) & 1);  // Q, dO, lse, Dsum of step t landed
    const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE;
    uint8_t* const sSp = sSp0 + st * C::S_TILE;

    // ---- 1. S^T = K_w Q^T (64 keys x 64 q per consumer); dP^T = V_w dO^T is issued in 3a
    float st_[32], dpt[32];
    fence_regs(st_);
    fence_regs(dpt);
    wg_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(st_, make_desc(sK + ko, 16, 1024), make_desc(sQ + qo, 16, 1024), k > 0);
    }
    wg_commit();
''', '''  } else {
  // ---- 1. S^T = K_w Q^T (64 keys x 64 q per consumer), issued a step ahead; dP^T = V_w dO^T is issued in 3a
  float st_[32];
  auto issue_st = [&](uint32_t sQx) {
    fence_regs(st_);
    wg_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(st_, make_desc(sK + ko, 16, 1024), make_desc(sQx + qo, 16, 1024), k > 0);
    }
    wg_commit();
  };
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
'''),
    ('''    fence_proxy_async();  // generic stores -> wgmma reads (the dQ warpgroup's)
    mbar_arrive(dsready0 + 8 * st);
    wg_wait<0>();  // dV, dK of this step
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pf);
    fence_regs(sf);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done
  }
  bulk_wait_all();''', '''    fence_proxy_async();  // generic stores -> wgmma reads (the dQ warpgroup's)
    mbar_arrive(dsready0 + 8 * st);
    // The next step's S^T; after the last step a discarded one on this step's Q (no branch around the
    // issue: with one, ptxas serialised the wgmma and spilled)
    const bool more = t + 1 < total;
    if (more) mbar_wait(full0 + 8 * (st ^ 1), ((t + 1) >> 1) & 1);  // step t + 1 landed
    issue_st(more ? sQ0 + (st ^ 1) * C::Q_TILE : sQ);
    wg_wait<1>();  // dK of this step (S^T of the next may run on)
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(sf);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * st);  // Q, dO (wgmma) and lse, Dsum (this warp's loads) done
  }
  wg_wait<0>();
  fence_regs(st_);
  }
  bulk_wait_all();'''),
]

if __name__ == '__main__':
    write_variant('bwd_st_early', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
