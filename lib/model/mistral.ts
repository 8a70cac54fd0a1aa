// A Mistral / Llama decoder, forward and backward written out per layer (as llm.c does; no autograd):
//   embedding -> N x [ RMSNorm -> q/k/v -> RoPE -> causal attention -> o -> +residual
//                      -> RMSNorm -> gate/up -> SwiGLU -> down -> +residual ] -> RMSNorm -> chunked LM loss
// Parameters carry Hugging Face names. Activations and activation gradients are in the model dtype
// (as PyTorch autocast-free bf16 training does); parameter gradients are f32 by default (accumulated
// by the GEMMs straight into f32, so 32 layers x many steps of accumulation do not lose bits).
//
// Memory at long context: with checkpointing (the default) the forward keeps only each layer's input
// ([tokens, hidden] in the model dtype); the backward recomputes the layer up to the MLP input and
// runs the MLP forward+backward in token chunks, so [tokens, intermediate] tensors never exist whole.
// Selective checkpointing (keepAttention, 'auto' by default): the forward also keeps the attention output
// and lse of as many layers as fit in the memory budget (the last k layers: see #plan), so their backward
// recomputes only norm, q/k/v, RoPE and o — not the attention forward, the one recomputed part whose cost
// grows as tokens² (and, with ring attention, the one that communicates). The kept out/lse are the very
// tensors a recompute would produce (same kernels on the same inputs), so the gradients are bit-identical.
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Dtype, checkDtype, dtypeSize } from '../dtype';
import { DeviceLike, DeviceString, cuda, deviceIndex, parseDevice } from '../device';
import { ArgumentError, DeviceError, DtypeError, ShapeError, UnsupportedError } from '../errors';
import { matmul, linear } from '../matmul';
import * as nn from '../nn';
import { rope, RopeApplyOptions } from '../rope';
import * as safetensors from '../safetensors';
import { Tensor, empty, randn, tensor, ones, memory } from '../tensor';
import { scale } from '../elementwise';
import { fromHFConfig } from '../theta/hf';
import { attend, AttendGroup, ringGroup, worldOf } from './attend';
import { ring, RingAlgorithm, RingLayout } from '../ring';
import type { Group } from '../dist/types';
import { allReduceBucketed } from '../dist/bucket';
import { ConfigOptions, ModelConfig, configFromHF, parameterShapes } from './config';
import { show, optionsArg } from '../guard';

export interface FromConfigOptions extends ConfigOptions {
  device?: DeviceLike;
  /** Parameter and activation dtype (default 'bf16' on CUDA, 'f32' on the CPU). */
  dtype?: 'bf16' | 'f32' | 'f16';
  /**
   * Gradient dtype: 'f32' (default) or 'param': the linear layers' weight gradients in the parameter
   * dtype (bf16: 14 GB less for Mistral-7B); norms, embedding and LM head stay f32.
   */
  gradDtype?: 'f32' | 'param';
  /** Seed of the random initialisation (normal(0, initializer_range) for matrices, 1 for norms). */
  seed?: number | bigint;
  /** Skip the random init (parameters hold garbage until load()). */
  empty?: boolean;
}

/** Which layers keep their attention output from the forward (see ForwardBackwardOptions.keepAttention). */
export type KeepAttention = boolean | number | 'auto';

export interface ForwardBackwardOptions {
  /** Per-layer activation checkpointing (default true): keep layer inputs, recompute in the backward. */
  checkpoint?: boolean;
  /**
   * Selective checkpointing (with checkpoint: true): layers whose forward also keeps the attention output
   * ([tokens, heads·headDim], model dtype) and lse (f32 [batch, heads, seq]), so their backward skips the
   * attention forward (it recomputes only norm, q/k/v, RoPE and o). Gradients are bit-identical either way.
   * 'auto' (default): as many layers as fit in `memoryBudget` (see Model.memoryPlan); true: every layer;
   * false: none (plain per-layer recompute); an integer k in [0, numLayers]: k layers. The kept layers are
   * the last k (their outputs are freed first in the backward, which lowers the peak by one layer's worth).
   * With a group of world > 1 the ranks agree on the smallest k (one small allReduce). Ignored (but checked)
   * with checkpoint: false, which stores every activation anyway.
   */
  keepAttention?: KeepAttention;
  /**
   * Bytes the step may hold on the model's device, for keepAttention 'auto' (default: the CUDA device's
   * memory minus max(6 GiB, 5 %); on the CPU half the physical memory). It counts everything allocated on
   * the device when the step starts (parameters, gradients, optimizer state), as memory().allocated does.
   */
  memoryBudget?: number;
  /** Tokens per MLP chunk (default 8192): [chunk, intermediate] is the largest MLP tensor (8192 x 14336 bf16 = 235 MB for Mistral-7B; big enough for full-speed GEMMs). */
  mlpChunkTokens?: number;
  /** Tokens per LM-head/cross-entropy chunk (passed to nn.lmHeadLoss). */
  lossChunkTokens?: number;
  /** Label that contributes no loss (default -100). */
  ignoreIndex?: number;
  /**
   * Sequence-parallel group (default: none = plain attention). With a lib/dist Group of world size W > 1,
   * ids/labels are this rank's shard of one sequence (model.shardBatch / model.shardTokens cut it, as ring.shard does; `layout`),
   * attention is ring attention over the group, the loss is normalised by the global count of counted
   * tokens, the returned loss and count are global (the same on every rank) and, unless
   * `reduceGrads: false`, the parameter gradients are summed over the group: every rank then holds the
   * gradients of the world-1 run on the whole sequence.
   */
  group?: AttendGroup | Group;
  /**
   * Global position of the first token: of this call's tokens without a group (or world 1), of the whole
   * sharded sequence with a group of world > 1. RoPE and the causal mask use it. Default 0.
   */
  positionOffset?: number;
  /** How the sequence is sharded over a group of world > 1: 'zigzag' (default, causally balanced) or 'contiguous'. */
  layout?: RingLayout;
  /**
   * Group of world > 1: sum the parameter gradients over the group after the backward (default true).
   * false when the caller reduces them itself: ZeRO-1 (AdamW({ group, gradReduction: 'sum' })
   * reduce-scatters them), or the earlier micro-batches of a gradient accumulation (reduce once, at the
   * last one: the sum over ranks of the accumulated local gradients is the accumulated global gradient).
   */
  reduceGrads?: boolean;
  /**
   * Divide the summed loss (and so every gradient) by this instead of the count of counted tokens (the
   * global count with a group of world > 1), e.g. the count over all micro-batches of an accumulated
   * step. The returned loss is divided the same way.
   */
  lossDivisor?: number;
  /** Timeout of each communication call with a group (default: the group's). */
  timeoutMs?: number;
  /** Ring attention's algorithm with a group of world > 1: 'ring', 'allgather' or 'auto' (default, ring.chooseAlgorithm). */
  ringAlgorithm?: RingAlgorithm;
}

/** Where this call's tokens sit in the sequence, and the group that shares it. */
interface SeqPar {
  /** The group as attend gets it (world 1: possibly a structural stand-in). */
  group?: AttendGroup | Group;
  /** World 1: position of this call's first token; world > 1: of the whole sequence's first token. */
  positionOffset: number;
  layout: RingLayout;
  world: number;
  rank: number;
  /** Zigzag with world > 1: this shard's global positions, i32 [B, S] on the model's device (owned by the caller). */
  positions?: Tensor;
  /** Passed on to ring attention. */
  algorithm?: RingAlgorithm;
  timeoutMs?: number;
}

/** An attention call a layer's code yields to its driver: plain attention runs it at once, ring attention awaits it. */
type AttnCall =
  | { fwd: true; q: Tensor; k: Tensor; v: Tensor }
  | { fwd: false; dout: Tensor; q: Tensor; k: Tensor; v: Tensor; out: Tensor; lse: Tensor };
type AttnResult = { out: Tensor; lse: Tensor } | { dq: Tensor; dk: Tensor; dv: Tensor };
/**
 * Layer code is written once, as generators that yield their attention calls: the synchronous driver
 * (no group / world 1: exactly today's path, no awaits) and the asynchronous one (ring attention) run
 * the same code. An attention error is thrown back into the generator so its cleanup runs.
 */
type AttnGen<R> = Generator<AttnCall, R, AttnResult>;

function runSync<R>(gen: AttnGen<R>, sp: SeqPar): R {
  let r = gen.next(undefined as unknown as AttnResult);
  while (!r.done) {
    const c = r.value;
    let res: AttnResult;
    try {
      res = c.fwd ? attend.forward(c.q, c.k, c.v, sp) : attend.backward(c.dout, c.q, c.k, c.v, c.out, c.lse, sp);
    } catch (e) {
      r = gen.throw(e);
      continue;
    }
    r = gen.next(res);
  }
  return r.value;
}

async function runAsync<R>(gen: AttnGen<R>, sp: SeqPar): Promise<R> {
  let r = gen.next(undefined as unknown as AttnResult);
  while (!r.done) {
    const c = r.value;
    let res: AttnResult;
    try {
      res = c.fwd ? await attend.forwardAsync(c.q, c.k, c.v, sp)
        : await attend.backwardAsync(c.dout, c.q, c.k, c.v, c.out, c.lse, sp);
    } catch (e) {
      r = gen.throw(e);
      continue;
    }
    r = gen.next(res);
  }
  return r.value;
}

export interface ForwardBackwardResult {
  /** Mean cross-entropy over the counted (non-ignored) tokens. */
  loss: number;
  /** Number of counted tokens. */
  count: number;
  /** Layers whose backward did not recompute the attention forward (all of them with checkpoint: false). */
  keptAttention: number;
}

/** What a checkpointed forwardBackward on `tokens` tokens (per rank) will hold: see Model.memoryPlan. */
export interface MemoryPlan {
  /** Layers that keep their attention output and lse (the last keptAttention layers). */
  keptAttention: number;
  /** Bytes one kept layer holds: out [tokens, heads·headDim] + lse f32 [heads, tokens], allocator-rounded. */
  keptBytesPerLayer: number;
  /** Bytes allocated on the device now (parameters, gradients, optimizer state, ...): the plan's base. */
  baseBytes: number;
  /** Predicted peak allocated bytes of the step with keptAttention layers kept (base included). */
  predictedPeak: number;
  /** The same with no layer kept (the plain per-layer recompute). */
  recomputePeak: number;
  /** The budget 'auto' fits into (memoryBudget or the device default). */
  budget: number;
}

const GIB = 2 ** 30;

type Ids = Tensor | Int32Array | number[] | number[][];

/** Saved activations of one layer for its backward (q/k after RoPE). */
interface LayerActs {
  y1: Tensor; rstd1: Tensor;
  q: Tensor; k: Tensor; v: Tensor; attn: Tensor; lse: Tensor;
  h: Tensor; y2: Tensor; rstd2: Tensor;
}

function disposeAll(...ts: (Tensor | undefined | null)[]): void {
  for (const t of ts) t?.dispose();
}

/** t reshaped (a view), with t's own handle released so the storage has one owner. */
function rs(t: Tensor, shape: number[]): Tensor {
  try {
    return t.reshape(shape);
  } finally {
    t.dispose();
  }
}

function mix(seed: bigint, i: number): bigint {
  // SplitMix64-style: independent streams per parameter from one seed.
  let z = BigInt.asUintN(64, seed + BigInt(i + 1) * 0x9e3779b97f4a7c15n);
  z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
  z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
  return z ^ (z >> 31n);
}

export class Model {
  readonly config: ModelConfig;
  readonly device: DeviceString;
  readonly dtype: Dtype;
  readonly gradDtype: Dtype;
  #params = new Map<string, Tensor>();
  #grads: Map<string, Tensor> | null = null;
  /** The gradients were summed over a group since the last zeroGrad (a further local pass would be double-counted). */
  #reduced = false;
  #ropeCache = new Map<number, { invFreq: Float64Array; attentionFactor: number }>();

  /** @internal use fromConfig() */
  constructor(config: ModelConfig, device: DeviceString, dtype: Dtype, gradDtype: Dtype) {
    this.config = config;
    this.device = device;
    this.dtype = dtype;
    this.gradDtype = gradDtype;
  }

  /** @internal */
  init(seed: bigint | undefined, skip: boolean): void {
    const shapes = parameterShapes(this.config);
    const std = this.config.initializerRange;
    try {
      shapes.forEach(([name, shape], i) => {
        let t: Tensor;
        if (shape.length === 1) t = ones(shape, { dtype: this.dtype, device: this.device });
        else if (skip) t = empty(shape, { dtype: this.dtype, device: this.device });
        else t = randn(shape, { dtype: this.dtype, device: this.device, std, seed: seed === undefined ? undefined : mix(seed, i) });
        this.#params.set(name, t);
      });
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** HF name -> parameter tensor (the model's own tensors: writing them changes the model). */
  parameters(): Map<string, Tensor> {
    return new Map(this.#params);
  }

  /** Total parameter count. */
  get numParameters(): number {
    let n = 0;
    for (const t of this.#params.values()) n += t.numel;
    return n;
  }

  /**
   * HF name -> gradient tensor (f32 by default, see gradDtype), allocated (zeroed) on first use.
   * forwardBackward() accumulates into them (+=) as PyTorch does; zeroGrad() clears them.
   */
  grads(): Map<string, Tensor> {
    if (this.#grads === null) {
      const g = new Map<string, Tensor>();
      try {
        for (const [name, p] of this.#params) g.set(name, empty(p.shape, { dtype: this.gradDtypeOf(name), device: this.device }).fill_(0));
      } catch (e) {
        for (const t of g.values()) t.dispose();
        throw e;
      }
      this.#grads = g;
    }
    return new Map(this.#grads);
  }

  /**
   * The dtype of a parameter's gradient: gradDtype for the linear layers' weights; f32 always for the
   * norms, the embedding and the LM head (their ops accumulate into f32: a scatter-add and chunked sums).
   */
  gradDtypeOf(name: string): Dtype {
    if (this.gradDtype === 'f32') return 'f32';
    const linearWeight = /^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$/.test(name);
    return linearWeight ? this.gradDtype : 'f32';
  }

  /** Sets every gradient to 0 (or frees them with { free: true }). */
  zeroGrad(opts: { free?: boolean } = {}): void {
    opts = optionsArg('model.zeroGrad', opts);
    this.#reduced = false;
    if (!this.#grads) return;
    for (const t of this.#grads.values()) opts.free ? t.dispose() : t.fill_(0);
    if (opts.free) this.#grads = null;
  }

  #p(name: string): Tensor {
    const t = this.#params.get(name);
    if (!t) throw new ArgumentError(`model: no parameter ${name}`);
    return t;
  }
  #headName(): string {
    return this.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  }

  /** RoPE frequencies for a sequence length (dynamic / longrope scaling depend on it). */
  #rope(seqLen: number): RopeApplyOptions {
    const type = (this.config.rope.options as { type: string }).type;
    const key = type === 'dynamic' || type === 'longrope' ? seqLen : 0;
    let r = this.#ropeCache.get(key);
    if (!r) {
      r = key === 0 ? this.config.rope : fromHFConfig(this.config.raw, { seqLen });
      this.#ropeCache.set(key, r);
    }
    return { invFreq: r.invFreq, attentionFactor: r.attentionFactor };
  }

  /** RoPE of a shard of S tokens per batch row: its global positions (see SeqPar). */
  #ropeOpts(S: number, sp: SeqPar): RopeApplyOptions {
    const off = sp.positionOffset;
    const r = this.#rope(off + S * sp.world);
    if (sp.positions) return { ...r, positions: sp.positions, inplace: true };
    return { ...r, positionOffset: sp.world > 1 ? off + sp.rank * S : off, inplace: true };
  }

  /**
   * Validates the sequence-parallel options. With a group of world > 1 and the zigzag layout it makes
   * the shard's positions tensor (for B rows of S local tokens): the caller disposes sp.positions.
   */
  #seqPar(o: { group?: AttendGroup | Group; positionOffset?: number; layout?: RingLayout; ringAlgorithm?: RingAlgorithm; timeoutMs?: number },
      B: number, S: number): SeqPar {
    const off = o.positionOffset ?? 0;
    if (typeof off !== 'number' || !Number.isSafeInteger(off) || off < 0)
      throw new ArgumentError(`model: positionOffset must be a non-negative integer, got ${show(off)}`);
    const layout = o.layout ?? 'zigzag';
    if (layout !== 'zigzag' && layout !== 'contiguous')
      throw new ArgumentError(`model: layout must be 'zigzag' or 'contiguous', got ${show(layout)}`);
    const g = ringGroup(o.group, 'model');
    if (!g) return { group: o.group, positionOffset: off, layout, world: 1, rank: 0 };
    if (g.device !== this.device) throw new DeviceError(`model: the group is on ${g.device}, the model on ${this.device}`);
    const sp: SeqPar = { group: g, positionOffset: off, layout, world: g.worldSize, rank: g.rank, algorithm: o.ringAlgorithm, timeoutMs: o.timeoutMs };
    // chunks() checks that the shard splits as the layout needs (zigzag: two equal halves).
    ring.chunks(S * sp.world, sp.rank, sp.world, layout);
    if (layout === 'zigzag')
      sp.positions = ring.positions(S * sp.world, sp.rank, sp.world, 'zigzag', { batch: B, device: this.device, offset: off });
    return sp;
  }

  /** Synchronous entry points run plain attention only. */
  #syncOnly(what: string, o: { group?: AttendGroup | Group }): void {
    if (worldOf(o.group) > 1)
      throw new UnsupportedError(`model.${what}: a group of world size > 1 (ring attention) needs forwardBackward`);
  }

  #ids(ids: Ids, what: string): Tensor {
    let t: Tensor;
    if (ids instanceof Tensor) {
      t = ids;
      if (t.dtype !== 'i32') throw new DtypeError(`model: ${what} must be i32, got ${t.dtype}`);
      if (t.device !== this.device) t = t.to(this.device);
    } else {
      const nested = Array.isArray(ids) && Array.isArray(ids[0]);
      const flat = nested ? (ids as number[][]).flat() : Array.from(ids as ArrayLike<number>);
      const shape = nested ? [(ids as number[][]).length, (ids as number[][])[0].length] : [1, flat.length];
      t = tensor(Int32Array.from(flat), { dtype: 'i32', device: this.device, shape });
    }
    if (t.ndim === 1) t = t.reshape([1, t.shape[0]]);
    if (t.ndim !== 2) throw new ShapeError(`model: ${what} must be [batch, seq], got [${t.shape}]`);
    return t;
  }

  #checkSeq(seqLen: number): void {
    const sw = this.config.slidingWindow;
    if (sw !== null && seqLen > sw) configFromHF(this.config.raw, { seqLen }); // throws, naming sliding_window
  }

  // ---- one decoder layer ----------------------------------------------------------------------

  /**
   * The layer up to the MLP input (everything its backward needs besides the MLP's own tensors). With
   * `kept` (the attention output and lse its forward kept, owned from here on) the attention call is
   * skipped: q/k/v are still recomputed, for the attention backward.
   */
  *#attnPart(l: number, x: Tensor, B: number, S: number, sp: SeqPar, kept?: { out: Tensor; lse: Tensor }): AttnGen<LayerActs> {
    const c = this.config, p = `model.layers.${l}.`;
    const N = B * S, D = c.headDim;
    const acts: Partial<LayerActs> = {};
    try {
      if (kept) { acts.attn = kept.out; acts.lse = kept.lse; }
      const n1 = nn.rmsNorm(x, this.#p(`${p}input_layernorm.weight`), { eps: c.rmsNormEps });
      const y1 = acts.y1 = n1.y; acts.rstd1 = n1.rstd;
      const q = acts.q = rs(linear(y1, this.#p(`${p}self_attn.q_proj.weight`)), [B, S, c.numHeads, D]);
      const k = acts.k = rs(linear(y1, this.#p(`${p}self_attn.k_proj.weight`)), [B, S, c.numKvHeads, D]);
      const v = acts.v = rs(linear(y1, this.#p(`${p}self_attn.v_proj.weight`)), [B, S, c.numKvHeads, D]);
      rope.applyQK(q, k, this.#ropeOpts(S, sp));
      const a = kept ?? (yield { fwd: true, q, k, v }) as { out: Tensor; lse: Tensor };
      acts.attn = a.out; acts.lse = a.lse;
      const a2 = a.out.reshape([N, c.numHeads * D]);
      let o: Tensor;
      try {
        o = linear(a2, this.#p(`${p}self_attn.o_proj.weight`));
      } finally {
        a2.dispose();
      }
      try {
        const n2 = nn.rmsNorm(o, this.#p(`${p}post_attention_layernorm.weight`), { eps: c.rmsNormEps, residual: x });
        acts.y2 = n2.y; acts.rstd2 = n2.rstd; acts.h = n2.h!;
      } finally {
        o.dispose();
      }
      return acts as LayerActs;
    } catch (e) {
      disposeAll(...Object.values(acts));
      throw e;
    }
  }

  /** out += down(swiglu(gate(y2), up(y2))), in token chunks. */
  #mlpForward(l: number, y2: Tensor, out: Tensor, chunk: number): void {
    const p = `model.layers.${l}.mlp.`;
    const Wg = this.#p(`${p}gate_proj.weight`), Wu = this.#p(`${p}up_proj.weight`), Wd = this.#p(`${p}down_proj.weight`);
    const N = y2.shape[0];
    for (let s = 0; s < N; s += chunk) {
      const n = Math.min(chunk, N - s);
      const yc = y2.narrow(0, s, n), oc = out.narrow(0, s, n);
      let g: Tensor | undefined, u: Tensor | undefined, a: Tensor | undefined;
      try {
        const gt = g = linear(yc, Wg);
        const ut = u = linear(yc, Wu);
        const at = a = nn.swiglu(gt, ut, { out: gt }); // in place: gate is not needed again
        g = undefined;
        ut.dispose();
        linear(at, Wd, { out: oc, beta: 1 });
      } finally {
        disposeAll(g, u, a, yc, oc);
      }
    }
  }

  /**
   * Layer forward: returns the layer output ([N, H], new tensor); acts kept only when asked (`keep`), else
   * with `keepAttn` the attention output and lse (for #attnPart's `kept` in the backward).
   */
  *#layerForward(l: number, x: Tensor, B: number, S: number, keep: boolean, chunk: number, sp: SeqPar, keepAttn = false):
      AttnGen<{ out: Tensor; acts: LayerActs | null; attn: { out: Tensor; lse: Tensor } | null }> {
    const acts = yield* this.#attnPart(l, x, B, S, sp);
    const attn = !keep && keepAttn ? { out: acts.attn, lse: acts.lse } : null;
    let out: Tensor;
    if (keep) {
      out = acts.h.clone();
    } else {
      // h is needed only by the backward, which recomputes it: the MLP can accumulate into it.
      out = acts.h;
      disposeAll(acts.y1, acts.rstd1, acts.q, acts.k, acts.v, acts.rstd2, ...(attn ? [] : [acts.attn, acts.lse]));
    }
    try {
      this.#mlpForward(l, acts.y2, out, chunk);
    } catch (e) {
      disposeAll(out, ...(keep ? Object.values(acts) : [acts.y2, attn?.out, attn?.lse]));
      throw e;
    }
    if (!keep) acts.y2.dispose();
    return { out, acts: keep ? acts : null, attn };
  }

  /**
   * Layer backward. `dout` ([N, H], model dtype, owned: it is overwritten and returned as the gradient
   * with respect to the layer input). Parameter gradients accumulate into grads.
   */
  *#layerBackward(l: number, acts: LayerActs, x: Tensor, dout: Tensor, B: number, S: number, chunk: number,
      sp: SeqPar): AttnGen<Tensor> {
    const c = this.config, p = `model.layers.${l}.`;
    const G = this.#grads!;
    const N = B * S, D = c.headDim;
    const g = (n: string) => G.get(p + n)!;
    const w = (n: string) => this.#p(p + n);
    const acc = { beta: 1 } as const;
    const trash: Tensor[] = [];
    try {
      // MLP (recomputed per chunk): dWd += doutᵀ·a, da = dout·Wd, (dg, du) = swiglu', dy2 = dg·Wg + du·Wu
      const Wg = w('mlp.gate_proj.weight'), Wu = w('mlp.up_proj.weight'), Wd = w('mlp.down_proj.weight');
      const dy2 = empty([N, c.hiddenSize], { dtype: this.dtype, device: this.device });
      trash.push(dy2);
      for (let s = 0; s < N; s += chunk) {
        const n = Math.min(chunk, N - s);
        const yc = acts.y2.narrow(0, s, n), dc = dout.narrow(0, s, n), dyc = dy2.narrow(0, s, n);
        const tmp: Tensor[] = [yc, dc, dyc];
        try {
          const gt = linear(yc, Wg); tmp.push(gt);
          const ut = linear(yc, Wu); tmp.push(ut);
          const a = nn.swiglu(gt, ut); tmp.push(a);
          matmul(dc, a, { transA: true, out: g('mlp.down_proj.weight'), ...acc });
          a.dispose();
          const da = matmul(dc, Wd); tmp.push(da);
          // in place: dgate over gate, dup over up (elementwise, each read before it is written)
          const sb = nn.swigluBackward(da, gt, ut, { dgate: gt, dup: ut });
          da.dispose();
          matmul(sb.dgate, yc, { transA: true, out: g('mlp.gate_proj.weight'), ...acc });
          matmul(sb.dup, yc, { transA: true, out: g('mlp.up_proj.weight'), ...acc });
          matmul(sb.dgate, Wg, { out: dyc });
          matmul(sb.dup, Wu, { out: dyc, ...acc });
        } finally {
          disposeAll(...tmp);
        }
      }
      acts.y2.dispose();
      // post-attention norm (fused residual: its input was h = x + o); dout += norm'(dy2)
      const r2 = nn.rmsNormBackward(dy2, acts.h, w('post_attention_layernorm.weight'), acts.rstd2,
        { dweight: g('post_attention_layernorm.weight'), dx: dout });
      if (r2.dx !== dout) throw new ArgumentError('nn.rmsNormBackward did not accumulate into the given dx');
      dy2.dispose(); acts.h.dispose(); acts.rstd2.dispose();
      // o projection: dWo += doutᵀ·attn, dattn = dout·Wo
      const attn2 = acts.attn.reshape([N, c.numHeads * D]);
      trash.push(attn2);
      matmul(dout, attn2, { transA: true, out: g('self_attn.o_proj.weight'), ...acc });
      attn2.dispose();
      const dattn = rs(matmul(dout, w('self_attn.o_proj.weight')), [B, S, c.numHeads, D]);
      trash.push(dattn);
      const ab = (yield { fwd: false, dout: dattn, q: acts.q, k: acts.k, v: acts.v, out: acts.attn, lse: acts.lse }) as
        { dq: Tensor; dk: Tensor; dv: Tensor };
      trash.push(ab.dq, ab.dk, ab.dv);
      dattn.dispose(); acts.attn.dispose(); acts.lse.dispose(); acts.q.dispose(); acts.k.dispose(); acts.v.dispose();
      rope.backwardQK(ab.dq, ab.dk, this.#ropeOpts(S, sp));
      const dq = ab.dq.reshape([N, c.numHeads * D]), dk = ab.dk.reshape([N, c.numKvHeads * D]), dv = ab.dv.reshape([N, c.numKvHeads * D]);
      trash.push(dq, dk, dv);
      matmul(dq, acts.y1, { transA: true, out: g('self_attn.q_proj.weight'), ...acc });
      matmul(dk, acts.y1, { transA: true, out: g('self_attn.k_proj.weight'), ...acc });
      matmul(dv, acts.y1, { transA: true, out: g('self_attn.v_proj.weight'), ...acc });
      const dy1 = matmul(dq, w('self_attn.q_proj.weight'));
      trash.push(dy1);
      matmul(dk, w('self_attn.k_proj.weight'), { out: dy1, ...acc });
      matmul(dv, w('self_attn.v_proj.weight'), { out: dy1, ...acc });
      disposeAll(dq, dk, dv, ab.dq, ab.dk, ab.dv);
      const r1 = nn.rmsNormBackward(dy1, x, w('input_layernorm.weight'), acts.rstd1, { dweight: g('input_layernorm.weight'), dx: dout });
      if (r1.dx !== dout) throw new ArgumentError('nn.rmsNormBackward did not accumulate into the given dx');
      disposeAll(dy1, acts.y1, acts.rstd1);
      return dout;
    } catch (e) {
      disposeAll(...trash, ...Object.values(acts));
      throw e;
    }
  }

  /**
   * One decoder layer forward + backward on hidden states x [batch·seq, hidden] (for benchmarks and
   * layer-level checks): the forward stores its activations (checkpoint: false, as eager PyTorch
   * does) or keeps only x and recomputes (checkpoint: true; keepAttention: true keeps the attention
   * output and lse too, so the recompute skips the attention forward). `dout` is consumed (overwritten) and
   * returned as the gradient with respect to x; parameter gradients accumulate into grads().
   */
  layerForwardBackward(l: number, x: Tensor, dout: Tensor, opts: { batch?: number; checkpoint?: boolean; keepAttention?: boolean; mlpChunkTokens?: number; group?: AttendGroup; positionOffset?: number } = {}): Tensor {
    opts = optionsArg('model.layerForwardBackward', opts);
    if (!Number.isSafeInteger(l) || l < 0 || l >= this.config.numLayers) throw new ArgumentError(`layerForwardBackward: no layer ${l}`);
    this.#syncOnly('layerForwardBackward', opts);
    const N = x.shape[0], B = opts.batch ?? 1;
    if (x.ndim !== 2 || x.shape[1] !== this.config.hiddenSize || N % B !== 0)
      throw new ShapeError(`layerForwardBackward: x must be [batch·seq, ${this.config.hiddenSize}], got [${x.shape}]`);
    const S = N / B;
    const sp = this.#seqPar(opts, B, S);
    this.#checkSeq(S + sp.positionOffset);
    this.grads();
    const chunk = this.#mlpChunk(N, opts.mlpChunkTokens);
    const ckpt = opts.checkpoint ?? false, keepAttn = opts.keepAttention ?? false;
    if (typeof ckpt !== 'boolean') throw new ArgumentError(`layerForwardBackward: checkpoint must be a boolean, got ${show(ckpt)}`);
    if (typeof keepAttn !== 'boolean') throw new ArgumentError(`layerForwardBackward: keepAttention must be a boolean, got ${show(keepAttn)}`);
    const r = runSync(this.#layerForward(l, x, B, S, !ckpt, chunk, sp, keepAttn), sp);
    r.out.dispose();
    const acts = r.acts ?? runSync(this.#attnPart(l, x, B, S, sp, r.attn ?? undefined), sp);
    return runSync(this.#layerBackward(l, acts, x, dout, B, S, chunk, sp), sp);
  }

  // ---- whole model ----------------------------------------------------------------------------

  #mlpChunk(N: number, opt?: number): number {
    if (opt === undefined) return Math.min(N, 8192);
    if (!Number.isSafeInteger(opt) || opt < 1) throw new ArgumentError(`model: mlpChunkTokens must be a positive integer, got ${show(opt)}`);
    return Math.min(N, opt);
  }

  /**
   * Forward + backward on token ids [batch, seq] (i32 Tensor or arrays) and labels of the same shape
   * (label i is the target at position i — already shifted, -100 = ignored). Gradients accumulate into
   * grads(); returns the mean loss over counted tokens and their count.
   *
   * Sequence parallelism: with `group` of world W > 1, every rank of the group calls this at once with
   * its shard of the same sequence(s) (ids/labels [batch, seq/W], cut by shardBatch with the same
   * `layout`); see ForwardBackwardOptions.group.
   */
  async forwardBackward(ids: Ids, labels: Ids, opts: ForwardBackwardOptions = {}): Promise<ForwardBackwardResult> {
    opts = optionsArg('model.forwardBackward', opts);
    if (opts === null || typeof opts !== 'object') throw new ArgumentError('forwardBackward: options must be an object');
    const checkpoint = opts.checkpoint ?? true;
    if (typeof checkpoint !== 'boolean') throw new ArgumentError(`forwardBackward: checkpoint must be a boolean, got ${show(checkpoint)}`);
    this.#keepOpts('forwardBackward', opts);
    const reduce = opts.reduceGrads ?? true;
    if (typeof reduce !== 'boolean') throw new ArgumentError('forwardBackward: reduceGrads must be a boolean');
    const idT = this.#ids(ids, 'ids');
    const labT = this.#ids(labels, 'labels');
    const own = (t: Tensor, src: Ids) => t !== src;
    const c = this.config;
    const [B, S] = idT.shape;
    const N = B * S;
    const inputs: Tensor[] = [];
    const saved: (LayerActs | null)[] = [];
    const keptAttn: ({ out: Tensor; lse: Tensor } | null)[] = [];
    let lossT: Tensor | undefined;
    let countTensor: Tensor | undefined;
    let sp: SeqPar | undefined;
    try {
      const chunk = this.#mlpChunk(N, opts.mlpChunkTokens);
      if (labT.shape[0] !== B || labT.shape[1] !== S) throw new ShapeError(`forwardBackward: labels [${labT.shape}] must match ids [${idT.shape}]`);
      sp = this.#seqPar(opts, B, S);
      const g = sp.world > 1 ? sp.group as Group : null;
      this.#checkSeq(S * sp.world + sp.positionOffset);
      if (g && this.#reduced)
        throw new ArgumentError('forwardBackward: the gradients were already summed over the group; call zeroGrad() first '
          + '(for gradient accumulation pass reduceGrads: false on all but the last micro-batch)');
      this.grads();
      // World > 1: every rank's loss part is divided by the global count of counted tokens, so the sum of
      // the ranks' losses (and gradients) is the world-1 mean over the whole sequence.
      let divisor = opts.lossDivisor;
      let globalCount: number | undefined;
      if (g) {
        globalCount = await this.#globalCount(g, idT, labT, opts.ignoreIndex ?? -100, opts.timeoutMs);
        if (divisor === undefined && globalCount > 0) divisor = globalCount;
      }
      // Selective checkpointing: the last `kept` layers keep their attention output (see #plan). Ring
      // attention is a collective, so every rank must skip the same recomputes: they agree on the smallest.
      let kept = c.numLayers;
      if (checkpoint) {
        kept = this.#plan(N, opts, sp.world, B).keptAttention;
        if (g) kept = await this.#agreeMin(g, kept, opts.timeoutMs);
      }
      const keepFrom = c.numLayers - kept;
      const run = g ? <R>(gen: AttnGen<R>) => runAsync(gen, sp!) : <R>(gen: AttnGen<R>) => runSync(gen, sp!);
      const emb = nn.embedding(idT, this.#p('model.embed_tokens.weight'));
      inputs.push(rs(emb, [N, c.hiddenSize]));
      for (let l = 0; l < c.numLayers; l++) {
        const r = await run(this.#layerForward(l, inputs[l], B, S, !checkpoint, chunk, sp, l >= keepFrom));
        inputs.push(r.out);
        saved.push(r.acts);
        keptAttn.push(r.attn);
      }
      const xL = inputs[c.numLayers];
      const nf = nn.rmsNorm(xL, this.#p('model.norm.weight'), { eps: c.rmsNormEps });
      const G = this.#grads!;
      const lab1 = labT.reshape([N]);
      let head;
      try {
        head = nn.lmHeadLoss(nf.y, this.#p(this.#headName()), lab1, {
          chunkTokens: opts.lossChunkTokens, ignoreIndex: opts.ignoreIndex, dweight: G.get(this.#headName()),
          divisor,
        });
      } finally {
        lab1.dispose();
        nf.y.dispose();
      }
      lossT = head.loss;
      countTensor = head.count;
      if (head.dweight && head.dweight !== G.get(this.#headName())) head.dweight.dispose();
      const countT = head.count;
      const rf = nn.rmsNormBackward(head.dhidden, xL, this.#p('model.norm.weight'), nf.rstd, { dweight: G.get('model.norm.weight') });
      head.dhidden.dispose(); nf.rstd.dispose();
      if (rf.dweight !== G.get('model.norm.weight')) rf.dweight?.dispose();
      let d = rf.dx;
      inputs.pop()!.dispose();
      for (let l = c.numLayers - 1; l >= 0; l--) {
        const x = inputs[l];
        const ka = keptAttn[l];
        keptAttn[l] = null;  // owned by #attnPart from here (it disposes them on failure)
        const acts = saved[l] ?? await run(this.#attnPart(l, x, B, S, sp, ka ?? undefined));
        saved[l] = null;
        d = await run(this.#layerBackward(l, acts, x, d, B, S, chunk, sp));
        inputs.pop()!.dispose();
      }
      const d3 = rs(d, [B, S, c.hiddenSize]);
      try {
        nn.embeddingBackward(d3, idT, G.get('model.embed_tokens.weight')!);
      } finally {
        d3.dispose();
      }
      // Out-of-range ids/labels: the CPU ops fail (surfacing here); CUDA kernels record them for checkIds.
      await nn.checkIds(this.device);
      if (g) {
        // Every rank's part is divided by the same divisor: their sum is the loss of the whole sequence.
        await g.allReduce(head.loss, { op: 'sum', timeoutMs: opts.timeoutMs });
        if (reduce) await this.reduceGrads(g, { timeoutMs: opts.timeoutMs });
      }
      const loss = (await head.loss.toArray())[0];
      const count = globalCount ?? (await countT.toArray())[0];
      countT.dispose();
      return { loss, count, keptAttention: kept };
    } finally {
      for (const t of inputs) t.dispose();
      for (const a of saved) if (a) disposeAll(...Object.values(a));
      for (const a of keptAttn) if (a) disposeAll(a.out, a.lse);
      lossT?.dispose();
      countTensor?.dispose();
      sp?.positions?.dispose();
      if (own(idT, ids)) idT.dispose();
      if (own(labT, labels)) labT.dispose();
    }
  }

  /** Validates keepAttention / memoryBudget / lossChunkTokens (coded errors; every entry point that takes them). */
  #keepOpts(what: string, o: { keepAttention?: unknown; memoryBudget?: unknown; lossChunkTokens?: unknown }): void {
    const lc = o.lossChunkTokens;
    if (lc !== undefined && !(Number.isSafeInteger(lc) && (lc as number) >= 1))
      throw new ArgumentError(`${what}: lossChunkTokens must be a positive integer, got ${show(lc)}`);
    const k = o.keepAttention, L = this.config.numLayers;
    if (k !== undefined && k !== 'auto' && typeof k !== 'boolean' && !(Number.isSafeInteger(k) && (k as number) >= 0 && (k as number) <= L))
      throw new ArgumentError(`${what}: keepAttention must be 'auto', a boolean or an integer in [0, ${L}], got ${show(k)}`);
    const b = o.memoryBudget;
    if (b !== undefined && !(typeof b === 'number' && Number.isFinite(b) && b >= 0))
      throw new ArgumentError(`${what}: memoryBudget must be a finite number of bytes >= 0, got ${show(b)}`);
  }

  /** Device bytes 'auto' may plan for: the CUDA device's memory less a margin; on the CPU half of RAM. */
  #defaultBudget(): number {
    if (this.device === 'cpu') return Math.floor(os.totalmem() / 2);
    const idx = deviceIndex(this.device);
    const total = cuda.devices().find((d) => d.index === idx)?.totalMemory ?? 0;
    // The margin covers what our allocator does not count (CUDA context, library workspaces, NCCL buffers)
    // and the error of the estimate below (it reproduces the measured Mistral-7B peaks at 32K-256K within
    // 0.1 GiB: bench/NOTES.md).
    return Math.max(0, total - Math.max(6 * GIB, 0.05 * total));
  }

  /**
   * The memory plan of a checkpointed step on N tokens (this rank's) and the number of layers that keep
   * their attention output. Peak allocated bytes = base (allocated now) + the largest of
   *   end of forward:          (L+1) inputs + k kept + the loss (final norm out, dhidden, a logits chunk)
   *   backward of layer L-1:   L inputs + k kept + its working set, less the kept out/lse it reuses
   *   backward of layer L-k-1: L-k inputs + the working set of a recomputing layer
   * (layer l's backward holds inputs 0..l; kept layers are the last k, freed as the backward passes them —
   * which is why the last k and not the first: the top layer's kept output replaces its own recompute).
   * The working set: the recomputed y1, q, k, v, attn, lse, h, y2, rstds plus dout, then either (MLP part)
   * dy2 and one chunk's gate/up/act, or (attention part, h/y2 freed) dattn, dq, dk, dv and the attention
   * backward's scratch. Sizes are rounded as the CUDA allocator rounds them (2 MiB).
   * Ring attention (world > 1) adds to the attention part: the f32 dq accumulator, the travelling f32
   * dK/dV accumulators (own + received), the K/V double buffers and one block's dk/dv (14 bf16 K/V shards),
   * with batch > 1 row copies of q, dout, out; the all-gather algorithm instead the gathered K/V and f32
   * dK/dV of the whole sequence.
   */
  #plan(N: number, o: { keepAttention?: KeepAttention; memoryBudget?: number; mlpChunkTokens?: number; lossChunkTokens?: number;
      ringAlgorithm?: RingAlgorithm }, world = 1, B = 1): MemoryPlan {
    const c = this.config, L = c.numLayers, e = dtypeSize(this.dtype);
    const cudaDev = this.device !== 'cpu';
    const r = (b: number) => !cudaDev ? Math.ceil(b / 64) * 64
      : b <= 2 ** 20 ? Math.ceil(Math.max(b, 1) / 512) * 512 : Math.ceil(b / 2 ** 21) * 2 ** 21;
    const H = c.hiddenSize, Hq = c.numHeads * c.headDim, Hkv = c.numKvHeads * c.headDim;
    const uH = r(N * H * e), uQ = r(N * Hq * e), uKV = r(N * Hkv * e), row = r(N * 4), lse = r(N * c.numHeads * 4);
    const A = uQ + lse;
    const mlp = 3 * r(this.#mlpChunk(N, o.mlpChunkTokens) * c.intermediateSize * e);
    const acts = uH + row + uQ + 2 * uKV + A + 2 * uH + row;
    const scratch = r(Math.min(N * Hq * 4, 1.25 * GIB)) + lse;
    let ringExtra = 0;
    if (world > 1) {
      const S = Math.ceil(N / B);
      const algo = o.ringAlgorithm === 'ring' || o.ringAlgorithm === 'allgather' ? o.ringAlgorithm
        : ring.chooseAlgorithm({ world, batch: B, shardLen: S, headsKv: c.numKvHeads, headDim: c.headDim, dtypeBytes: e });
      ringExtra = r(N * Hq * 4) + (B > 1 ? 3 * uQ : 0)
        + (algo === 'allgather' ? world * (uKV * 2 + r(N * Hkv * 4) * 2) + 2 * uKV : 14 * uKV);
    }
    const W = Math.max(acts + 2 * uH + mlp, acts - 2 * uH - row + uH + 2 * uQ + 2 * uKV + scratch + ringExtra);
    const V = c.vocabSize, ldt = e;
    const lossChunk = Math.min(N, o.lossChunkTokens ?? Math.max(1, Math.floor((512 * 2 ** 20) / (Math.max(V, 1) * ldt))));
    const head = 2 * uH + r(lossChunk * V * ldt) + 2 * row;
    const peak = (k: number) => Math.max((L + 1) * uH + k * A + head, L * uH + k * A + W - (k > 0 ? A : 0), k < L ? (L - k) * uH + W : 0);
    const base = memory(this.device).allocated;
    const budget = o.memoryBudget ?? this.#defaultBudget();
    const ka = o.keepAttention ?? 'auto';
    let k: number;
    if (ka === 'auto') {
      k = 0;
      for (let j = L; j > 0; j--) if (base + peak(j) <= budget) { k = j; break; }
    } else {
      k = ka === true ? L : ka === false ? 0 : ka;
    }
    return { keptAttention: k, keptBytesPerLayer: A, baseBytes: base, predictedPeak: base + peak(k), recomputePeak: base + peak(0), budget };
  }

  /**
   * The memory plan forwardBackward would use now for `tokens` tokens (batch·seq on this rank) with these
   * options (keepAttention, memoryBudget, mlpChunkTokens, lossChunkTokens; with a `group` of world > 1 and
   * its ringAlgorithm the ring attention's buffers count too, and `batch` rows (default 1) share the tokens):
   * how many layers keep their attention output, the bytes each holds, and the predicted peak (allocated
   * bytes, base included) with and without them. Estimates, not guarantees: they count the model's tensors
   * as the allocator rounds them. With several ranks on one device (virtual ranks), each plans as if the
   * device were its own: pass memoryBudget = the device's share.
   */
  memoryPlan(tokens: number, opts: Pick<ForwardBackwardOptions, 'keepAttention' | 'memoryBudget' | 'mlpChunkTokens' | 'lossChunkTokens'
      | 'group' | 'ringAlgorithm'> & { batch?: number } = {}): MemoryPlan {
    opts = optionsArg('model.memoryPlan', opts);
    if (!Number.isSafeInteger(tokens) || tokens < 1) throw new ArgumentError(`model.memoryPlan: tokens must be a positive integer, got ${show(tokens)}`);
    this.#keepOpts('model.memoryPlan', opts);
    const B = opts.batch ?? 1;
    if (!Number.isSafeInteger(B) || B < 1 || tokens % B !== 0)
      throw new ArgumentError(`model.memoryPlan: batch must be a positive integer dividing tokens (${tokens}), got ${show(B)}`);
    const world = worldOf(opts.group);
    const algo = opts.ringAlgorithm;
    if (algo !== undefined && algo !== 'ring' && algo !== 'allgather' && algo !== 'auto')
      throw new ArgumentError(`model.memoryPlan: ringAlgorithm must be 'ring', 'allgather' or 'auto', got ${show(algo)}`);
    return this.#plan(tokens, opts, world, B);
  }

  /** The smallest of every rank's n (small non-negative integers: exact in f32). */
  async #agreeMin(g: Group, n: number, timeoutMs?: number): Promise<number> {
    const t = tensor(Float32Array.from([-n]), { shape: [1], dtype: 'f32', device: this.device });
    try {
      await g.allReduce(t, { op: 'max', timeoutMs });
      return 0 - (await t.toArray())[0];  // 0 - x, not -x: no -0
    } finally {
      t.dispose();
    }
  }

  /**
   * Σ over the group of the counted labels (exact: sent as two f32 parts, < 2^12 and the rest). The same
   * allReduce carries a flag for ids/labels out of the vocabulary, so every rank fails at once (ERR_ARG)
   * instead of the others waiting in the ring for a rank whose loss op threw.
   */
  async #globalCount(g: Group, ids: Tensor, labels: Tensor, ignoreIndex: number, timeoutMs?: number): Promise<number> {
    const [id, lab] = [await ids.toArray(), await labels.toArray()];
    const V = this.config.vocabSize;
    let n = 0, bad = 0;
    for (let i = 0; i < lab.length; i++) {
      if (lab[i] !== ignoreIndex) { n++; if (!(lab[i] >= 0 && lab[i] < V)) bad = 1; }
      if (!(id[i] >= 0 && id[i] < V)) bad = 1;
    }
    const t = tensor(Float32Array.from([Math.floor(n / 4096), n % 4096, bad]), { shape: [3], dtype: 'f32', device: this.device });
    try {
      await g.allReduce(t, { op: 'sum', timeoutMs });
      const [hi, lo, anyBad] = await t.toArray();
      if (anyBad > 0)
        throw new ArgumentError(bad ? `forwardBackward: rank ${g.rank}'s ids or labels hold values outside [0, ${V}) (labels may also be ignoreIndex ${ignoreIndex})`
          : `forwardBackward: another rank's ids or labels are outside [0, ${V})`);
      return hi * 4096 + lo;
    } finally {
      t.dispose();
    }
  }

  /**
   * Sums every parameter gradient over the group (in place), so each rank holds the gradient of the
   * whole sequence (sequence parallelism) or of the whole batch (data parallelism; divide by W for the
   * mean). forwardBackward({ group }) calls it unless reduceGrads: false. Every rank calls it.
   */
  async reduceGrads(group: Group, opts: { timeoutMs?: number; bucketBytes?: number } = {}): Promise<void> {
    opts = optionsArg('model.reduceGrads', opts);
    const g = ringGroup(group, 'model.reduceGrads');
    if (!g) return;
    // Small gradients (norms) share flat 25 MB buffers: a few allReduce calls instead of one per parameter.
    await allReduceBucketed(g, [...this.grads().values()], { op: 'sum', timeoutMs: opts.timeoutMs, bucketBytes: opts.bucketBytes });
    this.#reduced = true;
  }

  /** Final hidden states after the last norm, [batch·seq, hidden] (no gradients). */
  hidden(ids: Ids, opts: { group?: AttendGroup; positionOffset?: number; mlpChunkTokens?: number } = {}): Tensor {
    opts = optionsArg('model.hidden', opts);
    this.#syncOnly('hidden', opts);
    const idT = this.#ids(ids, 'ids');
    const c = this.config;
    const [B, S] = idT.shape;
    const N = B * S;
    let x: Tensor | undefined;
    try {
      const chunk = this.#mlpChunk(N, opts.mlpChunkTokens);
      const sp = this.#seqPar(opts, B, S);
      this.#checkSeq(S + sp.positionOffset);
      const emb = nn.embedding(idT, this.#p('model.embed_tokens.weight'));
      let cur = x = rs(emb, [N, c.hiddenSize]);
      for (let l = 0; l < c.numLayers; l++) {
        const r = runSync(this.#layerForward(l, cur, B, S, false, chunk, sp), sp);
        cur.dispose();
        cur = x = r.out;
      }
      const nf = nn.rmsNorm(cur, this.#p('model.norm.weight'), { eps: c.rmsNormEps });
      nf.rstd.dispose();
      return nf.y;
    } finally {
      x?.dispose();
      if (idT !== ids) idT.dispose();
    }
  }

  /** Logits [batch, seq, vocab] in the model dtype — whole, so for small checks only. */
  forward(ids: Ids, opts: { group?: AttendGroup; positionOffset?: number } = {}): Tensor {
    opts = optionsArg('model.forward', opts);
    const idT = this.#ids(ids, 'ids');
    try {
      const [B, S] = idT.shape;
      const y = this.hidden(idT, opts);
      try {
        const logits = linear(y, this.#p(this.#headName()));
        const r = logits.reshape([B, S, this.config.vocabSize]);
        logits.dispose();
        return r;
      } finally {
        y.dispose();
      }
    } finally {
      if (idT !== ids) idT.dispose();
    }
  }

  // ---- weights --------------------------------------------------------------------------------

  /**
   * Loads HF safetensors weights (a .safetensors file, a directory, or model.safetensors.index.json)
   * into the existing parameters, converting dtypes. Tensors stream one at a time. Missing
   * parameters are an error; extra tensors (e.g. rotary inv_freq buffers, a tied lm_head) are
   * ignored and returned.
   */
  async load(p: string): Promise<{ ignored: string[] }> {
    const ignored: string[] = [];
    const seen = new Set<string>();
    await safetensors.load(p, {
      device: this.device,
      onTensor: (name, t) => {
        try {
          const dst = this.#params.get(name);
          if (!dst) { ignored.push(name); return; }
          if (t.ndim !== dst.ndim || t.shape.some((d, i) => d !== dst.shape[i]))
            throw new ShapeError(`model.load: ${name} is [${t.shape}] in the checkpoint, the config needs [${dst.shape}]`);
          if (t.dtype === 'i32') throw new DtypeError(`model.load: ${name} is i32`);
          scale(t, 1, { out: dst }); // copies with dtype conversion (fp32 math: exact for bf16/f16/f32 sources)
          seen.add(name);
        } finally {
          t.dispose();
        }
      },
    });
    const missing = [...this.#params.keys()].filter((n) => !seen.has(n));
    if (missing.length)
      throw new ArgumentError(`model.load: ${p} lacks ${missing.length} parameter(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
    return { ignored };
  }

  /**
   * Saves the parameters with HF names: to `x.safetensors` as one file, or into a directory as
   * save_pretrained does (config.json + model.safetensors or shards with an index).
   */
  async save(p: string, opts: { maxShardBytes?: number } = {}): Promise<string[]> {
    opts = optionsArg('model.save', opts);
    if (typeof p !== 'string' || p === '') throw new ArgumentError('model.save: path must be a non-empty string');
    const meta = { format: 'pt' };
    if (p.endsWith('.safetensors')) {
      await safetensors.save(p, this.#params, { metadata: meta });
      return [p];
    }
    const files = await safetensors.saveSharded(p, this.#params, { metadata: meta, maxShardBytes: opts.maxShardBytes });
    const cfg = path.join(p, 'config.json');
    await fsp.writeFile(cfg, JSON.stringify(this.config.raw, null, 2) + '\n');
    return [...files, cfg];
  }

  /** Frees parameters and gradients. */
  dispose(): void {
    for (const t of this.#params.values()) t.dispose();
    this.#params.clear();
    this.zeroGrad({ free: true });
  }
  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * A model from a Hugging Face config (object, JSON text, or a path to config.json / a model
 * directory — then use fromPretrained to also load weights), randomly initialised with `seed`.
 */
export function fromConfig(cfg: unknown, opts: FromConfigOptions = {}): Model {
  opts = optionsArg('model.fromConfig', opts);
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('model.fromConfig: options must be an object');
  const config = configFromHF(cfg, { seqLen: opts.seqLen });
  const device = parseDevice(opts.device).name;
  const dtype = checkDtype(opts.dtype ?? (device === 'cpu' ? 'f32' : 'bf16'), 'model dtype');
  if (dtype === 'i32') throw new DtypeError('model dtype must be a float dtype');
  const gd = opts.gradDtype ?? 'f32';
  if (gd !== 'f32' && gd !== 'param') throw new ArgumentError(`model.fromConfig: gradDtype must be 'f32' or 'param', got ${show(gd)}`);
  let seed: bigint | undefined;
  if (opts.seed !== undefined) {
    if (typeof opts.seed === 'bigint') seed = opts.seed;
    else if (typeof opts.seed === 'number' && Number.isSafeInteger(opts.seed)) seed = BigInt(opts.seed);
    else throw new ArgumentError('model.fromConfig: seed must be a safe integer or a bigint');
  }
  const m = new Model(config, device, dtype, gd === 'f32' ? 'f32' : dtype);
  m.init(seed, opts.empty ?? false);
  return m;
}

/** config.json + weights from an HF model directory (or a config path and a weights path). */
export async function fromPretrained(dir: string, opts: Omit<FromConfigOptions, 'seed' | 'empty'> = {}): Promise<Model> {
  opts = optionsArg('model.fromPretrained', opts);
  if (typeof dir !== 'string' || dir === '') throw new ArgumentError('model.fromPretrained: dir must be a non-empty string');
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('model.fromPretrained: options must be an object');
  let text: string;
  try {
    text = await fsp.readFile(path.join(dir, 'config.json'), 'utf8');
  } catch (e) {
    throw new ArgumentError(`model.fromPretrained: ${dir}: cannot read config.json (${(e as Error).message})`);
  }
  const cfg = configFromHF(text, { seqLen: opts.seqLen }).raw;
  const m = fromConfig(cfg, { ...opts, empty: true });
  try {
    await m.load(dir);
  } catch (e) {
    m.dispose();
    throw e;
  }
  return m;
}
