// Host-side sharding of token batches for sequence parallelism: each rank of a group of W gets its
// zigzag (or contiguous) shard of every sequence, the same cut ring attention expects (ring.chunks).
// Shift labels on the full sequence first (label i = target of position i), then shard ids and labels
// alike: a token and its label stay together.
import { ArgumentError, ShapeError } from '../errors';
import { chunks, RingLayout } from '../ring';

export interface ShardOptions {
  /** 'zigzag' (default) or 'contiguous'; the same as forwardBackward's `layout`. */
  layout?: RingLayout;
  /** Rows of a flat input (default 1): a flat array then holds [batch, seq] row-major. */
  batch?: number;
  /** Global position of the sequences' first token, added to `positions` (default 0). */
  offset?: number;
}

type Tokens = Int32Array | readonly number[] | readonly (readonly number[])[];

function rowsOf(x: Tokens, batch: number | undefined, what: string): { rows: ArrayLike<number>[]; nested: boolean } {
  if (!(x instanceof Int32Array) && !Array.isArray(x)) throw new ArgumentError(`model.shardTokens: ${what} must be an Int32Array, number[] or number[][]`);
  if (Array.isArray(x) && x.length > 0 && Array.isArray(x[0])) {
    if (batch !== undefined && batch !== x.length) throw new ShapeError(`model.shardTokens: ${what} has ${x.length} rows, batch is ${batch}`);
    const rows = x as readonly (readonly number[])[];
    if (rows.some((r) => !Array.isArray(r) || r.length !== rows[0].length)) throw new ShapeError(`model.shardTokens: ${what}'s rows must be arrays of one length`);
    return { rows: rows as unknown as ArrayLike<number>[], nested: true };
  }
  const flat = x as ArrayLike<number>;
  const B = batch ?? 1;
  if (!Number.isSafeInteger(B) || B < 1) throw new ArgumentError('model.shardTokens: batch must be an integer >= 1');
  if (flat.length % B !== 0) throw new ShapeError(`model.shardTokens: ${what} has ${flat.length} tokens, not a multiple of batch ${B}`);
  const S = flat.length / B;
  const rows: ArrayLike<number>[] = [];
  for (let b = 0; b < B; b++) rows.push(flat instanceof Int32Array ? flat.subarray(b * S, (b + 1) * S) : Array.prototype.slice.call(flat, b * S, (b + 1) * S));
  return { rows, nested: false };
}

/**
 * Rank `rank`'s shard of every row of `x` (token ids or labels, [seq] / [batch, seq] flat with
 * opts.batch / number[][]): a flat Int32Array [batch · seq/world] for flat input, number[][] for nested.
 * (forwardBackward reads a flat array as one row: for batch > 1 pass nested arrays, or make an i32
 * Tensor of shape [batch, seq/world] from the flat result.)
 */
export function shardTokens(x: Int32Array | readonly number[], rank: number, world: number, opts?: ShardOptions): Int32Array;
export function shardTokens(x: readonly (readonly number[])[], rank: number, world: number, opts?: ShardOptions): number[][];
export function shardTokens(x: Tokens, rank: number, world: number, opts: ShardOptions = {}): Int32Array | number[][] {
  const { rows, nested } = rowsOf(x, opts.batch, 'tokens');
  const S = rows.length ? rows[0].length : 0;
  const cs = chunks(S, rank, world, opts.layout ?? 'zigzag');
  const n = S / world;
  const out = new Int32Array(rows.length * n);
  rows.forEach((r, b) => {
    let i = b * n;
    for (const c of cs) for (let j = 0; j < c.length; j++) out[i++] = r[c.start + j];
  });
  if (!nested) return out;
  return rows.map((_, b) => Array.from(out.subarray(b * n, (b + 1) * n)));
}

/**
 * ids and labels of a batch -> this rank's shards (same form as given) and the global positions of its
 * tokens (Int32Array [seq/world], the same for every row; what forwardBackward gives RoPE).
 */
export function shardBatch<T extends Tokens>(batch: { ids: T; labels: T }, rank: number, world: number, opts: ShardOptions = {}):
    { ids: T extends readonly (readonly number[])[] ? number[][] : Int32Array; labels: T extends readonly (readonly number[])[] ? number[][] : Int32Array;
      positions: Int32Array } {
  if (!batch || typeof batch !== 'object') throw new ArgumentError('model.shardBatch: expected { ids, labels }');
  const ids = shardTokens(batch.ids as Int32Array, rank, world, opts);
  const labels = shardTokens(batch.labels as Int32Array, rank, world, opts);
  if (ids.length !== labels.length) throw new ShapeError('model.shardBatch: ids and labels differ in shape');
  const S = rowsOf(batch.ids, opts.batch, 'ids').rows[0]?.length ?? 0;
  const off = opts.offset ?? 0;
  if (!Number.isSafeInteger(off) || off < 0) throw new ArgumentError('model.shardBatch: offset must be a non-negative integer');
  const positions = new Int32Array(S / world);
  let i = 0;
  for (const c of chunks(S, rank, world, opts.layout ?? 'zigzag')) for (let j = 0; j < c.length; j++) positions[i++] = off + c.start + j;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return { ids: ids as any, labels: labels as any, positions };
}
