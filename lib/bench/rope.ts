// RoPE benchmark and precision analysis.
//   npx tsx bench/rope.ts [--device cuda] [--tokens 524288] [--heads 32] [--head-dim 128] [--dtype bf16]
//                         [--reps 10] [--json bench/out/rope.json]
//   npx tsx bench/rope.ts --angles      the angle-error table of docs/rope.md (CPU, no GPU needed)
// Bandwidth: rope.apply reads and writes the tensor once, so GB/s = 2 * bytes / time, set against a
// device-to-device copy of the same tensor (x.clone()) timed in the same run. Each timing is the median
// of --reps rounds of 8 back-to-back calls between device synchronisations.
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { rope, RopeApplyOptions } from '../rope';
import { cuda } from '../device';
import { Dtype } from '../dtype';
import { Tensor, randn, synchronize, tensor } from '../tensor';
import { defaultInvFreq } from '../theta';
import { IO, median, table } from './util';


const HELP = `usage: megabeam bench rope [options]
  --device cuda|cpu     (default: cuda when available)
  --tokens N            batch*seq tokens (default 524288 on a GPU, 16384 on the CPU)
  --heads 32 --kv-heads 8 --head-dim 128 --dtype bf16
  --reps N              timed rounds (median; default 10)
  --json FILE           default bench/out/rope-<device>.json
`;

/** Seconds per call of `fn`: median over rounds of `inner` calls bracketed by device syncs. */
async function perCall(device: 'cpu' | 'cuda', reps: number, inner: number, fn: () => void): Promise<number> {
  fn(); fn();
  await synchronize(device);
  const ts: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    for (let i = 0; i < inner; i++) fn();
    await synchronize(device);
    ts.push((performance.now() - t0) / 1e3 / inner);
  }
  return median(ts);
}

interface Row { case: string; bytes: number; rope_ms: number; rope_gbps: number; copy_ms: number; copy_gbps: number; ratio: number }

export async function benchRope(argv: string[], io: IO): Promise<number> {
  const opts: Record<string, string | true> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { io.err(`unexpected argument ${a}\n${HELP}`); return 2; }
    const k = a.slice(2);
    if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) opts[k] = argv[++i];
    else opts[k] = true;
  }
  const known = new Set(['device', 'tokens', 'heads', 'kv-heads', 'head-dim', 'dtype', 'reps', 'json', 'help']);
  for (const k of Object.keys(opts)) if (!known.has(k)) { io.err(`unknown option --${k}\n${HELP}`); return 2; }
  if (opts.help) { io.out(HELP); return 0; }

  const device = ((opts.device as string) ?? (cuda.isAvailable() ? 'cuda' : 'cpu')) as 'cpu' | 'cuda';
  const onGpu = device === 'cuda';
  const tokens = Number(opts.tokens ?? (onGpu ? 524288 : 16384));
  const H = Number(opts.heads ?? 32), HK = Number(opts['kv-heads'] ?? 8), D = Number(opts['head-dim'] ?? 128);
  const dtype = (opts.dtype ?? 'bf16') as Dtype;
  const reps = Number(opts.reps ?? 10);
  const inner = 8;
  const invFreq = defaultInvFreq(1e6, D);
  const dev = onGpu ? (cuda.devices()[0]?.name ?? 'cuda') : 'cpu';
  io.err(`rope bench on ${dev}: ${tokens} tokens x ${H} heads x ${D}, ${dtype}`);

  const x = randn([1, tokens, H, D], { dtype, device, seed: 1 });
  const k = randn([1, tokens, HK, D], { dtype, device, seed: 2 });
  const rows: Row[] = [];
  const copyOf = async (ts: Tensor[]): Promise<number> =>
    perCall(device, reps, inner, () => { for (const t of ts) t.clone().dispose(); });
  const measure = async (name: string, ts: Tensor[], fn: () => void, movedFrac = 1): Promise<void> => {
    const bytes = ts.reduce((a, t) => a + t.nbytes, 0);
    const s = await perCall(device, reps, inner, fn);
    const c = await copyOf(ts);
    const row: Row = {
      case: name, bytes, rope_ms: s * 1e3, rope_gbps: (2 * bytes * movedFrac) / s / 1e9,
      copy_ms: c * 1e3, copy_gbps: (2 * bytes) / c / 1e9, ratio: 0,
    };
    row.ratio = row.rope_gbps / row.copy_gbps;
    rows.push(row);
    io.err(`${name}: ${row.rope_ms.toFixed(3)} ms, ${row.rope_gbps.toFixed(0)} GB/s = ${(100 * row.ratio).toFixed(1)}% of copy`);
  };
  const o: RopeApplyOptions = { invFreq, positionOffset: 0 };
  await measure(`apply ${dtype} neox exact`, [x], () => rope.apply(x, o).dispose());
  await measure(`apply in place`, [x], () => { rope.apply(x, { ...o, inplace: true }); });
  await measure(`backward`, [x], () => rope.backward(x, o).dispose());
  await measure(`apply interleaved`, [x], () => rope.apply(x, { ...o, style: 'interleaved' }).dispose());
  await measure(`apply precision fp32`, [x], () => rope.apply(x, { ...o, precision: 'fp32' }).dispose());
  await measure(`apply precision bf16`, [x], () => rope.apply(x, { ...o, precision: 'bf16' }).dispose());
  await measure(`applyQK q${H} + k${HK}`, [x, k], () => { const r = rope.applyQK(x, k, o); r.q.dispose(); r.k.dispose(); });
  const pos = tensor(Int32Array.from({ length: tokens }, (_, i) => (i * 7) % 2 ** 22), { shape: [1, tokens], dtype: 'i32', device });
  await measure(`apply positions tensor`, [x], () => rope.apply(x, { invFreq, positions: pos }).dispose());
  const partial = { invFreq: defaultInvFreq(1e6, D / 2) };
  await measure(`apply partial rotary ${D / 2}`, [x], () => rope.apply(x, partial).dispose());
  await measure(`partial rotary in place`, [x], () => { rope.apply(x, { ...partial, inplace: true }); }, 0.5);
  for (const t of [x, k, pos]) t.dispose();

  io.out(`\nrope on ${dev}: ${tokens} tokens x ${H} heads x ${D} (${dtype}); GB/s counts bytes read + written`);
  io.out(table(['case', 'MB', 'rope ms', 'rope GB/s', 'copy GB/s', 'of copy'], rows.map((r) => [
    r.case, (r.bytes / 1e6).toFixed(0), r.rope_ms.toFixed(3), r.rope_gbps.toFixed(0), r.copy_gbps.toFixed(0),
    `${(100 * r.ratio).toFixed(1)}%`])));
  const file = String(opts.json ?? path.join('bench', 'out', `rope-${device}.json`));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), device: dev, tokens, heads: H, kvHeads: HK, headDim: D, dtype, rows }, null, 2));
  io.err(`wrote ${file}`);
  return 0;
}

