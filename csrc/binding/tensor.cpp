// Tensor creation, conversion, transfer, read-back, sync and memory queries.
#include <cstring>
#include <functional>

#include "../common/parallel.h"
#include "../ops/tensor/tensor_ops.h"
#include "binding.h"

namespace mb {
namespace {

std::vector<int64_t> shape_arg(const Napi::Value& v) {
  if (!v.IsArray()) throw Error("ERR_SHAPE", "shape must be an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    int64_t d = int_arg(a.Get(i), "shape");
    if (d < 0) throw Error("ERR_SHAPE", "negative dimension in shape");
    s.push_back(d);
  }
  return s;
}

// Promise settled on the main thread after `work` ran on a libuv thread.
class Deferred : public Napi::AsyncWorker {
 public:
  Deferred(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done)
      : Napi::AsyncWorker(env), done(std::move(done)), d_(Napi::Promise::Deferred::New(env)), work_(std::move(work)) {}
  Napi::Promise promise() { return d_.Promise(); }
  void Execute() override {
    try {
      work_();
    } catch (const Error& e) {
      code_ = e.code; msg_ = e.what();
    } catch (const std::exception& e) {
      code_ = "ERR_NATIVE"; msg_ = e.what();
    }
  }
  void OnOK() override {
    if (!code_.empty()) {
      d_.Reject(to_js_error(Env(), code_, msg_).Value());
      return;
    }
    try {
      d_.Resolve(done(Env()));
    } catch (const Error& e) {
      d_.Reject(to_js_error(Env(), e.code, e.what()).Value());
    }
  }
  Napi::ObjectReference keep;  // JS objects that must outlive the work
  std::function<Napi::Value(Napi::Env)> done;

 private:
  Napi::Promise::Deferred d_;
  std::function<void()> work_;
  std::string code_, msg_;
};

void throw_cpu_pending_error() {
  std::string code;
  std::string e = cpu_wait_idle(&code);
  if (!e.empty()) throw Error(code.empty() ? "ERR_NATIVE" : code, e);
}

// empty(shape, dtype, device) -> handle
Napi::Value Empty(const Napi::CallbackInfo& info) {
  auto shape = shape_arg(info[0]);
  Dtype dt = dtype_arg(info[1], "dtype");
  int dev = device_arg(info[2], "device");
  return TensorImpl::Create(info.Env(), shape, dt, dev);
}
MB_EXPORT("empty", Empty);

// view(handle, shape, offset = 0) -> handle sharing the storage: `shape` elements starting
// `offset` elements into the tensor (a reshape, or a contiguous slice).
Napi::Value View(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  auto shape = shape_arg(info[1]);
  int64_t off = info.Length() > 2 && !info[2].IsUndefined() ? int_arg(info[2], "offset") : 0;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  if (off < 0 || off > t->numel() || n > t->numel() - off)
    throw Error("ERR_SHAPE", "view: shape and offset exceed the tensor");
  Napi::Object obj = TensorImpl::ctor->New({});
  TensorImpl* v = TensorImpl::Unwrap(obj);
  v->storage = t->storage;
  v->shape = shape;
  v->dtype = t->dtype;
  v->device = t->device;
  v->offset = t->offset + off;
  return obj;
}
MB_EXPORT("view", View);

// write(handle, typedArray): fills a tensor from host data, in issue order on its device. Float32Array/Float64Array
// for float dtypes (rounded to nearest even), Int32Array for i32, Uint16Array raw bits for f16/bf16.
Napi::Value Write(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  if (!info[1].IsTypedArray()) throw Error("ERR_ARG", "data must be a typed array");
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  int64_t n = t->numel();
  if ((int64_t)ta.ElementLength() != n)
    throw Error("ERR_SHAPE", "data has " + std::to_string(ta.ElementLength()) + " elements, shape needs " + std::to_string(n));
  const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  napi_typedarray_type tt = ta.TypedArrayType();
  std::vector<uint8_t> staged;
  // Convert into a staging buffer here (the JS array may change after we return), then write it in
  // issue order on the tensor's device: no wait for queued work, so creation never blocks the event loop.
  staged.resize(t->nbytes());
  void* host = staged.data();
  if (tt == napi_float32_array && t->dtype != Dtype::I32) {
    if (t->dtype == Dtype::F32) std::memcpy(host, src, n * 4);
    else parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) store_from_f32(host, t->dtype, i, ((const float*)src)[i]);
    });
  } else if (tt == napi_float64_array && t->dtype != Dtype::I32) {
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) store_from_f32(host, t->dtype, i, (float)((const double*)src)[i]);
    });
  } else if (tt == napi_int32_array && t->dtype == Dtype::I32) {
    std::memcpy(host, src, n * 4);
  } else if (tt == napi_uint16_array && (t->dtype == Dtype::F16 || t->dtype == Dtype::BF16)) {
    std::memcpy(host, src, n * 2);
  } else {
    throw Error("ERR_DTYPE", std::string("cannot write this typed array into a ") + dtype_name(t->dtype) + " tensor");
  }
  if (t->device == kCpu) {
    auto buf = std::make_shared<std::vector<uint8_t>>(std::move(staged));
    void* dst = t->data();
    cpu_enqueue([st = t->storage, buf, dst]() { std::memcpy(dst, buf->data(), buf->size()); });
    return info.Env().Undefined();
  }
#if defined(MEGABEAM_CUDA)
  {
    CudaDeviceGuard g(t->device);
    // From pageable memory this returns once the data is staged, so `staged` may go.
    cuda_check(cudaMemcpyAsync(t->data(), host, t->nbytes(), cudaMemcpyHostToDevice, cuda_stream(t->device)),
               "host to device copy");
  }
#endif
  return info.Env().Undefined();
}
MB_EXPORT("write", Write);

// fill(handle, value)
Napi::Value Fill(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  FillParams p{t->data(), t->dtype, t->numel(), number_arg(info[1], "value")};
  run_on_device(t->device, {t->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { fill_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    fill_cpu(p);
  });
  return info.Env().Undefined();
}
MB_EXPORT("fill", Fill);

// random(handle, kind, seedHi, seedLo, a, b)
Napi::Value Random(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  if (t->dtype == Dtype::I32) throw Error("ERR_DTYPE", "random values need a float dtype");
  int64_t kind = int_arg(info[1], "kind");
  int64_t hi = int_arg(info[2], "seedHi"), lo = int_arg(info[3], "seedLo");
  if (hi < 0 || hi > 0xffffffffLL || lo < 0 || lo > 0xffffffffLL) throw Error("ERR_ARG", "seed words must be uint32");
  RandParams p{t->data(), t->dtype, t->numel(), ((uint64_t)hi << 32) | (uint64_t)lo,
               kind == 0 ? RandKind::Normal : RandKind::Uniform, (float)number_arg(info[4], "a"),
               (float)number_arg(info[5], "b")};
  run_on_device(t->device, {t->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
    if (s) { rand_cuda(p, (cudaStream_t)s); return; }
#endif
    (void)s;
    rand_cpu(p);
  });
  return info.Env().Undefined();
}
MB_EXPORT("random", Random);

// copy(dst, src): same element count; dtype conversion on one device, or a same-dtype copy across
// devices (CPU<->CUDA copies are sync points: they wait for the source's queued work).
Napi::Value Copy(const Napi::CallbackInfo& info) {
  TensorImpl* dst = tensor_arg(info[0], "dst");
  TensorImpl* src = tensor_arg(info[1], "src");
  if (dst->numel() != src->numel()) throw Error("ERR_SHAPE", "copy: element counts differ");
  if (dst->device == src->device) {
    CastParams p{src->data(), src->dtype, dst->data(), dst->dtype, src->numel()};
    run_on_device(dst->device, {dst->storage, src->storage}, [p](void* s) {
#if defined(MEGABEAM_CUDA)
      if (s) { cast_cuda(p, (cudaStream_t)s); return; }
#endif
      (void)s;
      cast_cpu(p);
    });
    return info.Env().Undefined();
  }
  if (dst->dtype != src->dtype) throw Error("ERR_DTYPE", "copy across devices needs equal dtypes");
#if defined(MEGABEAM_CUDA)
  size_t n = src->nbytes();
  if (src->device == kCpu) {
    throw_cpu_pending_error();
    CudaDeviceGuard g(dst->device);
    cuda_check(cudaMemcpyAsync(dst->data(), src->data(), n, cudaMemcpyHostToDevice, cuda_stream(dst->device)), "copy to CUDA");
  } else if (dst->device == kCpu) {
    throw_cpu_pending_error();
    CudaDeviceGuard g(src->device);
    cudaStream_t s = cuda_stream(src->device);
    cuda_check(cudaMemcpyAsync(dst->data(), src->data(), n, cudaMemcpyDeviceToHost, s), "copy to CPU");
    cuda_check(cudaStreamSynchronize(s), "copy to CPU");
  } else {
    // Peer copy on the destination's stream, ordered after the source's queued work; the source
    // stream then waits for the copy so the source block is not reused under it.
    cudaStream_t ss = cuda_stream(src->device), ds = cuda_stream(dst->device);
    cudaEvent_t e1, e2;
    {
      CudaDeviceGuard g(src->device);
      cuda_check(cudaEventCreateWithFlags(&e1, cudaEventDisableTiming), "event");
      cuda_check(cudaEventRecord(e1, ss), "event record");
    }
    {
      CudaDeviceGuard g(dst->device);
      cuda_check(cudaStreamWaitEvent(ds, e1, 0), "stream wait");
      cuda_check(cudaMemcpyPeerAsync(dst->data(), dst->device, src->data(), src->device, n, ds), "peer copy");
      cuda_check(cudaEventCreateWithFlags(&e2, cudaEventDisableTiming), "event");
      cuda_check(cudaEventRecord(e2, ds), "event record");
    }
    {
      CudaDeviceGuard g(src->device);
      cuda_check(cudaStreamWaitEvent(ss, e2, 0), "stream wait");
    }
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
  }
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
  return info.Env().Undefined();
}
MB_EXPORT("copy", Copy);

// read(handle, raw) -> Promise<Float32Array | Int32Array | Uint16Array (raw f16/bf16 bits)>
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorImpl* t = tensor_arg(info[0], "tensor");
  bool raw = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  int64_t n = t->numel();
  if (n > (int64_t(1) << 31) - 1) throw Error("ERR_UNSUPPORTED", "tensor too large to read back as one array");
  Dtype dt = t->dtype;
  bool half = dt == Dtype::F16 || dt == Dtype::BF16;
  Napi::TypedArray out;
  if (raw && half) out = Napi::Uint16Array::New(env, n);
  else if (dt == Dtype::I32) out = Napi::Int32Array::New(env, n);
  else out = Napi::Float32Array::New(env, n);
  void* host_out = static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset();
  bool convert = half && !raw;

  std::function<void()> work;
  if (t->device == kCpu) {
    StoragePtr st = t->storage;
    const void* src = t->data();
    cpu_enqueue([st, src, host_out, n, dt, convert]() {
      if (convert) {
        parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) ((float*)host_out)[i] = load_as_f32(src, dt, i);
        });
      } else {
        std::memcpy(host_out, src, (size_t)n * dtype_size(dt));
      }
    });
    work = [] { throw_cpu_pending_error(); };
  } else {
#if defined(MEGABEAM_CUDA)
    CudaDeviceGuard g(t->device);
    size_t bytes = t->nbytes();
    void* staging = nullptr;
    if (convert) {
      cuda_check(cudaMallocHost(&staging, bytes ? bytes : 1), "pinned staging buffer");
    }
    cudaEvent_t ev;
    cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
    cudaStream_t s = cuda_stream(t->device);
    // Enqueued in stream order, so later in-place ops cannot change what we read.
    cuda_check(cudaMemcpyAsync(convert ? staging : host_out, t->data(), bytes, cudaMemcpyDeviceToHost, s), "read");
    cuda_check(cudaEventRecord(ev, s), "event record");
    int dev = t->device;
    work = [ev, staging, host_out, n, dt, convert, dev] {
      cudaError_t e = cudaEventSynchronize(ev);
      cudaEventDestroy(ev);
      if (e == cudaSuccess && convert) {
        parallel_for(n, 1 << 16, [&](int64_t b, int64_t en) {
          for (int64_t i = b; i < en; ++i) ((float*)host_out)[i] = load_as_f32(staging, dt, i);
        });
      }
      if (staging) { cudaSetDevice(dev); cudaFreeHost(staging); }
      cuda_check(e, "CUDA work before read");
    };
#endif
  }
  auto* w = new Deferred(env, work, nullptr);
  // Resolve with the typed array, kept alive by the worker until then.
  Napi::Object holder = Napi::Object::New(env);
  holder.Set("out", out);
  w->keep = Napi::Persistent(holder);
  w->done = [w](Napi::Env) { return w->keep.Value().Get("out"); };
  auto p = w->promise();
  w->Queue();
  return p;
}
MB_EXPORT("read", Read);

// synchronize(device) -> Promise<void>: waits for queued work; rejects with its first error.
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  std::function<void()> work;
  if (dev == kCpu) {
    work = [] { throw_cpu_pending_error(); };
  } else {
#if defined(MEGABEAM_CUDA)
    CudaDeviceGuard g(dev);
    cudaEvent_t ev;
    cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
    cuda_check(cudaEventRecord(ev, cuda_stream(dev)), "event record");
    work = [ev] {
      cudaError_t e = cudaEventSynchronize(ev);
      cudaEventDestroy(ev);
      cuda_check(e, "CUDA work");
    };
#endif
  }
  auto* w = new Deferred(info.Env(), work, [](Napi::Env env) { return env.Undefined(); });
  auto p = w->promise();
  w->Queue();
  return p;
}
MB_EXPORT("synchronize", Synchronize);

// synchronizeSync(device): blocks the calling thread (benchmarks and process exit only).
Napi::Value SynchronizeSync(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  if (dev == kCpu) throw_cpu_pending_error();
#if defined(MEGABEAM_CUDA)
  else {
    CudaDeviceGuard g(dev);
    cuda_check(cudaStreamSynchronize(cuda_stream(dev)), "CUDA work");
  }
#endif
  return info.Env().Undefined();
}
MB_EXPORT("synchronizeSync", SynchronizeSync);

#if defined(MEGABEAM_TEST_HOOKS)
// debugQueueError(device, code, message): queues a CPU task that fails, so tests can check that queued
// errors surface at the next sync point and are cleared after. A test hook: only in test builds
// (cmake -DMEGABEAM_TEST_HOOKS=ON), never in the shipped addon.
Napi::Value DebugQueueError(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  if (dev != kCpu) throw Error("ERR_UNSUPPORTED", "debugQueueError: CPU queue only");
  if (!info[1].IsString() || !info[2].IsString()) throw Error("ERR_ARG", "debugQueueError: code and message must be strings");
  std::string code = info[1].As<Napi::String>(), msg = info[2].As<Napi::String>();
  if (code.rfind("ERR_", 0) != 0) throw Error("ERR_ARG", "debugQueueError: code must start with ERR_");
  cpu_enqueue([code, msg]() { throw Error(code, msg); });
  return info.Env().Undefined();
}
MB_EXPORT("debugQueueError", DebugQueueError);
#endif

Napi::Value Memory(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  MemoryStats s = memory_stats(dev);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("allocated", (double)s.allocated);
  o.Set("reserved", (double)s.reserved);
  o.Set("peak", (double)s.peak);
  o.Set("allocations", (double)s.num_allocs);
  o.Set("frees", (double)s.num_frees);
  o.Set("deviceMallocs", (double)s.cuda_mallocs);
  return o;
}
MB_EXPORT("memory", Memory);

Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  reset_peak(device_arg(info[0], "device"));
  return info.Env().Undefined();
}
MB_EXPORT("resetPeak", ResetPeak);

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  empty_cache(device_arg(info[0], "device"));
  return info.Env().Undefined();
}
MB_EXPORT("emptyCache", EmptyCache);

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#if defined(MEGABEAM_CUDA)
  o.Set("built", true);
#else
  o.Set("built", false);
#endif
  o.Set("available", cuda_available());
  o.Set("count", cuda_device_count());
  o.Set("reason", cuda_unavailable_reason());
  Napi::Array devs = Napi::Array::New(env);
  for (int i = 0; i < cuda_device_count(); ++i) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("index", i);
    d.Set("name", cuda_device_name(i));
    d.Set("totalMemory", (double)cuda_total_memory(i));
    devs.Set(i, d);
  }
  o.Set("devices", devs);
  o.Set("cpuThreads", cpu_threads());
  return o;
}
MB_EXPORT("cudaInfo", CudaInfo);

}  // namespace
}  // namespace mb
