// Independent float64 reference for matmul (no native code, no lib/ imports): the textbook triple loop.
// a [..., M, K] (or [..., K, M] with transA), b [..., K, N] (or [..., N, K] with transB); batch dims equal,
// or one side 2-D and broadcast. out = alpha·op(a)·op(b) + beta·c. Also returns Σ_k |a·b| per element,
// the scale of the rounding error any fp32 accumulation may make.

export interface MatmulRefOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
  c?: ArrayLike<number>;  // old out (read only when beta != 0)
}

export interface MatmulRef {
  out: Float64Array;
  absSum: Float64Array;
  shape: number[];
}

export function matmulRef(a: ArrayLike<number>, aShape: readonly number[], b: ArrayLike<number>, bShape: readonly number[],
  o: MatmulRefOptions = {}): MatmulRef {
  const ra = aShape.length, rb = bShape.length;
  const batchShape = rb === 2 ? aShape.slice(0, -2) : bShape.slice(0, -2);
  const batch = batchShape.reduce((x, y) => x * y, 1);
  const [a0, a1] = [aShape[ra - 2], aShape[ra - 1]];
  const [b0, b1] = [bShape[rb - 2], bShape[rb - 1]];
  const M = o.transA ? a1 : a0, K = o.transA ? a0 : a1;
  const N = o.transB ? b0 : b1;
  if ((o.transB ? b1 : b0) !== K) throw new Error('matmulRef: inner dimensions differ');
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0;
  const out = new Float64Array(batch * M * N), absSum = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ao = ra === 2 ? 0 : z * a0 * a1, bo = rb === 2 ? 0 : z * b0 * b1;
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0, sa = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (o.transA ? k * a1 + i : i * a1 + k)];
          const bv = b[bo + (o.transB ? j * b1 + k : k * b1 + j)];
          s += av * bv;
          sa += Math.abs(av * bv);
        }
        const idx = (z * M + i) * N + j;
        out[idx] = alpha * s + (beta !== 0 ? beta * o.c![idx] : 0);
        absSum[idx] = Math.abs(alpha) * sa + (beta !== 0 ? Math.abs(beta * o.c![idx]) : 0);
      }
  }
  return { out, absSum, shape: [...batchShape, M, N] };
}

/** One element of op(a)·op(b) for 2-D a, b (sampled checks of large products). */
export function matmulRefAt(a: ArrayLike<number>, aShape: readonly number[], b: ArrayLike<number>, bShape: readonly number[],
  i: number, j: number, o: { transA?: boolean; transB?: boolean } = {}): { value: number; absSum: number } {
  const [, a1] = aShape, [, b1] = bShape;
  const K = o.transA ? aShape[0] : a1;
  let s = 0, sa = 0;
  for (let k = 0; k < K; k++) {
    const av = a[o.transA ? k * a1 + i : i * a1 + k];
    const bv = b[o.transB ? j * b1 + k : k * b1 + j];
    s += av * bv;
    sa += Math.abs(av * bv);
  }
  return { value: s, absSum: sa };
}
