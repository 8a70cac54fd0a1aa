#include <cmath>
#include <vector>

#include "../../common/error.h"
#include "../../common/parallel.h"
#include "../tensor/tensor_ops.h"
#include "optim.h"

namespace mb {

namespace {
bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }
}  // namespace

void adamw_check(const AdamWParams& p) {
  if (!is_float(p.param_dtype) || !is_float(p.grad_dtype)) throw Error("ERR_DTYPE", "adamw: param and grad must be float tensors");
  if (p.n < 0) throw Error("ERR_SHAPE", "adamw: negative size");
  auto fin = [](float x) { return std::isfinite(x); };
  if (!fin(p.lr) || p.lr < 0) throw Error("ERR_ARG", "adamw: lr must be a finite number >= 0");
  if (!(p.beta1 >= 0 && p.beta1 < 1) || !(p.beta2 >= 0 && p.beta2 < 1))
    throw Error("ERR_ARG", "adamw: betas must be in [0, 1)");
  if (!fin(p.eps) || !(p.eps > 0)) throw Error("ERR_ARG", "adamw: eps must be > 0");
  if (!fin(p.weight_decay) || p.weight_decay < 0) throw Error("ERR_ARG", "adamw: weightDecay must be >= 0");
  if (!(p.bias1 > 0 && p.bias1 <= 1) || !(p.bias2 > 0 && p.bias2 <= 1)) throw Error("ERR_ARG", "adamw: step must be >= 1");
  if (!fin(p.grad_scale)) throw Error("ERR_ARG", "adamw: gradScale must be finite");
  if (p.sumsq && (!fin(p.max_norm) || !(p.max_norm > 0))) throw Error("ERR_ARG", "adamw: maxNorm must be > 0");
  if (p.master_lo && (p.param_dtype != Dtype::BF16 || p.master))
    throw Error("ERR_ARG", "adamw: masterLo (split master) needs a bf16 param and no f32 master");
}

void adamw_cpu(const AdamWParams& p) {
  const float clip = adamw_clip(p.sumsq, p.max_norm);
  const float decay = 1.f - p.lr * p.weight_decay;
  parallel_for(p.n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float g = load_as_f32(p.grad, p.grad_dtype, i) * p.grad_scale * clip;
      uint16_t* hi = static_cast<uint16_t*>(p.param);
      float w = p.master ? p.master[i] : p.master_lo ? adamw_join_master(hi[i], p.master_lo[i]) : load_as_f32(p.param, p.param_dtype, i);
      w = w * decay;
      float m = p.beta1 * p.m[i] + (1.f - p.beta1) * g;
      float v = p.beta2 * p.v[i] + (1.f - p.beta2) * (g * g);
      p.m[i] = m;
      p.v[i] = v;
      w = w - p.lr * ((m / p.bias1) / (sqrtf(v / p.bias2) + p.eps));
      if (p.master_lo) { adamw_split_master(w, &hi[i], &p.master_lo[i]); continue; }
      if (p.master) p.master[i] = w;
      store_from_f32(p.param, p.param_dtype, i, w);
    }
  });
}

void sumsq_check(const SumsqParams& p) {
  if (!is_float(p.dtype)) throw Error("ERR_DTYPE", "sumsq: x must be a float tensor");
  if (p.n < 0) throw Error("ERR_SHAPE", "sumsq: negative size");
}

void sumsq_cpu(const SumsqParams& p) {
  // Fixed chunking and a fixed reduction order: the same sum on every run (and for any thread count).
  const int64_t chunk = 1 << 16;
  const int64_t nchunks = (p.n + chunk - 1) / chunk;
  std::vector<double> part((size_t)nchunks, 0.0);
  parallel_for(nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      double s = 0;
      const int64_t hi = std::min(p.n, (c + 1) * chunk);
      for (int64_t i = c * chunk; i < hi; ++i) {
        double x = load_as_f32(p.x, p.dtype, i);
        s += x * x;
      }
      part[(size_t)c] = s;
    }
  });
  double s = 0;
  for (double x : part) s += x;
  *p.out = (float)((double)*p.out + s);
}

}  // namespace mb
