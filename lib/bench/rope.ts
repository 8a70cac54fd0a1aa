// `megabeam bench rope [--device cuda] [--tokens 512k] [--heads 32] [--kv-heads 8] [--head-dim 128]
//                      [--dtype bf16] [--reps 10] [--json] [--out FILE]`
// Bandwidth: rope.apply reads and writes the tensor once, so GB/s = 2 * bytes / time, set against a
// device-to-device copy of the same tensor (x.clone()) timed in the same run. Each timing is the median
// of --reps rounds of 8 back-to-back calls between device synchronisations.
import * as fs from 'fs';
import * as path from 'path';
import { rope, RopeApplyOptions } from '../rope';
import { cuda } from '../device';
import { Dtype } from '../dtype';
import { Tensor, randn, tensor } from '../tensor';
import { defaultInvFreq } from '../theta';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, HEADS_FLAG, HEAD_DIM_FLAG, JSON_FLAG, KV_HEADS_FLAG, OUT_FLAG, REPS_FLAG, checkOutputPath, resolveDevice } from '../cli/common';
import { perCall, table } from './util';

export const command: Command = {
  usage: 'megabeam bench rope [options]',
  description: `RoPE bandwidth (bytes read + written per second) against a device-to-device copy of the same
tensor, for the apply / in-place / backward / interleaved / precision / applyQK / positions / partial cases.`,
  flags: {
    device: DEVICE_FLAG,
    tokens: { type: 'size', min: 1, max: 2 ** 26, help: 'batch*seq tokens', default: '512k on a GPU, 16k on the CPU' },
    heads: { ...HEADS_FLAG, default: '32' },
    'kv-heads': { ...KV_HEADS_FLAG, default: '8' },
    'head-dim': { ...HEAD_DIM_FLAG, default: '128' },
    dtype: { type: 'choice', choices: ['bf16', 'f16', 'f32'], help: 'element type', default: 'bf16' },
    reps: { ...REPS_FLAG, default: '10' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run: benchRopeRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchRope(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench rope', argv, io);
}

interface Row { case: string; bytes: number; rope_ms: number; rope_gbps: number; copy_ms: number; copy_gbps: number; ratio: number }

async function benchRopeRun(opts: FlagValues, io: CliIO): Promise<number> {
  const device = resolveDevice(opts.device);
  const onGpu = device !== 'cpu';
  const tokens = (opts.tokens as number | undefined) ?? (onGpu ? 524288 : 16384);
  const H = (opts.heads as number | undefined) ?? 32, HK = (opts['kv-heads'] as number | undefined) ?? 8;
  const D = (opts['head-dim'] as number | undefined) ?? 128;
  const dtype = ((opts.dtype as string | undefined) ?? 'bf16') as Dtype;
  const reps = (opts.reps as number | undefined) ?? 10;
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  const inner = 8;
  const invFreq = defaultInvFreq(1e6, D);
  const dev = onGpu ? (cuda.devices()[Number(device.slice(5))]?.name ?? device) : 'cpu';
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
  // Written only where asked (--out): a benchmark must not drop files into the caller's project.
  const result = { date: new Date().toISOString(), device: dev, tokens, heads: H, kvHeads: HK, headDim: D, dtype, rows };
  if (opts.out !== undefined) {
    const file = String(opts.out);
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(result, null, 2));
    io.err(`wrote ${file}`);
  }
  if (opts.json) io.json!(result);
  return 0;
}

