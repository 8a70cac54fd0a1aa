// Sequence-parallel model passes: W virtual ranks (localGroups) each hold a shard of one sequence and
// their own replica of the tiny Mistral model (same seed). The loss must equal the world-1 run on the whole
// sequence, and after the reduction every rank's parameter gradients must equal the world-1 gradients
// (within f32 rounding), for W = 1..4, zigzag and contiguous, ring and all-gather attention. Then a few
// AdamW steps with ZeRO-1 (and with a replicated optimizer) must give the world-1 parameters.
import t, { Test } from 'tap';
import { spawn } from 'child_process';
import * as path from 'path';
import * as modelLib from '../lib/model';
import type { Model } from '../lib/model';
import { localGroups } from '../lib/dist/local';
import type { Group } from '../lib/dist/types';
import { AdamW } from '../lib/optim';
import { ring } from '../lib/ring';
import { tensor } from '../lib/tensor';
import { rejectsCode, throwsCode } from './helpers/assert';
import { mulberry32, testSeed } from './helpers/rng';
import { gpu } from './helpers/devices';

const seed = testSeed();
t.comment(`TEST_SEED=${seed}`);
const rng = mulberry32(seed);

const tiny = {
  model_type: 'mistral', hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, head_dim: 8, vocab_size: 50, rms_norm_eps: 1e-5, rope_theta: 10000.0, tie_word_embeddings: false,
  initializer_range: 0.3, max_position_embeddings: 64, sliding_window: null, hidden_act: 'silu',
};
const S = 24; // divisible by 2W for W = 1..4 (zigzag) and by W (contiguous)

/** [B][S] random ids; labels also with ~20% ignored (-100) so the global count differs from the token count. */
function batch(B: number, V: number): { ids: number[][]; labels: number[][] } {
  const row = (ign: boolean) => Array.from({ length: S }, () => (ign && rng() < 0.2 ? -100 : Math.floor(rng() * V)));
  return { ids: Array.from({ length: B }, () => row(false)), labels: Array.from({ length: B }, () => row(true)) };
}

async function gradsOf(m: Model): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, v] of m.grads()) out.set(k, (await v.toArray()) as Float32Array);
  return out;
}
async function paramsOf(m: Model): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, v] of m.parameters()) out.set(k, (await v.toArray()) as Float32Array);
  return out;
}

/** max |a − b| relative to b's largest entry. */
function rel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0, s = 0;
  for (let i = 0; i < a.length; i++) { e = Math.max(e, Math.abs(a[i] - b[i])); s = Math.max(s, Math.abs(b[i])); }
  return e / Math.max(s, 1e-30);
}
function worstRel(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { err: number; name: string } {
  let err = 0, name = '';
  for (const [k, v] of b) {
    const r = rel(a.get(k)!, v);
    if (!(r <= err)) { err = r; name = k; }
  }
  return { err, name };
}

/** Runs fn(rank, group, model) on W ranks at once, each with its own replica. */
async function onRanks<T>(W: number, make: () => Model, fn: (r: number, g: Group, m: Model) => Promise<T>,
    device = 'cpu'): Promise<{ out: T[]; models: Model[]; groups: Group[] }> {
  const groups = localGroups(W, { device, timeoutMs: 20000 });
  const models = groups.map(() => make());
  const out = await Promise.all(groups.map((g, r) => fn(r, g, models[r])));
  return { out, models, groups };
}
async function cleanup(x: { models: Model[]; groups: Group[] }): Promise<void> {
  for (const m of x.models) m.dispose();
  for (const g of x.groups) await g.destroy();
}

t.test('shardTokens / shardBatch cut as ring.shard does, with ring.positions', async (t) => {
  for (const W of [1, 2, 3, 4]) {
    for (const layout of ['zigzag', 'contiguous'] as const) {
      const { ids, labels } = batch(2, 1000);
      const full = tensor(Int32Array.from(ids.flat()), { shape: [2, S], dtype: 'i32' });
      for (let r = 0; r < W; r++) {
        const want = ring.shard(full, r, W, { layout });
        const wantP = ring.positions(S, r, W, layout, { offset: 5 });
        const flat = modelLib.shardTokens(Int32Array.from(ids.flat()), r, W, { layout, batch: 2 });
        const nested = modelLib.shardBatch({ ids, labels }, r, W, { layout, offset: 5 });
        const w = Array.from(await want.toArray());
        t.same(Array.from(flat), w, `W=${W} ${layout} rank ${r}: flat`);
        t.same(nested.ids.flat(), w, `W=${W} ${layout} rank ${r}: nested`);
        t.same(Array.from(nested.positions), Array.from(await wantP.toArray()), 'positions');
        // labels travel with their tokens
        const lab = modelLib.shardTokens(labels, r, W, { layout });
        t.same(nested.labels, lab, 'labels');
        want.dispose(); wantP.dispose();
      }
      full.dispose();
    }
  }
  throwsCode(t, () => modelLib.shardTokens(new Int32Array(10), 0, 3), 'ERR_SHAPE', 'zigzag needs 2W | seq');
  throwsCode(t, () => modelLib.shardTokens(new Int32Array(12), 3, 3), 'ERR_ARG', 'rank out of range');
  throwsCode(t, () => modelLib.shardTokens(new Int32Array(12), 0, 2, { layout: 'ring' as 'zigzag' }), 'ERR_ARG', 'bad layout');
  throwsCode(t, () => modelLib.shardTokens(new Int32Array(12), 0, 2, { batch: 5 }), 'ERR_SHAPE', 'batch does not divide');
});

t.test('sequence-parallel forwardBackward = world 1 (loss and every gradient), W = 1..4', async (t) => {
  const make = () => modelLib.fromConfig(tiny, { seed: 17, dtype: 'f32' });
  for (const B of [1, 2]) {
    const { ids, labels } = batch(B, 50);
    const ref = make();
    const r1 = await ref.forwardBackward(ids, labels);
    const g1 = await gradsOf(ref);
    ref.dispose();
    t.ok(r1.count < B * S && r1.count > 0, `some labels ignored (count ${r1.count})`);
    const cases: { W: number; layout: 'zigzag' | 'contiguous'; algo: 'ring' | 'allgather' }[] = [];
    for (const W of [1, 2, 3, 4]) for (const layout of ['zigzag', 'contiguous'] as const) for (const algo of ['ring', 'allgather'] as const)
      if (B === 1 || (W !== 3 && algo === 'ring')) cases.push({ W, layout, algo });
    for (const { W, layout, algo } of cases) {
      const what = `B=${B} W=${W} ${layout} ${algo}`;
      const run = await onRanks(W, make, (r, g, m) => {
        const sh = modelLib.shardBatch({ ids, labels }, r, W, { layout });
        return m.forwardBackward(sh.ids, sh.labels, { group: g, layout, ringAlgorithm: algo });
      });
      const losses = run.out.map((o) => o.loss);
      t.ok(losses.every((l) => l === losses[0]), `${what}: the same loss on every rank`);
      t.ok(Math.abs(losses[0] - r1.loss) <= 1e-5 * Math.abs(r1.loss), `${what}: loss ${losses[0]} = world-1 ${r1.loss}`);
      t.ok(run.out.every((o) => o.count === r1.count), `${what}: global count ${run.out[0].count}`);
      let worst = { err: 0, name: '' };
      for (const m of run.models) {
        const w = worstRel(await gradsOf(m), g1);
        if (w.err > worst.err) worst = w;
      }
      t.ok(worst.err < 2e-5, `${what}: every rank's gradients = world 1 (worst ${worst.err.toExponential(2)} ${worst.name})`);
      await cleanup(run);
    }
  }
});

t.test('positionOffset shifts the whole sharded sequence; gradient accumulation; double reduction refused', async (t) => {
  const make = () => modelLib.fromConfig(tiny, { seed: 5, dtype: 'f32' });
  const a = batch(1, 50), b = batch(1, 50);
  const ref = make();
  const ra = await ref.forwardBackward(a.ids, a.labels, { positionOffset: 7 });
  const rb = await ref.forwardBackward(b.ids, b.labels, { positionOffset: 7 });
  const g1 = await gradsOf(ref);
  ref.dispose();
  for (const layout of ['zigzag', 'contiguous'] as const) {
    const W = 3;
    const run = await onRanks(W, make, async (r, g, m) => {
      const sa = modelLib.shardBatch(a, r, W, { layout }), sb = modelLib.shardBatch(b, r, W, { layout });
      const o = { group: g, layout, positionOffset: 7 };
      // micro-batch 1 unreduced, micro-batch 2 reduces the accumulated sum once
      const x = await m.forwardBackward(sa.ids, sa.labels, { ...o, reduceGrads: false });
      const y = await m.forwardBackward(sb.ids, sb.labels, o);
      return [x.loss, y.loss];
    });
    t.ok(run.out.every(([x, y]) => Math.abs(x - ra.loss) < 1e-5 * ra.loss && Math.abs(y - rb.loss) < 1e-5 * rb.loss),
      `${layout}: both micro-batch losses = world 1 at offset 7`);
    let worst = 0;
    for (const m of run.models) worst = Math.max(worst, worstRel(await gradsOf(m), g1).err);
    t.ok(worst < 2e-5, `${layout}: accumulated gradients = world 1 (${worst.toExponential(2)})`);
    // a third pass on top of reduced gradients would double-count them: refused on every rank
    await Promise.all(run.groups.map((g, r) => {
      const sh = modelLib.shardBatch(a, r, W, { layout });
      return rejectsCode(t, () => run.models[r].forwardBackward(sh.ids, sh.labels, { group: g, layout }), 'ERR_ARG', `rank ${r}: pass on reduced grads`);
    }));
    await cleanup(run);
  }
});

t.test('sequence-parallel argument errors', async (t) => {
  const run = await onRanks(2, () => modelLib.fromConfig(tiny, { seed: 1, dtype: 'f32' }), async (r, g, m) => {
    const ids = [Array.from({ length: 6 }, (_, i) => i)];
    await rejectsCode(t, () => m.forwardBackward(ids, ids, { group: g, layout: 'ring' as 'zigzag' }), 'ERR_ARG', 'bad layout');
    // a zigzag shard is two equal halves: 5 local tokens cannot be one
    await rejectsCode(t, () => m.forwardBackward([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]], { group: g }), 'ERR_SHAPE', 'odd zigzag shard');
    await rejectsCode(t, () => m.forwardBackward(ids, ids, { group: g, reduceGrads: 1 as unknown as boolean }), 'ERR_ARG', 'reduceGrads type');
    throwsCode(t, () => m.forward(ids, { group: g }), 'ERR_UNSUPPORTED', 'forward: plain attention only');
    return r;
  });
  await cleanup(run);
});

/** World-1 training vs W ranks: ZeRO-1 (reduce-scatter, 'sum') or a replicated optimizer on summed grads. */
async function trainCompare(t: Test, W: number, mode: 'zero1' | 'replicated', steps: number, clip: number): Promise<void> {
  const make = () => modelLib.fromConfig(tiny, { seed: 23, dtype: 'f32' });
  const data = Array.from({ length: steps }, () => batch(1, 50));
  // eps comparable to the gradients: Adam is then not scale-invariant, so a wrong 1/W (avg for sum) shows
  const hyper = { lr: 3e-2, betas: [0.9, 0.95] as [number, number], eps: 1e-2, weightDecay: 0.1, maxGradNorm: clip };
  const entries = (m: Model) => [...m.parameters()].map(([name, param]) => ({ name, param, grad: m.grads().get(name)!, decay: param.ndim > 1 }));
  const ref = make();
  const opt1 = new AdamW(entries(ref), hyper);
  const losses1: number[] = [];
  for (const d of data) {
    ref.zeroGrad();
    losses1.push((await ref.forwardBackward(d.ids, d.labels)).loss);
    await opt1.step();
  }
  const p1 = await paramsOf(ref);
  opt1.dispose(); ref.dispose();
  const run = await onRanks(W, make, async (r, g, m) => {
    const opt = new AdamW(entries(m), mode === 'zero1' ? { ...hyper, group: g, gradReduction: 'sum' } : hyper);
    const losses: number[] = [];
    for (const d of data) {
      m.zeroGrad();
      const sh = modelLib.shardBatch(d, r, W);
      losses.push((await m.forwardBackward(sh.ids, sh.labels, { group: g, reduceGrads: mode !== 'zero1' })).loss);
      await opt.step();
    }
    opt.dispose();
    return losses;
  });
  const what = `W=${W} ${mode} clip=${clip}`;
  t.ok(run.out.every((ls) => ls.every((l, i) => Math.abs(l - losses1[i]) < 1e-4 * losses1[i])),
    `${what}: same loss curve (${losses1.map((l) => l.toFixed(4)).join(' ')})`);
  let worst = 0;
  for (const m of run.models) worst = Math.max(worst, worstRel(await paramsOf(m), p1).err);
  t.ok(worst < 1e-4, `${what}: parameters after ${steps} steps = world 1 (${worst.toExponential(2)})`);
  await cleanup(run);
}

t.test('AdamW after sequence-parallel steps = world 1 (ZeRO-1 with gradReduction sum; replicated)', async (t) => {
  await trainCompare(t, 2, 'zero1', 3, 0);
  await trainCompare(t, 4, 'zero1', 3, 0);
  await trainCompare(t, 2, 'zero1', 2, 1);
  await trainCompare(t, 2, 'replicated', 2, 0.5);
});

// ---- CUDA: virtual ranks on one GPU, bf16, a moderate size ----------------------------------------

t.test('CUDA: sequence-parallel forwardBackward (bf16, virtual ranks on one GPU) = world 1', gpu, async (t) => {
  const cfg = {
    // the CUDA attention kernels take headDim 64 or 128
    ...tiny, hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    head_dim: 64, vocab_size: 512, max_position_embeddings: 8192, initializer_range: 0.05,
  };
  const L = 4096;
  const ids = [Array.from({ length: L }, () => Math.floor(rng() * 512))];
  const labels = [Array.from({ length: L }, () => (rng() < 0.1 ? -100 : Math.floor(rng() * 512)))];
  const make = () => modelLib.fromConfig(cfg, { seed: 3, dtype: 'bf16', device: 'cuda' });
  const ref = make();
  const r1 = await ref.forwardBackward(ids, labels);
  const g1 = await gradsOf(ref);
  ref.dispose();
  for (const W of [2, 4]) {
    for (const [layout, algo] of [['zigzag', 'ring'], ['contiguous', 'ring'], ['zigzag', 'allgather']] as const) {
      const what = `W=${W} ${layout} ${algo}`;
      const run = await onRanks(W, make, (r, g, m) => {
        const sh = modelLib.shardBatch({ ids, labels }, r, W, { layout });
        return m.forwardBackward(sh.ids, sh.labels, { group: g, layout, ringAlgorithm: algo });
      }, 'cuda');
      t.ok(Math.abs(run.out[0].loss - r1.loss) < 1e-2 * r1.loss, `${what}: loss ${run.out[0].loss} ≈ ${r1.loss}`);
      t.ok(run.out.every((o) => o.loss === run.out[0].loss), `${what}: the same loss on every rank`);
      let worst = { err: 0, name: '' };
      for (const m of run.models) {
        const w = worstRel(await gradsOf(m), g1);
        if (w.err > worst.err) worst = w;
      }
      // bf16 activations: ring blocks and the single call round differently (fp32 merges keep it small)
      t.ok(worst.err < 5e-2, `${what}: gradients ≈ world 1 (worst ${worst.err.toExponential(2)} ${worst.name})`);
      await cleanup(run);
    }
  }
});

// ---- TCP backend: 2 processes started by `megabeam launch` ----------------------------------------

t.test('tcp: SP training across 2 launched processes (ZeRO-1) = world 1', async (t) => {
  const root = path.join(__dirname, '..');
  const args = ['--import', 'tsx', path.join(__dirname, 'helpers', 'cli-entry.ts'), 'launch', '--nproc', '2',
    path.join(__dirname, 'dist', 'sp-worker.ts'), 'zigzag', String(seed)];
  const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const cp = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    cp.stdout.on('data', (d) => (out += d));
    cp.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => cp.kill('SIGKILL'), 60000);
    cp.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
  t.equal(r.code, 0, `launcher exit code (stderr: ${r.err.slice(-2000)})`);
  for (let k = 0; k < 2; k++) t.match(r.out, `[rank ${k}] RESULT sp ok`, `rank ${k} matched world 1`);
});

t.test('SP: keepAttention (kept ring-attention out/lse) = plain recompute bit for bit; the ranks agree on the smallest k', async (t) => {
  const make = () => modelLib.fromConfig({ ...tiny, num_hidden_layers: 3 }, { seed: 23, dtype: 'f32' });
  const W = 2;
  const { ids, labels } = batch(1, 50);
  const bits = async (m: Model) => {
    const out = new Map<string, string>();
    for (const [k, v] of m.grads()) { const a = await v.toRaw(); out.set(k, Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64')); }
    return out;
  };
  // world 1 on the whole sequence, for the within-rounding check
  const ref1 = make();
  await ref1.forwardBackward(ids, labels);
  const g1 = await gradsOf(ref1);
  ref1.dispose();
  for (const layout of ['zigzag', 'contiguous'] as const) {
    for (const algo of ['ring', 'allgather'] as const) {
      const runWith = (keep: (r: number) => boolean | number | 'auto' | undefined) => onRanks(W, make, async (r, g, m) => {
        const sh = modelLib.shardBatch({ ids, labels }, r, W, { layout });
        const res = await m.forwardBackward(sh.ids, sh.labels, { group: g, layout, ringAlgorithm: algo, keepAttention: keep(r), mlpChunkTokens: 5 });
        return { res, g: await bits(m) };
      });
      const what = `W=2 ${layout} ${algo}`;
      const ref = await runWith(() => false);
      t.same(ref.out.map((o) => o.res.keptAttention), [0, 0], `${what}: keepAttention false keeps none`);
      for (const [name, keep, kept] of [['auto (default)', () => undefined, 3], ['true', () => true, 3],
        ['rank 0 asks 3, rank 1 asks 1', (r: number) => (r === 0 ? 3 : 1), 1], ['rank 0 auto, rank 1 false', (r: number) => (r === 0 ? 'auto' : false), 0]] as const) {
        const x = await runWith(keep as (r: number) => boolean | number | 'auto' | undefined);
        for (let r = 0; r < W; r++) {
          t.equal(x.out[r].res.keptAttention, kept, `${what} ${name}: rank ${r} kept ${kept}`);
          t.equal(x.out[r].res.loss, ref.out[r].res.loss, `${what} ${name}: rank ${r} same loss`);
          const diff = [...ref.out[r].g.keys()].filter((k) => x.out[r].g.get(k) !== ref.out[r].g.get(k));
          t.same(diff, [], `${what} ${name}: rank ${r}: every gradient bit-identical to the plain recompute`);
        }
        await cleanup(x);
      }
      if (layout === 'zigzag' && algo === 'ring') {
        // the plan counts ring attention's buffers: more than world 1 at the same tokens per rank
        const m = ref.models[0], g = ref.groups[0], n = S / W;
        const p1 = m.memoryPlan(n, { keepAttention: false }), pr = m.memoryPlan(n, { keepAttention: false, group: g, ringAlgorithm: 'ring' });
        const pa = m.memoryPlan(n, { keepAttention: false, group: g, ringAlgorithm: 'allgather' });
        t.ok(pr.recomputePeak > p1.recomputePeak && pa.recomputePeak > p1.recomputePeak, `${what}: memoryPlan counts the ring's buffers`);
        t.equal(m.memoryPlan(n, { group: g }).keptAttention, 3, `${what}: auto keeps all 3 on the CPU`);
        throwsCode(t, () => m.memoryPlan(n, { group: g, ringAlgorithm: 'fast' as 'ring' }), 'ERR_ARG', 'memoryPlan: bad ringAlgorithm');
        throwsCode(t, () => m.memoryPlan(n, { batch: 5 }), 'ERR_ARG', 'memoryPlan: batch must divide the tokens');
        throwsCode(t, () => m.memoryPlan(n, { group: 7 as never }), 'ERR_ARG', 'memoryPlan: group must be a group');
      }
      const { err, name } = worstRel(await gradsOf(ref.models[0]), g1);
      // 2e-5 as the other world-1 comparisons here: a fresh seed gave 1.00e-5 (max error over a tensor's max,
      // sums reordered around the ring).
      t.ok(err < 2e-5, `${what}: and the world-1 gradients within f32 rounding (worst ${err.toExponential(2)}, ${name})`);
      await cleanup(ref);
    }
  }
});

t.test('SP: nothing leaks; a bad id on one rank fails every rank at once (no wait for the timeout)', async (t) => {
  const { memory, synchronize } = await import('../lib/tensor');
  const W = 2;
  const groups = localGroups(W, { timeoutMs: 20000 });
  const models = groups.map(() => modelLib.fromConfig(tiny, { seed: 4, dtype: 'f32' }));
  for (const m of models) m.grads();
  await synchronize('cpu');
  const base = memory('cpu').allocated;
  const { ids, labels } = batch(2, 50);
  for (const layout of ['zigzag', 'contiguous'] as const) {
    await Promise.all(groups.map((g, r) => {
      const sh = modelLib.shardBatch({ ids, labels }, r, W, { layout });
      return models[r].forwardBackward(sh.ids, sh.labels, { group: g, layout, checkpoint: layout === 'zigzag', reduceGrads: false });
    }));
    await synchronize('cpu');
    t.equal(memory('cpu').allocated, base, `${layout}: allocated memory back to params + grads`);
    for (const keepAttention of [false, 1, true]) {
      await Promise.all(groups.map((g, r) => {
        const sh = modelLib.shardBatch({ ids, labels }, r, W, { layout });
        return models[r].forwardBackward(sh.ids, sh.labels, { group: g, layout, keepAttention, reduceGrads: false });
      }));
      await synchronize('cpu');
      t.equal(memory('cpu').allocated, base, `${layout} keepAttention ${keepAttention}: allocated memory back to params + grads`);
    }
  }
  const t0 = Date.now();
  await Promise.all(groups.map((g, r) => {
    const sh = modelLib.shardBatch({ ids, labels }, r, W);
    if (r === 1) sh.labels[0][3] = 50;
    return rejectsCode(t, () => models[r].forwardBackward(sh.ids, sh.labels, { group: g }), 'ERR_ARG', `rank ${r} rejects`);
  }));
  t.ok(Date.now() - t0 < 10000, `every rank failed at once (${Date.now() - t0} ms)`);
  await synchronize('cpu').catch(() => undefined);
  t.equal(memory('cpu').allocated, base, 'nothing left behind by the failed step');
  for (const m of models) m.dispose();
  for (const g of groups) await g.destroy();
});
