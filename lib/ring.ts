// Sequence-parallel (context-parallel) attention over a process group: every rank holds one shard of the
// sequence, q [batch, seq/W, headsQ, headDim] and k/v [batch, seq/W, headsKv, headDim], and gets its shard
// of out (and lse, and of dq/dk/dv in backward). Same options and semantics as `attention` on the full
// sequence: causal with qOffset/kOffset (the positions of the full sequence's first query / key), scale,
// GQA, a query that sees no key gets out = 0, lse = −Infinity and no gradient.
//
// Layouts. 'zigzag' (default): the sequence is cut into 2W chunks and rank r holds chunks r and 2W−1−r,
// so under the causal mask every rank does the same work. 'contiguous': rank r holds chunk r (rank W−1
// then does ~2W−1 times the work of rank 0 in a causal model). ring.shard/unshard/chunks/positions convert.
//
// Algorithms.
// - 'ring': K/V shards travel around the ring at their GQA size (never expanded), double-buffered: the
//   batchSendRecv for the next step is issued before the current step's blocks are launched and awaited
//   after. Each (query chunk, key chunk) pair is one attention call with its global offsets; pairs the
//   causal mask hides entirely are skipped, pairs it shows entirely run without the mask. Partial results
//   are merged by log-sum-exp into fp32 accumulators (ringMerge); backward accumulates dq in fp32 locally
//   and sends fp32 dK/dV accumulators around the ring with the K/V (bf16 accumulation would round once per
//   step, so the error would grow with W).
// - 'allgather' (Llama 3's context parallelism): all-gather K/V once, one attention call per local query
//   chunk against the key prefix it can see; backward re-gathers, accumulates dK/dV of the whole sequence
//   in fp32 and reduce-scatters them.
// - 'auto' (default): see chooseAlgorithm below.
import { attention, AttentionOptions, AttentionRopeOptions, RopePlan, ropeRotate, ropeUnrotate } from './attention';
import { add } from './elementwise';
import { ArgumentError, DeviceError, DtypeError, ShapeError, callNative as call } from './errors';
import { native } from './native';
import type { DeviceLike } from './device';
import type { RopeApplyOptions } from './rope';
import { Tensor, empty, tensor as makeTensor, zeros } from './tensor';
import type { Group } from './dist/types';
import { show, optionsArg } from './guard';

export type RingLayout = 'zigzag' | 'contiguous';
export type RingAlgorithm = 'ring' | 'allgather' | 'auto';

export interface RingOptions extends AttentionOptions {
  /** How the sequence is sharded (default 'zigzag'). Must be what ring.shard used. */
  layout?: RingLayout;
  /** 'ring', 'allgather' or 'auto' (default). */
  algorithm?: RingAlgorithm;
  /** Timeout of each communication call (default: the group's). */
  timeoutMs?: number;
  /** 'auto' uses all-gather only when the gathered K/V (+ fp32 dK/dV) stay under this (default 1 GiB). */
  allgatherMaxBytes?: number;
}

export interface RingForwardResult {
  /** This rank's shard of the output: [batch, seq/W, headsQ, headDim], q's dtype. */
  out: Tensor;
  /** f32 [batch, headsQ, seq/W]. */
  lse: Tensor;
}

export interface RingBackwardResult {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

/** One contiguous run of the global sequence held by a rank: global start (0-based) and length. */
export interface Chunk {
  start: number;
  length: number;
}

const LAYOUTS = new Set(['zigzag', 'contiguous']);
const ALGORITHMS = new Set(['ring', 'allgather', 'auto']);
const OPTION_KEYS = new Set(['causal', 'scale', 'qOffset', 'kOffset', 'layout', 'algorithm', 'timeoutMs', 'allgatherMaxBytes', 'rope']);
/** Below this many tokens per rank, 'auto' prefers all-gather (see chooseAlgorithm). */
export const AUTO_ALLGATHER_MAX_SHARD = 4096;

// ---------------------------------------------------------------------------------------------------------
// Shard geometry

function checkWorld(op: string, rank: number, world: number): void {
  if (!Number.isSafeInteger(world) || world < 1) throw new ArgumentError(`${op}: world must be an integer >= 1, got ${show(world)}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= world) throw new ArgumentError(`${op}: rank must be in [0, ${world}), got ${show(rank)}`);
}

function checkLayout(op: string, layout: unknown): RingLayout {
  const l = layout ?? 'zigzag';
  if (typeof l !== 'string' || !LAYOUTS.has(l)) throw new ArgumentError(`${op}: layout must be 'zigzag' or 'contiguous', got ${show(layout)}`);
  return l as RingLayout;
}

/**
 * The global runs of a sequence of seqLen tokens that rank `rank` of `world` holds, in the order they are
 * stored in its shard. zigzag: chunks r and 2W−1−r of 2W (one run when W = 1); contiguous: chunk r of W.
 */
export function chunks(seqLen: number, rank: number, world: number, layout: RingLayout = 'zigzag'): Chunk[] {
  const op = 'ring.chunks';
  checkWorld(op, rank, world);
  const l = checkLayout(op, layout);
  if (!Number.isSafeInteger(seqLen) || seqLen < 0) throw new ArgumentError(`${op}: seqLen must be a non-negative integer`);
  const parts = l === 'zigzag' ? 2 * world : world;
  if (seqLen % parts !== 0)
    throw new ShapeError(`${op}: a ${l} layout over ${world} ranks needs the sequence length (${seqLen}) to be a multiple of ${parts}`);
  const c = seqLen / parts;
  if (l === 'contiguous' || world === 1) return [{ start: rank * (seqLen / world), length: seqLen / world }];
  return [{ start: rank * c, length: c }, { start: (2 * world - 1 - rank) * c, length: c }];
}

function dimsAround(shape: readonly number[], seqDim: number): { outer: number; rows: number; inner: number } {
  const outer = shape.slice(0, seqDim).reduce((a, b) => a * b, 1);
  const inner = shape.slice(seqDim + 1).reduce((a, b) => a * b, 1);
  return { outer, rows: shape[seqDim], inner };
}

function rowCopy(src: Tensor, dst: Tensor, outer: number, inner: number, srcRow: number, dstRow: number, rows: number): void {
  call(() => native().rowCopy({
    src: src.handle('src'), dst: dst.handle('dst'), outer, inner, srcRows: src.numel / Math.max(1, outer * inner),
    dstRows: dst.numel / Math.max(1, outer * inner), srcRow, dstRow, rows,
  }));
}

function checkSeqDim(op: string, t: Tensor, seqDim: unknown): number {
  const d = seqDim ?? 1;
  if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0 || d >= t.ndim)
    throw new ArgumentError(`${op}: seqDim must be a dimension of the ${t.ndim}-D tensor, got ${show(seqDim)}`);
  return d;
}

export interface ShardOptions {
  layout?: RingLayout;
  /** The sequence dimension (default 1: [batch, seq, ...]; 2 for an lse [batch, heads, seq]). */
  seqDim?: number;
}

/** Rank `rank`'s shard of a full sequence (a new tensor, same dtype and device). */
export function shard(full: Tensor, rank: number, world: number, opts: ShardOptions = {}): Tensor {
  opts = optionsArg('ring.shard', opts);
  const op = 'ring.shard';
  if (!(full instanceof Tensor)) throw new ArgumentError(`${op}: full must be a Tensor`);
  full.handle(`${op}: full`);
  const d = checkSeqDim(op, full, opts.seqDim);
  const cs = chunks(full.shape[d], rank, world, checkLayout(op, opts.layout));
  const { outer, inner } = dimsAround(full.shape, d);
  const shape = [...full.shape];
  shape[d] = full.shape[d] / world;
  const out = empty(shape, { dtype: full.dtype, device: full.device });
  let row = 0;
  for (const c of cs) { rowCopy(full, out, outer, inner, c.start, row, c.length); row += c.length; }
  return out;
}

/** The full sequence from every rank's shard (shards[r] from rank r). */
export function unshard(shards: readonly Tensor[], opts: ShardOptions = {}): Tensor {
  opts = optionsArg('ring.unshard', opts);
  const op = 'ring.unshard';
  if (!Array.isArray(shards) || shards.length < 1) throw new ArgumentError(`${op}: shards must be a non-empty array of Tensors`);
  const W = shards.length;
  for (const s of shards) {
    if (!(s instanceof Tensor)) throw new ArgumentError(`${op}: shards must be Tensors`);
    s.handle(`${op}: shard`);
  }
  const d = checkSeqDim(op, shards[0], opts.seqDim);
  const layout = checkLayout(op, opts.layout);
  for (const s of shards)
    if (s.ndim !== shards[0].ndim || s.shape.some((x: number, i: number) => x !== shards[0].shape[i]) || s.dtype !== shards[0].dtype || s.device !== shards[0].device)
      throw new ShapeError(`${op}: every shard must have the shape, dtype and device of shard 0`);
  const shape = [...shards[0].shape];
  shape[d] *= W;
  const { outer, inner } = dimsAround(shape, d);
  const out = empty(shape, { dtype: shards[0].dtype, device: shards[0].device });
  for (let r = 0; r < W; r++) {
    let row = 0;
    for (const c of chunks(shape[d], r, W, layout)) { rowCopy(shards[r], out, outer, inner, row, c.start, c.length); row += c.length; }
  }
  return out;
}

/**
 * Global positions of rank `rank`'s tokens (for RoPE): an i32 tensor [batch, seqLen/world] on `device`,
 * `offset` + the global index of each token.
 */
export function positions(seqLen: number, rank: number, world: number, layout: RingLayout = 'zigzag',
    opts: { batch?: number; device?: DeviceLike; offset?: number } = {}): Tensor {
  opts = optionsArg('ring.positions', opts);
  const cs = chunks(seqLen, rank, world, layout);
  const batch = opts.batch ?? 1, offset = opts.offset ?? 0;
  if (!Number.isSafeInteger(batch) || batch < 1) throw new ArgumentError('ring.positions: batch must be an integer >= 1');
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + seqLen - 1 > 2 ** 31 - 1)
    throw new ArgumentError('ring.positions: offset must be a non-negative integer with offset + seqLen - 1 < 2^31');
  const n = seqLen / world;
  const p = new Int32Array(batch * n);
  let i = 0;
  for (const c of cs) for (let j = 0; j < c.length; j++) p[i++] = offset + c.start + j;
  for (let b = 1; b < batch; b++) p.copyWithin(b * n, 0, n);
  return makeTensor(p, { shape: [batch, n], dtype: 'i32', device: opts.device ?? 'cpu' });
}

// ---------------------------------------------------------------------------------------------------------
// Options, shapes, plan

export interface Ctx {
  W: number;
  rank: number;
  B: number;
  S: number;        // local rows
  Hq: number;
  Hkv: number;
  D: number;
  dtype: 'f32' | 'f16' | 'bf16';
  device: Tensor['device'];
  causal: boolean;
  scale: number | undefined;
  qOffset: number;
  kOffset: number;
  layout: RingLayout;
  algorithm: 'ring' | 'allgather';
  timeoutMs: number | undefined;
}

/** The local runs, with their row in the shard. Without the causal mask positions don't matter: one run. */
interface LocalChunk extends Chunk { row: number }
function localChunks(ctx: Ctx, rank: number): LocalChunk[] {
  if (!ctx.causal) return [{ start: rank * ctx.S, length: ctx.S, row: 0 }];
  let row = 0;
  return chunks(ctx.S * ctx.W, rank, ctx.W, ctx.layout).map((c) => { const r = { ...c, row }; row += c.length; return r; });
}

type BlockKind = 'skip' | 'full' | 'causal';
/** What the mask does to (query run, key run), in global positions (offsets included). */
function blockKind(ctx: Ctx, q: Chunk, k: Chunk): BlockKind {
  if (!ctx.causal) return 'full';
  const qs = ctx.qOffset + q.start, ks = ctx.kOffset + k.start;
  if (q.length === 0 || k.length === 0 || ks > qs + q.length - 1) return 'skip';
  if (ks + k.length - 1 <= qs) return 'full';
  return 'causal';
}
function blockOptions(ctx: Ctx, kind: BlockKind, q: Chunk, k: Chunk): AttentionOptions {
  const o: AttentionOptions = { causal: kind === 'causal' };
  if (ctx.scale !== undefined) o.scale = ctx.scale;
  if (kind === 'causal') { o.qOffset = ctx.qOffset + q.start; o.kOffset = ctx.kOffset + k.start; }
  return o;
}

/**
 * 'auto': all-gather when W > 1, the shards are short (< AUTO_ALLGATHER_MAX_SHARD tokens per rank: a
 * ring step's blocks are then too small to hide a transfer and the per-step launches and merges dominate)
 * and the gathered K/V plus the fp32 dK/dV of the whole sequence stay under allgatherMaxBytes (default
 * 1 GiB); the ring otherwise (long sequences: memory stays O(seq/W) and every transfer hides behind a
 * step's compute, see docs/ring.md). Depends on shapes only, so every rank picks the same.
 */
export function chooseAlgorithm(p: { world: number; batch: number; shardLen: number; headsKv: number; headDim: number;
    dtypeBytes: number; allgatherMaxBytes?: number }): 'ring' | 'allgather' {
  const op = 'ring.chooseAlgorithm';
  if (p === null || typeof p !== 'object') throw new ArgumentError(`${op}: expected { world, batch, shardLen, headsKv, headDim, dtypeBytes }, got ${show(p)}`);
  for (const k of ['world', 'batch', 'shardLen', 'headsKv', 'headDim', 'dtypeBytes'] as const)
    if (!Number.isSafeInteger(p[k]) || p[k] < 1) throw new ArgumentError(`${op}: ${k} must be a positive integer, got ${show(p[k])}`);
  if (p.allgatherMaxBytes !== undefined && (typeof p.allgatherMaxBytes !== 'number' || !(p.allgatherMaxBytes >= 0)))
    throw new ArgumentError(`${op}: allgatherMaxBytes must be a number >= 0, got ${show(p.allgatherMaxBytes)}`);
  if (p.world === 1) return 'ring';
  const kvElems = 2 * p.batch * p.shardLen * p.world * p.headsKv * p.headDim;
  const bytes = kvElems * (p.dtypeBytes + 4);
  return p.shardLen < AUTO_ALLGATHER_MAX_SHARD && bytes <= (p.allgatherMaxBytes ?? 2 ** 30) ? 'allgather' : 'ring';
}

function resolve(op: string, group: Group | null | undefined, q: Tensor, k: Tensor, v: Tensor, opts: unknown): Ctx {
  if (opts === undefined) opts = {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts)) throw new ArgumentError(`${op}: options must be an object`);
  const o = opts as RingOptions;
  for (const key of Object.keys(o)) if (!OPTION_KEYS.has(key)) throw new ArgumentError(`${op}: unknown option ${JSON.stringify(key)}`);
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) {
    if (!(t instanceof Tensor)) throw new ArgumentError(`${op}: ${n} must be a Tensor`);
    t.handle(`${op}: ${n}`);
    if (t.ndim !== 4) throw new ShapeError(`${op}: ${n} must be 4-D [batch, seq/world, heads, headDim], got [${t.shape}]`);
  }
  const W = group ? group.worldSize : 1, rank = group ? group.rank : 0;
  if (group && q.device !== group.device) throw new DeviceError(`${op}: q is on ${q.device}, the group on ${group.device}`);
  if (k.shape[1] !== q.shape[1]) throw new ShapeError(`${op}: q and k shards have different lengths (${q.shape[1]} and ${k.shape[1]})`);
  const layout = checkLayout(op, o.layout);
  const causal = o.causal ?? false;
  if (typeof causal !== 'boolean') throw new ArgumentError(`${op}: causal must be a boolean`);
  const off = (name: 'qOffset' | 'kOffset'): number => {
    const x = o[name] ?? 0;
    if (typeof x !== 'number' || !Number.isSafeInteger(x)) throw new ArgumentError(`${op}: ${name} must be a safe integer`);
    return x;
  };
  // Checked here too (attention would only see it at the first block, after the first transfer was issued).
  if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale) || !(o.scale > 0)))
    throw new ArgumentError(`${op}: scale must be a finite number > 0, got ${show(o.scale)}`);
  if (o.timeoutMs !== undefined && (typeof o.timeoutMs !== 'number' || !(o.timeoutMs > 0)))
    throw new ArgumentError(`${op}: timeoutMs must be a number > 0`);
  if (o.allgatherMaxBytes !== undefined && (typeof o.allgatherMaxBytes !== 'number' || !(o.allgatherMaxBytes >= 0)))
    throw new ArgumentError(`${op}: allgatherMaxBytes must be a number >= 0`);
  for (const [t, n] of [[k, 'k'], [v, 'v']] as const) {
    if (t.dtype !== q.dtype) throw new DtypeError(`${op}: ${n} is ${t.dtype}, q is ${q.dtype}`);
    if (t.device !== q.device) throw new DeviceError(`${op}: ${n} is on ${t.device}, q on ${q.device}`);
  }
  if (q.shape[0] !== k.shape[0] || q.shape[3] !== k.shape[3] || v.shape.some((x, i) => x !== k.shape[i]))
    throw new ShapeError(`${op}: q [${q.shape}], k [${k.shape}], v [${v.shape}] must share batch and headDim, and v k's shape`);
  if (k.shape[2] < 1 || q.shape[2] % k.shape[2] !== 0)
    throw new ShapeError(`${op}: q heads (${q.shape[2]}) must be a multiple of kv heads (${k.shape[2]})`);
  const algorithm = o.algorithm ?? 'auto';
  if (typeof algorithm !== 'string' || !ALGORITHMS.has(algorithm))
    throw new ArgumentError(`${op}: algorithm must be 'ring', 'allgather' or 'auto', got ${show(algorithm)}`);
  const S = q.shape[1];
  if (causal && layout === 'zigzag' && W > 1 && S % 2 !== 0)
    throw new ShapeError(`${op}: a zigzag shard holds two equal chunks, its length (${S}) must be even`);
  const [B, , Hq, D] = q.shape;
  const Hkv = k.shape[2];
  const dtype = q.dtype as Ctx['dtype'];
  const algo = algorithm === 'auto'
    ? chooseAlgorithm({ world: W, batch: B, shardLen: S, headsKv: Hkv, headDim: D, dtypeBytes: dtype === 'f32' ? 4 : 2,
      allgatherMaxBytes: o.allgatherMaxBytes })
    : algorithm;
  return {
    W, rank, B, S, Hq, Hkv, D, dtype, device: q.device, causal, scale: o.scale, qOffset: off('qOffset'), kOffset: off('kOffset'),
    layout, algorithm: algo, timeoutMs: o.timeoutMs,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Tensor plumbing

/** Rows [row, row+len) of a [B, S, ...] tensor: a view when B = 1, else a packed copy. `owned`: dispose it. */
function rowsOf(t: Tensor, row: number, len: number): { t: Tensor; owned: boolean } {
  if (row === 0 && len === t.shape[1]) return { t, owned: false };
  const shape = [...t.shape];
  shape[1] = len;
  const inner = t.shape.slice(2).reduce((a, b) => a * b, 1);
  if (t.shape[0] === 1) {
    const h = call(() => native().view(t.handle(), shape, row * inner));
    return { t: new Tensor(h, shape, t.dtype, t.device), owned: true };
  }
  const out = empty(shape, { dtype: t.dtype, device: t.device });
  rowCopy(t, out, t.shape[0], inner, row, 0, len);
  return { t: out, owned: true };
}
/** Rows of an lse [B, H, S]: always a packed copy unless it is all of it. */
function lseRows(lse: Tensor, row: number, len: number): { t: Tensor; owned: boolean } {
  if (row === 0 && len === lse.shape[2]) return { t: lse, owned: false };
  const [B, H] = lse.shape;
  const out = empty([B, H, len], { dtype: 'f32', device: lse.device });
  rowCopy(lse, out, B * H, 1, row, 0, len);
  return { t: out, owned: true };
}
function release(...xs: { t: Tensor; owned: boolean }[]): void {
  for (const x of xs) if (x.owned) x.t.dispose();
}
function merge(outAcc: Tensor, lseAcc: Tensor, out: Tensor, lse: Tensor): void {
  call(() => native().ringMerge({ outAcc: outAcc.handle(), lseAcc: lseAcc.handle(), out: out.handle(), lse: lse.handle() }));
}

// ---------------------------------------------------------------------------------------------------------
// The per-rank compute of the ring (also what `megabeam bench ring` times, one rank at a time)

/** @internal forward state of one rank: fp32 accumulators per local query run. */
export class ForwardBlocks {
  readonly ctx: Ctx;
  private qs: { c: LocalChunk; q: { t: Tensor; owned: boolean }; out: Tensor; lse: Tensor }[] = [];
  /** Attention calls launched (for the bench). */
  calls = 0;

  constructor(ctx: Ctx, q: Tensor) {
    this.ctx = ctx;
    try {
      for (const c of localChunks(ctx, ctx.rank)) {
        const out = zeros([ctx.B, c.length, ctx.Hq, ctx.D], { dtype: 'f32', device: ctx.device });
        const lse = empty([ctx.B, ctx.Hq, c.length], { dtype: 'f32', device: ctx.device }).fill_(-Infinity);
        this.qs.push({ c, q: rowsOf(q, c.row, c.length), out, lse });
      }
    } catch (e) { this.dispose(); throw e; }
  }

  /** Merges this rank's queries against rank src's K/V shard. */
  step(k: Tensor, v: Tensor, src: number): void {
    const ctx = this.ctx;
    for (const kc of localChunks(ctx, src)) {
      const kr = rowsOf(k, kc.row, kc.length), vr = rowsOf(v, kc.row, kc.length);
      try {
        for (const x of this.qs) {
          const kind = blockKind(ctx, x.c, kc);
          if (kind === 'skip') continue;
          const r = attention.forward(x.q.t, kr.t, vr.t, blockOptions(ctx, kind, x.c, kc));
          this.calls++;
          try { merge(x.out, x.lse, r.out, r.lse); } finally { r.out.dispose(); r.lse.dispose(); }
        }
      } finally { release(kr, vr); }
    }
  }

  /** The shard's out (q's dtype) and lse; releases the accumulators. */
  finish(): RingForwardResult {
    const ctx = this.ctx;
    const out = empty([ctx.B, ctx.S, ctx.Hq, ctx.D], { dtype: ctx.dtype, device: ctx.device });
    const lse = empty([ctx.B, ctx.Hq, ctx.S], { dtype: 'f32', device: ctx.device });
    for (const x of this.qs) {
      rowCopy(x.out, out, ctx.B, ctx.Hq * ctx.D, 0, x.c.row, x.c.length);
      rowCopy(x.lse, lse, ctx.B * ctx.Hq, 1, 0, x.c.row, x.c.length);
    }
    this.dispose();
    return { out, lse };
  }

  dispose(): void {
    for (const x of this.qs) { release(x.q); x.out.dispose(); x.lse.dispose(); }
    this.qs = [];
  }
}

/** fp32 dK/dV accumulators of one rank's shard, one pair per run (they travel around the ring). */
export interface KvGrad { runs: Chunk[]; dk: Tensor[]; dv: Tensor[] }
function kvGrad(ctx: Ctx, rank: number, zero: boolean): KvGrad {
  const runs = localChunks(ctx, rank);
  const mk = (c: Chunk) => (zero ? zeros : empty)([ctx.B, c.length, ctx.Hkv, ctx.D], { dtype: 'f32', device: ctx.device });
  return { runs, dk: runs.map(mk), dv: runs.map(mk) };
}
function disposeGrad(g: KvGrad): void {
  for (const t of [...g.dk, ...g.dv]) t.dispose();
}

/** @internal backward state of one rank: dq accumulators; dK/dV contributions per visiting shard. */
export class BackwardBlocks {
  readonly ctx: Ctx;
  private qs: { c: LocalChunk; q: { t: Tensor; owned: boolean }; dout: { t: Tensor; owned: boolean };
    out: { t: Tensor; owned: boolean }; lse: { t: Tensor; owned: boolean }; dq: Tensor }[] = [];
  calls = 0;

  constructor(ctx: Ctx, dout: Tensor, q: Tensor, out: Tensor, lse: Tensor) {
    this.ctx = ctx;
    try {
      for (const c of localChunks(ctx, ctx.rank)) {
        this.qs.push({
          c, q: rowsOf(q, c.row, c.length), dout: rowsOf(dout, c.row, c.length), out: rowsOf(out, c.row, c.length),
          lse: lseRows(lse, c.row, c.length), dq: zeros([ctx.B, c.length, ctx.Hq, ctx.D], { dtype: 'f32', device: ctx.device }),
        });
      }
    } catch (e) { this.dispose(); throw e; }
  }

  /**
   * The blocks of this rank's queries against rank src's K/V: dq is accumulated here; the dK/dV blocks
   * are returned per run of src (null: no query saw it), to be added to src's travelling accumulators.
   */
  step(k: Tensor, v: Tensor, src: number): { dk: Tensor; dv: Tensor }[][] {
    const ctx = this.ctx;
    const res: { dk: Tensor; dv: Tensor }[][] = [];
    for (const kc of localChunks(ctx, src)) {
      const kr = rowsOf(k, kc.row, kc.length), vr = rowsOf(v, kc.row, kc.length);
      const list: { dk: Tensor; dv: Tensor }[] = [];
      try {
        for (const x of this.qs) {
          const kind = blockKind(ctx, x.c, kc);
          if (kind === 'skip') continue;
          const g = attention.backward(x.dout.t, x.q.t, kr.t, vr.t, x.out.t, x.lse.t, blockOptions(ctx, kind, x.c, kc));
          this.calls++;
          add(x.dq, g.dq, { out: x.dq });
          g.dq.dispose();
          list.push({ dk: g.dk, dv: g.dv });
        }
      } finally { release(kr, vr); }
      res.push(list);
    }
    return res;
  }

  static accumulate(acc: KvGrad, parts: { dk: Tensor; dv: Tensor }[][]): void {
    parts.forEach((list, i) => {
      for (const p of list) {
        add(acc.dk[i], p.dk, { out: acc.dk[i] });
        add(acc.dv[i], p.dv, { out: acc.dv[i] });
        p.dk.dispose();
        p.dv.dispose();
      }
    });
  }

  finishDq(): Tensor {
    const ctx = this.ctx;
    const dq = empty([ctx.B, ctx.S, ctx.Hq, ctx.D], { dtype: ctx.dtype, device: ctx.device });
    for (const x of this.qs) rowCopy(x.dq, dq, ctx.B, ctx.Hq * ctx.D, 0, x.c.row, x.c.length);
    this.dispose();
    return dq;
  }

  dispose(): void {
    for (const x of this.qs) { release(x.q, x.dout, x.out, x.lse); x.dq.dispose(); }
    this.qs = [];
  }
}

function gradOut(ctx: Ctx, g: KvGrad): { dk: Tensor; dv: Tensor } {
  const dk = empty([ctx.B, ctx.S, ctx.Hkv, ctx.D], { dtype: ctx.dtype, device: ctx.device });
  const dv = empty([ctx.B, ctx.S, ctx.Hkv, ctx.D], { dtype: ctx.dtype, device: ctx.device });
  let row = 0;
  g.runs.forEach((c, i) => {
    rowCopy(g.dk[i], dk, ctx.B, ctx.Hkv * ctx.D, 0, row, c.length);
    rowCopy(g.dv[i], dv, ctx.B, ctx.Hkv * ctx.D, 0, row, c.length);
    row += c.length;
  });
  return { dk, dv };
}

/** @internal rank `rank` of `world`'s context for these shards, without a group (the bench times one rank). */
export function rankContext(rank: number, world: number, q: Tensor, k: Tensor, v: Tensor, opts?: RingOptions): Ctx {
  checkWorld('ring', rank, world);
  return resolve('ring', { rank, worldSize: world, device: q.device } as Group, q, k, v, opts);
}
/** @internal zeroed fp32 dK/dV accumulators shaped for ctx's shards. */
export function kvGradAccumulators(ctx: Ctx): { acc: KvGrad; dispose: () => void } {
  const acc = kvGrad(ctx, ctx.rank, true);
  return { acc, dispose: () => disposeGrad(acc) };
}

// ---------------------------------------------------------------------------------------------------------
// Ring algorithm

function comm(ctx: Ctx): { timeoutMs?: number } {
  return ctx.timeoutMs === undefined ? {} : { timeoutMs: ctx.timeoutMs };
}

// The ring's transfers are deferred (NCCL: the compute stream does not wait for them at issue time, so the
// transfer overlaps the step's attention); join() orders later compute after them, just before that compute
// touches a received buffer. Send buffers are never written by compute while a transfer may read them, and a
// later receive into a buffer sent earlier is ordered on the communication stream. Backends without
// deferred calls (local, TCP) ignore the flag and have no join.
function ringComm(ctx: Ctx): { timeoutMs?: number; deferred: true } {
  return { ...comm(ctx), deferred: true };
}

async function ringForward(group: Group, ctx: Ctx, q: Tensor, k: Tensor, v: Tensor): Promise<RingForwardResult> {
  const { W, rank } = ctx;
  const right = (rank + 1) % W, left = (rank + W - 1) % W;
  const st = new ForwardBlocks(ctx, q);
  const bufs = W > 1 ? [0, 1].map(() => [empty(k.shape, { dtype: k.dtype, device: k.device }), empty(v.shape, { dtype: v.dtype, device: v.device })]) : [];
  let pending: Promise<void> | null = null;
  try {
    let cur = [k, v];
    for (let s = 0; s < W; s++) {
      const src = (rank - s + W) % W;
      let next: Tensor[] | null = null;
      if (s < W - 1) {
        next = bufs[s % 2];
        // Issued before this step's blocks: the transfer overlaps them (NCCL: on the comm stream).
        pending = group.batchSendRecv([
          { op: 'send', tensor: cur[0], peer: right }, { op: 'send', tensor: cur[1], peer: right },
          { op: 'recv', tensor: next[0], peer: left }, { op: 'recv', tensor: next[1], peer: left },
        ], ringComm(ctx));
      }
      st.step(cur[0], cur[1], src);
      if (pending) { const p = pending; pending = null; await p; group.join?.(); }
      if (next) cur = next;
    }
    return st.finish();
  } catch (e) {
    if (pending) await pending.catch(() => undefined);
    st.dispose();
    throw e;
  } finally {
    for (const b of bufs) for (const t of b) t.dispose();
  }
}

async function ringBackward(group: Group, ctx: Ctx, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
    lse: Tensor): Promise<RingBackwardResult> {
  const { W, rank } = ctx;
  const right = (rank + 1) % W, left = (rank + W - 1) % W;
  const st = new BackwardBlocks(ctx, dout, q, out, lse);
  const bufs = W > 1 ? [0, 1].map(() => [empty(k.shape, { dtype: k.dtype, device: k.device }), empty(v.shape, { dtype: v.dtype, device: v.device })]) : [];
  // Two sets of travelling fp32 dK/dV accumulators: the one being added to, the one being received.
  const grads: KvGrad[] = [kvGrad(ctx, rank, true)];
  const waits: Promise<void>[] = [];
  let pKv: Promise<void> | null = null, pGrad: Promise<void> | null = null;
  try {
    if (W > 1) grads.push(kvGrad(ctx, rank, false));
    let cur = [k, v];
    let g = 0;  // index in grads of the accumulator for this step's src
    for (let s = 0; s < W; s++) {
      const src = (rank - s + W) % W;
      let next: Tensor[] | null = null;
      if (s < W - 1) {
        next = bufs[s % 2];
        pKv = group.batchSendRecv([
          { op: 'send', tensor: cur[0], peer: right }, { op: 'send', tensor: cur[1], peer: right },
          { op: 'recv', tensor: next[0], peer: left }, { op: 'recv', tensor: next[1], peer: left },
        ], ringComm(ctx));
        waits.push(pKv);
      }
      const parts = st.step(cur[0], cur[1], src);
      // The accumulator for src arrived during the previous step (step 0: our own zeros).
      if (pGrad) { const p = pGrad; pGrad = null; await p; group.join?.(); }
      // Accumulator sets are per-run shaped by their owner's runs; every rank's runs have the same lengths.
      BackwardBlocks.accumulate(grads[g], parts);
      if (W > 1) {
        const acc = grads[g], nxt = grads[1 - g];
        const ops: { op: 'send' | 'recv'; tensor: Tensor; peer: number }[] = [];
        for (const t of [...acc.dk, ...acc.dv]) ops.push({ op: 'send', tensor: t, peer: right });
        for (const t of [...nxt.dk, ...nxt.dv]) ops.push({ op: 'recv', tensor: t, peer: left });
        pGrad = group.batchSendRecv(ops, ringComm(ctx));
        waits.push(pGrad);
        g = 1 - g;
      }
      if (pKv) { const p = pKv; pKv = null; await p; group.join?.(); }
      if (next) cur = next;
    }
    if (pGrad) { const p = pGrad; pGrad = null; await p; group.join?.(); }
    const dq = st.finishDq();
    const { dk, dv } = gradOut(ctx, grads[g]);
    return { dq, dk, dv };
  } catch (e) {
    await Promise.allSettled(waits);
    st.dispose();
    throw e;
  } finally {
    for (const b of bufs) for (const t of b) t.dispose();
    for (const x of grads) disposeGrad(x);
  }
}

// ---------------------------------------------------------------------------------------------------------
// All-gather algorithm

/** K/V of the whole sequence, in global order, from every rank's shard. */
async function gatherFull(group: Group, ctx: Ctx, x: Tensor): Promise<Tensor> {
  const n = x.numel;
  const all = empty([ctx.W * n], { dtype: x.dtype, device: x.device });
  try {
    await group.allGather(all, x, comm(ctx));
    const full = empty([ctx.B, ctx.S * ctx.W, ctx.Hkv, ctx.D], { dtype: x.dtype, device: x.device });
    const inner = ctx.Hkv * ctx.D;
    for (let r = 0; r < ctx.W; r++) {
      const h = call(() => native().view(all.handle(), [n], r * n));
      const seg = new Tensor(h, [n], x.dtype, x.device);
      try {
        for (const c of localChunks(ctx, r)) rowCopy(seg, full, ctx.B, inner, c.row, c.start, c.length);
      } finally { seg.dispose(); }
    }
    return full;
  } finally { all.dispose(); }
}

/** The keys a query run can see: [0, end) of the full sequence (global index). */
function visibleEnd(ctx: Ctx, c: Chunk): number {
  const total = ctx.S * ctx.W;
  if (!ctx.causal) return total;
  const last = ctx.qOffset + c.start + c.length - 1 - ctx.kOffset;  // last visible key index
  return Math.max(0, Math.min(total, last + 1));
}

function prefixOptions(ctx: Ctx, c: Chunk): AttentionOptions {
  const o: AttentionOptions = { causal: ctx.causal };
  if (ctx.scale !== undefined) o.scale = ctx.scale;
  if (ctx.causal) { o.qOffset = ctx.qOffset + c.start; o.kOffset = ctx.kOffset; }
  return o;
}

/** Keys [0, end): a view when batch = 1; with batch > 1 all keys (the mask hides the rest). */
function prefix(t: Tensor, end: number): { t: Tensor; owned: boolean } {
  return t.shape[0] === 1 ? rowsOf(t, 0, end) : { t, owned: false };
}

async function allgatherForward(group: Group, ctx: Ctx, q: Tensor, k: Tensor, v: Tensor): Promise<RingForwardResult> {
  const [kf, vf] = await Promise.all([gatherFull(group, ctx, k), gatherFull(group, ctx, v)]);
  const out = zeros([ctx.B, ctx.S, ctx.Hq, ctx.D], { dtype: ctx.dtype, device: ctx.device });
  const lse = empty([ctx.B, ctx.Hq, ctx.S], { dtype: 'f32', device: ctx.device }).fill_(-Infinity);
  try {
    for (const c of localChunks(ctx, ctx.rank)) {
      const end = visibleEnd(ctx, c);
      if (end === 0) continue;  // every query of the run is masked: out 0, lse -inf
      const qr = rowsOf(q, c.row, c.length), kr = prefix(kf, end), vr = prefix(vf, end);
      try {
        const r = attention.forward(qr.t, kr.t, vr.t, prefixOptions(ctx, c));
        rowCopy(r.out, out, ctx.B, ctx.Hq * ctx.D, 0, c.row, c.length);
        rowCopy(r.lse, lse, ctx.B * ctx.Hq, 1, 0, c.row, c.length);
        r.out.dispose();
        r.lse.dispose();
      } finally { release(qr, kr, vr); }
    }
  } catch (e) { out.dispose(); lse.dispose(); throw e; } finally { kf.dispose(); vf.dispose(); }
  return { out, lse };
}

async function allgatherBackward(group: Group, ctx: Ctx, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
    lse: Tensor): Promise<RingBackwardResult> {
  const [kf, vf] = await Promise.all([gatherFull(group, ctx, k), gatherFull(group, ctx, v)]);
  const T = ctx.S * ctx.W, inner = ctx.Hkv * ctx.D;
  const dkf = zeros([ctx.B, T, ctx.Hkv, ctx.D], { dtype: 'f32', device: ctx.device });
  const dvf = zeros([ctx.B, T, ctx.Hkv, ctx.D], { dtype: 'f32', device: ctx.device });
  const dq = zeros([ctx.B, ctx.S, ctx.Hq, ctx.D], { dtype: ctx.dtype, device: ctx.device });
  const tmp: Tensor[] = [];
  try {
    for (const c of localChunks(ctx, ctx.rank)) {
      const end = visibleEnd(ctx, c);
      if (end === 0) continue;
      const qr = rowsOf(q, c.row, c.length), dr = rowsOf(dout, c.row, c.length), or = rowsOf(out, c.row, c.length);
      const lr = lseRows(lse, c.row, c.length);
      const kr = prefix(kf, end), vr = prefix(vf, end), dkr = prefix(dkf, end), dvr = prefix(dvf, end);
      try {
        const g = attention.backward(dr.t, qr.t, kr.t, vr.t, or.t, lr.t, prefixOptions(ctx, c));
        rowCopy(g.dq, dq, ctx.B, ctx.Hq * ctx.D, 0, c.row, c.length);
        add(dkr.t, g.dk, { out: dkr.t });
        add(dvr.t, g.dv, { out: dvr.t });
        g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
      } finally { release(qr, dr, or, lr, kr, vr, dkr, dvr); }
    }
    // Rank-major fp32 inputs (segment r = rank r's shard of the full dK/dV) -> reduce-scatter(sum).
    const n = ctx.B * ctx.S * inner;
    const res: Tensor[] = [];
    for (const full of [dkf, dvf]) {
      const send = empty([ctx.W * n], { dtype: 'f32', device: ctx.device });
      tmp.push(send);
      for (let r = 0; r < ctx.W; r++) {
        const seg = new Tensor(call(() => native().view(send.handle(), [n], r * n)), [n], 'f32', ctx.device);
        try {
          for (const c of localChunks(ctx, r)) rowCopy(full, seg, ctx.B, inner, c.start, c.row, c.length);
        } finally { seg.dispose(); }
      }
      const mine = empty([ctx.B, ctx.S, ctx.Hkv, ctx.D], { dtype: 'f32', device: ctx.device });
      tmp.push(mine);
      await group.reduceScatter(mine, send, { ...comm(ctx), op: 'sum' });
      res.push(mine);
    }
    const dk = empty(k.shape, { dtype: ctx.dtype, device: ctx.device });
    const dv = empty(v.shape, { dtype: ctx.dtype, device: ctx.device });
    rowCopy(res[0], dk, 1, res[0].numel, 0, 0, 1);
    rowCopy(res[1], dv, 1, res[1].numel, 0, 0, 1);
    return { dq, dk, dv };
  } catch (e) { dq.dispose(); throw e; } finally {
    for (const t of [kf, vf, dkf, dvf, ...tmp]) t.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------
// RoPE (the rope option): each shard is rotated once, before the ring, at its tokens' global positions
// (qOffset / kOffset + the global index under the layout, or the caller's qPositions / kPositions for the
// shard), so every K block that visits a rank already carries the rotation of its own global positions.
// Rotating per visiting block would rotate each K shard W times instead of once; that only pays once the
// attention kernel rotates on load (then nothing extra is read or written). Backward rotates dq and the
// shard's final dk back in place after the ring.

/** int32 [batch, S]: offset + the global index of each row of this rank's shard (the layout's chunks). */
function shardPositions(op: string, ctx: Ctx, offset: number, name: string): Tensor {
  const total = ctx.S * ctx.W;
  if (offset < 0 || offset + total - 1 > 2 ** 31 - 1)
    throw new ArgumentError(`${op}: with rope, ${name} + seq - 1 must be in [0, 2^31 - 1] (RoPE positions are int32), ` +
      `got ${name} ${offset} with a sequence of ${total}; negative positions need rope.qPositions/kPositions`);
  return positions(total, ctx.rank, ctx.W, ctx.layout, { batch: ctx.B, device: ctx.device, offset });
}

interface RingRope { q: Tensor; k: Tensor; plan: RopePlan; dispose: () => void }

/** This rank's q and k shards rotated at their global positions (the position tensors live in `plan`). */
function rotateShards(op: string, ctx: Ctx, ro: unknown, q: Tensor, k: Tensor, v: Tensor): RingRope {
  if (ro === null || typeof ro !== 'object' || Array.isArray(ro))
    throw new ArgumentError(`${op}: rope must be an object of RoPE options (e.g. { base: 10000 }), got ${show(ro)}`);
  const r = ro as Record<string, unknown>;
  const owned: Tensor[] = [];
  const release = () => { for (const t of owned) t.dispose(); };
  try {
    let given = r;
    if (r.qPositions === undefined && r.kPositions === undefined) {
      const qp = shardPositions(op, ctx, ctx.qOffset, 'qOffset');
      owned.push(qp);
      const kp = ctx.kOffset === ctx.qOffset ? qp : shardPositions(op, ctx, ctx.kOffset, 'kOffset');
      if (kp !== qp) owned.push(kp);
      given = { ...r, qPositions: qp, kPositions: kp };
    }
    const rot = ropeRotate(op, given, q, k, v, ctx.qOffset, ctx.kOffset);
    return { ...rot, dispose: () => { rot.q.dispose(); rot.k.dispose(); release(); } };
  } catch (e) {
    release();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Public API

/** Sequence-parallel attention forward on this rank's shard (every rank of the group calls it). */
export async function forward(group: Group | null | undefined, q: Tensor, k: Tensor, v: Tensor, opts?: RingOptions): Promise<RingForwardResult> {
  const ctx = resolve('ring.forward', group, q, k, v, opts);
  const ro = opts?.rope;
  if (!group || ctx.W === 1) {
    return attention.forward(q, k, v, { causal: ctx.causal, scale: ctx.scale, qOffset: ctx.qOffset, kOffset: ctx.kOffset,
      ...(ro === undefined ? {} : { rope: ro }) });
  }
  const run = (qq: Tensor, kk: Tensor) => ctx.algorithm === 'allgather' ? allgatherForward(group, ctx, qq, kk, v) : ringForward(group, ctx, qq, kk, v);
  if (ro === undefined) return run(q, k);
  const rot = rotateShards('ring.forward', ctx, ro, q, k, v);
  try {
    return await run(rot.q, rot.k);
  } finally { rot.dispose(); }
}

/** Sequence-parallel attention backward: this rank's dq, dk, dv (the shard's gradients, q's dtype). */
export async function backward(group: Group | null | undefined, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
    lse: Tensor, opts?: RingOptions): Promise<RingBackwardResult> {
  const ctx = resolve('ring.backward', group, q, k, v, opts);
  for (const [t, n] of [[dout, 'dout'], [out, 'out'], [lse, 'lse']] as const)
    if (!(t instanceof Tensor)) throw new ArgumentError(`ring.backward: ${n} must be a Tensor`);
  const ro = opts?.rope;
  if (!group || ctx.W === 1) {
    return attention.backward(dout, q, k, v, out, lse, { causal: ctx.causal, scale: ctx.scale, qOffset: ctx.qOffset, kOffset: ctx.kOffset,
      ...(ro === undefined ? {} : { rope: ro }) });
  }
  if (dout.ndim !== 4 || dout.shape.some((d, i) => d !== q.shape[i])) throw new ShapeError(`ring.backward: dout must have q's shape [${q.shape}]`);
  if (out.ndim !== 4 || out.shape.some((d, i) => d !== q.shape[i])) throw new ShapeError(`ring.backward: out must have q's shape [${q.shape}]`);
  if (lse.ndim !== 3 || lse.shape[0] !== ctx.B || lse.shape[1] !== ctx.Hq || lse.shape[2] !== ctx.S)
    throw new ShapeError(`ring.backward: lse must be [${ctx.B}, ${ctx.Hq}, ${ctx.S}]`);
  const run = (qq: Tensor, kk: Tensor) => ctx.algorithm === 'allgather' ? allgatherBackward(group, ctx, dout, qq, kk, v, out, lse)
    : ringBackward(group, ctx, dout, qq, kk, v, out, lse);
  if (ro === undefined) return run(q, k);
  const rot = rotateShards('ring.backward', ctx, ro, q, k, v);
  try {
    const g = await run(rot.q, rot.k);
    try {
      ropeUnrotate(rot.plan, g.dq, g.dk);
    } catch (e) {
      g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
      throw e;
    }
    return g;
  } finally { rot.dispose(); }
}

// ---------------------------------------------------------------------------------------------------------
// The sequence-parallel attention layer: exact RoPE at global positions -> ring attention

export interface AttentionLayerOptions extends Omit<RingOptions, 'qOffset' | 'kOffset'> {
  /** RoPE frequencies and style (e.g. { base: 75e6 } or theta.frequencies(...)); positions are filled in. */
  rope: Omit<RopeApplyOptions, 'positions' | 'positionOffset' | 'inplace'>;
  /** Global position of the full sequence's first token (default 0). */
  offset?: number;
}

// The layer is ring attention with the rope option at explicit positions offset + global index (one
// tensor for q and k: one rotation launch for both; qOffset = kOffset = 0 for the mask, which only sees
// their difference).
function layerSetup(group: Group | null | undefined, q: Tensor, opts: AttentionLayerOptions): { pos: Tensor; ring: RingOptions; ropeOpts: AttentionRopeOptions } {
  if (!opts || typeof opts !== 'object' || !opts.rope || typeof opts.rope !== 'object')
    throw new ArgumentError('ring.attentionLayer: options.rope (RoPE frequencies, e.g. { base: 75e6 }) is required');
  if (!(q instanceof Tensor) || q.ndim !== 4) throw new ArgumentError('ring.attentionLayer: q must be a 4-D Tensor');
  const { rope: ro, offset, ...ring } = opts;
  const W = group ? group.worldSize : 1, rank = group ? group.rank : 0;
  const layout = checkLayout('ring.attentionLayer', ring.layout);
  const pos = positions(q.shape[1] * W, rank, W, W === 1 ? 'contiguous' : layout, { batch: q.shape[0], device: q.device, offset: offset ?? 0 });
  return { pos, ring, ropeOpts: { ...ro, qPositions: pos, kPositions: pos } };
}

/**
 * The attention of one layer under sequence parallelism: RoPE (exact) on q and k at this shard's global
 * positions, then ring.forward. q/k/v are pre-RoPE; returns out and lse (keep them for backward).
 */
async function layerForward(group: Group | null | undefined, q: Tensor, k: Tensor, v: Tensor, opts: AttentionLayerOptions): Promise<RingForwardResult> {
  const { pos, ring, ropeOpts } = layerSetup(group, q, opts);
  try {
    return await forward(group, q, k, v, { ...ring, rope: ropeOpts });
  } finally { pos.dispose(); }
}

/** Gradients for the pre-RoPE q, k and for v (RoPE is recomputed, then undone on dq/dk by rope.backward). */
async function layerBackward(group: Group | null | undefined, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
    lse: Tensor, opts: AttentionLayerOptions): Promise<RingBackwardResult> {
  const { pos, ring, ropeOpts } = layerSetup(group, q, opts);
  try {
    return await backward(group, dout, q, k, v, out, lse, { ...ring, rope: ropeOpts });
  } finally { pos.dispose(); }
}

export const attentionLayer = { forward: layerForward, backward: layerBackward };

export const ring = { forward, backward, shard, unshard, chunks, positions, chooseAlgorithm, attentionLayer };
