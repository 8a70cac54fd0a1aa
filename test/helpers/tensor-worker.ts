// Worker-thread body for test/workers.test.ts and test/stress.test.ts: uses megabeam from a worker.
// workerData: { mode, device, iterations }. Posts { done: true, sum } or { error } back.
import { parentPort, workerData } from 'worker_threads';
import * as mb from '../../lib/index';
import { native } from '../../lib/native';

const { mode, device = 'cpu', iterations = 50, size = 1000 } = (workerData ?? {}) as {
  mode: string; device?: 'cpu' | 'cuda'; iterations?: number; size?: number;
};

async function main(): Promise<void> {
  if (mode === 'load') {
    const x = mb.randn([16], { seed: 1, device });
    const v = await x.toArray();
    x.dispose();
    parentPort!.postMessage({ done: true, sum: Array.from(v).reduce((a, b) => a + b, 0) });
    return;
  }
  if (mode === 'loop') {
    let sum = 0;
    for (let i = 0; i < iterations; i++) {
      const a = mb.randn([size], { seed: i, device });
      const b = a.to('bf16');
      const c = mb.tensor(new Float32Array(size).fill(i), { device, dtype: 'bf16' });
      const [av, cv] = await Promise.all([a.toArray(), c.toArray()]);
      if (cv[0] !== i || cv[size - 1] !== i) throw new Error(`bad read: ${cv[0]} != ${i}`);
      sum += av[0];
      for (const t of [a, b, c]) t.dispose();
    }
    parentPort!.postMessage({ done: true, sum });
    return;
  }
  if (mode === 'pending-read') {
    // Queue a long task, then a read behind it; the parent terminates us while it is pending.
    const x = mb.randn([size], { seed: 2, device });
    native().debugQueueSleep(300);
    const p = x.toArray();
    parentPort!.postMessage({ pending: true });
    await p;
    parentPort!.postMessage({ done: true, sum: 0 });
    return;
  }
  if (mode === 'huge-read') {
    // toArray of a tensor bigger than this worker's heap limit: resolves or rejects ERR_OOM, never aborts.
    const x = mb.empty([size], { device });
    x.fill_(1);
    try {
      const v = await x.toArray();
      parentPort!.postMessage({ done: true, sum: v.length });
    } catch (e) {
      parentPort!.postMessage({ error: (e as mb.MegabeamError).code ?? String(e) });
    }
    x.dispose();
    return;
  }
  throw new Error(`unknown mode ${mode}`);
}

main().catch((e) => parentPort!.postMessage({ error: String((e as Error)?.stack ?? e) }));
