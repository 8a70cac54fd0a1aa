// One rank of the jobs test/dist-tcp.test.ts starts with `megabeam launch`. Usage: worker.ts <case> [seed]
// Every rank can compute every other rank's inputs (seeded by rank), so each checks its results against
// a float64 reference on its own. Prints "RESULT <case> ok" on success; anything else is a failure.
import { init } from '../../lib/dist/init';
import type { Group } from '../../lib/dist/types';
import type { TcpGroup } from '../../lib/dist/tcp';
import { Tensor, tensor } from '../../lib/tensor';
import { MegabeamError } from '../../lib/errors';
import { mulberry32, randomNormal } from '../helpers/rng';
import type { Dtype } from '../../lib/dtype';

const [, , which = 'collectives', seedArg = '1'] = process.argv;
const seed = Number(seedArg);

function inputs(rank: number, n: number, salt: number): Float64Array {
  return randomNormal(n, mulberry32(seed * 7919 + rank * 104729 + salt));
}
/** The values as stored in `dtype` (exact, read back from a tensor). */
async function stored(x: Float64Array, dtype: Dtype): Promise<Float64Array> {
  const t = tensor(x, { dtype });
  const v = Float64Array.from(await t.toArray());
  t.dispose();
  return v;
}
function check(name: string, got: ArrayLike<number>, want: ArrayLike<number>, dtype: Dtype): void {
  if (got.length !== want.length) throw new Error(`${name}: length ${got.length}, want ${want.length}`);
  // One rounding of the exact result into f32 or bf16 (and f32 reductions are done in f64).
  const rel = dtype === 'bf16' ? 2 ** -8 : 2 ** -23;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= rel * Math.abs(want[i]) + 1e-30)) throw new Error(`${name}: [${i}] = ${got[i]}, want ${want[i]} (err ${err})`);
  }
}
function poison(t: Tensor): Tensor {
  return t.fill_(Number.NaN);
}

async function collectives(g: Group, backend: 'tcp' | 'nccl'): Promise<void> {
  const W = g.worldSize, r = g.rank;
  const want = backend === 'tcp' ? 'cpu' : `cuda:${process.env.MEGABEAM_LOCAL_RANK}`;
  if (g.backend !== backend || g.device !== want) throw new Error(`backend ${g.backend} on ${g.device}, want ${backend} on ${want}`);
  // The group's tensors live on its device (CPU for TCP, this rank's GPU for NCCL); references are float64.
  const dev = g.device;
  for (const dtype of ['f32', 'bf16'] as Dtype[]) {
    const n = 37 * W + 5;
    const all = await Promise.all([...Array(W).keys()].map((p) => stored(inputs(p, n, 1), dtype)));
    // allReduce: sum, avg, max
    for (const op of ['sum', 'avg', 'max'] as const) {
      const t = tensor(all[r], { dtype, device: dev });
      await g.allReduce(t, { op });
      const want = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        let acc = op === 'max' ? -Infinity : 0;
        for (let p = 0; p < W; p++) acc = op === 'max' ? Math.max(acc, all[p][i]) : acc + all[p][i];
        want[i] = op === 'avg' ? acc / W : acc;
      }
      check(`allReduce ${op} ${dtype}`, await t.toArray(), want, dtype);
      t.dispose();
    }
    // reduceScatter: rank r gets the sum of every rank's r-th slice
    const m = 11;
    const rsIn = await Promise.all([...Array(W).keys()].map((p) => stored(inputs(p, m * W, 2), dtype)));
    const rsOut = poison(tensor(new Float32Array(m), { dtype, device: dev }));
    await g.reduceScatter(rsOut, tensor(rsIn[r], { dtype, device: dev }));
    const rsWant = new Float64Array(m);
    for (let i = 0; i < m; i++) for (let p = 0; p < W; p++) rsWant[i] += rsIn[p][r * m + i];
    check(`reduceScatter ${dtype}`, await rsOut.toArray(), rsWant, dtype);
    // allGather: exact
    const agOut = poison(tensor(new Float32Array(n * W), { dtype, device: dev }));
    await g.allGather(agOut, tensor(all[r], { dtype, device: dev }));
    const agWant = new Float64Array(n * W);
    for (let p = 0; p < W; p++) agWant.set(all[p], p * n);
    check(`allGather ${dtype}`, await agOut.toArray(), agWant, 'f32');
    // broadcast from every root: exact
    for (let root = 0; root < W; root++) {
      const t = r === root ? tensor(all[root], { dtype, device: dev }) : poison(tensor(new Float32Array(n), { dtype, device: dev }));
      await g.broadcast(t, root);
      check(`broadcast root ${root} ${dtype}`, await t.toArray(), all[root], 'f32');
    }
    // a ring exchange as one batch, two tensors per direction, then plain send/recv (even ranks send first)
    const next = (r + 1) % W, prev = (r + W - 1) % W;
    const a = tensor(all[r], { dtype, device: dev }), b = tensor(inputs(r, 3, 5), { dtype, device: dev });
    const ra = poison(tensor(new Float32Array(n), { dtype, device: dev })), rb = poison(tensor(new Float32Array(3), { dtype, device: dev }));
    await g.batchSendRecv([
      { op: 'send', tensor: a, peer: next }, { op: 'send', tensor: b, peer: next },
      { op: 'recv', tensor: ra, peer: prev }, { op: 'recv', tensor: rb, peer: prev },
    ]);
    check(`ring a ${dtype}`, await ra.toArray(), all[prev], 'f32');
    check(`ring b ${dtype}`, await rb.toArray(), await stored(inputs(prev, 3, 5), dtype), 'f32');
    if (W > 1) {
      const x = poison(tensor(new Float32Array(n), { dtype, device: dev }));
      if (r % 2 === 0) { await g.send(a, next); await g.recv(x, prev); } else { await g.recv(x, prev); await g.send(a, next); }
      check(`send/recv ${dtype}`, await x.toArray(), all[prev], 'f32');
    }
  }
  // bf16 values travel as raw bits: a value f32 could not tell apart must come through unchanged
  const bits = new Uint16Array([0x3f81, 0x7f7f, 0x0001, 0x8000, 0xc2f7]);
  const t = r === 0 ? tensor(bits, { dtype: 'bf16', device: dev }) : tensor(new Float32Array(bits.length), { dtype: 'bf16', device: dev });
  await g.broadcast(t, 0);
  const got = (await t.toRaw()) as Uint16Array;
  if (got.join() !== bits.join()) throw new Error(`bf16 bits changed: ${got.join()} vs ${bits.join()}`);
  // several calls in flight at once, awaited together
  const ts = [1, 2, 3].map((k) => tensor([k * (r + 1)], { device: dev }));
  await Promise.all(ts.map((x) => g.allReduce(x)));
  const tri = (W * (W + 1)) / 2;
  for (let k = 0; k < 3; k++) check(`in flight ${k}`, await ts[k].toArray(), [(k + 1) * tri], 'f32');
  await g.barrier();
}

async function ncclBasic(): Promise<void> {
  // Defaults: MEGABEAM_DEVICE=cuda:<local rank> from `launch --device cuda`, backend nccl.
  const g = await init({ timeoutMs: 30000 });
  try {
    if (g.backend !== 'nccl' || g.device !== `cuda:${process.env.MEGABEAM_LOCAL_RANK}`) throw new Error(`got ${g.backend} on ${g.device}`);
    const W = g.worldSize;
    const x = tensor([g.rank + 1, 0.5], { dtype: 'bf16', device: g.device });
    await g.allReduce(x);
    check('nccl allReduce', await x.toArray(), [(W * (W + 1)) / 2, 0.5 * W], 'bf16');
    const all = tensor(new Float32Array(W), { device: g.device }).fill_(NaN);
    await g.allGather(all, tensor([g.rank], { device: g.device }));
    check('nccl allGather', await all.toArray(), [...Array(W).keys()], 'f32');
    const got = tensor([-1], { device: g.device });
    await g.batchSendRecv([{ op: 'send', tensor: tensor([g.rank], { device: g.device }), peer: (g.rank + 1) % W }, { op: 'recv', tensor: got, peer: (g.rank + W - 1) % W }]);
    check('nccl ring', await got.toArray(), [(g.rank + W - 1) % W], 'f32');
    await g.barrier();
    console.log('RESULT nccl ok');
  } finally {
    await g.destroy();
  }
}

// The last rank dies (SIGKILL) while the others keep calling allReduce; they must stop with a coded error
// within the timeout (TCP: the dead link; NCCL: the communicator aborted, no GPU left waiting).
async function killed(g: Group): Promise<void> {
  await g.barrier();
  if (g.rank === g.worldSize - 1) {
    process.stdout.write('dying\n');
    process.kill(process.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 10000));
  }
  // The survivors keep working until they notice.
  const t = tensor([1, 2, 3], { device: g.device });
  const started = Date.now();
  try {
    for (;;) await g.allReduce(t);
  } catch (e) {
    const me = e as MegabeamError;
    console.log(`CAUGHT ${me.code} after ${Date.now() - started} ms: ${me.message}`);
    process.exitCode = 3;
  }
}

async function main(): Promise<void> {
  if (which === 'nccl') return ncclBasic();
  if (which === 'nccl-killed') {
    const g = await init({ timeoutMs: Number(process.env.TEST_TIMEOUT_MS ?? 20000) });
    try {
      await killed(g);
    } finally {
      await g.destroy();
    }
    return;
  }
  if (which === 'nccl-collectives') {
    // Defaults: MEGABEAM_DEVICE=cuda:<local rank> from `launch --device cuda`, backend nccl.
    const g = await init({ timeoutMs: 60000 });
    try {
      await collectives(g, 'nccl');
      console.log('RESULT nccl-collectives ok');
    } finally {
      await g.destroy();
    }
    return;
  }
  const g = await init({ backend: 'tcp', device: 'cpu', timeoutMs: Number(process.env.TEST_TIMEOUT_MS ?? 20000) });
  const last = g.worldSize - 1;
  try {
    if (which === 'collectives') {
      await collectives(g, 'tcp');
    } else if (which === 'killed') {
      await killed(g);
      return;  // only a failure reaches here: no RESULT line
    } else if (which === 'mismatch') {
      const t = tensor([1, 2, 3]);
      try {
        if (g.rank === 0) await g.barrier();
        else await g.allReduce(t);
        throw new Error('mismatched calls were not detected');
      } catch (e) {
        const me = e as MegabeamError;
        if (!(me instanceof MegabeamError) || me.code !== 'ERR_COMM') throw e;
        console.log(`CAUGHT ${me.code}: ${me.message}`);
      }
      // Later calls fail too.
      try {
        await g.barrier();
        throw new Error('a call after the abort succeeded');
      } catch (e) {
        if ((e as MegabeamError).code !== 'ERR_COMM') throw e;
      }
    } else if (which === 'verify') {
      // The NCCL backend's cross-check of call descriptions (over the TCP mesh), exercised here on the CPU.
      // (A rank that is slow to start may see the abort of a faster one already at its first call.)
      const tg = g as TcpGroup;
      try {
        await tg.verify('allReduce out f32[4] op sum');
        await tg.verify(g.rank === 1 ? 'allReduce out bf16[4] op sum' : 'allReduce out f32[4] op sum');
        throw new Error('different descriptions were not detected');
      } catch (e) {
        const me = e as MegabeamError;
        if (me.code !== 'ERR_COMM') throw e;
        console.log(`CAUGHT ${me.code}: ${me.message}`);
      }
    } else if (which === 'timeout') {
      // The last rank is late (it never makes the call in time); the others time out.
      if (g.rank === last) {
        await new Promise((r) => setTimeout(r, 3000));
        console.log('late rank done');
      } else {
        try {
          await g.allReduce(tensor([1]), { timeoutMs: 1000 });
          throw new Error('no timeout');
        } catch (e) {
          const me = e as MegabeamError;
          if (me.code !== 'ERR_TIMEOUT' && me.code !== 'ERR_COMM') throw e;
          console.log(`CAUGHT ${me.code}: ${me.message}`);
        }
      }
    } else {
      throw new Error(`unknown case ${which}`);
    }
    console.log(`RESULT ${which} ok`);
  } finally {
    await g.destroy();
  }
}

main().catch((e) => {
  console.error(`FAILED ${(e as Error)?.stack ?? e}`);
  process.exitCode = 1;
});
