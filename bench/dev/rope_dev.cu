// Standalone device check + timing of the RoPE kernels, independent of the addon (for a lent GPU).
// Build: nvcc -std=c++17 -O3 -DMEGABEAM_CUDA -Icsrc -gencode arch=compute_90a,code=sm_90a \
//   bench/dev/rope_dev.cu csrc/ops/rope/rope_cuda.cu csrc/ops/rope/rope_cpu.cpp -o build-rope/rope_dev
// Run:   build-rope/rope_dev [check] [bench]     (exit status != 0 on any failed check)
// GPU results are compared with rope_cpu (itself checked against a quad-precision reference), on
// fresh random inputs, outputs poisoned with NaN first.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/parallel.h"
#include "ops/rope/rope.h"

// The lead's pool lives in csrc/core/parallel.cpp; a plain thread split is enough here.
namespace mb {
int cpu_threads() { return (int)std::max(1u, std::thread::hardware_concurrency()); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  int64_t nt = std::min<int64_t>(cpu_threads(), std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
  std::vector<std::thread> th;
  for (int64_t k = 0; k < nt; ++k) th.emplace_back([&, k] { fn(n * k / nt, n * (k + 1) / nt); });
  for (auto& t : th) t.join();
}
}  // namespace mb

using namespace mb;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
      exit(2);                                                                                \
    }                                                                                         \
  } while (0)

static int g_fail = 0;
static std::mt19937_64 rng(std::random_device{}());

static float ld(Dtype d, const void* p, int64_t i) {
  if (d == Dtype::F32) return ((const float*)p)[i];
  uint16_t h = ((const uint16_t*)p)[i];
  return d == Dtype::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}
static void st(Dtype d, void* p, int64_t i, float v) {
  if (d == Dtype::F32) ((float*)p)[i] = v;
  else ((uint16_t*)p)[i] = d == Dtype::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
}
static double ulp(Dtype d, double v) {
  int mant = d == Dtype::F32 ? 23 : d == Dtype::F16 ? 10 : 7;
  int emin = d == Dtype::F32 ? -126 : d == Dtype::F16 ? -14 : -126;
  int e = v == 0 ? emin : std::max(emin, (int)std::floor(std::log2(std::fabs(v))));
  return std::ldexp(1.0, e - mant);
}
static const char* pname(RopePrecision p) {
  return p == RopePrecision::Exact ? "exact" : p == RopePrecision::F32 ? "fp32" : "bf16";
}

struct Cfg {
  Dtype dt; RopeStyle st; RopePrecision pr;
  int B, S, Hq, Hk, D, R;
  bool inplace, pos_tensor, inverse, misalign;
  float af; int64_t off;
};

// One GPU-vs-CPU comparison. misalign: head stride D+1 and a 1-element pointer offset (scalar path).
static void check(const Cfg& c) {
  const int es = dtype_size(c.dt), half = c.R / 2, nt = c.Hk > 0 ? 2 : 1;
  const int heads[2] = {c.Hq, c.Hk};
  std::vector<double> th(half);
  const double base = std::uniform_real_distribution<double>(1e4, 1e8)(rng);
  for (int i = 0; i < half; ++i) th[i] = 1.0 / std::pow(base, 2.0 * i / c.R);
  std::vector<int32_t> pos((size_t)c.B * c.S);
  for (auto& p : pos) p = (int32_t)std::uniform_int_distribution<int64_t>(0, (int64_t)1 << 22)(rng);

  RopeParams P{};
  P.num_tensors = nt; P.batch = c.B; P.seqlen = c.S; P.head_dim = c.D; P.rotary_dim = c.R; P.dtype = c.dt;
  P.style = c.st; P.precision = c.pr; P.pos_batch_stride = c.S; P.pos_seq_stride = 1;
  P.position_offset = c.off; P.attention_factor = c.af; P.inverse = c.inverse;
  RopeParams G = P;

  double *d_th; int32_t* d_pos;
  CK(cudaMalloc(&d_th, 8 * half));
  CK(cudaMalloc(&d_pos, 4 * pos.size()));
  CK(cudaMemcpy(d_th, th.data(), 8 * half, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_pos, pos.data(), 4 * pos.size(), cudaMemcpyHostToDevice));
  P.inv_freq = th.data(); G.inv_freq = d_th;
  P.positions = c.pos_tensor ? pos.data() : nullptr; G.positions = c.pos_tensor ? d_pos : nullptr;

  std::vector<std::vector<uint8_t>> hx(2), hy(2), gy(2);
  std::vector<uint8_t*> dx(2, nullptr), dy(2, nullptr);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int moff = c.misalign ? 1 : 0;
  for (int n = 0; n < nt; ++n) {
    const int64_t hs = c.D + moff, ss = hs * heads[n], bs = ss * c.S, numel = bs * c.B + moff;
    hx[n].resize(numel * es); hy[n].resize(numel * es); gy[n].resize(numel * es);
    for (int64_t i = 0; i < numel; ++i) st(c.dt, hx[n].data(), i, nd(rng));
    memset(hy[n].data(), 0xff, hy[n].size());  // NaN in every dtype
    CK(cudaMalloc(&dx[n], numel * es)); CK(cudaMalloc(&dy[n], numel * es));
    CK(cudaMemcpy(dx[n], hx[n].data(), numel * es, cudaMemcpyHostToDevice));
    CK(cudaMemset(dy[n], 0xff, numel * es));
    for (RopeParams* Q : {&P, &G}) {
      RopeTensor& t = Q->t[n];
      uint8_t* xb = Q == &P ? hx[n].data() : dx[n];
      uint8_t* yb = Q == &P ? hy[n].data() : dy[n];
      t.x = xb + moff * es;
      t.y = c.inplace ? (void*)(xb + moff * es) : (void*)(yb + moff * es);
      t.x_batch_stride = t.y_batch_stride = bs; t.x_seq_stride = t.y_seq_stride = ss;
      t.x_head_stride = t.y_head_stride = hs; t.heads = heads[n];
    }
  }
  std::vector<std::vector<uint8_t>> x0 = hx;
  rope_cpu(P);
  rope_cuda(G, 0);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  int64_t bad = 0, total = 0, differ = 0;
  double worst = 0;
  for (int n = 0; n < nt; ++n) {
    CK(cudaMemcpy(gy[n].data(), c.inplace ? dx[n] : dy[n], gy[n].size(), cudaMemcpyDeviceToHost));
    const std::vector<uint8_t>& cpu = c.inplace ? hx[n] : hy[n];
    const int64_t hs = c.D + moff, ss = hs * heads[n], bs = ss * c.S;
    for (int b = 0; b < c.B; ++b)
      for (int s = 0; s < c.S; ++s)
        for (int h = 0; h < heads[n]; ++h) {
          const int64_t row = moff + b * bs + s * ss + h * hs;
          for (int i = 0; i < half; ++i) {
            const int i1 = c.st == RopeStyle::NeoX ? i : 2 * i, i2 = c.st == RopeStyle::NeoX ? i + half : 2 * i + 1;
            const double a = ld(c.dt, x0[n].data(), row + i1), bb = ld(c.dt, x0[n].data(), row + i2);
            for (int k : {i1, i2}) {
              const double g = ld(c.dt, gy[n].data(), row + k), r = ld(c.dt, cpu.data(), row + k);
              // bf16 mode: cos/sin are rounded to bf16 from sinf/cosf, which differ by an ulp between
              // CUDA and glibc, so a tie can flip one table entry by 2^-8.
              double bound = ulp(c.dt, r) + std::ldexp(std::fabs(a) + std::fabs(bb), -21) * std::fabs(c.af);
              if (c.pr == RopePrecision::BF16) bound += std::ldexp(std::fabs(a) + std::fabs(bb), -7) * std::fabs(c.af);
              const double e = std::fabs(g - r);
              if (!(e <= bound)) ++bad;
              if (g != r) ++differ;
              worst = std::max(worst, e / ulp(c.dt, r));
              ++total;
            }
          }
          for (int d = c.R; d < c.D; ++d) {  // pass-through: bit-exact, untouched in place
            const uint8_t* gp = gy[n].data() + (row + d) * es;
            const uint8_t* xp = x0[n].data() + (row + d) * es;
            if (memcmp(gp, xp, es) != 0) ++bad;
            ++total;
          }
        }
    // elements between rows (misaligned padding) must be untouched
    if (c.misalign && !c.inplace) {
      uint8_t poison[4]; memset(poison, 0xff, 4);
      if (memcmp(gy[n].data(), poison, es) != 0) ++bad;
    }
    cudaFree(dx[n]); cudaFree(dy[n]);
  }
  cudaFree(d_th); cudaFree(d_pos);
  const bool ok = bad == 0;
  g_fail += !ok;
  printf("%s %-4s %-5s %-5s B%d S%d Hq%d Hk%d D%d R%d inpl=%d pos=%d inv=%d misal=%d af=%.2f off=%lld: "
         "%lld elems, gpu!=cpu %.3f%%, worst %.2f ulp, bad %lld\n",
         ok ? "ok  " : "FAIL", dtype_name(c.dt), c.st == RopeStyle::NeoX ? "neox" : "inter", pname(c.pr), c.B, c.S,
         c.Hq, c.Hk, c.D, c.R, c.inplace, c.pos_tensor, c.inverse, c.misalign, c.af, (long long)c.off,
         (long long)total, 100.0 * differ / total, worst, (long long)bad);
}

static void run_checks() {
  for (Dtype dt : {Dtype::BF16, Dtype::F16, Dtype::F32})
    for (RopeStyle st : {RopeStyle::NeoX, RopeStyle::Interleaved}) {
      check({dt, st, RopePrecision::Exact, 2, 300, 8, 0, 128, 128, false, false, false, false, 1.f, 4194304 - 300});
      check({dt, st, RopePrecision::Exact, 2, 77, 6, 2, 128, 128, true, true, true, false, 1.3f, 0});
      check({dt, st, RopePrecision::Exact, 3, 41, 5, 1, 96, 32, false, true, false, false, 0.7f, 0});
      check({dt, st, RopePrecision::Exact, 1, 50, 3, 2, 80, 48, true, false, true, false, 1.f, 1000});
      check({dt, st, RopePrecision::Exact, 2, 33, 4, 2, 64, 64, false, true, false, true, 1.f, 0});
      check({dt, st, RopePrecision::Exact, 2, 33, 3, 0, 70, 40, false, false, true, true, 1.1f, 77});
      check({dt, st, RopePrecision::Exact, 1, 20, 2, 1, 64, 64, true, true, false, true, 1.f, 0});
      check({dt, st, RopePrecision::F32, 2, 100, 4, 1, 128, 128, false, false, false, false, 1.f, 524287 - 100});
      check({dt, st, RopePrecision::BF16, 2, 100, 4, 1, 128, 128, false, true, true, false, 1.2f, 0});
    }
  // 8-byte and 4-byte vector paths (half = 36, 34)
  for (RopeStyle st : {RopeStyle::NeoX, RopeStyle::Interleaved}) {
    check({Dtype::BF16, st, RopePrecision::Exact, 2, 50, 4, 2, 72, 72, false, true, false, false, 1.f, 0});
    check({Dtype::F16, st, RopePrecision::Exact, 2, 50, 4, 2, 68, 68, true, false, true, false, 1.f, 9});
    check({Dtype::F32, st, RopePrecision::Exact, 2, 50, 4, 2, 68, 36, false, false, false, false, 1.f, 9});
  }
  // many tokens per block, few heads; and a big head count
  check({Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 1, 1000, 1, 0, 32, 32, false, false, false, false, 1.f, 0});
  check({Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 1, 3, 200, 40, 256, 256, false, true, false, false, 1.f, 0});
  // launch error path: rotary too large for the cos/sin table is ERR_UNSUPPORTED, not a bad launch
  try {
    RopeParams P{}; P.num_tensors = 1; P.batch = 1; P.seqlen = 1; P.head_dim = 20480; P.rotary_dim = 20480;
    P.dtype = Dtype::BF16; P.inv_freq = (const double*)16; P.attention_factor = 1; P.t[0].heads = 1;
    P.t[0].x = (void*)16; P.t[0].y = (void*)32;
    rope_cuda(P, 0);
    printf("FAIL no error for rotaryDim 20480\n"); ++g_fail;
  } catch (const Error& e) {
    printf("%s error path: %s %s\n", e.code == "ERR_UNSUPPORTED" ? "ok  " : "FAIL", e.code.c_str(), e.what());
    g_fail += e.code != "ERR_UNSUPPORTED";
  }
}

// ---------------------------------------------------------------- timing

struct Timer {
  cudaEvent_t a, b;
  Timer() { CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); }
  template <class F> double median_ms(F&& f, int reps) {
    std::vector<float> t;
    for (int w = 0; w < 3; ++w) f();
    for (int r = 0; r < reps; ++r) {
      CK(cudaEventRecord(a)); f(); CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
      float ms; CK(cudaEventElapsedTime(&ms, a, b)); t.push_back(ms);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

__global__ void fill_random(uint16_t* p, int64_t n, uint64_t seed, bool f32) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull; z ^= z >> 31; z *= 0xBF58476D1CE4E5B9ull; z ^= z >> 29;
    // values in [-2, 2): exponent of 1.x, random mantissa and sign (bf16/f16 bit patterns, or f32 halves)
    const uint16_t mant = (uint16_t)(z & 0x7f), sign = (uint16_t)((z >> 8) & 1) << 15;
    // f32: odd (high) halves carry sign, exponent 127 and 7 mantissa bits, even halves random bits
    p[i] = f32 && !(i & 1) ? (uint16_t)(z >> 16) : (uint16_t)(sign | 0x3f80 | mant);
  }
}

static void run_bench(FILE* json) {
  Timer T;
  const int64_t tokens = 524288;
  struct B { const char* name; Dtype dt; RopeStyle st; RopePrecision pr; int S, Hq, Hk, D, R; bool inplace; };
  const B benches[] = {
      {"bf16 neox exact 512Kx32x128", Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 32, 0, 128, 128, false},
      {"bf16 neox exact in-place", Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 32, 0, 128, 128, true},
      {"bf16 interleaved exact", Dtype::BF16, RopeStyle::Interleaved, RopePrecision::Exact, 524288, 32, 0, 128, 128, false},
      {"bf16 neox fp32-mode", Dtype::BF16, RopeStyle::NeoX, RopePrecision::F32, 524288, 32, 0, 128, 128, false},
      {"bf16 neox bf16-mode", Dtype::BF16, RopeStyle::NeoX, RopePrecision::BF16, 524288, 32, 0, 128, 128, false},
      {"bf16 neox q32+k8 one call", Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 32, 8, 128, 128, false},
      {"bf16 neox partial R=64", Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 32, 0, 128, 64, false},
      {"bf16 neox 8 heads", Dtype::BF16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 8, 0, 128, 128, false},
      {"f16 neox exact", Dtype::F16, RopeStyle::NeoX, RopePrecision::Exact, 524288, 32, 0, 128, 128, false},
      {"f32 neox exact 256K tok", Dtype::F32, RopeStyle::NeoX, RopePrecision::Exact, 262144, 32, 0, 128, 128, false},
  };
  (void)tokens;
  size_t maxbytes = (size_t)524288 * 40 * 128 * 2;
  uint8_t *x, *y;
  CK(cudaMalloc(&x, maxbytes)); CK(cudaMalloc(&y, maxbytes));
  fill_random<<<4096, 256>>>((uint16_t*)x, (int64_t)(maxbytes / 2), rng(), false);
  CK(cudaGetLastError());
  std::vector<double> th(64);
  for (int i = 0; i < 64; ++i) th[i] = 1.0 / std::pow(1e6, 2.0 * i / 128);
  double* d_th; CK(cudaMalloc(&d_th, 8 * 128)); CK(cudaMemcpy(d_th, th.data(), 8 * 64, cudaMemcpyHostToDevice));
  printf("\n%-30s %10s %10s %10s %10s %8s\n", "case", "MB", "rope ms", "GB/s", "copy GB/s", "ratio");
  fprintf(json, "[\n");
  bool first = true;
  for (const B& b : benches) {
    const int es = dtype_size(b.dt);
    if (b.dt == Dtype::F32) fill_random<<<4096, 256>>>((uint16_t*)x, (int64_t)(maxbytes / 2), rng(), true);
    const size_t qbytes = (size_t)b.S * b.Hq * b.D * es, kbytes = (size_t)b.S * b.Hk * b.D * es;
    const size_t bytes = qbytes + kbytes;
    RopeParams P{};
    P.num_tensors = b.Hk ? 2 : 1; P.batch = 1; P.seqlen = b.S; P.head_dim = b.D; P.rotary_dim = b.R; P.dtype = b.dt;
    P.style = b.st; P.precision = b.pr; P.inv_freq = d_th; P.position_offset = 0; P.attention_factor = 1.f;
    std::vector<double> thr(b.R / 2);
    for (int n = 0; n < P.num_tensors; ++n) {
      RopeTensor& t = P.t[n];
      const int H = n ? b.Hk : b.Hq;
      t.heads = H;
      t.x = x + (n ? qbytes : 0);
      t.y = b.inplace ? (void*)t.x : (void*)(y + (n ? qbytes : 0));
      t.x_head_stride = t.y_head_stride = b.D; t.x_seq_stride = t.y_seq_stride = (int64_t)H * b.D;
      t.x_batch_stride = t.y_batch_stride = (int64_t)b.S * H * b.D;
    }
    const double ms = T.median_ms([&] { rope_cuda(P, 0); }, 20);
    const double cms = T.median_ms([&] { CK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, 0)); }, 20);
    // partial rotary in place touches only the rotary bytes; out of place it reads and writes all
    const double moved = 2.0 * bytes * (b.inplace && b.R < b.D ? (double)b.R / b.D : 1.0);
    const double gbs = moved / ms / 1e6, cgbs = 2.0 * bytes / cms / 1e6;
    printf("%-30s %10.1f %10.3f %10.1f %10.1f %7.1f%%\n", b.name, bytes / 1e6, ms, gbs, cgbs, 100.0 * gbs / cgbs);
    fprintf(json, "%s  {\"case\": \"%s\", \"bytes\": %zu, \"rope_ms\": %.4f, \"rope_GBps\": %.1f, \"copy_ms\": %.4f, \"copy_GBps\": %.1f}",
            first ? "" : ",\n", b.name, bytes, ms, gbs, cms, cgbs);
    first = false;
    if (b.dt == Dtype::F32) fill_random<<<4096, 256>>>((uint16_t*)x, (int64_t)(maxbytes / 2), rng(), false);
  }
  fprintf(json, "\n]\n");
  cudaFree(x); cudaFree(y); cudaFree(d_th);
}

int main(int argc, char** argv) {
  bool do_check = argc < 2, do_bench = argc < 2;
  const char* json_path = "rope_dev.json";
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "check")) do_check = true;
    else if (!strcmp(argv[i], "bench")) do_bench = true;
    else json_path = argv[i];
  }
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (do_check) run_checks();
  if (do_bench) {
    FILE* f = fopen(json_path, "w");
    run_bench(f ? f : stdout);
    if (f) fclose(f);
  }
  printf("checks failed: %d\n", g_fail);
  return g_fail != 0;
}
