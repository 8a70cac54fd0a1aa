// One error hierarchy with stable codes. TypeScript validation throws these before any native call;
// native code decides validity and its errors are mapped to the same classes (fromNative, callNative).

export type ErrorCode =
  | 'ERR_ARG'          // a malformed argument that is not a shape/dtype/device problem
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_DEVICE'
  | 'ERR_DISPOSED'
  | 'ERR_OOM'
  | 'ERR_NO_CUDA'
  | 'ERR_CUDA'
  | 'ERR_NO_NCCL'      // NCCL (libnccl.so.2) could not be loaded
  | 'ERR_NCCL'         // an NCCL call failed, or its communicator was aborted
  | 'ERR_COMM'         // a process group failed: a peer died, calls did not match, the group was aborted
  | 'ERR_TIMEOUT'      // a wait ran past its timeout (the group is aborted)
  | 'ERR_UNSUPPORTED'
  | 'ERR_ROPE_CONFIG'
  | 'ERR_NATIVE';      // the addon could not be loaded

export class MegabeamError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

export class ArgumentError extends MegabeamError {
  constructor(message: string) { super('ERR_ARG', message); }
}
export class ShapeError extends MegabeamError {
  constructor(message: string) { super('ERR_SHAPE', message); }
}
export class DtypeError extends MegabeamError {
  constructor(message: string) { super('ERR_DTYPE', message); }
}
export class DeviceError extends MegabeamError {
  constructor(message: string, code: 'ERR_DEVICE' | 'ERR_NO_CUDA' = 'ERR_DEVICE') { super(code, message); }
}
export class DisposedError extends MegabeamError {
  constructor(message = 'tensor was disposed') { super('ERR_DISPOSED', message); }
}
export class OutOfMemoryError extends MegabeamError {
  constructor(message: string) { super('ERR_OOM', message); }
}
export class CudaError extends MegabeamError {
  constructor(message: string) { super('ERR_CUDA', message); }
}
export class NcclUnavailableError extends MegabeamError {
  constructor(message: string) { super('ERR_NO_NCCL', message); }
}
export class NcclError extends MegabeamError {
  constructor(message: string) { super('ERR_NCCL', message); }
}
export class CommError extends MegabeamError {
  constructor(message: string) { super('ERR_COMM', message); }
}
export class TimeoutError extends MegabeamError {
  constructor(message: string) { super('ERR_TIMEOUT', message); }
}
export class UnsupportedError extends MegabeamError {
  constructor(message: string) { super('ERR_UNSUPPORTED', message); }
}
export class RopeConfigError extends MegabeamError {
  readonly parameter: string;
  constructor(parameter: string, message: string) {
    super('ERR_ROPE_CONFIG', `${parameter}: ${message}`);
    this.parameter = parameter;
  }
}
export class NativeLoadError extends MegabeamError {
  constructor(message: string) { super('ERR_NATIVE', message); }
}

const byCode: Record<string, (m: string) => MegabeamError> = {
  ERR_ARG: (m) => new ArgumentError(m),
  ERR_SHAPE: (m) => new ShapeError(m),
  ERR_DTYPE: (m) => new DtypeError(m),
  ERR_DEVICE: (m) => new DeviceError(m),
  ERR_NO_CUDA: (m) => new DeviceError(m, 'ERR_NO_CUDA'),
  ERR_DISPOSED: (m) => new DisposedError(m),
  ERR_OOM: (m) => new OutOfMemoryError(m),
  ERR_CUDA: (m) => new CudaError(m),
  ERR_NO_NCCL: (m) => new NcclUnavailableError(m),
  ERR_NCCL: (m) => new NcclError(m),
  ERR_COMM: (m) => new CommError(m),
  ERR_TIMEOUT: (m) => new TimeoutError(m),
  ERR_UNSUPPORTED: (m) => new UnsupportedError(m),
  ERR_NATIVE: (m) => new NativeLoadError(m),
  // native messages read "<parameter>: <what is wrong>"
  ERR_ROPE_CONFIG: (m) => {
    const i = m.indexOf(': ');
    return i > 0 ? new RopeConfigError(m.slice(0, i), m.slice(i + 2)) : new RopeConfigError('rope', m);
  },
};

/** Maps an error thrown by the addon (message prefixed "ERR_X: ") to its class. */
export function fromNative(e: unknown): unknown {
  if (e instanceof MegabeamError || !(e instanceof Error)) return e;
  const code = (e as { code?: string }).code;
  const m = /^(ERR_[A-Z_]+): ([\s\S]*)$/.exec(e.message);
  const c = code && byCode[code] ? code : m?.[1];
  if (c && byCode[c]) return byCode[c](m ? m[2] : e.message);
  return e;
}

/** Runs a native call and rethrows its errors (thrown, or rejections of a returned promise) as MegabeamErrors. */
export function callNative<T>(fn: () => T): T {
  let r: T;
  try {
    r = fn();
  } catch (e) {
    throw fromNative(e);
  }
  if (r instanceof Promise) return r.catch((e: unknown) => { throw fromNative(e); }) as T;
  return r;
}
