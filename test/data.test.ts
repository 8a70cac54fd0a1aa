import t from 'tap';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { tokens, Sampler } from '../lib/index';
import { throwsCode } from './helpers/assert';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-data-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function randomIds(n: number, max: number, seed: number): number[] {
  let x = seed >>> 0 || 1;
  return Array.from({ length: n }, () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x % max; });
}

t.test('token files round trip (u16 and u32) in llm.c layout', async (t) => {
  for (const [max, width, magic] of [[50257, 'u16', 20240520], [128256, 'u32', 20240801]] as const) {
    const ids = randomIds(5000, max, max);
    const f = path.join(dir, `t-${width}.bin`);
    tokens.write(f, ids);
    const raw = fs.readFileSync(f);
    t.equal(raw.readInt32LE(0), magic, `${width}: llm.c magic`);
    t.equal(raw.readInt32LE(8), ids.length, `${width}: token count in header[2]`);
    t.equal(raw.length, 1024 + ids.length * (width === 'u16' ? 2 : 4));
    const tf = tokens.open(f);
    t.equal(tf.width, width);
    t.same(Array.from(tf.read(0, ids.length)), ids, `${width}: all tokens back`);
    t.same(Array.from(tf.read(1234, 7)), ids.slice(1234, 1241), `${width}: a window from the middle`);
    throwsCode(t, () => tf.read(4999, 2), 'ERR_ARG', 'read past the end');
    tf.close();
  }
});

t.test('malformed token files give coded errors', async (t) => {
  const bad = (name: string, buf: Buffer): string => { const f = path.join(dir, name); fs.writeFileSync(f, buf); return f; };
  throwsCode(t, () => tokens.open(path.join(dir, 'missing.bin')), 'ERR_ARG', 'missing file');
  throwsCode(t, () => tokens.open(bad('short.bin', Buffer.alloc(100))), 'ERR_ARG', 'shorter than the header');
  const h = Buffer.alloc(1024 + 20);
  h.writeInt32LE(12345, 0);
  throwsCode(t, () => tokens.open(bad('magic.bin', h)), 'ERR_ARG', 'unknown magic');
  h.writeInt32LE(20240520, 0); h.writeInt32LE(1000, 8);
  throwsCode(t, () => tokens.open(bad('count.bin', h)), 'ERR_ARG', 'count larger than the file');
  throwsCode(t, () => tokens.write(path.join(dir, 'neg.bin'), [1, -2]), 'ERR_ARG', 'negative id');
  throwsCode(t, () => tokens.write(path.join(dir, 'w.bin'), [70000], { width: 'u16' }), 'ERR_ARG', 'id too wide for u16');
});

t.test('sampler: every window once per epoch, deterministic, resumable', async (t) => {
  const ids = randomIds(10 * 64 + 1 + 30, 1000, 7);
  const f = path.join(dir, 's.bin');
  tokens.write(f, ids);
  const tf = tokens.open(f);
  const s = new Sampler(tf, { seqLen: 64, seed: 3 });
  t.equal(s.windows, 10);
  const seen: number[] = [];
  for (let i = 0; i < 10; i++) {
    const b = s.next();
    t.same(Array.from(b.labels.subarray(0, 63)), Array.from(b.input.subarray(1)), 'labels are inputs shifted by one');
    t.same(Array.from(b.input), ids.slice(b.window * 64, b.window * 64 + 64), 'the window from the stream');
    seen.push(b.window);
  }
  t.same([...seen].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'a permutation of all windows');
  t.notSame(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'shuffled');
  const st = s.state();
  const next3 = [s.next().window, s.next().window, s.next().window];
  t.equal(s.state().epoch, 1, 'second epoch');
  const r = new Sampler(tf, { seqLen: 64, seed: 3 });
  r.resume(st);
  t.same([r.next().window, r.next().window, r.next().window], next3, 'resumed sampler continues identically');
  const again = new Sampler(tf, { seqLen: 64, seed: 3 });
  t.same(Array.from({ length: 10 }, () => again.next().window), seen, 'same seed, same order');
  throwsCode(t, () => r.resume({ seed: 4, epoch: 0, position: 0 }), 'ERR_ARG', 'state of another seed');
  throwsCode(t, () => new Sampler(tf, { seqLen: 100000 }), 'ERR_ARG', 'no window fits');
  tf.close();
});

t.test('text through a Hugging Face tokenizer.json, packed with an end-of-text token', async (t) => {
  const vocab: Record<string, number> = { '[UNK]': 0, '<eot>': 1, the: 2, key: 3, is: 4, '42': 5, hello: 6, world: 7 };
  const tok = tokens.loadTokenizer({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '[UNK]' },
  });
  t.same(tok.encode('the key is 42').ids, [2, 3, 4, 5]);
  const f = path.join(dir, 'text.bin');
  const n = tokens.fromTexts(f, ['hello world', 'the key is 42'], tok, { eot: 1 });
  t.equal(n, 8);
  t.same(Array.from(tokens.open(f).read(0, 8)), [1, 6, 7, 1, 2, 3, 4, 5], 'documents packed with eot');
  throwsCode(t, () => tokens.fromTexts(f, ['zebra'], tok, { eot: 1 }), 'ERR_ARG', 'an id the tokenizer could not give is refused');
});
