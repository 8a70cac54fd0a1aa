// Independent float64 reference for RoPE (no native code, no lib/ imports).
// Exact angles come from BigInt fixed-point arithmetic: pos * theta is formed exactly and reduced
// mod 2*pi with a 256-bit pi, so the reference angle is the correctly rounded double of the true
// reduced angle. The fp32 / bf16 precision modes are emulated at the rounding points the native
// code documents (see csrc/ops/rope/rope.h and docs/rope.md).

export type RefDtype = 'f32' | 'f16' | 'bf16';
export type RefStyle = 'neox' | 'interleaved';
export type RefPrecision = 'exact' | 'fp32' | 'bf16';

// ---------------------------------------------------------------- rounding helpers

const FORMATS: Record<RefDtype, { mant: number; emin: number; max: number }> = {
  f32: { mant: 23, emin: -126, max: (2 - 2 ** -23) * 2 ** 127 },
  f16: { mant: 10, emin: -14, max: 65504 },
  bf16: { mant: 7, emin: -126, max: (2 - 2 ** -7) * 2 ** 127 },
};

function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  return e;
}

/** Round-to-nearest-even of a float64 straight to the format (one rounding, subnormals, overflow to inf). */
export function roundTo(dtype: RefDtype, x: number): number {
  if (dtype === 'f32') return Math.fround(x);
  if (!Number.isFinite(x) || x === 0) return x;
  const f = FORMATS[dtype];
  const a = Math.abs(x);
  const e = Math.max(f.emin, floorLog2(a));
  const quantum = 2 ** (e - f.mant);
  const y = a / quantum; // exact: power-of-two scaling
  let r = Math.floor(y);
  const d = y - r;
  if (d > 0.5 || (d === 0.5 && r % 2 === 1)) r += 1;
  const v = r * quantum;
  if (v > f.max) return x < 0 ? -Infinity : Infinity;
  return x < 0 ? -v : v;
}

/** Spacing of the format's representable numbers around |x| (the ulp of x's binade). */
export function ulp(dtype: RefDtype, x: number): number {
  const f = FORMATS[dtype];
  const a = Math.abs(x);
  const e = a === 0 || !Number.isFinite(a) ? f.emin : Math.max(f.emin, floorLog2(a));
  return 2 ** (e - f.mant);
}

export const bf16 = (x: number): number => roundTo('bf16', x);
export const f16 = (x: number): number => roundTo('f16', x);

// ---------------------------------------------------------------- exact angles (BigInt fixed point)

const FRAC = 256n; // fractional bits of the fixed-point angles
const GUARD = 32n;

// pi by Machin's formula with guard bits: pi = 16 atan(1/5) - 4 atan(1/239).
function atanInv(n: bigint, one: bigint): bigint {
  let sum = 0n;
  let term = one / n;
  const n2 = n * n;
  for (let k = 0n; term !== 0n; k++) {
    sum += (k % 2n === 0n ? term : -term) / (2n * k + 1n);
    term /= n2;
  }
  return sum;
}
const PI_FIX: bigint = (() => {
  const one = 1n << (FRAC + GUARD);
  const pi = 16n * atanInv(5n, one) - 4n * atanInv(239n, one);
  return (pi + (1n << (GUARD - 1n))) >> GUARD;
})();
const TWO_PI_FIX = 2n * PI_FIX;

const f64view = new DataView(new ArrayBuffer(8));
/** x * 2^256 exactly, as a BigInt (bits below 2^-256 truncated toward zero; irrelevant for angles). */
export function toFixed(x: number): bigint {
  if (!Number.isFinite(x)) throw new RangeError(`toFixed: ${x}`);
  f64view.setFloat64(0, x);
  const bits = f64view.getBigUint64(0);
  const neg = bits >> 63n === 1n;
  const bexp = Number((bits >> 52n) & 0x7ffn);
  let mant = bits & 0xfffffffffffffn;
  let exp: number;
  if (bexp === 0) exp = -1074;
  else {
    mant |= 1n << 52n;
    exp = bexp - 1075;
  }
  const shift = BigInt(exp) + FRAC;
  const v = shift >= 0n ? mant << shift : mant >> -shift;
  return neg ? -v : v;
}

/** A fixed-point angle reduced to (-pi, pi], correctly rounded to a double. */
export function reduceFixed(a: bigint): number {
  let r = a % TWO_PI_FIX;
  if (r > PI_FIX) r -= TWO_PI_FIX;
  else if (r <= -PI_FIX) r += TWO_PI_FIX;
  return Number(r) / 2 ** Number(FRAC);
}

/** pos * theta reduced to (-pi, pi], exactly (pos an integer, theta any double). */
export function exactAngle(pos: number, theta: number): number {
  return reduceFixed(BigInt(pos) * toFixed(theta));
}

// ---------------------------------------------------------------- the angles each mode feeds to sin/cos

/** fp32 mode's angle: fp32(fp32(pos) * fp32(theta)). */
export function fp32Angle(pos: number, theta: number): number {
  return Math.fround(Math.fround(pos) * Math.fround(theta));
}

/** bf16 mode's angle: bf16(bf16(fp32(pos)) * bf16(fp32(theta))) (the product is exact in fp32). */
export function bf16Angle(pos: number, theta: number): number {
  return bf16(Math.fround(bf16(Math.fround(pos)) * bf16(Math.fround(theta))));
}

/** |angle fed to sin/cos - exact pos*theta|, reduced mod 2*pi, computed exactly (BigInt). */
export function angleError(precision: 'fp32' | 'bf16', pos: number, theta: number): number {
  const fed = precision === 'fp32' ? fp32Angle(pos, theta) : bf16Angle(pos, theta);
  return Math.abs(reduceFixed(toFixed(fed) - BigInt(pos) * toFixed(theta)));
}

/** The standard RoPE frequencies in float64: theta_i = 1 / base^(2i / rotaryDim). */
export function invFreqFromBase(base: number, rotaryDim: number): Float64Array {
  const out = new Float64Array(rotaryDim / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / base ** ((2 * i) / rotaryDim);
  return out;
}

/**
 * cos and sin (already multiplied by the attention factor; sin negated when inverse) for one
 * (position, pair), per precision mode:
 *  exact: float64 cos/sin of the exact reduced angle, times fp32(af)
 *  fp32:  float64 cos/sin of fp32Angle, times fp32(af) (the kernel's fp32 sinf/cosf rounding is in the tolerance)
 *  bf16:  c = bf16(fp32(bf16(fp32(cos(bf16Angle))) * fp32(af))), s likewise: the table stored in bf16
 */
export function cosSin(precision: RefPrecision, pos: number, theta: number, attentionFactor: number,
  inverse: boolean): [number, number] {
  const af = Math.fround(attentionFactor);
  let c: number;
  let s: number;
  if (precision === 'exact') {
    const a = exactAngle(pos, theta);
    c = Math.cos(a) * af;
    s = Math.sin(a) * af;
  } else if (precision === 'fp32') {
    const a = fp32Angle(pos, theta);
    c = Math.cos(a) * af;
    s = Math.sin(a) * af;
  } else {
    const a = bf16Angle(pos, theta);
    c = bf16(Math.fround(bf16(Math.fround(Math.cos(a))) * af));
    s = bf16(Math.fround(bf16(Math.fround(Math.sin(a))) * af));
  }
  return [c, inverse ? -s : s];
}

// ---------------------------------------------------------------- the rotation

export interface RefOptions {
  invFreq: Float64Array;           // rotaryDim / 2 entries
  rotaryDim: number;
  style: RefStyle;
  precision: RefPrecision;
  attentionFactor: number;
  inverse: boolean;
  positionOffset?: number;         // used when positions is absent
  positions?: Int32Array;          // [batch, seq] contiguous
}

/** The two element indices of pair i within a row. */
export function pairIndices(style: RefStyle, rotaryDim: number, i: number): [number, number] {
  return style === 'neox' ? [i, i + rotaryDim / 2] : [2 * i, 2 * i + 1];
}

/**
 * RoPE of a contiguous [batch, seq, heads, headDim] tensor given as float64 values; the result is
 * float64 (not rounded to any dtype). Pass-through dims (>= rotaryDim) are copied.
 */
export function ropeRef(x: ArrayLike<number>, shape: readonly [number, number, number, number],
  o: RefOptions): Float64Array {
  const [B, S, H, D] = shape;
  const half = o.rotaryDim / 2;
  if (o.invFreq.length !== half) throw new Error('ropeRef: invFreq length != rotaryDim/2');
  const y = Float64Array.from(x as ArrayLike<number>);
  const cache = new Map<number, Float64Array>(); // position -> [c0, s0, c1, s1, ...]
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < S; s++) {
      const pos = o.positions ? o.positions[b * S + s] : (o.positionOffset ?? 0) + s;
      let cs = cache.get(pos);
      if (!cs) {
        cs = new Float64Array(2 * half);
        for (let i = 0; i < half; i++) {
          const [c, sn] = cosSin(o.precision, pos, o.invFreq[i], o.attentionFactor, o.inverse);
          cs[2 * i] = c;
          cs[2 * i + 1] = sn;
        }
        cache.set(pos, cs);
      }
      for (let h = 0; h < H; h++) {
        const row = ((b * S + s) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const [i1, i2] = pairIndices(o.style, o.rotaryDim, i);
          const a = x[row + i1];
          const bb = x[row + i2];
          y[row + i1] = a * cs[2 * i] - bb * cs[2 * i + 1];
          y[row + i2] = bb * cs[2 * i] + a * cs[2 * i + 1];
        }
      }
    }
  }
  return y;
}

/**
 * Bound on |kernel - reference| for one output element when both use the same cos/sin model:
 * one ulp of the dtype at the reference value (the kernel rounds its fp32 result once) plus the
 * fp32 arithmetic error, <= 2^-21 * |af| * (|a| + |b|) for the pair (a, b) it came from
 * (measured on the CPU kernel: <= 1.5e-7, i.e. ~2^-22.7).
 */
export function elementBound(dtype: RefDtype, ref: number, a: number, b: number, attentionFactor: number): number {
  return ulp(dtype, ref) + 2 ** -21 * Math.abs(attentionFactor) * (Math.abs(a) + Math.abs(b));
}
