// Process groups: the contract every backend implements (local virtual ranks, TCP for CPU tensors, NCCL
// for CUDA tensors). Ring attention, the model and training are written against this interface only.
//
// Semantics (the same for every backend):
// - Every call is made by every rank of the group, in the same order (as with NCCL / torch.distributed).
// - A call returns a Promise that resolves once the operation is *issued in order* on this rank's device:
//   work this rank issues after the promise resolved sees the result (received data, reduced values).
//   NCCL resolves as soon as the transfer is enqueued on the device; TCP/local resolve when the data is
//   in place (written through the device's queue). Do not touch a receive buffer between issuing a call
//   and its promise resolving; a send buffer may be reused or disposed once the call was issued.
// - Nothing waits forever: every call has a timeout (`timeoutMs`, default the group's). On a timeout, a
//   dead peer or mismatched calls the group is aborted: the pending and every later call reject with a
//   coded error naming the op and the peer (ERR_TIMEOUT, ERR_COMM, ERR_NCCL), on every rank that can be told.
import type { Tensor } from '../tensor';
import type { DeviceString } from '../device';

export type Backend = 'local' | 'tcp' | 'nccl';
export type ReduceOp = 'sum' | 'avg' | 'max';

export interface CommOptions {
  /** Milliseconds before this call aborts the group (default: the group's timeout). */
  timeoutMs?: number;
  /**
   * NCCL: the device's compute stream does not wait for this call, so compute issued next overlaps the
   * transfer; call `join()` before issuing work that touches the call's buffers (and do not write its send
   * buffers before that). Backends whose calls are in place when they resolve (tcp, local) ignore it.
   */
  deferred?: boolean;
}

export interface P2POp {
  op: 'send' | 'recv';
  tensor: Tensor;
  peer: number;
}

export interface Group {
  readonly rank: number;
  readonly worldSize: number;
  /** This rank's device. */
  readonly device: DeviceString;
  readonly backend: Backend;
  /** Default timeout of every call, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * Sends and receives issued together (NCCL group semantics): a ring exchange written as one batch never
   * deadlocks. Tensors must be contiguous and on this rank's device; a recv's shape/dtype must match the
   * peer's send (the element count and dtype are checked where the backend can: ERR_COMM otherwise).
   */
  batchSendRecv(ops: readonly P2POp[], opts?: CommOptions): Promise<void>;
  send(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void>;
  recv(tensor: Tensor, peer: number, opts?: CommOptions): Promise<void>;

  /** In place: every rank ends with the reduction (f32 and bf16 at least; bf16 sums accumulate in f32). */
  allReduce(tensor: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void>;
  /** out (worldSize·input.numel elements) = the inputs of ranks 0..W−1 concatenated (flat, rank-major). */
  allGather(out: Tensor, input: Tensor, opts?: CommOptions): Promise<void>;
  /** input (worldSize·out.numel elements): rank r gets the reduction of every rank's r-th slice. */
  reduceScatter(out: Tensor, input: Tensor, opts?: CommOptions & { op?: ReduceOp }): Promise<void>;
  /** In place: every rank ends with root's tensor. */
  broadcast(tensor: Tensor, root: number, opts?: CommOptions): Promise<void>;
  barrier(opts?: CommOptions): Promise<void>;

  /**
   * Orders the device's later work after every call made with `{ deferred: true }` (NCCL: the compute
   * stream waits for the communication stream). A no-op where calls are in place when they resolve.
   * Optional so that backends without deferred calls need not define it: call it as `g.join?.()`.
   */
  join?(): void;

  /** Aborts the group: pending and later calls reject with ERR_COMM (reason given) on this rank. */
  abort(reason?: string): void;
  /** Releases the group's resources (connections, communicators). Idempotent. */
  destroy(): Promise<void>;
}
