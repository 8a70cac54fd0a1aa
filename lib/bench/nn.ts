// Layer-op benchmark: RMSNorm (+ fused residual), SwiGLU, embedding, cross-entropy, LM-head loss.
//   megabeam bench nn [--device cuda] [--tokens 65536] [--hidden 4096] [--ffn 14336] [--vocab 32000]
//                     [--dtype bf16] [--reps 10] [--json bench/out/nn-<device>.json]
// GB/s counts the least memory traffic the op needs (each input read once, each output written once),
// set against a device-to-device copy (clone) of the largest tensor timed in the same run, so "of copy"
// says how close the kernel is to the memory bandwidth. Each timing is the median of --reps rounds of 8
// back-to-back calls between device synchronisations. lmHeadLoss is reported in TFLOP/s (3 GEMMs).
import * as fs from 'fs';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, JSON_FLAG, OUT_FLAG, REPS_FLAG, checkOutputPath, resolveDevice } from '../cli/common';
import { cuda } from '../device';
import { Dtype, dtypeSize } from '../dtype';
import * as nn from '../nn';
import { Tensor, randn, tensor, zeros } from '../tensor';
import { perCall, table } from './util';

export const command: Command = {
  usage: 'megabeam bench nn [options]',
  description: `The layer ops (rmsNorm, swiglu, embedding, cross-entropy, LM-head loss) at Mistral-7B sizes: time and
bandwidth against a device copy of the same bytes.`,
  flags: {
    device: DEVICE_FLAG,
    tokens: { type: 'size', min: 1, max: 2 ** 26, help: 'rows', default: '64k on a GPU, 2k on the CPU' },
    hidden: { type: 'int', min: 1, max: 2 ** 20, help: 'hidden size', default: '4096' },
    ffn: { type: 'int', min: 1, max: 2 ** 20, help: 'MLP size', default: '14336' },
    vocab: { type: 'int', min: 1, max: 2 ** 24, help: 'vocabulary size', default: '32000' },
    dtype: { type: 'choice', choices: ['bf16', 'f16', 'f32'], help: 'element type', default: 'bf16' },
    'ce-tokens': { type: 'size', min: 1, max: 2 ** 24, help: 'rows of the cross-entropy / LM-head cases', default: '8k on a GPU, 256 on the CPU' },
    reps: { ...REPS_FLAG, help: 'timed rounds (median)', default: '10' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run: benchNnRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchNn(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench nn', argv, io);
}

interface Row { case: string; shape: string; bytes: number; ms: number; gbps: number; copy_gbps: number; ratio: number; tflops?: number }

async function benchNnRun(opts: FlagValues, io: CliIO): Promise<number> {
  const device = resolveDevice(opts.device);
  const onGpu = device !== 'cpu';
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  const N = (opts.tokens as number | undefined) ?? (onGpu ? 65536 : 2048);
  const H = (opts.hidden as number | undefined) ?? 4096, F = (opts.ffn as number | undefined) ?? 14336;
  const V = (opts.vocab as number | undefined) ?? 32000;
  const NC = (opts['ce-tokens'] as number | undefined) ?? (onGpu ? 8192 : 256);
  const dtype = ((opts.dtype as string | undefined) ?? 'bf16') as Dtype;
  const reps = (opts.reps as number | undefined) ?? 10, inner = 8, es = dtypeSize(dtype);
  const dev = onGpu ? (cuda.devices()[Number(device.slice(5))]?.name ?? device) : 'cpu';
  io.err(`nn bench on ${dev}: ${N} tokens, hidden ${H}, ffn ${F}, vocab ${V} (${NC} loss rows), ${dtype}`);

  const rows: Row[] = [];
  const copyCache = new Map<number, number>();
  const copyGbps = async (t: Tensor): Promise<number> => {
    if (!copyCache.has(t.nbytes)) {
      const s = await perCall(device, reps, inner, () => t.clone().dispose());
      copyCache.set(t.nbytes, (2 * t.nbytes) / s / 1e9);
    }
    return copyCache.get(t.nbytes)!;
  };
  const measure = async (name: string, shape: string, bytes: number, ref: Tensor, fn: () => void, flops?: number): Promise<void> => {
    const s = await perCall(device, reps, inner, fn);
    const c = await copyGbps(ref);
    const row: Row = { case: name, shape, bytes, ms: s * 1e3, gbps: bytes / s / 1e9, copy_gbps: c, ratio: bytes / s / 1e9 / c };
    if (flops) row.tflops = flops / s / 1e12;
    rows.push(row);
    io.err(`${name}: ${row.ms.toFixed(3)} ms, ${row.gbps.toFixed(0)} GB/s (${(100 * row.ratio).toFixed(1)}% of copy)` +
      (row.tflops ? `, ${row.tflops.toFixed(0)} TFLOP/s` : ''));
  };

  {
    const x = randn([N, H], { dtype, device, seed: 1 }), r = randn([N, H], { dtype, device, seed: 2 });
    const w = randn([H], { dtype, device, seed: 3 }), dy = randn([N, H], { dtype, device, seed: 4 });
    const xb = N * H * es, sh = `${N}x${H}`;
    await measure('rmsNorm', sh, 2 * xb + 4 * N, x, () => { const o = nn.rmsNorm(x, w); o.y.dispose(); o.rstd.dispose(); });
    await measure('rmsNorm + residual (fused)', sh, 4 * xb + 4 * N, x, () => {
      const o = nn.rmsNorm(x, w, { residual: r }); o.y.dispose(); o.rstd.dispose(); o.h!.dispose();
    });
    const o = nn.rmsNorm(x, w);
    const dw = zeros([H], { device }), acc = zeros([N, H], { device });
    await measure('rmsNormBackward', sh, 3 * xb + 4 * N, x, () => { nn.rmsNormBackward(dy, x, w, o.rstd, { dweight: dw }).dx.dispose(); });
    await measure('rmsNormBackward dx += (f32 dx)', sh, 2 * xb + 8 * N * H, x, () => {
      // dx accumulate: read + write the f32 gradient
      nn.rmsNormBackward(dy, x, w, o.rstd, { dweight: dw, dx: acc });
    });
    for (const t of [x, r, w, dy, o.y, o.rstd, dw, acc]) t.dispose();
  }
  {
    const g = randn([N, F], { dtype, device, seed: 5 }), u = randn([N, F], { dtype, device, seed: 6 });
    const dy = randn([N, F], { dtype, device, seed: 7 });
    const b = N * F * es, sh = `${N}x${F}`;
    await measure('swiglu', sh, 3 * b, g, () => nn.swiglu(g, u).dispose());
    await measure('swigluBackward', sh, 5 * b, g, () => { const o = nn.swigluBackward(dy, g, u); o.dgate.dispose(); o.dup.dispose(); });
    await measure('swigluBackward in place', sh, 5 * b, g, () => { nn.swigluBackward(dy, g, u, { dgate: g, dup: u }); });
    for (const t of [g, u, dy]) t.dispose();
  }
  {
    const w = randn([V, H], { dtype, device, seed: 8 });
    const ids = tensor(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V), { device });
    const dy = randn([N, H], { dtype, device, seed: 9 });
    const dw = zeros([V, H], { device });
    const ob = N * H * es, sh = `${N} ids, ${V}x${H}`;
    await measure('embedding', sh, 2 * ob + 4 * N, dy, () => nn.embedding(ids, w).dispose());
    await measure('embeddingBackward (f32 scatter-add)', sh, ob + 8 * N * H + 4 * N, dy, () => { nn.embeddingBackward(dy, ids, dw); });
    for (const t of [w, ids, dy, dw]) t.dispose();
  }
  {
    const logits = randn([NC, V], { dtype, device, seed: 10, std: 3 });
    const labels = tensor(Int32Array.from({ length: NC }, (_, i) => (i * 104729) % V), { device });
    const lb = NC * V * es, sh = `${NC}x${V}`;
    await measure('crossEntropy loss only', sh, lb + 8 * NC, logits, () => nn.crossEntropy(logits, labels).losses.dispose());
    await measure('crossEntropy + dlogits in place', sh, 2 * lb + 8 * NC, logits, () => {
      nn.crossEntropy(logits, labels, { gradScale: 1, dlogits: logits }).losses.dispose();
    });
    const h = randn([NC, H], { dtype, device, seed: 11 }), w = randn([V, H], { dtype, device, seed: 12, std: 0.02 });
    const dw = zeros([V, H], { device });
    let ok = true;
    try {
      const o = nn.lmHeadLoss(h, w, labels, { dweight: dw });
      for (const t of [o.loss, o.count, o.dhidden]) t.dispose();
    } catch (e) {
      ok = false;
      io.err(`lmHeadLoss skipped: ${(e as Error).message}`);
    }
    if (ok) await measure('lmHeadLoss (3 GEMMs + CE)', `${NC}x${H} · ${V}x${H}`, lb, logits, () => {
      const o = nn.lmHeadLoss(h, w, labels, { dweight: dw });
      for (const t of [o.loss, o.count, o.dhidden]) t.dispose();
    }, 6 * NC * V * H);
    for (const t of [logits, labels, h, w, dw]) t.dispose();
  }

  io.out(`\nnn on ${dev} (${dtype}); GB/s counts the minimum bytes read + written`);
  io.out(table(['case', 'shape', 'ms', 'GB/s', 'copy GB/s', 'of copy', 'TFLOP/s'], rows.map((r) => [
    r.case, r.shape, r.ms.toFixed(3), r.gbps.toFixed(0), r.copy_gbps.toFixed(0), `${(100 * r.ratio).toFixed(1)}%`,
    r.tflops ? r.tflops.toFixed(0) : ''])));
  // Written only where asked (--out): a benchmark must not drop files into the caller's project.
  const result = { date: new Date().toISOString(), device: dev, tokens: N, hidden: H, ffn: F, vocab: V, ceTokens: NC, dtype, rows };
  if (opts.out !== undefined) {
    fs.writeFileSync(String(opts.out), JSON.stringify(result, null, 2));
    io.err(`wrote ${opts.out}`);
  }
  if (opts.json) io.json!(result);
  return 0;
}
