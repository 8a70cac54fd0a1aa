// Flash attention exports: one named-options object each (csrc/binding/baton.h).
//
// attentionForward({ q, k, v, scale, causal?, qOffset?, kOffset?, kernel?, out?, lse? }) -> { out, lse }
//   kernel (CUDA forward only): 'auto' (default) | 'mma' (AttnFwdKernel).
// attentionBackward({ dout, q, k, v, out, lse, scale, causal?, qOffset?, kOffset?, kernel?, dq?, dk?, dv? })
//   -> { dq, dk, dv }
//   q/out/dout/dq [b, sq, hq, d], k/v/dk/dv [b, sk, hkv, d] (contiguous), lse f32 [b, hq, sq].
//   kernel (CUDA backward only): 'auto' (default) | 'mma' | 'mma-small' (AttnBwdKernel).
//   Outputs are allocated here unless given (as with axpby's out; tests pass NaN-poisoned ones); given
//   outputs must not share memory with any other argument. Validity is decided by attention_fwd_check / attention_bwd_check
//   (csrc/ops/attention); this file reads the baton, checks that the tensors agree with the struct it
//   builds (shapes, dtypes, device; fresh outputs cannot alias the inputs), and queues the launch.
// attentionCudaCheck({ dtype, batch, seqQ, seqK, headsQ, headsKv, headDim }) -> '' when the CUDA
//   kernels take this problem, else their reason (asks the kernels' own validation; no GPU needed).
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "../ops/attention/attention.h"
#include "nn_args.h"

namespace mb {
namespace {

struct Dims {
  int64_t b, sq, sk, hq, hkv, d;
};

void check_4d(const Baton& b, const TensorImpl* t, const char* name) {
  if (t->shape.size() != 4)
    b.fail("ERR_SHAPE", std::string(name) + " must be 4-D [batch, seq, heads, headDim], got " +
                            std::to_string(t->shape.size()) + " dims");
  for (int64_t x : t->shape)
    if (x > INT32_MAX) b.fail("ERR_SHAPE", std::string("a dimension of ") + name + " is above 2^31 - 1");
}

void check_like(const Baton& b, const TensorImpl* t, const std::vector<int64_t>& shape, Dtype dt, const char* name) {
  if (t->shape != shape)
    b.fail("ERR_SHAPE", std::string(name) + " must have shape " + nnb::shape_str(shape) + ", got " + nnb::shape_str(t->shape));
  if (t->dtype != dt)
    b.fail("ERR_DTYPE", std::string(name) + " is " + dtype_name(t->dtype) + ", expected " + dtype_name(dt));
}

// q, k, v: 4-D, k and v alike, same batch and head dim, q's dtype. Head counts, dtype family and
// everything else are the check's.
Dims dims_of(const Baton& b, const TensorImpl* q, const TensorImpl* k, const TensorImpl* v) {
  check_4d(b, q, "q");
  check_4d(b, k, "k");
  check_4d(b, v, "v");
  if (k->shape[0] != q->shape[0])
    b.fail("ERR_SHAPE", "q and k have different batch sizes (" + std::to_string(q->shape[0]) + " and " +
                            std::to_string(k->shape[0]) + ")");
  if (k->shape[3] != q->shape[3])
    b.fail("ERR_SHAPE", "q and k have different head dims (" + std::to_string(q->shape[3]) + " and " +
                            std::to_string(k->shape[3]) + ")");
  check_like(b, k, k->shape, q->dtype, "k");
  check_like(b, v, k->shape, q->dtype, "v (like k)");
  return {q->shape[0], q->shape[1], k->shape[1], q->shape[2], k->shape[2], q->shape[3]};
}

struct Scalars {
  float scale;
  bool causal;
  int64_t q_offset, k_offset;
};

Scalars read_scalars(Baton& b) {
  Scalars s;
  const double scale = b.number("scale");
  // The kernels take the scale as f32; beyond f32's range it becomes NaN, which the check refuses
  // like 0, negative and non-finite scales (converting an out-of-range double is undefined).
  s.scale = std::fabs(scale) <= FLT_MAX ? (float)scale : NAN;
  s.causal = b.flag("causal", false);
  s.q_offset = b.integer("qOffset", 0);
  s.k_offset = b.integer("kOffset", 0);
  return s;
}

// Outputs must not share bytes with any other argument (the same tensor passed twice included):
// the kernels read inputs while writing outputs. args: every tensor argument, outputs last.
void check_no_overlap(const Baton& b, const std::vector<const TensorImpl*>& args, size_t n_outputs) {
  for (size_t i = args.size() - n_outputs; i < args.size(); ++i)
    for (size_t j = 0; j < args.size(); ++j)
      if (j != i && overlaps(args[i], args[j])) b.fail("ERR_ARG", "an output shares memory with another argument");
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

// The outputs: given ones (checked against the expected shape and dtype) or new handles, which are
// disposed again if the call is refused.
struct Outputs {
  explicit Outputs(Baton& baton) : b(baton) {}
  Baton& b;
  std::vector<Napi::Value> handles;
  std::vector<TensorImpl*> impls, created;
  bool keep = false;
  TensorImpl* get(const char* key, const std::vector<int64_t>& shape, Dtype dt, int dev, const char* what) {
    TensorImpl* t = b.tensor_or_null(key);
    if (t) {
      check_like(b, t, shape, dt, what);
      handles.push_back(b.raw(key));
    } else {
      handles.push_back(TensorImpl::Create(b.env(), shape, dt, dev));
      t = TensorImpl::Unwrap(handles.back().As<Napi::Object>());
      created.push_back(t);
    }
    impls.push_back(t);
    return t;
  }
  ~Outputs() {
    if (!keep)
      for (TensorImpl* t : created) t->dispose(b.env());
  }
};

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  Baton b(info, "attention");
  TensorImpl* q = b.tensor("q");
  TensorImpl* k = b.tensor("k");
  TensorImpl* v = b.tensor("v");
  const Scalars s = read_scalars(b);
  const AttnFwdKernel kernel = (AttnFwdKernel)b.choice("kernel", {"auto", "mma"}, 0);
  const bool given = b.has("out") || b.has("lse");
  const Dims d = dims_of(b, q, k, v);
  const int dev = q->device;
  Outputs o(b);
  TensorImpl* out = o.get("out", q->shape, q->dtype, dev, "out (like q)");
  TensorImpl* lse = o.get("lse", {d.b, d.hq, d.sq}, Dtype::F32, dev, "lse ([batch, headsQ, seqQ], f32)");
  b.finish();
  check_same_device({q, k, v, out, lse}, "attention");
  if (given) check_no_overlap(b, {q, k, v, out, lse}, 2);

  AttnFwdParams p{};
  fill_fwd(p, d, q, k, v, out, lse, s);
  attention_fwd_check(p, dev != kCpu);  // the one validity check, before anything is queued

  // Not the (params, launcher) form: the CUDA launcher also takes the kernel choice.
  (void)kernel;  // unused in CPU-only builds
  launch_op(dev, {q, k, v}, {out, lse}, [p] { attention_fwd_cpu(p); },
            MB_CUDA_FN([p, kernel](cudaStream_t stream) { attention_fwd_cuda(p, stream, kernel); }));
  o.keep = true;
  return result(info.Env(), {{"out", o.handles[0]}, {"lse", o.handles[1]}});
}
MB_EXPORT("attentionForward", AttentionForward);

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Baton b(info, "attention");
  TensorImpl* dout = b.tensor("dout");
  TensorImpl* q = b.tensor("q");
  TensorImpl* k = b.tensor("k");
  TensorImpl* v = b.tensor("v");
  TensorImpl* out = b.tensor("out");
  TensorImpl* lse = b.tensor("lse");
  const Scalars s = read_scalars(b);
  const AttnBwdKernel kernel = (AttnBwdKernel)b.choice("kernel", {"auto", "mma", "mma-small"}, 0);
  const bool given = b.has("dq") || b.has("dk") || b.has("dv");
  const Dims d = dims_of(b, q, k, v);
  check_like(b, dout, q->shape, q->dtype, "dout (like q)");
  check_like(b, out, q->shape, q->dtype, "out (like q)");
  check_like(b, lse, {d.b, d.hq, d.sq}, Dtype::F32, "lse ([batch, headsQ, seqQ], f32)");
  const int dev = q->device;
  Outputs o(b);
  TensorImpl* dq = o.get("dq", q->shape, q->dtype, dev, "dq (like q)");
  TensorImpl* dk = o.get("dk", k->shape, q->dtype, dev, "dk (like k)");
  TensorImpl* dv = o.get("dv", v->shape, q->dtype, dev, "dv (like v)");
  b.finish();
  check_same_device({dout, q, k, v, out, lse, dq, dk, dv}, "attention");
  if (given) check_no_overlap(b, {dout, q, k, v, out, lse, dq, dk, dv}, 3);

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
  p.workspace = nullptr;  // the CPU allocates its own scratch; CUDA's is allocated with the launch
  attention_bwd_check(p, dev != kCpu, kernel);  // the one validity check, before anything is queued

  launch_op(dev, {dout, q, k, v, out, lse}, {dq, dk, dv}, [p] { attention_bwd_cpu(p); },
            MB_CUDA_FN([p, dev, kernel](cudaStream_t stream) mutable {
              // Dropped right after the launch: the block goes back to the cache and later
              // work on this stream is ordered after the kernels that use it.
              const size_t bytes = attention_bwd_workspace_bytes(p, kernel);
              StoragePtr ws = bytes ? alloc_storage(dev, bytes) : nullptr;
              p.workspace = ws ? ws->ptr : nullptr;
              attention_bwd_cuda(p, stream, kernel);
            }));
  o.keep = true;
  return result(info.Env(), {{"dq", o.handles[0]}, {"dk", o.handles[1]}, {"dv", o.handles[2]}});
}
MB_EXPORT("attentionBackward", AttentionBackward);

Napi::Value AttentionCudaCheck(const Napi::CallbackInfo& info) {
  Baton b(info, "attentionCudaCheck");
  const Dtype dt = b.dtype("dtype");
  const int64_t dims[6] = {b.integer("batch"), b.integer("seqQ"), b.integer("seqK"),
                           b.integer("headsQ"), b.integer("headsKv"), b.integer("headDim")};
  b.finish();
  for (int64_t x : dims)
    if (x < 0 || x > INT32_MAX) b.fail("ERR_ARG", "dimensions must be in [0, 2^31)");
#if defined(MEGABEAM_CUDA)
  AttnBwdParams p{};
  p.batch = (int)dims[0];
  p.seqlen_q = (int)dims[1];
  p.seqlen_k = (int)dims[2];
  p.heads_q = (int)dims[3];
  p.heads_kv = (int)dims[4];
  p.head_dim = (int)dims[5];
  p.scale = 1.f;
  p.dtype = dt;
  try {
    attention_bwd_workspace_bytes(p);  // the launchers' shared configuration check only
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

// debugAttentionNoTma(on) -> TMA descriptors refused so far. While on, the Hopper attention kernels get no TMA
// descriptors (as on a driver without the encoder) and take their mma.sync fallbacks. Test hook.
Napi::Value DebugAttentionNoTma(const Napi::CallbackInfo& info) {
  attention_debug_set_no_tma(bool_arg(info[0], "on"));
  return Napi::Number::New(info.Env(), (double)attention_debug_tma_refusals());
}
MB_TEST_HOOK("debugAttentionNoTma", DebugAttentionNoTma);

}  // namespace
}  // namespace mb
