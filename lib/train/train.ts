// The training loop: train({ model, data, optimizer, schedule, steps, ... }).
//
// One step: zeroGrad -> microBatches x model.forwardBackward (gradients accumulate) -> AdamW step at the
// schedule's learning rate (global-norm clip on the device) -> one JSONL record. Checkpoints every
// `checkpoint.every` steps, on abort and at the end hold the model, the optimizer (m, v, f32 master),
// the data source's position, the loop's RNG and the step (lib/train/checkpoint.ts), so a resumed run
// continues the same curve: on the CPU bit for bit (the CPU ops are deterministic).
//
// Micro-batches are weighted by tokens, not averaged: when the labels are host arrays the loop counts the
// labelled tokens of all micro-batches first and passes that total as forwardBackward's lossDivisor, so
// the gradient (and the logged loss) is the mean over every labelled token of the step — exactly what one
// batch holding all the sequences would give.
//
// MFU (model FLOPs utilisation) counts model FLOPs only (recomputation by activation checkpointing is not
// counted, as in PaLM's definition), per token of a sequence of S tokens:
//   6·P_matmul + 6·L·Hq·D·S
// P_matmul = parameters that multiply (every parameter except the input embedding table; a tied embedding
// counts once, as the LM head); the second term is causal attention's QKᵀ and PV, forward (2·2·S/2·Hq·D
// per token per layer) plus backward (twice that): PaLM's 12·L·H·Q·T halved for the causal mask.
// MFU = tokens/s · FLOPs/token / peak, with peak = `peakFlops` (default: 989e12, H100/H200 dense bf16,
// on CUDA; none on the CPU).
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { ArgumentError, DtypeError } from '../errors';
import { guardReceivers, show } from '../guard';
import { AdamW, AdamWOptions, ParamEntry, Schedule, gradNorm } from '../optim';
import { Tensor, memory, synchronize, tensor } from '../tensor';
import type { Group } from '../dist/types';
import type { Model, ForwardBackwardOptions } from '../model/mistral';
import type { ModelConfig } from '../model/config';
import { latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint';
import { shardBatch } from '../model/shard';

type Ids = Int32Array | number[] | number[][] | Tensor;

/** One micro-batch: input ids and next-token labels ([seq] = batch 1, or [batch, seq]; -100 = ignored). */
export interface TrainBatch { input: Ids; labels: Ids }

export interface BatchContext {
  /** 1-based step being assembled, and the micro-batch within it. */
  step: number;
  micro: number;
  /** The loop's RNG (checkpointed): use it, not Math.random, so a resumed run draws the same batches. */
  random: () => number;
  rank: number;
  worldSize: number;
}

export type BatchFn = (ctx: BatchContext) => TrainBatch | Promise<TrainBatch>;

/** A stateful batch source, e.g. data.Sampler: its state() goes into checkpoints, resume() restores it. */
export interface DataSource {
  next(): TrainBatch;
  state(): unknown;
  resume(state: never): void;
}

export interface StepRecord {
  step: number;
  /** Mean cross-entropy over the step's labelled tokens (nats). */
  loss: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens processed in this step (all micro-batches; all ranks of a group). */
  tokens: number;
  tokensPerSecond: number;
  /** Model FLOPs utilisation in [0, 1] (null without a peak, e.g. on the CPU). */
  mfu: number | null;
  /** Peak device memory so far, bytes. */
  peakMemory: number;
  /** Seconds this step took. */
  time: number;
  /** Present on evaluation steps: evalFn's number, or its record's fields. */
  evalLoss?: number;
  [extra: string]: unknown;
}

export interface TrainOptions {
  model: Model;
  data: DataSource | BatchFn;
  /** An AdamW over the model's parameters, or options to build one (norm weights get no weight decay). */
  optimizer: AdamW | Omit<AdamWOptions, 'group' | 'maxGradNorm'>;
  /** Learning rate per 1-based step (lib/optim schedules), or a constant (default: the optimizer's lr). */
  schedule?: Schedule | number;
  /** Total steps: a resumed run continues until this many are done. */
  steps: number;
  /** Gradient accumulation: forward/backward passes per optimizer step (default 1). */
  microBatches?: number;
  /** Clip the global gradient norm (only when building the optimizer here; default 1.0; 0 = off). */
  maxGradNorm?: number;
  /**
   * Sequence-parallel group: every rank calls train() with the same data (whole sequences, host arrays);
   * train() cuts each rank's shard (model.shardBatch, forward.layout), forwardBackward runs ring attention
   * and the optimizer built here is ZeRO-1 over the group (gradReduction 'sum').
   */
  group?: Group;
  /** Seed of the loop's RNG (BatchContext.random); default 0. */
  seed?: number;
  checkpoint?: { dir: string; every?: number; keep?: number; meta?: unknown };
  /** true: continue from the latest checkpoint in checkpoint.dir (fresh start when there is none); a path: that checkpoint. */
  resume?: boolean | string;
  /** JSONL log path: one record per step (appended; a resumed run first drops records after its checkpoint). */
  log?: string;
  /** A progress line on stderr (true), or a function receiving it. */
  progress?: boolean | ((line: string) => void);
  evalEvery?: number;
  evalFn?: (ctx: { step: number; model: Model }) => number | Record<string, number> | Promise<number | Record<string, number>>;
  /** Stop after the current step (a checkpoint is written first when checkpoints are on). */
  signal?: AbortSignal;
  /** Called with every record (after it is logged). */
  onStep?: (record: StepRecord) => void | Promise<void>;
  /** Peak FLOP/s of the device for MFU (default 989e12 on CUDA, none on the CPU). */
  peakFlops?: number;
  /** Passed to every forwardBackward (checkpoint, mlpChunkTokens, lossChunkTokens, ignoreIndex). */
  forward?: Omit<ForwardBackwardOptions, 'group' | 'lossDivisor' | 'reduceGrads'>;
}

export interface TrainResult {
  /** Steps completed (including those before a resume). */
  step: number;
  aborted: boolean;
  /** Records of the steps run by this call. */
  records: StepRecord[];
  /** The last checkpoint written (or resumed from), if any. */
  checkpoint: string | null;
  /** The optimizer (built here when options were given: dispose it when done). */
  optimizer: AdamW;
}

/** xoshiro128** with a splitmix32 seed: small, portable, and its whole state is 4 uint32. */
export class TrainRng {
  s: Uint32Array;
  constructor(seed = 0) {
    markTrainRng(this);
    if (typeof seed !== 'number' || !Number.isFinite(seed)) throw new ArgumentError(`TrainRng: seed must be a finite number, got ${show(seed)}`);
    this.s = new Uint32Array(4);
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (this.s.every((v) => v === 0)) this.s[0] = 1;
  }
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 11);
    return r;
  }
  /** Uniform in [0, 1). */
  random = (): number => this.nextU32() / 4294967296;
  state(): number[] { return [...this.s]; }
  setState(s: readonly number[]): void {
    if (!Array.isArray(s) || s.length !== 4 || !s.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff))
      throw new ArgumentError('train: rng state must be 4 uint32');
    this.s.set(s);
  }
}
const markTrainRng = guardReceivers(TrainRng);
function rotl(x: number, k: number): number { return ((x << k) | (x >>> (32 - k))) >>> 0; }

/** Model FLOPs per token of a sequence of `seqLen` tokens (fwd + bwd), see the header. */
export function flopsPerToken(config: ModelConfig, seqLen: number, numParameters: number): number {
  if (!config || typeof config !== 'object') throw new ArgumentError(`flopsPerToken: config must be a model config, got ${show(config)}`);
  for (const k of ['vocabSize', 'hiddenSize', 'numLayers', 'numHeads', 'headDim'] as const)
    if (typeof config[k] !== 'number' || !(config[k] >= 0)) throw new ArgumentError(`flopsPerToken: config.${k} must be a number >= 0, got ${show(config[k])}`);
  if (typeof seqLen !== 'number' || !(seqLen >= 0)) throw new ArgumentError(`flopsPerToken: seqLen must be a number >= 0, got ${show(seqLen)}`);
  if (typeof numParameters !== 'number' || !(numParameters >= 0)) throw new ArgumentError(`flopsPerToken: numParameters must be a number >= 0, got ${show(numParameters)}`);
  const embed = config.tieWordEmbeddings ? 0 : config.vocabSize * config.hiddenSize;
  return 6 * (numParameters - embed) + 6 * config.numLayers * config.numHeads * config.headDim * seqLen;
}

function isDataSource(d: unknown): d is DataSource {
  return !!d && typeof d === 'object' && typeof (d as DataSource).next === 'function' &&
    typeof (d as DataSource).state === 'function' && typeof (d as DataSource).resume === 'function';
}

function shapeOf(x: Ids): number[] {
  if (x instanceof Tensor) return x.ndim === 1 ? [1, x.shape[0]] : [...x.shape];
  if (Array.isArray(x) && Array.isArray(x[0])) return [x.length, (x[0] as number[]).length];
  return [1, (x as ArrayLike<number>).length];
}

/** Labelled tokens of host labels (null for a Tensor: counting it would wait for the device). */
function countLabels(labels: Ids, ignore: number): number | null {
  if (labels instanceof Tensor) return null;
  let n = 0;
  const count = (a: ArrayLike<number>) => { for (let i = 0; i < a.length; i++) if (a[i] !== ignore) n++; };
  if (Array.isArray(labels) && Array.isArray(labels[0])) for (const r of labels as number[][]) count(r);
  else count(labels as ArrayLike<number>);
  return n;
}

function fmtNum(x: number): string {
  const a = Math.abs(x);
  if (a >= 1e9) return (x / 1e9).toFixed(1) + 'G';
  if (a >= 1e6) return (x / 1e6).toFixed(1) + 'M';
  if (a >= 1e3) return (x / 1e3).toFixed(1) + 'k';
  return x.toFixed(0);
}
function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** The log's lines up to and including `step` (a resumed run rewrites the steps after its checkpoint). */
function truncateLog(file: string, step: number): void {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return;
  }
  const keep = text.split('\n').filter((line) => {
    if (!line.trim()) return false;
    try {
      const r = JSON.parse(line) as { step?: unknown };
      return !(typeof r.step === 'number' && r.step > step);
    } catch {
      return false; // a line torn by the kill
    }
  });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, keep.map((l) => l + '\n').join(''));
  fs.renameSync(tmp, file);
}

function positiveInt(v: unknown, what: string, def?: number): number {
  const x = v ?? def;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 1) throw new ArgumentError(`train: ${what} must be an integer >= 1, got ${String(v)}`);
  return x;
}

/** AdamW over a model's parameters: weight decay on matrices only (norm weights are 1-D). */
export function adamwFor(model: Model, opts: AdamWOptions): AdamW {
  if (!model || typeof model !== 'object' || typeof model.grads !== 'function' || typeof model.parameters !== 'function')
    throw new ArgumentError(`adamwFor: model must be a megabeam model, got ${show(model)}`);
  const grads = model.grads();
  const entries: ParamEntry[] = [...model.parameters()].map(([name, param]) => ({
    name, param, grad: grads.get(name)!, decay: param.ndim > 1,
  }));
  return new AdamW(entries, opts);
}

export async function train(o: TrainOptions): Promise<TrainResult> {
  if (!o || typeof o !== 'object') throw new ArgumentError('train: options must be an object');
  const model = o.model;
  if (!model || typeof model.forwardBackward !== 'function' || typeof model.parameters !== 'function')
    throw new ArgumentError('train: model must be a megabeam model (model.fromConfig / fromPretrained)');
  if (model.dtype === 'f16')
    throw new DtypeError('train: f16 parameters are refused: f16 training needs loss scaling, which megabeam does not do; use bf16 (same memory, f32 range) or f32');
  const steps = positiveInt(o.steps, 'steps');
  const micro = positiveInt(o.microBatches, 'microBatches', 1);
  const dataIsSource = isDataSource(o.data);
  if (!dataIsSource && typeof o.data !== 'function')
    throw new ArgumentError('train: data must be a Sampler (state/resume/next) or a function ({ step, micro, random }) => { input, labels }');
  const group = o.group && o.group.worldSize > 1 ? o.group : undefined;
  const rank = group?.rank ?? 0, world = group?.worldSize ?? 1;
  const ck = o.checkpoint;
  if (ck !== undefined) {
    if (!ck || typeof ck.dir !== 'string' || ck.dir === '') throw new ArgumentError('train: checkpoint.dir must be a non-empty string');
    if (ck.every !== undefined) positiveInt(ck.every, 'checkpoint.every');
    if (ck.keep !== undefined) positiveInt(ck.keep, 'checkpoint.keep');
  }
  if (o.resume !== undefined && typeof o.resume !== 'boolean' && typeof o.resume !== 'string')
    throw new ArgumentError('train: resume must be a boolean or a checkpoint path');
  if (o.resume === true && !ck) throw new ArgumentError('train: resume: true needs checkpoint.dir');
  if (o.evalEvery !== undefined) positiveInt(o.evalEvery, 'evalEvery');
  if (o.evalEvery !== undefined && typeof o.evalFn !== 'function') throw new ArgumentError('train: evalEvery needs evalFn');
  const seed = o.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ArgumentError('train: seed must be a non-negative integer');

  let optimizer: AdamW;
  let ownOptimizer = false;
  if (o.optimizer instanceof AdamW) {
    optimizer = o.optimizer;
    if (group && optimizer.group && optimizer.gradReduction !== 'sum')
      throw new ArgumentError("train: with a sequence-parallel group a ZeRO-1 AdamW needs gradReduction: 'sum' (each rank's loss part is already divided by the global token count)");
    if (o.maxGradNorm !== undefined && o.maxGradNorm !== optimizer.maxGradNorm)
      throw new ArgumentError(`train: maxGradNorm ${o.maxGradNorm} differs from the given optimizer's (${optimizer.maxGradNorm}); set it on the AdamW`);
  } else {
    if (!o.optimizer || typeof o.optimizer !== 'object') throw new ArgumentError('train: optimizer must be an AdamW or AdamW options ({ lr, ... })');
    // With a group the ranks hold shards of one sequence, each loss part already divided by the global
    // count: the gradient of the whole sequence is the sum over ranks.
    optimizer = adamwFor(model, { ...o.optimizer, maxGradNorm: o.maxGradNorm ?? 1.0, group, gradReduction: 'sum' });
    ownOptimizer = true;
  }
  const schedule: Schedule = typeof o.schedule === 'function' ? o.schedule
    : typeof o.schedule === 'number' ? (() => o.schedule as number) : (() => optimizer.lr);
  const ignore = o.forward?.ignoreIndex ?? -100;
  const device = model.device;
  const peak = o.peakFlops ?? (device.startsWith('cuda') ? 989e12 : 0);
  const rng = new TrainRng(seed);
  const say = typeof o.progress === 'function' ? o.progress : o.progress ? ((s: string) => process.stderr.write(s)) : null;
  const tty = typeof o.progress !== 'function' && !!process.stderr.isTTY;

  let step = 0;
  let lastCkpt: string | null = null;
  const records: StepRecord[] = [];
  try {
    // ---- resume ----
    const from = typeof o.resume === 'string' ? o.resume : o.resume && ck ? latestCheckpoint(ck.dir) : null;
    if (from) {
      const st = await loadCheckpoint(from, model, optimizer, group);
      step = st.step;
      rng.setState(st.rng);
      if (dataIsSource) (o.data as DataSource).resume(st.sampler as never);
      lastCkpt = from;
      if (o.log && rank === 0) truncateLog(o.log, step);
    } else if (o.log && rank === 0) {
      fs.mkdirSync(path.dirname(path.resolve(o.log)), { recursive: true });
      fs.writeFileSync(o.log, '');
    }

    const save = async () => {
      if (!ck) return;
      lastCkpt = await saveCheckpoint({
        dir: ck.dir, model, optimizer, keep: ck.keep, group,
        state: { step, sampler: dataIsSource ? (o.data as DataSource).state() : null, rng: rng.state(), meta: ck.meta },
      });
    };

    const t0 = performance.now();
    const startStep = step;
    let aborted = false;
    while (step < steps) {
      // With a group the ranks agree at the end of each step (an abort before the first step still runs one).
      if (o.signal?.aborted && !group) { aborted = true; break; }
      const s = step + 1;
      const ts = performance.now();
      model.zeroGrad();
      // Gather the micro-batches first so their labelled tokens can be counted (token-weighted mean).
      const batches: TrainBatch[] = [];
      for (let m = 0; m < micro; m++) {
        const b = dataIsSource ? (o.data as DataSource).next()
          : await (o.data as BatchFn)({ step: s, micro: m, random: rng.random, rank, worldSize: world });
        if (!b || b.input === undefined || b.labels === undefined) throw new ArgumentError(`train: step ${s}: the data gave no { input, labels }`);
        batches.push(b);
      }
      const counts = batches.map((b) => countLabels(b.labels, ignore));
      const total = counts.every((c) => c !== null) ? (counts as number[]).reduce((a, b) => a + b, 0) : null;
      if (group && total === null)
        throw new ArgumentError('train: with a group the batches must be host arrays (every rank gets the whole sequence; train() cuts its shard)');
      // Token-weighted over the micro-batches (and over the ranks of a group: the host labels are whole).
      const divisor = total !== null && total > 0 ? total : undefined;
      let loss = 0, tokens = 0, seqLen = 0;
      for (let m = 0; m < batches.length; m++) {
        const b = batches[m];
        const [B, S] = shapeOf(b.input);
        tokens += B * S;
        seqLen = S;
        let input = b.input, labels = b.labels;
        if (group) {
          const sh = shardBatch({ ids: input as Int32Array, labels: labels as Int32Array }, rank, world, { layout: o.forward?.layout });
          input = sh.ids; labels = sh.labels;
        }
        // Sequence parallel: ZeRO-1 reduce-scatters the local gradients itself; a replicated optimizer
        // needs them summed once, after the last micro-batch.
        const reduceGrads = group ? (!optimizer.group && m === batches.length - 1) : undefined;
        const r = await model.forwardBackward(input, labels, { ...o.forward, group, lossDivisor: divisor, reduceGrads });
        loss += divisor !== undefined ? r.loss : r.loss / micro;
      }
      const gradScale = divisor !== undefined ? 1 : 1 / micro;
      let gnorm: number;
      if (optimizer.maxGradNorm > 0) {
        await optimizer.step({ lr: schedule(s), gradScale });
        const sq = optimizer.lastGradSumsq();
        // Σg² of the gradient the update used (after gradScale and the reduction over a group).
        gnorm = sq ? Math.sqrt((await sq.toArray())[0]) : NaN;
      } else {
        // Without the clip the norm is only logged: local (unreduced) ZeRO-1 gradients have none to give.
        gnorm = optimizer.group ? NaN : (await gradNorm([...model.grads().values()])) * gradScale;
        await optimizer.step({ lr: schedule(s), gradScale });
      }
      const lr = schedule(s);
      await synchronize(device);
      step = s;
      const dt = (performance.now() - ts) / 1e3;
      // Every rank of a group sees the whole sequence (the model shards it): tokens are global already.
      const globalTokens = tokens;
      const tps = globalTokens / dt;
      const rec: StepRecord = {
        step, loss, lr, gradNorm: gnorm, tokens: globalTokens, tokensPerSecond: tps,
        // Per device: the group's W devices share the step's tokens.
        mfu: peak > 0 ? (tps * flopsPerToken(model.config, seqLen, model.numParameters)) / (peak * world) : null,
        peakMemory: memory(device).peak, time: dt,
      };
      if (o.evalEvery && step % o.evalEvery === 0) {
        const ev = await o.evalFn!({ step, model });
        if (typeof ev === 'number') rec.evalLoss = ev;
        else if (ev && typeof ev === 'object') Object.assign(rec, ev);
      }
      records.push(rec);
      if (o.log && rank === 0) fs.appendFileSync(o.log, JSON.stringify(rec) + '\n');
      if (say && rank === 0) {
        const el = (performance.now() - t0) / 1e3;
        const eta = (el / (step - startStep)) * (steps - step);
        const n = 20, k = Math.round((step / steps) * n);
        const line = `[${'='.repeat(k)}${' '.repeat(n - k)}] step ${step}/${steps} loss ${loss.toFixed(4)} lr ${lr.toExponential(2)}` +
          ` | ${fmtNum(tps)} tok/s${rec.mfu !== null ? ` | MFU ${(rec.mfu * 100).toFixed(1)}%` : ''}` +
          ` | mem ${(rec.peakMemory / 2 ** 30).toFixed(2)} GiB | ${fmtTime(el)} < ${fmtTime(eta)}` +
          (rec.evalLoss !== undefined ? ` | eval ${rec.evalLoss.toFixed(4)}` : '');
        if (tty) say(`\r${line}\x1b[K${step === steps ? '\n' : ''}`);
        else if (typeof o.progress === 'function' || step === steps || step % Math.max(1, Math.floor(steps / 20)) === 0) say(line + '\n');
      }
      if (o.onStep) await o.onStep(rec);
      let stopping = !!o.signal?.aborted;
      if (group) {
        // One rank's abort (its Ctrl-C, its signal) stops every rank after the same step: the others would
        // otherwise wait in the next step's collectives (and checkpoints need every rank's shard).
        const flag = tensor([stopping ? 1 : 0], { dtype: 'f32', device });
        try {
          await group.allReduce(flag, { op: 'sum' });
          stopping = (await flag.toArray())[0] > 0;
        } finally {
          flag.dispose();
        }
      }
      if (ck && (stopping || step === steps || (ck.every !== undefined && step % ck.every === 0))) await save();
      if (stopping) { aborted = true; break; }
    }
    if (aborted && tty && say) say('\n');
    return { step, aborted, records, checkpoint: lastCkpt, optimizer };
  } catch (e) {
    if (ownOptimizer) optimizer.dispose();
    throw e;
  }
}
