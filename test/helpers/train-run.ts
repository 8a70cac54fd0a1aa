// Shared by test/train.test.ts and its child process: a tiny model trained on passkey retrieval (64-token
// sequences drawn with the loop's checkpointed RNG) and on a token file through a Sampler.
import * as fs from 'fs';
import { fromConfig } from '../../lib/model/mistral';
import { Sampler, tokens } from '../../lib/data';
import { train, TrainOptions, TrainResult, BatchContext } from '../../lib/train/train';
import { passkeySample } from '../../lib/train/passkey';

export const TINY = {
  model_type: 'mistral', hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, vocab_size: 32, rope_theta: 10000, max_position_embeddings: 4096, initializer_range: 0.05,
};

export function passkeyBatch(len = 32, digits = 2) {
  return ({ random }: BatchContext) => {
    const s = passkeySample(len, random(), random, { digits, vocabSize: TINY.vocab_size });
    return { input: s.input, labels: s.labels };
  };
}

/** A token file of a random-ish stream over the tiny vocabulary (deterministic). */
export function writeTokens(file: string, n = 4096): void {
  const ids: number[] = [];
  let x = 12345;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; ids.push(i % 7 === 0 ? 1 : (x >>> 16) % TINY.vocab_size); }
  tokens.write(file, ids);
}

/**
 * One run: `kind` 'passkey' (batch function + RNG) or 'sampler' (token file). Model seed 5, or `modelSeed`
 * (a resumed run uses a different one: everything must come from the checkpoint).
 */
export async function run(kind: 'passkey' | 'sampler', o: Partial<TrainOptions> & { tokenFile?: string; modelSeed?: number }): Promise<TrainResult> {
  const model = fromConfig(TINY, { seed: o.modelSeed ?? 5 });
  const file = kind === 'sampler' ? tokens.open(o.tokenFile!) : undefined;
  try {
    const data = kind === 'sampler' ? new Sampler(file!, { seqLen: 48, seed: 9 }) : passkeyBatch();
    const r = await train({
      model, data, steps: 10, microBatches: 2, seed: 3,
      optimizer: { lr: 2e-3, weightDecay: 0.1, betas: [0.9, 0.95] }, maxGradNorm: 0.5,
      ...o,
    } as TrainOptions);
    r.optimizer.dispose();
    return r;
  } finally {
    model.dispose();
    file?.close();
  }
}

export function losses(log: string): { step: number; loss: number; lr: number; gradNorm: number }[] {
  return fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
    .map((r) => ({ step: r.step, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm }));
}

/** A CLI io that collects what a command prints (out and err lines). */
export const io = () => {
  const out: string[] = [], err: string[] = [];
  return { out, err, io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s) } };
};
