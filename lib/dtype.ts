import { DtypeError } from './errors';

export type Dtype = 'f32' | 'f16' | 'bf16' | 'i32';
export const DTYPES: readonly Dtype[] = ['f32', 'f16', 'bf16', 'i32'];

// Must match mb::Dtype in csrc/common/dtype.h.
const CODES: Record<Dtype, number> = { f32: 0, f16: 1, bf16: 2, i32: 3 };
const SIZES: Record<Dtype, number> = { f32: 4, f16: 2, bf16: 2, i32: 4 };

export function checkDtype(d: unknown, what = 'dtype'): Dtype {
  if (typeof d !== 'string' || !(DTYPES as readonly string[]).includes(d))
    throw new DtypeError(`${what}: unknown dtype ${typeof d === 'string' ? JSON.stringify(d) : typeof d} (expected one of ${DTYPES.join(', ')})`);
  return d as Dtype;
}
export const dtypeCode = (d: Dtype): number => CODES[d];
export const dtypeSize = (d: Dtype): number => SIZES[d];
export const isFloat = (d: Dtype): boolean => d !== 'i32';

/** Rounds a float to the nearest bf16 value (ties to even), as a number. */
export function roundBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  if (Number.isNaN(f[0])) return NaN;
  u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
}
