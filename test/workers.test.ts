// megabeam inside worker threads: the addon is context-aware (per-environment handle class and
// completion channel, process-wide queue and allocators). Each scenario runs in a child process so
// that a crash (the old failure mode: segfault, V8 locking abort, terminate() abort) fails one test.
import t from 'tap';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { gpu } from './helpers/devices';

const script = path.join(__dirname, 'helpers', 'worker-scenarios.ts');
function scenario(name: string, device: string): { status: number | null; signal: string | null; out: string } {
  // The entry is a -e snippet that loads TypeScript through tsx's require hook (fast, and it works
  // whatever loader flags a test runner injects into child processes).
  const entry = `process.argv.splice(1, 0, ${JSON.stringify(script)}); require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(script)});`;
  const r = spawnSync(process.execPath, ['-e', entry, name, device], { encoding: 'utf8', timeout: 120_000, env: process.env });
  return { status: r.status, signal: r.signal, out: `${r.stdout}${r.stderr}` };
}

for (const device of ['cpu', 'cuda'] as const) {
  const opt = device === 'cuda' ? gpu : {};
  t.test(`a worker that used megabeam exits, then the main thread uses tensors (${device})`, opt, async (t) => {
    const r = scenario('worker-exit', device);
    t.equal(r.signal, null, `no crash: ${r.out}`);
    t.equal(r.status, 0, r.out);
    t.match(r.out, /^OK zeros 0$/m);
  });
  t.test(`main thread + 2 workers create and read tensors concurrently (${device})`, opt, async (t) => {
    const r = scenario('concurrent', device);
    t.equal(r.signal, null, `no abort: ${r.out}`);
    t.equal(r.status, 0, r.out);
    t.match(r.out, /^OK sums /m);
  });
  t.test(`worker.terminate() while a toArray() is pending (${device})`, opt, async (t) => {
    const r = scenario('terminate-pending', device);
    t.equal(r.signal, null, `no abort: ${r.out}`);
    t.equal(r.status, 0, r.out);
    t.match(r.out, /^OK after /m);
  });
}
