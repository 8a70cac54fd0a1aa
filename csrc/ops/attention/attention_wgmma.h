// The Hopper wgmma (sm_90a) attention kernels: what attention_fwd_cuda / attention_bwd_cuda run on sm_90
// GPUs. Same semantics as those launchers. Forward and backward: head_dim 64 and 128; bf16/f16,
// an sm_90 device running the sm_90a SASS. The *_usable predicates say whether a problem runs here (they
// never throw); the launchers trust a struct that attention_*_check accepted. See bench/NOTES.md.
#pragma once
#include <cstddef>
#include <cuda_runtime.h>
#include "ops/attention/attention.h"

namespace mb {
bool attention_fwd_wgmma_usable(const AttnFwdParams& p);
// false: nothing launched (no TMA descriptors for these tensors); run the mma.sync forward instead.
bool attention_fwd_cuda_wgmma(const AttnFwdParams& p, cudaStream_t s);

bool attention_bwd_wgmma_usable(const AttnBwdParams& p);
size_t attention_bwd_wgmma_workspace_bytes(const AttnBwdParams& p);
// false: nothing launched (no TMA descriptors for these tensors); run the mma.sync backward instead.
bool attention_bwd_cuda_wgmma(const AttnBwdParams& p, cudaStream_t s);
}  // namespace mb
