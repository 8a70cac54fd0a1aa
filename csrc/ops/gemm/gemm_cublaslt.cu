// cuBLASLt, loaded at run time with dlopen: the build machine has no cuBLAS headers and the addon must
// work (through the builtin kernels) where the library is missing. Only the small part of the C API
// used here is declared below.
//
// Enum values and struct layouts were matched against NVIDIA's cublasLt.h (the CUDA 11.x header,
// "Copyright 1993-2021 NVIDIA": cublasLtMatmulDescAttributes_t, cublasLtMatrixLayoutAttribute_t,
// cublasLtMatmulHeuristicResult_t, the function prototypes), NVIDIA's nvmath-python bindings generated
// from the headers of CUDA 11.0.3 to 12.8.0 (cublasComputeType_t, cublasLtMatmulPreferenceAttributes_t),
// and library_types.h of the CUDA 13.0 toolkit on the build machine (cudaDataType_t). NVIDIA keeps these
// values stable across major versions (CUDA 12 and 13 use the same numbers).
//
// Row-major via the usual swap: row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLASLt
// sees "A" = our B and "B" = our A with the same transpose flags and m/n exchanged.
#include <dlfcn.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../../common/error.h"
#include "../../core/runtime.h"
#include "gemm.h"

namespace mb {
namespace {
namespace lt {
// cublas_api.h / cublasLt.h / library_types.h (see the header comment for the versions matched)
typedef int Status;                 // cublasStatus_t, CUBLAS_STATUS_SUCCESS = 0
typedef void* Handle;               // cublasLtHandle_t
typedef void* MatmulDesc;           // cublasLtMatmulDesc_t
typedef void* Layout;               // cublasLtMatrixLayout_t
typedef void* Preference;           // cublasLtMatmulPreference_t
struct Algo { uint64_t data[8]; };  // cublasLtMatmulAlgo_t
struct HeuristicResult {            // cublasLtMatmulHeuristicResult_t (96 bytes)
  Algo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};
static_assert(sizeof(HeuristicResult) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");
constexpr int CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14;  // cudaDataType_t
constexpr int CUBLAS_COMPUTE_32F = 68;                            // cublasComputeType_t
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;                   // cublasOperation_t
constexpr int DESC_TRANSA = 3, DESC_TRANSB = 4;                   // cublasLtMatmulDescAttributes_t (int32_t)
constexpr int LAYOUT_BATCH_COUNT = 5;                             // cublasLtMatrixLayoutAttribute_t (int32_t)
constexpr int LAYOUT_STRIDED_BATCH_OFFSET = 6;                    //   (int64_t)
constexpr int PREF_MAX_WORKSPACE_BYTES = 1;                       // cublasLtMatmulPreferenceAttributes_t (uint64_t)
constexpr int PREF_MIN_ALIGNMENT_A_BYTES = 5, PREF_MIN_ALIGNMENT_B_BYTES = 6,  // (uint32_t, default 256)
              PREF_MIN_ALIGNMENT_C_BYTES = 7, PREF_MIN_ALIGNMENT_D_BYTES = 8;

struct Api {
  Status (*Create)(Handle*);
  size_t (*GetVersion)();
  Status (*MatmulDescCreate)(MatmulDesc*, int computeType, int scaleType);
  Status (*MatmulDescSetAttribute)(MatmulDesc, int attr, const void* buf, size_t size);
  Status (*MatmulDescDestroy)(MatmulDesc);
  Status (*MatrixLayoutCreate)(Layout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*MatrixLayoutSetAttribute)(Layout, int attr, const void* buf, size_t size);
  Status (*MatrixLayoutDestroy)(Layout);
  Status (*MatmulPreferenceCreate)(Preference*);
  Status (*MatmulPreferenceSetAttribute)(Preference, int attr, const void* buf, size_t size);
  Status (*MatmulPreferenceDestroy)(Preference);
  Status (*MatmulAlgoGetHeuristic)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Preference, int requested,
                                   HeuristicResult* results, int* returned);
  Status (*Matmul)(Handle, MatmulDesc, const void* alpha, const void* A, Layout, const void* B, Layout,
                   const void* beta, const void* C, Layout, void* D, Layout, const Algo*, void* workspace,
                   size_t workspaceSize, cudaStream_t stream);
};
}  // namespace lt

constexpr size_t kWorkspace = 32u << 20;  // what PyTorch gives cuBLASLt on Hopper

struct Loaded {
  GemmInfo info;
  lt::Api api{};
  bool ok = false;
};

bool try_open(const std::string& path, Loaded& L, std::string& err, bool quiet_missing) {
  // Search candidates that do not exist are not worth reporting; files that fail to load are.
  if (quiet_missing && path.find('/') != std::string::npos && access(path.c_str(), F_OK) != 0) return false;
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    if (quiet_missing && path.find('/') == std::string::npos) return false;  // plain soname: not installed
    const char* e = dlerror();
    if (!err.empty()) err += "; ";
    err += e ? e : path + ": dlopen failed";
    return false;
  }
  lt::Api a{};
  bool all = true;
  auto sym = [&](auto& fn, const char* name) {
    void* s = dlsym(h, name);
    if (!s) all = false;
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(s);
  };
  sym(a.Create, "cublasLtCreate");
  sym(a.GetVersion, "cublasLtGetVersion");
  sym(a.MatmulDescCreate, "cublasLtMatmulDescCreate");
  sym(a.MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute");
  sym(a.MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  sym(a.MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  sym(a.MatrixLayoutSetAttribute, "cublasLtMatrixLayoutSetAttribute");
  sym(a.MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  sym(a.MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  sym(a.MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  sym(a.MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  sym(a.MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(a.Matmul, "cublasLtMatmul");
  if (!all) {
    if (!err.empty()) err += "; ";
    err += path + ": missing cublasLt symbols";
    dlclose(h);
    return false;
  }
  L.api = a;
  L.ok = true;
  L.info.found = true;
  L.info.path = path;
  char real[4096];
  if (dlinfo(h, RTLD_DI_ORIGIN, real) == 0) {  // report the directory it really came from
    const char* slash = std::strrchr(path.c_str(), '/');
    L.info.path = std::string(real) + "/" + (slash ? slash + 1 : path.c_str());
  }
  const size_t v = a.GetVersion();
  L.info.version = std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." + std::to_string(v % 100);
  return true;
}

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  const char* sonames[] = {"libcublasLt.so.13", "libcublasLt.so.12"};
  std::vector<std::string> dirs;
  for (const char* env : {"CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"})
    if (const char* d = std::getenv(env)) dirs.push_back(std::string(d) + "/lib64");
  dirs.push_back("/usr/local/cuda/lib64");
  if (const char* ld = std::getenv("LD_LIBRARY_PATH")) {
    std::string s(ld);
    size_t i = 0;
    while (i <= s.size()) {
      size_t j = s.find(':', i);
      if (j == std::string::npos) j = s.size();
      if (j > i) dirs.push_back(s.substr(i, j - i));
      i = j + 1;
    }
  }
  // PyTorch wheels keep cuBLAS in site-packages/nvidia/cublas/lib (CUDA 13 wheels: nvidia/cu13/lib).
  std::vector<std::string> pats;
  for (const char* env : {"VIRTUAL_ENV", "CONDA_PREFIX"})
    if (const char* d = std::getenv(env)) {
      pats.push_back(std::string(d) + "/lib/python3*/site-packages/nvidia/cublas/lib");
      pats.push_back(std::string(d) + "/lib/python3*/site-packages/nvidia/cu1*/lib");
    }
  if (const char* home = std::getenv("HOME")) {
    pats.push_back(std::string(home) + "/.local/lib/python3*/site-packages/nvidia/cublas/lib");
    pats.push_back(std::string(home) + "/.local/lib/python3*/site-packages/nvidia/cu1*/lib");
  }
  for (const char* root : {"/usr/local/lib", "/usr/lib", "/opt/conda/lib"})
    for (const char* kind : {"site-packages", "dist-packages"})
      for (const char* sub : {"nvidia/cublas/lib", "nvidia/cu1*/lib"})
        pats.push_back(std::string(root) + "/python3*/" + kind + "/" + sub);
  pats.push_back("/usr/local/cuda-1*/lib64");
  for (const std::string& pat : pats) {
    glob_t g;
    if (glob(pat.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) dirs.push_back(g.gl_pathv[i]);
    globfree(&g);
  }
  // .13 anywhere before .12 anywhere; the plain name first (LD_LIBRARY_PATH, rpath, the ldconfig cache).
  for (const char* s : sonames) {
    out.push_back(s);
    for (const std::string& d : dirs) out.push_back(d + "/" + s);
  }
  return out;
}

Loaded& loaded() {
  static Loaded L = [] {
    Loaded L;
    std::string err;
    if (const char* over = std::getenv("MEGABEAM_CUBLASLT"); over && *over) {
      try_open(over, L, err, false);  // an explicit path is the only one tried
    } else {
      for (const std::string& c : candidates())
        if (try_open(c, L, err, true)) break;
      if (!L.ok)
        err = "libcublasLt.so.13/.12 not found (set MEGABEAM_CUBLASLT to its path)" + (err.empty() ? "" : ": " + err);
    }
    const char* force = std::getenv("MEGABEAM_GEMM");
    const bool builtin = force && std::strcmp(force, "builtin") == 0;
    L.info.backend = L.ok && !builtin ? "cublaslt" : "builtin";
    if (builtin) L.info.error = "MEGABEAM_GEMM=builtin";
    else if (!L.ok) L.info.error = err;
    return L;
  }();
  return L;
}

void lt_check(lt::Status s, const char* what) {
  if (s != 0) throw Error("ERR_CUDA", std::string("cuBLASLt ") + what + " failed with status " + std::to_string(s));
}

int dtype_code(Dtype d) {
  return d == Dtype::BF16 ? lt::CUDA_R_16BF : d == Dtype::F16 ? lt::CUDA_R_16F : lt::CUDA_R_32F;
}

// Largest power of two (<= 256) dividing the address and, with batching, the batch stride in bytes.
uint32_t alignment(const void* p, int64_t stride, int64_t batch, int esize) {
  uint64_t a = reinterpret_cast<uintptr_t>(p) | 256u;
  if (batch > 1) a |= (uint64_t)stride * esize | 256u;
  return (uint32_t)(a & (~a + 1));
}

struct Device {
  lt::Handle handle = nullptr;
  StoragePtr workspace;
  std::string error;  // cublasLtCreate failed (e.g. a driver older than the library): use the builtin
};

struct Plan {
  bool ok = false;
  bool tuned = false;
  std::string error;                             // why !ok
  std::vector<lt::HeuristicResult> candidates;  // kept only when autotuning
  lt::MatmulDesc desc = nullptr;
  lt::Layout la = nullptr, lb = nullptr, lc = nullptr;
  lt::Algo algo{};
  size_t ws = 0;
};

using Key = std::tuple<int, int, int, int, int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t>;

std::mutex g_mu;
std::map<int, Device> g_devices;
std::map<Key, Plan> g_plans;

Device& device_state(int dev) {
  Device& d = g_devices[dev];
  if (!d.handle && d.error.empty()) {
    CudaDeviceGuard guard(dev);
    const lt::Status st = loaded().api.Create(&d.handle);
    if (st != 0) {
      d.handle = nullptr;
      d.error = "cublasLtCreate failed with status " + std::to_string(st);
      return d;
    }
    d.workspace = alloc_storage(dev, kWorkspace);  // kept for the life of the process, like PyTorch's
  }
  return d;
}

// MEGABEAM_GEMM_TUNE=N (N > 1): time the heuristic's first N algorithms on the first call of each
// problem (with beta == 0, so out may be written repeatedly) and keep the fastest. That first call waits
// for the stream (events); off by default, where the heuristic's first choice is used as PyTorch does.
int tune_count() {
  static const int n = [] {
    const char* e = std::getenv("MEGABEAM_GEMM_TUNE");
    const int v = e ? std::atoi(e) : 0;
    return v > 1 ? std::min(v, 16) : 1;
  }();
  return n;
}

void autotune(const lt::Api& api, lt::Handle h, Plan& pl, const GemmParams& p, void* ws, cudaStream_t s) {
  cudaEvent_t e0, e1;
  if (cudaEventCreate(&e0) != cudaSuccess) return;
  if (cudaEventCreate(&e1) != cudaSuccess) { cudaEventDestroy(e0); return; }
  const float alpha = p.alpha, beta = 0.f;
  float best = 1e30f;
  for (const lt::HeuristicResult& c : pl.candidates) {
    auto run = [&] {
      return api.Matmul(h, pl.desc, &alpha, p.b, pl.la, p.a, pl.lb, &beta, p.out, pl.lc, p.out, pl.lc, &c.algo, ws,
                        c.workspaceSize, s);
    };
    if (run() != 0) continue;  // warm-up; an algorithm that fails is skipped
    cudaEventRecord(e0, s);
    bool ok = true;
    for (int r = 0; r < 3 && ok; ++r) ok = run() == 0;
    cudaEventRecord(e1, s);
    float ms = 0.f;
    if (!ok || cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) continue;
    if (ms < best) {
      best = ms;
      pl.algo = c.algo;
      pl.ws = c.workspaceSize;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  pl.tuned = true;
  pl.candidates.clear();
  pl.candidates.shrink_to_fit();
}

Plan make_plan(const lt::Api& api, lt::Handle h, const GemmParams& p, uint32_t al_a, uint32_t al_b, uint32_t al_o) {
  Plan pl;
  // Column-major view: Lt-A = our B, Lt-B = our A, Lt-C/D = our out (n x m, ld = ldo).
  const int ta = p.trans_b ? lt::CUBLAS_OP_T : lt::CUBLAS_OP_N;
  const int tb = p.trans_a ? lt::CUBLAS_OP_T : lt::CUBLAS_OP_N;
  lt_check(api.MatmulDescCreate(&pl.desc, lt::CUBLAS_COMPUTE_32F, lt::CUDA_R_32F), "MatmulDescCreate");
  int32_t t32 = ta;
  lt_check(api.MatmulDescSetAttribute(pl.desc, lt::DESC_TRANSA, &t32, sizeof t32), "set TRANSA");
  t32 = tb;
  lt_check(api.MatmulDescSetAttribute(pl.desc, lt::DESC_TRANSB, &t32, sizeof t32), "set TRANSB");
  // Lt-A stored as given: ta == N -> rows n, cols k; ta == T -> rows k, cols n (column-major, ld = ldb).
  lt_check(api.MatrixLayoutCreate(&pl.la, dtype_code(p.b_dtype), ta == lt::CUBLAS_OP_N ? p.n : p.k,
                                  ta == lt::CUBLAS_OP_N ? p.k : p.n, p.ldb), "layout A");
  lt_check(api.MatrixLayoutCreate(&pl.lb, dtype_code(p.a_dtype), tb == lt::CUBLAS_OP_N ? p.k : p.m,
                                  tb == lt::CUBLAS_OP_N ? p.m : p.k, p.lda), "layout B");
  lt_check(api.MatrixLayoutCreate(&pl.lc, dtype_code(p.out_dtype), p.n, p.m, p.ldo), "layout C");
  if (p.batch > 1) {
    const int32_t bc = (int32_t)p.batch;
    const int64_t sa = p.stride_b, sb = p.stride_a, sc = p.stride_out;
    lt_check(api.MatrixLayoutSetAttribute(pl.la, lt::LAYOUT_BATCH_COUNT, &bc, sizeof bc), "batch A");
    lt_check(api.MatrixLayoutSetAttribute(pl.la, lt::LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa), "stride A");
    lt_check(api.MatrixLayoutSetAttribute(pl.lb, lt::LAYOUT_BATCH_COUNT, &bc, sizeof bc), "batch B");
    lt_check(api.MatrixLayoutSetAttribute(pl.lb, lt::LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb), "stride B");
    lt_check(api.MatrixLayoutSetAttribute(pl.lc, lt::LAYOUT_BATCH_COUNT, &bc, sizeof bc), "batch C");
    lt_check(api.MatrixLayoutSetAttribute(pl.lc, lt::LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof sc), "stride C");
  }
  lt::Preference pref = nullptr;
  lt_check(api.MatmulPreferenceCreate(&pref), "PreferenceCreate");
  const uint64_t ws = kWorkspace;
  lt_check(api.MatmulPreferenceSetAttribute(pref, lt::PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), "set workspace");
  lt_check(api.MatmulPreferenceSetAttribute(pref, lt::PREF_MIN_ALIGNMENT_A_BYTES, &al_b, sizeof al_b), "align A");
  lt_check(api.MatmulPreferenceSetAttribute(pref, lt::PREF_MIN_ALIGNMENT_B_BYTES, &al_a, sizeof al_a), "align B");
  lt_check(api.MatmulPreferenceSetAttribute(pref, lt::PREF_MIN_ALIGNMENT_C_BYTES, &al_o, sizeof al_o), "align C");
  lt_check(api.MatmulPreferenceSetAttribute(pref, lt::PREF_MIN_ALIGNMENT_D_BYTES, &al_o, sizeof al_o), "align D");
  const int want = tune_count();
  std::vector<lt::HeuristicResult> r((size_t)std::max(1, want));
  int got = 0;
  const lt::Status s = api.MatmulAlgoGetHeuristic(h, pl.desc, pl.la, pl.lb, pl.lc, pl.lc, pref, (int)r.size(), r.data(), &got);
  api.MatmulPreferenceDestroy(pref);
  if (s != 0) got = 0;
  for (int i = 0; i < got; ++i)
    if (r[i].state == 0 && r[i].workspaceSize <= kWorkspace) {
      if (!pl.ok) {  // the heuristic's first choice
        pl.ok = true;
        pl.algo = r[i].algo;
        pl.ws = r[i].workspaceSize;
      }
      if (want > 1) pl.candidates.push_back(r[i]);
    }
  pl.tuned = pl.candidates.size() <= 1;
  return pl;
}

}  // namespace

GemmInfo gemm_info() { return loaded().info; }

bool gemm_cublaslt(const GemmParams& p, cudaStream_t s, std::string* why) {
  Loaded& L = loaded();
  if (!L.ok) {
    if (why) *why = "cuBLASLt is not available: " + L.info.error;
    return false;
  }
  // What cuBLASLt takes here: equal 16-bit inputs -> same dtype or f32 out; f32 -> f32; int32 sizes.
  const bool half_in = p.a_dtype == p.b_dtype && (p.a_dtype == Dtype::BF16 || p.a_dtype == Dtype::F16) &&
                       (p.out_dtype == p.a_dtype || p.out_dtype == Dtype::F32);
  const bool f32_in = p.a_dtype == Dtype::F32 && p.b_dtype == Dtype::F32 && p.out_dtype == Dtype::F32;
  if (!half_in && !f32_in) {
    if (why) *why = "cuBLASLt takes bf16/f16 inputs of one dtype (out the same or f32) or f32 -> f32";
    return false;
  }
  constexpr int64_t kI32 = 0x7fffffff;
  if (p.m > kI32 || p.n > kI32 || p.k > kI32 || p.batch > kI32 || p.k == 0) {
    if (why) *why = "sizes beyond int32, or K = 0";
    return false;
  }
  const uint32_t al_a = alignment(p.a, p.stride_a, p.batch, dtype_size(p.a_dtype));
  const uint32_t al_b = alignment(p.b, p.stride_b, p.batch, dtype_size(p.b_dtype));
  const uint32_t al_o = alignment(p.out, p.stride_out, p.batch, dtype_size(p.out_dtype));
  std::lock_guard<std::mutex> lock(g_mu);
  Device& d = device_state(p.device);
  if (!d.handle) {
    if (why) *why = d.error;
    return false;
  }
  const Key key{p.device, (int)p.a_dtype, (int)p.b_dtype, (int)p.out_dtype, p.m, p.n, p.k, p.trans_a, p.trans_b,
                p.lda, p.ldb, p.ldo, p.batch, p.batch > 1 ? p.stride_a : 0, p.batch > 1 ? p.stride_b : 0,
                p.batch > 1 ? p.stride_out : 0, al_a, al_b, al_o};
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    Plan fresh;
    std::string err;
    try {
      fresh = make_plan(L.api, d.handle, p, al_a, al_b, al_o);
    } catch (const Error& e) {  // a descriptor call failed: remember the problem as not cuBLASLt's
      fresh = Plan{};
      err = e.what();
    }
    if (!fresh.ok && err.empty()) err = "no cuBLASLt algorithm for this problem (the heuristic returned none)";
    fresh.error = err;
    it = g_plans.emplace(key, std::move(fresh)).first;
  }
  Plan& pl = it->second;
  if (!pl.ok) {
    if (why) *why = pl.error;
    return false;
  }
  if (!pl.tuned && p.beta == 0.f) autotune(L.api, d.handle, pl, p, d.workspace->ptr, s);
  const float alpha = p.alpha, beta = p.beta;
  const lt::Status st = L.api.Matmul(d.handle, pl.desc, &alpha, p.b, pl.la, p.a, pl.lb, &beta, p.out, pl.lc, p.out,
                                     pl.lc, &pl.algo, d.workspace->ptr, pl.ws, s);
  if (st != 0) {  // nothing was launched: the caller falls back (auto) or reports it (forced)
    pl.ok = false;
    pl.error = "cublasLtMatmul failed with status " + std::to_string(st);
    if (why) *why = pl.error;
    return false;
  }
  return true;
}

}  // namespace mb
