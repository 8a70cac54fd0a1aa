// AdamW with fp32 master weights and moments, a global gradient-norm clip that never leaves the device,
// learning-rate schedules, and ZeRO-1 sharding of the optimizer state across a process group.
//
// One step = for every parameter: (clip) -> decoupled weight decay -> Adam moments -> update, fused in one
// kernel per tensor (csrc/ops/optim). Everything is enqueued: step() returns at once.
import { ArgumentError, UnsupportedError, callNative as call } from './errors';
import { native } from './native';
import { Tensor, arg, empty, zeros } from './tensor';
import { scale } from './elementwise';
import type { Group } from './dist/types';
import { guardReceivers, optionsArg } from './guard';
import { DEFAULT_BUCKET_BYTES, ShardedTensor, allGatherBucketed, reduceScatterBucketed } from './dist/bucket';

export interface ParamEntry {
  name: string;
  param: Tensor;
  /** Gradient with param's element count (any float dtype; f32 recommended for accumulation). */
  grad: Tensor;
  /** Apply weight decay (default true; false is usual for norms and biases). */
  decay?: boolean;
}

export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /**
   * f32 master weights for bf16/f16 params (f32 params are their own master). true: an f32 copy (4 bytes
   * per parameter on top of the param). 'split' (the default for bf16 params): the same f32 master kept as
   * the bf16 param (its high half) plus a 16-bit correction (2 bytes per parameter): every update computes
   * exactly what the f32 copy gives, and the param is that master rounded to nearest (ties away from zero,
   * the only difference: csrc/ops/optim/optim.h). Checkpoints hold `<name>.master_lo` then instead of
   * `<name>.master`. false: no master (the update rounds to the param dtype every step).
   */
  masterWeights?: boolean | 'split';
  /** Clip the global gradient norm to this (default: no clipping). */
  maxGradNorm?: number;
  /**
   * ZeRO-1: shard m, v and master weights across this group (each rank updates 1/W of every parameter,
   * then all-gathers the parameters). Gradients must then be the rank's local (unreduced) gradients: the
   * step reduce-scatters them (see gradReduction). Without a group (or world 1) gradients are used as given.
   */
  group?: Group;
  /**
   * How ZeRO-1 combines the ranks' local gradients: 'avg' (default; data parallelism: each rank's loss
   * is the mean over its own batch, so the global mean gradient is the average) or 'sum' (sequence
   * parallelism: the ranks hold shards of one sequence and each rank's loss part is already divided by
   * the global token count — model.forwardBackward({ group, reduceGrads: false }) — so the gradient of
   * the whole sequence is the sum). The clip sees the combined gradient's norm either way.
   */
  gradReduction?: 'sum' | 'avg';
  /**
   * ZeRO-1: gradients (reduce-scatter) and parameters (all-gather) smaller than this travel together in
   * flat buffers of at most this many bytes (default 25 MB), one collective per buffer; bigger ones go
   * alone, uncopied. 0: one collective per parameter. The results are the same either way (lib/dist/bucket.ts).
   */
  bucketBytes?: number;
}

interface Slot {
  entry: ParamEntry;
  decay: boolean;
  numel: number;
  /** This rank's slice [start, start+len) of the flattened parameter (the whole tensor without sharding). */
  start: number;
  len: number;
  m: Tensor;
  v: Tensor;
  master: Tensor | null;
  /** Split master (bf16 params): the low 16 bits (raw, in a bf16-typed tensor; never read as numbers). */
  masterLo: Tensor | null;
}

function check(op: string, ok: boolean, msg: string): void {
  if (!ok) throw new ArgumentError(`${op}: ${msg}`);
}

export class AdamW {
  readonly lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly maxGradNorm: number;
  readonly group: Group | undefined;
  readonly gradReduction: 'sum' | 'avg';
  readonly bucketBytes: number;
  #slots: Slot[] = [];
  #step = 0;
  #sumsq: Tensor | null = null;

  constructor(params: readonly ParamEntry[], opts: AdamWOptions) {
    markAdamW(this);
    const op = 'AdamW';
    check(op, Array.isArray(params) && params.length > 0, 'params must be a non-empty array of { name, param, grad }');
    check(op, !!opts && typeof opts === 'object', 'options must be an object');
    check(op, typeof opts.lr === 'number' && Number.isFinite(opts.lr) && opts.lr >= 0, 'lr must be a finite number >= 0');
    const betas = opts.betas ?? [0.9, 0.999];
    check(op, Array.isArray(betas) && betas.length === 2 && betas.every((b) => typeof b === 'number' && b >= 0 && b < 1),
      'betas must be two numbers in [0, 1)');
    this.lr = opts.lr;
    this.betas = [betas[0], betas[1]];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    this.maxGradNorm = opts.maxGradNorm ?? 0;
    check(op, typeof this.eps === 'number' && this.eps > 0 && Number.isFinite(this.eps), 'eps must be > 0');
    check(op, typeof this.weightDecay === 'number' && this.weightDecay >= 0 && Number.isFinite(this.weightDecay),
      'weightDecay must be >= 0');
    check(op, typeof this.maxGradNorm === 'number' && this.maxGradNorm >= 0 && Number.isFinite(this.maxGradNorm),
      'maxGradNorm must be >= 0');
    this.group = opts.group && opts.group.worldSize > 1 ? opts.group : undefined;
    const red = opts.gradReduction ?? 'avg';
    check(op, red === 'sum' || red === 'avg', `gradReduction must be 'sum' or 'avg', got ${String(red)}`);
    this.gradReduction = red;
    this.bucketBytes = opts.bucketBytes ?? DEFAULT_BUCKET_BYTES;
    check(op, Number.isSafeInteger(this.bucketBytes) && this.bucketBytes >= 0, 'bucketBytes must be an integer >= 0');
    const W = this.group?.worldSize ?? 1, r = this.group?.rank ?? 0;
    const names = new Set<string>();
    const device = params[0].param?.device;
    try {
      for (const e of params) {
        check(op, !!e && typeof e.name === 'string' && !names.has(e.name), 'every param needs a unique name');
        names.add(e.name);
        arg(e.param, `${op}: ${e.name}.param`);
        arg(e.grad, `${op}: ${e.name}.grad`);
        check(op, e.grad.numel === e.param.numel, `${e.name}: grad and param differ in size`);
        check(op, e.param.device === device && e.grad.device === device, `${e.name}: all tensors must be on ${device}`);
        if (e.param.dtype === 'i32') throw new UnsupportedError(`${op}: ${e.name} is an i32 tensor`);
        const numel = e.param.numel;
        // Even shards: rank r owns [r·ceil(n/W), ...) clipped to n (the last ranks may own less or nothing).
        const per = Math.ceil(numel / W);
        const start = Math.min(numel, r * per), len = Math.min(numel, start + per) - start;
        const mw = opts.masterWeights ?? (e.param.dtype === 'bf16' ? 'split' : e.param.dtype !== 'f32');
        check(op, mw === true || mw === false || mw === 'split', `masterWeights must be true, false or 'split', got ${String(mw)}`);
        // 'split' is for bf16 params only (the trick needs the param to be the master's high half).
        const split = mw === 'split' && e.param.dtype === 'bf16';
        const useMaster = mw === true || (mw === 'split' && !split && e.param.dtype !== 'f32');
        const slot: Slot = {
          entry: e, decay: e.decay ?? true, numel, start, len,
          m: zeros([len], { dtype: 'f32', device }), v: zeros([len], { dtype: 'f32', device }), master: null, masterLo: null,
        };
        this.#slots.push(slot);
        // A zero correction: the master starts as the param exactly.
        if (split) slot.masterLo = zeros([len], { dtype: 'bf16', device });
        if (useMaster) {
          const flat = e.param.reshape([numel]);
          const mine = flat.narrow(0, start, len);
          slot.master = scale(mine, 1, { dtype: 'f32' });
          mine.dispose(); flat.dispose();
        }
      }
    } catch (err) {
      this.dispose();
      throw err;
    }
  }

  get stepCount(): number { return this.#step; }

  /**
   * One optimizer step over every parameter (enqueued). `lr` overrides the base rate (schedules);
   * `gradScale` multiplies the gradients first (e.g. 1/microbatches). Resolves once everything is issued.
   */
  async step(opts: { lr?: number; gradScale?: number } = {}): Promise<void> {
    opts = optionsArg('AdamW.step', opts);
    const lr = opts.lr ?? this.lr;
    const gradScale = opts.gradScale ?? 1;
    check('AdamW.step', Number.isFinite(lr) && lr >= 0, 'lr must be a finite number >= 0');
    check('AdamW.step', Number.isFinite(gradScale), 'gradScale must be finite');
    const g = this.group;
    const W = g?.worldSize ?? 1;
    const device = this.#slots[0].entry.param.device;
    // With sharding: reduce-scatter every gradient (sum), so each rank holds the summed slice it owns
    // (small gradients bucketed: lib/dist/bucket.ts lays a bucket out rank-major, so the slices match).
    const local: Tensor[] = [];
    try {
      if (!g) for (const s of this.#slots) local.push(s.entry.grad);
      else {
        const items: ShardedTensor[] = [];
        for (const s of this.#slots) {
          local.push(empty([s.len], { dtype: s.entry.grad.dtype, device }));
          items.push({ full: s.entry.grad, piece: local[local.length - 1] });
        }
        await reduceScatterBucketed(g, items, { op: 'sum', bucketBytes: this.bucketBytes });
      }
      let sumsq: Tensor | null = null;
      if (this.maxGradNorm > 0) {
        sumsq = this.#sumsq ??= zeros([1], { dtype: 'f32', device });
        sumsq.fill_(0);
        for (const t of local) call(() => native().sumsq({ x: arg(t, 'grad'), out: sumsq!.handle() }));
        if (g) await g.allReduce(sumsq, { op: 'sum' });
      }
      this.#step++;
      // Averaging over ranks folds into the gradient scale. The clip must see the norm of the gradient the
      // update uses (gradScale·Σ/W or gradScale·Σ), so Σg² is scaled by the square of the same factor.
      const avg = W > 1 && this.gradReduction === 'avg';
      const scaleAll = avg ? gradScale / W : gradScale;
      if (sumsq && scaleAll !== 1) scale(sumsq, scaleAll * scaleAll, { out: sumsq });
      for (let i = 0; i < this.#slots.length; i++) {
        const s = this.#slots[i];
        if (s.len === 0) continue;
        const flat = s.entry.param.reshape([s.numel]);
        const mine = flat.narrow(0, s.start, s.len);
        try {
          call(() => native().adamw({
            param: mine.handle(), grad: arg(local[i], 'grad'), m: s.m.handle(), v: s.v.handle(),
            master: s.master?.handle(), masterLo: s.masterLo?.handle(), lr, beta1: this.betas[0], beta2: this.betas[1], eps: this.eps,
            weightDecay: s.decay ? this.weightDecay : 0, step: this.#step, gradScale: scaleAll,
            sumsq: sumsq?.handle(), maxNorm: sumsq ? this.maxGradNorm : undefined,
          }));
        } finally {
          mine.dispose(); flat.dispose();
        }
      }
      // Everyone gets the updated parameters back.
      if (g) {
        const items: ShardedTensor[] = [];
        try {
          for (const s of this.#slots) {
            const flat = s.entry.param.reshape([s.numel]);
            items.push({ full: s.entry.param, piece: s.len > 0 ? flat.narrow(0, s.start, s.len) : empty([0], { dtype: s.entry.param.dtype, device }) });
            flat.dispose();
          }
          await allGatherBucketed(g, items, { bucketBytes: this.bucketBytes });
        } finally {
          for (const it of items) it.piece.dispose();
        }
      }
    } finally {
      if (g) for (const t of local) t.dispose();
    }
  }

  /** Σg² of the last step's (reduced) gradients, as a device tensor (only with maxGradNorm). */
  lastGradSumsq(): Tensor | null { return this.#sumsq; }

  /**
   * The optimizer state as named tensors (this rank's shards) plus its step count, for checkpoints:
   * `<name>.exp_avg`, `<name>.exp_avg_sq`, `<name>.master` (when kept). The tensors are the live state.
   */
  state(): { step: number; tensors: Map<string, Tensor> } {
    const tensors = new Map<string, Tensor>();
    for (const s of this.#slots) {
      tensors.set(`${s.entry.name}.exp_avg`, s.m);
      tensors.set(`${s.entry.name}.exp_avg_sq`, s.v);
      if (s.master) tensors.set(`${s.entry.name}.master`, s.master);
      if (s.masterLo) tensors.set(`${s.entry.name}.master_lo`, s.masterLo);
    }
    return { step: this.#step, tensors };
  }

  /** Restores state() output (copied in; shapes must match this optimizer's shards). */
  loadState(state: { step: number; tensors: Map<string, Tensor> }): void {
    check('AdamW.loadState', Number.isSafeInteger(state?.step) && state.step >= 0, 'step must be an integer >= 0');
    for (const [name, t] of this.state().tensors) {
      const src = state.tensors.get(name);
      if (!src) {
        const other = name.endsWith('.master') ? `${name}_lo` : name.endsWith('.master_lo') ? name.slice(0, -3) : null;
        throw new ArgumentError(`AdamW.loadState: missing ${name}` + (other && state.tensors.has(other)
          ? ` (the state has ${other}: it was saved with masterWeights ${other.endsWith('_lo') ? "'split'" : 'true'}; build this AdamW the same way)` : ''));
      }
      if (src.numel !== t.numel) throw new ArgumentError(`AdamW.loadState: ${name} has ${src.numel} elements, expected ${t.numel}`);
      if (name.endsWith('.master_lo') && src.dtype !== t.dtype) throw new ArgumentError(`AdamW.loadState: ${name} must be ${t.dtype} (raw bits), got ${src.dtype}`);
      const moved = src.device === t.device ? src : src.to(t.device);
      // A same-dtype copy is a byte copy: the split master's correction bits are not numbers (scale would
      // canonicalise the ones that look like NaNs).
      if (moved.dtype === t.dtype) call(() => native().copy(t.handle(), moved.handle()));
      else scale(moved, 1, { out: t });
      if (moved !== src) moved.dispose();
    }
    this.#step = state.step;
  }

  dispose(): void {
    for (const s of this.#slots) { s.m.dispose(); s.v.dispose(); s.master?.dispose(); s.masterLo?.dispose(); }
    this.#slots = [];
    this.#sumsq?.dispose();
    this.#sumsq = null;
  }
}
const markAdamW = guardReceivers(AdamW);

/** The global L2 norm of gradients (waits for them; for logging). */
export async function gradNorm(grads: readonly Tensor[]): Promise<number> {
  check('gradNorm', Array.isArray(grads) && grads.length > 0, 'grads must be a non-empty array');
  const acc = zeros([1], { dtype: 'f32', device: grads[0].device });
  try {
    for (const t of grads) call(() => native().sumsq({ x: arg(t, 'grad'), out: acc.handle() }));
    return Math.sqrt((await acc.toArray())[0]);
  } finally {
    acc.dispose();
  }
}

export type Schedule = (step: number) => number;

function scheduleOptions<T>(op: string, o: T): T {
  check(op, !!o && typeof o === 'object', 'options { peak, warmup, total, min? } must be an object');
  return o;
}

/** Learning-rate schedules: functions of the 1-based step. */
export const schedules = {
  constant: (lr: number): Schedule => {
    check('schedules.constant', typeof lr === 'number' && Number.isFinite(lr) && lr >= 0, 'lr must be a finite number >= 0');
    return () => lr;
  },
  /** Linear warmup from 0 to `peak` over `warmup` steps, then cosine (or linear) decay to `min` at `total`. */
  warmupCosine(o: { peak: number; warmup: number; total: number; min?: number }): Schedule {
    const { peak, warmup, total, min = 0 } = scheduleOptions('schedules.warmupCosine', o);
    check('schedules.warmupCosine', [peak, warmup, total, min].every(Number.isFinite) && warmup >= 0 && total > 0 && peak >= min,
      'need finite peak >= min, warmup >= 0, total > 0');
    return (step) => {
      if (step <= warmup) return warmup === 0 ? peak : (peak * step) / warmup;
      const p = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
      return min + (peak - min) * 0.5 * (1 + Math.cos(Math.PI * p));
    };
  },
  warmupLinear(o: { peak: number; warmup: number; total: number; min?: number }): Schedule {
    const { peak, warmup, total, min = 0 } = scheduleOptions('schedules.warmupLinear', o);
    check('schedules.warmupLinear', [peak, warmup, total, min].every(Number.isFinite) && warmup >= 0 && total > 0 && peak >= min,
      'need finite peak >= min, warmup >= 0, total > 0');
    return (step) => {
      if (step <= warmup) return warmup === 0 ? peak : (peak * step) / warmup;
      const p = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
      return peak + (min - peak) * p;
    };
  },
};
