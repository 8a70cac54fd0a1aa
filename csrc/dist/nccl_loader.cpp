// Finds and dlopen's libnccl.so.2; see nccl_loader.h.
#include "nccl_loader.h"

#include <dlfcn.h>
#include <glob.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "../common/error.h"

namespace mb {
namespace nccl {
namespace {

bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string env(const char* k) {
  const char* v = std::getenv(k);
  return v ? std::string(v) : std::string();
}

void add_glob(std::vector<std::string>& out, const std::string& pattern) {
  glob_t g;
  if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.push_back(g.gl_pathv[i]);
  globfree(&g);
}

// Where NCCL is kept when it is not on the loader's path: the CUDA toolkit, distribution packages,
// and the wheels PyTorch installs (site-packages/nvidia/nccl/lib), in a venv, conda or the system.
std::vector<std::string> candidates() {
  std::vector<std::string> c;
  const char* lib = "libnccl.so.2";
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"}) {
    std::string h = env(var);
    if (!h.empty()) { c.push_back(h + "/lib64/" + lib); c.push_back(h + "/lib/" + lib); }
  }
  for (const char* d : {"/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                        "/usr/lib64", "/usr/local/lib", "/opt/nccl/lib"})
    c.push_back(std::string(d) + "/" + lib);
  std::vector<std::string> roots;
  for (const char* var : {"VIRTUAL_ENV", "CONDA_PREFIX"}) {
    std::string h = env(var);
    if (!h.empty()) { roots.push_back(h + "/lib/python3*/site-packages"); c.push_back(h + "/lib/" + lib); }
  }
  // PYTHONPATH entries (site-packages of an inactive venv, for instance).
  std::string pp = env("PYTHONPATH");
  for (size_t b = 0; b <= pp.size();) {
    size_t e = pp.find(':', b);
    if (e == std::string::npos) e = pp.size();
    if (e > b) c.push_back(pp.substr(b, e - b) + "/nvidia/nccl/lib/" + lib);
    b = e + 1;
  }
  std::string home = env("HOME");
  if (!home.empty()) roots.push_back(home + "/.local/lib/python3*/site-packages");
  for (const char* r : {"/usr/local/lib/python3*/site-packages", "/usr/local/lib/python3*/dist-packages",
                        "/usr/lib/python3*/site-packages", "/usr/lib/python3/dist-packages", "/opt/conda/lib/python3*/site-packages",
                        "/opt/*/lib/python3*/site-packages"})
    roots.push_back(r);
  for (auto& r : roots) add_glob(c, r + "/nvidia/nccl/lib/" + lib);
  return c;
}

const char* kHowTo =
    "NCCL is needed for collectives between GPUs. Install it (e.g. `pip install nvidia-nccl-cu12`, "
    "or the libnccl2 package from NVIDIA's CUDA repository), or point MEGABEAM_NCCL at libnccl.so.2";

LoadInfo g_info;
Api g_api;
std::once_flag g_once;

bool resolve(void* h, std::string& missing) {
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(h, name);
    if (!p && missing.empty()) missing = name;
    return p;
  };
#define MB_SYM(field, name) g_api.field = reinterpret_cast<decltype(g_api.field)>(sym(name))
  MB_SYM(GetVersion, "ncclGetVersion");
  MB_SYM(GetUniqueId, "ncclGetUniqueId");
  MB_SYM(CommInitRank, "ncclCommInitRank");
  MB_SYM(CommInitAll, "ncclCommInitAll");
  MB_SYM(CommAbort, "ncclCommAbort");
  MB_SYM(CommDestroy, "ncclCommDestroy");
  MB_SYM(CommGetAsyncError, "ncclCommGetAsyncError");
  MB_SYM(GetErrorString, "ncclGetErrorString");
  MB_SYM(GroupStart, "ncclGroupStart");
  MB_SYM(GroupEnd, "ncclGroupEnd");
  MB_SYM(Send, "ncclSend");
  MB_SYM(Recv, "ncclRecv");
  MB_SYM(AllReduce, "ncclAllReduce");
  MB_SYM(AllGather, "ncclAllGather");
  MB_SYM(ReduceScatter, "ncclReduceScatter");
  MB_SYM(Broadcast, "ncclBroadcast");
#undef MB_SYM
  return missing.empty();
}

void load() {
  std::string override_path = env("MEGABEAM_NCCL");
  std::vector<std::string> tries;
  if (!override_path.empty()) {
    tries.push_back(override_path);  // only this one: the user asked for it
  } else {
    tries.push_back("libnccl.so.2");  // LD_LIBRARY_PATH, rpath, ldconfig cache
    for (auto& p : candidates())
      if (is_file(p)) tries.push_back(p);
  }
  std::string first_error;
  for (auto& p : tries) {
    dlerror();
    void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      if (first_error.empty() || !override_path.empty()) first_error = e ? e : ("cannot load " + p);
      continue;
    }
    std::string missing;
    if (!resolve(h, missing)) {
      first_error = p + " is not a usable NCCL 2 library (no symbol " + missing + ")";
      dlclose(h);
      continue;
    }
    int v = 0;
    if (g_api.GetVersion(&v) != ncclSuccess) v = 0;
    // NCCL_VERSION_CODE is major*10000 + minor*100 + patch since 2.9, major*1000 + minor*100 + patch before.
    int major = v >= 10000 ? v / 10000 : v / 1000;
    int minor = v >= 10000 ? (v % 10000) / 100 : (v % 1000) / 100;
    int patch = v % 100;
    if (major < 2 || (major == 2 && minor < 10)) {
      first_error = p + " is NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) +
                    "; megabeam needs NCCL >= 2.10 (bf16, avg)";
      dlclose(h);
      continue;
    }
    Dl_info di;
    std::string real = p;
    if (dladdr(reinterpret_cast<void*>(g_api.GetVersion), &di) && di.dli_fname) real = di.dli_fname;
    g_info.found = true;
    g_info.path = real;
    g_info.version = v;
    g_info.version_string = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
    return;
  }
  g_api = Api{};
  if (!override_path.empty()) {
    g_info.path = override_path;
    g_info.error = "MEGABEAM_NCCL=" + override_path + " could not be loaded: " + first_error + ". " + kHowTo;
  } else {
    g_info.error = std::string("libnccl.so.2 was not found (looked on the library path, in $CUDA_HOME, ") +
                   "/usr/lib and Python site-packages/nvidia/nccl/lib)" +
                   (first_error.empty() ? "" : ": " + first_error) + ". " + kHowTo;
  }
}

}  // namespace

const LoadInfo& load_info() {
  std::call_once(g_once, load);
  return g_info;
}

const Api& api() {
  const LoadInfo& i = load_info();
  if (!i.found) throw Error("ERR_NO_NCCL", i.error);
  return g_api;
}

std::string error_string(Result r) {
  const char* s = g_api.GetErrorString ? g_api.GetErrorString(r) : nullptr;
  return (s ? std::string(s) : std::string("error")) + " (ncclResult " + std::to_string(r) + ")";
}

}  // namespace nccl
}  // namespace mb
