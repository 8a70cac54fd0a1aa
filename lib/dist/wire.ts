// Framing for the TCP backend: a fixed 32-byte header, then the payload.
//
//   0  u32  magic 'MBT1'
//   4  u8   kind (data, abort, hello, table, bye)
//   5  u8   op (which collective sent it: a mismatch between ranks is detected on arrival)
//   6  u8   dtype code (data) / 0
//   7  u8   reserved
//   8  u32  sequence number of the group call (every rank numbers its calls the same way)
//   12 u32  sub-index within the call (the k-th message between the same pair in that call)
//   16 f64  payload length in bytes
//   24 u32  sender rank
//   28 u32  reserved
import type { Socket } from 'net';

export const MAGIC = 0x3154424d; // 'MBT1' little-endian
export const HEADER = 32;

export const enum Kind { Data = 1, Abort = 2, Hello = 3, Table = 4, Bye = 5, Reject = 6 }

export const OPS = ['none', 'sendrecv', 'allReduce', 'allGather', 'reduceScatter', 'broadcast', 'barrier', 'bytes', 'verify'] as const;
export type WireOp = (typeof OPS)[number];
export const opCode = (o: WireOp): number => OPS.indexOf(o);
export const opName = (c: number): string => OPS[c] ?? `op#${c}`;

export interface Frame {
  kind: number;
  op: number;
  dtype: number;
  seq: number;
  sub: number;
  from: number;
  payload: Uint8Array;
}

export function encodeHeader(f: Omit<Frame, 'payload'>, nbytes: number): Buffer {
  const h = Buffer.alloc(HEADER);
  h.writeUInt32LE(MAGIC, 0);
  h.writeUInt8(f.kind, 4);
  h.writeUInt8(f.op, 5);
  h.writeUInt8(f.dtype, 6);
  h.writeUInt32LE(f.seq >>> 0, 8);
  h.writeUInt32LE(f.sub >>> 0, 12);
  h.writeDoubleLE(nbytes, 16);
  h.writeUInt32LE(f.from >>> 0, 24);
  return h;
}

/** Writes one frame (header + payload, no copy of the payload). */
export function writeFrame(sock: Socket, f: Omit<Frame, 'payload'>, payload?: ArrayBufferView): void {
  const n = payload ? payload.byteLength : 0;
  sock.write(encodeHeader(f, n));
  if (payload && n > 0) sock.write(Buffer.from(payload.buffer, payload.byteOffset, n));
}

/**
 * Incremental parser: feed it socket chunks, it calls `onFrame` for each complete frame. Payloads are
 * copied once into a fresh, aligned buffer (typed-array views need alignment).
 */
export class FrameParser {
  private head = Buffer.alloc(HEADER);
  private headFill = 0;
  private cur: Omit<Frame, 'payload'> | null = null;
  private payload: Uint8Array | null = null;
  private fill = 0;

  constructor(private onFrame: (f: Frame) => void, private onError: (msg: string) => void) {}

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (!this.cur) {
        const take = Math.min(HEADER - this.headFill, chunk.length - off);
        chunk.copy(this.head, this.headFill, off, off + take);
        this.headFill += take;
        off += take;
        if (this.headFill < HEADER) return;
        this.headFill = 0;
        const h = this.head;
        if (h.readUInt32LE(0) !== MAGIC) {
          this.onError('bad frame (not a megabeam peer, or the stream is corrupt)');
          return;
        }
        const n = h.readDoubleLE(16);
        if (!Number.isSafeInteger(n) || n < 0) {
          this.onError(`bad frame length ${n}`);
          return;
        }
        this.cur = { kind: h.readUInt8(4), op: h.readUInt8(5), dtype: h.readUInt8(6), seq: h.readUInt32LE(8), sub: h.readUInt32LE(12), from: h.readUInt32LE(24) };
        this.payload = new Uint8Array(n);
        this.fill = 0;
      }
      const p = this.payload!;
      const take = Math.min(p.length - this.fill, chunk.length - off);
      if (take > 0) {
        p.set(chunk.subarray(off, off + take), this.fill);
        this.fill += take;
        off += take;
      }
      if (this.fill === p.length) {
        const f = { ...this.cur!, payload: p };
        this.cur = null;
        this.payload = null;
        this.onFrame(f);
      }
    }
  }
}
