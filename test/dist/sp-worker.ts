// One rank of the sequence-parallel training job test/model-sp.test.ts starts with `megabeam launch`
// (TCP backend, CPU). Usage: sp-worker.ts <layout> [seed]. Every rank also runs the world-1 reference on
// the whole sequence itself (same seed, same data), so it checks its own results: the SP loss curve and
// the parameters after ZeRO-1 AdamW steps. Prints "RESULT sp ok" on success.
import { init } from '../../lib/dist/init';
import * as modelLib from '../../lib/model';
import type { Model } from '../../lib/model';
import { AdamW } from '../../lib/optim';
import { mulberry32 } from '../helpers/rng';

const [, , layoutArg = 'zigzag', seedArg = '1'] = process.argv;
const layout = layoutArg as 'zigzag' | 'contiguous';
const tiny = {
  model_type: 'mistral', hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
  num_key_value_heads: 2, head_dim: 8, vocab_size: 50, rms_norm_eps: 1e-5, rope_theta: 10000.0, tie_word_embeddings: false,
  initializer_range: 0.3, max_position_embeddings: 64, sliding_window: null, hidden_act: 'silu',
};

async function main(): Promise<void> {
  const g = await init({ backend: 'tcp', device: 'cpu', timeoutMs: 20000 });
  const W = g.worldSize, r = g.rank;
  const rng = mulberry32(Number(seedArg));
  const S = 24, steps = 3;
  const data = Array.from({ length: steps }, () => ({
    ids: [Array.from({ length: S }, () => Math.floor(rng() * 50))],
    labels: [Array.from({ length: S }, () => (rng() < 0.2 ? -100 : Math.floor(rng() * 50)))],
  }));
  const hyper = { lr: 3e-2, betas: [0.9, 0.95] as [number, number], eps: 1e-2, weightDecay: 0.1 };
  const entries = (m: Model) => [...m.parameters()].map(([name, param]) => ({ name, param, grad: m.grads().get(name)! }));
  const train = async (m: Model, opt: AdamW, sp: boolean): Promise<number[]> => {
    const losses: number[] = [];
    for (const d of data) {
      m.zeroGrad();
      const sh = sp ? modelLib.shardBatch(d, r, W, { layout }) : d;
      losses.push((await m.forwardBackward(sh.ids, sh.labels, sp ? { group: g, layout, reduceGrads: false } : {})).loss);
      await opt.step();
    }
    return losses;
  };
  const ref = modelLib.fromConfig(tiny, { seed: 29, dtype: 'f32' });
  const lossRef = await train(ref, new AdamW(entries(ref), hyper), false);
  const m = modelLib.fromConfig(tiny, { seed: 29, dtype: 'f32' });
  const losses = await train(m, new AdamW(entries(m), { ...hyper, group: g, gradReduction: 'sum' }), true);
  losses.forEach((l, i) => {
    if (!(Math.abs(l - lossRef[i]) < 1e-4 * lossRef[i])) throw new Error(`step ${i}: loss ${l}, world 1 ${lossRef[i]}`);
  });
  const pr = ref.parameters();
  for (const [name, p] of m.parameters()) {
    const a = await p.toArray(), b = await pr.get(name)!.toArray();
    let e = 0, s = 0;
    for (let i = 0; i < a.length; i++) { e = Math.max(e, Math.abs(a[i] - b[i])); s = Math.max(s, Math.abs(b[i])); }
    if (!(e <= 1e-4 * s)) throw new Error(`${name}: parameters differ from world 1 (${e / s})`);
  }
  await g.destroy();
  console.log(`RESULT sp ok ${losses.map((l) => l.toFixed(5)).join(' ')}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
