// rope(x, out, k, kOut, invFreq, positions, positionOffset, style, precision, rotaryDim, attentionFactor, inverse)
// x/out (and optionally k/kOut): [batch, seq, heads, headDim] float tensors; out == x (same memory) is in
// place. invFreq: Float64Array of rotaryDim/2. positions: i32 [batch, seq] tensor or null.
// lib/rope.ts validates everything first; the checks here keep the native side safe on its own.
#include <cmath>
#include <memory>

#include "../ops/rope/rope.h"
#include "binding.h"

namespace mb {
namespace {

bool is_null(const Napi::Value& v) { return v.IsNull() || v.IsUndefined(); }

void check_4d_float(const TensorImpl* t, const char* name) {
  if (t->shape.size() != 4)
    throw Error("ERR_SHAPE", std::string("rope: ") + name + " must be [batch, seq, heads, headDim], got " +
                                 std::to_string(t->shape.size()) + " dims");
  if (t->dtype != Dtype::F32 && t->dtype != Dtype::F16 && t->dtype != Dtype::BF16)
    throw Error("ERR_DTYPE", std::string("rope: ") + name + " must be f32, f16 or bf16, got " + dtype_name(t->dtype));
}

RopeTensor contiguous(const TensorImpl* x, TensorImpl* out) {
  RopeTensor t{};
  t.x = x->data();
  t.y = out->data();
  const int64_t H = x->shape[2], D = x->shape[3];
  t.x_head_stride = t.y_head_stride = D;
  t.x_seq_stride = t.y_seq_stride = H * D;
  t.x_batch_stride = t.y_batch_stride = x->shape[1] * H * D;
  t.heads = (int)H;
  return t;
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  TensorImpl* x = tensor_arg(info[0], "x");
  TensorImpl* out = tensor_arg(info[1], "out");
  TensorImpl* k = is_null(info[2]) ? nullptr : tensor_arg(info[2], "k");
  TensorImpl* kout = k ? tensor_arg(info[3], "kOut") : nullptr;
  check_4d_float(x, "x");
  check_shape(out, x->shape, "out");
  if (out->dtype != x->dtype) throw Error("ERR_DTYPE", "rope: out dtype differs from x");
  std::vector<const TensorImpl*> all{x, out};
  if (k) {
    check_4d_float(k, "k");
    check_shape(kout, k->shape, "kOut");
    if (k->dtype != x->dtype || kout->dtype != x->dtype) throw Error("ERR_DTYPE", "rope: q and k dtypes differ");
    if (k->shape[0] != x->shape[0] || k->shape[1] != x->shape[1] || k->shape[3] != x->shape[3])
      throw Error("ERR_SHAPE", "rope: q and k must share batch, seq and headDim");
    if (kout->data() != nullptr && (kout->data() == out->data() || kout->data() == x->data() || k->data() == out->data()))
      throw Error("ERR_ARG", "rope: q and k (or their outputs) share memory; in place they would be rotated twice");
    all.push_back(k);
    all.push_back(kout);
  }
  const int64_t B = x->shape[0], S = x->shape[1], D = x->shape[3];
  if (B > INT32_MAX || S > INT32_MAX || D > INT32_MAX || x->shape[2] > INT32_MAX || (k && k->shape[2] > INT32_MAX))
    throw Error("ERR_SHAPE", "rope: dimension too large");

  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    throw Error("ERR_ROPE_CONFIG", "invFreq: must be a Float64Array");
  Napi::Float64Array fa = info[4].As<Napi::Float64Array>();
  auto inv = std::make_shared<std::vector<double>>(fa.Data(), fa.Data() + fa.ElementLength());
  for (double v : *inv)
    if (!std::isfinite(v)) throw Error("ERR_ROPE_CONFIG", "invFreq: entries must be finite");

  TensorImpl* pos = is_null(info[5]) ? nullptr : tensor_arg(info[5], "positions");
  if (pos) {
    if (pos->dtype != Dtype::I32) throw Error("ERR_DTYPE", std::string("rope: positions must be i32, got ") + dtype_name(pos->dtype));
    check_shape(pos, {B, S}, "positions");
    all.push_back(pos);
  }
  check_same_device(all, "rope");

  const int64_t style = int_arg(info[7], "style"), precision = int_arg(info[8], "precision");
  const int64_t rotary = int_arg(info[9], "rotaryDim");
  if (rotary < 2 || rotary % 2 != 0 || rotary > D)
    throw Error("ERR_ROPE_CONFIG", "rotaryDim: must be even, >= 2 and <= headDim");
  if ((int64_t)inv->size() != rotary / 2)
    throw Error("ERR_ROPE_CONFIG", "invFreq: needs rotaryDim/2 = " + std::to_string(rotary / 2) + " entries, got " +
                                       std::to_string(inv->size()));

  RopeParams p{};
  p.t[0] = contiguous(x, out);
  p.num_tensors = 1;
  if (k) {
    p.t[1] = contiguous(k, kout);
    p.num_tensors = 2;
  }
  p.batch = (int)B;
  p.seqlen = (int)S;
  p.head_dim = (int)D;
  p.rotary_dim = (int)rotary;
  p.dtype = x->dtype;
  p.style = (RopeStyle)style;
  p.precision = (RopePrecision)precision;
  p.positions = pos ? static_cast<const int32_t*>(pos->data()) : nullptr;
  p.pos_batch_stride = S;
  p.pos_seq_stride = 1;
  p.position_offset = pos ? 0 : int_arg(info[6], "positionOffset");
  const double af = number_arg(info[10], "attentionFactor");
  p.attention_factor = (float)af;
  p.inverse = bool_arg(info[11], "inverse");
  p.inv_freq = inv->data();
  rope_check(p);  // everything the kernels rely on, before anything is queued

  std::vector<StoragePtr> keep;
  for (const TensorImpl* t : all) keep.push_back(t->storage);
  const int dev = x->device;
  if (dev == kCpu) {
    run_on_device(dev, std::move(keep), [p, inv](void*) { rope_cpu(p); });
    return info.Env().Undefined();
  }
#if defined(MEGABEAM_CUDA)
  // The frequencies go up with the launch, on the same stream; the block can be dropped after the
  // launch (later work on the stream is ordered after this kernel). From pageable memory the copy
  // returns once `inv` is staged.
  StoragePtr dinv = alloc_storage(dev, inv->size() * sizeof(double));
  run_on_device(dev, std::move(keep), [p, inv, dinv](void* s) mutable {
    cudaStream_t stream = (cudaStream_t)s;
    cuda_check(cudaMemcpyAsync(dinv->ptr, inv->data(), inv->size() * sizeof(double), cudaMemcpyHostToDevice, stream),
               "rope invFreq upload");
    p.inv_freq = static_cast<const double*>(dinv->ptr);
    rope_cuda(p, stream);
  });
  return info.Env().Undefined();
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}
MB_EXPORT("rope", Rope);

}  // namespace
}  // namespace mb
