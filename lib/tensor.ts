// Tensors: a shape, a dtype, a device and a native handle to device or host memory.
// Ops enqueue work on the tensor's device and return at once; toArray() and synchronize() wait
// without blocking the event loop.
import { randomBytes } from 'crypto';
import { Dtype, checkDtype, dtypeCode, dtypeSize } from './dtype';
import { DeviceLike, DeviceString, deviceIndex, parseDevice } from './device';
import { ArgumentError, DeviceError, DisposedError, DtypeError, ShapeError, UnsupportedError, callNative as call } from './errors';
import { NativeHandle, native } from './native';

export type Shape = readonly number[];
export type TensorData = Float32Array | Float64Array | Int32Array | Uint16Array | number[] | NestedArray;
interface NestedArray extends Array<number | NestedArray> {}

export interface TensorOptions<D extends Dtype = Dtype> { dtype?: D; device?: DeviceLike }
export interface RandomOptions<D extends Dtype = Dtype> extends TensorOptions<D> { seed?: number | bigint }
/** What toArray() gives for a dtype: Float32Array for float dtypes, Int32Array for i32. */
export type ArrayOf<D extends Dtype> = D extends 'i32' ? Int32Array : Float32Array;

// Frees what users forget to dispose. Tests and long-running code must not rely on it.
const registry = new FinalizationRegistry<NativeHandle>((h) => {
  try { h.dispose(); } catch { /* process is going away */ }
});

export class Tensor<D extends Dtype = Dtype> {
  readonly shape: Shape;
  readonly dtype: D;
  readonly device: DeviceString;
  #handle: NativeHandle | null;

  /** @internal use the creation functions (tensor, zeros, randn, ...) */
  constructor(handle: NativeHandle, shape: Shape, dtype: D, device: DeviceString) {
    this.#handle = handle;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.device = device;
    registry.register(this, handle, this);
  }

  get ndim(): number { return this.shape.length; }
  get numel(): number { return this.shape.reduce((a, b) => a * b, 1); }
  get nbytes(): number { return this.numel * dtypeSize(this.dtype); }
  get disposed(): boolean { return this.#handle === null; }
  /** @internal true for real tensors only (not objects that merely inherit Tensor.prototype). */
  static isTensor(x: unknown): x is Tensor { return typeof x === 'object' && x !== null && #handle in x; }

  /** @internal the live native handle; throws ERR_DISPOSED (ERR_ARG for a fake Tensor). */
  handle(what = 'tensor'): NativeHandle {
    if (!isTensor(this)) throw new ArgumentError(`${what} is not a Tensor made by megabeam`);
    if (this.#handle === null) throw new DisposedError(`${what} was disposed`);
    return this.#handle;
  }

  /** Reads the values back: Float32Array for float dtypes, Int32Array for i32. */
  async toArray(): Promise<ArrayOf<D>> {
    const h = this.handle();
    return call(() => native().read(h, false)) as Promise<ArrayOf<D>>;
  }

  /** Reads the stored bits: Uint16Array for f16/bf16, else as toArray(). */
  async toRaw(): Promise<Float32Array | Int32Array | Uint16Array> {
    const h = this.handle();
    return call(() => native().read(h, true));
  }

  /** A new tensor on another device and/or with another dtype (always a copy). */
  to(target: DeviceLike | Dtype | { device?: DeviceLike; dtype?: Dtype }): Tensor {
    const h = this.handle();
    let device: DeviceString = this.device;
    let dtype: Dtype = this.dtype;
    if (typeof target === 'string') {
      if ((['f32', 'f16', 'bf16', 'i32'] as string[]).includes(target)) dtype = target as Dtype;
      else device = parseDevice(target).name;
    } else if (target && typeof target === 'object') {
      if (target.device !== undefined) device = parseDevice(target.device).name;
      if (target.dtype !== undefined) dtype = checkDtype(target.dtype);
    } else {
      throw new ArgumentError('to(): expected a device, a dtype or { device, dtype }');
    }
    if (device === this.device) return convert(h, this.shape, dtype, device);
    // Move first in the narrower dtype, then convert on the destination.
    const moveDtype = dtypeSize(dtype) < dtypeSize(this.dtype) ? dtype : this.dtype;
    const src = moveDtype === this.dtype ? this : this.to(moveDtype);
    const moved = empty(this.shape, { dtype: moveDtype, device });
    try {
      call(() => native().copy(moved.handle(), src.handle()));
    } catch (e) {
      moved.dispose();
      throw e;
    } finally {
      if (src !== this) src.dispose();
    }
    if (moveDtype === dtype) return moved;
    const out = moved.to(dtype);
    moved.dispose();
    return out;
  }

  clone(): Tensor<D> {
    return convert(this.handle(), this.shape, this.dtype, this.device);
  }

  /** A view with another shape over the same memory (same element count). */
  reshape(shape: Shape): Tensor<D> {
    const s = checkShape(shape);
    const n = s.reduce((a, b) => a * b, 1);
    if (n !== this.numel) throw new ShapeError(`reshape: [${s}] has ${n} elements, tensor has ${this.numel}`);
    const h = call(() => native().view(this.handle(), s));
    return new Tensor(h, s, this.dtype, this.device);
  }

  /**
   * A view of `length` entries starting at `start` along dimension `dim` — cheap (no copy) when the
   * slice is contiguous, i.e. every dimension before `dim` has size 1; otherwise ERR_UNSUPPORTED.
   */
  narrow(dim: number, start: number, length: number): Tensor<D> {
    const h = this.handle();
    const nd = this.ndim;
    if (!Number.isSafeInteger(dim) || dim < -nd || dim >= nd) throw new ArgumentError(`narrow: dim ${describe(dim)} out of range for ${nd}-D tensor`);
    const d = dim < 0 ? dim + nd : dim;
    const size = this.shape[d];
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 || start + length > size)
      throw new ShapeError(`narrow: [${describe(start)}, ${describe(start)}+${describe(length)}) is outside dimension ${d} of size ${size}`);
    if (this.shape.slice(0, d).some((x) => x !== 1))
      throw new UnsupportedError('narrow: only contiguous slices (all leading dimensions of size 1) are views; copy first');
    const inner = this.shape.slice(d + 1).reduce((a, b) => a * b, 1);
    const shape = [...this.shape];
    shape[d] = length;
    const v = call(() => native().view(h, shape, start * inner));
    return new Tensor(v, shape, this.dtype, this.device);
  }

  /** Fills in place with a value. */
  fill_(value: number): this {
    if (typeof value !== 'number') throw new ArgumentError('fill_: value must be a number');
    if (this.dtype === 'i32' && !isInt32(value)) throw new ArgumentError(`fill_: an i32 tensor takes int32 values, got ${value}`);
    call(() => native().fill(this.handle(), value));
    return this;
  }

  /** Frees the memory (once queued work using it has run). Later use throws ERR_DISPOSED. */
  dispose(): void {
    if (this.#handle === null) return;
    registry.unregister(this);
    this.#handle.dispose();
    this.#handle = null;
  }
  [Symbol.dispose](): void { this.dispose(); }

  toString(): string {
    return `Tensor(shape=[${this.shape}], dtype=${this.dtype}, device=${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

const isTensor = (x: unknown): x is Tensor => Tensor.isTensor(x);

/** A short, never-throwing description of a user value for error messages. */
function describe(v: unknown): string {
  try {
    if (typeof v === 'symbol' || typeof v === 'bigint') return `${typeof v} ${v.toString()}`;
    if (v === null || typeof v !== 'object') return String(v);
    return Array.isArray(v) ? 'an array' : 'an object';
  } catch {
    return 'a value';
  }
}

function convert<D extends Dtype>(h: NativeHandle, shape: Shape, dtype: D, device: DeviceString): Tensor<D> {
  const out = empty(shape, { dtype, device });
  try {
    call(() => native().copy(out.handle(), h));
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/** At most this many dimensions (the native side checks the same). */
export const MAX_DIMS = 64;
const F32_MAX = 3.4028234663852886e38;
const isInt32 = (v: number): boolean => Number.isInteger(v) && v >= -2147483648 && v <= 2147483647;

/** Validates a shape: an array of non-negative safe integers with a safe element count. */
export function checkShape(shape: unknown, what = 'shape'): number[] {
  if (!Array.isArray(shape)) throw new ShapeError(`${what} must be an array of integers`);
  if (shape.length > MAX_DIMS) throw new ShapeError(`${what}: more than ${MAX_DIMS} dimensions`);
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      throw new ShapeError(`${what}: dimensions must be non-negative integers, got ${describe(d)}`);
    n *= d;
    if (!Number.isSafeInteger(n)) throw new ShapeError(`${what}: too many elements`);
  }
  return [...shape] as number[];
}

function options(o: unknown, defDtype: Dtype = 'f32'): { dtype: Dtype; device: DeviceString; index: number } {
  if (o !== undefined && (o === null || typeof o !== 'object')) throw new ArgumentError('options must be an object');
  const opts = (o ?? {}) as TensorOptions;
  const dtype = checkDtype(opts.dtype ?? defDtype);
  const { index, name } = parseDevice(opts.device);
  return { dtype, device: name, index };
}

/** Uninitialised memory. */
export function empty<D extends Dtype = 'f32'>(shape: Shape, opts?: TensorOptions<D>): Tensor<D> {
  const s = checkShape(shape);
  const { dtype, device, index } = options(opts);
  const h = call(() => native().empty(s, dtypeCode(dtype), index));
  return new Tensor(h, s, dtype as D, device);
}

export function full<D extends Dtype = 'f32'>(shape: Shape, value: number, opts?: TensorOptions<D>): Tensor<D> {
  if (typeof value !== 'number') throw new ArgumentError('full: value must be a number');
  if (options(opts).dtype === 'i32' && !isInt32(value)) throw new ArgumentError(`full: an i32 tensor takes int32 values, got ${value}`);
  const t = empty(shape, opts);
  try {
    return t.fill_(value);
  } catch (e) {
    t.dispose();
    throw e;
  }
}
export const zeros = <D extends Dtype = 'f32'>(shape: Shape, opts?: TensorOptions<D>): Tensor<D> => full(shape, 0, opts);
export const ones = <D extends Dtype = 'f32'>(shape: Shape, opts?: TensorOptions<D>): Tensor<D> => full(shape, 1, opts);

function seedWords(seed: unknown): [number, number] {
  let s: bigint;
  if (seed === undefined) s = randomBytes(8).readBigUInt64LE();
  else if (typeof seed === 'bigint') s = seed;
  else if (typeof seed === 'number' && Number.isSafeInteger(seed)) s = BigInt(seed);
  else throw new ArgumentError('seed must be a safe integer or a bigint');
  s = BigInt.asUintN(64, s);
  return [Number(s >> 32n), Number(s & 0xffffffffn)];
}

function random<D extends Dtype>(kind: 0 | 1, shape: Shape, a: number, b: number, opts?: RandomOptions<D>): Tensor<D> {
  const o = options(opts);
  if (o.dtype === 'i32') throw new DtypeError('random values need a float dtype');
  const [hi, lo] = seedWords(opts?.seed);
  const t = empty(shape, opts);
  try {
    call(() => native().random(t.handle(), kind, hi, lo, a, b));
  } catch (e) {
    t.dispose();
    throw e;
  }
  return t;
}

/**
 * Standard normal values (mean 0, std 1). The same seed gives the same bits on the CPU and on
 * CUDA: values come from a counter-based generator (Philox4x32-10) indexed by element.
 */
export function randn<D extends Dtype = 'f32'>(shape: Shape,
    opts?: RandomOptions<D> & { mean?: number; std?: number }): Tensor<D> {
  const mean = opts?.mean ?? 0, std = opts?.std ?? 1;
  if (typeof mean !== 'number' || typeof std !== 'number' || !Number.isFinite(mean) || !Number.isFinite(std))
    throw new ArgumentError('randn: mean and std must be finite numbers');
  // |normal| < 6.7 for this generator: beyond, values would overflow f32 to ±Infinity.
  if (!(Math.abs(mean) + 6.7 * Math.abs(std) < F32_MAX)) throw new ArgumentError('randn: mean and std must keep values within f32 range');
  return random(0, shape, mean, std, opts);
}

/** Uniform values in [low, high) (default [0, 1)); same bits on CPU and CUDA for a seed. */
export function rand<D extends Dtype = 'f32'>(shape: Shape,
    opts?: RandomOptions<D> & { low?: number; high?: number }): Tensor<D> {
  const low = opts?.low ?? 0, high = opts?.high ?? 1;
  if (typeof low !== 'number' || typeof high !== 'number' || !Number.isFinite(low) || !Number.isFinite(high) || !(high > low))
    throw new ArgumentError('rand: need finite low < high');
  if (!(Math.fround(high) - Math.fround(low) < F32_MAX)) throw new ArgumentError('rand: low, high and high - low must be within f32 range');
  return random(1, shape, low, high, opts);
}

function inferShape(data: NestedArray): { shape: number[]; flat: number[] } {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    if (shape.length >= MAX_DIMS) throw new ShapeError(`tensor data is nested more than ${MAX_DIMS} deep`);
    shape.push(cur.length);
    cur = cur[0];
  }
  const flat: number[] = [];
  const walk = (a: unknown, depth: number): void => {
    if (depth === shape.length) {
      if (typeof a !== 'number') throw new ArgumentError('tensor data must hold numbers');
      flat.push(a);
      return;
    }
    if (!Array.isArray(a) || a.length !== shape[depth]) throw new ShapeError('tensor data is not rectangular');
    for (const x of a) walk(x, depth + 1);
  };
  walk(data, 0);
  return { shape, flat };
}

/**
 * A tensor from host data: a typed array (with `shape`, default 1-D) or (nested) number arrays.
 * Float data is rounded to f16/bf16 to nearest even; a Uint16Array holds raw f16/bf16 bits.
 */
export function tensor<D extends Dtype>(data: TensorData, opts: TensorOptions<D> & { dtype: D; shape?: Shape }): Tensor<D>;
export function tensor(data: Int32Array, opts?: { device?: DeviceLike; shape?: Shape; dtype?: undefined }): Tensor<'i32'>;
export function tensor(data: TensorData, opts?: { device?: DeviceLike; shape?: Shape; dtype?: undefined }): Tensor<'f32'>;
export function tensor(data: TensorData, opts?: TensorOptions & { shape?: Shape }): Tensor;
export function tensor(data: TensorData, opts?: TensorOptions & { shape?: Shape }): Tensor {
  let typed: Float32Array | Float64Array | Int32Array | Uint16Array;
  let shape: number[];
  let defDtype: Dtype = 'f32';
  if (ArrayBuffer.isView(data)) {
    if (!(data instanceof Float32Array || data instanceof Float64Array || data instanceof Int32Array || data instanceof Uint16Array))
      throw new DtypeError('tensor data must be a Float32Array, Float64Array, Int32Array, Uint16Array or number array');
    // Shared memory can change under us (and the addon wants a plain ArrayBuffer): copy it.
    typed = typeof SharedArrayBuffer !== 'undefined' && data.buffer instanceof SharedArrayBuffer ? data.slice() : data;
    shape = opts?.shape !== undefined ? checkShape(opts.shape) : [data.length];
    if (data instanceof Int32Array) defDtype = 'i32';
    if (data instanceof Uint16Array) {
      if (opts?.dtype !== 'f16' && opts?.dtype !== 'bf16')
        throw new DtypeError('a Uint16Array holds raw f16/bf16 bits: give dtype f16 or bf16');
    }
  } else if (Array.isArray(data)) {
    const inf = inferShape(data as NestedArray);
    shape = opts?.shape !== undefined ? checkShape(opts.shape) : inf.shape;
    const dt = opts?.dtype ?? 'f32';
    if (dt === 'i32' && inf.flat.some((v) => !Number.isInteger(v))) throw new DtypeError('i32 tensor data must be integers');
    // Int32Array.from would wrap 3e9 to a negative number: refuse instead.
    if (dt === 'i32' && inf.flat.some((v) => !isInt32(v))) throw new ArgumentError('i32 tensor data must be int32 values (-2^31 .. 2^31-1)');
    typed = dt === 'i32' ? Int32Array.from(inf.flat) : Float64Array.from(inf.flat);
  } else {
    throw new ArgumentError('tensor data must be a typed array or an array of numbers');
  }
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== typed.length) throw new ShapeError(`data has ${typed.length} elements, shape [${shape}] needs ${n}`);
  const o = options(opts, defDtype);
  if (o.dtype === 'i32' && !(typed instanceof Int32Array)) {
    if (!Array.isArray(data)) throw new DtypeError('an i32 tensor needs an Int32Array or integer array');
  }
  if (o.dtype !== 'i32' && typed instanceof Int32Array) typed = Float64Array.from(typed);
  const t = empty(shape, { dtype: o.dtype, device: o.device });
  try {
    call(() => native().write(t.handle(), typed));
  } catch (e) {
    t.dispose();
    throw e;
  }
  return t;
}

/** Waits (without blocking the event loop) for the device's queued work; rejects with its first error. */
export async function synchronize(device: DeviceLike = 'cpu'): Promise<void> {
  const { index } = parseDevice(device);
  return call(() => native().synchronize(index));
}

export interface MemoryInfo { allocated: number; reserved: number; peak: number; allocations: number; frees: number; deviceMallocs: number }

/** Bytes in use by tensors (allocated), held from the system (reserved, CUDA cache included) and the peak. */
export function memory(device: DeviceLike = 'cpu'): MemoryInfo {
  const { index } = parseDevice(device);
  return call(() => native().memory(index));
}
export function resetPeakMemory(device: DeviceLike = 'cpu'): void {
  const { index } = parseDevice(device);
  call(() => native().resetPeak(index));
}
/** Returns cached, unused CUDA blocks to the driver. */
export function emptyCache(device: DeviceLike = 'cuda'): void {
  const { index } = parseDevice(device);
  call(() => native().emptyCache(index));
}

/** @internal checks a tensor argument of an op and returns its handle. */
export function arg(t: unknown, what: string): NativeHandle {
  if (!isTensor(t)) throw new ArgumentError(`${what} must be a Tensor`);
  return t.handle(what);
}

/** @internal all tensors on one device. */
export function sameDevice(op: string, ...ts: Tensor[]): DeviceString {
  for (const t of ts)
    if (t.device !== ts[0].device) throw new DeviceError(`${op}: tensors on different devices (${ts[0].device} and ${t.device})`);
  return ts[0].device;
}

export { deviceIndex };
