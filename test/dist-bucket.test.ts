// Bucketed collectives (lib/dist/bucket.ts) on the local backend, W = 1..4: allReduce, reduceScatter and
// allGather over many tensors of mixed sizes (sizes below W, not dividing by W, bigger than a bucket) and
// dtypes give bit for bit what one call per tensor gives, which a float64 reference checks too; ZeRO-1
// AdamW with buckets = without.
import t from 'tap';
import { tensor, Tensor, Dtype } from '../lib/index';
import { localGroups } from '../lib/dist/local';
import { allReduceBucketed, allGatherBucketed, planBuckets, reduceScatterBucketed, DEFAULT_BUCKET_BYTES } from '../lib/dist/bucket';
import { AdamW } from '../lib/optim';
import { scale } from '../lib/elementwise';
import type { Group } from '../lib/dist/types';
import { mulberry32, randomNormal, testSeed } from './helpers/rng';
import { gpu } from './helpers/devices';

const seed = testSeed();
t.comment(`seed ${seed} (TEST_SEED=${seed} replays)`);
const rnd = mulberry32(seed);

// Sizes (elements) and dtypes of the "parameters": small ones that bucket, odd ones, and one of 600 f32
// (2400 bytes) that goes alone under a 1000-byte cap.
const SPEC: [number, Dtype][] = [[7, 'f32'], [1, 'f32'], [33, 'f32'], [600, 'f32'], [5, 'bf16'], [64, 'bf16'], [3, 'f32'], [130, 'f32'], [2, 'bf16']];
const CAPS = [0, 64, 1000, DEFAULT_BUCKET_BYTES];

const make = (W: number, device: 'cpu' | 'cuda') => Array.from({ length: W }, () => SPEC.map(([n, d]) => tensor(randomNormal(n, rnd), { dtype: d, device })));
const clone = (ts: Tensor[][]) => ts.map((r) => r.map((x) => x.clone()));
const arrays = async (ts: Tensor[]) => Promise.all(ts.map((x) => x.toArray()));
const sameBits = (a: ArrayLike<number>[], b: ArrayLike<number>[]) => a.every((x, i) => x.length === b[i].length && Array.from(x).every((v, j) => Object.is(v, b[i][j])));
async function onAll(groups: Group[], f: (g: Group, r: number) => Promise<void>): Promise<void> { await Promise.all(groups.map((g, r) => f(g, r))); }

t.test('planBuckets: in order, one dtype per bucket, big items alone, cap 0 = one each', async (t) => {
  const items = [[4, 'a'], [4, 'a'], [4, 'b'], [20, 'a'], [3, 'a'], [3, 'a'], [3, 'a']] as [number, string][];
  const plan = (cap: number) => planBuckets(items, (x) => x[0], (x) => x[1], cap).map((b) => b.map((x) => items.indexOf(x)));
  t.same(plan(10), [[0, 1], [2], [3], [4, 5, 6]]);
  t.same(plan(8), [[0, 1], [2], [3], [4, 5], [6]]);
  t.same(plan(0), [[0], [1], [2], [3], [4], [5], [6]]);
});

const CASES: [number, 'cpu' | 'cuda'][] = [[1, 'cpu'], [2, 'cpu'], [3, 'cpu'], [4, 'cpu'], [2, 'cuda'], [3, 'cuda']];
for (const [W, device] of CASES) {
  const skip = device === 'cuda' ? gpu : {};
  t.test(`W=${W} (${device}): bucketed allReduce = one call per tensor (bit for bit) = the float64 sum`, skip, async (t) => {
    const groups = localGroups(W, { timeoutMs: 20000, device });
    const inputs = make(W, device);
    const host = await Promise.all(inputs.map(arrays));
    try {
      const ref = clone(inputs);
      await onAll(groups, async (g, r) => { for (const x of ref[r]) await g.allReduce(x, { op: 'sum' }); });
      const want = await arrays(ref[0]);
      // independent: the float64 sum, rounded once
      SPEC.forEach(([n, d], i) => {
        const u = d === 'bf16' ? 2 ** -8 : 2 ** -22;
        for (let j = 0; j < n; j++) {
          let s = 0, m = 0;
          for (let r = 0; r < W; r++) { s += host[r][i][j]; m += Math.abs(host[r][i][j]); }
          if (!(Math.abs(want[i][j] - s) <= u * m + 1e-30)) t.fail(`tensor ${i}[${j}]: ${want[i][j]} vs ${s}`);
        }
      });
      for (const cap of CAPS) {
        const got = clone(inputs);
        await onAll(groups, (g, r) => allReduceBucketed(g, got[r], { op: 'sum', bucketBytes: cap }));
        for (let r = 0; r < W; r++) t.ok(sameBits(await arrays(got[r]), want), `cap ${cap}, rank ${r}`);
        got.flat().forEach((x) => x.dispose());
      }
      ref.flat().forEach((x) => x.dispose());
    } finally {
      inputs.flat().forEach((x) => x.dispose());
      await Promise.all(groups.map((g) => g.destroy()));
    }
  });

  t.test(`W=${W} (${device}): bucketed reduceScatter / allGather of ZeRO pieces = one call per tensor`, skip, async (t) => {
    const groups = localGroups(W, { timeoutMs: 20000, device });
    const inputs = make(W, device);
    const host = await Promise.all(inputs.map(arrays));
    let unbucketed: ArrayLike<number>[] = [];
    try {
      for (const cap of CAPS) {
        const pieces = groups.map((_, r) => SPEC.map(([n, d]) => {
          const per = Math.ceil(n / W), start = Math.min(n, r * per), len = Math.min(n, start + per) - start;
          return tensor(new Float32Array(len).fill(777), { dtype: d, device });
        }));
        await onAll(groups, (g, r) => reduceScatterBucketed(g, inputs[r].map((full, i) => ({ full, piece: pieces[r][i] })), { op: 'sum', bucketBytes: cap }));
        for (let r = 0; r < W; r++) {
          const got = await arrays(pieces[r]);
          let bad = '';
          SPEC.forEach(([n, d], i) => {
            const per = Math.ceil(n / W), start = Math.min(n, r * per);
            const u = d === 'bf16' ? 2 ** -8 : 2 ** -22;
            for (let j = 0; j < got[i].length; j++) {
              let s = 0, m = 0;
              for (let q = 0; q < W; q++) { s += host[q][i][start + j]; m += Math.abs(host[q][i][start + j]); }
              if (!(Math.abs(got[i][j] - s) <= u * m + 1e-30)) bad ||= `tensor ${i}[${start + j}]: ${got[i][j]} vs ${s}`;
            }
          });
          t.equal(bad, '', `cap ${cap}, rank ${r}: reduceScatter pieces are the sums of this rank's slices`);
        }
        // Bit for bit against the unbucketed path (cap 0 is that path: one call per tensor).
        const vals = (await Promise.all(pieces.map(arrays))).flat();
        if (cap === 0) unbucketed = vals;
        else t.ok(sameBits(vals, unbucketed), `cap ${cap}: = unbucketed`);
        // allGather the pieces back into poisoned full tensors: every rank gets every rank's piece.
        const fulls = groups.map(() => SPEC.map(([n, d]) => tensor(new Float32Array(n).fill(777), { dtype: d, device })));
        await onAll(groups, (g, r) => allGatherBucketed(g, fulls[r].map((full, i) => ({ full, piece: pieces[r][i] })), { bucketBytes: cap }));
        const gathered = await Promise.all(fulls.map(arrays));
        const pieceVals = await Promise.all(pieces.map(arrays));
        let bad = '';
        for (let r = 0; r < W; r++) SPEC.forEach(([n], i) => {
          for (let j = 0; j < n; j++) {
            const q = Math.floor(j / Math.ceil(n / W));
            const v = pieceVals[q][i][j - q * Math.ceil(n / W)];
            if (!Object.is(gathered[r][i][j], v)) bad ||= `rank ${r} tensor ${i}[${j}]: ${gathered[r][i][j]} vs rank ${q}'s ${v}`;
          }
        });
        t.equal(bad, '', `cap ${cap}: allGather puts every piece in place on every rank`);
        [...pieces.flat(), ...fulls.flat()].forEach((x) => x.dispose());
      }
    } finally {
      inputs.flat().forEach((x) => x.dispose());
      await Promise.all(groups.map((g) => g.destroy()));
    }
  });
}

for (const device of ['cpu', 'cuda'] as const) t.test(`ZeRO-1 AdamW (${device}; bf16 params: split master): bucketed (default 25 MB, 100 B) = per-parameter collectives, bit for bit, W = 2..4`,
  device === 'cuda' ? gpu : {}, async (t) => {
  for (const W of [2, 3, 4]) {
    const run = async (bucketBytes: number, maxGradNorm = 1) => {
      const groups = localGroups(W, { timeoutMs: 20000, device });
      const r0 = mulberry32(seed + W);
      const init = SPEC.map(([n]) => randomNormal(n, r0));
      const grads = Array.from({ length: 3 }, () => groups.map(() => SPEC.map(([n]) => randomNormal(n, r0))));
      const params = groups.map(() => SPEC.map(([, d], i) => tensor(init[i], { dtype: d, device })));
      // bf16 parameters get f32 gradients (and f32 masters), as the model's defaults
      const gs = groups.map(() => SPEC.map(([n]) => tensor(new Float32Array(n), { dtype: 'f32', device })));
      const opts = groups.map((g, r) => new AdamW(params[r].map((p, i) => ({ name: `p${i}`, param: p, grad: gs[r][i] })),
        { lr: 1e-2, weightDecay: 0.1, maxGradNorm, group: g, gradReduction: 'sum', bucketBytes }));
      try {
        for (let step = 0; step < 3; step++) {
          for (let r = 0; r < W; r++) gs[r].forEach((x, i) => { const v = tensor(grads[step][r][i], { device }); scale(v, 1, { out: x }); v.dispose(); });
          await onAll(groups, (_, r) => opts[r].step());
        }
        return await Promise.all(params.map(arrays));
      } finally {
        opts.forEach((o) => o.dispose());
        [...params.flat(), ...gs.flat()].forEach((x) => x.dispose());
        await Promise.all(groups.map((g) => g.destroy()));
      }
    };
    const a = await run(0), b = await run(DEFAULT_BUCKET_BYTES), c = await run(100);
    t.ok(sameBits(a.flat(), b.flat()) && sameBits(a.flat(), c.flat()), `W=${W}: parameters after 3 steps identical`);
    t.ok(sameBits(a[0], a[W - 1]), `W=${W}: replicated on every rank`);
    const r0 = mulberry32(seed + W), init = SPEC.map(([n]) => randomNormal(n, r0));
    if (W === 2) {
      // = one process stepping on the summed gradients (a sum of two f32 is the same either way; no clip,
      // whose Σg² is summed per shard here): the ZeRO shards of the split master's correction line up.
      const grads = Array.from({ length: 3 }, () => [0, 1].map(() => SPEC.map(([n]) => randomNormal(n, r0))));
      const params = SPEC.map(([, d], i) => tensor(init[i], { dtype: d, device }));
      const gs = SPEC.map(([n]) => tensor(new Float32Array(n), { dtype: 'f32', device }));
      const opt = new AdamW(params.map((p, i) => ({ name: `p${i}`, param: p, grad: gs[i] })), { lr: 1e-2, weightDecay: 0.1 });
      for (let step = 0; step < 3; step++) {
        gs.forEach((x, i) => {
          const v = tensor(Float32Array.from(grads[step][0][i], (y, j) => Math.fround(Math.fround(y) + Math.fround(grads[step][1][i][j]))), { device });
          scale(v, 1, { out: x });
          v.dispose();
        });
        await opt.step();
      }
      const want = await arrays(params);
      opt.dispose();
      [...params, ...gs].forEach((x) => x.dispose());
      const got = await run(DEFAULT_BUCKET_BYTES, 0);
      t.ok(sameBits(got[0], want) && sameBits(got[1], want), 'W=2 without clipping = world 1 on the summed gradients, bit for bit');
    }
    // (One element may come back near where it started when the random gradients' signs alternate: look
    // at the mean movement, which 3 Adam steps of lr 1e-2 make ~1e-2.)
    let moved = 0, count = 0;
    a[0].forEach((x, i) => Array.from(x).forEach((v, j) => { moved += Math.abs(v - init[i][j]); count++; }));
    t.ok(moved / count > 2e-3, `W=${W}: the parameters moved (mean ${(moved / count).toExponential(2)})`);
  }
});
