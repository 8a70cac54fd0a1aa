// Tensor creation, conversion, transfer, read-back, sync and memory queries.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "../common/parallel.h"
#include "../ops/tensor/tensor_ops.h"
#include "binding.h"

namespace mb {
namespace {

// ---- completions: promises settled by megabeam's threads (never libuv's pool) -------------------
size_t physical_memory_bytes() {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && size > 0 ? (size_t)pages * (size_t)size : (size_t)1 << 40;
}

// A read: the values land in a malloc'd buffer (owned here, so a worker that dies meanwhile frees
// nothing under us), which becomes the ArrayBuffer on the JS thread without a copy.
struct ReadDone : Completion {
  napi_deferred deferred = nullptr;
  void* buf = nullptr;
  size_t bytes = 0, n = 0;
  napi_typedarray_type type = napi_float32_array;
  std::string code, msg;  // set: reject
  ~ReadDone() override { std::free(buf); }
  void settle(napi_env env) override {
    if (!env) return;
    if (!code.empty()) { settle_reject(env, deferred, code, msg); return; }
    napi_value ab = nullptr, ta = nullptr;
    napi_status st = napi_create_external_arraybuffer(
        env, buf, bytes, [](napi_env, void* data, void*) { std::free(data); }, nullptr, &ab);
    if (st == napi_ok) {
      buf = nullptr;  // the ArrayBuffer owns it now
    } else if (st == napi_no_external_buffers_allowed) {
      // Builds that forbid external buffers: copy. Checked, so a failure rejects instead of aborting.
      void* data = nullptr;
      if (napi_create_arraybuffer(env, bytes, &data, &ab) != napi_ok || (!data && bytes)) {
        settle_reject(env, deferred, "ERR_OOM", "cannot allocate a " + std::to_string(bytes) + "-byte ArrayBuffer");
        return;
      }
      if (bytes) std::memcpy(data, buf, bytes);
    } else {
      // The environment cannot run JS any more (a worker being terminated): nothing to settle.
      return;
    }
    if (napi_create_typedarray(env, type, n, ab, 0, &ta) != napi_ok) {
      settle_reject(env, deferred, "ERR_OOM", "cannot create the result array");
      return;
    }
    napi_resolve_deferred(env, deferred, ta);
  }
};

struct SyncDone : Completion {
  napi_deferred deferred = nullptr;
  std::string code, msg;
  void settle(napi_env env) override {
    if (!code.empty()) settle_reject(env, deferred, code, msg);
    else settle_resolve_undefined(env, deferred);
  }
};

#if defined(MEGABEAM_CUDA)
// Host data to a device buffer through page-locked staging: the copy then returns at once instead of
// waiting for the stream. `fill` writes the bytes into the staging buffer; the buffer goes back to the cache
// once the copy ran (an event recorded after it).
void upload_staged(int device, void* dst, size_t bytes, const std::function<void(void*)>& fill, const char* what) {
  PinnedBuffer pb = pinned_acquire(bytes);
  try {
    fill(pb.ptr);
  } catch (...) {
    pinned_release(pb);
    throw;
  }
  CudaDeviceGuard g(device);
  cudaStream_t s = cuda_stream(device);
  cudaError_t e = cudaMemcpyAsync(dst, pb.ptr, bytes, cudaMemcpyHostToDevice, s);
  cudaEvent_t ev = nullptr;
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  if (e == cudaSuccess) e = cudaEventRecord(ev, s);
  if (e != cudaSuccess) {
    // The copy may or may not have been queued: wait for the stream before reusing the buffer.
    cudaStreamSynchronize(s);
    if (ev) cudaEventDestroy(ev);
    pinned_release(pb);
    cuda_check(e, what);
  }
  pinned_release_after(device, ev, pb);
}
#endif

// Cross-device copies from the CPU are sync points: they wait (on the calling thread) for the CPU
// work queued so far, never for later work, and report the source's failure.
void wait_cpu_source(const TensorImpl* src) {
  cpu_wait(cpu_last_issued());
  throw_if_failed(*src->storage);
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
// `offset` elements into the tensor (a reshape, or a contiguous slice). Checked here, whatever TS did.
Napi::Value View(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  auto shape = shape_arg(info[1]);
  int64_t off = info.Length() > 2 && !info[2].IsUndefined() ? int_arg(info[2], "offset") : 0;
  return TensorImpl::View(info.Env(), t, std::move(shape), off);
}
MB_EXPORT("view", View);

// Host data -> element type, rounded once (f64 goes straight to f16/bf16).
void convert_host(const void* src, napi_typedarray_type tt, void* dst, Dtype dt, int64_t b, int64_t e) {
  if (tt == napi_float32_array) {
    const float* f = (const float*)src;
    for (int64_t i = b; i < e; ++i) store_from_f32(dst, dt, i, f[i]);
  } else {
    const double* d = (const double*)src;
    switch (dt) {
      case Dtype::F32: for (int64_t i = b; i < e; ++i) ((float*)dst)[i] = (float)d[i]; break;
      case Dtype::F16: for (int64_t i = b; i < e; ++i) ((uint16_t*)dst)[i] = f64_to_f16(d[i]); break;
      case Dtype::BF16: for (int64_t i = b; i < e; ++i) ((uint16_t*)dst)[i] = f64_to_bf16(d[i]); break;
      default: throw Error("ERR_DTYPE", "float data for an i32 tensor");
    }
  }
}

// write(handle, typedArray): fills a tensor from host data, in issue order on its device. Float32Array/Float64Array
// for float dtypes (rounded once, to nearest even), Int32Array for i32, Uint16Array raw bits for f16/bf16.
// The JS thread only copies the bytes (the array may change after we return); conversion happens on
// the CPU queue (CPU tensors) or serially here (CUDA tensors), never on the shared kernel pool, so
// creating a tensor never waits for a queued kernel.
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorImpl* t = tensor_arg(info[0], "tensor");
  if (!info[1].IsTypedArray()) throw Error("ERR_ARG", "data must be a typed array");
  napi_typedarray_type tt;
  size_t len = 0;
  void* data = nullptr;
  napi_value abv;
  size_t byte_off = 0;
  // Works for SharedArrayBuffer-backed arrays too (Napi::TypedArray::ArrayBuffer() would not).
  if (napi_get_typedarray_info(env, info[1], &tt, &len, &data, &abv, &byte_off) != napi_ok)
    throw Error("ERR_ARG", "data: cannot read the typed array");
  int64_t n = t->numel();
  if ((int64_t)len != n)
    throw Error("ERR_SHAPE", "data has " + std::to_string(len) + " elements, shape needs " + std::to_string(n));
  Dtype dt = t->dtype;
  bool is_float = dt != Dtype::I32;
  size_t esize;
  if ((tt == napi_float32_array || tt == napi_float64_array) && is_float) esize = tt == napi_float32_array ? 4 : 8;
  else if (tt == napi_int32_array && dt == Dtype::I32) esize = 4;
  else if (tt == napi_uint16_array && (dt == Dtype::F16 || dt == Dtype::BF16)) esize = 2;
  else throw Error("ERR_DTYPE", std::string("cannot write this typed array into a ") + dtype_name(dt) + " tensor");
  size_t src_bytes = (size_t)n * esize;
  bool direct = (size_t)dtype_size(dt) == esize;  // same layout: a plain copy
  if (n > 0 && !data) throw Error("ERR_ARG", "data: detached buffer");

  if (t->device == kCpu) {
    auto buf = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(std::malloc(src_bytes ? src_bytes : 1)), std::free);
    if (!buf) throw Error("ERR_OOM", "cannot stage " + std::to_string(src_bytes) + " bytes of tensor data");
    if (src_bytes) std::memcpy(buf.get(), data, src_bytes);
    void* dst = t->data();
    CpuTask task;
    task.outputs = {t->storage};
    task.staged_bytes = src_bytes;
    task.fn = [buf, dst, n, dt, tt, direct, src_bytes](const Failure*) {
      if (direct) {
        std::memcpy(dst, buf.get(), src_bytes);
        return;
      }
      parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) { convert_host(buf.get(), tt, dst, dt, b, e); });
    };
    cpu_submit(std::move(task));
    return env.Undefined();
  }
#if defined(MEGABEAM_CUDA)
  if (n > 0) {
    const size_t bytes = t->nbytes();
    upload_staged(t->device, t->data(), bytes, [&](void* buf) {
      if (direct) std::memcpy(buf, data, bytes);
      else convert_host(data, tt, buf, dt, 0, n);  // serial: the pool belongs to queued kernels
    }, "host to device copy");
  }
#endif
  return env.Undefined();
}
MB_EXPORT("write", Write);

// fill(handle, value). i32 tensors take int32 values only (no silent wrap or saturation).
Napi::Value Fill(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  double v = number_arg(info[1], "value");
  if (t->dtype == Dtype::I32 && !(v == std::floor(v) && v >= -2147483648.0 && v <= 2147483647.0))
    throw Error("ERR_ARG", "fill: an i32 tensor needs an int32 value, got " + std::to_string(v));
  FillParams p{t->data(), t->dtype, t->numel(), v};
  launch_op(t->device, {}, {t}, p, fill_cpu, MB_CUDA_FN(fill_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("fill", Fill);

// random(handle, kind, seedHi, seedLo, a, b): kind 0 normal(mean a, std b), 1 uniform [a, b).
// Parameters must be such that no value can overflow f32 (else every result would be ±inf).
Napi::Value Random(const Napi::CallbackInfo& info) {
  TensorImpl* t = tensor_arg(info[0], "tensor");
  if (t->dtype == Dtype::I32) throw Error("ERR_DTYPE", "random values need a float dtype");
  int64_t kind = int_arg(info[1], "kind");
  if (kind != 0 && kind != 1) throw Error("ERR_ARG", "random: kind must be 0 (normal) or 1 (uniform)");
  int64_t hi = int_arg(info[2], "seedHi"), lo = int_arg(info[3], "seedLo");
  if (hi < 0 || hi > 0xffffffffLL || lo < 0 || lo > 0xffffffffLL) throw Error("ERR_ARG", "seed words must be uint32");
  double a = number_arg(info[4], "a"), b = number_arg(info[5], "b");
  const double fmax = 3.4028234663852886e38;
  if (kind == 0) {
    // |normal| from 32-bit uniforms stays below 6.7 (Box-Muller: sqrt(-2 ln 2^-32) = 6.66)
    if (!(std::fabs(a) + 6.7 * std::fabs(b) < fmax))
      throw Error("ERR_ARG", "randn: mean and std must keep every value within f32 range");
  } else {
    if (!(a < b) || !((double)(float)b - (double)(float)a < fmax) || std::fabs(a) >= fmax || std::fabs(b) >= fmax)
      throw Error("ERR_ARG", "rand: need low < high within f32 range (high - low too)");
  }
  RandParams p{t->data(), t->dtype, t->numel(), ((uint64_t)hi << 32) | (uint64_t)lo,
               kind == 0 ? RandKind::Normal : RandKind::Uniform, (float)a, (float)b};
  launch_op(t->device, {}, {t}, p, rand_cpu, MB_CUDA_FN(rand_cuda));
  return info.Env().Undefined();
}
MB_EXPORT("random", Random);

// copy(dst, src): same element count; dtype conversion on one device, or a same-dtype copy across
// devices. CPU -> CUDA is a sync point (waits on this thread for the CPU work queued so far); CUDA
// -> CPU is not (the CPU queue waits for the GPU).
Napi::Value Copy(const Napi::CallbackInfo& info) {
  TensorImpl* dst = tensor_arg(info[0], "dst");
  TensorImpl* src = tensor_arg(info[1], "src");
  if (dst->numel() != src->numel()) throw Error("ERR_SHAPE", "copy: element counts differ");
  if (dst->device == src->device) {
    CastParams p{src->data(), src->dtype, dst->data(), dst->dtype, src->numel()};
    launch_op(dst->device, {src}, {dst}, p, cast_cpu, MB_CUDA_FN(cast_cuda));
    return info.Env().Undefined();
  }
  if (dst->dtype != src->dtype) throw Error("ERR_DTYPE", "copy across devices needs equal dtypes");
#if defined(MEGABEAM_CUDA)
  size_t n = src->nbytes();
  if (src->device == kCpu) {
    wait_cpu_source(src);
    if (n > 0) {
      // Through page-locked staging, so the copy does not also wait for the GPU stream.
      upload_staged(dst->device, dst->data(), n, [&](void* buf) { std::memcpy(buf, src->data(), n); }, "copy to CUDA");
    }
  } else if (dst->device == kCpu) {
    // Snapshot the source in stream order (later CUDA work may change it), then let the CPU queue
    // wait for the GPU and copy: neither the JS thread nor libuv waits.
    int sdev = src->device;
    StoragePtr tmp = alloc_storage(sdev, n);
    cudaEvent_t ev;
    {
      CudaDeviceGuard g(sdev);
      cudaStream_t ss = cuda_stream(sdev);
      cuda_check(cudaMemcpyAsync(tmp->ptr, src->data(), n, cudaMemcpyDeviceToDevice, ss), "copy to CPU");
      cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
      cuda_check(cudaEventRecord(ev, ss), "event record");
    }
    void* d = dst->data();
    CpuTask task;
    task.outputs = {dst->storage};
    task.fn = [tmp, ev, d, n, sdev](const Failure*) {
      CudaDeviceGuard g(sdev);
      cudaError_t e = cudaEventSynchronize(ev);
      cudaEventDestroy(ev);
      cuda_check(e, "CUDA work before a copy to the CPU");
      cuda_check(cudaMemcpy(d, tmp->ptr, n, cudaMemcpyDeviceToHost), "copy to CPU");
    };
    cpu_submit(std::move(task));
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
// A read is queued like an op: it sees exactly the work issued before it (never later work), and is
// completed by the CPU queue's worker (or a CUDA waiter thread) through this environment's
// thread-safe function. A failed tensor rejects with its failure's code.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TensorImpl* t = tensor_arg(info[0], "tensor");
  bool raw = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
  int64_t n = t->numel();
  if (n > (int64_t(1) << 31) - 1) throw Error("ERR_UNSUPPORTED", "tensor too large to read back as one array");
  Dtype dt = t->dtype;
  bool half = dt == Dtype::F16 || dt == Dtype::BF16;
  bool convert = half && !raw;
  auto done = std::make_unique<ReadDone>();
  done->n = (size_t)n;
  done->type = raw && half ? napi_uint16_array : dt == Dtype::I32 ? napi_int32_array : napi_float32_array;
  done->bytes = (size_t)n * (done->type == napi_uint16_array ? 2 : 4);
  // Allocated here, checked: too much for this process is ERR_OOM, never a V8 fatal error.
  if (done->bytes > physical_memory_bytes())
    throw Error("ERR_OOM", "cannot read back " + std::to_string(done->bytes) + " bytes: more than physical memory");
  done->buf = std::malloc(done->bytes ? done->bytes : 1);
  if (!done->buf) throw Error("ERR_OOM", "cannot allocate " + std::to_string(done->bytes) + " bytes to read a tensor into");
  napi_value promise;
  if (napi_create_promise(env, &done->deferred, &promise) != napi_ok) throw Error("ERR_NATIVE", "cannot create a promise");
  EnvState& es = EnvState::of(env);
  EnvLinkPtr link = es.link;
  ReadDone* d = done.get();
  const void* src = t->data();

  if (t->device == kCpu) {
    CpuTask task;
    task.inputs = {t->storage};
    task.handles_failure = true;
    task.fn = [d, link, src, n, dt, convert](const Failure* f) {
      if (f) {
        d->code = f->code; d->msg = f->message;
      } else if (convert) {
        parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) ((float*)d->buf)[i] = load_as_f32(src, dt, i);
        });
      } else {
        std::memcpy(d->buf, src, (size_t)n * dtype_size(dt));
      }
      link->post(d);
    };
    done.release();
    es.begin();
    cpu_submit(std::move(task));
    return Napi::Value(env, promise);
  }
#if defined(MEGABEAM_CUDA)
  {
    int dev = t->device;
    CudaDeviceGuard g(dev);
    cudaStream_t s = cuda_stream(dev);
    // Snapshot in stream order (later work may change the tensor); a waiter thread copies it out.
    size_t bytes = t->nbytes();
    StoragePtr tmp = alloc_storage(dev, bytes);
    cuda_check(cudaMemcpyAsync(tmp->ptr, src, bytes, cudaMemcpyDeviceToDevice, s), "read");
    cudaEvent_t ev;
    cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
    cuda_check(cudaEventRecord(ev, s), "event record");
    StoragePtr st = t->storage;
    done.release();
    es.begin();
    cuda_host_enqueue(dev, [d, link, tmp, st, ev, n, dt, convert, bytes, dev]() {
      try {
        CudaDeviceGuard g2(dev);
        cudaError_t e = cudaEventSynchronize(ev);
        cudaEventDestroy(ev);
        cuda_check(e, "CUDA work before read");
        throw_if_failed(*st);
        if (convert) {
          std::vector<uint16_t> h((size_t)n);
          cuda_check(cudaMemcpy(h.data(), tmp->ptr, bytes, cudaMemcpyDeviceToHost), "read");
          for (int64_t i = 0; i < n; ++i) ((float*)d->buf)[i] = load_as_f32(h.data(), dt, i);
        } else {
          cuda_check(cudaMemcpy(d->buf, tmp->ptr, bytes, cudaMemcpyDeviceToHost), "read");
        }
      } catch (const Error& x) {
        d->code = x.code; d->msg = x.what();
      } catch (const std::exception& x) {
        d->code = "ERR_NATIVE"; d->msg = x.what();
      }
      link->post(d);
    });
    return Napi::Value(env, promise);
  }
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}
MB_EXPORT("read", Read);

// synchronize(device) -> Promise<void>: waits for the work this thread queued before it (not later
// work); rejects with the first error of this thread's work since its last synchronize.
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dev = device_arg(info[0], "device");
  auto done = std::make_unique<SyncDone>();
  napi_value promise;
  if (napi_create_promise(env, &done->deferred, &promise) != napi_ok) throw Error("ERR_NATIVE", "cannot create a promise");
  EnvState& es = EnvState::of(env);
  EnvLinkPtr link = es.link;
  SyncDone* d = done.get();
  if (dev == kCpu) {
    uint64_t owner = cpu_owner_id();
    CpuTask task;
    task.fn = [d, link, owner](const Failure*) {
      d->msg = cpu_take_error(owner, &d->code);
      if (!d->msg.empty() && d->code.empty()) d->code = "ERR_NATIVE";
      link->post(d);
    };
    done.release();
    es.begin();
    cpu_submit(std::move(task));
    return Napi::Value(env, promise);
  }
#if defined(MEGABEAM_CUDA)
  CudaDeviceGuard g(dev);
  cudaEvent_t ev;
  cuda_check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
  cuda_check(cudaEventRecord(ev, cuda_stream(dev)), "event record");
  done.release();
  es.begin();
  cuda_host_enqueue(dev, [d, link, ev, dev]() {
    CudaDeviceGuard g2(dev);
    cudaError_t e = cudaEventSynchronize(ev);
    cudaEventDestroy(ev);
    if (e != cudaSuccess) {
      d->code = e == cudaErrorMemoryAllocation ? "ERR_OOM" : "ERR_CUDA";
      d->msg = std::string("CUDA work: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    }
    link->post(d);
  });
  return Napi::Value(env, promise);
#else
  throw Error("ERR_NO_CUDA", cuda_unavailable_reason());
#endif
}
MB_EXPORT("synchronize", Synchronize);

// synchronizeSync(device): blocks the calling thread (benchmarks and process exit only).
Napi::Value SynchronizeSync(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  if (dev == kCpu) {
    std::string code;
    std::string e = cpu_wait_idle(&code);
    if (!e.empty()) throw Error(code.empty() ? "ERR_NATIVE" : code, e);
  }
#if defined(MEGABEAM_CUDA)
  else {
    CudaDeviceGuard g(dev);
    cuda_check(cudaStreamSynchronize(cuda_stream(dev)), "CUDA work");
  }
#endif
  return info.Env().Undefined();
}
MB_EXPORT("synchronizeSync", SynchronizeSync);

// debugQueueError(device, code, message, output?): queues a CPU task that fails (with `output` as the
// tensor it was to write), so tests can check where queued errors surface. Test hook; not public API.
Napi::Value DebugQueueError(const Napi::CallbackInfo& info) {
  int dev = device_arg(info[0], "device");
  if (dev != kCpu) throw Error("ERR_UNSUPPORTED", "debugQueueError: CPU queue only");
  if (!info[1].IsString() || !info[2].IsString()) throw Error("ERR_ARG", "debugQueueError: code and message must be strings");
  std::string code = info[1].As<Napi::String>(), msg = info[2].As<Napi::String>();
  if (code.rfind("ERR_", 0) != 0) throw Error("ERR_ARG", "debugQueueError: code must start with ERR_");
  CpuTask task;
  if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) task.outputs = {tensor_arg(info[3], "output")->storage};
  task.fn = [code, msg](const Failure*) { throw Error(code, msg); };
  cpu_submit(std::move(task));
  return info.Env().Undefined();
}
MB_TEST_HOOK("debugQueueError", DebugQueueError);

// debugQueueSleep(ms): queues a CPU task that sleeps (a stand-in for a long kernel). Test hook.
Napi::Value DebugQueueSleep(const Napi::CallbackInfo& info) {
  int64_t ms = int_arg(info[0], "ms");
  if (ms < 0 || ms > 10000) throw Error("ERR_ARG", "debugQueueSleep: 0..10000 ms");
  cpu_enqueue([ms]() { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); });
  return info.Env().Undefined();
}
MB_TEST_HOOK("debugQueueSleep", DebugQueueSleep);

// debugExternalMemory() -> bytes this environment reported to V8 as external memory (V8's total). Test hook.
Napi::Value DebugExternalMemory(const Napi::CallbackInfo& info) {
  int64_t r = 0;
  napi_adjust_external_memory(info.Env(), 0, &r);
  return Napi::Number::New(info.Env(), (double)r);
}
MB_TEST_HOOK("debugExternalMemory", DebugExternalMemory);

// queueInfo() -> { pending, pendingBytes, maxTasks, maxBytes, issued, completed, blockedEnqueues }
// Shipped (not a test hook): read-only counters of the bounded CPU queue, a diagnostic for the
// documented backpressure limit; it cannot change any state.
Napi::Value QueueInfo(const Napi::CallbackInfo& info) {
  CpuQueueStats s = cpu_queue_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pending", (double)s.pending);
  o.Set("pendingBytes", (double)s.pending_bytes);
  o.Set("maxTasks", (double)s.max_tasks);
  o.Set("maxBytes", (double)s.max_bytes);
  o.Set("issued", (double)s.issued);
  o.Set("completed", (double)s.completed);
  o.Set("blockedEnqueues", (double)s.blocked_enqueues);
  return o;
}
MB_EXPORT("queueInfo", QueueInfo);

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
