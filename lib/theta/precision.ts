// Worst-case error of a RoPE angle p·θ_i formed in a low-precision float format.
import { fail, show } from './validate';

/** Most dim pairs an invFreq may have (head dims are at most 65536). */
const MAX_PAIRS = 32768;

export type AngleDtype = 'fp32' | 'bf16' | 'tf32' | 'fp16';

export interface FloatFormat {
  /** Significand precision in bits, implicit bit included. */
  precision: number;
  /** Smallest normal exponent. */
  emin: number;
  /** Largest exponent. */
  emax: number;
}

export const floatFormats: Readonly<Record<AngleDtype, FloatFormat>> = {
  fp32: { precision: 24, emin: -126, emax: 127 },
  tf32: { precision: 11, emin: -126, emax: 127 },
  bf16: { precision: 8, emin: -126, emax: 127 },
  fp16: { precision: 11, emin: -14, emax: 15 },
};

/** floor(log2 x) for finite x > 0, exact (Math.log2 can be off by one near powers of two). */
function exponentOf(x: number): number {
  let e = Math.floor(Math.log2(x));
  if (Math.pow(2, e) > x) e--;
  else if (Math.pow(2, e + 1) <= x) e++;
  return e;
}

/** Half an ulp of |x| in the format (subnormal spacing below 2^emin). */
export function halfUlp(x: number, f: FloatFormat): number {
  if (typeof x !== 'number' || Number.isNaN(x)) fail('x', `must be a number, got ${show(x)}`);
  if (f === null || typeof f !== 'object' || !Number.isInteger(f.precision) || !Number.isInteger(f.emin))
    fail('format', 'must be one of floatFormats');
  const a = Math.abs(x);
  const e = a === 0 ? f.emin : Math.max(exponentOf(a), f.emin);
  return Math.pow(2, e - f.precision);
}

/** Values at or above this round to infinity under round-to-nearest. */
function overflowAt(f: FloatFormat): number {
  return Math.pow(2, f.emax) * (2 - Math.pow(2, -f.precision));
}

/**
 * Per-dimension bound on |fl(p̂·θ̂_i) − p·θ_i| where p̂ = fl(p), θ̂_i = fl(θ_i) and the product is rounded
 * once, all to nearest in `dtype`. With h(x) = ½ulp(x):
 *   bound_i = p·h(θ_i) + θ_i·h(p) + h(p)·h(θ_i) + h((p + h(p))·(θ_i + h(θ_i)))
 * where h(p) = 0 when the integer p ≤ 2^precision (exactly representable). Infinity when p or the product
 * overflows the format (fp16 beyond 65504). Non-decreasing in p.
 */
export function angleErrorBound(position: number, invFreq: ArrayLike<number>, dtype: AngleDtype): Float64Array {
  if (typeof dtype !== 'string' || !Object.prototype.hasOwnProperty.call(floatFormats, dtype)) {
    fail('dtype', `must be one of ${Object.keys(floatFormats).join(', ')}, got ${show(dtype)}`);
  }
  if (typeof position !== 'number' || !Number.isSafeInteger(position) || position < 0) {
    fail('position', `must be a non-negative integer, got ${show(position)}`);
  }
  if (invFreq === null || typeof invFreq !== 'object' || !Number.isSafeInteger(invFreq.length) || invFreq.length <= 0 ||
      invFreq.length > MAX_PAIRS) {
    fail('invFreq', `must be a non-empty array of at most ${MAX_PAIRS} numbers, got ${show(invFreq)}`);
  }
  const f = floatFormats[dtype];
  const over = overflowAt(f);
  const p = position;
  const hp = p <= Math.pow(2, f.precision) ? 0 : halfUlp(p, f);
  const out = new Float64Array(invFreq.length);
  for (let i = 0; i < out.length; i++) {
    const th = invFreq[i];
    if (typeof th !== 'number' || !Number.isFinite(th) || !(th > 0)) fail('invFreq', `[${i}] must be a finite number > 0, got ${show(th)}`);
    if (p === 0) continue; // 0·θ̂ is exact
    if (p >= over || th >= over) {
      out[i] = Infinity;
      continue;
    }
    const ht = halfUlp(th, f);
    const prodMax = (p + hp) * (th + ht);
    out[i] = prodMax >= over ? Infinity : p * ht + th * hp + hp * ht + halfUlp(prodMax, f);
  }
  return out;
}

/**
 * megabeam's exact RoPE mode (rope.apply's default precision): the angle error stays below this bound at
 * every int32 position (measured ≤ 9e-8 rad; docs/rope.md). The one number the theta table, its JSON and
 * the docs quote.
 */
export const EXACT_MODE_ANGLE_ERROR = 1e-7;
export const EXACT_MODE_ANGLE_ERROR_MEASURED = 9e-8;
