#!/usr/bin/env python3
"""Variant "fwd-d64-3wg" of csrc/ops/attention/attention_fwd_wgmma.cu, written as edits of the product file
(each asserted to match exactly once, so a changed product kernel fails loudly instead of building something
else). bench/dev/attn_harness.sh runs it for VARIANT_SCRIPTS=bench/dev/variants/fwd_d64_3wg.py and builds the
result in place of the product kernel for the A/B. The d = 128 kernel is left as it is.

One change, at head_dim 64 only: three consumer warpgroups instead of two (192 query rows per CTA, 512 threads),
taking turns to issue their GEMMs round-robin (the ping-pong's named barriers, generalised: consumer c waits on
barrier 1 + c and passes to 1 + (c + 1) % 3). At d = 64 a consumer's GEMMs per key block (S = Q K^T m64n128k16 x 4,
O += P V m64n64k16 x 8: 1 M FMA = 512 clk at 2048 FMA/clk/SM) take as long as its softmax's exp2 (8192, one warp on
each sub-partition's MUFU at 4/clk: 512 clk) plus its ~4 FP32 ops per element, so with two consumers the other
one's GEMMs cannot cover a softmax and the tensor pipe idles (435 TF/s = 55 % of it); with three, two consumers'
GEMMs (1024 clk) run under the third's softmax, and K/V tiles are loaded once per 192 rows instead of 128. The
MUFU is then as busy as the tensor pipe (3 x 512 clk per round on each), so it is the next wall.
Registers: 512 threads, producer setmaxnreg 24, consumers 160 (128 x 24 + 384 x 160 = 64,512 of 65,536); a d = 64
consumer holds S 64 + O 32 + P fragments 32 = 128 accumulator/fragment registers. Shared memory: Q 24 KB + K, V
2 x 2 x 16 KB = 88 KB.
Prediction and outcome: bench/NOTES.md ("Forward at d = 64: three consumer warpgroups").

usage: fwd_d64_3wg.py OUT_DIR   (writes OUT_DIR/attention_fwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''  static constexpr int NT = 384;  // producer warpgroup + 2 consumer warpgroups
  static constexpr int BR = 128;  // query rows per CTA (64 per consumer)''',
     '''  static constexpr int NC = D == 64 ? 3 : 2;  // consumer warpgroups
  static constexpr int NT = 128 * (NC + 1);  // producer warpgroup + NC consumer warpgroups
  static constexpr int BR = 64 * NC;  // query rows per CTA (64 per consumer)'''),
    ('''__global__ void __launch_bounds__(384, 1) attn_fwd_wgmma_kernel(''',
     '''__global__ void __launch_bounds__(FwdCfg<D>::NT, 1) attn_fwd_wgmma_kernel('''),
    ('''      mbar_init(emptyK + 8 * i, 8);  // lane 0 of each consumer warp
      mbar_init(emptyV + 8 * i, 8);''',
     '''      mbar_init(emptyK + 8 * i, 4 * C::NC);  // lane 0 of each consumer warp
      mbar_init(emptyV + 8 * i, 4 * C::NC);'''),
    ('''  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\\n");''',
     '''  if constexpr (C::NC == 3) asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\\n");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\\n");'''),
    ('''  const int my_turn = 1 + c, other_turn = 2 - c;
  auto pass_turn = [&](int it) {
    if (!(c == 1 && it == n_blocks - 1)) named_arrive(other_turn, 256);
  };
  if (c == 1) named_arrive(1, 256);''',
     '''  // Round-robin over NC consumers: the last one lets consumer 0 go first and skips its arrival after its
  // last issue, so each barrier gets exactly one arrival (128 threads) per sync (128 threads).
  constexpr int NC = C::NC;
  const int my_turn = 1 + c, other_turn = 1 + (c + 1) % NC;
  auto pass_turn = [&](int it) {
    if (!(c == NC - 1 && it == n_blocks - 1)) named_arrive(other_turn, 256);
  };
  if (c == NC - 1) named_arrive(1, 256);'''),
]


if __name__ == '__main__':
    write_variant('fwd_d64_3wg', 'csrc/ops/attention/attention_fwd_wgmma.cu', EDITS, __doc__)
