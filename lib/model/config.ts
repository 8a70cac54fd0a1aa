// Hugging Face Mistral / Llama config.json -> the decoder megabeam runs. Everything the model would
// silently compute differently from transformers is rejected here, naming the field.
import { ArgumentError, MegabeamError, UnsupportedError } from '../errors';
import { fromHFConfig, HFRopeResult } from '../theta/hf';

export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  initializerRange: number;
  maxPositionEmbeddings: number | null;
  /** Mistral's sliding window; sequences longer than it are rejected (full causal attention only). */
  slidingWindow: number | null;
  /** rope_theta / rope_scaling as read by theta.fromHFConfig (at max_position_embeddings). */
  rope: HFRopeResult;
  /** The config.json object as given (kept for save). */
  raw: Record<string, unknown>;
}

/** The error for a config field: ERR_ARG (malformed) or ERR_UNSUPPORTED; `field` names it. */
export type ConfigError = MegabeamError & { field: string };

function err(kind: 'arg' | 'unsupported', field: string, msg: string): never {
  const text = `config.${field}: ${msg}`;
  const e = kind === 'arg' ? new ArgumentError(text) : new UnsupportedError(text);
  throw Object.assign(e, { field });
}

const SUPPORTED_TYPES = new Set(['mistral', 'llama']);
// Fields that turn a decoder into a mixture of experts (Mixtral, Qwen-MoE, DeepSeek, ...).
const MOE_FIELDS = ['num_local_experts', 'num_experts', 'n_routed_experts', 'num_experts_per_tok', 'moe_intermediate_size'];

function int(c: Record<string, unknown>, key: string, def?: number): number {
  const v = c[key] ?? def;
  if (v === undefined) err('arg', key, 'is missing');
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) err('arg', key, `must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

function positiveNum(c: Record<string, unknown>, key: string, def: number): number {
  const v = c[key] ?? def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) err('arg', key, `must be a finite number > 0, got ${JSON.stringify(v)}`);
  return v;
}

export interface ConfigOptions {
  /** The longest sequence you will run: checked against sliding_window; used for dynamic/longrope RoPE. */
  seqLen?: number;
}

/**
 * Parses a Hugging Face config.json object (or its JSON text) for a Mistral/Llama decoder.
 * Throws ERR_ARG for malformed fields and ERR_UNSUPPORTED for architectures megabeam does not
 * implement (biases, MoE, non-SiLU activations, a sliding window shorter than opts.seqLen), each
 * with `field` naming the config key.
 */
export function configFromHF(json: unknown, opts: ConfigOptions = {}): ModelConfig {
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('configFromHF: options must be an object');
  if (opts.seqLen !== undefined && (typeof opts.seqLen !== 'number' || !Number.isSafeInteger(opts.seqLen) || opts.seqLen <= 0))
    throw new ArgumentError(`configFromHF: seqLen must be a positive integer, got ${String(opts.seqLen)}`);
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      err('arg', 'json', `is not valid JSON (${(e as Error).message})`);
    }
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) err('arg', 'json', 'must be a config.json object');
  const c = json as Record<string, unknown>;

  const modelType = c.model_type ?? 'mistral';
  if (typeof modelType !== 'string' || !SUPPORTED_TYPES.has(modelType))
    err('unsupported', 'model_type', `must be "mistral" or "llama", got ${JSON.stringify(modelType)}`);
  for (const f of MOE_FIELDS)
    if (c[f] !== undefined && c[f] !== null && c[f] !== 0) err('unsupported', f, 'mixture-of-experts models are not supported');
  for (const f of ['attention_bias', 'mlp_bias'])
    if (c[f] !== undefined && c[f] !== null && c[f] !== false) err('unsupported', f, `biases are not supported (got ${JSON.stringify(c[f])})`);
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') err('unsupported', 'hidden_act', `only "silu" (SwiGLU) is supported, got ${JSON.stringify(act)}`);
  const dropout = c.attention_dropout ?? 0;
  if (dropout !== 0) err('unsupported', 'attention_dropout', `dropout is not implemented, got ${JSON.stringify(dropout)}`);

  const hiddenSize = int(c, 'hidden_size');
  const intermediateSize = int(c, 'intermediate_size');
  const numLayers = int(c, 'num_hidden_layers');
  const numHeads = int(c, 'num_attention_heads');
  const numKvHeads = int(c, 'num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    err('arg', 'num_key_value_heads', `${numKvHeads} must divide num_attention_heads (${numHeads})`);
  let headDim: number;
  if (c.head_dim === undefined || c.head_dim === null) {
    if (hiddenSize % numHeads !== 0) err('arg', 'head_dim', `is missing and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
    headDim = hiddenSize / numHeads;
  } else {
    headDim = int(c, 'head_dim');
  }
  if (headDim % 2 !== 0) err('arg', 'head_dim', `must be even for RoPE, got ${headDim}`);
  const rmsNormEps = positiveNum(c, 'rms_norm_eps', 1e-6);
  const vocabSize = int(c, 'vocab_size');
  const tie = c.tie_word_embeddings ?? false;
  if (typeof tie !== 'boolean') err('arg', 'tie_word_embeddings', `must be a boolean, got ${JSON.stringify(tie)}`);
  const initializerRange = positiveNum(c, 'initializer_range', 0.02);
  const maxPos = c.max_position_embeddings === undefined || c.max_position_embeddings === null ? null : int(c, 'max_position_embeddings');

  let slidingWindow: number | null = null;
  if (c.sliding_window !== undefined && c.sliding_window !== null) {
    slidingWindow = int(c, 'sliding_window');
    // Llama configs have use_sliding_window-free semantics; Mistral applies it whenever set.
    if (opts.seqLen !== undefined && opts.seqLen > slidingWindow)
      err('unsupported', 'sliding_window', `is ${slidingWindow}, shorter than the ${opts.seqLen}-token context: only full causal attention is implemented`);
  }

  // ERR_ROPE_CONFIG from here names its parameter already.
  const rope = fromHFConfig(c, opts.seqLen !== undefined ? { seqLen: opts.seqLen } : {});
  if (rope.invFreq.length * 2 > headDim) err('arg', 'partial_rotary_factor', `rotary dim ${rope.invFreq.length * 2} exceeds head_dim ${headDim}`);

  return {
    modelType, hiddenSize, intermediateSize, numLayers, numHeads, numKvHeads, headDim, rmsNormEps, vocabSize,
    tieWordEmbeddings: tie, initializerRange, maxPositionEmbeddings: maxPos, slidingWindow, rope, raw: { ...c },
  };
}

/** The HF parameter names and shapes of a config (parsed, or a config.json object), in state_dict order. */
export function parameterShapes(config: ModelConfig | Record<string, unknown>): [string, number[]][] {
  const isParsed = config !== null && typeof config === 'object' && typeof (config as ModelConfig).hiddenSize === 'number' &&
    typeof (config as ModelConfig).raw === 'object';
  const cfg = isParsed ? (config as ModelConfig) : configFromHF(config);
  const H = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim;
  const out: [string, number[]][] = [['model.embed_tokens.weight', [cfg.vocabSize, H]]];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [`${p}self_attn.q_proj.weight`, [cfg.numHeads * D, H]],
      [`${p}self_attn.k_proj.weight`, [cfg.numKvHeads * D, H]],
      [`${p}self_attn.v_proj.weight`, [cfg.numKvHeads * D, H]],
      [`${p}self_attn.o_proj.weight`, [H, cfg.numHeads * D]],
      [`${p}mlp.gate_proj.weight`, [I, H]],
      [`${p}mlp.up_proj.weight`, [I, H]],
      [`${p}mlp.down_proj.weight`, [H, I]],
      [`${p}input_layernorm.weight`, [H]],
      [`${p}post_attention_layernorm.weight`, [H]],
    );
  }
  out.push(['model.norm.weight', [H]]);
  if (!cfg.tieWordEmbeddings) out.push(['lm_head.weight', [cfg.vocabSize, H]]);
  return out;
}
