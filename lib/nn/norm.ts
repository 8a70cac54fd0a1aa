// RMSNorm forward/backward (fused residual add). Validity is decided natively (csrc/ops/rmsnorm).
import { callNative as call } from '../errors';
import { native } from '../native';
import { Tensor, arg, zeros } from '../tensor';
import { opts, wrap } from './util';

export interface RmsNormOptions {
  /** Added to mean(x²) before the square root (default 1e-6; Mistral/Llama use rms_norm_eps). */
  eps?: number;
  /** Fused pre-norm residual: h = x + residual (x's dtype) is returned and normalised. */
  residual?: Tensor;
}
export interface RmsNormResult {
  /** Normalised output, x's dtype and shape. */
  y: Tensor;
  /** f32 [rows]: 1 / sqrt(mean(h²) + eps), for the backward. */
  rstd: Tensor;
  /** x + residual (only with `residual`): the residual stream and the backward's `x`. */
  h?: Tensor;
}

/** y = x · rsqrt(mean(x²) + eps) · weight over the last dimension (fp32 statistics). */
export function rmsNorm(x: Tensor, weight: Tensor, options?: RmsNormOptions): RmsNormResult {
  const o = opts<RmsNormOptions>('rmsNorm', options);
  const hx = arg(x, 'rmsNorm: x'), hw = arg(weight, 'rmsNorm: weight');
  const hr = o.residual === undefined ? undefined : arg(o.residual, 'rmsNorm: residual');
  const r = call(() => native().rmsNorm({ x: hx, weight: hw, residual: hr, eps: o.eps }));
  const out: RmsNormResult = {
    y: wrap(r.y, x.shape, x.dtype, x.device),
    rstd: wrap(r.rstd, x.shape.slice(0, -1), 'f32', x.device),
  };
  if (r.h) out.h = wrap(r.h, x.shape, x.dtype, x.device);
  return out;
}

export interface RmsNormBackwardOptions {
  /** f32 [H] to accumulate into (+=); default a new zeroed tensor. */
  dweight?: Tensor;
  /** Accumulate dx into this tensor (x's dtype or f32; may be exactly dy); default a new tensor. */
  dx?: Tensor;
}

/** Gradients of rmsNorm; `x` is the normalised input (h when fused), `rstd` from the forward. */
export function rmsNormBackward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor, options?: RmsNormBackwardOptions):
    { dx: Tensor; dweight: Tensor } {
  const o = opts<RmsNormBackwardOptions>('rmsNormBackward', options);
  const h = {
    dy: arg(dy, 'rmsNormBackward: dy'), x: arg(x, 'rmsNormBackward: x'), weight: arg(weight, 'rmsNormBackward: weight'),
    rstd: arg(rstd, 'rmsNormBackward: rstd'),
    dx: o.dx === undefined ? undefined : arg(o.dx, 'rmsNormBackward: dx'),
    dweight: o.dweight === undefined ? undefined : arg(o.dweight, 'rmsNormBackward: dweight'),
  };
  const own = o.dweight === undefined ? zeros([x.shape[x.ndim - 1] ?? 0], { dtype: 'f32', device: x.device }) : undefined;
  try {
    const r = call(() => native().rmsNormBackward({ ...h, dweight: h.dweight ?? own!.handle() }));
    return { dx: o.dx ?? wrap(r.dx, x.shape, x.dtype, x.device), dweight: o.dweight ?? own! };
  } catch (e) {
    own?.dispose();
    throw e;
  }
}
