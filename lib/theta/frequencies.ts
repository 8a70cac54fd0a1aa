// RoPE inverse frequencies and attention factor for each Hugging Face rope type, in float64.
// Semantics follow transformers' ROPE_INIT_FUNCTIONS (modeling_rope_utils.py); where transformers
// versions differ the choice is noted next to the code and in docs/theta.md.
import { dim, fail, finiteNumber, positive, positiveEvenInt, positiveInt, base as checkBase, show } from './validate';

export type RopeType = 'default' | 'linear' | 'ntk' | 'dynamic' | 'yarn' | 'llama3' | 'longrope';
export const ropeTypes: readonly RopeType[] = ['default', 'linear', 'ntk', 'dynamic', 'yarn', 'llama3', 'longrope'];

export interface RopeOptions {
  type: RopeType;
  headDim: number;
  /** Rotated dims (even, ≤ headDim). Default: floor(headDim · partialRotaryFactor), i.e. headDim. */
  rotaryDim?: number;
  partialRotaryFactor?: number;
  base: number;
  factor?: number;
  maxPositionEmbeddings?: number;
  originalMaxPositionEmbeddings?: number;
  /** Current sequence length (dynamic, longrope). Default: maxPositionEmbeddings. */
  seqLen?: number;
  betaFast?: number;
  betaSlow?: number;
  mscale?: number;
  mscaleAllDim?: number;
  attentionFactor?: number;
  truncate?: boolean;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  shortFactor?: ArrayLike<number>;
  longFactor?: ArrayLike<number>;
}

export interface RopeFrequencies {
  /** θ_i for i in [0, rotaryDim/2), float64. */
  invFreq: Float64Array;
  /** Scale applied to cos/sin (HF "attention_scaling"). */
  attentionFactor: number;
}

const common = ['type', 'headDim', 'rotaryDim', 'partialRotaryFactor', 'base', 'maxPositionEmbeddings', 'seqLen'];
const allowed: Record<RopeType, ReadonlySet<string>> = {
  default: new Set(common),
  linear: new Set([...common, 'factor']),
  ntk: new Set([...common, 'factor']),
  dynamic: new Set([...common, 'factor', 'originalMaxPositionEmbeddings']),
  yarn: new Set([...common, 'factor', 'originalMaxPositionEmbeddings', 'betaFast', 'betaSlow', 'mscale',
    'mscaleAllDim', 'attentionFactor', 'truncate']),
  llama3: new Set([...common, 'factor', 'lowFreqFactor', 'highFreqFactor', 'originalMaxPositionEmbeddings']),
  longrope: new Set([...common, 'factor', 'shortFactor', 'longFactor', 'originalMaxPositionEmbeddings',
    'attentionFactor']),
};

/** Rotary dim from headDim / rotaryDim / partialRotaryFactor (HF: int(head_dim · partial_rotary_factor)). */
export function resolveRotaryDim(headDim: number, rotaryDim?: number, partialRotaryFactor?: number): number {
  const hd = dim('headDim', headDim);
  let fromFactor: number | undefined;
  if (partialRotaryFactor !== undefined) {
    const p = finiteNumber('partialRotaryFactor', partialRotaryFactor);
    if (!(p > 0 && p <= 1)) fail('partialRotaryFactor', `must be in (0, 1], got ${p}`);
    fromFactor = Math.floor(hd * p);
    if (rotaryDim === undefined && (fromFactor < 2 || fromFactor % 2 !== 0)) {
      fail('partialRotaryFactor', `headDim·partialRotaryFactor = ${fromFactor} is not a positive even integer`);
    }
  }
  if (rotaryDim === undefined) return fromFactor ?? hd;
  const rd = dim('rotaryDim', rotaryDim);
  if (rd > hd) fail('rotaryDim', `must be ≤ headDim (${hd}), got ${rd}`);
  if (fromFactor !== undefined && fromFactor !== rd) {
    fail('rotaryDim', `${rd} disagrees with floor(headDim·partialRotaryFactor) = ${fromFactor}`);
  }
  return rd;
}

/** θ_i = base^(−2i/d), i in [0, d/2). */
export function defaultInvFreq(base: number, d: number): Float64Array {
  checkBase('base', base);
  dim('headDim', d);
  const out = new Float64Array(d / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / Math.pow(base, (2 * i) / d);
  return out;
}

/** YaRN's attention scale: 0.1·m·ln s + 1 for s > 1, else 1. */
export function yarnGetMscale(scale: number, mscale = 1): number {
  finiteNumber('factor', scale);
  finiteNumber('mscale', mscale);
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

function factorOf(o: RopeOptions, required: boolean): number | undefined {
  if (o.factor === undefined) {
    if (required) fail('factor', `is required for type '${o.type}'`);
    return undefined;
  }
  const f = finiteNumber('factor', o.factor);
  if (f < 1) fail('factor', `must be ≥ 1, got ${f}`);
  return f;
}

function optInt(param: string, v: number | undefined): number | undefined {
  return v === undefined ? undefined : positiveInt(param, v);
}

function factorList(param: string, v: unknown, n: number): Float64Array {
  if (v === undefined) fail(param, 'is required for type \'longrope\'');
  if (!(Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView)))) {
    fail(param, `must be an array of numbers, got ${show(v)}`);
  }
  const a = v as ArrayLike<unknown>;
  if (a.length !== n) fail(param, `must have length rotaryDim/2 = ${n}, got ${a.length}`);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const x = a[i];
    if (typeof x !== 'number' || !Number.isFinite(x) || !(x > 0)) fail(param, `[${i}] must be a finite number > 0, got ${show(x)}`);
    out[i] = x;
  }
  return out;
}

/**
 * Inverse frequencies and attention factor for a RoPE configuration (HF ROPE_INIT_FUNCTIONS semantics).
 * Throws RopeConfigError (ERR_ROPE_CONFIG) naming the parameter on any missing or out-of-range value.
 */
export function frequencies(options: RopeOptions): RopeFrequencies {
  const r = computeFrequencies(options);
  // A scaling that pushes a frequency to 0, Infinity or NaN (factor 1e308) is the scaling's fault, not the
  // base's: name the parameter that did it.
  const culprit = options.type === 'default' ? 'base' : options.type === 'longrope' ? 'longFactor/shortFactor' : 'factor';
  for (let i = 0; i < r.invFreq.length; i++) {
    const v = r.invFreq[i];
    if (!(v > 0 && Number.isFinite(v))) fail(culprit, `gives inverse frequency ${v} for dim pair ${i} (underflow/overflow in float64)`);
  }
  if (!(r.attentionFactor > 0 && Number.isFinite(r.attentionFactor))) fail(culprit, `gives attention factor ${r.attentionFactor}`);
  return r;
}

/** base·x^e for the NTK-style scalings; an overflow is the factor's fault (the base was checked). */
function scaledBase(b: number, x: number, e: number, param: string): number {
  const v = b * Math.pow(x, e);
  if (!Number.isFinite(v)) fail(param, `base·(scale)^(d/(d−2)) = ${b}·${x}^${e.toPrecision(4)} overflows float64`);
  return v;
}

function computeFrequencies(options: RopeOptions): RopeFrequencies {
  if (options === null || typeof options !== 'object') fail('options', `must be an object, got ${show(options)}`);
  const o = options;
  if (typeof o.type !== 'string' || !(ropeTypes as readonly string[]).includes(o.type)) {
    fail('type', `must be one of ${ropeTypes.join(', ')}, got ${show(o.type)}`);
  }
  // Unknown or inapplicable keys are almost always typos or a wrong type; reject rather than ignore.
  for (const k of Object.keys(o)) {
    if ((o as unknown as Record<string, unknown>)[k] === undefined) continue;
    if (!allowed[o.type].has(k)) fail(k, `is not a parameter of rope type '${o.type}'`);
  }
  const d = resolveRotaryDim(o.headDim, o.rotaryDim, o.partialRotaryFactor);
  const b = checkBase('base', o.base);
  const maxPos = optInt('maxPositionEmbeddings', o.maxPositionEmbeddings);
  const origMax = optInt('originalMaxPositionEmbeddings', o.originalMaxPositionEmbeddings);
  const seqLen = optInt('seqLen', o.seqLen);

  switch (o.type) {
    case 'default':
      return { invFreq: defaultInvFreq(b, d), attentionFactor: 1 };

    case 'linear': {
      const s = factorOf(o, true)!;
      const inv = defaultInvFreq(b, d);
      for (let i = 0; i < inv.length; i++) inv[i] /= s;
      return { invFreq: inv, attentionFactor: 1 };
    }

    case 'ntk': {
      const s = factorOf(o, true)!;
      if (d <= 2) fail('rotaryDim', `must be > 2 for 'ntk' (exponent d/(d−2)), got ${d}`);
      return { invFreq: defaultInvFreq(scaledBase(b, s, d / (d - 2), 'factor'), d), attentionFactor: 1 };
    }

    case 'dynamic': {
      const s = factorOf(o, true)!;
      if (d <= 2) fail('rotaryDim', `must be > 2 for 'dynamic' (exponent d/(d−2)), got ${d}`);
      const l0 = origMax ?? maxPos;
      if (l0 === undefined) fail('maxPositionEmbeddings', "is required for 'dynamic' (or originalMaxPositionEmbeddings)");
      // L ≤ L0 leaves the base unchanged (HF clamps seq_len up to max_position_embeddings).
      const L = Math.max(seqLen ?? maxPos ?? l0, l0);
      const scaled = scaledBase(b, (s * L) / l0 - (s - 1), d / (d - 2), 'factor');
      return { invFreq: defaultInvFreq(scaled, d), attentionFactor: 1 };
    }

    case 'yarn': {
      const l0 = origMax ?? maxPos;
      if (l0 === undefined) fail('originalMaxPositionEmbeddings', "is required for 'yarn' (or maxPositionEmbeddings)");
      // Newer transformers derive factor = max/original only when factor is absent.
      let s = factorOf(o, false);
      if (s === undefined) {
        if (maxPos === undefined || origMax === undefined) {
          fail('factor', "is required for 'yarn' unless maxPositionEmbeddings and originalMaxPositionEmbeddings are both given");
        }
        s = maxPos / origMax;
        if (s < 1) fail('maxPositionEmbeddings', `maxPositionEmbeddings/originalMaxPositionEmbeddings = ${s} < 1`);
      }
      const betaFast = o.betaFast === undefined ? 32 : positive('betaFast', o.betaFast);
      const betaSlow = o.betaSlow === undefined ? 1 : positive('betaSlow', o.betaSlow);
      if (betaFast < betaSlow) fail('betaFast', `must be ≥ betaSlow (${betaSlow}), got ${betaFast}`);
      if (o.truncate !== undefined && typeof o.truncate !== 'boolean') fail('truncate', `must be a boolean, got ${show(o.truncate)}`);
      const truncate = o.truncate ?? true;
      let mscale: number | undefined;
      let mscaleAll: number | undefined;
      if (o.mscale !== undefined) {
        mscale = finiteNumber('mscale', o.mscale);
        if (mscale < 0) fail('mscale', `must be ≥ 0, got ${mscale}`);
      }
      if (o.mscaleAllDim !== undefined) {
        mscaleAll = finiteNumber('mscaleAllDim', o.mscaleAllDim);
        if (mscaleAll < 0) fail('mscaleAllDim', `must be ≥ 0, got ${mscaleAll}`);
      }
      let attn: number;
      if (o.attentionFactor !== undefined) attn = positive('attentionFactor', o.attentionFactor);
      // HF tests truthiness: a missing or zero mscale/mscaleAllDim falls back to get_mscale(s).
      else if (mscale && mscaleAll) attn = yarnGetMscale(s, mscale) / yarnGetMscale(s, mscaleAll);
      else attn = yarnGetMscale(s);

      const lnB = Math.log(b);
      const corrDim = (rot: number) => (d * Math.log(l0 / (rot * 2 * Math.PI))) / (2 * lnB);
      let low = corrDim(betaFast);
      let high = corrDim(betaSlow);
      if (truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      // HF clamps high to d−1 (the full rotary dim, not d/2−1); kept for parity.
      low = Math.max(low, 0);
      high = Math.min(high, d - 1);
      if (low === high) high += 0.001;
      const inv = new Float64Array(d / 2);
      for (let i = 0; i < inv.length; i++) {
        const posFreq = Math.pow(b, (2 * i) / d);
        const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
        // ramp 0 → keep the original frequency (extrapolation), ramp 1 → divide by s (interpolation).
        inv[i] = (1 / (s * posFreq)) * ramp + (1 / posFreq) * (1 - ramp);
      }
      return { invFreq: inv, attentionFactor: attn };
    }

    case 'llama3': {
      const s = factorOf(o, true)!;
      if (o.lowFreqFactor === undefined) fail('lowFreqFactor', "is required for 'llama3'");
      if (o.highFreqFactor === undefined) fail('highFreqFactor', "is required for 'llama3'");
      const lo = positive('lowFreqFactor', o.lowFreqFactor);
      const hi = positive('highFreqFactor', o.highFreqFactor);
      if (hi <= lo) fail('highFreqFactor', `must be > lowFreqFactor (${lo}), got ${hi}`);
      const oldLen = origMax ?? maxPos;
      if (oldLen === undefined) fail('originalMaxPositionEmbeddings', "is required for 'llama3'");
      const lowWav = oldLen / lo;
      const highWav = oldLen / hi;
      const inv = defaultInvFreq(b, d);
      for (let i = 0; i < inv.length; i++) {
        const wav = (2 * Math.PI) / inv[i];
        if (wav < highWav) continue; // high frequency: unchanged
        if (wav > lowWav) {
          inv[i] /= s; // low frequency: fully interpolated
          continue;
        }
        const smooth = (oldLen / wav - lo) / (hi - lo);
        inv[i] = ((1 - smooth) * inv[i]) / s + smooth * inv[i];
      }
      return { invFreq: inv, attentionFactor: 1 };
    }

    case 'longrope': {
      const short = factorList('shortFactor', o.shortFactor, d / 2);
      const long = factorList('longFactor', o.longFactor, d / 2);
      const l0 = origMax ?? maxPos;
      if (l0 === undefined) fail('originalMaxPositionEmbeddings', "is required for 'longrope' (or maxPositionEmbeddings)");
      // Phi-3 style: with both lengths known, s = max/original replaces factor (as HF does).
      let s: number;
      if (maxPos !== undefined && origMax !== undefined) {
        s = maxPos / origMax;
        if (s < 1) fail('maxPositionEmbeddings', `maxPositionEmbeddings/originalMaxPositionEmbeddings = ${s} < 1`);
      } else {
        const f = factorOf(o, false);
        if (f === undefined) fail('factor', "is required for 'longrope' unless maxPositionEmbeddings and originalMaxPositionEmbeddings are both given");
        s = f;
      }
      // HF: sqrt(1 + ln s / ln L0), which divides by ln 1 = 0 for L0 = 1.
      if (o.attentionFactor === undefined && s > 1 && l0 < 2) {
        fail('originalMaxPositionEmbeddings', `must be ≥ 2 for 'longrope' with factor ${s} > 1 (the attention factor sqrt(1 + ln s / ln L0) divides by ln L0 = 0); or pass attentionFactor`);
      }
      const attn = o.attentionFactor !== undefined
        ? positive('attentionFactor', o.attentionFactor)
        : s <= 1 ? 1 : Math.sqrt(1 + Math.log(s) / Math.log(l0));
      const L = seqLen ?? maxPos ?? l0;
      const ext = L > l0 ? long : short;
      const inv = defaultInvFreq(b, d);
      for (let i = 0; i < inv.length; i++) inv[i] /= ext[i];
      return { invFreq: inv, attentionFactor: attn };
    }
  }
}
