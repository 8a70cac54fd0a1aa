// The NCCL backend: CUDA tensors, one communicator per rank.
//
// Two modes:
// - one process driving several GPUs (`group({ devices })`): ncclCommInitAll; the W local ranks' calls
//   are collected and, once every local rank has posted its k-th call, issued together in one
//   ncclGroupStart/End (NCCL needs the calls of all local ranks in one group, or it deadlocks). Each rank's
//   call returns its own promise, resolved when the batch is enqueued.
// - one process per GPU (`init({ backend: 'nccl' })`): a TCP group rendezvous, rank 0 makes the unique id
//   and sends it to the others, ncclCommInitRank. The TCP mesh stays as a heartbeat: a dead peer or an abort
//   seen there aborts the communicator, so kernels waiting for that peer return.
//
// Native side: csrc/binding/nccl.cpp (comm stream per device ordered with the compute stream both ways,
// watchdog for timeouts and asynchronous errors).
import type { Tensor } from '../tensor';
import type { DeviceString } from '../device';
import { ArgumentError, CommError, DeviceError, MegabeamError, TimeoutError, fromNative, callNative as call } from '../errors';
import { native } from '../native';
import type { Backend, CommOptions, Group, P2POp, ReduceOp } from './types';
import type { TcpGroup } from './tcp';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Comm = unknown; // native communicator handle

export interface NcclInfo { found: boolean; path?: string; version?: string; versionCode?: number; error?: string }

/** Whether NCCL could be loaded, from where, and its version (or why not). */
export function ncclInfo(): NcclInfo {
  return call(() => native().ncclInfo()) as NcclInfo;
}

interface Item {
  comm: Comm;
  op: 'allReduce' | 'allGather' | 'reduceScatter' | 'broadcast' | 'send' | 'recv' | 'barrier';
  send?: unknown;
  recv?: unknown;
  peer?: number;
  root?: number;
  reduce?: ReduceOp;
  what: string;
}

function describe(kind: string, it: Item, opts: (CommOptions & { op?: ReduceOp }) | undefined): string {
  const parts = [kind];
  if (it.recv !== undefined) parts.push(`out ${tensorDesc(it.recv)}`);
  if (it.send !== undefined) parts.push(`in ${tensorDesc(it.send)}`);
  if (kind === 'broadcast') parts.push(`root ${it.root}`);
  if (kind === 'allReduce' || kind === 'reduceScatter') parts.push(`op ${opts?.op ?? 'sum'}`);
  return parts.join(' ');
}
const described = new WeakMap<object, string>();
/** dtype[numel] of a tensor handle, from the Tensor that made the item (set in checkTensor). */
function tensorDesc(h: unknown): string {
  return described.get(h as object) ?? '?';
}

/** Collects the local ranks' calls (single-process mode) and issues each call number as one batch. */
class Batcher {
  private slots = new Map<number, { items: Item[][]; posted: number; kind: string[]; settle: ((e?: Error) => void)[]; timer: NodeJS.Timeout; timeoutMs: number; deferred: boolean }>();
  private next = 0; // the next call number to issue
  failure: MegabeamError | null = null;
  readonly groups: NcclGroup[] = [];

  constructor(readonly world: number) {}

  post(rank: number, k: number, kind: string, items: Item[], timeoutMs: number, deferred: boolean): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    let s = this.slots.get(k);
    if (!s) {
      const slot = {
        items: new Array<Item[]>(this.world), posted: 0, kind: new Array<string>(this.world), settle: [] as ((e?: Error) => void)[], timeoutMs, deferred,
        timer: setTimeout(() => {
          const missing = [...Array(this.world).keys()].filter((r) => slot.items[r] === undefined);
          this.fail(new TimeoutError(`${kind} #${k} timed out after ${timeoutMs} ms: local rank(s) ${missing.join(', ')} did not make the call ` +
            '(in one-process mode every rank of the group must make every call)'));
        }, timeoutMs),
      };
      s = slot;
      this.slots.set(k, s);
    }
    const slot = s;
    slot.items[rank] = items;
    slot.deferred = slot.deferred && deferred; // one batch: deferred only if every rank asked
    slot.kind[rank] = kind;
    slot.posted++;
    const p = new Promise<void>((resolve, reject) => slot.settle.push((e) => (e ? reject(e) : resolve())));
    this.flush();
    return p;
  }

  private flush(): void {
    for (;;) {
      const s = this.slots.get(this.next);
      if (!s || s.posted < this.world) return;
      this.slots.delete(this.next);
      clearTimeout(s.timer);
      const k = this.next++;
      const kinds = new Set(s.kind);
      let err: Error | undefined;
      if (kinds.size > 1) {
        err = new CommError(`mismatched calls: call #${k} is ${s.kind.map((x, r) => `${x} on rank ${r}`).join(', ')}`);
        this.fail(err as MegabeamError);
      } else {
        try {
          call(() => native().ncclIssue({ items: s.items.flat(), timeoutMs: s.timeoutMs, deferred: s.deferred }));
        } catch (e) {
          err = fromNative(e) as Error;
          this.fail(err as MegabeamError);
        }
      }
      for (const f of s.settle) f(err);
    }
  }

  fail(e: MegabeamError): void {
    if (this.failure) return;
    this.failure = e;
    for (const [, s] of this.slots) {
      clearTimeout(s.timer);
      for (const f of s.settle) f(e);
    }
    this.slots.clear();
    for (const g of this.groups) g.abortNative(e.message);
  }
}

export class NcclGroup implements Group {
  readonly backend: Backend = 'nccl';
  private calls = 0;
  private failure: MegabeamError | null = null;
  private destroyed = false;
  private poller: NodeJS.Timeout;

  /** @internal use group() or init() */
  constructor(
    readonly rank: number,
    readonly worldSize: number,
    readonly device: DeviceString,
    readonly timeoutMs: number,
    private comm: Comm,
    private batcher: Batcher | null,
    private tcp: TcpGroup | null,
  ) {
    // The native watchdog aborts a hung communicator; this notices it between calls.
    this.poller = setInterval(() => this.status(), 200);
    this.poller.unref();
    tcp?.onFailure((e) => this.fail(new CommError(`NCCL group aborted: ${e.message}`)));
  }

  private status(): MegabeamError | null {
    if (this.failure) return this.failure;
    if (this.destroyed) return null;
    const s = call(() => native().ncclStatus({ comm: this.comm })) as { code: string; message: string } | null;
    if (s) this.fail(fromNative(Object.assign(new Error(`${s.code}: ${s.message}`), { code: s.code })) as MegabeamError);
    return this.failure;
  }

  private fail(e: MegabeamError): void {
    if (this.failure) return;
    this.failure = e;
    clearInterval(this.poller);
    this.abortNative(e.message);
    this.batcher?.fail(e);
    // Tell the other processes (their TCP links see an abort and abort their communicators).
    this.tcp?.abort(`rank ${this.rank}: ${e.message}`);
  }

  /** @internal */
  abortNative(reason: string): void {
    try { native().ncclAbort({ comm: this.comm, reason }); } catch { /* already gone */ }
  }

  private checkTensor(t: unknown, op: string, name: string): any {
    const x = t as Tensor;
    if (!x || typeof x !== 'object' || typeof x.handle !== 'function') throw new ArgumentError(`${op}: ${name} must be a Tensor`);
    if (x.device !== this.device) throw new DeviceError(`${op}: ${name} is on ${x.device}, this rank's device is ${this.device}`);
    const h = x.handle(`${op}: ${name}`);
    described.set(h, `${x.dtype}[${x.numel}]`);
    return h;
  }

  private issue(kind: string, opts: CommOptions | undefined, build: (what: string) => Item[]): Promise<void> {
    const timeoutMs = opts?.timeoutMs ?? this.timeoutMs;
    if (!(typeof timeoutMs === 'number' && timeoutMs > 0)) return Promise.reject(new ArgumentError(`${kind}: timeoutMs must be > 0`));
    if (this.destroyed) return Promise.reject(new CommError(`${kind}: the group was destroyed`));
    const f = this.status();
    if (f) return Promise.reject(f);
    const k = this.calls++;
    let items: Item[];
    try {
      items = build(`${kind} #${k + 1} (rank ${this.rank} of ${this.worldSize})`);
    } catch (e) {
      return Promise.reject(e);
    }
    const deferred = opts?.deferred === true;
    if (this.batcher) return this.batcher.post(this.rank, k, kind, items, timeoutMs, deferred);
    // Multi-process: the ranks compare their collectives over TCP, asynchronously (the NCCL call does not
    // wait for it). Failures reach this group through tcp.onFailure.
    if (this.tcp && kind !== 'sendrecv') this.tcp.verify(describe(kind, items[0], opts), { timeoutMs }).catch(() => {});
    try {
      call(() => native().ncclIssue({ items, timeoutMs, deferred }));
    } catch (e) {
      const err = e as MegabeamError;
      if (err.code === 'ERR_NCCL' || err.code === 'ERR_TIMEOUT' || err.code === 'ERR_COMM') this.fail(err);
      return Promise.reject(err);
    }
    return Promise.resolve();
  }

  batchSendRecv(ops: readonly P2POp[], opts?: CommOptions): Promise<void> {
    return this.issue('sendrecv', opts, (what) => {
      if (!Array.isArray(ops)) throw new ArgumentError('batchSendRecv: ops must be an array');
      return ops.map((o) => {
        if (!o || (o.op !== 'send' && o.op !== 'recv')) throw new ArgumentError("batchSendRecv: each op must be { op: 'send' | 'recv', tensor, peer }");
        const h = this.checkTensor(o.tensor, 'batchSendRecv', o.op);
        return { comm: this.comm, op: o.op, [o.op]: h, peer: o.peer, what: `${what} ${o.op} ${o.op === 'send' ? 'to' : 'from'} rank ${o.peer}` } as Item;
      });
    });
  }
  send(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.batchSendRecv([{ op: 'send', tensor, peer }], opts);
  }
  recv(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.batchSendRecv([{ op: 'recv', tensor, peer }], opts);
  }
  allReduce(tensor: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.issue('allReduce', opts, (what) => [{ comm: this.comm, op: 'allReduce', recv: this.checkTensor(tensor, 'allReduce', 'tensor'), reduce: opts?.op ?? 'sum', what }]);
  }
  allGather(out: Tensor, input: Tensor, opts?: CommOptions): Promise<void> {
    return this.issue('allGather', opts, (what) => [{ comm: this.comm, op: 'allGather', recv: this.checkTensor(out, 'allGather', 'out'), send: this.checkTensor(input, 'allGather', 'input'), what }]);
  }
  reduceScatter(out: Tensor, input: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.issue('reduceScatter', opts, (what) => [{
      comm: this.comm, op: 'reduceScatter', recv: this.checkTensor(out, 'reduceScatter', 'out'), send: this.checkTensor(input, 'reduceScatter', 'input'),
      reduce: opts?.op ?? 'sum', what,
    }]);
  }
  broadcast(tensor: Tensor, root: number, opts?: CommOptions): Promise<void> {
    return this.issue('broadcast', opts, (what) => [{ comm: this.comm, op: 'broadcast', recv: this.checkTensor(tensor, 'broadcast', 'tensor'), root, what: `${what} from root ${root}` }]);
  }
  barrier(opts?: CommOptions): Promise<void> {
    return this.issue('barrier', opts, (what) => [{ comm: this.comm, op: 'barrier', what }]);
  }

  join(): void {
    if (this.failure) throw this.failure;
    if (this.destroyed) return;
    call(() => native().ncclJoin({ comm: this.comm }));
  }

  abort(reason = 'aborted'): void {
    this.fail(new CommError(`group aborted on rank ${this.rank}: ${reason}`));
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    clearInterval(this.poller);
    try {
      await call(() => native().ncclDestroy({ comm: this.comm }));
    } finally {
      await this.tcp?.destroy();
    }
  }
}

/** @internal one process, several GPUs */
export async function ncclLocalGroups(devices: number[], timeoutMs: number): Promise<NcclGroup[]> {
  const comms = (await call(() => native().ncclInitAll({ devices }))) as Comm[];
  const b = new Batcher(devices.length);
  const gs = comms.map((c, r) => new NcclGroup(r, devices.length, `cuda:${devices[r]}`, timeoutMs, c, b, null));
  b.groups.push(...gs);
  return gs;
}

/** @internal one rank of a multi-process group; `tcp` is the already connected TCP group. */
export async function ncclProcessGroup(tcp: TcpGroup, device: number, timeoutMs: number): Promise<NcclGroup> {
  // Fail with ERR_NO_NCCL on every rank before exchanging anything.
  const info = ncclInfo();
  const id = tcp.rank === 0 && info.found ? (call(() => native().ncclUniqueId()) as Uint8Array) : null;
  // Rank 0 sends an empty id when it has no NCCL, so the others fail too instead of waiting.
  const got = await tcp.broadcastBytes(tcp.rank === 0 ? (id ?? new Uint8Array(0)) : null, 0, { timeoutMs });
  if (!info.found) call(() => native().ncclUniqueId()); // throws ERR_NO_NCCL with the reason
  if (got.byteLength !== 128) throw new CommError(`rank ${tcp.rank}: rank 0 could not make an NCCL unique id (no NCCL on rank 0?)`);
  let timer: NodeJS.Timeout | undefined;
  const comm = await Promise.race([
    call(() => native().ncclInitRank({ id: new Uint8Array(got), rank: tcp.rank, worldSize: tcp.worldSize, device })) as Promise<Comm>,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`ncclCommInitRank timed out after ${timeoutMs} ms on rank ${tcp.rank} of ${tcp.worldSize}`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  return new NcclGroup(tcp.rank, tcp.worldSize, `cuda:${device}`, timeoutMs, comm, null, tcp);
}
