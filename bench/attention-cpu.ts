// What the CPU attention fallback costs: forward and backward time and GFLOP/s for one long
// sequence (default 4096 tokens, 8 q heads, 2 kv heads, headDim 128, causal, bf16).
//   npx tsx bench/attention-cpu.ts [--seq 4096] [--heads 8] [--kv-heads 2] [--dim 128]
//                                  [--dtype bf16|f16|f32] [--full] [--reps 3]
// Prints a table and writes bench/out/attention-cpu.json. FLOPs count the matrix products only:
// forward 4·d per visible (query, key) pair and head; backward 2.5x forward (the usual convention;
// the CPU kernel recomputes q·k and dout·v in its second pass, so it executes 3.5x).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { attention } from '../lib/attention';
import { cpuThreads } from '../lib/device';
import { randn, synchronize } from '../lib/tensor';

function argValue(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}
const seq = Number(argValue('seq', '4096'));
const headsQ = Number(argValue('heads', '8'));
const headsKv = Number(argValue('kv-heads', '2'));
const headDim = Number(argValue('dim', '128'));
const dtype = argValue('dtype', 'bf16') as 'bf16' | 'f16' | 'f32';
const causal = !process.argv.includes('--full');
const reps = Number(argValue('reps', '3'));

/** Number of (query, key) pairs that attend: seq^2 or the causal triangle. */
function visiblePairs(sq: number, sk: number, isCausal: boolean): number {
  if (!isCausal) return sq * sk;
  let n = 0;
  for (let i = 0; i < sq; i++) n += Math.min(sk, Math.max(0, i + 1));
  return n;
}

async function time(fn: () => void): Promise<number> {
  await synchronize('cpu');
  const t0 = process.hrtime.bigint();
  fn();
  await synchronize('cpu');
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const opts = { causal };
  // Warm-up: thread pool, allocator, page faults.
  {
    const q = randn([1, 256, headsQ, headDim], { dtype, seed: 1 });
    const k = randn([1, 256, headsKv, headDim], { dtype, seed: 2 });
    const r = attention.forward(q, k, k, opts);
    const g = attention.backward(q, q, k, k, r.out, r.lse, opts);
    await synchronize('cpu');
    for (const x of [q, k, r.out, r.lse, g.dq, g.dk, g.dv]) x.dispose();
  }

  const q = randn([1, seq, headsQ, headDim], { dtype, seed: 3 });
  const k = randn([1, seq, headsKv, headDim], { dtype, seed: 4 });
  const v = randn([1, seq, headsKv, headDim], { dtype, seed: 5 });
  const dout = randn([1, seq, headsQ, headDim], { dtype, seed: 6 });
  const fwdMs: number[] = [], bwdMs: number[] = [];
  for (let r = 0; r < reps; r++) {
    let res: ReturnType<typeof attention.forward> | undefined;
    fwdMs.push(await time(() => { res = attention.forward(q, k, v, opts); }));
    let g: ReturnType<typeof attention.backward> | undefined;
    bwdMs.push(await time(() => { g = attention.backward(dout, q, k, v, res!.out, res!.lse, opts); }));
    for (const x of [res!.out, res!.lse, g!.dq, g!.dk, g!.dv]) x.dispose();
  }
  for (const x of [q, k, v, dout]) x.dispose();

  const fwdFlop = 4 * headDim * headsQ * visiblePairs(seq, seq, causal);
  const bwdFlop = 2.5 * fwdFlop;
  const fwd = median(fwdMs), bwd = median(bwdMs);
  const result = {
    bench: 'attention-cpu',
    date: new Date().toISOString(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    threads: cpuThreads(),
    config: { batch: 1, seq, headsQ, headsKv, headDim, dtype, causal },
    forward: { ms: fwd, runsMs: fwdMs, gflops: fwdFlop / (fwd * 1e6) },
    backward: { ms: bwd, runsMs: bwdMs, gflops: bwdFlop / (bwd * 1e6), flopConvention: '2.5x forward' },
  };
  console.log(`attention CPU fallback: ${result.cpu}, ${result.threads} threads`);
  console.log(`  1 x ${seq} tokens, ${headsQ} q / ${headsKv} kv heads, d=${headDim}, ${dtype}, ${causal ? 'causal' : 'full'}`);
  console.log(`  forward  ${fwd.toFixed(1).padStart(9)} ms  ${result.forward.gflops.toFixed(1).padStart(7)} GFLOP/s`);
  console.log(`  backward ${bwd.toFixed(1).padStart(9)} ms  ${result.backward.gflops.toFixed(1).padStart(7)} GFLOP/s (2.5x forward FLOPs)`);
  const dir = path.join(__dirname, 'out');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'attention-cpu.json');
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`  wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
