// Layer ops (lib/nn) vs float64 references (test/ref/nn.ts): RMSNorm (+ fused residual), SwiGLU,
// embedding, cross-entropy, the chunked LM-head loss; gradients also by finite differences (f32, tiny
// sizes); error paths. CUDA cases (skipped without a GPU) compare realistic sizes with the reference.
import t from 'tap';
import { Dtype, Tensor, nn, randn, tensor, empty, zeros, synchronize } from '../lib/index';
import { native } from '../lib/native';
import { rejectsCode, throwsCode } from './helpers/assert';
import { gpu } from './helpers/devices';
import { mulberry32, testSeed } from './helpers/rng';
import {
  crossEntropyRef, embeddingBackwardRef, lmHeadLossRef, rmsNormBackwardRef, rmsNormRef, roundTo,
  swigluBackwardRef, swigluRef,
} from './ref/nn';

const seed = testSeed();
t.comment(`TEST_SEED=${seed}`);
let seq = 0;
const rnd = (shape: number[], dtype: Dtype = 'f32', device = 'cpu', std = 1): Tensor =>
  randn(shape, { seed: seed + 7919 * ++seq, dtype, device: device as 'cpu', std });
const arr = async (x: Tensor): Promise<Float64Array> => Float64Array.from(await x.toArray());
type FDtype = 'f32' | 'bf16' | 'f16';
const FLOATS: FDtype[] = ['f32', 'bf16', 'f16'];
// Per-element bound |got − ref| <= rtol·|ref| + atol·max|ref| (outputs rounded once to the dtype).
const TOL: Record<string, { rtol: number; atol: number }> = {
  f32: { rtol: 1e-5, atol: 1e-6 }, f16: { rtol: 2 ** -10, atol: 2e-4 }, bf16: { rtol: 2 ** -8, atol: 2e-3 },
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function close(t: any, got: ArrayLike<number>, ref: ArrayLike<number>, what: string,
  tol: { rtol: number; atol: number }): void {
  if (got.length !== ref.length) { t.fail(`${what}: length ${got.length} vs ${ref.length}`); return; }
  let scale = 0;
  for (let i = 0; i < ref.length; i++) scale = Math.max(scale, Math.abs(ref[i]));
  let bad = 0, worst = 0, wi = -1;
  for (let i = 0; i < ref.length; i++) {
    const e = Math.abs(got[i] - ref[i]);
    const b = tol.rtol * Math.abs(ref[i]) + tol.atol * scale;
    if (!(e <= b)) { bad++; if (!(e / b <= worst)) { worst = e / b; wi = i; } }
  }
  t.equal(bad, 0, `${what}: all ${ref.length} within tolerance` +
    (bad ? ` (worst [${wi}] got ${got[wi]} want ${ref[wi]})` : ''));
}
const scaled = (k: number, d: Dtype): { rtol: number; atol: number } => ({ rtol: TOL[d].rtol * k, atol: TOL[d].atol * k });

// ---------------------------------------------------------------- RMSNorm

for (const dtype of FLOATS) {
  for (const H of [200, 256]) {   // 200: not a multiple of 8 (scalar path on CUDA)
    t.test(`rmsNorm fwd/bwd ${dtype} H=${H} (cpu) vs float64`, async (t) => {
      const rows = 37, eps = 1e-5;
      const x = rnd([rows, H], dtype), w = rnd([H], dtype, 'cpu', 0.5), dy = rnd([rows, H], dtype);
      const [xv, wv, dyv] = await Promise.all([arr(x), arr(w), arr(dy)]);
      const { y, rstd, h } = nn.rmsNorm(x, w, { eps });
      t.equal(h, undefined, 'no h without residual');
      t.same(y.shape, [rows, H]); t.same(rstd.shape, [rows]); t.equal(rstd.dtype, 'f32'); t.equal(y.dtype, dtype);
      const ref = rmsNormRef(xv, wv, rows, H, eps);
      close(t, await arr(y), ref.y, 'y', TOL[dtype]);
      close(t, await arr(rstd), ref.rstd, 'rstd', TOL.f32);
      const dw0 = rnd([H], 'f32');
      const dw0v = await arr(dw0);
      const { dx, dweight } = nn.rmsNormBackward(dy, x, w, rstd, { dweight: dw0 });
      t.equal(dweight, dw0, 'accumulates into the given dweight');
      const g = rmsNormBackwardRef(dyv, xv, wv, rows, H, eps);
      close(t, await arr(dx), g.dx, 'dx', scaled(4, dtype));
      close(t, await arr(dweight), g.dw.map((v, i) => v + dw0v[i]), 'dweight (+= initial)', scaled(4, 'f32'));
      // dx accumulation into an f32 buffer
      const acc = rnd([rows, H], 'f32');
      const accv = await arr(acc);
      const r2 = nn.rmsNormBackward(dy, x, w, rstd, { dx: acc });
      t.equal(r2.dx, acc);
      close(t, await arr(acc), g.dx.map((v, i) => v + accv[i]), 'dx += into f32', scaled(4, 'f32'));
      // dweight deterministic (fixed row blocks)
      const r3 = nn.rmsNormBackward(dy, x, w, rstd);
      const r4 = nn.rmsNormBackward(dy, x, w, rstd);
      t.same(await r3.dweight.toArray(), await r4.dweight.toArray(), 'dweight is bit-reproducible');
      for (const z of [x, w, dy, y, rstd, dx, dw0, acc, r3.dx, r3.dweight, r4.dx, r4.dweight]) z.dispose();
    });
  }

  t.test(`rmsNorm fused residual ${dtype} equals add + norm`, async (t) => {
    const rows = 9, H = 64, eps = 1e-6;
    const x = rnd([3, 3, H], dtype), r = rnd([3, 3, H], dtype), w = rnd([H], 'f32');
    const [xv, rv, wv] = await Promise.all([arr(x), arr(r), arr(w)]);
    const f = nn.rmsNorm(x, w, { eps, residual: r });
    t.ok(f.h, 'h returned');
    const hv = await arr(f.h!);
    const want = Float64Array.from(xv, (v, i) => roundTo(dtype, v + rv[i]));
    t.same(Array.from(hv), Array.from(want), 'h = x + residual rounded once to x dtype');
    const u = nn.rmsNorm(f.h!, w, { eps });
    t.same(await f.y.toArray(), await u.y.toArray(), 'fused y equals norm(h) bit for bit');
    t.same(await f.rstd.toArray(), await u.rstd.toArray(), 'same rstd');
    const ref = rmsNormRef(xv, wv, rows, H, eps, { residual: rv, dtype });
    close(t, await arr(f.y), ref.y, 'fused y vs float64', TOL[dtype]);
    for (const z of [x, r, w, f.y, f.rstd, f.h!, u.y, u.rstd]) z.dispose();
  });
}

t.test('rmsNorm gradients by finite differences (f32)', async (t) => {
  const rows = 2, H = 6, eps = 1e-3;
  const r = mulberry32(seed);
  const xs = Array.from({ length: rows * H }, () => r() * 2 - 1);
  const ws = Array.from({ length: H }, () => r() + 0.5);
  const gs = Float64Array.from({ length: rows * H }, () => r() * 2 - 1);
  const L = async (xa: number[], wa: number[]): Promise<number> => {
    const x = tensor(xa, { shape: [rows, H] }), w = tensor(wa);
    const o = nn.rmsNorm(x, w, { eps });
    const yv = await arr(o.y);
    for (const z of [x, w, o.y, o.rstd]) z.dispose();
    return yv.reduce((s, v, i) => s + v * gs[i], 0);
  };
  const x = tensor(xs, { shape: [rows, H] }), w = tensor(ws), dy = tensor(Array.from(gs), { shape: [rows, H] });
  const o = nn.rmsNorm(x, w, { eps });
  const g = nn.rmsNormBackward(dy, x, w, o.rstd);
  const [dx, dw] = [await g.dx.toArray(), await g.dweight.toArray()];
  const e = 1e-2;
  let worst = 0;
  for (let i = 0; i < rows * H; i++) {
    const p = [...xs], m = [...xs]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(p, ws) - await L(m, ws)) / (2 * e) - dx[i]));
  }
  for (let i = 0; i < H; i++) {
    const p = [...ws], m = [...ws]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(xs, p) - await L(xs, m)) / (2 * e) - dw[i]));
  }
  t.ok(worst < 2e-3, `dx and dweight match central differences (worst abs error ${worst.toExponential(2)})`);
  for (const z of [x, w, dy, o.y, o.rstd, g.dx, g.dweight]) z.dispose();
});

// ---------------------------------------------------------------- SwiGLU

for (const dtype of FLOATS) {
  t.test(`swiglu fwd/bwd ${dtype} (cpu) vs float64, poisoned and in-place outputs`, async (t) => {
    const shape = [5, 203];  // odd size: vector body + tail on CUDA
    const g = rnd(shape, dtype, 'cpu', 3), u = rnd(shape, dtype), dy = rnd(shape, dtype);
    const [gv, uv, dyv] = await Promise.all([arr(g), arr(u), arr(dy)]);
    const out = empty(shape, { dtype }).fill_(NaN);
    t.equal(nn.swiglu(g, u, { out }), out);
    close(t, await arr(out), swigluRef(gv, uv), 'y', TOL[dtype]);
    const dg = empty(shape, { dtype }).fill_(NaN), du = empty(shape, { dtype }).fill_(12345);
    nn.swigluBackward(dy, g, u, { dgate: dg, dup: du });
    const ref = swigluBackwardRef(dyv, gv, uv);
    close(t, await arr(dg), ref.dgate, 'dgate', scaled(2, dtype));
    close(t, await arr(du), ref.dup, 'dup', scaled(2, dtype));
    // in place: dgate into gate, dup into up; y into up
    const y2 = nn.swiglu(g, u);
    const g2 = g.clone(), u2 = u.clone();
    nn.swigluBackward(dy, g2, u2, { dgate: g2, dup: u2 });
    t.same(await g2.toArray(), await dg.toArray(), 'in-place dgate equals out-of-place');
    t.same(await u2.toArray(), await du.toArray(), 'in-place dup equals out-of-place');
    nn.swiglu(g, u, { out: u });
    t.same(await u.toArray(), await y2.toArray(), 'swiglu into up in place');
    for (const z of [g, u, dy, out, dg, du, y2, g2, u2]) z.dispose();
  });
}

t.test('swiglu gradients by finite differences (f32)', async (t) => {
  const n = 12, r = mulberry32(seed + 1);
  const gs = Array.from({ length: n }, () => r() * 8 - 4), us = Array.from({ length: n }, () => r() * 2 - 1);
  const ws = Array.from({ length: n }, () => r() * 2 - 1);
  const L = async (ga: number[], ua: number[]): Promise<number> => {
    const g = tensor(ga), u = tensor(ua);
    const y = nn.swiglu(g, u);
    const v = await arr(y);
    for (const z of [g, u, y]) z.dispose();
    return v.reduce((s, x, i) => s + x * ws[i], 0);
  };
  const g = tensor(gs), u = tensor(us), dy = tensor(ws);
  const { dgate, dup } = nn.swigluBackward(dy, g, u);
  const [dg, du] = [await dgate.toArray(), await dup.toArray()];
  const e = 1e-2;
  let worst = 0;
  for (let i = 0; i < n; i++) {
    const p = [...gs], m = [...gs]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(p, us) - await L(m, us)) / (2 * e) - dg[i]));
    const p2 = [...us], m2 = [...us]; p2[i] += e; m2[i] -= e;
    worst = Math.max(worst, Math.abs((await L(gs, p2) - await L(gs, m2)) / (2 * e) - du[i]));
  }
  t.ok(worst < 1e-3, `dgate and dup match central differences (worst ${worst.toExponential(2)})`);
  for (const z of [g, u, dy, dgate, dup]) z.dispose();
});

// ---------------------------------------------------------------- embedding

for (const dtype of FLOATS) {
  t.test(`embedding fwd/bwd ${dtype} (cpu)`, async (t) => {
    const V = 50, H = 24, r = mulberry32(seed + 2);
    const idsArr = Int32Array.from({ length: 2 * 7 }, () => Math.floor(r() * V));
    idsArr[3] = idsArr[5] = idsArr[9];  // repeated ids accumulate
    idsArr[0] = 0; idsArr[1] = V - 1;    // both ends of the range
    const ids = tensor(idsArr, { shape: [2, 7] });
    const w = rnd([V, H], dtype);
    const wv = await arr(w);
    const e = nn.embedding(ids, w);
    t.same(e.shape, [2, 7, H]); t.equal(e.dtype, dtype);
    const ev = await arr(e);
    let bad = 0;
    for (let tk = 0; tk < 14; tk++) for (let c = 0; c < H; c++) if (ev[tk * H + c] !== wv[idsArr[tk] * H + c]) bad++;
    t.equal(bad, 0, 'rows copied exactly');
    const e32 = nn.embedding(ids, w, { dtype: 'f32' });
    t.same(Array.from(await e32.toArray()), Array.from(ev), 'f32 output of the same values');
    const dy = rnd([2, 7, H], dtype);
    const dyv = await arr(dy);
    const dw = rnd([V, H], 'f32');
    const dw0 = await arr(dw);
    t.equal(nn.embeddingBackward(dy, ids, dw), dw);
    close(t, await arr(dw), embeddingBackwardRef(dyv, idsArr, V, H, dw0), 'dweight += scatter', TOL.f32);
    const dw2 = zeros([V, H]), dw3 = zeros([V, H]);
    nn.embeddingBackward(dy, ids, dw2); nn.embeddingBackward(dy, ids, dw3);
    t.same(await dw2.toArray(), await dw3.toArray(), 'deterministic on the CPU');
    for (const z of [ids, w, e, e32, dy, dw, dw2, dw3]) z.dispose();
  });
}

t.test('embedding: out-of-range ids fail the queued op with ERR_ARG (cpu)', async (t) => {
  const w = rnd([10, 8]);
  for (const badId of [10, -1]) {
    const ids = tensor(new Int32Array([1, badId, 2]));
    const e = nn.embedding(ids, w);
    await rejectsCode(t, () => synchronize('cpu'), 'ERR_ARG', `id ${badId} -> ERR_ARG at the next sync`);
    const dw = zeros([10, 8]);
    nn.embeddingBackward(rnd([3, 8]), ids, dw);
    await rejectsCode(t, () => dw.toArray(), 'ERR_ARG', `backward with id ${badId} -> ERR_ARG`);
    await rejectsCode(t, () => dw.toArray(), 'ERR_ARG', 'a failed output stays failed (never reads as data)');
    t.same(Array.from(await w.toArray()).length, 80, 'the input weight is not poisoned by the failure');
    // the failure was also recorded for this thread's next synchronize(): take it, so it does not leak
    await rejectsCode(t, () => synchronize('cpu'), 'ERR_ARG', 'the thread-level error of the failed backward');
    ids.dispose(); e.dispose(); dw.dispose();
  }
  await nn.checkIds('cpu');
  w.dispose();
});

// ---------------------------------------------------------------- cross-entropy

for (const dtype of FLOATS) {
  for (const V of [1000, 1003]) {
    t.test(`crossEntropy ${dtype} V=${V} (cpu) vs float64, ignore-index, in place`, async (t) => {
      const N = 13, r = mulberry32(seed + V);
      const labelsArr = Int32Array.from({ length: N }, () => Math.floor(r() * V));
      labelsArr[2] = -100; labelsArr[7] = -100; labelsArr[0] = V - 1;
      const logits = rnd([N, V], dtype, 'cpu', 4);
      const labels = tensor(labelsArr);
      const lv = await arr(logits);
      const scale = 0.37;
      const ref = crossEntropyRef(lv, labelsArr, N, V, -100, scale);
      const losses = empty([N]).fill_(NaN), dl = empty([N, V], { dtype }).fill_(NaN);
      const r1 = nn.crossEntropy(logits, labels, { gradScale: scale, dlogits: dl, losses });
      t.equal(r1.losses, losses); t.equal(r1.dlogits, dl);
      close(t, await arr(losses), ref.losses, 'losses', scaled(4, 'f32'));
      close(t, await arr(dl), ref.dlogits, 'dlogits', scaled(4, dtype));
      const lossv = await losses.toArray(), dlv = await dl.toArray();
      t.ok(lossv[2] === 0 && lossv[7] === 0, 'ignored rows have loss 0');
      t.ok(dlv.subarray(2 * V, 3 * V).every((v) => v === 0) && dlv.subarray(7 * V, 8 * V).every((v) => v === 0),
        'ignored rows have a zero gradient');
      const r2 = nn.crossEntropy(logits, labels);
      t.equal(r2.dlogits, undefined, 'no gradient without gradScale');
      t.same(await r2.losses.toArray(), lossv, 'loss-only path gives the same losses');
      nn.crossEntropy(logits, labels, { gradScale: scale, dlogits: logits });
      t.same(await logits.toArray(), dlv, 'in place (dlogits = logits) equals out of place');
      // another ignoreIndex
      const lab2 = tensor(Int32Array.from(labelsArr, (v) => (v === -100 ? -1 : v)));
      const r3 = nn.crossEntropy(r1.dlogits!, lab2, { ignoreIndex: -1 });
      const l3 = await r3.losses.toArray();
      t.ok(l3[2] === 0 && l3[7] === 0, 'ignoreIndex -1 honoured');
      for (const z of [logits, labels, losses, dl, r2.losses, lab2, r3.losses]) z.dispose();
    });
  }
}

t.test('crossEntropy gradient by finite differences (f32)', async (t) => {
  const N = 3, V = 7, r = mulberry32(seed + 3);
  const xs = Array.from({ length: N * V }, () => r() * 4 - 2);
  const labels = tensor(new Int32Array([3, -100, 6]));
  const L = async (xa: number[]): Promise<number> => {
    const x = tensor(xa, { shape: [N, V] });
    const o = nn.crossEntropy(x, labels);
    const v = await arr(o.losses);
    x.dispose(); o.losses.dispose();
    return v.reduce((a, b) => a + b, 0);
  };
  const x = tensor(xs, { shape: [N, V] });
  const o = nn.crossEntropy(x, labels, { gradScale: 1 });
  const g = await o.dlogits!.toArray();
  const e = 1e-2;
  let worst = 0;
  for (let i = 0; i < N * V; i++) {
    const p = [...xs], m = [...xs]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(p) - await L(m)) / (2 * e) - g[i]));
  }
  t.ok(worst < 1e-3, `dlogits matches central differences (worst ${worst.toExponential(2)})`);
  for (const z of [x, labels, o.losses, o.dlogits!]) z.dispose();
});

t.test('crossEntropy: bad labels and options', async (t) => {
  const x = rnd([4, 10]);
  const ok = tensor(new Int32Array([0, 1, 2, 3]));
  for (const bad of [10, -5]) {
    const labels = tensor(new Int32Array([1, bad, 2, 3]));
    const o = nn.crossEntropy(x, labels, { gradScale: 1 });
    await rejectsCode(t, () => synchronize('cpu'), 'ERR_ARG', `label ${bad} -> ERR_ARG at the next sync`);
    labels.dispose(); o.losses.dispose(); o.dlogits!.dispose();
  }
  throwsCode(t, () => nn.crossEntropy(x, ok, { ignoreIndex: 3 }), 'ERR_ARG', 'ignoreIndex that is a class id');
  throwsCode(t, () => nn.crossEntropy(x, ok, { gradScale: NaN }), 'ERR_ARG', 'gradScale must be finite');
  throwsCode(t, () => nn.crossEntropy(x, tensor([0, 1, 2, 3])), 'ERR_DTYPE', 'f32 labels');
  throwsCode(t, () => nn.crossEntropy(x, tensor(new Int32Array([0, 1, 2]))), 'ERR_SHAPE', 'labels length');
  throwsCode(t, () => nn.crossEntropy(x.reshape([40]), ok), 'ERR_SHAPE', '1-D logits');
  throwsCode(t, () => nn.crossEntropy(x, ok, { dlogits: x.narrow(0, 1, 3).reshape([3, 10]) }), ['ERR_SHAPE', 'ERR_ARG'], 'dlogits of the wrong shape');
  throwsCode(t, () => nn.crossEntropy(x, ok, { dlogits: empty([4, 10]) }), 'ERR_ARG', 'dlogits without gradScale');
  t.throws(() => (native().crossEntropy as (o: unknown) => unknown)({ logits: x.handle(), labels: ok.handle(), gradscale: 1 }), /ERR_ARG: crossEntropy: unknown option 'gradscale'/);
  x.dispose(); ok.dispose();
});

// ---------------------------------------------------------------- LM head loss

for (const dtype of ['f32', 'bf16'] as FDtype[]) {
  t.test(`lmHeadLoss ${dtype} (cpu) vs unfused float64, chunking, ignore-index, dweight accumulation`, async (t) => {
    const N = 11, H = 16, V = 37, r = mulberry32(seed + 4);
    const labelsArr = Int32Array.from({ length: N }, () => Math.floor(r() * V));
    labelsArr[4] = -100; labelsArr[10] = -100;
    const h = rnd([N, H], dtype), w = rnd([V, H], dtype, 'cpu', 0.5), labels = tensor(labelsArr);
    const [hv, wv] = [await arr(h), await arr(w)];
    const ref = lmHeadLossRef(hv, wv, labelsArr, N, V, H, -100);
    // bf16 logits are rounded before the softmax: looser bounds there.
    const k = dtype === 'f32' ? 20 : 4;
    const results = [];
    for (const chunkTokens of [3, 4, N, 100]) {
      const o = nn.lmHeadLoss(h, w, labels, { chunkTokens });
      t.same(Array.from(await o.count.toArray()), [N - 2], `count (chunk ${chunkTokens})`);
      const loss = (await o.loss.toArray())[0];
      t.ok(Math.abs(loss - ref.loss) <= (dtype === 'f32' ? 1e-5 : 2e-2) * ref.loss,
        `loss ${loss} vs ${ref.loss} (chunk ${chunkTokens})`);
      close(t, await arr(o.dhidden), ref.dh, `dhidden (chunk ${chunkTokens})`, scaled(k, dtype));
      close(t, await arr(o.dweight), ref.dw, `dweight (chunk ${chunkTokens})`, dtype === 'f32' ? scaled(20, 'f32') : scaled(4, 'bf16'));
      t.same(o.dhidden.shape, [N, H]); t.equal(o.dhidden.dtype, dtype);
      results.push(o);
    }
    t.same(await results[0].dhidden.toArray(), await results[2].dhidden.toArray(), 'dhidden independent of chunking');
    // accumulation into a given dweight, and a given divisor
    const dw = rnd([V, H], 'f32');
    const dw0 = await arr(dw);
    const o2 = nn.lmHeadLoss(h.reshape([1, N, H]), w, labels.reshape([1, N]), { chunkTokens: 5, dweight: dw, divisor: 4 });
    t.equal(o2.dweight, dw);
    t.same(o2.dhidden.shape, [1, N, H], 'dhidden keeps hidden\'s shape');
    const ref2 = lmHeadLossRef(hv, wv, labelsArr, N, V, H, -100, 4);
    t.ok(Math.abs((await o2.loss.toArray())[0] - ref2.loss) <= (dtype === 'f32' ? 1e-5 : 2e-2) * ref2.loss, 'loss / divisor');
    close(t, await arr(dw), ref2.dw.map((v, i) => v + dw0[i]), 'dweight += with divisor', dtype === 'f32' ? scaled(20, 'f32') : scaled(4, 'bf16'));
    // f32 logits from bf16/f32 inputs: closer to the float64 reference
    const o4 = nn.lmHeadLoss(h, w, labels, { chunkTokens: 4, logitsDtype: 'f32' });
    t.ok(Math.abs((await o4.loss.toArray())[0] - ref.loss) <= 1e-5 * ref.loss, 'f32 logits: loss within 1e-5');
    close(t, await arr(o4.dhidden), ref.dh, 'f32 logits: dhidden', scaled(20, dtype === 'f32' ? 'f32' : 'bf16'));
    close(t, await arr(o4.dweight), ref.dw, 'f32 logits: dweight', scaled(20, 'f32'));
    // all tokens ignored: loss 0, zero gradients
    const none = tensor(new Int32Array(N).fill(-100));
    const o3 = nn.lmHeadLoss(h, w, none);
    t.same(Array.from(await o3.loss.toArray()), [0], 'all ignored -> loss 0');
    t.ok((await o3.dhidden.toArray()).every((v) => v === 0), 'all ignored -> dhidden 0');
    t.ok((await o3.dweight.toArray()).every((v) => v === 0), 'all ignored -> dweight 0');
    for (const o of [...results, o2, o3, o4]) for (const z of [o.loss, o.count, o.dhidden, o.dweight]) z.dispose();
    for (const z of [h, w, labels, dw, none]) z.dispose();
  });
}

t.test('lmHeadLoss gradient by finite differences (f32)', async (t) => {
  const N = 4, H = 3, V = 5, r = mulberry32(seed + 5);
  const hs = Array.from({ length: N * H }, () => r() * 2 - 1), ws = Array.from({ length: V * H }, () => r() * 2 - 1);
  const labels = tensor(new Int32Array([1, 4, -100, 0]));
  const L = async (ha: number[], wa: number[]): Promise<number> => {
    const h = tensor(ha, { shape: [N, H] }), w = tensor(wa, { shape: [V, H] });
    const o = nn.lmHeadLoss(h, w, labels, { chunkTokens: 3 });
    const v = (await o.loss.toArray())[0];
    for (const z of [h, w, o.loss, o.count, o.dhidden, o.dweight]) z.dispose();
    return v;
  };
  const h = tensor(hs, { shape: [N, H] }), w = tensor(ws, { shape: [V, H] });
  const o = nn.lmHeadLoss(h, w, labels, { chunkTokens: 3 });
  const [dh, dw] = [await o.dhidden.toArray(), await o.dweight.toArray()];
  const e = 1e-2;
  let worst = 0;
  for (let i = 0; i < N * H; i++) {
    const p = [...hs], m = [...hs]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(p, ws) - await L(m, ws)) / (2 * e) - dh[i]));
  }
  for (let i = 0; i < V * H; i++) {
    const p = [...ws], m = [...ws]; p[i] += e; m[i] -= e;
    worst = Math.max(worst, Math.abs((await L(hs, p) - await L(hs, m)) / (2 * e) - dw[i]));
  }
  t.ok(worst < 1e-3, `dhidden and dweight match central differences (worst ${worst.toExponential(2)})`);
  for (const z of [h, w, labels, o.loss, o.count, o.dhidden, o.dweight]) z.dispose();
});

t.test('lmHeadLoss errors', async (t) => {
  const h = rnd([4, 8]), w = rnd([6, 8]), labels = tensor(new Int32Array([0, 1, 2, 3]));
  throwsCode(t, () => nn.lmHeadLoss(h, rnd([6, 7]), labels), 'ERR_SHAPE', 'hidden size mismatch');
  throwsCode(t, () => nn.lmHeadLoss(h, w, tensor(new Int32Array([0, 1]))), 'ERR_SHAPE', 'label count');
  throwsCode(t, () => nn.lmHeadLoss(h, w, tensor([0, 1, 2, 3])), 'ERR_DTYPE', 'f32 labels');
  throwsCode(t, () => nn.lmHeadLoss(h, rnd([6, 8], 'bf16'), labels), 'ERR_DTYPE', 'mixed dtypes');
  throwsCode(t, () => nn.lmHeadLoss(h, w, labels, { chunkTokens: 0 }), 'ERR_ARG', 'chunkTokens 0');
  throwsCode(t, () => nn.lmHeadLoss(h, w, labels, { divisor: 0 }), 'ERR_ARG', 'divisor 0');
  throwsCode(t, () => nn.lmHeadLoss(h, w, labels, { dweight: zeros([6, 8], { dtype: 'bf16' }) }), 'ERR_SHAPE', 'bf16 dweight');
  const badL = tensor(new Int32Array([0, 6, 1, 2]));
  const o = nn.lmHeadLoss(h, w, badL);
  await rejectsCode(t, () => o.loss.toArray(), 'ERR_ARG', 'label out of range -> ERR_ARG at the next sync');
  for (const z of [h, w, labels, badL, o.loss, o.count, o.dhidden, o.dweight]) z.dispose();
});

// ---------------------------------------------------------------- shared error paths

t.test('layer ops reject bad shapes, dtypes and devices with coded errors', async (t) => {
  const x = rnd([4, 8]), w = rnd([8]), i = zeros([4, 8], { dtype: 'i32' });
  throwsCode(t, () => nn.rmsNorm(x, rnd([7])), 'ERR_SHAPE', 'rmsNorm weight size');
  throwsCode(t, () => nn.rmsNorm(i, w), 'ERR_DTYPE', 'rmsNorm i32 x');
  throwsCode(t, () => nn.rmsNorm(x.to('bf16'), rnd([8], 'f16')), 'ERR_DTYPE', 'rmsNorm f16 weight with bf16 x');
  throwsCode(t, () => nn.rmsNorm(x, w, { residual: rnd([4, 7]) }), 'ERR_SHAPE', 'rmsNorm residual shape');
  throwsCode(t, () => nn.rmsNorm(x, w, { residual: rnd([4, 8], 'bf16') }), 'ERR_DTYPE', 'rmsNorm residual dtype');
  throwsCode(t, () => nn.rmsNorm(x, w, { eps: -1 }), 'ERR_ARG', 'rmsNorm negative eps');
  const { rstd } = nn.rmsNorm(x, w);
  throwsCode(t, () => nn.rmsNormBackward(rnd([4, 7]), x, w, rstd), 'ERR_SHAPE', 'rmsNormBackward dy shape');
  throwsCode(t, () => nn.rmsNormBackward(x, x, w, rnd([3])), 'ERR_SHAPE', 'rmsNormBackward rstd shape');
  throwsCode(t, () => nn.rmsNormBackward(x, x, w, rstd, { dweight: zeros([8], { dtype: 'bf16' }) }), 'ERR_DTYPE', 'bf16 dweight');
  throwsCode(t, () => nn.rmsNormBackward(x, x, w, rstd, { dx: x.narrow(0, 1, 3).reshape([3, 8]) }), 'ERR_SHAPE', 'dx shape');
  throwsCode(t, () => nn.swiglu(x, rnd([4, 7])), 'ERR_SHAPE', 'swiglu shapes');
  throwsCode(t, () => nn.swiglu(x, x.to('bf16')), 'ERR_DTYPE', 'swiglu dtypes');
  throwsCode(t, () => nn.swiglu(i, i), 'ERR_DTYPE', 'swiglu i32');
  const big = rnd([64]);
  throwsCode(t, () => nn.swiglu(big.narrow(0, 0, 32), big.narrow(0, 32, 32), { out: big.narrow(0, 16, 32) }), 'ERR_ARG', 'swiglu partial overlap');
  throwsCode(t, () => nn.swigluBackward(x, x, x, { dgate: i, dup: x }), 'ERR_DTYPE', 'swigluBackward dgate dtype');
  const ids = tensor(new Int32Array([1, 2]));
  throwsCode(t, () => nn.embedding(x, x), 'ERR_DTYPE', 'embedding f32 ids');
  throwsCode(t, () => nn.embedding(ids, w), 'ERR_SHAPE', 'embedding 1-D weight');
  throwsCode(t, () => nn.embeddingBackward(rnd([2, 7]), ids, zeros([4, 8])), 'ERR_SHAPE', 'embeddingBackward dy shape');
  throwsCode(t, () => nn.embeddingBackward(rnd([2, 8]), ids, zeros([4, 8], { dtype: 'bf16' })), 'ERR_DTYPE', 'embeddingBackward bf16 dweight');
  const gone = rnd([4, 8]); gone.dispose();
  throwsCode(t, () => nn.rmsNorm(gone, w), 'ERR_DISPOSED', 'disposed input');
  throwsCode(t, () => nn.rmsNorm(x, w, 3 as never), 'ERR_ARG', 'options must be an object');
  t.throws(() => (native().rmsNorm as (o: unknown) => unknown)({ x: x.handle(), weight: w.handle(), epsilon: 1 }), /ERR_ARG: rmsNorm: unknown option 'epsilon'/);
  for (const z of [x, w, i, rstd, big, ids]) z.dispose();
});

t.test('layer ops reject tensors on different devices', { ...gpu }, async (t) => {
  const x = rnd([4, 8]), w = rnd([8], 'f32', 'cuda');
  throwsCode(t, () => nn.rmsNorm(x, w), 'ERR_DEVICE', 'rmsNorm cpu x, cuda weight');
  throwsCode(t, () => nn.swiglu(x, x.to('cuda')), 'ERR_DEVICE', 'swiglu');
  throwsCode(t, () => nn.embedding(tensor(new Int32Array([1])), rnd([4, 8], 'f32', 'cuda')), 'ERR_DEVICE', 'embedding cpu ids');
  throwsCode(t, () => nn.crossEntropy(x.to('cuda'), tensor(new Int32Array([0, 1, 2, 3]))), 'ERR_DEVICE', 'crossEntropy cpu labels');
  x.dispose(); w.dispose();
});

// ---------------------------------------------------------------- CUDA vs the float64 reference

t.test('CUDA rmsNorm 8192 x 4096 bf16 (fused residual) fwd/bwd vs float64', { ...gpu }, async (t) => {
  const rows = 8192, H = 4096, eps = 1e-5;
  const x = rnd([rows, H], 'bf16', 'cuda'), res = rnd([rows, H], 'bf16', 'cuda'), w = rnd([H], 'bf16', 'cuda', 0.3);
  const dy = rnd([rows, H], 'bf16', 'cuda');
  const [xv, rv, wv, dyv] = await Promise.all([arr(x), arr(res), arr(w), arr(dy)]);
  const o = nn.rmsNorm(x, w, { eps, residual: res });
  const ref = rmsNormRef(xv, wv, rows, H, eps, { residual: rv, dtype: 'bf16' });
  close(t, await arr(o.h!), ref.h, 'h', { rtol: 0, atol: 0 });
  close(t, await arr(o.y), ref.y, 'y', TOL.bf16);
  close(t, await arr(o.rstd), ref.rstd, 'rstd', TOL.f32);
  const g = nn.rmsNormBackward(dy, o.h!, w, o.rstd);
  const gr = rmsNormBackwardRef(dyv, ref.h, wv, rows, H, eps);
  close(t, await arr(g.dx), gr.dx, 'dx', scaled(4, 'bf16'));
  close(t, await arr(g.dweight), gr.dw, 'dweight', { rtol: 1e-4, atol: 1e-5 });
  const g2 = nn.rmsNormBackward(dy, o.h!, w, o.rstd);
  t.same(await g2.dweight.toArray(), await g.dweight.toArray(), 'dweight bit-reproducible on CUDA');
  // f32 and odd H through the scalar path
  const x2 = rnd([33, 200], 'f32', 'cuda'), w2 = rnd([200], 'f32', 'cuda');
  const o2 = nn.rmsNorm(x2, w2, { eps });
  close(t, await arr(o2.y), rmsNormRef(await arr(x2), await arr(w2), 33, 200, eps).y, 'f32 H=200 y', scaled(2, 'f32'));
  for (const z of [x, res, w, dy, o.y, o.rstd, o.h!, g.dx, g.dweight, g2.dx, g2.dweight, x2, w2, o2.y, o2.rstd]) z.dispose();
});

t.test('CUDA swiglu / embedding vs float64', { ...gpu }, async (t) => {
  const shape = [4096, 1433];
  const g = rnd(shape, 'bf16', 'cuda', 3), u = rnd(shape, 'bf16', 'cuda'), dy = rnd(shape, 'bf16', 'cuda');
  const [gv, uv, dyv] = await Promise.all([arr(g), arr(u), arr(dy)]);
  close(t, await arr(nn.swiglu(g, u)), swigluRef(gv, uv), 'swiglu y', TOL.bf16);
  const b = nn.swigluBackward(dy, g, u);
  const br = swigluBackwardRef(dyv, gv, uv);
  close(t, await arr(b.dgate), br.dgate, 'dgate', scaled(2, 'bf16'));
  close(t, await arr(b.dup), br.dup, 'dup', scaled(2, 'bf16'));
  const V = 32000, H = 512, N = 4096, r = mulberry32(seed + 6);
  const idsArr = Int32Array.from({ length: N }, () => Math.floor(r() * 64));  // many repeats
  const ids = tensor(idsArr, { shape: [2, N / 2], device: 'cuda' });
  const w = rnd([V, H], 'bf16', 'cuda');
  const e = nn.embedding(ids, w);
  const wv = await arr(w), ev = await arr(e);
  let bad = 0;
  for (let tk = 0; tk < N; tk++) for (let c = 0; c < H; c++) if (ev[tk * H + c] !== wv[idsArr[tk] * H + c]) bad++;
  t.equal(bad, 0, 'embedding rows exact');
  const dyE = rnd([2, N / 2, H], 'bf16', 'cuda');
  const dw = zeros([V, H], { device: 'cuda' });
  nn.embeddingBackward(dyE, ids, dw);
  close(t, await arr(dw), embeddingBackwardRef(await arr(dyE), idsArr, V, H), 'embedding dweight', { rtol: 1e-5, atol: 1e-6 });
  await nn.checkIds('cuda');
  t.pass('no bad ids recorded');
  // a bad id: zero row, recorded, reported once
  const badIds = tensor(new Int32Array([3, V, 5, -7]), { device: 'cuda' });
  const eb = nn.embedding(badIds, w);
  const ebv = await eb.toArray();
  t.ok(ebv.subarray(H, 2 * H).every((v) => v === 0) && ebv.subarray(3 * H).every((v) => v === 0), 'bad rows zeroed');
  await rejectsCode(t, () => nn.checkIds('cuda'), 'ERR_ARG', 'checkIds reports the bad id');
  await nn.checkIds('cuda');
  t.pass('the record is cleared after the report');
  for (const z of [g, u, dy, b.dgate, b.dup, ids, w, e, dyE, dw, badIds, eb]) z.dispose();
});

t.test('CUDA crossEntropy vocab 32000 / 128256 vs float64, in place, bad labels', { ...gpu }, async (t) => {
  for (const [V, N] of [[32000, 512], [128256, 64], [32003, 33]]) {
    const r = mulberry32(seed + V);
    const labelsArr = Int32Array.from({ length: N }, () => Math.floor(r() * V));
    labelsArr[1] = -100;
    const logits = rnd([N, V], 'bf16', 'cuda', 5), labels = tensor(labelsArr, { device: 'cuda' });
    const lv = await arr(logits);
    const ref = crossEntropyRef(lv, labelsArr, N, V, -100, 1 / 7);
    const o = nn.crossEntropy(logits, labels, { gradScale: 1 / 7, dlogits: logits });
    close(t, await arr(o.losses), ref.losses, `V=${V} losses`, { rtol: 1e-5, atol: 1e-5 });
    close(t, await arr(logits), ref.dlogits, `V=${V} dlogits in place`, scaled(2, 'bf16'));
    for (const z of [logits, labels, o.losses]) z.dispose();
  }
  const x = rnd([4, 100], 'f32', 'cuda');
  const labels = tensor(new Int32Array([1, 100, 2, -3]), { device: 'cuda' });
  const o = nn.crossEntropy(x, labels, { gradScale: 1 });
  const lv = await o.losses.toArray(), dl = await o.dlogits!.toArray();
  t.ok(lv[1] === 0 && lv[3] === 0 && dl.subarray(100, 200).every((v) => v === 0), 'bad label rows ignored');
  await rejectsCode(t, () => nn.checkIds('cuda'), 'ERR_ARG', 'bad label reported');
  for (const z of [x, labels, o.losses, o.dlogits!]) z.dispose();
});

t.test('CUDA lmHeadLoss vs float64 (bf16, V=32000)', { ...gpu }, async (t) => {
  const N = 512, H = 64, V = 32000, r = mulberry32(seed + 8);
  const labelsArr = Int32Array.from({ length: N }, () => (r() < 0.1 ? -100 : Math.floor(r() * V)));
  const h = rnd([N, H], 'bf16', 'cuda'), w = rnd([V, H], 'bf16', 'cuda', 0.2), labels = tensor(labelsArr, { device: 'cuda' });
  const ref = lmHeadLossRef(await arr(h), await arr(w), labelsArr, N, V, H, -100);
  const o = nn.lmHeadLoss(h, w, labels, { chunkTokens: 200 });  // two full chunks + a partial one
  const loss = (await o.loss.toArray())[0];
  t.ok(Math.abs(loss - ref.loss) <= 1e-2 * ref.loss, `loss ${loss} vs ${ref.loss}`);
  t.same(Array.from(await o.count.toArray()), [ref.count], 'count');
  close(t, await arr(o.dhidden), ref.dh, 'dhidden', scaled(8, 'bf16'));
  close(t, await arr(o.dweight), ref.dw, 'dweight', scaled(8, 'bf16'));
  for (const z of [h, w, labels, o.loss, o.count, o.dhidden, o.dweight]) z.dispose();
});

t.test('CUDA dtype / path matrix vs float64 (every kernel instantiation family)', { ...gpu }, async (t) => {
  for (const dtype of FLOATS) {
    // vector / scalar path with the row in registers (512, 200), and rows too long for registers
    // (20480: vector, 3001: scalar) that the forward re-reads
    for (const [H, rows] of [[512, 300], [200, 300], [20480, 16], [3001, 16]]) {
      for (const wdt of [dtype, 'f32'] as FDtype[]) {
        const eps = 1e-5;
        const x = rnd([rows, H], dtype, 'cuda'), w = rnd([H], wdt, 'cuda', 0.5), dy = rnd([rows, H], dtype, 'cuda');
        const res = rnd([rows, H], dtype, 'cuda');
        const [xv, wv, dyv, rv] = await Promise.all([arr(x), arr(w), arr(dy), arr(res)]);
        const tag = `${dtype} H=${H} w=${wdt}`;
        const o = nn.rmsNorm(x, w, { eps, residual: res });
        const ref = rmsNormRef(xv, wv, rows, H, eps, { residual: rv, dtype });
        close(t, await arr(o.h!), ref.h, `${tag} h`, { rtol: 0, atol: 0 });
        close(t, await arr(o.y), ref.y, `${tag} y`, TOL[dtype]);
        const g = rmsNormBackwardRef(dyv, ref.h, wv, rows, H, eps);
        const b1 = nn.rmsNormBackward(dy, o.h!, w, o.rstd);
        close(t, await arr(b1.dx), g.dx, `${tag} dx`, scaled(4, dtype));
        close(t, await arr(b1.dweight), g.dw, `${tag} dweight`, { rtol: 1e-4, atol: 1e-5 });
        for (const dxdt of [dtype, 'f32'] as FDtype[]) {
          const acc = rnd([rows, H], dxdt, 'cuda');
          const accv = await arr(acc);
          nn.rmsNormBackward(dy, o.h!, w, o.rstd, { dx: acc });
          close(t, await arr(acc), g.dx.map((v, i) => v + accv[i]), `${tag} dx += (${dxdt})`, scaled(4, dxdt));
          acc.dispose();
        }
        for (const z of [x, w, dy, res, o.y, o.rstd, o.h!, b1.dx, b1.dweight]) z.dispose();
      }
    }
    // swiglu: vector body + tail, and an unaligned view (scalar path)
    for (const n of [4099, 64]) {
      const big = rnd([3 * n + 1], dtype, 'cuda', 2);
      const g = big.narrow(0, 1, n), u = big.narrow(0, n + 1, n), dy = big.narrow(0, 2 * n + 1, n);
      const [gv, uv, dyv] = await Promise.all([arr(g), arr(u), arr(dy)]);
      const y = nn.swiglu(g, u);
      close(t, await arr(y), swigluRef(gv, uv), `swiglu ${dtype} n=${n} (offset view)`, TOL[dtype]);
      const b = nn.swigluBackward(dy, g, u);
      const br = swigluBackwardRef(dyv, gv, uv);
      close(t, await arr(b.dgate), br.dgate, `dgate ${dtype} n=${n}`, scaled(2, dtype));
      close(t, await arr(b.dup), br.dup, `dup ${dtype} n=${n}`, scaled(2, dtype));
      for (const z of [big, g, u, dy, y, b.dgate, b.dup]) z.dispose();
    }
    // embedding: out dtype conversion, odd hidden size
    for (const H of [64, 37]) {
      const V = 100, idsArr = Int32Array.from({ length: 50 }, (_, i) => (i * 37) % V);
      const ids = tensor(idsArr, { device: 'cuda' }), w = rnd([V, H], dtype, 'cuda');
      const e = nn.embedding(ids, w, { dtype: 'f32' });
      const wv = await arr(w), ev = await arr(e);
      t.ok(ev.every((v, i) => v === wv[idsArr[Math.floor(i / H)] * H + (i % H)]), `embedding ${dtype} H=${H} -> f32 exact`);
      const dy = rnd([50, H], dtype, 'cuda'), dw = zeros([V, H], { device: 'cuda' });
      nn.embeddingBackward(dy, ids, dw);
      close(t, await arr(dw), embeddingBackwardRef(await arr(dy), idsArr, V, H), `embeddingBackward ${dtype} H=${H}`, { rtol: 1e-5, atol: 1e-6 });
      for (const z of [ids, w, e, dy, dw]) z.dispose();
    }
    // cross-entropy, out of place, odd vocab and one ignored row
    const N = 40, V = 1001;
    const labelsArr = Int32Array.from({ length: N }, (_, i) => (i === 5 ? -100 : (i * 7919) % V));
    const x = rnd([N, V], dtype, 'cuda', 3), labels = tensor(labelsArr, { device: 'cuda' });
    const ref = crossEntropyRef(await arr(x), labelsArr, N, V, -100, 0.5);
    const o = nn.crossEntropy(x, labels, { gradScale: 0.5 });
    close(t, await arr(o.losses), ref.losses, `crossEntropy ${dtype} losses`, { rtol: 1e-5, atol: 1e-5 });
    close(t, await arr(o.dlogits!), ref.dlogits, `crossEntropy ${dtype} dlogits`, scaled(2, dtype));
    for (const z of [x, labels, o.losses, o.dlogits!]) z.dispose();
  }
  await nn.checkIds('cuda');
});
