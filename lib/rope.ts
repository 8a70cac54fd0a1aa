// Rotary position embedding on [batch, seq, heads, headDim] tensors, exact at any position by default.
// The angle pos·θ_i is reduced mod π/2 in fp64 from the exact product before fp32 sin/cos, so the
// rotation stays right at positions where fp32 (the MegaBeam paper's fix) is off by 1e-2 rad and bf16
// is noise. 'fp32' and 'bf16' reproduce those failure modes on purpose. See docs/rope.md.
import { ArgumentError, DeviceError, DtypeError, MegabeamError, RopeConfigError, ShapeError, fromNative } from './errors';
import { native } from './native';
import { Tensor, arg, empty } from './tensor';

export type RopeStyle = 'neox' | 'interleaved';
export type RopePrecision = 'exact' | 'fp32' | 'bf16';

export interface RopeOptions {
  /** θ_i for i in [0, rotaryDim/2) (e.g. theta.frequencies(...).invFreq, any scaling type). */
  invFreq?: Float64Array | readonly number[];
  /** Instead of invFreq: θ_i = 1 / base^(2i / rotaryDim), in float64. */
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
  /** Rotate x's memory instead of returning a new tensor (returns x). */
  inplace?: boolean;
}

const STYLES: Record<RopeStyle, number> = { neox: 0, interleaved: 1 };
const PRECISIONS: Record<RopePrecision, number> = { exact: 0, fp32: 1, bf16: 2 };
const MAX_POS = 2 ** 31 - 1;
// θ·pos must stay below 2^52 for the exact reduction; |pos| < 2^31.
const MAX_THETA = 2 ** 20;
// `options` is what theta.fromHFConfig() adds next to invFreq/attentionFactor, so its result can be spread in.
const KNOWN = new Set(['invFreq', 'base', 'rotaryDim', 'style', 'positions', 'positionOffset', 'attentionFactor',
  'precision', 'inplace', 'options']);

interface Resolved {
  invFreq: Float64Array;
  rotaryDim: number;
  style: number;
  precision: number;
  positions: Tensor | null;
  positionOffset: number;
  attentionFactor: number;
  inplace: boolean;
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v instanceof Tensor) return v.toString();
  return String(v);
}

function checkInput(t: unknown, what: string): Tensor {
  if (!(t instanceof Tensor)) throw new ArgumentError(`rope: ${what} must be a Tensor`);
  t.handle(what); // ERR_DISPOSED
  if (t.ndim !== 4) throw new ShapeError(`rope: ${what} must be [batch, seq, heads, headDim], got [${t.shape}]`);
  if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16')
    throw new DtypeError(`rope: ${what} must be f32, f16 or bf16, got ${t.dtype}`);
  return t;
}

function resolve(x: Tensor, opts: unknown): Resolved {
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new ArgumentError('rope: options must be an object with invFreq or base');
  const o = opts as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!KNOWN.has(key)) throw new ArgumentError(`rope: unknown option ${JSON.stringify(key)}`);
  }
  const [B, S, , D] = x.shape;

  // frequencies and rotary dim
  let rotaryDim: number;
  let invFreq: Float64Array;
  const hasInv = o.invFreq !== undefined, hasBase = o.base !== undefined;
  if (hasInv === hasBase)
    throw new RopeConfigError(hasInv ? 'base' : 'invFreq', hasInv ? 'give invFreq or base, not both' : 'invFreq or base is required');
  if (o.rotaryDim !== undefined) {
    const r = o.rotaryDim;
    if (typeof r !== 'number' || !Number.isSafeInteger(r) || r < 2 || r % 2 !== 0)
      throw new RopeConfigError('rotaryDim', `must be an even integer >= 2, got ${show(r)}`);
    if (r > D) throw new RopeConfigError('rotaryDim', `must be <= headDim (${D}), got ${r}`);
  }
  if (hasInv) {
    const f = o.invFreq;
    if (!(f instanceof Float64Array) && !Array.isArray(f))
      throw new RopeConfigError('invFreq', 'must be a Float64Array or an array of numbers');
    invFreq = f instanceof Float64Array ? Float64Array.from(f) : Float64Array.from(f as number[]);
    for (let i = 0; i < invFreq.length; i++) {
      const v = invFreq[i];
      if (typeof (f as ArrayLike<unknown>)[i] !== 'number' || !Number.isFinite(v) || v < 0 || v > MAX_THETA)
        throw new RopeConfigError('invFreq', `entry ${i} must be a finite number in [0, 2^20], got ${show((f as ArrayLike<unknown>)[i])}`);
    }
    if (invFreq.length === 0) throw new RopeConfigError('invFreq', 'is empty');
    rotaryDim = (o.rotaryDim as number | undefined) ?? 2 * invFreq.length;
    if (rotaryDim !== 2 * invFreq.length)
      throw new RopeConfigError('invFreq', `has ${invFreq.length} entries, rotaryDim ${rotaryDim} needs ${rotaryDim / 2}`);
    if (rotaryDim > D) throw new RopeConfigError('invFreq', `has ${invFreq.length} entries: rotaryDim ${rotaryDim} > headDim ${D}`);
  } else {
    const base = o.base;
    if (typeof base !== 'number' || !Number.isFinite(base) || base <= 0)
      throw new RopeConfigError('base', `must be a finite number > 0, got ${show(base)}`);
    rotaryDim = (o.rotaryDim as number | undefined) ?? D;
    if (rotaryDim < 2 || rotaryDim % 2 !== 0)
      throw new RopeConfigError('rotaryDim', `headDim ${D} is not an even number >= 2: give rotaryDim`);
    invFreq = new Float64Array(rotaryDim / 2);
    for (let i = 0; i < invFreq.length; i++) invFreq[i] = 1 / base ** ((2 * i) / rotaryDim);
  }

  const style = o.style ?? 'neox';
  if (typeof style !== 'string' || !(style in STYLES))
    throw new RopeConfigError('style', `must be 'neox' or 'interleaved', got ${show(style)}`);
  const precision = o.precision ?? 'exact';
  if (typeof precision !== 'string' || !(precision in PRECISIONS))
    throw new RopeConfigError('precision', `must be 'exact', 'fp32' or 'bf16', got ${show(precision)}`);
  const af = o.attentionFactor ?? 1;
  if (typeof af !== 'number' || !Number.isFinite(af) || !Number.isFinite(Math.fround(af)))
    throw new RopeConfigError('attentionFactor', `must be a finite number, got ${show(af)}`);
  const inplace = o.inplace ?? false;
  if (typeof inplace !== 'boolean') throw new ArgumentError(`rope: inplace must be a boolean, got ${show(inplace)}`);

  // positions
  let positions: Tensor | null = null;
  let positionOffset = 0;
  if (o.positions !== undefined) {
    if (o.positionOffset !== undefined) throw new ArgumentError('rope: give positions or positionOffset, not both');
    const p = o.positions;
    if (!(p instanceof Tensor)) throw new ArgumentError('rope: positions must be an i32 Tensor [batch, seq]');
    p.handle('positions');
    if (p.dtype !== 'i32') throw new DtypeError(`rope: positions must be i32, got ${p.dtype}`);
    if (p.ndim !== 2 || p.shape[0] !== B || p.shape[1] !== S)
      throw new ShapeError(`rope: positions must be [${B}, ${S}] ([batch, seq]), got [${p.shape}]`);
    if (p.device !== x.device) throw new DeviceError(`rope: positions are on ${p.device}, x on ${x.device}`);
    positions = p;
  } else if (o.positionOffset !== undefined) {
    const off = o.positionOffset;
    if (typeof off !== 'number' || !Number.isSafeInteger(off) || off < 0)
      throw new ArgumentError(`rope: positionOffset must be a non-negative integer, got ${show(off)}`);
    if (S > 0 && off + S - 1 > MAX_POS)
      throw new ArgumentError(`rope: positionOffset + seq - 1 = ${off + S - 1} exceeds 2^31 - 1`);
    positionOffset = off;
  }
  return {
    invFreq, rotaryDim, style: STYLES[style as RopeStyle], precision: PRECISIONS[precision as RopePrecision],
    positions, positionOffset, attentionFactor: af, inplace,
  };
}

/**
 * @internal maps an addon error to its class; ERR_ROPE_CONFIG ("param: message") becomes a
 * RopeConfigError, which errors.ts's generic mapping cannot build (it needs the parameter).
 */
export function ropeError(e: unknown): unknown {
  const m = fromNative(e);
  if (m instanceof MegabeamError || !(m instanceof Error)) return m;
  const rc = /^ERR_ROPE_CONFIG: (?:([A-Za-z]+): )?([\s\S]*)$/.exec(m.message);
  if (rc || (m as { code?: string }).code === 'ERR_ROPE_CONFIG')
    return new RopeConfigError(rc?.[1] ?? 'rope', rc?.[2] ?? m.message);
  return m;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw ropeError(e);
  }
}

function run(xs: Tensor[], opts: unknown, inverse: boolean): Tensor[] {
  const r = resolve(xs[0], opts);
  const outs: Tensor[] = [];
  try {
    for (const x of xs) outs.push(r.inplace ? x : empty(x.shape, { dtype: x.dtype, device: x.device }));
    const k = xs.length > 1;
    call(() => native().rope(
      arg(xs[0], 'x'), outs[0].handle('out'), k ? arg(xs[1], 'k') : null, k ? outs[1].handle('kOut') : null,
      r.invFreq, r.positions ? arg(r.positions, 'positions') : null, r.positionOffset,
      r.style, r.precision, r.rotaryDim, r.attentionFactor, inverse));
  } catch (e) {
    if (!r.inplace) for (const t of outs) t.dispose();
    throw e;
  }
  return outs;
}

function pair(q: unknown, k: unknown, names: [string, string]): [Tensor, Tensor] {
  const a = checkInput(q, names[0]);
  const b = checkInput(k, names[1]);
  if (a.dtype !== b.dtype) throw new DtypeError(`rope: ${names[0]} is ${a.dtype}, ${names[1]} is ${b.dtype}`);
  if (a.device !== b.device) throw new DeviceError(`rope: ${names[0]} is on ${a.device}, ${names[1]} on ${b.device}`);
  if (a.shape[0] !== b.shape[0] || a.shape[1] !== b.shape[1] || a.shape[3] !== b.shape[3])
    throw new ShapeError(`rope: ${names[0]} [${a.shape}] and ${names[1]} [${b.shape}] must share batch, seq and headDim`);
  return [a, b];
}

/** RoPE of x [batch, seq, heads, headDim] (f32, f16 or bf16): a new tensor, or x itself with inplace. */
export function apply(x: Tensor, opts: RopeOptions): Tensor {
  return run([checkInput(x, 'x')], opts, false)[0];
}

/** The gradient through apply: dy rotated by −angle with the same options (the adjoint of apply). */
export function backward(dy: Tensor, opts: RopeOptions): Tensor {
  return run([checkInput(dy, 'dy')], opts, true)[0];
}

/** q and k in one launch (cos/sin computed once for both); head counts may differ (GQA). */
export function applyQK(q: Tensor, k: Tensor, opts: RopeOptions): { q: Tensor; k: Tensor } {
  const [a, b] = pair(q, k, ['q', 'k']);
  const [oq, ok] = run([a, b], opts, false);
  return { q: oq, k: ok };
}

/** backward of applyQK: dq and dk rotated back in one launch. */
export function backwardQK(dq: Tensor, dk: Tensor, opts: RopeOptions): { dq: Tensor; dk: Tensor } {
  const [a, b] = pair(dq, dk, ['dq', 'dk']);
  const [oq, ok] = run([a, b], opts, true);
  return { dq: oq, dk: ok };
}

export const rope = { apply, backward, applyQK, backwardQK };
