#!/usr/bin/env python3
"""Ablation (timing only, dq wrong): the d = 128 dQ warpgroup computes and stores dQ but issues no TMA
reductions into dq_acc. Says what the L2 reductions cost now. Sixth session, 2026-12-02.

usage: abl_dq_nored.py OUT_DIR
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    ('''            tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, box * 32, r0 + wi * 16, plane0 + t / nm);''',
     '''            if (r0 < 0) tma_red_add_3d(&A.tm_dq, sDQw + box * 2048, box * 32, r0 + wi * 16, plane0 + t / nm);'''),
]

if __name__ == '__main__':
    write_variant('abl_dq_nored', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__)
