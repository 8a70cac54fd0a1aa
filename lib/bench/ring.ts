// `megabeam bench ring`: the compute of sequence-parallel (ring) attention with W virtual ranks on one GPU.
// Every rank's blocks run on the same stream, so each rank's work is timed on its own (synchronize before
// and after each step): per rank and step the compute time, the sum over all ranks against one single-GPU
// attention call over the whole sequence (the bar: ≤ 1.08× for W = 2, 4, 8, forward and backward), the
// slowest rank's share (1/W is perfect balance) and the memory one rank needs. No communication is timed
// here (the ranks share one device); the transfer sizes go into the JSON for the scaling model
// (`megabeam bench ring --model FILE`, docs/ring.md).
import * as fs from 'fs';
import { attention } from '../attention';
import { cuda } from '../device';
import { Dtype, dtypeSize } from '../dtype';
import { BackwardBlocks, ForwardBlocks, RingLayout, kvGradAccumulators, rankContext, shard } from '../ring';
import { Tensor, memory, randn, resetPeakMemory, synchronize } from '../tensor';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, HEADS_FLAG, HEAD_DIM_FLAG, JSON_FLAG, KV_HEADS_FLAG, OUT_FLAG, checkHeads, checkOutputPath, resolveDevice } from '../cli/common';
import { GiB, fmt, table, timed, withProgress } from './util';

export const command: Command = {
  usage: 'megabeam bench ring [options]',
  description: `Ring attention on virtual ranks of one device: each rank's compute per step against one single-device
attention (bar: sum/single <= 1.08). --model FILE prints the scaling model (docs/ring.md) from a JSON
written by --out, instead of running a benchmark.`,
  flags: {
    world: { type: 'sizes', min: 1, max: 1024, metavar: 'W,W,...', help: 'virtual ranks (one or a list)', default: '2,4,8' },
    seq: { type: 'size', min: 1, max: 2 ** 26, help: 'full sequence length', default: '512k on a GPU, 2k on the CPU' },
    heads: { ...HEADS_FLAG, default: '32 on a GPU, 8 on the CPU' },
    'kv-heads': { ...KV_HEADS_FLAG, default: '8 on a GPU, 2 on the CPU' },
    'head-dim': { ...HEAD_DIM_FLAG, default: '128 on a GPU, 64 on the CPU' },
    batch: { type: 'int', min: 1, max: 65536, help: 'batch size', default: '1' },
    dtype: { type: 'choice', choices: ['bf16', 'f16', 'f32'], help: 'element type', default: 'bf16 on a GPU, f32 on the CPU' },
    layout: { type: 'choice', choices: ['zigzag', 'contiguous'], help: 'sequence sharding', default: 'zigzag' },
    'non-causal': { type: 'bool', help: 'full (non-causal) attention' },
    'no-bwd': { type: 'bool', help: 'forward only' },
    device: DEVICE_FLAG,
    json: JSON_FLAG,
    out: OUT_FLAG,
    model: { type: 'string', metavar: 'FILE', help: 'no benchmark: print the scaling model from a JSON written by --out' },
    'nvlink-gbs': { type: 'number', min: 1e-9, help: 'model: NVLink GB/s', default: '450' },
    'net-gbs': { type: 'number', min: 1e-9, help: 'model: network GB/s', default: '50' },
    efficiency: { type: 'number', min: 1e-9, max: 1, help: 'model: link efficiency', default: '0.8' },
    'latency-us': { type: 'number', min: 0, help: 'model: latency per step (µs)', default: '15' },
  },
  run: benchRingRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchRing(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench ring', argv, io);
}

export interface RankTiming { rank: number; total_s: number; steps_s: number[]; calls: number; work_gib: number }
export interface PassResult { ranks: RankTiming[]; sum_s: number; ratio: number; slowest_share: number; pass: boolean }
export interface RingBenchWorld {
  world: number; shard_len: number; kv_bytes_per_step: number; dkv_bytes_per_step: number;
  fwd: PassResult; bwd: PassResult | null; est_peak_gib_per_gpu: number;
}
export interface RingBenchResult {
  date: string; device: string; seq: number; batch: number; headsQ: number; headsKV: number; headDim: number;
  dtype: Dtype; causal: boolean; layout: RingLayout; single: { fwd_s: number; bwd_s: number | null; peak_gib: number };
  bar: number; worlds: RingBenchWorld[];
}

const BAR = 1.08;

function pass(ranks: RankTiming[], single: number, W: number): PassResult {
  const sum = ranks.reduce((a, r) => a + r.total_s, 0);
  const slow = Math.max(...ranks.map((r) => r.total_s));
  return { ranks, sum_s: sum, ratio: sum / single, slowest_share: slow / sum, pass: W === 1 || sum / single <= BAR };
}

async function benchRingRun(opts: FlagValues, io: CliIO): Promise<number> {
  if (opts.model !== undefined) return printModel(String(opts.model), opts, io);

  const device = resolveDevice(opts.device);
  const dev = device;
  const onGpu = device !== 'cpu';
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  const worlds = (opts.world as number[] | undefined) ?? [2, 4, 8];
  const S = (opts.seq as number | undefined) ?? (onGpu ? 524288 : 2048);
  const hq = (opts.heads as number | undefined) ?? (onGpu ? 32 : 8);
  const hkv = (opts['kv-heads'] as number | undefined) ?? (onGpu ? 8 : 2);
  checkHeads(hq, hkv);
  const d = (opts['head-dim'] as number | undefined) ?? (onGpu ? 128 : 64);
  const B = (opts.batch as number | undefined) ?? 1;
  const dtype = ((opts.dtype as string | undefined) ?? (onGpu ? 'bf16' : 'f32')) as Dtype;
  const layout = ((opts.layout as string | undefined) ?? 'zigzag') as RingLayout;
  const causal = !opts['non-causal'];
  const doBwd = !opts['no-bwd'];
  const esize = dtypeSize(dtype);

  const q = randn([B, S, hq, d], { dtype, device: dev, seed: 7 });
  const k = randn([B, S, hkv, d], { dtype, device: dev, seed: 8 });
  const v = randn([B, S, hkv, d], { dtype, device: dev, seed: 9 });
  const dout = randn([B, S, hq, d], { dtype, device: dev, seed: 10 });
  const o = { causal };

  // The yardstick: one single-GPU call over the whole sequence (a warm-up first at small sizes).
  if (S <= 131072) {
    const w = attention.forward(q, k, v, o);
    if (doBwd) { const g = attention.backward(dout, q, k, v, w.out, w.lse, o); for (const x of [g.dq, g.dk, g.dv]) x.dispose(); }
    for (const x of [w.out, w.lse]) x.dispose();
  }
  await synchronize(dev);
  resetPeakMemory(dev);
  const base = memory(dev).allocated;
  let ref!: { out: Tensor; lse: Tensor };
  const fwdSingle = await withProgress(`single fwd S=${S}`, 0, () => timed(dev, () => { ref = attention.forward(q, k, v, o); }));
  let bwdSingle: number | null = null;
  if (doBwd) {
    bwdSingle = await withProgress(`single bwd S=${S}`, fwdSingle * 2.5, () => timed(dev, () => {
      const g = attention.backward(dout, q, k, v, ref.out, ref.lse, o);
      for (const x of [g.dq, g.dk, g.dv]) x.dispose();
    }));
  }
  await synchronize(dev);
  const singlePeak = (memory(dev).peak - base) / GiB;
  for (const x of [ref.out, ref.lse]) x.dispose();
  io.err(`single call S=${S}: fwd ${fwdSingle.toFixed(4)} s${bwdSingle !== null ? `, bwd ${bwdSingle.toFixed(4)} s` : ''}`);

  const out: RingBenchWorld[] = [];
  for (const W of worlds) {
    const sh = (x: Tensor, r: number) => shard(x, r, W, { layout });
    const ks = Array.from({ length: W }, (_, r) => sh(k, r));
    const vs = Array.from({ length: W }, (_, r) => sh(v, r));
    const S_loc = S / W;
    const fwdRanks: RankTiming[] = [], bwdRanks: RankTiming[] = [];
    const saved: { out: Tensor; lse: Tensor }[] = [];
    for (let r = 0; r < W; r++) {
      const qr = sh(q, r);
      const ctx = rankContext(r, W, qr, ks[r], vs[r], { causal, layout, algorithm: 'ring' });
      await synchronize(dev);
      resetPeakMemory(dev);
      const before = memory(dev).allocated;
      const steps: number[] = [];
      const st = new ForwardBlocks(ctx, qr);
      await withProgress(`W=${W} rank ${r} fwd`, fwdSingle / W, async () => {
        for (let s = 0; s < W; s++) {
          const src = (r - s + W) % W;
          steps.push(await timed(dev, () => st.step(ks[src], vs[src], src)));
        }
        let res!: { out: Tensor; lse: Tensor };
        steps[steps.length - 1] += await timed(dev, () => { res = st.finish(); });
        saved.push(res);
      });
      const work = (memory(dev).peak - before) / GiB;
      fwdRanks.push({ rank: r, total_s: steps.reduce((a, b) => a + b, 0), steps_s: steps, calls: st.calls, work_gib: work });
      qr.dispose();
    }
    if (doBwd) {
      for (let r = 0; r < W; r++) {
        const qr = sh(q, r), dr = sh(dout, r);
        const ctx = rankContext(r, W, qr, ks[r], vs[r], { causal, layout, algorithm: 'ring' });
        await synchronize(dev);
        resetPeakMemory(dev);
        const before = memory(dev).allocated;
        const steps: number[] = [];
        const st = new BackwardBlocks(ctx, dr, qr, saved[r].out, saved[r].lse);
        // One accumulator set stands for the travelling one (same adds, same sizes).
        const acc = kvGradAccumulators(ctx);
        await withProgress(`W=${W} rank ${r} bwd`, (bwdSingle ?? 0) / W, async () => {
          for (let s = 0; s < W; s++) {
            const src = (r - s + W) % W;
            steps.push(await timed(dev, () => BackwardBlocks.accumulate(acc.acc, st.step(ks[src], vs[src], src))));
          }
          steps[steps.length - 1] += await timed(dev, () => { st.finishDq().dispose(); });
        });
        const work = (memory(dev).peak - before) / GiB;
        acc.dispose();
        bwdRanks.push({ rank: r, total_s: steps.reduce((a, b) => a + b, 0), steps_s: steps, calls: st.calls, work_gib: work });
        qr.dispose();
        dr.dispose();
      }
    }
    for (const x of [...ks, ...vs, ...saved.flatMap((s) => [s.out, s.lse])]) x.dispose();
    const kvBytes = 2 * B * S_loc * hkv * d * esize;
    // One GPU of a real ring holds its shards (q, k, v, dout, out in dtype; lse f32), two K/V receive
    // buffers, two fp32 dK/dV accumulator sets in backward, plus the per-rank working memory measured.
    const shardBytes = B * S_loc * (3 * hq * d * esize + 2 * hkv * d * esize) + B * hq * S_loc * 4;
    const buffers = 2 * kvBytes + (doBwd ? 2 * (2 * B * S_loc * hkv * d * 4) : 0);
    const workMax = Math.max(...fwdRanks.map((x) => x.work_gib), ...bwdRanks.map((x) => x.work_gib));
    out.push({
      world: W, shard_len: S_loc, kv_bytes_per_step: kvBytes, dkv_bytes_per_step: 2 * B * S_loc * hkv * d * 4,
      fwd: pass(fwdRanks, fwdSingle, W), bwd: doBwd ? pass(bwdRanks, bwdSingle!, W) : null,
      est_peak_gib_per_gpu: (shardBytes + buffers) / GiB + workMax,
    });
  }
  for (const x of [q, k, v, dout]) x.dispose();

  const devName = onGpu ? (cuda.devices()[0]?.name ?? device) : 'cpu';
  const result: RingBenchResult = {
    date: new Date().toISOString(), device: devName, seq: S, batch: B, headsQ: hq, headsKV: hkv, headDim: d, dtype, causal, layout,
    single: { fwd_s: fwdSingle, bwd_s: bwdSingle, peak_gib: singlePeak }, bar: BAR, worlds: out,
  };
  io.out(`\nring attention compute, W virtual ranks on one ${devName}: ${dtype}, ${causal ? 'causal' : 'full'}, ${layout}, ` +
    `S=${S}, batch ${B}, ${hq} q / ${hkv} kv heads, d=${d}`);
  io.out(`single call: fwd ${fmt(fwdSingle)} s${bwdSingle !== null ? `, bwd ${fmt(bwdSingle)} s` : ''}; bar: sum of ranks <= ${BAR}× single`);
  const rows: (string | number)[][] = [];
  for (const w of out) {
    for (const [name, p] of [['fwd', w.fwd], ['bwd', w.bwd]] as const) {
      if (!p) continue;
      rows.push([`W=${w.world} ${name}`, p.sum_s, p.ratio, Math.max(...p.ranks.map((x) => x.total_s)), p.slowest_share,
        1 / w.world, String(p.ranks.reduce((a, x) => a + x.calls, 0)), w.est_peak_gib_per_gpu, p.pass ? 'yes' : 'NO']);
    }
  }
  io.out(table(['pass', 'sum s', 'sum/single', 'slowest s', 'slowest share', 'ideal', 'calls', 'GiB/GPU est', '<= bar'], rows));
  if (opts.out !== undefined) {
    fs.writeFileSync(String(opts.out), JSON.stringify(result, null, 2));
    io.err(`wrote ${opts.out}`);
  }
  if (opts.json) io.json!(result);
  return out.every((w) => w.fwd.pass && (w.bwd?.pass ?? true)) ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------------
// Scaling model (docs/ring.md): from measured per-step compute and the transfer sizes.

export interface ModelRow {
  world: number; link: string; pass: 'fwd' | 'bwd'; step_compute_s: number; step_comm_s: number; step_s: number;
  hidden: number; total_s: number; compute_only_s: number; crossover_seq: number;
}

/**
 * Per step (ring): compute C = the slowest rank's mean step time (steps ≥ 1: every step but the local one
 * carries a transfer), transfer T = α + bytes / (BW·eff) with bytes = K+V of one shard (forward) or K+V plus
 * the fp32 dK/dV accumulators (backward). Overlapped: step time max(C, T); hidden fraction min(1, C / T).
 * Compute per step ∝ S_loc² and transfer ∝ S_loc, so the shard length where communication stops hiding is
 * S_loc* = S_loc · x with C·x² = α + T_bw·x; the full sequence length W · S_loc*.
 */
export function scalingModel(r: RingBenchResult, links: { name: string; gbs: number }[], eff: number, latencyS: number): ModelRow[] {
  const rows: ModelRow[] = [];
  for (const w of r.worlds) {
    if (w.world < 2) continue;
    for (const [name, p] of [['fwd', w.fwd], ['bwd', w.bwd]] as const) {
      if (!p) continue;
      const slow = p.ranks.reduce((a, x) => (x.total_s > a.total_s ? x : a));
      const later = slow.steps_s.slice(1);
      const C = later.reduce((a, b) => a + b, 0) / Math.max(1, later.length);
      const bytes = w.kv_bytes_per_step + (name === 'bwd' ? w.dkv_bytes_per_step : 0);
      for (const link of links) {
        const tBw = bytes / (link.gbs * 1e9 * eff);
        const T = latencyS + tBw;
        const step = Math.max(C, T);
        const total = slow.steps_s[0] + step * (w.world - 1) + (name === 'bwd' ? T : 0);  // bwd: last dK/dV hop
        rows.push({
          world: w.world, link: link.name, pass: name, step_compute_s: C, step_comm_s: T, step_s: step,
          hidden: Math.min(1, C / T), total_s: total, compute_only_s: slow.total_s,
          // C·x² = α + T_bw·x with x = S'/S_loc (compute ∝ S², transfer ∝ S plus a fixed latency)
          crossover_seq: w.world * w.shard_len * (tBw + Math.sqrt(tBw * tBw + 4 * C * latencyS)) / (2 * C),
        });
      }
    }
  }
  return rows;
}

function printModel(file: string, opts: FlagValues, io: CliIO): number {
  const r = JSON.parse(fs.readFileSync(file, 'utf8')) as RingBenchResult;
  const eff = Number(opts.efficiency ?? 0.8);
  const lat = Number(opts['latency-us'] ?? 15) * 1e-6;
  const links = [
    { name: `NVLink ${opts['nvlink-gbs'] ?? 450} GB/s`, gbs: Number(opts['nvlink-gbs'] ?? 450) },
    { name: `net ${Number(opts['net-gbs'] ?? 50) * 8} Gb/s`, gbs: Number(opts['net-gbs'] ?? 50) },
  ];
  const rows = scalingModel(r, links, eff, lat);
  io.out(`scaling model from ${file} (${r.device}, S=${r.seq}, ${r.headsQ}/${r.headsKV} heads, d=${r.headDim}, ${r.dtype}); ` +
    `link efficiency ${eff}, latency ${opts['latency-us'] ?? 15} µs per step`);
  io.out(table(['W', 'link', 'pass', 'compute/step s', 'comm/step s', 'step s', 'comm hidden', 'total s', 'compute-only s', 'S where comm stops hiding'],
    rows.map((x) => [String(x.world), x.link, x.pass, x.step_compute_s, x.step_comm_s, x.step_s, `${(100 * x.hidden).toFixed(0)}%`,
      x.total_s, x.compute_only_s, String(Math.round(x.crossover_seq))])));
  if (opts.json) io.json!({ source: file, efficiency: eff, latency_s: lat, rows });
  return 0;
}
