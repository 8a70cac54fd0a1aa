// Token embedding lookup and its scatter-add backward (csrc/ops/embedding).
import { Dtype } from '../dtype';
import { callNative as call } from '../errors';
import { native } from '../native';
import { Tensor, arg } from '../tensor';
import { badWord, opts, wrap } from './util';

/**
 * out[..., :] = weight[ids[...], :]: ids i32 (any shape, e.g. [B, S]), weight [V, H] -> [...ids.shape, H]
 * in `dtype` (default weight's). An id outside [0, V): CPU: the op fails with ERR_ARG at the next sync
 * point; CUDA: its row is zeroed and `nn.checkIds()` reports it.
 */
export function embedding(ids: Tensor, weight: Tensor, options?: { dtype?: Dtype }): Tensor {
  const o = opts<{ dtype?: Dtype }>('embedding', options);
  const hi = arg(ids, 'embedding: ids'), hw = arg(weight, 'embedding: weight');
  const h = call(() => native().embedding({ ids: hi, weight: hw, dtype: o.dtype, bad: badWord('embedding', weight.device) }));
  return wrap(h, [...ids.shape, weight.shape[1] ?? 0], o.dtype ?? weight.dtype, weight.device);
}

/**
 * dweight[ids[t], :] += dy[t, :] (f32 [V, H], accumulated; deterministic on the CPU, f32 atomics on
 * CUDA). Returns dweight.
 */
export function embeddingBackward(dy: Tensor, ids: Tensor, dweight: Tensor): Tensor {
  const h = { dy: arg(dy, 'embeddingBackward: dy'), ids: arg(ids, 'embeddingBackward: ids'), dweight: arg(dweight, 'embeddingBackward: dweight') };
  call(() => native().embeddingBackward({ ...h, bad: badWord('embeddingBackward', dweight.device) }));
  return dweight;
}
