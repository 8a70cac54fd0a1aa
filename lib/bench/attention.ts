// `megabeam bench attention`: forward/backward time, TFLOP/s and peak memory of flash attention at
// long-context sizes (Mistral-7B attention shapes by default). PyTorch's yardstick numbers come from
// bench/torch_attention.py in the same device run (bench/run-device.sh); this file has no Python.
import * as fs from 'fs';
import * as path from 'path';
import { attention } from '../attention';
import { cuda } from '../device';
import { Dtype } from '../dtype';
import { Tensor, memory, randn, resetPeakMemory, synchronize } from '../tensor';
import { GiB, IO, intList, median, parseArgs, table, timed, withProgress } from './util';

export interface AttentionBenchRow {
  device: string; seq: number; batch: number; headsQ: number; headsKV: number; headDim: number; dtype: Dtype;
  causal: boolean; fwd_s: number; bwd_s: number; fwd_tflops: number; bwd_tflops: number; peak_gib: number; reps: number;
}

/** Causal attention FLOPs: 4·S²·d·hq·b / 2 forward; backward counted as 2.5× forward. */
export function attentionFlops(seqQ: number, seqK: number, headsQ: number, headDim: number, batch: number, causal: boolean): number {
  const f = 4 * seqQ * seqK * headDim * headsQ * batch;
  return causal ? f / 2 : f;
}

async function writeRaw(file: string, t: Tensor): Promise<void> {
  const a = await t.toRaw();
  fs.writeFileSync(file, Buffer.from(a.buffer, a.byteOffset, a.byteLength));
}

const HELP = `usage: megabeam bench attention [options]
  --seqs 16k,64k,128k,512k   sequence lengths (default: those on a GPU, 4k on the CPU)
  --device cuda|cpu          (default: cuda when available)
  --heads-q 32 --heads-kv 8 --head-dim 128 --batch 1 --dtype bf16 --non-causal
  --reps N                   timed repetitions (default: 5 below 128K, 2 up to 128K, 1 above)
  --json FILE                write the rows as JSON
  --dump DIR                 also write inputs and results of the first size (raw) for bench/torch_attention.py check
`;

export async function benchAttention(argv: string[], io: IO): Promise<number> {
  const { opts } = parseArgs(argv);
  if (opts.help) { io.out(HELP); return 0; }
  const known = new Set(['seqs', 'device', 'heads-q', 'heads-kv', 'head-dim', 'batch', 'dtype', 'non-causal', 'reps', 'json', 'dump', 'help']);
  for (const k of Object.keys(opts)) if (!known.has(k)) { io.err(`bench attention: unknown option --${k}\n${HELP}`); return 2; }
  const device = (opts.device as string) ?? (cuda.isAvailable() ? 'cuda' : 'cpu');
  const onGpu = device !== 'cpu';
  const seqs = intList(opts.seqs, onGpu ? [16384, 65536, 131072, 524288] : [4096]);
  const hq = Number(opts['heads-q'] ?? (onGpu ? 32 : 8));
  const hkv = Number(opts['heads-kv'] ?? (onGpu ? 8 : 2));
  const d = Number(opts['head-dim'] ?? 128);
  const b = Number(opts.batch ?? 1);
  const dtype = (opts.dtype as Dtype) ?? 'bf16';
  const causal = !opts['non-causal'];
  const rows: AttentionBenchRow[] = [];
  let rate = 0;  // FLOP/s seen so far, for the progress bar's estimate
  for (const [si, S] of seqs.entries()) {
    const reps = opts.reps !== undefined ? Number(opts.reps) : S < 131072 ? 5 : S <= 131072 ? 2 : 1;
    const fl = attentionFlops(S, S, hq, d, b, causal);
    await synchronize(device as 'cpu');
    resetPeakMemory(device as 'cpu');
    const seed = 1000 + si;
    const q = randn([b, S, hq, d], { dtype, device: device as 'cpu', seed });
    const k = randn([b, S, hkv, d], { dtype, device: device as 'cpu', seed: seed + 1 });
    const v = randn([b, S, hkv, d], { dtype, device: device as 'cpu', seed: seed + 2 });
    const dout = randn([b, S, hq, d], { dtype, device: device as 'cpu', seed: seed + 3 });
    const o = { causal };
    // Warm-up (module load, allocator) at small sizes only: at 512K one pass is seconds.
    if (S <= 131072) {
      const w = attention.forward(q, k, v, o);
      const g = attention.backward(dout, q, k, v, w.out, w.lse, o);
      for (const x of [w.out, w.lse, g.dq, g.dk, g.dv]) x.dispose();
    }
    const fwdT: number[] = [], bwdT: number[] = [];
    for (let r = 0; r < reps; r++) {
      let res!: { out: Tensor; lse: Tensor };
      fwdT.push(await withProgress(`S=${S} fwd ${r + 1}/${reps}`, rate ? fl / rate : 0, () =>
        timed(device as 'cpu', () => { res = attention.forward(q, k, v, o); })));
      rate = fl / fwdT[fwdT.length - 1];
      let g!: { dq: Tensor; dk: Tensor; dv: Tensor };
      bwdT.push(await withProgress(`S=${S} bwd ${r + 1}/${reps}`, (2.5 * fl) / (rate * 0.7), () =>
        timed(device as 'cpu', () => { g = attention.backward(dout, q, k, v, res.out, res.lse, o); })));
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
    await synchronize(device as 'cpu');
    const peak = memory(device as 'cpu').peak / GiB;
    for (const x of [q, k, v, dout]) x.dispose();
    const fwd = median(fwdT), bwd = median(bwdT);
    const row: AttentionBenchRow = {
      device: onGpu ? (cuda.devices()[0]?.name ?? device) : 'cpu', seq: S, batch: b, headsQ: hq, headsKV: hkv, headDim: d, dtype, causal,
      fwd_s: fwd, bwd_s: bwd, fwd_tflops: fl / fwd / 1e12, bwd_tflops: (2.5 * fl) / bwd / 1e12, peak_gib: peak, reps,
    };
    rows.push(row);
    io.err(`S=${S}: fwd ${fwd.toFixed(4)} s (${row.fwd_tflops.toFixed(1)} TFLOP/s), bwd ${bwd.toFixed(4)} s (${row.bwd_tflops.toFixed(1)} TFLOP/s), peak ${peak.toFixed(2)} GiB`);
  }
  io.out(`\nflash attention, ${dtype}, ${causal ? 'causal' : 'full'}, batch ${b}, ${hq} q heads / ${hkv} kv heads, d=${d}, on ${rows[0]?.device}`);
  io.out(table(['seq', 'fwd s', 'fwd TFLOP/s', 'bwd s', 'bwd TFLOP/s', 'peak GiB'],
    rows.map((r) => [String(r.seq), r.fwd_s, r.fwd_tflops, r.bwd_s, r.bwd_tflops, r.peak_gib])));
  if (opts.json) {
    fs.mkdirSync(path.dirname(String(opts.json)), { recursive: true });
    fs.writeFileSync(String(opts.json), JSON.stringify({ date: new Date().toISOString(), rows }, null, 2));
  }
  return 0;
}
