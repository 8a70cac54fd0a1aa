import t from 'tap';
import { AdamW, gradNorm, schedules, randn, scale, zeros } from '../lib/index';
import { native } from '../lib/native';
import { throwsCode } from './helpers/assert';
import { gpu, testDevices } from './helpers/devices';
import { roundBf16 } from '../lib/dtype';

interface Hyper { lr: number; b1: number; b2: number; eps: number; wd: number; clip: number }

// float64 AdamW (PyTorch's order: decoupled decay, moments, bias-corrected update), global-norm clip.
function refAdamW(p: Float64Array, grads: Float64Array[], o: Hyper): Float64Array {
  const m = new Float64Array(p.length), v = new Float64Array(p.length);
  const w = Float64Array.from(p);
  grads.forEach((g, k) => {
    const step = k + 1;
    let c = 1;
    if (o.clip) c = Math.min(1, o.clip / (Math.sqrt(g.reduce((s, x) => s + x * x, 0)) + 1e-6));
    for (let i = 0; i < w.length; i++) {
      const gi = g[i] * c;
      w[i] *= 1 - o.lr * o.wd;
      m[i] = o.b1 * m[i] + (1 - o.b1) * gi;
      v[i] = o.b2 * v[i] + (1 - o.b2) * gi * gi;
      w[i] -= o.lr * (m[i] / (1 - o.b1 ** step)) / (Math.sqrt(v[i] / (1 - o.b2 ** step)) + o.eps);
    }
  });
  return w;
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0, s = 0;
  for (let i = 0; i < a.length; i++) { e = Math.max(e, Math.abs(a[i] - b[i])); s = Math.max(s, Math.abs(b[i])); }
  return e / s;
}

for (const device of testDevices) {
  t.test(`AdamW matches a float64 reference (${device})`, async (t) => {
    const n = 4099, steps = 6;
    for (const [dtype, clip, wd] of [['f32', 0, 0.1], ['bf16', 0, 0.1], ['f32', 0.5, 0], ['bf16', 2, 0.05]] as const) {
      const o: Hyper = { lr: 1e-2, b1: 0.9, b2: 0.95, eps: 1e-8, wd, clip };
      const param = randn([n], { seed: 5, dtype, device });
      const p0 = Float64Array.from(await param.toArray());
      const grad = randn([n], { seed: 6, dtype: 'bf16', device });
      const opt = new AdamW([{ name: 'w', param, grad }],
        { lr: o.lr, betas: [o.b1, o.b2], eps: o.eps, weightDecay: o.wd, maxGradNorm: clip });
      const gs: Float64Array[] = [];
      for (let s = 0; s < steps; s++) {
        const g = randn([n], { seed: 100 + s, std: 0.3, dtype: 'bf16', device });
        scale(g, 1, { out: grad });
        gs.push(Float64Array.from(await g.toArray()));
        g.dispose();
        await opt.step();
      }
      const ref = refAdamW(p0, gs, o);
      const got = await param.toArray();
      const st = opt.state().tensors;
      if (dtype === 'f32') {
        t.ok(maxRel(got, ref) < 2e-5, `${dtype} clip=${clip}: param within f32 rounding of float64 (${maxRel(got, ref).toExponential(2)})`);
        t.notOk(st.has('w.master'), 'f32 params keep no master copy');
      } else {
        const master = await st.get('w.master')!.toArray();
        t.ok(maxRel(master, ref) < 2e-5, `${dtype} clip=${clip}: f32 master within rounding of float64 (${maxRel(master, ref).toExponential(2)})`);
        t.ok(got.every((x, i) => x === roundBf16(master[i])), 'bf16 param is the master rounded once');
      }
      t.equal(opt.stepCount, steps);
      opt.dispose(); param.dispose(); grad.dispose();
    }
  });

  t.test(`gradNorm and decay-free parameters (${device})`, async (t) => {
    const a = randn([1000], { seed: 1, device }), b = randn([37], { seed: 2, dtype: 'bf16', device });
    const [av, bv] = [await a.toArray(), await b.toArray()];
    let ss = 0;
    for (const x of [...av, ...bv]) ss += x * x;
    const got = await gradNorm([a, b]);
    t.ok(Math.abs(got - Math.sqrt(ss)) / Math.sqrt(ss) < 1e-6, `gradNorm ${got} vs ${Math.sqrt(ss)}`);
    // decay: false -> the weight decay term is skipped for that tensor only
    const p1 = randn([64], { seed: 3, device }), p2 = randn([64], { seed: 3, device });
    const g = zeros([64], { device });  // zero grads: only decay moves the weights (Adam step of 0 is 0)
    const opt = new AdamW([{ name: 'a', param: p1, grad: g }, { name: 'b', param: p2, grad: g, decay: false }],
      { lr: 0.1, weightDecay: 0.5 });
    const before = await p1.toArray();
    await opt.step();
    const [x1, x2] = [await p1.toArray(), await p2.toArray()];
    t.ok(x1.every((x, i) => x === Math.fround(before[i] * Math.fround(1 - Math.fround(0.1 * 0.5)))), 'decayed tensor scaled by 1 − lr·wd');
    t.same(Array.from(x2), Array.from(before), 'decay: false tensor unchanged');
    for (const x of [a, b, p1, p2, g]) x.dispose();
    opt.dispose();
  });
}

t.test('AdamW state round trip resumes the same trajectory', async (t) => {
  const mk = () => randn([300], { seed: 9, dtype: 'bf16' });
  const pa = mk(), pb = mk(), g = randn([300], { seed: 10 });
  const A = new AdamW([{ name: 'w', param: pa, grad: g }], { lr: 3e-3, weightDecay: 0.01 });
  await A.step(); await A.step();
  const B = new AdamW([{ name: 'w', param: pb, grad: g }], { lr: 3e-3, weightDecay: 0.01 });
  scale(pa, 1, { out: pb });
  B.loadState(A.state());
  t.equal(B.stepCount, 2);
  await A.step({ lr: 1e-3 }); await B.step({ lr: 1e-3 });
  t.same(Array.from(await pb.toArray()), Array.from(await pa.toArray()), 'bit-identical after resuming');
  A.dispose(); B.dispose(); pa.dispose(); pb.dispose(); g.dispose();
});

t.test('schedules', async (t) => {
  const s = schedules.warmupCosine({ peak: 1, warmup: 10, total: 110, min: 0.1 });
  t.equal(s(5), 0.5);
  t.equal(s(10), 1);
  t.ok(Math.abs(s(60) - 0.55) < 1e-12, 'half way through the cosine');
  t.ok(Math.abs(s(110) - 0.1) < 1e-12 && Math.abs(s(500) - 0.1) < 1e-12, 'ends at min and stays');
  const l = schedules.warmupLinear({ peak: 2, warmup: 0, total: 10 });
  t.equal(l(5), 1);
  throwsCode(t, () => schedules.warmupCosine({ peak: 1, warmup: -1, total: 10 }), 'ERR_ARG');
});

t.test('AdamW errors', async (t) => {
  const p = randn([8], { seed: 1 }), g = randn([8], { seed: 2 }), g9 = randn([9], { seed: 3 });
  throwsCode(t, () => new AdamW([], { lr: 1 }), 'ERR_ARG', 'no params');
  throwsCode(t, () => new AdamW([{ name: 'w', param: p, grad: g }], { lr: -1 }), 'ERR_ARG', 'negative lr');
  throwsCode(t, () => new AdamW([{ name: 'w', param: p, grad: g }], { lr: 1, betas: [1, 0.9] }), 'ERR_ARG', 'beta1 = 1');
  throwsCode(t, () => new AdamW([{ name: 'w', param: p, grad: g9 }], { lr: 1 }), 'ERR_ARG', 'size mismatch');
  throwsCode(t, () => new AdamW([{ name: 'w', param: p, grad: g }, { name: 'w', param: p, grad: g }], { lr: 1 }), 'ERR_ARG', 'duplicate names');
  const i = zeros([8], { dtype: 'i32' });
  throwsCode(t, () => new AdamW([{ name: 'w', param: i, grad: g }], { lr: 1 }), 'ERR_UNSUPPORTED', 'i32 param');
  // the native check on its own
  const m = zeros([8]), v = zeros([8]);
  t.throws(() => (native().adamw as (o: unknown) => unknown)({ param: p.handle(), grad: g.handle(), m: m.handle(), v: m.handle(), lr: 1, step: 1 }),
    /ERR_ARG: adamw: .*must not share memory/, 'm and v aliased');
  t.throws(() => (native().adamw as (o: unknown) => unknown)({ param: p.handle(), grad: g.handle(), m: m.handle(), v: v.handle(), lr: 1, step: 0 }),
    /ERR_ARG: adamw: step must be >= 1/);
  t.throws(() => (native().adamw as (o: unknown) => unknown)({ param: p.handle(), grad: g.handle(), m: m.handle(), v: v.handle(), lr: 1, step: 1, lrr: 2 }),
    /unknown option 'lrr'/);
  for (const x of [p, g, g9, i, m, v]) x.dispose();
});

t.test('CUDA AdamW equals the CPU bit for bit', gpu, async (t) => {
  const n = 100003;
  const run = async (device: 'cpu' | 'cuda') => {
    const p = randn([n], { seed: 21, dtype: 'bf16', device }), g = randn([n], { seed: 22, device });
    const opt = new AdamW([{ name: 'w', param: p, grad: g }], { lr: 1e-3, weightDecay: 0.1 });
    await opt.step(); await opt.step({ lr: 5e-4, gradScale: 0.5 });
    const out = await opt.state().tensors.get('w.master')!.toArray();
    opt.dispose(); p.dispose(); g.dispose();
    return out;
  };
  const [c, d] = [await run('cpu'), await run('cuda')];
  t.ok(c.every((x, i) => x === d[i]), 'identical master weights');
});
