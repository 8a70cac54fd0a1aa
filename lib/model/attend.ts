// The one place the model calls attention. A sequence-parallel group (ring attention, where each
// rank holds a contiguous shard of the sequence and K/V travel round the ring) slots in here; without
// a group, or with a group of world size 1, this is plain causal flash attention.
import { attention } from '../attention';
import { ArgumentError, UnsupportedError } from '../errors';
import { Tensor } from '../tensor';

/**
 * The part of a process group attend needs (a structural subset of lib/dist's Group, so this file
 * does not depend on the dist module): its size, and this rank's index in it.
 */
export interface AttendGroup {
  readonly size?: number;
  readonly worldSize?: number;
  readonly world?: number;
  readonly rank?: number;
}

export interface AttendOptions {
  /** Sequence-parallel group; undefined or world size 1 = plain attention. */
  group?: AttendGroup;
  /** Global position of this shard's first token (sequence parallelism); default 0. */
  positionOffset?: number;
}

function worldOf(g: AttendGroup | undefined): number {
  if (g === undefined || g === null) return 1;
  if (typeof g !== 'object') throw new ArgumentError('attend: group must be a process group');
  const w = g.worldSize ?? g.size ?? g.world ?? 1;
  if (typeof w !== 'number' || !Number.isSafeInteger(w) || w < 1) throw new ArgumentError(`attend: group size must be a positive integer, got ${String(w)}`);
  return w;
}

function plainOnly(opts: AttendOptions | undefined): void {
  if (worldOf(opts?.group) !== 1)
    throw new UnsupportedError('attend: sequence-parallel (ring) attention is not wired in yet; use a group of world size 1');
}

/** Causal attention forward: q [B,S,Hq,D], k/v [B,S,Hkv,D] -> { out [B,S,Hq,D], lse f32 [B,Hq,S] }. */
export function forward(q: Tensor, k: Tensor, v: Tensor, opts?: AttendOptions): { out: Tensor; lse: Tensor } {
  plainOnly(opts);
  const off = opts?.positionOffset ?? 0;
  return attention.forward(q, k, v, { causal: true, qOffset: off, kOffset: off });
}

/** Causal attention backward with forward's out and lse: { dq, dk, dv } (dk/dv summed over GQA groups). */
export function backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    opts?: AttendOptions): { dq: Tensor; dk: Tensor; dv: Tensor } {
  plainOnly(opts);
  const off = opts?.positionOffset ?? 0;
  return attention.backward(dout, q, k, v, out, lse, { causal: true, qOffset: off, kOffset: off });
}

export const attend = { forward, backward };
