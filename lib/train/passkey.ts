// Passkey retrieval, the synthetic long-context task (needle in a haystack): a number hidden at a chosen
// depth in random filler, asked for at the end. Answering needs attention across the whole sequence: the
// answer digits can only be copied from right after the KEY marker, wherever it is.
//
// Token layout (vocabulary of `vocabSize` >= 24 ids):
//   0 PAD, 1 BOS, 2..11 the digits 0..9, 12 KEY, 13 ASK, 14.. filler words
//   input:  BOS filler… KEY d1…dn filler… KEY d1…d(n−1)      (question: 'key', the default)
//           BOS filler… KEY d1…dn filler… ASK d1…d(n−1)      (question: 'ask')
//   labels: IGNORE everywhere except where the next token is an answer digit (KEY/ASK → d1, d1 → d2, …)
//
// Why the question repeats the KEY marker by default (as real passkey prompts repeat "the pass key is"):
// then the answer is a literal continuation of an earlier span, which an induction head copies by matching
// the last tokens (KEY d1…dj here = KEY d1…dj there). With a distinct ASK token the span after the
// question never matches the span after the key, so a repeated digit (70% of 5-digit keys have one) is
// ambiguous to a one-token match, and the model must learn position-after-marker offsets instead: on the
// H200 the 38M model plateaued near 0.6 nats per digit that way.
import { ArgumentError } from '../errors';
import { optionsArg, show } from '../guard';

export const PASSKEY_TOKENS = { PAD: 0, BOS: 1, DIGIT0: 2, KEY: 12, ASK: 13, FILLER0: 14 } as const;
export const IGNORE_INDEX = -100;

export interface PasskeySample {
  input: Int32Array;
  labels: Int32Array;
  /** The hidden digits (0..9). */
  answer: number[];
  /** Positions whose label is an answer digit (length = digits). */
  answerPositions: number[];
  /** Position of the (first) KEY marker. */
  keyPosition: number;
}

/** A small deterministic generator (xorshift32) so samples are reproducible from a seed. */
export function rng(seed: number): () => number {
  if (typeof seed !== 'number' || !Number.isFinite(seed)) throw new ArgumentError(`passkey: rng seed must be a finite number, got ${show(seed)}`);
  let x = (seed >>> 0) || 0x9e3779b9;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

export function passkeySample(length: number, depth: number, random: () => number,
    opts: { digits?: number; vocabSize?: number; question?: 'key' | 'ask' } = {}): PasskeySample {
  opts = optionsArg('passkeySample', opts);
  if (typeof length !== 'number') throw new ArgumentError(`passkey: length must be a number, got ${show(length)}`);
  if (typeof depth !== 'number') throw new ArgumentError(`passkey: depth must be a number in [0, 1], got ${show(depth)}`);
  if (typeof random !== 'function') throw new ArgumentError(`passkey: random must be a function returning [0, 1), got ${show(random)}`);
  const n = opts.digits ?? 5, V = opts.vocabSize ?? 64;
  if (!Number.isSafeInteger(n) || n < 1 || n > 16) throw new ArgumentError('passkey: digits must be 1..16');
  if (!Number.isSafeInteger(V) || V < 24) throw new ArgumentError('passkey: vocabSize must be >= 24');
  const question = opts.question ?? 'key';
  if (question !== 'key' && question !== 'ask') throw new ArgumentError(`passkey: question must be 'key' or 'ask', got ${show(question)}`);
  const filler = length - 2 * n - 2;
  if (!Number.isSafeInteger(length) || filler < 0) throw new ArgumentError(`passkey: length must be >= ${2 * n + 2}`);
  if (!(depth >= 0 && depth <= 1)) throw new ArgumentError('passkey: depth must be in [0, 1]');
  const before = Math.round(depth * filler);
  const input = new Int32Array(length), labels = new Int32Array(length).fill(IGNORE_INDEX);
  const answer = Array.from({ length: n }, () => Math.floor(random() * 10));
  const word = () => PASSKEY_TOKENS.FILLER0 + Math.floor(random() * (V - PASSKEY_TOKENS.FILLER0));
  let p = 0;
  input[p++] = PASSKEY_TOKENS.BOS;
  for (let i = 0; i < before; i++) input[p++] = word();
  const keyPosition = p;
  input[p++] = PASSKEY_TOKENS.KEY;
  for (const d of answer) input[p++] = PASSKEY_TOKENS.DIGIT0 + d;
  for (let i = before; i < filler; i++) input[p++] = word();
  const ask = p;
  input[p++] = question === 'key' ? PASSKEY_TOKENS.KEY : PASSKEY_TOKENS.ASK;
  for (let j = 0; j < n - 1; j++) input[p++] = PASSKEY_TOKENS.DIGIT0 + answer[j];
  const answerPositions: number[] = [];
  for (let j = 0; j < n; j++) {
    labels[ask + j] = PASSKEY_TOKENS.DIGIT0 + answer[j];
    answerPositions.push(ask + j);
  }
  return { input, labels, answer, answerPositions, keyPosition };
}

/** Whether argmax logits at the answer positions reproduce every digit. logits: row-major [length, vocab]. */
export function passkeyCorrect(sample: PasskeySample, logits: Float32Array, vocabSize: number): boolean {
  if (!sample || typeof sample !== 'object' || !Array.isArray(sample.answerPositions) || !Array.isArray(sample.answer) ||
      sample.answer.length !== sample.answerPositions.length)
    throw new ArgumentError('passkeyCorrect: sample must come from passkeySample');
  if (!(logits instanceof Float32Array)) throw new ArgumentError(`passkeyCorrect: logits must be a Float32Array, got ${show(logits)}`);
  if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) throw new ArgumentError(`passkeyCorrect: vocabSize must be a positive integer, got ${show(vocabSize)}`);
  if (!sample.answerPositions.every((p) => Number.isSafeInteger(p) && p >= 0 && (p + 1) * vocabSize <= logits.length))
    throw new ArgumentError('passkeyCorrect: logits do not cover the answer positions ([length, vocabSize] row-major)');
  return sample.answerPositions.every((pos, j) => {
    let best = 0, bv = -Infinity;
    for (let v = 0; v < vocabSize; v++) {
      const x = logits[pos * vocabSize + v];
      if (x > bv) { bv = x; best = v; }
    }
    return best === PASSKEY_TOKENS.DIGIT0 + sample.answer[j];
  });
}
