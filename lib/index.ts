// megabeam: long-context training primitives for Node.js. The public surface, listed name by name:
// anything not exported here (the native module, error mapping, handles) is internal.
export {
  ErrorCode, MegabeamError, ArgumentError, ShapeError, DtypeError, DeviceError, DisposedError, OutOfMemoryError,
  CudaError, NcclUnavailableError, NcclError, CommError, TimeoutError, UnsupportedError, RopeConfigError,
  NativeLoadError,
} from './errors';
export { Dtype, DTYPES } from './dtype';
export { cuda, devices, cpuThreads, DeviceLike, DeviceString, CudaDeviceInfo } from './device';
export {
  Tensor, Shape, TensorData, TensorOptions, RandomOptions, MemoryInfo,
  tensor, empty, zeros, ones, full, randn, rand, synchronize, memory, resetPeakMemory, emptyCache,
} from './tensor';
export * as theta from './theta';
export { rope, RopeApplyOptions, RopeStyle, RopePrecision } from './rope';
export {
  attention, AttentionOptions, AttentionForwardOptions, AttentionBackwardOptions, AttentionForwardResult, AttentionBackwardResult,
  AttentionRopeOptions,
} from './attention';
export type { AttentionBackwardKernel, AttentionForwardKernel } from './native';
export { add, scale, AxpbyOptions } from './elementwise';
export { AdamW, AdamWOptions, ParamEntry, gradNorm, schedules, Schedule } from './optim';
export { tokens, TokenFile, Sampler, SamplerState, Batch, TokenWidth, TextTokenizer } from './data';
export * as dist from './dist';
export {
  ring, RingOptions, RingLayout, RingAlgorithm, RingForwardResult, RingBackwardResult, Chunk as RingChunk, ShardOptions,
  AttentionLayerOptions,
} from './ring';
export { matmul, linear, gemmInfo, MatmulOptions, LinearOptions, GemmInfo } from './matmul';
export * as nn from './nn';
export * as safetensors from './safetensors';
export * as model from './model';
export * as training from './train';
export { train, TrainOptions, TrainResult, TrainBatch, BatchContext, StepRecord } from './train';
export { renderHeatmap, Heatmap } from './svg';
