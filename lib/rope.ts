// Rotary position embedding on [batch, seq, heads, headDim] tensors, exact at any position by default.
// The angle pos·θ_i is reduced mod π/2 in fp64 from the exact product before fp32 sin/cos, so the
// rotation stays right at positions where fp32 (the MegaBeam paper's fix) is off by 1e-2 rad and bf16
// is noise. 'fp32' and 'bf16' reproduce those failure modes on purpose. See docs/rope.md.
import { ArgumentError, RopeConfigError, callNative as call } from './errors';
import { native, RopeBaton } from './native';
import { base as checkBase } from './theta/validate';
import { Tensor, arg } from './tensor';

export type RopeStyle = 'neox' | 'interleaved';
export type RopePrecision = 'exact' | 'fp32' | 'bf16';

/** Options of rope.apply / backward / applyQK / backwardQK. */
export interface RopeApplyOptions {
  /** θ_i for i in [0, rotaryDim/2) (e.g. theta.frequencies(...).invFreq, any scaling type); finite, in [0, 2^20]. */
  invFreq?: Float64Array | readonly number[];
  /** Instead of invFreq: θ_i = 1 / base^(2i / rotaryDim), in float64; base > 1 (as in the theta module). */
  base?: number;
  /** Rotated dims (even, ≤ headDim); dims ≥ rotaryDim pass through. Default: 2·invFreq.length, or headDim. */
  rotaryDim?: number;
  /** 'neox' (default): pairs (i, i + rotaryDim/2), Llama/Mistral. 'interleaved': pairs (2i, 2i+1), GPT-J. */
  style?: RopeStyle;
  /** int32 [batch, seq] positions on x's device (any int32, negative included). */
  positions?: Tensor;
  /** Without positions: token s of every batch row is at positionOffset + s (a shard of a long sequence). */
  positionOffset?: number;
  /** Multiplies cos and sin (YaRN / longrope attention scaling); applied in fp32. Default 1. */
  attentionFactor?: number;
  /** 'exact' (default), 'fp32' (the paper's fp32 angles) or 'bf16' (a bf16 model's rotary table). */
  precision?: RopePrecision;
  /** Rotate x's memory instead of returning a new tensor (returns x). q and k must not overlap. */
  inplace?: boolean;
}

// The native op (csrc/ops/rope: rope_check) decides validity; this file coerces options (base to
// invFreq, theta results spread in) and names the arguments. `options` is what theta.fromHFConfig()
// adds next to invFreq/attentionFactor, so its result can be spread in.
const KNOWN = new Set(['invFreq', 'base', 'rotaryDim', 'style', 'positions', 'positionOffset', 'attentionFactor',
  'precision', 'inplace', 'options']);

function baton(xs: Tensor[], names: string[], opts: unknown, inverse: boolean): RopeBaton {
  const hx = arg(xs[0], `rope: ${names[0]}`);
  const hk = xs.length > 1 ? arg(xs[1], `rope: ${names[1]}`) : undefined;
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new ArgumentError('rope: options must be an object with invFreq or base');
  const o = opts as Record<string, unknown>;
  for (const key of Object.keys(o))
    if (!KNOWN.has(key)) throw new ArgumentError(`rope: unknown option ${JSON.stringify(key)}`);
  const hasInv = o.invFreq !== undefined, hasBase = o.base !== undefined;
  if (hasInv === hasBase)
    throw new RopeConfigError(hasInv ? 'base' : 'invFreq', hasInv ? 'give invFreq or base, not both' : 'invFreq or base is required');
  let invFreq = o.invFreq as RopeBaton['invFreq'];
  let rotaryDim = o.rotaryDim as number | undefined;
  if (hasBase) {
    const b = checkBase('base', o.base);  // one rule with the theta module: finite and > 1
    const D = xs[0].shape[3];
    if (rotaryDim === undefined && xs[0].ndim === 4) {
      if (!(D >= 2 && D % 2 === 0)) throw new RopeConfigError('rotaryDim', `headDim ${D} is not an even number >= 2: give rotaryDim`);
      rotaryDim = D;
    }
    // The table costs rotaryDim/2 entries: only built when there is work and the rotary dim can be
    // right (the native check rejects it otherwise), so an empty tensor with a huge headDim costs nothing.
    const work = xs.every((x) => x.ndim === 4) && xs.some((x) => x.numel > 0);
    if (work && Number.isSafeInteger(rotaryDim) && rotaryDim! >= 2 && rotaryDim! % 2 === 0 && rotaryDim! <= D) {
      const r = rotaryDim!;
      const f = new Float64Array(r / 2);
      for (let i = 0; i < f.length; i++) f[i] = 1 / b ** ((2 * i) / r);
      invFreq = f;
    }
  }
  return {
    x: hx, k: hk, inplace: o.inplace as boolean | undefined, invFreq, rotaryDim,
    positions: o.positions === undefined ? undefined : arg(o.positions, 'rope: positions'),
    positionOffset: o.positionOffset as number | undefined, style: o.style as RopeStyle | undefined,
    precision: o.precision as RopePrecision | undefined, attentionFactor: o.attentionFactor as number | undefined, inverse,
  };
}

function run(xs: Tensor[], names: string[], opts: unknown, inverse: boolean): Tensor[] {
  const b = baton(xs, names, opts, inverse);
  const r = call(() => native().rope(b));
  if (b.inplace) return xs;
  const outs = [new Tensor(r.x, xs[0].shape, xs[0].dtype, xs[0].device)];
  if (xs.length > 1) outs.push(new Tensor(r.k!, xs[1].shape, xs[1].dtype, xs[1].device));
  return outs;
}

/** RoPE of x [batch, seq, heads, headDim] (f32, f16 or bf16): a new tensor, or x itself with inplace. */
export function apply(x: Tensor, opts: RopeApplyOptions): Tensor {
  return run([x], ['x'], opts, false)[0];
}

/** The gradient through apply: dy rotated by −angle with the same options (the adjoint of apply). */
export function backward(dy: Tensor, opts: RopeApplyOptions): Tensor {
  return run([dy], ['dy'], opts, true)[0];
}

/** q and k in one launch (cos/sin computed once for both); head counts may differ (GQA). */
export function applyQK(q: Tensor, k: Tensor, opts: RopeApplyOptions): { q: Tensor; k: Tensor } {
  const [oq, ok] = run([q, k], ['q', 'k'], opts, false);
  return { q: oq, k: ok };
}

/** backward of applyQK: dq and dk rotated back in one launch. */
export function backwardQK(dq: Tensor, dk: Tensor, opts: RopeApplyOptions): { dq: Tensor; dk: Tensor } {
  const [oq, ok] = run([dq, dk], ['dq', 'dk'], opts, true);
  return { dq: oq, dk: ok };
}

export const rope = { apply, backward, applyQK, backwardQK };
