// Context-length analysis of a RoPE frequency set: wavelengths, critical dimension (Liu et al. 2023),
// and the base lower bound of Men et al. 2024 from the long-term-decay criterion Σ_i cos(m·θ_i) ≥ 0.
import { defaultInvFreq } from './frequencies';
import { base as checkBase, contextLength, dim, fail, finiteNumber, positive, positiveEvenInt, positiveInt, show } from './validate';

/** Most grid points baseLowerBound walks (2 → 1e30 at the default ratio 1.01 is ~6900). */
const MAX_GRID_STEPS = 1e5;

function checkInvFreq(invFreq: ArrayLike<number>): void {
  if (invFreq === null || typeof invFreq !== 'object' || !Number.isSafeInteger(invFreq.length) || invFreq.length <= 0 ||
      invFreq.length > 32768) {
    fail('invFreq', `must be a non-empty array of at most 32768 numbers (head dim ≤ 65536), got ${show(invFreq)}`);
  }
  for (let i = 0; i < invFreq.length; i++) {
    const v = invFreq[i];
    if (typeof v !== 'number' || !Number.isFinite(v) || !(v > 0)) fail('invFreq', `[${i}] must be a finite number > 0, got ${show(v)}`);
  }
}

/** λ_i = 2π/θ_i: the number of positions for dimension pair i to turn once. */
export function wavelength(invFreq: ArrayLike<number>): Float64Array {
  checkInvFreq(invFreq);
  const out = new Float64Array(invFreq.length);
  for (let i = 0; i < out.length; i++) out[i] = (2 * Math.PI) / invFreq[i];
  return out;
}

export interface CriticalDimOptions {
  headDim: number;
  base: number;
  trainLength: number;
}

/**
 * Liu et al. 2023 ("Scaling laws of RoPE-based extrapolation"): d_extra = 2⌈(d/2)·log_base(T/2π)⌉, the
 * number of dims whose period fits inside the training length T; clamped to [0, d].
 */
export function criticalDim(o: CriticalDimOptions): number {
  if (o === null || typeof o !== 'object') fail('options', `must be an object, got ${show(o)}`);
  const d = positiveEvenInt('headDim', o.headDim);
  const b = checkBase('base', o.base);
  const T = finiteNumber('trainLength', o.trainLength);
  if (!(T > 0)) fail('trainLength', `must be > 0, got ${T}`);
  const raw = 2 * Math.ceil((d / 2) * (Math.log(T / (2 * Math.PI)) / Math.log(b)));
  return Math.min(d, Math.max(0, raw));
}

/** Men et al. 2024's power-law fit of their lower bound: 0.0424·L^1.628. */
export function baseLowerBoundFit(L: number): number {
  const n = finiteNumber('L', L);
  if (!(n > 0)) fail('L', `must be > 0, got ${n}`);
  return 0.0424 * Math.pow(n, 1.628);
}

const BLOCK = 1024;

/**
 * Work limits, in cosine terms (one position × one dim pair; about 0.5–1 ns each): a single scan of
 * [0, L] over d/2 pairs may cost at most MAX_SCAN_TERMS (2^33, ~10 s), and a whole baseLowerBound search
 * at most `maxWork` (default MAX_SEARCH_TERMS = 2^35). Beyond that the call is refused up front (or stops)
 * with ERR_ROPE_CONFIG instead of running for hours: L = 2^24 with headDim 65536 is 5.5e11 terms per scan.
 */
export const MAX_SCAN_TERMS = 2 ** 33;
export const MAX_SEARCH_TERMS = 2 ** 35;

function checkScanWork(param: string, L: number, pairs: number): void {
  const terms = (L + 1) * pairs;
  if (terms > MAX_SCAN_TERMS) {
    fail(param, `a scan of positions 0..${L} over ${pairs} dim pairs is ${terms.toExponential(2)} cosine terms, ` +
      `over the limit of ${MAX_SCAN_TERMS.toExponential(2)} (~10 s); use a shorter context or a smaller head dim ` +
      `(or baseLowerBoundFit for an estimate)`);
  }
}

/**
 * B(m) = Σ_i cos(m·θ_i) for m = mTop, mTop−1, …, mTop−n+1 into acc[0..n). Each dim is rotated by e^{−iθ}
 * step by step from an exact anchor at mTop (blocks are short, so the recurrence error stays ~1e-13).
 */
function blockSums(theta: Float64Array, cs: Float64Array, sn: Float64Array, mTop: number, n: number, acc: Float64Array): void {
  acc.fill(0, 0, n);
  const h = theta.length;
  let i = 0;
  // Four independent rotation chains per pass keep the FPU busy (each chain is latency-bound).
  for (; i + 3 < h; i += 4) {
    let c0 = Math.cos(mTop * theta[i]), s0 = Math.sin(mTop * theta[i]);
    let c1 = Math.cos(mTop * theta[i + 1]), s1 = Math.sin(mTop * theta[i + 1]);
    let c2 = Math.cos(mTop * theta[i + 2]), s2 = Math.sin(mTop * theta[i + 2]);
    let c3 = Math.cos(mTop * theta[i + 3]), s3 = Math.sin(mTop * theta[i + 3]);
    const a0 = cs[i], b0 = sn[i], a1 = cs[i + 1], b1 = sn[i + 1];
    const a2 = cs[i + 2], b2 = sn[i + 2], a3 = cs[i + 3], b3 = sn[i + 3];
    for (let j = 0; j < n; j++) {
      acc[j] += c0 + c1 + (c2 + c3);
      const t0 = c0 * a0 + s0 * b0;
      s0 = s0 * a0 - c0 * b0;
      c0 = t0;
      const t1 = c1 * a1 + s1 * b1;
      s1 = s1 * a1 - c1 * b1;
      c1 = t1;
      const t2 = c2 * a2 + s2 * b2;
      s2 = s2 * a2 - c2 * b2;
      c2 = t2;
      const t3 = c3 * a3 + s3 * b3;
      s3 = s3 * a3 - c3 * b3;
      c3 = t3;
    }
  }
  for (; i < h; i++) {
    let c0 = Math.cos(mTop * theta[i]), s0 = Math.sin(mTop * theta[i]);
    const a0 = cs[i], b0 = sn[i];
    for (let j = 0; j < n; j++) {
      acc[j] += c0;
      const t0 = c0 * a0 + s0 * b0;
      s0 = s0 * a0 - c0 * b0;
      c0 = t0;
    }
  }
}

export interface CosineSumResult {
  /** true when B(m) ≥ 0 for every integer m in [0, L]. */
  ok: boolean;
  /** min B(m) over the scanned positions (over all of [0, L] unless stopped early). */
  min: number;
  /** position of that minimum. */
  argMin: number;
}

/**
 * Scans B(m) = Σ_i cos(m·θ_i) for integer m in [0, L], from m = L downwards (violations of the criterion for
 * a too-small base sit mostly at large m). With stopAtNegative the scan ends at the first block holding a
 * negative value; min/argMin then describe that block only.
 */
export function cosineSumScan(invFreq: ArrayLike<number>, L: number, stopAtNegative = false): CosineSumResult {
  checkInvFreq(invFreq);
  contextLength('L', L, true);
  checkScanWork('L', L, invFreq.length);
  const { work: _work, ...r } = scan(Float64Array.from(invFreq), L, stopAtNegative);
  return r;
}

function scan(theta: Float64Array, L: number, stopAtNegative: boolean): CosineSumResult & { work: number } {
  const cs = theta.map(Math.cos);
  const sn = theta.map(Math.sin);
  const acc = new Float64Array(BLOCK);
  let min = Infinity;
  let argMin = -1;
  let work = 0;
  // Blocks grow 32 → BLOCK so that a clearly failing base is rejected after a few positions.
  let size = stopAtNegative ? 32 : BLOCK;
  for (let mTop = L; mTop >= 0; mTop -= size, size = Math.min(BLOCK, size * 2)) {
    const n = Math.min(size, mTop + 1);
    blockSums(theta, cs, sn, mTop, n, acc);
    for (let j = 0; j < n; j++) {
      if (acc[j] < min) {
        min = acc[j];
        argMin = mTop - j;
      }
    }
    work += n * theta.length;
    if (stopAtNegative && min < 0) break;
  }
  return { ok: min >= 0, min, argMin, work };
}

/** Per-bucket min and max of B(m) over [0, L], `buckets` equal slices (for plotting an envelope). */
export function cosineSumEnvelope(invFreq: ArrayLike<number>, L: number, buckets: number): { m: Float64Array; min: Float64Array; max: Float64Array } {
  checkInvFreq(invFreq);
  contextLength('L', L);
  checkScanWork('L', L, invFreq.length);
  const nb = Math.min(positiveInt('buckets', buckets), L + 1, 1 << 20);
  const theta = Float64Array.from(invFreq);
  const cs = theta.map(Math.cos);
  const sn = theta.map(Math.sin);
  const acc = new Float64Array(BLOCK);
  const lo = new Float64Array(nb).fill(Infinity);
  const hi = new Float64Array(nb).fill(-Infinity);
  const bucketOf = (m: number) => Math.min(nb - 1, Math.floor((m * nb) / (L + 1)));
  for (let mTop = L; mTop >= 0; mTop -= BLOCK) {
    const n = Math.min(BLOCK, mTop + 1);
    blockSums(theta, cs, sn, mTop, n, acc);
    for (let j = 0; j < n; j++) {
      const k = bucketOf(mTop - j);
      if (acc[j] < lo[k]) lo[k] = acc[j];
      if (acc[j] > hi[k]) hi[k] = acc[j];
    }
  }
  const m = new Float64Array(nb);
  for (let k = 0; k < nb; k++) m[k] = ((k + 0.5) * (L + 1)) / nb;
  return { m, min: lo, max: hi };
}

export interface BaseLowerBoundOptions {
  /** Rotary dimension d (θ_i = base^(−2i/d)). */
  headDim: number;
  /** Geometric grid ratio of the ascending scan (default 1.01). */
  gridRatio?: number;
  /** Relative width at which bisection stops (default 1e-5). */
  relTol?: number;
  /** First base tried (default 2). */
  minBase?: number;
  /** Give up above this base (default 1e30). */
  maxBase?: number;
  /** Stop with ERR_ROPE_CONFIG after this many cosine terms in all (default MAX_SEARCH_TERMS = 2^35). */
  maxWork?: number;
}

/** true when Σ_i cos(m·base^(−2i/d)) ≥ 0 for every integer m in [0, L]. */
export function meetsDecayCriterion(base: number, L: number, headDim: number): boolean {
  return cosineSumScan(defaultInvFreq(base, headDim), L, true).ok;
}

/**
 * Men et al. 2024 ("Base of RoPE bounds context length"): the smallest base whose B(m) = Σ_i cos(m·θ_i),
 * θ_i = base^(−2i/d), stays ≥ 0 for all integer m ≤ L. B is not monotone in the base, so the search walks
 * an ascending geometric grid (ratio gridRatio) from minBase to the first base that passes a full check,
 * then bisects between it and the failing grid point below to relTol. The result always passes the full
 * check and a base within relTol below it fails; a passing window narrower than one grid step below the
 * result can be missed (resolution: gridRatio − 1 relative).
 */
export function baseLowerBound(L: number, o: BaseLowerBoundOptions): number {
  contextLength('L', L);
  if (o === null || typeof o !== 'object') fail('options', `must be an object, got ${show(o)}`);
  const d = dim('headDim', o.headDim);
  const ratio = o.gridRatio === undefined ? 1.01 : finiteNumber('gridRatio', o.gridRatio);
  if (!(ratio > 1 && ratio <= 2)) fail('gridRatio', `must be in (1, 2], got ${ratio}`);
  const relTol = o.relTol === undefined ? 1e-5 : finiteNumber('relTol', o.relTol);
  if (!(relTol > 0 && relTol < ratio - 1)) fail('relTol', `must be in (0, gridRatio − 1), got ${relTol}`);
  const minBase = o.minBase === undefined ? 2 : checkBase('minBase', o.minBase);
  const maxBase = o.maxBase === undefined ? 1e30 : checkBase('maxBase', o.maxBase);
  if (maxBase <= minBase) fail('maxBase', `must be > minBase (${minBase}), got ${maxBase}`);
  const maxWork = o.maxWork === undefined ? MAX_SEARCH_TERMS : positive('maxWork', o.maxWork);
  // Refuse what cannot finish: a grid too fine to walk, or one check alone above the scan limit.
  const steps = Math.log(maxBase / minBase) / Math.log(ratio);
  if (steps > MAX_GRID_STEPS) {
    fail('gridRatio', `${ratio} needs ${steps.toExponential(2)} grid steps from minBase ${minBase} to maxBase ${maxBase}; ` +
      `the limit is ${MAX_GRID_STEPS} (use gridRatio ≥ ${Math.exp(Math.log(maxBase / minBase) / MAX_GRID_STEPS).toPrecision(6)} or a narrower [minBase, maxBase])`);
  }
  checkScanWork('L', L, d / 2);
  let work = 0;
  const meets = (b: number): boolean => {
    const r = scan(defaultInvFreq(b, d), L, true);
    work += r.work;
    if (work > maxWork) {
      fail('maxWork', `the search for L = ${L}, headDim ${d} used ${work.toExponential(2)} cosine terms without finishing ` +
        `(limit ${maxWork.toExponential(2)}); raise maxWork, or use baseLowerBoundFit for an estimate`);
    }
    return r.ok;
  };

  if (meets(minBase)) return minBase;
  let lo = minBase;
  let hi = NaN;
  for (let k = 1; ; k++) {
    const b = minBase * Math.pow(ratio, k);
    if (b > maxBase) fail('L', `no base ≤ maxBase (${maxBase}) satisfies the criterion for L = ${L}`);
    if (meets(b)) {
      hi = b;
      break;
    }
    lo = b;
  }
  while (hi / lo - 1 > relTol) {
    const mid = Math.sqrt(lo * hi);
    if (!(mid > lo && mid < hi)) break; // adjacent doubles: relTol below float64 resolution
    if (meets(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}
