// Scenarios for test/workers.test.ts, each run in its own child process (a crash there fails one
// test instead of the whole file): node <loader flags> worker-scenarios.ts <scenario> <device>.
// Prints "OK <details>" and exits 0 on success.
import { Worker } from 'worker_threads';
import * as path from 'path';
import * as mb from '../../lib/index';

const [scenario, device = 'cpu'] = process.argv.slice(2) as [string, 'cpu' | 'cuda'];
const workerFile = path.join(__dirname, 'tensor-worker.ts');
// Workers load TypeScript through tsx's require hook (fast; loader flags do not reach workers).
const workerCode = `require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(workerFile)});`;

function start(mode: string, extra: Record<string, unknown> = {}): { w: Worker; result: Promise<{ done?: boolean; error?: string; sum?: number }>; exit: Promise<number> } {
  const w = new Worker(workerCode, { eval: true, workerData: { mode, device, ...extra }, ...(extra.resourceLimits ? { resourceLimits: extra.resourceLimits as object } : {}) });
  const result = new Promise<{ done?: boolean; error?: string; sum?: number }>((res, rej) => {
    w.on('message', (m) => { if (m.done || m.error) res(m); });
    w.on('error', rej);
    w.on('exit', (c) => res({ error: `exited with ${c}` }));
  });
  // Listened for from the start: a worker can post its result and exit before the awaiting code runs again,
  // and a listener added after 'exit' waits forever (the process then ends with nothing printed).
  const exit = new Promise<number>((res) => w.on('exit', res));
  return { w, result, exit };
}

async function mainLoop(n: number): Promise<number> {
  let s = 0;
  for (let i = 0; i < n; i++) {
    const a = mb.randn([1000], { seed: i, device });
    const b = mb.tensor(new Float32Array(1000).fill(i), { device, dtype: 'bf16' });
    const [av, bv] = await Promise.all([a.toArray(), b.toArray()]);
    if (bv[999] !== i) throw new Error('bad data on the main thread');
    s += av[0];
    a.dispose(); b.dispose();
  }
  return s;
}

async function main(): Promise<string> {
  if (scenario === 'worker-exit') {
    // The native class of the main thread must survive a worker that loaded the addon and left
    // (the main thread loads it first: a worker's load used to overwrite the one global class).
    mb.zeros([1], { device }).dispose();
    for (let k = 0; k < 2; k++) {
      const { result, exit } = start('load');
      const r = await result;
      if (!r.done) throw new Error(`worker: ${r.error}`);
      await exit;
    }
    const z = mb.zeros([1], { device });
    const v = await z.toArray();
    const x = mb.randn([8], { seed: 1, device }).reshape([2, 4]);
    await x.toArray();
    return `zeros ${v[0]}`;
  }
  if (scenario === 'concurrent') {
    const a = start('loop', { iterations: 40 }), b = start('loop', { iterations: 40 });
    const [ra, rb, m] = await Promise.all([a.result, b.result, mainLoop(40)]);
    if (!ra.done || !rb.done) throw new Error(`workers: ${ra.error} ${rb.error}`);
    if (ra.sum !== rb.sum) throw new Error('the two workers disagree');
    return `sums ${ra.sum} ${m}`;
  }
  if (scenario === 'terminate-pending') {
    for (let k = 0; k < 3; k++) {
      const w = new Worker(workerCode, { eval: true, workerData: { mode: 'pending-read', device, size: 1 << 20 } });
      await new Promise<void>((res, rej) => { w.on('message', (m) => { if (m.pending) res(); }); w.on('error', rej); });
      await w.terminate();
    }
    return `after ${await mainLoop(3)}`;
  }
  throw new Error(`unknown scenario ${scenario}`);
}

// A scenario that awaits something nothing will ever settle lets the event loop empty: say so and fail,
// instead of exiting 0 with nothing printed.
let settled = false;
process.on('beforeExit', () => {
  if (!settled) { settled = true; console.log(`FAIL ${scenario}: the event loop emptied before the scenario finished`); process.exitCode = 1; }
});
main().then((s) => { settled = true; console.log(`OK ${s}`); }, (e) => { settled = true; console.log(`FAIL ${(e as Error)?.stack ?? e}`); process.exitCode = 1; });
