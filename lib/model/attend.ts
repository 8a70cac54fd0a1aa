// The one place the model calls attention. Without a group, or with a group of world size 1, this is
// plain causal flash attention (synchronous: it only enqueues work). With a process group of world > 1
// every rank holds a shard of one sequence (zigzag or contiguous, see lib/ring.ts) and attention is
// ring.forward / ring.backward over the group: asynchronous (it waits for its peers' K/V), so the model
// drives its layers through forwardAsync/backwardAsync then.
import { attention } from '../attention';
import { ArgumentError, UnsupportedError } from '../errors';
import { ring, RingLayout, RingAlgorithm } from '../ring';
import { Tensor } from '../tensor';
import type { Group } from '../dist/types';

/**
 * The part of a process group attend needs to tell its size (a structural subset of lib/dist's Group).
 * A group of world size > 1 must be a real lib/dist Group (ring attention communicates over it).
 */
export interface AttendGroup {
  readonly size?: number;
  readonly worldSize?: number;
  readonly world?: number;
  readonly rank?: number;
}

export interface AttendOptions {
  /** Sequence-parallel group; undefined or world size 1 = plain attention. */
  group?: AttendGroup | Group;
  /**
   * World 1: global position of this call's first token. World > 1: global position of the whole
   * (sharded) sequence's first token; each shard's positions follow from `layout`. Default 0.
   */
  positionOffset?: number;
  /** How the sequence is sharded over the group (world > 1): 'zigzag' (default) or 'contiguous'. */
  layout?: RingLayout;
  /** Ring attention's algorithm ('auto' by default, see ring.chooseAlgorithm). */
  algorithm?: RingAlgorithm;
  /** Timeout of each communication call (default: the group's). */
  timeoutMs?: number;
}

export function worldOf(g: AttendGroup | Group | undefined): number {
  if (g === undefined || g === null) return 1;
  if (typeof g !== 'object') throw new ArgumentError('attend: group must be a process group');
  const a = g as AttendGroup;
  const w = a.worldSize ?? a.size ?? a.world ?? 1;
  if (typeof w !== 'number' || !Number.isSafeInteger(w) || w < 1) throw new ArgumentError(`attend: group size must be a positive integer, got ${String(w)}`);
  return w;
}

/** The group as a lib/dist Group when its world size is > 1 (null for plain attention). */
export function ringGroup(g: AttendGroup | Group | undefined, what = 'attend'): Group | null {
  if (worldOf(g) === 1) return null;
  const x = g as Partial<Group>;
  if (typeof x.batchSendRecv !== 'function' || typeof x.allReduce !== 'function' || !Number.isSafeInteger(x.rank)
      || typeof x.worldSize !== 'number')
    throw new ArgumentError(`${what}: a group of world size > 1 must be a process group from lib/dist (localGroups, init, group)`);
  return x as Group;
}

function plainOnly(opts: AttendOptions | undefined): void {
  if (worldOf(opts?.group) !== 1)
    throw new UnsupportedError('attend: sequence-parallel (ring) attention is asynchronous; use forwardAsync/backwardAsync (model.forwardBackward does)');
}

function ringOpts(opts: AttendOptions) {
  const off = opts.positionOffset ?? 0;
  return {
    causal: true, qOffset: off, kOffset: off, layout: opts.layout ?? 'zigzag',
    ...(opts.algorithm !== undefined ? { algorithm: opts.algorithm } : {}),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
  } as const;
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

/** forward, or ring attention over the group's shards when its world size is > 1. */
export async function forwardAsync(q: Tensor, k: Tensor, v: Tensor, opts: AttendOptions = {}): Promise<{ out: Tensor; lse: Tensor }> {
  const g = ringGroup(opts.group);
  if (!g) return forward(q, k, v, opts);
  return ring.forward(g, q, k, v, ringOpts(opts));
}

/** backward, or ring attention's backward over the group's shards when its world size is > 1. */
export async function backwardAsync(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    opts: AttendOptions = {}): Promise<{ dq: Tensor; dk: Tensor; dv: Tensor }> {
  const g = ringGroup(opts.group);
  if (!g) return backward(dout, q, k, v, out, lse, opts);
  return ring.backward(g, dout, q, k, v, out, lse, ringOpts(opts));
}

export const attend = { forward, backward, forwardAsync, backwardAsync };
