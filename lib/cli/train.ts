// `megabeam train` (a Mistral/Llama config + llm.c token files -> training with checkpoints, JSONL log and
// a progress line) and `megabeam plot` (the log's curves as SVG; lib/cli/plot.ts registers it): entries of
// the command table in lib/cli.ts.
import * as fs from 'fs';
import * as path from 'path';
import { cuda, parseDevice } from '../device';
import { ArgumentError, DtypeError } from '../errors';
import { Sampler, TokenFile, tokens } from '../data';
import { fromConfig, fromPretrained, Model } from '../model/mistral';
import { schedules, Schedule } from '../optim';
import { train } from '../train/train';
import { latestCheckpoint } from '../train/checkpoint';
import { plotLog } from '../train/plot';
import { runCommand } from '../cli';
import type { Command } from '../cli';
import { CliIO, FlagValues } from './args';
import { distEnv, init as distInit } from '../dist/init';
import type { Group } from '../dist/types';
import { DEVICE_FLAG } from './common';

function need<T>(v: T | undefined, flag: string): T {
  if (v === undefined) throw new ArgumentError(`--${flag} is required`);
  return v;
}

export const command: Command = {
  usage: 'megabeam train --config config.json --data tokens.bin --seq 64k --steps N [options]',
  description: 'Trains a Mistral/Llama model (HF config.json, random init or --init weights) on llm.c token files\n' +
    '(u16/u32, comma list), one sequence of --seq tokens per micro-batch, AdamW with a warmup + decay schedule.\n' +
    'Writes a JSONL log (one record per step: loss, lr, gradNorm, tokens/s, MFU, peak memory) and atomic\n' +
    'checkpoints; --resume continues the latest one with the same loss curve.\n' +
    'Sequence parallel: `megabeam launch --nproc W megabeam train ...` runs W ranks (cuda:<local rank> each, NCCL;\n' +
    'or --device cpu over TCP): every rank reads the same sequences and trains its zigzag shard with ring attention,\n' +
    'ZeRO-1 optimizer shards and summed gradients (the loss curve of the one-process run); rank 0 prints, logs and\n' +
    'writes the model, every rank its optimizer shard of the checkpoint. --seq must be a multiple of 2·W.',
  flags: {
    config: { type: 'string', metavar: 'FILE', help: 'HF config.json (or a model directory holding one)' },
    data: { type: 'string', metavar: 'FILE[,FILE]', help: 'llm.c token file(s) (megabeam: tokens.write / tokens.fromTexts)' },
    seq: { type: 'size', min: 1, help: 'tokens per sequence' },
    steps: { type: 'int', min: 1, help: 'optimizer steps in total (a resumed run continues to this)' },
    lr: { type: 'number', min: 0, help: 'peak learning rate', default: '3e-4' },
    'min-lr': { type: 'number', min: 0, help: 'final learning rate of the decay', default: 'lr/10' },
    warmup: { type: 'int', min: 0, help: 'linear warmup steps', default: '0' },
    schedule: { type: 'choice', choices: ['cosine', 'linear', 'constant'], help: 'decay after warmup', default: 'cosine' },
    'batch-accum': { type: 'int', min: 1, help: 'micro-batches (sequences) per step: gradient accumulation', default: '1' },
    'weight-decay': { type: 'number', min: 0, help: 'AdamW decoupled weight decay (matrices only)', default: '0.1' },
    beta2: { type: 'number', min: 0, max: 0.999999, help: 'AdamW beta2', default: '0.95' },
    'max-grad-norm': { type: 'number', min: 0, help: 'clip the global gradient norm (0: off)', default: '1' },
    'ckpt-dir': { type: 'string', metavar: 'DIR', help: 'checkpoint directory (step-N/ subdirectories and a latest pointer)' },
    'ckpt-every': { type: 'int', min: 1, help: 'checkpoint every N steps (always at the end and on Ctrl-C)', default: 'only at the end' },
    keep: { type: 'int', min: 1, help: 'checkpoints to keep', default: '2' },
    resume: { type: 'bool', help: 'continue from the latest checkpoint in --ckpt-dir (starts fresh if there is none)' },
    log: { type: 'string', metavar: 'FILE', help: 'JSONL log of every step' },
    init: { type: 'string', metavar: 'DIR', help: 'start from these HF weights (safetensors) instead of a random init' },
    save: { type: 'string', metavar: 'DIR', help: 'write the final model here (config.json + safetensors)' },
    device: DEVICE_FLAG,
    dtype: { type: 'choice', choices: ['bf16', 'f32', 'f16'], help: 'parameter/activation dtype (f16 is refused: no loss scaling)', default: 'bf16 on CUDA, f32 on the CPU' },
    'grad-dtype': { type: 'choice', choices: ['f32', 'param'], help: 'linear-layer weight gradients in f32 or the parameter dtype', default: 'f32' },
    'mlp-chunk': { type: 'size', min: 1, help: 'tokens per MLP chunk in the backward', default: '8k' },
    master: { type: 'choice', choices: ['split', 'f32'], help: 'bf16 params: f32 master as param + 16-bit correction (split: same update, 2 B/param less) or an f32 copy', default: 'split' },
    seed: { type: 'int', min: 0, max: 0xffffffff, help: 'seed of the init and the data order', default: '0' },
    quiet: { type: 'bool', help: 'no progress line' },
  },
  async run(o: FlagValues, io: CliIO): Promise<number> {
    const cfgPath = need(o.config as string | undefined, 'config');
    const dataArg = need(o.data as string | undefined, 'data');
    const seq = need(o.seq as number | undefined, 'seq');
    const steps = need(o.steps as number | undefined, 'steps');
    const ckptDir = o['ckpt-dir'] as string | undefined;
    if (o.resume && !ckptDir) throw new ArgumentError('--resume needs --ckpt-dir');
    if (o['ckpt-every'] !== undefined && !ckptDir) throw new ArgumentError('--ckpt-every needs --ckpt-dir');
    let cfgText: string;
    const cfgFile = fs.existsSync(cfgPath) && fs.statSync(cfgPath).isDirectory() ? path.join(cfgPath, 'config.json') : cfgPath;
    try {
      cfgText = fs.readFileSync(cfgFile, 'utf8');
    } catch (e) {
      throw new ArgumentError(`--config: cannot read ${cfgFile}: ${(e as Error).message}`);
    }
    const asked = o.device === undefined ? undefined : parseDevice(String(o.device)).name;
    const { worldSize: world } = distEnv();
    if (world > 1 && seq % (2 * world) !== 0)
      throw new ArgumentError(`--seq ${seq} must be a multiple of 2·world size (${2 * world}) for the zigzag shards`);
    // Refused before anything is loaded (train() refuses f16 models too).
    if (o.dtype === 'f16') throw new DtypeError('--dtype f16 is refused: f16 training needs loss scaling, which megabeam does not do; use bf16 (same memory, f32 range) or f32');
    const seed = (o.seed as number | undefined) ?? 0;
    const files: TokenFile[] = String(dataArg).split(',').map((f) => tokens.open(f));
    let model: Model | undefined;
    let group: Group | undefined;
    try {
      // Under a launcher (megabeam launch, torchrun, srun, mpirun) with a world > 1: join the job. A CUDA
      // rank takes cuda:<local rank> (or MEGABEAM_DEVICE): one --device cuda:N for every rank would put
      // them all on one GPU.
      if (world > 1) group = await distInit(asked === 'cpu' ? { device: 'cpu', backend: 'tcp' } : {});
      const device = group ? group.device : asked ?? (cuda.isAvailable() ? 'cuda:0' : 'cpu');
      const rank = group?.rank ?? 0;
      const say = rank === 0 ? (s: string) => io.err(s) : () => {};
      const dtype = (o.dtype as 'bf16' | 'f32' | undefined) ?? (device === 'cpu' ? 'f32' : 'bf16');
      const sampler = new Sampler(files, { seqLen: seq, seed });
      const mopts = { device, dtype, seqLen: seq, gradDtype: (o['grad-dtype'] as 'f32' | 'param' | undefined) ?? 'f32' };
      model = o.init !== undefined ? await fromPretrained(String(o.init), mopts) : fromConfig(cfgText, { ...mopts, seed });
      const lr = (o.lr as number | undefined) ?? 3e-4;
      const minLr = (o['min-lr'] as number | undefined) ?? lr / 10;
      const warmup = (o.warmup as number | undefined) ?? 0;
      const kind = (o.schedule as string | undefined) ?? 'cosine';
      if (minLr > lr) throw new ArgumentError(`--min-lr (${minLr}) must be ≤ --lr (${lr})`);
      const schedule: Schedule = kind === 'constant' ? schedules.constant(lr)
        : (kind === 'linear' ? schedules.warmupLinear : schedules.warmupCosine)({ peak: lr, warmup, total: steps, min: minLr });
      const resumeFrom = o.resume && ckptDir ? latestCheckpoint(ckptDir) : null;
      if (o.resume && !resumeFrom) say(`megabeam train: no checkpoint in ${ckptDir}: starting fresh`);
      else if (resumeFrom) say(`megabeam train: resuming from ${resumeFrom}`);
      say(`megabeam train: ${(model.numParameters / 1e6).toFixed(2)}M parameters, ${model.config.numLayers} layers, ${dtype} on ${device}` +
        (group ? ` (rank 0 of ${group.worldSize}, sequence parallel over ${group.backend})` : '') + '; ' +
        `${sampler.windows} sequences of ${seq} tokens; ${steps} steps × ${(o['batch-accum'] as number | undefined) ?? 1} micro-batch(es)`);
      const ac = new AbortController();
      const onSig = () => { say('megabeam train: stopping after this step (checkpointing)…'); ac.abort(); };
      process.once('SIGINT', onSig);
      process.once('SIGTERM', onSig);
      let r;
      try {
        r = await train({
          model, data: sampler, steps, schedule, seed, group,
          optimizer: { lr, betas: [0.9, (o.beta2 as number | undefined) ?? 0.95], weightDecay: (o['weight-decay'] as number | undefined) ?? 0.1, eps: 1e-8,
            masterWeights: o.master === 'f32' ? true : 'split' },
          maxGradNorm: (o['max-grad-norm'] as number | undefined) ?? 1,
          microBatches: (o['batch-accum'] as number | undefined) ?? 1,
          checkpoint: ckptDir ? { dir: ckptDir, every: o['ckpt-every'] as number | undefined, keep: o.keep as number | undefined,
            meta: { command: 'megabeam train', flags: o } } : undefined,
          resume: !!resumeFrom,
          log: o.log as string | undefined,
          progress: !o.quiet,
          signal: ac.signal,
          forward: o['mlp-chunk'] !== undefined ? { mlpChunkTokens: o['mlp-chunk'] as number } : undefined,
        });
      } finally {
        process.removeListener('SIGINT', onSig);
        process.removeListener('SIGTERM', onSig);
      }
      r.optimizer.dispose();
      const last = r.records[r.records.length - 1];
      // Parameters are replicated after every ZeRO-1 step: rank 0 writes them, the others wait for it.
      if (o.save !== undefined && rank === 0) await model.save(String(o.save));
      if (group) await group.barrier();
      if (rank === 0) io.out(`${r.aborted ? 'stopped' : 'done'} at step ${r.step}/${steps}` +
        (last ? `: loss ${last.loss.toFixed(4)}, ${Math.round(last.tokensPerSecond)} tokens/s` : '') +
        (r.checkpoint ? `; checkpoint ${r.checkpoint}` : '') + (o.log ? `; log ${o.log}` : '') + (o.save ? `; model ${o.save}` : ''));
      return r.aborted ? 130 : 0;
    } finally {
      model?.dispose();
      for (const f of files) f.close();
      await group?.destroy();
    }
  },
};

export const plotCommand: Command = {
  usage: 'megabeam plot log.jsonl --out loss.svg',
  description: 'Draws the curves of a `megabeam train` / train() JSONL log (loss and eval loss, learning rate, tokens/s,\ngradient norm against the step) as one SVG.',
  takesArgs: 'mixed',
  flags: {
    out: { type: 'string', metavar: 'FILE', help: 'the SVG to write', default: 'the log name with .svg' },
    title: { type: 'string', help: 'title prefix of the panels', default: 'the log file name' },
  },
  async run(o: FlagValues, io: CliIO, args: string[]): Promise<number> {
    const files = args;
    if (files.length !== 1) throw new ArgumentError(`plot takes one log file, got ${files.length}`);
    const log = files[0];
    let text: string;
    try {
      text = fs.readFileSync(log, 'utf8');
    } catch (e) {
      throw new ArgumentError(`cannot read ${log}: ${(e as Error).message}`);
    }
    const out = (o.out as string | undefined) ?? log.replace(/(\.jsonl?)?$/, '.svg');
    const svg = plotLog(text, (o.title as string | undefined) ?? path.basename(log));
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    fs.writeFileSync(out, svg);
    io.out(`wrote ${out}`);
    return 0;
  },
};

/** Parse + run (as `megabeam train ...` does), for scripts and tests. */
export const trainCli = (argv: readonly string[], io?: CliIO): Promise<number> => runCommand(command, 'train', argv, io);
export const plotCli = (argv: readonly string[], io?: CliIO): Promise<number> => runCommand(plotCommand, 'plot', argv, io);
