// Loads the addon on first use: a prebuild or build/Release through node-gyp-build, or the file
// named by MEGABEAM_ADDON (for side builds). A failure becomes ERR_NATIVE with the reason.
// `NativeModule` declares every native function with its argument (a named-options "baton" for ops:
// csrc/binding/baton.h). The addon re-checks everything; these types only keep TypeScript honest.
import * as path from 'path';
import type { Dtype } from './dtype';
import { NativeLoadError } from './errors';
import { nativeLoadMessage } from './native-help';

/** The native side of a Tensor (csrc/binding/binding.h TensorImpl). */
export type NativeHandle = { dispose(): void; isDisposed(): boolean };
/** A device as the addon takes it: -1 is the CPU, 0..N-1 CUDA devices. */
export type NativeDevice = number;

/** rope(): csrc/binding/rope.cpp. Enumerations as strings; absent keys take the defaults. */
export interface RopeBaton {
  x: NativeHandle;
  k?: NativeHandle;
  inplace?: boolean;
  invFreq?: Float64Array | readonly number[];
  rotaryDim?: number;
  positions?: NativeHandle;
  positionOffset?: number;
  style?: 'neox' | 'interleaved';
  precision?: 'exact' | 'fp32' | 'bf16';
  attentionFactor?: number;
  inverse?: boolean;
}

/** Options shared by the attention natives: csrc/binding/attention.cpp. */
export interface AttentionScalars {
  scale: number;
  causal?: boolean;
  qOffset?: number;
  kOffset?: number;
}
interface AttentionInputs extends AttentionScalars {
  q: NativeHandle;
  k: NativeHandle;
  v: NativeHandle;
}
/** Outputs are allocated natively unless given (then written; they must not share memory with any input). */
export interface AttentionForwardBaton extends AttentionInputs {
  kernel?: AttentionForwardKernel;
  out?: NativeHandle;
  lse?: NativeHandle;
}
/** Which CUDA forward kernel runs ('auto': wgmma on sm_90 for headDim 64/128, else mma.sync). */
export type AttentionForwardKernel = 'auto' | 'mma';
/** Which CUDA backward kernels run ('auto': wgmma on sm_90 for headDim 64/128, else mma.sync). */
export type AttentionBackwardKernel = 'auto' | 'mma' | 'mma-small';
export interface AttentionBackwardBaton extends AttentionInputs {
  dout: NativeHandle;
  out: NativeHandle;
  lse: NativeHandle;
  kernel?: AttentionBackwardKernel;
  dq?: NativeHandle;
  dk?: NativeHandle;
  dv?: NativeHandle;
}
export interface AttentionCudaCheckBaton {
  dtype: Dtype;
  batch: number;
  seqQ: number;
  seqK: number;
  headsQ: number;
  headsKv: number;
  headDim: number;
}

/** axpby(): csrc/binding/elementwise.cpp. */
export interface AxpbyBaton {
  a: NativeHandle;
  b?: NativeHandle;
  out?: NativeHandle;
  alpha?: number;
  beta?: number;
  dtype?: Dtype;
}

/** The other ops' batons (one object each; see the header comment of each csrc/binding/<op>.cpp). */
type H = NativeHandle;
export interface GemmBaton {
  a: H; b: H; out?: H; transA?: boolean; transB?: boolean; alpha?: number; beta?: number; dtype?: Dtype;
  backend?: 'auto' | 'builtin' | 'cublaslt';
}
export interface NativeGemmInfo { found: boolean; backend: 'cublaslt' | 'builtin' | 'cpu'; path?: string; version?: string; error?: string }
export interface EmbeddingBaton { ids: H; weight: H; dtype?: Dtype; bad?: unknown }
export interface EmbeddingBackwardBaton { dy: H; ids: H; dweight: H; bad?: unknown }
export interface CrossEntropyBaton {
  logits: H; labels: H; losses?: H; ignoreIndex?: number; gradScale?: number; dlogits?: H; count?: H; bad?: unknown;
}
export interface LossCountBaton { labels: H; ignoreIndex?: number; out: H }
export interface LossMeanBaton { losses: H; out: H; count?: H; divisor?: number }
export interface RmsNormBaton { x: H; weight: H; eps?: number; residual?: H }
export interface RmsNormBackwardBaton { dy: H; x: H; weight: H; rstd: H; dweight: H; dx?: H }
export interface SwigluBaton { gate: H; up: H; out?: H }
export interface SwigluBackwardBaton { dy: H; gate: H; up: H; dgate?: H; dup?: H }
export interface AdamWBaton {
  param: H; grad: H; m: H; v: H; master?: H; masterLo?: H; lr: number; beta1: number; beta2: number; eps: number; weightDecay: number;
  step: number; gradScale?: number; sumsq?: H; maxNorm?: number;
}
export interface SumsqBaton { x: H; out: H }
export interface RingMergeBaton { outAcc: H; lseAcc: H; out: H; lse: H }
export interface RowCopyBaton {
  src: H; dst: H; outer: number; inner: number; srcRows: number; dstRows: number; srcRow: number; dstRow: number; rows: number;
}
export interface MaximumBaton { a: H; b: H; out: H }

/** An NCCL communicator (csrc/binding/nccl.cpp), opaque to TypeScript. */
export type NativeComm = unknown;
export interface NativeNcclInfo { found: boolean; path?: string; version?: string; versionCode?: number; error?: string }
export interface NcclIssueBaton { items: unknown[]; timeoutMs: number; deferred?: boolean }
export interface NativeQueueInfo {
  pending: number; pendingBytes: number; maxTasks: number; maxBytes: number; issued: number; completed: number;
  blockedEnqueues: number;
}

export interface NativeMemory { allocated: number; reserved: number; peak: number; allocations: number; frees: number; deviceMallocs: number }
export interface NativeCudaInfo {
  built: boolean;
  available: boolean;
  count: number;
  reason: string;
  devices: { index: number; name: string; totalMemory: number }[];
  cpuThreads: number;
}

export interface NativeModule {
  TensorHandle: new () => NativeHandle;
  // tensors (csrc/binding/tensor.cpp; positional, as they are today). dtype codes: csrc/common/dtype.h.
  empty(shape: readonly number[], dtype: number, device: NativeDevice): NativeHandle;
  view(t: NativeHandle, shape: readonly number[], offset?: number): NativeHandle;
  write(t: NativeHandle, data: Float32Array | Float64Array | Int32Array | Uint16Array): void;
  fill(t: NativeHandle, value: number): void;
  /** kind 0: normal(a = mean, b = std); 1: uniform [a, b). */
  random(t: NativeHandle, kind: 0 | 1, seedHi: number, seedLo: number, a: number, b: number): void;
  copy(dst: NativeHandle, src: NativeHandle): void;
  read(t: NativeHandle, raw: boolean): Promise<Float32Array | Int32Array | Uint16Array>;
  synchronize(device: NativeDevice): Promise<void>;
  synchronizeSync(device: NativeDevice): void;
  memory(device: NativeDevice): NativeMemory;
  resetPeak(device: NativeDevice): void;
  emptyCache(device: NativeDevice): void;
  cudaInfo(): NativeCudaInfo;
  queueInfo(): NativeQueueInfo;
  // Test hooks (csrc/binding/tensor.cpp, MB_TEST_HOOK): present only when MEGABEAM_TEST_HOOKS=1 was set
  // when the addon initialised (tap's config sets it for the test run); absent in normal use.
  debugQueueError?(device: NativeDevice, code: string, message: string, output?: NativeHandle): void;
  debugQueueSleep?(ms: number): void;
  debugExternalMemory?(): number;
  debugAttentionNoTma?(on: boolean): number;
  // NCCL (csrc/binding/nccl.cpp; lib/dist/nccl.ts)
  ncclInfo(): NativeNcclInfo;
  ncclUniqueId(): Uint8Array;
  ncclInitAll(o: { devices: number[] }): Promise<NativeComm[]>;
  ncclInitRank(o: { id: Uint8Array; rank: number; worldSize: number; device: number }): Promise<NativeComm>;
  ncclIssue(o: NcclIssueBaton): void;
  ncclJoin(o: { comm: NativeComm }): void;
  ncclStatus(o: { comm: NativeComm }): null | { code: string; message: string; pending: number };
  ncclAbort(o: { comm: NativeComm; reason?: string }): void;
  ncclDestroy(o: { comm: NativeComm }): Promise<void> | void;
  // ops: one named-options object each
  rope(o: RopeBaton): { x: NativeHandle; k?: NativeHandle };
  attentionForward(o: AttentionForwardBaton): { out: NativeHandle; lse: NativeHandle };
  attentionBackward(o: AttentionBackwardBaton): { dq: NativeHandle; dk: NativeHandle; dv: NativeHandle };
  /** '' when the CUDA kernels take this problem, else their reason (no GPU needed). */
  attentionCudaCheck(o: AttentionCudaCheckBaton): string;
  axpby(o: AxpbyBaton): NativeHandle;
  gemm(o: GemmBaton): NativeHandle;
  gemmInfo(): NativeGemmInfo;
  embedding(o: EmbeddingBaton): NativeHandle;
  embeddingBackward(o: EmbeddingBackwardBaton): void;
  crossEntropy(o: CrossEntropyBaton): { losses: NativeHandle; dlogits?: NativeHandle };
  lossCount(o: LossCountBaton): void;
  lossMean(o: LossMeanBaton): void;
  rmsNorm(o: RmsNormBaton): { y: NativeHandle; rstd: NativeHandle; h?: NativeHandle };
  rmsNormBackward(o: RmsNormBackwardBaton): { dx: NativeHandle };
  swiglu(o: SwigluBaton): NativeHandle;
  swigluBackward(o: SwigluBackwardBaton): { dgate: NativeHandle; dup: NativeHandle };
  adamw(o: AdamWBaton): void;
  sumsq(o: SumsqBaton): void;
  ringMerge(o: RingMergeBaton): void;
  rowCopy(o: RowCopyBaton): void;
  maximum(o: MaximumBaton): void;
}

let cached: NativeModule | undefined;
let failure: Error | undefined;

export function native(): NativeModule {
  if (cached) return cached;
  if (failure) throw failure;
  try {
    const override = process.env.MEGABEAM_ADDON;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = (override ? require(path.resolve(override)) : require('node-gyp-build')(path.join(__dirname, '..'))) as NativeModule;
    return cached;
  } catch (e) {
    failure = new NativeLoadError(nativeLoadMessage(e, process.env.MEGABEAM_ADDON));
    throw failure;
  }
}
