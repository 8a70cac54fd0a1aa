#!/usr/bin/env python3
"""Variant "bwd-lpt" of csrc/ops/attention/attention_bwd_wgmma.cu, written as edits of the product file (each
asserted to match exactly once). bench/dev/attn_harness.sh builds it in place of the product kernel for the A/B.

One change: the order in which the backward's CTAs are handed out. Today the grid is (key block, unit): the
hardware dispatches x fastest, so each (batch, kv head) unit's key blocks go heaviest first (causal: key block 0
sees every query row), but unit after unit, a sawtooth; the last wave holds the last unit's heavy blocks, which
finish long after the rest. At 16K (8 units x 128 key blocks, 1 CTA per SM on 132 SMs, 2000 q-steps per SM on
average) the heaviest CTA is 512 q-steps, so the tail can cost up to ~13 %; at 128K it is at most ~3 %.
The variant swaps the grid's axes to (unit, key block), the unit fastest: all units' heaviest blocks first (longest
processing time first), so the last wave holds only the lightest blocks. (gridDim.y caps key blocks at 65535, 8M
keys: enough for the harness; a product version would flatten the grid instead.)
Prediction and outcome: bench/NOTES.md ("Longest-first order across heads and units").

usage: bwd_lpt.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''  const int n_block = blockIdx.x;
  const int unit = a.unit0 + (int)blockIdx.y;''', '''  const int n_block = blockIdx.y;  // variant: (unit, key block), the unit fastest
  const int unit = a.unit0 + (int)blockIdx.x;'''),
    ('''  float* const acc_unit = a.dq_acc + (int64_t)blockIdx.y * group * sq * D;''',
     '''  float* const acc_unit = a.dq_acc + (int64_t)blockIdx.x * group * sq * D;'''),
    ('''[&](dim3 grid) { kern<<<grid, C::NT, C::SMEM, stream>>>(A); }''',
     '''[&](dim3 grid) { kern<<<dim3(grid.y, grid.x, 1), C::NT, C::SMEM, stream>>>(A); }'''),
]


if __name__ == '__main__':
    write_variant('bwd_lpt', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
