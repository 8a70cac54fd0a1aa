#!/usr/bin/env python3
"""Variant "d64-pairsum" of csrc/ops/attention/attention_bwd_wgmma.cu (d = 64 only), written as edits of the
product file (each asserted to match exactly once). Prepared in the fifth session (2026-12-02), compile-checked,
not yet run on a GPU.

At d = 64 each consumer computes dQ over its own 64 keys for all 128 q rows x 64 columns of a step, and both add
their tiles into dq_acc: 64 KB of fp32 TMA reduce-adds per step and CTA, twice the d = 128 kernel's reduction bytes
per FLOP (d = 128 measured: the L2 reductions cost ~10 % of the step, and half of them cost nothing). One change:
the two consumers' warps of the same rows (warp wi of each) sum their tiles in shared memory first. Consumer 0
keeps q rows 0-63 (dq0) and hands rows 64-127 (dq1) to consumer 1 through its exchange boxes; consumer 1 does the
reverse; after a 64-thread named barrier (ids 4 + wi) each adds the other's copy of its rows from shared memory,
a second barrier frees the exchange boxes, and each warp reduces 2 boxes (rows 64c + 16wi..) instead of 4. Half
the reduction bytes and operations; same shared memory (per warp: 2 reduce boxes + 2 exchange boxes). Cost: the
warp pairs of the two consumers meet twice a step (today the d = 64 consumers only sync within a warpgroup).
Prediction: +5-12 % at d = 64 (384 -> 400-430 TF/s at 128K; cuDNN 421); the d = 128 exchange barrier between
the consumers measured free, so the coupling should be cheap.

usage: bwd_d64_pairsum.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''      // ---- 6. dQ -> this warp's boxes (rows 16wi.. and 64 + 16wi..), once its reductions of the previous step
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
      fence_proxy_async();  // generic writes -> the bulk copy reads
      __syncwarp();
      if (lane == 0) {
#pragma unroll
        for (int box = 0; box < 4; ++box)
          tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, (box & 1) * 32, r0 + (box >> 1) * 64 + wi * 16, plane0 + t / nm);
        bulk_commit();
      }''',
     '''      // ---- 6. (variant d64-pairsum) consumer c keeps q rows 64c.. of this warp's dQ, hands the other 64 rows to
      //         warp wi of the other consumer through its exchange boxes (2, 3), adds that warp's copy of its own
      //         rows, and reduces 2 boxes instead of 4: half the L2 reduction bytes.
      auto pair_sum = [&](float (&keep)[32], float (&give)[32]) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) dq_store(2 + (j >> 2), j, h, give[j * 4 + 2 * h], give[j * 4 + 2 * h + 1]);
        named_sync(4 + wi, 64);  // both warps' exchange boxes written
        const uint8_t* other = sDQwp + (1 - 2 * c) * 4 * C::DQ_WARP;  // warp wi of the other consumer
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int u = ((j & 3) << 1) | (lc >> 2);
            const float2 v = *(const float2*)(other + (2 + (j >> 2)) * 2048 + (lr + 8 * h) * 128 + ((u ^ lr) << 4) + ((lc & 2) << 2));
            keep[j * 4 + 2 * h] += v.x;
            keep[j * 4 + 2 * h + 1] += v.y;
          }
        named_sync(4 + wi, 64);  // both read: the exchange boxes may be written again
        if (t > 0) {
          bulk_wait_read();  // this warp's reductions of step t - 1 have read its reduce boxes
          __syncwarp();
        }
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) dq_store(j >> 2, j, h, keep[j * 4 + 2 * h], keep[j * 4 + 2 * h + 1]);
      };
      if (c == 0) pair_sum(dq0, dq1);
      else pair_sum(dq1, dq0);
      fence_proxy_async();  // generic writes -> the bulk copy reads
      __syncwarp();
      if (lane == 0) {
        tma_red_add_3d(&A.tm_dq, sDQw, 0, r0 + c * 64 + wi * 16, plane0 + t / nm);
        tma_red_add_3d(&A.tm_dq, sDQw + 2048, 32, r0 + c * 64 + wi * 16, plane0 + t / nm);
        bulk_commit();
      }'''),
]

if __name__ == '__main__':
    write_variant('bwd_d64_pairsum', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
