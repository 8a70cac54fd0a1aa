// Rotary position embedding: a plain parameter struct filled by the binding, and the launchers.
// Layout: x/y [batch, seq, heads, head_dim], last dim contiguous, other strides in elements.
// Pair i (0 <= i < rotary_dim/2) is rotated by angle pos * inv_freq[i]:
//   neox:        elements (i, i + rotary_dim/2)
//   interleaved: elements (2i, 2i + 1)
//   (a, b) -> af * (a cos - b sin, b cos + a sin); inverse uses -angle (the backward / adjoint).
// Elements >= rotary_dim pass through unchanged. All arithmetic is fp32 whatever the I/O dtype.
#pragma once
#include <cstddef>
#include <cstdint>
#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

enum class RopeStyle : int { NeoX = 0, Interleaved = 1 };

enum class RopePrecision : int {
  // angle reduced mod pi/2 in fp64 from the exact product pos*inv_freq (two-product + 2-term pi/2),
  // rounded to fp32 (<= 3e-8 rad), then sin/cos in fp32: <= 9e-8 rad end to end (measured), any |pos| < 2^31.
  Exact = 0,
  // the MegaBeam paper's fix: angle = fp32(fp32(pos) * fp32(inv_freq)), then sinf/cosf.
  F32 = 1,
  // the bug the paper fixed, as a bf16 model's rotary table computes it:
  // a = bf16(bf16(pos) * bf16(fp32(inv_freq))); c = bf16(bf16(cosf(a)) * af), s likewise.
  BF16 = 2,
};

// One tensor rotated by the call. y == x (with equal strides) is in place.
struct RopeTensor {
  const void* x;
  void* y;
  int64_t x_batch_stride, x_seq_stride, x_head_stride;
  int64_t y_batch_stride, y_seq_stride, y_head_stride;
  int heads;
};

struct RopeParams {
  RopeTensor t[2];           // q and optionally k (GQA: own head counts), sharing everything below
  int num_tensors;           // 1 or 2
  int batch, seqlen, head_dim, rotary_dim;
  Dtype dtype;               // F32, F16 or BF16, same for all tensors
  RopeStyle style;
  RopePrecision precision;
  const double* inv_freq;    // rotary_dim/2 entries; a device pointer for CUDA, host pointer for the CPU
  const int32_t* positions;  // [batch, seq] int32 (same device as x), or nullptr: pos = position_offset + s
  int64_t pos_batch_stride, pos_seq_stride;
  int64_t position_offset;
  float attention_factor;    // multiplies cos and sin (YaRN / longrope); 1 otherwise
  bool inverse;              // rotate by -angle (backward)
};

// CUDA limits, checked by rope_check (the kernel's cos/sin table and one launch's index range).
constexpr int kRopeCudaMaxRotaryDim = 10240;
constexpr int64_t kRopeCudaMaxTokPerBlock = 64;

// The one place that decides whether a call is valid; throws mb::Error (ERR_ARG / ERR_SHAPE / ERR_DTYPE /
// ERR_ROPE_CONFIG / ERR_UNSUPPORTED; ERR_ROPE_CONFIG messages read "<parameter>: <what is wrong>").
// Checks the sizes, the enums, the frequencies (host pointer, `inv_freq_len` entries: they must be
// finite and in [0, 2^20] so pos * theta stays below 2^52 for the exact reduction), the position range,
// and aliasing: an output may be exactly its own input (in place) and must not touch any other tensor,
// so q and k (or their outputs) can never overlap. A call with no elements needs no frequencies.
// `cuda`: also the CUDA kernels' limits. The launchers trust a checked struct.
void rope_check(const RopeParams& p, int64_t inv_freq_len, bool cuda);
constexpr double kRopeMaxInvFreq = 1048576.0;  // 2^20

// CPU: runs on the calling thread, parallel_for inside. Expects a struct that passed rope_check.
void rope_cpu(const RopeParams& p);

#if defined(MEGABEAM_CUDA)
// Enqueues on `stream`; never synchronises; expects a struct that passed rope_check(p, n, true).
// Throws mb::Error("ERR_CUDA", ...) on a launch failure.
void rope_cuda(const RopeParams& p, cudaStream_t stream);
#endif

}  // namespace mb
