// `megabeam bench model`: one Mistral-7B decoder layer fwd+bwd (time, TFLOP/s with model FLOPs, peak
// memory) and the whole Mistral-7B (random bf16 weights) fwd+bwd with per-layer activation
// checkpointing (tokens/s, peak memory) under the selective-checkpointing policies of --keep-attention
// (default auto: as many layers keep their attention output as fit; `none` is the plain recompute).
// PyTorch's yardstick for the layer is bench/torch_layer.py in the same device run. `megabeam bench model check DIR` compares megabeam on CUDA bf16 with the
// PyTorch reference bench/torch_model.py wrote to DIR.
import * as fs from 'fs';
import * as path from 'path';
import { cuda } from '../device';
import { MegabeamError } from '../errors';
import { fromConfig, fromPretrained, KeepAttention, Model } from '../model/mistral';
import * as safetensors from '../safetensors';
import { Tensor, emptyCache, memory, randn, resetPeakMemory, synchronize, tensor } from '../tensor';
import { GiB, IO, median, relL2, table, timed, withProgress } from './util';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { OUT_FLAG, REPS_FLAG, checkOutputPath } from '../cli/common';

export const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'], model_type: 'mistral', hidden_size: 4096, intermediate_size: 14336,
  num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 128, hidden_act: 'silu',
  max_position_embeddings: 32768, rms_norm_eps: 1e-5, rope_theta: 1000000.0, sliding_window: null,
  tie_word_embeddings: false, vocab_size: 32768, initializer_range: 0.02, attention_dropout: 0.0,
};

/** Model FLOPs of one decoder layer fwd+bwd: 6·N·(linear params) + 3.5·(2·N²·hq·d) for causal attention. */
export function layerFlops(n: number, c = MISTRAL_7B): number {
  const H = c.hidden_size, I = c.intermediate_size, hq = c.num_attention_heads, hkv = c.num_key_value_heads, d = c.head_dim;
  const p = 2 * H * hq * d + 2 * H * hkv * d + 3 * H * I;
  return 6 * n * p + 7 * n * n * hq * d;
}

function isOom(e: unknown): boolean {
  return e instanceof MegabeamError && e.code === 'ERR_OOM';
}

async function benchLayer(seqs: number[], reps: number, gradDtype: 'f32' | 'param', mlpChunk: number | undefined, io: IO) {
  const rows: Record<string, unknown>[] = [];
  const m = fromConfig({ ...MISTRAL_7B, num_hidden_layers: 1, vocab_size: 256 }, { device: 'cuda', dtype: 'bf16', seed: 1, gradDtype });
  try {
    for (const S of seqs) {
      const H = m.config.hiddenSize;
      let x: Tensor | undefined, dy: Tensor | undefined;
      try {
        emptyCache('cuda');
        await synchronize('cuda');
        x = randn([S, H], { dtype: 'bf16', device: 'cuda', seed: 2 });
        dy = randn([S, H], { dtype: 'bf16', device: 'cuda', seed: 3 });
        const step = () => {
          const d = dy!.clone();
          const dx = m.layerForwardBackward(0, x!, d, { mlpChunkTokens: mlpChunk });
          dx.dispose();
        };
        step(); // warm-up (allocator, cuBLASLt heuristics)
        await synchronize('cuda');
        resetPeakMemory('cuda');
        const ts: number[] = [];
        for (let r = 0; r < reps; r++) ts.push(await withProgress(`layer S=${S} ${r + 1}/${reps}`, 0, () => timed('cuda', step)));
        const peak = memory('cuda').peak / GiB;
        const t = median(ts);
        const row = { part: 'layer', seq: S, seconds: t, tflops: layerFlops(S) / t / 1e12, peak_gib: peak, reps };
        rows.push(row);
        io.err(`layer S=${S}: ${(t * 1e3).toFixed(1)} ms, ${row.tflops.toFixed(1)} TFLOP/s, peak ${peak.toFixed(2)} GiB`);
      } catch (e) {
        if (!isOom(e)) throw e;
        rows.push({ part: 'layer', seq: S, error: 'OOM' });
        io.err(`layer S=${S}: out of memory`);
      } finally {
        x?.dispose(); dy?.dispose();
        m.zeroGrad();
      }
    }
  } finally {
    m.dispose();
  }
  return rows;
}

/** --keep-attention's list: auto | all | none | K (layers) -> the model's keepAttention values. */
export function parseKeepPolicies(s: string, layers: number): { name: string; keep: KeepAttention }[] {
  const items = s.split(',').map((x) => x.trim());
  return items.map((x) => {
    if (x === 'auto') return { name: 'auto', keep: 'auto' as const };
    if (x === 'all') return { name: 'all', keep: true };
    if (x === 'none') return { name: 'none', keep: false };
    const k = /^\d+$/.test(x) ? Number(x) : NaN;
    if (!(Number.isSafeInteger(k) && k <= layers))
      throw new MegabeamError('ERR_ARG', `--keep-attention: each entry must be auto, all, none or a layer count 0..${layers}, got ${JSON.stringify(x)}`);
    return { name: String(k), keep: k };
  });
}

async function benchWhole(seqs: number[], gradDtype: 'f32' | 'param', mlpChunk: number | undefined, io: IO,
    policies: { name: string; keep: KeepAttention }[] = [{ name: 'auto', keep: 'auto' }], memoryBudget?: number) {
  const rows: Record<string, unknown>[] = [];
  const m = fromConfig(MISTRAL_7B, { device: 'cuda', dtype: 'bf16', seed: 1, gradDtype });
  m.grads();
  await synchronize('cuda');
  io.err(`Mistral-7B: ${(m.numParameters / 1e9).toFixed(3)}B parameters, bf16 weights, ${gradDtype === 'f32' ? 'f32' : 'bf16'} grads, ` +
    `${(memory('cuda').allocated / GiB).toFixed(1)} GiB allocated`);
  let prev: { S: number; t: number } | null = null;
  try {
    // A short warm-up so the first timed size does not pay for module loading and cuBLASLt setup.
    {
      const ids = Int32Array.from({ length: 2048 }, (_, i) => (i * 7919) % MISTRAL_7B.vocab_size);
      await m.forwardBackward(ids, ids, { mlpChunkTokens: mlpChunk });
    }
    for (const S of seqs) {
      const ids = Int32Array.from({ length: S }, (_, i) => (i * 7919 + 13) % MISTRAL_7B.vocab_size);
      const labels = Int32Array.from({ length: S }, (_, i) => ids[(i + 1) % S]);
      const idT = tensor(ids, { dtype: 'i32', device: 'cuda', shape: [1, S] });
      const labT = tensor(labels, { dtype: 'i32', device: 'cuda', shape: [1, S] });
      try {
        for (const pol of policies) {
          const opts = { checkpoint: true, keepAttention: pol.keep, memoryBudget, mlpChunkTokens: mlpChunk };
          try {
            m.zeroGrad();
            emptyCache('cuda');
            await synchronize('cuda');
            const plan = m.memoryPlan(S, opts);
            resetPeakMemory('cuda');
            let res!: { loss: number; count: number; keptAttention: number };
            // attention grows as S², the rest as S: about S^1.7 over these sizes, for the bar's estimate
            const p0 = prev as { S: number; t: number } | null;
            const expect: number = p0 ? p0.t * (S / p0.S) ** 1.7 : 0;
            const t: number = await withProgress(`model S=${S} keep=${pol.name}`, expect, () =>
              timed('cuda', async () => { res = await m.forwardBackward(idT, labT, opts); }));
            const peak = memory('cuda').peak / GiB;
            prev = { S, t };
            rows.push({ part: 'model', seq: S, policy: pol.name, kept_layers: res.keptAttention, seconds: t, tokens_per_s: S / t,
              peak_gib: peak, predicted_peak_gib: plan.predictedPeak / GiB, budget_gib: plan.budget / GiB, loss: res.loss });
            io.err(`model S=${S} keep=${pol.name} (${res.keptAttention}/${m.config.numLayers} layers keep attention): ${t.toFixed(2)} s, ` +
              `${(S / t).toFixed(0)} tokens/s, peak ${peak.toFixed(1)} GiB (predicted ${(plan.predictedPeak / GiB).toFixed(1)}), loss ${res.loss.toFixed(4)}`);
          } catch (e) {
            if (!isOom(e)) throw e;
            rows.push({ part: 'model', seq: S, policy: pol.name, error: 'OOM', message: (e as Error).message.slice(0, 200) });
            io.err(`model S=${S} keep=${pol.name}: out of memory (${(e as Error).message.slice(0, 200)})`);
          }
        }
      } finally {
        idT.dispose(); labT.dispose();
      }
    }
  } finally {
    m.dispose();
  }
  return rows;
}

/** megabeam CUDA bf16 vs bench/torch_model.py's float64 truth, next to PyTorch bf16's own error. */
export async function checkAgainstTorch(dir: string, io: IO, json?: string, device: 'cuda' | 'cpu' = 'cuda',
    dtype: 'bf16' | 'f32' = 'bf16'): Promise<number> {
  const m: Model = await fromPretrained(dir, { device, dtype });
  const inputs = await safetensors.load(path.join(dir, 'inputs.safetensors'), { device });
  const ref = await safetensors.load(path.join(dir, 'ref.safetensors'));
  const get = async (k: string) => {
    const t = ref.get(k);
    if (!t) throw new Error(`ref.safetensors lacks ${k}`);
    return t.toArray();
  };
  const ids = inputs.get('ids')!, labels = inputs.get('labels')!;
  const res = await m.forwardBackward(ids, labels);
  const logits = m.forward(ids);
  const rows: (string | number)[][] = [];
  const out: Record<string, unknown>[] = [];
  let fails = 0;
  const add = (name: string, mine: number, torch: number, bound: number) => {
    const ok = mine <= bound;
    if (!ok) fails++;
    rows.push([name, mine, torch, bound, ok ? 'ok' : 'FAIL']);
    out.push({ name, megabeam: mine, torch_bf16: torch, bound, ok });
  };
  const f64Loss = (await get('fp64.loss'))[0], bfLoss = (await get('bf16.loss'))[0];
  const lossErr = Math.abs(res.loss - f64Loss) / Math.abs(f64Loss), tLossErr = Math.abs(bfLoss - f64Loss) / Math.abs(f64Loss);
  add('loss', lossErr, tLossErr, Math.max(2 * tLossErr, 2e-3));
  const lf = await get('fp64.logits'), lb = await get('bf16.logits');
  const lm = await logits.toArray();
  const tl = relL2(lb, lf);
  add('logits', relL2(lm, lf), tl, Math.max(2 * tl, 1e-2));
  for (const [name, g] of m.grads()) {
    const truth = await get(`fp64.${name}`), tb = await get(`bf16.${name}`);
    const mine = await g.toArray();
    const te = relL2(tb, truth);
    add(name, relL2(mine, truth), te, Math.max(2 * te, 1e-2));
  }
  io.out(`megabeam ${device} ${dtype} vs float64 (PyTorch, same bf16 weights and tokens); loss ${res.loss.toFixed(6)} vs ${f64Loss.toFixed(6)}, ${res.count} tokens`);
  io.out('relative error (|Δ| / |ref| for the loss, relative L2 otherwise); bound = max(2 × PyTorch bf16 error, floor)');
  io.out(table(['tensor', 'megabeam', 'PyTorch bf16', 'bound', ''], rows));
  io.out(fails ? `FAIL: ${fails} of ${rows.length} above the bound` : `PASS: all ${rows.length} within the bound`);
  if (json) fs.writeFileSync(json, JSON.stringify({ date: new Date().toISOString(), dir, rows: out, pass: fails === 0 }, null, 2));
  logits.dispose();
  for (const t of [...inputs.values(), ...ref.values()]) t.dispose();
  m.dispose();
  return fails ? 1 : 0;
}

export const command: Command = {
  usage: 'megabeam bench model [options] | megabeam bench model check DIR [--device cpu|cuda] [--out FILE]',
  description: `One Mistral-7B decoder layer fwd+bwd (time, TFLOP/s with model FLOPs, peak memory) and the whole
Mistral-7B (random bf16 weights) fwd+bwd with per-layer activation checkpointing (tokens/s, peak memory),
under each --keep-attention policy (auto: the layers whose attention output fits in memory keep it and skip
the attention recompute; none: the plain recompute; --keep-attention auto,none compares them).
PyTorch's yardstick is bench/torch_layer.py. \`check DIR\` compares megabeam with the reference that
bench/torch_model.py wrote to DIR (loss, logits and every gradient against float64).`,
  flags: {
    parts: { type: 'string', metavar: 'layer,model', help: 'which parts to run', default: 'layer,model' },
    'layer-seqs': { type: 'sizes', min: 1, help: 'tokens for the one-layer run', default: '16k,64k,128k' },
    'model-seqs': { type: 'sizes', min: 1, help: 'tokens for the whole-model run', default: '32k,64k,128k,256k' },
    'grad-dtype': { type: 'choice', choices: ['f32', 'param'], help: 'gradient dtype', default: 'f32' },
    'mlp-chunk': { type: 'size', min: 1, help: 'tokens per MLP chunk', default: '8k' },
    'keep-attention': { type: 'string', metavar: 'auto|all|none|K,...',
      help: 'whole model: selective-checkpointing policies, each run at every size (none = plain recompute, K = layers)', default: 'auto' },
    'memory-budget': { type: 'size', min: 0, help: 'whole model: bytes keep-attention auto may plan for (e.g. 120G)', default: 'device memory - max(6 GiB, 5 %)' },
    reps: { ...REPS_FLAG, default: '3' },
    device: { type: 'choice', choices: ['cpu', 'cuda'], help: 'check only: where megabeam runs', default: 'cuda' },
    out: OUT_FLAG,
  },
  takesArgs: 'mixed',  // `check DIR` and flags in any order
  run: benchModelRun,
};

/** Old entry point: the command through the shared runner. */
export async function benchModel(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'bench model', argv, io);
}

async function benchModelRun(opts: FlagValues, io: CliIO, args: string[]): Promise<number> {
  if (opts.out !== undefined) checkOutputPath(String(opts.out));
  if (args[0] === 'check') {
    if (!args[1] || args.length > 2) throw new MegabeamError('ERR_ARG', 'usage: megabeam bench model check DIR');
    const dev = opts.device === 'cpu' ? 'cpu' : 'cuda';
    return checkAgainstTorch(args[1], io as unknown as IO, opts.out === undefined ? undefined : String(opts.out), dev, dev === 'cpu' ? 'f32' : 'bf16');
  }
  if (args.length) throw new MegabeamError('ERR_ARG', `unexpected argument ${JSON.stringify(args[0])} (only \`check DIR\`)`);
  const policies = parseKeepPolicies(String(opts['keep-attention'] ?? 'auto'), MISTRAL_7B.num_hidden_layers);
  const memoryBudget = opts['memory-budget'] !== undefined ? Number(opts['memory-budget']) : undefined;
  if (!cuda.isAvailable()) throw new MegabeamError('ERR_NO_CUDA', `bench model needs a CUDA GPU: ${cuda.unavailableReason()}`);
  const parts = String(opts.parts ?? 'layer,model').split(',');
  const gradDtype = (opts['grad-dtype'] ?? 'f32') as 'f32' | 'param';
  const mlpChunk = opts['mlp-chunk'] !== undefined ? Number(opts['mlp-chunk']) : undefined;
  const reps = Number(opts.reps ?? 3);
  const seqs = (k: string, d: number[]): number[] => (opts[k] as number[] | undefined) ?? d;
  const rows: Record<string, unknown>[] = [];
  const device = cuda.devices()[0]?.name ?? 'cuda';
  if (parts.includes('layer')) {
    const lr = await benchLayer(seqs('layer-seqs', [16384, 65536, 131072]), reps, gradDtype, mlpChunk, io);
    rows.push(...lr);
    io.out(`\none Mistral-7B decoder layer, bf16, batch 1, fwd+bwd (activations stored), on ${device}`);
    io.out(table(['tokens', 'time ms', 'TFLOP/s', 'peak GiB'], lr.map((r) =>
      r.error ? [String(r.seq), String(r.error), '', ''] : [String(r.seq), (r.seconds as number) * 1e3, r.tflops as number, r.peak_gib as number])));
  }
  if (parts.includes('model')) {
    const mr = await benchWhole(seqs('model-seqs', [32768, 65536, 131072, 262144]), gradDtype, mlpChunk, io, policies, memoryBudget);
    rows.push(...mr);
    io.out(`\nMistral-7B (random bf16 weights, ${gradDtype === 'f32' ? 'f32' : 'bf16'} grads), fwd+bwd, activation checkpointing per layer, on ${device}`);
    io.out('keep = selective-checkpointing policy (--keep-attention); kept = layers whose attention output the forward kept (their backward skips the attention forward)');
    io.out(table(['tokens', 'keep', 'kept', 'time s', 'tokens/s', 'peak GiB', 'predicted GiB'], mr.map((r) =>
      r.error ? [String(r.seq), String(r.policy), String(r.error), '', '', '', '']
        : [String(r.seq), String(r.policy), `${r.kept_layers}/${MISTRAL_7B.num_hidden_layers}`, r.seconds as number, r.tokens_per_s as number,
          r.peak_gib as number, r.predicted_peak_gib as number])));
  }
  if (opts.out !== undefined) {
    fs.writeFileSync(String(opts.out), JSON.stringify({ date: new Date().toISOString(), device, gradDtype,
      keepAttention: policies.map((p) => p.name), memoryBudget: memoryBudget ?? null, rows }, null, 2));
  }
  return 0;
}
