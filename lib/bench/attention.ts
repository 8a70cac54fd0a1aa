// `megabeam bench attention`: forward/backward time, TFLOP/s and peak memory of flash attention at
// long-context sizes (Mistral-7B attention shapes by default). PyTorch's yardstick numbers come from
// bench/torch_attention.py in the same device run (bench/run-device.sh); this file has no Python.
import * as fs from 'fs';
import * as path from 'path';
import { attention } from '../attention';
import { rope as ropeOps } from '../rope';
import { DeviceLike, cuda } from '../device';
import { Dtype } from '../dtype';
import { Tensor, memory, randn, resetPeakMemory, synchronize } from '../tensor';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, HEADS_FLAG, HEAD_DIM_FLAG, JSON_FLAG, KV_HEADS_FLAG, OUT_FLAG, REPS_FLAG, checkHeads, checkOutputPath, resolveDevice } from '../cli/common';
import { GiB, batched, median, table, timed, withProgress } from './util';

export interface AttentionBenchRow {
  device: string; seq: number; batch: number; headsQ: number; headsKV: number; headDim: number; dtype: Dtype;
  causal: boolean; fwd_s: number; bwd_s: number; fwd_tflops: number; bwd_tflops: number; peak_gib: number; reps: number;
  /**
   * --rope: the passes with attention's rope option (q, k rotated inside the call) and without, per call, timed
   * alike in batches of rope_calls calls between device syncs (rope_rounds rounds, the order alternating), and the
   * extra time in % from the medians and from the fastest batches (_min_pct); the plain pass's fastest and
   * slowest batch; rope_kernel_s: the RoPE of q and k alone (rope.applyQK, what the option adds on the device).
   */
  fwd_rope_s?: number; bwd_rope_s?: number; fwd_plain_batched_s?: number; bwd_plain_batched_s?: number;
  fwd_rope_overhead_pct?: number; bwd_rope_overhead_pct?: number; rope_calls_fwd?: number; rope_calls_bwd?: number;
  fwd_rope_overhead_min_pct?: number; bwd_rope_overhead_min_pct?: number; fwd_plain_min_s?: number; fwd_plain_max_s?: number;
  rope_kernel_s?: number; rope_kernel_pct?: number; rope_rounds?: number;
}

/** The RoPE the --rope timings use (MegaBeam's base; the cost does not depend on it). */
export const BENCH_ROPE = { base: 75e6 };

/** Causal attention FLOPs: 4·S²·d·hq·b / 2 forward; backward counted as 2.5× forward. */
export function attentionFlops(seqQ: number, seqK: number, headsQ: number, headDim: number, batch: number, causal: boolean): number {
  const f = 4 * seqQ * seqK * headDim * headsQ * batch;
  return causal ? f / 2 : f;
}

const pct = (x: number): string => `${x >= 0 ? '+' : ''}${x.toFixed(2)} %`;

async function writeRaw(file: string, t: Tensor): Promise<void> {
  const a = await t.toRaw();
  fs.writeFileSync(file, Buffer.from(a.buffer, a.byteOffset, a.byteLength));
}

export const command: Command = {
  usage: 'megabeam bench attention [options]',
  description: `Flash attention forward and backward: time, TFLOP/s and peak memory per sequence length
(Mistral-7B attention shapes by default). PyTorch's numbers come from bench/torch_attention.py.
--rope also times each pass with the rope option (RoPE of q and k inside the call) and prints its overhead,
the plain pass's spread between batches and the rope kernel alone.`,
  flags: {
    seqs: { type: 'sizes', min: 1, max: 2 ** 24, help: 'sequence lengths', default: '16k,64k,128k,512k on a GPU, 4k on the CPU' },
    device: DEVICE_FLAG,
    heads: { ...HEADS_FLAG, default: '32 on a GPU, 8 on the CPU' },
    'kv-heads': { ...KV_HEADS_FLAG, default: '8 on a GPU, 2 on the CPU' },
    'head-dim': { ...HEAD_DIM_FLAG, default: '128' },
    batch: { type: 'int', min: 1, max: 65536, help: 'batch size', default: '1' },
    dtype: { type: 'choice', choices: ['bf16', 'f16', 'f32'], help: 'element type (CUDA: bf16, f16)', default: 'bf16' },
    'non-causal': { type: 'bool', help: 'full (non-causal) attention' },
    rope: { type: 'bool', help: 'also time forward/backward with the rope option and print the overhead %' },
    reps: { ...REPS_FLAG, default: '5 below 128K, 2 at 128K, 1 above' },
    json: JSON_FLAG,
    out: OUT_FLAG,
    dump: { type: 'string', metavar: 'DIR', help: 'write inputs and results of the first size (raw) for bench/torch_attention.py check' },
  },
  run: benchAttentionRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchAttention(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench attention', argv, io);
}

async function benchAttentionRun(opts: FlagValues, io: CliIO): Promise<number> {
  const device = resolveDevice(opts.device);
  const onGpu = device !== 'cpu';
  const seqs = (opts.seqs as number[] | undefined) ?? (onGpu ? [16384, 65536, 131072, 524288] : [4096]);
  const hq = (opts.heads as number | undefined) ?? (onGpu ? 32 : 8);
  const hkv = (opts['kv-heads'] as number | undefined) ?? (onGpu ? 8 : 2);
  checkHeads(hq, hkv);
  const d = (opts['head-dim'] as number | undefined) ?? 128;
  const b = (opts.batch as number | undefined) ?? 1;
  const dtype = ((opts.dtype as string | undefined) ?? 'bf16') as Dtype;
  const causal = !opts['non-causal'];
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  const rows: AttentionBenchRow[] = [];
  let rate = 0;  // FLOP/s seen so far, for the progress bar's estimate
  for (const [si, S] of seqs.entries()) {
    const reps = opts.reps !== undefined ? (opts.reps as number) : S < 131072 ? 5 : S <= 131072 ? 2 : 1;
    const fl = attentionFlops(S, S, hq, d, b, causal);
    await synchronize(device);
    resetPeakMemory(device);
    const seed = 1000 + si;
    const q = randn([b, S, hq, d], { dtype, device: device, seed });
    const k = randn([b, S, hkv, d], { dtype, device: device, seed: seed + 1 });
    const v = randn([b, S, hkv, d], { dtype, device: device, seed: seed + 2 });
    const dout = randn([b, S, hq, d], { dtype, device: device, seed: seed + 3 });
    const o = { causal };
    const ro = opts.rope ? { causal, rope: BENCH_ROPE } : null;
    // Warm-up (module load, allocator) at small sizes only: at 512K one pass is seconds.
    if (S <= 131072) {
      for (const oo of ro ? [o, ro] : [o]) {
        const w = attention.forward(q, k, v, oo);
        const g = attention.backward(dout, q, k, v, w.out, w.lse, oo);
        for (const x of [w.out, w.lse, g.dq, g.dk, g.dv]) x.dispose();
      }
    }
    const fwdT: number[] = [], bwdT: number[] = [];
    for (let r = 0; r < reps; r++) {
      let res!: { out: Tensor; lse: Tensor };
      fwdT.push(await withProgress(`S=${S} fwd ${r + 1}/${reps}`, rate ? fl / rate : 0, () =>
        timed(device, () => { res = attention.forward(q, k, v, o); })));
      rate = fl / fwdT[fwdT.length - 1];
      let g!: { dq: Tensor; dk: Tensor; dv: Tensor };
      bwdT.push(await withProgress(`S=${S} bwd ${r + 1}/${reps}`, (2.5 * fl) / (rate * 0.7), () =>
        timed(device, () => { g = attention.backward(dout, q, k, v, res.out, res.lse, o); })));
      if (opts.dump && si === 0 && r === 0) {
        const dir = String(opts.dump);
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, 'meta.json'), JSON.stringify({
          batch: b, seqQ: S, seqK: S, headsQ: hq, headsKV: hkv, headDim: d, dtype, causal, scale: 1 / Math.sqrt(d), qOffset: 0, kOffset: 0,
        }));
        const files: [string, Tensor][] = [['q', q], ['k', k], ['v', v], ['dout', dout], ['out', res.out], ['lse', res.lse], ['dq', g.dq], ['dk', g.dk], ['dv', g.dv]];
        for (const [name, t] of files) await writeRaw(path.join(dir, `${name}.bin`), t);
        io.err(`wrote inputs and results for S=${S} to ${dir}`);
      }
      for (const x of [res.out, res.lse, g.dq, g.dk, g.dv]) x.dispose();
    }
    const fwd = median(fwdT), bwd = median(bwdT);
    // The rope option's overhead is a few percent of a pass: both variants are timed the same way, in batches of
    // calls between device syncs (≥ ~50 ms a batch, so a 16K forward of ~3.6 ms is 14 calls; what the rope option
    // costs the host, option checks and two more launches, hides behind the device work as in a training step),
    // plain and rope batches interleaved so that clock and thermal drift hit both alike.
    // Below 128K a pass is short and its time moves between batches by up to ~15 % on an H200 (two clock or power
    // states): at least 9 rounds there, the order alternating (plain first, then rope first).
    const rounds = S < 131072 ? Math.max(reps, 9) : reps;
    const rope = ro ? await ropeOverhead(device, S, rounds, fwd, bwd, () => {
      const plain = attention.forward(q, k, v, o), rot = attention.forward(q, k, v, ro);
      return {
        fwd: () => { const x = attention.forward(q, k, v, o); x.out.dispose(); x.lse.dispose(); },
        fwdRope: () => { const x = attention.forward(q, k, v, ro); x.out.dispose(); x.lse.dispose(); },
        bwd: () => { const g = attention.backward(dout, q, k, v, plain.out, plain.lse, o); g.dq.dispose(); g.dk.dispose(); g.dv.dispose(); },
        bwdRope: () => { const g = attention.backward(dout, q, k, v, rot.out, rot.lse, ro); g.dq.dispose(); g.dk.dispose(); g.dv.dispose(); },
        ropeOnly: () => { const x = ropeOps.applyQK(q, k, BENCH_ROPE); x.q.dispose(); x.k.dispose(); },
        ropeBytes: q.nbytes + k.nbytes,
        dispose: () => { for (const x of [plain.out, plain.lse, rot.out, rot.lse]) x.dispose(); },
      };
    }) : undefined;
    await synchronize(device);
    const peak = memory(device).peak / GiB;
    for (const x of [q, k, v, dout]) x.dispose();
    const row: AttentionBenchRow = {
      device: onGpu ? (cuda.devices()[Number(device.slice(5))]?.name ?? device) : 'cpu', seq: S, batch: b, headsQ: hq, headsKV: hkv, headDim: d, dtype, causal,
      fwd_s: fwd, bwd_s: bwd, fwd_tflops: fl / fwd / 1e12, bwd_tflops: (2.5 * fl) / bwd / 1e12, peak_gib: peak, reps,
    };
    if (rope) Object.assign(row, rope);
    rows.push(row);
    io.err(`S=${S}: fwd ${fwd.toFixed(4)} s (${row.fwd_tflops.toFixed(1)} TFLOP/s), bwd ${bwd.toFixed(4)} s (${row.bwd_tflops.toFixed(1)} TFLOP/s), peak ${peak.toFixed(2)} GiB` +
      (rope ? `; batched, plain -> rope: fwd ${row.fwd_plain_batched_s!.toFixed(4)} -> ${row.fwd_rope_s!.toFixed(4)} s ` +
        `(${pct(row.fwd_rope_overhead_pct!)}), bwd ${row.bwd_plain_batched_s!.toFixed(4)} -> ${row.bwd_rope_s!.toFixed(4)} s (${pct(row.bwd_rope_overhead_pct!)})` : ''));
  }
  io.out(`\nflash attention, ${dtype}, ${causal ? 'causal' : 'full'}, batch ${b}, ${hq} q heads / ${hkv} kv heads, d=${d}, on ${rows[0]?.device}`);
  if (opts.rope) {
    io.out(table(['seq', 'fwd s', 'fwd+rope s', 'fwd overhead med / min', 'fwd spread', 'bwd s', 'bwd+rope s', 'bwd overhead med / min',
      'rope kernel', 'calls/batch', 'rounds', 'peak GiB'],
      rows.map((r) => [String(r.seq), r.fwd_plain_batched_s!, r.fwd_rope_s!, `${pct(r.fwd_rope_overhead_pct!)} / ${pct(r.fwd_rope_overhead_min_pct!)}`,
        `${pct(100 * (r.fwd_plain_max_s! / r.fwd_plain_min_s! - 1))}`, r.bwd_plain_batched_s!, r.bwd_rope_s!,
        `${pct(r.bwd_rope_overhead_pct!)} / ${pct(r.bwd_rope_overhead_min_pct!)}`, `${r.rope_kernel_s!.toExponential(2)} s (${r.rope_kernel_pct!.toFixed(2)} %)`,
        `${r.rope_calls_fwd}/${r.rope_calls_bwd}`, String(r.rope_rounds), r.peak_gib])));
    io.out(`rope option: ${JSON.stringify(BENCH_ROPE)}, positions 0..seq-1 (a composition today: RoPE kernel into temporaries, ` +
      'then attention; see README.md). Both columns per call, timed alike in batches between device syncs, the order ' +
      'alternating by round; overheads from the medians and from the fastest batches; fwd spread: the plain pass\'s ' +
      'slowest batch over its fastest (when it is large, trust the rope kernel column: the device time the option adds ' +
      'to the forward). Target: ≤ 3 % over attention alone.');
  } else {
    io.out(table(['seq', 'fwd s', 'fwd TFLOP/s', 'bwd s', 'bwd TFLOP/s', 'peak GiB'],
      rows.map((r) => [String(r.seq), r.fwd_s, r.fwd_tflops, r.bwd_s, r.bwd_tflops, r.peak_gib])));
  }
  const result = { date: new Date().toISOString(), rows };
  if (opts.out !== undefined) {
    fs.mkdirSync(path.dirname(path.resolve(String(opts.out))), { recursive: true });
    fs.writeFileSync(String(opts.out), JSON.stringify(result, null, 2));
    io.err(`wrote ${opts.out}`);
  }
  if (opts.json) io.json!(result);
  return 0;
}

interface RopePasses { fwd(): void; fwdRope(): void; bwd(): void; bwdRope(): void; ropeOnly(): void; ropeBytes: number; dispose(): void }

/** Calls per batch for a pass of `s` seconds: about 50 ms a batch, at most 50 calls. */
const callsPerBatch = (s: number): number => Math.max(1, Math.min(50, Math.ceil(0.05 / s)));

/**
 * Plain and rope passes timed alike (see the caller), `reps` rounds of one batch each, plain first in even rounds
 * and rope first in odd ones; medians and minima per call. Then the rope kernel alone (rope.applyQK of q and k).
 */
async function ropeOverhead(device: DeviceLike, S: number, reps: number, fwdS: number, bwdS: number,
  make: () => RopePasses): Promise<Partial<AttentionBenchRow>> {
  const ps = make();
  try {
    const fi = callsPerBatch(fwdS), bi = callsPerBatch(bwdS);
    const fP: number[] = [], fR: number[] = [], bP: number[] = [], bR: number[] = [];
    const pair = async (label: string, n: number, s: number, plain: () => void, rot: () => void, into: [number[], number[]], r: number) => {
      const runs: [string, () => void, number[]][] = [[label, plain, into[0]], [`${label}+rope`, rot, into[1]]];
      if (r % 2) runs.reverse();
      for (const [name, fn, out] of runs)
        out.push(await withProgress(`S=${S} ${name} ×${n} ${r + 1}/${reps}`, n * s, () => batched(device, n, fn)));
    };
    for (let r = 0; r < reps; r++) {
      await pair('fwd', fi, fwdS, ps.fwd, ps.fwdRope, [fP, fR], r);
      await pair('bwd', bi, bwdS, ps.bwd, ps.bwdRope, [bP, bR], r);
    }
    // The rope kernel is short: up to 50 calls per batch, a few batches. Each call's rotated copies stay allocated
    // until its work has run, so a batch holds at most ~2 GiB of them (one call at 512K).
    const ri = Math.max(1, Math.min(50, Math.floor(2 * GiB / ps.ropeBytes))), rk: number[] = [];
    for (let r = 0; r < 3; r++) rk.push(await batched(device, ri, ps.ropeOnly));
    const f = median(fP), fr = median(fR), b = median(bP), br = median(bR), k = median(rk);
    const fMin = Math.min(...fP), bMin = Math.min(...bP);
    return {
      fwd_plain_batched_s: f, fwd_rope_s: fr, bwd_plain_batched_s: b, bwd_rope_s: br,
      fwd_rope_overhead_pct: 100 * (fr / f - 1), bwd_rope_overhead_pct: 100 * (br / b - 1), rope_calls_fwd: fi, rope_calls_bwd: bi,
      fwd_rope_overhead_min_pct: 100 * (Math.min(...fR) / fMin - 1), bwd_rope_overhead_min_pct: 100 * (Math.min(...bR) / bMin - 1),
      fwd_plain_min_s: fMin, fwd_plain_max_s: Math.max(...fP), rope_kernel_s: k, rope_kernel_pct: 100 * k / f, rope_rounds: reps,
    };
  } finally {
    ps.dispose();
  }
}
