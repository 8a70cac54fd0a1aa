// Hugging Face config.json → RopeOptions → frequencies(), following how transformers reads each field.
import { frequencies, RopeFrequencies, RopeOptions, RopeType, ropeTypes } from './frequencies';
import { fail, show } from './validate';
import { optionsArg } from '../guard';

export interface FromHFConfigOptions {
  /** Current sequence length for 'dynamic' / 'longrope' (default: max_position_embeddings). */
  seqLen?: number;
  /** Key into a per-layer-type rope_parameters dict (e.g. 'full_attention'), required when it is nested. */
  layerType?: string;
}

export interface HFRopeResult extends RopeFrequencies {
  options: RopeOptions;
}

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict => v !== null && typeof v === 'object' && !Array.isArray(v);
const ropeKeys = ['rope_type', 'type', 'rope_theta', 'factor'];

function num(cfg: Dict, key: string): number | undefined {
  const v = cfg[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number') fail(key, `must be a number, got ${show(v)}`);
  return v;
}

/**
 * RoPE frequencies from a Hugging Face config.json object. Reads rope_parameters (newer transformers) or
 * rope_scaling, rope_type or legacy type, rope_theta (inside rope_parameters or top level),
 * partial_rotary_factor, head_dim or hidden_size/num_attention_heads, max_position_embeddings and
 * original_max_position_embeddings. Multimodal configs are read from text_config when the top level has no
 * attention fields.
 */
export function fromHFConfig(config: unknown, opts: FromHFConfigOptions = {}): HFRopeResult {
  opts = optionsArg('theta.fromHFConfig', opts);
  if (!isDict(config)) fail('config', `must be a config.json object, got ${show(config)}`);
  let cfg: Dict = config;
  if (isDict(cfg.text_config) && cfg.hidden_size === undefined && cfg.head_dim === undefined) cfg = cfg.text_config;

  let rp: Dict = {};
  const raw = cfg.rope_parameters ?? cfg.rope_scaling;
  if (raw !== undefined && raw !== null) {
    if (!isDict(raw)) fail(cfg.rope_parameters !== undefined ? 'rope_parameters' : 'rope_scaling', `must be an object, got ${show(raw)}`);
    const nested = !ropeKeys.some((k) => k in raw) && Object.values(raw).some(isDict);
    if (nested) {
      if (opts.layerType === undefined) {
        fail('layerType', `rope_parameters is per layer type (${Object.keys(raw).join(', ')}); pass { layerType }`);
      }
      const sub = raw[opts.layerType];
      if (!isDict(sub)) fail('layerType', `no rope_parameters for layer type ${show(opts.layerType)}`);
      rp = sub;
    } else {
      rp = raw;
    }
  }

  const typeRaw = rp.rope_type ?? rp.type ?? 'default';
  if (typeof typeRaw !== 'string' || !(ropeTypes as readonly string[]).includes(typeRaw)) {
    fail('rope_type', `must be one of ${ropeTypes.join(', ')}, got ${show(typeRaw)}`);
  }
  const type = typeRaw as RopeType;

  const base = num(rp, 'rope_theta') ?? num(cfg, 'rope_theta');
  if (base === undefined) fail('rope_theta', 'is missing (neither in rope_parameters nor at the top level)');

  let headDim = num(cfg, 'head_dim');
  if (headDim === undefined) {
    const hidden = num(cfg, 'hidden_size');
    const heads = num(cfg, 'num_attention_heads');
    if (hidden === undefined || heads === undefined) fail('head_dim', 'is missing and hidden_size/num_attention_heads are not both given');
    if (!(heads > 0)) fail('num_attention_heads', `must be > 0, got ${heads}`);
    headDim = Math.floor(hidden / heads);
  }
  const partial = num(rp, 'partial_rotary_factor') ?? num(cfg, 'partial_rotary_factor');
  const maxPos = num(cfg, 'max_position_embeddings');
  const rpOrig = num(rp, 'original_max_position_embeddings');
  const topOrig = num(cfg, 'original_max_position_embeddings');

  const o: RopeOptions = { type, headDim, base };
  if (partial !== undefined) o.partialRotaryFactor = partial;
  if (maxPos !== undefined) o.maxPositionEmbeddings = maxPos;
  const factor = num(rp, 'factor');
  const attentionFactor = num(rp, 'attention_factor');

  switch (type) {
    case 'default':
      break;
    case 'linear':
    case 'ntk':
      o.factor = factor;
      break;
    case 'dynamic':
      // transformers uses max_position_embeddings as L0 for dynamic (original_* is not read).
      o.factor = factor;
      if (opts.seqLen !== undefined) o.seqLen = opts.seqLen;
      break;
    case 'yarn': {
      o.factor = factor;
      const orig = rpOrig ?? topOrig;
      if (orig !== undefined) o.originalMaxPositionEmbeddings = orig;
      o.betaFast = num(rp, 'beta_fast') || undefined; // HF: `or 32`, so 0 means default
      o.betaSlow = num(rp, 'beta_slow') || undefined;
      o.mscale = num(rp, 'mscale');
      o.mscaleAllDim = num(rp, 'mscale_all_dim');
      o.attentionFactor = attentionFactor;
      if (rp.truncate !== undefined) o.truncate = rp.truncate as boolean;
      break;
    }
    case 'llama3':
      o.factor = factor;
      o.lowFreqFactor = num(rp, 'low_freq_factor');
      o.highFreqFactor = num(rp, 'high_freq_factor');
      o.originalMaxPositionEmbeddings = rpOrig ?? topOrig;
      break;
    case 'longrope':
      // Phi-3 keeps original_max_position_embeddings at the top level; newer configs move it inside.
      o.originalMaxPositionEmbeddings = topOrig ?? rpOrig;
      o.factor = factor;
      o.shortFactor = rp.short_factor as number[];
      o.longFactor = rp.long_factor as number[];
      o.attentionFactor = attentionFactor;
      if (opts.seqLen !== undefined) o.seqLen = opts.seqLen;
      break;
  }
  for (const k of Object.keys(o) as (keyof RopeOptions)[]) if (o[k] === undefined) delete o[k];
  const r = frequencies(o);
  return { invFreq: r.invFreq, attentionFactor: r.attentionFactor, options: o };
}
