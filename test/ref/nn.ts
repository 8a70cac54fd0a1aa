// Independent float64 references for the layer ops (no native code, no lib/ imports).
// Inputs are the values as stored (read back from the tensors); outputs are exact float64 results,
// except where the op's spec stores an intermediate in the tensor dtype (the fused residual h).
import { RefDtype, roundTo } from './rope';

export { roundTo };

export function rmsNormRef(x: ArrayLike<number>, w: ArrayLike<number>, rows: number, H: number, eps: number,
  opt: { residual?: ArrayLike<number>; dtype?: RefDtype } = {}): { y: Float64Array; rstd: Float64Array; h: Float64Array } {
  const h = new Float64Array(rows * H);
  for (let i = 0; i < rows * H; i++)
    h[i] = opt.residual ? roundTo(opt.dtype ?? 'f32', x[i] + opt.residual[i]) : x[i];
  const y = new Float64Array(rows * H), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < H; c++) ss += h[r * H + c] ** 2;
    const rs = 1 / Math.sqrt(ss / H + eps);
    rstd[r] = rs;
    for (let c = 0; c < H; c++) y[r * H + c] = h[r * H + c] * rs * w[c];
  }
  return { y, rstd, h };
}

/** Gradients of y = x·rstd(x)·w, with rstd recomputed from x in float64. */
export function rmsNormBackwardRef(dy: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, rows: number,
  H: number, eps: number): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(rows * H), dw = new Float64Array(H);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let c = 0; c < H; c++) ss += x[r * H + c] ** 2;
    const rs = 1 / Math.sqrt(ss / H + eps);
    // d/dx_j of x_i·rs·w_i = rs·w_i·δij − x_i·w_i·rs³·x_j/H
    let dot = 0;
    for (let c = 0; c < H; c++) dot += dy[r * H + c] * w[c] * x[r * H + c];
    for (let c = 0; c < H; c++) {
      dx[r * H + c] = rs * dy[r * H + c] * w[c] - (rs ** 3) * x[r * H + c] * dot / H;
      dw[c] += dy[r * H + c] * x[r * H + c] * rs;
    }
  }
  return { dx, dw };
}

const sigmoid = (g: number): number => 1 / (1 + Math.exp(-g));

export function swigluRef(g: ArrayLike<number>, u: ArrayLike<number>): Float64Array {
  return Float64Array.from({ length: g.length }, (_, i) => g[i] * sigmoid(g[i]) * u[i]);
}

export function swigluBackwardRef(dy: ArrayLike<number>, g: ArrayLike<number>, u: ArrayLike<number>): { dgate: Float64Array; dup: Float64Array } {
  const n = g.length, dgate = new Float64Array(n), dup = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = sigmoid(g[i]);
    dup[i] = dy[i] * g[i] * s;
    dgate[i] = dy[i] * u[i] * (s + g[i] * s * (1 - s));
  }
  return { dgate, dup };
}

export function embeddingBackwardRef(dy: ArrayLike<number>, ids: ArrayLike<number>, V: number, H: number,
  init?: ArrayLike<number>): Float64Array {
  const dw = init ? Float64Array.from(init) : new Float64Array(V * H);
  for (let t = 0; t < ids.length; t++)
    for (let c = 0; c < H; c++) dw[ids[t] * H + c] += dy[t * H + c];
  return dw;
}

/** losses[r] and dlogits = scale·(softmax − onehot); ignored rows 0. */
export function crossEntropyRef(logits: ArrayLike<number>, labels: ArrayLike<number>, rows: number, V: number,
  ignoreIndex: number, scale: number): { losses: Float64Array; dlogits: Float64Array } {
  const losses = new Float64Array(rows), dlogits = new Float64Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const l = labels[r];
    if (l === ignoreIndex) continue;
    let m = -Infinity;
    for (let c = 0; c < V; c++) m = Math.max(m, logits[r * V + c]);
    let s = 0;
    for (let c = 0; c < V; c++) s += Math.exp(logits[r * V + c] - m);
    losses[r] = m + Math.log(s) - logits[r * V + l];
    for (let c = 0; c < V; c++) dlogits[r * V + c] = scale * (Math.exp(logits[r * V + c] - m) / s - (c === l ? 1 : 0));
  }
  return { losses, dlogits };
}

/** The LM head loss, unfused: logits = h·Wᵀ in float64, mean CE over non-ignored rows and its gradients. */
export function lmHeadLossRef(h: ArrayLike<number>, w: ArrayLike<number>, labels: ArrayLike<number>, N: number, V: number,
  H: number, ignoreIndex: number, divisor?: number): { loss: number; count: number; dh: Float64Array; dw: Float64Array } {
  const logits = new Float64Array(N * V);
  for (let t = 0; t < N; t++)
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < H; c++) s += h[t * H + c] * w[v * H + c];
      logits[t * V + v] = s;
    }
  let count = 0;
  for (let t = 0; t < N; t++) if (labels[t] !== ignoreIndex) count++;
  const d = divisor ?? Math.max(count, 1);
  const { losses, dlogits } = crossEntropyRef(logits, labels, N, V, ignoreIndex, 1 / d);
  const dh = new Float64Array(N * H), dw = new Float64Array(V * H);
  for (let t = 0; t < N; t++)
    for (let v = 0; v < V; v++) {
      const g = dlogits[t * V + v];
      if (g === 0) continue;
      for (let c = 0; c < H; c++) {
        dh[t * H + c] += g * w[v * H + c];
        dw[v * H + c] += g * h[t * H + c];
      }
    }
  return { loss: losses.reduce((a, b) => a + b, 0) / d, count, dh, dw };
}
