// RoPE on the CPU: one task per token; cos/sin computed once per (token, pair), reused by every head.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "rope.h"
#include "rope_math.h"

namespace mb {

void rope_check(const RopeParams& p) {
  MB_CHECK(p.num_tensors == 1 || p.num_tensors == 2, "ERR_ARG", "rope: num_tensors must be 1 or 2");
  MB_CHECK(p.batch >= 0 && p.seqlen >= 0, "ERR_SHAPE", "rope: negative batch or seq");
  MB_CHECK(p.head_dim >= 1, "ERR_SHAPE", "rope: head_dim must be >= 1");
  MB_CHECK(p.rotary_dim >= 2 && p.rotary_dim % 2 == 0 && p.rotary_dim <= p.head_dim, "ERR_ROPE_CONFIG",
           "rotaryDim: must be even, >= 2 and <= headDim (" + std::to_string(p.head_dim) + "), got " +
               std::to_string(p.rotary_dim));
  MB_CHECK(p.dtype == Dtype::F32 || p.dtype == Dtype::F16 || p.dtype == Dtype::BF16, "ERR_DTYPE",
           std::string("rope: float dtype expected, got ") + dtype_name(p.dtype));
  MB_CHECK(p.style == RopeStyle::NeoX || p.style == RopeStyle::Interleaved, "ERR_ROPE_CONFIG",
           "style: must be neox or interleaved");
  MB_CHECK(p.precision == RopePrecision::Exact || p.precision == RopePrecision::F32 ||
               p.precision == RopePrecision::BF16,
           "ERR_ROPE_CONFIG", "precision: must be exact, fp32 or bf16");
  MB_CHECK(p.inv_freq != nullptr, "ERR_ROPE_CONFIG", "invFreq: missing");
  MB_CHECK(std::isfinite(p.attention_factor), "ERR_ROPE_CONFIG", "attentionFactor: must be finite");
  if (p.positions == nullptr) {
    // Exact mode is exact for |pos| < 2^31; the int32 positions tensor has the same range.
    MB_CHECK(p.position_offset >= 0 && p.position_offset + (int64_t)p.seqlen - 1 <= INT32_MAX, "ERR_ARG",
             "rope: positionOffset + seq - 1 must be in [0, 2^31 - 1]");
  }
  const bool empty = (int64_t)p.batch * p.seqlen == 0;
  for (int n = 0; n < p.num_tensors; ++n) {
    const RopeTensor& t = p.t[n];
    MB_CHECK(t.heads >= 0, "ERR_SHAPE", "rope: negative head count");
    if (empty || t.heads == 0) continue;
    MB_CHECK(t.x != nullptr && t.y != nullptr, "ERR_ARG", "rope: null tensor pointer");
    if (t.x == t.y) {
      MB_CHECK(t.x_batch_stride == t.y_batch_stride && t.x_seq_stride == t.y_seq_stride &&
                   t.x_head_stride == t.y_head_stride,
               "ERR_ARG", "rope: in-place output must have the input's strides");
    }
  }
}

namespace {

template <Dtype DT>
void rope_cpu_typed(const RopeParams& p) {
  using E = Elem<DT>;
  using T = typename E::T;
  const int half = p.rotary_dim / 2;
  const int64_t ntok = (int64_t)p.batch * p.seqlen;
  int64_t heads_total = 0;
  for (int n = 0; n < p.num_tensors; ++n) heads_total += p.t[n].heads;
  const int64_t per_tok = heads_total * p.head_dim;
  if (ntok == 0 || per_tok == 0) return;
  const int64_t grain = per_tok >= 16384 ? 1 : 16384 / per_tok;

  parallel_for(ntok, grain, [&](int64_t tok0, int64_t tok1) {
    std::vector<float> cs((size_t)p.rotary_dim);  // cos at [0, half), sin at [half, rotary)
    float* cv = cs.data();
    float* sv = cs.data() + half;
    for (int64_t tok = tok0; tok < tok1; ++tok) {
      const int64_t b = tok / p.seqlen, s = tok % p.seqlen;
      const int64_t pos = p.positions ? (int64_t)p.positions[b * p.pos_batch_stride + s * p.pos_seq_stride]
                                      : p.position_offset + s;
      for (int i = 0; i < half; ++i)
        rope_detail::rope_cos_sin(p.precision, pos, p.inv_freq[i], p.attention_factor, p.inverse, cv[i], sv[i]);

      for (int n = 0; n < p.num_tensors; ++n) {
        const RopeTensor& t = p.t[n];
        const bool inplace = t.x == t.y;
        for (int h = 0; h < t.heads; ++h) {
          const T* x = static_cast<const T*>(t.x) + b * t.x_batch_stride + s * t.x_seq_stride + h * t.x_head_stride;
          T* y = static_cast<T*>(t.y) + b * t.y_batch_stride + s * t.y_seq_stride + h * t.y_head_stride;
          // i1/i2: the pair's element indices; both read before either is written (in place).
          const int o2 = p.style == RopeStyle::NeoX ? half : 1;
          const int step = p.style == RopeStyle::NeoX ? 1 : 2;
          for (int i = 0; i < half; ++i) {
            const int i1 = i * step, i2 = i1 + o2;
            const float a = E::load(x[i1]), bb = E::load(x[i2]);
            y[i1] = E::store(a * cv[i] - bb * sv[i]);
            y[i2] = E::store(bb * cv[i] + a * sv[i]);
          }
          if (!inplace && p.rotary_dim < p.head_dim)
            std::memcpy(y + p.rotary_dim, x + p.rotary_dim, sizeof(T) * (size_t)(p.head_dim - p.rotary_dim));
        }
      }
    }
  });
}

}  // namespace

void rope_cpu(const RopeParams& p) {
  rope_check(p);
  MB_DISPATCH_FLOAT(p.dtype, DT, rope_cpu_typed<DT>(p));
}

}  // namespace mb
