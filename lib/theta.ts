// RoPE theta-scaling utilities (pure TypeScript, float64). See docs/theta.md for every formula.
export { frequencies, defaultInvFreq, resolveRotaryDim, yarnGetMscale, ropeTypes } from './theta/frequencies';
export type { RopeType, RopeOptions, RopeFrequencies } from './theta/frequencies';
export { fromHFConfig } from './theta/hf';
export type { FromHFConfigOptions, HFRopeResult } from './theta/hf';
export {
  wavelength, criticalDim, baseLowerBound, baseLowerBoundFit, meetsDecayCriterion, cosineSumScan, cosineSumEnvelope,
  MAX_SCAN_TERMS, MAX_SEARCH_TERMS,
} from './theta/analysis';
export type { CriticalDimOptions, BaseLowerBoundOptions, CosineSumResult } from './theta/analysis';
export { angleErrorBound, halfUlp, floatFormats, EXACT_MODE_ANGLE_ERROR } from './theta/precision';
export type { AngleDtype, FloatFormat } from './theta/precision';
export { presets } from './theta/presets';
export type { ThetaPreset, PresetName } from './theta/presets';
