// RoPE on CUDA. Memory-bound: a block owns `tpb` consecutive tokens. It first computes cos/sin for
// every (token, pair) of its tokens into shared memory (once, whatever the head count), then streams
// all heads of those tokens, of q and k, with 16-byte loads/stores; a thread handles VEC elements of
// one row per item (neox: the VEC-wide pieces at e and e + rotary/2) and keeps U items' loads in
// flight before computing, since y may alias x and the compiler cannot reorder loads over stores.
#if defined(MEGABEAM_CUDA)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "../../common/error.h"
#include "rope.h"
#include "rope_math.h"

namespace mb {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;  // items whose loads are issued together (bench/dev/rope_dev.cu tunes it)
constexpr int kMaxTokPerBlock = (int)kRopeCudaMaxTokPerBlock;
constexpr int kMaxCsBytes = 40 * 1024;
static_assert(kRopeCudaMaxRotaryDim / 2 * 8 <= kMaxCsBytes, "rope_check's CUDA rotaryDim limit fits the cos/sin table");

template <int BYTES> struct RawVec;
template <> struct RawVec<16> { using type = int4; };
template <> struct RawVec<8> { using type = int2; };
template <> struct RawVec<4> { using type = int; };
template <> struct RawVec<2> { using type = unsigned short; };

template <typename T, int N>
union Pack {
  typename RawVec<sizeof(T) * N>::type raw;
  T v[N];
};

// Plain loads/stores: .cs (evict-first) hints measured 3-4% slower on an H200 (bench/NOTES.md).
template <typename V> __device__ __forceinline__ V ld_stream(const V* p) { return *p; }
template <typename V> __device__ __forceinline__ void st_stream(V* p, V v) { *p = v; }

template <typename T, int N, bool AL>
__device__ __forceinline__ void load_pack(const T* ptr, Pack<T, N>& out) {
  if constexpr (AL) {
    out.raw = ld_stream(reinterpret_cast<const typename RawVec<sizeof(T) * N>::type*>(ptr));
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = ptr[j];
  }
}
template <typename T, int N, bool AL>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, N>& in) {
  if constexpr (AL) {
    st_stream(reinterpret_cast<typename RawVec<sizeof(T) * N>::type*>(ptr), in.raw);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) ptr[j] = in.v[j];
  }
}

// NP consecutive floats from shared memory, as wide loads when the (compile-time known) alignment allows.
template <int NP>
__device__ __forceinline__ void load_cs(const float* src, float (&dst)[NP]) {
  if constexpr (NP % 4 == 0) {
#pragma unroll
    for (int j = 0; j < NP; j += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + j);
      dst[j] = v.x; dst[j + 1] = v.y; dst[j + 2] = v.z; dst[j + 3] = v.w;
    }
  } else if constexpr (NP % 2 == 0) {
#pragma unroll
    for (int j = 0; j < NP; j += 2) {
      const float2 v = *reinterpret_cast<const float2*>(src + j);
      dst[j] = v.x; dst[j + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < NP; ++j) dst[j] = src[j];
  }
}

// Element conversions on the device: the hardware's round-to-nearest-even conversions give the same
// bits as dtype.h's hand-written ones for every non-NaN value (NaN payloads may differ), at a fraction
// of the instructions (one cvt for two outputs), which matters: f16 through dtype.h ran at half the
// copy bandwidth on an H200.
template <Dtype DT> struct DevElem;
template <> struct DevElem<Dtype::F32> {
  using T = float;
  static __device__ __forceinline__ float load(T v) { return v; }
  static __device__ __forceinline__ T store(float a) { return a; }
  static __device__ __forceinline__ void store2(float a, float b, T& o0, T& o1) { o0 = a; o1 = b; }
};
template <> struct DevElem<Dtype::BF16> {
  using T = uint16_t;
  static __device__ __forceinline__ float load(T v) { return __uint_as_float((uint32_t)v << 16); }
  static __device__ __forceinline__ T store(float a) { return __bfloat16_as_ushort(__float2bfloat16_rn(a)); }
  static __device__ __forceinline__ void store2(float a, float b, T& o0, T& o1) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    o0 = __bfloat16_as_ushort(h.x);
    o1 = __bfloat16_as_ushort(h.y);
  }
};
template <> struct DevElem<Dtype::F16> {
  using T = uint16_t;
  static __device__ __forceinline__ float load(T v) { return __half2float(__ushort_as_half(v)); }
  static __device__ __forceinline__ T store(float a) { return __half_as_ushort(__float2half_rn(a)); }
  static __device__ __forceinline__ void store2(float a, float b, T& o0, T& o1) {
    const __half2 h = __floats2half2_rn(a, b);
    o0 = __half_as_ushort(h.x);
    o1 = __half_as_ushort(h.y);
  }
};

__host__ __device__ constexpr int round_up4(int v) { return (v + 3) & ~3; }

// Blocks per SM asked of the register allocator (bench/NOTES.md): neox at 4 caps the 16-byte
// bf16/f16 kernels at 64 registers (70 otherwise, 3 blocks/SM); interleaved items are light and gain
// from more warps (92% -> 96% of copy bandwidth at 6).
template <RopeStyle ST> constexpr int min_blocks() { return ST == RopeStyle::Interleaved ? 6 : 4; }

// VEC: elements per load. AL: 16/8/4-byte aligned vector loads; otherwise element loads
// (VEC = 1 for neox, 2 for interleaved) and pass-through copied one element at a time.
// pass2: a pass-through item is two consecutive packs (fewer, fuller items), else one.
template <Dtype DT, RopeStyle ST, int VEC, bool AL>
__global__ void __launch_bounds__(kThreads, min_blocks<ST>())
rope_kernel(const RopeParams p, const int tpb, const int chunks_rot, const int chunks_pass, const bool pass2) {
  using D = DevElem<DT>;
  using T = typename D::T;
  constexpr bool kNeox = ST == RopeStyle::NeoX;
  constexpr int NP = kNeox ? VEC : VEC / 2;  // pairs per rotary item
  constexpr int PV = AL ? VEC : 1;           // elements per pass-through pack
  constexpr int kStride = kThreads * kUnroll;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* offs = reinterpret_cast<int64_t*>(smem_raw);  // [tpb][x0, y0, x1, y1] row offsets
  float* cos_s = reinterpret_cast<float*>(offs + 4 * tpb);
  const int half = p.rotary_dim >> 1;
  float* sin_s = cos_s + round_up4(tpb * half);

  const int64_t ntok = (int64_t)p.batch * p.seqlen;
  const int64_t tok0 = (int64_t)blockIdx.x * tpb;
  const int ntb = (int)min((int64_t)tpb, ntok - tok0);

  // Item idx = (t * heads + h) * cpr + c: token t of the block, head h, chunk c of the row (rotary
  // chunks first, then pass-through). Slot u walks idx = tid + u*kThreads + k*kStride; (c, h, t)
  // advance by carries instead of a division per item.
  int ci[kUnroll], hi[kUnroll], ti[kUnroll];
  int cpr = 0, dc = 0, dh = 0, dt = 0;

  auto setup = [&](const RopeTensor& tn) {
    cpr = chunks_rot + (tn.x == tn.y ? 0 : chunks_pass);  // in place: pass-through left untouched
    const int dq = kStride / cpr;
    dc = kStride - dq * cpr;
    dh = dq % tn.heads;
    dt = dq / tn.heads;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int idx = threadIdx.x + u * kThreads, q = idx / cpr;
      ci[u] = idx - q * cpr;
      hi[u] = q % tn.heads;
      ti[u] = q / tn.heads;
    }
  };
  auto load_slot = [&](const RopeTensor& tn, int u, int64_t row, Pack<T, VEC>& va, Pack<T, VEC>& vb) {
    const T* x = static_cast<const T*>(tn.x) + row + hi[u] * tn.x_head_stride;
    if (ci[u] < chunks_rot) {
      const int e = ci[u] * VEC;
      load_pack<T, VEC, AL>(x + e, va);
      if constexpr (kNeox) load_pack<T, VEC, AL>(x + e + half, vb);
    } else {
      const int e = p.rotary_dim + (ci[u] - chunks_rot) * PV * (pass2 ? 2 : 1);
      if constexpr (AL) {
        load_pack<T, VEC, true>(x + e, va);
        if (pass2) load_pack<T, VEC, true>(x + e + VEC, vb);
      } else {
        va.v[0] = x[e];
      }
    }
  };
  auto store_slot = [&](const RopeTensor& tn, int u, int64_t row, const Pack<T, VEC>& va, const Pack<T, VEC>& vb) {
    T* y = static_cast<T*>(tn.y) + row + hi[u] * tn.y_head_stride;
    if (ci[u] >= chunks_rot) {
      const int e = p.rotary_dim + (ci[u] - chunks_rot) * PV * (pass2 ? 2 : 1);
      if constexpr (AL) {
        store_pack<T, VEC, true>(y + e, va);
        if (pass2) store_pack<T, VEC, true>(y + e + VEC, vb);
      } else {
        y[e] = va.v[0];
      }
      return;
    }
    const int e = ci[u] * VEC;
    float cv[NP], sv[NP];
    const int m = ti[u] * half + (kNeox ? e : e / 2);
    load_cs<NP>(cos_s + m, cv);
    load_cs<NP>(sin_s + m, sv);
    if constexpr (kNeox) {
      Pack<T, VEC> oa, ob;
      if constexpr (VEC == 1) {
        const float a = D::load(va.v[0]), b = D::load(vb.v[0]);
        oa.v[0] = D::store(a * cv[0] - b * sv[0]);
        ob.v[0] = D::store(b * cv[0] + a * sv[0]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; j += 2) {
          const float a0 = D::load(va.v[j]), b0 = D::load(vb.v[j]);
          const float a1 = D::load(va.v[j + 1]), b1 = D::load(vb.v[j + 1]);
          D::store2(a0 * cv[j] - b0 * sv[j], a1 * cv[j + 1] - b1 * sv[j + 1], oa.v[j], oa.v[j + 1]);
          D::store2(b0 * cv[j] + a0 * sv[j], b1 * cv[j + 1] + a1 * sv[j + 1], ob.v[j], ob.v[j + 1]);
        }
      }
      store_pack<T, VEC, AL>(y + e, oa);
      store_pack<T, VEC, AL>(y + e + half, ob);
    } else {
      Pack<T, VEC> oa;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const float a = D::load(va.v[2 * j]), b = D::load(va.v[2 * j + 1]);
        D::store2(a * cv[j] - b * sv[j], b * cv[j] + a * sv[j], oa.v[2 * j], oa.v[2 * j + 1]);
      }
      store_pack<T, VEC, AL>(y + e, oa);
    }
  };
  auto advance = [&](int heads) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      ci[u] += dc;
      int carry = ci[u] >= cpr;
      ci[u] -= carry ? cpr : 0;
      hi[u] += dh + carry;
      carry = hi[u] >= heads;
      hi[u] -= carry ? heads : 0;
      ti[u] += dt + carry;
    }
  };

  for (int idx = threadIdx.x; idx < ntb * half; idx += kThreads) {
    const int t = idx / half, i = idx - t * half;
    const int64_t tok = tok0 + t, b = tok / p.seqlen, s = tok - b * p.seqlen;
    const int64_t pos = p.positions ? (int64_t)p.positions[b * p.pos_batch_stride + s * p.pos_seq_stride]
                                    : p.position_offset + s;
    float c, sn;
    rope_detail::rope_cos_sin(p.precision, pos, p.inv_freq[i], p.attention_factor, p.inverse, c, sn);
    cos_s[idx] = c;
    sin_s[idx] = sn;
  }
  for (int t = threadIdx.x; t < ntb; t += kThreads) {
    const int64_t tok = tok0 + t, b = tok / p.seqlen, s = tok - b * p.seqlen;
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      offs[4 * t + 2 * n] = b * p.t[n].x_batch_stride + s * p.t[n].x_seq_stride;
      offs[4 * t + 2 * n + 1] = b * p.t[n].y_batch_stride + s * p.t[n].y_seq_stride;
    }
  }
  __syncthreads();

#pragma unroll
  for (int n = 0; n < 2; ++n) {  // static index: p.t[n] stays in parameter space
    if (n >= p.num_tensors) break;
    const RopeTensor& tn = p.t[n];
    if (tn.heads == 0) continue;
    setup(tn);
    while (ti[0] < ntb) {  // slot 0 holds the smallest index
      Pack<T, VEC> va[kUnroll], vb[kUnroll];  // all loads issued before any result is needed
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (ti[u] < ntb) load_slot(tn, u, offs[4 * ti[u] + 2 * n], va[u], vb[u]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (ti[u] < ntb) store_slot(tn, u, offs[4 * ti[u] + 2 * n + 1], va[u], vb[u]);
      advance(tn.heads);
    }
  }
}

bool aligned_for(const RopeParams& p, int vec, int es) {
  const int half = p.rotary_dim / 2;
  if (p.style == RopeStyle::NeoX ? half % vec != 0 : (vec < 2 || p.rotary_dim % vec != 0)) return false;
  if (p.head_dim % vec != 0) return false;  // pass-through pieces start at rotary_dim, end at head_dim
  const uintptr_t bytes = (uintptr_t)vec * es;
  for (int n = 0; n < p.num_tensors; ++n) {
    const RopeTensor& t = p.t[n];
    if (((uintptr_t)t.x | (uintptr_t)t.y) % bytes != 0) return false;
    for (int64_t s : {t.x_batch_stride, t.x_seq_stride, t.x_head_stride, t.y_batch_stride, t.y_seq_stride,
                      t.y_head_stride})
      if (s % vec != 0) return false;
  }
  return true;
}

template <Dtype DT, RopeStyle ST, int VEC, bool AL>
void launch(const RopeParams& p, cudaStream_t stream) {
  constexpr int PV = AL ? VEC : 1;
  const int half = p.rotary_dim / 2;
  const int chunks_rot = ST == RopeStyle::NeoX ? half / VEC : p.rotary_dim / VEC;
  const bool pass2 = AL && (p.head_dim - p.rotary_dim) % (2 * PV) == 0;
  const int chunks_pass = (p.head_dim - p.rotary_dim) / (PV * (pass2 ? 2 : 1));
  int64_t work = 0;  // items per token
  for (int n = 0; n < p.num_tensors; ++n)
    work += (int64_t)p.t[n].heads * (chunks_rot + (p.t[n].x == p.t[n].y ? 0 : chunks_pass));
  // Enough tokens per block for ~kUnroll*2 items per thread, bounded by the cos/sin table size.
  int64_t tpb = (kThreads * kUnroll * 2 + work - 1) / work;
  tpb = std::min<int64_t>(tpb, kMaxTokPerBlock);
  tpb = std::min<int64_t>(tpb, kMaxCsBytes / (8 * half));
  tpb = std::max<int64_t>(tpb, 1);
  const int64_t ntok = (int64_t)p.batch * p.seqlen;
  const int64_t blocks = (ntok + tpb - 1) / tpb;
  MB_CHECK(blocks <= 0x7fffffff, "ERR_UNSUPPORTED", "rope: too many tokens for one launch");
  const size_t smem = 32 * (size_t)tpb + 8 * (size_t)round_up4((int)tpb * half);
  rope_kernel<DT, ST, VEC, AL><<<(unsigned)blocks, kThreads, smem, stream>>>(p, (int)tpb, chunks_rot, chunks_pass, pass2);
}

template <Dtype DT, RopeStyle ST>
void dispatch_vec(const RopeParams& p, cudaStream_t stream) {
  constexpr int es = (int)sizeof(typename Elem<DT>::T);
  if (aligned_for(p, 16 / es, es)) return launch<DT, ST, 16 / es, true>(p, stream);
  if (aligned_for(p, 8 / es, es)) return launch<DT, ST, 8 / es, true>(p, stream);
  if constexpr (ST == RopeStyle::NeoX || 4 / es >= 2) {
    if (aligned_for(p, 4 / es, es)) return launch<DT, ST, 4 / es, true>(p, stream);
  }
  launch<DT, ST, ST == RopeStyle::NeoX ? 1 : 2, false>(p, stream);
}

}  // namespace

void rope_cuda(const RopeParams& p, cudaStream_t stream) {
  // rope_check(p, n, true) passed in the binding (limits included); only the empty case is left.
  int64_t heads_total = 0;
  for (int n = 0; n < p.num_tensors; ++n) heads_total += p.t[n].heads;
  if ((int64_t)p.batch * p.seqlen == 0 || heads_total == 0) return;
  if (p.style == RopeStyle::NeoX) {
    MB_DISPATCH_FLOAT(p.dtype, DT, dispatch_vec<DT, RopeStyle::NeoX>(p, stream));
  } else {
    MB_DISPATCH_FLOAT(p.dtype, DT, dispatch_vec<DT, RopeStyle::Interleaved>(p, stream));
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error("ERR_CUDA", std::string("rope kernel launch: ") + cudaGetErrorString(e));
}

}  // namespace mb
#endif  // MEGABEAM_CUDA
