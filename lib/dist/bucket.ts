// Bucketed collectives over many tensors (gradients, parameters): small tensors travel together in flat
// buffers of at most `bucketBytes`, so a model's norms and biases cost a few calls instead of one each;
// tensors of a bucket's size or more go alone, as they are, with no copy.
//
// Results are the unbucketed ones: a reduction is elementwise, so where an element sits in the buffer does
// not change its sum on the local and TCP backends (they reduce element by element in rank order). NCCL
// may pick another algorithm or chunking for a bigger buffer, which at W > 2 can reorder a float sum:
// equal within rounding there.
//
// The copies in and out (elementwise.scale with alpha 1: exact for f32 and for bf16/f16 to the same dtype)
// cost a pass over the small tensors only.
import { ArgumentError } from '../errors';
import { scale } from '../elementwise';
import { Tensor, empty, zeros } from '../tensor';
import { dtypeSize } from '../dtype';
import type { Group, ReduceOp } from './types';

/** Default bucket size: 25 MB, as PyTorch DDP's bucket_cap_mb. */
export const DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024;

export interface BucketOptions {
  /** Most bytes per flat buffer (default 25 MB); 0 = no buckets (one call per tensor). */
  bucketBytes?: number;
  timeoutMs?: number;
}

function bucketBytesOf(o: BucketOptions | undefined): number {
  const b = o?.bucketBytes ?? DEFAULT_BUCKET_BYTES;
  if (typeof b !== 'number' || !Number.isSafeInteger(b) || b < 0) throw new ArgumentError(`bucketBytes must be an integer >= 0, got ${String(b)}`);
  return b;
}

/**
 * Consecutive runs of tensors of one dtype whose `bytes` fit together in `cap` (in order, so every rank
 * forms the same buckets); an item of `cap` bytes or more (or cap 0) is a bucket of its own.
 */
export function planBuckets<T>(items: readonly T[], bytes: (x: T) => number, dtype: (x: T) => string, cap: number): T[][] {
  const out: T[][] = [];
  let cur: T[] = [], curBytes = 0;
  const flush = () => { if (cur.length) out.push(cur); cur = []; curBytes = 0; };
  for (const x of items) {
    const b = bytes(x);
    if (cap === 0 || b >= cap) { flush(); out.push([x]); continue; }
    if (cur.length && (dtype(cur[0]) !== dtype(x) || curBytes + b > cap)) flush();
    cur.push(x);
    curBytes += b;
  }
  flush();
  return out;
}

function copy(src: Tensor, dst: Tensor): void {
  scale(src, 1, { out: dst });
}

/** allReduce of every tensor (in place), small ones through flat buffers. */
export async function allReduceBucketed(group: Group, tensors: readonly Tensor[], opts: BucketOptions & { op?: ReduceOp } = {}): Promise<void> {
  const cap = bucketBytesOf(opts);
  const op = opts.op ?? 'sum';
  for (const b of planBuckets(tensors, (t) => t.nbytes, (t) => t.dtype, cap)) {
    if (b.length === 1) { await group.allReduce(b[0], { op, timeoutMs: opts.timeoutMs }); continue; }
    const n = b.reduce((a, t) => a + t.numel, 0);
    const flat = empty([n], { dtype: b[0].dtype, device: b[0].device });
    try {
      const views: Tensor[] = [];
      let off = 0;
      for (const t of b) {
        if (t.numel === 0) { views.push(t); continue; }
        const src = t.reshape([t.numel]), dst = flat.narrow(0, off, t.numel);
        copy(src, dst);
        src.dispose();
        views.push(dst);
        off += t.numel;
      }
      await group.allReduce(flat, { op, timeoutMs: opts.timeoutMs });
      b.forEach((t, i) => {
        if (t.numel === 0) return;
        const dst = t.reshape([t.numel]);
        copy(views[i], dst);
        dst.dispose(); views[i].dispose();
      });
    } finally {
      flat.dispose();
    }
  }
}

/**
 * ZeRO-style sharding of many flat tensors over W ranks: tensor i is cut into W even pieces of
 * per_i = ceil(n_i / W) elements (rank r owns [r·per_i, min(n_i, (r+1)·per_i)), possibly empty).
 */
export interface ShardedTensor {
  /** The whole tensor (gradient or parameter), any shape, numel n. */
  full: Tensor;
  /** This rank's piece (reduceScatter: receives the reduced piece, len elements; allGather: sends it). */
  piece: Tensor;
}

function pieceBounds(n: number, W: number, r: number): { per: number; start: number; len: number } {
  const per = Math.ceil(n / W);
  const start = Math.min(n, r * per);
  return { per, start, len: Math.min(n, start + per) - start };
}

/** Copies `len` elements of the 1-D `src` from `so` into the 1-D `dst` at `dOff` (views disposed after). */
function copyRange(src: Tensor, so: number, dst: Tensor, dOff: number, len: number): void {
  if (len <= 0) return;
  const s = src.narrow(0, so, len), d = dst.narrow(0, dOff, len);
  copy(s, d);
  s.dispose(); d.dispose();
}

/** A bucket of sharded tensors laid out rank-major ([rank][item][per_i]): `row` elements per rank. */
interface ShardLayout { dtype: Tensor['dtype']; device: Tensor['device']; pers: number[]; row: number; direct: boolean }
function shardLayout(b: readonly ShardedTensor[], W: number): ShardLayout {
  const pers = b.map((x) => Math.ceil(x.full.numel / W));
  return {
    dtype: b[0].full.dtype, device: b[0].full.device, pers, row: pers.reduce((a, p) => a + p, 0),
    // One item whose length divides by W is the rank-major buffer itself: no copy.
    direct: b.length === 1 && pers[0] * W === b[0].full.numel,
  };
}

/** Every rank's piece of every item: f(flat item, item start, buffer offset, len) for the rank-major buffer. */
function eachRankPiece(b: readonly ShardedTensor[], W: number, L: ShardLayout,
    f: (flat: Tensor, start: number, off: number, len: number) => void): void {
  const flats = b.map((x) => x.full.reshape([x.full.numel]));
  try {
    for (let q = 0; q < W; q++) {
      let off = q * L.row;
      b.forEach((x, i) => {
        const { start, len } = pieceBounds(x.full.numel, W, q);
        f(flats[i], start, off, len);
        off += L.pers[i];
      });
    }
  } finally {
    for (const fl of flats) fl.dispose();
  }
}

/** This rank's piece of every item: f(piece as 1-D, offset in the rank's row, len), sizes checked. */
function eachOwnPiece(who: string, b: readonly ShardedTensor[], W: number, r: number, L: ShardLayout,
    f: (piece: Tensor, off: number, len: number) => void): void {
  let off = 0;
  b.forEach((x, i) => {
    const { len } = pieceBounds(x.full.numel, W, r);
    if (x.piece.numel !== len) throw new ArgumentError(`${who}: piece ${i} has ${x.piece.numel} elements, this rank's piece is ${len}`);
    if (len > 0) {
      const piece = x.piece.reshape([len]);
      f(piece, off, len);
      piece.dispose();
    }
    off += L.pers[i];
  });
}

/** The buckets of sharded items for a group of W ranks, each with its rank-major layout. */
function shardedBuckets(items: readonly ShardedTensor[], W: number, opts: BucketOptions): { b: ShardedTensor[]; L: ReturnType<typeof shardLayout> }[] {
  const sz = (x: ShardedTensor) => Math.ceil(x.full.numel / W) * W * dtypeSize(x.full.dtype);
  return planBuckets(items, sz, (x) => x.full.dtype, bucketBytesOf(opts)).map((b) => ({ b, L: shardLayout(b, W) }));
}

/**
 * reduceScatter over many tensors: `piece` of each item receives the reduction of every rank's
 * [r·per, r·per+len) slice of `full`. A bucket is laid out rank-major ([rank][item][per_i], zero padded),
 * so one reduceScatter hands every rank its pieces of every item.
 */
export async function reduceScatterBucketed(group: Group, items: readonly ShardedTensor[], opts: BucketOptions & { op?: ReduceOp } = {}): Promise<void> {
  const op = opts.op ?? 'sum';
  const W = group.worldSize, r = group.rank;
  for (const { b, L } of shardedBuckets(items, W, opts)) {
    const input = L.direct ? b[0].full.reshape([b[0].full.numel]) : zeros([L.row * W], { dtype: L.dtype, device: L.device });
    const out = empty([L.row], { dtype: L.dtype, device: L.device });
    try {
      if (!L.direct) eachRankPiece(b, W, L, (flat, start, off, len) => copyRange(flat, start, input, off, len));
      await group.reduceScatter(out, input, { op, timeoutMs: opts.timeoutMs });
      eachOwnPiece('reduceScatterBucketed', b, W, r, L, (piece, off, len) => copyRange(out, off, piece, 0, len));
    } finally {
      input.dispose();
      out.dispose();
    }
  }
}

/** allGather over many tensors: every rank's `piece` lands in its place in `full` on every rank (same layout as reduceScatterBucketed). */
export async function allGatherBucketed(group: Group, items: readonly ShardedTensor[], opts: BucketOptions = {}): Promise<void> {
  const W = group.worldSize, r = group.rank;
  for (const { b, L } of shardedBuckets(items, W, opts)) {
    const out = L.direct ? b[0].full.reshape([b[0].full.numel]) : empty([L.row * W], { dtype: L.dtype, device: L.device });
    const mine = zeros([L.row], { dtype: L.dtype, device: L.device });
    try {
      eachOwnPiece('allGatherBucketed', b, W, r, L, (piece, off, len) => copyRange(piece, 0, mine, off, len));
      await group.allGather(out, mine, { timeoutMs: opts.timeoutMs });
      if (!L.direct) eachRankPiece(b, W, L, (flat, start, off, len) => copyRange(out, off, flat, start, len));
    } finally {
      out.dispose();
      mine.dispose();
    }
  }
}
