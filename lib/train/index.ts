// Training: the loop, checkpoints, the passkey task and log plots.
export { train, adamwFor, flopsPerToken, TrainRng } from './train';
export type { TrainOptions, TrainResult, TrainBatch, BatchContext, BatchFn, DataSource, StepRecord } from './train';
export { saveCheckpoint, loadCheckpoint, latestCheckpoint, listCheckpoints, readCheckpointState, CHECKPOINT_VERSION } from './checkpoint';
export type { CheckpointState, SaveCheckpointArgs } from './checkpoint';
export { passkeySample, passkeyCorrect, rng, PASSKEY_TOKENS, IGNORE_INDEX } from './passkey';
export type { PasskeySample } from './passkey';
export { plotLog, parseLog } from './plot';
export type { LogRecord } from './plot';
