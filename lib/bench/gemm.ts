// `megabeam bench gemm`: TFLOP/s of matmul at the Mistral-7B projection shapes (forward, dX, dW) for
// each CUDA backend (cuBLASLt, builtin), and, with --torch, PyTorch's torch.matmul at the same shapes
// measured in the same run (bench/torch_gemm.py, spawned after ours so the GPU is idle) side by side.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { Dtype } from '../dtype';
import { ArgumentError } from '../errors';
import { gemmInfo, matmul } from '../matmul';
import { Tensor, empty, randn, synchronize } from '../tensor';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { DEVICE_FLAG, JSON_FLAG, OUT_FLAG, REPS_FLAG, checkOutputPath, listOf, resolveDevice } from '../cli/common';
import { table, timed, withProgress } from './util';

// Mistral-7B: hidden 4096, 32 q heads + 8 kv heads of 128 (qkv 6144), MLP 14336 (gate+up fused 28672).
export const MISTRAL_SHAPES: Record<string, { in: number; out: number }> = {
  qkv: { in: 4096, out: 6144 },
  o: { in: 4096, out: 4096 },
  gateup: { in: 4096, out: 28672 },
  gate: { in: 4096, out: 14336 },
  down: { in: 14336, out: 4096 },
};

export interface GemmProblem {
  tokens: number;
  shape: string;
  pass: 'fwd' | 'dx' | 'dw';
  m: number; n: number; k: number;
  transA: boolean; transB: boolean;
}

/** The three GEMMs of one linear layer W [out, in] at T tokens, as the model runs them. */
export function problems(tokens: number[], shapes: string[], passes: string[]): GemmProblem[] {
  const out: GemmProblem[] = [];
  for (const T of tokens)
    for (const s of shapes) {
      const w = MISTRAL_SHAPES[s];
      if (!w) throw new ArgumentError(`unknown shape ${s} (one of ${Object.keys(MISTRAL_SHAPES).join(', ')})`);
      // fwd: y[T,out] = x[T,in]·W[out,in]ᵀ; dx: dX[T,in] = dY[T,out]·W[out,in]; dw: dW[out,in] = dY[T,out]ᵀ·X[T,in]
      if (passes.includes('fwd')) out.push({ tokens: T, shape: s, pass: 'fwd', m: T, n: w.out, k: w.in, transA: false, transB: true });
      if (passes.includes('dx')) out.push({ tokens: T, shape: s, pass: 'dx', m: T, n: w.in, k: w.out, transA: false, transB: false });
      if (passes.includes('dw')) out.push({ tokens: T, shape: s, pass: 'dw', m: w.out, n: w.in, k: T, transA: true, transB: false });
    }
  return out;
}

export interface GemmBenchRow extends GemmProblem {
  backend: string;
  ms: number;
  tflops: number;
}

export const command: Command = {
  usage: 'megabeam bench gemm [options]',
  description: `TFLOP/s of matmul at the Mistral-7B projection shapes (forward y = x·Wᵀ, dX = dY·W, dW = dYᵀ·X) for
each CUDA backend (cuBLASLt, builtin); with --torch, torch.matmul at the same shapes in the same run.`,
  flags: {
    tokens: { type: 'sizes', min: 1, max: 2 ** 24, help: 'token counts T', default: '16k,64k on a GPU, 512 on the CPU' },
    backends: { type: 'string', metavar: 'cublaslt,builtin', help: 'CUDA backends to time', default: 'both when cuBLASLt is found' },
    shapes: { type: 'string', metavar: 'qkv,o,gateup,down,gate', help: 'projections', default: 'qkv,o,gateup,down' },
    passes: { type: 'string', metavar: 'fwd,dx,dw', help: 'passes', default: 'all' },
    reps: { ...REPS_FLAG, help: 'repetitions per shape, back to back after a warm-up', default: '10 on a GPU, 2 on the CPU' },
    device: DEVICE_FLAG,
    torch: { type: 'bool', help: 'also run bench/torch_gemm.py (torch.matmul) on the same shapes and compare' },
    python: { type: 'string', metavar: 'PYTHON', help: 'interpreter for --torch', default: 'python3' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run: benchGemmRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchGemm(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench gemm', argv, io);
}

async function benchGemmRun(opts: FlagValues, io: CliIO): Promise<number> {
  const device = resolveDevice(opts.device);
  const onGpu = device !== 'cpu';
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  const info = gemmInfo();
  const tokens = (opts.tokens as number[] | undefined) ?? (onGpu ? [16384, 65536] : [512]);
  const shapes = listOf(opts.shapes, Object.keys(MISTRAL_SHAPES), '--shapes', ['qkv', 'o', 'gateup', 'down']);
  const passes = listOf(opts.passes, ['fwd', 'dx', 'dw'], '--passes', ['fwd', 'dx', 'dw']);
  const backends = !onGpu ? ['cpu'] : opts.backends !== undefined ? listOf(opts.backends, ['cublaslt', 'builtin'], '--backends', [])
    : info.found ? ['cublaslt', 'builtin'] : ['builtin'];
  const reps = (opts.reps as number | undefined) ?? (onGpu ? 10 : 2);
  const dtype: Dtype = 'bf16';
  io.out(`megabeam bench gemm — ${device}, ${dtype} in/out, fp32 accumulate; cuBLASLt: ${info.found ? `${info.version} (${info.path})` : `not found (${info.error})`}`);
  const rows: GemmBenchRow[] = [];
  let seed = 7000;
  for (const p of problems(tokens, shapes, passes)) {
    const dev = device;
    const a = randn(p.transA ? [p.k, p.m] : [p.m, p.k], { dtype, device: dev, seed: ++seed });
    const b = randn(p.transB ? [p.n, p.k] : [p.k, p.n], { dtype, device: dev, seed: ++seed });
    const out = empty([p.m, p.n], { dtype, device: dev });
    const flop = 2 * p.m * p.n * p.k;
    for (const backend of backends) {
      const be = backend === 'cpu' ? 'auto' : (backend as 'cublaslt' | 'builtin');
      const run = () => { matmul(a, b, { transA: p.transA, transB: p.transB, out, backend: be }); };
      await timed(dev, run);  // warm-up: plan/heuristic, module load
      // All repetitions back to back, one sync: the host enqueues far faster than a GEMM runs, so this is
      // device time without a per-rep synchronisation gap (bench/torch_gemm.py times the same way).
      const label = `T=${p.tokens} ${p.shape} ${p.pass} ${backend}`;
      const total = await withProgress(label, 0, () => timed(dev, () => { for (let r = 0; r < reps; r++) run(); }));
      const s = total / reps;
      rows.push({ ...p, backend, ms: s * 1e3, tflops: flop / s / 1e12 });
    }
    for (const x of [a, b, out] as Tensor[]) x.dispose();
  }
  await synchronize(device);

  // PyTorch yardstick in a child process, after ours (so both have the GPU to themselves).
  let torchRows: { tokens: number; shape: string; pass: string; ms: number; tflops: number }[] | undefined;
  let torchInfo: unknown;
  if (opts.torch) {
    const py = typeof opts.python === 'string' ? opts.python : 'python3';
    const script = path.join(__dirname, '..', '..', 'bench', 'torch_gemm.py');
    const tmp = path.join(os.tmpdir(), `mb-torch-gemm-${process.pid}.json`);
    try {
      execFileSync(py, [script, '--tokens', tokens.join(','), '--shapes', shapes.join(','), '--passes', passes.join(','),
        '--reps', String(reps), '--json', tmp], { stdio: ['ignore', 'inherit', 'inherit'] });
      const j = JSON.parse(fs.readFileSync(tmp, 'utf8'));
      torchRows = j.rows;
      torchInfo = j.env;
    } catch (e) {
      io.err(`bench gemm: PyTorch yardstick failed: ${(e as Error).message}`);
    }
  }
  const key = (r: { tokens: number; shape: string; pass: string }) => `${r.tokens}/${r.shape}/${r.pass}`;
  const torchBy = new Map((torchRows ?? []).map((r) => [key(r), r]));
  const byProblem = new Map<string, GemmBenchRow[]>();
  for (const r of rows) byProblem.set(key(r), [...(byProblem.get(key(r)) ?? []), r]);
  const headers = ['T', 'shape', 'pass', 'M x N x K', ...backends.map((b) => `${b} TFLOP/s`)];
  if (torchRows) headers.push('torch TFLOP/s', ...backends.map((b) => `${b}/torch`));
  const trows: (string | number)[][] = [];
  for (const [k, rs] of byProblem) {
    const p = rs[0];
    const line: (string | number)[] = [p.tokens >= 1024 ? `${p.tokens / 1024}K` : String(p.tokens), p.shape, p.pass, `${p.m} x ${p.n} x ${p.k}`,
      ...backends.map((b) => rs.find((r) => r.backend === b)?.tflops ?? NaN)];
    if (torchRows) {
      const tr = torchBy.get(k);
      line.push(tr?.tflops ?? NaN, ...backends.map((b) => {
        const ours = rs.find((r) => r.backend === b)?.tflops;
        return ours && tr ? `${(100 * ours / tr.tflops).toFixed(1)}%` : '-';
      }));
    }
    trows.push(line);
  }
  io.out(table(headers, trows));
  if (torchRows) {
    for (const b of backends) {
      const ratios = rows.filter((r) => r.backend === b && torchBy.has(key(r))).map((r) => r.tflops / torchBy.get(key(r))!.tflops);
      if (ratios.length) io.out(`${b}: min ${(100 * Math.min(...ratios)).toFixed(1)}% of torch.matmul, geomean ${(100 * Math.exp(ratios.reduce((s, x) => s + Math.log(x), 0) / ratios.length)).toFixed(1)}% (bar: >= 95%)`);
    }
  }
  const result = { date: new Date().toISOString(), device, gemm: info, rows, torch: torchRows, torchEnv: torchInfo };
  if (opts.out !== undefined) {
    fs.writeFileSync(String(opts.out), JSON.stringify(result, null, 2));
    io.err(`wrote ${opts.out}`);
  }
  if (opts.json) io.json!(result);
  return 0;
}
