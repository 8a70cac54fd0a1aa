// `megabeam demo` (the README's main job): one attention layer of a Mistral-7B-shaped model at long
// context — exact RoPE on q and k, causal GQA flash attention forward and backward — on the GPU at
// 512K tokens when one is present, else on the CPU at a CPU-sized context. Checks sampled rows of out
// and dq against a float64 reference computed here, and prints times, TFLOP/s and memory.
import { attention } from '../attention';
import { attentionFlops } from '../bench/attention';
import { GiB, fmt, table, timed, withProgress } from '../bench/util';
import type { Command } from '../cli';
import { cuda } from '../device';
import { rope } from '../rope';
import { Tensor, memory, randn, resetPeakMemory, synchronize } from '../tensor';
import { FlagValues, CliIO } from './args';
import { DEVICE_FLAG, HEADS_FLAG, HEAD_DIM_FLAG, JSON_FLAG, KV_HEADS_FLAG, checkHeads, resolveDevice } from './common';

async function row(t: Tensor, s: number): Promise<Float32Array> {
  const v = t.narrow(1, s, 1);
  try {
    return (await v.toArray()) as Float32Array;
  } finally {
    v.dispose();
  }
}

export const command: Command = {
  usage: 'megabeam demo [options]',
  description: `One attention layer of a Mistral-7B-shaped model at long context: exact RoPE on q and k, causal GQA
flash attention forward and backward in bf16; sampled rows of out and dq are checked against a float64
reference. Defaults: 524288 tokens on a GPU, 4096 on the CPU; RoPE base 75e6 (MegaBeam-Mistral-512K).`,
  flags: {
    device: DEVICE_FLAG,
    seq: { type: 'size', min: 1, max: 2 ** 24, help: 'sequence length', default: '512k on a GPU, 4k on the CPU' },
    heads: { ...HEADS_FLAG, default: '32' },
    'kv-heads': { ...KV_HEADS_FLAG, default: '8' },
    'head-dim': { ...HEAD_DIM_FLAG, default: '128' },
    base: { type: 'number', min: 1.000001, help: 'RoPE base (theta)', default: '75e6' },
    samples: { type: 'int', min: 1, max: 6, help: 'query rows checked against float64', default: '6' },
    json: JSON_FLAG,
  },
  run: demo,
};

/** The demo through the shared runner (kept for callers of the old entry point). */
export async function demoCli(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'demo', argv, io);
}

async function demo(opts: FlagValues, io: CliIO): Promise<number> {
  const device = resolveDevice(opts.device);
  const gpu = device !== 'cpu';
  const S = (opts.seq as number | undefined) ?? (gpu ? 524288 : 4096);
  const hq = (opts.heads as number | undefined) ?? 32, hkv = (opts['kv-heads'] as number | undefined) ?? 8;
  const d = (opts['head-dim'] as number | undefined) ?? 128;
  checkHeads(hq, hkv);
  const base = (opts.base as number | undefined) ?? 75e6;
  const nSamples = (opts.samples as number | undefined) ?? 6;
  const dev = device;
  const dtype = 'bf16';
  const where = gpu ? cuda.devices()[Number(device.slice(5))]?.name ?? device : `the CPU (${cuda.unavailableReason() || 'requested'})`;
  io.out(`megabeam demo: ${S} tokens, ${hq} q heads / ${hkv} kv heads, d=${d}, ${dtype}, causal, on ${where}`);

  await synchronize(dev);
  resetPeakMemory(dev);
  const q = randn([1, S, hq, d], { dtype, device: dev, seed: 1 });
  const k = randn([1, S, hkv, d], { dtype, device: dev, seed: 2 });
  const v = randn([1, S, hkv, d], { dtype, device: dev, seed: 3 });
  const dout = randn([1, S, hq, d], { dtype, device: dev, seed: 4 });
  const fl = attentionFlops(S, S, hq, d, 1, true);
  const ropeOpts = { base, inplace: true } as const;
  const tRope = await timed(dev, () => { rope.apply(q, ropeOpts); rope.apply(k, ropeOpts); });
  const expect = gpu ? fl / 350e12 : fl / 2e10;
  let fw!: { out: Tensor; lse: Tensor };
  const tFwd = await withProgress('forward', expect, () => timed(dev, () => { fw = attention.forward(q, k, v, { causal: true }); }));
  let bw!: { dq: Tensor; dk: Tensor; dv: Tensor };
  const tBwd = await withProgress('backward', 2.5 * expect, () =>
    timed(dev, () => { bw = attention.backward(dout, q, k, v, fw.out, fw.lse, { causal: true }); }));
  const peak = memory(dev).peak;

  // Float64 reference for sampled (row, head) pairs, from the exact bf16 values the kernels saw.
  const K = (await k.toArray()) as Float32Array, V = (await v.toArray()) as Float32Array;
  const scale = 1 / Math.sqrt(d), g = hq / hkv;
  const rows = [S - 1, S - 2, Math.floor(S / 2), 0, Math.floor(S / 3), S - 1 - Math.floor(S / 7)].slice(0, Math.max(1, nSamples));
  let worstOut = 0, worstDq = 0;
  const checks: (string | number)[][] = [];
  for (const [n, i] of rows.entries()) {
    const h = (n * 11 + 5) % hq, kh = Math.floor(h / g);
    const [qr, or, dor, dqr] = await Promise.all([row(q, i), row(fw.out, i), row(dout, i), row(bw.dq, i)]);
    const qi = qr.subarray(h * d, (h + 1) * d), oi = or.subarray(h * d, (h + 1) * d);
    const doi = dor.subarray(h * d, (h + 1) * d), dqi = dqr.subarray(h * d, (h + 1) * d);
    const s = new Float64Array(i + 1);
    let mx = -Infinity;
    for (let j = 0; j <= i; j++) {
      let acc = 0;
      const kb = (j * hkv + kh) * d;
      for (let c = 0; c < d; c++) acc += qi[c] * K[kb + c];
      s[j] = acc * scale;
      if (s[j] > mx) mx = s[j];
    }
    let z = 0;
    for (let j = 0; j <= i; j++) { s[j] = Math.exp(s[j] - mx); z += s[j]; }
    const oRef = new Float64Array(d);
    for (let j = 0; j <= i; j++) {
      const p = s[j] / z, vb = (j * hkv + kh) * d;
      for (let c = 0; c < d; c++) oRef[c] += p * V[vb + c];
    }
    let D = 0;
    for (let c = 0; c < d; c++) D += doi[c] * oRef[c];
    const dqRef = new Float64Array(d);
    for (let j = 0; j <= i; j++) {
      const p = s[j] / z, vb = (j * hkv + kh) * d;
      let dp = 0;
      for (let c = 0; c < d; c++) dp += doi[c] * V[vb + c];
      const ds = p * (dp - D) * scale;
      for (let c = 0; c < d; c++) dqRef[c] += ds * K[vb + c];
    }
    // Relative L2 error, against the row's own scale where the exact value is ~0 (the first query sees
    // one key, so its dq is exactly zero and any rounding would be an infinite relative error).
    let doNorm = 0;
    for (let c = 0; c < d; c++) doNorm += doi[c] ** 2;
    const rel = (x: ArrayLike<number>, r: Float64Array, floor: number) => {
      let num = 0, den = 0;
      for (let c = 0; c < d; c++) { num += (x[c] - r[c]) ** 2; den += r[c] ** 2; }
      return Math.sqrt(num) / Math.max(Math.sqrt(den), floor);
    };
    const eo = rel(oi, oRef, 1e-30), eq = rel(dqi, dqRef, 1e-3 * Math.sqrt(doNorm));
    worstOut = Math.max(worstOut, eo); worstDq = Math.max(worstDq, eq);
    checks.push([String(i), String(h), eo, eq]);
  }
  for (const t of [q, k, v, dout, fw.out, fw.lse, bw.dq, bw.dk, bw.dv]) t.dispose();
  await synchronize(dev);

  io.out('\nsampled rows against a float64 reference (relative L2 error):');
  io.out(table(['query row', 'head', 'out', 'dq'], checks));
  io.out('\n' + table(['step', 'seconds', 'TFLOP/s'], [
    ['RoPE q+k (exact)', tRope, '-'],
    ['attention forward', tFwd, fl / tFwd / 1e12],
    ['attention backward', tBwd, (2.5 * fl) / tBwd / 1e12],
  ]));
  io.out(`\npeak ${device} memory: ${fmt(peak / GiB)} GiB (q, k, v, dout, out, dq, dk, dv themselves: ${fmt((8 * S * d * (hq + hkv)) / GiB)} GiB)`);
  const ok = worstOut < 2e-2 && worstDq < 3e-2 && Number.isFinite(worstOut) && Number.isFinite(worstDq);
  io.out(ok ? 'check passed' : `check FAILED: worst out error ${worstOut}, dq error ${worstDq}`);
  if (opts.json) io.json!({ seq: S, device, headsQ: hq, headsKV: hkv, headDim: d, dtype, rope_s: tRope, fwd_s: tFwd, bwd_s: tBwd,
    peak_bytes: peak, worstOut, worstDq, passed: ok });
  return ok ? 0 : 1;
}
