// buildInfo(): what this addon is, for `megabeam doctor`. A no-argument query, so no Baton: it reads
// nothing from JS and cannot fail on bad input.
//   { cuda: bool, cudaArchs: string[], cudaCompiledVersion, cudaRuntimeVersion, cudaDriverVersion,
//     libcudaFound, driverError, napiVersion, compiler, cppStandard }
// Driver facts: with the static CUDA runtime, cudaDriverGetVersion() returns 0 when no driver is
// installed, and cudaGetDeviceCount() then reports cudaErrorInsufficientDriver, which reads as "driver too
// old". libcudaFound (dlopen of libcuda.so.1) and driverVersion == 0 tell "no driver" apart from "old".
#include <string>
#include <vector>

#include "binding.h"

#if defined(MEGABEAM_CUDA)
#include <cuda_runtime.h>
#include <dlfcn.h>
#endif

// MB_CUDA_ARCHS comes from the build (scripts/cuda.js archs-define / CMakeLists.txt) as a bare
// comma list such as sm_80,sm_86,sm_89,sm_90a,compute_90; stringified here so no quoting crosses a shell.
#define MB_STR_(...) #__VA_ARGS__
#define MB_STR(...) MB_STR_(__VA_ARGS__)

namespace mb {
namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array archs = Napi::Array::New(env);
#if defined(MEGABEAM_CUDA)
  o.Set("cuda", true);
#if defined(MB_CUDA_ARCHS)
  const std::vector<std::string> list = split_commas(MB_STR(MB_CUDA_ARCHS));
  for (size_t i = 0; i < list.size(); ++i) archs.Set((uint32_t)i, list[i]);
#endif
  o.Set("cudaCompiledVersion", CUDART_VERSION);
  int rt = 0, drv = 0;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
  cudaError_t de = cudaDriverGetVersion(&drv);
  if (de != cudaSuccess) drv = 0;
  cudaGetLastError();
  o.Set("cudaRuntimeVersion", rt);
  o.Set("cudaDriverVersion", drv);
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  o.Set("libcudaFound", h != nullptr);
  if (h) dlclose(h);
  int count = 0;
  cudaError_t ce = cudaGetDeviceCount(&count);
  cudaGetLastError();
  o.Set("deviceCountError", ce == cudaSuccess ? std::string() : std::string(cudaGetErrorName(ce)));
#else
  o.Set("cuda", false);
#endif
  o.Set("cudaArchs", archs);
  o.Set("napiVersion", NAPI_VERSION);
#if defined(__clang__)
  o.Set("compiler", std::string("clang ") + __clang_version__);
#elif defined(__GNUC__)
  o.Set("compiler", std::string("gcc ") + __VERSION__);
#else
  o.Set("compiler", "unknown");
#endif
#if defined(__aarch64__)
  o.Set("arch", "arm64");
#elif defined(__x86_64__)
  o.Set("arch", "x64");
#else
  o.Set("arch", "other");
#endif
  return o;
}
MB_EXPORT("buildInfo", BuildInfo);

}  // namespace
}  // namespace mb
