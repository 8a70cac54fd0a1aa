#include <cmath>
#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "../../common/parallel.h"
#include "cross_entropy.h"

namespace mb {

namespace {
template <Dtype X> void ce(const CrossEntropyParams& p, float scale) {
  const int64_t V = p.vocab;
  parallel_for(p.rows, std::max<int64_t>(1, 32768 / V), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t base = r * V;
      const int32_t label = p.labels[r];
      if (label == p.ignore_index) {
        p.losses[r] = 0.f;
        if (p.dlogits)
          for (int64_t c = 0; c < V; ++c) nn::st<X>(p.dlogits, base + c, 0.f);
        continue;
      }
      float m = -INFINITY;
      for (int64_t c = 0; c < V; ++c) m = std::max(m, nn::ld<X>(p.logits, base + c));
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t c = 0; c < V; ++c) acc[c & 7] += std::exp(nn::ld<X>(p.logits, base + c) - m);
      const float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      const float xl = nn::ld<X>(p.logits, base + label);
      p.losses[r] = (m + std::log(s)) - xl;
      if (p.dlogits) {
        const float inv = 1.0f / s;
        for (int64_t c = 0; c < V; ++c) {
          const float q = std::exp(nn::ld<X>(p.logits, base + c) - m) * inv;
          nn::st<X>(p.dlogits, base + c, scale * (c == label ? q - 1.0f : q));
        }
      }
    }
  });
}
}  // namespace

void cross_entropy_check(const CrossEntropyParams& p) {
  if (p.dtype != Dtype::F32 && p.dtype != Dtype::F16 && p.dtype != Dtype::BF16)
    throw Error("ERR_DTYPE", "crossEntropy: logits must be f32, f16 or bf16");
  if (p.rows < 0 || p.vocab <= 0) throw Error("ERR_SHAPE", "crossEntropy: the vocabulary must not be empty");
  if (nn::mul_overflows(p.rows, p.vocab)) throw Error("ERR_SHAPE", "crossEntropy: tensor too large");
  if (!std::isfinite(p.grad_scale)) throw Error("ERR_ARG", "crossEntropy: gradScale must be finite");
  if (p.ignore_index >= 0 && p.ignore_index < p.vocab)
    throw Error("ERR_ARG", "crossEntropy: ignoreIndex " + std::to_string(p.ignore_index) + " is a valid class id");
  if (!p.losses || !p.labels) throw Error("ERR_ARG", "crossEntropy: losses and labels are required");
}

void cross_entropy_cpu(const CrossEntropyParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t l = p.labels[r];
    if (l != p.ignore_index && (l < 0 || l >= p.vocab))
      throw Error("ERR_ARG", "crossEntropy: labels[" + std::to_string(r) + "] = " + std::to_string(l) +
                                 " is outside [0, " + std::to_string(p.vocab) + ") and is not ignoreIndex (" +
                                 std::to_string(p.ignore_index) + ")");
  }
  float scale = p.grad_scale;
  if (p.count) scale /= (float)std::max<int32_t>(*p.count, 1);
  MB_DISPATCH_FLOAT(p.dtype, X, ce<X>(p, scale));
}

void loss_count_cpu(const LossReduceParams& p) {
  int64_t c = 0;
  for (int64_t i = 0; i < p.n; ++i) c += p.labels[i] != p.ignore_index;
  *p.count_out = (int32_t)std::min<int64_t>(c, INT32_MAX);
}

void loss_mean_cpu(const LossReduceParams& p) {
  double s = 0;
  for (int64_t i = 0; i < p.n; ++i) s += p.losses[i];
  const double d = p.count ? (double)std::max<int32_t>(*p.count, 1) : p.divisor;
  *p.mean_out = (float)(s / d);
}

}  // namespace mb
