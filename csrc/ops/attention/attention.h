// Flash attention: plain parameter structs (pointers + strides in elements) filled by the binding,
// and the launchers for each device. Layout: q [b, sq, hq, d], k/v [b, sk, hkv, d], lse f32 [b, hq, sq].
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct AttnFwdParams {
  const void* q; const void* k; const void* v;
  void* out;                 // same layout and dtype as q
  float* lse;                // [b, hq, sq], natural log; -inf for a fully masked row
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
  float scale;               // softmax scale, usually 1/sqrt(head_dim)
  bool causal;               // query i sees key j iff k_offset + j <= q_offset + i
  int64_t q_offset, k_offset;
  Dtype dtype;               // F16 or BF16 on CUDA; F32, F16, BF16 on the CPU
};

struct AttnBwdParams : AttnFwdParams {
  const void* dout;          // same layout as out
  void* dq; void* dk; void* dv;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
  void* workspace;           // attention_bwd_workspace_bytes() bytes, device memory, uninitialised
};

// Which CUDA backward kernels run. Auto: the wgmma kernel where it runs (sm_90a SASS, head_dim 128),
// else the mma.sync kernels (big tiles where they fit, else small). Mma / MmaSmall force the mma.sync
// kernels (the small configuration even where the big one fits): for comparisons and tests.
enum class AttnBwdKernel : int { Auto = 0, Mma = 1, MmaSmall = 2 };
// Which CUDA forward kernel runs. Auto: the wgmma kernel where it runs (sm_90a SASS, head_dim 64/128),
// else mma.sync. Mma forces the mma.sync kernel: for comparisons and tests.
enum class AttnFwdKernel : int { Auto = 0, Mma = 1 };

// The one place that decides whether a call is valid (throws mb::Error ERR_SHAPE / ERR_DTYPE / ERR_ARG /
// ERR_UNSUPPORTED): sizes, dtype, scale, offsets, pointers; `cuda`: also what the CUDA kernels take
// (dtype f16/bf16, head_dim 64/128, size limits, 16-byte aligned rows; for the backward, the chosen
// kernels' configuration on the current device). The launchers trust a checked struct.
void attention_fwd_check(const AttnFwdParams& p, bool cuda);
void attention_bwd_check(const AttnBwdParams& p, bool cuda, AttnBwdKernel kernel = AttnBwdKernel::Auto);

// CPU (runs on the calling thread, uses parallel_for inside). Same semantics as CUDA.
void attention_fwd_cpu(const AttnFwdParams& p);
void attention_bwd_cpu(const AttnBwdParams& p);

// Test hook (debugAttentionNoTma): while set, the Hopper kernels are refused TMA descriptors, as on a driver
// without the encoder, so the forward and backward take their mma.sync fallbacks (the backward in the wgmma
// workspace). The count is of refused descriptors, so a test can tell that the fallback ran.
// Header-only (inline variables: one instance in the addon), so the dev harness that links only the kernels
// has it too. Relaxed atomics: a test sets the flag between calls.
inline std::atomic<bool> g_attention_no_tma{false};
inline std::atomic<int64_t> g_attention_tma_refusals{0};
inline void attention_debug_set_no_tma(bool on) { g_attention_no_tma.store(on, std::memory_order_relaxed); }
inline bool attention_debug_no_tma() { return g_attention_no_tma.load(std::memory_order_relaxed); }
inline int64_t attention_debug_tma_refusals() { return g_attention_tma_refusals.load(std::memory_order_relaxed); }
inline void attention_debug_count_tma_refusal() { g_attention_tma_refusals.fetch_add(1, std::memory_order_relaxed); }

#if defined(MEGABEAM_CUDA)
// The CUDA part of the checks above (attention_fwd_check / attention_bwd_check call them).
void attention_fwd_cuda_check(const AttnFwdParams& p);
void attention_bwd_cuda_check(const AttnBwdParams& p, AttnBwdKernel kernel);
// Enqueue on `stream`; never synchronise. Throw mb::Error("ERR_CUDA", ...) on a failed launch.
size_t attention_bwd_workspace_bytes(const AttnBwdParams& p, AttnBwdKernel kernel = AttnBwdKernel::Auto);
void attention_fwd_cuda(const AttnFwdParams& p, cudaStream_t stream, AttnFwdKernel kernel = AttnFwdKernel::Auto);
void attention_bwd_cuda(const AttnBwdParams& p, cudaStream_t stream, AttnBwdKernel kernel = AttnBwdKernel::Auto);
#endif

}  // namespace mb
