// Flash attention: softmax(scale * q k^T + causal mask) v without materialising the score matrix.
// q [batch, seqQ, headsQ, headDim], k/v [batch, seqK, headsKv, headDim]; grouped-query attention when
// headsKv < headsQ (q head h reads kv head floor(h / (headsQ / headsKv)); K/V are never expanded).
// Causal with offsets: query i sees key j iff kOffset + j <= qOffset + i, so a shard of a long
// sequence (ring attention) is expressed with its global positions. A query that sees no key gets
// out = 0 and lse = -Infinity (never NaN), and no gradient.
// CPU: f32, f16, bf16, any headDim (f32 accumulation). CUDA: f16, bf16, headDim 64 or 128.
import { ArgumentError, callNative as call } from './errors';
import { AttentionBackwardKernel, AttentionForwardKernel, native } from './native';
import { Tensor, arg } from './tensor';

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

export interface AttentionForwardOptions extends AttentionOptions {
  /**
   * CUDA only: which forward kernel runs. 'auto' (default): the wgmma kernel on sm_90 (headDim 64/128),
   * else mma.sync. 'mma' forces the mma.sync kernel: for comparisons and tests. The CPU ignores it.
   */
  kernel?: AttentionForwardKernel;
}

export interface AttentionBackwardOptions extends AttentionOptions {
  /**
   * CUDA only: which backward kernels run. 'auto' (default): the wgmma kernel on sm_90 for headDim 128,
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
// include the CUDA kernels' limits); this file names the tensors, rejects unknown options and fills in
// the default scale.
const COMMON_KEYS = ['causal', 'scale', 'qOffset', 'kOffset'];
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

/** Attention forward: returns out (q's dtype and device) and lse (f32 [batch, headsQ, seqQ]). */
function forward(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionForwardOptions): AttentionForwardResult {
  const op = 'attention.forward';
  const h = { q: arg(q, `${op}: q`), k: arg(k, `${op}: k`), v: arg(v, `${op}: v`) };
  const o = options(op, opts, FORWARD_KEYS, q);
  const r = call(() => native().attentionForward({ ...h, ...(o as { scale: number }) }));
  return {
    out: new Tensor(r.out, q.shape, q.dtype, q.device),
    lse: new Tensor(r.lse, [q.shape[0], q.shape[2], q.shape[1]], 'f32', q.device),
  };
}

/**
 * Attention backward: gradients of sum(out * dout) for q, k, v, given forward's out and lse and the
 * same options. dk/dv sum over the q heads that share each kv head.
 */
function backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    opts?: AttentionBackwardOptions): AttentionBackwardResult {
  const op = 'attention.backward';
  const h = {
    dout: arg(dout, `${op}: dout`), q: arg(q, `${op}: q`), k: arg(k, `${op}: k`), v: arg(v, `${op}: v`),
    out: arg(out, `${op}: out`), lse: arg(lse, `${op}: lse`),
  };
  const o = options(op, opts, BACKWARD_KEYS, q);
  const r = call(() => native().attentionBackward({ ...h, ...(o as { scale: number }) }));
  return {
    dq: new Tensor(r.dq, q.shape, q.dtype, q.device),
    dk: new Tensor(r.dk, k.shape, q.dtype, q.device),
    dv: new Tensor(r.dv, v.shape, q.dtype, q.device),
  };
}

export const attention = { forward, backward };
