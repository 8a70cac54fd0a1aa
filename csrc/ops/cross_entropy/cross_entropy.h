// Cross-entropy over rows of logits [rows, vocab] (any float dtype, fp32 math, any vocab size):
//   loss[r]    = logsumexp(x[r, :]) − x[r, label[r]]                       (f32)
//   dlogits[r] = scale · (softmax(x[r, :]) − onehot(label[r]))             (optional, logits' dtype)
//   scale      = grad_scale, divided by max(*count, 1) when `count` (a device i32) is given, so the mean
//                over non-ignored tokens can be formed without the host knowing the count.
// Rows whose label is ignore_index get loss 0 and a zero gradient row. dlogits may be exactly logits
// (in place: the label's logit is read before anything of the row is written).
// The row maximum and the sum of exponentials are formed in one pass (online: the running sum is rescaled
// when the maximum grows), the gradient in a second pass.
// Labels outside [0, vocab) (and not ignore_index): CPU: the queued op fails with ERR_ARG (nothing
// written). CUDA: the row is treated as ignored and the smallest bad row is recorded with atomicMin into
// `bad` (see embedding.h; lib/nn's checkIds reads it).
//
// Two small helpers for the chunked LM-head loss:
//   loss_count: *out = number of labels != ignore_index                    (i32)
//   loss_mean:  *out = Σ losses / (count ? max(*count, 1) : divisor)      (f32; summed in f64, fixed order)
#pragma once
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct CrossEntropyParams {
  const void* logits = nullptr;
  Dtype dtype = Dtype::F32;       // logits and dlogits
  int64_t rows = 0, vocab = 0;
  const int32_t* labels = nullptr;
  int32_t ignore_index = -100;
  float* losses = nullptr;        // f32 [rows]
  void* dlogits = nullptr;        // optional
  float grad_scale = 1.f;
  const int32_t* count = nullptr; // optional device i32: scale /= max(*count, 1)
  int32_t* bad = nullptr;         // CUDA: first bad row (atomicMin); may be null
};

struct LossReduceParams {
  const int32_t* labels = nullptr;  // loss_count
  int32_t ignore_index = -100;
  const float* losses = nullptr;    // loss_mean
  int64_t n = 0;
  const int32_t* count = nullptr;   // loss_mean: divide by max(*count, 1) ...
  double divisor = 1.0;             // ... or by this
  int32_t* count_out = nullptr;     // loss_count
  float* mean_out = nullptr;        // loss_mean
};

void cross_entropy_check(const CrossEntropyParams& p);
void cross_entropy_cpu(const CrossEntropyParams& p);
void loss_count_cpu(const LossReduceParams& p);
void loss_mean_cpu(const LossReduceParams& p);
#if defined(MEGABEAM_CUDA)
void cross_entropy_cuda(const CrossEntropyParams& p, cudaStream_t s);
void loss_count_cuda(const LossReduceParams& p, cudaStream_t s);
void loss_mean_cuda(const LossReduceParams& p, cudaStream_t s);
#endif

}  // namespace mb
