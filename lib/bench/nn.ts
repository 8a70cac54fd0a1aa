// Layer-op benchmark: RMSNorm (+ fused residual), SwiGLU, embedding, cross-entropy, LM-head loss.
//   megabeam bench nn [--device cuda] [--tokens 65536] [--hidden 4096] [--ffn 14336] [--vocab 32000]
//                     [--dtype bf16] [--reps 10] [--json bench/out/nn-<device>.json]
// GB/s counts the least memory traffic the op needs (each input read once, each output written once),
// set against a device-to-device copy (clone) of the largest tensor timed in the same run, so "of copy"
// says how close the kernel is to the memory bandwidth. Each timing is the median of --reps rounds of 8
// back-to-back calls between device synchronisations. lmHeadLoss is reported in TFLOP/s (3 GEMMs).
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { cuda } from '../device';
import { Dtype, dtypeSize } from '../dtype';
import * as nn from '../nn';
import { Tensor, randn, synchronize, tensor, zeros } from '../tensor';
import { IO, median, table } from './util';

const HELP = `usage: megabeam bench nn [options]
  --device cuda|cpu     (default: cuda when available)
  --tokens N            rows (default 65536 on a GPU, 2048 on the CPU)
  --hidden 4096 --ffn 14336 --vocab 32000 --dtype bf16
  --ce-tokens N         rows of the cross-entropy / LM-head cases (default 8192 GPU, 256 CPU)
  --reps N              timed rounds (median; default 10)
  --json FILE           default bench/out/nn-<device>.json
`;

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

interface Row { case: string; shape: string; bytes: number; ms: number; gbps: number; copy_gbps: number; ratio: number; tflops?: number }

export async function benchNn(argv: string[], io: IO): Promise<number> {
  const opts: Record<string, string | true> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { io.err(`unexpected argument ${a}\n${HELP}`); return 2; }
    const k = a.slice(2);
    if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) opts[k] = argv[++i];
    else opts[k] = true;
  }
  const known = new Set(['device', 'tokens', 'hidden', 'ffn', 'vocab', 'dtype', 'ce-tokens', 'reps', 'json', 'help']);
  for (const k of Object.keys(opts)) if (!known.has(k)) { io.err(`unknown option --${k}\n${HELP}`); return 2; }
  if (opts.help) { io.out(HELP); return 0; }
  const device = ((opts.device as string) ?? (cuda.isAvailable() ? 'cuda' : 'cpu')) as 'cpu' | 'cuda';
  const onGpu = device === 'cuda';
  const N = Number(opts.tokens ?? (onGpu ? 65536 : 2048));
  const H = Number(opts.hidden ?? 4096), F = Number(opts.ffn ?? 14336), V = Number(opts.vocab ?? 32000);
  const NC = Number(opts['ce-tokens'] ?? (onGpu ? 8192 : 256));
  const dtype = (opts.dtype ?? 'bf16') as Dtype;
  const reps = Number(opts.reps ?? 10), inner = 8, es = dtypeSize(dtype);
  const dev = onGpu ? (cuda.devices()[0]?.name ?? 'cuda') : 'cpu';
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
  const file = String(opts.json ?? path.join('bench', 'out', `nn-${device}.json`));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), device: dev, tokens: N, hidden: H, ffn: F, vocab: V, ceTokens: NC, dtype, rows }, null, 2));
  io.err(`wrote ${file}`);
  return 0;
}
