// Throws random garbage at every exported function (and the raw native exports): each call must
// return or throw a MegabeamError with a code — never crash, hang or throw a bare TypeError.
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

const garbage = (): unknown => {
  const pool: unknown[] = [
    undefined, null, NaN, Infinity, -Infinity, -1, 0, 1, 1.5, 2 ** 60, -(2 ** 31), '', 'cpu', 'cuda', 'cuda:99', 'f16',
    'bf16', 'i32', 'nonsense', {}, [], [NaN], [-1], [1e20], [2, 3], [2 ** 40], [[1, 2], [3]], [1, 'a'], true, false,
    () => 0, 10n, Symbol('s'), new Float32Array(6), new Float64Array(3), new Int32Array(2), new Uint16Array(4),
    new Uint8Array(3), live, liveBf, liveI, dead, { device: 'cuda:3' }, { dtype: 'x' }, { shape: [-1] },
    { seed: -5 }, { causal: 'yes' }, { type: 'yarn', headDim: 7 }, { type: 'default', headDim: 8, base: 10000 },
    new Proxy({}, { get: () => { throw new Error('hostile getter'); } }),
  ];
  return pool[Math.floor(rnd() * pool.length)];
};

const fmt = (args: unknown[]): string =>
  args.map((a) => { try { return typeof a === 'symbol' ? a.toString() : String(a); } catch { return '<hostile object>'; } }).join(', ');

function acceptable(e: unknown): boolean {
  if (e instanceof mb.MegabeamError) return /^ERR_[A-Z_]+$/.test(e.code);
  return e instanceof Error && e.message === 'hostile getter';  // the user's own throw passes through
}

async function callSafely(fn: (...a: unknown[]) => unknown, args: unknown[]): Promise<unknown> {
  try {
    const r = fn(...args);
    if (r instanceof Promise) await r;
    if (r instanceof mb.Tensor) r.dispose();
    if (r && typeof r === 'object') {
      for (const v of Object.values(r)) if (v instanceof mb.Tensor) v.dispose();
    }
    return undefined;
  } catch (e) {
    return e;
  }
}

function collect(obj: Record<string, unknown>, prefix: string, out: [string, (...a: unknown[]) => unknown][]): void {
  for (const [k, v] of Object.entries(obj)) {
    if (k === 'Tensor' || /Error$/.test(k) || k === 'fromNative' || k === 'native') continue;
    if (typeof v === 'function') out.push([prefix + k, v as (...a: unknown[]) => unknown]);
    else if (v && typeof v === 'object' && !Array.isArray(v) && prefix.split('.').length < 3)
      collect(v as Record<string, unknown>, `${prefix}${k}.`, out);
  }
}

t.test('every exported function survives garbage', async (t) => {
  const fns: [string, (...a: unknown[]) => unknown][] = [];
  collect(mb as unknown as Record<string, unknown>, '', fns);
  t.ok(fns.length > 15, `${fns.length} exported functions`);
  let calls = 0;
  for (const [name, fn] of fns) {
    for (let i = 0; i < 60; i++) {
      const args = Array.from({ length: Math.floor(rnd() * 4) }, garbage);
      const e = await callSafely(fn, args);
      calls++;
      if (e !== undefined && !acceptable(e)) {
        t.fail(`${name}(${fmt(args)}) threw ${String(e)}`);
        return;
      }
    }
  }
  t.pass(`${calls} garbage calls, all returned or threw coded errors`);
});

t.test('Tensor methods survive garbage, live or disposed', async (t) => {
  const methods = ['toArray', 'toRaw', 'to', 'clone', 'reshape', 'fill_', 'dispose'] as const;
  let calls = 0;
  for (let i = 0; i < 300; i++) {
    const target = rnd() < 0.5 ? mb.randn([2, 3], { seed: i }) : dead;
    const m = methods[Math.floor(rnd() * methods.length)];
    const args = Array.from({ length: Math.floor(rnd() * 3) }, garbage);
    const e = await callSafely((...a) => (target[m] as (...x: unknown[]) => unknown)(...a), args);
    calls++;
    if (e !== undefined && !acceptable(e)) {
      t.fail(`tensor.${m}(${fmt(args)}) threw ${String(e)}`);
      return;
    }
    if (target !== dead) target.dispose();
  }
  t.pass(`${calls} method calls`);
});

t.test('raw native exports reject garbage with coded errors', async (t) => {
  const n = native();
  let calls = 0;
  for (const [name, fn] of Object.entries(n)) {
    if (typeof fn !== 'function' || name === 'TensorHandle') continue;
    for (let i = 0; i < 80; i++) {
      const args = Array.from({ length: Math.floor(rnd() * 7) }, () => {
        const g = garbage();
        return g instanceof mb.Tensor ? (g.disposed ? (g as unknown as { handle?: unknown }) : g.handle()) : g;
      });
      calls++;
      try {
        const r = (fn as (...a: unknown[]) => unknown)(...args);
        if (r instanceof Promise) await r.catch((e: unknown) => { throw e; });
        if (r && typeof (r as { dispose?: unknown }).dispose === 'function') (r as { dispose(): void }).dispose();
      } catch (e) {
        const code = (e as { code?: string }).code ?? '';
        if (!/^ERR_[A-Z_]+$/.test(code) && (e as Error).message !== 'hostile getter') {
          t.fail(`native.${name}(${fmt(args)}) threw ${String(e)}`);
          return;
        }
      }
    }
  }
  t.pass(`${calls} native calls`);
});

t.teardown(() => { live.dispose(); liveBf.dispose(); liveI.dispose(); });
