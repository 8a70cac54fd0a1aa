#include <string>

#include "../../common/error.h"
#include "../../common/nn_util.h"
#include "../../common/parallel.h"
#include "embedding.h"

namespace mb {

namespace {
bool is_float(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16; }

void check_ids(const EmbeddingParams& p, const char* op) {
  for (int64_t t = 0; t < p.n; ++t)
    if (p.ids[t] < 0 || p.ids[t] >= p.vocab)
      throw Error("ERR_ARG", std::string(op) + ": ids[" + std::to_string(t) + "] = " + std::to_string(p.ids[t]) +
                                 " is outside the vocabulary [0, " + std::to_string(p.vocab) + ")");
}

template <Dtype Wt, Dtype O> void fwd(const EmbeddingParams& p) {
  const int64_t H = p.hidden;
  parallel_for(p.n, std::max<int64_t>(1, 16384 / H), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t src = (int64_t)p.ids[t] * H, dst = t * H;
      for (int64_t c = 0; c < H; ++c) nn::st<O>(p.out, dst + c, nn::ld<Wt>(p.weight, src + c));
    }
  });
}

template <Dtype D> void bwd(const EmbeddingParams& p) {
  const int64_t H = p.hidden;
  // Column ranges per thread: no two threads write the same element, tokens are added in order.
  parallel_for(H, 64, [&](int64_t cb, int64_t ce) {
    for (int64_t t = 0; t < p.n; ++t) {
      float* dst = p.dweight + (int64_t)p.ids[t] * H;
      const int64_t src = t * H;
      for (int64_t c = cb; c < ce; ++c) dst[c] += nn::ld<D>(p.dy, src + c);
    }
  });
}
}  // namespace

void embedding_check(const EmbeddingParams& p, bool backward) {
  const char* op = backward ? "embeddingBackward" : "embedding";
  if (p.n < 0 || p.vocab <= 0 || p.hidden <= 0) throw Error("ERR_SHAPE", std::string(op) + ": empty vocabulary or hidden size");
  if (nn::mul_overflows(p.vocab, p.hidden) || nn::mul_overflows(p.n, p.hidden))
    throw Error("ERR_SHAPE", std::string(op) + ": tensor too large");
  if (!p.ids) throw Error("ERR_ARG", std::string(op) + ": ids missing");
  if (backward) {
    if (!is_float(p.dy_dtype)) throw Error("ERR_DTYPE", "embeddingBackward: dy must be f32, f16 or bf16");
    if (!p.dweight || !p.dy) throw Error("ERR_ARG", "embeddingBackward: dy and dweight are required");
  } else {
    if (!is_float(p.w_dtype) || !is_float(p.out_dtype)) throw Error("ERR_DTYPE", "embedding: weight must be f32, f16 or bf16");
    if (!p.weight || !p.out) throw Error("ERR_ARG", "embedding: weight and out are required");
  }
}

void embedding_cpu(const EmbeddingParams& p) {
  check_ids(p, "embedding");
  MB_DISPATCH_FLOAT(p.w_dtype, Wt, {
    MB_DISPATCH_FLOAT(p.out_dtype, O, fwd<Wt, O>(p));
  });
}

void embedding_bwd_cpu(const EmbeddingParams& p) {
  check_ids(p, "embeddingBackward");
  MB_DISPATCH_FLOAT(p.dy_dtype, D, bwd<D>(p));
}

}  // namespace mb
