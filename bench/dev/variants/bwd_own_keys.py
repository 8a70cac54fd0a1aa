#!/usr/bin/env python3
"""Variant "bwd-own-keys" of csrc/ops/attention/attention_bwd_wgmma.cu, written as edits of the product file
(each asserted to match exactly once, so a changed product kernel fails loudly instead of building something
else). bench/dev/attn_harness.sh runs it for VARIANT_SCRIPTS=bench/dev/variants/bwd_own_keys.py and builds the
result in place of the product kernel for the A/B.

One change: at head_dim 128 too, each consumer computes dQ over its own 64 keys only (m64n128, 4 k-steps) into its
own fp32 tile, as the d = 64 path already does, so the two consumers never wait for each other (a warpgroup barrier
instead of the consumers' barrier every step; dS^T single-buffered, each consumer reads only its own rows, after a
warpgroup barrier that makes sure all of the warpgroup's previous dQ GEMM is done). Costs: 64 dQ accumulators
instead of 32, so dV and dK must finish before the dQ GEMM is issued (with all of them live ptxas serialises the
wgmma, C7512), and twice the dq_acc reduction bytes.
Prediction and outcome: bench/NOTES.md ("Backward step 2").

usage: bwd_own_keys.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''  static constexpr int OFF_S = OFF_O + 2 * Q_TILE;   // dS^T [2] buffers of [BC][BR] 16-bit, 128-B rows
  static constexpr int OFF_L = OFF_S + 2 * S_TILE;   // lse [2][BR] then Dsum [2][BR]''',
     '''  static constexpr int OFF_S = OFF_O + 2 * Q_TILE;   // dS^T [BC][BR] 16-bit, 128-B rows
  static constexpr int OFF_L = OFF_S + S_TILE;       // lse [2][BR] then Dsum [2][BR]'''),
    ('''  static constexpr int DQ_TILES = D == 128 ? 1 : 2;''', '''  static constexpr int DQ_TILES = 2;'''),
    ('''columns kq*16 + (i >> 1)*8 + lc. Buffer st was last read by the dQ GEMMs of step t-2, which
    //         both consumers finished before the barrier of step t-1.
''', '''columns kq*16 + (i >> 1)*8 + lc. One buffer: every warp of this warpgroup must have finished the
    //         previous step's dQ GEMM (wgmma.wait_group is per warp; each warp's rows of it read all 64 keys).
    named_sync(2 + c, 128);
'''),
    ('''    const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE, sS = sS0 + st * C::S_TILE;
    uint8_t* const sSp = sSp0 + st * C::S_TILE;''',
     '''    const uint32_t sQ = sQ0 + st * C::Q_TILE, sO = sO0 + st * C::Q_TILE, sS = sS0;
    uint8_t* const sSp = sSp0;'''),
    ('''    float dq[32];
    if constexpr (D == 128) {
      named_sync(1, 256);  // dS^T of both consumers complete
      // ---- 5. dQ[:, 64c..] = dS K: A = dS^T [key][q] read M-major, B = K half c read N-major
      fence_regs(dq);
      wg_fence();
#pragma unroll
      for (int k = 0; k < BC / 16; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + k * 16 * 128, BC * BR * 2, 1024),
                                 make_desc(sK + c * (BC * 128) + k * 16 * 128, BC * 128, 1024), k > 0);
    } else {
      // This consumer's dS^T rows and its own dQ tile only: a warpgroup barrier (ids 2, 3; 128 threads).
      named_sync(2 + c, 128);
      // ---- 5. dQ_c = dS[:, keys of c] K_c (64 q x 64 d over this consumer's 64 keys)
      fence_regs(dq);
      wg_fence();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + (c * 64 + k * 16) * 128, BC * BR * 2, 1024),
                                 make_desc(sK + (c * 64 + k * 16) * 128, BC * 128, 1024), k > 0);
    }
''',
     '''    float dq[D / 2];
    // This consumer's dS^T rows (its own dQ GEMM of the previous step read them and has completed) and its
    // own dQ tile only: a warpgroup barrier (ids 2, 3; 128 threads).
    named_sync(2 + c, 128);
    // dV and dK done first: their A fragments (pf, sf) die before the 64 dQ accumulators are live.
    wg_wait<0>();
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pf);
    fence_regs(sf);
    // ---- 5. dQ_c = dS[:, keys of c] K_c (64 q x D over this consumer's 64 keys)
    fence_regs(dq);
    wg_fence();
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t da = make_desc(sS + (c * 64 + k * 16) * 128, BC * BR * 2, 1024);
      const uint64_t db = make_desc(sK + (c * 64 + k * 16) * 128, BC * 128, 1024);
      if constexpr (D == 128) wgmma_ss_n128<BF16, 1, 1>(dq, da, db, k > 0);
      else wgmma_ss_n64<BF16, 1, 1>(dq, da, db, k > 0);
    }
'''),
    ('''    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wi * 16 + lr + h * 8;
        *(float2*)(sDQp + dq_off''',
     '''    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wi * 16 + lr + h * 8;
        *(float2*)(sDQp + dq_off'''),
    ('''sDQ + dq_off + row * QP, 64 * 4);''', '''sDQ + dq_off + row * QP, D * 4);'''),
]


if __name__ == '__main__':
    write_variant('bwd_own_keys', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
