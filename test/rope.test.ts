// rope.apply / backward / applyQK against the independent float64 reference in test/ref/rope.ts.
// Inputs are fresh random values (seed printed; replay with TEST_SEED), already representable in the
// dtype so the reference sees exactly what the kernel sees.
import t, { Test } from 'tap';
import { rope, RopeApplyOptions } from '../lib/rope';
import { RopeConfigError, callNative } from '../lib/errors';
import { Tensor, empty, synchronize, tensor } from '../lib/tensor';
import { native } from '../lib/native';
import { Dtype } from '../lib/dtype';
import * as ref from './ref/rope';
import { gpu } from './helpers/devices';
import { throwsCode } from './helpers/assert';
import { mulberry32, randomNormal, testSeed } from './helpers/rng';

const seed = testSeed();
t.comment(`seed ${seed}`);
const rnd = mulberry32(seed);
const irand = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));

type FDtype = 'f32' | 'f16' | 'bf16';
type Shape4 = [number, number, number, number];
const DTYPES: FDtype[] = ['bf16', 'f16', 'f32'];
const STYLES: ref.RefStyle[] = ['neox', 'interleaved'];

function randomValues(n: number, dtype: FDtype): Float64Array {
  const v = randomNormal(n, rnd);
  for (let i = 0; i < n; i++) v[i] = ref.roundTo(dtype, v[i]);
  return v;
}

// Leaves a NaN-filled block of `bytes` in the allocator's cache, so an output that reuses it and is
// not fully written shows NaN rather than plausible stale values.
function poisonCache(shape: readonly number[], dtype: FDtype, device: 'cpu' | 'cuda'): void {
  const p = empty(shape, { dtype, device });
  p.fill_(NaN);
  p.dispose();
}

function makeX(shape: Shape4, dtype: FDtype, device: 'cpu' | 'cuda'): { x: Tensor; v: Float64Array } {
  const v = randomValues(shape.reduce((a, b) => a * b, 1), dtype);
  return { x: tensor(v, { shape, dtype, device }), v };
}

function refOpts(o: RopeApplyOptions, invFreq: Float64Array, inverse: boolean, positions?: Int32Array): ref.RefOptions {
  return {
    invFreq, rotaryDim: 2 * invFreq.length, style: o.style ?? 'neox', precision: o.precision ?? 'exact',
    attentionFactor: o.attentionFactor ?? 1, inverse, positionOffset: o.positionOffset, positions,
  };
}

interface Cmp { bad: number; worst: number; exactFrac: number; maxRel: number; firstBad: string }

/**
 * Compares kernel output `got` with the float64 reference for every element: within
 * ref.elementBound (1 ulp + fp32 arithmetic), plus `tableSlack` * |af| * (|a|+|b|) when the mode
 * stores cos/sin in bf16 (an ulp flip of the fp32 sinf between libm and the reference). Pass-through
 * dims must be bit-identical to the input.
 */
function compare(got: ArrayLike<number>, x: Float64Array, want: Float64Array, shape: Shape4, dtype: FDtype,
  style: ref.RefStyle, rotaryDim: number, af: number, tableSlack = 0): Cmp {
  const [B, S, H, D] = shape;
  let bad = 0, worst = 0, exact = 0, total = 0, maxRel = 0;
  let firstBad = '';
  for (let row = 0; row < B * S * H; row++) {
    const o = row * D;
    for (let i = 0; i < rotaryDim / 2; i++) {
      const [i1, i2] = ref.pairIndices(style, rotaryDim, i);
      const a = x[o + i1], b = x[o + i2];
      for (const k of [i1, i2]) {
        const g = got[o + k], r = want[o + k];
        const bound = ref.elementBound(dtype, r, a, b, af) + tableSlack * Math.abs(af) * (Math.abs(a) + Math.abs(b));
        const e = Math.abs(g - r);
        if (!(e <= bound)) {
          if (!bad) firstBad = `row ${row} dim ${k}: got ${g} want ${r} (a=${a}, b=${b}, bound ${bound})`;
          bad++;
        }
        worst = Math.max(worst, e / ref.ulp(dtype, r));
        maxRel = Math.max(maxRel, e / (Math.abs(af) * (Math.abs(a) + Math.abs(b)) || 1));
        if (g === ref.roundTo(dtype, r)) exact++;
        total++;
      }
    }
    for (let k = rotaryDim; k < D; k++) {
      if (!Object.is(got[o + k], x[o + k])) {
        if (!bad) firstBad = `pass-through row ${row} dim ${k}: got ${got[o + k]} want ${x[o + k]}`;
        bad++;
      }
    }
  }
  return { bad, worst, exactFrac: total ? exact / total : 1, maxRel, firstBad };
}

async function checkAgainstRef(tt: Test, device: 'cpu' | 'cuda', dtype: FDtype, style: ref.RefStyle,
  shape: Shape4, o: RopeApplyOptions & { invFreq: Float64Array }, positions?: Int32Array, inverse = false): Promise<Cmp> {
  const { x, v } = makeX(shape, dtype, device);
  const pos = positions ? tensor(positions, { shape: [shape[0], shape[1]], dtype: 'i32', device }) : undefined;
  poisonCache(shape, dtype, device);
  const opts: RopeApplyOptions = { ...o, style, ...(pos ? { positions: pos } : {}) };
  const y = inverse ? rope.backward(x, opts) : rope.apply(x, opts);
  const got = await y.toArray();
  const want = ref.ropeRef(v, shape, refOpts(opts, o.invFreq, inverse, positions));
  const slack = o.precision === 'bf16' ? 2 ** -7 : 0;
  const c = compare(got, v, want, shape, dtype, style, 2 * o.invFreq.length, o.attentionFactor ?? 1, slack);
  const what = `${device} ${dtype} ${style} ${o.precision ?? 'exact'} [${shape}] R=${2 * o.invFreq.length}` +
    ` ${positions ? 'positions' : `offset ${o.positionOffset ?? 0}`}${inverse ? ' backward' : ''}`;
  tt.equal(c.bad, 0, `${what}: every element within bound (worst ${c.worst.toFixed(2)} ulp) ${c.firstBad}`);
  if (dtype !== 'f32' && (o.precision ?? 'exact') === 'exact')
    tt.ok(c.exactFrac >= 0.99, `${what}: ${(100 * c.exactFrac).toFixed(3)}% equal the correctly rounded result`);
  x.dispose(); y.dispose(); pos?.dispose();
  return c;
}

function invFreqFor(rotaryDim: number): Float64Array {
  return ref.invFreqFromBase(10 ** (4 + 4 * rnd()), rotaryDim); // base in [1e4, 1e8)
}

function randomPositions(n: number, max: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = irand(0, max);
  return p;
}

const devices: ('cpu' | 'cuda')[] = ['cpu', 'cuda'];

for (const device of devices) {
  t.test(`${device}: exact mode equals the float64 reference (all dtypes, styles, partial rotary)`,
    device === 'cuda' ? gpu : {}, async (tt) => {
      for (const dtype of DTYPES) {
        for (const style of STYLES) {
          // full rotary at positions just below 2^22, an offset shard
          await checkAgainstRef(tt, device, dtype, style, [2, 24, 3, 64],
            { invFreq: invFreqFor(64), positionOffset: 2 ** 22 - 24, attentionFactor: 0.5 + rnd() });
          // partial rotary, odd head count, head dim not a multiple of 16 bytes
          await checkAgainstRef(tt, device, dtype, style, [1, 17, 5, 40],
            { invFreq: invFreqFor(24), positionOffset: irand(0, 2 ** 22) });
          // random int32 positions up to 2^22 in a tensor
          await checkAgainstRef(tt, device, dtype, style, [3, 11, 2, 32], { invFreq: invFreqFor(32) },
            randomPositions(33, 2 ** 22));
          // the backward is the reference with the angle negated
          await checkAgainstRef(tt, device, dtype, style, [2, 9, 4, 48],
            { invFreq: invFreqFor(48), positionOffset: irand(0, 2 ** 22), attentionFactor: 1.25 }, undefined, true);
        }
      }
    });

  t.test(`${device}: exact at the ends of the int32 range and at negative positions`,
    device === 'cuda' ? gpu : {}, async (tt) => {
      const pos = new Int32Array([2 ** 31 - 1, 2 ** 31 - 2, -(2 ** 31), -1, 0, 1, 2 ** 24 - 1, 2 ** 24 + 1]);
      await checkAgainstRef(tt, device, 'f32', 'neox', [2, 4, 2, 64], { invFreq: invFreqFor(64) }, pos);
      await checkAgainstRef(tt, device, 'bf16', 'interleaved', [1, 8, 2, 64], { invFreq: invFreqFor(64) }, pos);
      await checkAgainstRef(tt, device, 'f32', 'neox', [1, 8, 1, 128],
        { invFreq: ref.invFreqFromBase(75e6, 128), positionOffset: 2 ** 31 - 8 });
    });

  t.test(`${device}: fp32 and bf16 modes reproduce their failure, exact mode does not`,
    device === 'cuda' ? gpu : {}, async (tt) => {
      // base 75e6, d=128 at positions just below 2^22: fp32 angles are off by up to ~0.18 rad there
      const invFreq = ref.invFreqFromBase(75e6, 128);
      const shape: Shape4 = [1, 32, 2, 128];
      const o = { invFreq, positionOffset: 2 ** 22 - 32 };
      for (const precision of ['exact', 'fp32', 'bf16'] as const) {
        const c = await checkAgainstRef(tt, device, 'f32', 'neox', shape, { ...o, precision });
        tt.comment(`${device} ${precision}: max |y - model| / (|a|+|b|) = ${c.maxRel.toExponential(2)}`);
      }
      // Same input through each mode, compared with the exact reference.
      const { x, v } = makeX(shape, 'f32', device);
      const exactRef = ref.ropeRef(v, shape, refOpts(o, invFreq, false));
      const errs: Record<string, number> = {};
      for (const precision of ['exact', 'fp32', 'bf16'] as const) {
        const y = rope.apply(x, { ...o, precision });
        errs[precision] = compare(await y.toArray(), v, exactRef, shape, 'f32', 'neox', 128, 1).maxRel;
        y.dispose();
      }
      x.dispose();
      tt.comment(`${device}: error vs exact rotation: exact ${errs.exact.toExponential(2)}, fp32 ${errs.fp32.toExponential(2)}, bf16 ${errs.bf16.toExponential(2)}`);
      tt.ok(errs.exact < 2e-7, `exact mode: relative error ${errs.exact} < 2e-7`);
      tt.ok(errs.fp32 > 1e-2, `fp32 mode: relative error ${errs.fp32} > 1e-2 at 2^22`);
      tt.ok(errs.bf16 > 0.5, `bf16 mode: relative error ${errs.bf16} > 0.5 (angles are noise)`);
    });

  t.test(`${device}: in place, q/k in one call (GQA), base option`, device === 'cuda' ? gpu : {}, async (tt) => {
    for (const dtype of DTYPES) {
      const invFreq = invFreqFor(64);
      const o: RopeApplyOptions = { invFreq, positionOffset: irand(0, 2 ** 22), attentionFactor: 0.9 };
      const q = makeX([2, 10, 8, 64], dtype, device);
      const k = makeX([2, 10, 2, 64], dtype, device);
      const yq = rope.apply(q.x, o), yk = rope.apply(k.x, o);
      const both = rope.applyQK(q.x, k.x, o);
      tt.same(await both.q.toRaw(), await yq.toRaw(), `${dtype}: applyQK q bits == apply(q)`);
      tt.same(await both.k.toRaw(), await yk.toRaw(), `${dtype}: applyQK k bits == apply(k)`);
      const back = rope.backwardQK(both.q, both.k, o);
      const bq = rope.backward(both.q, o), bk = rope.backward(both.k, o);
      tt.same(await back.dq.toRaw(), await bq.toRaw(), `${dtype}: backwardQK dq == backward(q)`);
      tt.same(await back.dk.toRaw(), await bk.toRaw(), `${dtype}: backwardQK dk == backward(k)`);
      bq.dispose(); bk.dispose();
      const ret = rope.apply(q.x, { ...o, inplace: true });
      tt.equal(ret, q.x, `${dtype}: inplace returns x`);
      tt.same(await q.x.toRaw(), await yq.toRaw(), `${dtype}: in place bits == out of place`);
      const rk = rope.applyQK(q.x, k.x, { ...o, inplace: true });
      tt.ok(rk.q === q.x && rk.k === k.x, `${dtype}: applyQK inplace returns q and k`);
      tt.same(await k.x.toRaw(), await yk.toRaw(), `${dtype}: applyQK in place k == apply(k)`);
      // partial rotary in place leaves the tail untouched
      const p = makeX([1, 6, 3, 64], dtype, device);
      const before = await p.x.toRaw();
      rope.apply(p.x, { invFreq: invFreqFor(16), positionOffset: 5, inplace: true });
      const after = await p.x.toRaw();
      let same = true;
      for (let r = 0; r < 18; r++) for (let d = 16; d < 64; d++) same &&= after[r * 64 + d] === before[r * 64 + d];
      tt.ok(same, `${dtype}: in place partial rotary keeps dims >= rotaryDim`);
      // base: 1 / base^(2i/R) in float64, same bits as that invFreq
      const viaBase = rope.apply(k.x, { base: 5e5, rotaryDim: 32, positionOffset: 77 });
      const viaInv = rope.apply(k.x, { invFreq: ref.invFreqFromBase(5e5, 32), positionOffset: 77 });
      tt.same(await viaBase.toRaw(), await viaInv.toRaw(), `${dtype}: base option == its invFreq`);
      for (const z of [q.x, k.x, yq, yk, both.q, both.k, back.dq, back.dk, p.x, viaBase, viaInv]) z.dispose();
    }
  });

  t.test(`${device}: interleaved is neox on a permuted head dim`, device === 'cuda' ? gpu : {}, async (tt) => {
    // interleaved pair (2i, 2i+1) <-> neox pair (i, i+R/2): the same rotation, so identical bits.
    const shape: Shape4 = [2, 7, 3, 48];
    const R = 32, D = 48;
    const { x, v } = makeX(shape, 'bf16', device);
    const perm = new Int32Array(D);
    for (let i = 0; i < R / 2; i++) { perm[2 * i] = i; perm[2 * i + 1] = i + R / 2; }
    for (let d = R; d < D; d++) perm[d] = d;
    const vp = new Float64Array(v.length);
    for (let r = 0; r < v.length / D; r++) for (let d = 0; d < D; d++) vp[r * D + perm[d]] = v[r * D + d];
    const xp = tensor(vp, { shape, dtype: 'bf16', device });
    const o = { invFreq: invFreqFor(R), positionOffset: irand(0, 2 ** 22) };
    const yi = await rope.apply(x, { ...o, style: 'interleaved' }).toArray();
    const yn = await rope.apply(xp, { ...o, style: 'neox' }).toArray();
    let same = true;
    for (let r = 0; r < v.length / D; r++) for (let d = 0; d < D; d++) same &&= yi[r * D + d] === yn[r * D + perm[d]];
    tt.ok(same, 'interleaved(x) == unpermute(neox(permute(x))) bit for bit');
    x.dispose(); xp.dispose();
  });

  t.test(`${device}: backward is the adjoint of apply and matches finite differences`,
    device === 'cuda' ? gpu : {}, async (tt) => {
      for (const style of STYLES) {
        for (const precision of ['exact', 'fp32', 'bf16'] as const) {
          const shape: Shape4 = [2, 8, 3, 32];
          const o: RopeApplyOptions = { invFreq: invFreqFor(24), style, precision, positionOffset: irand(0, 2 ** 22), attentionFactor: 1.1 };
          const a = makeX(shape, 'f32', device), b = makeX(shape, 'f32', device);
          const ya = await rope.apply(a.x, o).toArray();
          const gb = await rope.backward(b.x, o).toArray();
          let lhs = 0, rhs = 0, scale = 0;
          for (let i = 0; i < ya.length; i++) {
            lhs += ya[i] * b.v[i];
            rhs += a.v[i] * gb[i];
            scale += Math.abs(ya[i] * b.v[i]);
          }
          tt.ok(Math.abs(lhs - rhs) <= 1e-6 * scale,
            `${style} ${precision}: <apply(a), b> = ${lhs.toFixed(6)} vs <a, backward(b)> = ${rhs.toFixed(6)}`);
          // L(x) = <w, apply(x)> is linear: its central difference along e_j is dL/dx_j = backward(w)_j.
          const w = b.v;
          const L = async (xv: Float64Array): Promise<number> => {
            const xt = tensor(xv, { shape, dtype: 'f32', device });
            const y = rope.apply(xt, o);
            const yv = await y.toArray();
            xt.dispose(); y.dispose();
            let s = 0;
            for (let i = 0; i < yv.length; i++) s += w[i] * yv[i];
            return s;
          };
          let worst = 0;
          for (let n = 0; n < 6; n++) {
            const j = irand(0, a.v.length - 1);
            const xp = Float64Array.from(a.v), xm = Float64Array.from(a.v);
            xp[j] = Math.fround(xp[j] + 0.5);
            xm[j] = Math.fround(xm[j] - 0.5);
            const fd = ((await L(xp)) - (await L(xm))) / (xp[j] - xm[j]);
            worst = Math.max(worst, Math.abs(fd - gb[j]));
          }
          tt.ok(worst < 1e-4, `${style} ${precision}: |finite difference - backward| = ${worst.toExponential(2)} < 1e-4`);
          // backward(apply(x)) = (c^2 + s^2) x = af^2 x on the rotated dims, x on the others. With the
          // bf16 table c^2 + s^2 is 1 only to ~2^-8.
          const yt = rope.apply(a.x, o);
          const bt = rope.backward(yt, o);
          const back = await bt.toArray();
          const af2 = Math.fround(1.1) ** 2;
          let err = 0;
          for (let i = 0; i < back.length; i++) {
            const rotated = i % 32 < 24;
            err = Math.max(err, Math.abs(back[i] - a.v[i] * (rotated ? af2 : 1)) / (1 + Math.abs(a.v[i])));
          }
          const tol = precision === 'bf16' ? 2 ** -6 : 1e-6;
          tt.ok(err < tol, `${style} ${precision}: backward(apply(x)) = af^2 x on rotated dims, x elsewhere (max err ${err.toExponential(2)} < ${tol})`);
          a.x.dispose(); b.x.dispose(); yt.dispose(); bt.dispose();
        }
      }
    });

  t.test(`${device}: empty tensors`, device === 'cuda' ? gpu : {}, async (tt) => {
    const x = empty([2, 0, 4, 64], { dtype: 'bf16', device });
    const y = rope.apply(x, { base: 1e4 });
    tt.same(y.shape, [2, 0, 4, 64], 'seq 0: an empty output');
    const z = rope.apply(empty([1, 3, 0, 64], { dtype: 'f32', device }), { base: 1e4, positionOffset: 5 });
    tt.same((await z.toArray()).length, 0, 'heads 0: an empty output');
  });
}

t.test('cuda: GPU equals CPU (all dtypes, styles, precisions, positions up to 2^22)', gpu, async (tt) => {
  for (const dtype of DTYPES) {
    for (const style of STYLES) {
      for (const precision of ['exact', 'fp32', 'bf16'] as const) {
        const shape: Shape4 = [2, 40, 6, 128];
        const v = randomValues(shape.reduce((a, b) => a * b, 1), dtype);
        const pos = randomPositions(80, 2 ** 22);
        const o = { invFreq: invFreqFor(96), style, precision, attentionFactor: 0.75 + 0.5 * rnd() };
        const outs: Float32Array[] = [];
        for (const device of ['cpu', 'cuda'] as const) {
          const x = tensor(v, { shape, dtype, device });
          const p = tensor(pos, { shape: [2, 40], dtype: 'i32', device });
          poisonCache(shape, dtype, device);
          const y = rope.apply(x, { ...o, positions: p });
          outs.push((await y.toArray()) as Float32Array);
          x.dispose(); p.dispose(); y.dispose();
        }
        const c = compare(outs[1], v, Float64Array.from(outs[0]), shape, dtype, style, 96, o.attentionFactor,
          precision === 'bf16' ? 2 ** -7 : 0);
        tt.equal(c.bad, 0, `${dtype} ${style} ${precision}: cuda within bound of cpu ${c.firstBad}`);
      }
    }
  }
});

t.test('cuda: unsupported rotary size and device mismatches', gpu, async (tt) => {
  const x = empty([1, 1, 1, 20480], { dtype: 'bf16', device: 'cuda' });
  x.fill_(1);
  throwsCode(tt, () => rope.apply(x, { base: 1e4 }), 'ERR_UNSUPPORTED', 'rotaryDim 20480 on CUDA');
  const q = empty([1, 2, 2, 8], { dtype: 'f32', device: 'cuda' }).fill_(1);
  const kc = empty([1, 2, 2, 8], { dtype: 'f32' }).fill_(1);
  throwsCode(tt, () => rope.applyQK(q, kc, { base: 1e4 }), 'ERR_DEVICE', 'q on cuda, k on cpu');
  const pc = tensor(new Int32Array([0, 1]), { shape: [1, 2] });
  throwsCode(tt, () => rope.apply(q, { base: 1e4, positions: pc }), 'ERR_DEVICE', 'positions on another device');
});

t.test('errors: typed, before any native call', async (tt) => {
  const x = tensor(randomValues(2 * 3 * 2 * 8, 'f32'), { shape: [2, 3, 2, 8] });
  const inv = ref.invFreqFromBase(1e4, 8);
  const ok: RopeApplyOptions = { invFreq: inv };
  const cases: [string, () => unknown, string][] = [
    ['x not a tensor', () => rope.apply([1, 2] as unknown as Tensor, ok), 'ERR_ARG'],
    ['x 3-D', () => rope.apply(tensor(new Float32Array(8), { shape: [1, 1, 8] }), ok), 'ERR_SHAPE'],
    ['x i32', () => rope.apply(tensor(new Int32Array(16), { shape: [1, 2, 1, 8] }), ok), 'ERR_DTYPE'],
    ['options missing', () => rope.apply(x, undefined as unknown as RopeApplyOptions), 'ERR_ARG'],
    ['options not an object', () => rope.apply(x, 5 as unknown as RopeApplyOptions), 'ERR_ARG'],
    ['unknown option', () => rope.apply(x, { ...ok, postionOffset: 3 } as RopeApplyOptions), 'ERR_ARG'],
    ['neither invFreq nor base', () => rope.apply(x, {}), 'ERR_ROPE_CONFIG'],
    ['both invFreq and base', () => rope.apply(x, { invFreq: inv, base: 1e4 }), 'ERR_ROPE_CONFIG'],
    ['invFreq wrong type', () => rope.apply(x, { invFreq: 'abc' as unknown as Float64Array }), 'ERR_ROPE_CONFIG'],
    ['invFreq empty', () => rope.apply(x, { invFreq: new Float64Array(0) }), 'ERR_ROPE_CONFIG'],
    ['invFreq NaN', () => rope.apply(x, { invFreq: new Float64Array([1, NaN, 0.1, 0.01]) }), 'ERR_ROPE_CONFIG'],
    ['invFreq negative', () => rope.apply(x, { invFreq: [1, -0.5] }), 'ERR_ROPE_CONFIG'],
    ['invFreq non-number entry', () => rope.apply(x, { invFreq: [1, '0.5'] as unknown as number[] }), 'ERR_ROPE_CONFIG'],
    ['invFreq longer than headDim/2', () => rope.apply(x, { invFreq: new Float64Array(5).fill(0.5) }), 'ERR_ROPE_CONFIG'],
    ['invFreq disagrees with rotaryDim', () => rope.apply(x, { invFreq: inv, rotaryDim: 6 }), 'ERR_ROPE_CONFIG'],
    ['rotaryDim odd', () => rope.apply(x, { base: 1e4, rotaryDim: 5 }), 'ERR_ROPE_CONFIG'],
    ['rotaryDim > headDim', () => rope.apply(x, { base: 1e4, rotaryDim: 10 }), 'ERR_ROPE_CONFIG'],
    ['rotaryDim 0', () => rope.apply(x, { base: 1e4, rotaryDim: 0 }), 'ERR_ROPE_CONFIG'],
    ['base 0', () => rope.apply(x, { base: 0 }), 'ERR_ROPE_CONFIG'],
    ['base NaN', () => rope.apply(x, { base: NaN }), 'ERR_ROPE_CONFIG'],
    ['odd headDim without rotaryDim', () => rope.apply(tensor(new Float32Array(7), { shape: [1, 1, 1, 7] }), { base: 1e4 }), 'ERR_ROPE_CONFIG'],
    ['style', () => rope.apply(x, { ...ok, style: 'gptj' as 'neox' }), 'ERR_ROPE_CONFIG'],
    ['precision', () => rope.apply(x, { ...ok, precision: 'fp16' as 'fp32' }), 'ERR_ROPE_CONFIG'],
    ['attentionFactor NaN', () => rope.apply(x, { ...ok, attentionFactor: NaN }), 'ERR_ROPE_CONFIG'],
    ['attentionFactor beyond fp32', () => rope.apply(x, { ...ok, attentionFactor: 1e39 }), 'ERR_ROPE_CONFIG'],
    ['positionOffset negative', () => rope.apply(x, { ...ok, positionOffset: -1 }), 'ERR_ARG'],
    ['positionOffset fractional', () => rope.apply(x, { ...ok, positionOffset: 1.5 }), 'ERR_ARG'],
    ['positionOffset past 2^31 - 1', () => rope.apply(x, { ...ok, positionOffset: 2 ** 31 - 2 }), 'ERR_ARG'],
    ['positions and positionOffset', () => rope.apply(x, { ...ok, positionOffset: 0, positions: tensor(new Int32Array(6), { shape: [2, 3] }) }), 'ERR_ARG'],
    ['positions not a tensor', () => rope.apply(x, { ...ok, positions: [0, 1] as unknown as Tensor }), 'ERR_ARG'],
    ['positions f32', () => rope.apply(x, { ...ok, positions: tensor(new Float32Array(6), { shape: [2, 3] }) }), 'ERR_DTYPE'],
    ['positions wrong shape', () => rope.apply(x, { ...ok, positions: tensor(new Int32Array(6), { shape: [3, 2] }) }), 'ERR_SHAPE'],
    ['inplace not boolean', () => rope.apply(x, { ...ok, inplace: 1 as unknown as boolean }), 'ERR_ARG'],
    ['applyQK dtype mismatch', () => rope.applyQK(x, tensor(new Float32Array(16), { shape: [2, 1, 1, 8], dtype: 'bf16' as Dtype }), ok), 'ERR_DTYPE'],
    ['applyQK seq mismatch', () => rope.applyQK(x, tensor(new Float32Array(16), { shape: [2, 1, 1, 8] }), ok), 'ERR_SHAPE'],
    ['applyQK same tensor in place', () => rope.applyQK(x, x, { ...ok, inplace: true }), 'ERR_ARG'],
  ];
  for (const [name, fn, code] of cases) throwsCode(tt, fn, code, name);
  const d = tensor(new Float32Array(16), { shape: [1, 2, 1, 8] });
  d.dispose();
  throwsCode(tt, () => rope.apply(d, ok), 'ERR_DISPOSED', 'disposed x');
  const pd = tensor(new Int32Array(6), { shape: [2, 3] });
  pd.dispose();
  throwsCode(tt, () => rope.apply(x, { ...ok, positions: pd }), 'ERR_DISPOSED', 'disposed positions');
  // x is untouched by all of the above
  tt.ok((await x.toArray()).every((v) => Number.isFinite(v)), 'x still readable');

  // The native side decides on its own (called directly with a baton, bypassing lib/rope.ts).
  const call = (over: Partial<Record<string, unknown>>): unknown => {
    const a = { x: x.handle(), invFreq: inv, rotaryDim: 8, ...over };
    for (const k of Object.keys(a)) if ((a as Record<string, unknown>)[k] === undefined) delete (a as Record<string, unknown>)[k];
    return callNative(() => (native().rope as (o: unknown) => unknown)(a));
  };
  throwsCode(tt, () => call({ rotaryDim: 6 }), 'ERR_ROPE_CONFIG', 'native: invFreq length vs rotaryDim');
  throwsCode(tt, () => call({ rotaryDim: 7 }), 'ERR_ROPE_CONFIG', 'native: odd rotaryDim');
  throwsCode(tt, () => call({ rotaryDim: '8' }), 'ERR_ROPE_CONFIG', 'native: rotaryDim not a number');
  throwsCode(tt, () => call({ invFreq: 'abc' }), 'ERR_ROPE_CONFIG', 'native: invFreq not an array');
  throwsCode(tt, () => call({ invFreq: [1, 2, '3', 4] }), 'ERR_ROPE_CONFIG', 'native: invFreq entry not a number');
  throwsCode(tt, () => call({ invFreq: new Float64Array([1, Infinity, 1, 1]) }), 'ERR_ROPE_CONFIG', 'native: invFreq not finite');
  throwsCode(tt, () => call({ invFreq: new Float64Array([1, 2 ** 21, 1, 1]) }), 'ERR_ROPE_CONFIG', 'native: invFreq above 2^20');
  throwsCode(tt, () => call({ invFreq: undefined }), 'ERR_ROPE_CONFIG', 'native: invFreq missing with work to do');
  throwsCode(tt, () => call({ style: 'gptj' }), 'ERR_ROPE_CONFIG', 'native: style name');
  throwsCode(tt, () => call({ style: 1 }), 'ERR_ROPE_CONFIG', 'native: style as a number code');
  throwsCode(tt, () => call({ precision: 'fp16' }), 'ERR_ROPE_CONFIG', 'native: precision name');
  throwsCode(tt, () => call({ attentionFactor: NaN }), 'ERR_ROPE_CONFIG', 'native: attentionFactor');
  throwsCode(tt, () => call({ positionOffset: -3 }), 'ERR_ARG', 'native: negative offset');
  throwsCode(tt, () => call({ positionOffset: 1, positions: tensor(new Int32Array(6), { shape: [2, 3] }).handle() }), 'ERR_ARG', 'native: positions and positionOffset');
  throwsCode(tt, () => call({ positions: tensor(new Int32Array(6), { shape: [3, 2] }).handle() }), 'ERR_SHAPE', 'native: positions shape');
  throwsCode(tt, () => call({ k: empty([2, 3, 2, 8], { dtype: 'bf16' }).handle() }), 'ERR_DTYPE', 'native: k dtype');
  throwsCode(tt, () => call({ k: empty([2, 4, 2, 8], { dtype: 'f32' }).handle() }), 'ERR_SHAPE', 'native: k seq');
  throwsCode(tt, () => call({ k: x.handle(), inplace: true }), 'ERR_ARG', 'native: q and k alias in place');
  throwsCode(tt, () => call({ x: 5 }), 'ERR_ARG', 'native: x not a tensor');
  throwsCode(tt, () => call({ invFreq: inv, colour: 'red' }), 'ERR_ARG', 'native: unknown key');
  throwsCode(tt, () => call({ inplace: null }), 'ERR_ARG', 'native: null is not a default');
  await synchronize('cpu');
  tt.pass('nothing refused above was queued');
});

t.test('issue 13: one base rule, no overlapping q/k in place, cost follows the work', async (tt) => {
  const x = tensor(randomValues(2 * 3 * 2 * 8, 'f32'), { shape: [2, 3, 2, 8] });
  // base: the theta module's rule (finite, > 1), ERR_ROPE_CONFIG naming base
  for (const base of [0.5, 1e-30, 1, -2, Infinity]) {
    try {
      rope.apply(x, { base });
      tt.fail(`base ${base} accepted`);
    } catch (e) {
      tt.ok(e instanceof RopeConfigError && e.parameter === 'base', `base ${base} refused naming base (${(e as Error).message})`);
    }
  }
  // the same bound holds for invFreq given directly (base 1e-20 would give entries up to 1e20)
  throwsCode(tt, () => rope.apply(x, { invFreq: [1, 1e20, 1, 1] }), 'ERR_ROPE_CONFIG', 'invFreq above 2^20');

  // q and k as overlapping views of one buffer: refused in place whatever the overlap; the data is untouched
  const buf = tensor(randomValues(4 * 2 * 8, 'f32'), { shape: [4, 1, 2, 8] });
  const before = await buf.toArray();
  const q = buf.narrow(0, 0, 2).reshape([1, 2, 2, 8]);   // rows 0-1
  const k = buf.narrow(0, 1, 2).reshape([1, 2, 2, 8]);   // rows 1-2: row 1 is shared
  const opts = { base: 1e4, inplace: true };
  throwsCode(tt, () => rope.applyQK(q, k, opts), 'ERR_ARG', 'partially overlapping q/k in place');
  throwsCode(tt, () => rope.applyQK(k, q, opts), 'ERR_ARG', 'partially overlapping k/q in place');
  throwsCode(tt, () => rope.backwardQK(q, k, opts), 'ERR_ARG', 'partially overlapping dq/dk in place');
  const k2 = buf.narrow(0, 2, 2).reshape([1, 2, 2, 8]);  // rows 2-3: disjoint from q
  const r = rope.applyQK(q, k2, opts);
  tt.ok(r.q === q && r.k === k2, 'disjoint views of one buffer rotate in place');
  const out = rope.applyQK(q, k, { base: 1e4 });  // out of place, overlapping inputs are only read
  tt.ok(out.q !== q, 'out of place, overlapping inputs are fine');
  tt.notSame(Array.from(await buf.toArray()).slice(16, 32), Array.from(before).slice(16, 32), 'the disjoint call did rotate (position 1)');
  for (const t2 of [out.q, out.k, q, k, k2, buf]) t2.dispose();

  // an empty tensor with a huge head dim: no frequency table, no scratch, no waiting
  const e = empty([0, 1, 1, 2 ** 28], { dtype: 'bf16' });
  const t0 = performance.now();
  const y = rope.apply(e, { base: 1e4 });
  const yi = rope.apply(e, { base: 1e4, inplace: true });
  const yq = rope.applyQK(e, e, { base: 1e4 });
  await synchronize('cpu');
  const ms = performance.now() - t0;
  tt.ok(ms < 500, `zero elements with headDim 2^28: ${ms.toFixed(1)} ms`);
  tt.same(y.shape, e.shape, 'an empty output');
  tt.equal(yi, e, 'in place: x itself');
  throwsCode(tt, () => rope.apply(e, { base: 0.5 }), 'ERR_ROPE_CONFIG', 'options are still checked with no elements');
  throwsCode(tt, () => rope.apply(e, { base: 1e4, rotaryDim: 3 }), 'ERR_ROPE_CONFIG', 'rotaryDim still checked with no elements');
  for (const t2 of [y, yq.q, yq.k, e, x]) t2.dispose();
});

t.test('options from the theta module spread in (invFreq, attentionFactor, options)', async (tt) => {
  const freqs = { invFreq: ref.invFreqFromBase(1e6, 16), attentionFactor: 1.2, options: { type: 'yarn' } };
  const shape: Shape4 = [1, 5, 2, 16];
  const { x, v } = makeX(shape, 'f32', 'cpu');
  const y = await rope.apply(x, { ...freqs, positionOffset: 1000 }).toArray();
  const want = ref.ropeRef(v, shape, refOpts({ attentionFactor: 1.2, positionOffset: 1000 }, freqs.invFreq, false));
  tt.equal(compare(y, v, want, shape, 'f32', 'neox', 16, 1.2).bad, 0, 'spread theta result: matches the reference');
});

t.test('reference self-checks (test/ref/rope.ts)', async (tt) => {
  // the exact angle against values known independently
  tt.equal(ref.exactAngle(7, 1), 0.7168146928204135, '7 rad reduced (7 - 2pi = 0.71681469282041352...)');
  tt.ok(Math.abs(ref.exactAngle(524287, 1) - (524287 - 83443 * 2 * Math.PI)) < 1e-9, '524287 rad reduced');
  tt.equal(ref.exactAngle(0, 0.3), 0, 'position 0');
  tt.equal(ref.exactAngle(-3, 1), -3, 'negative');
  // rounding helpers: ties to even, subnormals, overflow
  tt.equal(ref.roundTo('bf16', 1 + 2 ** -8), 1, 'bf16 tie to even (down)');
  tt.equal(ref.roundTo('bf16', 1 + 3 * 2 ** -8), 1 + 2 ** -6, 'bf16 tie to even (up)');
  tt.equal(ref.roundTo('f16', 65520), Infinity, 'f16 overflow');
  tt.equal(ref.roundTo('f16', 2 ** -25), 0, 'f16 smallest tie to zero');
  tt.equal(ref.roundTo('f16', 3 * 2 ** -26), 2 ** -24, 'f16 subnormal rounds up');
  // fp32 angle error at 524287, base 75e6, d = 128 (the issue's ~2e-2 rad)
  const th = ref.invFreqFromBase(75e6, 128);
  let m = 0;
  for (let p = 524287 - 63; p <= 524287; p++) for (let i = 0; i < 64; i++) m = Math.max(m, ref.angleError('fp32', p, th[i]));
  tt.ok(m > 1e-2 && m < 3e-2, `fp32 angle error near 524287: ${m.toExponential(3)} rad`);
});
