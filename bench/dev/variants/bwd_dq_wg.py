#!/usr/bin/env python3
"""Variant "dq-wg" of csrc/ops/attention/attention_bwd_wgmma.cu (d = 128 only), written as edits of the product
file (each asserted to match exactly once). Prepared in the fifth session (2026-12-02), compile-checked, not yet
run on a GPU.

One change: a third warpgroup does dQ. Today each consumer computes dQ for its 64 columns over all 128 keys after a
barrier with the other consumer, waits for it and flushes it (the ablations: the dQ GEMM −7-8 % and the flush −10 %
of the step when taken out). Here the consumers store dS^T (double-buffered, as today), arrive on an mbarrier and go
on to their next step; a dQ warpgroup waits for both consumers' dS^T of the step, runs dQ = dS K in two m64n64
halves (K resident), releases the dS^T buffer (mbarrier), and reduces its four boxes per warp into dq_acc (TMA).
The consumers no longer meet each other at all (only the dQ warpgroup, two steps later), so their element-wise
phases can drift under each other's GEMMs.
Registers (65,536 per SM, 512 threads): producer 24, consumers 208, dQ warpgroup 72 (128·24 + 256·208 + 128·72).
To fit 208, a consumer (dV, dK: 128 for the whole kernel) never holds the fp32 P^T and dP^T together: dP^T is
issued after P^T is packed into its 16-bit fragments (so exp2 no longer runs under the dP^T GEMM of the same
consumer, only under the other consumer's and the dQ warpgroup's GEMMs), and dS is computed from the packed P:
dS = bf16(P) (dP − D) instead of fp32 P, so dK/dV are no longer bit-identical to the mma.sync kernel (dS is rounded
to 16 bits for the GEMMs anyway). ptxas (nvcc 13.0): 0 spills, no C75xx. With P^T and dP^T overlapped (as the
product) it spilled 384 B and serialised the wgmma (C7512) at 208/72, and ignored setmaxnreg (C7507) at 216/56.
Prediction: +10-20 % at d = 128 (the consumers' chain loses the dQ GEMM wait, the flush and the barrier, and
gains the lost dP^T overlap back from the other warpgroups); the risk is the dQ warpgroup keeping up (512
tensor-clk of GEMM per step, serial, with its waits and flush).

usage: bwd_dq_wg.py OUT_DIR   (writes OUT_DIR/attention_bwd_wgmma.cu)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from variant_edits import write_variant  # noqa: E402

EDITS = [
    # 512 threads at d = 128: producer, two consumers, the dQ warpgroup
    ('''  static constexpr int NT = 384;     // producer warpgroup + 2 consumer warpgroups''',
     '''  static constexpr int NT = D == 128 ? 512 : 384;  // producer + 2 consumers (+ the dQ warpgroup at d=128)'''),
    ('''  static constexpr int OFF_BAR = OFF_DQ + 8 * DQ_WARP;  // barKV, full[2], empty[2]''',
     '''  static constexpr int DQ_WARPS = D == 128 ? 4 : 8;  // d=128: the dQ warpgroup's warps own 4 boxes each
  static constexpr int OFF_BAR = OFF_DQ + DQ_WARPS * (D == 128 ? 4 * 2048 : DQ_WARP);  // barKV, full[2], empty[2],
                                                                                         // dsready[2], dsfree[2]'''),
    ('''  static constexpr int SMEM = OFF_BAR + 64 + 1024;             // + slack to align the base to 1024 B''',
     '''  static constexpr int SMEM = OFF_BAR + 96 + 1024;             // + slack to align the base to 1024 B'''),
    ('''__global__ void __launch_bounds__(384, 1) attn_bwd_wgmma_kernel(''',
     '''__global__ void __launch_bounds__(Cfg<D>::NT, 1) attn_bwd_wgmma_kernel('''),
    ('''  const uint32_t barKV = base + C::OFF_BAR, full0 = barKV + 8, empty0 = barKV + 24;''',
     '''  const uint32_t barKV = base + C::OFF_BAR, full0 = barKV + 8, empty0 = barKV + 24;
  const uint32_t dsready0 = barKV + 40, dsfree0 = barKV + 56;  // d=128: dS^T buffer b written / read by dQ'''),
    ('''      mbar_init(empty0 + 8 * i, 8);  // lane 0 of each consumer warp
    }''',
     '''      mbar_init(empty0 + 8 * i, 8);  // lane 0 of each consumer warp
      if constexpr (D == 128) {
        mbar_init(dsready0 + 8 * i, 256);  // every consumer thread, after its dS^T stores
        mbar_init(dsfree0 + 8 * i, 128);   // every dQ-warpgroup thread, after its GEMMs read the buffer
      }
    }'''),
    # the dQ warpgroup, after the producer's branch
    ('''  // ---- consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\\n");''',
     '''  if constexpr (D == 128) {
    if (wg == 3) {  // ---- the dQ warpgroup
      asm volatile("setmaxnreg.dec.sync.aligned.u32 72;\\n");
      const int wi = warp & 3, lr = lane >> 2, lc = (lane & 3) * 2;
      const uint32_t sDQw = sDQ + (uint32_t)wi * (4 * 2048);  // rows 16wi.. x 128 columns: boxes of 32 columns
      uint8_t* const sDQwp = sDQp + wi * (4 * 2048);
      const int plane0 = (int)blockIdx.y * group;
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
            for (int h = 0; h < 2; ++h) {
              const int u = ((j & 3) << 1) | (lc >> 2);
              *(float2*)(sDQwp + (2 * hh + (j >> 2)) * 2048 + (lr + 8 * h) * 128 + ((u ^ lr) << 4) + ((lc & 2) << 2)) =
                  make_float2(dq[j * 4 + 2 * h], dq[j * 4 + 2 * h + 1]);
            }
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
  if constexpr (D == 128) asm volatile("setmaxnreg.inc.sync.aligned.u32 208;\\n");
  else asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\\n");'''),
    # d = 128 consumer: dP^T issued after P^T is packed (not beside S^T), so the fp32 P^T and dP^T are never
    # live together: 176 registers at the P^T peak instead of 208
    ('''    wg_commit();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(dpt, make_desc(sV + ko, 16, 1024), make_desc(sO + qo, 16, 1024), k > 0);
    }
    wg_commit();

    // ---- 2a. P^T (while dP^T is still running)''',
     '''    wg_commit();

    // ---- 2a. P^T (dP^T is issued after it: registers)'''),
    ('''    wg_wait<1>();
    fence_regs(st_);
    uint32_t pf[4][4];  // A fragments of P^T for k-steps over q (16 each)''',
     '''    wg_wait<0>();
    fence_regs(st_);
    uint32_t pf[4][4];  // A fragments of P^T for k-steps over q (16 each)'''),
    ('''      wgmma_rs_n128<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
    wg_commit();

    // ---- 2b. dS^T = P^T (dP^T - Dsum)
    wg_wait<1>();  // dP^T done (dV group may still run)''',
     '''      wgmma_rs_n128<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
    wg_commit();
    fence_regs(dpt);
    wg_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(dpt, make_desc(sV + ko, 16, 1024), make_desc(sO + qo, 16, 1024), k > 0);
    }
    wg_commit();

    // ---- 2b. dS^T = P^T (dP^T - Dsum)
    wg_wait<0>();  // dP^T (and dV) done'''),
    # d = 128 consumer: dS from the packed P
    ('''    uint32_t sf[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 Dd = *(const float2*)(ds_b + j * 8 + lc);
#pragma unroll
      for (int e = 0; e < 4; ++e) dpt[j * 4 + e] = st_[j * 4 + e] * (dpt[j * 4 + e] - ((e & 1) ? Dd.y : Dd.x));
    }
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) sf[kq][i] = pack2<BF16>(dpt[kq * 8 + 2 * i], dpt[kq * 8 + 2 * i + 1]);''',
     '''    uint32_t sf[4][4];
    // dS^T = P (dP^T - Dsum) with P from its 16-bit fragments (the fp32 P^T died at the pack: registers)
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
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) sf[kq][i] = pack2<BF16>(dpt[kq * 8 + 2 * i], dpt[kq * 8 + 2 * i + 1]);'''),
    # dS^T stores: wait for the dQ warpgroup to have read the buffer (step t - 2), then signal it
    ('''    // ---- 4. dS^T -> smem [key][q]: A fragment reg i of k-step kq holds rows krow (+8 for odd i),
    //         columns kq*16 + (i >> 1)*8 + lc. Buffer st was last read by the dQ GEMMs of step t-2, which
    //         both consumers finished before the barrier of step t-1.''',
     '''    // ---- 4. dS^T -> smem [key][q]: A fragment reg i of k-step kq holds rows krow (+8 for odd i),
    //         columns kq*16 + (i >> 1)*8 + lc. Buffer st was last read by the dQ warpgroup at step t - 2.
    if (t >= 2) mbar_wait(dsfree0 + 8 * st, ((t >> 1) - 1) & 1);'''),
    ('''    fence_proxy_async();  // generic stores -> wgmma reads
    float dq[32];
    named_sync(1, 256);  // dS^T of both consumers complete
    // ---- 5. dQ[:, 64c..] = dS K: A = dS^T [key][q] read M-major, B = K half c read N-major
    fence_regs(dq);
    wg_fence();
#pragma unroll
    for (int k = 0; k < BC / 16; ++k)
      wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + k * 16 * 128, BC * BR * 2, 1024),
                               make_desc(sK + c * (BC * 128) + k * 16 * 128, BC * 128, 1024), k > 0);
    wg_commit();
    wg_wait<0>();  // dV, dK and dQ of this step
    fence_regs(dq);
    fence_regs(dv);''',
     '''    fence_proxy_async();  // generic stores -> wgmma reads (the dQ warpgroup's)
    mbar_arrive(dsready0 + 8 * st);
    (void)sS;
    wg_wait<0>();  // dV, dK of this step
    fence_regs(dv);'''),
]

# step 6 of the d = 128 consumer goes to the dQ warpgroup: from its comment to the end of the loop body
STEP6_START = '''    // ---- 6. dQ -> this warp's two boxes (rows 16wi.., its consumer's columns 64c..), once its reductions of'''
STEP6_END = '''      tma_red_add_3d(&A.tm_dq, sDQw + 2048, c * 64 + 32, r0 + wi * 16, plane0 + t / nm);
      bulk_commit();
    }
'''


def cut_step6(s):
    """Step 6 of the d = 128 consumer (the dQ flush) moves to the dQ warpgroup: cut it, comment to loop end."""
    if s.count(STEP6_START) != 1:
        sys.exit('bwd_dq_wg: step 6 of the d = 128 loop not found (the product kernel changed)')
    i = s.index(STEP6_START)
    j = s.index(STEP6_END, i) + len(STEP6_END)
    return s[:i] + s[j:]


if __name__ == '__main__':
    write_variant('bwd_dq_wg', 'csrc/ops/attention/attention_bwd_wgmma.cu', EDITS, __doc__, post=cut_step6)
