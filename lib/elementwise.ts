// Element-wise arithmetic: fp32 math between any float dtypes, rounded once to the output's dtype.
// The native op decides validity (csrc/ops/elementwise: axpby_check); this file only coerces options.
import { Dtype } from './dtype';
import { ArgumentError, callNative as call } from './errors';
import { native } from './native';
import { Tensor, arg } from './tensor';

export interface AxpbyOptions {
  /** Multiplies a (default 1). */
  alpha?: number;
  /** Multiplies b (default 1). */
  beta?: number;
  /** Write here (may be exactly a or b: in place) instead of a new tensor. */
  out?: Tensor;
  /** dtype of a new output (default a's); not with `out`. */
  dtype?: Dtype;
}

function options(op: string, opts: unknown): AxpbyOptions {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) throw new ArgumentError(`${op}: options must be an object`);
  return opts as AxpbyOptions;
}

function axpby(op: string, a: Tensor, b: Tensor | undefined, o: AxpbyOptions): Tensor {
  const ha = arg(a, `${op}: a`);
  const hb = b === undefined ? undefined : arg(b, `${op}: b`);
  const hout = o.out === undefined ? undefined : arg(o.out, `${op}: out`);
  const h = call(() => native().axpby({ a: ha, b: hb, out: hout, alpha: o.alpha, beta: o.beta, dtype: o.dtype }));
  // The native check accepted the call: out, or the new tensor's dtype (o.dtype, default a's).
  return o.out ?? new Tensor(h, a.shape, o.dtype ?? a.dtype, a.device);
}

/** alpha·a + beta·b (same element count, same device). */
export function add(a: Tensor, b: Tensor, opts?: AxpbyOptions): Tensor {
  return axpby('add', a, b, options('add', opts));
}

/** alpha·a (also a dtype cast with `dtype`, or in place with `out: a`). */
export function scale(a: Tensor, alpha: number, opts?: Omit<AxpbyOptions, 'alpha' | 'beta'>): Tensor {
  const o = options('scale', opts);
  return axpby('scale', a, undefined, { ...o, alpha });
}
