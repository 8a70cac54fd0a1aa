// The local backend: W virtual ranks inside one process on one device (the CPU or one GPU). For tests and
// for measuring sequence parallelism's compute on one GPU: the ranks are W Group objects sharing a hub;
// each call meets its peers' calls in an in-process rendezvous and the data moves by device copies on the
// device's queue (on one GPU everything is on its one stream, so issue order is execution order).
//
// Matching rules (those of NCCL / torch.distributed):
// - Collectives (allReduce, allGather, reduceScatter, broadcast, barrier): the n-th collective call of
//   every rank meets the n-th of the others; a different op, root, reduce op, dtype or element count is a
//   mismatch (ERR_COMM on every rank).
// - Point-to-point (send, recv, batchSendRecv): each (src -> dst) channel is FIFO: the n-th send from a to
//   b meets b's n-th recv from a. A different element count or dtype is a mismatch (ERR_COMM).
// - A call still unmatched after its timeout aborts the hub: it and every pending and later call of every
//   rank reject with ERR_TIMEOUT naming the op and the peers that did not come.
// - A send whose recv is not posted yet is snapshotted (a device copy), so the sender may reuse or dispose
//   its buffer as soon as the call was issued, as the Group contract allows.
// - Reductions accumulate in f32 (add/maximum: fp32 math) and round once into each rank's tensor.
import { DeviceString, parseDevice } from '../device';
import { ArgumentError, CommError, DeviceError, DtypeError, MegabeamError, ShapeError, TimeoutError, callNative as call } from '../errors';
import { add, scale } from '../elementwise';
import { native } from '../native';
import { Tensor, empty } from '../tensor';
import type { Backend, CommOptions, Group, P2POp, ReduceOp } from './types';

export interface LocalGroupOptions {
  /** The one device every virtual rank uses (default 'cpu'). */
  device?: string;
  /** Default timeout of every call in ms (default 60000). */
  timeoutMs?: number;
}

type Settle = { resolve: () => void; reject: (e: Error) => void };

interface CollectiveArrival {
  rank: number;
  op: string;
  key: string;            // everything that must agree across ranks
  tensors: Tensor[];      // op-specific: [tensor] | [out, input]
  root: number;
  reduce: ReduceOp;
  settle: Settle;
  timer: NodeJS.Timeout | null;
}

interface PendingSend {
  src: number;
  dst: number;
  data: Tensor;           // a snapshot (owned) or the sender's tensor when copied at once
  owned: boolean;
  batch: Batch;
}

interface PendingRecv {
  src: number;
  dst: number;
  tensor: Tensor;
  batch: Batch;
}

// One p2p call (a batch of sends and recvs): resolves when every op of it was matched and copied.
interface Batch {
  rank: number;
  op: string;
  left: number;
  settle: Settle;
  timer: NodeJS.Timeout | null;
  waitingOn: Set<number>;  // peers of unmatched ops (for the timeout message)
}

function copyInto(dst: Tensor, src: Tensor): void {
  call(() => native().copy(dst.handle('recv tensor'), src.handle('send tensor')));
}

// A 1-D view of `length` elements at `start` (shares t's memory; dispose it after use).
function flatView(t: Tensor, start: number, length: number): Tensor {
  const h = call(() => native().view(t.handle(), [length], start));
  return new Tensor(h, [length], t.dtype, t.device);
}

const REDUCE_DTYPES = new Set(['f32', 'f16', 'bf16']);

class Hub {
  readonly worldSize: number;
  readonly device: DeviceString;
  aborted: MegabeamError | null = null;
  private seq: number[];                              // per rank: collectives issued
  private slots = new Map<number, CollectiveArrival[]>();
  private sends = new Map<string, PendingSend[]>();   // channel "src>dst" -> FIFO
  private recvs = new Map<string, PendingRecv[]>();
  private batches = new Set<Batch>();

  constructor(worldSize: number, device: DeviceString) {
    this.worldSize = worldSize;
    this.device = device;
    this.seq = new Array(worldSize).fill(0);
  }

  abort(err: MegabeamError): void {
    if (this.aborted) return;
    this.aborted = err;
    for (const arrivals of this.slots.values())
      for (const a of arrivals) { if (a.timer) clearTimeout(a.timer); a.settle.reject(err); }
    this.slots.clear();
    for (const b of this.batches) { if (b.timer) clearTimeout(b.timer); b.settle.reject(err); }
    this.batches.clear();
    for (const q of this.sends.values()) for (const s of q) if (s.owned) s.data.dispose();
    this.sends.clear();
    this.recvs.clear();
  }

  // ---- collectives ----
  collective(a: Omit<CollectiveArrival, 'settle' | 'timer'>, timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.aborted) { reject(this.aborted); return; }
      const n = this.seq[a.rank]++;
      let arrivals = this.slots.get(n);
      if (!arrivals) { arrivals = []; this.slots.set(n, arrivals); }
      const arrival: CollectiveArrival = { ...a, settle: { resolve, reject }, timer: null };
      const first = arrivals[0];
      arrivals.push(arrival);
      if (first && (first.op !== a.op || first.key !== a.key)) {
        this.abort(new CommError(`${a.op} on rank ${a.rank} does not match ${first.op} on rank ${first.rank} ` +
          `(collective #${n}: ${a.op}(${a.key}) vs ${first.op}(${first.key}))`));
        return;
      }
      if (arrivals.length < this.worldSize) {
        arrival.timer = setTimeout(() => {
          const came = new Set((this.slots.get(n) ?? []).map((x) => x.rank));
          const missing = [...Array(this.worldSize).keys()].filter((r) => !came.has(r));
          this.abort(new TimeoutError(`${a.op} on rank ${a.rank} timed out after ${timeoutMs} ms waiting for ` +
            `rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`));
        }, timeoutMs);
        return;
      }
      this.slots.delete(n);
      for (const x of arrivals) if (x.timer) clearTimeout(x.timer);
      arrivals.sort((x, y) => x.rank - y.rank);
      try {
        this.run(arrivals);
      } catch (e) {
        this.abort(e instanceof MegabeamError ? e : new CommError(`${a.op}: ${(e as Error).message}`));
        return;
      }
      for (const x of arrivals) x.settle.resolve();
    });
  }

  private reduceInto(acc: Tensor, t: Tensor, op: ReduceOp, first: boolean): void {
    if (first) { scale(t, 1, { out: acc }); return; }
    if (op === 'max') call(() => native().maximum({ a: acc.handle(), b: t.handle(), out: acc.handle() }));
    else add(acc, t, { out: acc });
  }

  private run(arr: CollectiveArrival[]): void {
    const W = this.worldSize;
    const op = arr[0].op;
    if (op === 'barrier') return;
    if (op === 'broadcast') {
      const src = arr[arr[0].root].tensors[0];
      for (const x of arr) if (x.rank !== x.root) copyInto(x.tensors[0], src);
      return;
    }
    if (op === 'allGather') {
      const n = arr[0].tensors[1].numel;
      for (const x of arr) {
        for (const p of arr) {
          const v = flatView(x.tensors[0], p.rank * n, n);
          try { copyInto(v, p.tensors[1]); } finally { v.dispose(); }
        }
      }
      return;
    }
    const reduce = arr[0].reduce;
    if (op === 'allReduce') {
      // The inputs are read in full before any rank's tensor is overwritten (same queue, issue order).
      const acc = empty([arr[0].tensors[0].numel], { dtype: 'f32', device: this.device });
      try {
        // add/scale/maximum work on element counts, so the tensors' shapes need no reshaping.
        arr.forEach((x, i) => this.reduceInto(acc, x.tensors[0], reduce, i === 0));
        for (const x of arr) scale(acc, reduce === 'avg' ? 1 / W : 1, { out: x.tensors[0] });
      } finally { acc.dispose(); }
      return;
    }
    if (op === 'reduceScatter') {
      const n = arr[0].tensors[0].numel;
      const acc = empty([n], { dtype: 'f32', device: this.device });
      try {
        for (const x of arr) {
          arr.forEach((p, i) => {
            const v = flatView(p.tensors[1], x.rank * n, n);
            try { this.reduceInto(acc, v, reduce, i === 0); } finally { v.dispose(); }
          });
          scale(acc, reduce === 'avg' ? 1 / W : 1, { out: x.tensors[0] });
        }
      } finally { acc.dispose(); }
      return;
    }
    throw new CommError(`unknown collective ${op}`);
  }

  // ---- point to point ----
  p2p(rank: number, opName: string, ops: readonly P2POp[], timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.aborted) { reject(this.aborted); return; }
      const batch: Batch = { rank, op: opName, left: ops.length, settle: { resolve, reject }, timer: null, waitingOn: new Set() };
      if (ops.length === 0) { resolve(); return; }
      this.batches.add(batch);
      try {
        for (const o of ops) {
          if (o.op === 'send') this.postSend(rank, o.peer, o.tensor, batch);
          else this.postRecv(o.peer, rank, o.tensor, batch);
          if (this.aborted) return;
        }
      } catch (e) {
        this.abort(e instanceof MegabeamError ? e : new CommError(`${opName}: ${(e as Error).message}`));
        return;
      }
      if (batch.left > 0) {
        batch.timer = setTimeout(() => {
          this.abort(new TimeoutError(`${opName} on rank ${rank} timed out after ${timeoutMs} ms waiting for ` +
            `rank${batch.waitingOn.size > 1 ? 's' : ''} ${[...batch.waitingOn].join(', ')}`));
        }, timeoutMs);
      }
    });
  }

  private done(b: Batch): void {
    if (--b.left === 0 && this.batches.delete(b)) {
      if (b.timer) clearTimeout(b.timer);
      b.settle.resolve();
    }
  }

  private checkPair(send: Tensor, recv: Tensor, src: number, dst: number): void {
    if (send.numel !== recv.numel || send.dtype !== recv.dtype)
      throw new CommError(`send from rank ${src} (${send.numel} × ${send.dtype}) does not match recv on rank ${dst} ` +
        `(${recv.numel} × ${recv.dtype})`);
  }

  private postSend(src: number, dst: number, t: Tensor, batch: Batch): void {
    const ch = `${src}>${dst}`;
    const q = this.recvs.get(ch);
    if (q && q.length > 0) {
      const r = q.shift()!;
      this.checkPair(t, r.tensor, src, dst);
      copyInto(r.tensor, t);
      r.batch.waitingOn.delete(src);
      this.done(r.batch);
      this.done(batch);
      return;
    }
    const snap = t.clone();
    let s = this.sends.get(ch);
    if (!s) { s = []; this.sends.set(ch, s); }
    s.push({ src, dst, data: snap, owned: true, batch });
    batch.waitingOn.add(dst);
  }

  private postRecv(src: number, dst: number, t: Tensor, batch: Batch): void {
    const ch = `${src}>${dst}`;
    const q = this.sends.get(ch);
    if (q && q.length > 0) {
      const s = q.shift()!;
      try {
        this.checkPair(s.data, t, src, dst);
        copyInto(t, s.data);
      } finally {
        if (s.owned) s.data.dispose();  // freed once the queued copy ran
      }
      s.batch.waitingOn.delete(dst);
      this.done(s.batch);
      this.done(batch);
      return;
    }
    let r = this.recvs.get(ch);
    if (!r) { r = []; this.recvs.set(ch, r); }
    r.push({ src, dst, tensor: t, batch });
    batch.waitingOn.add(src);
  }
}

class LocalGroup implements Group {
  readonly rank: number;
  readonly worldSize: number;
  readonly device: DeviceString;
  readonly backend: Backend = 'local';
  readonly timeoutMs: number;
  private hub: Hub;
  private destroyed = false;
  private ownAbort: MegabeamError | null = null;

  constructor(hub: Hub, rank: number, timeoutMs: number) {
    this.hub = hub;
    this.rank = rank;
    this.worldSize = hub.worldSize;
    this.device = hub.device;
    this.timeoutMs = timeoutMs;
  }

  private timeout(op: string, opts?: CommOptions): number {
    const t = opts?.timeoutMs ?? this.timeoutMs;
    if (typeof t !== 'number' || !(t > 0) || !Number.isFinite(t)) throw new ArgumentError(`${op}: timeoutMs must be a finite number > 0`);
    return t;
  }

  private state(op: string): void {
    if (this.destroyed) throw new CommError(`${op}: the group was destroyed`);
    if (this.ownAbort) throw this.ownAbort;
    if (this.hub.aborted) throw this.hub.aborted;
  }

  private tensor(op: string, t: unknown, what: string): Tensor {
    if (!(t instanceof Tensor)) throw new ArgumentError(`${op}: ${what} must be a Tensor`);
    t.handle(`${op}: ${what}`);
    if (t.device !== this.device) throw new DeviceError(`${op}: ${what} is on ${t.device}, the group on ${this.device}`);
    return t;
  }

  private peer(op: string, p: unknown): number {
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p >= this.worldSize)
      throw new ArgumentError(`${op}: peer must be a rank in [0, ${this.worldSize}), got ${String(p)}`);
    return p;
  }

  // Argument errors reject (the call was never issued, the group stays usable); comm errors abort.
  private async guard(op: string, fn: () => Promise<void>): Promise<void> {
    this.state(op);
    return fn();
  }

  batchSendRecv(ops: readonly P2POp[], opts?: CommOptions): Promise<void> {
    return this.guard('batchSendRecv', () => {
      if (!Array.isArray(ops)) throw new ArgumentError('batchSendRecv: ops must be an array');
      const checked = ops.map((o, i) => {
        if (!o || (o.op !== 'send' && o.op !== 'recv')) throw new ArgumentError(`batchSendRecv: ops[${i}].op must be 'send' or 'recv'`);
        return { op: o.op, tensor: this.tensor('batchSendRecv', o.tensor, `ops[${i}].tensor`), peer: this.peer('batchSendRecv', o.peer) };
      });
      return this.hub.p2p(this.rank, 'batchSendRecv', checked, this.timeout('batchSendRecv', opts));
    });
  }

  send(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.guard('send', () => this.hub.p2p(this.rank, 'send',
      [{ op: 'send', tensor: this.tensor('send', tensor, 'tensor'), peer: this.peer('send', peer) }], this.timeout('send', opts)));
  }

  recv(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.guard('recv', () => this.hub.p2p(this.rank, 'recv',
      [{ op: 'recv', tensor: this.tensor('recv', tensor, 'tensor'), peer: this.peer('recv', peer) }], this.timeout('recv', opts)));
  }

  private reduceOp(op: string, opts?: { op?: ReduceOp }): ReduceOp {
    const r = opts?.op ?? 'sum';
    if (r !== 'sum' && r !== 'avg' && r !== 'max') throw new ArgumentError(`${op}: op must be 'sum', 'avg' or 'max', got ${String(r)}`);
    return r;
  }

  private floatTensor(op: string, t: Tensor, what: string): void {
    if (!REDUCE_DTYPES.has(t.dtype)) throw new DtypeError(`${op}: ${what} must be f32, f16 or bf16 to reduce, got ${t.dtype}`);
  }

  allReduce(tensor: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.guard('allReduce', () => {
      const t = this.tensor('allReduce', tensor, 'tensor');
      this.floatTensor('allReduce', t, 'tensor');
      const reduce = this.reduceOp('allReduce', opts);
      return this.hub.collective({ rank: this.rank, op: 'allReduce', key: `${reduce},${t.numel},${t.dtype}`, tensors: [t],
        root: 0, reduce }, this.timeout('allReduce', opts));
    });
  }

  allGather(out: Tensor, input: Tensor, opts?: CommOptions): Promise<void> {
    return this.guard('allGather', () => {
      const o = this.tensor('allGather', out, 'out'), i = this.tensor('allGather', input, 'input');
      if (o.numel !== this.worldSize * i.numel)
        throw new ShapeError(`allGather: out has ${o.numel} elements, needs worldSize · input = ${this.worldSize * i.numel}`);
      if (o.dtype !== i.dtype) throw new DtypeError(`allGather: out is ${o.dtype}, input ${i.dtype}`);
      return this.hub.collective({ rank: this.rank, op: 'allGather', key: `${i.numel},${i.dtype}`, tensors: [o, i],
        root: 0, reduce: 'sum' }, this.timeout('allGather', opts));
    });
  }

  reduceScatter(out: Tensor, input: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.guard('reduceScatter', () => {
      const o = this.tensor('reduceScatter', out, 'out'), i = this.tensor('reduceScatter', input, 'input');
      this.floatTensor('reduceScatter', i, 'input');
      this.floatTensor('reduceScatter', o, 'out');
      if (i.numel !== this.worldSize * o.numel)
        throw new ShapeError(`reduceScatter: input has ${i.numel} elements, needs worldSize · out = ${this.worldSize * o.numel}`);
      if (o.dtype !== i.dtype) throw new DtypeError(`reduceScatter: out is ${o.dtype}, input ${i.dtype}`);
      const reduce = this.reduceOp('reduceScatter', opts);
      return this.hub.collective({ rank: this.rank, op: 'reduceScatter', key: `${reduce},${o.numel},${o.dtype}`, tensors: [o, i],
        root: 0, reduce }, this.timeout('reduceScatter', opts));
    });
  }

  broadcast(tensor: Tensor, root: number, opts?: CommOptions): Promise<void> {
    return this.guard('broadcast', () => {
      const t = this.tensor('broadcast', tensor, 'tensor');
      const r = this.peer('broadcast', root);
      return this.hub.collective({ rank: this.rank, op: 'broadcast', key: `root ${r},${t.numel},${t.dtype}`, tensors: [t],
        root: r, reduce: 'sum' }, this.timeout('broadcast', opts));
    });
  }

  barrier(opts?: CommOptions): Promise<void> {
    return this.guard('barrier', () => this.hub.collective({ rank: this.rank, op: 'barrier', key: '', tensors: [], root: 0,
      reduce: 'sum' }, this.timeout('barrier', opts)));
  }

  abort(reason?: string): void {
    const err = new CommError(`group aborted on rank ${this.rank}${reason ? `: ${reason}` : ''}`);
    this.ownAbort ??= err;
    // Every virtual rank can be told: the hub rejects their pending and later calls too.
    this.hub.abort(err);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
  }
}

/**
 * W virtual ranks in this process on one device: `groups[r]` is rank r. Drive them concurrently
 * (e.g. `Promise.all(groups.map((g) => work(g)))`): a rank's call waits for its peers' calls.
 */
export function localGroups(worldSize: number, opts: LocalGroupOptions = {}): Group[] {
  if (!Number.isSafeInteger(worldSize) || worldSize < 1) throw new ArgumentError(`localGroups: worldSize must be an integer >= 1, got ${String(worldSize)}`);
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('localGroups: options must be an object');
  const device = parseDevice(opts.device ?? 'cpu').name;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || !Number.isFinite(timeoutMs))
    throw new ArgumentError('localGroups: timeoutMs must be a finite number > 0');
  const hub = new Hub(worldSize, device);
  return Array.from({ length: worldSize }, (_, r) => new LocalGroup(hub, r, timeoutMs));
}
