// Flash attention: softmax(scale * q k^T + causal mask) v without materialising the score matrix.
// q [batch, seqQ, headsQ, headDim], k/v [batch, seqK, headsKv, headDim]; grouped-query attention when
// headsKv < headsQ (q head h reads kv head floor(h / (headsQ / headsKv)); K/V are never expanded).
// Causal with offsets: query i sees key j iff kOffset + j <= qOffset + i, so a shard of a long
// sequence (ring attention) is expressed with its global positions. A query that sees no key gets
// out = 0 and lse = -Infinity (never NaN), and no gradient.
// CPU: f32, f16, bf16, any headDim (f32 accumulation). CUDA: f16, bf16, headDim 64 or 128.
import { ArgumentError, DtypeError, ShapeError, UnsupportedError, native as call } from './errors';
import { dtypeCode } from './dtype';
import { native } from './native';
import { Tensor, arg, empty, sameDevice } from './tensor';

export interface AttentionOptions {
  /** Causal mask (query i sees key j iff kOffset + j <= qOffset + i). Default false. */
  causal?: boolean;
  /** Softmax scale; default 1 / sqrt(headDim). */
  scale?: number;
  /** Global position of query 0 (causal only); default 0. */
  qOffset?: number;
  /** Global position of key 0 (causal only); default 0. */
  kOffset?: number;
}

export interface AttentionForwardResult {
  /** [batch, seqQ, headsQ, headDim], q's dtype. */
  out: Tensor;
  /** f32 [batch, headsQ, seqQ]: natural-log sum of exp(scores) per query; -Infinity for a masked row. */
  lse: Tensor;
}

export interface AttentionBackwardResult {
  dq: Tensor;
  /** Summed over the q heads that share each kv head. */
  dk: Tensor;
  dv: Tensor;
}

interface Resolved {
  scale: number;
  causal: boolean;
  qOffset: number;
  kOffset: number;
}

interface Dims {
  batch: number;
  seqQ: number;
  seqK: number;
  headsQ: number;
  headsKv: number;
  headDim: number;
}

const OPTION_KEYS = new Set(['causal', 'scale', 'qOffset', 'kOffset']);
const FLOAT_DTYPES = new Set(['f32', 'f16', 'bf16']);

function checkTensor(op: string, t: unknown, what: string): Tensor {
  arg(t, `${op}: ${what}`);  // ERR_ARG when not a Tensor, ERR_DISPOSED when disposed
  return t as Tensor;
}

function check4d(op: string, t: Tensor, what: string, layout: string): void {
  if (t.ndim !== 4) throw new ShapeError(`${op}: ${what} must be 4-D ${layout}, got [${t.shape}]`);
  if (!FLOAT_DTYPES.has(t.dtype)) throw new DtypeError(`${op}: ${what} must be f32, f16 or bf16, got ${t.dtype}`);
}

function sameShape(op: string, t: Tensor, shape: readonly number[], what: string): void {
  if (t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw new ShapeError(`${op}: ${what} must have shape [${shape}], got [${t.shape}]`);
}

function sameDtype(op: string, t: Tensor, dtype: string, what: string): void {
  if (t.dtype !== dtype) throw new DtypeError(`${op}: ${what} is ${t.dtype}, expected ${dtype}`);
}

function dimsOf(op: string, q: Tensor, k: Tensor, v: Tensor): Dims {
  check4d(op, q, 'q', '[batch, seqQ, headsQ, headDim]');
  check4d(op, k, 'k', '[batch, seqK, headsKv, headDim]');
  check4d(op, v, 'v', '[batch, seqK, headsKv, headDim]');
  const [batch, seqQ, headsQ, headDim] = q.shape;
  const [kb, seqK, headsKv, kd] = k.shape;
  if (kb !== batch) throw new ShapeError(`${op}: q and k have different batch sizes (${batch} and ${kb})`);
  if (kd !== headDim) throw new ShapeError(`${op}: q and k have different head dims (${headDim} and ${kd})`);
  sameShape(op, v, k.shape, 'v (like k)');
  if (headDim < 1) throw new ShapeError(`${op}: headDim must be >= 1`);
  if (headsQ < 1 || headsKv < 1) throw new ShapeError(`${op}: head counts must be >= 1, got ${headsQ} and ${headsKv}`);
  if (headsQ % headsKv !== 0)
    throw new ShapeError(`${op}: q heads (${headsQ}) must be a multiple of kv heads (${headsKv})`);
  for (const x of [batch, seqQ, seqK, headsQ, headsKv, headDim])
    if (x > 2 ** 31 - 1) throw new ShapeError(`${op}: dimension ${x} is too large`);
  sameDtype(op, k, q.dtype, 'k');
  sameDtype(op, v, q.dtype, 'v');
  return { batch, seqQ, seqK, headsQ, headsKv, headDim };
}

function resolveOptions(op: string, opts: unknown, headDim: number): Resolved {
  if (opts === undefined) opts = {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new ArgumentError(`${op}: options must be an object`);
  const o = opts as Record<string, unknown>;
  for (const key of Object.keys(o))
    if (!OPTION_KEYS.has(key)) throw new ArgumentError(`${op}: unknown option ${JSON.stringify(key)}`);
  // Only undefined means "default": null is a mistake worth reporting.
  const causal = o.causal === undefined ? false : o.causal;
  if (typeof causal !== 'boolean') throw new ArgumentError(`${op}: causal must be a boolean`);
  const scale = o.scale === undefined ? 1 / Math.sqrt(headDim) : o.scale;
  // The kernels take the scale as f32: it must stay finite and > 0 there too.
  if (typeof scale !== 'number' || !Number.isFinite(scale) || !(scale > 0) || !(Math.fround(scale) > 0) ||
      !Number.isFinite(Math.fround(scale)))
    throw new ArgumentError(`${op}: scale must be a finite number > 0, got ${String(scale)}`);
  const offset = (name: 'qOffset' | 'kOffset'): number => {
    const x = o[name] === undefined ? 0 : o[name];
    if (typeof x !== 'number' || !Number.isSafeInteger(x))
      throw new ArgumentError(`${op}: ${name} must be a safe integer, got ${String(x)}`);
    return x;
  };
  return { scale, causal, qOffset: offset('qOffset'), kOffset: offset('kOffset') };
}

// What the CUDA kernels take, asked of their own configuration check (cached per problem shape).
const cudaVerdicts = new Map<string, string>();
function checkCuda(op: string, dtype: string, d: Dims): void {
  if (dtype !== 'f16' && dtype !== 'bf16') throw new UnsupportedError(`${op}: CUDA supports f16 and bf16, got ${dtype}`);
  const key = [dtype, d.batch, d.seqQ, d.seqK, d.headsQ, d.headsKv, d.headDim].join(',');
  let why = cudaVerdicts.get(key);
  if (why === undefined) {
    why = call(() => native().attentionCudaCheck(dtypeCode(dtype as 'f16' | 'bf16'), d.batch, d.seqQ, d.seqK, d.headsQ,
      d.headsKv, d.headDim)) as string;
    if (cudaVerdicts.size > 256) cudaVerdicts.clear();
    cudaVerdicts.set(key, why);
  }
  if (why !== '') throw new UnsupportedError(`${op}: ${why}`);
}

function allocate(shapes: (readonly number[])[], dtypes: ('f32' | 'f16' | 'bf16')[], device: Tensor['device']): Tensor[] {
  const out: Tensor[] = [];
  try {
    for (let i = 0; i < shapes.length; i++) out.push(empty(shapes[i], { dtype: dtypes[i], device }));
  } catch (e) {
    for (const t of out) t.dispose();
    throw e;
  }
  return out;
}

/** Attention forward: returns out (q's dtype and device) and lse (f32 [batch, headsQ, seqQ]). */
function forward(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionOptions): AttentionForwardResult {
  const op = 'attention.forward';
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) checkTensor(op, t, n);
  const d = dimsOf(op, q, k, v);
  const device = sameDevice(op, q, k, v);
  const o = resolveOptions(op, opts, d.headDim);
  if (device !== 'cpu') checkCuda(op, q.dtype, d);
  const dtype = q.dtype as 'f32' | 'f16' | 'bf16';
  const [out, lse] = allocate([q.shape, [d.batch, d.headsQ, d.seqQ]], [dtype, 'f32'], device);
  try {
    call(() => native().attentionForward(q.handle(), k.handle(), v.handle(), out.handle(), lse.handle(),
      o.scale, o.causal, o.qOffset, o.kOffset));
  } catch (e) {
    out.dispose();
    lse.dispose();
    throw e;
  }
  return { out, lse };
}

/**
 * Attention backward: gradients of sum(out * dout) for q, k, v, given forward's out and lse and the
 * same options. dk/dv sum over the q heads that share each kv head.
 */
function backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    opts?: AttentionOptions): AttentionBackwardResult {
  const op = 'attention.backward';
  for (const [t, n] of [[dout, 'dout'], [q, 'q'], [k, 'k'], [v, 'v'], [out, 'out'], [lse, 'lse']] as const)
    checkTensor(op, t, n);
  const d = dimsOf(op, q, k, v);
  sameShape(op, dout, q.shape, 'dout (like q)');
  sameShape(op, out, q.shape, 'out (like q)');
  sameShape(op, lse, [d.batch, d.headsQ, d.seqQ], 'lse ([batch, headsQ, seqQ])');
  sameDtype(op, dout, q.dtype, 'dout');
  sameDtype(op, out, q.dtype, 'out');
  sameDtype(op, lse, 'f32', 'lse');
  const device = sameDevice(op, dout, q, k, v, out, lse);
  const o = resolveOptions(op, opts, d.headDim);
  if (device !== 'cpu') checkCuda(op, q.dtype, d);
  const dtype = q.dtype as 'f32' | 'f16' | 'bf16';
  const [dq, dk, dv] = allocate([q.shape, k.shape, v.shape], [dtype, dtype, dtype], device);
  try {
    call(() => native().attentionBackward(dout.handle(), q.handle(), k.handle(), v.handle(), out.handle(),
      lse.handle(), dq.handle(), dk.handle(), dv.handle(), o.scale, o.causal, o.qOffset, o.kOffset));
  } catch (e) {
    dq.dispose();
    dk.dispose();
    dv.dispose();
    throw e;
  }
  return { dq, dk, dv };
}

export const attention = { forward, backward };
