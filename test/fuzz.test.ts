// Throws random garbage at every exported entry point (functions, class constructors with `new`, static
// and prototype methods, on real and on fake receivers) and at every raw native export: each call must
// return or throw a MegabeamError with a code — never crash, hang or throw a bare TypeError/RangeError.
// The only error allowed through unchanged is the caller's own: a getter of a hostile object that throws
// (checked by identity, not by message). There is no allow-list: every finding fails.
//
// The seed is fixed (FUZZ_SEED, default 1) so a run is reproducible; CI may run other seeds:
//   FUZZ_SEED=7 npx tap test/fuzz.test.ts
import t, { Test } from 'tap';
import * as mb from '../lib/index';
import { native } from '../lib/native';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { mulberry32 } from './helpers/rng';
import { throwsCode, rejectsCode } from './helpers/assert';

const seed = Number(process.env.FUZZ_SEED ?? 1) >>> 0;
t.comment(`FUZZ_SEED=${seed}`);
// Entry points that write files (tokens.write, safetensors.save, ...) take garbage paths too: run in a
// scratch directory so whatever they accept lands there.
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'megabeam-fuzz-'));
const home = process.cwd();
process.chdir(scratch);
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

// A call that neither returns nor settles within this long is a hang (a finding like any other).
const HANG_MS = 5000;
class Hang extends Error {}
async function settle(p: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Hang(`did not settle in ${HANG_MS} ms`)), HANG_MS); });
  try {
    await Promise.race([p, hang]);
  } finally {
    clearTimeout(timer);
  }
}

const disposeResult = (r: unknown, args: unknown[]): void => {
  // dispose what the call made, never an argument (in place, an op returns its input)
  const given = (x: unknown): boolean => args.includes(x) || ([live, liveBf, liveI] as unknown[]).includes(x);
  if (r instanceof mb.Tensor && !given(r)) r.dispose();
  else if (r && typeof r === 'object' && !(r instanceof mb.Tensor)) {
    for (const v of Object.values(r)) if (v instanceof mb.Tensor && !given(v)) v.dispose();
    const d = (r as { dispose?: unknown; destroy?: unknown });
    if (typeof d.destroy === 'function') {
      try {
        const p = (d.destroy as () => unknown).call(r);  // a group: best effort
        if (p instanceof Promise) p.catch(() => {});
      } catch { /* best effort */ }
    }
    if (r instanceof mb.TokenFile || r instanceof mb.AdamW) r instanceof mb.TokenFile ? r.close() : r.dispose();
  }
};

async function callSafely(fn: (...a: unknown[]) => unknown, args: unknown[]): Promise<unknown> {
  try {
    let r = fn(...args);
    if (r instanceof Promise) {
      await settle(r);
      r = await r;
    }
    disposeResult(r, args);
    return undefined;
  } catch (e) {
    return e;
  }
}

const describeError = (e: unknown): string => {
  try {
    return e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e);
  } catch {
    return '<unprintable error>';
  }
};

const isClass = (v: unknown): v is new (...a: unknown[]) => unknown =>
  typeof v === 'function' && /^class\b/.test(Function.prototype.toString.call(v));

type Entry = [string, (...a: unknown[]) => unknown];
// Every callable reachable from the package: functions, classes (constructed with `new`), their static
// methods, nested namespaces. Error classes are not operations (constructing an error is the caller's
// business) and are left out.
function collect(obj: Record<string, unknown>, prefix: string, out: Entry[], classes: [string, Function][]): void {
  for (const [k, v] of Object.entries(obj)) {
    if (isClass(v)) {
      if (/Error$/.test(k)) continue;
      classes.push([prefix + k, v]);
      out.push([`new ${prefix}${k}`, (...a) => new v(...a)]);
      for (const s of Object.getOwnPropertyNames(v)) {
        const f = (v as unknown as Record<string, unknown>)[s];
        if (typeof f === 'function' && !['length', 'name', 'prototype'].includes(s))
          out.push([`${prefix}${k}.${s}`, (...a) => (f as (...x: unknown[]) => unknown).apply(v, a)]);
      }
    } else if (typeof v === 'function') out.push([prefix + k, v as (...a: unknown[]) => unknown]);
    else if (v && typeof v === 'object' && !Array.isArray(v) && prefix.split('.').length < 4)
      collect(v as Record<string, unknown>, `${prefix}${k}.`, out, classes);
  }
}
const entries: Entry[] = [];
const classes: [string, Function][] = [];
collect(mb as unknown as Record<string, unknown>, '', entries, classes);

// Every finding fails; the first few per entry point are printed (a broken check repeats itself).
const failures: string[] = [];
const perEntry = new Map<string, number>();
function report(t: Test, entry: string, line: string): void {
  failures.push(line);
  const n = (perEntry.get(entry) ?? 0) + 1;
  perEntry.set(entry, n);
  if (n <= 2) t.fail(line.slice(0, 400));
}
function check(t: Test, what: () => string, e: unknown): void {
  if (e === undefined || acceptable(e)) return;
  const w = what();
  report(t, w.replace(/\(.*$/s, ''), `${w} threw ${describeError(e)}`);
}

t.test('the public surface is an explicit list', async (t) => {
  const names = Object.keys(mb);
  for (const internal of ['native', 'callNative', 'fromNative', 'arg', 'sameDevice', 'checkShape', 'deviceIndex'])
    t.notOk(names.includes(internal), `${internal} is not exported`);
  t.ok(names.includes('MegabeamError') && names.includes('rope') && names.includes('attention'), 'the API is');
});

t.test('every exported entry point survives garbage with coded errors', async (t) => {
  t.ok(entries.length > 100, `${entries.length} exported entry points`);
  for (const c of ['new AdamW', 'new Sampler', 'new TokenFile', 'new Tensor', 'Tensor.isTensor', 'new dist.TcpGroup'])
    t.ok(entries.some(([n]) => n === c), `${c} is fuzzed`);
  let calls = 0;
  for (const [name, fn] of entries) {
    for (let i = 0; i < 100; i++) {
      const args = Array.from({ length: Math.floor(rnd() * 5) }, garbage);
      const e = await callSafely(fn, args);
      calls++;
      check(t, () => `${name}(${fmt(args)})`, e);
    }
  }
  t.pass(`${calls} garbage calls`);
});

// The ops with garbage in each argument position while the others are valid, so the checks past the
// first argument are reached too.
t.test('ops: one garbage argument among valid ones', async (t) => {
  const q = mb.randn([1, 4, 2, 8], { seed: 4 }), k = mb.randn([1, 4, 1, 8], { seed: 5 }), v = mb.randn([1, 4, 1, 8], { seed: 6 });
  const { out, lse } = mb.attention.forward(q, k, v);
  const pos = mb.tensor(new Int32Array([5, 1, 9, -3]), { shape: [1, 4], dtype: 'i32' });
  const valid: [string, (...a: unknown[]) => unknown, unknown[]][] = [
    ['rope.apply', mb.rope.apply as (...a: unknown[]) => unknown, [q, { base: 1e4 }]],
    ['rope.backward', mb.rope.backward as (...a: unknown[]) => unknown, [q, { invFreq: [1, 0.1, 0.01, 0.001] }]],
    ['rope.applyQK', mb.rope.applyQK as (...a: unknown[]) => unknown, [q, k, { base: 1e4, positionOffset: 3 }]],
    ['rope.backwardQK', mb.rope.backwardQK as (...a: unknown[]) => unknown, [q, k, { base: 1e4 }]],
    ['attention.forward', mb.attention.forward as (...a: unknown[]) => unknown, [q, k, v, { causal: true }]],
    ['attention.backward', mb.attention.backward as (...a: unknown[]) => unknown, [q, q, k, v, out, lse, { causal: false }]],
    ['attention.forward (rope)', mb.attention.forward as (...a: unknown[]) => unknown, [q, k, v, { causal: true, qOffset: 2, rope: { base: 1e4 } }]],
    ['attention.backward (rope)', mb.attention.backward as (...a: unknown[]) => unknown,
      [q, q, k, v, out, lse, { causal: true, rope: { base: 1e4, qPositions: pos, kPositions: pos } }]],
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
          'inplace', 'causal', 'scale', 'qOffset', 'kOffset', 'kernel', 'alpha', 'beta', 'out', 'dtype', 'rope',
          'qPositions', 'kPositions'];
        const key = keys[Math.floor(rnd() * keys.length)];
        const o = last as Record<string, unknown>;
        // attention's rope option: garbage inside it half of the time
        if (o.rope && typeof o.rope === 'object' && rnd() < 0.5) a[a.length - 1] = { ...o, rope: { ...(o.rope as object), [key]: garbage() } };
        else a[a.length - 1] = { ...o, [key]: garbage() };
      }
      const e = await callSafely(fn, a);
      calls++;
      check(t, () => `${name}(${fmt(a)})`, e);
    }
  }
  t.pass(`${calls} calls with one bad argument`);
  for (const x of [q, k, v, out, lse, pos]) x.dispose();
});

// Prototype members (methods and getters) of a class, by name.
const members = (C: Function): [string, PropertyDescriptor][] =>
  Object.getOwnPropertyNames(C.prototype).filter((m) => m !== 'constructor')
    .map((m) => [m, Object.getOwnPropertyDescriptor(C.prototype, m)!]);
const invoke = (d: PropertyDescriptor, self: unknown, args: unknown[]): unknown =>
  d.get ? d.get.call(self) : (d.value as (...x: unknown[]) => unknown).apply(self, args);

t.test('Tensor methods survive garbage, live or disposed', async (t) => {
  const methods = members(mb.Tensor);
  let calls = 0;
  for (let i = 0; i < 400; i++) {
    const target = rnd() < 0.5 ? mb.randn([2, 3], { seed: i }) : dead;
    const [m, d] = methods[Math.floor(rnd() * methods.length)];
    const args = Array.from({ length: Math.floor(rnd() * 3) }, garbage);
    const e = await callSafely((...a) => invoke(d, target, a), args);
    calls++;
    check(t, () => `tensor.${m}(${fmt(args)})`, e);
    if (target !== dead) target.dispose();
  }
  t.pass(`${calls} method calls`);
});

// Every class's methods and getters called on objects that only claim to be instances (a bare
// prototype object, a look-alike with plausible fields, garbage), with garbage arguments.
t.test('class members on fake receivers', async (t) => {
  let calls = 0;
  for (const [cname, C] of classes) {
    const fakes: unknown[] = [Object.create(C.prototype), ...fakeTensors(), {}, null, undefined, 1, 'x'];
    for (const [m, d] of members(C)) {
      for (const fake of fakes) {
        const args = Array.from({ length: Math.floor(rnd() * 4) }, garbage);
        const e = await callSafely((...a) => invoke(d, fake, a), args);
        calls++;
        check(t, () => `${cname}.prototype.${m}(${fmt(args)}) on ${fmt([fake])}`, e);
      }
    }
  }
  t.pass(`${calls} calls on fake receivers`);
});

// Real instances of the classes a user constructs, with garbage arguments to every method.
t.test('methods of real instances survive garbage', async (t) => {
  const file = path.join(scratch, 'fuzz.tokens');
  mb.tokens.write(file, Array.from({ length: 300 }, (_, i) => (i * 7) % 50));
  const opened: mb.TokenFile[] = [];
  const makers: [string, Function, () => unknown][] = [
    ['TokenFile', mb.TokenFile, () => mb.tokens.open(file)],
    ['Sampler', mb.Sampler, () => {
      const f = mb.tokens.open(file);
      opened.push(f);
      return new mb.Sampler(f, { seqLen: 8, seed: 3 });
    }],
    ['AdamW', mb.AdamW, () => {
      const param = mb.randn([4], { seed: 9 }), grad = mb.randn([4], { seed: 10 });
      return new mb.AdamW([{ name: 'w', param, grad }], { lr: 1e-3 });
    }],
  ];
  let calls = 0;
  for (const [cname, C, make] of makers) {
    for (const [m, d] of members(C)) {
      for (let i = 0; i < 25; i++) {
        const self = make();
        const args = Array.from({ length: Math.floor(rnd() * 4) }, garbage);
        const e = await callSafely((...a) => invoke(d, self, a), args);
        calls++;
        check(t, () => `${cname}#${m}(${fmt(args)})`, e);
        try {
          if (self instanceof mb.TokenFile) self.close();
          if (self instanceof mb.AdamW) self.dispose();
        } catch { /* already closed by the call */ }
      }
    }
  }
  // a process group of one (its collectives complete at once; with more ranks a lone call would wait)
  for (let i = 0; i < 200; i++) {
    const [g] = mb.dist.localGroups(1, { timeoutMs: 2000 });
    // the Group contract (lib/dist/types.ts); the class's other methods are TypeScript-private helpers
    const names = ['batchSendRecv', 'send', 'recv', 'allReduce', 'allGather', 'reduceScatter', 'broadcast', 'barrier', 'join', 'abort', 'destroy']
      .filter((m) => typeof (g as unknown as Record<string, unknown>)[m] === 'function');
    const m = names[Math.floor(rnd() * names.length)];
    const args = Array.from({ length: Math.floor(rnd() * 4) }, garbage);
    const e = await callSafely((...a) => ((g as unknown as Record<string, (...x: unknown[]) => unknown>)[m])(...a), args);
    calls++;
    check(t, () => `localGroup#${m}(${fmt(args)})`, e);
    try { await g.destroy(); } catch { /* destroyed or failed by the call */ }
  }
  for (const f of opened) f.close();
  t.pass(`${calls} method calls`);
});

t.test('raw native exports reject garbage with coded errors', async (t) => {
  const n = native() as unknown as Record<string, unknown>;
  let calls = 0;
  const ops = new Set(['rope', 'attentionForward', 'attentionBackward', 'attentionCudaCheck', 'axpby']);
  for (const [name, fn] of Object.entries(n)) {
    if (typeof fn !== 'function') continue;
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
      let e: unknown;
      try {
        // TensorHandle is a class: constructed, not called
        const r = name === 'TensorHandle' ? new (fn as new (...a: unknown[]) => unknown)(...args) : (fn as (...a: unknown[]) => unknown)(...args);
        if (r instanceof Promise) await settle(r);
        if (r && typeof (r as { dispose?: unknown }).dispose === 'function') (r as { dispose(): void }).dispose();
      } catch (err) {
        e = err;
      }
      if (e === undefined || e === userError) continue;
      const code = (e as { code?: unknown })?.code;
      if (typeof code !== 'string' || !/^ERR_[A-Z_]+$/.test(code)) {
        report(t, `native.${name}`, `native.${name}(${fmt(args)}) threw ${describeError(e)}`);
      }
    }
  }
  t.pass(`${calls} native calls`);
});

// Findings of earlier fuzz runs, replayed exactly (each threw a bare TypeError/Error before its fix).
t.test('earlier findings stay fixed', async (t) => {
  const nullProto = Object.create(null);
  const anyFn = <F>(f: F) => f as unknown as (...a: unknown[]) => unknown;
  throwsCode(t, () => anyFn(mb.schedules.warmupCosine)(), 'ERR_ARG', 'schedules.warmupCosine()');
  throwsCode(t, () => anyFn(mb.schedules.warmupLinear)(null), 'ERR_ARG', 'schedules.warmupLinear(null)');
  throwsCode(t, () => anyFn(mb.schedules.constant)(Symbol('lr')), 'ERR_ARG', 'schedules.constant(Symbol)');
  throwsCode(t, () => anyFn(mb.tokens.loadTokenizer)(true), 'ERR_ARG', 'tokens.loadTokenizer(true)');
  throwsCode(t, () => anyFn(mb.tokens.loadTokenizer)({}), 'ERR_ARG', "the tokenizer package's own Error becomes ERR_ARG");
  throwsCode(t, () => anyFn(mb.tokens.loadTokenizer)('no/such/tokenizer.json'), 'ERR_ARG', 'tokens.loadTokenizer(missing file)');
  throwsCode(t, () => anyFn(mb.tokens.write)('x.tokens', 'f16'), 'ERR_ARG', 'tokens.write(path, string)');
  throwsCode(t, () => anyFn(mb.dist.localGroups)(nullProto), 'ERR_ARG', 'dist.localGroups(null-prototype object)');
  throwsCode(t, () => anyFn(mb.dist.localGroups)(2, { device: Symbol('d') }), ['ERR_ARG', 'ERR_DEVICE'], 'dist.localGroups(2, { device: Symbol })');
  throwsCode(t, () => anyFn(mb.dist.localGroups)(fakeTensors()[0], 'cpu'), 'ERR_ARG', 'dist.localGroups(fake tensor)');
  throwsCode(t, () => anyFn(mb.dist.readDistEnv)(null), 'ERR_ARG', 'dist.readDistEnv(null)');
  throwsCode(t, () => anyFn(mb.ring.chunks)(nullProto, 0, 1), 'ERR_ARG', 'ring.chunks(null-prototype object)');
  throwsCode(t, () => anyFn(mb.ring.chunks)(8, deep(20000), 1), 'ERR_ARG', 'ring.chunks(8, deeply nested array)');
  throwsCode(t, () => anyFn(mb.ring.positions)(8, 0, 1, 'zigzag', null), 'ERR_ARG', 'ring.positions(..., null)');
  throwsCode(t, () => anyFn(mb.ring.chooseAlgorithm)(), 'ERR_ARG', 'ring.chooseAlgorithm()');
  throwsCode(t, () => anyFn(mb.model.shardBatch)({ ids: [[1, 2]], labels: [[1, 2]] }, 0, 1, null), 'ERR_ARG', 'model.shardBatch(..., null)');
  const q = mb.randn([1, 4, 2, 8], { seed: 11 });
  await rejectsCode(t, () => anyFn(mb.model.attend.forwardAsync)(q, q, q, null) as Promise<unknown>, 'ERR_ARG', 'model.attend.forwardAsync(..., null)');
  q.dispose();
  const fake = Object.create(mb.Tensor.prototype);
  throwsCode(t, () => fake.dispose(), 'ERR_ARG', 'Tensor.prototype.dispose on a fake tensor');
  throwsCode(t, () => String(fake), 'ERR_ARG', 'Tensor.prototype.toString on a fake tensor');
  throwsCode(t, () => fake.numel, 'ERR_ARG', 'a Tensor getter on a fake tensor');
  await rejectsCode(t, () => fake.toArray(), 'ERR_ARG', 'Tensor.prototype.toArray on a fake tensor rejects');
  t.ok(live.handle(Symbol('what') as unknown as string), 'Tensor.handle ignores a garbage label');
  throwsCode(t, () => new (mb.Tensor as unknown as new (...a: unknown[]) => unknown)(), 'ERR_ARG', 'new Tensor()');
  await rejectsCode(t, () => Object.create(mb.AdamW.prototype).step(null), 'ERR_ARG', 'AdamW.prototype.step on a fake');
  await rejectsCode(t, () => anyFn(mb.dist.TcpGroup.connect)() as Promise<unknown>, 'ERR_ARG', 'dist.TcpGroup.connect()');
  const p = mb.randn([2], { seed: 1 }), g = mb.randn([2], { seed: 2 });
  const opt = new mb.AdamW([{ name: 'w', param: p, grad: g }], { lr: 1e-3 });
  await rejectsCode(t, () => opt.step(null as unknown as {}), 'ERR_ARG', 'AdamW#step(null)');
  opt.dispose(); p.dispose(); g.dispose();
});

t.test('no uncoded error anywhere', async (t) => {
  for (const x of [live, liveBf, liveI]) t.notOk(x.disposed, `${x} was not disposed by any call it was passed to`);
  t.equal(failures.length, 0, failures.length ? `${failures.length} uncoded errors in ${perEntry.size} entry points (reported above)` : 'none');
});

t.teardown(() => {
  live.dispose(); liveBf.dispose(); liveI.dispose();
  process.chdir(home);
  fs.rmSync(scratch, { recursive: true, force: true });
});
