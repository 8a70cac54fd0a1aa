// Flash attention exports. lib/attention.ts validates everything first (and allocates the outputs);
// the checks here keep the native side safe on its own, before anything is queued, because an
// error thrown by a CPU task would only surface at the next sync point.
//
// attentionForward(q, k, v, out, lse, scale, causal, qOffset, kOffset)
// attentionBackward(dout, q, k, v, out, lse, dq, dk, dv, scale, causal, qOffset, kOffset)
//   q/out/dout/dq [b, sq, hq, d], k/v/dk/dv [b, sk, hkv, d] (contiguous), lse f32 [b, hq, sq].
// attentionCudaCheck(dtype, batch, seqQ, seqK, headsQ, headsKv, headDim) -> '' when the CUDA kernels
//   take this problem, else their reason (asks the kernels' own validation; no GPU needed).
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "../ops/attention/attention.h"
#include "binding.h"

namespace mb {
namespace {

struct Dims {
  int64_t b, sq, sk, hq, hkv, d;
};

void check_4d_float(const TensorImpl* t, const char* name) {
  if (t->shape.size() != 4)
    throw Error("ERR_SHAPE", std::string("attention: ") + name + " must be 4-D [batch, seq, heads, headDim], got " +
                                 std::to_string(t->shape.size()) + " dims");
  if (t->dtype != Dtype::F32 && t->dtype != Dtype::F16 && t->dtype != Dtype::BF16)
    throw Error("ERR_DTYPE", std::string("attention: ") + name + " must be f32, f16 or bf16, got " + dtype_name(t->dtype));
}

void check_dtype(const TensorImpl* t, Dtype want, const char* name) {
  if (t->dtype != want)
    throw Error("ERR_DTYPE", std::string("attention: ") + name + " is " + dtype_name(t->dtype) + ", expected " +
                                 dtype_name(want));
}

Dims dims_of(const TensorImpl* q, const TensorImpl* k, const TensorImpl* v) {
  check_4d_float(q, "q");
  check_4d_float(k, "k");
  check_4d_float(v, "v");
  check_dtype(k, q->dtype, "k");
  check_dtype(v, q->dtype, "v");
  check_shape(v, k->shape, "v");
  Dims d{q->shape[0], q->shape[1], k->shape[1], q->shape[2], k->shape[2], q->shape[3]};
  if (k->shape[0] != d.b) throw Error("ERR_SHAPE", "attention: q and k have different batch sizes");
  if (k->shape[3] != d.d) throw Error("ERR_SHAPE", "attention: q and k have different head dims");
  if (d.d < 1 || d.hq < 1 || d.hkv < 1) throw Error("ERR_SHAPE", "attention: heads and headDim must be >= 1");
  if (d.hq % d.hkv != 0)
    throw Error("ERR_SHAPE", "attention: q heads (" + std::to_string(d.hq) + ") must be a multiple of kv heads (" +
                                 std::to_string(d.hkv) + ")");
  for (int64_t x : {d.b, d.sq, d.sk, d.hq, d.hkv, d.d})
    if (x > INT32_MAX) throw Error("ERR_SHAPE", "attention: dimension too large");
  return d;
}

struct Scalars {
  float scale;
  bool causal;
  int64_t q_offset, k_offset;
};

Scalars scalars_at(const Napi::CallbackInfo& info, size_t i) {
  Scalars s;
  const double scale = number_arg(info[i], "scale");
  if (!std::isfinite(scale) || !(scale > 0) || !std::isfinite((float)scale) || (float)scale <= 0.f)
    throw Error("ERR_ARG", "attention: scale must be a finite number > 0");
  s.scale = (float)scale;
  s.causal = bool_arg(info[i + 1], "causal");
  s.q_offset = int_arg(info[i + 2], "qOffset");
  s.k_offset = int_arg(info[i + 3], "kOffset");
  return s;
}

// Outputs must not share bytes with any other argument (the same tensor passed twice included):
// the kernels read inputs while writing outputs. args: every tensor argument, outputs last.
void check_no_overlap(const std::vector<const TensorImpl*>& args, size_t n_outputs) {
  for (size_t i = args.size() - n_outputs; i < args.size(); ++i) {
    const char* ob = static_cast<const char*>(args[i]->data());
    if (!ob || args[i]->nbytes() == 0) continue;
    for (size_t j = 0; j < args.size(); ++j) {
      if (j == i) continue;
      const char* tb = static_cast<const char*>(args[j]->data());
      if (!tb || args[j]->nbytes() == 0) continue;
      if (ob < tb + args[j]->nbytes() && tb < ob + args[i]->nbytes())
        throw Error("ERR_ARG", "attention: an output shares memory with another argument");
    }
  }
}

void check_device_dtype(int device, Dtype dt) {
  if (device != kCpu && dt != Dtype::F16 && dt != Dtype::BF16)
    throw Error("ERR_UNSUPPORTED", std::string("attention: CUDA supports f16 and bf16, got ") + dtype_name(dt));
}

void fill_fwd(AttnFwdParams& p, const Dims& d, const TensorImpl* q, const TensorImpl* k, const TensorImpl* v,
              const TensorImpl* out, const TensorImpl* lse, const Scalars& s) {
  p.q = q->data();
  p.k = k->data();
  p.v = v->data();
  p.out = out->data();
  p.lse = static_cast<float*>(lse->data());
  p.q_head_stride = p.o_head_stride = d.d;
  p.q_row_stride = p.o_row_stride = d.hq * d.d;
  p.q_batch_stride = p.o_batch_stride = d.sq * d.hq * d.d;
  p.k_head_stride = p.v_head_stride = d.d;
  p.k_row_stride = p.v_row_stride = d.hkv * d.d;
  p.k_batch_stride = p.v_batch_stride = d.sk * d.hkv * d.d;
  p.batch = (int)d.b;
  p.seqlen_q = (int)d.sq;
  p.seqlen_k = (int)d.sk;
  p.heads_q = (int)d.hq;
  p.heads_kv = (int)d.hkv;
  p.head_dim = (int)d.d;
  p.scale = s.scale;
  p.causal = s.causal;
  p.q_offset = s.q_offset;
  p.k_offset = s.k_offset;
  p.dtype = q->dtype;
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  TensorImpl* q = tensor_arg(info[0], "q");
  TensorImpl* k = tensor_arg(info[1], "k");
  TensorImpl* v = tensor_arg(info[2], "v");
  TensorImpl* out = tensor_arg(info[3], "out");
  TensorImpl* lse = tensor_arg(info[4], "lse");
  const Dims d = dims_of(q, k, v);
  check_shape(out, q->shape, "out");
  check_dtype(out, q->dtype, "out");
  check_shape(lse, {d.b, d.hq, d.sq}, "lse");
  check_dtype(lse, Dtype::F32, "lse");
  check_same_device({q, k, v, out, lse}, "attention");
  check_device_dtype(q->device, q->dtype);
  const Scalars s = scalars_at(info, 5);
  check_no_overlap({q, k, v, out, lse}, 2);

  AttnFwdParams p{};
  fill_fwd(p, d, q, k, v, out, lse, s);
  run_on_device(q->device, {q->storage, k->storage, v->storage, out->storage, lse->storage}, [p](void* stream) {
#if defined(MEGABEAM_CUDA)
    if (stream) {
      attention_fwd_cuda(p, (cudaStream_t)stream);
      return;
    }
#endif
    (void)stream;
    attention_fwd_cpu(p);
  });
  return info.Env().Undefined();
}
MB_EXPORT("attentionForward", AttentionForward);

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  TensorImpl* dout = tensor_arg(info[0], "dout");
  TensorImpl* q = tensor_arg(info[1], "q");
  TensorImpl* k = tensor_arg(info[2], "k");
  TensorImpl* v = tensor_arg(info[3], "v");
  TensorImpl* out = tensor_arg(info[4], "out");
  TensorImpl* lse = tensor_arg(info[5], "lse");
  TensorImpl* dq = tensor_arg(info[6], "dq");
  TensorImpl* dk = tensor_arg(info[7], "dk");
  TensorImpl* dv = tensor_arg(info[8], "dv");
  const Dims d = dims_of(q, k, v);
  for (auto [t, name] : {std::pair<TensorImpl*, const char*>{dout, "dout"}, {out, "out"}, {dq, "dq"}}) {
    check_shape(t, q->shape, name);
    check_dtype(t, q->dtype, name);
  }
  for (auto [t, name] : {std::pair<TensorImpl*, const char*>{dk, "dk"}, {dv, "dv"}}) {
    check_shape(t, k->shape, name);
    check_dtype(t, q->dtype, name);
  }
  check_shape(lse, {d.b, d.hq, d.sq}, "lse");
  check_dtype(lse, Dtype::F32, "lse");
  check_same_device({dout, q, k, v, out, lse, dq, dk, dv}, "attention");
  check_device_dtype(q->device, q->dtype);
  const Scalars s = scalars_at(info, 9);
  check_no_overlap({dout, q, k, v, out, lse, dq, dk, dv}, 3);

  AttnBwdParams p{};
  fill_fwd(p, d, q, k, v, out, lse, s);
  p.dout = dout->data();
  p.dq = dq->data();
  p.dk = dk->data();
  p.dv = dv->data();
  p.do_head_stride = p.dq_head_stride = d.d;
  p.do_row_stride = p.dq_row_stride = d.hq * d.d;
  p.do_batch_stride = p.dq_batch_stride = d.sq * d.hq * d.d;
  p.dk_head_stride = p.dv_head_stride = d.d;
  p.dk_row_stride = p.dv_row_stride = d.hkv * d.d;
  p.dk_batch_stride = p.dv_batch_stride = d.sk * d.hkv * d.d;
  p.workspace = nullptr;  // the CPU allocates its own scratch
  const int dev = q->device;
  run_on_device(dev,
                {dout->storage, q->storage, k->storage, v->storage, out->storage, lse->storage, dq->storage,
                 dk->storage, dv->storage},
                [p, dev](void* stream) mutable {
#if defined(MEGABEAM_CUDA)
                  if (stream) {
                    // Dropped right after the launch: the block goes back to the cache and later
                    // work on this stream is ordered after the kernels that use it.
                    const size_t bytes = attention_bwd_workspace_bytes(p);
                    StoragePtr ws = bytes ? alloc_storage(dev, bytes) : nullptr;
                    p.workspace = ws ? ws->ptr : nullptr;
                    attention_bwd_cuda(p, (cudaStream_t)stream);
                    return;
                  }
#endif
                  (void)stream;
                  (void)dev;
                  attention_bwd_cpu(p);
                });
  return info.Env().Undefined();
}
MB_EXPORT("attentionBackward", AttentionBackward);

Napi::Value AttentionCudaCheck(const Napi::CallbackInfo& info) {
  const Dtype dt = dtype_arg(info[0], "dtype");
  const int64_t b = int_arg(info[1], "batch"), sq = int_arg(info[2], "seqQ"), sk = int_arg(info[3], "seqK");
  const int64_t hq = int_arg(info[4], "headsQ"), hkv = int_arg(info[5], "headsKv"), hd = int_arg(info[6], "headDim");
  for (int64_t x : {b, sq, sk, hq, hkv, hd})
    if (x < 0 || x > INT32_MAX) throw Error("ERR_ARG", "attentionCudaCheck: dimensions must be in [0, 2^31)");
#if defined(MEGABEAM_CUDA)
  AttnBwdParams p{};
  p.batch = (int)b;
  p.seqlen_q = (int)sq;
  p.seqlen_k = (int)sk;
  p.heads_q = (int)hq;
  p.heads_kv = (int)hkv;
  p.head_dim = (int)hd;
  p.scale = 1.f;
  p.dtype = dt;
  try {
    attention_bwd_workspace_bytes(p);  // runs the launchers' shared configuration check only
  } catch (const Error& e) {
    return Napi::String::New(info.Env(), e.what());
  }
  return Napi::String::New(info.Env(), "");
#else
  (void)dt;
  return Napi::String::New(info.Env(), "this build has no CUDA kernels");
#endif
}
MB_EXPORT("attentionCudaCheck", AttentionCudaCheck);

}  // namespace
}  // namespace mb
