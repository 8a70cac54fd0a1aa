import t from 'tap';
import {
  Tensor, tensor, empty, zeros, full, randn, rand, synchronize, memory, cuda, devices,
} from '../lib/index';
import { gpu, gpu2, hasCuda, cudaCount, testDevices } from './helpers/devices';
import { mulberry32, testSeed } from './helpers/rng';
import { throwsCode, rejectsCode } from './helpers/assert';

const seed = testSeed();
t.comment(`TEST_SEED=${seed}`);
const rnd = mulberry32(seed);

// Independent references for the 16-bit formats: decode every code, round by nearest-with-ties-to-even.
function decodeF16(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
function decodeBf16(h: number): number {
  const b = new Uint32Array([h << 16]);
  return new Float32Array(b.buffer)[0];
}
function nearest(x: number, decode: (h: number) => number): number {
  // brute force over the positive codes (monotone in the code), then sign
  const a = Math.abs(x);
  let lo = 0, hi = 0x7c00;  // upper bound: +inf for f16; bf16 uses 0x7f80
  if (decode === decodeBf16) hi = 0x7f80;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (decode(mid) <= a) lo = mid; else hi = mid;
  }
  const dl = a - decode(lo), dh = decode(hi) - a;
  let code = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
  if (decode === decodeF16 && a >= 65520) code = 0x7c00;
  const v = decode(code);
  return x < 0 ? -v : v;
}

t.test('devices and CUDA status', async (t) => {
  t.same(devices()[0], 'cpu');
  t.equal(devices().length, 1 + cuda.deviceCount());
  t.type(cuda.isAvailable(), 'boolean');
  if (cuda.isAvailable()) t.equal(cuda.unavailableReason(), '');
  else t.match(cuda.unavailableReason(), /\w+/, 'a reason is given when CUDA is unusable');
});

for (const dev of testDevices) {
  t.test(`round trips on ${dev}`, async (t) => {
    const n = 1000;
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) f[i] = (rnd() - 0.5) * 10 ** (rnd() * 8 - 4);
    f[0] = 65519; f[1] = 65520; f[2] = 1e-7; f[3] = -3e-8; f[4] = 2 ** -25; f[5] = 1.5 * 2 ** -24;
    const x = tensor(f, { shape: [10, 100], device: dev });
    t.same(x.shape, [10, 100]);
    t.equal(x.dtype, 'f32');
    t.equal(x.device, dev === 'cpu' ? 'cpu' : 'cuda:0');
    t.same(await x.toArray(), f, 'f32 exact');
    for (const dt of ['f16', 'bf16'] as const) {
      const h = tensor(f, { dtype: dt, device: dev });
      const back = await h.toArray();
      let bad = 0;
      for (let i = 0; i < n; i++) {
        const want = nearest(f[i], dt === 'f16' ? decodeF16 : decodeBf16);
        if (!Object.is(back[i], want) && !(back[i] === want)) bad++;
      }
      t.equal(bad, 0, `${dt}: every element is the correctly rounded value`);
      const raw = (await h.toRaw()) as Uint16Array;
      t.ok(raw instanceof Uint16Array, 'raw bits');
      const again = tensor(raw, { dtype: dt, device: dev });
      t.same(await again.toArray(), back, 'raw bits round-trip');
      h.dispose(); again.dispose();
    }
    const ints = Int32Array.from({ length: 257 }, () => Math.floor((rnd() - 0.5) * 2 ** 31));
    const it = tensor(ints, { device: dev });
    t.equal(it.dtype, 'i32');
    t.same(await it.toArray(), ints);
    const nested = tensor([[1, 2, 3], [4, 5, 6]], { device: dev });
    t.same(nested.shape, [2, 3]);
    t.same(Array.from(await nested.toArray()), [1, 2, 3, 4, 5, 6]);
    for (const y of [x, it, nested]) y.dispose();
  });

  t.test(`fill, zeros, full, conversions on ${dev}`, async (t) => {
    const z = zeros([3, 5], { device: dev, dtype: 'bf16' });
    t.same(Array.from(await z.toArray()), new Array(15).fill(0));
    const f = full([7], 2.7, { device: dev, dtype: 'f16' });
    t.same(Array.from(await f.toArray()), new Array(7).fill(nearest(2.7, decodeF16)));
    const src = Float32Array.from({ length: 500 }, () => (rnd() - 0.5) * 1e5);
    const x = tensor(src, { device: dev });
    const xi = x.to('i32');
    const got = await xi.toArray();
    t.same(Array.from(got), Array.from(src, (v) => Math.trunc(v)), 'f32 -> i32 truncates');
    const xb = x.to('bf16');
    t.same(Array.from(await xb.toArray()), Array.from(src, (v) => nearest(v, decodeBf16)), 'f32 -> bf16 rounds to nearest even');
    const xbf = xb.to('f32');
    t.same(await xbf.toArray(), await xb.toArray(), 'bf16 -> f32 exact');
    const c = x.clone();
    x.fill_(1);
    t.same(await c.toArray(), src, 'clone is independent');
    const v = c.reshape([20, 25]);
    t.same(v.shape, [20, 25]);
    v.fill_(3);
    t.same(Array.from(await c.toArray()), new Array(500).fill(3), 'reshape is a view');
    v.dispose();
    const base = tensor(Float32Array.from({ length: 24 }, (_, i) => i), { shape: [1, 4, 3, 2], device: dev });
    const sl = base.narrow(1, 1, 2);
    t.same(sl.shape, [1, 2, 3, 2]);
    t.same(Array.from(await sl.toArray()), Array.from({ length: 12 }, (_, i) => i + 6), 'narrow reads the slice');
    sl.fill_(-1);
    const after = await base.toArray();
    t.same(Array.from(after.slice(6, 18)), new Array(12).fill(-1), 'narrow is a view');
    t.equal(after[5], 5); t.equal(after[18], 18);
    throwsCode(t, () => base.narrow(1, 3, 2), 'ERR_SHAPE');
    throwsCode(t, () => base.narrow(2, 0, 1), 'ERR_UNSUPPORTED');
    sl.dispose(); base.dispose();
    for (const y of [z, f, x, xi, xb, xbf, c]) y.dispose();
  });

  t.test(`randn and rand on ${dev}`, async (t) => {
    const n = 200_000;
    const a = randn([n], { seed: 1234, device: dev });
    const b = randn([n], { seed: 1234, device: dev });
    const c = randn([n], { seed: 1235, device: dev });
    const av = await a.toArray(), bv = await b.toArray(), cv = await c.toArray();
    t.same(av, bv, 'same seed, same values');
    let same = 0, sum = 0, sq = 0, four = 0;
    for (let i = 0; i < n; i++) {
      if (av[i] === cv[i]) same++;
      sum += av[i]; sq += av[i] * av[i];
      if (Math.abs(av[i]) > 4) four++;
    }
    t.ok(same < 10, 'another seed gives other values');
    const mean = sum / n, std = Math.sqrt(sq / n - mean * mean);
    t.ok(Math.abs(mean) < 0.01, `mean ${mean} ≈ 0`);
    t.ok(Math.abs(std - 1) < 0.01, `std ${std} ≈ 1`);
    t.ok(four > 2 && four < 40, `tails: ${four} of ${n} beyond 4σ (expected ~13)`);
    const u = rand([n], { seed: 99, device: dev, low: -2, high: 3 });
    const uv = await u.toArray();
    let umin = Infinity, umax = -Infinity, usum = 0;
    for (const x of uv) { umin = Math.min(umin, x); umax = Math.max(umax, x); usum += x; }
    t.ok(umin >= -2 && umax < 3, 'rand within [low, high)');
    t.ok(Math.abs(usum / n - 0.5) < 0.02, 'rand mean ≈ 0.5');
    for (const y of [a, b, c, u]) y.dispose();
  });
}

t.test('randn gives the same bits on CPU and CUDA', gpu, async (t) => {
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    const s = Math.floor(rnd() * 2 ** 40);
    const a = randn([1 << 20], { seed: s, dtype, device: 'cpu' });
    const b = randn([1 << 20], { seed: s, dtype, device: 'cuda' });
    t.same(await a.toRaw(), await b.toRaw(), `${dtype} randn bit for bit`);
    const ua = rand([4099], { seed: s, dtype }), ub = rand([4099], { seed: s, dtype, device: 'cuda' });
    t.same(await ua.toRaw(), await ub.toRaw(), `${dtype} rand bit for bit`);
    for (const y of [a, b, ua, ub]) y.dispose();
  }
});

t.test('moves between devices', gpu, async (t) => {
  const x = randn([333, 77], { seed: 5 });
  const xs = await x.toArray();
  for (const dt of ['f32', 'bf16'] as const) {
    const g = x.to({ device: 'cuda', dtype: dt });
    t.equal(g.device, 'cuda:0');
    t.equal(g.dtype, dt);
    const back = g.to('cpu');
    t.equal(back.device, 'cpu');
    const ref = dt === 'f32' ? xs : Float32Array.from(xs, (v) => nearest(v, decodeBf16));
    t.same(await back.toArray(), ref);
    g.dispose(); back.dispose();
  }
  x.dispose();
});

t.test('moves between two GPUs', gpu2, async (t) => {
  const x = randn([1 << 16], { seed: 8, device: 'cuda:0', dtype: 'bf16' });
  const y = x.to('cuda:1');
  t.equal(y.device, 'cuda:1');
  t.same(await y.toRaw(), await x.toRaw());
  const z = randn([1 << 16], { seed: 8, device: 'cuda:1', dtype: 'bf16' });
  t.same(await z.toRaw(), await x.toRaw(), 'randn identical on both GPUs');
  for (const a of [x, y, z]) a.dispose();
});

t.test('bad input gets typed errors', async (t) => {
  throwsCode(t, () => empty([2, -1]), 'ERR_SHAPE');
  throwsCode(t, () => empty([2, 1.5]), 'ERR_SHAPE');
  throwsCode(t, () => empty([NaN]), 'ERR_SHAPE');
  throwsCode(t, () => empty([Infinity]), 'ERR_SHAPE');
  throwsCode(t, () => empty('3' as never), 'ERR_SHAPE');
  throwsCode(t, () => empty([2 ** 30, 2 ** 30]), ['ERR_OOM', 'ERR_SHAPE']);
  throwsCode(t, () => tensor(new Float32Array(5), { shape: [2, 3] }), 'ERR_SHAPE');
  throwsCode(t, () => tensor([[1, 2], [3]]), 'ERR_SHAPE');
  throwsCode(t, () => tensor([1, 2], { dtype: 'f64' as never }), 'ERR_DTYPE');
  throwsCode(t, () => tensor(new Uint8Array(3) as never), 'ERR_DTYPE');
  throwsCode(t, () => tensor(new Uint16Array(3)), 'ERR_DTYPE');
  throwsCode(t, () => tensor([1.5], { dtype: 'i32' }), 'ERR_DTYPE');
  throwsCode(t, () => empty([2], { device: 'tpu' as never }), 'ERR_DEVICE');
  throwsCode(t, () => empty([2], { device: 'cuda:x' as never }), 'ERR_DEVICE');
  throwsCode(t, () => randn([2], { dtype: 'i32' }), 'ERR_DTYPE');
  throwsCode(t, () => randn([2], { seed: 1.5 }), 'ERR_ARG');
  if (!hasCuda) {
    throwsCode(t, () => empty([2], { device: 'cuda' }), 'ERR_NO_CUDA');
    throwsCode(t, () => empty([2], { device: 'cuda:0' }), 'ERR_NO_CUDA');
  } else {
    throwsCode(t, () => empty([2], { device: `cuda:${cudaCount}` as never }), 'ERR_DEVICE');
    throwsCode(t, () => empty([2], { device: 'cuda:7' }), 'ERR_DEVICE');
  }
  const x = randn([4, 4]);
  x.dispose();
  x.dispose(); // twice is fine
  t.ok(x.disposed);
  await rejectsCode(t, () => x.toArray(), 'ERR_DISPOSED');
  throwsCode(t, () => x.clone(), 'ERR_DISPOSED');
  throwsCode(t, () => x.to('bf16'), 'ERR_DISPOSED');
  throwsCode(t, () => x.reshape([16]), 'ERR_DISPOSED');
  throwsCode(t, () => x.fill_(1), 'ERR_DISPOSED');
  const y = randn([4, 4]);
  throwsCode(t, () => y.reshape([5]), 'ERR_SHAPE');
  y.dispose();
});

t.test('CPU out-of-memory is an error and the process keeps working', async (t) => {
  throwsCode(t, () => empty([2 ** 45], { dtype: 'f32' }), 'ERR_OOM');
  const ok = randn([10], { seed: 1 });
  t.equal((await ok.toArray()).length, 10);
  ok.dispose();
});

t.test('CUDA out-of-memory is recoverable', gpu, async (t) => {
  const total = cuda.devices()[0].totalMemory;
  throwsCode(t, () => empty([Math.ceil((total * 1.5) / 2)], { dtype: 'bf16', device: 'cuda' }), 'ERR_OOM');
  const x = randn([1 << 20], { seed: 3, device: 'cuda' });
  const y = randn([1 << 20], { seed: 3 });
  t.same(await x.toArray(), await y.toArray(), 'allocations and kernels work after the OOM');
  x.dispose(); y.dispose();
});

for (const dev of testDevices) {
  t.test(`10,000 create/dispose cycles leave memory where it started (${dev})`, async (t) => {
    await synchronize(dev);
    const before = memory(dev).allocated;
    for (let i = 0; i < 10_000; i++) {
      const a = empty([64 + (i % 7) * 100], { device: dev, dtype: 'bf16' });
      const b = a.reshape([a.numel]);
      a.dispose();
      b.dispose();
      if (i % 1000 === 0) {
        const c = randn([1000], { device: dev, seed: i });
        c.dispose();
      }
    }
    await synchronize(dev);
    t.equal(memory(dev).allocated, before, 'allocated bytes back to the start');
    if (dev === 'cuda') t.ok(memory(dev).deviceMallocs < 100, `caching allocator: ${memory(dev).deviceMallocs} cudaMallocs`);
  });
}

t.test('work runs off the event loop', async (t) => {
  const x = randn([1 << 23], { seed: 11 }); // tens of ms of CPU work, enqueued
  let ticked = false;
  setImmediate(() => { ticked = true; });
  const p = x.toArray();
  t.ok(p instanceof Promise);
  await p;
  t.ok(ticked, 'the event loop ran while the CPU queue worked');
  await synchronize('cpu');
  x.dispose();
});

t.test('a failed queued CPU task fails its outputs (and what is computed from them), nothing else', async (t) => {
  const { native } = await import('../lib/native');
  const x = randn([1000], { seed: 5 });
  const out = empty([1000]);
  out.fill_(7);
  native().debugQueueError(-1, 'ERR_OOM', 'simulated failure in a queued task', out.handle());
  const y = x.clone();  // work queued after the failure still runs
  const z = tensor([1, 2, 3]);  // creating a tensor is not a sync point: it neither waits nor takes the error
  const derived = out.clone();  // its input failed: it fails with the same error, without running
  t.same(await x.toArray(), await y.toArray(), 'an unrelated tensor reads fine (it does not get the error)');
  await rejectsCode(t, () => out.toArray(), 'ERR_OOM', 'the failed output never reads as data');
  await rejectsCode(t, () => out.toRaw(), 'ERR_OOM', 'not even raw');
  await rejectsCode(t, () => derived.toArray(), 'ERR_OOM', 'the failure propagates to outputs computed from it');
  await rejectsCode(t, () => synchronize('cpu'), 'ERR_OOM', 'synchronize rejects with the queued error');
  await synchronize('cpu');
  t.pass('synchronize reports it once, then it is cleared');
  await rejectsCode(t, () => out.toArray(), 'ERR_OOM', 'a failed tensor stays failed until disposed');
  t.same(Array.from(await z.toArray()), [1, 2, 3], 'data written in issue order');
  native().debugQueueError(-1, 'ERR_CUDA', 'another');  // no outputs
  t.equal((await x.toArray()).length, 1000, 'a failure with no outputs does not reach unrelated reads');
  await rejectsCode(t, () => synchronize('cpu'), 'ERR_CUDA');
  for (const a of [x, y, z, out, derived]) a.dispose();
});

t.test('float64 data rounds once to f16/bf16; i32 data and fills must be int32; .to(i32) saturates', async (t) => {
  // Just above a tie: through f32 it would become the tie and round to even (down).
  t.same(Array.from(await tensor([1.00390625 + 2 ** -40], { dtype: 'bf16' }).toArray()), [1.0078125], 'bf16 rounds once');
  t.same(Array.from(await tensor([1 + 2 ** -11 + 2 ** -40], { dtype: 'f16' }).toArray()), [1 + 2 ** -10], 'f16 rounds once');
  t.same(Array.from(await tensor([-(1.00390625 + 2 ** -40)], { dtype: 'bf16' }).toArray()), [-1.0078125], 'negative too');
  // Fresh doubles near ties, every one against the independent reference.
  const xs = new Float64Array(2000);
  for (let i = 0; i < xs.length; i++) {
    const e = Math.floor(rnd() * 40) - 20;
    const tie = (1 + Math.floor(rnd() * 128) / 128 + 2 ** -8) * 2 ** e;  // a bf16 tie (8-bit significand + half)
    xs[i] = tie * (1 + (rnd() - 0.5) * 2 ** -30) * (rnd() < 0.5 ? -1 : 1);
  }
  xs[0] = 65519.99; xs[1] = 65520; xs[2] = 2 ** -25 * (1 + 2 ** -30); xs[3] = 3.3e38;
  for (const dt of ['bf16', 'f16'] as const) {
    const got = await tensor(xs, { dtype: dt }).toArray();
    let bad = 0;
    for (let i = 0; i < xs.length; i++) if (!Object.is(got[i], nearest(xs[i], dt === 'f16' ? decodeF16 : decodeBf16))) bad++;
    t.equal(bad, 0, `${dt}: every double rounded once, to nearest even`);
  }
  throwsCode(t, () => tensor([3e9, 2 ** 31], { dtype: 'i32' }), 'ERR_ARG', 'no silent wrap');
  throwsCode(t, () => tensor([-(2 ** 31) - 1], { dtype: 'i32' }), 'ERR_ARG');
  t.same(Array.from(await tensor([2 ** 31 - 1, -(2 ** 31)], { dtype: 'i32' }).toArray()), [2 ** 31 - 1, -(2 ** 31)], 'int32 extremes are fine');
  for (const v of [NaN, Infinity, -Infinity, 3e9, -3e9, 1.5]) {
    throwsCode(t, () => full([2], v, { dtype: 'i32' }), 'ERR_ARG', `full i32 ${v}`);
    throwsCode(t, () => empty([2], { dtype: 'i32' }).fill_(v), 'ERR_ARG', `fill_ i32 ${v}`);
  }
  const { native } = await import('../lib/native');
  const h = empty([2], { dtype: 'i32' });
  throwsCode(t, () => { try { native().fill(h.handle(), 3e9); } catch (e) { throw (require('../lib/errors').fromNative(e)); } }, 'ERR_ARG', 'native fill checks too');
  h.dispose();
  t.same(Array.from(await tensor([3e9, -3e9, NaN, 2.9, -2.9]).to('i32').toArray()), [2147483647, -2147483648, 0, 2, -2], '.to(i32) truncates and saturates, NaN -> 0');
  throwsCode(t, () => rand([2], { low: -3e38, high: 3e38 }), 'ERR_ARG', 'rand: high - low overflows f32');
  throwsCode(t, () => rand([2], { low: 0, high: 1e39 }), 'ERR_ARG', 'rand: high beyond f32');
  throwsCode(t, () => randn([2], { std: 1e38 }), 'ERR_ARG', 'randn: std would overflow f32');
  throwsCode(t, () => randn([2], { mean: 1e39 }), 'ERR_ARG', 'randn: mean beyond f32');
  const r = await randn([1000], { std: 1e37, seed: 9 }).toArray();
  t.ok(r.every((v) => Number.isFinite(v)), 'randn within range stays finite');
});

t.test('using disposes at scope end', async (t) => {
  let keep: Tensor | undefined;
  {
    using a = randn([3]);
    keep = a;
    t.notOk(a.disposed);
  }
  t.ok(keep!.disposed);
});
