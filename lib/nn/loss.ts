// Cross-entropy on a logits chunk, and the LM head + cross-entropy fused and chunked over tokens so the
// [tokens, vocab] logits never exist whole (csrc/ops/cross_entropy; GEMMs through lib/matmul).
import { ArgumentError, DtypeError, ShapeError, callNative as call } from '../errors';
import { matmul } from '../matmul';
import { native } from '../native';
import { Tensor, arg, empty, zeros } from '../tensor';
import { badWord, opts, wrap } from './util';

export interface CrossEntropyOptions {
  /** Rows whose label equals this get loss 0 and a zero gradient (default -100, must not be a class id). */
  ignoreIndex?: number;
  /** Compute dlogits = gradScale·(softmax − onehot) (omit for the loss only). */
  gradScale?: number;
  /** Write dlogits here (logits' shape and dtype; may be exactly `logits`: in place). Needs gradScale. */
  dlogits?: Tensor;
  /** Write the per-row losses here (f32 [N]) instead of a new tensor. */
  losses?: Tensor;
}

/**
 * Per-row cross-entropy of logits [N, V] (f32/f16/bf16, fp32 math, any V) against i32 labels [N]:
 * losses f32 [N] = logsumexp(row) − row[label]. A label outside [0, V) that is not ignoreIndex: CPU: the
 * op fails with ERR_ARG at the next sync point; CUDA: the row is ignored and `nn.checkIds()` reports it.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, options?: CrossEntropyOptions): { losses: Tensor; dlogits?: Tensor } {
  const o = opts<CrossEntropyOptions>('crossEntropy', options);
  return ce(logits, labels, o, undefined);
}

function ce(logits: Tensor, labels: Tensor, o: CrossEntropyOptions, count: Tensor | undefined): { losses: Tensor; dlogits?: Tensor } {
  const h = {
    logits: arg(logits, 'crossEntropy: logits'), labels: arg(labels, 'crossEntropy: labels'),
    losses: o.losses === undefined ? undefined : arg(o.losses, 'crossEntropy: losses'),
    dlogits: o.dlogits === undefined ? undefined : arg(o.dlogits, 'crossEntropy: dlogits'),
    count: count?.handle(),
  };
  const r = call(() => native().crossEntropy({
    ...h, ignoreIndex: o.ignoreIndex, gradScale: o.gradScale, bad: badWord('crossEntropy', logits.device),
  }));
  const out: { losses: Tensor; dlogits?: Tensor } = { losses: o.losses ?? wrap(r.losses, [logits.shape[0]], 'f32', logits.device) };
  if (o.gradScale !== undefined) out.dlogits = o.dlogits ?? wrap(r.dlogits, logits.shape, logits.dtype, logits.device);
  return out;
}

export interface LmHeadLossOptions {
  /** Tokens per chunk (default: about 512 MiB of logits in hidden's dtype, at least 1). */
  chunkTokens?: number;
  /** Label of masked tokens (default -100). */
  ignoreIndex?: number;
  /** f32 [V, H] to accumulate the head's gradient into (+=); default a new zeroed tensor. */
  dweight?: Tensor;
  /**
   * Divide the loss and the gradients by this instead of by the number of non-ignored labels (e.g. the
   * global token count when the batch is split over ranks). Default: the local count, formed on the
   * device (no host sync).
   */
  divisor?: number;
  /**
   * dtype of the logits chunk (and so of the softmax input and dlogits): default hidden's, as PyTorch
   * computes a bf16 model's logits; 'f32' keeps them unrounded at twice the chunk memory (the GEMMs then
   * mix f32 and hidden's dtype).
   */
  logitsDtype?: 'f32' | 'f16' | 'bf16';
}

export interface LmHeadLossResult {
  /** f32 [1]: Σ losses / count (or / divisor). A tensor, so no host sync is needed. */
  loss: Tensor;
  /** i32 [1]: the number of non-ignored labels. */
  count: Tensor;
  /** Gradient of the loss w.r.t. hidden (hidden's shape and dtype). */
  dhidden: Tensor;
  /** f32 [V, H]: the head's gradient (accumulated into `dweight` when given). */
  dweight: Tensor;
}

/**
 * Mean cross-entropy of the LM head, forward and backward, chunked over tokens:
 * per chunk c: logits = h_c·Wᵀ → (in place) dlogits = (softmax − onehot)/count → dh_c = dlogits·W,
 * dW += dlogitsᵀ·h_c (f32). hidden [..., H] (leading dims flattened to N tokens), weight [V, H] (hidden's
 * dtype), labels i32 with N elements. Peak extra memory: one [chunkTokens, V] logits buffer + f32 [N].
 */
export function lmHeadLoss(hidden: Tensor, weight: Tensor, labels: Tensor, options?: LmHeadLossOptions): LmHeadLossResult {
  const o = opts<LmHeadLossOptions>('lmHeadLoss', options);
  arg(hidden, 'lmHeadLoss: hidden');
  arg(weight, 'lmHeadLoss: weight');
  arg(labels, 'lmHeadLoss: labels');
  if (hidden.ndim < 1) throw new ShapeError('lmHeadLoss: hidden must be [..., H]');
  if (weight.ndim !== 2) throw new ShapeError(`lmHeadLoss: weight must be [V, H], got [${weight.shape}]`);
  const H = hidden.shape[hidden.ndim - 1], V = weight.shape[0];
  const N = hidden.numel / Math.max(H, 1);
  if (weight.shape[1] !== H) throw new ShapeError(`lmHeadLoss: weight [${weight.shape}] does not match hidden size ${H}`);
  if (labels.numel !== N) throw new ShapeError(`lmHeadLoss: labels has ${labels.numel} elements, hidden has ${N} tokens`);
  if (labels.dtype !== 'i32') throw new DtypeError(`lmHeadLoss: labels must be i32, got ${labels.dtype}`);
  if (weight.dtype !== hidden.dtype) throw new DtypeError(`lmHeadLoss: weight (${weight.dtype}) and hidden (${hidden.dtype}) dtypes differ`);
  if (o.divisor !== undefined && !(typeof o.divisor === 'number' && o.divisor > 0 && Number.isFinite(o.divisor)))
    throw new ArgumentError('lmHeadLoss: divisor must be a finite number > 0');
  const ldt = o.logitsDtype ?? hidden.dtype;
  if (ldt !== 'f32' && ldt !== 'f16' && ldt !== 'bf16') throw new DtypeError(`lmHeadLoss: logitsDtype must be f32, f16 or bf16, got ${String(ldt)}`);
  let T = o.chunkTokens ?? Math.max(1, Math.floor((512 * 2 ** 20) / (Math.max(V, 1) * (ldt === 'f32' ? 4 : 2))));
  if (!Number.isSafeInteger(T) || T < 1) throw new ArgumentError('lmHeadLoss: chunkTokens must be a positive integer');
  T = Math.min(T, Math.max(N, 1));
  const device = hidden.device;
  if (o.dweight !== undefined) {
    arg(o.dweight, 'lmHeadLoss: dweight');
    if (o.dweight.dtype !== 'f32' || o.dweight.shape.length !== 2 || o.dweight.shape[0] !== V || o.dweight.shape[1] !== H)
      throw new ShapeError(`lmHeadLoss: dweight must be f32 [${V}, ${H}]`);
  }

  const temps: Tensor[] = [];
  const made: Tensor[] = [];
  const t = <X extends Tensor>(x: X, list = temps): X => (list.push(x), x);
  try {
    const h2 = t(hidden.reshape([N, H]));
    const l1 = t(labels.reshape([N]));
    const count = t(empty([1], { dtype: 'i32', device }), made);
    call(() => native().lossCount({ labels: l1.handle(), ignoreIndex: o.ignoreIndex, out: count.handle() }));
    const losses = t(empty([N], { dtype: 'f32', device }));
    const dhidden = t(empty(hidden.shape, { dtype: hidden.dtype, device }), made);
    const dh2 = t(dhidden.reshape([N, H]));
    const dweight = o.dweight ?? t(zeros([V, H], { dtype: 'f32', device }), made);
    const buf = t(empty([T, V], { dtype: ldt, device }));
    const gradScale = o.divisor === undefined ? 1 : 1 / o.divisor;
    for (let t0 = 0; t0 < N; t0 += T) {
      const n = Math.min(T, N - t0);
      const hc = t(h2.narrow(0, t0, n)), lc = t(l1.narrow(0, t0, n)), lossc = t(losses.narrow(0, t0, n));
      const logits = n === T ? buf : t(buf.narrow(0, 0, n));
      const dhc = t(dh2.narrow(0, t0, n));
      matmul(hc, weight, { transB: true, out: logits });                      // [n, V] = h_c · Wᵀ
      ce(logits, lc, { ignoreIndex: o.ignoreIndex, gradScale, dlogits: logits, losses: lossc },
        o.divisor === undefined ? count : undefined);                         // in place -> dlogits
      matmul(logits, weight, { out: dhc });                                    // [n, H] = dlogits · W
      matmul(logits, hc, { transA: true, out: dweight, beta: 1 });             // [V, H] += dlogitsᵀ · h_c
    }
    const loss = t(empty([1], { dtype: 'f32', device }), made);
    call(() => native().lossMean({
      losses: losses.handle(), out: loss.handle(),
      count: o.divisor === undefined ? count.handle() : undefined, divisor: o.divisor,
    }));
    return { loss, count, dhidden, dweight };
  } catch (e) {
    for (const x of made) x.dispose();
    throw e;
  } finally {
    for (const x of temps) x.dispose();
  }
}
