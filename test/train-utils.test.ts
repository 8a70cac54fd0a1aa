import t from 'tap';
import { passkeySample, passkeyCorrect, rng, PASSKEY_TOKENS, IGNORE_INDEX } from '../lib/train/passkey';
import { plotLog, parseLog } from '../lib/train/plot';
import { renderHeatmap } from '../lib/svg';
import { throwsCode } from './helpers/assert';

t.test('passkey samples put the key at the asked depth and label only the answer', async (t) => {
  const r = rng(42);
  for (const [len, depth] of [[64, 0], [64, 1], [200, 0.5], [1000, 0.25]] as const) {
    const s = passkeySample(len, depth, r);
    t.equal(s.input.length, len);
    t.equal(s.input[0], PASSKEY_TOKENS.BOS);
    t.equal(s.input[s.keyPosition], PASSKEY_TOKENS.KEY);
    const filler = len - 12;
    t.equal(s.keyPosition - 1, Math.round(depth * filler), `${len}@${depth}: filler before the key`);
    t.same(Array.from(s.input.subarray(s.keyPosition + 1, s.keyPosition + 6)), s.answer.map((d) => d + 2), 'digits after KEY');
    const labelled = Array.from(s.labels.entries()).filter(([, v]) => v !== IGNORE_INDEX).map(([i]) => i);
    t.same(labelled, s.answerPositions, 'only the answer positions are labelled');
    t.equal(s.input[s.answerPositions[0]], PASSKEY_TOKENS.KEY, 'the question repeats the KEY marker');
    t.equal(s.input.filter((x) => x === PASSKEY_TOKENS.KEY).length, 2);
    t.same(Array.from(s.input.subarray(s.answerPositions[0] + 1)), s.answer.slice(0, 4).map((d) => d + 2), 'the answer so far after the question');
    const a = passkeySample(len, depth, rng(7), { question: 'ask' }), k = passkeySample(len, depth, rng(7));
    t.equal(a.input[a.answerPositions[0]], PASSKEY_TOKENS.ASK, "question: 'ask' puts the ASK token there");
    t.same(Array.from(a.input).map((x, i) => (i === a.answerPositions[0] ? PASSKEY_TOKENS.KEY : x)), Array.from(k.input), 'and nothing else differs');
    // a perfect predictor is judged correct, one wrong digit is not
    const V = 64, logits = new Float32Array(len * V);
    s.answerPositions.forEach((p, j) => { logits[p * V + 2 + s.answer[j]] = 5; });
    t.ok(passkeyCorrect(s, logits, V));
    logits[s.answerPositions[4] * V + 2 + ((s.answer[4] + 1) % 10)] = 9;
    t.notOk(passkeyCorrect(s, logits, V));
  }
  throwsCode(t, () => passkeySample(10, 0.5, r), 'ERR_ARG', 'too short');
  throwsCode(t, () => passkeySample(100, 1.5, r), 'ERR_ARG', 'depth out of range');
  throwsCode(t, () => passkeySample(100, 0.5, r, { question: 'x' as never }), 'ERR_ARG', 'bad question');
});

t.test('plot and heat map', async (t) => {
  const log = ['{"step":1,"loss":4.2,"lr":0.001,"tokensPerSecond":1000}', 'not json', '{"step":2,"loss":3.9,"lr":0.002}', ''].join('\n');
  t.equal(parseLog(log).length, 2);
  const svg = plotLog(log);
  t.match(svg, /<svg[^>]*>/);
  t.equal((svg.match(/class="panel"/g) ?? []).length, 3, 'loss, lr and tokens/s panels');
  throwsCode(t, () => plotLog('nothing here'), 'ERR_ARG');
  const hm = renderHeatmap({ title: 't', xLabel: 'context', yLabel: 'depth', xTicks: ['1K', '2K'], yTicks: ['0%', '50%', '100%'],
    values: [[1, 0.5], [0, NaN], [0.25, 1]] });
  t.equal((hm.match(/class="cell"/g) ?? []).length, 6);
  t.match(hm, />50%</);
  t.match(hm, />–</, 'unmeasured cell');
});
