// rope({ x, k?, inplace?, invFreq?, rotaryDim?, positions?, positionOffset?, style?, precision?,
//        attentionFactor?, inverse? }) -> { x: handle, k?: handle }
//   x (and k, GQA: own head count): [batch, seq, heads, headDim] float tensors, contiguous.
//   inplace: rotate x's (and k's) memory and return the inputs' handles; else new outputs are allocated.
//   invFreq: Float64Array or array of numbers, rotaryDim/2 entries (rotaryDim defaults to 2·length);
//     not needed when the call has no elements. positions: i32 [batch, seq] or absent (then
//     positionOffset + s, default 0). style 'neox' (default) | 'interleaved'; precision 'exact' (default)
//     | 'fp32' | 'bf16'; attentionFactor default 1; inverse (the backward) default false.
// Validity is decided by rope_check (csrc/ops/rope); this file reads the baton and fills the struct.
#include <cmath>
#include <memory>

#include "../ops/rope/rope.h"
#include "baton.h"

namespace mb {
namespace {

[[noreturn]] void config_fail(const std::string& param, const std::string& msg) {
  throw Error("ERR_ROPE_CONFIG", param + ": " + msg);
}

void check_4d_float(const TensorImpl* t, const char* name) {
  if (t->shape.size() != 4)
    throw Error("ERR_SHAPE", std::string("rope: ") + name + " must be [batch, seq, heads, headDim], got " +
                                 std::to_string(t->shape.size()) + " dims");
  if (t->dtype != Dtype::F32 && t->dtype != Dtype::F16 && t->dtype != Dtype::BF16)
    throw Error("ERR_DTYPE", std::string("rope: ") + name + " must be f32, f16 or bf16, got " + dtype_name(t->dtype));
  for (int64_t d : t->shape)
    if (d > INT32_MAX) throw Error("ERR_SHAPE", std::string("rope: a dimension of ") + name + " is above 2^31 - 1");
}

RopeTensor contiguous(const TensorImpl* x, const TensorImpl* out) {
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

// invFreq as given: a Float64Array or an array of numbers (non-numbers refused here, values by rope_check).
std::shared_ptr<std::vector<double>> read_inv_freq(Baton& b) {
  auto inv = std::make_shared<std::vector<double>>();
  Napi::Value v = b.raw("invFreq");
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
    Napi::Float64Array a = v.As<Napi::Float64Array>();
    inv->assign(a.Data(), a.Data() + a.ElementLength());
  } else if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    const uint32_t n = a.Length();
    if (n > (1u << 24)) config_fail("invFreq", "has " + std::to_string(n) + " entries, more than any rotary dim");
    inv->reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber()) config_fail("invFreq", "entry " + std::to_string(i) + " is not a number");
      inv->push_back(e.As<Napi::Number>().DoubleValue());
    }
  } else {
    config_fail("invFreq", "must be a Float64Array or an array of numbers");
  }
  if (inv->empty()) config_fail("invFreq", "is empty");
  return inv;
}

int config_choice(Baton& b, const char* key, std::initializer_list<const char*> names, int def) {
  Napi::Value v = b.raw(key);
  if (v.IsUndefined()) return def;
  std::string all;
  int i = 0;
  if (v.IsString()) {
    const std::string s = v.As<Napi::String>().Utf8Value();
    for (const char* n : names) {
      if (s == n) return i;
      ++i;
    }
  }
  i = 0;
  for (const char* n : names) all += (i++ ? ", '" : "'") + std::string(n) + "'";
  config_fail(key, "must be one of " + all);
}

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Baton b(info, "rope");
  TensorImpl* x = b.tensor("x");
  TensorImpl* k = b.tensor_or_null("k");
  const bool inplace = b.flag("inplace", false);
  auto inv = read_inv_freq(b);
  Napi::Value rdv = b.raw("rotaryDim");
  int64_t rotary = inv ? 2 * (int64_t)inv->size() : 0;  // default: what invFreq covers
  if (!rdv.IsUndefined()) {
    const double r = rdv.IsNumber() ? rdv.As<Napi::Number>().DoubleValue() : NAN;
    if (!(r >= 0 && r <= INT32_MAX) || r != std::floor(r))
      config_fail("rotaryDim", "must be an even integer >= 2 and <= headDim");
    rotary = (int64_t)r;
  }
  TensorImpl* pos = b.tensor_or_null("positions");
  if (pos && b.has("positionOffset")) b.fail("ERR_ARG", "give positions or positionOffset, not both");
  const int64_t offset = b.integer("positionOffset", 0);
  const int style = config_choice(b, "style", {"neox", "interleaved"}, 0);
  const int precision = config_choice(b, "precision", {"exact", "fp32", "bf16"}, 0);
  Napi::Value afv = b.raw("attentionFactor");
  if (!afv.IsUndefined() && !afv.IsNumber()) config_fail("attentionFactor", "must be a number");
  const double af = afv.IsUndefined() ? 1.0 : afv.As<Napi::Number>().DoubleValue();
  const bool inverse = b.flag("inverse", false);
  b.finish();

  check_4d_float(x, "x");
  std::vector<const TensorImpl*> all{x};
  if (k) {
    check_4d_float(k, "k");
    if (k->dtype != x->dtype)
      b.fail("ERR_DTYPE", std::string("x is ") + dtype_name(x->dtype) + ", k is " + dtype_name(k->dtype));
    if (k->shape[0] != x->shape[0] || k->shape[1] != x->shape[1] || k->shape[3] != x->shape[3])
      b.fail("ERR_SHAPE", "x and k must share batch, seq and headDim");
    all.push_back(k);
  }
  const int64_t B = x->shape[0], S = x->shape[1], D = x->shape[3];
  if (pos) {
    if (pos->dtype != Dtype::I32) b.fail("ERR_DTYPE", std::string("positions must be i32, got ") + dtype_name(pos->dtype));
    check_shape(pos, {B, S}, "positions");
    all.push_back(pos);
  }
  check_same_device(all, "rope");
  if (rotary > INT32_MAX) config_fail("invFreq", "has more entries than any rotary dim");

  RopeParams p{};
  p.num_tensors = k ? 2 : 1;
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
  p.position_offset = pos ? 0 : offset;
  p.attention_factor = (float)af;
  p.inverse = inverse;
  p.inv_freq = inv ? inv->data() : nullptr;
  const int dev = x->device;

  Napi::Env env = info.Env();
  Napi::Value hx = inplace ? b.raw("x") : TensorImpl::Create(env, x->shape, x->dtype, dev);
  Napi::Value hk = k ? (inplace ? b.raw("k") : TensorImpl::Create(env, k->shape, k->dtype, dev)) : env.Undefined();
  TensorImpl* ox = TensorImpl::Unwrap(hx.As<Napi::Object>());
  TensorImpl* ok = k ? TensorImpl::Unwrap(hk.As<Napi::Object>()) : nullptr;
  p.t[0] = contiguous(x, ox);
  if (k) p.t[1] = contiguous(k, ok);
  try {
    // The one validity check, before anything is queued (it sees the real output pointers for aliasing).
    rope_check(p, inv ? (int64_t)inv->size() : 0, dev != kCpu);
  } catch (...) {
    if (!inplace) {
      ox->dispose(env);
      if (ok) ok->dispose(env);
    }
    throw;
  }
  Napi::Object res = result(env, {{"x", hx}});
  if (k) res.Set("k", hk);

  const bool work = (int64_t)B * S * (x->shape[2] + (k ? k->shape[2] : 0)) > 0;
  if (!work) return res;
  // Read: x, k, positions; written: the outputs (in place, x's storage is both): a failure marks only
  // the outputs. `inv` goes with the task (the CPU reads it when the task runs).
  launch_op(dev, all, {ox, ok}, [p, inv] { rope_cpu(p); },
            MB_CUDA_FN([p, inv, dev](cudaStream_t stream) mutable {
              // The frequencies go up with the launch, on the same stream; the block is dropped after
              // the launch (later work on the stream is ordered after this kernel). From pageable
              // memory the copy returns once `inv` is staged.
              StoragePtr dinv = alloc_storage(dev, inv->size() * sizeof(double));
              cuda_check(cudaMemcpyAsync(dinv->ptr, inv->data(), inv->size() * sizeof(double),
                                         cudaMemcpyHostToDevice, stream),
                         "rope invFreq upload");
              p.inv_freq = static_cast<const double*>(dinv->ptr);
              rope_cuda(p, stream);
            }));
  return res;
}
MB_EXPORT("rope", Rope);

}  // namespace
}  // namespace mb
