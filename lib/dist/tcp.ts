// The TCP backend (like PyTorch's gloo): processes exchange tensors over a full mesh of TCP connections,
// for CPU tensors (any device works: data is read with toRaw/toArray and written back through the
// device's queue, so it is exact to the bit, bf16 included).
//
// Rendezvous: rank 0 listens on MASTER_ADDR:MASTER_PORT; every other rank connects to it (retrying until
// the timeout, so start order does not matter) and says hello with its rank and its own listening port.
// Once all have joined, rank 0 sends everyone the table of addresses (as rank 0 saw them connect), and
// rank i connects to every rank 0 < j < i. The connection to rank 0 stays as the 0-i link.
//
// Calls are numbered (every rank numbers them the same way, as every rank makes the same calls in the same
// order); each message carries (op, call number, sub-index), so a message is matched to its call whatever
// order messages arrive in, and a message from a different op at the same call number is a mismatch
// (ERR_COMM naming both ops and the peer). Reductions are done in float64 in rank order, so every rank gets
// bit-identical results.
//
// Failure: a peer's connection closing without a goodbye -> ERR_COMM "rank N died"; a call past its
// timeout -> ERR_TIMEOUT naming the op and the ranks it still waited for. Either aborts the group: pending
// and later calls reject, and the other ranks are told (an abort message) so they fail at once too.
import * as net from 'net';
import type { Tensor } from '../tensor';
import type { DeviceString } from '../device';
import { Dtype, dtypeCode } from '../dtype';
import { ArgumentError, CommError, DeviceError, DtypeError, MegabeamError, ShapeError, TimeoutError, callNative as call } from '../errors';
import { native } from '../native';
import type { Backend, CommOptions, Group, P2POp, ReduceOp } from './types';
import { Frame, FrameParser, Kind, WireOp, opCode, opName, writeFrame } from './wire';

export interface TcpGroupOptions {
  rank: number;
  worldSize: number;
  masterAddr: string;
  masterPort: number;
  /** Default timeout of every call (and of the rendezvous), ms. */
  timeoutMs: number;
  /** The device the group's tensors live on (default 'cpu'). */
  device?: DeviceString;
}

const DTYPE_NAMES: Dtype[] = ['f32', 'f16', 'bf16', 'i32'];

interface Waiter {
  op: number;
  resolve: (f: Frame) => void;
}

interface Peer {
  rank: number;
  sock: net.Socket | null;
  inbox: Map<string, Frame>;
  waiters: Map<string, Waiter>;
  gone: string | null; // why this peer can no longer be reached
}

interface PendingCall {
  what: string;
  reject: (e: Error) => void;
  waitingFor: Set<number>;
}

function raw(t: Tensor): Promise<Float32Array | Int32Array | Uint16Array> {
  return t.toRaw();
}

function typedFor(dtype: Dtype, bytes: Uint8Array): Float32Array | Int32Array | Uint16Array {
  const b = bytes.buffer, o = bytes.byteOffset;
  if (dtype === 'f32') return new Float32Array(b, o, bytes.byteLength / 4);
  if (dtype === 'i32') return new Int32Array(b, o, bytes.byteLength / 4);
  return new Uint16Array(b, o, bytes.byteLength / 2);
}

/** A socket with one frame parser for its whole life; the handlers change as the connection is set up. */
interface Conn {
  sock: net.Socket;
  onFrame: (f: Frame) => void;
  onError: (m: string) => void;
}
function conn(sock: net.Socket, onFrame: (f: Frame) => void, onError: (m: string) => void): Conn {
  const c: Conn = { sock, onFrame, onError };
  const parser = new FrameParser((f) => c.onFrame(f), (m) => c.onError(m));
  sock.on('data', (chunk: Buffer) => parser.push(chunk));
  return c;
}

// Collectives are matched by call number (every rank makes the same collectives in the same order);
// point-to-point messages by their number between the pair (the k-th send to a peer is its k-th recv from
// us, as in NCCL), since ranks make different p2p calls.
const P2P = opCode('sendrecv');
const key = (op: number, seq: number, sub: number): string => (op === P2P ? `p:${sub}` : `${seq}:${sub}`);
const hostOf = (addr: string | undefined): string => (addr ?? '127.0.0.1').replace(/^::ffff:/, '');

export class TcpGroup implements Group {
  readonly backend: Backend = 'tcp';
  readonly rank: number;
  readonly worldSize: number;
  readonly device: DeviceString;
  readonly timeoutMs: number;

  private peers: (Peer | null)[] = [];
  private seq = 0;
  private sent: number[] = [];
  private received: number[] = [];
  private failure: MegabeamError | null = null;
  private pending = new Set<PendingCall>();
  private server: net.Server | null = null;
  private destroyed = false;
  private failureListeners: ((e: MegabeamError) => void)[] = [];

  private constructor(o: TcpGroupOptions) {
    this.rank = o.rank;
    this.worldSize = o.worldSize;
    this.device = o.device ?? 'cpu';
    this.timeoutMs = o.timeoutMs;
  }

  /** Rendezvous and connect the mesh; resolves when this rank is linked to every other rank. */
  static async connect(o: TcpGroupOptions): Promise<TcpGroup> {
    const g = new TcpGroup(o);
    if (!Number.isSafeInteger(o.worldSize) || o.worldSize < 1) throw new ArgumentError(`worldSize must be >= 1, got ${o.worldSize}`);
    if (!Number.isSafeInteger(o.rank) || o.rank < 0 || o.rank >= o.worldSize) throw new ArgumentError(`rank ${o.rank} is not in [0, ${o.worldSize})`);
    if (!(o.timeoutMs > 0)) throw new ArgumentError('timeoutMs must be > 0');
    g.peers = Array.from({ length: o.worldSize }, () => null);
    g.sent = new Array<number>(o.worldSize).fill(0);
    g.received = new Array<number>(o.worldSize).fill(0);
    if (o.worldSize > 1) await g.rendezvous(o);
    return g;
  }

  /** Called once when the group fails (the NCCL backend uses this to abort its communicator). */
  onFailure(fn: (e: MegabeamError) => void): void {
    if (this.failure) fn(this.failure);
    else this.failureListeners.push(fn);
  }
  get failed(): MegabeamError | null { return this.failure; }

  // ---- connection setup ------------------------------------------------------------
  private rendezvous(o: TcpGroupOptions): Promise<void> {
    const W = o.worldSize, me = o.rank;
    // Set by megabeam launch: a process of another job that reached this port by mistake is refused.
    const job = process.env.MEGABEAM_JOB_ID ?? '';
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const sockets: net.Socket[] = [];
      const done = (e?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        // The mesh is complete (or failed): nobody else may join, and the port is free again.
        this.server?.close();
        this.server = null;
        if (e) {
          for (const s of sockets) s.destroy();
          reject(e);
        } else {
          // A process that is done may exit without destroy(): idle links do not keep it alive (a call in
          // flight does, through its timeout timer).
          for (const p of this.peers) p?.sock?.unref();
          resolve();
        }
      };
      const missing = (): number[] => this.peers.map((p, r) => (p || r === me ? -1 : r)).filter((r) => r >= 0);
      const timer = setTimeout(() => {
        const m = missing();
        done(new TimeoutError(
          `rendezvous timed out after ${o.timeoutMs} ms on rank ${me} of ${W} (master ${o.masterAddr}:${o.masterPort}): ` +
          `no connection from/to rank(s) ${m.join(', ')}` + (me !== 0 && !this.peers[0] ? ' (is rank 0 running, and MASTER_ADDR/MASTER_PORT right?)' : '')));
      }, o.timeoutMs);
      const table: { host: string; port: number }[] = Array.from({ length: W }, () => ({ host: '', port: 0 }));
      const joined = (): void => {
        if (missing().length === 0) done();
      };
      // A peer is adopted once its hello was read; data frames go through the group from then on.
      const adopt = (c: Conn, rank: number, early: Frame[]): void => {
        const p = this.makePeer(rank, c);
        this.peers[rank] = p;
        for (const f of early) this.onFrame(p, f);
        joined();
      };

      // Every rank listens: rank 0 on the master port, the others on any port.
      const server = net.createServer((sock) => {
        sockets.push(sock);
        sock.setNoDelay(true);
        sock.setKeepAlive(true, 10000);
        // One parser per socket for its whole life; its handler changes once the hello was read.
        let hello: Frame | null = null;
        const early: Frame[] = [];
        const c = conn(sock, (f) => { if (!hello) { hello = f; onHello(); } else early.push(f); }, (m) => sock.destroy(new Error(m)));
        const onHello = (): void => {
          const h = hello as Frame;
          let info: { rank: number; worldSize: number; port: number; job?: string };
          try { info = JSON.parse(Buffer.from(h.payload).toString('utf8')); } catch { sock.destroy(); return; }
          const bad = h.kind !== Kind.Hello ? 'expected a hello' : (info.job ?? '') !== job ? `it belongs to another job (MEGABEAM_JOB_ID ${info.job || 'unset'}, here ${job || 'unset'})` :
            info.worldSize !== W ? `world size ${info.worldSize} differs from ${W}` :
            !(info.rank >= 0 && info.rank < W) || info.rank === me ? `bad rank ${info.rank}` :
            this.peers[info.rank] ? `rank ${info.rank} joined twice` : me !== 0 && info.rank < me ? `rank ${info.rank} should be connected to, not connect` : '';
          if (bad) {
            writeFrame(sock, { kind: Kind.Reject, op: 0, dtype: 0, seq: 0, sub: 0, from: me }, Buffer.from(bad));
            sock.end();
            // A stranger is turned away and the job goes on; a clash within the job ends the rendezvous.
            if (me === 0 && (info.job ?? '') === job) done(new CommError(`rendezvous on rank 0: a process claiming rank ${info.rank} was refused: ${bad}`));
            return;
          }
          if (me === 0) table[info.rank] = { host: hostOf(sock.remoteAddress), port: info.port };
          // Frames that came with the hello are replayed once the peer exists (after this callback).
          queueMicrotask(() => {
            adopt(c, info.rank, early);
            if (me === 0 && missing().length === 0) {
              const t = Buffer.from(JSON.stringify(table));
              for (let r = 1; r < W; r++) writeFrame(this.peers[r]!.sock!, { kind: Kind.Table, op: 0, dtype: 0, seq: 0, sub: 0, from: 0 }, t);
            }
          });
        };
        sock.on('error', () => { /* reported through close */ });
      });
      this.server = server;
      server.on('error', (e: NodeJS.ErrnoException) => {
        done(new CommError(me === 0
          ? `rank 0 cannot listen on ${o.masterAddr}:${o.masterPort} (${e.code ?? e.message}); is another job using MASTER_PORT?`
          : `rank ${me} cannot listen: ${e.message}`));
      });
      // Rank 0 binds every interface: MASTER_ADDR is how the others reach it, not necessarily a local name.
      server.listen(me === 0 ? o.masterPort : 0, () => {
        if (me === 0) return;
        const myPort = (server.address() as net.AddressInfo).port;
        // Connect to rank 0, retrying while it is not up yet.
        const connectMaster = (): void => {
          if (settled) return;
          const sock = net.connect({ host: o.masterAddr, port: o.masterPort });
          sockets.push(sock);
          sock.setNoDelay(true);
          sock.once('error', (e: NodeJS.ErrnoException) => {
            if (this.peers[0]) return;
            if (e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' || e.code === 'EHOSTUNREACH' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
              setTimeout(connectMaster, 100);
            else done(new CommError(`rank ${me}: cannot reach the master ${o.masterAddr}:${o.masterPort}: ${e.message}`));
          });
          sock.once('connect', () => {
            sock.setKeepAlive(true, 10000);
            writeFrame(sock, { kind: Kind.Hello, op: 0, dtype: 0, seq: 0, sub: 0, from: me },
              Buffer.from(JSON.stringify({ rank: me, worldSize: W, port: myPort, job })));
            // Until the table came, frames from rank 0 are read here.
            let gotTable = false;
            const early: Frame[] = [];
            const c = conn(sock, (f) => {
              if (gotTable) { early.push(f); return; }
              if (f.kind === Kind.Reject) {
                done(new CommError(`rank ${me}: the master refused this rank: ${Buffer.from(f.payload).toString()}`));
                return;
              }
              if (f.kind !== Kind.Table) return;
              gotTable = true;
              const t = JSON.parse(Buffer.from(f.payload).toString('utf8')) as { host: string; port: number }[];
              t[0] = { host: o.masterAddr, port: o.masterPort };
              queueMicrotask(() => {
                adopt(c, 0, early);
                for (let j = 1; j < me; j++) connectPeer(j, t[j], myPort);
              });
            }, (m) => done(new CommError(`rank ${me}: bad data from the master: ${m}`)));
          });
        };
        connectMaster();
      });
      const connectPeer = (j: number, addr: { host: string; port: number }, myPort: number): void => {
        const sock = net.connect({ host: addr.host, port: addr.port });
        sockets.push(sock);
        sock.setNoDelay(true);
        sock.once('error', (e) => { if (!this.peers[j]) done(new CommError(`rank ${me}: cannot connect to rank ${j} at ${addr.host}:${addr.port}: ${e.message}`)); });
        sock.once('connect', () => {
          sock.setKeepAlive(true, 10000);
          writeFrame(sock, { kind: Kind.Hello, op: 0, dtype: 0, seq: 0, sub: 0, from: me }, Buffer.from(JSON.stringify({ rank: me, worldSize: W, port: myPort, job })));
          adopt(conn(sock, () => {}, () => {}), j, []);
        });
      };
    });
  }

  private makePeer(rank: number, c: Conn): Peer {
    const sock = c.sock;
    const p: Peer = { rank, sock, inbox: new Map(), waiters: new Map(), gone: null };
    c.onFrame = (f) => this.onFrame(p, f);
    c.onError = (m) => this.fail(new CommError(`rank ${this.rank}: bad data from rank ${rank}: ${m}`));
    sock.on('close', () => {
      p.sock = null;
      if (this.destroyed || p.gone) return;
      p.gone = `rank ${rank} died (its connection closed)`;
      // With calls in flight this is fatal now; otherwise the next call that needs the peer fails. (A rank
      // that finished and exited without destroy() is not an error for ranks that are done as well.)
      if ([...this.pending].some((c) => c.waitingFor.has(rank)) || p.waiters.size)
        this.fail(new CommError(`${p.gone}; seen by rank ${this.rank}${this.pendingNames()}`));
    });
    return p;
  }

  private pendingNames(): string {
    const n = [...this.pending].map((c) => c.what);
    return n.length ? ` during ${n.join(', ')}` : '';
  }

  private onFrame(p: Peer, f: Frame): void {
    if (f.kind === Kind.Abort) {
      const why = Buffer.from(f.payload).toString('utf8');
      p.gone = `rank ${p.rank} aborted the group`;
      this.fail(new CommError(`rank ${p.rank} aborted the group: ${why}`));
      return;
    }
    if (f.kind === Kind.Bye) {
      p.gone = `rank ${p.rank} has left the group (destroyed it)`;
      if (p.waiters.size) this.fail(new CommError(`${p.gone} while rank ${this.rank} still waited for it${this.pendingNames()}`));
      return;
    }
    if (f.kind !== Kind.Data) return;
    const k = key(f.op, f.seq, f.sub);
    const w = p.waiters.get(k);
    if (w) {
      p.waiters.delete(k);
      if (w.op !== f.op) { this.mismatch(p.rank, f.seq, w.op, f.op); return; }
      w.resolve(f);
    } else {
      p.inbox.set(k, f);
    }
  }

  private mismatch(peer: number, seq: number, mine: number, theirs: number): void {
    this.fail(new CommError(`mismatched calls: call #${seq} is ${opName(mine)} on rank ${this.rank} but ${opName(theirs)} on rank ${peer}`));
  }

  /** The frame (op, seq, sub) from `peer`; rejects when the group fails. */
  private expect(peer: number, op: WireOp, seq: number, sub: number): Promise<Frame> {
    const p = this.peers[peer]!;
    const code = opCode(op);
    const k = key(code, seq, sub);
    const have = p.inbox.get(k);
    if (have) {
      p.inbox.delete(k);
      if (have.op !== code) { this.mismatch(peer, seq, code, have.op); return Promise.reject(this.failure); }
      return Promise.resolve(have);
    }
    if (p.gone) return Promise.reject(new CommError(`${p.gone}; rank ${this.rank} needs it for ${op} #${seq}`));
    return new Promise<Frame>((resolve) => p.waiters.set(k, { op: code, resolve }));
  }

  private post(peer: number, op: WireOp, seq: number, sub: number, dtype: number, payload?: ArrayBufferView): void {
    const p = this.peers[peer]!;
    if (p.gone || !p.sock) throw new CommError(`${p.gone ?? `rank ${peer} is not connected`}; rank ${this.rank} cannot send ${op} #${seq}`);
    writeFrame(p.sock, { kind: Kind.Data, op: opCode(op), dtype, seq, sub, from: this.rank }, payload);
  }

  // ---- failure -------------------------------------------------------------------
  private fail(e: MegabeamError): void {
    if (this.failure) return;
    this.failure = e;
    for (const c of [...this.pending]) c.reject(e);
    this.pending.clear();
    const msg = Buffer.from(`${e.code}: ${e.message}`);
    for (const p of this.peers) {
      if (!p || !p.sock) continue;
      if (!p.gone) writeFrame(p.sock, { kind: Kind.Abort, op: 0, dtype: 0, seq: 0, sub: 0, from: this.rank }, msg);
      p.gone = p.gone ?? 'the group was aborted';
      p.sock.end();
    }
    this.server?.close();
    for (const fn of this.failureListeners) fn(e);
    this.failureListeners = [];
  }

  /** Calls are in place when they resolve: nothing to order. */
  join(): void {}

  abort(reason = 'aborted'): void {
    this.fail(new CommError(`group aborted on rank ${this.rank}: ${reason}`));
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of [...this.pending]) c.reject(new CommError(`group destroyed on rank ${this.rank} during ${c.what}`));
    this.pending.clear();
    const closes: Promise<void>[] = [];
    for (const p of this.peers) {
      if (!p || !p.sock) continue;
      const s = p.sock;
      if (!p.gone && !this.failure) writeFrame(s, { kind: Kind.Bye, op: 0, dtype: 0, seq: 0, sub: 0, from: this.rank });
      // Keep the loop alive until the goodbye is out and the link closed (idle links are unref'd).
      s.ref();
      closes.push(new Promise((r) => {
        const t = setTimeout(() => { s.destroy(); r(); }, 1000);
        s.once('close', () => { clearTimeout(t); r(); });
        s.end();
      }));
    }
    if (this.server) closes.push(new Promise((r) => this.server!.close(() => r())));
    this.server = null;
    await Promise.all(closes);
  }

  // ---- calls -----------------------------------------------------------------------
  /**
   * Runs one group call: numbers it, applies the timeout and turns any failure into a group abort.
   * `body` must capture tensor data synchronously (toRaw is enqueued in device order at call time).
   */
  private run(op: WireOp, opts: CommOptions | undefined, body: (seq: number, waitingFor: Set<number>) => Promise<void>): Promise<void> {
    const timeoutMs = opts?.timeoutMs ?? this.timeoutMs;
    if (!(typeof timeoutMs === 'number' && timeoutMs > 0)) return Promise.reject(new ArgumentError(`${op}: timeoutMs must be > 0`));
    if (this.destroyed) return Promise.reject(new CommError(`${op}: the group was destroyed`));
    if (this.failure) return Promise.reject(this.failure);
    const seq = op === 'sendrecv' ? 0 : ++this.seq;
    const what = op === 'sendrecv' ? 'batchSendRecv' : `${op} #${seq}`;
    const waitingFor = new Set<number>();
    let started: Promise<void>;
    try {
      started = body(seq, waitingFor);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<void>((resolve, reject) => {
      const pc: PendingCall = { what, waitingFor, reject: (e) => { clearTimeout(timer); reject(e); } };
      this.pending.add(pc);
      const timer = setTimeout(() => {
        const peers = [...waitingFor].sort((a, b) => a - b);
        this.fail(new TimeoutError(`${what} timed out after ${timeoutMs} ms on rank ${this.rank} of ${this.worldSize}` +
          (peers.length ? `, waiting for rank(s) ${peers.join(', ')}` : '')));
      }, timeoutMs);
      started.then(() => {
        clearTimeout(timer);
        if (!this.pending.delete(pc)) return; // already rejected
        resolve();
      }, (e: unknown) => {
        clearTimeout(timer);
        if (!this.pending.delete(pc)) return;
        const err = e instanceof MegabeamError ? e : new CommError(`${what} on rank ${this.rank}: ${(e as Error)?.message ?? e}`);
        if (!(e instanceof ArgumentError || e instanceof ShapeError || e instanceof DtypeError || e instanceof DeviceError)) this.fail(err);
        reject(this.failure ?? err);
      });
    });
  }

  private checkTensor(t: unknown, op: string, name: string): Tensor {
    const x = t as Tensor;
    if (!x || typeof x !== 'object' || typeof (x as Tensor).handle !== 'function') throw new ArgumentError(`${op}: ${name} must be a Tensor`);
    x.handle(`${op}: ${name}`);
    if (x.device !== this.device) throw new DeviceError(`${op}: ${name} is on ${x.device}, the group's device is ${this.device}`);
    return x;
  }
  private checkPeer(peer: unknown, op: string): number {
    if (typeof peer !== 'number' || !Number.isSafeInteger(peer) || peer < 0 || peer >= this.worldSize)
      throw new ArgumentError(`${op}: peer ${String(peer)} is not a rank of the group (0..${this.worldSize - 1})`);
    return peer;
  }

  /** Writes received values into a tensor through its device's queue (handle taken when the call was made). */
  private async writeInto(h: ReturnType<Tensor['handle']>, data: Float32Array | Int32Array | Uint16Array | Float64Array): Promise<void> {
    call(() => native().write(h, data));
  }

  batchSendRecv(ops: readonly P2POp[], opts?: CommOptions): Promise<void> {
    return this.run('sendrecv', opts, async (seq, waiting) => {
      if (!Array.isArray(ops)) throw new ArgumentError('batchSendRecv: ops must be an array');
      const sendSub = new Map<number, number>(), recvSub = new Map<number, number>();
      const sends: { peer: number; sub: number; dtype: Dtype; data: Promise<Float32Array | Int32Array | Uint16Array> }[] = [];
      const recvs: { peer: number; sub: number; t: Tensor; h: ReturnType<Tensor['handle']> }[] = [];
      for (const o of ops) {
        if (!o || (o.op !== 'send' && o.op !== 'recv')) throw new ArgumentError("batchSendRecv: each op must be { op: 'send' | 'recv', tensor, peer }");
        const t = this.checkTensor(o.tensor, 'batchSendRecv', o.op);
        const peer = this.checkPeer(o.peer, `batchSendRecv ${o.op}`);
        const m = o.op === 'send' ? sendSub : recvSub;
        const sub = m.get(peer) ?? 0;
        m.set(peer, sub + 1);
        // Messages between a pair are numbered across calls; a self send/recv pairs within the call.
        if (o.op === 'send') sends.push({ peer, sub, dtype: t.dtype, data: raw(t) });
        else recvs.push({ peer, sub, t, h: t.handle() });
      }
      const selfSends = sends.filter((s) => s.peer === this.rank);
      const done: Promise<void>[] = [];
      for (const s of sends) {
        if (s.peer === this.rank) continue;
        const n = this.sent[s.peer]++;
        done.push(s.data.then((d) => this.post(s.peer, 'sendrecv', seq, n, dtypeCode(s.dtype), d)));
      }
      for (const r of recvs) {
        if (r.peer === this.rank) {
          const s = selfSends.find((x) => x.sub === r.sub);
          if (!s) throw new CommError(`batchSendRecv: rank ${this.rank} receives from itself without a matching send`);
          done.push(s.data.then((d) => {
            if (s.dtype !== r.t.dtype || d.length !== r.t.numel) throw new CommError(`batchSendRecv: self send/recv of rank ${this.rank} differ in dtype or size`);
            return this.writeInto(r.h, d);
          }));
          continue;
        }
        waiting.add(r.peer);
        const n = this.received[r.peer]++;
        done.push(this.expect(r.peer, 'sendrecv', seq, n).then((f) => {
          waiting.delete(r.peer);
          const dt = DTYPE_NAMES[f.dtype];
          if (dt !== r.t.dtype || f.payload.byteLength !== r.t.nbytes)
            throw new CommError(`batchSendRecv: rank ${this.rank} expects ${r.t.numel} ${r.t.dtype} elements from rank ${r.peer}, ` +
              `rank ${r.peer} sent ${f.payload.byteLength / (dt === 'f32' || dt === 'i32' ? 4 : 2)} ${dt ?? '?'} elements`);
          return this.writeInto(r.h, typedFor(dt, f.payload));
        }));
      }
      await Promise.all(done);
    });
  }

  send(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.batchSendRecv([{ op: 'send', tensor, peer }], opts);
  }
  recv(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void> {
    return this.batchSendRecv([{ op: 'recv', tensor, peer }], opts);
  }

  /** Everyone's values as numbers (f32 view of float dtypes, i32 as is), own included, in rank order. */
  private async gatherValues(op: WireOp, seq: number, waiting: Set<number>, vals: Promise<Float32Array | Int32Array>, slice?: (peer: number, v: Float32Array | Int32Array) => Float32Array | Int32Array): Promise<(Float32Array | Int32Array)[]> {
    const out: (Float32Array | Int32Array)[] = new Array(this.worldSize);
    const mine = await vals;
    for (let p = 0; p < this.worldSize; p++) {
      if (p === this.rank) continue;
      const part = slice ? slice(p, mine) : mine;
      this.post(p, op, seq, 0, part instanceof Int32Array ? 3 : 0, part);
    }
    out[this.rank] = slice ? slice(this.rank, mine) : mine;
    const isInt = mine instanceof Int32Array;
    await Promise.all(this.peers.map(async (_, p) => {
      if (p === this.rank) return;
      waiting.add(p);
      const f = await this.expect(p, op, seq, 0);
      waiting.delete(p);
      const v = isInt ? new Int32Array(f.payload.buffer, f.payload.byteOffset, f.payload.byteLength / 4)
        : new Float32Array(f.payload.buffer, f.payload.byteOffset, f.payload.byteLength / 4);
      if (v.length !== out[this.rank].length)
        throw new CommError(`${op} #${seq}: rank ${p} sent ${v.length} elements, rank ${this.rank} has ${out[this.rank].length} (shapes differ between ranks)`);
      out[p] = v;
    }));
    return out;
  }

  private reduce(parts: (Float32Array | Int32Array)[], op: ReduceOp, dtype: Dtype): Float32Array | Int32Array {
    const n = parts[0].length, W = parts.length;
    const acc = new Float64Array(n);
    if (op === 'max') acc.set(parts[0]);
    for (let r = op === 'max' ? 1 : 0; r < W; r++) {
      const v = parts[r];
      if (op === 'max') for (let i = 0; i < n; i++) acc[i] = v[i] > acc[i] || Number.isNaN(v[i]) ? v[i] : acc[i];
      else for (let i = 0; i < n; i++) acc[i] += v[i];
    }
    if (op === 'avg') for (let i = 0; i < n; i++) acc[i] /= W;
    if (dtype === 'i32') return Int32Array.from(acc, (x) => (x > 2147483647 ? 2147483647 : x < -2147483648 ? -2147483648 : Math.trunc(x)));
    return Float32Array.from(acc); // rounded once to f32; f16/bf16 are rounded (nearest even) by write
  }

  private checkReduceOp(op: unknown, dtype: Dtype, name: string): ReduceOp {
    const o = op ?? 'sum';
    if (o !== 'sum' && o !== 'avg' && o !== 'max') throw new ArgumentError(`${name}: op must be 'sum', 'avg' or 'max'`);
    if (o === 'avg' && dtype === 'i32') throw new DtypeError(`${name}: avg needs a float dtype`);
    return o;
  }

  allReduce(tensor: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.run('allReduce', opts, async (seq, waiting) => {
      const t = this.checkTensor(tensor, 'allReduce', 'tensor');
      const rop = this.checkReduceOp(opts?.op, t.dtype, 'allReduce');
      const h = t.handle();
      const parts = await this.gatherValues('allReduce', seq, waiting, t.toArray());
      await this.writeInto(h, this.reduce(parts, rop, t.dtype));
    });
  }

  reduceScatter(out: Tensor, input: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void> {
    return this.run('reduceScatter', opts, async (seq, waiting) => {
      const o = this.checkTensor(out, 'reduceScatter', 'out');
      const i = this.checkTensor(input, 'reduceScatter', 'input');
      if (o.dtype !== i.dtype) throw new DtypeError(`reduceScatter: out is ${o.dtype}, input is ${i.dtype}`);
      if (i.numel !== o.numel * this.worldSize)
        throw new ShapeError(`reduceScatter: input needs ${this.worldSize} x ${o.numel} = ${o.numel * this.worldSize} elements, has ${i.numel}`);
      const rop = this.checkReduceOp(opts?.op, o.dtype, 'reduceScatter');
      const h = o.handle();
      const n = o.numel;
      const parts = await this.gatherValues('reduceScatter', seq, waiting, i.toArray(), (p, v) => v.subarray(p * n, (p + 1) * n));
      await this.writeInto(h, this.reduce(parts, rop, o.dtype));
    });
  }

  allGather(out: Tensor, input: Tensor, opts?: CommOptions): Promise<void> {
    return this.run('allGather', opts, async (seq, waiting) => {
      const o = this.checkTensor(out, 'allGather', 'out');
      const i = this.checkTensor(input, 'allGather', 'input');
      if (o.dtype !== i.dtype) throw new DtypeError(`allGather: out is ${o.dtype}, input is ${i.dtype}`);
      if (o.numel !== i.numel * this.worldSize)
        throw new ShapeError(`allGather: out needs ${this.worldSize} x ${i.numel} = ${i.numel * this.worldSize} elements, has ${o.numel}`);
      const h = o.handle();
      const mine = await raw(i);
      for (let p = 0; p < this.worldSize; p++) if (p !== this.rank) this.post(p, 'allGather', seq, 0, dtypeCode(i.dtype), mine);
      const all = new (mine.constructor as { new (n: number): Float32Array | Int32Array | Uint16Array })(o.numel);
      all.set(mine as never, this.rank * i.numel);
      await Promise.all(this.peers.map(async (_, p) => {
        if (p === this.rank) return;
        waiting.add(p);
        const f = await this.expect(p, 'allGather', seq, 0);
        waiting.delete(p);
        if (f.payload.byteLength !== i.nbytes || DTYPE_NAMES[f.dtype] !== i.dtype)
          throw new CommError(`allGather #${seq}: rank ${p} sent ${f.payload.byteLength} bytes of ${DTYPE_NAMES[f.dtype]}, rank ${this.rank} expects ${i.nbytes} bytes of ${i.dtype}`);
        all.set(typedFor(i.dtype, f.payload) as never, p * i.numel);
      }));
      await this.writeInto(h, all);
    });
  }

  broadcast(tensor: Tensor, root: number, opts?: CommOptions): Promise<void> {
    return this.run('broadcast', opts, async (seq, waiting) => {
      const t = this.checkTensor(tensor, 'broadcast', 'tensor');
      if (typeof root !== 'number' || !Number.isSafeInteger(root) || root < 0 || root >= this.worldSize)
        throw new ArgumentError(`broadcast: root ${String(root)} is not a rank of the group`);
      if (this.rank === root) {
        const d = await raw(t);
        for (let p = 0; p < this.worldSize; p++) if (p !== root) this.post(p, 'broadcast', seq, 0, dtypeCode(t.dtype), d);
        return;
      }
      const h = t.handle();
      waiting.add(root);
      const f = await this.expect(root, 'broadcast', seq, 0);
      waiting.delete(root);
      if (f.payload.byteLength !== t.nbytes || DTYPE_NAMES[f.dtype] !== t.dtype)
        throw new CommError(`broadcast #${seq}: root ${root} sent ${f.payload.byteLength} bytes of ${DTYPE_NAMES[f.dtype]}, rank ${this.rank} expects ${t.nbytes} bytes of ${t.dtype}`);
      await this.writeInto(h, typedFor(t.dtype, f.payload));
    });
  }

  barrier(opts?: CommOptions): Promise<void> {
    return this.run('barrier', opts, async (seq, waiting) => {
      for (let p = 0; p < this.worldSize; p++) if (p !== this.rank) this.post(p, 'barrier', seq, 0, 0);
      await Promise.all(this.peers.map(async (_, p) => {
        if (p === this.rank) return;
        waiting.add(p);
        await this.expect(p, 'barrier', seq, 0);
        waiting.delete(p);
      }));
    });
  }

  /**
   * Checks that every rank describes its call the same way (the NCCL backend sends one line per collective:
   * op, dtype, element count, root...). NCCL itself cannot tell mismatched calls apart from slow ones; this
   * turns them into ERR_COMM naming both descriptions, and a rank that never makes the call into ERR_TIMEOUT,
   * while the NCCL calls go ahead without waiting for it.
   */
  verify(desc: string, opts?: CommOptions): Promise<void> {
    return this.run('verify', opts, async (seq, waiting) => {
      const mine = Buffer.from(desc, 'utf8');
      for (let p = 0; p < this.worldSize; p++) if (p !== this.rank) this.post(p, 'verify', seq, 0, 0, mine);
      await Promise.all(this.peers.map(async (_, p) => {
        if (p === this.rank) return;
        waiting.add(p);
        const f = await this.expect(p, 'verify', seq, 0);
        waiting.delete(p);
        const theirs = Buffer.from(f.payload).toString('utf8');
        if (theirs !== desc) throw new CommError(`mismatched calls: call #${seq} is ${desc} on rank ${this.rank} but ${theirs} on rank ${p}`);
      }));
    });
  }

  /**
   * Root's bytes on every rank (numbered like any call). Used for the NCCL unique id; the payload may be
   * any length, and the other ranks learn it from the message.
   */
  broadcastBytes(data: Uint8Array | null, root: number, opts?: CommOptions): Promise<Uint8Array> {
    let result: Uint8Array = new Uint8Array(0);
    return this.run('bytes', opts, async (seq, waiting) => {
      if (this.rank === root) {
        if (!data) throw new ArgumentError('broadcastBytes: the root must give data');
        for (let p = 0; p < this.worldSize; p++) if (p !== root) this.post(p, 'bytes', seq, 0, 0, data);
        result = data;
        return;
      }
      waiting.add(root);
      const f = await this.expect(root, 'bytes', seq, 0);
      result = f.payload;
    }).then(() => result);
  }
}
