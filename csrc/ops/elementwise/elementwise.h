// Element-wise arithmetic in fp32 between tensors of any float dtypes (contiguous, same element count):
//   axpby:  out[i] = alpha·a[i] + beta·b[i]   (b optional: out = alpha·a, i.e. scale or cast)
// Inputs are widened to f32, the result is rounded once to out's dtype. out may be exactly a or b
// (in place: each element is read before it is written), never a partial overlap.
// Used for residual adds, gradient accumulation into f32 buffers, and the local/CPU collectives' sums.
#pragma once
#include <cstdint>

#include "../../common/dtype.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#endif

namespace mb {

struct AxpbyParams {
  const void* a = nullptr;
  Dtype a_dtype = Dtype::F32;
  const void* b = nullptr;  // may be null
  Dtype b_dtype = Dtype::F32;
  void* out = nullptr;
  Dtype out_dtype = Dtype::F32;
  int64_t n = 0;
  float alpha = 1.f, beta = 1.f;
};

void axpby_check(const AxpbyParams& p);  // throws ERR_DTYPE / ERR_ARG
void axpby_cpu(const AxpbyParams& p);
#if defined(MEGABEAM_CUDA)
void axpby_cuda(const AxpbyParams& p, cudaStream_t s);
#endif

}  // namespace mb
