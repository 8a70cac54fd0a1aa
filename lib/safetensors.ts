// safetensors: the Hugging Face weight format, read and written exactly.
//   [8 bytes: header length N, u64 little-endian][N bytes: JSON header][data]
// The header maps tensor names to { dtype, shape, data_offsets: [begin, end) relative to the data
// section } plus an optional "__metadata__" string->string map. HF pads the JSON with spaces so the
// data section starts 8-byte aligned; we do the same when writing and accept any padding when reading.
// The data section must be covered exactly by the tensors (no gaps, no overlaps), as the reference
// Rust implementation checks.
//
// Loading reads each tensor with positioned reads into one reused staging buffer and writes it to
// the target device from there, so a 14 GB checkpoint never has two whole copies in memory (never
// readFile). Saving writes to a temporary name and renames, so a crash leaves the old file intact.
import { promises as fsp, constants as fsConstants } from 'fs';
import * as path from 'path';
import { Dtype, checkDtype, dtypeSize } from './dtype';
import { DeviceLike } from './device';
import { ArgumentError, MegabeamError, UnsupportedError } from './errors';
import { Tensor, tensor } from './tensor';

/** safetensors dtype names megabeam stores as tensors, and their megabeam dtype. */
const ST_TO_DTYPE: Record<string, Dtype> = { BF16: 'bf16', F16: 'f16', F32: 'f32', I32: 'i32' };
const DTYPE_TO_ST: Record<Dtype, string> = { bf16: 'BF16', f16: 'F16', f32: 'F32', i32: 'I32' };
/** Every dtype the format defines, with its size, so other dtypes are checked and then rejected by name. */
const ST_SIZES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4,
  F64: 8, I64: 8, U64: 8, C64: 8,
};
/** The reference implementation's limit; also keeps a corrupt length from allocating gigabytes. */
export const MAX_HEADER_BYTES = 100_000_000;
/** Largest single positioned read (fs reads are limited to 2 GiB - 1). */
const READ_CHUNK = 1 << 30;

export interface TensorInfo {
  name: string;
  /** safetensors dtype name, e.g. 'BF16'. */
  dtype: string;
  shape: number[];
  /** Absolute byte range [begin, end) in the file. */
  begin: number;
  end: number;
}

export interface Header {
  /** Tensors in file order (by offset). */
  tensors: TensorInfo[];
  metadata: Record<string, string> | null;
  /** Byte offset of the data section (8 + header length). */
  dataStart: number;
}

function checkPath(op: string, p: unknown, what = 'path'): string {
  if (typeof p !== 'string' || p === '') throw new ArgumentError(`safetensors.${op}: ${what} must be a non-empty string`);
  return p;
}

/** Node's fs errors (ENOENT, EACCES, EISDIR, ...) as ERR_ARG naming the file. */
function fsError(file: string, e: unknown): MegabeamError {
  if (e instanceof MegabeamError) return e;
  return new ArgumentError(`safetensors: ${file}: ${(e as Error)?.message ?? String(e)}`);
}

function bad(file: string, msg: string): never {
  throw new ArgumentError(`safetensors: ${file}: ${msg}`);
}

const isDict = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Parses and validates a header. `fileSize` bounds every offset. Throws ERR_ARG ("safetensors: ...")
 * for any malformed input; unknown-but-valid dtypes are accepted here (rejected at load).
 */
export function parseHeader(headerBytes: Uint8Array, fileSize: number, file = '<buffer>'): Header {
  if (!(headerBytes instanceof Uint8Array)) throw new ArgumentError('safetensors.parseHeader: headerBytes must be a Uint8Array');
  if (typeof fileSize !== 'number' || !Number.isSafeInteger(fileSize) || fileSize < 8 + headerBytes.length)
    throw new ArgumentError('safetensors.parseHeader: fileSize must be an integer >= 8 + the header length');
  if (typeof file !== 'string') file = String(file);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    bad(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!isDict(json)) bad(file, 'header must be a JSON object');
  const dataStart = 8 + headerBytes.length;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isDict(v)) bad(file, '__metadata__ must be an object of strings');
      for (const [k, s] of Object.entries(v)) if (typeof s !== 'string') bad(file, `__metadata__.${k} must be a string`);
      metadata = v as Record<string, string>;
      continue;
    }
    if (!isDict(v)) bad(file, `tensor ${JSON.stringify(name)}: entry must be an object`);
    const { dtype, shape, data_offsets: offs } = v;
    if (typeof dtype !== 'string' || !(dtype in ST_SIZES)) bad(file, `tensor ${JSON.stringify(name)}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || shape.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0))
      bad(file, `tensor ${JSON.stringify(name)}: shape must be an array of non-negative integers`);
    if (!Array.isArray(offs) || offs.length !== 2 || offs.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0))
      bad(file, `tensor ${JSON.stringify(name)}: data_offsets must be [begin, end] non-negative integers`);
    const [b, e] = offs as number[];
    if (e < b) bad(file, `tensor ${JSON.stringify(name)}: data_offsets end ${e} < begin ${b}`);
    if (e > dataSize) bad(file, `tensor ${JSON.stringify(name)}: data_offsets [${b}, ${e}] run past the end of the file (data section is ${dataSize} bytes)`);
    let n = 1;
    for (const d of shape as number[]) {
      n *= d;
      if (!Number.isSafeInteger(n)) bad(file, `tensor ${JSON.stringify(name)}: too many elements`);
    }
    if (n * ST_SIZES[dtype] !== e - b)
      bad(file, `tensor ${JSON.stringify(name)}: ${dtype} [${shape}] needs ${n * ST_SIZES[dtype]} bytes, data_offsets give ${e - b}`);
    tensors.push({ name, dtype, shape: [...(shape as number[])], begin: dataStart + b, end: dataStart + e });
  }
  // The tensors must tile the data section: sorted by begin, each starts where the previous ended.
  tensors.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let at = dataStart;
  for (const t of tensors) {
    if (t.begin < at) bad(file, `tensor ${JSON.stringify(t.name)} overlaps the previous tensor`);
    if (t.begin > at) bad(file, `gap in the data section before tensor ${JSON.stringify(t.name)} (bytes ${at - dataStart}..${t.begin - dataStart})`);
    at = t.end;
  }
  if (at !== fileSize) bad(file, `the tensors cover ${at - dataStart} of ${dataSize} data bytes`);
  return { tensors, metadata, dataStart };
}

async function readExactly(fh: fsp.FileHandle, buf: Uint8Array, pos: number, file: string): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const len = Math.min(READ_CHUNK, buf.length - off);
    const { bytesRead } = await fh.read(buf, off, len, pos + off);
    if (bytesRead === 0) bad(file, `unexpected end of file at byte ${pos + off}`);
    off += bytesRead;
  }
}

async function readHeaderFrom(fh: fsp.FileHandle, file: string): Promise<Header> {
  const size = (await fh.stat()).size;
  if (size < 8) bad(file, `file is ${size} bytes, shorter than the 8-byte header length`);
  const lenBuf = new Uint8Array(8);
  await readExactly(fh, lenBuf, 0, file);
  const n = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) bad(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (n > BigInt(size - 8)) bad(file, `header length ${n} runs past the end of the ${size}-byte file`);
  const hb = new Uint8Array(Number(n));
  await readExactly(fh, hb, 8, file);
  return parseHeader(hb, size, file);
}

/** Reads and validates the header of one .safetensors file (does not read tensor data). */
export async function readHeader(file: string): Promise<Header> {
  checkPath('readHeader', file, 'file');
  const fh = await fsp.open(file, 'r').catch((e) => { throw fsError(file, e); });
  try {
    return await readHeaderFrom(fh, file).catch((e) => { throw fsError(file, e); });
  } finally {
    await fh.close();
  }
}

export interface LoadOptions {
  /** Target device (default 'cpu'). */
  device?: DeviceLike;
  /** Convert every float tensor to this dtype on the device (default: keep the file's). */
  dtype?: Dtype;
  /** Load only these names (default all). */
  names?: Iterable<string>;
  /**
   * Called per tensor instead of collecting a Map: receive the loaded tensor (yours to keep or
   * dispose). With it, load() returns an empty map, so a caller can copy into existing parameters
   * and free each tensor before the next is read.
   */
  onTensor?: (name: string, t: Tensor) => void | Promise<void>;
}

/** A shard set: which file holds each tensor. */
export interface Index {
  metadata: Record<string, unknown> | null;
  weightMap: Map<string, string>;
}

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** Reads model.safetensors.index.json (weight_map: name -> shard file, relative to the index). */
export async function readIndex(indexPath: string): Promise<Index> {
  checkPath('readIndex', indexPath);
  let json: unknown;
  try {
    // The index is small JSON (names only); reading it whole is fine.
    json = JSON.parse(await fsp.readFile(indexPath, 'utf8'));
  } catch (e) {
    if (e instanceof MegabeamError) throw e;
    bad(indexPath, `cannot read index (${(e as Error).message})`);
  }
  if (!isDict(json) || !isDict(json.weight_map)) bad(indexPath, 'index must be an object with a weight_map object');
  const weightMap = new Map<string, string>();
  for (const [name, f] of Object.entries(json.weight_map)) {
    if (typeof f !== 'string' || f === '' || path.isAbsolute(f) || f.split(/[\\/]/).includes('..'))
      bad(indexPath, `weight_map[${JSON.stringify(name)}] must be a file name next to the index, got ${JSON.stringify(f)}`);
    weightMap.set(name, f);
  }
  return { metadata: isDict(json.metadata) ? json.metadata : null, weightMap };
}

/**
 * The .safetensors files of a checkpoint: a file, a directory with model.safetensors or with
 * model.safetensors.index.json, or an index file. Returns [file, names-in-it | null (all)][].
 */
export async function resolveFiles(p: string): Promise<{ file: string; names: Set<string> | null }[]> {
  checkPath('resolveFiles', p);
  let st;
  try {
    st = await fsp.stat(p);
  } catch (e) {
    throw new ArgumentError(`safetensors: ${p}: ${(e as Error).message}`);
  }
  let indexPath: string | null = null;
  if (st.isDirectory()) {
    const idx = path.join(p, INDEX_FILE);
    try {
      await fsp.access(idx, fsConstants.R_OK);
      indexPath = idx;
    } catch {
      return [{ file: path.join(p, SINGLE_FILE), names: null }];
    }
  } else if (p.endsWith('.json')) {
    indexPath = p;
  } else {
    return [{ file: p, names: null }];
  }
  const idx = await readIndex(indexPath);
  const byFile = new Map<string, Set<string>>();
  for (const [name, f] of idx.weightMap) {
    const full = path.join(path.dirname(indexPath), f);
    if (!byFile.has(full)) byFile.set(full, new Set());
    byFile.get(full)!.add(name);
  }
  return [...byFile].map(([file, names]) => ({ file, names }));
}

function checkLoadable(t: TensorInfo, file: string): Dtype {
  const dt = ST_TO_DTYPE[t.dtype];
  if (dt === undefined)
    throw new UnsupportedError(`safetensors: ${file}: tensor ${JSON.stringify(t.name)} has dtype ${t.dtype}; megabeam loads BF16, F16, F32 and I32`);
  return dt;
}

/**
 * Loads tensors from a .safetensors file, a sharded checkpoint (index json or a directory) onto a
 * device. Tensors are read one at a time through one staging buffer (the size of the largest).
 */
export async function load(p: string, opts: LoadOptions = {}): Promise<Map<string, Tensor>> {
  checkPath('load', p);
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('safetensors.load: options must be an object');
  if (opts.names !== undefined && (opts.names === null || typeof (opts.names as Iterable<string>)[Symbol.iterator] !== 'function'))
    throw new ArgumentError('safetensors.load: names must be an iterable of strings');
  if (opts.dtype !== undefined) checkDtype(opts.dtype, 'safetensors.load: dtype');
  if (opts.onTensor !== undefined && typeof opts.onTensor !== 'function') throw new ArgumentError('safetensors.load: onTensor must be a function');
  const want = opts.names ? new Set(opts.names) : null;
  const out = new Map<string, Tensor>();
  const found = new Set<string>();
  let staging = new ArrayBuffer(0);
  try {
    for (const { file, names } of await resolveFiles(p)) {
      const fh = await fsp.open(file, 'r').catch((e) => bad(file, (e as Error).message));
      try {
        const h = await readHeaderFrom(fh, file).catch((e) => { throw fsError(file, e); });
        const inFile = new Set(h.tensors.map((t) => t.name));
        if (names) for (const n of names) if (!inFile.has(n)) bad(file, `index says it holds ${JSON.stringify(n)}, the file does not`);
        for (const t of h.tensors) {
          if (names && !names.has(t.name)) continue;
          if (want && !want.has(t.name)) continue;
          if (found.has(t.name)) bad(file, `tensor ${JSON.stringify(t.name)} appears in two files`);
          found.add(t.name);
          const dt = checkLoadable(t, file);
          const nbytes = t.end - t.begin;
          if (staging.byteLength < nbytes) staging = new ArrayBuffer(nbytes);
          const bytes = new Uint8Array(staging, 0, nbytes);
          await readExactly(fh, bytes, t.begin, file).catch((e) => { throw fsError(file, e); });
          const n = nbytes / dtypeSize(dt);
          const data = dt === 'f32' ? new Float32Array(staging, 0, n) : dt === 'i32' ? new Int32Array(staging, 0, n)
            : new Uint16Array(staging, 0, n);
          // write() copies the data before returning, so the staging buffer can be reused at once.
          let ten = tensor(data, { dtype: dt, device: opts.device, shape: t.shape });
          if (opts.dtype !== undefined && opts.dtype !== dt && dt !== 'i32') {
            const conv = ten.to(opts.dtype);
            ten.dispose();
            ten = conv;
          }
          if (opts.onTensor) await opts.onTensor(t.name, ten);
          else out.set(t.name, ten);
        }
      } finally {
        await fh.close();
      }
    }
    if (want) for (const n of want) if (!found.has(n)) throw new ArgumentError(`safetensors: ${p}: no tensor named ${JSON.stringify(n)}`);
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

export interface SaveOptions {
  /** __metadata__ (string values); HF writes { format: 'pt' }. */
  metadata?: Record<string, string>;
}

function checkName(name: string): void {
  if (typeof name !== 'string' || name === '' || name === '__metadata__')
    throw new ArgumentError(`safetensors.save: invalid tensor name ${JSON.stringify(name)}`);
}

/** Builds the header bytes (length prefix + JSON padded with spaces to 8-byte alignment). */
function headerBytes(entries: { name: string; t: Tensor }[], metadata?: Record<string, string>): { head: Buffer; offsets: number[] } {
  const obj: Record<string, unknown> = {};
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') throw new ArgumentError(`safetensors.save: metadata ${k} must be a string`);
    obj.__metadata__ = metadata;
  }
  let off = 0;
  const offsets: number[] = [];
  for (const { name, t } of entries) {
    offsets.push(off);
    obj[name] = { dtype: DTYPE_TO_ST[t.dtype], shape: [...t.shape], data_offsets: [off, off + t.nbytes] };
    off += t.nbytes;
  }
  let json = Buffer.from(JSON.stringify(obj), 'utf8');
  const pad = (8 - ((8 + json.length) % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const head = Buffer.alloc(8 + json.length);
  head.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(head, 8);
  return { head, offsets };
}

// The reference writer orders tensors by dtype (its enum order, larger first) then name, so every
// tensor's data stays aligned to its element size for zero-copy (mmap) readers; we do the same.
const DTYPE_RANK: Record<Dtype, number> = { f32: 11, i32: 9, bf16: 8, f16: 7 };
function hfOrder<T extends { name: string; t: Tensor }>(entries: T[]): T[] {
  return [...entries].sort((a, b) => DTYPE_RANK[b.t.dtype] - DTYPE_RANK[a.t.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function writeAtomic(file: string, write: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${Date.now()}`);
  const fh = await fsp.open(tmp, 'w');
  try {
    await write(fh);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fh.close();
  await fsp.rename(tmp, file);
}

async function writeTensors(fh: fsp.FileHandle, unordered: { name: string; t: Tensor }[], metadata?: Record<string, string>): Promise<void> {
  const entries = hfOrder(unordered);
  const { head } = headerBytes(entries, metadata);
  await fh.write(head, 0, head.length, 0);
  let pos = head.length;
  for (const { t } of entries) {
    // One tensor at a time on the host: toRaw() reads the stored bits (bf16/f16 as Uint16Array).
    const raw = await t.toRaw();
    const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    let off = 0;
    while (off < bytes.length) {
      const len = Math.min(READ_CHUNK, bytes.length - off);
      const { bytesWritten } = await fh.write(bytes, off, len, pos + off);
      off += bytesWritten;
    }
    pos += bytes.length;
  }
}

function entriesOf(op: string, tensors: Map<string, Tensor> | Record<string, Tensor>): { name: string; t: Tensor }[] {
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors) || ArrayBuffer.isView(tensors) || tensors instanceof Tensor)
    throw new ArgumentError(`safetensors.${op}: tensors must be a Map or an object of name -> Tensor`);
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  // An empty file is valid safetensors, but saving nothing is almost always a mistake.
  if (list.length === 0) throw new ArgumentError(`safetensors.${op}: no tensors to save`);
  return list.map(([name, t]) => {
    checkName(name);
    if (!(t instanceof Tensor)) throw new ArgumentError(`safetensors.save: ${JSON.stringify(name)} is not a Tensor`);
    t.handle(name);
    return { name, t };
  });
}

/** Writes tensors to one .safetensors file atomically (temp file + rename). */
export async function save(file: string, tensors: Map<string, Tensor> | Record<string, Tensor>, opts: SaveOptions = {}): Promise<void> {
  checkPath('save', file, 'file');
  const entries = entriesOf('save', tensors);
  const meta = checkMeta('save', opts);
  await writeAtomic(file, (fh) => writeTensors(fh, entries, meta)).catch((e) => { throw fsError(file, e); });
}

export interface SaveShardedOptions extends SaveOptions {
  /** Largest shard in bytes (default 5 GB as HF's save_pretrained); a bigger tensor gets its own shard. */
  maxShardBytes?: number;
}

/**
 * Writes a sharded checkpoint into `dir`: model-0000i-of-0000n.safetensors and
 * model.safetensors.index.json ({ metadata: { total_size }, weight_map }), as save_pretrained does.
 * With one shard it writes model.safetensors (and no index), also as HF does.
 */
export async function saveSharded(dir: string, tensors: Map<string, Tensor> | Record<string, Tensor>, opts: SaveShardedOptions = {}): Promise<string[]> {
  checkPath('saveSharded', dir, 'dir');
  const meta = checkMeta('saveSharded', opts);
  const max = opts.maxShardBytes ?? 5e9;
  if (typeof max !== 'number' || !(max > 0)) throw new ArgumentError('safetensors.saveSharded: maxShardBytes must be > 0');
  const entries = entriesOf('saveSharded', tensors);
  try {
    return await writeShards(dir, entries, max, meta);
  } catch (e) {
    throw fsError(dir, e);
  }
}

function checkMeta(op: string, opts: unknown): Record<string, string> | undefined {
  if (opts === null || typeof opts !== 'object') throw new ArgumentError(`safetensors.${op}: options must be an object`);
  const m = (opts as SaveOptions).metadata;
  if (m === undefined) return undefined;
  if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new ArgumentError(`safetensors.${op}: metadata must be an object of strings`);
  for (const [k, v] of Object.entries(m)) if (typeof v !== 'string') throw new ArgumentError(`safetensors.${op}: metadata ${k} must be a string`);
  return m;
}

async function writeShards(dir: string, entries: { name: string; t: Tensor }[], max: number, metadata?: Record<string, string>): Promise<string[]> {
  const opts = { metadata };
  const shards: { name: string; t: Tensor }[][] = [];
  let cur: { name: string; t: Tensor }[] = [], size = 0;
  for (const e of entries) {
    if (cur.length && size + e.t.nbytes > max) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(e);
    size += e.t.nbytes;
  }
  if (cur.length || !shards.length) shards.push(cur);
  await fsp.mkdir(dir, { recursive: true });
  if (shards.length === 1) {
    const f = path.join(dir, SINGLE_FILE);
    await writeAtomic(f, (fh) => writeTensors(fh, shards[0], opts.metadata));
    return [f];
  }
  const n = shards.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < n; i++) {
    const base = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
    const f = path.join(dir, base);
    await writeAtomic(f, (fh) => writeTensors(fh, shards[i], opts.metadata));
    for (const { name, t } of shards[i]) {
      weightMap[name] = base;
      total += t.nbytes;
    }
    files.push(f);
  }
  const idx = path.join(dir, INDEX_FILE);
  const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]]));
  const body = JSON.stringify({ metadata: { total_size: total }, weight_map: sorted }, null, 2) + '\n';
  await writeAtomic(idx, async (fh) => { await fh.write(body, 0, 'utf8'); });
  files.push(idx);
  return files;
}
