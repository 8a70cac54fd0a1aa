// One controlled passkey training run on the CPU (or GPU), for the issue 9 experiments: the example's
// model/data/optimizer, one setting changed at a time, and the numbers that tell runs apart — the mean loss
// per answer digit over windows of steps, the gradient norm before the clip, and the retrieval accuracy on
// `evalN` fresh samples at the training length (all digits right).
//
//   npm run build:ts && node bench/dev/passkey_sweep.js '{"name":"base"}'
//   node bench/dev/passkey_sweep.js '{"name":"bf16","dtype":"bf16"}'
//
// Options (JSON, defaults = the tiny CPU config's first stage): dtype, hidden, layers, heads, kvHeads,
// intermediate, digits, len, steps, tokensPerStep, lr, minLr (default lr/10), warmup, maxGradNorm,
// weightDecay, betas, masterWeights, seed, question, evalN, window (steps per loss window), std (init),
// gradDtype, logitsF32. Prints one JSON line at the end (prefixed RESULT).
'use strict';
let mb;
try { mb = require('megabeam'); } catch { mb = require('../..'); }
const { model: modelLib, train, training, schedules, AdamW } = mb;

const o = Object.assign({
  name: 'run', device: 'cpu', dtype: 'f32', hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, digits: 3,
  len: 64, steps: 1200, tokensPerStep: 512, lr: 3e-3, minLr: undefined, warmup: 50, maxGradNorm: 1, weightDecay: 0.01,
  betas: [0.9, 0.95], masterWeights: undefined, seed: 1, question: 'key', evalN: 200, window: 100, std: 0.02, vocab: 64,
  gradDtype: 'f32',
}, JSON.parse(process.argv[2] || '{}'));

async function main() {
  const config = {
    architectures: ['MistralForCausalLM'], model_type: 'mistral', hidden_size: o.hidden, intermediate_size: o.intermediate,
    num_hidden_layers: o.layers, num_attention_heads: o.heads, num_key_value_heads: o.kvHeads, head_dim: o.hidden / o.heads,
    vocab_size: o.vocab, rope_theta: 1e6, max_position_embeddings: o.len, rms_norm_eps: 1e-5, initializer_range: o.std,
    tie_word_embeddings: false, sliding_window: null,
  };
  const model = modelLib.fromConfig(config, { device: o.device, dtype: o.dtype, seed: o.seed, seqLen: o.len, gradDtype: o.gradDtype });
  const batch = Math.max(1, Math.floor(o.tokensPerStep / o.len));
  const sampleOpts = { digits: o.digits, vocabSize: o.vocab, question: o.question };
  const data = ({ random }) => {
    const input = [], labels = [];
    for (let b = 0; b < batch; b++) {
      const s = training.passkeySample(o.len, random(), random, sampleOpts);
      input.push(Array.from(s.input)); labels.push(Array.from(s.labels));
    }
    return { input, labels };
  };
  const grads = model.grads();
  const entries = [...model.parameters()].map(([name, param]) => ({ name, param, grad: grads.get(name), decay: param.ndim > 1 }));
  const optimizer = new AdamW(entries, { lr: o.lr, betas: o.betas, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
    ...(o.masterWeights !== undefined ? { masterWeights: o.masterWeights } : {}) });
  const t0 = Date.now();
  const r = await train({
    model, data, steps: o.steps, seed: o.seed, optimizer,
    schedule: schedules.warmupCosine({ peak: o.lr, warmup: o.warmup, total: o.steps, min: o.minLr ?? o.lr / 10 }),
  });
  const secs = (Date.now() - t0) / 1e3;
  const loss = [], gn = [];
  for (let a = 0; a < r.records.length; a += o.window) {
    const w = r.records.slice(a, a + o.window);
    loss.push(+(w.reduce((s, x) => s + x.loss, 0) / w.length).toFixed(3));
    gn.push(+(w.reduce((s, x) => s + x.gradNorm, 0) / w.length).toFixed(2));
  }
  // Accuracy at the training length, random depths.
  const random = training.rng(12345);
  let correct = 0;
  for (let i = 0; i < o.evalN; i += batch) {
    const k = Math.min(batch, o.evalN - i);
    const samples = Array.from({ length: k }, () => training.passkeySample(o.len, random(), random, sampleOpts));
    const logits = model.forward(samples.map((s) => Array.from(s.input)));
    const all = await logits.toArray();
    logits.dispose();
    samples.forEach((s, j) => { if (training.passkeyCorrect(s, all.subarray(j * o.len * o.vocab, (j + 1) * o.len * o.vocab), o.vocab)) correct++; });
  }
  optimizer.dispose();
  model.dispose();
  const res = { name: o.name, acc: correct / o.evalN, lossWindows: loss, gradNormWindows: gn, batch, labelled: batch * o.digits, secs: +secs.toFixed(1) };
  console.log('RESULT ' + JSON.stringify(res));
}
main().catch((e) => { console.error(e); process.exit(1); });
