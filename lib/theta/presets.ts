// RoPE settings reported in the MegaBeam paper (Wu & Song 2025, arXiv 2505.08651).
export interface ThetaPreset {
  readonly description: string;
  readonly base: number;
  readonly contextLength: number;
  readonly headDim: number;
}

export const presets = {
  'mistral-7b-instruct-v0.2': {
    description: 'Mistral-7B-Instruct-v0.2, the MegaBeam starting point: 32K context, theta 1e6',
    base: 1e6,
    contextLength: 32768,
    headDim: 128,
  },
  'megabeam-256k': {
    description: 'MegaBeam long-context stage with theta 25e6 (256K)',
    base: 25e6,
    contextLength: 262144,
    headDim: 128,
  },
  'megabeam-512k': {
    description: 'MegaBeam-Mistral-7B-512k: theta 75e6 for 512K context',
    base: 75e6,
    contextLength: 524288,
    headDim: 128,
  },
} as const satisfies Record<string, ThetaPreset>;

export type PresetName = keyof typeof presets;
