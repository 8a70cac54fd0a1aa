// Matrix multiply (row-major, batched, fp32 accumulation). CPU: blocked, vectorised, multi-threaded;
// CUDA: cuBLASLt loaded at run time, else megabeam's own tensor-core kernels (`gemmInfo()` says which).
// The native op decides validity (csrc/ops/gemm: gemm_check + the binding's shape rules); this file
// only coerces options and computes the result's shape.
import { Dtype, checkDtype } from './dtype';
import { ArgumentError, callNative as call } from './errors';
import { native } from './native';
import { Tensor, arg } from './tensor';

export interface MatmulOptions {
  /** a is stored [..., K, M] (use its transpose). */
  transA?: boolean;
  /** b is stored [..., N, K] (use its transpose). */
  transB?: boolean;
  /** Multiplies op(a)·op(b) (default 1). */
  alpha?: number;
  /** Multiplies the old contents of `out` (default 0: out is only written; non-zero needs `out`). */
  beta?: number;
  /** Write (or accumulate, with beta) here; its dtype may differ from the inputs' (e.g. f32 from bf16). */
  out?: Tensor;
  /** dtype of a new output (default a's); not with `out`. */
  dtype?: Dtype;
  /**
   * CUDA backend (for tests and benchmarks): 'auto' (default: cuBLASLt when loaded, else builtin),
   * 'builtin' (megabeam's kernels), 'cublaslt' (ERR_UNSUPPORTED when missing or it cannot take the problem).
   */
  backend?: 'auto' | 'builtin' | 'cublaslt';
}

export interface LinearOptions {
  /** Write (or accumulate, with beta) here instead of a new tensor. */
  out?: Tensor;
  /** out = x·wᵀ + beta·out (needs `out`). */
  beta?: number;
}

export interface GemmInfo {
  /** cuBLASLt was found and loaded. */
  found: boolean;
  /** What CUDA matmuls use: 'cublaslt', 'builtin' (megabeam's kernels), or 'cpu' (a build without CUDA). */
  backend: 'cublaslt' | 'builtin' | 'cpu';
  /** The cuBLASLt library file loaded. */
  path?: string;
  /** cuBLASLt's version (major.minor.patch). */
  version?: string;
  /** Why cuBLASLt is not used (not found, MEGABEAM_GEMM=builtin, built without CUDA). */
  error?: string;
}

function options<T extends object>(op: string, opts: unknown): T {
  if (opts === undefined) return {} as T;
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) throw new ArgumentError(`${op}: options must be an object`);
  return opts as T;
}

function resultShape(a: Tensor, b: Tensor, o: MatmulOptions): number[] {
  // Only for the returned Tensor's metadata; the native side checks the shapes and throws first.
  const as = a.shape, bs = b.shape;
  const batch = bs.length === 2 ? as.slice(0, -2) : bs.slice(0, -2);
  const m = o.transA ? as[as.length - 1] : as[as.length - 2];
  const n = o.transB ? bs[bs.length - 2] : bs[bs.length - 1];
  return [...batch, m, n];
}

/**
 * out = alpha·op(a)·op(b) + beta·out with fp32 accumulation, rounded once to out's dtype.
 * a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with transB); the batch
 * dimensions must match, or one operand is 2-D and is broadcast over the other's batch.
 * Inputs may be f32, f16 or bf16 (independently), on one device.
 */
export function matmul(a: Tensor, b: Tensor, opts?: MatmulOptions): Tensor {
  const o = options<MatmulOptions>('matmul', opts);
  const ha = arg(a, 'matmul: a');
  const hb = arg(b, 'matmul: b');
  const hout = o.out === undefined ? undefined : arg(o.out, 'matmul: out');
  if (o.dtype !== undefined) checkDtype(o.dtype, 'matmul: dtype');
  const h = call(() => native().gemm({
    a: ha, b: hb, out: hout, transA: o.transA, transB: o.transB, alpha: o.alpha, beta: o.beta, dtype: o.dtype,
    backend: o.backend,
  }));
  if (o.out) return o.out;
  return new Tensor(h, resultShape(a, b, o), o.dtype ?? a.dtype, a.device);
}

/** x [..., in] · wᵀ with w [out, in] -> [..., out] (one GEMM over all leading rows). */
export function linear(x: Tensor, w: Tensor, opts?: LinearOptions): Tensor {
  const o = options<LinearOptions>('linear', opts);
  arg(x, 'linear: x');  // ERR_ARG / ERR_DISPOSED before x.ndim is read
  arg(w, 'linear: w');
  if (x.ndim === 1) {
    // [in] -> [1, in] view, result back to [out]
    const x2 = x.reshape([1, x.shape[0]]);
    const o2 = o.out?.ndim === 1 ? o.out.reshape([1, o.out.shape[0]]) : o.out;
    try {
      const y = matmul(x2, w, { transB: true, out: o2, beta: o.beta });
      if (o.out) return o.out;
      const y1 = y.reshape([y.shape[1]]);
      y.dispose();
      return y1;
    } finally {
      x2.dispose();
      if (o2 && o2 !== o.out) o2.dispose();
    }
  }
  return matmul(x, w, { transB: true, out: o.out, beta: o.beta });
}

/** Which GEMM backend CUDA matmuls use (printed by `megabeam doctor`). */
export function gemmInfo(): GemmInfo {
  return call(() => native().gemmInfo()) as GemmInfo;
}
