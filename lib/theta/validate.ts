// Shared argument checks: every failure is a RopeConfigError naming the offending parameter.
import { RopeConfigError } from '../errors';

export function fail(param: string, message: string): never {
  throw new RopeConfigError(param, message);
}

export function finiteNumber(param: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(param, `must be a finite number, got ${show(v)}`);
  return v;
}

export function positiveInt(param: string, v: unknown): number {
  const n = finiteNumber(param, v);
  if (!Number.isInteger(n) || n <= 0) fail(param, `must be a positive integer, got ${show(v)}`);
  return n;
}

export function positiveEvenInt(param: string, v: unknown): number {
  const n = positiveInt(param, v);
  if (n % 2 !== 0) fail(param, `must be even, got ${n}`);
  return n;
}

/** A head or rotary dimension: positive, even and at most 65536 (keeps arrays and scans bounded). */
export function dim(param: string, v: unknown): number {
  const n = positiveEvenInt(param, v);
  if (n > 65536) fail(param, `must be ≤ 65536, got ${n}`);
  return n;
}

/** A context length for the cosine-sum scans: the scans cost O(L·d), so L is capped at 2^24. */
export const MAX_CONTEXT = 2 ** 24;
export function contextLength(param: string, v: unknown, allowZero = false): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (allowZero ? 0 : 1))
    fail(param, `must be a ${allowZero ? 'non-negative' : 'positive'} integer, got ${show(v)}`);
  if (v > MAX_CONTEXT) fail(param, `must be ≤ 2^24 (${MAX_CONTEXT}), got ${v}`);
  return v;
}

export function positive(param: string, v: unknown): number {
  const n = finiteNumber(param, v);
  if (!(n > 0)) fail(param, `must be > 0, got ${n}`);
  return n;
}

export function base(param: string, v: unknown): number {
  const n = finiteNumber(param, v);
  if (!(n > 1)) fail(param, `must be > 1, got ${n}`);
  return n;
}

export function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  if (Array.isArray(v) || ArrayBuffer.isView(v)) return `an array of length ${(v as ArrayLike<unknown>).length}`;
  return typeof v;
}
