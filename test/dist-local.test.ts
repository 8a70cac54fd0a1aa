// The local process-group backend: every collective of W = 1..8 virtual ranks against a plain float64
// computation of the same inputs, p2p ring exchanges, and the timeout / mismatch / abort paths.
import t from 'tap';
import { dist, tensor, Tensor, Dtype } from '../lib/index';
import type { Group } from '../lib/dist';
import { rejectsCode } from './helpers/assert';
import { mulberry32, randomNormal, testSeed } from './helpers/rng';
import { gpu } from './helpers/devices';

const seed = testSeed();
t.comment(`seed ${seed} (TEST_SEED=${seed} replays)`);
const rnd = mulberry32(seed);

type F = 'f32' | 'bf16';
const DTYPES: F[] = ['f32', 'bf16'];

function inputs(W: number, n: number, dtype: Dtype): Tensor[] {
  return Array.from({ length: W }, () => tensor(randomNormal(n, rnd), { dtype }));
}
async function values(ts: Tensor[]): Promise<Float64Array[]> {
  return Promise.all(ts.map(async (x) => Float64Array.from(await x.toArray())));
}
function poison(n: number, dtype: Dtype): Tensor {
  return tensor(new Float64Array(n).fill(777), { dtype });
}
// One f32 accumulation then one rounding to the output dtype: within (W·2^-24 + unit roundoff)·Σ|x|.
function close(got: Float32Array | Int32Array, want: Float64Array, mag: Float64Array, dtype: F): string | null {
  const u = dtype === 'bf16' ? 2 ** -8 : 2 ** -23;
  for (let i = 0; i < want.length; i++) {
    const tol = u * Math.abs(want[i]) + 16 * 2 ** -24 * mag[i] + 1e-30;
    if (!(Math.abs(got[i] - want[i]) <= tol)) return `element ${i}: got ${got[i]}, want ${want[i]} (tol ${tol})`;
  }
  return null;
}
function disposeAll(...lists: Tensor[][]): void {
  for (const l of lists) for (const x of l) x.dispose();
}

for (let W = 1; W <= 8; W++) {
  t.test(`collectives, W = ${W}`, async (t) => {
    const g = dist.localGroups(W);
    t.equal(g.length, W);
    g.forEach((x, r) => {
      t.equal(x.rank, r);
      t.equal(x.worldSize, W);
      t.equal(x.backend, 'local');
      t.equal(x.device, 'cpu');
    });
    const n = 37 + W;
    for (const dtype of DTYPES) {
      for (const op of ['sum', 'avg', 'max'] as const) {
        const xs = inputs(W, n, dtype);
        const v = await values(xs);
        await Promise.all(g.map((x, r) => x.allReduce(xs[r], { op })));
        const want = new Float64Array(n), mag = new Float64Array(n);
        for (let i = 0; i < n; i++) {
          let s = 0, m = -Infinity, a = 0;
          for (let r = 0; r < W; r++) { s += v[r][i]; m = Math.max(m, v[r][i]); a += Math.abs(v[r][i]); }
          want[i] = op === 'sum' ? s : op === 'avg' ? s / W : m;
          mag[i] = op === 'avg' ? a / W : op === 'max' ? 0 : a;
        }
        for (let r = 0; r < W; r++) {
          const bad = close(await xs[r].toArray(), want, mag, dtype);
          t.equal(bad, null, `allReduce ${op} ${dtype} rank ${r}`);
        }
        disposeAll(xs);
      }

      // allGather: exact (copies only)
      {
        const xs = inputs(W, n, dtype);
        const v = await values(xs);
        const outs = g.map(() => poison(W * n, dtype));
        await Promise.all(g.map((x, r) => x.allGather(outs[r], xs[r])));
        for (let r = 0; r < W; r++) {
          const got = await outs[r].toArray();
          let ok = true;
          for (let p = 0; p < W; p++) for (let i = 0; i < n; i++) if (got[p * n + i] !== v[p][i]) ok = false;
          t.ok(ok, `allGather ${dtype} rank ${r}: rank-major concatenation`);
        }
        disposeAll(xs, outs);
      }

      // reduceScatter sum and avg
      for (const op of ['sum', 'avg'] as const) {
        const xs = inputs(W, W * n, dtype);
        const v = await values(xs);
        const outs = g.map(() => poison(n, dtype));
        await Promise.all(g.map((x, r) => x.reduceScatter(outs[r], xs[r], { op })));
        for (let r = 0; r < W; r++) {
          const want = new Float64Array(n), mag = new Float64Array(n);
          for (let i = 0; i < n; i++)
            for (let p = 0; p < W; p++) { want[i] += v[p][r * n + i]; mag[i] += Math.abs(v[p][r * n + i]); }
          if (op === 'avg') for (let i = 0; i < n; i++) { want[i] /= W; mag[i] /= W; }
          t.equal(close(await outs[r].toArray(), want, mag, dtype), null, `reduceScatter ${op} ${dtype} rank ${r}`);
        }
        disposeAll(xs, outs);
      }

      // broadcast from a random root: exact
      {
        const root = Math.floor(rnd() * W);
        const xs = inputs(W, n, dtype);
        const v = await values(xs);
        await Promise.all(g.map((x, r) => x.broadcast(xs[r], root)));
        for (let r = 0; r < W; r++) t.same(Float64Array.from(await xs[r].toArray()), v[root], `broadcast ${dtype} root ${root} -> ${r}`);
        disposeAll(xs);
      }
    }

    // ring exchange in one batch (both directions), then barrier
    {
      const xs = inputs(W, n, 'f32');
      const v = await values(xs);
      const left = g.map(() => poison(n, 'f32')), right = g.map(() => poison(n, 'f32'));
      await Promise.all(g.map((x, r) => x.batchSendRecv([
        { op: 'send', tensor: xs[r], peer: (r + 1) % W },
        { op: 'send', tensor: xs[r], peer: (r + W - 1) % W },
        { op: 'recv', tensor: left[r], peer: (r + W - 1) % W },
        { op: 'recv', tensor: right[r], peer: (r + 1) % W },
      ])));
      for (let r = 0; r < W; r++) {
        t.same(Float64Array.from(await left[r].toArray()), v[(r + W - 1) % W], `ring: rank ${r} got its left neighbour's`);
        t.same(Float64Array.from(await right[r].toArray()), v[(r + 1) % W], `ring: rank ${r} got its right neighbour's`);
      }
      await Promise.all(g.map((x) => x.barrier()));
      disposeAll(xs, left, right);
    }
    for (const x of g) await x.destroy();
  });
}

t.test('send before recv: the send buffer may be reused and disposed at once', async (t) => {
  const [a, b] = dist.localGroups(2);
  const x = tensor([1, 2, 3, 4]);
  const sent = a.send(x, 1);
  x.fill_(-5);   // reuse
  x.dispose();   // and free
  const y = tensor([0, 0, 0, 0]);
  await Promise.all([sent, b.recv(y, 0)]);
  t.same(Array.from(await y.toArray()), [1, 2, 3, 4], 'the receiver gets what was sent at issue time');
  // FIFO per channel
  const p = [tensor([1]), tensor([2]), tensor([3])];
  const q = [tensor([0]), tensor([0]), tensor([0])];
  const sends = Promise.all(p.map((z) => a.send(z, 1)));
  for (const z of q) await b.recv(z, 0);
  await sends;
  t.same(await Promise.all(q.map(async (z) => (await z.toArray())[0])), [1, 2, 3], 'in order');
  y.dispose();
  disposeAll(p, q);
});

t.test('timeouts abort the group, naming the op and the missing peer', async (t) => {
  const g = dist.localGroups(3, { timeoutMs: 50 });
  const xs = inputs(3, 4, 'f32');
  const p0 = g[0].allReduce(xs[0]);
  const p1 = g[1].allReduce(xs[1]);
  for (const p of [p0, p1]) {
    await rejectsCode(t, p, 'ERR_TIMEOUT', 'allReduce times out');
    await p.catch((e: Error) => t.match(e.message, /allReduce.*rank 2/, `names op and peer: ${e.message}`));
  }
  await rejectsCode(t, g[2].allReduce(xs[2]), 'ERR_TIMEOUT', 'a later call on any rank rejects at once');
  await rejectsCode(t, g[0].barrier(), 'ERR_TIMEOUT', 'barrier too');

  const h = dist.localGroups(2, { timeoutMs: 10_000 });
  const y = tensor([0, 0]);
  const r = h[1].recv(y, 0, { timeoutMs: 40 });
  await rejectsCode(t, r, 'ERR_TIMEOUT', 'per-call timeout on a recv');
  await r.catch((e: Error) => t.match(e.message, /recv on rank 1 .*rank 0/, e.message));
  y.dispose();
  disposeAll(xs);
});

t.test('mismatched calls reject with ERR_COMM on every rank', async (t) => {
  const g = dist.localGroups(2);
  const a = tensor([1, 2, 3]), b = tensor([1, 2, 3]);
  const p0 = g[0].allReduce(a);
  const p1 = g[1].broadcast(b, 0);
  await rejectsCode(t, p0, 'ERR_COMM', 'rank 0: allReduce vs broadcast');
  await rejectsCode(t, p1, 'ERR_COMM', 'rank 1 too');
  await p1.catch((e: Error) => t.match(e.message, /broadcast.*allReduce|allReduce.*broadcast/, e.message));

  const h = dist.localGroups(2);
  const c = tensor([1, 2, 3]), d = tensor([0, 0]);
  const s = h[0].send(c, 1);
  const r = h[1].recv(d, 0);
  await rejectsCode(t, r, 'ERR_COMM', 'recv of 2 elements vs send of 3');
  await rejectsCode(t, s, 'ERR_COMM', 'the sender is told too');

  const k = dist.localGroups(2);
  const e = tensor([1, 2, 3]), f = tensor([1, 2, 3, 4]);
  const q0 = k[0].allReduce(e), q1 = k[1].allReduce(f);
  await rejectsCode(t, q0, 'ERR_COMM', 'allReduce with different element counts');
  await rejectsCode(t, q1, 'ERR_COMM', 'on both ranks');

  // abort: pending and later calls reject with ERR_COMM
  const m = dist.localGroups(2);
  const pend = m[0].barrier();
  m[1].abort('user stop');
  await rejectsCode(t, pend, 'ERR_COMM', 'pending barrier');
  await pend.catch((err: Error) => t.match(err.message, /user stop/));
  await rejectsCode(t, m[1].barrier(), 'ERR_COMM', 'later call');
  disposeAll([a, b, c, d, e, f]);
});

t.test('argument errors', async (t) => {
  const g: Group[] = dist.localGroups(2);
  const x = tensor([1, 2]);
  await rejectsCode(t, g[0].send(x, 2), 'ERR_ARG', 'peer out of range');
  await rejectsCode(t, g[0].allGather(tensor([0, 0, 0]), x), 'ERR_SHAPE', 'allGather out size');
  await rejectsCode(t, g[0].allReduce(tensor([1, 2], { dtype: 'i32' })), 'ERR_DTYPE', 'i32 cannot be reduced');
  await rejectsCode(t, g[0].allReduce(x, { op: 'prod' as never }), 'ERR_ARG', 'unknown reduce op');
  t.throws(() => dist.localGroups(0), 'world size 0');
  await g[0].destroy();
  await rejectsCode(t, g[0].barrier(), 'ERR_COMM', 'destroyed');
  x.dispose();
});

t.test('CUDA: collectives and a ring exchange of 4 virtual ranks on one GPU', gpu, async (t) => {
  const W = 4, n = 1000;
  const g = dist.localGroups(W, { device: 'cuda' });
  t.equal(g[0].device, 'cuda:0');
  const host = Array.from({ length: W }, () => randomNormal(n, rnd));
  const xs = host.map((h) => tensor(h, { dtype: 'bf16', device: 'cuda' }));
  const v = await values(xs);
  await Promise.all(g.map((x, r) => x.allReduce(xs[r])));
  const want = new Float64Array(n), mag = new Float64Array(n);
  for (let i = 0; i < n; i++) for (let r = 0; r < W; r++) { want[i] += v[r][i]; mag[i] += Math.abs(v[r][i]); }
  for (let r = 0; r < W; r++) t.equal(close(await xs[r].toArray(), want, mag, 'bf16'), null, `allReduce sum bf16 rank ${r}`);
  const ys = host.map((h) => tensor(h, { device: 'cuda' }));
  const got = g.map(() => tensor(new Float64Array(n), { device: 'cuda' }));
  await Promise.all(g.map((x, r) => x.batchSendRecv([{ op: 'send', tensor: ys[r], peer: (r + 1) % W },
    { op: 'recv', tensor: got[r], peer: (r + W - 1) % W }])));
  for (let r = 0; r < W; r++)
    t.same(Float64Array.from(await got[r].toArray()), Float64Array.from(host[(r + W - 1) % W], (x) => Math.fround(x)), `ring exchange rank ${r}`);
  const outs = g.map(() => tensor(new Float64Array(W * n), { device: 'cuda' }));
  await Promise.all(g.map((x, r) => x.allGather(outs[r], ys[r])));
  const all = await outs[2].toArray();
  t.ok(host.every((h, p) => h.every((x, i) => all[p * n + i] === Math.fround(x))), 'allGather');
  const mx = host.map((h) => tensor(h, { device: 'cuda' }));
  await Promise.all(g.map((x, r) => x.allReduce(mx[r], { op: 'max' })));
  const m = await mx[1].toArray();
  t.ok(Array.from(m).every((x, i) => x === Math.max(...host.map((h) => Math.fround(h[i])))), 'allReduce max (CUDA maximum kernel)');
  disposeAll(xs, ys, got, outs, mx);
});
