// Throws random garbage at every exported function (and the raw native exports): each call must
// return or throw a MegabeamError with a code — never crash, hang or throw a bare TypeError/RangeError.
// The only error allowed through unchanged is the caller's own: a getter of a hostile object that throws
// (checked by identity, not by message).
//
// Tensor-layer failures (lib/tensor.ts and the tensor natives are another work stream) are collected
// separately and reported as a `todo` subtest, so they stay visible without hiding failures of the ops.
import t from 'tap';
import * as mb from '../lib/index';
import { native } from '../lib/native';
import { mulberry32, testSeed } from './helpers/rng';

const seed = testSeed();
t.comment(`TEST_SEED=${seed}`);
const rnd = mulberry32(seed);

const live = mb.randn([2, 3], { seed: 1 });
const liveBf = mb.randn([1, 4, 2, 8], { seed: 2, dtype: 'bf16' });
const liveI = mb.tensor(new Int32Array([1, 2, 3]));
const dead = mb.randn([2, 3], { seed: 3 });
dead.dispose();

// The user's own error, thrown by a hostile getter: it may pass through (by identity).
const userError = new Error('hostile getter');
const hostile = new Proxy({}, { get: () => { throw userError; }, ownKeys: () => { throw userError; } });

const deep = (n: number): unknown => {
  let a: unknown = [1];
  for (let i = 0; i < n; i++) a = [a];
  return a;
};
// Objects that claim to be Tensors: a bare prototype object, one with plausible fields, a subclass instance
// made without the constructor.
const fakeTensors = (): unknown[] => [
  Object.create(mb.Tensor.prototype),
  Object.assign(Object.create(mb.Tensor.prototype), { shape: [1, 4, 2, 8], dtype: 'f32', device: 'cpu' }),
  { shape: [2, 3], dtype: 'f32', device: 'cpu', handle: () => ({}) },
];

const garbage = (): unknown => {
  const pool: unknown[] = [
    undefined, null, NaN, Infinity, -Infinity, -1, 0, 1, 1.5, 2 ** 60, -(2 ** 31), '', 'cpu', 'cuda', 'cuda:99', 'f16',
    'bf16', 'i32', 'nonsense', {}, [], [NaN], [-1], [1e20], [2, 3], [2 ** 40], [[1, 2], [3]], [1, 'a'], true, false,
    () => 0, 10n, -(2n ** 70n), Symbol('s'), [Symbol('in array')], { dtype: Symbol('dt') }, Object.create(null),
    Object.assign(Object.create(null), { dtype: 'f32', base: 1e4 }), new Float32Array(6), new Float64Array(3),
    new Int32Array(2), new Uint16Array(4), new Uint8Array(3), new BigInt64Array(2),
    new Float32Array(new SharedArrayBuffer(24)), new Float64Array(new SharedArrayBuffer(16)), new SharedArrayBuffer(8),
    live, liveBf, liveI, dead, ...fakeTensors(), { device: 'cuda:3' }, { dtype: 'x' }, { dtype: 10n }, { shape: [-1] },
    { shape: [2n] }, { seed: -5 }, { seed: 2n ** 80n }, { causal: 'yes' }, { scale: 10n }, { invFreq: [1n] },
    { invFreq: new BigInt64Array(2) }, { base: 10n }, { base: 0.5 }, { base: Symbol('b') }, { style: Symbol('st') },
    { positions: Object.create(null) }, { type: 'yarn', headDim: 7 }, { type: 'default', headDim: 8, base: 10000 },
    deep(20000), hostile, { invFreq: hostile }, [hostile],
  ];
  return pool[Math.floor(rnd() * pool.length)];
};

const fmt = (args: unknown[]): string =>
  args.map((a) => {
    try {
      if (typeof a === 'symbol') return a.toString();
      if (typeof a === 'bigint') return `${a}n`;
      if (Array.isArray(a) && a.length === 1 && Array.isArray(a[0])) return '[[...deep]]';
      return String(a);
    } catch { return '<unprintable>'; }
  }).join(', ');

function acceptable(e: unknown): boolean {
  if (e instanceof mb.MegabeamError) return /^ERR_[A-Z_]+$/.test(e.code) && typeof e.message === 'string';
  return e === userError;
}

async function callSafely(fn: (...a: unknown[]) => unknown, args: unknown[]): Promise<unknown> {
  try {
    const r = fn(...args);
    if (r instanceof Promise) await r;
    // dispose what the call made, never an argument (in place, an op returns its input)
    const given = (x: unknown): boolean => args.includes(x) || ([live, liveBf, liveI] as unknown[]).includes(x);
    if (r instanceof mb.Tensor && !given(r)) r.dispose();
    else if (r && typeof r === 'object' && !(r instanceof mb.Tensor)) {
      for (const v of Object.values(r)) if (v instanceof mb.Tensor && !given(v)) v.dispose();
    }
    return undefined;
  } catch (e) {
    return e;
  }
}

function collect(obj: Record<string, unknown>, prefix: string, out: [string, (...a: unknown[]) => unknown][]): void {
  for (const [k, v] of Object.entries(obj)) {
    // skip classes, and functions that write files (garbage could name a path in the working directory)
    if (k === 'Tensor' || /Error$/.test(k) || /^(save\w*|write\w*|fromTexts)$/.test(k)) continue;
    // classes are constructed, not called: calling one is JavaScript's own TypeError, not the API's
    if (typeof v === 'function' && /^class\b/.test(Function.prototype.toString.call(v))) continue;
    if (typeof v === 'function') out.push([prefix + k, v as (...a: unknown[]) => unknown]);
    else if (v && typeof v === 'object' && !Array.isArray(v) && prefix.split('.').length < 3)
      collect(v as Record<string, unknown>, `${prefix}${k}.`, out);
  }
}

// Entry points whose uncoded errors fail this test: the ops of the native boundary and the theta module.
// Everything else (the tensor layer: lib/tensor.ts, lib/device.ts, the tensor natives; and the modules of
// other work streams: matmul, nn, ring, dist, optim, data, safetensors, model) is listed as todo, so a
// finding stays visible without failing the ops' test; the owners turn them into hard failures.
const STRICT = (name: string): boolean => /^(rope|attention|theta)\./.test(name) || name === 'add' || name === 'scale';
const tensorLayerFailures = new Map<string, string>();

t.test('the public surface is an explicit list', async (t) => {
  const names = Object.keys(mb);
  for (const internal of ['native', 'callNative', 'fromNative', 'arg', 'sameDevice', 'checkShape', 'deviceIndex'])
    t.notOk(names.includes(internal), `${internal} is not exported`);
  t.ok(names.includes('MegabeamError') && names.includes('rope') && names.includes('attention'), 'the API is');
});

t.test('every exported function survives garbage with coded errors', async (t) => {
  const fns: [string, (...a: unknown[]) => unknown][] = [];
  collect(mb as unknown as Record<string, unknown>, '', fns);
  t.ok(fns.length > 15, `${fns.length} exported functions`);
  let calls = 0, failures = 0;
  for (const [name, fn] of fns) {
    for (let i = 0; i < 80; i++) {
      const args = Array.from({ length: Math.floor(rnd() * 5) }, garbage);
      const e = await callSafely(fn, args);
      calls++;
      if (e === undefined || acceptable(e)) continue;
      const what = `${name}(${fmt(args)}) threw ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`;
      if (!STRICT(name)) {
        if (!tensorLayerFailures.has(name)) tensorLayerFailures.set(name, what);
        continue;
      }
      failures++;
      t.fail(what);
      if (failures > 5) return;
    }
  }
  t.pass(`${calls} garbage calls`);
});

// The ops with garbage in each argument position while the others are valid, so the checks past the
// first argument are reached too.
t.test('ops: one garbage argument among valid ones', async (t) => {
  const q = mb.randn([1, 4, 2, 8], { seed: 4 }), k = mb.randn([1, 4, 1, 8], { seed: 5 }), v = mb.randn([1, 4, 1, 8], { seed: 6 });
  const { out, lse } = mb.attention.forward(q, k, v);
  const valid: [string, (...a: unknown[]) => unknown, unknown[]][] = [
    ['rope.apply', mb.rope.apply as (...a: unknown[]) => unknown, [q, { base: 1e4 }]],
    ['rope.backward', mb.rope.backward as (...a: unknown[]) => unknown, [q, { invFreq: [1, 0.1, 0.01, 0.001] }]],
    ['rope.applyQK', mb.rope.applyQK as (...a: unknown[]) => unknown, [q, k, { base: 1e4, positionOffset: 3 }]],
    ['rope.backwardQK', mb.rope.backwardQK as (...a: unknown[]) => unknown, [q, k, { base: 1e4 }]],
    ['attention.forward', mb.attention.forward as (...a: unknown[]) => unknown, [q, k, v, { causal: true }]],
    ['attention.backward', mb.attention.backward as (...a: unknown[]) => unknown, [q, q, k, v, out, lse, { causal: false }]],
    ['add', mb.add as (...a: unknown[]) => unknown, [q, q, { alpha: 2 }]],
    ['scale', mb.scale as (...a: unknown[]) => unknown, [q, 0.5, {}]],
  ];
  let calls = 0;
  for (const [name, fn, args] of valid) {
    t.equal(await callSafely(fn, args), undefined, `${name} accepts the valid call`);
    for (let i = 0; i < 150; i++) {
      const a = [...args];
      const pos = Math.floor(rnd() * a.length);
      const last = a[a.length - 1];
      // garbage as an argument, or as the value of one option
      if (rnd() < 0.5 || !last || typeof last !== 'object' || last instanceof mb.Tensor) a[pos] = garbage();
      else {
        const keys = ['invFreq', 'base', 'rotaryDim', 'style', 'positions', 'positionOffset', 'attentionFactor', 'precision',
          'inplace', 'causal', 'scale', 'qOffset', 'kOffset', 'kernel', 'alpha', 'beta', 'out', 'dtype'];
        a[a.length - 1] = { ...(last as object), [keys[Math.floor(rnd() * keys.length)]]: garbage() };
      }
      const e = await callSafely(fn, a);
      calls++;
      if (e !== undefined && !acceptable(e)) {
        t.fail(`${name}(${fmt(a)}) threw ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`);
        return;
      }
    }
  }
  t.pass(`${calls} calls with one bad argument`);
  for (const x of [q, k, v, out, lse]) x.dispose();
});

t.test('Tensor methods survive garbage, live or disposed', async (t) => {
  const methods = ['toArray', 'toRaw', 'to', 'clone', 'reshape', 'narrow', 'fill_', 'dispose'] as const;
  let calls = 0;
  for (let i = 0; i < 300; i++) {
    const target = rnd() < 0.5 ? mb.randn([2, 3], { seed: i }) : dead;
    const m = methods[Math.floor(rnd() * methods.length)];
    const args = Array.from({ length: Math.floor(rnd() * 3) }, garbage);
    const e = await callSafely((...a) => (target[m] as (...x: unknown[]) => unknown)(...a), args);
    calls++;
    if (e !== undefined && !acceptable(e) && !tensorLayerFailures.has(`Tensor.${m}`))
      tensorLayerFailures.set(`Tensor.${m}`, `tensor.${m}(${fmt(args)}) threw ${String(e)}`);
    if (target !== dead) target.dispose();
  }
  // methods called on objects that only claim to be Tensors
  for (const fake of fakeTensors()) {
    for (const m of methods) {
      const e = await callSafely((...a) => (mb.Tensor.prototype[m] as (...x: unknown[]) => unknown).apply(fake, a), []);
      calls++;
      if (e !== undefined && !acceptable(e) && !tensorLayerFailures.has(`fake.${m}`))
        tensorLayerFailures.set(`fake.${m}`, `Tensor.prototype.${m} on a fake tensor threw ${String(e)}`);
    }
  }
  t.pass(`${calls} method calls`);
});

t.test('raw native exports reject garbage with coded errors', async (t) => {
  const n = native() as unknown as Record<string, unknown>;
  let calls = 0;
  const ops = new Set(['rope', 'attentionForward', 'attentionBackward', 'attentionCudaCheck', 'axpby']);
  for (const [name, fn] of Object.entries(n)) {
    if (typeof fn !== 'function' || name === 'TensorHandle') continue;
    for (let i = 0; i < 100; i++) {
      const args = Array.from({ length: Math.floor(rnd() * 7) }, () => {
        const g = garbage();
        try {
          return g instanceof mb.Tensor ? (g.disposed ? (g as unknown as { handle?: unknown }) : g.handle()) : g;
        } catch {
          return g;  // a fake Tensor goes in as it is
        }
      });
      // the ops take one baton: garbage keys inside an object too
      if (ops.has(name) && rnd() < 0.5) args.splice(0, args.length, { x: live.handle(), q: liveBf.handle(), a: live.handle(), [String(Math.floor(rnd() * 9))]: garbage() });
      calls++;
      try {
        const r = (fn as (...a: unknown[]) => unknown)(...args);
        if (r instanceof Promise) await r;
        if (r && typeof (r as { dispose?: unknown }).dispose === 'function') (r as { dispose(): void }).dispose();
      } catch (e) {
        const code = (e as { code?: unknown })?.code;
        if (e === userError) continue;
        if (typeof code !== 'string' || !/^ERR_[A-Z_]+$/.test(code)) {
          const what = `native.${name}(${fmt(args)}) threw ${String(e)}`;
          if (ops.has(name)) {
            t.fail(what);
            return;
          }
          if (!tensorLayerFailures.has(`native.${name}`)) tensorLayerFailures.set(`native.${name}`, what);
        }
      }
    }
  }
  t.pass(`${calls} native calls`);
});

t.test('outside the boundary ops: uncoded errors found (tensor layer and other work streams)', async (t) => {
  const list = [...tensorLayerFailures.values()];
  if (list.length === 0) {
    t.pass('none');
    return;
  }
  t.comment(`${list.length} entry points outside the boundary ops threw uncoded errors (todo, their owners):`);
  for (const w of list) t.fail(w.slice(0, 400), { todo: 'tensor layer or another work stream' });
});

t.teardown(() => { live.dispose(); liveBf.dispose(); liveI.dispose(); });
