// The Mistral / Llama decoder: config parsing, random init, HF safetensors load/save, and an explicit
// per-layer forward/backward with activation checkpointing. See mistral.ts for the layer math.
export { fromConfig, fromPretrained } from './mistral';
// The class as a type only: instances come from fromConfig / fromPretrained.
export type { Model } from './mistral';
export type { FromConfigOptions, ForwardBackwardOptions, ForwardBackwardResult, KeepAttention, MemoryPlan } from './mistral';
export { configFromHF, parameterShapes } from './config';
export type { ModelConfig, ConfigOptions, ConfigError } from './config';
export { attend } from './attend';
export type { AttendGroup, AttendOptions } from './attend';
export { shardTokens, shardBatch } from './shard';
export type { ShardOptions } from './shard';
