// Training data: token files, text through a Hugging Face tokenizer, packing, and a deterministic,
// resumable sampler.
//
// Token files use llm.c's layout so its data scripts work as they are: a header of 256 little-endian int32
// (header[0] = magic, [1] = version, [2] = token count), then the tokens. Magic 20240520 (version 1): uint16
// tokens (GPT-2-sized vocabularies); magic 20240801 (version 7): uint32 tokens (Llama-3-sized). Documents
// are packed by concatenation with an end-of-text token between them (as llm.c's scripts do); sequences
// are windows of seqLen + 1 tokens over that stream (inputs and next-token labels), so nothing is padded.
// Files are read with positioned reads: a file of any size costs one window of memory.
import * as fs from 'fs';
import * as path from 'path';
import { ArgumentError, MegabeamError } from './errors';
import { guardReceivers, show, optionsArg } from './guard';

const HEADER_INTS = 256;
const HEADER_BYTES = HEADER_INTS * 4;
const MAGIC_U16 = 20240520, MAGIC_U32 = 20240801;

export type TokenWidth = 'u16' | 'u32';

/** A token file opened for positioned reads. */
export class TokenFile {
  readonly path: string;
  readonly count: number;
  readonly width: TokenWidth;
  #fd: number | null;

  constructor(file: string) {
    markTokenFile(this);
    if (typeof file !== 'string' || file === '') throw new ArgumentError('tokens.open: path must be a non-empty string');
    this.path = path.resolve(file);
    let fd: number;
    try {
      fd = fs.openSync(this.path, 'r');
    } catch (e) {
      throw new ArgumentError(`tokens.open: cannot open ${this.path}: ${(e as Error).message}`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < HEADER_BYTES) throw new ArgumentError(`tokens.open: ${this.path} is ${size} bytes, shorter than the 1024-byte header`);
      const h = Buffer.alloc(HEADER_BYTES);
      fs.readSync(fd, h, 0, HEADER_BYTES, 0);
      const magic = h.readInt32LE(0), count = h.readInt32LE(8);
      if (magic !== MAGIC_U16 && magic !== MAGIC_U32)
        throw new ArgumentError(`tokens.open: ${this.path}: unknown magic ${magic} (expected ${MAGIC_U16} or ${MAGIC_U32})`);
      this.width = magic === MAGIC_U16 ? 'u16' : 'u32';
      const bytes = this.width === 'u16' ? 2 : 4;
      if (count < 0 || HEADER_BYTES + count * bytes > size)
        throw new ArgumentError(`tokens.open: ${this.path}: header says ${count} tokens but the file holds ${Math.floor((size - HEADER_BYTES) / bytes)}`);
      this.count = count;
      this.#fd = fd;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tokens [start, start + n) as an Int32Array. */
  read(start: number, n: number): Int32Array {
    if (this.#fd === null) throw new ArgumentError(`tokens: ${this.path} is closed`);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(n) || start < 0 || n < 0 || start + n > this.count)
      throw new ArgumentError(`tokens.read: [${show(start)}, +${show(n)}) is outside 0..${this.count}`);
    const bytes = this.width === 'u16' ? 2 : 4;
    const buf = Buffer.alloc(n * bytes);
    let got = 0;
    while (got < buf.length) {
      const r = fs.readSync(this.#fd, buf, got, buf.length - got, HEADER_BYTES + start * bytes + got);
      if (r === 0) throw new MegabeamError('ERR_ARG', `tokens.read: ${this.path} ended early`);
      got += r;
    }
    const out = new Int32Array(n);
    if (bytes === 2) for (let i = 0; i < n; i++) out[i] = buf.readUInt16LE(2 * i);
    else for (let i = 0; i < n; i++) {
      const v = buf.readUInt32LE(4 * i);
      if (v > 0x7fffffff) throw new ArgumentError(`tokens.read: token ${v} at ${start + i} does not fit an int32 id`);
      out[i] = v;
    }
    return out;
  }

  close(): void {
    if (this.#fd !== null) fs.closeSync(this.#fd);
    this.#fd = null;
  }
}
const markTokenFile = guardReceivers(TokenFile);

/** Writes a token file atomically (temporary name, then rename). uint16 unless an id needs 32 bits. */
function write(file: string, ids: ArrayLike<number>, opts: { width?: TokenWidth } = {}): void {
  opts = optionsArg('tokens.write', opts);
  if (typeof file !== 'string' || file === '') throw new ArgumentError('tokens.write: path must be a non-empty string');
  if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && !(ids instanceof DataView)))
    throw new ArgumentError(`tokens.write: ids must be an array or a typed array, got ${show(ids)}`);
  if (opts.width !== undefined && opts.width !== 'u16' && opts.width !== 'u32')
    throw new ArgumentError(`tokens.write: width must be 'u16' or 'u32', got ${show(opts.width)}`);
  let max = 0;
  for (let i = 0; i < ids.length; i++) {
    const v = ids[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff)
      throw new ArgumentError(`tokens.write: id ${show(v)} at ${i} is not a non-negative int32`);
    if (v > max) max = v;
  }
  if (ids.length > 0x7fffffff) throw new ArgumentError('tokens.write: more than 2^31 - 1 tokens in one file');
  const width = opts.width ?? (max < 65536 ? 'u16' : 'u32');
  if (width === 'u16' && max >= 65536) throw new ArgumentError(`tokens.write: id ${max} does not fit u16`);
  const bytes = width === 'u16' ? 2 : 4;
  const buf = Buffer.alloc(HEADER_BYTES + ids.length * bytes);
  buf.writeInt32LE(width === 'u16' ? MAGIC_U16 : MAGIC_U32, 0);
  buf.writeInt32LE(width === 'u16' ? 1 : 7, 4);
  buf.writeInt32LE(ids.length, 8);
  for (let i = 0; i < ids.length; i++) {
    if (bytes === 2) buf.writeUInt16LE(ids[i], HEADER_BYTES + 2 * i);
    else buf.writeUInt32LE(ids[i], HEADER_BYTES + 4 * i);
  }
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  fs.writeFileSync(tmp, buf);
  fs.renameSync(tmp, file);
}

export interface TextTokenizer { encode(text: string): { ids: number[] }; token_to_id?(t: string): number | undefined }

/**
 * Loads a Hugging Face `tokenizer.json` (and optional tokenizer_config.json) with the npm package
 * @huggingface/tokenizers (pure JS).
 */
function loadTokenizer(tokenizerJson: string | object, config: object = {}): TextTokenizer {
  const op = 'tokens.loadTokenizer';
  if (config === null || typeof config !== 'object' || Array.isArray(config))
    throw new ArgumentError(`${op}: config must be an object (tokenizer_config.json), got ${show(config)}`);
  let json: unknown = tokenizerJson;
  if (typeof tokenizerJson === 'string') {
    try {
      json = JSON.parse(fs.readFileSync(tokenizerJson, 'utf8'));
    } catch (e) {
      throw new ArgumentError(`${op}: cannot read ${JSON.stringify(tokenizerJson)} as JSON: ${(e as Error)?.message}`);
    }
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new ArgumentError(`${op}: expected a tokenizer.json path or its parsed object, got ${show(tokenizerJson)}`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Tokenizer } = require('@huggingface/tokenizers') as { Tokenizer: new (j: object, c: object) => TextTokenizer };
  try {
    return new Tokenizer(json, config);
  } catch (e) {
    // The tokenizer package throws plain Errors for a malformed tokenizer.json: the caller's input.
    let why = 'invalid tokenizer';
    try { why = (e as Error)?.message ?? String(e); } catch { /* keep the generic text */ }
    throw new ArgumentError(`${op}: ${why}`);
  }
}

/**
 * Tokenizes documents and packs them into one token stream (documents separated by `eot`), written as a
 * token file. Returns the number of tokens written.
 */
function fromTexts(file: string, texts: Iterable<string>, tokenizer: TextTokenizer, opts: { eot: number }): number {
  if (!Number.isInteger(opts?.eot) || opts.eot < 0) throw new ArgumentError('tokens.fromTexts: eot must be a token id');
  const ids: number[] = [];
  for (const t of texts) {
    if (typeof t !== 'string') throw new ArgumentError('tokens.fromTexts: every document must be a string');
    ids.push(opts.eot);
    for (const id of tokenizer.encode(t).ids) ids.push(id);
  }
  write(file, ids);
  return ids.length;
}

export const tokens = {
  open: (file: string): TokenFile => new TokenFile(file),
  write,
  loadTokenizer,
  fromTexts,
};

export interface SamplerState { seed: number; epoch: number; position: number }

export interface Batch {
  /** seqLen input ids and the seqLen next-token labels (batch 1, the long-context case). */
  input: Int32Array;
  labels: Int32Array;
  /** Which window of the stream, which epoch. */
  window: number;
  epoch: number;
}

/**
 * Windows of seqLen + 1 tokens over one or more token files (stride seqLen: each token is a label once),
 * visited in a seeded permutation per epoch. Deterministic: the same seed gives the same order on every
 * machine; state()/resume() continue exactly where a run stopped.
 */
export class Sampler {
  readonly seqLen: number;
  readonly shuffle: boolean;
  readonly windows: number;
  #files: TokenFile[];
  #starts: number[] = [];   // first window index of each file
  #state: SamplerState;
  #order: Uint32Array | null = null;

  constructor(files: TokenFile | TokenFile[], opts: { seqLen: number; seed?: number; shuffle?: boolean }) {
    markSampler(this);
    this.#files = Array.isArray(files) ? files : [files];
    if (this.#files.length === 0 || !this.#files.every((f) => f instanceof TokenFile))
      throw new ArgumentError('Sampler: files must be TokenFiles (tokens.open)');
    if (!Number.isSafeInteger(opts?.seqLen) || opts.seqLen < 1) throw new ArgumentError('Sampler: seqLen must be an integer >= 1');
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) throw new ArgumentError('Sampler: seed must be a uint32');
    this.seqLen = opts.seqLen;
    this.shuffle = opts.shuffle ?? true;
    let w = 0;
    for (const f of this.#files) {
      this.#starts.push(w);
      w += f.count > this.seqLen ? Math.floor((f.count - 1) / this.seqLen) : 0;
    }
    if (w === 0) throw new ArgumentError(`Sampler: no file holds seqLen + 1 = ${this.seqLen + 1} tokens`);
    this.windows = w;
    this.#state = { seed, epoch: 0, position: 0 };
  }

  state(): SamplerState { return { ...this.#state }; }

  resume(s: SamplerState): void {
    if (!s || s.seed !== this.#state.seed || !Number.isSafeInteger(s.epoch) || !Number.isSafeInteger(s.position) ||
        s.epoch < 0 || s.position < 0 || s.position > this.windows)
      throw new ArgumentError('Sampler.resume: state does not belong to this sampler (seed/epoch/position)');
    this.#state = { ...s };
    this.#order = null;
  }

  next(): Batch {
    if (this.#state.position >= this.windows) {
      this.#state.epoch++;
      this.#state.position = 0;
      this.#order = null;
    }
    const order = this.#order ??= this.#permutation(this.#state.epoch);
    const window = order[this.#state.position++];
    let fi = this.#files.length - 1;
    while (this.#starts[fi] > window) fi--;
    const start = (window - this.#starts[fi]) * this.seqLen;
    const t = this.#files[fi].read(start, this.seqLen + 1);
    return { input: t.subarray(0, this.seqLen), labels: t.subarray(1), window, epoch: this.#state.epoch };
  }

  // Fisher-Yates with a 32-bit xorshift generator seeded by (seed, epoch): portable and reproducible.
  #permutation(epoch: number): Uint32Array {
    const p = new Uint32Array(this.windows);
    for (let i = 0; i < p.length; i++) p[i] = i;
    if (!this.shuffle) return p;
    let x = (this.#state.seed ^ Math.imul(epoch + 1, 0x9e3779b1)) >>> 0 || 0x12345678;
    const rnd = (): number => {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      return x;
    };
    for (let i = p.length - 1; i > 0; i--) {
      const j = rnd() % (i + 1);
      const tmp = p[i]; p[i] = p[j]; p[j] = tmp;
    }
    return p;
  }
}
const markSampler = guardReceivers(Sampler);
