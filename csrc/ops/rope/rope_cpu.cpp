// RoPE on the CPU: one task per token; cos/sin computed once per (token, pair), reused by every head.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "rope.h"
#include "rope_math.h"

namespace mb {

namespace {

// Bytes [lo, hi) touched by a [batch, seq, heads, head_dim] tensor with these strides (empty: lo == hi).
struct Span {
  uintptr_t lo = 0, hi = 0;
  bool overlaps(const Span& o) const { return lo < hi && o.lo < o.hi && lo < o.hi && o.lo < hi; }
};
Span span(const void* ptr, int64_t b, int64_t s, int64_t h, int64_t d, int64_t bs, int64_t ss, int64_t hs, size_t es) {
  if (!ptr || b == 0 || s == 0 || h == 0 || d == 0) return {};
  const int64_t last = (b - 1) * bs + (s - 1) * ss + (h - 1) * hs + d;  // strides are non-negative here
  return {(uintptr_t)ptr, (uintptr_t)ptr + (uintptr_t)last * es};
}

}  // namespace

void rope_check(const RopeParams& p, int64_t inv_freq_len, bool cuda) {
  MB_CHECK(p.num_tensors == 1 || p.num_tensors == 2, "ERR_ARG", "rope: num_tensors must be 1 or 2");
  MB_CHECK(p.batch >= 0 && p.seqlen >= 0, "ERR_SHAPE", "rope: negative batch or seq");
  MB_CHECK(p.head_dim >= 1, "ERR_SHAPE", "rope: headDim must be >= 1");
  MB_CHECK(p.dtype == Dtype::F32 || p.dtype == Dtype::F16 || p.dtype == Dtype::BF16, "ERR_DTYPE",
           std::string("rope: float dtype expected, got ") + dtype_name(p.dtype));
  MB_CHECK(p.rotary_dim >= 2 && p.rotary_dim % 2 == 0 && p.rotary_dim <= p.head_dim, "ERR_ROPE_CONFIG",
           "rotaryDim: must be even, >= 2 and <= headDim (" + std::to_string(p.head_dim) + "), got " +
               std::to_string(p.rotary_dim));
  MB_CHECK(p.style == RopeStyle::NeoX || p.style == RopeStyle::Interleaved, "ERR_ROPE_CONFIG",
           "style: must be neox or interleaved");
  MB_CHECK(p.precision == RopePrecision::Exact || p.precision == RopePrecision::F32 ||
               p.precision == RopePrecision::BF16,
           "ERR_ROPE_CONFIG", "precision: must be exact, fp32 or bf16");
  MB_CHECK(std::isfinite(p.attention_factor), "ERR_ROPE_CONFIG",
           "attentionFactor: must be a finite number (in fp32 range)");
  if (p.positions == nullptr) {
    // Exact mode is exact for |pos| < 2^31; the int32 positions tensor has the same range.
    MB_CHECK(p.position_offset >= 0 && p.position_offset + (int64_t)p.seqlen - 1 <= INT32_MAX, "ERR_ARG",
             "rope: positionOffset + seq - 1 must be in [0, 2^31 - 1], got positionOffset " +
                 std::to_string(p.position_offset) + " with seq " + std::to_string(p.seqlen));
  }
  int64_t heads_total = 0;
  for (int n = 0; n < p.num_tensors; ++n) {
    const RopeTensor& t = p.t[n];
    MB_CHECK(t.heads >= 0, "ERR_SHAPE", "rope: negative head count");
    for (int64_t s : {t.x_batch_stride, t.x_seq_stride, t.x_head_stride, t.y_batch_stride, t.y_seq_stride,
                      t.y_head_stride})
      MB_CHECK(s >= 0, "ERR_ARG", "rope: negative stride");
    heads_total += t.heads;
  }
  const bool empty = (int64_t)p.batch * p.seqlen * heads_total == 0;
  if (empty) return;  // nothing is read or written: no frequencies, no aliasing to check

  // Frequencies: the count the rotary dim needs, each finite and in [0, 2^20].
  MB_CHECK(p.inv_freq != nullptr, "ERR_ROPE_CONFIG", "invFreq: missing");
  MB_CHECK(inv_freq_len == p.rotary_dim / 2, "ERR_ROPE_CONFIG",
           "invFreq: has " + std::to_string(inv_freq_len) + " entries, rotaryDim " + std::to_string(p.rotary_dim) +
               " needs " + std::to_string(p.rotary_dim / 2));
  for (int64_t i = 0; i < inv_freq_len; ++i) {
    const double v = p.inv_freq[i];
    MB_CHECK(std::isfinite(v) && v >= 0 && v <= kRopeMaxInvFreq, "ERR_ROPE_CONFIG",
             "invFreq: entry " + std::to_string(i) + " must be a finite number in [0, 2^20], got " + std::to_string(v));
  }

  // Aliasing: y may be exactly x (in place, same strides); nothing written may touch anything else.
  const size_t es = dtype_size(p.dtype);
  Span xs[2], ys[2];
  for (int n = 0; n < p.num_tensors; ++n) {
    const RopeTensor& t = p.t[n];
    if (t.heads == 0) continue;
    MB_CHECK(t.x != nullptr && t.y != nullptr, "ERR_ARG", "rope: null tensor pointer");
    xs[n] = span(t.x, p.batch, p.seqlen, t.heads, p.head_dim, t.x_batch_stride, t.x_seq_stride, t.x_head_stride, es);
    ys[n] = span(t.y, p.batch, p.seqlen, t.heads, p.head_dim, t.y_batch_stride, t.y_seq_stride, t.y_head_stride, es);
    const char* name = n == 0 ? "x" : "k";
    if (t.x == t.y) {
      MB_CHECK(t.x_batch_stride == t.y_batch_stride && t.x_seq_stride == t.y_seq_stride &&
                   t.x_head_stride == t.y_head_stride,
               "ERR_ARG", std::string("rope: the in-place output of ") + name + " must have its strides");
    } else {
      MB_CHECK(!ys[n].overlaps(xs[n]), "ERR_ARG",
               std::string("rope: the output of ") + name + " partially overlaps " + name);
    }
  }
  if (p.num_tensors == 2) {
    MB_CHECK(!ys[0].overlaps(xs[1]) && !ys[0].overlaps(ys[1]) && !ys[1].overlaps(xs[0]), "ERR_ARG",
             "rope: q and k (or their outputs) share memory; q would be rotated over k's elements (or twice)");
  }
  if (p.positions) {
    const Span ps = span(p.positions, p.batch, p.seqlen, 1, 1, p.pos_batch_stride, p.pos_seq_stride, 0, sizeof(int32_t));
    for (int n = 0; n < p.num_tensors; ++n)
      MB_CHECK(!ys[n].overlaps(ps), "ERR_ARG", "rope: an output shares memory with positions");
  }

  if (cuda) {
    MB_CHECK(p.rotary_dim <= kRopeCudaMaxRotaryDim, "ERR_UNSUPPORTED",
             "rope: rotaryDim above " + std::to_string(kRopeCudaMaxRotaryDim) + " is not supported on CUDA, got " +
                 std::to_string(p.rotary_dim));
    MB_CHECK(heads_total * p.head_dim * kRopeCudaMaxTokPerBlock < 0x7fffffff, "ERR_UNSUPPORTED",
             "rope: heads * headDim too large for one CUDA launch");
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
  MB_DISPATCH_FLOAT(p.dtype, DT, rope_cpu_typed<DT>(p));
}

}  // namespace mb
