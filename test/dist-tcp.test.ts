// Process groups: the TCP backend across processes started by `megabeam launch` (CPU, runs in CI), the
// launcher's failure handling, environment rendezvous, NCCL error paths without NCCL, and (with a GPU) NCCL
// 1-rank groups. The multi-process jobs run test/dist/worker.ts, which checks every collective against
// float64 references itself and prints "RESULT <case> ok".
import t, { Test } from 'tap';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readDistEnv, firstSlurmHost } from '../lib/dist/rendezvous';
import { group, init, ncclInfo, TcpGroup } from '../lib/dist/init';
import { tensor } from '../lib/tensor';
import { MegabeamError } from '../lib/errors';
import { gpu, gpu2 } from './helpers/devices';
import { mulberry32, randomNormal, testSeed } from './helpers/rng';
import { Run, cliEntry, root, runTs } from './helpers/spawn-ts';

const worker = path.join(__dirname, 'dist', 'worker.ts');

const run = (args: string[], env: Record<string, string> = {}, timeoutMs = 60000): Promise<Run> => runTs(args, { env, timeoutMs });
const launch = (nproc: number, which: string, extra: string[] = [], env: Record<string, string> = {}): Promise<Run> =>
  run([cliEntry, 'launch', '--nproc', String(nproc), ...extra, worker, which, String(testSeed())], env);

async function rejectsOneOf(t: Test, p: Promise<unknown>, codes: string[], message: RegExp): Promise<void> {
  try {
    await p;
    t.fail(`expected a rejection with ${codes.join('|')}`);
  } catch (e) {
    t.ok(e instanceof MegabeamError && codes.includes(e.code) && message.test(e.message), `rejects ${codes.join('|')}: ${(e as Error).message}`);
  }
}

const seed = testSeed();
t.comment(`seed ${seed} (TEST_SEED to replay)`);

for (const W of [2, 4]) {
  t.test(`tcp: every collective across ${W} launched processes (f32, bf16)`, async (t) => {
    const r = await launch(W, 'collectives');
    t.equal(r.code, 0, `launcher exit code (stderr: ${r.err.slice(-2000)})`);
    for (let k = 0; k < W; k++) t.match(r.out, `[rank ${k}] RESULT collectives ok`, `rank ${k} checked its results`);
  });
}

t.test('tcp: one rank killed mid-job: the others fail with ERR_COMM naming it, the launcher says who died', async (t) => {
  const r = await launch(3, 'killed', [], { TEST_TIMEOUT_MS: '15000' });
  t.not(r.code, 0, 'launcher exits non-zero');
  t.match(r.err, /rank 2 was killed by SIGKILL/, 'launcher names the dead rank and the signal');
  t.match(r.err, /rank 2 died first \(signal SIGKILL\)/);
  for (const k of [0, 1]) {
    const line = r.out.split('\n').find((l) => l.startsWith(`[rank ${k}] CAUGHT`)) ?? '';
    t.match(line, /CAUGHT ERR_COMM after \d+ ms: .*rank 2 died/, `rank ${k} got ERR_COMM naming rank 2: ${line}`);
    const ms = Number(/after (\d+) ms/.exec(line)?.[1]);
    t.ok(ms < 15000, `rank ${k} noticed within the timeout (${ms} ms)`);
  }
  t.ok(r.ms < 30000, `whole job ended in ${r.ms} ms`);
});

t.test('tcp: mismatched calls -> ERR_COMM naming both ops on every rank', async (t) => {
  const r = await launch(3, 'mismatch');
  t.equal(r.code, 0, r.err.slice(-2000));
  for (let k = 0; k < 3; k++) t.match(r.out, `[rank ${k}] RESULT mismatch ok`);
  for (let k = 0; k < 3; k++)
    t.match(r.out, new RegExp(`\\[rank ${k}\\] CAUGHT ERR_COMM: (rank \\d aborted the group: ERR_COMM: )*mismatched calls: call #1 is (barrier|allReduce) on rank \\d but (barrier|allReduce) on rank \\d`));
});

t.test('tcp: verify (the NCCL backend\'s call cross-check) names both descriptions', async (t) => {
  const r = await launch(3, 'verify');
  t.equal(r.code, 0, r.err.slice(-2000));
  for (let k = 0; k < 3; k++) t.match(r.out, `[rank ${k}] RESULT verify ok`);
  // Each rank reports the mismatch it saw, or the abort of the rank that saw it first.
  for (let k = 0; k < 3; k++)
    t.match(r.out, new RegExp(`\\[rank ${k}\\] CAUGHT ERR_COMM: (rank \\d aborted the group: ERR_COMM: )*mismatched calls: call #2 is allReduce out (bf16|f32)\\[4\\] op sum on rank \\d but allReduce out (bf16|f32)\\[4\\] op sum on rank \\d`));
});

t.test('tcp: a rank that does not make the call -> ERR_TIMEOUT naming the op and the rank waited for', async (t) => {
  const r = await launch(2, 'timeout');
  t.equal(r.code, 0, r.err.slice(-2000));
  t.match(r.out, /\[rank 0\] CAUGHT ERR_TIMEOUT: allReduce #1 timed out after 1000 ms on rank 0 of 2, waiting for rank\(s\) 1/);
});

t.test('launch: a failing rank ends the job with its exit code; usage errors', async (t) => {
  const bad = await run([cliEntry, 'launch', '--nproc', '0', worker]);
  t.equal(bad.code, 2);
  t.match(bad.err, /ERR_ARG: --nproc must be ≥ 1/);
  const multi = await run([cliEntry, 'launch', '--nnodes', '2', worker]);
  t.equal(multi.code, 2);
  t.match(multi.err, /--master host:port is required/);
  const fails = await run([cliEntry, 'launch', '--nproc', '2', '--grace-ms', '300', path.join(__dirname, 'dist', 'exit-worker.ts')]);
  t.equal(fails.code, 7, 'exit code of the failed rank');
  t.match(fails.err, /rank 1 exited with code 7/);
  t.match(fails.out, /\[rank 0\] waiting/, 'output is prefixed per rank');
  t.match(fails.err, /ranks not ending cleanly: 0 \(signal SIGTERM\), 1 \(exit code 7\)/, 'the survivor was ended after the grace period');
});

t.test('launch: SIGTERM to the launcher reaches every rank', async (t) => {
  const cp = spawn(process.execPath, ['--import', 'tsx', cliEntry, 'launch', '--nproc', '2', path.join(__dirname, 'dist', 'exit-worker.ts'), 'sleep'],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  cp.stdout.on('data', (d) => {
    out += d;
    if ((out.match(/sleeping/g) ?? []).length === 2) cp.kill('SIGTERM');
  });
  cp.stderr.on('data', (d) => (err += d));
  const code = await new Promise<number | null>((r) => cp.on('exit', (c) => r(c)));
  t.not(code, 0);
  t.match(out, '[rank 0] got SIGTERM');
  t.match(out, '[rank 1] got SIGTERM');
  t.match(err, /SIGTERM, forwarding to the ranks/);
});

t.test('launch: two "nodes" on this host (--nnodes 2 --node-rank 0/1 --master) form one job', async (t) => {
  const port = String(20000 + Math.floor(Math.random() * 20000));
  const node = (r: number): Promise<Run> =>
    run([cliEntry, 'launch', '--nproc', '2', '--nnodes', '2', '--node-rank', String(r), '--master', `127.0.0.1:${port}`, worker, 'collectives', String(seed)]);
  const [a, b] = await Promise.all([node(0), node(1)]);
  t.equal(a.code, 0, a.err.slice(-2000));
  t.equal(b.code, 0, b.err.slice(-2000));
  t.match(a.out, '[rank 1] RESULT collectives ok');
  t.match(b.out, '[rank 3] RESULT collectives ok', 'node 1 runs global ranks 2 and 3');
});

t.test('rendezvous: launcher, torchrun, Slurm and Open MPI variables', async (t) => {
  t.same(readDistEnv({}), { rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1, masterAddr: '127.0.0.1', masterPort: 0, source: 'none' });
  t.match(readDistEnv({ RANK: '3', WORLD_SIZE: '8', LOCAL_RANK: '1', MASTER_ADDR: 'h0', MASTER_PORT: '1234' }),
    { rank: 3, worldSize: 8, localRank: 1, masterAddr: 'h0', masterPort: 1234, source: 'torchrun' });
  t.match(readDistEnv({ MEGABEAM_RANK: '1', MEGABEAM_WORLD_SIZE: '2', MEGABEAM_MASTER_PORT: '99', RANK: '5', WORLD_SIZE: '9' }),
    { rank: 1, worldSize: 2, masterPort: 99, source: 'megabeam' });
  t.match(readDistEnv({ SLURM_PROCID: '5', SLURM_NTASKS: '16', SLURM_LOCALID: '1', SLURM_STEP_NODELIST: 'gpu[07-08,11],cpu1', SLURM_JOB_ID: '123' }),
    { rank: 5, worldSize: 16, localRank: 1, masterAddr: 'gpu07', masterPort: 20123, source: 'slurm' });
  t.match(readDistEnv({ OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_LOCAL_RANK: '2', OMPI_COMM_WORLD_LOCAL_SIZE: '4' }),
    { rank: 2, worldSize: 4, localRank: 2, masterAddr: '127.0.0.1', source: 'openmpi' });
  t.throws(() => readDistEnv({ OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_SIZE: '8', OMPI_COMM_WORLD_LOCAL_SIZE: '4' }), /MASTER_ADDR/);
  t.throws(() => readDistEnv({ RANK: '4', WORLD_SIZE: '4' }), /rank 4 is not below/);
  t.equal(firstSlurmHost('node1'), 'node1');
  t.equal(firstSlurmHost('a[3-5]'), 'a3');
});

t.test('tcp: world of one (no sockets): every call works locally', async (t) => {
  const g = await init({ backend: 'tcp', device: 'cpu', rank: 0, worldSize: 1, masterPort: 0 });
  t.equal(g.worldSize, 1);
  const x = randomNormal(6, mulberry32(seed));
  const a = tensor(x);
  await g.allReduce(a);
  t.same(Array.from(await a.toArray()), Array.from(Float32Array.from(x)));
  const out = tensor(new Float32Array(6)).fill_(NaN);
  await g.allGather(out, a);
  t.same(Array.from(await out.toArray()), Array.from(Float32Array.from(x)));
  await g.reduceScatter(out, a, { op: 'avg' });
  t.same(Array.from(await out.toArray()), Array.from(Float32Array.from(x)));
  const b = tensor(new Float32Array(6)).fill_(NaN);
  await g.batchSendRecv([{ op: 'send', tensor: a, peer: 0 }, { op: 'recv', tensor: b, peer: 0 }]);
  t.same(Array.from(await b.toArray()), Array.from(Float32Array.from(x)));
  await g.broadcast(a, 0);
  await g.barrier();
  await t.rejects(g.allReduce(a, { timeoutMs: -1 }), { code: 'ERR_ARG' });
  await t.rejects(g.send(a, 1), { code: 'ERR_ARG' });
  g.abort('test');
  await t.rejects(g.barrier(), { code: 'ERR_COMM' });
  await g.destroy();
});

t.test('tcp: rendezvous refuses a process of another job (MEGABEAM_JOB_ID) and goes on', async (t) => {
  const saved = process.env.MEGABEAM_JOB_ID;
  const port = 20000 + Math.floor(Math.random() * 20000);
  const opts = { worldSize: 2, masterAddr: '127.0.0.1', masterPort: port, timeoutMs: 10000 };
  try {
    process.env.MEGABEAM_JOB_ID = 'job-a';
    const g0 = TcpGroup.connect({ ...opts, rank: 0 });
    process.env.MEGABEAM_JOB_ID = 'job-b';
    await rejectsOneOf(t, TcpGroup.connect({ ...opts, rank: 1 }), ['ERR_COMM'], /refused this rank: it belongs to another job/);
    process.env.MEGABEAM_JOB_ID = 'job-a';
    const g1 = TcpGroup.connect({ ...opts, rank: 1 });
    const [a, b] = await Promise.all([g0, g1]);
    const x = tensor([1, 2]), y = tensor([3, 4]);
    await Promise.all([a.allReduce(x), b.allReduce(y)]);
    t.same(Array.from(await y.toArray()), [4, 6]);
    await Promise.all([a.destroy(), b.destroy()]);
  } finally {
    if (saved === undefined) delete process.env.MEGABEAM_JOB_ID;
    else process.env.MEGABEAM_JOB_ID = saved;
  }
});

t.test('no NCCL / no CUDA: clear errors', async (t) => {
  const info = ncclInfo();
  t.type(info.found, 'boolean');
  if (!info.found) t.match(info.error, /MEGABEAM_NCCL|libnccl/);
  if (gpu.skip) {
    await rejectsOneOf(t, group({ devices: [0] }), ['ERR_NO_CUDA', 'ERR_NO_NCCL'], /CUDA|NCCL/);
    await rejectsOneOf(t, init({ backend: 'nccl', rank: 0, worldSize: 1 }), ['ERR_NO_CUDA', 'ERR_DEVICE', 'ERR_NO_NCCL'], /CUDA|NCCL/);
  }
  const bogus = path.join(__dirname, 'dist', 'worker.ts');
  const r = await run([path.join(__dirname, 'dist', 'nccl-probe.ts')], { MEGABEAM_NCCL: bogus });
  const o = JSON.parse(r.out.trim().split('\n').pop()!);
  t.equal(o.info.found, false);
  t.equal(o.info.path, bogus);
  t.match(o.info.error, `MEGABEAM_NCCL=${bogus} could not be loaded`);
  t.match(o.info.error, /pip install nvidia-nccl/, 'says how to get NCCL');
  if (gpu.skip) t.match(o.group.code, /ERR_NO_CUDA|ERR_NO_NCCL/);
  else {
    t.equal(o.group.code, 'ERR_NO_NCCL', 'a GPU machine with a bogus MEGABEAM_NCCL: ERR_NO_NCCL');
    t.match(o.group.message, bogus, 'naming the path');
  }
});

t.test('NCCL loader: a stand-in libnccl (built here with cc) is found, version-checked and symbol-checked', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-fake-nccl-'));
  const src = path.join(__dirname, 'dist', 'fake-nccl.c');
  const build = (out: string, defs: string[]): boolean =>
    spawnSync('cc', ['-shared', '-fPIC', '-o', out, src, ...defs], { stdio: 'ignore' }).status === 0;
  const good = path.join(dir, 'libnccl.so.2'), old = path.join(dir, 'old.so'), missing = path.join(dir, 'missing.so');
  if (!build(good, []) || !build(old, ['-DFAKE_NCCL_VERSION=2908']) || !build(missing, ['-DFAKE_NCCL_MISSING'])) {
    t.pass('skipped: no C compiler (cc) to build the stand-in library');
    return;
  }
  const probe = async (env: Record<string, string>) => {
    const r = await run([path.join(__dirname, 'dist', 'nccl-probe.ts')], env);
    return JSON.parse(r.out.trim().split('\n').pop()!);
  };
  const a = await probe({ MEGABEAM_NCCL: good });
  t.match(a.info, { found: true, version: '2.28.3', versionCode: 22803, path: good });
  if (gpu.skip) t.equal(a.group.code, 'ERR_NO_CUDA', 'NCCL found but no GPU: ERR_NO_CUDA');
  const b = await probe({ MEGABEAM_NCCL: old });
  t.equal(b.info.found, false);
  t.match(b.info.error, /is NCCL 2\.9\.8; megabeam needs NCCL >= 2\.10/);
  const c = await probe({ MEGABEAM_NCCL: missing });
  t.match(c.info.error, /not a usable NCCL 2 library \(no symbol ncclCommAbort\)/);
  // Found on the library path (LD_LIBRARY_PATH), with no MEGABEAM_NCCL.
  const d = await probe({ LD_LIBRARY_PATH: dir, MEGABEAM_NCCL: '' });
  t.match(d.info, { found: true, version: '2.28.3' });
  fs.rmSync(dir, { recursive: true, force: true });
});

// ---- CUDA (skip without a GPU) ------------------------------------------------------------
async function checkNcclGroup(t: Test, gs: import('../lib/dist/types').Group[]): Promise<void> {
  const W = gs.length;
  for (const dtype of ['f32', 'bf16'] as const) {
    const n = 1000 * W + 3;
    const xs = gs.map((g, r) => tensor(randomNormal(n, mulberry32(seed + r)), { dtype, device: g.device }));
    const vals = await Promise.all(xs.map((x) => x.toArray()));
    const want = new Float64Array(n);
    for (const v of vals) for (let i = 0; i < n; i++) want[i] += v[i];
    await Promise.all(gs.map((g, r) => g.allReduce(xs[r])));
    for (let r = 0; r < W; r++) {
      const got = await xs[r].toArray();
      let worst = 0;
      for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]) / (Math.abs(want[i]) + 1e-3));
      t.ok(worst <= (dtype === 'bf16' ? 2 ** -8 : 1e-6), `allReduce ${dtype} rank ${r}: worst rel err ${worst}`);
    }
    const outs = gs.map((g) => tensor(new Float32Array(n * W), { dtype, device: g.device }).fill_(NaN));
    await Promise.all(gs.map((g, r) => g.allGather(outs[r], xs[r])));
    const ag = await outs[0].toArray();
    t.same(Array.from(ag.subarray(0, n)), Array.from(await xs[0].toArray()), `allGather ${dtype}`);
    const rs = gs.map((g) => tensor(new Float32Array(n), { dtype, device: g.device }).fill_(NaN));
    await Promise.all(gs.map((g, r) => g.reduceScatter(rs[r], outs[r])));
    t.ok((await rs[0].toArray()).every((v) => Number.isFinite(v)), `reduceScatter ${dtype} wrote its output`);
    const b = gs.map((g, r) => (r === 0 ? xs[0] : tensor(new Float32Array(n), { dtype, device: g.device }).fill_(NaN)));
    await Promise.all(gs.map((g, r) => g.broadcast(b[r], 0)));
    t.same(Array.from(await b[W - 1].toArray()), Array.from(await xs[0].toArray()), `broadcast ${dtype}`);
    const recv = gs.map((g) => tensor(new Float32Array(n), { dtype, device: g.device }).fill_(NaN));
    await Promise.all(gs.map((g, r) => g.batchSendRecv([{ op: 'send', tensor: xs[r], peer: (r + 1) % W }, { op: 'recv', tensor: recv[r], peer: (r + W - 1) % W }])));
    t.same(Array.from(await recv[0].toArray()), Array.from(await xs[W - 1].toArray()), `ring ${dtype}`);
    // deferred: compute issued before join() may overlap the transfer; after join() the result is in place
    const recv2 = gs.map((g) => tensor(new Float32Array(n), { dtype, device: g.device }).fill_(NaN));
    const busy = gs.map((g) => tensor(new Float32Array(1 << 16), { device: g.device }));
    const issued = gs.map((g, r) => g.batchSendRecv([{ op: 'send', tensor: xs[r], peer: (r + 1) % W }, { op: 'recv', tensor: recv2[r], peer: (r + W - 1) % W }], { deferred: true }));
    for (const x of busy) x.fill_(1); // unrelated compute on the compute stream
    await Promise.all(issued);
    for (const g of gs) g.join?.();
    t.same(Array.from(await recv2[0].toArray()), Array.from(await xs[W - 1].toArray()), `deferred ring ${dtype} after join()`);
  }
  await Promise.all(gs.map((g) => g.barrier()));
}

t.test('nccl: the library loads', gpu, async (t) => {
  const info = ncclInfo();
  t.ok(info.found, `NCCL found: ${JSON.stringify(info)}`);
  t.match(info.version, /^2\.\d+\.\d+$/);
});

t.test('nccl: a 1-rank group over one GPU (group({devices:[0]})) passes every collective', gpu, async (t) => {
  const gs = await group({ devices: [0], timeoutMs: 30000 });
  t.equal(gs.length, 1);
  t.equal(gs[0].backend, 'nccl');
  await checkNcclGroup(t, gs);
  await Promise.all(gs.map((g) => g.destroy()));
});

t.test('nccl: init() with a world of one over nccl passes every collective', gpu, async (t) => {
  const g = await init({ backend: 'nccl', device: 'cuda:0', rank: 0, worldSize: 1, timeoutMs: 30000 });
  t.equal(g.backend, 'nccl');
  await checkNcclGroup(t, [g]);
  await g.destroy();
});

t.test('nccl: launch --device cuda, init() picks nccl on cuda:<local rank> (world of one)', gpu, async (t) => {
  const r = await launch(1, 'nccl', ['--device', 'cuda']);
  t.equal(r.code, 0, r.err.slice(-2000));
  t.match(r.out, '[rank 0] RESULT nccl ok');
});

t.test('nccl: two GPUs in one process', gpu2, async (t) => {
  const gs = await group({ devices: [0, 1], timeoutMs: 30000 });
  await checkNcclGroup(t, gs);
  // mismatched calls between the local ranks
  const a = tensor([1], { device: gs[0].device }), b = tensor([1], { device: gs[1].device });
  const res = await Promise.allSettled([gs[0].allReduce(a), gs[1].broadcast(b, 0)]);
  t.ok(res.every((x) => x.status === 'rejected' && (x.reason as MegabeamError).code === 'ERR_COMM'), 'mismatch -> ERR_COMM on both');
  await Promise.all(gs.map((g) => g.destroy()));
});

t.test('nccl: every collective across 2 launched processes (f32, bf16) against float64 references', gpu2, async (t) => {
  const r = await launch(2, 'nccl-collectives', ['--device', 'cuda']);
  t.equal(r.code, 0, r.err.slice(-2000));
  for (const k of [0, 1]) t.match(r.out, `[rank ${k}] RESULT nccl-collectives ok`, `rank ${k} checked its results`);
});

t.test('nccl: one rank killed mid-job: the other stops with a coded error within the timeout and exits', gpu2, async (t) => {
  const r = await launch(2, 'nccl-killed', ['--device', 'cuda'], { TEST_TIMEOUT_MS: '15000' });
  t.not(r.code, 0, 'launcher exits non-zero');
  t.match(r.err, /rank 1 was killed by SIGKILL/, 'launcher names the dead rank and the signal');
  const line = r.out.split('\n').find((l) => l.startsWith('[rank 0] CAUGHT')) ?? '';
  t.match(line, /CAUGHT (ERR_COMM|ERR_TIMEOUT|ERR_NCCL) after \d+ ms: /, `rank 0 was told: ${line}`);
  const ms = Number(/after (\d+) ms/.exec(line)?.[1]);
  t.ok(ms < 20000, `rank 0 noticed within the timeout (${ms} ms)`);
  t.ok(r.ms < 45000, `the whole job ended in ${r.ms} ms (no rank left waiting on its GPU)`);
});

t.test('nccl: two launched processes, one GPU each', gpu2, async (t) => {
  const r = await launch(2, 'nccl', ['--device', 'cuda']);
  t.equal(r.code, 0, r.err.slice(-2000));
  t.match(r.out, '[rank 1] RESULT nccl ok');
});
