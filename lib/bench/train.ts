// `megabeam bench train`: one full training step (forward + backward with per-layer activation
// checkpointing + fused AdamW with f32 master weights and moments + global-norm clip) of a model with
// Mistral-7B's layer dimensions and 4 layers (vocab 32768) at 16K-128K tokens, bf16 on one GPU:
// seconds/step, tokens/s, MFU (lib/train/train.ts: model FLOPs, 989 TFLOP/s peak) and peak memory.
// `--full`: the whole Mistral-7B (32 layers; bf16 linear-weight gradients by default so weights, master,
// moments and gradients take ~116 GB) at the longest contexts that fit; an OOM is a row, not a crash.
// The f32 master weights are split by default (bf16 param + 16-bit correction, lib/optim.ts): the same
// update as an f32 copy in 2 bytes less per parameter (--master f32: the copy; bench/NOTES.md has the bytes).
// PyTorch eager yardstick of the same step: bench/torch_train.py (same shapes, same flags).
// Under `megabeam launch` (world > 1) the step is sequence parallel, as train() runs it: every rank holds the
// whole model, takes its zigzag shard of each sequence (ring attention in every layer) and the AdamW is ZeRO-1
// over the group (each rank updates its shard of the parameters); the time is the slowest rank's, MFU is per
// GPU, the peak is the largest rank's. `--device cpu` ranks talk over TCP (how the tests run it).
import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { ArgumentError, MegabeamError } from '../errors';
import { DeviceLike, DeviceString, parseDevice } from '../device';
import { distEnv, init as distInit } from '../dist/init';
import type { Group } from '../dist/types';
import { shardBatch } from '../model/shard';
import { fromConfig, Model } from '../model/mistral';
import { AdamW } from '../optim';
import { Tensor, emptyCache, memory, resetPeakMemory, synchronize, tensor } from '../tensor';
import { adamwFor, flopsPerToken } from '../train/train';
import { MISTRAL_7B, parseKeepPolicies } from './model';
import { GiB, gatherNumbers, median, slowestRank, table } from './util';
import { runCommand } from '../cli';
import type { Command } from '../cli';
import { CliIO, FlagValues } from '../cli/args';
import { JSON_FLAG, OUT_FLAG, REPS_FLAG, checkOutputPath } from '../cli/common';

const PEAK = 989e12; // H100/H200 dense bf16

export const command: Command = {
  usage: 'megabeam bench train [--seqs 16k,32k,64k,128k] [--layers 4] [--full] [--keep-attention auto] [--reps 3] [--json] [--out FILE]\n' +
    '       megabeam launch --nproc W megabeam bench train ...   (sequence parallel over W GPUs)',
  description: 'One training step (fwd+bwd with activation checkpointing, fused AdamW with f32 master weights, clip)\n' +
    'of Mistral-7B-shaped layers, bf16 on CUDA: s/step, tokens/s, MFU, peak memory. --full: the whole\n' +
    'Mistral-7B (default --seqs 16k,32k,64k). Yardstick: python3 bench/torch_train.py with the same flags.\n' +
    'Under megabeam launch: sequence parallel (zigzag shards, ring attention, ZeRO-1 AdamW), one GPU per rank.',
  flags: {
    seqs: { type: 'sizes', min: 1, help: 'tokens per step (one sequence; launched: a multiple of 2 x world size)', default: '16k,32k,64k,128k (--full: 16k,32k,64k)' },
    layers: { type: 'int', min: 1, max: 1024, help: 'decoder layers', default: '4 (--full: 32)' },
    full: { type: 'bool', help: 'the whole Mistral-7B' },
    reps: { ...REPS_FLAG, help: 'timed steps after one warm-up step (median)', default: '3' },
    'grad-dtype': { type: 'choice', choices: ['f32', 'param'], help: 'linear-weight gradient dtype', default: 'f32 (--full: param)' },
    'mlp-chunk': { type: 'size', min: 1, help: 'tokens per MLP chunk', default: '8k' },
    optimizer: { type: 'choice', choices: ['adamw', 'none'], help: 'none: forward + backward only (weights and gradients; with a group the gradients are all-reduced)', default: 'adamw' },
    master: { type: 'choice', choices: ['split', 'f32'], help: 'f32 master weights as bf16 param + 16-bit correction (split, 2 B/param) or an f32 copy (4 B/param)', default: 'split' },
    'keep-attention': { type: 'string', metavar: 'auto|all|none|K', help: 'selective checkpointing (none = plain per-layer recompute, K = layers)', default: 'auto' },
    config: { type: 'string', metavar: 'FILE', help: 'another HF config.json instead of Mistral-7B (--layers still applies when given)' },
    device: { type: 'string', help: 'device (cpu only for smoke tests with a tiny --config; launched: cuda = cuda:<local rank>, cpu = TCP ranks)', default: 'cuda' },
    json: JSON_FLAG,
    out: OUT_FLAG,
  },
  run: (o, io) => run(o, io),
};

/** Uniform random token ids (a fixed xorshift stream: the same ids as bench/torch_train.py need not match, only the shapes). */
function randIds(n: number, hi: number, seed: number): Int32Array {
  const a = new Int32Array(n);
  let x = (seed * 0x9e3779b1) >>> 0 || 1;
  for (let i = 0; i < a.length; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; a[i] = x % hi; }
  return a;
}

function isOom(e: unknown): boolean {
  return e instanceof MegabeamError && e.code === 'ERR_OOM';
}

/** A collective failed because a peer aborted the group, died or timed out. */
function isGroupFailure(e: unknown): boolean {
  return e instanceof MegabeamError && (e.code === 'ERR_COMM' || e.code === 'ERR_TIMEOUT' || e.code === 'ERR_NCCL');
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
  const asked: DeviceString = parseDevice((o.device as string | undefined) ?? 'cuda').name;
  const { worldSize: W } = distEnv();
  for (const S of seqs)
    if (W > 1 && S % (2 * W) !== 0) throw new ArgumentError(`--seqs: ${S} is not a multiple of ${2 * W} (zigzag shards over ${W} ranks)`);
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
  let model: Model | undefined, opt: AdamW | undefined, group: Group | undefined;
  let device: DeviceLike = asked, rank = 0;
  try {
    // Under a launcher with a world > 1: join the job (cuda:<local rank> over NCCL, or TCP for --device cpu).
    if (W > 1) {
      group = await distInit(asked === 'cpu' ? { device: 'cpu', backend: 'tcp' } : {});
      device = group.device;
      rank = group.rank;
    }
    const say = rank === 0 ? (x: string) => io.err(x) : () => {};
    model = fromConfig(cfg, { device, dtype: device === 'cpu' ? 'f32' : 'bf16', seed: 1, gradDtype, seqLen: Math.max(...seqs) });
    const withOpt = o.optimizer !== 'none';
    if (withOpt) opt = adamwFor(model, { lr: 1e-5, betas: [0.9, 0.95], weightDecay: 0.1, maxGradNorm: 1, masterWeights: o.master === 'f32' ? true : 'split',
      ...(group ? { group, gradReduction: 'sum' as const } : {}) });
    await synchronize(device);
    const staticBytes = memory(device).allocated;
    say(`bench train: ${(model.numParameters / 1e9).toFixed(2)}B parameters (${nLayers} layers), weights+grads${withOpt ? '+AdamW state' : ' (no optimizer)'} ` +
      `${(staticBytes / GiB).toFixed(1)} GiB${group ? ` per rank (${withOpt ? 'ZeRO-1' : 'gradients all-reduced'} over ${W} ranks on ${group.backend})` : ''}`);
    for (const S of seqs) {
      let ids: Tensor | undefined, labels: Tensor | undefined;
      try {
        emptyCache(device);
        // The same whole sequence on every rank; each takes its zigzag shard (the model knows its positions).
        let idsH = randIds(S, cfg.vocab_size, 2), labelsH = randIds(S, cfg.vocab_size, 3);
        if (group) ({ ids: idsH, labels: labelsH } = shardBatch({ ids: idsH, labels: labelsH }, rank, W, { layout: 'zigzag' }));
        ids = tensor(idsH, { dtype: 'i32', device, shape: [1, S / W] });
        labels = tensor(labelsH, { dtype: 'i32', device, shape: [1, S / W] });
        let kept = 0, loss = 0, fb = 0;
        const fbTimes: number[] = [];
        const step = async () => {
          model!.zeroGrad();
          const t0 = performance.now();
          const r = await model!.forwardBackward(ids!, labels!, {
            mlpChunkTokens: o['mlp-chunk'] as number | undefined, keepAttention: keep.keep,
            // Sequence parallel: each rank's loss part over the global token count; ZeRO-1 reduce-scatters the
            // gradients itself, without an optimizer they are all-reduced here.
            ...(group ? { group, layout: 'zigzag' as const, lossDivisor: S, reduceGrads: !withOpt } : {}),
          });
          kept = r.keptAttention;
          loss = r.loss;
          await synchronize(device);
          fb = (performance.now() - t0) / 1e3;  // forward + backward alone (this rank)
          if (opt) await opt.step({ lr: 1e-5 });
        };
        resetPeakMemory(device);
        await slowestRank(device, group, step); // warm-up (allocator, cuBLASLt heuristics)
        // The warm-up step's loss: the same weights and tokens at every world size (with a group forwardBackward
        // returns the whole sequence's loss on every rank).
        const firstLoss = loss;
        const times: number[] = [];
        for (let r = 0; r < reps; r++) { times.push(await slowestRank(device, group, step)); fbTimes.push(fb); }
        const t = median(times);
        const fwdBwd = Math.max(...(await gatherNumbers(group, device, [median(fbTimes)])).map((x) => x[0]));
        const tps = S / t;
        const mfu = device === 'cpu' ? NaN : (tps * flopsPerToken(model.config, S, model.numParameters)) / (PEAK * W);
        const peaks = (await gatherNumbers(group, device, [memory(device).peak / GiB])).map((x) => x[0]);
        const peak = Math.max(...peaks);
        rows.push({ seq: S, layers: nLayers, world: W, keepAttention: keep.name, keptLayers: kept, secondsPerStep: t, fwdBwdSeconds: fwdBwd, tokensPerSecond: tps, mfu,
          peakGiB: peak, ...(group ? { peakGiBPerRank: peaks } : {}), firstLoss, status: 'ok' });
        say(`  ${S} tokens${group ? ` (${S / W} per rank)` : ''}: ${t.toFixed(3)} s/step (fwd+bwd ${fwdBwd.toFixed(3)} s), ${Math.round(tps)} tokens/s` +
          `${Number.isNaN(mfu) ? '' : `, MFU ${(mfu * 100).toFixed(1)}%${group ? ' per GPU' : ''}`}, peak ${peak.toFixed(1)} GiB${group ? ' (largest rank)' : ''}, ` +
          `attention kept in ${kept}/${nLayers} layers (--keep-attention ${keep.name})`);
      } catch (e) {
        if (group && (isOom(e) || isGroupFailure(e))) {
          // A rank out of memory takes the group down (its peers would wait in a collective until the timeout):
          // the failing rank says so, the others see the group fail; no later size can run.
          if (isOom(e)) {
            group.abort(`rank ${rank} ran out of memory at ${S} tokens`);
            io.err(`  ${S} tokens: rank ${rank} out of memory: ${(e as Error).message.split('\n')[0]}`);
          }
          rows.push({ seq: S, layers: nLayers, world: W, status: isOom(e) ? 'OOM' : 'failed', message: (e as Error).message.split('\n')[0] });
          break;
        }
        if (!isOom(e)) throw e;
        rows.push({ seq: S, layers: nLayers, world: W, status: 'OOM', message: (e as Error).message.split('\n')[0] });
        say(`  ${S} tokens: out of memory`);
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
    await group?.destroy();
  }
  if (rank !== 0) return 0;  // rank 0 prints and writes for the job (an OOM or a failed group is a row, as without a group)
  io.out(table(['seq', 'layers', 's/step', 'fwd+bwd s', 'tokens/s', `MFU %${W > 1 ? ' per GPU' : ''}`, `peak GiB${W > 1 ? ' (max rank)' : ''}`],
    rows.map((r) => r.status === 'ok'
      ? [String(r.seq), String(r.layers), r.secondsPerStep as number, r.fwdBwdSeconds as number, r.tokensPerSecond as number,
        Number.isNaN(r.mfu) ? '-' : (r.mfu as number) * 100, r.peakGiB as number]
      : [String(r.seq), String(r.layers), String(r.status), '-', '-', '-', '-'])));
  const result = { bench: 'train', model: o.config !== undefined ? String(o.config) : full ? 'mistral-7b' : `mistral-7b-${nLayers}L`, device, world: W,
    gradDtype, optimizer: o.optimizer === 'none' ? 'none' : 'adamw', master: o.master === 'f32' ? 'f32' : 'split', rows };
  if (o.out) {
    fs.mkdirSync(path.dirname(path.resolve(String(o.out))), { recursive: true });
    fs.writeFileSync(String(o.out), JSON.stringify(result, null, 2) + '\n');
  }
  if (o.json) io.json?.(result);
  return 0;
}

/** Parse + run (as `megabeam bench train ...` does), for scripts and tests. */
export const benchTrain = (argv: readonly string[], io?: CliIO): Promise<number> => runCommand(command, 'bench train', argv, io);
