// Flash attention backward with Hopper wgmma (sm_90a): the default backward on sm_90 GPUs for head_dim 64 and 128
// (attention_bwd_cuda dispatches here; the backward option kernel: 'mma' | 'mma-small' selects the mma.sync
// kernels instead). Checked on an H200 against the naive GPU reference over the harness's whole matrix;
// dk/dv bit-identical to the mma.sync kernel. bench/NOTES.md has the design notes and numbers.
//
// Same interface and semantics as attention_bwd_cuda (csrc/ops/attention/attention_bwd.cu): dq/dk/dv,
// GQA sums, causal with q/k offsets, any lengths, fully masked rows -> zero grads, fp32 dq accumulation in
// the workspace, workspace <= ~1.2 GiB (same plan: Dsum + dq_acc for a chunk of (batch, kv head) units).
// Restricted to head_dim 64/128, bf16/f16, a device of compute capability 9.0 running the sm_90a SASS.
// head_dim 64 differs only in step 5 below: each warpgroup computes dQ over its own 64 keys into its own
// fp32 tile (both tiles are added into dq_acc), so it waits on a warpgroup barrier instead of the CTA's.
//
// Design (FA3-like, without warp specialisation):
//   CTA = 2 warpgroups (256 threads) per (kv block of BC=128 keys, (batch, kv head) unit); warpgroup w owns
//   keys 64w..64w+63. K and V stay in shared memory; the CTA walks the group's q heads x q blocks of BR=64
//   rows, with Q, dO, lse, Dsum double-buffered through cp.async (all 256 threads issue, one step ahead).
//   All 16-bit tiles use the 128-byte swizzle of the wgmma canonical layouts: a tile of R rows x 128
//   columns is stored as two [R][64] halves (128 B per row, 16-byte chunk index ^= row & 7, 1024-B atoms).
//   Per q block, warpgroup w:
//     1. S^T  = K_w Q^T   (wgmma m64n64k16, A = K smem K-major, B = Q smem K-major, 8 k-steps)
//        dP^T = V_w dO^T  (same, separate commit group so exp2 of S^T overlaps it)
//     2. P^T = exp2(S^T*scale*log2e - lse*log2e) (masked where needed), dS^T = P^T (dP^T - Dsum), in registers
//        (fp32 accumulator layout == 16-bit A-fragment layout after packing pairs, as in FA3's P).
//     3. dV_w += P^T dO   (wgmma m64n128k16, A = registers, B = dO smem N-major (trans-b), 4 k-steps)
//        dK_w += dS^T Q   (same with Q)
//     4. dS^T -> smem [key][q] (16-bit, swizzled), fence.proxy.async, CTA barrier
//     5. dQ[:, 64w..64w+63] = dS K[:, 64w..]: wgmma m64n64k16, A = dS^T smem read M-major (trans-a),
//        B = K smem N-major (trans-b), 8 k-steps over the 128 keys.
//     6. dQ (fp32) -> padded smem tile; the next step adds it into dq_acc with cp.reduce.async.bulk (one
//        row per issuing thread), exactly like the mma.sync kernel.
//   Accumulators per thread: dV 64 + dK 64 fp32 (persistent), S^T 32 + dP^T 32 (phase 1), dQ 32.
//   Shared memory: K 32K + V 32K + Q 2x16K + dO 2x16K + dS^T 16K + lse/Dsum 1K + dQ tile 34K (+1K align).
#include <algorithm>
#include <cmath>
#include <string>
#include "attention_wgmma.h"
#include "ops/attention/attn_bwd_common.cuh"
#include "ops/attention/attn_wgmma.cuh"

namespace mb {
namespace attn_wg {

using attn::cp_async16;
using attn::cp_async4;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::ex2;
using attn::kLog2e;
using attn::pack2;
using attn::smem_u32;
using attn::unpack2;

struct Args {
  AttnBwdParams p;
  const float* dsum;  // [b, hq, sq]
  float* dq_acc;      // [units in chunk][group][sq][d]
  int unit0;
  int delta;
  int group;
  float scale_log2;
};

template <int D>
struct Cfg {
  static constexpr int NT = 256;  // 2 warpgroups
  static constexpr int BC = 128;  // keys per CTA (64 per warpgroup)
  static constexpr int BR = 64;   // q rows per step
  static constexpr int NH = D / 64;  // 64-column halves of a 16-bit row (128-byte swizzle atoms)
  static constexpr int KV_TILE = BC * D * 2;
  static constexpr int Q_TILE = BR * D * 2;
  static constexpr int OFF_K = 0;
  static constexpr int OFF_V = OFF_K + KV_TILE;
  static constexpr int OFF_Q = OFF_V + KV_TILE;      // [2] buffers
  static constexpr int OFF_O = OFF_Q + 2 * Q_TILE;   // [2] buffers
  static constexpr int OFF_S = OFF_O + 2 * Q_TILE;   // dS^T [BC][BR] 16-bit, 128-B rows
  static constexpr int OFF_L = OFF_S + BC * BR * 2;  // lse [2][BR] then Dsum [2][BR]
  static constexpr int OFF_DQ = OFF_L + 4 * BR * 4;  // fp32 dQ tile(s) [BR][QP bytes]
  static constexpr int QP = D * 4 + 32;              // padded: fragment stores take 2 wavefronts
  // d=128: one dQ tile, the warpgroups split its columns (each reads all 128 keys of dS^T);
  // d=64: one tile per warpgroup over its own 64 keys (N=32 column halves would not be whole 128-byte
  // swizzle atoms), both added into dq_acc.
  static constexpr int DQ_TILES = D == 128 ? 1 : 2;
  static constexpr int SMEM = OFF_DQ + DQ_TILES * BR * QP + 1024;  // + slack to align the base to 1024 B
  static_assert(OFF_S % 1024 == 0 && OFF_Q % 1024 == 0 && OFF_O % 1024 == 0, "swizzle atoms need 1024-B alignment");
};


// ---------------------------------------------------------------------------------------------
template <bool BF16, int D>
__global__ void __launch_bounds__(256, 1) attn_bwd_wgmma_kernel(const Args a) {
#if MB_WG_ENABLED
  using C = Cfg<D>;
  constexpr int BC = C::BC, BR = C::BR, NT = C::NT, QP = C::QP;
  static_assert(D == 128 || D == 64, "wgmma backward: head_dim 64 or 128");
  const AttnBwdParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* const gbase = smem_raw + (base - raw);
  const uint32_t sK = base + C::OFF_K, sV = base + C::OFF_V, sQ0 = base + C::OFF_Q, sO0 = base + C::OFF_O;
  const uint32_t sS = base + C::OFF_S, sDQ = base + C::OFF_DQ;
  uint8_t* const sSp = gbase + C::OFF_S;
  uint8_t* const sDQp = gbase + C::OFF_DQ;
  float* const sLse = (float*)(gbase + C::OFF_L);  // [2][BR]
  float* const sDs = sLse + 2 * BR;                // [2][BR]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2;        // warpgroup: keys 64*wg ..
  const int wi = warp & 3;         // warp in warpgroup: accumulator rows 16*wi ..
  const int lr = lane >> 2;        // accumulator row within the warp's 16 (and +8)
  const int lc = (lane & 3) * 2;   // accumulator column pair within an n8 block
  const int n_block = blockIdx.x;
  const int unit = a.unit0 + (int)blockIdx.y;
  const int b = unit / p.heads_kv, kvh = unit % p.heads_kv;
  const int sq = p.seqlen_q, sk = p.seqlen_k, group = a.group;
  const int n0 = n_block * BC;

  int m_begin = 0;
  if (p.causal) {
    const int64_t first = (int64_t)n0 - a.delta;
    m_begin = first <= 0 ? 0 : first >= sq ? (sq + BR - 1) / BR : (int)(first / BR);
  }
  const int m_end = (sq + BR - 1) / BR;
  const int nm = max(0, m_end - m_begin);
  const int total = group * nm;
  const bool ragged_k = n0 + BC > sk;
  const int64_t mask_before = (int64_t)n0 + BC - 1 - a.delta;

  const uint16_t* gK = (const uint16_t*)p.k + b * p.k_batch_stride + kvh * p.k_head_stride + (int64_t)n0 * p.k_row_stride;
  const uint16_t* gV = (const uint16_t*)p.v + b * p.v_batch_stride + kvh * p.v_head_stride + (int64_t)n0 * p.v_row_stride;
  load_tile<BC, D, NT>(sK, gK, p.k_row_stride, sk - n0, tid);
  load_tile<BC, D, NT>(sV, gV, p.v_row_stride, sk - n0, tid);

  auto prefetch = [&](int t, int buf) {
    const int g = t / nm, m = m_begin + t % nm;
    const int h = kvh * group + g;
    const int r0 = m * BR;
    const uint16_t* gQ = (const uint16_t*)p.q + b * p.q_batch_stride + h * p.q_head_stride + (int64_t)r0 * p.q_row_stride;
    const uint16_t* gO = (const uint16_t*)p.dout + b * p.do_batch_stride + h * p.do_head_stride + (int64_t)r0 * p.do_row_stride;
    load_tile<BR, D, NT>(sQ0 + buf * C::Q_TILE, gQ, p.q_row_stride, sq - r0, tid);
    load_tile<BR, D, NT>(sO0 + buf * C::Q_TILE, gO, p.do_row_stride, sq - r0, tid);
    if (tid < 2 * BR) {
      const int r = tid & (BR - 1);
      const bool ok = r0 + r < sq;
      const int64_t off = ((int64_t)b * p.heads_q + h) * sq + r0 + r;
      if (tid < BR) cp_async4(smem_u32(sLse + buf * BR + r), ok ? p.lse + off : p.lse, ok);
      else cp_async4(smem_u32(sDs + buf * BR + r), ok ? a.dsum + off : a.dsum, ok);
    }
  };
  if (total > 0) prefetch(0, 0);
  cp_async_commit();

  float* const acc_unit = a.dq_acc + (int64_t)blockIdx.y * group * sq * D;
  auto flush_dq = [&](int tp) {  // rows of step tp's dQ tile(s) -> dq_acc
    const int gp = tp / nm, rp = (m_begin + tp % nm) * BR;
    if constexpr (C::DQ_TILES == 1) {  // 8 issuing lanes per warp
      const int r = warp * 8 + lane;
      if (lane < 8 && rp + r < sq) bulk_red_add_f32(acc_unit + ((int64_t)gp * sq + rp + r) * D, sDQ + r * QP, D * 4);
    } else {  // each warpgroup its own tile: 16 issuing lanes per warp
      const int r = (warp & 3) * 16 + lane;
      if (lane < 16 && rp + r < sq)
        bulk_red_add_f32(acc_unit + ((int64_t)gp * sq + rp + r) * D, sDQ + (warp >> 2) * BR * QP + r * QP, D * 4);
    }
  };

  float dv[D / 2], dk[D / 2];  // 64 keys x D per warpgroup: n8 block j -> regs 4j..4j+3
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dv[i] = dk[i] = 0.f;

  const uint32_t kw = (uint32_t)wg * 64 * 128;  // byte offset of this warpgroup's 64 key rows in a K/V half

  for (int t = 0; t < total; ++t) {
    const int buf = t & 1;
    const int g = t / nm, m = m_begin + t % nm;
    const int r0 = m * BR;
    cp_async_wait<0>();
    fence_proxy_async();  // cp.async (generic proxy) writes -> wgmma (async proxy) reads
    __syncthreads();      // tiles of t landed; everyone finished step t-1 (its wgmmas waited)
    if (t + 1 < total) prefetch(t + 1, buf ^ 1);
    cp_async_commit();
    if (t > 0) flush_dq(t - 1);

    const uint32_t sQ = sQ0 + buf * C::Q_TILE, sO = sO0 + buf * C::Q_TILE;

    // ---- 1. S^T = K_w Q^T, dP^T = V_w dO^T (64 keys x 64 q per warpgroup)
    float st[32], dpt[32];
    fence_regs(st);
    fence_regs(dpt);
    wg_fence();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(st, make_desc(sK + ko, 16, 1024), make_desc(sQ + qo, 16, 1024), k > 0);
    }
    wg_commit();
#pragma unroll
    for (int k = 0; k < D / 16; ++k) {
      const uint32_t ko = (uint32_t)(k >> 2) * (BC * 128) + kw + (k & 3) * 32;
      const uint32_t qo = (uint32_t)(k >> 2) * (BR * 128) + (k & 3) * 32;
      wgmma_ss_n64<BF16, 0, 0>(dpt, make_desc(sV + ko, 16, 1024), make_desc(sO + qo, 16, 1024), k > 0);
    }
    wg_commit();

    // ---- 2a. P^T (while dP^T is still running)
    const float* lse_b = sLse + buf * BR;
    const float* ds_b = sDs + buf * BR;
    const bool masked = ragged_k || (p.causal && (int64_t)r0 < mask_before);
    const int krow = wg * 64 + wi * 16 + lr;  // local key of accumulator rows (e >> 1 == 0); +8 for the others
    wg_wait<1>();
    fence_regs(st);
    uint32_t pf[4][4];  // A fragments of P^T for k-steps over q (16 each)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int ql = j * 8 + lc;
      const float2 L = *(const float2*)(lse_b + ql);
      // -inf lse: the row saw no key, so its P is 0 (never exp2(+inf)).
      const float l0 = L.x == -INFINITY ? INFINITY : L.x * kLog2e;
      const float l1 = L.y == -INFINITY ? INFINITY : L.y * kLog2e;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pv = ex2(st[j * 4 + e] * a.scale_log2 - ((e & 1) ? l1 : l0));
        if (masked) {
          const int key = n0 + krow + (e >> 1) * 8, q = r0 + ql + (e & 1);
          if (key >= sk || (p.causal && key - q > a.delta)) pv = 0.f;
        }
        st[j * 4 + e] = pv;
      }
    }
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) pf[kq][i] = pack2<BF16>(st[kq * 8 + 2 * i], st[kq * 8 + 2 * i + 1]);

    // ---- 3a. dV += P^T dO (A from registers, B = dO [q][d] read N-major)
    fence_regs(pf);
    fence_regs(dv);
    wg_fence();
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
      if constexpr (D == 128) wgmma_rs_n128<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
      else wgmma_rs_n64<BF16, 1>(dv, pf[kq], make_desc(sO + kq * 16 * 128, BR * 128, 1024), 1);
    wg_commit();

    // ---- 2b. dS^T = P^T (dP^T - Dsum)
    wg_wait<1>();  // dP^T done (dV group may still run)
    fence_regs(dpt);
    uint32_t sf[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 Dd = *(const float2*)(ds_b + j * 8 + lc);
#pragma unroll
      for (int e = 0; e < 4; ++e) dpt[j * 4 + e] = st[j * 4 + e] * (dpt[j * 4 + e] - ((e & 1) ? Dd.y : Dd.x));
    }
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) sf[kq][i] = pack2<BF16>(dpt[kq * 8 + 2 * i], dpt[kq * 8 + 2 * i + 1]);

    // ---- 3b. dK += dS^T Q
    fence_regs(sf);
    fence_regs(dk);
    wg_fence();
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
      if constexpr (D == 128) wgmma_rs_n128<BF16, 1>(dk, sf[kq], make_desc(sQ + kq * 16 * 128, BR * 128, 1024), 1);
      else wgmma_rs_n64<BF16, 1>(dk, sf[kq], make_desc(sQ + kq * 16 * 128, BR * 128, 1024), 1);
    wg_commit();

    // ---- 4. dS^T -> smem [key][q]: A fragment reg i of k-step kq holds rows krow (+8 for odd i),
    //         columns kq*16 + (i >> 1)*8 + lc.
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = krow + (i & 1) * 8;
        const int ch = kq * 2 + (i >> 1);
        *(uint32_t*)(sSp + r * 128 + ((ch ^ (r & 7)) << 4) + lc * 2) = sf[kq][i];
      }
    fence_proxy_async();  // generic stores -> wgmma reads
    bulk_wait_read();     // issuing lanes: the dQ tile of step t-1 has been read out
    float dq[32];
    if constexpr (D == 128) {
      __syncthreads();  // dS^T of both warpgroups complete; dQ tile free
      // ---- 5. dQ[:, 64wg..] = dS K: A = dS^T [key][q] read M-major, B = K half wg read N-major
      fence_regs(dq);
      wg_fence();
#pragma unroll
      for (int k = 0; k < BC / 16; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + k * 16 * 128, BC * BR * 2, 1024),
                                 make_desc(sK + wg * (BC * 128) + k * 16 * 128, BC * 128, 1024), k > 0);
    } else {
      // This warpgroup's dS^T rows and its own dQ tile only: a warpgroup barrier (ids 1, 2; 128 threads).
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
      // ---- 5. dQ_w = dS[:, keys of w] K_w (64 q x 64 d over this warpgroup's 64 keys)
      fence_regs(dq);
      wg_fence();
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma_ss_n64<BF16, 1, 1>(dq, make_desc(sS + (wg * 64 + k * 16) * 128, BC * BR * 2, 1024),
                                 make_desc(sK + (wg * 64 + k * 16) * 128, BC * 128, 1024), k > 0);
    }
    wg_commit();
    wg_wait<0>();  // dV, dK and dQ of this step
    fence_regs(dq);
    fence_regs(dv);
    fence_regs(dk);
    fence_regs(pf);
    fence_regs(sf);

    // ---- 6. dQ -> padded fp32 tile (flushed at the top of the next step)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wi * 16 + lr + h * 8;
        const int off = C::DQ_TILES == 1 ? row * QP + (wg * 64 + j * 8 + lc) * 4 : wg * BR * QP + row * QP + (j * 8 + lc) * 4;
        *(float2*)(sDQp + off) = make_float2(dq[j * 4 + 2 * h], dq[j * 4 + 2 * h + 1]);
      }
    fence_proxy_async();  // generic writes -> bulk copy reads
    (void)g;
  }
  if (total > 0) {
    __syncthreads();
    flush_dq(total - 1);
    bulk_wait_all();
  }

  // dK = scale * dS^T Q, dV = P^T dO: warpgroup rows = keys 64wg + 16wi + lr (+8), columns 8j + lc.
  uint16_t* gdK = (uint16_t*)p.dk + b * p.dk_batch_stride + kvh * p.dk_head_stride + lc;
  uint16_t* gdV = (uint16_t*)p.dv + b * p.dv_batch_stride + kvh * p.dv_head_stride + lc;
  const float scale = p.scale;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = n0 + wg * 64 + wi * 16 + lr + h * 8;
    if (key < sk) {
      uint16_t* rk = gdK + (int64_t)key * p.dk_row_stride;
      uint16_t* rv = gdV + (int64_t)key * p.dv_row_stride;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *(uint32_t*)(rk + j * 8) = pack2<BF16>(dk[j * 4 + 2 * h] * scale, dk[j * 4 + 2 * h + 1] * scale);
        *(uint32_t*)(rv + j * 8) = pack2<BF16>(dv[j * 4 + 2 * h], dv[j * 4 + 2 * h + 1]);
      }
    }
  }
#else
  __trap();  // not sm_90a SASS: the launcher refuses this case before launching
#endif
}

static void check_supported(const AttnBwdParams& p, const char* who) {
  attn::check_common(p, who);
  if (p.head_dim != 128 && p.head_dim != 64)
    throw Error("ERR_UNSUPPORTED", std::string(who) + ": the wgmma backward supports head_dim 64 and 128, got " +
                                       std::to_string(p.head_dim));
}

template <bool BF16, int D>
static void launch(const AttnBwdParams& p, cudaStream_t stream) {
  using C = Cfg<D>;
  const attn::BwdPlan pl = attn::plan_bwd(p);
  float* dsum = (float*)p.workspace;
  float* dq_acc = (float*)((char*)p.workspace + pl.dsum_bytes);
  const int group = p.heads_q / p.heads_kv;

  auto kern = attn_bwd_wgmma_kernel<BF16, D>;
  if (!wgmma_runs_here((const void*)kern, C::SMEM))
    throw Error("ERR_UNSUPPORTED", "attention_bwd_cuda_wgmma: needs an sm_90 GPU, sm_90a SASS in the binary and " +
                                       std::to_string(C::SMEM) + " bytes of shared memory per block");
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
  attn::check_cuda("attention_bwd_wgmma: cudaFuncSetAttribute");

  if (p.seqlen_q > 0) {
    const int64_t rows = (int64_t)p.batch * p.seqlen_q * p.heads_q;
    const int64_t blocks = std::min<int64_t>((rows + 7) / 8, attn::sm_count() * 64);
    attn::attn_bwd_dot_kernel<BF16, D><<<(unsigned)blocks, 256, 0, stream>>>(p, dsum);
    attn::check_cuda("attention_bwd_wgmma preprocess launch");
  }
  Args a;
  a.p = p;
  a.dsum = dsum;
  a.dq_acc = dq_acc;
  a.delta = attn::clamp_delta(p.q_offset, p.k_offset, p.seqlen_q, p.seqlen_k);
  a.group = group;
  a.scale_log2 = p.scale * kLog2e;
  const unsigned n_kblocks = (unsigned)((p.seqlen_k + C::BC - 1) / C::BC);
  for (int u0 = 0; u0 < pl.units_total; u0 += pl.units_per_chunk) {
    const int nu = std::min(pl.units_per_chunk, pl.units_total - u0);
    const size_t acc_bytes = (size_t)nu * pl.unit_bytes;
    if (acc_bytes && cudaMemsetAsync(dq_acc, 0, acc_bytes, stream) != cudaSuccess) attn::check_cuda("attention_bwd_wgmma memset");
    if (n_kblocks > 0) {
      a.unit0 = u0;
      kern<<<dim3(n_kblocks, (unsigned)nu, 1), C::NT, C::SMEM, stream>>>(a);
      attn::check_cuda("attention_bwd_wgmma kernel launch");
    }
    if (acc_bytes) {
      const int64_t total4 = (int64_t)nu * p.seqlen_q * group * (D / 4);
      const int64_t blocks = std::min<int64_t>((total4 + 255) / 256, attn::sm_count() * 32);
      attn::attn_bwd_dq_kernel<BF16, D><<<(unsigned)blocks, 256, 0, stream>>>(p, dq_acc, u0, nu, group);
      attn::check_cuda("attention_bwd_wgmma dq convert launch");
    }
  }
}

}  // namespace attn_wg

bool attention_bwd_wgmma_usable(const AttnBwdParams& p) {
  if (p.dtype != Dtype::BF16 && p.dtype != Dtype::F16) return false;
  if (p.head_dim == 128) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_bwd_wgmma_kernel<true, 128>, attn_wg::Cfg<128>::SMEM);
  if (p.head_dim == 64) return attn_wg::wgmma_runs_here((const void*)attn_wg::attn_bwd_wgmma_kernel<true, 64>, attn_wg::Cfg<64>::SMEM);
  return false;
}

size_t attention_bwd_wgmma_workspace_bytes(const AttnBwdParams& p) {
  attn_wg::check_supported(p, "attention_bwd_wgmma_workspace_bytes");
  return attn::plan_bwd(p).total;
}

void attention_bwd_cuda_wgmma(const AttnBwdParams& p, cudaStream_t stream) {
  using namespace attn;
  const char* who = "attention_bwd_cuda_wgmma";
  attn_wg::check_supported(p, who);
  if (p.batch == 0) return;
  check_rows(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, who, "q");
  check_rows(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, who, "k");
  check_rows(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, who, "v");
  check_rows(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride, who, "out");
  check_rows(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride, who, "dout");
  if (((uintptr_t)p.dq & 7) || ((uintptr_t)p.dk & 3) || ((uintptr_t)p.dv & 3) || p.dq_row_stride % 4 ||
      p.dq_head_stride % 4 || p.dq_batch_stride % 4 || p.dk_row_stride % 2 || p.dk_head_stride % 2 ||
      p.dk_batch_stride % 2 || p.dv_row_stride % 2 || p.dv_head_stride % 2 || p.dv_batch_stride % 2)
    throw Error("ERR_UNSUPPORTED", std::string(who) + ": dq/dk/dv strides or pointers misaligned");
  if (!aligned16(p.workspace)) throw Error("ERR_UNSUPPORTED", std::string(who) + ": workspace must be 16-byte aligned");
  if (p.seqlen_q == 0 && p.seqlen_k == 0) return;
  const bool bf16 = p.dtype == Dtype::BF16;
  if (p.head_dim == 128) {
    if (bf16) attn_wg::launch<true, 128>(p, stream);
    else attn_wg::launch<false, 128>(p, stream);
  } else {
    if (bf16) attn_wg::launch<true, 64>(p, stream);
    else attn_wg::launch<false, 64>(p, stream);
  }
}

}  // namespace mb
