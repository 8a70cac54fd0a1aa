// The addon's test hooks are not part of the shipped surface: exported only when MEGABEAM_TEST_HOOKS=1
// is set as the addon initialises (tap sets it for the test run through package.json "tap"."test-env").
import t from 'tap';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { native } from '../lib/native';

const root = path.resolve(__dirname, '..');
const HOOKS = ['debugQueueError', 'debugQueueSleep', 'debugExternalMemory', 'debugAttentionNoTma'];

// The native exports a fresh process sees (main thread and a worker thread), with `env` as its environment.
function exportsIn(env: NodeJS.ProcessEnv): { main: string[]; worker: string[] } {
  const lib = JSON.stringify(path.join(root, 'lib', 'native'));
  // TypeScript through tsx's require hook, in the process and in the worker (loader flags do not reach workers)
  const tsx = `require(${JSON.stringify(require.resolve('tsx/cjs'))});`;
  const code = `${tsx}
    const { Worker } = require('worker_threads');
    const { native } = require(${lib});
    const main = Object.keys(native());
    const w = new Worker(${JSON.stringify(`${tsx} const { native } = require(${lib}); require('worker_threads').parentPort.postMessage(Object.keys(native()));`)},
      { eval: true });
    w.on('message', (worker) => { console.log(JSON.stringify({ main, worker })); w.terminate(); });
    w.on('error', (e) => { console.error(e); process.exit(2); });`;
  const r = spawnSync(process.execPath, ['-e', code], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

t.test('the test run has the hooks (tap sets MEGABEAM_TEST_HOOKS=1)', async (t) => {
  t.equal(process.env.MEGABEAM_TEST_HOOKS, '1');
  const n = native() as unknown as Record<string, unknown>;
  for (const h of HOOKS) t.type(n[h], 'function', `${h} is exported here`);
});

t.test('without MEGABEAM_TEST_HOOKS=1 the addon exports no test hooks', async (t) => {
  const base = { ...process.env };
  delete base.MEGABEAM_TEST_HOOKS;
  for (const [what, env] of [['unset', base], ['set to 0', { ...base, MEGABEAM_TEST_HOOKS: '0' }],
    ['set to true', { ...base, MEGABEAM_TEST_HOOKS: 'true' }]] as const) {
    const { main, worker } = exportsIn(env);
    for (const [where, names] of [['main thread', main], ['worker', worker]] as const) {
      t.ok(names.includes('empty') && names.includes('rope') && names.includes('queueInfo'), `${what}, ${where}: the public natives are there`);
      for (const h of HOOKS) t.notOk(names.includes(h), `${what}, ${where}: no ${h}`);
    }
  }
  const { main, worker } = exportsIn({ ...base, MEGABEAM_TEST_HOOKS: '1' });
  for (const h of HOOKS) t.ok(main.includes(h) && worker.includes(h), `set to 1: ${h} in the main thread and a worker`);
});
