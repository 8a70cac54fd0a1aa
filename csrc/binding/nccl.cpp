// NCCL communicators and collectives (lib/dist/nccl.ts drives these).
//
//   ncclInfo()                                   -> { found, path?, version?, versionCode?, error? }   (every build)
//   ncclUniqueId()                               -> Uint8Array(128)                                   (every build)
//   ncclInitAll({ devices })                     -> Promise<comm[]>   one process, several GPUs (ncclCommInitAll)
//   ncclInitRank({ id, rank, worldSize, device }) -> Promise<comm>    one rank of a multi-process group
//   ncclIssue({ items, timeoutMs, deferred? })   -> undefined         enqueue a batch (one ncclGroupStart/End)
//   ncclJoin({ comm })                           -> undefined         compute stream waits for all queued comm work
//   ncclStatus({ comm })                         -> null | { code, message, pending }
//   ncclAbort({ comm, reason? }), ncclDestroy({ comm })
//
// Streams. Each communicator has its own communication stream on its device. A batch is ordered after
// the compute stream (event recorded there, waited on the comm stream), and the compute stream waits for
// the batch's end event, so work issued after ncclIssue returned sees the results (the Group contract's
// "issued in order"). With `deferred` the compute stream does not wait (compute issued next overlaps the
// transfer) until ncclJoin; the caller promises not to touch the batch's buffers before that. The storages of a batch are kept alive until its end event has completed: the
// caching allocator assumes one stream per device, and this keeps a block from being reused while the
// communication stream may still touch it.
//
// Timeouts and errors. A watchdog thread polls every live communicator: completed batches are released,
// ncclCommGetAsyncError is checked, and a batch still running past its deadline aborts the communicator
// (ncclCommAbort makes the hung kernels return, so the streams drain). The failure is recorded; every
// later call on that communicator throws it (ERR_TIMEOUT / ERR_NCCL naming the op and peer), and
// ncclStatus reports it to TypeScript.
//
// bf16 / f16 sums are carried out in fp32 (cast to a fp32 buffer, reduce, cast back) as the Group contract
// asks: NCCL's own half-precision reductions round after every step of the ring.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "../dist/nccl_loader.h"
#include "../ops/tensor/tensor_ops.h"
#include "baton.h"

namespace mb {
namespace {

Napi::Value NcclInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const nccl::LoadInfo& li = nccl::load_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("found", li.found);
  if (!li.path.empty()) o.Set("path", li.path);
  if (li.found) {
    o.Set("version", li.version_string);
    o.Set("versionCode", li.version);
  } else {
    o.Set("error", li.error);
  }
  return o;
}
MB_EXPORT("ncclInfo", NcclInfo);

Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  const nccl::Api& A = nccl::api();
  nccl::ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  nccl::Result r = A.GetUniqueId(&id);
  if (r != nccl::ncclSuccess) throw Error("ERR_NCCL", "ncclGetUniqueId failed: " + nccl::error_string(r));
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof id);
  std::memcpy(out.Data(), &id, sizeof id);
  return out;
}
MB_EXPORT("ncclUniqueId", NcclUniqueId);

#if defined(MEGABEAM_CUDA)

using Clock = std::chrono::steady_clock;

struct Pending {
  cudaEvent_t done = nullptr;
  std::vector<StoragePtr> keep;
  std::string what;  // "allReduce #12 (peer: all)"
  Clock::time_point deadline;
  int64_t timeout_ms = 0;
};

struct CommState {
  nccl::ncclComm_t comm = nullptr;
  int device = 0, rank = 0, nranks = 1;
  cudaStream_t stream = nullptr;  // the communication stream
  std::mutex m;
  std::deque<Pending> pending;
  std::atomic<bool> failed{false};
  // Set while the JS thread is inside ncclGroupStart..End for this communicator: with blocking
  // communicators ncclGroupEnd can wait for a peer (p2p connection setup), so the watchdog must be able to
  // abort it. Steady-clock nanoseconds; 0 when not issuing.
  std::atomic<int64_t> issuing_until{0};
  std::string issuing_what;  // under m
  bool destroyed = false;
  std::string err_code, err_msg;

  std::string where() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(nranks) + " on cuda:" + std::to_string(device);
  }
};
using CommPtr = std::shared_ptr<CommState>;

// Marks the communicator failed (first reason wins) and aborts it so blocked kernels return.
// Caller must not hold s.m.
void fail_comm(CommState& s, const std::string& code, const std::string& msg) {
  nccl::ncclComm_t c = nullptr;
  {
    std::lock_guard<std::mutex> l(s.m);
    if (s.failed.load()) return;
    s.err_code = code;
    s.err_msg = msg;
    s.failed.store(true);
    c = s.comm;
    s.comm = nullptr;
  }
  if (c) nccl::api().CommAbort(c);
}

// ---- watchdog --------------------------------------------------------------------
struct Watchdog {
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::weak_ptr<CommState>> comms;
  std::thread th;
  bool started = false;

  void add(const CommPtr& c) {
    std::lock_guard<std::mutex> l(m);
    comms.push_back(c);
    if (!started) {
      started = true;
      th = std::thread([this] { loop(); });
      th.detach();  // lives as long as the process; holds only weak references
    }
    cv.notify_all();
  }
  void kick() { cv.notify_all(); }

  void loop() {
    for (;;) {
      std::vector<CommPtr> live;
      {
        std::unique_lock<std::mutex> l(m);
        cv.wait_for(l, std::chrono::milliseconds(20));
        std::vector<std::weak_ptr<CommState>> keep;
        for (auto& w : comms)
          if (auto c = w.lock()) { live.push_back(c); keep.push_back(w); }
        comms.swap(keep);
      }
      for (auto& c : live) poll(*c);
    }
  }

  static void poll(CommState& s) {
    std::string timeout_msg, async_msg;
    std::vector<Pending> done;
    {
      std::lock_guard<std::mutex> l(s.m);
      while (!s.pending.empty()) {
        cudaError_t e = cudaEventQuery(s.pending.front().done);
        if (e == cudaErrorNotReady) break;
        if (e != cudaSuccess) cudaGetLastError();  // a failed event still ends the batch; the op reports it
        done.push_back(std::move(s.pending.front()));
        s.pending.pop_front();
      }
      int64_t until = s.issuing_until.load();
      if (until && !s.failed.load() && Clock::now().time_since_epoch().count() > until) {
        timeout_msg = s.issuing_what + " could not be issued in time: ncclGroupEnd is still waiting (a peer that never made the call, or died?) (" +
                      s.where() + "); the communicator was aborted";
      } else if (!s.pending.empty() && !s.failed.load() && Clock::now() > s.pending.front().deadline) {
        const Pending& p = s.pending.front();
        timeout_msg = p.what + " did not complete within " + std::to_string(p.timeout_ms) + " ms (" + s.where() +
                      "); the communicator was aborted";
      }
      if (!s.failed.load() && s.comm) {
        nccl::Result ae = nccl::ncclSuccess;
        nccl::Result r = nccl::api().CommGetAsyncError(s.comm, &ae);
        if (r == nccl::ncclSuccess && ae != nccl::ncclSuccess && ae != nccl::ncclInProgress) {
          async_msg = "NCCL reported an asynchronous error on " + s.where() + ": " + nccl::error_string(ae) +
                      (s.pending.empty() ? std::string() : " during " + s.pending.front().what);
        }
      }
    }
    for (auto& p : done) cudaEventDestroy(p.done);
    done.clear();  // releases the storages (back to the cache) outside the lock
    if (!async_msg.empty()) fail_comm(s, "ERR_NCCL", async_msg);
    else if (!timeout_msg.empty()) fail_comm(s, "ERR_TIMEOUT", timeout_msg);
  }
};
Watchdog& watchdog() {
  static Watchdog* w = new Watchdog();
  return *w;
}

// ---- handles -------------------------------------------------------------------
struct CommRef { CommPtr s; };

Napi::Value wrap_comm(Napi::Env env, CommPtr s) {
  return Napi::External<CommRef>::New(env, new CommRef{std::move(s)}, [](Napi::Env, CommRef* r) { delete r; });
}

CommPtr comm_arg(const Napi::Value& v, const std::string& what) {
  if (!v.IsExternal()) throw Error("ERR_ARG", what + " must be an NCCL communicator handle");
  CommRef* r = v.As<Napi::External<CommRef>>().Data();
  if (!r || !r->s) throw Error("ERR_ARG", what + " is not a communicator");
  return r->s;
}

void throw_if_failed(CommState& s) {
  std::lock_guard<std::mutex> l(s.m);
  if (s.failed.load()) throw Error(s.err_code, s.err_msg);
  if (s.destroyed) throw Error("ERR_COMM", "the communicator of " + s.where() + " was destroyed");
}

CommPtr make_state(nccl::ncclComm_t c, int device, int rank, int nranks) {
  auto s = std::make_shared<CommState>();
  s->comm = c; s->device = device; s->rank = rank; s->nranks = nranks;
  CudaDeviceGuard g(device);
  cuda_stream(device);  // make sure the compute stream exists before the comm stream
  cuda_check(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "communication stream");
  return s;
}

// A promise settled on the main thread after `work` ran on a libuv thread (communicator setup blocks
// until every rank has joined, so it must not run on the event loop).
class InitWorker : public Napi::AsyncWorker {
 public:
  InitWorker(Napi::Env env, std::function<std::vector<CommPtr>()> work, bool single)
      : Napi::AsyncWorker(env), d_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), single_(single) {}
  Napi::Promise promise() { return d_.Promise(); }
  void Execute() override {
    try {
      out_ = work_();
    } catch (const Error& e) {
      code_ = e.code; msg_ = e.what();
    } catch (const std::exception& e) {
      code_ = "ERR_NATIVE"; msg_ = e.what();
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!code_.empty()) { d_.Reject(to_js_error(env, code_, msg_).Value()); return; }
    for (auto& s : out_) watchdog().add(s);
    if (single_) { d_.Resolve(wrap_comm(env, out_[0])); return; }
    Napi::Array a = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); ++i) a.Set((uint32_t)i, wrap_comm(env, out_[i]));
    d_.Resolve(a);
  }

 private:
  Napi::Promise::Deferred d_;
  std::function<std::vector<CommPtr>()> work_;
  std::vector<CommPtr> out_;
  bool single_;
  std::string code_, msg_;
};

void check_device(int dev, const std::string& op) {
  if (!cuda_available()) throw Error("ERR_NO_CUDA", op + ": " + cuda_unavailable_reason());
  if (dev < 0 || dev >= cuda_device_count())
    throw Error("ERR_DEVICE", op + ": no such CUDA device: cuda:" + std::to_string(dev) + " (" +
                                  std::to_string(cuda_device_count()) + " device(s))");
}

Napi::Value NcclInitAll(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclInitAll");
  Napi::Value dv = b.raw("devices");
  b.finish();
  if (!dv.IsArray()) b.fail("ERR_ARG", "devices must be an array of CUDA device indices");
  Napi::Array arr = dv.As<Napi::Array>();
  std::vector<int> devs;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    int64_t d = int_arg(arr.Get(i), "devices[i]");
    check_device((int)d, "ncclInitAll");
    for (int x : devs)
      if (x == d) b.fail("ERR_ARG", "device cuda:" + std::to_string(d) + " is listed twice");
    devs.push_back((int)d);
  }
  if (devs.empty()) b.fail("ERR_ARG", "devices must not be empty");
  nccl::api();  // ERR_NO_NCCL now, not in the worker
  auto* w = new InitWorker(info.Env(), [devs] {
    const nccl::Api& A = nccl::api();
    std::vector<nccl::ncclComm_t> comms(devs.size(), nullptr);
    nccl::Result r = A.CommInitAll(comms.data(), (int)devs.size(), devs.data());
    if (r != nccl::ncclSuccess) throw Error("ERR_NCCL", "ncclCommInitAll failed: " + nccl::error_string(r));
    std::vector<CommPtr> out;
    for (size_t i = 0; i < devs.size(); ++i) out.push_back(make_state(comms[i], devs[i], (int)i, (int)devs.size()));
    return out;
  }, false);
  auto p = w->promise();
  w->Queue();
  return p;
}
MB_EXPORT("ncclInitAll", NcclInitAll);

Napi::Value NcclInitRank(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclInitRank");
  Napi::Value idv = b.raw("id");
  int64_t rank = b.integer("rank"), world = b.integer("worldSize"), dev = b.integer("device");
  b.finish();
  if (!idv.IsTypedArray() || idv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      idv.As<Napi::Uint8Array>().ElementLength() != sizeof(nccl::ncclUniqueId))
    b.fail("ERR_ARG", "id must be the 128-byte Uint8Array made by ncclUniqueId()");
  if (world < 1 || world > 1 << 20) b.fail("ERR_ARG", "worldSize must be >= 1");
  if (rank < 0 || rank >= world) b.fail("ERR_ARG", "rank must be in [0, worldSize)");
  check_device((int)dev, "ncclInitRank");
  nccl::api();
  nccl::ncclUniqueId id;
  std::memcpy(&id, idv.As<Napi::Uint8Array>().Data(), sizeof id);
  auto* w = new InitWorker(info.Env(), [id, rank, world, dev] {
    const nccl::Api& A = nccl::api();
    CudaDeviceGuard g((int)dev);
    nccl::ncclComm_t c = nullptr;
    nccl::Result r = A.CommInitRank(&c, (int)world, id, (int)rank);
    if (r != nccl::ncclSuccess)
      throw Error("ERR_NCCL", "ncclCommInitRank failed (rank " + std::to_string(rank) + " of " + std::to_string(world) +
                                  " on cuda:" + std::to_string(dev) + "): " + nccl::error_string(r));
    return std::vector<CommPtr>{make_state(c, (int)dev, (int)rank, (int)world)};
  }, true);
  auto p = w->promise();
  w->Queue();
  return p;
}
MB_EXPORT("ncclInitRank", NcclInitRank);

// ---- issuing -----------------------------------------------------------------------
enum class Op { AllReduce, AllGather, ReduceScatter, Broadcast, Send, Recv, Barrier };

struct Item {
  CommPtr comm;
  Op op;
  TensorImpl* send = nullptr;  // input (allGather/reduceScatter input, send tensor)
  TensorImpl* recv = nullptr;  // output / in-place tensor
  int peer = -1, root = 0;
  int reduce = nccl::ncclSum;
  std::string what;
};

nccl::DataType nccl_dtype(Dtype d) {
  switch (d) {
    case Dtype::F32: return nccl::ncclFloat32;
    case Dtype::F16: return nccl::ncclFloat16;
    case Dtype::BF16: return nccl::ncclBfloat16;
    default: return nccl::ncclInt32;
  }
}

const char* op_name(Op o) {
  switch (o) {
    case Op::AllReduce: return "allReduce";
    case Op::AllGather: return "allGather";
    case Op::ReduceScatter: return "reduceScatter";
    case Op::Broadcast: return "broadcast";
    case Op::Send: return "send";
    case Op::Recv: return "recv";
    default: return "barrier";
  }
}

std::string str_prop(Napi::Object o, const char* k, const std::string& def) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsString()) throw Error("ERR_ARG", std::string("ncclIssue: items[].") + k + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

Item parse_item(Napi::Value v, size_t idx) {
  std::string at = "ncclIssue: items[" + std::to_string(idx) + "]";
  if (!v.IsObject()) throw Error("ERR_ARG", at + " must be an object");
  Napi::Object o = v.As<Napi::Object>();
  static const char* known[] = {"comm", "op", "send", "recv", "peer", "root", "reduce", "what"};
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    bool ok = false;
    for (const char* n : known) ok = ok || k == n;
    if (!ok) throw Error("ERR_ARG", at + ": unknown key '" + k + "'");
  }
  Item it;
  it.comm = comm_arg(o.Get("comm"), at + ".comm");
  std::string op = str_prop(o, "op", "");
  if (op == "allReduce") it.op = Op::AllReduce;
  else if (op == "allGather") it.op = Op::AllGather;
  else if (op == "reduceScatter") it.op = Op::ReduceScatter;
  else if (op == "broadcast") it.op = Op::Broadcast;
  else if (op == "send") it.op = Op::Send;
  else if (op == "recv") it.op = Op::Recv;
  else if (op == "barrier") it.op = Op::Barrier;
  else throw Error("ERR_ARG", at + ".op must be allReduce|allGather|reduceScatter|broadcast|send|recv|barrier");
  auto t = [&](const char* k) -> TensorImpl* {
    Napi::Value x = o.Get(k);
    if (x.IsUndefined() || x.IsNull()) return nullptr;
    return tensor_arg(x, (at + "." + k).c_str());
  };
  it.send = t("send");
  it.recv = t("recv");
  Napi::Value pv = o.Get("peer"), rv = o.Get("root");
  if (!pv.IsUndefined()) it.peer = (int)int_arg(pv, "peer");
  if (!rv.IsUndefined()) it.root = (int)int_arg(rv, "root");
  std::string red = str_prop(o, "reduce", "sum");
  if (red == "sum") it.reduce = nccl::ncclSum;
  else if (red == "avg") it.reduce = nccl::ncclAvg;
  else if (red == "max") it.reduce = nccl::ncclMax;
  else throw Error("ERR_ARG", at + ".reduce must be sum|avg|max");
  it.what = str_prop(o, "what", op_name(it.op));
  return it;
}

// The one place that decides whether an item is valid (TypeScript checks too, for friendlier messages).
void check_item(const Item& it) {
  const CommState& s = *it.comm;
  const std::string& w = it.what;
  auto on_dev = [&](TensorImpl* t, const char* name) {
    if (!t) throw Error("ERR_ARG", w + ": " + name + " tensor is required");
    if (t->device != s.device)
      throw Error("ERR_DEVICE", w + ": " + name + " is on " + (t->device < 0 ? std::string("cpu") : "cuda:" + std::to_string(t->device)) +
                                    ", the communicator of " + s.where());
  };
  switch (it.op) {
    case Op::AllReduce:
    case Op::Broadcast:
      on_dev(it.recv, "tensor");
      if (it.op == Op::Broadcast && (it.root < 0 || it.root >= s.nranks))
        throw Error("ERR_ARG", w + ": root " + std::to_string(it.root) + " is not a rank of the group");
      if (it.op == Op::AllReduce && it.recv->dtype == Dtype::I32 && it.reduce == nccl::ncclAvg)
        throw Error("ERR_DTYPE", w + ": avg needs a float dtype");
      break;
    case Op::AllGather:
    case Op::ReduceScatter: {
      on_dev(it.send, "input");
      on_dev(it.recv, "out");
      if (it.send->dtype != it.recv->dtype) throw Error("ERR_DTYPE", w + ": out and input dtypes differ");
      int64_t small = it.op == Op::AllGather ? it.send->numel() : it.recv->numel();
      int64_t big = it.op == Op::AllGather ? it.recv->numel() : it.send->numel();
      if (big != small * s.nranks)
        throw Error("ERR_SHAPE", w + ": needs " + std::to_string(s.nranks) + " x " + std::to_string(small) + " = " +
                                     std::to_string(small * s.nranks) + " elements, got " + std::to_string(big));
      if (overlaps(it.send, it.recv)) throw Error("ERR_ARG", w + ": out overlaps input");
      if (it.op == Op::ReduceScatter && it.recv->dtype == Dtype::I32 && it.reduce == nccl::ncclAvg)
        throw Error("ERR_DTYPE", w + ": avg needs a float dtype");
      break;
    }
    case Op::Send:
    case Op::Recv:
      on_dev(it.op == Op::Send ? it.send : it.recv, it.op == Op::Send ? "send" : "recv");
      if (it.peer < 0 || it.peer >= s.nranks)
        throw Error("ERR_ARG", w + ": peer " + std::to_string(it.peer) + " is not a rank of the group");
      break;
    case Op::Barrier:
      break;
  }
}

struct Staged {
  StoragePtr in, out;  // fp32 buffers for half-precision reductions
};

Napi::Value NcclIssue(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclIssue");
  Napi::Value iv = b.raw("items");
  double timeout_ms = b.number("timeoutMs");
  const bool deferred = b.flag("deferred", false);
  b.finish();
  if (!iv.IsArray()) b.fail("ERR_ARG", "items must be an array");
  if (!(timeout_ms > 0) || timeout_ms > 1e9) b.fail("ERR_ARG", "timeoutMs must be a positive number of milliseconds");
  Napi::Array arr = iv.As<Napi::Array>();
  std::vector<Item> items;
  for (uint32_t i = 0; i < arr.Length(); ++i) items.push_back(parse_item(arr.Get(i), i));
  if (items.empty()) return info.Env().Undefined();
  for (auto& it : items) check_item(it);
  const nccl::Api& A = nccl::api();

  // The communicators of the batch, in first-use order, each once.
  std::vector<CommPtr> comms;
  for (auto& it : items) {
    bool seen = false;
    for (auto& c : comms) seen = seen || c == it.comm;
    if (!seen) comms.push_back(it.comm);
  }
  for (auto& c : comms) throw_if_failed(*c);

  // Storages to keep until the batch's end event has completed, per communicator.
  std::vector<std::vector<StoragePtr>> keep(comms.size());
  auto idx = [&](const CommPtr& c) {
    for (size_t i = 0; i < comms.size(); ++i)
      if (comms[i] == c) return i;
    return (size_t)0;
  };
  std::vector<Staged> staged(items.size());
  std::vector<cudaEvent_t> events;
  auto new_event = [&]() {
    cudaEvent_t e;
    cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    events.push_back(e);
    return e;
  };

  // 1. The communication streams wait for the compute streams.
  for (auto& c : comms) {
    CudaDeviceGuard g(c->device);
    cudaEvent_t e = new_event();
    cuda_check(cudaEventRecord(e, cuda_stream(c->device)), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(c->stream, e, 0), "cudaStreamWaitEvent");
  }
  // 2. Half-precision sums go through fp32 buffers; barriers reduce one float.
  for (size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    CommState& s = *it.comm;
    auto& kp = keep[idx(it.comm)];
    if (it.send) kp.push_back(it.send->storage);
    if (it.recv) kp.push_back(it.recv->storage);
    CudaDeviceGuard g(s.device);
    if (it.op == Op::Barrier) {
      staged[i].in = alloc_storage(s.device, 4);
      cuda_check(cudaMemsetAsync(staged[i].in->ptr, 0, 4, s.stream), "cudaMemsetAsync");
      kp.push_back(staged[i].in);
      continue;
    }
    bool half_sum = (it.op == Op::AllReduce || it.op == Op::ReduceScatter) && it.reduce != nccl::ncclMax &&
                    (it.recv->dtype == Dtype::BF16 || it.recv->dtype == Dtype::F16);
    if (!half_sum) continue;
    TensorImpl* in = it.op == Op::AllReduce ? it.recv : it.send;
    staged[i].in = alloc_storage(s.device, (size_t)in->numel() * 4);
    kp.push_back(staged[i].in);
    cast_cuda(CastParams{in->data(), in->dtype, staged[i].in->ptr, Dtype::F32, in->numel()}, s.stream);
    if (it.op == Op::ReduceScatter) {
      staged[i].out = alloc_storage(s.device, (size_t)it.recv->numel() * 4);
      kp.push_back(staged[i].out);
    }
  }
  cuda_check(cudaGetLastError(), "cast before a collective");

  // 3. The NCCL calls, as one group.
  auto fail_all = [&](const std::string& code, const std::string& msg) {
    for (auto& c : comms) fail_comm(*c, code, msg + " (" + c->where() + ")");
    for (auto e : events) cudaEventDestroy(e);
    throw Error(code, msg);
  };
  {
    auto until = (Clock::now() + std::chrono::milliseconds((int64_t)timeout_ms)).time_since_epoch().count();
    for (auto& c : comms) {
      std::lock_guard<std::mutex> l(c->m);
      c->issuing_what = items[0].what;
      c->issuing_until.store((int64_t)until);
    }
  }
  struct ClearIssuing {
    std::vector<CommPtr>& cs;
    ~ClearIssuing() { for (auto& c : cs) c->issuing_until.store(0); }
  } clear_issuing{comms};
  nccl::Result r = A.GroupStart();
  if (r != nccl::ncclSuccess) fail_all("ERR_NCCL", "ncclGroupStart failed: " + nccl::error_string(r));
  std::string failed_what;
  for (size_t i = 0; i < items.size() && r == nccl::ncclSuccess; ++i) {
    Item& it = items[i];
    CommState& s = *it.comm;
    nccl::ncclComm_t c;
    {
      std::lock_guard<std::mutex> l(s.m);
      c = s.comm;
    }
    if (!c) { r = nccl::ncclInvalidUsage; failed_what = it.what + ": communicator aborted"; break; }
    void* st = (void*)s.stream;
    Staged& sg = staged[i];
    switch (it.op) {
      case Op::AllReduce:
        if (sg.in) r = A.AllReduce(sg.in->ptr, sg.in->ptr, it.recv->numel(), nccl::ncclFloat32, it.reduce, c, st);
        else r = A.AllReduce(it.recv->data(), it.recv->data(), it.recv->numel(), nccl_dtype(it.recv->dtype), it.reduce, c, st);
        break;
      case Op::ReduceScatter:
        if (sg.in) r = A.ReduceScatter(sg.in->ptr, sg.out->ptr, it.recv->numel(), nccl::ncclFloat32, it.reduce, c, st);
        else r = A.ReduceScatter(it.send->data(), it.recv->data(), it.recv->numel(), nccl_dtype(it.recv->dtype), it.reduce, c, st);
        break;
      case Op::AllGather:
        r = A.AllGather(it.send->data(), it.recv->data(), it.send->numel(), nccl_dtype(it.send->dtype), c, st);
        break;
      case Op::Broadcast:
        r = A.Broadcast(it.recv->data(), it.recv->data(), it.recv->numel(), nccl_dtype(it.recv->dtype), it.root, c, st);
        break;
      case Op::Send:
        r = A.Send(it.send->data(), it.send->numel(), nccl_dtype(it.send->dtype), it.peer, c, st);
        break;
      case Op::Recv:
        r = A.Recv(it.recv->data(), it.recv->numel(), nccl_dtype(it.recv->dtype), it.peer, c, st);
        break;
      case Op::Barrier:
        r = A.AllReduce(sg.in->ptr, sg.in->ptr, 1, nccl::ncclFloat32, nccl::ncclSum, c, st);
        break;
    }
    if (r != nccl::ncclSuccess && failed_what.empty()) failed_what = it.what;
  }
  nccl::Result re = A.GroupEnd();
  if (r != nccl::ncclSuccess) fail_all("ERR_NCCL", failed_what + " failed: " + nccl::error_string(r));
  if (re != nccl::ncclSuccess) fail_all("ERR_NCCL", items[0].what + " failed in ncclGroupEnd: " + nccl::error_string(re));

  // 4. Back from fp32; then the compute streams wait for the batch.
  for (size_t i = 0; i < items.size(); ++i) {
    Item& it = items[i];
    if (!staged[i].in || it.op == Op::Barrier) continue;
    CudaDeviceGuard g(it.comm->device);
    const void* src = it.op == Op::AllReduce ? staged[i].in->ptr : staged[i].out->ptr;
    cast_cuda(CastParams{src, Dtype::F32, it.recv->data(), it.recv->dtype, it.recv->numel()}, it.comm->stream);
  }
  cuda_check(cudaGetLastError(), "cast after a collective");
  for (auto e : events) cudaEventDestroy(e);  // destroying a recorded event is fine: waits already enqueued
  auto deadline = Clock::now() + std::chrono::milliseconds((int64_t)timeout_ms);
  for (size_t ci = 0; ci < comms.size(); ++ci) {
    CommState& s = *comms[ci];
    CudaDeviceGuard g(s.device);
    Pending p;
    cuda_check(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventRecord(p.done, s.stream), "cudaEventRecord");
    if (!deferred) cuda_check(cudaStreamWaitEvent(cuda_stream(s.device), p.done, 0), "cudaStreamWaitEvent");
    p.keep = std::move(keep[ci]);
    std::string what;
    for (auto& it : items)
      if (it.comm == comms[ci] && what.find(it.what) == std::string::npos) what += (what.empty() ? "" : ", ") + it.what;
    p.what = what;
    p.deadline = deadline;
    p.timeout_ms = (int64_t)timeout_ms;
    std::lock_guard<std::mutex> l(s.m);
    s.pending.push_back(std::move(p));
  }
  watchdog().kick();
  return info.Env().Undefined();
}
MB_EXPORT("ncclIssue", NcclIssue);

Napi::Value NcclJoin(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclJoin");
  CommPtr s = comm_arg(b.raw("comm"), "comm");
  b.finish();
  // The communication stream runs its batches in order: an event recorded now covers every one of them.
  CudaDeviceGuard g(s->device);
  cudaEvent_t e;
  cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  cuda_check(cudaEventRecord(e, s->stream), "cudaEventRecord");
  cuda_check(cudaStreamWaitEvent(cuda_stream(s->device), e, 0), "cudaStreamWaitEvent");
  cudaEventDestroy(e);
  return info.Env().Undefined();
}
MB_EXPORT("ncclJoin", NcclJoin);

Napi::Value NcclStatus(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclStatus");
  CommPtr s = comm_arg(b.raw("comm"), "comm");
  b.finish();
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> l(s->m);
  if (!s->failed.load()) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", s->err_code);
  o.Set("message", s->err_msg);
  o.Set("pending", (double)s->pending.size());
  return o;
}
MB_EXPORT("ncclStatus", NcclStatus);

Napi::Value NcclAbort(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclAbort");
  CommPtr s = comm_arg(b.raw("comm"), "comm");
  std::string reason = b.string("reason", "aborted by the user");
  b.finish();
  fail_comm(*s, "ERR_COMM", reason);
  return info.Env().Undefined();
}
MB_EXPORT("ncclAbort", NcclAbort);

// Waits (on a libuv thread) for the communicator's queued work, then destroys it. Idempotent.
Napi::Value NcclDestroy(const Napi::CallbackInfo& info) {
  Baton b(info, "ncclDestroy");
  CommPtr s = comm_arg(b.raw("comm"), "comm");
  b.finish();
  auto* w = new InitWorker(info.Env(), [s] {
    {
      std::lock_guard<std::mutex> l(s->m);
      if (s->destroyed) return std::vector<CommPtr>{};
      s->destroyed = true;  // later calls throw; the watchdog keeps polling what is queued
    }
    // Wait until the queued batches completed (or the watchdog aborted a hung one at its deadline):
    // destroying a communicator with work in flight would hang or crash.
    for (;;) {
      {
        std::lock_guard<std::mutex> l(s->m);
        if (s->pending.empty() || s->failed.load()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    nccl::ncclComm_t c = nullptr;
    {
      std::lock_guard<std::mutex> l(s->m);
      c = s->comm;
      s->comm = nullptr;
    }
    if (c) {
      CudaDeviceGuard g(s->device);
      nccl::api().CommDestroy(c);
    }
    return std::vector<CommPtr>{};
  }, false);
  auto p = w->promise();
  w->Queue();
  return p;
}
MB_EXPORT("ncclDestroy", NcclDestroy);

#else  // no CUDA: the multi-GPU entry points say why they cannot work

#define MB_NO_CUDA(name, fn)                                                              \
  Napi::Value fn(const Napi::CallbackInfo&) {                                             \
    throw Error("ERR_NO_CUDA", std::string(name) + ": NCCL groups need CUDA GPUs: " + cuda_unavailable_reason()); \
  }                                                                                       \
  MB_EXPORT(name, fn)
MB_NO_CUDA("ncclInitAll", NcclInitAll);
MB_NO_CUDA("ncclInitRank", NcclInitRank);
MB_NO_CUDA("ncclIssue", NcclIssue);
MB_NO_CUDA("ncclStatus", NcclStatus);
MB_NO_CUDA("ncclJoin", NcclJoin);
MB_NO_CUDA("ncclAbort", NcclAbort);
MB_NO_CUDA("ncclDestroy", NcclDestroy);
#undef MB_NO_CUDA

#endif

}  // namespace
}  // namespace mb
