#!/usr/bin/env python3
"""Variant "fwd-lpt" of csrc/ops/attention/attention_fwd_wgmma.cu, written as edits of the product file (each
asserted to match exactly once). bench/dev/attn_harness.sh builds it in place of the product kernel for the A/B.

One change: the order in which the forward's CTAs are handed out. Today the grid is (query block, head, batch)
and the query blocks of a head go last-first (causal: the heaviest first), head after head, a sawtooth; the last
wave holds the last head's heavy blocks. At 16K (32 heads x 128 blocks, 2000 key blocks per SM on average,
the heaviest CTA 128) that tail can cost up to ~6 %; at 128K well under 1 %.
The variant flattens (query block, head) with the head fastest: every head's heaviest block first (longest
processing time first). The CTAs running together then span all heads instead of a few, which spreads the K/V
working set in L2 over the kv heads (the same key blocks are still read by neighbouring CTAs at about the same time).
Prediction and outcome: bench/NOTES.md ("Longest-first order across heads and units").

usage: fwd_lpt.py OUT_DIR   (writes OUT_DIR/attention_fwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest (causal) blocks first
  const int h = blockIdx.y, b = blockIdx.z;''',
     '''  // CTA i -> query block (last first) i / heads_q of head i % heads_q: every head's heaviest block first
  const int m_block = (p.seqlen_q + BR - 1) / BR - 1 - (int)(blockIdx.x / (unsigned)p.heads_q);
  const int h = (int)(blockIdx.x % (unsigned)p.heads_q), b = blockIdx.z;'''),
    ('''  dim3 grid((unsigned)((p.seqlen_q + C::BR - 1) / C::BR), (unsigned)p.heads_q, (unsigned)p.batch);''',
     '''  dim3 grid((unsigned)((p.seqlen_q + C::BR - 1) / C::BR) * (unsigned)p.heads_q, 1, (unsigned)p.batch);'''),
]

if __name__ == '__main__':
    write_variant('fwd_lpt', 'csrc/ops/attention/attention_fwd_wgmma.cu', EDITS, __doc__)
