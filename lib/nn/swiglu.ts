// SwiGLU: silu(gate)·up in one pass (csrc/ops/swiglu).
import { callNative as call } from '../errors';
import { native } from '../native';
import { Tensor, arg } from '../tensor';
import { opts, wrap } from './util';

/** y = silu(gate) · up (same shape and dtype; fp32 math). `out` may be exactly gate or up. */
export function swiglu(gate: Tensor, up: Tensor, options?: { out?: Tensor }): Tensor {
  const o = opts<{ out?: Tensor }>('swiglu', options);
  const h = { gate: arg(gate, 'swiglu: gate'), up: arg(up, 'swiglu: up'), out: o.out === undefined ? undefined : arg(o.out, 'swiglu: out') };
  const y = call(() => native().swiglu(h));
  return o.out ?? wrap(y, gate.shape, gate.dtype, gate.device);
}

export interface SwigluBackwardOptions {
  /** Write dgate here (may be exactly gate, up or dy: in place). */
  dgate?: Tensor;
  /** Write dup here (may be exactly gate, up or dy; not dgate). */
  dup?: Tensor;
}

/** dgate = dy·up·σ(g)(1 + g(1 − σ(g))), dup = dy·silu(g). */
export function swigluBackward(dy: Tensor, gate: Tensor, up: Tensor, options?: SwigluBackwardOptions): { dgate: Tensor; dup: Tensor } {
  const o = opts<SwigluBackwardOptions>('swigluBackward', options);
  const h = {
    dy: arg(dy, 'swigluBackward: dy'), gate: arg(gate, 'swigluBackward: gate'), up: arg(up, 'swigluBackward: up'),
    dgate: o.dgate === undefined ? undefined : arg(o.dgate, 'swigluBackward: dgate'),
    dup: o.dup === undefined ? undefined : arg(o.dup, 'swigluBackward: dup'),
  };
  const r = call(() => native().swigluBackward(h));
  return {
    dgate: o.dgate ?? wrap(r.dgate, gate.shape, gate.dtype, gate.device),
    dup: o.dup ?? wrap(r.dup, gate.shape, gate.dtype, gate.device),
  };
}
