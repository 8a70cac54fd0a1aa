// Directional finite-difference checks of a backward (attention, attention + RoPE): along a random direction
// `dir` of one input, <grad, dir> against the central difference of the float64 reference forward (step 1e-6),
// and against the op's own f32 forward (steps of 2e-3 on the stored f32 values, with <grad, actual rounded step>).
import { Test } from 'tap';

export const dot = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};
// The scale of a dot product's rounding is the sum of its terms' magnitudes, not its value: a random
// direction can make <grad, dir> nearly cancel (attention, TEST_SEED=575659859: a dk projection of 1e-3 from
// terms summing to 68), and judging by |value| alone then counted rounding noise as an error.
export const absDot = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i] * b[i]);
  return s;
};

export interface DirectionalCheck {
  name: string;                       // 'dq', 'dk', ...
  x0: ArrayLike<number>;              // the input's stored (f32) values
  dir: ArrayLike<number>;
  grad: ArrayLike<number>;            // the op's backward for this input
  refGrad?: ArrayLike<number>;        // a float64 reference backward, judged by the same central difference
  refLoss: (h: number) => number;     // the float64 reference loss at x0 + h * dir
  f32Loss: (x: Float32Array) => Promise<number>;  // the op's own loss at x (f32 values)
}

export async function directionalChecks(tt: Test, c: DirectionalCheck): Promise<void> {
  const h = 1e-6;
  const exact = (c.refLoss(h) - c.refLoss(-h)) / (2 * h);
  const terms = absDot(c.refGrad ?? c.grad, c.dir);
  const mag = Math.max(Math.abs(exact), terms);
  const op = dot(c.grad, c.dir);
  tt.ok(terms > 1e-3, `${c.name}: the gradient is not trivially 0 (sum |grad_i dir_i| ${terms.toExponential(2)})`);
  tt.ok(Math.abs(op - exact) <= 1e-4 * mag,
    `${c.name}: op <grad, dir> ${op.toExponential(6)} vs reference central difference ${exact.toExponential(6)} (terms ${terms.toExponential(2)})`);
  if (c.refGrad) {
    const reference = dot(c.refGrad, c.dir);
    tt.ok(Math.abs(reference - exact) <= 1e-6 * mag, `${c.name}: reference <grad, dir> ${reference.toExponential(6)} (validates the reference)`);
  }
  const eps = 2e-3;
  const plus = Float32Array.from(c.x0, (a, i) => a + eps * c.dir[i]);
  const minus = Float32Array.from(c.x0, (a, i) => a - eps * c.dir[i]);
  const step = Float64Array.from(plus, (a, i) => (a - minus[i]) / 2);
  const fd = ((await c.f32Loss(plus)) - (await c.f32Loss(minus))) / 2;
  const predicted = dot(c.grad, step);
  tt.ok(Math.abs(predicted - fd) <= 1e-2 * Math.max(Math.abs(predicted), absDot(c.grad, step), 1e-6),
    `${c.name}: op <grad, step> ${predicted.toExponential(4)} vs the op's f32 difference ${fd.toExponential(4)}`);
}
