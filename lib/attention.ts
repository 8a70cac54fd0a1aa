// Flash attention: softmax(scale * q k^T + causal mask) v without materialising the score matrix.
// q [batch, seqQ, headsQ, headDim], k/v [batch, seqK, headsKv, headDim]; grouped-query attention when
// headsKv < headsQ (q head h reads kv head floor(h / (headsQ / headsKv)); K/V are never expanded).
// Causal with offsets: query i sees key j iff kOffset + j <= qOffset + i, so a shard of a long
// sequence (ring attention) is expressed with its global positions. A query that sees no key gets
// out = 0 and lse = -Infinity (never NaN), and no gradient.
// CPU: f32, f16, bf16, any headDim (f32 accumulation). CUDA: f16, bf16, headDim 64 or 128.
//
// RoPE (the `rope` option): q and k are given un-rotated and rotated inside the call at their positions
// (qOffset + i / kOffset + j, or explicit position tensors), with exactly the arithmetic of rope.apply;
// backward takes the same un-rotated q, k and returns the gradients for them. Today this is a
// composition (rope kernel into temporaries -> attention -> rope backward of dq/dk in place), not yet
// rotation on load inside the attention kernel: see README.md, "RoPE inside attention".
import { ArgumentError, DeviceError, DtypeError, ShapeError, callNative as call } from './errors';
import { show } from './guard';
import { AttentionBackwardKernel, AttentionForwardKernel, native } from './native';
import { RopeApplyOptions, rope as ropeOps } from './rope';
import { Tensor, arg } from './tensor';

/**
 * RoPE inside attention: rope.apply's options (invFreq or base, rotaryDim, style, precision,
 * attentionFactor, and theta results spread in) without the position fields, which attention supplies.
 */
export interface AttentionRopeOptions extends Omit<RopeApplyOptions, 'positions' | 'positionOffset' | 'inplace'> {
  /**
   * int32 [batch, seqQ] positions of the queries, on q's device (any int32). Give qPositions and
   * kPositions together, or neither: then query i is at qOffset + i and key j at kOffset + j.
   * The causal mask always uses qOffset/kOffset, never these tensors.
   */
  qPositions?: Tensor;
  /** int32 [batch, seqK] positions of the keys, on q's device. */
  kPositions?: Tensor;
}

export interface AttentionOptions {
  /** Causal mask (query i sees key j iff kOffset + j <= qOffset + i). Default false. */
  causal?: boolean;
  /** Softmax scale; default 1 / sqrt(headDim). */
  scale?: number;
  /** Global position of query 0 (the causal mask, and RoPE's positions without rope.qPositions); default 0. */
  qOffset?: number;
  /** Global position of key 0 (the causal mask, and RoPE's positions without rope.kPositions); default 0. */
  kOffset?: number;
  /**
   * Rotate q and k by RoPE inside the call (q and k are given un-rotated). Same results as
   * rope.apply on q and k at their positions followed by attention. Default: no RoPE.
   */
  rope?: AttentionRopeOptions;
}

export interface AttentionForwardOptions extends AttentionOptions {
  /**
   * CUDA only: which forward kernel runs. 'auto' (default): the wgmma kernel on sm_90 (headDim 64/128),
   * else mma.sync. 'mma' forces the mma.sync kernel: for comparisons and tests. The CPU ignores it.
   */
  kernel?: AttentionForwardKernel;
}

export interface AttentionBackwardOptions extends AttentionOptions {
  /**
   * CUDA only: which backward kernels run. 'auto' (default): the wgmma kernel on sm_90 for headDim 64/128,
   * else mma.sync. 'mma' / 'mma-small' force the mma.sync kernels (the small tiles even where the big
   * ones fit): for comparisons and tests. The CPU ignores it.
   */
  kernel?: AttentionBackwardKernel;
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

// The native op decides validity (csrc/ops/attention: attention_fwd_check / attention_bwd_check, which
// include the CUDA kernels' limits; csrc/ops/rope: rope_check for the rotation); this file names the
// tensors, rejects unknown options, fills in the default scale and turns the rope option into the two
// rope calls' options (ropePlan, the one place that checks the attention-specific rope fields).
const COMMON_KEYS = ['causal', 'scale', 'qOffset', 'kOffset', 'rope'];
const FORWARD_KEYS = new Set([...COMMON_KEYS, 'kernel']);
const BACKWARD_KEYS = new Set([...COMMON_KEYS, 'kernel']);

function options(op: string, opts: unknown, known: Set<string>, q: Tensor): Record<string, unknown> {
  if (opts === undefined) opts = {};
  if (opts === null || typeof opts !== 'object' || Array.isArray(opts))
    throw new ArgumentError(`${op}: options must be an object`);
  const o = opts as Record<string, unknown>;
  for (const key of Object.keys(o))
    if (!known.has(key)) throw new ArgumentError(`${op}: unknown option ${JSON.stringify(key)}`);
  // Only undefined means "default" (null is passed on, and refused).
  return { ...o, scale: o.scale === undefined ? 1 / Math.sqrt(q.shape[3]) : o.scale };
}

/** How q and k are rotated: one applyQK launch when they share every position, else one call each. */
export interface RopePlan {
  q: RopeApplyOptions;
  k: RopeApplyOptions;
  shared: boolean;
}

// Fields of rope.apply's options that attention supplies itself.
const ROPE_POSITION_KEYS = ['positions', 'positionOffset', 'inplace'];

/**
 * The rope option checked and split into the options of the q and k rotations. The rope op (rope_check)
 * still decides the frequencies, style, precision and ranges; this checks what only attention knows: the
 * position tensors against q/k, and that q, k, v agree enough for the rotation's errors not to mask
 * attention's own (the attention native check stays the authority on those).
 */
function ropePlan(op: string, ro: unknown, q: Tensor, k: Tensor, v: Tensor, qOffset: unknown, kOffset: unknown): RopePlan {
  if (ro === null || typeof ro !== 'object' || Array.isArray(ro) || ro instanceof Tensor)
    throw new ArgumentError(`${op}: rope must be an object of RoPE options (e.g. { base: 10000 }), got ${show(ro)}`);
  const { qPositions, kPositions, ...rest } = ro as Record<string, unknown>;
  for (const key of ROPE_POSITION_KEYS)
    if (key in rest)
      throw new ArgumentError(`${op}: rope.${key} is not an attention option (positions are qOffset + i / kOffset + j, ` +
        'or rope.qPositions and rope.kPositions)');
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const)
    if (t.ndim !== 4) throw new ShapeError(`${op}: ${n} must be [batch, seq, heads, headDim], got [${t.shape}]`);
  if (k.shape[0] !== q.shape[0] || k.shape[3] !== q.shape[3])
    throw new ShapeError(`${op}: q [${q.shape}] and k [${k.shape}] must share batch and headDim`);
  if (v.shape.some((d, i) => d !== k.shape[i])) throw new ShapeError(`${op}: v [${v.shape}] must have k's shape [${k.shape}]`);
  for (const [t, n] of [[k, 'k'], [v, 'v']] as const) {
    if (t.dtype !== q.dtype) throw new DtypeError(`${op}: ${n} is ${t.dtype}, q is ${q.dtype}`);
    if (t.device !== q.device) throw new DeviceError(`${op}: ${n} is on ${t.device}, q on ${q.device}`);
  }
  const [B, Sq] = q.shape, Sk = k.shape[1];
  if ((qPositions === undefined) !== (kPositions === undefined))
    throw new ArgumentError(`${op}: give rope.qPositions and rope.kPositions together, or neither (then the positions are ` +
      'qOffset + i and kOffset + j)');
  if (qPositions !== undefined) {
    for (const [p, n, S] of [[qPositions, 'qPositions', Sq], [kPositions, 'kPositions', Sk]] as const) {
      arg(p, `${op}: rope.${n}`);
      const t = p as Tensor;
      if (t.dtype !== 'i32') throw new DtypeError(`${op}: rope.${n} must be i32, got ${t.dtype}`);
      if (t.ndim !== 2 || t.shape[0] !== B || t.shape[1] !== S)
        throw new ShapeError(`${op}: rope.${n} must be [batch, ${n === 'qPositions' ? 'seqQ' : 'seqK'}] = [${B}, ${S}], got [${t.shape}]`);
      if (t.device !== q.device) throw new DeviceError(`${op}: rope.${n} is on ${t.device}, q on ${q.device}`);
    }
    return {
      q: { ...rest, positions: qPositions as Tensor }, k: { ...rest, positions: kPositions as Tensor },
      shared: qPositions === kPositions,
    };
  }
  // The rope op checks these too, but its message would name positionOffset, which the caller never gave.
  for (const [x, n, S] of [[qOffset, 'qOffset', Sq], [kOffset, 'kOffset', Sk]] as const)
    if (typeof x === 'number' && Number.isSafeInteger(x) && (x < 0 || x + S - 1 > 2 ** 31 - 1))
      throw new ArgumentError(`${op}: with rope, ${n} + seq - 1 must be in [0, 2^31 - 1] (RoPE positions are int32), ` +
        `got ${n} ${x} with seq ${S}; negative positions need rope.qPositions/kPositions`);
  // undefined stays undefined (the rope op's default 0); anything else is checked by the rope op.
  return {
    q: { ...rest, positionOffset: qOffset as number | undefined }, k: { ...rest, positionOffset: kOffset as number | undefined },
    shared: (qOffset ?? 0) === (kOffset ?? 0) && Sq === Sk,
  };
}

/** q and k rotated into new tensors (disposed again if the second rotation is refused). */
function rotate(plan: RopePlan, q: Tensor, k: Tensor): { q: Tensor; k: Tensor } {
  if (plan.shared) return ropeOps.applyQK(q, k, plan.q);
  const qr = ropeOps.apply(q, plan.q);
  try {
    return { q: qr, k: ropeOps.apply(k, plan.k) };
  } catch (e) {
    qr.dispose();
    throw e;
  }
}

/** dq and dk (gradients in the rotated space) rotated back in place: the gradients for un-rotated q, k. */
function unrotate(plan: RopePlan, dq: Tensor, dk: Tensor): void {
  if (plan.shared) ropeOps.backwardQK(dq, dk, { ...plan.q, inplace: true });
  else {
    ropeOps.backward(dq, { ...plan.q, inplace: true });
    ropeOps.backward(dk, { ...plan.k, inplace: true });
  }
}

/**
 * @internal q and k rotated per a rope option, into new tensors (ring attention rotates its shards once,
 * before the ring, with it); `plan` undoes it on the gradients with ropeUnrotate. Same checks as the
 * rope option of attention.forward.
 */
export function ropeRotate(op: string, ro: unknown, q: Tensor, k: Tensor, v: Tensor, qOffset: unknown, kOffset: unknown):
    { q: Tensor; k: Tensor; plan: RopePlan } {
  const plan = ropePlan(op, ro, q, k, v, qOffset, kOffset);
  return { ...rotate(plan, q, k), plan };
}
/** @internal dq, dk of the rotated q, k rotated back in place (the gradients for the un-rotated ones). */
export function ropeUnrotate(plan: RopePlan, dq: Tensor, dk: Tensor): void {
  unrotate(plan, dq, dk);
}

function forwardNative(q: Tensor, k: Tensor, v: Tensor, o: Record<string, unknown>): AttentionForwardResult {
  const r = call(() => native().attentionForward({ q: q.handle(), k: k.handle(), v: v.handle(), ...(o as { scale: number }) }));
  return {
    out: new Tensor(r.out, q.shape, q.dtype, q.device),
    lse: new Tensor(r.lse, [q.shape[0], q.shape[2], q.shape[1]], 'f32', q.device),
  };
}

/**
 * Attention forward: returns out (q's dtype and device) and lse (f32 [batch, headsQ, seqQ]). With `rope`,
 * q and k are un-rotated and rotated inside the call (the rotated copies are temporaries).
 */
function forward(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionForwardOptions): AttentionForwardResult {
  const op = 'attention.forward';
  arg(q, `${op}: q`); arg(k, `${op}: k`); arg(v, `${op}: v`);
  const { rope: ro, ...o } = options(op, opts, FORWARD_KEYS, q);
  if (ro === undefined) return forwardNative(q, k, v, o);
  const plan = ropePlan(op, ro, q, k, v, o.qOffset, o.kOffset);
  const r = rotate(plan, q, k);
  // Disposing right after the launch is safe: queued work holds its storages until it has run.
  try {
    return forwardNative(r.q, r.k, v, o);
  } finally {
    r.q.dispose();
    r.k.dispose();
  }
}

function backwardNative(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    o: Record<string, unknown>): AttentionBackwardResult {
  const r = call(() => native().attentionBackward({
    dout: dout.handle(), q: q.handle(), k: k.handle(), v: v.handle(), out: out.handle(), lse: lse.handle(),
    ...(o as { scale: number }),
  }));
  return {
    dq: new Tensor(r.dq, q.shape, q.dtype, q.device),
    dk: new Tensor(r.dk, k.shape, q.dtype, q.device),
    dv: new Tensor(r.dv, v.shape, q.dtype, q.device),
  };
}

/**
 * Attention backward: gradients of sum(out * dout) for q, k, v, given forward's out and lse and the
 * same options. dk/dv sum over the q heads that share each kv head. With `rope`, q and k are the
 * un-rotated inputs given to forward, and dq, dk are the gradients for them (RoPE is recomputed, the
 * attention gradients are rotated back by rope.backward); dv is unchanged by RoPE.
 */
function backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    opts?: AttentionBackwardOptions): AttentionBackwardResult {
  const op = 'attention.backward';
  arg(dout, `${op}: dout`); arg(q, `${op}: q`); arg(k, `${op}: k`); arg(v, `${op}: v`);
  arg(out, `${op}: out`); arg(lse, `${op}: lse`);
  const { rope: ro, ...o } = options(op, opts, BACKWARD_KEYS, q);
  if (ro === undefined) return backwardNative(dout, q, k, v, out, lse, o);
  const plan = ropePlan(op, ro, q, k, v, o.qOffset, o.kOffset);
  const r = rotate(plan, q, k);
  try {
    const g = backwardNative(dout, r.q, r.k, v, out, lse, o);
    try {
      unrotate(plan, g.dq, g.dk);
    } catch (e) {
      g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
      throw e;
    }
    return g;
  } finally {
    r.q.dispose();
    r.k.dispose();
  }
}

export const attention = { forward, backward };
