// Shared helpers of lib/nn: option coercion and the per-device "bad id" words the CUDA kernels write.
import { ArgumentError } from '../errors';
import { DeviceString } from '../device';
import { Tensor, full } from '../tensor';

export function opts<T extends object>(op: string, o: unknown): Partial<T> {
  if (o === undefined) return {};
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ArgumentError(`${op}: options must be an object`);
  return o as Partial<T>;
}

/** @internal wraps a native handle returned by an op. */
export function wrap(h: unknown, shape: readonly number[], dtype: Tensor['dtype'], device: DeviceString): Tensor {
  return new Tensor(h as never, shape, dtype, device);
}

// ---------------------------------------------------------------- out-of-range ids on CUDA
// CUDA kernels cannot throw: a token whose id (or label) is out of range gets a zero output row / no
// gradient, and the kernel records the smallest such position with atomicMin into one i32 word per op
// on its device. `checkIds` reads and clears those words. (On the CPU the queued op itself fails with
// ERR_ARG, surfacing at the next sync point, e.g. `await synchronize()` or `toArray()`.)
export const ID_OPS = ['embedding', 'embeddingBackward', 'crossEntropy'] as const;
export type IdOp = (typeof ID_OPS)[number];
const CLEAN = 2147483647;
const words = new Map<DeviceString, { all: Tensor; slots: Tensor[] }>();

function deviceWords(device: DeviceString): { all: Tensor; slots: Tensor[] } {
  let w = words.get(device);
  if (!w) {
    const all = full([ID_OPS.length], CLEAN, { dtype: 'i32', device });
    w = { all, slots: ID_OPS.map((_, i) => all.narrow(0, i, 1)) };
    words.set(device, w);
  }
  return w;
}

/** @internal the handle of the bad-id word of `op` on a CUDA device, undefined on the CPU. */
export function badWord(op: IdOp, device: DeviceString): unknown {
  if (device === 'cpu') return undefined;
  return deviceWords(device).slots[ID_OPS.indexOf(op)].handle();
}

/**
 * Waits for the device's queued work and rejects with ERR_ARG if an id/label given to `embedding`,
 * `embeddingBackward`, `crossEntropy` or `lmHeadLoss` since the last check was out of range (CUDA: the
 * smallest bad position per op; that row's output was zeroed / its gradient dropped). Clears the record.
 * On the CPU the bad op already failed; this surfaces its error like `synchronize()`.
 */
export async function checkIds(device: DeviceString | 'cuda' = 'cuda'): Promise<void> {
  const dev: DeviceString = device === 'cuda' ? 'cuda:0' : device;
  if (dev === 'cpu') {
    const { synchronize } = await import('../tensor');
    return synchronize('cpu');
  }
  const w = words.get(dev);
  if (!w) return;
  const v = await w.all.toArray();
  const bad: string[] = [];
  v.forEach((p, i) => {
    if (p !== CLEAN) bad.push(`${ID_OPS[i]}: the id/label at flat position ${p} was out of range (${ID_OPS[i] === 'embedding' ? 'its row was zeroed' : 'it was skipped'})`);
  });
  if (bad.length) {
    w.all.fill_(CLEAN);
    throw new ArgumentError(bad.join('; '));
  }
}
