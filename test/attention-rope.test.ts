// Attention with the `rope` option (q and k rotated inside the call) against an independent float64
// reference: RoPE of q and k in float64 (test/ref/rope.ts, exact angles), then float64 attention
// (test/ref/attention.ts); backward's dq/dk rotated back by the reference's inverse rotation. CPU in f32
// and bf16, with offsets, GQA, explicit position tensors, causal and not; the composition
// rope.apply + attention bit for bit on the CPU and within bf16 rounding on CUDA; gradients by finite
// differences through the fused op; every error path with its code; temporaries freed on errors.
import t, { Test } from 'tap';
import { attention, AttentionOptions, AttentionRopeOptions } from '../lib/attention';
import { rope } from '../lib/rope';
import { Tensor, memory, randn, synchronize, tensor } from '../lib/tensor';
import { throwsCode } from './helpers/assert';
import { gpu } from './helpers/devices';
import { directionalChecks, dot } from './helpers/fd';
import { mulberry32, randomNormal, testSeed } from './helpers/rng';
import { AttnDims, attentionBackwardRef, attentionForwardRef } from './ref/attention';
import { RefStyle, invFreqFromBase, ropeRef } from './ref/rope';

const seed = testSeed();
t.comment(`TEST_SEED=${seed}`);
const rnd = mulberry32(seed);
const randInt = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));

type Dtype = 'f32' | 'bf16';
interface Case extends AttnDims {
  dtype: Dtype;
  causal: boolean;
  qOffset: number;
  kOffset: number;
  base: number;
  rotaryDim: number;      // < headDim: the tail passes through
  style: RefStyle;
  attentionFactor: number;
  /** explicit int32 positions: 'same' (one tensor for q and k), 'own' (different tensors), or none */
  positions?: 'same' | 'own';
}
type Tap = Test;

const describe = (c: Case): string =>
  `${c.dtype} b${c.batch} sq${c.seqQ} sk${c.seqK} hq${c.headsQ}/hkv${c.headsKv} d${c.headDim} r${c.rotaryDim} ${c.style}` +
  (c.causal ? ' causal' : ' full') + ` q@${c.qOffset} k@${c.kOffset}` + (c.positions ? ` positions:${c.positions}` : '') +
  (c.attentionFactor !== 1 ? ` af ${c.attentionFactor}` : '');

const qShape = (c: Case): [number, number, number, number] => [c.batch, c.seqQ, c.headsQ, c.headDim];
const kShape = (c: Case): [number, number, number, number] => [c.batch, c.seqK, c.headsKv, c.headDim];

async function values(x: Tensor): Promise<Float64Array> {
  return Float64Array.from(await x.toArray());
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): { err: number; nan: boolean } {
  let e = 0, m = 0, nan = false;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(got[i])) nan = true;
    e = Math.max(e, Math.abs(got[i] - want[i]));
    m = Math.max(m, Math.abs(want[i]));
  }
  return { err: m > 0 ? e / m : e, nan };
}
function near(tt: Tap, what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  tt.equal(got.length, want.length, `${what}: length`);
  const { err, nan } = relErr(got, want);
  tt.ok(!nan && err <= tol, `${what}: rel err ${err.toExponential(2)} <= ${tol} (nan: ${nan})`);
}
async function identical(a: Tensor, b: Tensor): Promise<boolean> {
  const x = await a.toRaw(), y = await b.toRaw();
  return x.length === y.length && x.every((v, i) => Object.is(v, y[i]));
}

/** Random positions [batch, seq]: anywhere in int32, negative included, repeats allowed. */
function randomPositions(batch: number, seq: number): Int32Array {
  const p = new Int32Array(batch * seq);
  for (let i = 0; i < p.length; i++) p[i] = rnd() < 0.5 ? randInt(-50, 200) : randInt(-(2 ** 31), 2 ** 31 - 1);
  return p;
}

/** A case's inputs (values as the tensors hold them), positions and the option objects. */
async function setup(c: Case, device: 'cpu' | 'cuda') {
  const mk = async (shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = tensor(randomNormal(n, rnd), { shape, dtype: c.dtype, device });
    return { x, v: await values(x) };
  };
  const q = await mk(qShape(c)), k = await mk(kShape(c)), v = await mk(kShape(c)), dout = await mk(qShape(c));
  let qPos: Int32Array | undefined, kPos: Int32Array | undefined;
  const owned: Tensor[] = [q.x, k.x, v.x, dout.x];
  const ro: AttentionRopeOptions = { base: c.base, rotaryDim: c.rotaryDim, style: c.style, attentionFactor: c.attentionFactor };
  if (c.positions) {
    qPos = randomPositions(c.batch, c.seqQ);
    kPos = c.positions === 'same' ? qPos : randomPositions(c.batch, c.seqK);
    const qp = tensor(qPos, { shape: [c.batch, c.seqQ], dtype: 'i32', device });
    const kp = c.positions === 'same' ? qp : tensor(kPos, { shape: [c.batch, c.seqK], dtype: 'i32', device });
    owned.push(qp);
    if (kp !== qp) owned.push(kp);
    ro.qPositions = qp;
    ro.kPositions = kp;
  }
  const attn: AttentionOptions = { causal: c.causal, qOffset: c.qOffset, kOffset: c.kOffset };
  return { q, k, v, dout, qPos, kPos, ro, attn, dispose: () => owned.forEach((x) => x.dispose()) };
}

/** The float64 reference: rotate, attend, and (backward) rotate dq/dk back. */
function reference(c: Case, qv: ArrayLike<number>, kv: ArrayLike<number>, vv: ArrayLike<number>, dv: ArrayLike<number> | null,
    qPos?: Int32Array, kPos?: Int32Array) {
  const invFreq = invFreqFromBase(c.base, c.rotaryDim);
  const ro = (x: ArrayLike<number>, shape: [number, number, number, number], off: number, pos: Int32Array | undefined, inverse: boolean) =>
    ropeRef(x, shape, { invFreq, rotaryDim: c.rotaryDim, style: c.style, precision: 'exact', attentionFactor: c.attentionFactor,
      inverse, ...(pos ? { positions: pos } : { positionOffset: off }) });
  const qr = ro(qv, qShape(c), c.qOffset, qPos, false), kr = ro(kv, kShape(c), c.kOffset, kPos, false);
  const o = { causal: c.causal, qOffset: c.qOffset, kOffset: c.kOffset };
  const f = attentionForwardRef(qr, kr, vv, c, o);
  if (!dv) return { ...f, dq: null, dk: null, dv: null };
  const g = attentionBackwardRef(dv, qr, kr, vv, c, o);
  return { ...f, dq: ro(g.dq, qShape(c), c.qOffset, qPos, true), dk: ro(g.dk, kShape(c), c.kOffset, kPos, true), dv: g.dv };
}

// Relative to the largest reference magnitude. f32: f32 rotation + f32 accumulation. bf16: the rotated
// q/k are rounded to bf16 (2^-9 relative) before attention, and dq/dk once more after the rotation back.
const TOL: Record<Dtype, number> = { f32: 2e-5, bf16: 1.5e-2 };

const mkCase = (over: Partial<Case>): Case => ({
  batch: 1, seqQ: 24, seqK: 24, headsQ: 2, headsKv: 2, headDim: 16, dtype: 'f32', causal: false, qOffset: 0, kOffset: 0,
  base: 10000, rotaryDim: 16, style: 'neox', attentionFactor: 1, ...over,
});

const cpuCases: Case[] = [];
for (const dtype of ['f32', 'bf16'] as const) {
  cpuCases.push(
    // self-attention, same offsets: the single applyQK launch
    mkCase({ dtype, batch: 2, seqQ: 37, seqK: 37, headsQ: 4, headsKv: 4, headDim: 32, rotaryDim: 32, causal: true }),
    // a shard: queries after keys, GQA, partial rotary dims, interleaved
    mkCase({ dtype, seqQ: 29, seqK: 53, headsQ: 8, headsKv: 2, headDim: 24, rotaryDim: 16, style: 'interleaved',
      causal: true, qOffset: 1000 + 24, kOffset: 1000 }),
    // large positions (where fp32 angles are off), non-causal with offsets, MQA, attention factor
    mkCase({ dtype, seqQ: 19, seqK: 31, headsQ: 4, headsKv: 1, headDim: 16, rotaryDim: 16, qOffset: 2 ** 30 + 5,
      kOffset: 2 ** 30 - 40, base: 5e6, attentionFactor: 1.2 }),
    // explicit positions: one tensor for both / one each
    mkCase({ dtype, batch: 2, seqQ: 21, seqK: 21, headsQ: 4, headsKv: 2, headDim: 16, causal: true, positions: 'same' }),
    mkCase({ dtype, batch: 2, seqQ: 17, seqK: 26, headsQ: 6, headsKv: 3, headDim: 12, rotaryDim: 8, causal: true,
      qOffset: 9, kOffset: 0, positions: 'own' }),
  );
}
// Random sizes and options.
for (let i = 0; i < 4; i++) {
  const headsKv = randInt(1, 2), headDim = 2 * randInt(2, 20);
  const causal = rnd() < 0.6;
  // at least one query sees two keys, so RoPE changes the output (one key: out = v whatever the rotation)
  const seqQ = randInt(2, 40), seqK = randInt(2, 40), qOffset = randInt(100, 5000);
  cpuCases.push(mkCase({
    dtype: rnd() < 0.5 ? 'f32' : 'bf16', batch: randInt(1, 2), seqQ, seqK, headsKv,
    headsQ: headsKv * randInt(1, 4), headDim, rotaryDim: 2 * randInt(1, headDim / 2), style: rnd() < 0.5 ? 'neox' : 'interleaved',
    // causal: the keys start at most seqQ - 2 after the first query, so the last query sees two keys
    causal, qOffset, kOffset: causal ? qOffset + randInt(-60, seqQ - 2) : randInt(0, 5000), base: 10 ** (2 + 5 * rnd()),
    ...(rnd() < 0.3 ? { positions: 'own' as const } : {}),
  }));
}

async function checkCase(tt: Tap, c: Case, device: 'cpu' | 'cuda', tol: number): Promise<void> {
  const s = await setup(c, device);
  const opts: AttentionOptions = { ...s.attn, rope: s.ro };
  const ref = reference(c, s.q.v, s.k.v, s.v.v, s.dout.v, s.qPos, s.kPos);
  const { out, lse } = attention.forward(s.q.x, s.k.x, s.v.x, opts);
  tt.same([out.shape, out.dtype, lse.shape], [qShape(c), c.dtype, [c.batch, c.headsQ, c.seqQ]], 'shapes and dtype');
  const g = attention.backward(s.dout.x, s.q.x, s.k.x, s.v.x, out, lse, opts);
  const [o, dq, dk, dv] = await Promise.all([out, g.dq, g.dk, g.dv].map(values));
  near(tt, 'out', o, ref.out, tol);
  near(tt, 'dq (for the un-rotated q)', dq, ref.dq!, tol);
  near(tt, 'dk (for the un-rotated k)', dk, ref.dk!, tol);
  near(tt, 'dv', dv, ref.dv!, tol);
  // Without RoPE the answer is different (the test can fail): the rotation did happen.
  const plain = attention.forward(s.q.x, s.k.x, s.v.x, s.attn);
  const { err } = relErr(await values(plain.out), ref.out);
  tt.ok(err > 3 * tol, `attention without rope differs from the reference (${err.toExponential(2)})`);

  // The composition it replaces: rope.apply at the same positions, then attention; rope.backward of dq/dk.
  const pq = s.ro.qPositions ? { positions: s.ro.qPositions } : { positionOffset: c.qOffset };
  const pk = s.ro.kPositions ? { positions: s.ro.kPositions } : { positionOffset: c.kOffset };
  const { qPositions: _a, kPositions: _b, ...ropeOnly } = s.ro;
  const qr = rope.apply(s.q.x, { ...ropeOnly, ...pq }), kr = rope.apply(s.k.x, { ...ropeOnly, ...pk });
  const cf = attention.forward(qr, kr, s.v.x, s.attn);
  const cg = attention.backward(s.dout.x, qr, kr, s.v.x, cf.out, cf.lse, s.attn);
  const cdq = rope.backward(cg.dq, { ...ropeOnly, ...pq }), cdk = rope.backward(cg.dk, { ...ropeOnly, ...pk });
  if (device === 'cpu') {
    tt.ok(await identical(out, cf.out) && await identical(lse, cf.lse), 'forward: bit-identical to rope.apply + attention');
    tt.ok(await identical(g.dq, cdq) && await identical(g.dk, cdk) && await identical(g.dv, cg.dv),
      'backward: bit-identical to rope.apply + attention.backward + rope.backward');
  } else {
    // bf16 rounding of the output (CUDA backward may sum dk/dv in a different order between runs)
    const r = c.dtype === 'f32' ? 1e-5 : 2 ** -7;
    near(tt, 'cuda out vs composition', o, await values(cf.out), r);
    near(tt, 'cuda dq vs composition', dq, await values(cdq), r);
    near(tt, 'cuda dk vs composition', dk, await values(cdk), r);
    near(tt, 'cuda dv vs composition', dv, await values(cg.dv), r);
  }
  for (const x of [out, lse, g.dq, g.dk, g.dv, plain.out, plain.lse, qr, kr, cf.out, cf.lse, cg.dq, cg.dk, cg.dv, cdq, cdk]) x.dispose();
  s.dispose();
}

for (const c of cpuCases) t.test(`cpu ${describe(c)}`, async (tt) => checkCase(tt, c, 'cpu', TOL[c.dtype]));

t.test('cpu: precision and theta-style options pass through (fp32 angles at a large offset differ from exact)', async (tt) => {
  const c = mkCase({ seqQ: 8, seqK: 8, headDim: 16, qOffset: 2 ** 29, kOffset: 2 ** 29 - 3, base: 1e4 });
  const s = await setup(c, 'cpu');
  const a = attention.forward(s.q.x, s.k.x, s.v.x, { ...s.attn, rope: { invFreq: invFreqFromBase(1e4, 16) } });
  const b = attention.forward(s.q.x, s.k.x, s.v.x, { ...s.attn, rope: { base: 1e4 } });
  const f = attention.forward(s.q.x, s.k.x, s.v.x, { ...s.attn, rope: { base: 1e4, precision: 'fp32' } });
  tt.ok(await identical(a.out, b.out), 'invFreq from the same base gives the same result as base');
  const { err } = relErr(await values(f.out), await values(b.out));
  tt.ok(err > 1e-4, `precision 'fp32' at position 2^29 differs from 'exact' (${err.toExponential(2)})`);
  for (const x of [a.out, a.lse, b.out, b.lse, f.out, f.lse]) x.dispose();
  s.dispose();
});

t.test('cpu: positions tensors equal to the offsets give the offsets\' result', async (tt) => {
  const c = mkCase({ batch: 2, seqQ: 10, seqK: 14, headsQ: 4, headsKv: 2, causal: true, qOffset: 7, kOffset: 3 });
  const s = await setup(c, 'cpu');
  const ar = (n: number, off: number) => tensor(Int32Array.from({ length: 2 * n }, (_, i) => off + (i % n)), { shape: [2, n], dtype: 'i32' });
  const qp = ar(10, 7), kp = ar(14, 3);
  const a = attention.forward(s.q.x, s.k.x, s.v.x, { ...s.attn, rope: { base: 1e4 } });
  const b = attention.forward(s.q.x, s.k.x, s.v.x, { ...s.attn, rope: { base: 1e4, qPositions: qp, kPositions: kp } });
  tt.ok(await identical(a.out, b.out), 'same output');
  for (const x of [a.out, a.lse, b.out, b.lse, qp, kp]) x.dispose();
  s.dispose();
});

// ---------------------------------------------------------------- gradients by finite differences

// L(q, k, v) = sum(out * w) through the fused op. The directional derivative of the float64 reference
// (rope + attention, step 1e-6) judges the op's backward; the op's own f32 forward with steps of 2e-3
// checks that forward and backward agree with each other.
const fdCases: Case[] = [
  mkCase({ seqQ: 7, seqK: 9, headsQ: 4, headsKv: 2, headDim: 8, rotaryDim: 6, causal: true, qOffset: 12, kOffset: 10 }),
  mkCase({ batch: 2, seqQ: 6, seqK: 5, headsQ: 2, headsKv: 1, headDim: 6, rotaryDim: 6, style: 'interleaved', qOffset: 3, kOffset: 40,
    attentionFactor: 1.1 }),
  mkCase({ seqQ: 6, seqK: 8, headsQ: 2, headsKv: 2, headDim: 8, rotaryDim: 8, causal: true, positions: 'own' }),
];
for (const c of fdCases) {
  t.test(`finite differences f32 ${describe(c)}`, async (tt) => {
    const s = await setup(c, 'cpu');
    const opts: AttentionOptions = { ...s.attn, rope: s.ro };
    const w = s.dout;
    const { out, lse } = attention.forward(s.q.x, s.k.x, s.v.x, opts);
    const g = attention.backward(w.x, s.q.x, s.k.x, s.v.x, out, lse, opts);
    const grads = { q: await values(g.dq), k: await values(g.dk), v: await values(g.dv) };
    for (const which of ['q', 'k', 'v'] as const) {
      const x0 = s[which].v, dir = randomNormal(x0.length, rnd);
      await directionalChecks(tt, {
        name: `d${which}`, x0, dir, grad: grads[which],
        refLoss: (h) => {
          const x = Float64Array.from(x0, (a, i) => a + h * dir[i]);
          const a = { q: s.q.v, k: s.k.v, v: s.v.v, [which]: x };
          return dot(reference(c, a.q, a.k, a.v, null, s.qPos, s.kPos).out, w.v);
        },
        f32Loss: async (vals) => {
          const x = tensor(vals, { shape: [...s[which].x.shape] });
          const a = { q: s.q.x, k: s.k.x, v: s.v.x, [which]: x };
          const r = attention.forward(a.q, a.k, a.v, opts);
          const l = dot(await values(r.out), w.v);
          r.out.dispose(); r.lse.dispose(); x.dispose();
          return l;
        },
      });
    }
    for (const x of [out, lse, g.dq, g.dk, g.dv]) x.dispose();
    s.dispose();
  });
}

// ---------------------------------------------------------------- errors

t.test('errors: the rope option, with codes', async (tt) => {
  const q = randn([1, 8, 4, 16], { seed: 1 }), k = randn([1, 6, 2, 16], { seed: 2 }), v = randn([1, 6, 2, 16], { seed: 3 });
  const { out, lse } = attention.forward(q, k, v);
  const i32 = (shape: number[]) => tensor(new Int32Array(shape.reduce((a, b) => a * b, 1)), { shape, dtype: 'i32' });
  const qp = i32([1, 8]), kp = i32([1, 6]), bad1 = i32([1, 7]), bad2 = i32([8]), bad3 = i32([2, 8]);
  const fp = tensor(new Float32Array(8), { shape: [1, 8] });
  const gone = i32([1, 6]);
  gone.dispose();
  const both = (ro: unknown, extra: Record<string, unknown> = {}): (() => unknown)[] => {
    const o = { causal: true, ...extra, rope: ro } as AttentionOptions;
    return [() => attention.forward(q, k, v, o), () => attention.backward(q, q, k, v, out, lse, o)];
  };
  const cases: [string, unknown, string, Record<string, unknown>?][] = [
    ['rope: null', null, 'ERR_ARG'],
    ['rope: a number', 5, 'ERR_ARG'],
    ['rope: an array', [1e4], 'ERR_ARG'],
    ['rope: a Tensor', qp, 'ERR_ARG'],
    ['rope: {} (no frequencies)', {}, 'ERR_ROPE_CONFIG'],
    ['rope: base and invFreq', { base: 1e4, invFreq: [1, 0.1] }, 'ERR_ROPE_CONFIG'],
    ['rope: base 0.5', { base: 0.5 }, 'ERR_ROPE_CONFIG'],
    ['rope: odd rotaryDim', { base: 1e4, rotaryDim: 5 }, 'ERR_ROPE_CONFIG'],
    ['rope: rotaryDim > headDim', { base: 1e4, rotaryDim: 32 }, 'ERR_ROPE_CONFIG'],
    ['rope: bad style', { base: 1e4, style: 'gptj' }, 'ERR_ROPE_CONFIG'],
    ['rope: bad precision', { base: 1e4, precision: 'fp64' }, 'ERR_ROPE_CONFIG'],
    ['rope: unknown key', { base: 1e4, thetaa: 1 }, 'ERR_ARG'],
    ['rope.positions (attention supplies positions)', { base: 1e4, positions: qp }, 'ERR_ARG'],
    ['rope.positionOffset', { base: 1e4, positionOffset: 3 }, 'ERR_ARG'],
    ['rope.inplace', { base: 1e4, inplace: true }, 'ERR_ARG'],
    ['qPositions without kPositions', { base: 1e4, qPositions: qp }, 'ERR_ARG'],
    ['kPositions without qPositions', { base: 1e4, kPositions: kp }, 'ERR_ARG'],
    ['qPositions not a tensor', { base: 1e4, qPositions: [0, 1], kPositions: kp }, 'ERR_ARG'],
    ['kPositions disposed', { base: 1e4, qPositions: qp, kPositions: gone }, 'ERR_DISPOSED'],
    ['qPositions f32', { base: 1e4, qPositions: fp, kPositions: kp }, 'ERR_DTYPE'],
    ['kPositions wrong length', { base: 1e4, qPositions: qp, kPositions: bad1 }, 'ERR_SHAPE'],
    ['qPositions 1-D', { base: 1e4, qPositions: bad2, kPositions: kp }, 'ERR_SHAPE'],
    ['qPositions wrong batch', { base: 1e4, qPositions: bad3, kPositions: kp }, 'ERR_SHAPE'],
    ['kPositions is q\'s (wrong length for k)', { base: 1e4, qPositions: qp, kPositions: qp }, 'ERR_SHAPE'],
    ['negative qOffset (positions would be negative)', { base: 1e4 }, 'ERR_ARG', { qOffset: -3 }],
    ['kOffset past int32', { base: 1e4 }, 'ERR_ARG', { kOffset: 2 ** 31 - 3 }],
    ['qOffset not an integer', { base: 1e4 }, 'ERR_ARG', { qOffset: 1.5 }],
    ['attention\'s own check after the rotation (scale 0)', { base: 1e4 }, 'ERR_ARG', { scale: 0 }],
  ];
  for (const [what, ro, code, extra] of cases)
    for (const [i, f] of both(ro, extra).entries()) throwsCode(tt, f, code, `${i ? 'backward' : 'forward'}: ${what}`);

  // Negative positions are fine through a positions tensor; a negative qOffset is fine without rope.
  const neg = tensor(new Int32Array([-5, -4, -3, -2, -1, 0, 1, 2]), { shape: [1, 8], dtype: 'i32' });
  const r = attention.forward(q, k, v, { causal: true, qOffset: -3, rope: { base: 1e4, qPositions: neg, kPositions: kp } });
  tt.equal(r.out.shape.join(), q.shape.join(), 'negative positions through qPositions');
  const r2 = attention.forward(q, k, v, { causal: true, qOffset: -3 });
  tt.ok(r2.out instanceof Tensor, 'a negative qOffset without rope is still fine');

  // Shapes that attention refuses are refused before any rotation, with attention's codes.
  const k3 = randn([1, 6, 3, 16], { seed: 4 }), kd = randn([1, 6, 2, 8], { seed: 5 }), kb = randn([2, 6, 2, 16], { seed: 6 });
  const kbf = randn([1, 6, 2, 16], { seed: 7, dtype: 'bf16' });
  throwsCode(tt, () => attention.forward(q, k3, k3, { rope: { base: 1e4 } }), 'ERR_SHAPE', 'heads not a multiple');
  throwsCode(tt, () => attention.forward(q, kd, kd, { rope: { base: 1e4 } }), 'ERR_SHAPE', 'headDim differs');
  throwsCode(tt, () => attention.forward(q, kb, kb, { rope: { base: 1e4 } }), 'ERR_SHAPE', 'batch differs');
  throwsCode(tt, () => attention.forward(q, k, kd, { rope: { base: 1e4 } }), 'ERR_SHAPE', 'v not like k');
  throwsCode(tt, () => attention.forward(q, kbf, kbf, { rope: { base: 1e4 } }), 'ERR_DTYPE', 'k dtype differs');
  throwsCode(tt, () => attention.backward(q, q, k, v, out, lse, { rope: { base: 1e4 }, kernel: 'nope' as never }),
    ['ERR_ARG'], 'backward: bad kernel with rope');
  throwsCode(tt, () => attention.forward(q, k, v, { rope: { base: 1e4 }, kernel: 'nope' as never }), ['ERR_ARG'], 'forward: bad kernel with rope');
  const km = attention.forward(q, k, v, { rope: { base: 1e4 }, kernel: 'mma' });
  tt.ok(km.out instanceof Tensor, 'forward kernel option passes through with rope');
  km.out.dispose(); km.lse.dispose();
  for (const x of [q, k, v, out, lse, qp, kp, bad1, bad2, bad3, fp, neg, r.out, r.lse, r2.out, r2.lse, k3, kd, kb, kbf]) x.dispose();
});

t.test('errors: a refused call leaves no temporaries behind', async (tt) => {
  const q = randn([1, 64, 4, 32], { seed: 1 }), k = randn([1, 64, 2, 32], { seed: 2 }), v = randn([1, 64, 2, 32], { seed: 3 });
  const r = attention.forward(q, k, v);
  await synchronize();
  const before = memory('cpu').allocated;
  // Refused after the rotation: the attention check (scale 0); refused at k's rotation: k's rope check.
  const tries: [string, () => unknown][] = [
    ['forward, attention refuses', () => attention.forward(q, k, v, { scale: 0, rope: { base: 1e4 } })],
    ['backward, attention refuses', () => attention.backward(q, q, k, v, r.out, r.lse, { scale: 0, rope: { base: 1e4 } })],
    ['forward, separate rotations', () => attention.forward(q, k, v, { qOffset: 5, scale: -1, rope: { base: 1e4 } })],
    ['backward, bad lse', () => attention.backward(q, q, k, v, r.out, q, { qOffset: 5, rope: { base: 1e4 } })],
  ];
  for (const [what, f] of tries) throwsCode(tt, f, ['ERR_ARG', 'ERR_SHAPE', 'ERR_DTYPE'], what);
  await synchronize();
  tt.equal(memory('cpu').allocated, before, 'allocated bytes back to the start');
  for (const x of [q, k, v, r.out, r.lse]) x.dispose();
});

// ---------------------------------------------------------------- CUDA

const cudaCases: Case[] = [
  mkCase({ dtype: 'bf16', batch: 1, seqQ: 300, seqK: 300, headsQ: 8, headsKv: 2, headDim: 128, rotaryDim: 128, causal: true }),
  mkCase({ dtype: 'bf16', batch: 2, seqQ: 130, seqK: 257, headsQ: 4, headsKv: 4, headDim: 64, rotaryDim: 64, causal: true,
    qOffset: 50_000 + 127, kOffset: 50_000, base: 5e5 }),
  mkCase({ dtype: 'bf16', batch: 1, seqQ: 96, seqK: 160, headsQ: 8, headsKv: 1, headDim: 128, rotaryDim: 64, style: 'interleaved',
    positions: 'own' }),
];
for (const c of cudaCases) {
  t.test(`cuda ${describe(c)}`, { ...gpu }, async (tt) => {
    await checkCase(tt, c, 'cuda', 2.5e-2);
  });
}

t.test('cuda: the forward kernel option with rope (mma.sync and auto agree with the composition)', { ...gpu }, async (tt) => {
  const q = randn([1, 256, 8, 128], { seed: 1, dtype: 'bf16', device: 'cuda' });
  const k = randn([1, 256, 2, 128], { seed: 2, dtype: 'bf16', device: 'cuda' });
  const v = randn([1, 256, 2, 128], { seed: 3, dtype: 'bf16', device: 'cuda' });
  const ro = { base: 5e5 };
  const qr = rope.apply(q, { ...ro, positionOffset: 300 }), kr = rope.apply(k, { ...ro, positionOffset: 200 });
  for (const kernel of ['auto', 'mma'] as const) {
    const o = { causal: true, qOffset: 300, kOffset: 200, kernel };
    const a = attention.forward(q, k, v, { ...o, rope: ro }), b = attention.forward(qr, kr, v, o);
    tt.ok(await identical(a.out, b.out), `kernel ${kernel}: bit-identical to rope.apply + attention (same kernels)`);
    for (const x of [a.out, a.lse, b.out, b.lse]) x.dispose();
  }
  for (const x of [q, k, v, qr, kr]) x.dispose();
});

t.test('cuda: positions on the CPU are refused', { ...gpu }, async (tt) => {
  const q = randn([1, 16, 2, 64], { seed: 1, dtype: 'bf16', device: 'cuda' });
  const k = randn([1, 16, 2, 64], { seed: 2, dtype: 'bf16', device: 'cuda' });
  const p = tensor(new Int32Array(16), { shape: [1, 16], dtype: 'i32' });
  throwsCode(tt, () => attention.forward(q, k, k, { rope: { base: 1e4, qPositions: p, kPositions: p } }), 'ERR_DEVICE');
  for (const x of [q, k, p]) x.dispose();
});

// ---------------------------------------------------------------- ring attention with the rope option

// Each shard is rotated at its tokens' global positions before the ring, so the unsharded result must
// equal attention with rope on the full sequence (f32: only the ring's f32 merge order differs).
t.test('ring.forward/backward with rope = attention with rope on the full sequence', async (tt) => {
  const { dist, ring } = await import('../lib/index');
  const B = 1, Hq = 4, Hkv = 2, D = 8;
  const ro = { base: 1e4, style: 'interleaved' as const };
  const combos: { W: number; layout: 'zigzag' | 'contiguous'; algorithm: 'ring' | 'allgather'; causal: boolean; qOffset: number;
    kOffset: number; explicit?: boolean }[] = [
    { W: 1, layout: 'zigzag', algorithm: 'ring', causal: true, qOffset: 5, kOffset: 5 },
    { W: 2, layout: 'zigzag', algorithm: 'ring', causal: true, qOffset: 7, kOffset: 7 },
    { W: 4, layout: 'zigzag', algorithm: 'ring', causal: true, qOffset: 100, kOffset: 96 },
    { W: 4, layout: 'contiguous', algorithm: 'allgather', causal: true, qOffset: 3, kOffset: 0 },
    { W: 2, layout: 'zigzag', algorithm: 'allgather', causal: false, qOffset: 40, kOffset: 9 },
    { W: 4, layout: 'contiguous', algorithm: 'ring', causal: false, qOffset: 0, kOffset: 0 },
    { W: 2, layout: 'zigzag', algorithm: 'ring', causal: true, qOffset: 0, kOffset: 0, explicit: true },
  ];
  for (const c of combos) {
    const S = 8 * c.W;
    const mk = (h: number) => tensor(randomNormal(B * S * h * D, rnd), { shape: [B, S, h, D] });
    const q = mk(Hq), k = mk(Hkv), v = mk(Hkv), dout = mk(Hq);
    const base: AttentionOptions = { causal: c.causal, qOffset: c.qOffset, kOffset: c.kOffset };
    let fullRope: AttentionRopeOptions = ro;
    const extra: Tensor[] = [];
    if (c.explicit) {
      const qp = tensor(randomPositions(B, S), { shape: [B, S], dtype: 'i32' });
      const kp = tensor(randomPositions(B, S), { shape: [B, S], dtype: 'i32' });
      extra.push(qp, kp);
      fullRope = { ...ro, qPositions: qp, kPositions: kp };
    }
    const ref = attention.forward(q, k, v, { ...base, rope: fullRope });
    const gref = attention.backward(dout, q, k, v, ref.out, ref.lse, { ...base, rope: fullRope });
    const groups = c.W === 1 ? [null] : dist.localGroups(c.W);
    const sh = (x: Tensor, r: number) => ring.shard(x, r, c.W, { layout: c.layout });
    const ins = groups.map((_, r) => {
      const shardRope: AttentionRopeOptions = c.explicit ? { ...ro, qPositions: sh(fullRope.qPositions!, r), kPositions: sh(fullRope.kPositions!, r) } : ro;
      if (c.explicit) extra.push(shardRope.qPositions!, shardRope.kPositions!);
      return { q: sh(q, r), k: sh(k, r), v: sh(v, r), dout: sh(dout, r),
        o: { ...base, layout: c.layout, algorithm: c.algorithm, rope: shardRope } };
    });
    const fw = await Promise.all(groups.map((g, r) => ring.forward(g, ins[r].q, ins[r].k, ins[r].v, ins[r].o)));
    const bw = await Promise.all(groups.map((g, r) => ring.backward(g, ins[r].dout, ins[r].q, ins[r].k, ins[r].v, fw[r].out, fw[r].lse, ins[r].o)));
    const label = `W${c.W} ${c.layout} ${c.algorithm} ${c.causal ? 'causal' : 'full'} q@${c.qOffset} k@${c.kOffset}${c.explicit ? ' positions' : ''}`;
    const pairs: [string, Tensor[], Tensor][] = [['out', fw.map((x) => x.out), ref.out], ['dq', bw.map((x) => x.dq), gref.dq],
      ['dk', bw.map((x) => x.dk), gref.dk], ['dv', bw.map((x) => x.dv), gref.dv]];
    for (const [what, shards, want] of pairs) {
      const got = ring.unshard(shards, { layout: c.layout });
      near(tt, `${label} ${what}`, await values(got), await values(want), 1e-5);
      got.dispose();
    }
    // and the rotation mattered: without rope the ring gives something else
    if (c.W > 1) {
      const plain = await Promise.all(groups.map((g, r) => ring.forward(g, ins[r].q, ins[r].k, ins[r].v, { ...ins[r].o, rope: undefined })));
      const got = ring.unshard(plain.map((x) => x.out), { layout: c.layout });
      tt.ok(relErr(await values(got), await values(ref.out)).err > 1e-2, `${label}: differs without rope`);
      got.dispose();
      for (const x of plain) { x.out.dispose(); x.lse.dispose(); }
    }
    for (const x of [...fw.flatMap((f) => [f.out, f.lse]), ...bw.flatMap((b) => [b.dq, b.dk, b.dv]), ...ins.flatMap((i) => [i.q, i.k, i.v, i.dout]),
      ref.out, ref.lse, gref.dq, gref.dk, gref.dv, q, k, v, dout, ...extra]) x.dispose();
  }
});

t.test('ring with rope: errors before any transfer', async (tt) => {
  const { dist, ring } = await import('../lib/index');
  const { rejectsCode } = await import('./helpers/assert');
  const [a] = dist.localGroups(2, { timeoutMs: 200 });
  const q = randn([1, 4, 2, 8], { seed: 1 }), k = randn([1, 4, 1, 8], { seed: 2 });
  const p5 = tensor(new Int32Array(5), { shape: [1, 5], dtype: 'i32' });
  // the peer never calls: a check that came after the first transfer would time out instead
  await rejectsCode(tt, ring.forward(a, q, k, k, { causal: true, rope: null as never }), 'ERR_ARG', 'rope null');
  await rejectsCode(tt, ring.forward(a, q, k, k, { causal: true, rope: {} }), 'ERR_ROPE_CONFIG', 'no frequencies');
  await rejectsCode(tt, ring.forward(a, q, k, k, { causal: true, qOffset: -1, rope: { base: 1e4 } }), 'ERR_ARG', 'negative qOffset');
  await rejectsCode(tt, ring.forward(a, q, k, k, { causal: true, rope: { base: 1e4, qPositions: p5, kPositions: p5 } }), 'ERR_SHAPE',
    'positions not the shard\'s length');
  await rejectsCode(tt, ring.forward(a, q, k, k, { causal: true, rope: { base: 1e4, positions: p5 } as never }), 'ERR_ARG',
    'rope.positions');
  const lse = randn([1, 2, 4], { seed: 3 });
  await rejectsCode(tt, ring.backward(a, q, q, k, k, q, lse, { causal: true, rope: { base: 1e4, rotaryDim: 3 } }), 'ERR_ROPE_CONFIG',
    'backward: odd rotaryDim');
  lse.dispose();
  for (const x of [q, k, p5]) x.dispose();
});

// ring.attentionLayer now goes through the rope option: its results must be those of its old body
// (rope.apply at the shard's global positions, ring on the rotated shards, rope.backward) bit for bit.
t.test('ring.attentionLayer: bit-identical to rope.apply + ring + rope.backward', async (tt) => {
  const { dist, ring } = await import('../lib/index');
  for (const W of [1, 2]) {
    const S = 6, B = 2;
    const groups = W === 1 ? [null] : dist.localGroups(W);
    const mk = (h: number) => tensor(randomNormal(B * S * h * 8, rnd), { shape: [B, S, h, 8] });
    const ins = groups.map(() => ({ q: mk(4), k: mk(2), v: mk(2), dout: mk(4) }));
    const ro = { base: 5e5, rotaryDim: 6 };
    const opts = { causal: true, rope: ro, offset: 1000 };
    const fw = await Promise.all(groups.map((g, r) => ring.attentionLayer.forward(g, ins[r].q, ins[r].k, ins[r].v, opts)));
    const bw = await Promise.all(groups.map((g, r) => ring.attentionLayer.backward(g, ins[r].dout, ins[r].q, ins[r].k, ins[r].v,
      fw[r].out, fw[r].lse, opts)));
    const old = await Promise.all(groups.map(async (g, r) => {
      const pos = ring.positions(S * W, r, W, W === 1 ? 'contiguous' : 'zigzag', { batch: B, offset: 1000 });
      const po = { ...ro, positions: pos };
      const qr = rope.apply(ins[r].q, po), kr = rope.apply(ins[r].k, po);
      return { pos, po, qr, kr };
    }));
    const ofw = await Promise.all(groups.map((g, r) => ring.forward(g, old[r].qr, old[r].kr, ins[r].v, { causal: true })));
    const obw = await Promise.all(groups.map((g, r) => ring.backward(g, ins[r].dout, old[r].qr, old[r].kr, ins[r].v, ofw[r].out, ofw[r].lse,
      { causal: true })));
    for (let r = 0; r < groups.length; r++) {
      const dq = rope.backward(obw[r].dq, old[r].po), dk = rope.backward(obw[r].dk, old[r].po);
      tt.ok(await identical(fw[r].out, ofw[r].out) && await identical(fw[r].lse, ofw[r].lse), `W${W} rank ${r}: out, lse identical`);
      tt.ok(await identical(bw[r].dq, dq) && await identical(bw[r].dk, dk) && await identical(bw[r].dv, obw[r].dv),
        `W${W} rank ${r}: dq, dk, dv identical`);
      for (const x of [dq, dk, fw[r].out, fw[r].lse, bw[r].dq, bw[r].dk, bw[r].dv, ofw[r].out, ofw[r].lse, obw[r].dq, obw[r].dk, obw[r].dv,
        old[r].pos, old[r].qr, old[r].kr, ins[r].q, ins[r].k, ins[r].v, ins[r].dout]) x.dispose();
    }
  }
});
