// `megabeam bench ring-dist`: sequence-parallel (ring) attention across real ranks — one process per GPU under
// `megabeam launch` (NCCL), or CPU ranks over TCP (`--device cpu`) — the multi-GPU counterpart of `bench ring`
// (which runs virtual ranks on one device and times compute only). Per algorithm (ring, all-gather): forward
// and backward wall time of the slowest rank (barriers around each pass), TFLOP/s per GPU, peak memory per
// GPU; for the ring, each rank's compute alone and the K/V (and dK/dV) exchange alone, so the share of
// communication hidden under compute is 1 - (ring - compute) / communication. `--baseline`: rank 0 also runs
// single-device attention over the whole sequence (the 1-GPU yardstick for the speedup). The check compares
// windows of every rank's out, lse and dq with single-device attention of the same rows against the gathered
// K/V (an independent path: no ring, no merging), so it stays cheap at any length.
// Without a launcher it runs as one rank (the 1-GPU time).
import * as fs from 'fs';
import { attention } from '../attention';
import { Dtype } from '../dtype';
import { distEnv, init as distInit } from '../dist/init';
import type { Group } from '../dist/types';
import { ArgumentError } from '../errors';
import { BackwardBlocks, ForwardBlocks, RingAlgorithm, RingLayout, chunks, kvGradAccumulators, rankContext, ring, unshard } from '../ring';
import { Tensor, empty, memory, randn, resetPeakMemory, synchronize, tensor } from '../tensor';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, HEADS_FLAG, HEAD_DIM_FLAG, JSON_FLAG, KV_HEADS_FLAG, OUT_FLAG, REPS_FLAG, checkHeads, checkOutputPath, listOf, resolveDevice } from '../cli/common';
import { attentionFlops } from './attention';
import { GiB, gatherNumbers, median, relL2, table, slowestRank } from './util';

export const command: Command = {
  usage: 'megabeam bench ring-dist [options]   (as: megabeam launch --nproc W megabeam bench ring-dist ...)',
  description: `Ring attention across the ranks of a launched job (one GPU each over NCCL, or --device cpu ranks over
TCP): fwd/bwd time, TFLOP/s and peak memory per GPU, the share of communication hidden (ring), ring vs
all-gather, a windowed check against single-device attention; --baseline adds the 1-GPU time on rank 0.`,
  flags: {
    seq: { type: 'size', min: 2, max: 2 ** 26, help: 'full sequence length (a multiple of 2 x world size)', default: '512k on a GPU, 2k on the CPU' },
    heads: { ...HEADS_FLAG, default: '32 on a GPU, 8 on the CPU' },
    'kv-heads': { ...KV_HEADS_FLAG, default: '8 on a GPU, 2 on the CPU' },
    'head-dim': { ...HEAD_DIM_FLAG, default: '128 on a GPU, 64 on the CPU' },
    dtype: { type: 'choice', choices: ['bf16', 'f16', 'f32'], help: 'element type', default: 'bf16 on a GPU, f32 on the CPU' },
    layout: { type: 'choice', choices: ['zigzag', 'contiguous'], help: 'sequence sharding', default: 'zigzag' },
    algorithms: { type: 'string', metavar: 'A,A', help: 'ring and/or allgather', default: 'ring,allgather' },
    'non-causal': { type: 'bool', help: 'full (non-causal) attention' },
    reps: { ...REPS_FLAG, default: '2 (after a warm-up below 64K tokens per rank)' },
    baseline: { type: 'bool', help: 'rank 0 also times single-device attention over the whole sequence' },
    'no-check': { type: 'bool', help: 'skip the windowed check against single-device attention' },
    device: { ...DEVICE_FLAG, help: 'cpu: TCP ranks on the CPU; otherwise each rank takes cuda:<local rank>' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run,
};

interface AlgoRow {
  algorithm: string; fwd_s: number; bwd_s: number; fwd_tflops_per_gpu: number; bwd_tflops_per_gpu: number;
  peak_gib_max: number; peak_gib_per_rank: number[];
  compute_fwd_s?: number; compute_bwd_s?: number; comm_fwd_s?: number; comm_bwd_s?: number;
  hidden_fwd?: number; hidden_bwd?: number;
  speedup_fwd?: number; speedup_bwd?: number;
  check?: { out: number; lse: number; dq: number; tol: number; pass: boolean };
}

/** The whole tensor from every rank's shard (ring.unshard of an allGather). */
async function gatherFull(group: Group | undefined, x: Tensor, layout: RingLayout): Promise<Tensor> {
  if (!group) return x.clone();
  const W = group.worldSize;
  const all = empty([W, ...x.shape], { dtype: x.dtype, device: x.device });
  try {
    await group.allGather(all, x);
    const parts = Array.from({ length: W }, (_, r) => all.narrow(0, r, 1).reshape(x.shape));
    return unshard(parts, { layout });
  } finally {
    all.dispose();
  }
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i], y = b[i];
    if (x === y) continue;  // equal infinities (rows that saw no key)
    m = Math.max(m, Number.isNaN(x - y) ? Infinity : Math.abs(x - y));
  }
  return m;
}

/**
 * This rank's ring results against single-device attention, on windows of up to 64 rows at both ends of every
 * chunk the rank holds: the same rows of q (and dout) against the gathered K/V, keys up to the window's last row
 * when causal. Returns the largest relative L2 error of out and dq and the largest absolute lse difference.
 */
export async function windowErrors(a: { q: Tensor; dout: Tensor; kFull: Tensor; vFull: Tensor; out: Tensor; lse: Tensor; dq: Tensor;
    S: number; rank: number; world: number; layout: RingLayout; causal: boolean }): Promise<{ out: number; lse: number; dq: number }> {
  const { q, dout, kFull, vFull, S, causal } = a;
  const hq = q.shape[2], Sl = q.shape[1];
  let eo = 0, el = 0, ed = 0, local = 0;
  const lseAll = await a.lse.toArray();  // [1, hq, Sl] (a window of it is not a view)
  for (const c of chunks(S, a.rank, a.world, a.layout)) {
    const n = Math.min(64, c.length);
    for (const off of new Set([0, c.length - n])) {
      const lo = local + off, g = c.start + off;
      const nk = causal ? g + n : S;
      const qw = q.narrow(1, lo, n), dw = dout.narrow(1, lo, n);
      const kw = kFull.narrow(1, 0, nk), vw = vFull.narrow(1, 0, nk);
      const ref = attention.forward(qw, kw, vw, { causal, qOffset: g, kOffset: 0 });
      const gr = attention.backward(dw, qw, kw, vw, ref.out, ref.lse, { causal, qOffset: g, kOffset: 0 });
      try {
        eo = Math.max(eo, relL2(await a.out.narrow(1, lo, n).toArray(), await ref.out.toArray()));
        const lr = await ref.lse.toArray();
        for (let h = 0; h < hq; h++) el = Math.max(el, maxAbsDiff(lseAll.subarray(h * Sl + lo, h * Sl + lo + n), lr.subarray(h * n, (h + 1) * n)));
        ed = Math.max(ed, relL2(await a.dq.narrow(1, lo, n).toArray(), await gr.dq.toArray()));
      } finally {
        for (const t of [ref.out, ref.lse, gr.dq, gr.dk, gr.dv]) t.dispose();
      }
    }
    local += c.length;
  }
  return { out: eo, lse: el, dq: ed };
}

async function run(o: FlagValues, io: CliIO): Promise<number> {
  if (o.out !== undefined) checkOutputPath(String(o.out));
  const asked = o.device === undefined ? undefined : resolveDevice(o.device);
  const algos = listOf(o.algorithms, ['ring', 'allgather'], '--algorithms', ['ring', 'allgather']) as RingAlgorithm[];
  const { worldSize: W } = distEnv();
  const layout = ((o.layout as string | undefined) ?? 'zigzag') as RingLayout;
  const onGpuGuess = asked ? asked !== 'cpu' : resolveDevice(undefined) !== 'cpu';
  const S = (o.seq as number | undefined) ?? (onGpuGuess ? 524288 : 2048);
  const unit = layout === 'zigzag' ? 2 * W : W;
  if (S % unit !== 0) throw new ArgumentError(`--seq ${S} must be a multiple of ${unit} (${layout} shards over ${W} ranks)`);
  const hq = (o.heads as number | undefined) ?? (onGpuGuess ? 32 : 8);
  const hkv = (o['kv-heads'] as number | undefined) ?? (onGpuGuess ? 8 : 2);
  checkHeads(hq, hkv);
  const d = (o['head-dim'] as number | undefined) ?? (onGpuGuess ? 128 : 64);
  const dtype = ((o.dtype as string | undefined) ?? (onGpuGuess ? 'bf16' : 'f32')) as Dtype;
  const causal = !o['non-causal'];
  const B = 1;

  let group: Group | undefined;
  const owned: Tensor[] = [];
  try {
    // Under a launcher with a world > 1: join the job (cuda:<local rank> over NCCL, or TCP for --device cpu).
    if (W > 1) group = await distInit(asked === 'cpu' ? { device: 'cpu', backend: 'tcp' } : {});
    const dev = group ? group.device : asked ?? resolveDevice(undefined);
    const rank = group?.rank ?? 0;
    const say = rank === 0 ? (s: string) => io.err(s) : () => {};
    const Sl = S / W;
    const reps = (o.reps as number | undefined) ?? 2;
    const warm = Sl <= 65536;
    const seed = 1000 + 4 * rank;
    const mk = (h: number, s: number) => { const t = randn([B, Sl, h, d], { dtype, device: dev, seed: s }); owned.push(t); return t; };
    const q = mk(hq, seed), k = mk(hkv, seed + 1), v = mk(hkv, seed + 2), dout = mk(hq, seed + 3);
    const fl = attentionFlops(S, S, hq, d, B, causal);
    // Peak memory per GPU = the inputs a rank of a real job holds + the pass's working memory above what was
    // allocated before it (so results kept for the check and earlier algorithms do not count).
    const inputGiB = [q, k, v, dout].reduce((s, x) => s + x.nbytes, 0) / GiB;
    say(`bench ring-dist: ${W} rank(s) on ${dev}${group ? ` over ${group.backend}` : ''}, S=${S} (${Sl} per rank, ${layout}), ` +
      `${hq}/${hkv} heads, d=${d}, ${dtype}, ${causal ? 'causal' : 'full'}`);

    const rows: AlgoRow[] = [];
    const kept: { algo: RingAlgorithm; out: Tensor; lse: Tensor; dq: Tensor }[] = [];
    for (const algorithm of algos) {
      const ro = { causal, layout, algorithm };
      const once = async () => {
        const f = await ring.forward(group, q, k, v, ro);
        const g = await ring.backward(group, dout, q, k, v, f.out, f.lse, ro);
        return { f, g };
      };
      if (warm) { const { f, g } = await once(); for (const x of [f.out, f.lse, g.dq, g.dk, g.dv]) x.dispose(); }
      await synchronize(dev);
      resetPeakMemory(dev);
      const before = memory(dev).allocated / GiB;
      const ft: number[] = [], bt: number[] = [];
      for (let r = 0; r < reps; r++) {
        let f!: { out: Tensor; lse: Tensor };
        ft.push(await slowestRank(dev, group, async () => { f = await ring.forward(group, q, k, v, ro); }));
        let g!: { dq: Tensor; dk: Tensor; dv: Tensor };
        bt.push(await slowestRank(dev, group, async () => { g = await ring.backward(group, dout, q, k, v, f.out, f.lse, ro); }));
        g.dk.dispose();
        g.dv.dispose();
        if (r === reps - 1) kept.push({ algo: algorithm, out: f.out, lse: f.lse, dq: g.dq });  // for the check
        else for (const x of [f.out, f.lse, g.dq]) x.dispose();
      }
      const peaks = (await gatherNumbers(group, dev, [inputGiB + memory(dev).peak / GiB - before])).map((x) => x[0]);
      const fwd = median(ft), bwd = median(bt);
      rows.push({ algorithm, fwd_s: fwd, bwd_s: bwd, fwd_tflops_per_gpu: fl / fwd / W / 1e12, bwd_tflops_per_gpu: 2.5 * fl / bwd / W / 1e12,
        peak_gib_max: Math.max(...peaks), peak_gib_per_rank: peaks });
      say(`  ${algorithm}: fwd ${fwd.toFixed(4)} s, bwd ${bwd.toFixed(4)} s, peak ${Math.max(...peaks).toFixed(2)} GiB per GPU`);
    }

    // Ring only: each rank's compute alone (its blocks against its own K/V standing in for the visitors',
    // the same shapes and masks) and the exchange alone (the same transfers, nothing else).
    const ringRow = rows.find((r) => r.algorithm === 'ring');
    if (ringRow && group) {
      const ctx = rankContext(rank, W, q, k, v, { causal, layout, algorithm: 'ring' });
      const saved = kept.find((x) => x.algo === 'ring')!;
      const compF = await slowestRank(dev, undefined, async () => {
        const st = new ForwardBlocks(ctx, q);
        for (let s = 0; s < W; s++) st.step(k, v, (rank - s + W) % W);
        const r = st.finish();
        r.out.dispose();
        r.lse.dispose();
      });
      const compB = await slowestRank(dev, undefined, async () => {
        const st = new BackwardBlocks(ctx, dout, q, saved.out, saved.lse);
        const acc = kvGradAccumulators(ctx);
        for (let s = 0; s < W; s++) BackwardBlocks.accumulate(acc.acc, st.step(k, v, (rank - s + W) % W));
        st.finishDq().dispose();
        await synchronize(dev);
        acc.dispose();
      });
      const right = (rank + 1) % W, left = (rank + W - 1) % W;
      const exchange = async (send: Tensor[]) => {
        const recv = send.map((t) => empty(t.shape, { dtype: t.dtype, device: t.device }));
        try {
          return await slowestRank(dev, group, async () => {
            for (let s = 0; s < W - 1; s++)
              await group!.batchSendRecv([...send.map((t) => ({ op: 'send' as const, tensor: t, peer: right })),
                ...recv.map((t) => ({ op: 'recv' as const, tensor: t, peer: left }))]);
          });
        } finally { for (const t of recv) t.dispose(); }
      };
      const commF = await exchange([k, v]);
      const g32 = [empty(k.shape, { device: dev }), empty(v.shape, { device: dev })];  // the travelling fp32 dK/dV
      let commB: number;
      try { commB = await exchange([k, v, ...g32]); } finally { for (const t of g32) t.dispose(); }
      const comp = await gatherNumbers(group, dev, [compF, compB]);
      const cF = Math.max(...comp.map((x) => x[0])), cB = Math.max(...comp.map((x) => x[1]));
      const hidden = (total: number, c: number, m: number) => Math.min(1, Math.max(0, 1 - (total - c) / Math.max(m, 1e-9)));
      Object.assign(ringRow, { compute_fwd_s: cF, compute_bwd_s: cB, comm_fwd_s: commF, comm_bwd_s: commB,
        hidden_fwd: hidden(ringRow.fwd_s, cF, commF), hidden_bwd: hidden(ringRow.bwd_s, cB, commB) });
    }

    // The windowed check (windowErrors) on every rank, the worst numbers of all ranks reported.
    let pass = true;
    if (!o['no-check']) {
      const kf = await gatherFull(group, k, layout), vf = await gatherFull(group, v, layout);
      owned.push(kf, vf);
      const tol = dtype === 'f32' ? 1e-4 : 3e-2;
      for (const x of kept) {
        const e = await windowErrors({ q, dout, kFull: kf, vFull: vf, out: x.out, lse: x.lse, dq: x.dq, S, rank, world: W, layout, causal });
        const all = await gatherNumbers(group, dev, [e.out, e.lse, e.dq]);
        const mo = Math.max(...all.map((a) => a[0])), ml = Math.max(...all.map((a) => a[1])), md = Math.max(...all.map((a) => a[2]));
        const ok = mo <= tol && md <= 1.5 * tol && ml <= 1e-3;
        pass &&= ok;
        rows.find((r) => r.algorithm === x.algo)!.check = { out: mo, lse: ml, dq: md, tol, pass: ok };
      }
    }
    for (const x of kept) for (const t of [x.out, x.lse, x.dq]) t.dispose();

    // The 1-GPU yardstick on rank 0 (the others wait): single-device attention over the whole sequence.
    let single: { fwd_s: number; bwd_s: number; peak_gib: number } | undefined;
    if (o.baseline) {
      const full = [await gatherFull(group, q, layout), await gatherFull(group, k, layout), await gatherFull(group, v, layout), await gatherFull(group, dout, layout)];
      try {
        if (rank === 0) {
          const [qf, kf2, vf2, df] = full;
          const oo = { causal };
          await synchronize(dev);
          resetPeakMemory(dev);
          let f!: { out: Tensor; lse: Tensor };
          const fs1 = await slowestRank(dev, undefined, async () => { f = attention.forward(qf, kf2, vf2, oo); });
          const bs1 = await slowestRank(dev, undefined, async () => { const g = attention.backward(df, qf, kf2, vf2, f.out, f.lse, oo); for (const t of [g.dq, g.dk, g.dv]) t.dispose(); });
          f.out.dispose();
          f.lse.dispose();
          single = { fwd_s: fs1, bwd_s: bs1, peak_gib: memory(dev).peak / GiB };
          for (const r of rows) { r.speedup_fwd = fs1 / r.fwd_s; r.speedup_bwd = bs1 / r.bwd_s; }
        }
      } finally {
        for (const t of full) t.dispose();
      }
      if (group) await group.barrier({ timeoutMs: 24 * 3600e3 });  // rank 0's single-device run can take minutes
    }

    if (rank === 0) {
      const pct = (x?: number) => (x === undefined ? '-' : `${(x * 100).toFixed(0)} %`);
      const num = (x?: number, f = 3) => (x === undefined ? '-' : x.toFixed(f));
      const show = o.json ? (x: string) => io.err(x) : (x: string) => io.out(x);  // --json: stdout holds the JSON alone
      show(table(['algorithm', 'fwd s', 'bwd s', 'fwd TF/s/GPU', 'bwd TF/s/GPU', 'peak GiB/GPU', 'hidden fwd', 'hidden bwd', 'speedup fwd', 'speedup bwd', 'check'],
        rows.map((r) => [r.algorithm, r.fwd_s, r.bwd_s, r.fwd_tflops_per_gpu, r.bwd_tflops_per_gpu, r.peak_gib_max, pct(r.hidden_fwd), pct(r.hidden_bwd),
          num(r.speedup_fwd, 2), num(r.speedup_bwd, 2),
          r.check ? `${r.check.pass ? 'ok' : 'FAIL'} (out ${r.check.out.toExponential(1)}, dq ${r.check.dq.toExponential(1)}, lse ${r.check.lse.toExponential(1)})` : '-'])));
      if (single) show(`single device (rank 0): fwd ${single.fwd_s.toFixed(4)} s, bwd ${single.bwd_s.toFixed(4)} s, peak ${single.peak_gib.toFixed(2)} GiB`);
      const result = { bench: 'ring-dist', date: new Date().toISOString(), world: W, device: dev, backend: group?.backend ?? 'none', seq: S, headsQ: hq,
        headsKV: hkv, headDim: d, dtype, causal, layout, reps, single, rows };
      if (o.out) fs.writeFileSync(String(o.out), JSON.stringify(result, null, 2) + '\n');
      if (o.json) io.out(JSON.stringify(result));
      if (!pass) io.err('bench ring-dist: the check FAILED (see the table)');
    }
    return pass ? 0 : 1;
  } finally {
    for (const t of owned) t.dispose();
    await group?.destroy();
  }
}
