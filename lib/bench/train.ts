// `megabeam bench train`: one full training step (forward + backward with per-layer activation
// checkpointing + fused AdamW with f32 master weights and moments + global-norm clip) of a model with
// Mistral-7B's layer dimensions and 4 layers (vocab 32768) at 16K-128K tokens, bf16 on one GPU:
// seconds/step, tokens/s, MFU (lib/train/train.ts: model FLOPs, 989 TFLOP/s peak) and peak memory.
// `--full`: the whole Mistral-7B (32 layers; bf16 linear-weight gradients by default so weights, master,
// moments and gradients take ~116 GB) at the longest contexts that fit; an OOM is a row, not a crash.
// The f32 master weights are split by default (bf16 param + 16-bit correction, lib/optim.ts): the same
// update as an f32 copy in 2 bytes less per parameter (--master f32: the copy; bench/NOTES.md has the bytes).
// PyTorch eager yardstick of the same step: bench/torch_train.py (same shapes, same flags).
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { ArgumentError, MegabeamError } from '../errors';
import { DeviceString, parseDevice } from '../device';
import { fromConfig, Model } from '../model/mistral';
import { AdamW } from '../optim';
import { Tensor, emptyCache, memory, resetPeakMemory, synchronize, tensor } from '../tensor';
import { adamwFor, flopsPerToken } from '../train/train';
import { MISTRAL_7B, parseKeepPolicies } from './model';
import { GiB, median, table } from './util';
import { runCommand } from '../cli';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { JSON_FLAG, OUT_FLAG, REPS_FLAG, checkOutputPath } from '../cli/common';

const PEAK = 989e12; // H100/H200 dense bf16

export const command: Command = {
  usage: 'megabeam bench train [--seqs 16k,32k,64k,128k] [--layers 4] [--full] [--keep-attention auto] [--reps 3] [--json] [--out FILE]',
  description: 'One training step (fwd+bwd with activation checkpointing, fused AdamW with f32 master weights, clip)\n' +
    'of Mistral-7B-shaped layers, bf16 on CUDA: s/step, tokens/s, MFU, peak memory. --full: the whole\n' +
    'Mistral-7B (default --seqs 16k,32k,64k). Yardstick: python3 bench/torch_train.py with the same flags.',
  flags: {
    seqs: { type: 'sizes', min: 1, help: 'tokens per step (one sequence)', default: '16k,32k,64k,128k (--full: 16k,32k,64k)' },
    layers: { type: 'int', min: 1, max: 1024, help: 'decoder layers', default: '4 (--full: 32)' },
    full: { type: 'bool', help: 'the whole Mistral-7B' },
    reps: { ...REPS_FLAG, help: 'timed steps after one warm-up step (median)', default: '3' },
    'grad-dtype': { type: 'choice', choices: ['f32', 'param'], help: 'linear-weight gradient dtype', default: 'f32 (--full: param)' },
    'mlp-chunk': { type: 'size', min: 1, help: 'tokens per MLP chunk', default: '8k' },
    master: { type: 'choice', choices: ['split', 'f32'], help: 'f32 master weights as bf16 param + 16-bit correction (split, 2 B/param) or an f32 copy (4 B/param)', default: 'split' },
    'keep-attention': { type: 'string', metavar: 'auto|all|none|K', help: 'selective checkpointing (none = plain per-layer recompute, K = layers)', default: 'auto' },
    config: { type: 'string', metavar: 'FILE', help: 'another HF config.json instead of Mistral-7B (--layers still applies when given)' },
    device: { type: 'string', help: 'device (cpu only for smoke tests with a tiny --config)', default: 'cuda' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run: (o, io) => run(o, io),
};

/** Uniform random token ids (a fixed xorshift stream: the same ids as bench/torch_train.py need not match, only the shapes). */
function randint(shape: [number, number], hi: number, device: DeviceString, seed: number): Tensor {
  const a = new Int32Array(shape[0] * shape[1]);
  let x = (seed * 0x9e3779b1) >>> 0 || 1;
  for (let i = 0; i < a.length; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; a[i] = x % hi; }
  return tensor(a, { dtype: 'i32', device, shape });
}

function isOom(e: unknown): boolean {
  return e instanceof MegabeamError && e.code === 'ERR_OOM';
}

async function run(o: FlagValues, io: CliIO): Promise<number> {
  if (o.out !== undefined) checkOutputPath(String(o.out));
  const full = !!o.full;
  const seqs = (o.seqs as number[] | undefined) ?? (full ? [16384, 32768, 65536] : [16384, 32768, 65536, 131072]);
  const layers = (o.layers as number | undefined) ?? (full ? 32 : 4);
  const reps = (o.reps as number | undefined) ?? 3;
  const gradDtype = (o['grad-dtype'] as 'f32' | 'param' | undefined) ?? (full ? 'param' : 'f32');
  const keepList = parseKeepPolicies(String(o['keep-attention'] ?? 'auto'), 1024);
  if (keepList.length !== 1) throw new ArgumentError('--keep-attention: one policy (auto, all, none or K) for bench train');
  const keep = keepList[0];
  const device: DeviceString = parseDevice((o.device as string | undefined) ?? 'cuda').name;
  let base: Record<string, unknown> = MISTRAL_7B;
  if (o.config !== undefined) {
    try {
      base = JSON.parse(fs.readFileSync(String(o.config), 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new ArgumentError(`--config: cannot read ${String(o.config)}: ${(e as Error).message}`);
    }
  }
  const cfg = { ...base, num_hidden_layers: o.config !== undefined && o.layers === undefined ? base.num_hidden_layers : layers,
    max_position_embeddings: Math.max(...seqs) } as unknown as Record<string, unknown> & { vocab_size: number; num_hidden_layers: number };
  const nLayers = cfg.num_hidden_layers;
  const rows: Record<string, unknown>[] = [];
  let model: Model | undefined, opt: AdamW | undefined;
  try {
    model = fromConfig(cfg, { device, dtype: device === 'cpu' ? 'f32' : 'bf16', seed: 1, gradDtype, seqLen: Math.max(...seqs) });
    opt = adamwFor(model, { lr: 1e-5, betas: [0.9, 0.95], weightDecay: 0.1, maxGradNorm: 1, masterWeights: o.master === 'f32' ? true : 'split' });
    await synchronize(device);
    const staticBytes = memory(device).allocated;
    io.err(`bench train: ${(model.numParameters / 1e9).toFixed(2)}B parameters (${nLayers} layers), weights+grads+AdamW state ${(staticBytes / GiB).toFixed(1)} GiB`);
    for (const S of seqs) {
      let ids: Tensor | undefined, labels: Tensor | undefined;
      try {
        emptyCache(device);
        ids = randint([1, S], cfg.vocab_size, device, 2);
        labels = randint([1, S], cfg.vocab_size, device, 3);
        let kept = 0;
        const step = async () => {
          model!.zeroGrad();
          kept = (await model!.forwardBackward(ids!, labels!, { mlpChunkTokens: o['mlp-chunk'] as number | undefined, keepAttention: keep.keep })).keptAttention;
          await opt!.step({ lr: 1e-5 });
          await synchronize(device);
        };
        resetPeakMemory(device);
        await step(); // warm-up (allocator, cuBLASLt heuristics)
        const times: number[] = [];
        for (let r = 0; r < reps; r++) {
          const t0 = performance.now();
          await step();
          times.push((performance.now() - t0) / 1e3);
        }
        const t = median(times);
        const tps = S / t;
        const mfu = device === 'cpu' ? NaN : (tps * flopsPerToken(model.config, S, model.numParameters)) / PEAK;
        const peak = memory(device).peak;
        rows.push({ seq: S, layers: nLayers, keepAttention: keep.name, keptLayers: kept, secondsPerStep: t, tokensPerSecond: tps, mfu, peakGiB: peak / GiB, status: 'ok' });
        io.err(`  ${S} tokens: ${t.toFixed(3)} s/step, ${Math.round(tps)} tokens/s${Number.isNaN(mfu) ? '' : `, MFU ${(mfu * 100).toFixed(1)}%`}, peak ${(peak / GiB).toFixed(1)} GiB, ` +
          `attention kept in ${kept}/${nLayers} layers (--keep-attention ${keep.name})`);
      } catch (e) {
        if (!isOom(e)) throw e;
        rows.push({ seq: S, layers: nLayers, status: 'OOM', message: (e as Error).message.split('\n')[0] });
        io.err(`  ${S} tokens: out of memory`);
        model.zeroGrad();
        emptyCache(device);
      } finally {
        ids?.dispose();
        labels?.dispose();
      }
    }
  } finally {
    opt?.dispose();
    model?.dispose();
  }
  io.out(table(['seq', 'layers', 's/step', 'tokens/s', 'MFU %', 'peak GiB'], rows.map((r) => r.status === 'ok'
    ? [String(r.seq), String(r.layers), r.secondsPerStep as number, r.tokensPerSecond as number, Number.isNaN(r.mfu) ? '-' : (r.mfu as number) * 100, r.peakGiB as number]
    : [String(r.seq), String(r.layers), 'OOM', '-', '-', '-'])));
  const result = { bench: 'train', model: o.config !== undefined ? String(o.config) : full ? 'mistral-7b' : `mistral-7b-${nLayers}L`, device, gradDtype,
    master: o.master === 'f32' ? 'f32' : 'split', rows };
  if (o.out) {
    fs.mkdirSync(path.dirname(path.resolve(String(o.out))), { recursive: true });
    fs.writeFileSync(String(o.out), JSON.stringify(result, null, 2) + '\n');
  }
  if (o.json) io.json?.(result);
  return 0;
}

/** Parse + run (as `megabeam bench train ...` does), for scripts and tests. */
export const benchTrain = (argv: readonly string[], io?: CliIO): Promise<number> => runCommand(command, 'bench train', argv, io);
