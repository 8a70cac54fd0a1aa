import t from 'tap';
import { execFileSync } from 'child_process';
import * as path from 'path';
import { matmul, linear, gemmInfo, randn, empty, zeros, tensor, synchronize, Tensor, Dtype, DeviceLike } from '../lib/index';
import { native } from '../lib/native';
import { throwsCode } from './helpers/assert';
import { gpu, hasCuda, testDevices } from './helpers/devices';
import { testSeed } from './helpers/rng';
import { matmulRef, matmulRefAt } from './ref/matmul';

const seed = testSeed();
t.comment(`seed ${seed} (replay with TEST_SEED=${seed})`);
let seq = 0;
const rnd = (shape: number[], dtype: Dtype, device: DeviceLike): Tensor => randn(shape, { dtype, device, seed: seed + ++seq });

// Rounding of one output element to its dtype (relative), plus f32 accumulation error (scaled by Σ|a·b|).
const outRel: Record<string, number> = { f32: 0, bf16: 2 ** -8, f16: 2 ** -10 };
function compare(got: ArrayLike<number>, ref: { out: Float64Array; absSum: Float64Array }, K: number, outDtype: Dtype): { bad: number; worst: string } {
  let bad = 0, worst = '', worstRatio = 0;
  const acc = (K + 2) * 2 ** -23;
  for (let i = 0; i < ref.out.length; i++) {
    const tol = outRel[outDtype] * Math.abs(ref.out[i]) + acc * ref.absSum[i] + 1e-30;
    const err = Math.abs(got[i] - ref.out[i]);
    const ratio = Number.isNaN(got[i]) ? Infinity : err / tol;
    if (ratio > 1) bad++;
    if (ratio > worstRatio) { worstRatio = ratio; worst = `#${i}: got ${got[i]} want ${ref.out[i]} (err/tol ${ratio.toFixed(2)})`; }
  }
  return { bad, worst };
}

type Backend = 'auto' | 'builtin' | 'cublaslt';
function backendsFor(device: DeviceLike): Backend[] {
  if (device === 'cpu') return ['auto'];
  return gemmInfo().found ? ['cublaslt', 'builtin'] : ['builtin'];
}

// The last crosses every CPU block boundary (MC 96, NC 256, KC 256) and the CUDA 128-tiles.
const SIZES: [number, number, number][] = [[1, 1, 1], [3, 17, 65], [17, 3, 129], [65, 129, 17], [129, 65, 40], [197, 300, 600]];

for (const device of testDevices) {
  for (const backend of backendsFor(device)) {
    t.test(`matmul vs float64: dtypes x transposes x odd sizes (${device}, ${backend})`, async (t) => {
      const declined: string[] = [];
      for (const dtype of ['f32', 'bf16', 'f16'] as Dtype[]) {
        for (const [M, N, K] of SIZES) {
          for (const transA of [false, true]) for (const transB of [false, true]) {
            const aShape = transA ? [K, M] : [M, K], bShape = transB ? [N, K] : [K, N];
            const a = rnd(aShape, dtype, device), b = rnd(bShape, dtype, device);
            const outDtype: Dtype = dtype === 'f32' ? 'f32' : dtype;
            const out = empty([M, N], { dtype: outDtype, device }).fill_(NaN);  // poisoned; beta = 0 must not read it
            try {
              matmul(a, b, { transA, transB, out, backend });
            } catch (e) {
              // cuBLASLt may decline odd layouts; say so (the count is checked below) and check the fallback
              if (backend !== 'cublaslt' || (e as { code?: string }).code !== 'ERR_UNSUPPORTED') throw e;
              declined.push(`${dtype} ${M}x${N}x${K} tA=${transA} tB=${transB}`);
              matmul(a, b, { transA, transB, out });
            }
            const ref = matmulRef(await a.toArray(), aShape, await b.toArray(), bShape, { transA, transB });
            const r = compare(await out.toArray(), ref, K, outDtype);
            t.equal(r.bad, 0, `${dtype} ${M}x${N}x${K} tA=${transA} tB=${transB} ${r.worst}`);
            for (const x of [a, b, out]) x.dispose();
          }
        }
      }
      if (declined.length) t.comment(`cuBLASLt declined ${declined.length} problems: ${declined.join('; ')}`);
      t.ok(declined.length < 3 * SIZES.length * 4 / 2, `cuBLASLt took most problems (declined ${declined.length})`);
    });

    t.test(`matmul: batching, broadcast, alpha/beta into f32, linear (${device}, ${backend})`, async (t) => {
      const B = 3, M = 33, N = 20, K = 47;
      for (const dtype of ['bf16', 'f32'] as Dtype[]) {
        // [B,M,K] x [B,K,N]; [B,M,K] x [K,N] (broadcast b); [M,K] x [B,K,N] (broadcast a); transposed variants
        const cases: { aShape: number[]; bShape: number[]; transA?: boolean; transB?: boolean }[] = [
          { aShape: [B, M, K], bShape: [B, K, N] },
          { aShape: [B, M, K], bShape: [K, N] },
          { aShape: [M, K], bShape: [B, K, N] },
          { aShape: [B, K, M], bShape: [B, N, K], transA: true, transB: true },
          { aShape: [B, K, M], bShape: [N, K], transA: true, transB: true },
          { aShape: [2, B, M, K], bShape: [N, K], transB: true },
        ];
        for (const c of cases) {
          const a = rnd(c.aShape, dtype, device), b = rnd(c.bShape, dtype, device);
          const y = matmul(a, b, { transA: c.transA, transB: c.transB, backend });
          const ref = matmulRef(await a.toArray(), c.aShape, await b.toArray(), c.bShape, c);
          t.same(y.shape, ref.shape, `shape ${JSON.stringify(ref.shape)}`);
          t.equal(y.dtype, dtype);
          const r = compare(await y.toArray(), ref, K, dtype);
          t.equal(r.bad, 0, `${dtype} a[${c.aShape}] b[${c.bShape}] tA=${!!c.transA} tB=${!!c.transB} ${r.worst}`);
          for (const x of [a, b, y]) x.dispose();
        }
      }
      // alpha/beta: f32 accumulator from bf16 inputs (gradient accumulation), and a new f32 output via dtype
      const a = rnd([B, M, K], 'bf16', device), b = rnd([K, N], 'bf16', device);
      const acc = rnd([B, M, N], 'f32', device);
      const old = await acc.toArray();
      matmul(a, b, { out: acc, alpha: 0.75, beta: -1.5, backend });
      const ref = matmulRef(await a.toArray(), a.shape, await b.toArray(), b.shape, { alpha: 0.75, beta: -1.5, c: old });
      let r = compare(await acc.toArray(), ref, K, 'f32');
      t.equal(r.bad, 0, `bf16 x bf16 -> f32 out, alpha 0.75, beta -1.5 ${r.worst}`);
      const y32 = matmul(a, b, { dtype: 'f32', backend });
      t.equal(y32.dtype, 'f32');
      r = compare(await y32.toArray(), matmulRef(await a.toArray(), a.shape, await b.toArray(), b.shape), K, 'f32');
      t.equal(r.bad, 0, `dtype f32 from bf16 inputs ${r.worst}`);
      // mixed input dtypes (f32 x bf16)
      const a32 = rnd([M, K], 'f32', device);
      const ym = matmul(a32, b, { backend: backend === 'cublaslt' ? 'auto' : backend });
      r = compare(await ym.toArray(), matmulRef(await a32.toArray(), a32.shape, await b.toArray(), b.shape), K, 'f32');
      t.equal(r.bad, 0, `f32 x bf16 -> f32 ${r.worst}`);
      // linear: x [2, 5, K] · wᵀ with w [N, K]; then accumulate into it (beta = 1); and a 1-D x
      const x = rnd([2, 5, K], 'bf16', device), w = rnd([N, K], 'bf16', device);
      const yl = linear(x, w, { out: empty([2, 5, N], { dtype: 'f32', device }).fill_(NaN) });
      const lref = matmulRef(await x.toArray(), x.shape, await w.toArray(), w.shape, { transB: true });
      r = compare(await yl.toArray(), lref, K, 'f32');
      t.equal(r.bad, 0, `linear into f32 ${r.worst}`);
      t.same(yl.shape, [2, 5, N]);
      linear(x, w, { out: yl, beta: 1 });
      const twice = { out: lref.out.map((v) => 2 * v), absSum: lref.absSum.map((v) => 2 * v) };
      r = compare(await yl.toArray(), twice, K, 'f32');
      t.equal(r.bad, 0, `linear accumulate (beta 1) ${r.worst}`);
      const x1 = rnd([K], 'f32', device);
      const y1 = linear(x1, w);
      t.same(y1.shape, [N]);
      r = compare(await y1.toArray(), matmulRef(await x1.toArray(), [1, K], await w.toArray(), w.shape, { transB: true }), K, 'f32');
      t.equal(r.bad, 0, `linear of a 1-D x ${r.worst}`);
      // empty inner dimension: out = beta·out (zeros for a new output); empty outer: nothing
      const e0 = matmul(empty([4, 0], { device }), empty([0, 6], { device }), { backend });
      t.ok((await e0.toArray()).every((v) => v === 0), 'K = 0 gives zeros');
      const e1 = matmul(empty([0, 5], { device }), rnd([5, 6], 'f32', device), { backend });
      t.same(e1.shape, [0, 6]);
      for (const z of [a, b, acc, y32, a32, ym, x, w, yl, x1, y1, e0, e1]) z.dispose();
    });
  }
}

t.test('matmul errors come from the native check', async (t) => {
  const a = randn([4, 5], { seed: 1 }), b = randn([5, 6], { seed: 2 });
  throwsCode(t, () => matmul(a, randn([4, 6], { seed: 3 })), 'ERR_SHAPE', 'inner dimensions differ');
  throwsCode(t, () => matmul(a, b, { transA: true }), 'ERR_SHAPE', 'transA makes K = 4');
  throwsCode(t, () => matmul(randn([5], { seed: 4 }), b), 'ERR_SHAPE', '1-D a');
  throwsCode(t, () => matmul(randn([2, 4, 5], { seed: 5 }), randn([3, 5, 6], { seed: 6 })), 'ERR_SHAPE', 'batch dims differ');
  throwsCode(t, () => matmul(a, b, { out: zeros([4, 7]) }), 'ERR_SHAPE', 'out shape');
  throwsCode(t, () => matmul(zeros([4, 5], { dtype: 'i32' }), b), 'ERR_DTYPE', 'i32 a');
  throwsCode(t, () => matmul(a, b, { dtype: 'i32' }), 'ERR_DTYPE', 'i32 out');
  throwsCode(t, () => matmul(a, b, { beta: 1 }), 'ERR_ARG', 'beta without out');
  throwsCode(t, () => matmul(a, b, { alpha: Infinity }), 'ERR_ARG', 'alpha must be finite');
  throwsCode(t, () => matmul(a, b, { out: zeros([4, 6]), dtype: 'f32' }), 'ERR_ARG', 'out and dtype');
  throwsCode(t, () => matmul(a, b, { backend: 'cublaslt' }), 'ERR_UNSUPPORTED', 'cublaslt on the CPU');
  throwsCode(t, () => matmul(a, b, { backend: 'fast' as never }), 'ERR_ARG', 'unknown backend');
  // out overlapping an input (exact alias and a partial overlap through a view)
  const sq = randn([6, 6], { seed: 7 });
  throwsCode(t, () => matmul(sq, randn([6, 6], { seed: 8 }), { out: sq }), 'ERR_ARG', 'out is a');
  const big = randn([12, 6], { seed: 9 });
  const lo = big.narrow(0, 0, 6), mid = big.narrow(0, 3, 6);
  throwsCode(t, () => matmul(lo, randn([6, 6], { seed: 10 }), { out: mid }), 'ERR_ARG', 'out partially overlaps a');
  throwsCode(t, () => matmul(randn([6, 6], { seed: 11 }), lo, { out: mid }), 'ERR_ARG', 'out partially overlaps b');
  const gone = randn([5, 6], { seed: 12 });
  gone.dispose();
  throwsCode(t, () => matmul(a, gone), 'ERR_DISPOSED', 'disposed b');
  t.throws(() => (native().gemm as (o: unknown) => unknown)({ a: a.handle(), b: b.handle(), tarnsA: true }), /ERR_ARG: gemm: unknown option 'tarnsA'/);
  if (hasCuda) {
    const g = randn([5, 6], { seed: 13, device: 'cuda' });
    throwsCode(t, () => matmul(a, g), 'ERR_DEVICE', 'a on the CPU, b on CUDA');
    throwsCode(t, () => matmul(randn([4, 5], { seed: 14, device: 'cuda' }), g, { out: zeros([4, 6]) }), 'ERR_DEVICE', 'out on the CPU');
    g.dispose();
  }
  const info = gemmInfo();
  t.ok(['cublaslt', 'builtin', 'cpu'].includes(info.backend), `gemmInfo backend ${info.backend}`);
  t.equal(typeof info.found, 'boolean');
  for (const x of [a, b, sq, big, lo, mid]) x.dispose();
});

t.test('CUDA: 4096x4096x4096 bf16 vs sampled float64 (cuBLASLt and builtin)', { ...gpu }, async (t) => {
  const n = 4096;
  for (const [transA, transB] of [[false, true], [false, false], [true, false]]) {
    const a = rnd(transA ? [n, n] : [n, n], 'bf16', 'cuda'), b = rnd([n, n], 'bf16', 'cuda');
    const [av, bv] = [await a.toArray(), await b.toArray()];
    for (const backend of backendsFor('cuda')) {
      for (const outDtype of ['bf16', 'f32'] as Dtype[]) {
        const y = matmul(a, b, { transA, transB, backend, dtype: outDtype });
        const yv = await y.toArray();
        let bad = 0, worst = '';
        for (let s = 0; s < 256; s++) {
          const i = (s * 977 + 13) % n, j = (s * 1553 + 101) % n;
          const r = matmulRefAt(av, [n, n], bv, [n, n], i, j, { transA, transB });
          const tol = outRel[outDtype] * Math.abs(r.value) + (n + 2) * 2 ** -23 * r.absSum;
          if (!(Math.abs(yv[i * n + j] - r.value) <= tol)) { bad++; worst = `(${i},${j}) got ${yv[i * n + j]} want ${r.value}`; }
        }
        t.equal(bad, 0, `${backend} tA=${transA} tB=${transB} -> ${outDtype}: 256 sampled elements ${worst}`);
        y.dispose();
      }
    }
    a.dispose(); b.dispose();
  }
  await synchronize('cuda');
});

t.test('CUDA: unaligned views take the slow path of the builtin kernel correctly', { ...gpu }, async (t) => {
  // a view starting one element in: neither 16-byte aligned nor with ld % 8 == 0
  const M = 70, N = 37, K = 45;
  const buf = rnd([M * K + 1], 'bf16', 'cuda');
  const a = buf.narrow(0, 1, M * K).reshape([M, K]);
  const b = rnd([K, N], 'bf16', 'cuda');
  for (const backend of backendsFor('cuda')) {
    let y: Tensor;
    try {
      y = matmul(a, b, { backend, dtype: 'f32' });
    } catch (e) {
      if (backend !== 'cublaslt' || (e as { code?: string }).code !== 'ERR_UNSUPPORTED') throw e;
      t.comment(`cuBLASLt declined the 2-byte aligned operand: ${(e as Error).message}`);
      continue;
    }
    const r = compare(await y.toArray(), matmulRef(await a.toArray(), [M, K], await b.toArray(), [K, N]), K, 'f32');
    t.equal(r.bad, 0, `${backend} ${r.worst}`);
    y.dispose();
  }
  for (const x of [buf, a, b]) x.dispose();
});

t.test('MEGABEAM_GEMM=builtin forces the builtin kernels (read once per process)', { ...gpu }, async (t) => {
  const root = path.join(__dirname, '..');
  const code = `const m = process.env.MEGABEAM_ADDON ? require(require('path').resolve(process.env.MEGABEAM_ADDON)) : require('node-gyp-build')(${JSON.stringify(root)}); console.log(JSON.stringify(m.gemmInfo()));`;
  const out = execFileSync(process.execPath, ['-e', code], { env: { ...process.env, MEGABEAM_GEMM: 'builtin' }, cwd: root }).toString();
  const info = JSON.parse(out.trim().split('\n').pop()!);
  t.equal(info.backend, 'builtin', `child process: ${out.trim()}`);
  t.match(info.error ?? '', /MEGABEAM_GEMM=builtin/);
  t.comment(`this process: ${JSON.stringify(gemmInfo())}`);
});

t.test('tensor() inputs: an exact small product', async (t) => {
  for (const device of testDevices) {
    const a = tensor([[1, 2, 3], [4, 5, 6]], { device, dtype: 'bf16' });
    const b = tensor([[1, 0], [0, 1], [1, 1]], { device, dtype: 'bf16' });
    const y = matmul(a, b, { dtype: 'f32' });
    t.same(Array.from(await y.toArray()), [4, 5, 10, 11], `${device}: [[1,2,3],[4,5,6]]·[[1,0],[0,1],[1,1]]`);
    for (const x of [a, b, y]) x.dispose();
  }
});
